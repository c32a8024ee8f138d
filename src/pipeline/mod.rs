//! Text to video, end to end: the safe API that the command line and the C ABI wrap.
//!
//! [`Pipeline::load`] opens the three models (the UMT5 text encoder with its tokenizer, the
//! DiT with any LoRAs merged in, the VAE) from [`ModelFiles`], which [`ModelSource::resolve`]
//! finds from explicit paths or a model folder (official Wan-AI or ComfyUI layout).
//! [`Pipeline::generate`] runs one [`GenerateRequest`] the way upstream does
//! (wan-architecture.md §0):
//!
//! 1. check the whole request before any heavy work ([`Pipeline::check`]): sizes, frame count,
//!    guidance settings, prompt lengths in tokens, the seed, the working memory against what
//!    the machine has;
//! 2. encode the prompt, the negative prompt (Wan's default when none is given) and NAG's
//!    negative prompt: each trimmed to its own length, zero-padded to `text_len` by the DiT;
//! 3. start from the seed's noise ([`crate::sampler::noise`]) or the given latent, and denoise
//!    with the [`crate::sampler::Sampler`] driver (the solver, CFG or CFG-Zero*, NAG, SLG,
//!    TeaCache);
//! 4. decode the latent with the VAE frame by frame, each frame turned into 8-bit RGB as
//!    `round((x + 1)·127.5)` as soon as it is decoded.
//!
//! A callback sees every stage's progress (each prompt, each step with its sigma, each frame)
//! and can cancel: generation then stops within one step with [`Error::Cancelled`].

mod demo;
mod files;
mod memory;
mod request;
mod trigger;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

pub use files::{ModelFiles, ModelLayout, ModelSource};
pub use memory::{available_memory, MemoryEstimate};
pub use request::{
    solver_name, GenerateRequest, NagSettings, Preset, DEFAULT_NEGATIVE_PROMPT, FPS, MAX_SEED,
};
pub use trigger::{trigger_phrase, with_triggers};

pub use crate::sampler::Flow;

use crate::error::{Error, Result};
use crate::lora::{self, Lora, Mode};
use crate::model::dit::{NagParams, TextContext, WanDit};
use crate::model::t5::{file_identity, TextEncoder};
use crate::model::vae::{to_rgb8, DecodeOptions, WanVae};
use crate::sampler::{Guidance, Sampler, SamplerConfig, TeaCache, TeaCacheModel, WanVelocity};
use crate::tensor::{DType, Tensor};

/// A LoRA to merge at load, with its strength.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The LoRA file, in any format [`Lora::open`] reads.
    pub path: PathBuf,
    /// The strength (1: as trained; negative subtracts it).
    pub strength: f32,
}

impl std::str::FromStr for LoraSpec {
    type Err = Error;
    /// `FILE` (strength 1) or `FILE:STRENGTH`.
    fn from_str(s: &str) -> Result<LoraSpec> {
        if let Some((file, strength)) = s.rsplit_once(':') {
            if let Ok(v) = strength.trim().parse::<f32>() {
                if !v.is_finite() {
                    return Err(Error::InvalidArgument(format!(
                        "LoRA strength `{strength}` in `{s}` must be a finite number"
                    )));
                }
                return Ok(LoraSpec {
                    path: file.into(),
                    strength: v,
                });
            }
        }
        if s.is_empty() {
            return Err(Error::InvalidArgument("empty LoRA path".into()));
        }
        Ok(LoraSpec {
            path: s.into(),
            strength: 1.0,
        })
    }
}

/// Where the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend.
    Cpu,
    /// An NVIDIA GPU (the `cuda` feature).
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Device> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            _ => Err(Error::InvalidArgument(format!(
                "unknown device `{s}` (expected cpu or cuda)"
            ))),
        }
    }
}

impl Device {
    /// Fails for a device the pipeline cannot run on: CUDA in a build without the `cuda`
    /// feature ([`Error::CudaNotCompiled`]), and for now CUDA in any build, since the models
    /// run on the CPU backend only so far.
    pub fn ensure_supported(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda => {
                crate::backend::cuda::device_available()?;
                Err(Error::Device(
                    "CUDA: the pipeline runs on the CPU backend only so far; use --device cpu"
                        .into(),
                ))
            }
        }
    }
}

