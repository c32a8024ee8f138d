//! The bench targets: their flags, and how each builds its random model and inputs.

use std::collections::BTreeMap;
use std::path::Path;

use clap::{Args, ValueEnum};
use serde_json::Value;
use wanrt::backend::Device;
use wanrt::io::config::DitConfig;
use wanrt::model::dit::{
    weight_shapes, AttentionChoice, ForwardOptions, SelfAttention, TextContext, WanDit,
};
use wanrt::tensor::Weight;
use wanrt::{DType, Error, Result, Tensor};

use super::Prepared;
use wanrt::tensor::random;

/// A target's flags turned into a ready-to-time [`Prepared`].
pub trait Prepare {
    /// Builds the random weights and inputs on `device` (untimed).
    fn prepare(&self, device: Device) -> Result<Prepared>;
}

/// An input placed on `device`: as is on the CPU; on CUDA uploaded, an activation rounded to
/// bf16 first (the CUDA backend's activation dtype), other inputs (the f32 modulation, latents)
/// kept in their dtype.
fn place(t: Tensor, device: Device, activation: bool) -> Result<Tensor> {
    match device {
        Device::Cpu => Ok(t),
        Device::Cuda(_) if activation => t.to_dtype(DType::BF16)?.to_device(device),
        Device::Cuda(_) => t.to_device(device),
    }
}

/// A weight placed on `device` in its stored dtype, with its scale.
fn place_weight(w: Weight, device: Device) -> Result<Weight> {
    Ok(Weight {
        tensor: w.tensor.to_device(device)?,
        scale: w.scale,
    })
}

/// `--attention`: an [`AttentionChoice`] by name, as `wanrt generate --attention` takes it.
fn parse_attention(s: &str) -> std::result::Result<AttentionChoice, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// The `("attention", name)` shape entry of `choice`. On the CPU an 8-bit choice runs the
/// scheme's emulation (the kernels' arithmetic in scalar code: slow, for checking), which a note
/// on stderr says.
fn attention_entry(choice: AttentionChoice, device: Device) -> (&'static str, Value) {
    if let (Device::Cpu, SelfAttention::Q8(_)) = (device, choice.on(device)) {
        eprintln!(
            "note: --attention {} on the CPU runs the 8-bit scheme's emulation (slow, for checking)",
            choice.name()
        );
    }
    ("attention", choice.name().into())
}

/// Weight storage dtypes (activations are always f32).
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum WeightDType {
    F32,
    Bf16,
    F16,
    /// fp8 e4m3fn (unscaled).
    Fp8,
    /// fp8 e5m2.
    Fp8E5m2,
}

impl WeightDType {
    pub(super) fn dtype(self) -> DType {
        match self {
            WeightDType::F32 => DType::F32,
            WeightDType::Bf16 => DType::BF16,
            WeightDType::F16 => DType::F16,
            WeightDType::Fp8 => DType::F8E4M3,
            WeightDType::Fp8E5m2 => DType::F8E5M2,
        }
    }

