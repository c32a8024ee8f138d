//! Typed launchers of the hand-written kernels in `kernels/*.cu`.
//!
//! `build.rs` compiles every `.cu` file ahead of time with nvcc into one fatbin holding cubins for
//! sm_80, sm_86, sm_89 and sm_90a plus compute_80 PTX (which newer GPUs JIT), and this module embeds
//! them, so a host running wanrt needs only the NVIDIA driver (and cuBLASLt for the GEMMs), no
//! CUDA toolkit. [`Kernels::load`] loads every fatbin into a context and looks up every function
//! once; each launcher (one per kernel, grouped in one Rust file per `.cu` file) checks every
//! length against the sizes it is given before launching and computes its launch configuration.

// `crate::backend::cuda::ops` calls most launchers; the modulated LayerNorm, the fused RoPE,
// patchify and the time embedding wait for the DiT's fused CUDA path and are used by the kernel
// tests only until then.
#![allow(dead_code)]

pub(crate) mod attention;
pub(crate) mod attention_q8;
pub(crate) mod attention_q8_sm90;
pub(crate) mod binary;
pub(crate) mod channel_norm;
pub(crate) mod conv3d;
pub(crate) mod convert;
pub(crate) mod elementwise;
pub(crate) mod embedding;
pub(crate) mod fp8_quant;
pub(crate) mod layout;
pub(crate) mod linear_f32;
pub(crate) mod lora_merge;
pub(crate) mod norm;
pub(crate) mod patchify;
pub(crate) mod qk_norm_rope;
pub(crate) mod reduce;
pub(crate) mod rope;
pub(crate) mod sampler;
pub(crate) mod strided_copy;
pub(crate) mod time_embedding;
pub(crate) mod unary;
pub(crate) mod upsample;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_attention_q8;
#[cfg(test)]
mod tests_attention_q8_sm90;

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, CudaView, CudaViewMut, DevicePtr,
    DriverError, LaunchArgs, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

// `FATBINS`, the `(file stem, fatbin)` of every `kernels/*.cu` sorted by stem: `build.rs` writes
// it, so a new kernel file needs no edit here.
include!(concat!(env!("OUT_DIR"), "/fatbins.rs"));

/// Every kernel function of wanrt, loaded into one CUDA context.
pub(crate) struct Kernels {
    attention_hd64: CudaFunction,
    attention_hd128: CudaFunction,
    attention_q8_hd64: CudaFunction,
    attention_q8_hd128: CudaFunction,
    attention_q8_sm90_hd128: CudaFunction,
    attention_q8_fp8_hd64: CudaFunction,
    attention_q8_fp8_hd128: CudaFunction,
    q8_vamax: CudaFunction,
    q8_quantize_v_fp8: CudaFunction,
    q8_stats: CudaFunction,
    q8_means: CudaFunction,
    q8_quantize_q: CudaFunction,
    q8_quantize_kv: CudaFunction,
    f32_to_bf16: CudaFunction,
    bf16_to_f32: CudaFunction,
    fp8_e4m3fn_to_bf16: CudaFunction,
    fp8_e5m2_to_bf16: CudaFunction,
    absmax_bf16: CudaFunction,
    quantize_e4m3fn_bf16: CudaFunction,
    gated_residual_add: CudaFunction,
    /// Per [`Activation::IS_F32`]: bf16, then f32 rows.
    layer_norm_modulate: [CudaFunction; 2],
    lora_merge_amax: CudaFunction,
    lora_merge_store: CudaFunction,
    patchify: CudaFunction,
    unpatchify: CudaFunction,
    rms_norm_rope: CudaFunction,
    sinusoidal_embedding: CudaFunction,
    /// `binary_<a>_<b>`, indexed by `2·(a is f32) + (b is f32)`.
    binary: [CudaFunction; 4],
    /// Per [`Activation::IS_F32`]: bf16, then f32.
    unary: [CudaFunction; 2],
    reduce: [CudaFunction; 2],
    softmax_last: [CudaFunction; 2],
    rope_interleaved: [CudaFunction; 2],
    /// Per element size of [`strided_copy::ELEMENT_SIZES`].
    strided_copy: [CudaFunction; 5],
    /// Per weight dtype: bf16, then f32.
    linear_f32: [CudaFunction; 2],
    unipc_step: CudaFunction,
    dpm_step: CudaFunction,
    euler_step: CudaFunction,
    lcm_step: CudaFunction,
    cfg: CudaFunction,
    cfg_zero_star_partials: CudaFunction,
    cfg_zero_star_combine: CudaFunction,
    first_non_finite: CudaFunction,
    philox_normal: CudaFunction,
    channel_rms_norm: CudaFunction,
    conv3d: CudaFunction,
    embedding: CudaFunction,
    upsample_nearest2x: CudaFunction,
}