/// A LoRA merged into the DiT.
#[derive(Debug, Clone)]
pub struct LoadedLora {
    /// The file.
    pub path: PathBuf,
    /// Its strength.
    pub strength: f32,
    /// A fingerprint of the file ([`file_identity`]), recorded with each generation.
    pub identity: String,
    /// Its trigger phrase, from its metadata ([`trigger_phrase`]).
    pub trigger: Option<String>,
    /// Low-rank pairs merged.
    pub low_rank: usize,
    /// Full deltas merged.
    pub full_deltas: usize,
    /// Keys of the file that matched no module of the model (ignored).
    pub ignored_keys: Vec<String>,
}

/// What a [`Pipeline`] was built from.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    /// The files (`None` for models built in memory, such as [`Pipeline::demo`]).
    pub files: Option<ModelFiles>,
    /// Fingerprints ([`file_identity`]) of the DiT, VAE and text encoder files.
    pub identities: Option<[String; 3]>,
    /// The LoRAs, in the order merged.
    pub loras: Vec<LoadedLora>,
    /// Seconds spent loading.
    pub load_seconds: f64,
    /// Whether this is the random-weight demo model (its output is noise).
    pub demo: bool,
}

impl ModelInfo {
    /// The models and LoRAs as JSON: file names (not full paths) and fingerprints.
    pub fn to_json(&self) -> Value {
        let name = |p: &Path| {
            p.file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
        };
        let models = match (&self.files, &self.identities) {
            (Some(f), Some([dit, vae, t5])) => json!({
                "layout": f.layout.to_string(),
                "dit": {"file": name(&f.dit), "identity": dit},
                "vae": {"file": name(&f.vae), "identity": vae},
                "t5": {"file": name(&f.t5), "identity": t5},
            }),
            _ => json!({ "demo": self.demo }),
        };
        let loras: Vec<Value> = self
            .loras
            .iter()
            .map(|l| json!({"file": name(&l.path), "strength": l.strength, "identity": l.identity}))
            .collect();
        json!({ "models": models, "loras": loras })
    }
}

/// The three models of text-to-video generation, loaded once and used for any number of
/// [`Pipeline::generate`] calls.
#[derive(Debug)]
pub struct Pipeline {
    text: TextEncoder,
    dit: WanDit,
    vae: WanVae,
    info: ModelInfo,
}

/// A stage of [`Pipeline::generate`], as its progress callback sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Encoding the prompts (`total`: how many).
    TextEncoding,
    /// Denoising (`total`: the steps).
    Denoising,
    /// Decoding the latent into frames (`total`: the frames).
    Decoding,
}

/// What the progress callback of [`Pipeline::generate`] is told: called once as each stage
/// starts (`done = 0`) and after each unit of work (`done` units finished).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// The stage.
    pub stage: Stage,
    /// Units of the stage finished.
    pub done: usize,
    /// Units of the stage in all.
    pub total: usize,
    /// While denoising, the noise level of the latent now (1 → 0).
    pub sigma: Option<f64>,
    /// Seconds since the stage started.
    pub elapsed: f64,
}

/// Seconds spent in each stage of a generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Checking the request and encoding the prompts.
    pub text_encoding: f64,
    /// All denoising steps.
    pub denoising: f64,
    /// Each denoising step.
    pub steps: Vec<f64>,
    /// Decoding the latent into frames.
    pub decoding: f64,
    /// The whole generation.
    pub total: f64,
}

/// The result of [`Pipeline::generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// 8-bit RGB frames, `[frame_count, height, width, 3]` row-major.
    pub frames: Vec<u8>,
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Number of frames.
    pub frame_count: usize,
    /// The denoised latent `[1, 16, T, H/8, W/8]` (normalized, as the DiT produces it).
    pub latent: Tensor,
    /// The decoded video `[1, 3, F, H, W]` in `[-1, 1]`, when the request asked to keep it.
    pub video: Option<Tensor>,
    /// The request as run: the seed drawn if none was given, the negative prompt filled in,
    /// the trigger phrases prepended to the prompt.
    pub params: GenerateRequest,
    /// Where the time went.
    pub timings: Timings,
}

impl Generation {
    /// The generation's parameters with the models and LoRAs that made it: what a video file
    /// records so the result can be reproduced.
    pub fn metadata(&self, info: &ModelInfo) -> Value {
        let mut v = self.params.to_json();
        if let (Value::Object(m), Value::Object(extra)) = (&mut v, info.to_json()) {
            m.extend(extra);
            m.insert(
                "generator".into(),
                json!(concat!("wanrt ", env!("CARGO_PKG_VERSION"))),
            );
        }
        v
    }

