//! Queries on a loaded pipeline that run nothing: the model's facts and a request's memory
//! estimate.

use std::ffi::c_char;

use super::params::{self, handle, Versioned};
use super::pipeline::{wanrt_generate_params, wanrt_lora_mode, wanrt_pipeline, wanrt_vae_tiling};
use super::status::{guard, wanrt_status};
use crate::lora::Mode;
use crate::pipeline::{Pipeline, VaeTiling, MAX_FRAMES};

/// The facts of a loaded pipeline's models (`wanrt_pipeline_info`). Set `struct_size` to
/// `sizeof(wanrt_model_info)` before the call; the library fills the fields that fit.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct wanrt_model_info {
    /// `sizeof(wanrt_model_info)`, set by the caller.
    pub struct_size: usize,
    /// The DiT's hidden width (1536 for 1.3B, 5120 for 14B).
    pub dim: u32,
    /// The DiT's transformer blocks (30 for 1.3B, 40 for 14B).
    pub num_layers: u32,
    /// The DiT's attention heads.
    pub num_heads: u32,
    /// The DiT's feed-forward inner width.
    pub ffn_dim: u32,
    /// The DiT's input latent channels (16 for text-to-video).
    pub in_channels: u32,
    /// The DiT's output latent channels (16).
    pub out_channels: u32,
    /// The text encoder's maximum prompt length in tokens (512).
    pub text_len: u32,
    /// The most frames a request may ask for (`wanrt_generate_params.frames`).
    pub max_frames: u32,
    /// The stored dtype of the DiT's block weights: "bf16", "f16", "f32", "fp8 e4m3fn",
    /// "fp8 e5m2". A static string: never free it.
    pub weight_dtype: *const c_char,
    /// The LoRAs loaded (0: none).
    pub lora_count: u32,
    /// How they are applied, a `wanrt_lora_mode`.
    pub lora_mode: i32,
    /// 1 for the random-weight demo model (its output is noise), 0 for loaded files.
    pub demo: i32,
    /// The pipeline's worker threads.
    pub threads: u32,
}

impl Default for wanrt_model_info {
    fn default() -> Self {
        wanrt_model_info {
            struct_size: size_of::<Self>(),
            dim: 0,
            num_layers: 0,
            num_heads: 0,
            ffn_dim: 0,
            in_channels: 0,
            out_channels: 0,
            text_len: 0,
            max_frames: 0,
            weight_dtype: std::ptr::null(),
            lora_count: 0,
            lora_mode: 0,
            demo: 0,
            threads: 0,
        }
    }
}

// SAFETY: repr(C), starts with `struct_size`, integers and a pointer only.
unsafe impl Versioned for wanrt_model_info {
    const NAME: &'static str = "wanrt_model_info";
    const MIN_SIZE: usize = size_of::<wanrt_model_info>();
}

/// A request's memory estimate and the plan chosen to fit it (`wanrt_pipeline_estimate`), in
/// bytes. Set `struct_size` to `sizeof(wanrt_memory_estimate)` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct wanrt_memory_estimate {
    /// `sizeof(wanrt_memory_estimate)`, set by the caller.
    pub struct_size: usize,
    /// The weights of all models (memory-mapped files count too), held for the whole run.
    pub weights: u64,
    /// The denoising steps' working memory.
    pub denoising: u64,
    /// The VAE decode's working memory (with the tiling below) and the frames.
    pub decoding: u64,
    /// The peak: `weights` plus the larger of `denoising` and `decoding`.
    pub peak: u64,
    /// The memory available now (`MemAvailable` on Linux), 0 where unknown (then nothing was
    /// checked against it).
    pub available: u64,
    /// The VAE decode chosen: `WANRT_VAE_TILING_OFF` (whole frames) or
    /// `WANRT_VAE_TILING_TILED` (never `AUTO`, which is resolved here).
    pub vae_tiling: i32,
    /// With tiling, the tile size in latent pixels (else 0).
    pub vae_tile: u32,
    /// With tiling, the tiles' overlap in latent pixels (else 0).
    pub vae_tile_overlap: u32,
    /// 1 when the conditional and unconditional passes run as one batch.
    pub batch_cfg: i32,
}

