//! `wanrt_pipeline`: the models loaded once (with LoRAs merged), and `wanrt_generate`.

use std::ffi::{c_char, c_void};
use std::sync::{Mutex, TryLockError};

use super::generation::wanrt_generation;
use super::params::{self, handle, opt_path, opt_str, req_str, write_out, Versioned};
use super::status::{guard, guard_value, null_argument, wanrt_status};
use super::wanrt_lora_list;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::lora::Mode;
use crate::model::dit::AttentionChoice;
use crate::model::vae::Tiling;
use crate::pipeline::{
    DecodedFrame, GenerateRequest, LoadOptions, LoraSpec, ModelSource, NagSettings, Pipeline,
    Preset, Progress, Stage, VaeTiling,
};
use crate::sampler::{Flow, Slg, SolverKind};
use crate::tensor::Tensor;

/// The models of text-to-video generation (text encoder and tokenizer, DiT with its LoRAs
/// merged, VAE), loaded once by `wanrt_pipeline_load()` and used by any number of
/// `wanrt_generate()` calls. Free it with `wanrt_pipeline_free()`.
///
/// One call at a time: a call on a pipeline that is already running one (on another thread, or
/// from its own progress callback) fails at once with `WANRT_STATUS_INVALID_ARGUMENT` and the
/// message "pipeline is busy"; it does not wait. Use one pipeline per concurrent generation.
///
/// Sharing weights: pipelines are independent (each has its own models, LoRAs and threads)
/// and one pipeline runs one call at a time, but the weights in model files are
/// memory-mapped, so N pipelines loading the same files share one copy of those pages through
/// the operating system's page cache (each one's memory check still counts them in full).
/// What each pipeline holds privately is what it computed at load: LoRAs merged into weights
/// (`WANRT_LORA_MODE_RUNTIME` keeps the mapped weights shared and adds only the small
/// low-rank factors) and a few small tensors converted to float32.
pub struct wanrt_pipeline {
    pipeline: Mutex<Pipeline>,
}

impl wanrt_pipeline {
    /// The pipeline, or the "busy" error when another call holds it.
    pub(super) fn lock(&self) -> Result<std::sync::MutexGuard<'_, Pipeline>> {
        self.pipeline.try_lock().map_err(|e| match e {
            TryLockError::WouldBlock => Error::InvalidArgument(
                "pipeline is busy: another call is running on it (concurrent calls on one \
                 pipeline are refused; use one pipeline per thread)"
                    .into(),
            ),
            // A panic inside an earlier call: that call returned WANRT_STATUS_INTERNAL.
            TryLockError::Poisoned(_) => Error::InvalidArgument(
                "pipeline is unusable after an internal error in an earlier call; free it".into(),
            ),
        })
    }
}

/// Values of `wanrt_pipeline_params.device`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum wanrt_device {
    /// The CPU backend (multi-threaded).
    Cpu = 0,
    /// An NVIDIA GPU (`wanrt_pipeline_params.device_index` picks which): the DiT and the
    /// sampling loop run there, the VAE on the CPU. Loading returns
    /// `WANRT_STATUS_DEVICE_ERROR` in a build without the `cuda` feature, without the NVIDIA
    /// driver, or for an index past the devices present.
    Cuda = 1,
}

/// Values of `wanrt_pipeline_params.lora_mode`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum wanrt_lora_mode {
    /// Merged into the DiT's weights at load (in their stored dtype): no cost per step; the
    /// strengths are fixed.
    Merge = 0,
    /// Applied on the fly by every adapted layer: the weights stay as stored, a little more
    /// compute per step, and `wanrt_pipeline_set_lora_strength()` changes a strength without
    /// reloading.
    Runtime = 1,
}

