//! Launcher of `kernels/attention_q8.cu`: the 8-bit attention (INT8 Q·Kᵀ, fp16 P·V) for
//! head_dim 64 and 128, with its quantization pre-pass, in a caller-provided workspace.

use std::sync::Arc;

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use half::bf16;

use super::attention::{check_attention_buffers, ATTENTION_BLOCK_M};
use super::attention_q8_sm90::Q8Operands;
use super::{check_aligned16, launch, product, to_i32, Kernels};
use crate::backend::cpu::attention::AttnDims;
use crate::backend::q8_kernel::Q8Kernel;
use crate::error::{Error, Result};

/// Tokens one `q8_stats` block walks (`STATS_ROWS` in the kernel file).
const STATS_ROWS: usize = 128;
/// Token rows one quantization block handles (`QUANT_ROWS`, one warp each).
const QUANT_ROWS: usize = 8;
/// Every workspace part starts on this boundary (the driver's allocation alignment).
const PART_ALIGN: usize = 256;

/// The parts of the workspace, in order: (element size, element count) for `dims`.
fn parts(dims: AttnDims) -> Result<[(usize, usize); 7]> {
    const OP: &str = "attention_q8";
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: d,
    } = dims;
    let bh = product(OP, &[batch, heads])?;
    Ok([
        (8, product(OP, &[bh, 2, d])?),      // sums of k and v (f64)
        (4, product(OP, &[bh, 2, d])?),      // means of k and v (f32)
        (1, product(OP, &[bh, q_len, d])?),  // q8
        (4, product(OP, &[bh, q_len])?),     // q scales
        (1, product(OP, &[bh, kv_len, d])?), // k8
        (4, product(OP, &[bh, kv_len])?),    // k scales
        (2, product(OP, &[bh, kv_len, d])?), // v16
    ])
}

/// Bytes of the workspace [`Kernels::attention_q8`] needs for `dims`.
pub(crate) fn attention_q8_workspace_bytes(dims: AttnDims) -> Result<usize> {
    parts(dims)?.iter().try_fold(0usize, |acc, &(size, n)| {
        n.checked_mul(size)
            .and_then(|b| acc.checked_add(b.next_multiple_of(PART_ALIGN)))
            .ok_or_else(|| Error::InvalidArgument(format!("attention_q8: {dims:?} overflow")))
    })
}

