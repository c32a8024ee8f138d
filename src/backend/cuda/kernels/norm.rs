//! Launchers of `kernels/norm.cu`: LayerNorm fused with the DiT's modulation or an affine.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};

use super::{check_len, launch, product, row_config, to_i32, Activation, Kernels};
use crate::error::Result;

impl Kernels {
    /// `out = LN(x)·(1 + scale) + shift` per row: `x` and `out` row-major `[rows, cols]` of `T`
    /// (bf16, or f32 for the residual stream), `shift` and `scale` `[cols]` f32 (the DiT's
    /// modulation). The mean, the biased variance and the modulation are computed in f32; a bf16
    /// `out` is rounded once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_norm_modulate<T: Activation>(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, T>,
        shift: &CudaView<'_, f32>,
        scale: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        self.layer_norm(stream, x, shift, scale, 1.0, out, rows, cols, eps)
    }

    /// `out = LN(x)·weight + bias` per row (LayerNorm with affine, e.g. the DiT's `norm3`), with
    /// the same layout, dtypes and precision as [`Kernels::layer_norm_modulate`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_norm_affine<T: Activation>(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, T>,
        weight: &CudaView<'_, f32>,
        bias: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        self.layer_norm(stream, x, bias, weight, 0.0, out, rows, cols, eps)
    }

    /// `out = LN(x)·(scale_offset + scale) + shift`: the kernel behind both public forms.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm<T: Activation>(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, T>,
        shift: &CudaView<'_, f32>,
        scale: &CudaView<'_, f32>,
        scale_offset: f32,
        out: &mut CudaViewMut<'_, T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        let n = product(OP, &[rows, cols])?;
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        check_len(OP, "shift", shift.len(), cols)?;
        check_len(OP, "scale", scale.len(), cols)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = row_config(rows)?;
        let cols = to_i32(OP, "cols", cols)?;
        let mut args = stream.launch_builder(&self.layer_norm_modulate[usize::from(T::IS_F32)]);
        args.arg(x)
            .arg(shift)
            .arg(scale)
            .arg(&scale_offset)
            .arg(out)
            .arg(&cols)
            .arg(&eps);
        // SAFETY: the arguments match `layer_norm_modulate_*` and the lengths were checked.
        unsafe { launch(OP, &mut args, cfg) }
    }
}
