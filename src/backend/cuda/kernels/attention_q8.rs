//! Launcher of `kernels/attention_q8.cu`: the 8-bit attention (INT8 Q·Kᵀ; fp16 P·V, or e4m3
//! P·V on sm_89+) for head_dim 64 and 128, with its quantization pre-pass, in a caller-provided
//! workspace.

use std::sync::Arc;

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use half::bf16;

use super::attention::{check_attention_buffers, ATTENTION_BLOCK_M};
use super::attention_q8_sm90::Q8Operands;
use super::{check_aligned16, launch, product, to_i32, Kernels};
use crate::backend::cpu::attention::AttnDims;
use crate::backend::cpu::attention_q8::Q8Path;
use crate::error::{Error, Result};

/// Tokens one `q8_stats` block walks (`STATS_ROWS` in the kernel file).
const STATS_ROWS: usize = 128;
/// Token rows one quantization block handles (`QUANT_ROWS`, one warp each).
const QUANT_ROWS: usize = 8;
/// Every workspace part starts on this boundary (the driver's allocation alignment).
const PART_ALIGN: usize = 256;
/// Keys per row tile of the e4m3 path's transposed V (`VT_KEYS`): its rows are padded to it.
const VT_KEYS: usize = 64;

/// Whether P·V is e4m3 on `path` (the pre-pass of the fp16 paths, sm80 and sm90, is shared).
fn is_fp8(path: Q8Path) -> bool {
    path == Q8Path::Sm89
}

/// The parts of the workspace, in order: (element size, element count) for `dims` on `path`.
/// The first two (the f64 sums and the V maxima) are zeroed before the launches.
fn parts(dims: AttnDims, path: Q8Path) -> Result<[(usize, usize); 8]> {
    const OP: &str = "attention_q8";
    let fp8 = is_fp8(path);
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: d,
    } = dims;
    let bh = product(OP, &[batch, heads])?;
    let v = if fp8 {
        (1, product(OP, &[bh, d, kv_len.next_multiple_of(VT_KEYS)])?) // vt8, e4m3 [B, H, D, L]
    } else {
        (2, product(OP, &[bh, kv_len, d])?) // v16
    };
    Ok([
        (8, product(OP, &[bh, 2, d])?), // sums of k and v (f64)
        (4, if fp8 { product(OP, &[bh, d])? } else { 0 }), // V channel maxima (f32 bits)
        (4, product(OP, &[bh, 2, d])?), // means of k and v (f32)
        (1, product(OP, &[bh, q_len, d])?), // q8
        (4, product(OP, &[bh, q_len])?), // q scales
        (1, product(OP, &[bh, kv_len, d])?), // k8
        (4, product(OP, &[bh, kv_len])?), // k scales
        v,
    ])
}

/// Bytes of the workspace [`Kernels::attention_q8`] needs for `dims` on `path`.
pub(crate) fn attention_q8_workspace_bytes(dims: AttnDims, path: Q8Path) -> Result<usize> {
    parts(dims, path)?
        .iter()
        .try_fold(0usize, |acc, &(size, n)| {
            n.checked_mul(size)
                .and_then(|b| acc.checked_add(b.next_multiple_of(PART_ALIGN)))
                .ok_or_else(|| Error::InvalidArgument(format!("attention_q8: {dims:?} overflow")))
        })
}

/// Whether the device of `stream` runs `path`'s kernel: the e4m3 one has code for sm_89 and
/// sm_90a only, the wgmma one for sm_90a only (other devices would run compute_80 PTX, where
/// their bodies trap); the sm80 kernel runs everywhere.
fn check_device(op: &str, stream: &Arc<CudaStream>, path: Q8Path) -> Result<()> {
    let runs_on: &[(i32, i32)] = match path {
        Q8Path::Sm80 => return Ok(()),
        Q8Path::Sm89 => &[(8, 9), (9, 0)],
        Q8Path::Sm90 => &[(9, 0)],
    };
    let cc = stream
        .context()
        .compute_capability()
        .map_err(|e| super::driver_error(op, e))?;
    if !runs_on.contains(&cc) {
        return Err(Error::InvalidArgument(format!(
            "{op}: the {} kernel needs an sm_{} GPU, this one is sm_{}{}",
            path.name(),
            if path == Q8Path::Sm89 {
                "89 or sm_90"
            } else {
                "90"
            },
            cc.0,
            cc.1
        )));
    }
    Ok(())
}

