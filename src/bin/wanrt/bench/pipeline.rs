//! `wanrt bench pipeline`: one whole text-to-video generation (UMT5 text encoding, the DiT's
//! sampling steps, the VAE decode) through [`Pipeline::generate`], the code path of
//! `wanrt generate`, with random weights of a real config built in memory (nothing is read from
//! or written to the disk). Building the models is not timed; the generation runs once.
//!
//! The models are built and placed by [`Pipeline::from_weights`], the placement of
//! [`Pipeline::load`]: with `--device cuda` the device memory plan at load (from the free
//! device memory, `--max-device-memory`, `--blocks-to-swap`, `--t5-device`) decides the DiT's
//! swapped blocks and the text encoder's place, the VAE decodes on the device, and the plan the
//! generation ran with is reported (`plan`). On the CPU everything runs there (the text encoder
//! on `--t5-device` when given).
//!
//! The models: the UMT5-XXL encoder and the DiT of `--config` in `--dtype` (bf16 by default,
//! like the released checkpoints), the Wan2.1 VAE in f32 (as released). `--layers` cuts the
//! DiT's depth only. `--config tiny` is the same architecture at a tiny width (for tests).
//! The tokenizer is byte-level ([`Umt5Tokenizer::byte_level`]): a prompt costs one token per
//! UTF-8 byte plus `</s>`, reported as `prompt_tokens` (the text encoder runs over those tokens
//! only, as `wanrt generate` does).

use clap::Args;
use serde_json::{json, Value};
use wanrt::backend::{cuda, Device};
use wanrt::io::config::{DitConfig, T5Config, VaeConfig};
use wanrt::model::dit::weight_shapes;
use wanrt::model::t5::{self, Umt5Tokenizer};
use wanrt::model::vae;
use wanrt::pipeline::{GenerateRequest, LoadOptions, ModelWeights, Pipeline, Timings};
use wanrt::sampler::Flow;
use wanrt::{DType, Result};

use super::targets::{cut_layers, dit_config, random_weights, WeightDType};
use super::{cpu_name, finish, peak_rss_mb, DeviceArg};
use crate::generate::parse_memory_size;

/// The default prompt: 144 tokens with the byte-level tokenizer (a detailed prompt is about
/// 100 to 200 UMT5 tokens).
const PROMPT: &str = "A red fox trots through fresh snow in a birch forest at dawn, soft light, \
                      slow dolly shot, film grain.";

/// `pipeline` flags.
#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// The model: `1.3b`, `14b`, a Wan DiT `config.json` (with UMT5-XXL and the Wan2.1 VAE),
    /// or `tiny` (every model at a tiny width, for tests).
    #[arg(long, default_value = "1.3b")]
    config: String,
    /// Run only the first N blocks of the DiT (the text encoder and the VAE stay whole).
    #[arg(long)]
    layers: Option<usize>,
    /// Video width in pixels (a multiple of 16).
    #[arg(long, default_value_t = 640)]
    width: usize,
    /// Video height in pixels (a multiple of 16).
    #[arg(long, default_value_t = 480)]
    height: usize,
    /// Video frames (4k + 1).
    #[arg(long, default_value_t = 81)]
    frames: usize,
    /// Sampling steps.
    #[arg(long, default_value_t = 6)]
    steps: usize,
    /// Guidance scale (1: no negative prompt, one DiT forward per step).
    #[arg(long, default_value_t = 1.0)]
    cfg: f64,
    /// The prompt (its length sets the text encoder's work).
    #[arg(long, default_value = PROMPT)]
    prompt: String,
    /// Storage dtype of the DiT's and the text encoder's weights (the VAE's are f32).
    #[arg(long, value_enum, default_value_t = WeightDType::Bf16)]
    dtype: WeightDType,
    /// Where the DiT and the sampling loop run.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Where the text encoder runs, always as given (default: the CPU, or with `--device cuda`
    /// the device when the memory plan finds room beside the DiT).
    #[arg(long, value_enum)]
    t5_device: Option<DeviceArg>,
    /// Low-VRAM mode (CUDA): keep the DiT's last N blocks in pinned host memory, each streamed
    /// in while the previous one computes (default: the device memory plan chooses).
    #[arg(long, value_name = "N")]
    blocks_to_swap: Option<usize>,
    /// The device memory the pipeline may use, e.g. 24G (K, M, G, T: powers of 1024; default:
    /// what is free).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size)]
    max_device_memory: Option<u64>,
    /// Print one JSON object instead of a markdown table.
    #[arg(long)]
    json: bool,
}

/// The three configs `--config` names.
fn configs(a: &PipelineArgs) -> Result<(T5Config, DitConfig, VaeConfig)> {
    if a.config != "tiny" {
        return Ok((
            T5Config::default(),
            dit_config(&a.config, a.layers)?,
            VaeConfig::default(),
        ));
    }
    let t5 = T5Config {
        vocab: 300,
        dim: 48,
        dim_attn: 48,
        dim_ffn: 96,
        num_heads: 4,
        num_layers: 2,
        ..T5Config::default()
    };
    let dit = DitConfig {
        dim: 96,
        ffn_dim: 192,
        num_heads: 4,
        num_layers: 2,
        text_dim: t5.dim,
        ..DitConfig::preset("1.3b")?
    };
    let dit = cut_layers(dit, a.layers)?;
    let vae = VaeConfig {
        dim: 8,
        ..VaeConfig::default()
    };
    Ok((t5, dit, vae))
}