/// What `wanrt_pipeline_load()` loads. Fill with `wanrt_pipeline_params_init(&p, sizeof p)`,
/// then set `models_dir`, or the four model files, or both (a file given explicitly wins over
/// the folder's). Paths are NUL-terminated; NULL means "not given".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct wanrt_pipeline_params {
    /// `sizeof(wanrt_pipeline_params)` as the caller compiled it; set by the init function.
    pub struct_size: usize,
    /// A model folder: the official Wan-AI layout (`Wan-AI/Wan2.1-T2V-1.3B`) or ComfyUI's
    /// `models/` tree. Default NULL.
    pub models_dir: *const c_char,
    /// The DiT: a safetensors file (original, ComfyUI or diffusers keys; f32, bf16, fp8) or a
    /// sharded folder. Default NULL.
    pub dit: *const c_char,
    /// The VAE (`.safetensors` or `.pth`). Default NULL.
    pub vae: *const c_char,
    /// The UMT5 text encoder (`.safetensors` or `.pth`). Default NULL.
    pub t5: *const c_char,
    /// The UMT5 `tokenizer.json`. Default NULL.
    pub tokenizer: *const c_char,
    /// A DiT `config.json` for a model whose config cannot be inferred. Default NULL.
    pub dit_config: *const c_char,
    /// A VAE `config.json`. Default NULL.
    pub vae_config: *const c_char,
    /// A UMT5 `config.json`. Default NULL.
    pub t5_config: *const c_char,
    /// LoRAs to merge into the DiT, in order; NULL (default) for none. Read during the call
    /// only.
    pub loras: *const wanrt_lora_list,
    /// A `wanrt_device` value. Default `WANRT_DEVICE_CPU`.
    pub device: i32,
    /// A `wanrt_lora_mode` value. Default `WANRT_LORA_MODE_MERGE`.
    pub lora_mode: i32,
    /// Worker threads of this pipeline's own thread pool, used for loading and for every
    /// generation on it, so that pipelines with different counts run side by side; 0 (default):
    /// the process-wide pool shared by all pipelines (one thread per core, or the
    /// `RAYON_NUM_THREADS` environment variable read when it first starts).
    pub threads: u32,
    /// 1: build the demo model instead of loading files: the real Wan2.1 architectures at a
    /// tiny width with random weights, in memory, in about a second (no download; for
    /// testing an integration, its videos are noise). No paths or LoRAs may be given with it.
    /// Default 0.
    pub demo: i32,
    /// Low-VRAM mode on a CUDA device: keep this many of the DiT's last blocks in pinned host
    /// memory, streamed in for each forward; -1 (default): the device memory plan chooses.
    /// Other negative values are refused; only with `WANRT_DEVICE_CUDA` when not -1.
    pub blocks_to_swap: i32,
    /// The device memory in bytes the pipeline may use; 0 (default): what is free. Only with
    /// `WANRT_DEVICE_CUDA` when not 0.
    pub max_device_memory: u64,
    /// With `WANRT_DEVICE_CUDA`: the device's ordinal as `wanrt_list_devices()` reports it.
    /// Ignored for the CPU; negative values are refused. Default 0.
    pub device_index: i32,
}

impl Default for wanrt_pipeline_params {
    fn default() -> Self {
        let null = std::ptr::null();
        wanrt_pipeline_params {
            struct_size: size_of::<Self>(),
            models_dir: null,
            dit: null,
            vae: null,
            t5: null,
            tokenizer: null,
            dit_config: null,
            vae_config: null,
            t5_config: null,
            loras: std::ptr::null(),
            device: wanrt_device::Cpu as i32,
            lora_mode: wanrt_lora_mode::Merge as i32,
            threads: 0,
            demo: 0,
            blocks_to_swap: -1,
            max_device_memory: 0,
            device_index: 0,
        }
    }
}

// SAFETY: `#[repr(C)]`, starts with `struct_size`, fields are pointers and an integer.
unsafe impl Versioned for wanrt_pipeline_params {
    const NAME: &'static str = "wanrt_pipeline_params";
    const MIN_SIZE: usize = std::mem::offset_of!(wanrt_pipeline_params, device) + size_of::<i32>();
}

/// Fills the `struct_size` bytes at `params` with the defaults (no paths, no LoRAs, the CPU)
/// and sets `params->struct_size`. Pass `sizeof *params` as `struct_size`.
///
/// Returns `WANRT_STATUS_OK`, or `WANRT_STATUS_INVALID_ARGUMENT` when `params` is NULL or
/// `struct_size` is smaller than the first version of the struct.
///
/// # Safety
/// `params` is NULL or points to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn wanrt_pipeline_params_init(
    params: *mut wanrt_pipeline_params,
    struct_size: usize,
) -> wanrt_status {
    guard("wanrt_pipeline_params_init", || {
        params::init(params, struct_size, "params")
    })
}

