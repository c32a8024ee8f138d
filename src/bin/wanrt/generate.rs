//! `wanrt generate`: a prompt in, an MP4 (or GIF, PNG frames) out.
//!
//! Order of work, so that every mistake is reported before anything heavy runs: the arguments
//! (sizes, frame count, seed, guidance values), the output paths (writable, a known format),
//! the model files (missing ones named with the layout looked in), the LoRAs (for this model?),
//! the request against the loaded models (prompt lengths, memory); then text encoding,
//! denoising and decoding with progress bars (on stderr, only when stdout is a terminal), and
//! the files, written atomically with the generation parameters in their metadata.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wanrt::backend::Device;
use wanrt::io::atomic::check_writable;
use wanrt::lora::Mode;
use wanrt::pipeline::{
    read_latent, Flow, GenerateRequest, Generation, LoadOptions, LoraSpec, ModelSource,
    NagSettings, Pipeline, Preset, Progress, Stage, VaeTiling, FPS, MAX_SEED,
};
use wanrt::sampler::Slg;
use wanrt::video::{write_gif, write_mp4, write_png, write_png_frames, Mp4Options};
use wanrt::{Error, Result};

/// The prompt of `--demo` when none is given (the demo's output is noise whatever it says).
const DEMO_PROMPT: &str = "A red fox trots through fresh snow at dawn.";

/// Set by Ctrl-C: the generation stops at the next step with "cancelled".
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The first Ctrl-C cancels the generation at its next step (the outputs are written only at
/// the end, atomically, so nothing half-written is left); a second one exits at once.
fn install_interrupt() {
    // Failing to install it (another handler exists) only loses the graceful stop.
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

fn interrupted() -> Result<()> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        true => Err(Error::Cancelled),
        false => Ok(()),
    }
}

/// `--help`'s text after the options: the presets and their values.
fn presets_help() -> String {
    let mut s = String::from("Presets (--preset; explicit flags override them):\n");
    for p in Preset::ALL {
        s.push_str(&format!("  {}\n", p.describe()));
    }
    s.push_str(
        "Without --preset: quality. Sizes are multiples of 16, frame counts 1 + 4k (16 fps).\n\
         --demo runs a tiny random-weight model built in memory: its video is noise.",
    );
    s
}

