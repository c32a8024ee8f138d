//! Launchers of `kernels/unary.cu`: every [`UnaryOp`] on bf16 or f32.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};

use super::{check_len, elementwise_config, launch, to_u32, Activation, Kernels};
use crate::backend::cpu::elementwise::UnaryOp;
use crate::error::Result;

/// The kernel's op code and its two parameters.
fn encode(op: UnaryOp) -> (i32, f32, f32) {
    match op {
        UnaryOp::Silu => (0, 0.0, 0.0),
        UnaryOp::GeluTanh => (1, 0.0, 0.0),
        UnaryOp::GeluErf => (2, 0.0, 0.0),
        UnaryOp::Tanh => (3, 0.0, 0.0),
        UnaryOp::Exp => (4, 0.0, 0.0),
        UnaryOp::Abs => (5, 0.0, 0.0),
        UnaryOp::Sqr => (6, 0.0, 0.0),
        UnaryOp::Sqrt => (7, 0.0, 0.0),
        UnaryOp::Affine { mul, add } => (8, mul, add),
        UnaryOp::Clamp { min, max } => (9, min, max),
    }
}

impl Kernels {
    /// `out = op(x)` over `n` values of `T` (bf16 or f32), computed in f32 with the CPU
    /// backend's formulas (SiLU and GELU through `e^-|x|`, affine unfused, clamp keeping NaN).
    pub(crate) fn unary<T: Activation>(
        &self,
        stream: &Arc<CudaStream>,
        op: UnaryOp,
        x: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "unary";
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let n32 = to_u32(OP, "n", n)?;
        let (code, p0, p1) = encode(op);
        let mut args = stream.launch_builder(&self.unary[usize::from(T::IS_F32)]);
        args.arg(&code).arg(x).arg(out).arg(&n32).arg(&p0).arg(&p1);
        // SAFETY: the arguments match `unary_bf16`/`unary_f32` and the lengths were checked.
        unsafe { launch(OP, &mut args, elementwise_config(n)) }
    }
}