    pub(super) fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// `dit-block` flags; the defaults are one block of the 1.3B model at 3744 tokens.
#[derive(Args, Debug)]
pub struct BlockShape {
    /// Hidden width.
    #[arg(long, default_value_t = 1536)]
    dim: usize,
    /// Attention heads (must divide `--dim` into an even head width).
    #[arg(long, default_value_t = 12)]
    heads: usize,
    /// FFN inner width.
    #[arg(long, default_value_t = 8960)]
    ffn_dim: usize,
    /// Video tokens (latent patches).
    #[arg(long, default_value_t = 3744)]
    tokens: usize,
    /// Text tokens of the cross-attention context.
    #[arg(long, default_value_t = 512)]
    text_len: usize,
    /// Samples per run (2 = a CFG pair).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Weight storage dtype.
    #[arg(long, value_enum, default_value_t = WeightDType::Bf16)]
    dtype: WeightDType,
}

impl Prepare for BlockShape {
    fn prepare(&self, device: Device) -> Result<Prepared> {
        positive(&[
            ("--tokens", self.tokens),
            ("--text-len", self.text_len),
            ("--batch", self.batch),
            ("--heads", self.heads),
        ])?;
        let cfg = DitConfig {
            dim: self.dim,
            ffn_dim: self.ffn_dim,
            num_heads: self.heads,
            num_layers: 1,
            text_len: self.text_len,
            ..DitConfig::preset("1.3b")?
        };
        let dit = WanDit::new(random_dit(&cfg, self.dtype.dtype(), device)?, cfg.clone())?;
        let (b, s, d) = (self.batch, self.tokens, self.dim);
        let x = place(random::tensor(&[b, s, d], 1001, 0.0, 1.0)?, device, true)?;
        let e0 = place(random::tensor(&[b, 6, d], 1002, 0.0, 0.1)?, device, false)?;
        // The context as the block sees it (after the text embedding); its K/V are computed in
        // every run, as the reference block does.
        let text = TextContext {
            embedded: place(
                random::tensor(&[b, self.text_len, d], 1003, 0.0, 1.0)?,
                device,
                true,
            )?,
            kv: None,
        };
        Ok(Prepared {
            target: "dit-block",
            shape: vec![
                ("dim", d.into()),
                ("heads", self.heads.into()),
                ("ffn_dim", self.ffn_dim.into()),
                ("tokens", s.into()),
                ("text_len", self.text_len.into()),
                ("batch", b.into()),
            ],
            dtype: self.dtype.name(),
            flop: b as f64 * block_flop(&cfg, s),
            attention_ops: false,
            run: Box::new(move || dit.block_forward(0, &x, &e0, [1, 1, s], &text)),
        })
    }
}

/// Matrix-product FLOPs of one block for one sample of `s` tokens.
fn block_flop(c: &DitConfig, s: usize) -> f64 {
    let (s, l, d, f) = (s as f64, c.text_len as f64, c.dim as f64, c.ffn_dim as f64);
    let self_attn = 8.0 * s * d * d + 4.0 * s * s * d;
    let cross_attn = 4.0 * s * d * d + 4.0 * l * d * d + 4.0 * s * l * d;
    self_attn + cross_attn + 4.0 * s * d * f
}

/// `dit` flags.
#[derive(Args, Debug)]
pub struct DitShape {
    /// The model: `1.3b`, `14b`, or the path of a Wan `config.json`.
    #[arg(long, default_value = "1.3b")]
    config: String,
    /// Run only the first N blocks.
    #[arg(long)]
    layers: Option<usize>,
    /// Latent frames (default 12, with height 26 and width 48: 3744 tokens).
    #[arg(long, conflicts_with = "tokens")]
    frames: Option<usize>,
    /// Latent height (a multiple of the patch height, 2).
    #[arg(long, conflicts_with = "tokens")]
    height: Option<usize>,
    /// Latent width (a multiple of the patch width, 2).
    #[arg(long, conflicts_with = "tokens")]
    width: Option<usize>,
    /// Video tokens instead of a latent size (a 1-frame latent one patch high).
    #[arg(long)]
    tokens: Option<usize>,
    /// Samples per run (2 = a CFG pair).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Weight storage dtype.
    #[arg(long, value_enum, default_value_t = WeightDType::Bf16)]
    dtype: WeightDType,
    /// The blocks' self-attention, by choice name as `generate --attention` takes it (`q8`: the
    /// 8-bit kernel, on the CPU its slow emulation; `bf16`: the 16-bit kernel, exact f32 on the CPU).
    #[arg(long, default_value = "bf16", value_parser = parse_attention)]
    attention: AttentionChoice,
}

impl Prepare for DitShape {
    fn prepare(&self, device: Device) -> Result<Prepared> {
        let cfg = dit_config(&self.config, self.layers)?;
        positive(&[("--batch", self.batch)])?;
        let [pt, ph, pw] = cfg.patch_size;
        let latent = match self.tokens {
            Some(t) => {
                positive(&[("--tokens", t)])?;
                [pt, ph, pw * t]
            }
            None => [
                self.frames.unwrap_or(12),
                self.height.unwrap_or(26),
                self.width.unwrap_or(48),
            ],
        };
        if latent
            .iter()
            .zip(cfg.patch_size)
            .any(|(&n, p)| n == 0 || n % p != 0)
        {
            return Err(Error::InvalidArgument(format!(
                "latent {latent:?} (--frames, --height, --width): each must be a non-zero multiple of the patch size {:?}",
                cfg.patch_size
            )));
        }
        let tokens = latent[0] / pt * (latent[1] / ph) * (latent[2] / pw);
        let dit = WanDit::new(random_dit(&cfg, self.dtype.dtype(), device)?, cfg.clone())?;
        let b = self.batch;
        let x = random::tensor(
            &[b, cfg.in_dim, latent[0], latent[1], latent[2]],
            2001,
            0.0,
            1.0,
        )?;
        let x = place(x, device, false)?;
        let ctx = (0..b)
            .map(|i| {
                let c = random::tensor(&[cfg.text_len, cfg.text_dim], 2002 + i as u32, 0.0, 0.1)?;
                place(c, device, true)
            })
            .collect::<Result<Vec<_>>>()?;
        let steps = vec![500.0; b];
        let opts = ForwardOptions {
            attention: self.attention.on(device),
            ..Default::default()
        };
        let vol = (pt * ph * pw) as f64;
        let (s, d) = (tokens as f64, cfg.dim as f64);
        let outer = 2.0 * cfg.text_len as f64 * (cfg.text_dim as f64 * d + d * d)
            + 2.0 * s * d * vol * (cfg.in_dim + cfg.out_dim) as f64;
        let flop = b as f64 * (cfg.num_layers as f64 * block_flop(&cfg, tokens) + outer);
        Ok(Prepared {
            target: "dit",
            shape: vec![
                ("config", self.config.clone().into()),
                ("layers", cfg.num_layers.into()),
                ("dim", cfg.dim.into()),
                ("latent", Value::from(latent.to_vec())),
                ("tokens", tokens.into()),
                ("batch", b.into()),
                attention_entry(self.attention, device),
            ],
            dtype: self.dtype.name(),
            flop,
            attention_ops: false,
            run: Box::new(move || dit.forward(&x, &steps, &ctx, &opts)),
        })
    }
}

/// `attention` flags.
#[derive(Args, Debug)]
pub struct AttentionShape {
    /// Query tokens.
    #[arg(long, default_value_t = 3744)]
    tokens: usize,
    /// Key/value tokens (default: `--tokens`, self-attention; 512 is the text cross-attention).
    #[arg(long)]
    kv_tokens: Option<usize>,
    /// Heads.
    #[arg(long, default_value_t = 12)]
    heads: usize,
    /// Head width.
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// The kernel, by choice name as `generate --attention` takes it (`q8`: the 8-bit kernel,
    /// its quantization pre-pass timed with it, on the CPU its slow emulation; `bf16`: the 16-bit
    /// kernel, exact f32 on the CPU).
    #[arg(long, default_value = "bf16", value_parser = parse_attention)]
    attention: AttentionChoice,
}

impl Prepare for AttentionShape {
    fn prepare(&self, device: Device) -> Result<Prepared> {
        let (s, h, d) = (self.tokens, self.heads, self.head_dim);
        let kv = self.kv_tokens.unwrap_or(s);
        positive(&[
            ("--tokens", s),
            ("--kv-tokens", kv),
            ("--heads", h),
            ("--head-dim", d),
        ])?;
        let q = place(random::tensor(&[1, s, h, d], 3001, 0.0, 1.0)?, device, true)?;
        let k = place(
            random::tensor(&[1, kv, h, d], 3002, 0.0, 1.0)?,
            device,
            true,
        )?;
        let v = place(
            random::tensor(&[1, kv, h, d], 3003, 0.0, 1.0)?,
            device,
            true,
        )?;
        let scale = 1.0 / (d as f32).sqrt();
        let kernel = self.attention.on(device);
        Ok(Prepared {
            target: "attention",
            shape: vec![
                ("tokens", s.into()),
                ("kv_tokens", kv.into()),
                ("heads", h.into()),
                ("head_dim", d.into()),
                attention_entry(self.attention, device),
            ],
            dtype: q.dtype().name().into(),
            flop: 4.0 * (s * kv * h * d) as f64,
            attention_ops: true,
            run: Box::new(move || kernel.apply(&q, &k, &v, scale)),
        })
    }
}

/// `gemm` flags: `[tokens, in] × [out, in]ᵀ + bias`.
#[derive(Args, Debug)]
pub struct GemmShape {
    /// Rows of the activations.
    #[arg(long, default_value_t = 3744)]
    tokens: usize,
    /// Input features.
    #[arg(long = "in", default_value_t = 1536)]
    in_features: usize,
    /// Output features.
    #[arg(long = "out", default_value_t = 8960)]
    out_features: usize,
    /// Weight storage dtype.
    #[arg(long, value_enum, default_value_t = WeightDType::Bf16)]
    dtype: WeightDType,
}

impl Prepare for GemmShape {
    fn prepare(&self, device: Device) -> Result<Prepared> {
        let (t, i, o) = (self.tokens, self.in_features, self.out_features);
        positive(&[("--tokens", t), ("--in", i), ("--out", o)])?;
        let x = place(random::tensor(&[t, i], 4001, 0.0, 1.0)?, device, true)?;
        let amp = (3.0 / i as f32).sqrt();
        let w = random::weight(&[o, i], self.dtype.dtype(), 4002, 0.0, amp)?;
        let w = place_weight(w, device)?;
        let bias = random::weight(&[o], self.dtype.dtype(), 4003, 0.0, 0.02)?;
        let bias = place_weight(bias, device)?;
        Ok(Prepared {
            target: "gemm",
            shape: vec![("tokens", t.into()), ("in", i.into()), ("out", o.into())],
            dtype: self.dtype.name(),
            flop: 2.0 * (t * i * o) as f64,
            attention_ops: false,
            run: Box::new(move || x.linear(&w, Some(&bias))),
        })
    }
}

/// The DiT config `--config` names (`1.3b`, `14b` or a `config.json`), cut to its first
/// `layers` blocks when given.
pub(super) fn dit_config(config: &str, layers: Option<usize>) -> Result<DitConfig> {
    let cfg = match config {
        "1.3b" | "14b" => DitConfig::preset(config)?,
        path if Path::new(path).is_file() => {
            DitConfig::from_json_file(Path::new(path), DitConfig::preset("1.3b")?)?
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "--config {other}: not 1.3b, 14b or an existing config.json"
            )))
        }
    };
    cut_layers(cfg, layers)
}