impl Kernels {
    /// Loads the embedded fatbins into `ctx` and looks up every kernel. Fails with
    /// [`Error::Device`] when the driver refuses a module (for example a GPU older than sm_80).
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let mut modules = Vec::with_capacity(FATBINS.len());
        for (name, image) in FATBINS {
            let module = ctx
                .load_module(Ptx::from_binary(image.to_vec()))
                .map_err(|e| driver_error(&format!("loading kernels/{name}.cu"), e))?;
            modules.push((name, module));
        }
        let function = |file: &str, name: &str| -> Result<CudaFunction> {
            let (_, module): &(&str, Arc<CudaModule>) = modules
                .iter()
                .find(|(n, _)| *n == file)
                .ok_or_else(|| Error::Device(format!("kernels/{file}.cu is not in this build")))?;
            module
                .load_function(name)
                .map_err(|e| driver_error(&format!("kernel `{name}` of kernels/{file}.cu"), e))
        };
        Ok(Kernels {
            attention_hd64: function("attention", "attention_hd64_bf16")?,
            attention_hd128: function("attention", "attention_hd128_bf16")?,
            attention_q8_hd64: function("attention_q8", "attention_q8_hd64")?,
            attention_q8_hd128: function("attention_q8", "attention_q8_hd128")?,
            attention_q8_sm90_hd128: function("attention_q8_sm90", "attention_q8_sm90_hd128")?,
            attention_q8_fp8_hd64: function("attention_q8", "attention_q8_fp8_hd64")?,
            attention_q8_fp8_hd128: function("attention_q8", "attention_q8_fp8_hd128")?,
            q8_vamax: function("attention_q8", "q8_vamax")?,
            q8_quantize_v_fp8: function("attention_q8", "q8_quantize_v_fp8")?,
            q8_stats: function("attention_q8", "q8_stats")?,
            q8_means: function("attention_q8", "q8_means")?,
            q8_quantize_q: function("attention_q8", "q8_quantize_q")?,
            q8_quantize_kv: function("attention_q8", "q8_quantize_kv")?,
            f32_to_bf16: function("convert", "f32_to_bf16")?,
            bf16_to_f32: function("convert", "bf16_to_f32")?,
            fp8_e4m3fn_to_bf16: function("convert", "fp8_e4m3fn_to_bf16")?,
            fp8_e5m2_to_bf16: function("convert", "fp8_e5m2_to_bf16")?,
            absmax_bf16: function("fp8_quant", "absmax_bf16")?,
            quantize_e4m3fn_bf16: function("fp8_quant", "quantize_e4m3fn_bf16")?,
            gated_residual_add: function("elementwise", "gated_residual_add_bf16")?,
            layer_norm_modulate: [
                function("norm", "layer_norm_modulate_bf16")?,
                function("norm", "layer_norm_modulate_f32")?,
            ],
            lora_merge_amax: function("lora_merge", "lora_merge_amax")?,
            lora_merge_store: function("lora_merge", "lora_merge_store")?,
            patchify: function("patchify", "patchify_f32_bf16")?,
            unpatchify: function("patchify", "unpatchify_f32")?,
            rms_norm_rope: function("qk_norm_rope", "rms_norm_rope_bf16")?,
            sinusoidal_embedding: function("time_embedding", "sinusoidal_embedding_f32")?,
            binary: [
                function("binary", "binary_bf16_bf16")?,
                function("binary", "binary_bf16_f32")?,
                function("binary", "binary_f32_bf16")?,
                function("binary", "binary_f32_f32")?,
            ],
            unary: [
                function("unary", "unary_bf16")?,
                function("unary", "unary_f32")?,
            ],
            reduce: [
                function("reduce", "reduce_bf16")?,
                function("reduce", "reduce_f32")?,
            ],
            softmax_last: [
                function("reduce", "softmax_last_bf16")?,
                function("reduce", "softmax_last_f32")?,
            ],
            rope_interleaved: [
                function("rope", "rope_interleaved_bf16")?,
                function("rope", "rope_interleaved_f32")?,
            ],
            strided_copy: [
                function("strided_copy", "strided_copy_b1")?,
                function("strided_copy", "strided_copy_b2")?,
                function("strided_copy", "strided_copy_b4")?,
                function("strided_copy", "strided_copy_b8")?,
                function("strided_copy", "strided_copy_b16")?,
            ],
            linear_f32: [
                function("linear_f32", "linear_f32_w_bf16")?,
                function("linear_f32", "linear_f32_w_f32")?,
            ],
            unipc_step: function("sampler", "unipc_step_f32")?,
            dpm_step: function("sampler", "dpm_step_f32")?,
            euler_step: function("sampler", "euler_step_f32")?,
            lcm_step: function("sampler", "lcm_step_f32")?,
            cfg: function("sampler", "cfg_f32")?,
            cfg_zero_star_partials: function("sampler", "cfg_zero_star_partials_f32")?,
            cfg_zero_star_combine: function("sampler", "cfg_zero_star_combine_f32")?,
            first_non_finite: function("sampler", "first_non_finite_f32")?,
            philox_normal: function("sampler", "philox_normal_f32")?,
            channel_rms_norm: function("channel_norm", "channel_rms_norm_bf16")?,
            conv3d: function("conv3d", "conv3d_implicit_gemm_bf16")?,
            embedding: function("embedding", "embedding_bf16")?,
            upsample_nearest2x: function("upsample", "upsample_nearest2x_bf16")?,
        })
    }
}