    /// [`Generation::metadata`] plus the timings (the CLI's `--json`).
    pub fn to_json(&self, info: &ModelInfo) -> Value {
        let mut v = self.metadata(info);
        let t = &self.timings;
        if let Value::Object(m) = &mut v {
            m.insert(
                "timings".into(),
                json!({
                    "load_s": info.load_seconds,
                    "text_encoding_s": t.text_encoding,
                    "denoising_s": t.denoising,
                    "steps_s": t.steps,
                    "decoding_s": t.decoding,
                    "total_s": t.total,
                }),
            );
        }
        v
    }
}

/// A request checked against the models, ready to run.
struct Plan {
    req: GenerateRequest,
    seed: u64,
    latent_dims: [usize; 5],
    teacache: Option<TeaCache>,
    batch_cfg: bool,
    memory: MemoryEstimate,
}

impl Pipeline {
    /// Loads the models from `files`, merging `loras` into the DiT (in its stored dtype). The
    /// cheap checks run first: the device, every LoRA file (a LoRA for another architecture or
    /// model size fails before any weight is changed), the tokenizer and text encoder, the VAE.
    pub fn load(files: &ModelFiles, loras: &[LoraSpec], device: Device) -> Result<Pipeline> {
        let start = Instant::now();
        device.ensure_supported()?;
        let opened = loras
            .iter()
            .map(|l| Lora::open(&l.path).map(|lora| (lora, l.strength)))
            .collect::<Result<Vec<_>>>()?;
        let text = TextEncoder::open(&files.t5, files.t5_config.as_deref(), &files.tokenizer)?;
        let vae = WanVae::open(&files.vae, files.vae_config.as_deref())?;
        let refs: Vec<(&Lora, f32)> = opened.iter().map(|(l, s)| (l, *s)).collect();
        let (dit, report) =
            lora::open_dit(&files.dit, files.dit_config.as_deref(), &refs, Mode::Merged)?;
        let loaded = opened
            .iter()
            .zip(report.loras)
            .map(|((lora, strength), r)| {
                Ok(LoadedLora {
                    path: lora.path.clone(),
                    strength: *strength,
                    identity: file_identity(&lora.path)?,
                    trigger: trigger_phrase(&lora.metadata),
                    low_rank: r.low_rank,
                    full_deltas: r.full_deltas,
                    ignored_keys: r.unmatched,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let identities = [
            file_identity(&files.dit)?,
            file_identity(&files.vae)?,
            file_identity(&files.t5)?,
        ];
        let mut p = Pipeline::from_models(text, dit, vae)?;
        p.info = ModelInfo {
            files: Some(files.clone()),
            identities: Some(identities),
            loras: loaded,
            load_seconds: start.elapsed().as_secs_f64(),
            demo: false,
        };
        Ok(p)
    }

    /// A pipeline from models built elsewhere; fails when they do not fit together (the text
    /// encoder's width against the DiT's text input, the VAE's latent channels against the
    /// DiT's).
    pub fn from_models(text: TextEncoder, dit: WanDit, vae: WanVae) -> Result<Pipeline> {
        let (t, d, v) = (text.encoder().config(), dit.config(), vae.config());
        if t.dim != d.text_dim {
            return Err(Error::InvalidConfig(format!(
                "the text encoder is {} wide but the DiT takes {}-wide text (models of \
                 different families?)",
                t.dim, d.text_dim
            )));
        }
        if t.text_len > d.text_len {
            return Err(Error::InvalidConfig(format!(
                "the text encoder yields up to {} tokens but the DiT takes {}",
                t.text_len, d.text_len
            )));
        }
        if v.z_dim != d.in_dim || v.z_dim != d.out_dim {
            return Err(Error::InvalidConfig(format!(
                "the VAE has {} latent channels but the DiT takes {} and yields {} (an \
                 image-to-video DiT or a Wan2.2 VAE?)",
                v.z_dim, d.in_dim, d.out_dim
            )));
        }
        Ok(Pipeline {
            text,
            dit,
            vae,
            info: ModelInfo::default(),
        })
    }

    /// What the pipeline was built from.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The text encoder.
    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }

    /// The DiT.
    pub fn dit(&self) -> &WanDit {
        &self.dit
    }

    /// The VAE.
    pub fn vae(&self) -> &WanVae {
        &self.vae
    }

    /// The trigger phrases of the merged LoRAs, in order.
    pub fn lora_triggers(&self) -> Vec<String> {
        self.info
            .loras
            .iter()
            .filter_map(|l| l.trigger.clone())
            .collect()
    }

    /// Checks `req` against the models without running it: everything
    /// [`GenerateRequest::validate`] checks, the prompts' token counts, SLG's blocks, the
    /// initial latent's shape and finite values, TeaCache's support for this DiT, and the
    /// working memory against the memory available. Returns the memory estimate.
    pub fn check(&self, req: &GenerateRequest) -> Result<MemoryEstimate> {
        Ok(self.plan(req)?.memory)
    }

    fn plan(&self, req: &GenerateRequest) -> Result<Plan> {
        req.validate()?;
        let mut req = req.clone();
        let seed = req.seed.unwrap_or_else(random_seed);
        req.seed = Some(seed);
        if req.lora_trigger {
            req.prompt = with_triggers(&req.prompt, &self.lora_triggers());
        }
        if req.uses_negative_prompt() && req.negative_prompt.is_none() {
            req.negative_prompt = Some(DEFAULT_NEGATIVE_PROMPT.to_string());
        }
        for (name, text) in self.prompts(&req) {
            let t = self.text.tokenizer().tokenize(text)?;
            if t.truncated {
                return Err(Error::InvalidArgument(format!(
                    "the {name} is {} tokens long; the text encoder reads at most {} \
                     (its end would be lost): shorten it",
                    t.full_len,
                    self.text.tokenizer().text_len()
                )));
            }
        }
        let cfg = self.dit.config();
        if let Some(b) = req
            .slg
            .as_ref()
            .and_then(|s| s.blocks.iter().find(|&&b| b >= cfg.num_layers))
        {
            return Err(Error::InvalidArgument(format!(
                "SLG block {b}: the DiT has blocks 0 to {}",
                cfg.num_layers - 1
            )));
        }
        let latent_dims = req.latent_dims(self.vae.config().z_dim);
        if let Some(x) = &req.latent_init {
            if x.dims() != latent_dims || !x.dtype().is_float() {
                return Err(Error::ShapeMismatch {
                    op: "initial latent x_T",
                    expected: format!(
                        "a float latent {latent_dims:?} for {}x{} (WxH) and {} frames",
                        req.width, req.height, req.frames
                    ),
                    got: x.shape().clone(),
                });
            }
            let values = x.to_f32_vec()?;
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "the initial latent x_T holds {v} at element {i}: it must hold finite numbers"
                )));
            }
        }
        let teacache = req
            .teacache
            .map(|t| Ok::<_, Error>(TeaCache::wan(teacache_model(cfg)?, t)))
            .transpose()?;
        let (batch_cfg, memory) = self.fit_memory(&req)?;
        Ok(Plan {
            req,
            seed,
            latent_dims,
            teacache,
            batch_cfg,
            memory,
        })
    }

    /// The prompts a request encodes, with their names for messages.
    fn prompts<'r>(&self, req: &'r GenerateRequest) -> Vec<(&'static str, &'r str)> {
        let mut out = vec![("prompt", req.prompt.as_str())];
        if req.uses_negative_prompt() {
            out.push(("negative prompt", req.negative_prompt()));
        }
        if let Some(n) = &req.nag {
            let text = n
                .negative_prompt
                .as_deref()
                .unwrap_or(DEFAULT_NEGATIVE_PROMPT);
            out.push(("NAG negative prompt", text));
        }
        out
    }

    /// The working memory, batching CFG only when it fits; an error when even unbatched
    /// passes do not fit in the memory available.
    fn fit_memory(&self, req: &GenerateRequest) -> Result<(bool, MemoryEstimate)> {
        let [_, c, t, h, w] = req.latent_dims(self.vae.config().z_dim);
        let neg = req.uses_negative_prompt();
        let nag = usize::from(req.nag.is_some());
        let estimate = |batch: usize| {
            memory::estimate(&memory::Shapes {
                dit: self.dit.config(),
                vae: self.vae.config(),
                latent: [c, t, h, w],
                video: [req.frames, req.height, req.width],
                batch,
                // Batched CFG keeps a concatenated copy of both contexts.
                contexts: 1 + usize::from(neg) + 2 * usize::from(neg && batch == 2) + nag,
            })
        };
        let batched = req.batch_cfg && neg && req.teacache.is_none();
        let Some(available) = available_memory() else {
            return Ok((batched, estimate(if batched { 2 } else { 1 })));
        };
        if batched {
            let e = estimate(2);
            if e.peak() <= available {
                return Ok((true, e));
            }
        }
        let e = estimate(1);
        if e.peak() > available {
            return Err(Error::OutOfMemory(format!(
                "{}x{} with {} frames needs about {} of working memory (denoising {}, VAE \
                 decoding {}) but only {} is available: lower the size or the frame count, or \
                 free memory",
                req.width,
                req.height,
                req.frames,
                memory::gib(e.peak()),
                memory::gib(e.denoising),
                memory::gib(e.decoding),
                memory::gib(available)
            )));
        }
        Ok((false, e))
    }

    /// Runs one generation (see the module docs); `on_progress` is called as each stage starts
    /// and after each prompt, step and frame, and cancels with [`Flow::Cancel`].
    pub fn generate(
        &self,
        req: &GenerateRequest,
        on_progress: &mut dyn FnMut(&Progress) -> Flow,
    ) -> Result<Generation> {
        let start = Instant::now();
        let plan = self.plan(req)?;
        let req = &plan.req;
        let mut timings = Timings::default();

        // Text: each prompt trimmed to its length; the DiT zero-pads and caches its K/V.
        let prompts = self.prompts(req);
        let mut contexts: Vec<TextContext> = Vec::with_capacity(prompts.len());
        let stage = Instant::now();
        report(
            on_progress,
            Stage::TextEncoding,
            0,
            prompts.len(),
            None,
            stage,
        )?;
        for (i, (_, text)) in prompts.iter().enumerate() {
            let emb = self.text.encode(text)?;
            contexts.push(self.dit.encode_text(&[emb.context], true)?);
            report(
                on_progress,
                Stage::TextEncoding,
                i + 1,
                prompts.len(),
                None,
                stage,
            )?;
        }
        timings.text_encoding = start.elapsed().as_secs_f64();
        let mut contexts = contexts.into_iter();
        let cond = contexts.next().expect("the prompt is always encoded");
        let uncond = req
            .uses_negative_prompt()
            .then(|| contexts.next())
            .flatten();
        let nag_context = req.nag.is_some().then(|| contexts.next()).flatten();

        // Denoising.
        let [_, c, t, h, w] = plan.latent_dims;
        let mut model = WanVelocity::new(&self.dit, &[c, t, h, w], cond, uncond)?
            .with_attention(req.attention.on_cpu());
        if let (Some(n), Some(ctx)) = (&req.nag, nag_context) {
            model = model.with_nag(NagParams {
                scale: n.scale,
                tau: n.tau,
                alpha: n.alpha,
                ..NagParams::new(ctx)
            });
        }
        if plan.batch_cfg {
            model = model.with_batched_cfg()?;
        }
        let mut latent = match &req.latent_init {
            Some(x) => x.to_f32_vec()?,
            None => crate::sampler::noise(plan.seed, &plan.latent_dims)?.to_f32_vec()?,
        };
        let schedule = req.solver.schedule(req.steps, req.shift)?;
        let sigma0 = schedule.sigmas[0];
        let guidance = if req.cfg_zero_star {
            Guidance::CfgZeroStar {
                scale: req.guidance_scale,
                zero_steps: req.zero_steps(),
            }
        } else {
            Guidance::Cfg {
                scale: req.guidance_scale,
            }
        };
        let mut config = SamplerConfig::new(req.solver, schedule, guidance);
        config.slg = req.slg.clone();
        config.teacache = plan.teacache;
        config.seed = plan.seed;
        let mut sampler = Sampler::<f32>::new(config)?;
        let stage = Instant::now();
        report(
            on_progress,
            Stage::Denoising,
            0,
            req.steps,
            Some(sigma0),
            stage,
        )?;
        let mut step_start = Instant::now();
        let run = sampler.run(&mut model, &mut latent, |p| {
            timings.steps.push(step_start.elapsed().as_secs_f64());
            step_start = Instant::now();
            on_progress(&Progress {
                stage: Stage::Denoising,
                done: p.step + 1,
                total: p.steps,
                sigma: Some(p.sigma_next),
                elapsed: stage.elapsed().as_secs_f64(),
            })
        });
        drop(model);
        run?;
        timings.denoising = stage.elapsed().as_secs_f64();
        let latent = Tensor::from_f32(latent, plan.latent_dims)?;

        // Decoding, frame by frame.
        let stage = Instant::now();
        let (video_h, video_w) = (req.height, req.width);
        let frame_count = self.vae.video_frames(t);
        let mut frames = Vec::with_capacity(frame_count * video_h * video_w * 3);
        let mut chunks = Vec::new();
        let mut done = 0;
        report(on_progress, Stage::Decoding, 0, frame_count, None, stage)?;
        self.vae
            .decode_frames(&latent, &DecodeOptions::default(), &mut |chunk| {
                frames.extend_from_slice(to_rgb8(&chunk)?.raw_bytes()?);
                done += chunk.dims()[2];
                if req.keep_video {
                    chunks.push(chunk);
                }
                report(on_progress, Stage::Decoding, done, frame_count, None, stage)
            })?;
        let video = match req.keep_video {
            true => {
                let refs: Vec<&Tensor> = chunks.iter().collect();
                Some(crate::tensor::ops::cat(&refs, 2)?)
            }
            false => None,
        };
        timings.decoding = stage.elapsed().as_secs_f64();
        timings.total = start.elapsed().as_secs_f64();
        Ok(Generation {
            frames,
            width: video_w,
            height: video_h,
            frame_count,
            latent,
            video,
            params: plan.req,
            timings,
        })
    }
}

