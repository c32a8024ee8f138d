//! Text to video, end to end: the safe API that the command line and the C ABI wrap.
//!
//! [`Pipeline::load`] opens the three models (the UMT5 text encoder with its tokenizer, the
//! DiT with any LoRAs merged in, the VAE) from [`ModelFiles`], which [`ModelSource::resolve`]
//! finds from explicit paths or a model folder (official Wan-AI or ComfyUI layout);
//! [`Pipeline::from_weights`] builds and places models given as weights in memory the same way.
//! [`Pipeline::generate`] runs one [`GenerateRequest`] the way upstream does
//! (wan-architecture.md §0):
//!
//! 1. check the whole request before any heavy work ([`Pipeline::check`]): sizes, frame count,
//!    guidance settings, prompt lengths in tokens, the seed, the weights and working memory
//!    against what the machine has (choosing batched CFG and the VAE's tiling to fit);
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
//!
//! Threads: a pipeline loaded with [`LoadOptions::threads`] runs its loading and generations
//! in its own rayon pool of that many threads, so pipelines with different thread counts can
//! run side by side; without it they share rayon's global pool (one thread per core, or
//! `RAYON_NUM_THREADS`).

mod demo;
pub mod device_plan;
mod files;
mod in_memory;
mod memory;
mod on_device;
mod request;
mod trigger;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

pub use device_plan::DevicePlan;
pub use files::{ModelFiles, ModelLayout, ModelSource};
pub use in_memory::ModelWeights;
pub use memory::{available_memory, Fit, MemoryEstimate, VaeTiling, WeightMemory};
pub use request::{
    solver_name, GenerateRequest, NagSettings, Preset, DEFAULT_NEGATIVE_PROMPT, FPS, MAX_FRAMES,
    MAX_SEED,
};
pub use trigger::{trigger_phrase, with_triggers};

pub use crate::sampler::Flow;

use crate::backend::{cuda, Device};
use crate::error::{Error, Result};
use crate::io::config::DitConfig;
use crate::lora::{self, Lora, Mode, StoreAs};
use crate::model::dit::{NagParams, TextContext, WanDit};
use crate::model::t5::{file_identity, TextEncoder};
use crate::model::vae::{to_rgb8, DecodeOptions, Tiling, WanVae};
use crate::sampler::{Guidance, Sampler, SamplerConfig, TeaCache, TeaCacheModel, WanVelocity};
use crate::tensor::{DType, Tensor, Weight};

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

impl std::str::FromStr for Mode {
    type Err = Error;
    /// `merge` ([`Mode::Merged`]) or `runtime` ([`Mode::Unmerged`]), the names of
    /// `--lora-mode`.
    fn from_str(s: &str) -> Result<Mode> {
        match s.to_ascii_lowercase().as_str() {
            "merge" | "merged" => Ok(Mode::Merged),
            "runtime" | "unmerged" => Ok(Mode::Unmerged),
            _ => Err(Error::InvalidArgument(format!(
                "unknown LoRA mode `{s}` (expected merge or runtime)"
            ))),
        }
    }
}

/// The name of a LoRA mode as `--lora-mode` and the metadata spell it.
pub fn lora_mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Merged => "merge",
        Mode::Unmerged => "runtime",
    }
}

/// How [`Pipeline::load`] loads the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Where the DiT and the sampling loop run. On a CUDA device [`Pipeline::load`] plans the
    /// device memory ([`device_plan::plan`]): the blocks to swap, the text encoder's place,
    /// the VAE's tiling; the VAE decodes there and LoRAs merge there in [`Mode::Merged`].
    pub device: Device,
    /// How LoRAs are applied: [`Mode::Merged`] (the default) bakes them into the weights at
    /// load (no cost per step; strengths fixed), [`Mode::Unmerged`] applies them on the fly
    /// in every adapted layer (the weights stay as stored; a little more compute per step;
    /// strengths can change with [`Pipeline::set_lora_strength`]).
    pub lora_mode: Mode,
    /// Worker threads of the pipeline's own pool ([`Pipeline::set_threads`]); `None`: rayon's
    /// global pool.
    pub threads: Option<usize>,
    /// Where the UMT5 text encoder runs, independently of `device` (e.g. on the CPU while the
    /// DiT has the GPU to itself, or on CUDA in bf16); its contexts come back to the host. `None`:
    /// the CPU for a CPU pipeline; with a CUDA `device`, the device plan puts it there when it
    /// fits beside the DiT in every phase, else on the CPU. A given device is always honoured.
    pub t5_device: Option<Device>,
    /// Low-VRAM mode on a CUDA device (`--blocks-to-swap`): keep this many of the DiT's last
    /// blocks in pinned host memory, streamed in for each forward; `None`: the device plan
    /// chooses ([`device_plan::plan`]). Only with a CUDA device.
    pub blocks_to_swap: Option<usize>,
    /// The device memory the pipeline may use (`--max-device-memory`); `None`: what is free.
    /// Only with a CUDA device.
    pub max_device_memory: Option<u64>,
}