/// Arguments of `wanrt generate`.
#[derive(Args)]
#[command(after_help = presets_help())]
pub struct GenerateArgs {
    /// Run a tiny random-weight model built in memory (no download needed; the video is noise).
    #[arg(long)]
    demo: bool,
    /// A model folder: the official Wan-AI folder or ComfyUI's models/ tree.
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// The DiT (a .safetensors file or a sharded folder); overrides the folder's.
    #[arg(long, value_name = "FILE")]
    dit: Option<PathBuf>,
    /// The VAE (Wan2.1_VAE.pth or a .safetensors).
    #[arg(long, value_name = "FILE")]
    vae: Option<PathBuf>,
    /// The UMT5 text encoder (.pth or .safetensors).
    #[arg(long, value_name = "FILE")]
    t5: Option<PathBuf>,
    /// The UMT5 tokenizer.json (google/umt5-xxl's).
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// A DiT config.json, for a model whose config the shapes do not tell.
    #[arg(long, value_name = "FILE")]
    dit_config: Option<PathBuf>,
    /// A VAE config.json.
    #[arg(long, value_name = "FILE")]
    vae_config: Option<PathBuf>,
    /// A UMT5 config.json.
    #[arg(long, value_name = "FILE")]
    t5_config: Option<PathBuf>,
    /// A LoRA applied at load, with its strength (default 1); repeat for several.
    #[arg(long = "lora", value_name = "FILE[:STRENGTH]")]
    loras: Vec<String>,
    /// How LoRAs are applied: merge (into the weights at load; no cost per step) or runtime
    /// (on the fly in every adapted layer; the weights stay as stored).
    #[arg(long, value_name = "MODE", default_value = "merge", value_parser = parse_lora_mode)]
    lora_mode: Mode,
    /// Prepend the LoRAs' trigger phrases (from their metadata) to the prompt.
    #[arg(long)]
    lora_trigger: bool,
    /// Sampling preset: distill or quality (see below).
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// What the video shows.
    #[arg(long, short)]
    prompt: Option<String>,
    /// What to avoid (default: Wan's own negative prompt).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Width in pixels, a multiple of 16 (default 832).
    #[arg(long)]
    width: Option<usize>,
    /// Height in pixels, a multiple of 16 (default 480).
    #[arg(long)]
    height: Option<usize>,
    /// Frame count, 1 + 4k (default 81: 5 s at 16 fps).
    #[arg(long)]
    frames: Option<usize>,
    /// Denoising steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Solver: unipc, dpm++, euler or lcm.
    #[arg(long, value_name = "NAME")]
    sampler: Option<String>,
    /// Flow shift of the schedule.
    #[arg(long)]
    shift: Option<f64>,
    /// Classifier-free guidance scale (1: off).
    #[arg(long)]
    cfg: Option<f64>,
    /// Use CFG-Zero* (optimised scale, zero-init of the first ~4 % of steps).
    #[arg(long)]
    cfg_zero_star: bool,
    /// NAG scale (turns NAG on; 0 turns it off, e.g. to override the distill preset).
    #[arg(long)]
    nag_scale: Option<f32>,
    /// NAG tau (turns NAG on).
    #[arg(long)]
    nag_tau: Option<f32>,
    /// NAG alpha (turns NAG on).
    #[arg(long)]
    nag_alpha: Option<f32>,
    /// NAG's negative prompt (turns NAG on; default: Wan's negative prompt).
    #[arg(long)]
    nag_negative_prompt: Option<String>,
    /// Skip Layer Guidance: DiT blocks skipped in the unconditional pass, e.g. 9,10.
    #[arg(long, value_name = "LIST")]
    slg_blocks: Option<String>,
    /// SLG start, a fraction of the steps (default 0.1; turns SLG on).
    #[arg(long)]
    slg_start: Option<f64>,
    /// SLG end, a fraction of the steps (default 1.0; turns SLG on).
    #[arg(long)]
    slg_end: Option<f64>,
    /// TeaCache threshold (0.05-0.08 for 1.3B, 0.14-0.2 for 14B).
    #[arg(long, value_name = "THRESH")]
    teacache: Option<f64>,
    /// Noise seed, 0 to 9223372036854775807 (default: random, printed).
    #[arg(long, value_parser = parse_seed, allow_hyphen_values = true)]
    seed: Option<u64>,
    /// The initial latent: a safetensors file with `x_T` [1, 16, T, H/8, W/8].
    #[arg(long, value_name = "FILE")]
    latent_init: Option<PathBuf>,
    /// Where the DiT and the sampling loop run: cpu, cuda or cuda:N (on CUDA the device memory
    /// plan also places the text encoder and the VAE decodes there; with --demo on the CPU).
    #[arg(long, value_name = "DEVICE", default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// Where the UMT5 text encoder runs: cpu, cuda or cuda:N (bf16), always as given (default:
    /// the CPU, or with a CUDA DiT the device when the memory plan finds room beside it).
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    t5_device: Option<Device>,
    /// Low-VRAM mode (CUDA): keep the DiT's last N blocks in pinned host memory, each streamed
    /// in while the previous one computes (default: the device memory plan chooses).
    #[arg(long, value_name = "N")]
    blocks_to_swap: Option<usize>,
    /// The device memory the pipeline may use, e.g. 24G (K, M, G, T: powers of 1024; default:
    /// what is free).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size)]
    max_device_memory: Option<u64>,
    /// DiT self-attention: auto (the 8-bit kernel where the device has one), q8, bf16, or
    /// q8-fp8 (8-bit with FP8 e4m3 P·V, sm_89/sm_90 only: about 3e-2 relative error against
    /// exact attention, 3x q8's; auto never picks it). On the CPU, q8 and q8-fp8 run their
    /// scheme's emulation (slow, for checking); auto and bf16 exact f32.
    #[arg(long, value_name = "KIND", default_value = "auto")]
    attention: String,
    /// How the VAE decodes: auto (whole frames when they fit in memory, else tiles), off
    /// (whole frames), or TILE,OVERLAP in latent pixels (e.g. 32,8: less memory, about twice
    /// the decoding time).
    #[arg(long, value_name = "auto|off|TILE,OVERLAP", default_value = "auto", value_parser = parse_vae_tiling)]
    vae_tiling: VaeTiling,
    /// The video: .mp4 (H.264, 16 fps), .gif, or .png for one frame (default out.mp4 unless
    /// --frames-dir is given).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Also (or only) write every frame as a PNG into this folder.
    #[arg(long, value_name = "DIR")]
    frames_dir: Option<PathBuf>,
    /// Print the run's parameters and timings as JSON on stdout at the end.
    #[arg(long)]
    json: bool,
}