/// Loads the models described by `params` and merges its LoRAs; on success `*out` receives the
/// pipeline. Loading checks the cheap things first (the device, every LoRA file, the tokenizer
/// and text encoder, the VAE) before reading the DiT. The weights are memory-mapped where their
/// format allows.
///
/// Returns `WANRT_STATUS_OK`; `WANRT_STATUS_INVALID_ARGUMENT` for a NULL `params` or `out`, a
/// bad `struct_size`, an unknown `device`, or models that do not fit together;
/// `WANRT_STATUS_NOT_FOUND` for a missing file (the message names it and the layout looked
/// in); `WANRT_STATUS_BAD_FILE` for a file that is not a model wanrt reads or a LoRA for another
/// model; `WANRT_STATUS_DEVICE_ERROR` for a device this build cannot use.
///
/// # Safety
/// `params` is NULL or an initialised `wanrt_pipeline_params` whose non-NULL strings are
/// NUL-terminated and whose `loras` is NULL or a live list; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn wanrt_pipeline_load(
    params: *const wanrt_pipeline_params,
    out: *mut *mut wanrt_pipeline,
) -> wanrt_status {
    guard("wanrt_pipeline_load", || {
        let p = params::read(params, "params")?;
        if out.is_null() {
            return Err(null_argument("out"));
        }
        let index = usize::try_from(p.device_index).map_err(|_| {
            Error::InvalidArgument(format!(
                "params->device_index {}: a CUDA device ordinal, 0 or more",
                p.device_index
            ))
        })?;
        let device = match p.device {
            0 => Device::Cpu,
            1 => Device::Cuda(index),
            d => {
                return Err(Error::InvalidArgument(format!(
                    "params->device {d} is not a wanrt_device (0: CPU, 1: CUDA)"
                )))
            }
        };
        let source = ModelSource {
            models_dir: opt_path(p.models_dir, "params->models_dir")?,
            dit: opt_path(p.dit, "params->dit")?,
            vae: opt_path(p.vae, "params->vae")?,
            t5: opt_path(p.t5, "params->t5")?,
            tokenizer: opt_path(p.tokenizer, "params->tokenizer")?,
            dit_config: opt_path(p.dit_config, "params->dit_config")?,
            vae_config: opt_path(p.vae_config, "params->vae_config")?,
            t5_config: opt_path(p.t5_config, "params->t5_config")?,
        };
        let loras: Vec<LoraSpec> = match p.loras.as_ref() {
            None => Vec::new(),
            Some(list) => list
                .entries
                .iter()
                .map(|(path, strength)| LoraSpec {
                    path: path.clone(),
                    strength: *strength,
                })
                .collect(),
        };
        let lora_mode = match p.lora_mode {
            0 => Mode::Merged,
            1 => Mode::Unmerged,
            m => {
                return Err(Error::InvalidArgument(format!(
                    "params->lora_mode {m} is not a wanrt_lora_mode (0: merge, 1: runtime)"
                )))
            }
        };
        let options = LoadOptions {
            device,
            lora_mode,
            threads: (p.threads != 0).then_some(p.threads as usize),
            blocks_to_swap: match p.blocks_to_swap {
                -1 => None,
                n => Some(usize::try_from(n).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "params->blocks_to_swap {n}: a block count, or -1 to let the plan choose"
                    ))
                })?),
            },
            max_device_memory: (p.max_device_memory != 0).then_some(p.max_device_memory),
            ..LoadOptions::default()
        };
        options.check_low_vram()?;
        let pipeline = match p.demo {
            0 => Pipeline::load(&source.resolve()?, &loras, &options)?,
            1 => demo(&source, &loras, &options)?,
            d => {
                return Err(Error::InvalidArgument(format!(
                    "params->demo is {d}: 0 (load files) or 1 (the demo model)"
                )))
            }
        };
        let handle = Box::new(wanrt_pipeline {
            pipeline: Mutex::new(pipeline),
        });
        write_out(out, "out", Box::into_raw(handle))
    })
}

/// The demo pipeline for `params->demo` 1, which takes no files or LoRAs.
fn demo(source: &ModelSource, loras: &[LoraSpec], options: &LoadOptions) -> Result<Pipeline> {
    if *source != ModelSource::default() || !loras.is_empty() {
        return Err(Error::InvalidArgument(
            "params->demo builds its own tiny model: set no model paths or LoRAs with it".into(),
        ));
    }
    let mut pipeline = Pipeline::demo(0)?.to_device(options.device)?;
    pipeline.set_threads(options.threads)?;
    Ok(pipeline)
}

/// Changes the strength of the pipeline's LoRA number `index` (0-based, in the order of the
/// `wanrt_lora_list` it was loaded with) to `strength` without reloading the model; later
/// generations use it. Needs a pipeline loaded with `lora_mode` `WANRT_LORA_MODE_RUNTIME`
/// (merged LoRAs are baked into the weights).
///
/// Returns `WANRT_STATUS_OK`; `WANRT_STATUS_INVALID_ARGUMENT` for a NULL or busy pipeline, an
/// index past its LoRAs, a non-finite strength or a pipeline with merged LoRAs (nothing is
/// changed then).
///
/// # Safety
/// `pipeline` is NULL or a live pipeline.
#[no_mangle]
pub unsafe extern "C" fn wanrt_pipeline_set_lora_strength(
    pipeline: *mut wanrt_pipeline,
    index: usize,
    strength: f32,
) -> wanrt_status {
    guard("wanrt_pipeline_set_lora_strength", || {
        let handle = handle(pipeline, "pipeline")?;
        handle.lock()?.set_lora_strength(index, strength)
    })
}

/// Frees `pipeline` and its models. NULL is a no-op. Any thread may free it, but not while a
/// call on it is running; freeing it twice is undefined. Results it produced
/// (`wanrt_generation`) stay valid.
///
/// # Safety
/// `pipeline` is NULL or a live pipeline that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn wanrt_pipeline_free(pipeline: *mut wanrt_pipeline) {
    guard_value("wanrt_pipeline_free", (), || {
        if !pipeline.is_null() {
            drop(Box::from_raw(pipeline));
        }
        Ok(())
    })
}