/// Calls the progress callback; a cancel becomes [`Error::Cancelled`].
fn report(
    on_progress: &mut dyn FnMut(&Progress) -> Flow,
    stage: Stage,
    done: usize,
    total: usize,
    sigma: Option<f64>,
    since: Instant,
) -> Result<()> {
    let p = Progress {
        stage,
        done,
        total,
        sigma,
        elapsed: since.elapsed().as_secs_f64(),
    };
    match on_progress(&p) {
        Flow::Continue => Ok(()),
        Flow::Cancel => Err(Error::Cancelled),
    }
}

/// The TeaCache coefficients for this DiT (fitted for the 1.3B and 14B T2V models only).
fn teacache_model(cfg: &crate::io::config::DitConfig) -> Result<TeaCacheModel> {
    match (cfg.dim, cfg.num_layers) {
        (1536, 30) => Ok(TeaCacheModel::T2v1_3B),
        (5120, 40) => Ok(TeaCacheModel::T2v14B),
        (d, l) => Err(Error::InvalidArgument(format!(
            "TeaCache has coefficients for the Wan2.1 T2V 1.3B and 14B DiTs only, not for a DiT \
             of width {d} with {l} blocks"
        ))),
    }
}

/// A seed for a request without one, in `0..=MAX_SEED`: the standard library's per-process
/// random hasher keys mixed with the clock (no cryptographic quality needed).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.finish() & MAX_SEED
}

