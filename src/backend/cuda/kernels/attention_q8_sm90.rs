//! Launcher of `kernels/attention_q8_sm90.cu`, the sm_90a 8-bit attention (wgmma, TMA, warp
//! specialisation) at head_dim 128, which reads the operands of `attention_q8.cu`'s pre-pass;
//! and [`Q8Kernel`], the choice between it and the mma.sync kernel.

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

/// The environment variable that picks the 8-bit attention kernel: `mma` forces the mma.sync
/// kernel on sm_90 too (for A/B comparisons); unset, empty or `auto` picks by device.
pub const Q8_KERNEL_ENV: &str = "WANRT_Q8_KERNEL";

/// Queries per CTA and keys per tile (`SM90_BLOCK_M`, `SM90_BLOCK_N` in the kernel file).
const BLOCK: usize = 128;
/// Threads per CTA: one producer and two consumer warpgroups.
const THREADS: u32 = 384;
/// Dynamic shared memory: Q (16 KB), three stages of K (16 KB) and V (32 KB), 1 KB of alignment
/// slack for the 128-byte swizzle.
const SMEM_BYTES: u32 = (16 + 3 * 48 + 1) * 1024;

/// Which kernel computes the 8-bit attention on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q8Kernel {
    /// `kernels/attention_q8.cu`: mma.sync, every GPU (sm_80 and newer), head_dim 64 and 128;
    /// the scheme `Q8Path::Sm80` (64-key tiles).
    MmaSync,
    /// `kernels/attention_q8_sm90.cu`: wgmma, TMA and warp specialisation, sm_90 (H100, H200),
    /// head_dim 128; the scheme `Q8Path::Sm90` (128-key tiles).
    Wgmma,
}

impl Q8Kernel {
    /// `sm80-mma` or `sm90-wgmma`, for logs and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Q8Kernel::MmaSync => "sm80-mma",
            Q8Kernel::Wgmma => "sm90-wgmma",
        }
    }

    /// The kernel for a device of compute capability `capability` at `head_dim`, given the value
    /// of [`Q8_KERNEL_ENV`]: wgmma on 9.0 at head_dim 128 unless the variable says `mma`,
    /// mma.sync everywhere else. Another value of the variable is
    /// [`Error::InvalidArgument`].
    pub fn select(capability: (i32, i32), head_dim: usize, env: Option<&str>) -> Result<Q8Kernel> {
        let forced_mma = match env.map(str::trim) {
            None | Some("") => false,
            Some(v) if v.eq_ignore_ascii_case("auto") => false,
            Some(v) if v.eq_ignore_ascii_case("mma") => true,
            Some(v) => {
                return Err(Error::InvalidArgument(format!(
                    "{Q8_KERNEL_ENV}={v}: expected auto or mma"
                )))
            }
        };
        Ok(if capability == (9, 0) && head_dim == 128 && !forced_mma {
            Q8Kernel::Wgmma
        } else {
            Q8Kernel::MmaSync
        })
    }

    /// [`Q8Kernel::select`] with the variable read from the environment.
    pub fn for_device(capability: (i32, i32), head_dim: usize) -> Result<Q8Kernel> {
        let env = std::env::var(Q8_KERNEL_ENV).ok();
        Q8Kernel::select(capability, head_dim, env.as_deref())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgmma_on_sm90_at_head_dim_128_unless_forced() {
        let pick = |cc, d, env| Q8Kernel::select(cc, d, env).unwrap();
        assert_eq!(pick((9, 0), 128, None), Q8Kernel::Wgmma);
        assert_eq!(pick((9, 0), 128, Some("auto")), Q8Kernel::Wgmma);
        assert_eq!(pick((9, 0), 128, Some(" MMA ")), Q8Kernel::MmaSync);
        assert_eq!(pick((9, 0), 64, None), Q8Kernel::MmaSync);
        for cc in [(8, 0), (8, 6), (8, 9), (10, 0), (12, 0)] {
            assert_eq!(pick(cc, 128, None), Q8Kernel::MmaSync, "{cc:?}");
        }
        assert!(matches!(
            Q8Kernel::select((9, 0), 128, Some("wgmma2")),
            Err(Error::InvalidArgument(_))
        ));
        assert_ne!(Q8Kernel::MmaSync.name(), Q8Kernel::Wgmma.name());
    }
}