/// Values of `wanrt_generate_params.solver`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum wanrt_solver {
    /// Wan's flow UniPC (bh2, order 2), Wan's default.
    Unipc = 0,
    /// DPM++ 2M.
    Dpmpp = 1,
    /// Flow-matching Euler.
    Euler = 2,
    /// LCM, for step-distilled models and LoRAs.
    Lcm = 3,
}

/// Values of `wanrt_generate_params.attention`: the DiT's self-attention.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum wanrt_attention {
    /// The 8-bit kernel where the device has one, else the device's exact attention (exact f32
    /// on the CPU).
    Auto = 0,
    /// The 8-bit scheme; on the CPU its emulation (slow, for checking).
    Q8 = 1,
    /// 16-bit attention on a GPU; exact f32 on the CPU.
    Bf16 = 2,
    /// The 8-bit scheme with FP8 e4m3 P·V (sm_89 and sm_90 GPUs; on the CPU its emulation),
    /// only when asked for: about 3e-2 relative L2 error against exact attention, over the 1e-2
    /// of `WANRT_ATTENTION_Q8`; `WANRT_ATTENTION_AUTO` never picks it.
    Q8Fp8 = 3,
}

/// Values of `wanrt_generate_params.vae_tiling`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum wanrt_vae_tiling {
    /// Whole frames when they fit in the memory available, otherwise tiles of 32 latent pixels
    /// overlapping by 8 (the choice is in the generation's JSON, `"vae_tiling"`).
    Auto = 0,
    /// Whole frames.
    Off = 1,
    /// Tiles of `vae_tile` latent pixels overlapping by `vae_tile_overlap`: less memory, about
    /// twice the decoding time, not bit-identical to whole frames.
    Tiled = 2,
}

/// The stages `wanrt_stage_fn` reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum wanrt_stage {
    /// Encoding the prompts (`total`: how many prompts).
    TextEncoding = 0,
    /// Denoising (`total`: the steps).
    Denoising = 1,
    /// Decoding the latent into frames (`total`: the frames).
    Decoding = 2,
}

/// The per-step progress callback: called once before the first denoising step (`step` 0,
/// `sigma` the starting noise level) and after each step (`step` 1 to `total`, `sigma` the
/// noise level reached, 0 after the last). Return 0 to continue, non-zero to cancel: the
/// generation then stops before the next step and `wanrt_generate` returns
/// `WANRT_STATUS_CANCELLED`. Runs on the thread that called `wanrt_generate`, or, for a
/// pipeline with its own threads (`wanrt_pipeline_params.threads` > 0), on one of them while
/// that thread waits. It must not unwind (throw a C++ exception or longjmp) through the library.
pub type wanrt_progress_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, step: u32, total: u32, sigma: f32) -> i32>;

/// The per-stage progress callback: called as each `wanrt_stage` starts (`done` 0) and after
/// each unit of work (a prompt, a step, a frame) with `done` units of `total` finished. Return
/// 0 to continue, non-zero to cancel (within one unit of work). Same rules as
/// `wanrt_progress_fn`.
pub type wanrt_stage_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, stage: i32, done: u32, total: u32) -> i32>;

/// The frame callback: called with each frame as soon as the VAE has decoded it, in order
/// (`index` 0 to `count` - 1), before `wanrt_generate` returns (the result still holds every
/// frame). `rgb` is `height * width * 3` bytes (RGB, row-major), valid only during the call.
/// Return 0 to continue, non-zero to cancel (`WANRT_STATUS_CANCELLED`). Same thread rules as
/// `wanrt_progress_fn`.
pub type wanrt_frame_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        index: u32,
        count: u32,
        rgb: *const u8,
        width: u32,
        height: u32,
    ) -> i32,
>;