/// A seed in `0..=MAX_SEED` (see [`MAX_SEED`] for why that range).
fn parse_seed(s: &str) -> std::result::Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if (0..=MAX_SEED as i128).contains(&v) => Ok(v as u64),
        Ok(_) => Err(format!("seed out of range: it must be 0 to {MAX_SEED}")),
        Err(_) => Err(format!("not a whole number (seeds are 0 to {MAX_SEED})")),
    }
}

fn parse_device(s: &str) -> std::result::Result<Device, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

pub(crate) fn parse_memory_size(s: &str) -> std::result::Result<u64, String> {
    wanrt::pipeline::device_plan::parse_memory_size(s).map_err(|e| e.to_string())
}

fn parse_lora_mode(s: &str) -> std::result::Result<Mode, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn parse_vae_tiling(s: &str) -> std::result::Result<VaeTiling, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// The output container, by file extension.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OutFormat {
    Mp4,
    Gif,
    Png,
}

fn out_format(path: &Path) -> Result<OutFormat> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("mp4") => Ok(OutFormat::Mp4),
        Some("gif") => Ok(OutFormat::Gif),
        Some("png") => Ok(OutFormat::Png),
        _ => Err(Error::InvalidArgument(format!(
            "--out {}: unknown format (use .mp4, .gif, or .png for a single frame; \
             --frames-dir DIR writes PNG frames)",
            path.display()
        ))),
    }
}

/// Runs `wanrt generate`; false on failure (reported on stderr).
pub fn run(args: &GenerateArgs) -> bool {
    crate::report::reported("", || generate(args)).is_some()
}