impl Kernels {
    /// `out = softmax(scale · q kᵀ) v` per batch and head through the 8-bit scheme
    /// `Q8Path::Sm80` of [`crate::backend::cpu::attention_q8`] (which emulates it on the CPU):
    /// K and V smoothed by their means over the sequence, Q and K rounded to INT8 with one scale
    /// per token, V to f16; INT8 Q·Kᵀ and fp16 P·V on
    /// tensor cores with f32 accumulation and online softmax. Layouts and rules as
    /// [`Kernels::attention`] (bf16 `[batch, len, heads, head_dim]`, head_dim 64 or 128, 16-byte
    /// aligned buffers, unmasked, zeros without keys); `workspace` holds at least
    /// [`attention_q8_workspace_bytes`] bytes and starts on a 16-byte boundary (a fresh
    /// allocation does). Five launches on `stream`: K and V sums, their means, Q and K/V
    /// quantization, attention by `kernel` (the sm_90a one, [`Kernels::attention_q8_sm90`],
    /// runs the same arithmetic with 128-key tiles: `Q8Path::Sm90`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_q8(
        &self,
        stream: &Arc<CudaStream>,
        q: &CudaView<'_, bf16>,
        k: &CudaView<'_, bf16>,
        v: &CudaView<'_, bf16>,
        out: &mut CudaViewMut<'_, bf16>,
        workspace: &mut CudaViewMut<'_, u8>,
        dims: AttnDims,
        scale: f32,
        kernel: Q8Kernel,
    ) -> Result<()> {
        const OP: &str = "attention_q8";
        let AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        } = dims;
        let function = match head_dim {
            64 => &self.attention_q8_hd64,
            128 => &self.attention_q8_hd128,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{OP}: head_dim {head_dim} has no kernel (64 and 128 do)"
                )))
            }
        };
        let need = attention_q8_workspace_bytes(dims)?;
        if workspace.len() < need {
            return Err(Error::InvalidArgument(format!(
                "{OP}: the workspace holds {} bytes, {dims:?} needs {need}",
                workspace.len()
            )));
        }
        if !check_attention_buffers(OP, stream, q, k, v, out, dims)? {
            return Ok(());
        }
        if kv_len == 0 {
            return stream
                .memset_zeros(out)
                .map_err(|e| super::driver_error(OP, e));
        }
        check_aligned16(OP, "workspace", workspace, stream)?;
        let parts = parts(dims)?;
        let sums_bytes = (parts[0].0 * parts[0].1).next_multiple_of(PART_ALIGN);
        stream
            .memset_zeros(&mut workspace.slice_mut(..sums_bytes))
            .map_err(|e| super::driver_error(OP, e))?;
        let (base, _sync) = workspace.device_ptr_mut(stream);
        let mut ptrs = [0u64; 7];
        let mut at = base;
        for (p, &(size, n)) in ptrs.iter_mut().zip(&parts) {
            *p = at;
            at += (size * n).next_multiple_of(PART_ALIGN) as u64;
        }
        let [sums, means, q8, q_scale, k8, k_scale, v16] = ptrs;
        let qmul = scale * std::f32::consts::LOG2_E;
        let (lq, lk, h, d) = (
            to_i32(OP, "q_len", q_len)?,
            to_i32(OP, "kv_len", kv_len)?,
            to_i32(OP, "heads", heads)?,
            to_i32(OP, "head_dim", head_dim)?,
        );
        let grid = |x: usize| (x as u32, heads as u32, batch as u32);
        let threads = |n: usize| LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (n as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let stats = LaunchConfig {
            grid_dim: grid(kv_len.div_ceil(STATS_ROWS)),
            ..threads(head_dim)
        };
        let mut args = stream.launch_builder(&self.q8_stats);
        args.arg(k).arg(v).arg(&sums).arg(&lk).arg(&h);
        // SAFETY: the arguments match `q8_stats`; the workspace parts hold what it writes.
        unsafe { launch(OP, &mut args, stats) }?;
        let per_head = LaunchConfig {
            grid_dim: (heads as u32, batch as u32, 1),
            ..threads(head_dim)
        };
        let mut args = stream.launch_builder(&self.q8_means);
        args.arg(&sums).arg(&means).arg(&lk).arg(&h);
        // SAFETY: as above, for `q8_means`.
        unsafe { launch(OP, &mut args, per_head) }?;
        let quant = |len: usize| LaunchConfig {
            grid_dim: grid(len.div_ceil(QUANT_ROWS)),
            ..threads(QUANT_ROWS * 32)
        };
        let mut args = stream.launch_builder(&self.q8_quantize_q);
        args.arg(q).arg(&q8).arg(&q_scale);
        args.arg(&lq).arg(&h).arg(&d).arg(&qmul);
        // SAFETY: as above, for `q8_quantize_q`.
        unsafe { launch(OP, &mut args, quant(q_len)) }?;
        let mut args = stream.launch_builder(&self.q8_quantize_kv);
        args.arg(k)
            .arg(v)
            .arg(&means)
            .arg(&k8)
            .arg(&k_scale)
            .arg(&v16);
        args.arg(&lk).arg(&h).arg(&d);
        // SAFETY: as above, for `q8_quantize_kv`.
        unsafe { launch(OP, &mut args, quant(kv_len)) }?;
        if kernel == Q8Kernel::Wgmma {
            let ops = Q8Operands {
                q8,
                q_scale,
                k8,
                k_scale,
                v16,
                means,
            };
            return self.attention_q8_sm90(stream, &ops, out, dims);
        }
        let attention = LaunchConfig {
            grid_dim: grid(q_len.div_ceil(ATTENTION_BLOCK_M)),
            ..threads(128)
        };
        let mut args = stream.launch_builder(function);
        args.arg(&q8)
            .arg(&q_scale)
            .arg(&k8)
            .arg(&k_scale)
            .arg(&v16)
            .arg(&means);
        args.arg(out).arg(&lq).arg(&lk).arg(&h);
        // SAFETY: as above, for `attention_q8_hd*`.
        unsafe { launch(OP, &mut args, attention) }
    }
}