/// One generation request. Fill with `wanrt_generate_params_init(&p, sizeof p)` (the `quality`
/// preset at 832×480, 81 frames), optionally `wanrt_generate_params_preset()`, then set
/// `prompt` and whatever else differs. Strings are NUL-terminated UTF-8 and are read during
/// the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct wanrt_generate_params {
    /// `sizeof(wanrt_generate_params)` as the caller compiled it; set by the init function.
    pub struct_size: usize,
    /// What the video shows. Required.
    pub prompt: *const c_char,
    /// What CFG steers away from; NULL (default): Wan's default (Chinese) negative prompt.
    /// Unused when `guidance_scale` is 1 and `cfg_zero_star` is 0.
    pub negative_prompt: *const c_char,
    /// Frame width in pixels, a multiple of 16. Default 832.
    pub width: u32,
    /// Frame height in pixels, a multiple of 16. Default 480.
    pub height: u32,
    /// Frame count, 1 + 4k (81: 5 s at 16 fps; 1: an image). Default 81.
    pub frames: u32,
    /// Denoising steps, 1 to 1000. Default 30.
    pub steps: u32,
    /// A `wanrt_solver` value. Default `WANRT_SOLVER_UNIPC`.
    pub solver: i32,
    /// 1: CFG-Zero* (optimised scale and zero-init of the first steps). Default 0.
    pub cfg_zero_star: i32,
    /// The schedule's flow shift, > 0. Default 5.
    pub shift: f64,
    /// Classifier-free guidance scale; 1 disables CFG (and the negative prompt). Default 5.
    pub guidance_scale: f64,
    /// How many first steps CFG-Zero* zeroes; -1 (default): 4 % of the steps, rounded.
    pub zero_init_steps: i32,
    /// Normalized Attention Guidance scale, >= 1 to enable it; 0 (default): NAG off.
    pub nag_scale: f32,
    /// NAG's norm-ratio threshold tau, > 0. Default 2.5.
    pub nag_tau: f32,
    /// NAG's blend alpha, in [0, 1]. Default 0.25.
    pub nag_alpha: f32,
    /// NAG's negative prompt; NULL (default): Wan's default negative prompt.
    pub nag_negative_prompt: *const c_char,
    /// Skip Layer Guidance: the DiT blocks (0-based) skipped in the unconditional pass;
    /// NULL (default) with `slg_block_count` 0: SLG off.
    pub slg_blocks: *const u32,
    /// The number of entries in `slg_blocks`. Default 0.
    pub slg_block_count: usize,
    /// SLG is active from this fraction of the steps. Default 0.1.
    pub slg_start: f64,
    /// ... up to this fraction (1: to the end). Default 1.
    pub slg_end: f64,
    /// TeaCache threshold (0.05-0.08 for 1.3B, 0.14-0.2 for 14B); 0 (default): off.
    pub teacache_threshold: f64,
    /// The noise seed, 0 to 2^63 - 1; -1 (default): a random seed (`wanrt_generation_seed()`
    /// tells which).
    pub seed: i64,
    /// An explicit initial latent x_T instead of the seed's noise: float32, row-major, shape
    /// `[1, 16, (frames - 1) / 4 + 1, height / 8, width / 8]`. NULL (default): from the seed.
    pub initial_latent: *const f32,
    /// The number of floats at `initial_latent`; must match the shape above.
    pub initial_latent_len: usize,
    /// 1: prepend the trigger phrases of the pipeline's LoRAs to the prompt. Default 0.
    pub lora_trigger: i32,
    /// 1 (default): run the conditional and unconditional passes as one batch when memory
    /// allows (faster); 0: one after the other (less memory).
    pub batch_cfg: i32,
    /// Per-step progress and cancellation; NULL (default): none.
    pub progress: wanrt_progress_fn,
    /// Per-stage progress and cancellation; NULL (default): none.
    pub stage_progress: wanrt_stage_fn,
    /// Passed unchanged to both callbacks. Default NULL.
    pub user_data: *mut c_void,
    /// A `wanrt_attention` value. Default `WANRT_ATTENTION_AUTO`.
    pub attention: i32,
    /// A `wanrt_vae_tiling` value: how the VAE decodes. Default `WANRT_VAE_TILING_AUTO`.
    pub vae_tiling: i32,
    /// With `WANRT_VAE_TILING_TILED`: the tile size in latent pixels (8 video pixels each); 0
    /// (default): 32.
    pub vae_tile: u32,
    /// With `WANRT_VAE_TILING_TILED`: the overlap of neighbouring tiles in latent pixels,
    /// below `vae_tile`; 0 (default): 8 when `vae_tile` is 0 too, else none.
    pub vae_tile_overlap: u32,
    /// Receives each frame as it is decoded, or NULL (default).
    pub frame_callback: wanrt_frame_fn,
    /// Passed to `frame_callback` unchanged.
    pub frame_user_data: *mut c_void,
}

impl Default for wanrt_generate_params {
    fn default() -> Self {
        let req = GenerateRequest::default();
        let nag = NagSettings::default();
        let slg = Slg::default();
        let mut p = wanrt_generate_params {
            struct_size: size_of::<Self>(),
            prompt: std::ptr::null(),
            negative_prompt: std::ptr::null(),
            width: req.width as u32,
            height: req.height as u32,
            frames: req.frames as u32,
            steps: 0,
            solver: 0,
            cfg_zero_star: 0,
            shift: 0.0,
            guidance_scale: 0.0,
            zero_init_steps: -1,
            nag_scale: 0.0,
            nag_tau: nag.tau,
            nag_alpha: nag.alpha,
            nag_negative_prompt: std::ptr::null(),
            slg_blocks: std::ptr::null(),
            slg_block_count: 0,
            slg_start: slg.start,
            slg_end: slg.end,
            teacache_threshold: 0.0,
            seed: -1,
            initial_latent: std::ptr::null(),
            initial_latent_len: 0,
            lora_trigger: i32::from(req.lora_trigger),
            batch_cfg: i32::from(req.batch_cfg),
            progress: None,
            stage_progress: None,
            user_data: std::ptr::null_mut(),
            attention: wanrt_attention::Auto as i32,
            vae_tiling: wanrt_vae_tiling::Auto as i32,
            vae_tile: 0,
            vae_tile_overlap: 0,
            frame_callback: None,
            frame_user_data: std::ptr::null_mut(),
        };
        p.set_sampling(&req);
        p
    }
}