impl Kernels {
    /// `out = softmax(scale · q kᵀ) v` per batch and head through the 8-bit scheme of `path`
    /// in [`crate::backend::cpu::attention_q8`] (which emulates it on the CPU): K and V smoothed
    /// by their means over the sequence, Q and K rounded to INT8 with one scale per token; V to
    /// f16 for `Q8Path::Sm80` (the mma.sync kernel, every GPU) and `Q8Path::Sm90` (the same
    /// arithmetic with 128-key tiles in the wgmma kernel [`Kernels::attention_q8_sm90`], sm_90
    /// at head_dim 128 only), or per channel to e4m3 for `Q8Path::Sm89` (sm_89 and sm_90 devices
    /// only, else [`Error::InvalidArgument`]); INT8 Q·Kᵀ and fp16 or e4m3 P·V on tensor cores
    /// with f32 accumulation and online softmax. Layouts and rules as [`Kernels::attention`]
    /// (bf16 `[batch, len, heads, head_dim]`, head_dim 64 or 128, 16-byte aligned buffers,
    /// unmasked, zeros without keys); `workspace` holds at least [`attention_q8_workspace_bytes`]
    /// bytes and starts on a 16-byte boundary (a fresh allocation does). Launches on `stream`: K
    /// and V sums, their means (and on the e4m3 path the V channel maxima), Q and K/V
    /// quantization (V separately on the e4m3 path), attention.
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
        path: Q8Path,
    ) -> Result<()> {
        const OP: &str = "attention_q8";
        let fp8 = is_fp8(path);
        let AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        } = dims;
        let function = match (head_dim, fp8) {
            (64, false) => &self.attention_q8_hd64,
            (128, false) => &self.attention_q8_hd128,
            (64, true) => &self.attention_q8_fp8_hd64,
            (128, true) => &self.attention_q8_fp8_hd128,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{OP}: head_dim {head_dim} has no kernel (64 and 128 do)"
                )))
            }
        };
        let need = attention_q8_workspace_bytes(dims, path)?;
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
        check_device(OP, stream, path)?;
        check_aligned16(OP, "workspace", workspace, stream)?;
        let parts = parts(dims, path)?;
        let zeroed: usize = parts[..2]
            .iter()
            .map(|&(size, n)| (size * n).next_multiple_of(PART_ALIGN))
            .sum();
        stream
            .memset_zeros(&mut workspace.slice_mut(..zeroed))
            .map_err(|e| super::driver_error(OP, e))?;
        let (base, _sync) = workspace.device_ptr_mut(stream);
        let mut ptrs = [0u64; 8];
        let mut at = base;
        for (p, &(size, n)) in ptrs.iter_mut().zip(&parts) {
            *p = at;
            at += (size * n).next_multiple_of(PART_ALIGN) as u64;
        }
        let [sums, v_amax, means, q8, q_scale, k8, k_scale, v_quant] = ptrs;
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
        if fp8 {
            let mut args = stream.launch_builder(&self.q8_vamax);
            args.arg(v).arg(&means).arg(&v_amax).arg(&lk).arg(&h);
            // SAFETY: as above, for `q8_vamax` (same grid as `q8_stats`).
            unsafe { launch(OP, &mut args, stats) }?;
        }
        let quant = |len: usize| LaunchConfig {
            grid_dim: grid(len.div_ceil(QUANT_ROWS)),
            ..threads(QUANT_ROWS * 32)
        };
        let mut args = stream.launch_builder(&self.q8_quantize_q);
        args.arg(q).arg(&q8).arg(&q_scale);
        args.arg(&lq).arg(&h).arg(&d).arg(&qmul);
        // SAFETY: as above, for `q8_quantize_q`.
        unsafe { launch(OP, &mut args, quant(q_len)) }?;
        // A null v16 leaves V to `q8_quantize_v_fp8`.
        let v16 = if fp8 { 0u64 } else { v_quant };
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
        if path == Q8Path::Sm90 {
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
        if fp8 {
            let cfg = LaunchConfig {
                grid_dim: grid(kv_len.div_ceil(VT_KEYS)),
                ..threads(256)
            };
            let mut args = stream.launch_builder(&self.q8_quantize_v_fp8);
            args.arg(v).arg(&means).arg(&v_amax).arg(&v_quant);
            args.arg(&lk).arg(&h).arg(&d);
            // SAFETY: as above, for `q8_quantize_v_fp8`.
            unsafe { launch(OP, &mut args, cfg) }?;
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
            .arg(&v_quant)
            .arg(&v_amax)
            .arg(&means);
        args.arg(out).arg(&lq).arg(&lk).arg(&h);
        // SAFETY: as above, for `attention_q8_hd*`.
        unsafe { launch(OP, &mut args, attention) }
    }
}
