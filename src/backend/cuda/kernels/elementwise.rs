//! Launchers of `kernels/elementwise.cu`: the DiT's gated residual add; GELU (tanh) through
//! `kernels/unary.cu`.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};
use half::bf16;

use super::{check_len, elementwise_config, launch, product, to_i32, Kernels};
use crate::backend::cpu::elementwise::UnaryOp;
use crate::error::Result;

impl Kernels {
    /// `x[r, c] += y[r, c] · gate[c]` in place, for `x` and `y` row-major `[rows, cols]` bf16 and
    /// `gate` `[cols]` f32; the sum is formed in f32 and rounded to bf16 once.
    pub(crate) fn gated_residual_add(
        &self,
        stream: &Arc<CudaStream>,
        x: &mut CudaViewMut<'_, bf16>,
        y: &CudaView<'_, bf16>,
        gate: &CudaView<'_, f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        const OP: &str = "gated_residual_add";
        let n = product(OP, &[rows, cols])?;
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "y", y.len(), n)?;
        check_len(OP, "gate", gate.len(), cols)?;
        if n == 0 {
            return Ok(());
        }
        let (rows, cols) = (to_i32(OP, "rows", rows)?, to_i32(OP, "cols", cols)?);
        let mut args = stream.launch_builder(&self.gated_residual_add);
        args.arg(x).arg(y).arg(gate).arg(&rows).arg(&cols);
        // SAFETY: the arguments match `gated_residual_add_bf16` and the lengths were checked.
        unsafe { launch(OP, &mut args, elementwise_config(n)) }
    }

    /// `out = gelu_tanh(x)` over `n` bf16 values, computed in f32:
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (the [`UnaryOp::GeluTanh`] map).
    pub(crate) fn gelu_tanh(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        out: &mut CudaViewMut<'_, bf16>,
        n: usize,
    ) -> Result<()> {
        self.unary(stream, UnaryOp::GeluTanh, x, out, n)
    }
}