// SAFETY: `#[repr(C)]`, starts with `struct_size`; integers, floats, pointers and optional
// function pointers only.
unsafe impl Versioned for wanrt_generate_params {
    const NAME: &'static str = "wanrt_generate_params";
    const MIN_SIZE: usize =
        std::mem::offset_of!(wanrt_generate_params, user_data) + size_of::<*mut c_void>();
}

impl wanrt_generate_params {
    /// Copies the fields a preset sets from `req`.
    fn set_sampling(&mut self, req: &GenerateRequest) {
        self.steps = req.steps as u32;
        self.solver = match req.solver {
            SolverKind::UniPc => wanrt_solver::Unipc,
            SolverKind::DpmPp => wanrt_solver::Dpmpp,
            SolverKind::Euler => wanrt_solver::Euler,
            SolverKind::Lcm => wanrt_solver::Lcm,
        } as i32;
        self.shift = req.shift;
        self.guidance_scale = req.guidance_scale;
        self.cfg_zero_star = i32::from(req.cfg_zero_star);
        match &req.nag {
            Some(n) => {
                self.nag_scale = n.scale;
                self.nag_tau = n.tau;
                self.nag_alpha = n.alpha;
            }
            None => self.nag_scale = 0.0,
        }
    }

    /// The request these parameters describe, for a VAE with `z_dim` latent channels.
    ///
    /// # Safety
    /// The pointers in `self` are NULL or valid as the struct documents.
    pub(super) unsafe fn request(&self, z_dim: usize) -> Result<GenerateRequest> {
        let solver = match self.solver {
            0 => SolverKind::UniPc,
            1 => SolverKind::DpmPp,
            2 => SolverKind::Euler,
            3 => SolverKind::Lcm,
            s => {
                return Err(Error::InvalidArgument(format!(
                    "params->solver {s} is not a wanrt_solver (0 to 3)"
                )))
            }
        };
        let attention = [
            (wanrt_attention::Auto, AttentionChoice::Auto),
            (wanrt_attention::Q8, AttentionChoice::Q8),
            (wanrt_attention::Bf16, AttentionChoice::Bf16),
            (wanrt_attention::Q8Fp8, AttentionChoice::Q8Fp8),
        ]
        .into_iter()
        .find(|&(c, _)| c as i32 == self.attention)
        .map(|(_, a)| a)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "params->attention {} is not a wanrt_attention (0 to 3)",
                self.attention
            ))
        })?;
        let nag = if self.nag_scale == 0.0 {
            None
        } else {
            Some(NagSettings {
                scale: self.nag_scale,
                tau: self.nag_tau,
                alpha: self.nag_alpha,
                negative_prompt: opt_str(self.nag_negative_prompt, "params->nag_negative_prompt")?
                    .map(str::to_owned),
            })
        };
        let slg = match (self.slg_blocks.is_null(), self.slg_block_count) {
            (_, 0) => None,
            (true, n) => {
                return Err(Error::InvalidArgument(format!(
                    "params->slg_blocks is NULL but params->slg_block_count is {n}"
                )))
            }
            (false, n) => Some(Slg {
                blocks: std::slice::from_raw_parts(self.slg_blocks, n)
                    .iter()
                    .map(|&b| b as usize)
                    .collect(),
                start: self.slg_start,
                end: self.slg_end,
            }),
        };
        let seed = match self.seed {
            -1 => None,
            s => Some(u64::try_from(s).map_err(|_| {
                Error::InvalidArgument(format!(
                    "params->seed {s} is out of range (0 to 2^63 - 1, or -1 for a random seed)"
                ))
            })?),
        };
        let zero_init_steps = match self.zero_init_steps {
            -1 => None,
            n => Some(usize::try_from(n).map_err(|_| {
                Error::InvalidArgument(format!(
                    "params->zero_init_steps {n} is negative (-1: automatic)"
                ))
            })?),
        };
        let mut req = GenerateRequest {
            prompt: req_str(self.prompt, "params->prompt")?.to_owned(),
            negative_prompt: opt_str(self.negative_prompt, "params->negative_prompt")?
                .map(str::to_owned),
            width: self.width as usize,
            height: self.height as usize,
            frames: self.frames as usize,
            steps: self.steps as usize,
            solver,
            shift: self.shift,
            guidance_scale: self.guidance_scale,
            cfg_zero_star: self.cfg_zero_star != 0,
            zero_init_steps,
            nag,
            slg,
            teacache: (self.teacache_threshold != 0.0).then_some(self.teacache_threshold),
            seed,
            latent_init: None,
            lora_trigger: self.lora_trigger != 0,
            batch_cfg: self.batch_cfg != 0,
            keep_video: false,
            attention,
            vae_tiling: self.vae_tiling()?,
        };
        req.validate()?;
        if !self.initial_latent.is_null() {
            let dims = req.latent_dims(z_dim);
            let expected: usize = dims.iter().product();
            if self.initial_latent_len != expected {
                return Err(Error::InvalidArgument(format!(
                    "params->initial_latent_len is {}, but a latent {dims:?} for {}x{} and {} \
                     frames holds {expected} floats",
                    self.initial_latent_len, req.width, req.height, req.frames
                )));
            }
            let data = std::slice::from_raw_parts(self.initial_latent, expected).to_vec();
            req.latent_init = Some(Tensor::from_f32(data, dims)?);
        } else if self.initial_latent_len != 0 {
            return Err(Error::InvalidArgument(format!(
                "params->initial_latent is NULL but params->initial_latent_len is {}",
                self.initial_latent_len
            )));
        }
        Ok(req)
    }

    /// The VAE tiling the fields ask for.
    fn vae_tiling(&self) -> Result<VaeTiling> {
        match self.vae_tiling {
            0 => Ok(VaeTiling::Auto),
            1 => Ok(VaeTiling::Off),
            2 => {
                let tiling = match (self.vae_tile, self.vae_tile_overlap) {
                    (0, 0) => Tiling::default(),
                    (tile, overlap) => Tiling {
                        tile: tile as usize,
                        overlap: overlap as usize,
                    },
                };
                tiling.validate()?;
                Ok(VaeTiling::Tiled(tiling))
            }
            t => Err(Error::InvalidArgument(format!(
                "params->vae_tiling {t} is not a wanrt_vae_tiling (0: auto, 1: off, 2: tiled)"
            ))),
        }
    }
}

