//! Launcher of `kernels/attention.cu`: bf16 FlashAttention-2-style attention for head_dim 64
//! and 128.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{check_aligned16, launch, to_i32, Kernels};
use crate::backend::cpu::attention::AttnDims;
use crate::error::{Error, Result};

/// Queries per block (4 warps of 16 rows), as `BLOCK_M` in `kernels/attention.cu`.
pub(crate) const ATTENTION_BLOCK_M: usize = 64;

impl Kernels {
    /// `out = softmax(scale · q kᵀ) v` per batch and head, unmasked over all `kv_len` keys: `q` and
    /// `out` are `[batch, q_len, heads, head_dim]` bf16, `k` and `v` `[batch, kv_len, heads,
    /// head_dim]` bf16 (the DiT's `[tokens, heads·head_dim]` rows; self-attention limited to the
    /// true length passes only those keys). `head_dim` is 64 or 128 and every buffer starts on a
    /// 16-byte boundary. Logits and the running softmax are f32, the probabilities are rounded
    /// to bf16 for the second product, which accumulates in f32; no `q_len × kv_len` buffer
    /// exists. With no keys the output is zero. `crate::backend::attention_emulation` replays
    /// this arithmetic on the CPU.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention(
        &self,
        stream: &Arc<CudaStream>,
        q: &CudaView<'_, bf16>,
        k: &CudaView<'_, bf16>,
        v: &CudaView<'_, bf16>,
        out: &mut CudaViewMut<'_, bf16>,
        dims: AttnDims,
        scale: f32,
    ) -> Result<()> {
        const OP: &str = "attention";
        let AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        } = dims;
        let function = match head_dim {
            64 => &self.attention_hd64,
            128 => &self.attention_hd128,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{OP}: head_dim {head_dim} has no kernel (64 and 128 do)"
                )))
            }
        };
        if !check_attention_buffers(OP, stream, q, k, v, out, dims)? {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (
                q_len.div_ceil(ATTENTION_BLOCK_M) as u32,
                heads as u32,
                batch as u32,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let q_len = to_i32(OP, "q_len", q_len)?;
        let kv_len = to_i32(OP, "kv_len", kv_len)?;
        let heads = to_i32(OP, "heads", heads)?;
        let mut args = stream.launch_builder(function);
        args.arg(q)
            .arg(k)
            .arg(v)
            .arg(out)
            .arg(&q_len)
            .arg(&kv_len)
            .arg(&heads)
            .arg(&scale);
        // SAFETY: the arguments match `attention_hd*_bf16` and the lengths were checked.
        unsafe { launch(OP, &mut args, cfg) }
    }
}

/// Checks the buffers of an attention call against `dims`: their lengths, then (when there are
/// queries) their 16-byte alignment and the grid limits. `Ok(false)` when there is nothing to
/// compute (no queries).
pub(super) fn check_attention_buffers(
    op: &str,
    stream: &Arc<CudaStream>,
    q: &CudaView<'_, bf16>,
    k: &CudaView<'_, bf16>,
    v: &CudaView<'_, bf16>,
    out: &CudaViewMut<'_, bf16>,
    dims: AttnDims,
) -> Result<bool> {
    let AttnDims { batch, heads, .. } = dims;
    dims.check_lens(op, [q.len(), k.len(), v.len(), out.len()])?;
    if q.is_empty() {
        return Ok(false);
    }
    check_aligned16(op, "q", q, stream)?;
    check_aligned16(op, "k", k, stream)?;
    check_aligned16(op, "v", v, stream)?;
    check_aligned16(op, "out", out, stream)?;
    if heads > 65_535 || batch > 65_535 {
        return Err(Error::InvalidArgument(format!(
            "{op}: {heads} heads × batch {batch} exceed one launch's grid"
        )));
    }
    Ok(true)
}
