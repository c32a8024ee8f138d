//! Launchers of `kernels/convert.cu`: f32 <-> bf16 and fp8 (with a per-tensor scale) -> bf16.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};
use half::bf16;

use super::{check_len, elementwise_config, launch, launch_map, to_i32, Kernels};
use crate::error::Result;

/// The two 8-bit float formats checkpoints store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fp8Format {
    /// e4m3fn: 4 exponent bits, 3 mantissa bits, no infinities, one NaN code per sign.
    E4M3Fn,
    /// e5m2: 5 exponent bits, 2 mantissa bits, IEEE-style infinities and NaNs.
    E5M2,
}

impl Kernels {
    /// Rounds `n` f32 values to bf16 (round to nearest even; NaN stays NaN).
    pub(crate) fn f32_to_bf16(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, bf16>,
        n: usize,
    ) -> Result<()> {
        launch_map("f32_to_bf16", &self.f32_to_bf16, stream, x, out, n)
    }

    /// Widens `n` bf16 values to f32 (exact).
    pub(crate) fn bf16_to_f32(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        out: &mut CudaViewMut<'_, f32>,
        n: usize,
    ) -> Result<()> {
        launch_map("bf16_to_f32", &self.bf16_to_f32, stream, x, out, n)
    }

    /// Decodes `n` fp8 codes (`x`, one byte each) of `format` and multiplies them by `scale` (the
    /// per-tensor scale of ComfyUI's scaled fp8; 1 for plain fp8) in f32, rounding the product to
    /// bf16 once. The decode is exact: the hardware conversion on sm_89+, an integer decode below.
    pub(crate) fn fp8_to_bf16(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, u8>,
        format: Fp8Format,
        scale: f32,
        out: &mut CudaViewMut<'_, bf16>,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "fp8_to_bf16";
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let n_i32 = to_i32(OP, "n", n)?;
        let function = match format {
            Fp8Format::E4M3Fn => &self.fp8_e4m3fn_to_bf16,
            Fp8Format::E5M2 => &self.fp8_e5m2_to_bf16,
        };
        let mut args = stream.launch_builder(function);
        args.arg(x).arg(&scale).arg(out).arg(&n_i32);
        // SAFETY: the arguments match `fp8_*_to_bf16` and the lengths were checked.
        unsafe { launch(OP, &mut args, elementwise_config(n)) }
    }
}
