//! Launchers of `kernels/reduce.cu`: sum, mean and max over one dim, and the last-dim softmax,
//! on bf16 or f32.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};

use super::{check_len, grid_config, launch, product, to_u32, Activation, Kernels};
use crate::backend::cpu::reduce::ReduceOp;
use crate::error::Result;

/// Threads of a warp: the kernels give a warp to each contiguous row.
const WARP: usize = 32;

impl Kernels {
    /// `out[o, i] = op over k of x[o, k, i]`, for `x` viewed as `[outer, n, inner]` of `T`, with
    /// f32 accumulation (sum 0 and mean NaN over an empty dim; max NaN where a NaN is met).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reduce<T: Activation>(
        &self,
        stream: &Arc<CudaStream>,
        op: ReduceOp,
        x: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
        outer: usize,
        n: usize,
        inner: usize,
    ) -> Result<()> {
        const OP: &str = "reduce";
        let outputs = product(OP, &[outer, inner])?;
        check_len(OP, "x", x.len(), product(OP, &[outputs, n])?)?;
        check_len(OP, "out", out.len(), outputs)?;
        if outputs == 0 {
            return Ok(());
        }
        let code: i32 = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Mean => 1,
            ReduceOp::Max => 2,
        };
        let threads = if inner == 1 { outputs * WARP } else { outputs };
        let (outer, n, inner) = (
            to_u32(OP, "outer", outer)?,
            to_u32(OP, "n", n)?,
            to_u32(OP, "inner", inner)?,
        );
        let mut args = stream.launch_builder(&self.reduce[usize::from(T::IS_F32)]);
        args.arg(&code)
            .arg(x)
            .arg(out)
            .arg(&outer)
            .arg(&n)
            .arg(&inner);
        // SAFETY: the arguments match `reduce_bf16`/`reduce_f32` and the lengths were checked.
        unsafe { launch(OP, &mut args, grid_config(threads)) }
    }

    /// Softmax over rows of `n` values of `T`: `e^(x - max) / Σ e^(x - max)`, in f32.
    pub(crate) fn softmax_last<T: Activation>(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "softmax_last";
        let total = product(OP, &[rows, n])?;
        check_len(OP, "x", x.len(), total)?;
        check_len(OP, "out", out.len(), total)?;
        if total == 0 {
            return Ok(());
        }
        let threads = product(OP, &[rows, WARP])?;
        let (rows, n) = (to_u32(OP, "rows", rows)?, to_u32(OP, "n", n)?);
        let mut args = stream.launch_builder(&self.softmax_last[usize::from(T::IS_F32)]);
        args.arg(x).arg(out).arg(&rows).arg(&n);
        // SAFETY: the arguments match `softmax_last_*` and the lengths were checked.
        unsafe { launch(OP, &mut args, grid_config(threads)) }
    }
}