/// A driver error while loading or launching, with what was being done.
fn driver_error(what: &str, e: DriverError) -> Error {
    Error::Device(format!("{what}: {e}"))
}

/// Checks that a device buffer holds exactly `expected` elements.
fn check_len(op: &str, name: &str, len: usize, expected: usize) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{op}: `{name}` holds {len} elements, the sizes need {expected}"
        )))
    }
}

/// Converts a size to the `i32` a kernel takes, refusing sizes that do not fit.
fn to_i32(op: &str, what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::InvalidArgument(format!("{op}: {what} {n} is too large")))
}

/// Converts a size to the `u32` a kernel takes, refusing sizes that do not fit.
fn to_u32(op: &str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::InvalidArgument(format!("{op}: {what} {n} is too large")))
}

/// The activation dtypes of the CUDA backend, as kernel element types: bf16 and f32.
pub(crate) trait Activation {
    /// True for f32 (the kernels of a pair are listed bf16 first).
    const IS_F32: bool;
}

impl Activation for half::bf16 {
    const IS_F32: bool = false;
}

impl Activation for f32 {
    const IS_F32: bool = true;
}

/// Multiplies sizes, refusing an overflow.
fn product(op: &str, sizes: &[usize]) -> Result<usize> {
    sizes
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| Error::InvalidArgument(format!("{op}: sizes {sizes:?} overflow")))
}

/// Launches a kernel whose arguments are pushed, naming it in a launch error.
///
/// # Safety
/// The arguments must match the kernel's parameters in number, order and type, and every buffer
/// must hold what the kernel reads and writes for `cfg` (the launchers check the lengths first).
unsafe fn launch(op: &str, args: &mut LaunchArgs<'_>, cfg: LaunchConfig) -> Result<()> {
    // SAFETY: the caller's contract.
    unsafe { args.launch(cfg) }
        .map(|_| ())
        .map_err(|e| driver_error(&format!("launching `{op}`"), e))
}

/// Threads per block of the element-wise kernels.
const ELEMENTWISE_THREADS: u32 = 256;
/// Elements each thread of an element-wise kernel handles per step: one 16-byte vector of bf16.
const ELEMENTWISE_VECTOR: usize = 8;

/// The launch shape of a grid-stride element-wise kernel over `n` elements.
fn elementwise_config(n: usize) -> LaunchConfig {
    grid_config(n.div_ceil(ELEMENTWISE_VECTOR))
}

/// The launch shape of a grid-stride kernel that has work for `threads` threads.
fn grid_config(threads: usize) -> LaunchConfig {
    // Grid-stride loops cover any amount of work; 65535 blocks keep every launch legal.
    let blocks = threads
        .div_ceil(ELEMENTWISE_THREADS as usize)
        .clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEMENTWISE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch shape of a grid-stride kernel with one thread per item, `n` items (at least one
/// block, at most 65535: the loop covers the rest).
fn grid_stride_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEMENTWISE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads per block of the row kernels (one block per row: the norms).
const ROW_THREADS: u32 = 256;

/// The launch shape of a kernel with one block per row.
fn row_config(rows: usize) -> Result<LaunchConfig> {
    let rows = u32::try_from(rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{rows} rows are too many for one launch"))
        })?;
    Ok(LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Checks that a device buffer starts on a 16-byte boundary (kernels without a scalar path copy
/// in 16-byte vectors; a view at an odd offset would fault).
fn check_aligned16<T>(
    op: &str,
    name: &str,
    buffer: &impl DevicePtr<T>,
    stream: &CudaStream,
) -> Result<()> {
    let (ptr, _sync) = buffer.device_ptr(stream);
    if ptr % 16 == 0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{op}: `{name}` does not start on a 16-byte boundary"
        )))
    }
}

/// Checks the lengths and launches an element-wise kernel taking `(x, out, n)`.
fn launch_map<I, O>(
    op: &str,
    function: &CudaFunction,
    stream: &Arc<CudaStream>,
    x: &CudaView<'_, I>,
    out: &mut CudaViewMut<'_, O>,
    n: usize,
) -> Result<()> {
    check_len(op, "x", x.len(), n)?;
    check_len(op, "out", out.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let n_i32 = to_i32(op, "n", n)?;
    let mut args = stream.launch_builder(function);
    args.arg(x).arg(out).arg(&n_i32);
    // SAFETY: the caller names a kernel taking (x, out, n); the lengths were checked.
    unsafe { launch(op, &mut args, elementwise_config(n)) }
}
