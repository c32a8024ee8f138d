//! Launchers of `kernels/fp8_quant.cu`: bf16 activations quantized to e4m3fn with one dynamic
//! per-tensor scale, for the fp8 GEMM.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};
use half::bf16;

use super::{check_len, driver_error, elementwise_config, launch, to_i32, Kernels};
use crate::error::Result;

impl Kernels {
    /// Quantizes `n` bf16 values to e4m3fn codes (`out`) with the dequantization scale
    /// `amax / 448` (1 for an all-zero input), which is left in `scale` on the device. `amax` is
    /// one word of scratch. Two launches, no host synchronisation.
    pub(crate) fn quantize_e4m3fn(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        amax: &mut CudaViewMut<'_, u32>,
        scale: &mut CudaViewMut<'_, f32>,
        out: &mut CudaViewMut<'_, u8>,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "quantize_e4m3fn";
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        check_len(OP, "amax", amax.len(), 1)?;
        check_len(OP, "scale", scale.len(), 1)?;
        let n_i32 = to_i32(OP, "n", n)?;
        stream
            .memset_zeros(amax)
            .map_err(|e| driver_error("clearing the fp8 amax", e))?;
        let cfg = elementwise_config(n);
        let mut args = stream.launch_builder(&self.absmax_bf16);
        args.arg(x).arg(&mut *amax).arg(&n_i32);
        // SAFETY: the arguments match `absmax_bf16` and the lengths were checked.
        unsafe { launch("absmax_bf16", &mut args, cfg) }?;
        let mut args = stream.launch_builder(&self.quantize_e4m3fn_bf16);
        args.arg(x).arg(&mut *amax).arg(scale).arg(out).arg(&n_i32);
        // SAFETY: the arguments match `quantize_e4m3fn_bf16` and the lengths were checked.
        unsafe { launch(OP, &mut args, cfg) }
    }
}