/// `cfg` cut to its first `layers` blocks when given (at least 1, at most all of them).
pub(super) fn cut_layers(mut cfg: DitConfig, layers: Option<usize>) -> Result<DitConfig> {
    if let Some(n) = layers {
        positive(&[("--layers", n)])?;
        if n > cfg.num_layers {
            return Err(Error::InvalidArgument(format!(
                "--layers {n}: the model has {} layers",
                cfg.num_layers
            )));
        }
        cfg.num_layers = n;
    }
    Ok(cfg)
}

/// Fails with a clear message for any flag that is 0.
fn positive(flags: &[(&str, usize)]) -> Result<()> {
    match flags.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(Error::InvalidArgument(format!("{name} must be at least 1"))),
        None => Ok(()),
    }
}

/// Random DiT weights for every tensor of `cfg`, stored in `dtype` ([`random_weights`]).
fn random_dit(cfg: &DitConfig, dtype: DType, device: Device) -> Result<BTreeMap<String, Weight>> {
    random_weights(weight_shapes(cfg), dtype, 0, device)
}

/// Random weights of the given names and shapes, stored in `dtype` on `device`, tensor `k`
/// drawn from stream `seed + k`: matrices and convolutions uniform with unit variance gain
/// (`±sqrt(3/fan_in)`), norm gains (`norm*.weight`, `gamma`) near 1, biases, modulation
/// tables and other vectors small.
pub(super) fn random_weights(
    shapes: Vec<(String, Vec<usize>)>,
    dtype: DType,
    seed: u32,
    device: Device,
) -> Result<BTreeMap<String, Weight>> {
    shapes
        .into_iter()
        .enumerate()
        .map(|(k, (name, dims))| {
            let fan_in = dims[1..].iter().product::<usize>().max(1) as f32;
            let gain =
                name.ends_with("gamma") || name.contains("norm") && name.ends_with(".weight");
            let (center, amp) = if gain {
                (1.0, 0.1)
            } else if dims.len() == 1 || name.ends_with("modulation") {
                (0.0, 0.02)
            } else {
                (0.0, (3.0 / fan_in).sqrt())
            };
            let w = random::weight(&dims, dtype, seed.wrapping_add(k as u32), center, amp)?;
            Ok((name, place_weight(w, device)?))
        })
        .collect()
}