impl LoadOptions {
    /// Fails when the low-VRAM settings are given for the CPU, where they mean nothing.
    pub fn check_low_vram(&self) -> Result<()> {
        let given = self.blocks_to_swap.is_some() || self.max_device_memory.is_some();
        if given && self.device == Device::Cpu {
            return Err(Error::InvalidArgument(
                "blocks_to_swap and max_device_memory apply to a CUDA device only".into(),
            ));
        }
        Ok(())
    }
}

impl Default for LoadOptions {
    /// The CPU, merged LoRAs, the global pool.
    fn default() -> LoadOptions {
        LoadOptions {
            device: Device::Cpu,
            lora_mode: Mode::Merged,
            threads: None,
            t5_device: None,
            blocks_to_swap: None,
            max_device_memory: None,
        }
    }
}

/// A LoRA applied to the DiT.
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
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The files (`None` for models built in memory, such as [`Pipeline::demo`]).
    pub files: Option<ModelFiles>,
    /// Fingerprints ([`file_identity`]) of the DiT, VAE and text encoder files.
    pub identities: Option<[String; 3]>,
    /// The LoRAs, in the order applied.
    pub loras: Vec<LoadedLora>,
    /// How the LoRAs are applied.
    pub lora_mode: Mode,
    /// Seconds spent loading.
    pub load_seconds: f64,
    /// Whether this is the random-weight demo model (its output is noise).
    pub demo: bool,
}

impl Default for ModelInfo {
    fn default() -> ModelInfo {
        ModelInfo {
            files: None,
            identities: None,
            loras: Vec::new(),
            lora_mode: Mode::Merged,
            load_seconds: 0.0,
            demo: false,
        }
    }
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
        let mut v = json!({ "models": models, "loras": loras });
        if !self.loras.is_empty() {
            v["lora_mode"] = json!(lora_mode_name(self.lora_mode));
        }
        v
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
    weights: WeightMemory,
    /// The pipeline's own worker threads; `None`: rayon's global pool.
    pool: Option<rayon::ThreadPool>,
    /// What changing an unmerged LoRA's strength rebuilds the DiT from.
    unmerged: Option<UnmergedLoras>,
    /// The device plan and device-merged LoRAs of a pipeline loaded on a CUDA device.
    on_device: Option<on_device::OnDevice>,
}

/// The base DiT weights (memory-mapped where the format allows, so holding them costs little) and the LoRAs of a
/// pipeline whose LoRAs run unmerged.
#[derive(Debug)]
struct UnmergedLoras {
    base: BTreeMap<String, Weight>,
    cfg: DitConfig,
    loras: Vec<(Lora, f32)>,
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

/// A frame as the VAE decodes it, handed to [`Pipeline::generate_streamed`]'s frame hook.
#[derive(Debug, Clone, Copy)]
pub struct DecodedFrame<'a> {
    /// Its index in the video (0-based; frames come in order).
    pub index: usize,
    /// The frames of the video in all.
    pub count: usize,
    /// Its pixels: RGB, 8 bits per channel, row-major, `height × width × 3` bytes.
    pub rgb: &'a [u8],
    /// Its width in pixels.
    pub width: usize,
    /// Its height in pixels.
    pub height: usize,
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
    /// The denoised latent `[1, 16, T, H/8, W/8]` (normalized, as the DiT produces it), on the
    /// host whatever device sampled it.
    pub latent: Tensor,
    /// Where the DiT and the sampling loop ran.
    pub device: Device,
    /// The decoded video `[1, 3, F, H, W]` in `[-1, 1]`, when the request asked to keep it.
    pub video: Option<Tensor>,
    /// The request as run: the seed drawn if none was given, the negative prompt filled in,
    /// the trigger phrases prepended to the prompt.
    pub params: GenerateRequest,
    /// Where the time went.
    pub timings: Timings,
    /// The device memory plan it ran with (a pipeline loaded on a CUDA device).
    pub device_plan: Option<DevicePlan>,
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
            m.insert(
                "vae_tiling".into(),
                json!(self.params.vae_tiling.to_string()),
            );
            m.insert("device".into(), json!(self.device.to_string()));
            if let Some(p) = &self.device_plan {
                m.insert("device_plan".into(), json!(p));
            }
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
    fit: memory::Fit,
    device_plan: Option<DevicePlan>,
}