/// The random models (see the module docs), on the host.
fn random_models(
    (t5c, ditc, vaec): (T5Config, DitConfig, VaeConfig),
    dtype: DType,
) -> Result<ModelWeights> {
    Ok(ModelWeights {
        tokenizer: Umt5Tokenizer::byte_level()?,
        t5: (
            random_weights(t5::weight_shapes(&t5c), dtype, 1 << 20, Device::Cpu)?,
            t5c,
        ),
        dit: (
            random_weights(weight_shapes(&ditc), dtype, 0, Device::Cpu)?,
            ditc,
        ),
        vae: (
            random_weights(vae::weight_shapes(&vaec), DType::F32, 2 << 20, Device::Cpu)?,
            vaec,
        ),
    })
}

/// The load options of `wanrt generate` with the same flags.
fn load_options(a: &PipelineArgs) -> LoadOptions {
    LoadOptions {
        device: a.device.device(),
        t5_device: a.t5_device.map(DeviceArg::device),
        blocks_to_swap: a.blocks_to_swap,
        max_device_memory: a.max_device_memory,
        ..LoadOptions::default()
    }
}

/// Runs the benchmark and prints its report.
pub fn bench(a: &PipelineArgs) -> Result<()> {
    let options = load_options(a);
    let device = options.device;
    for d in [Some(device), options.t5_device].into_iter().flatten() {
        d.ensure_supported()?;
    }
    options.check_low_vram()?;
    let cfgs = configs(a)?;
    let (dit_cfg, z_dim) = (cfgs.1.clone(), cfgs.2.z_dim);
    let mut req = GenerateRequest::new(a.prompt.clone());
    (req.width, req.height, req.frames) = (a.width, a.height, a.frames);
    (req.steps, req.guidance_scale, req.seed) = (a.steps, a.cfg, Some(0));
    req.validate()?;
    let start = std::time::Instant::now();
    let pipe = Pipeline::from_weights(random_models(cfgs, a.dtype.dtype())?, &options)?;
    let setup_s = start.elapsed().as_secs_f64();
    let prompt_tokens = pipe
        .text_encoder()
        .tokenizer()
        .tokenize(&a.prompt)?
        .ids
        .len();
    let g = pipe.generate(&req, &mut |_| Flow::Continue)?;
    finish(device)?;
    let [_, _, t, h, w] = req.latent_dims(z_dim);
    let [pt, ph, pw] = dit_cfg.patch_size;
    let report = json!({
        "target": "pipeline",
        "config": a.config,
        "layers": dit_cfg.num_layers,
        "width": a.width,
        "height": a.height,
        "frames": a.frames,
        "steps": a.steps,
        "cfg": a.cfg,
        "latent": [t, h, w],
        "tokens": t / pt * (h / ph) * (w / pw),
        "prompt_tokens": prompt_tokens,
        "dtype": a.dtype.name(),
        "vae_dtype": "f32",
        "device": device.to_string(),
        "t5_device": pipe.text_encoder().device().to_string(),
        "vae_device": pipe.decode_device().to_string(),
        "max_device_memory": a.max_device_memory,
        "threads": pipe.threads(),
        "setup_s": setup_s,
        "timings": timings_json(&g.timings),
        "peak_rss_mb": peak_rss_mb(),
        "device_memory_mb": device_memory_mb(device)?,
        // The device memory plan the generation ran with (null on the CPU).
        "plan": g.device_plan,
        "cpu": cpu_name(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if a.json {
        println!("{report}");
    } else {
        print_markdown(a, &report, &g.timings);
    }
    Ok(())
}

/// The stage times in seconds.
fn timings_json(t: &Timings) -> Value {
    json!({
        "text_encoding_s": t.text_encoding,
        "steps_s": t.steps,
        "denoising_s": t.denoising,
        "decoding_s": t.decoding,
        "total_s": t.total,
    })
}

/// The bytes the CUDA allocator holds after the run (in use plus cached, in MiB): it keeps
/// freed buffers for reuse, so this is its high-water mark unless it had to release its cache.
/// `null` on the CPU.
fn device_memory_mb(device: Device) -> Result<Value> {
    match device {
        Device::Cpu => Ok(Value::Null),
        Device::Cuda(ordinal) => {
            let m = cuda::memory_usage(ordinal)?;
            Ok(json!((m.in_use + m.cached) as f64 / (1 << 20) as f64))
        }
    }
}

fn print_markdown(a: &PipelineArgs, r: &Value, t: &Timings) {
    println!(
        "pipeline {} (DiT layers {}), {}x{}x{}, {} steps, cfg {}, {} prompt tokens, {} weights, {}, {} threads",
        a.config,
        r["layers"],
        a.width,
        a.height,
        a.frames,
        a.steps,
        a.cfg,
        r["prompt_tokens"],
        a.dtype.name(),
        a.device.device(),
        r["threads"]
    );
    println!("| stage | seconds |");
    println!("| --- | ---: |");
    println!("| text encoding | {:.3} |", t.text_encoding);
    for (i, s) in t.steps.iter().enumerate() {
        println!("| step {} | {s:.3} |", i + 1);
    }
    println!("| VAE decode | {:.3} |", t.decoding);
    println!("| total | {:.3} |", t.total);
    println!(
        "text encoder on {}, VAE on {}; peak RSS {:.0} MiB; device memory (MiB) {}; plan {}",
        r["t5_device"].as_str().unwrap_or("?"),
        r["vae_device"].as_str().unwrap_or("?"),
        r["peak_rss_mb"].as_f64().unwrap_or(0.0),
        r["device_memory_mb"],
        r["plan"]
    );
}