/// Fills the `struct_size` bytes at `params` with the defaults (the `quality` preset: UniPC,
/// 30 steps, shift 5, CFG 5; 832×480, 81 frames; a random seed; no callbacks) and sets
/// `params->struct_size`. Pass `sizeof *params` as `struct_size`.
///
/// Returns `WANRT_STATUS_OK`, or `WANRT_STATUS_INVALID_ARGUMENT` when `params` is NULL or
/// `struct_size` is smaller than the first version of the struct.
///
/// # Safety
/// `params` is NULL or points to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generate_params_init(
    params: *mut wanrt_generate_params,
    struct_size: usize,
) -> wanrt_status {
    guard("wanrt_generate_params_init", || {
        params::init(params, struct_size, "params")
    })
}

/// Sets the sampling fields of an initialised `params` (solver, steps, shift, guidance scale,
/// CFG-Zero*, NAG) to a named preset; the prompt, size, frames, seed and callbacks are left
/// alone. Presets: "quality" (UniPC, 30 steps, shift 5, CFG 5; the default) and "distill"
/// (UniPC, 8 steps, shift 5, CFG 1, NAG on; for a step-distill LoRA at strength 0.9-1 or a
/// distilled model).
///
/// Returns `WANRT_STATUS_OK`; `WANRT_STATUS_INVALID_ARGUMENT` for a NULL argument, a bad
/// `struct_size` or an unknown preset name.
///
/// # Safety
/// `params` is NULL or an initialised `wanrt_generate_params`; `preset` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generate_params_preset(
    params: *mut wanrt_generate_params,
    preset: *const c_char,
) -> wanrt_status {
    guard("wanrt_generate_params_preset", || {
        let mut p = params::read(params, "params")?;
        let preset: Preset = req_str(preset, "preset")?.parse()?;
        let mut req = GenerateRequest::default();
        preset.apply(&mut req);
        p.set_sampling(&req);
        params::write_back(params, &p);
        Ok(())
    })
}