/// Reads an initial latent from a safetensors file: the tensor `x_T` as f32.
pub fn read_latent(path: &Path) -> Result<Tensor> {
    let ckpt = crate::io::open(path)?;
    let x = ckpt.tensors.get("x_T").ok_or_else(|| {
        Error::bad_file(
            path,
            format!(
                "no tensor `x_T` (the initial latent [1, 16, T, H/8, W/8]); it holds: {}",
                ckpt.tensors.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    if !x.dtype().is_float() {
        return Err(Error::UnsupportedDType {
            op: "initial latent x_T",
            dtype: x.dtype(),
        });
    }
    x.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_spec_parses_strength() {
        let l: LoraSpec = "a/b.safetensors:0.8".parse().unwrap();
        assert_eq!(
            (l.path.to_str(), l.strength),
            (Some("a/b.safetensors"), 0.8)
        );
        let l: LoraSpec = "b.safetensors".parse().unwrap();
        assert_eq!(l.strength, 1.0);
        let l: LoraSpec = "dir:x/b.safetensors".parse().unwrap();
        assert_eq!(
            (l.path.to_str(), l.strength),
            (Some("dir:x/b.safetensors"), 1.0)
        );
        assert!("b:inf".parse::<LoraSpec>().is_err());
        assert!("".parse::<LoraSpec>().is_err());
    }

    #[test]
    fn random_seeds_are_in_range() {
        assert!((0..100).all(|_| random_seed() <= MAX_SEED));
    }
}
