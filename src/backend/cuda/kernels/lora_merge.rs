//! Launchers of `kernels/lora_merge.cu`: the batched LoRA merge, one job per weight.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};

use super::{launch, to_i32, Kernels};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// The most changes one job applies (`MAX_TERMS` in the `.cu` file).
pub(crate) const MAX_TERMS: usize = 4;
/// Rows per thread (`ROWS` in the `.cu` file).
const ROWS: usize = 4;

/// One change of a job, as the kernel reads it (`MergeTerm` in the `.cu` file).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MergeTerm {
    /// Device address of `up` `[rows, rank]` (a pair) or of the delta `[rows, cols]`, f32.
    pub a: u64,
    /// Device address of `down` `[rank, cols]` (a pair), 0 for a full delta.
    pub b: u64,
    /// The pair's rank; 0 for a full delta.
    pub rank: i32,
    /// `strength · alpha / rank` for a pair, the strength for a full delta.
    pub scale: f32,
}

/// One weight to merge (`MergeJob` in the `.cu` file).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MergeJob {
    /// Device address of the pristine weight (`out` itself for a merge in place: each value is
    /// read before the same index is written).
    pub w: u64,
    /// Device address of the merged weight.
    pub out: u64,
    /// Device address of a `u32` receiving the bits of `max |W'|` (0: none).
    pub amax: u64,
    /// `rows · cols`.
    pub n: i64,
    /// The inner dimension.
    pub cols: i32,
    /// [`dtype_code`] of the pristine weight.
    pub w_dtype: i32,
    /// [`dtype_code`] of the merged weight.
    pub out_dtype: i32,
    /// How many of `term` are used.
    pub terms: i32,
    /// The pristine weight's scale (1 without one).
    pub w_scale: f32,
    /// The merged weight's new fp8 scale; 0 for an unscaled target.
    pub out_scale: f32,
    /// The changes, in LoRA order.
    pub term: [MergeTerm; MAX_TERMS],
}

// SAFETY: plain `#[repr(C)]` data of integers and floats, laid out as the kernel's structs.
unsafe impl DeviceRepr for MergeJob {}

/// The kernel's code for a dtype it reads and writes: f32, bf16, f16, e4m3fn, e5m2.
pub(crate) fn dtype_code(op: &'static str, dtype: DType) -> Result<i32> {
    Ok(match dtype {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
        DType::F8E4M3 => 3,
        DType::F8E5M2 => 4,
        _ => return Err(Error::UnsupportedDType { op, dtype }),
    })
}

/// Threads per block of the merge.
const THREADS: u32 = 256;

/// Which pass of the merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MergePass {
    /// The bits of `max |W'|` of every job with an `amax` slot (slots zeroed before).
    Amax,
    /// The merged weights, stored.
    Store,
}

impl Kernels {
    /// Runs one pass of the merge over `jobs` (a device copy of `host_jobs`, which gives the
    /// sizes for the launch shape), one grid row per job.
    ///
    /// # Safety
    /// Every address in the jobs must point to device memory of this context that holds what
    /// the job reads and writes: `n` values of `w_dtype` at `w` and of `out_dtype` at `out`,
    /// `rows · rank` and `rank · cols` f32 at a pair's `a` and `b` (`rows = n / cols`), `n` f32
    /// at a full delta's `a`, and a `u32` at a non-zero `amax`; no two jobs write one buffer.
    pub(crate) unsafe fn lora_merge(
        &self,
        stream: &Arc<CudaStream>,
        pass: MergePass,
        jobs: &CudaView<'_, MergeJob>,
        host_jobs: &[MergeJob],
    ) -> Result<()> {
        const OP: &str = "lora_merge";
        if jobs.len() != host_jobs.len() {
            return Err(Error::InvalidArgument(format!(
                "{OP}: {} device jobs for {} host jobs",
                jobs.len(),
                host_jobs.len()
            )));
        }
        for j in host_jobs {
            if j.cols <= 0
                || j.n < 0
                || j.n % j.cols as i64 != 0
                || !(0..=MAX_TERMS as i32).contains(&j.terms)
            {
                return Err(Error::InvalidArgument(format!(
                    "{OP}: a malformed job {j:?}"
                )));
            }
        }
        let tiles = host_jobs
            .iter()
            .map(|j| (j.n as u64 / j.cols as u64).div_ceil(ROWS as u64) * j.cols as u64)
            .max()
            .unwrap_or(0);
        if tiles == 0 {
            return Ok(());
        }
        let blocks = tiles.div_ceil(THREADS as u64).clamp(1, 65_535) as u32;
        let grid_jobs = to_i32(OP, "jobs", host_jobs.len())?;
        if grid_jobs > 65_535 {
            return Err(Error::InvalidArgument(format!(
                "{OP}: {grid_jobs} weights in one launch (65535 at most)"
            )));
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks, grid_jobs as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let function = match pass {
            MergePass::Amax => &self.lora_merge_amax,
            MergePass::Store => &self.lora_merge_store,
        };
        let mut args = stream.launch_builder(function);
        args.arg(jobs);
        // SAFETY: the kernel takes one job table; the caller vouches for its addresses.
        unsafe { launch(OP, &mut args, cfg) }
    }
}