/// The request the arguments describe: the preset, then every explicit flag.
fn request(a: &GenerateArgs) -> Result<GenerateRequest> {
    let mut r = GenerateRequest::default();
    let preset: Preset = a.preset.as_deref().unwrap_or("quality").parse()?;
    preset.apply(&mut r);
    if a.demo {
        // Small enough to run in seconds on two cores.
        (r.width, r.height, r.frames, r.steps) = (320, 192, 17, 10);
    }
    r.prompt = match (&a.prompt, a.demo) {
        (Some(p), _) => p.clone(),
        (None, true) => DEMO_PROMPT.into(),
        (None, false) => {
            return Err(Error::InvalidArgument(
                "no prompt: pass --prompt TEXT (or --demo to try the tool without models)".into(),
            ))
        }
    };
    r.negative_prompt = a.negative_prompt.clone();
    set(&mut r.width, a.width);
    set(&mut r.height, a.height);
    set(&mut r.frames, a.frames);
    set(&mut r.steps, a.steps);
    set(&mut r.shift, a.shift);
    set(&mut r.guidance_scale, a.cfg);
    if let Some(s) = &a.sampler {
        r.solver = s.parse()?;
    }
    r.cfg_zero_star |= a.cfg_zero_star;
    let nag_flags = a.nag_scale.is_some()
        || a.nag_tau.is_some()
        || a.nag_alpha.is_some()
        || a.nag_negative_prompt.is_some();
    if a.nag_scale == Some(0.0) {
        r.nag = None;
    } else if nag_flags {
        let n = r.nag.get_or_insert_with(NagSettings::default);
        set(&mut n.scale, a.nag_scale);
        set(&mut n.tau, a.nag_tau);
        set(&mut n.alpha, a.nag_alpha);
        if let Some(p) = &a.nag_negative_prompt {
            n.negative_prompt = Some(p.clone());
        }
    }
    if a.slg_blocks.is_some() || a.slg_start.is_some() || a.slg_end.is_some() {
        let mut slg = Slg::default();
        if let Some(list) = &a.slg_blocks {
            slg.blocks = list
                .split(',')
                .map(|b| {
                    b.trim().parse::<usize>().map_err(|_| {
                        Error::InvalidArgument(format!(
                            "--slg-blocks {list}: expected block numbers separated by commas"
                        ))
                    })
                })
                .collect::<Result<_>>()?;
        }
        set(&mut slg.start, a.slg_start);
        set(&mut slg.end, a.slg_end);
        r.slg = Some(slg);
    }
    r.teacache = a.teacache;
    r.attention = a.attention.parse()?;
    r.seed = a.seed;
    r.lora_trigger = a.lora_trigger;
    r.vae_tiling = a.vae_tiling;
    r.validate()?;
    Ok(r)
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// Checks the output paths before any work: a known format, writable places.
fn check_outputs(a: &GenerateArgs, req: &GenerateRequest) -> Result<Option<(PathBuf, OutFormat)>> {
    let out = match (&a.out, &a.frames_dir) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(PathBuf::from("out.mp4")),
    };
    let out = match out {
        Some(p) => {
            let f = out_format(&p)?;
            if f == OutFormat::Png && req.frames != 1 {
                return Err(Error::InvalidArgument(format!(
                    "--out {}: a PNG holds one frame but {} are asked for; use --frames-dir \
                     DIR for PNG frames, or .mp4/.gif",
                    p.display(),
                    req.frames
                )));
            }
            if p.is_dir() {
                return Err(Error::InvalidArgument(format!(
                    "--out {} is a folder; give a file name",
                    p.display()
                )));
            }
            check_writable(&p)?;
            Some((p, f))
        }
        None => None,
    };
    if let Some(dir) = &a.frames_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        check_writable(&dir.join(wanrt::video::frame_file_name(0)))?;
    }
    Ok(out)
}

fn generate(a: &GenerateArgs) -> Result<()> {
    install_interrupt();
    let mut req = request(a)?;
    let device = a.device;
    device.ensure_supported()?;
    if let Some(path) = &a.latent_init {
        req.latent_init = Some(read_latent(path)?);
    }
    let out = check_outputs(a, &req)?;
    let loras = a
        .loras
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<LoraSpec>>>()?;
    let show = std::io::stdout().is_terminal();
    let pipe = if a.demo {
        if !loras.is_empty() || a.models.is_some() || a.dit.is_some() {
            return Err(Error::InvalidArgument(
                "--demo builds its own tiny model: it takes no model files or LoRAs".into(),
            ));
        }
        Pipeline::demo(0)?.to_device(device)?
    } else {
        let source = ModelSource {
            models_dir: a.models.clone(),
            dit: a.dit.clone(),
            vae: a.vae.clone(),
            t5: a.t5.clone(),
            tokenizer: a.tokenizer.clone(),
            dit_config: a.dit_config.clone(),
            vae_config: a.vae_config.clone(),
            t5_config: a.t5_config.clone(),
        };
        let files = source.resolve()?;
        let spinner = spinner(show, "loading models");
        let options = LoadOptions {
            device,
            lora_mode: a.lora_mode,
            threads: None,
            t5_device: a.t5_device,
            blocks_to_swap: a.blocks_to_swap,
            max_device_memory: a.max_device_memory,
        };
        let pipe = Pipeline::load(&files, &loras, &options);
        spinner.finish_and_clear();
        pipe?
    };
    report_loras(&pipe, a.lora_trigger);
    if a.preset.as_deref() == Some("distill") && loras.is_empty() && !a.demo {
        eprintln!(
            "note: the distill preset (8 steps, cfg 1) expects a step-distill LoRA \
             (--lora FILE:1) or a step-distilled DiT; a base model gives blurry results with it"
        );
    }
    pipe.check(&req)?;
    let mut bars = Bars::new(show);
    let g = pipe.generate(&req, &mut |p| bars.update(p))?;
    bars.finish();
    interrupted()?;
    let meta = g.metadata(pipe.info()).to_string();
    let mut written = Vec::new();
    if let Some((path, format)) = &out {
        write_video(path, *format, &g, &meta)?;
        written.push(path.display().to_string());
    }
    if let Some(dir) = &a.frames_dir {
        write_png_frames(dir, &g.frames, g.width, g.height, Some(&meta))?;
        written.push(format!("{}/ (PNG frames)", dir.display()));
    }
    if pipe.info().demo {
        eprintln!("note: --demo uses random weights: the video is noise, by design");
    }
    eprintln!(
        "wrote {} ({} frames, {}x{}, {} fps, seed {}) in {:.1} s",
        written.join(" and "),
        g.frame_count,
        g.width,
        g.height,
        FPS,
        g.params.seed.unwrap_or_default(),
        g.timings.total
    );
    if a.json {
        let mut v = g.to_json(pipe.info());
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("outputs".into(), written.into());
        }
        println!("{v}");
    }
    Ok(())
}