// SAFETY: repr(C), starts with `struct_size`, integers only.
unsafe impl Versioned for wanrt_memory_estimate {
    const NAME: &'static str = "wanrt_memory_estimate";
    const MIN_SIZE: usize = size_of::<wanrt_memory_estimate>();
}

/// Writes the facts of `pipeline`'s models into `*out`, whose `struct_size` the caller set.
/// Fails with `WANRT_STATUS_INVALID_ARGUMENT` for NULL arguments, a `struct_size` below the
/// first version's, or a pipeline busy on another thread.
///
/// # Safety
/// `pipeline` is NULL or a live pipeline; `out` is NULL or points to `out->struct_size`
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn wanrt_pipeline_info(
    pipeline: *mut wanrt_pipeline,
    out: *mut wanrt_model_info,
) -> wanrt_status {
    guard("wanrt_pipeline_info", || {
        let handle = handle(pipeline, "pipeline")?;
        let info = model_info(&*handle.lock()?);
        params::fill(out, &info, "out")
    })
}

/// The facts of `p`'s models.
fn model_info(p: &Pipeline) -> wanrt_model_info {
    let cfg = p.dit().config();
    let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    wanrt_model_info {
        dim: u32_of(cfg.dim),
        num_layers: u32_of(cfg.num_layers),
        num_heads: u32_of(cfg.num_heads),
        ffn_dim: u32_of(cfg.ffn_dim),
        in_channels: u32_of(cfg.in_dim),
        out_channels: u32_of(cfg.out_dim),
        text_len: u32_of(p.text_encoder().tokenizer().text_len()),
        max_frames: u32_of(MAX_FRAMES),
        weight_dtype: p.dit().weight_dtype().c_name().as_ptr(),
        lora_count: u32_of(p.info().loras.len()),
        lora_mode: match p.info().lora_mode {
            Mode::Merged => wanrt_lora_mode::Merge,
            Mode::Unmerged => wanrt_lora_mode::Runtime,
        } as i32,
        demo: i32::from(p.info().demo),
        threads: u32_of(p.threads()),
        ..wanrt_model_info::default()
    }
}

/// Checks the request `params` against `pipeline` as `wanrt_generate` would, without running
/// it, and writes its memory estimate and the plan chosen (VAE tiling, batched CFG) into
/// `*out`, whose `struct_size` the caller set. Fails as `wanrt_generate` would fail before any
/// work: `WANRT_STATUS_INVALID_ARGUMENT` for a bad request, `WANRT_STATUS_OUT_OF_MEMORY` when
/// it does not fit in the memory available. The callbacks in `params` are not called.
///
/// # Safety
/// `pipeline` is NULL or a live pipeline; `params` is NULL or an initialised
/// `wanrt_generate_params`; `out` is NULL or points to `out->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn wanrt_pipeline_estimate(
    pipeline: *mut wanrt_pipeline,
    params: *const wanrt_generate_params,
    out: *mut wanrt_memory_estimate,
) -> wanrt_status {
    guard("wanrt_pipeline_estimate", || {
        let handle = handle(pipeline, "pipeline")?;
        let p = params::read(params, "params")?;
        let pipeline = handle.lock()?;
        let fit = pipeline.check(&p.request(pipeline.vae().config().z_dim)?)?;
        let tiles = fit.tiling.tiles();
        let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let estimate = wanrt_memory_estimate {
            weights: fit.memory.weights.total(),
            denoising: fit.memory.denoising,
            decoding: fit.memory.decoding,
            peak: fit.memory.peak(),
            available: fit.available.unwrap_or(0),
            vae_tiling: match fit.tiling {
                VaeTiling::Tiled(_) => wanrt_vae_tiling::Tiled,
                _ => wanrt_vae_tiling::Off,
            } as i32,
            vae_tile: tiles.map_or(0, |t| u32_of(t.tile)),
            vae_tile_overlap: tiles.map_or(0, |t| u32_of(t.overlap)),
            batch_cfg: i32::from(fit.batch_cfg),
            ..wanrt_memory_estimate::default()
        };
        params::fill(out, &estimate, "out")
    })
}