impl Pipeline {
    /// Loads the models from `files` with `loras` applied to the DiT as `options.lora_mode`
    /// says (merged in its stored dtype, or unmerged), in the pipeline's own pool of
    /// `options.threads` threads when given. The cheap checks run first: the device, every
    /// LoRA file (a LoRA for another architecture or model size fails before any weight is
    /// changed), the tokenizer and text encoder, the VAE. On a CUDA device the memory plan is
    /// chosen from the device's free memory (or `options.max_device_memory`, which then also
    /// bounds wanrt's device allocations) for the default request's size, honouring
    /// `options.blocks_to_swap`; it is logged, and each generation plans again at its own size
    /// with these choices fixed and records that plan ([`Generation::device_plan`]). Merged
    /// LoRAs are merged on the device one block at a time, the pristine weights kept on the
    /// host (the mapped files), so [`Pipeline::set_lora_strength`] re-merges in place without
    /// reading the files.
    pub fn load(files: &ModelFiles, loras: &[LoraSpec], options: &LoadOptions) -> Result<Pipeline> {
        build_in_pool(options, || load_models(files, loras, options))
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
            weights: WeightMemory::default(),
            pool: None,
            unmerged: None,
            on_device: None,
        })
    }

    /// Runs this pipeline's loading and generations in its own pool of `threads` worker
    /// threads (`Some(0)` is refused), or in rayon's global pool (`None`).
    pub fn set_threads(&mut self, threads: Option<usize>) -> Result<()> {
        self.pool = thread_pool(threads)?;
        Ok(())
    }

    /// The pipeline with its DiT on `device` (checked first with [`Device::ensure_supported`]),
    /// its weights in their stored dtype: generations then run the DiT and the whole sampling
    /// loop there, the latent staying on the device from the initial noise to the last step.
    /// The text encoder keeps its own device ([`LoadOptions::t5_device`]; its contexts are
    /// uploaded once per prompt) and the VAE stays on the CPU: the final latent comes back to
    /// the host once, before decoding. Nothing is planned (no swapped blocks, no device VAE):
    /// [`Pipeline::load`] and [`Pipeline::from_weights`] place all three models by the device
    /// memory plan.
    pub fn to_device(mut self, device: Device) -> Result<Pipeline> {
        device.ensure_supported()?;
        self.dit = on_device(self.dit, device)?;
        Ok(self)
    }

    /// Where the DiT and the sampling loop run ([`Pipeline::to_device`]).
    pub fn device(&self) -> Device {
        self.dit.device()
    }

    /// Where the VAE decodes: the DiT's CUDA device in a pipeline placed by the device memory
    /// plan ([`Pipeline::load`], [`Pipeline::from_weights`]), else the CPU.
    pub fn decode_device(&self) -> Device {
        match self.on_device {
            Some(_) => self.device(),
            None => Device::Cpu,
        }
    }

    /// The worker threads a generation uses.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or_else(
            rayon::current_num_threads,
            rayon::ThreadPool::current_num_threads,
        )
    }

    /// The bytes of the models' weights, counted in every memory check (zero for models built
    /// in memory and given to [`Pipeline::from_models`], such as the tiny demo's).
    pub fn weight_memory(&self) -> WeightMemory {
        self.weights
    }

    /// Changes the strength of LoRA `index` (in load order) without reloading: the DiT is
    /// rebuilt from the base weights it keeps, with every LoRA's delta at its strength. Needs
    /// LoRAs loaded unmerged ([`LoadOptions::lora_mode`] [`Mode::Unmerged`]), or merged by a
    /// load on a CUDA device (re-merged there in place, one block at a time, from the pristine
    /// weights the host keeps): a LoRA merged on the CPU is baked into the weights. Fails,
    /// changing nothing, on a bad index, a non-finite strength or LoRAs merged on the CPU; a
    /// device error during a re-merge leaves the blocks before it at the new strength.
    pub fn set_lora_strength(&mut self, index: usize, strength: f32) -> Result<()> {
        let count = self.info.loras.len();
        if index >= count {
            return Err(Error::InvalidArgument(format!(
                "LoRA index {index}: the pipeline has {count} LoRA(s)"
            )));
        }
        if !strength.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "LoRA strength {strength} must be a finite number"
            )));
        }
        if let Some(l) = self.on_device.as_mut().and_then(|d| d.loras.as_mut()) {
            let mut strengths = l.strengths.clone();
            strengths[index] = strength;
            l.remerge(&mut self.dit, &strengths)?;
            self.info.loras[index].strength = strength;
            return Ok(());
        }
        let Some(u) = &self.unmerged else {
            return Err(Error::InvalidArgument(
                "LoRA strengths can change only when the LoRAs run unmerged (LoRA mode \
                 runtime); these were merged into the weights at load"
                    .into(),
            ));
        };
        let mut refs: Vec<(&Lora, f32)> = u.loras.iter().map(|(l, s)| (l, *s)).collect();
        refs[index].1 = strength;
        let (dit, _, weights) = in_pool(self.pool.as_ref(), || {
            build_dit(u.base.clone(), u.cfg.clone(), &refs, Mode::Unmerged)
        })?;
        self.dit = on_device(dit, self.device())?;
        self.weights.dit = weights.dit;
        self.weights.loras = weights.loras;
        self.weights.allocated = weights.allocated;
        if let Some(u) = &mut self.unmerged {
            u.loras[index].1 = strength;
        }
        self.info.loras[index].strength = strength;
        Ok(())
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
    /// initial latent's shape and finite values, TeaCache's support for this DiT, the VAE's
    /// tiles, and the weights plus the working memory against the memory available (choosing
    /// batched CFG and the VAE's tiling as [`GenerateRequest::vae_tiling`] allows). Returns the
    /// plan chosen, with its memory estimate and the memory available.
    pub fn check(&self, req: &GenerateRequest) -> Result<Fit> {
        Ok(self.plan(req)?.fit)
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
        if let Some(t) = req.vae_tiling.tiles() {
            t.validate()?;
        }
        let (fit, device_plan) = self.fit_device(&req)?;
        req.vae_tiling = fit.tiling;
        Ok(Plan {
            req,
            seed,
            latent_dims,
            teacache,
            fit,
            device_plan,
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

    /// The memory plan of `req`: on the CPU against the host's available memory; with the DiT
    /// on a CUDA device against the device's free memory, with the device plan when the
    /// pipeline was loaded there (its VAE tiling and batched CFG chosen to fit).
    fn fit_device(&self, req: &GenerateRequest) -> Result<(memory::Fit, Option<DevicePlan>)> {
        let Device::Cuda(ordinal) = self.device() else {
            return Ok((self.fit_memory(req, available_memory())?, None));
        };
        let Some(d) = &self.on_device else {
            // Moved here whole (Pipeline::to_device): its weights hold device memory already.
            let free = cuda::free_memory(ordinal)? + self.weights.dit;
            return Ok((self.fit_memory(req, Some(free))?, None));
        };
        let batched = req.batch_cfg && req.uses_negative_prompt() && req.teacache.is_none();
        let configs = (self.text.encoder().config(), self.vae.config());
        let (plan, batch_cfg) = d.plan_for(req, batched, self.dit.config(), configs)?;
        let mut fit = self.fit_memory(req, None)?;
        (fit.batch_cfg, fit.tiling, fit.available) =
            (batch_cfg, plan.vae_tiling, Some(plan.budget));
        Ok((fit, Some(plan)))
    }

    /// The plan that fits in `available` bytes (see [`memory::fit`]).
    fn fit_memory(&self, req: &GenerateRequest, available: Option<u64>) -> Result<memory::Fit> {
        let [_, c, t, h, w] = req.latent_dims(self.vae.config().z_dim);
        let neg = req.uses_negative_prompt();
        let nag = usize::from(req.nag.is_some());
        let estimate = |batch: usize, tiling: Option<Tiling>| {
            let shapes = memory::Shapes {
                dit: self.dit.config(),
                vae: self.vae.config(),
                latent: [c, t, h, w],
                video: [req.frames, req.height, req.width],
                batch,
                // Batched CFG keeps a concatenated copy of both contexts.
                contexts: 1 + usize::from(neg) + 2 * usize::from(neg && batch == 2) + nag,
                tiling,
            };
            memory::estimate(&shapes, self.weights)
        };
        let batched = req.batch_cfg && neg && req.teacache.is_none();
        let what = format!("{}x{} with {} frames", req.width, req.height, req.frames);
        memory::fit(estimate, batched, req.vae_tiling, available, &what)
    }

    /// Runs one generation (see the module docs); `on_progress` is called as each stage starts
    /// and after each prompt, step and frame, and cancels with [`Flow::Cancel`]. With its own
    /// pool ([`Pipeline::set_threads`]) the pipeline runs the generation, `on_progress`
    /// included, on one of the pool's threads while the calling thread waits.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        on_progress: &mut (dyn FnMut(&Progress) -> Flow + Send),
    ) -> Result<Generation> {
        self.generate_streamed(req, on_progress, &mut |_| Flow::Continue)
    }

    /// [`Pipeline::generate`] that also hands each frame to `on_frame` as soon as the VAE has
    /// decoded it (before the generation ends; the frames are still in the result), on the
    /// thread that runs `on_progress`. [`Flow::Cancel`] from `on_frame` cancels.
    pub fn generate_streamed(
        &self,
        req: &GenerateRequest,
        on_progress: &mut (dyn FnMut(&Progress) -> Flow + Send),
        on_frame: &mut (dyn FnMut(&DecodedFrame) -> Flow + Send),
    ) -> Result<Generation> {
        in_pool(self.pool.as_ref(), || self.run(req, on_progress, on_frame))
    }

    /// [`Pipeline::generate_streamed`] in the current pool.
    fn run(
        &self,
        req: &GenerateRequest,
        on_progress: &mut (dyn FnMut(&Progress) -> Flow + Send),
        on_frame: &mut (dyn FnMut(&DecodedFrame) -> Flow + Send),
    ) -> Result<Generation> {
        let start = Instant::now();
        let plan = self.plan(req)?;
        let req = &plan.req;
        let device = self.device();
        let mib = |bytes: u64| bytes.div_ceil(1 << 20);
        log::info!(
            "plan: {}x{} (WxH), {} frames, {} steps, seed {}; memory estimate: weights {} MiB, \
             denoising {} MiB, decoding {} MiB; VAE decode: tiling {}; batched CFG: {}",
            req.width,
            req.height,
            req.frames,
            req.steps,
            plan.seed,
            mib(plan.fit.memory.weights.total()),
            mib(plan.fit.memory.denoising),
            mib(plan.fit.memory.decoding),
            req.vae_tiling,
            if plan.fit.batch_cfg { "on" } else { "off" }
        );
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
            let context = self.text.encode(text)?.context.to_device(device)?;
            contexts.push(self.dit.encode_text(&[context], true)?);
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
        let mut model = WanVelocity::new(&self.dit, &[c, t, h, w], cond, uncond)?.with_attention(
            match device {
                Device::Cpu => req.attention.on_cpu(),
                Device::Cuda(_) => req.attention.on_cuda(),
            },
        );
        if let (Some(n), Some(ctx)) = (&req.nag, nag_context) {
            model = model.with_nag(NagParams {
                scale: n.scale,
                tau: n.tau,
                alpha: n.alpha,
                ..NagParams::new(ctx)
            });
        }
        if plan.fit.batch_cfg {
            model = model.with_batched_cfg()?;
        }
        let mut latent = match &req.latent_init {
            Some(x) => Tensor::from_f32(x.to_f32_vec()?, plan.latent_dims)?,
            None => crate::sampler::noise(plan.seed, &plan.latent_dims)?,
        }
        .to_device(device)?;
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
        let mut sampler = Sampler::new(config)?;
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
            let seconds = step_start.elapsed().as_secs_f64();
            log::debug!("denoising step {}/{}: {seconds:.3} s", p.step + 1, p.steps);
            timings.steps.push(seconds);
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
        // The one copy back of the sampling loop; a pipeline loaded on the device decodes there
        // (its VAE moved at load), others on the host.
        let host_latent = latent.to_device(Device::Cpu)?;
        let latent = match self.decode_device() {
            Device::Cpu => host_latent.clone(),
            Device::Cuda(_) => latent,
        };

        // Decoding, frame by frame.
        let stage = Instant::now();
        let (video_h, video_w) = (req.height, req.width);
        let frame_count = self.vae.video_frames(t);
        let mut frames = Vec::with_capacity(frame_count * video_h * video_w * 3);
        let mut chunks = Vec::new();
        let mut done = 0;
        report(on_progress, Stage::Decoding, 0, frame_count, None, stage)?;
        self.vae.decode_frames(
            &latent,
            &DecodeOptions {
                tiling: plan.fit.tiling.tiles(),
            },
            &mut |chunk| {
                let chunk = chunk.to_device(Device::Cpu)?;
                let rgb = to_rgb8(&chunk)?;
                let bytes = rgb.raw_bytes()?;
                for (i, frame) in bytes.chunks_exact(video_h * video_w * 3).enumerate() {
                    let decoded = DecodedFrame {
                        index: done + i,
                        count: frame_count,
                        rgb: frame,
                        width: video_w,
                        height: video_h,
                    };
                    if on_frame(&decoded) == Flow::Cancel {
                        return Err(Error::Cancelled);
                    }
                }
                frames.extend_from_slice(bytes);
                done += chunk.dims()[2];
                if req.keep_video {
                    chunks.push(chunk);
                }
                report(on_progress, Stage::Decoding, done, frame_count, None, stage)
            },
        )?;
        let video = match req.keep_video {
            true => {
                let refs: Vec<&Tensor> = chunks.iter().collect();
                Some(crate::tensor::ops::cat(&refs, 2)?)
            }
            false => None,
        };
        timings.decoding = stage.elapsed().as_secs_f64();
        timings.total = start.elapsed().as_secs_f64();
        log::info!(
            "timings: text encoding {:.3} s, denoising {:.3} s, decoding {:.3} s, total {:.3} s",
            timings.text_encoding,
            timings.denoising,
            timings.decoding,
            timings.total
        );
        Ok(Generation {
            frames,
            width: video_w,
            height: video_h,
            frame_count,
            latent: host_latent,
            device,
            video,
            params: plan.req,
            timings,
            device_plan: plan.device_plan,
        })
    }
}

/// `dit` on `device`: itself when it is there already, else a copy there.
fn on_device(dit: WanDit, device: Device) -> Result<WanDit> {
    match dit.device() == device {
        true => Ok(dit),
        false => dit.to_device(device),
    }
}

/// What [`Pipeline::load`] and [`Pipeline::from_weights`] share around building the
/// pipeline: the options' checks first, then `build` in the pipeline's own pool, the time it
/// took recorded.
fn build_in_pool(
    options: &LoadOptions,
    build: impl FnOnce() -> Result<Pipeline> + Send,
) -> Result<Pipeline> {
    let start = Instant::now();
    options.check_low_vram()?;
    options.device.ensure_supported()?;
    let pool = thread_pool(options.threads)?;
    let mut p = in_pool(pool.as_ref(), build)?;
    p.pool = pool;
    p.info.load_seconds = start.elapsed().as_secs_f64();
    Ok(p)
}

/// The models of [`Pipeline::load`], loaded in the calling thread's pool.
fn load_models(files: &ModelFiles, loras: &[LoraSpec], options: &LoadOptions) -> Result<Pipeline> {
    let opened = loras
        .iter()
        .map(|l| Lora::open(&l.path).map(|lora| (lora, l.strength)))
        .collect::<Result<Vec<_>>>()?;
    let text = TextEncoder::open(&files.t5, files.t5_config.as_deref(), &files.tokenizer)?;
    let vae = WanVae::open(&files.vae, files.vae_config.as_deref())?;
    let dit = WanDit::read_weights(&files.dit, files.dit_config.as_deref())?;
    let mut p = place_models(text, dit, vae, opened, options)?;
    let identities = [
        file_identity(&files.dit)?,
        file_identity(&files.vae)?,
        file_identity(&files.t5)?,
    ];
    let file_len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    p.weights.text_encoder = file_len(&files.t5);
    p.weights.vae = file_len(&files.vae);
    p.info.files = Some(files.clone());
    p.info.identities = Some(identities);
    Ok(p)
}

/// The pipeline of [`Pipeline::load`] and [`Pipeline::from_weights`] from its models on the
/// host: the DiT built from the canonical weights `base` with `opened` LoRAs applied as
/// `options.lora_mode` says, then placed. On a CUDA device the memory plan at load decides
/// ([`on_device::build`]): the DiT goes there with its swapped blocks, the VAE too, the text
/// encoder where the plan puts it; on the CPU everything stays, the text encoder on
/// `options.t5_device` when given. Records the LoRAs and the DiT's weight bytes (the caller
/// adds the text encoder's and the VAE's).
fn place_models(
    text: TextEncoder,
    (base, cfg): (BTreeMap<String, Weight>, DitConfig),
    mut vae: WanVae,
    opened: Vec<(Lora, f32)>,
    options: &LoadOptions,
) -> Result<Pipeline> {
    let mode = options.lora_mode;
    let refs: Vec<(&Lora, f32)> = opened.iter().map(|(l, s)| (l, *s)).collect();
    let keep = (mode == Mode::Unmerged && !opened.is_empty()).then(|| (base.clone(), cfg.clone()));
    let (dit, report, weights, placed) = match options.device {
        Device::Cpu => {
            let (dit, report, weights) = build_dit(base, cfg, &refs, mode)?;
            (dit, report, weights, None)
        }
        Device::Cuda(ordinal) => {
            let configs = (text.encoder().config(), vae.config());
            let (dit, report, weights, placed) =
                on_device::build(base, cfg, &refs, options, ordinal, configs)?;
            vae = vae.to_device(options.device)?;
            (dit, report, weights, Some(placed))
        }
    };
    let t5_device = match &placed {
        Some(d) if d.plan.text_encoder == device_plan::Placement::Device => options.device,
        _ => options.t5_device.unwrap_or(Device::Cpu),
    };
    let text = text.to_device(t5_device)?;
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
    for l in &loaded {
        if let Some(first) = l.ignored_keys.first() {
            log::warn!(
                "{}: {} keys match no module of this model and were ignored (first: `{first}`)",
                l.path.display(),
                l.ignored_keys.len()
            );
        }
    }
    let mut p = Pipeline::from_models(text, dit, vae)?;
    p.weights = weights;
    p.unmerged = keep.map(|(base, cfg)| UnmergedLoras {
        base,
        cfg,
        loras: opened,
    });
    p.on_device = placed;
    p.info = ModelInfo {
        loras: loaded,
        lora_mode: mode,
        ..ModelInfo::default()
    };
    Ok(p)
}

/// The DiT from canonical `base` weights with `loras` applied in `mode`, what applying them
/// did, and the bytes of its weights (the `dit`, `loras` and `allocated` parts).
fn build_dit(
    base: BTreeMap<String, Weight>,
    cfg: DitConfig,
    loras: &[(&Lora, f32)],
    mode: Mode,
) -> Result<(WanDit, lora::Report, WeightMemory)> {
    let mut bytes = WeightMemory::default();
    let mut count = |weights: &BTreeMap<String, Weight>| {
        let (all, allocated) = weight_bytes(weights);
        bytes.dit += all;
        bytes.allocated += allocated;
    };
    match mode {
        Mode::Merged => {
            let (weights, report) = lora::merge(base, loras, StoreAs::Same)?;
            count(&weights);
            Ok((WanDit::new(weights, cfg)?, report, bytes))
        }
        Mode::Unmerged => {
            let u = lora::unmerged(base, loras)?;
            count(&u.weights);
            // The files' tensors (kept for strength changes) and the deltas built from them
            // (their low-rank pairs again, in f32).
            let lora_bytes: u64 = loras
                .iter()
                .flat_map(|(l, _)| l.modules.values())
                .map(|m| {
                    let pair = m.low_rank.as_ref().map_or(0, |p| {
                        tensor_bytes(&p.up)
                            + tensor_bytes(&p.down)
                            + 4 * (p.up.elem_count() + p.down.elem_count()) as u64
                    });
                    let full = [&m.diff, &m.diff_b, &m.diff_m]
                        .into_iter()
                        .flatten()
                        .map(tensor_bytes)
                        .sum::<u64>();
                    pair + full
                })
                .sum();
            bytes.loras = lora_bytes;
            bytes.allocated += lora_bytes;
            let mut dit = WanDit::new(u.weights, cfg)?;
            dit.set_linear_deltas(u.deltas)?;
            Ok((dit, u.report, bytes))
        }
    }
}

/// The bytes of `weights`' data, and of those the bytes allocated in process memory (not
/// memory-mapped from a file).
fn weight_bytes(weights: &BTreeMap<String, Weight>) -> (u64, u64) {
    weights.values().fold((0, 0), |(all, allocated), w| {
        let n = tensor_bytes(&w.tensor);
        let mapped = w.tensor.is_mapped();
        (all + n, allocated + if mapped { 0 } else { n })
    })
}

/// The bytes of a tensor's data.
fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// A pool of `threads` worker threads; `None` for rayon's global pool.
fn thread_pool(threads: Option<usize>) -> Result<Option<rayon::ThreadPool>> {
    let Some(n) = threads else { return Ok(None) };
    if n == 0 {
        return Err(Error::InvalidArgument(
            "threads must be at least 1 (or not given, for one per core)".into(),
        ));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("wanrt-{i}"))
        .build()
        .map(Some)
        .map_err(|e| Error::Device(format!("cannot start {n} worker threads: {e}")))
}

/// Runs `f` in `pool` (on one of its threads, the caller waiting), or here with the global
/// pool.
fn in_pool<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
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

    /// The device plan a generation ran with is in its metadata (and so in `--json` and the
    /// video file); a generation without one (the CPU) records none.
    #[test]
    fn the_metadata_records_the_device_plan() {
        let plan = DevicePlan {
            blocks_to_swap: 3,
            text_encoder: device_plan::Placement::Cpu,
            vae_tiling: VaeTiling::Tiled(Tiling::default()),
            budget: 24 << 30,
            dit_resident: 9 << 30,
            peaks: [9 << 30, 20 << 30, 12 << 30],
            lora_merge: 0,
        };
        let mut g = Generation {
            frames: Vec::new(),
            width: 16,
            height: 16,
            frame_count: 1,
            latent: Tensor::zeros([1, 16, 1, 2, 2], DType::F32),
            device: Device::Cuda(0),
            video: None,
            params: GenerateRequest::new("x"),
            timings: Timings::default(),
            device_plan: Some(plan),
        };
        let info = ModelInfo::default();
        let v = g.to_json(&info);
        let p = &v["device_plan"];
        assert_eq!(p["blocks_to_swap"], 3, "{v}");
        assert_eq!(p["text_encoder"], "cpu");
        assert_eq!(
            p["vae_tiling"],
            VaeTiling::Tiled(Tiling::default()).to_string()
        );
        assert_eq!(p["budget"], 24u64 << 30);
        assert_eq!(p["dit_resident"], 9u64 << 30);
        assert_eq!(p["peaks"][1], 20u64 << 30);
        assert_eq!(g.metadata(&info)["device_plan"], *p);
        g.device_plan = None;
        assert!(g.metadata(&info).get("device_plan").is_none());
    }

    #[test]
    fn random_seeds_are_in_range() {
        assert!((0..100).all(|_| random_seed() <= MAX_SEED));
    }
}