fn write_video(path: &Path, format: OutFormat, g: &Generation, meta: &str) -> Result<()> {
    let (f, w, h) = (&g.frames, g.width, g.height);
    match format {
        OutFormat::Mp4 => write_mp4(path, f, w, h, &Mp4Options::default(), Some(meta)),
        OutFormat::Gif => write_gif(path, f, w, h, FPS, Some(meta)),
        OutFormat::Png => write_png(path, f, w, h, Some(meta)),
    }
}

/// The trigger phrases on offer (the library logs the warnings about ignored LoRA keys).
fn report_loras(pipe: &Pipeline, used: bool) {
    for l in &pipe.info().loras {
        if let (Some(t), false) = (&l.trigger, used) {
            eprintln!(
                "note: {} has the trigger phrase \"{t}\": add --lora-trigger to prepend it to \
                 the prompt",
                l.path.display()
            );
        }
    }
}

fn spinner(show: bool, msg: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let s = ProgressBar::new_spinner().with_message(msg);
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

/// One progress bar per stage, on stderr, drawn only when stdout is a terminal.
struct Bars {
    show: bool,
    bar: Option<(Stage, ProgressBar)>,
}

impl Bars {
    fn new(show: bool) -> Bars {
        Bars { show, bar: None }
    }

    fn update(&mut self, p: &Progress) -> Flow {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Flow::Cancel;
        }
        if !self.show {
            return Flow::Continue;
        }
        if self.bar.as_ref().is_none_or(|(s, _)| *s != p.stage) {
            self.finish();
            let name = match p.stage {
                Stage::TextEncoding => "text    ",
                Stage::Denoising => "denoise ",
                Stage::Decoding => "decode  ",
            };
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {elapsed_precise} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> ");
            let bar =
                ProgressBar::with_draw_target(Some(p.total as u64), ProgressDrawTarget::stderr())
                    .with_style(style)
                    .with_prefix(name);
            self.bar = Some((p.stage, bar));
        }
        let (_, bar) = self.bar.as_ref().expect("set above");
        bar.set_position(p.done as u64);
        if p.done > 0 {
            let per = p.elapsed / p.done as f64;
            let msg = match (p.stage, p.sigma) {
                (Stage::Denoising, Some(s)) => format!("{per:.2} s/it, sigma {s:.3}"),
                (Stage::Decoding, _) => format!("{per:.2} s/frame"),
                _ => String::new(),
            };
            bar.set_message(msg);
        }
        Flow::Continue
    }

    fn finish(&mut self) {
        if let Some((_, bar)) = self.bar.take() {
            bar.finish();
        }
    }
}
