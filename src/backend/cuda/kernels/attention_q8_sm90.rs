//! Launcher of `kernels/attention_q8_sm90.cu`, the sm_90a 8-bit attention (wgmma, TMA, warp
//! specialisation) at head_dim 128, which reads the operands of `attention_q8.cu`'s pre-pass
//! (`crate::backend::q8_kernel` decides when it runs).

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::sync::Arc;

use cudarc::driver::sys::{
    self, CUfunction_attribute, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill,
    CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaStream, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{driver_error, launch, to_i32, Kernels};
use crate::backend::cpu::attention::AttnDims;
use crate::error::{Error, Result};

/// Queries per CTA and keys per tile (`SM90_BLOCK_M`, `SM90_BLOCK_N` in the kernel file).
const BLOCK: usize = 128;
/// Threads per CTA: one producer and two consumer warpgroups.
const THREADS: u32 = 384;
/// Dynamic shared memory: Q (16 KB), three stages of K (16 KB) and V (32 KB), 1 KB of alignment
/// slack for the 128-byte swizzle.
const SMEM_BYTES: u32 = (16 + 3 * 48 + 1) * 1024;

/// The device addresses of the pre-pass's outputs the attention kernels read.
pub(crate) struct Q8Operands {
    /// INT8 queries `[B, H, Lq, D]` and their scales `[B, H, Lq]` (f32).
    pub q8: u64,
    pub q_scale: u64,
    /// INT8 smoothed keys `[B, H, Lk, D]` and their scales `[B, H, Lk]`.
    pub k8: u64,
    pub k_scale: u64,
    /// Smoothed values in f16 `[B, H, Lk, D]`.
    pub v16: u64,
    /// K and V means `[B, H, 2, D]` (f32).
    pub means: u64,
}

/// A TMA descriptor of the head-major tensor `[bh, len, d]` at `base` (`elem` bytes a value,
/// `d·elem` a multiple of 16), read in boxes of `box_cols` values × [`BLOCK`] rows × 1 head with
/// the 128-byte swizzle; rows past `len` read as zeros.
#[allow(clippy::too_many_arguments)]
fn tensor_map(
    op: &str,
    base: u64,
    dtype: CUtensorMapDataType,
    elem: usize,
    d: usize,
    len: usize,
    bh: usize,
    box_cols: u32,
) -> Result<CUtensorMap> {
    let dims = [d as u64, len as u64, bh as u64];
    let strides = [(d * elem) as u64, (len * d * elem) as u64];
    let boxes = [box_cols, BLOCK as u32, 1];
    let steps = [1u32; 3];
    let mut map = MaybeUninit::<CUtensorMap>::uninit();
    // SAFETY: every array holds `rank` (3) entries, `strides` rank − 1; `map` is written by the
    // driver before it is read, which `result()` confirms.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            3,
            base as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            steps.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(|e| driver_error(&format!("{op}: encoding a tensor map"), e))?;
        Ok(map.assume_init())
    }
}

impl Kernels {
    /// The attention step of the 8-bit scheme `Q8Path::Sm90` on sm_90a: reads the pre-pass's
    /// operands `ops` (laid out for `dims`, head_dim 128, by [`Kernels::attention_q8`], which
    /// checked every buffer and calls this) and writes bf16 `out` `[batch, q_len, heads, 128]`.
    /// One launch of `attention_q8_sm90_hd128` on `stream`.
    pub(crate) fn attention_q8_sm90(
        &self,
        stream: &Arc<CudaStream>,
        ops: &Q8Operands,
        out: &mut CudaViewMut<'_, bf16>,
        dims: AttnDims,
    ) -> Result<()> {
        const OP: &str = "attention_q8 (sm90)";
        let AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        } = dims;
        if head_dim != 128 {
            return Err(Error::InvalidArgument(format!(
                "{OP}: head_dim {head_dim} has no wgmma kernel (128 does)"
            )));
        }
        let bh = batch * heads;
        let int8 = CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8;
        let f16 = CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
        let tm_q = tensor_map(OP, ops.q8, int8, 1, head_dim, q_len, bh, 128)?;
        let tm_k = tensor_map(OP, ops.k8, int8, 1, head_dim, kv_len, bh, 128)?;
        let tm_v = tensor_map(OP, ops.v16, f16, 2, head_dim, kv_len, bh, 64)?;
        self.attention_q8_sm90_hd128
            .set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                SMEM_BYTES as i32,
            )
            .map_err(|e| driver_error(&format!("{OP}: reserving shared memory"), e))?;
        let (lq, lk, h) = (
            to_i32(OP, "q_len", q_len)?,
            to_i32(OP, "kv_len", kv_len)?,
            to_i32(OP, "heads", heads)?,
        );
        let cfg = LaunchConfig {
            grid_dim: (q_len.div_ceil(BLOCK) as u32, heads as u32, batch as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: SMEM_BYTES,
        };
        let mut args = stream.launch_builder(&self.attention_q8_sm90_hd128);
        args.arg(&tm_q.opaque).arg(&tm_k.opaque).arg(&tm_v.opaque);
        args.arg(&ops.q_scale).arg(&ops.k_scale).arg(&ops.means);
        args.arg(out).arg(&lq).arg(&lk).arg(&h);
        // SAFETY: the arguments match `attention_q8_sm90_hd128`; the tensor maps and addresses
        // cover the pre-pass's buffers, which the caller laid out and checked for `dims`.
        unsafe { launch(OP, &mut args, cfg) }
    }
}