/// Runs one generation on `pipeline`; on success `*out` receives the result (free it with
/// `wanrt_generation_free()`). The request is checked completely before any heavy work (sizes,
/// frame count, values, prompt lengths in tokens, the initial latent's length, the memory
/// needed against the memory available). The callbacks in `params` report progress and can
/// cancel.
///
/// Returns `WANRT_STATUS_OK`; `WANRT_STATUS_INVALID_ARGUMENT` for a NULL argument, a bad
/// `struct_size`, an invalid request (the message says which field and why) or a busy
/// pipeline; `WANRT_STATUS_OUT_OF_MEMORY` when the request's estimated working memory exceeds
/// the memory available (the message gives both); `WANRT_STATUS_CANCELLED` when a callback
/// returned non-zero (`*out` is not written and nothing is leaked);
/// `WANRT_STATUS_DEVICE_ERROR` for a device failure.
///
/// # Safety
/// `pipeline` is NULL or a live pipeline; `params` is NULL or an initialised
/// `wanrt_generate_params` whose pointers are valid as documented there; `out` is NULL or valid
/// for a write.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generate(
    pipeline: *mut wanrt_pipeline,
    params: *const wanrt_generate_params,
    out: *mut *mut wanrt_generation,
) -> wanrt_status {
    guard("wanrt_generate", || {
        let handle = handle(pipeline, "pipeline")?;
        let p = params::read(params, "params")?;
        if out.is_null() {
            return Err(null_argument("out"));
        }
        let pipeline = handle.lock()?;
        let req = p.request(pipeline.vae().config().z_dim)?;
        let callers = Callbacks(p);
        let mut on_progress = |progress: &Progress| callers.call(progress);
        let mut on_frame = |frame: &DecodedFrame| callers.frame(frame);
        let generation = pipeline.generate_streamed(&req, &mut on_progress, &mut on_frame)?;
        let result = wanrt_generation::new(generation, pipeline.info())?;
        write_out(out, "out", Box::into_raw(Box::new(result)))
    })
}

/// The C callbacks of a request and their user data.
struct Callbacks(wanrt_generate_params);

// SAFETY: the header allows the callbacks to run on a pipeline's worker thread (while the
// thread that called `wanrt_generate` waits), with the user data the caller passed.
unsafe impl Send for Callbacks {}
unsafe impl Sync for Callbacks {}

impl Callbacks {
    /// Calls the callbacks for one progress report.
    fn call(&self, progress: &Progress) -> Flow {
        callbacks(&self.0, progress)
    }

    /// Calls the frame callback, if any, for one decoded frame.
    fn frame(&self, frame: &DecodedFrame) -> Flow {
        let Some(f) = self.0.frame_callback else {
            return Flow::Continue;
        };
        let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        // SAFETY: the caller vouches for its callback and user data; `rgb` outlives the call.
        let answer = unsafe {
            f(
                self.0.frame_user_data,
                u32_of(frame.index),
                u32_of(frame.count),
                frame.rgb.as_ptr(),
                u32_of(frame.width),
                u32_of(frame.height),
            )
        };
        if answer == 0 {
            Flow::Continue
        } else {
            Flow::Cancel
        }
    }
}

/// Calls the C callbacks of `p` for one progress report.
fn callbacks(p: &wanrt_generate_params, progress: &Progress) -> Flow {
    let stage = match progress.stage {
        Stage::TextEncoding => wanrt_stage::TextEncoding,
        Stage::Denoising => wanrt_stage::Denoising,
        Stage::Decoding => wanrt_stage::Decoding,
    };
    let (done, total) = (progress.done as u32, progress.total as u32);
    let mut cancel = false;
    if let Some(f) = p.stage_progress {
        // SAFETY: the caller vouches for its callback and user data.
        cancel |= unsafe { f(p.user_data, stage as i32, done, total) } != 0;
    }
    if let (Some(f), Stage::Denoising, false) = (p.progress, progress.stage, cancel) {
        let sigma = progress.sigma.unwrap_or(0.0) as f32;
        // SAFETY: as above.
        cancel |= unsafe { f(p.user_data, done, total, sigma) } != 0;
    }
    if cancel {
        Flow::Cancel
    } else {
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wanrt_pipeline_load` of the demo model on `device` with `device_index`.
    fn load_demo(device: i32, device_index: i32) -> wanrt_status {
        let params = wanrt_pipeline_params {
            device,
            device_index,
            demo: 1,
            ..wanrt_pipeline_params::default()
        };
        let mut out = std::ptr::null_mut();
        // SAFETY: `params` is initialised and `out` writable; a pipeline made is freed.
        unsafe {
            let status = wanrt_pipeline_load(&params, &mut out);
            if !out.is_null() {
                wanrt_pipeline_free(out);
            }
            status
        }
    }

    #[test]
    fn the_device_fields_select_and_check_the_device() {
        assert_eq!(load_demo(0, 0), wanrt_status::Ok);
        assert_eq!(load_demo(1, -1), wanrt_status::InvalidArgument);
        assert_eq!(load_demo(2, 0), wanrt_status::InvalidArgument);
        // Past the devices of any machine, and a device error without CUDA or a driver.
        assert_eq!(load_demo(1, i32::MAX), wanrt_status::DeviceError);
        if crate::backend::cuda_devices().is_ok_and(|d| d.is_empty()) {
            assert_eq!(load_demo(1, 0), wanrt_status::DeviceError);
        }
    }
}
