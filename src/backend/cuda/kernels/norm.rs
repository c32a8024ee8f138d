//! Launchers of `kernels/norm.cu`: LayerNorm fused with the DiT's modulation or an affine.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};
use half::bf16;

use super::{check_len, launch, product, row_config, to_i32, Kernels};
use crate::error::Result;

impl Kernels {
    /// `out = LN(x)·(1 + scale) + shift` per row: `x` and `out` row-major `[rows, cols]` bf16,
    /// `shift` and `scale` `[cols]` f32 (the DiT's modulation). The mean, the biased variance
    /// and the modulation are computed in f32; `out` is rounded to bf16 once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_norm_modulate(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        shift: &CudaView<'_, f32>,
        scale: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, bf16>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        self.layer_norm(stream, x, shift, scale, 1.0, out, rows, cols, eps)
    }

    /// `out = LN(x)·weight + bias` per row (LayerNorm with affine, e.g. the DiT's `norm3`), with
    /// the same layout, dtypes and precision as [`Kernels::layer_norm_modulate`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_norm_affine(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        weight: &CudaView<'_, f32>,
        bias: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, bf16>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        self.layer_norm(stream, x, bias, weight, 0.0, out, rows, cols, eps)
    }

    /// `out = LN(x)·(scale_offset + scale) + shift`: the kernel behind both public forms.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        shift: &CudaView<'_, f32>,
        scale: &CudaView<'_, f32>,
        scale_offset: f32,
        out: &mut CudaViewMut<'_, bf16>,
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
        let mut args = stream.launch_builder(&self.layer_norm_modulate);
        args.arg(x)
            .arg(shift)
            .arg(scale)
            .arg(&scale_offset)
            .arg(out)
            .arg(&cols)
            .arg(&eps);
        // SAFETY: the arguments match `layer_norm_modulate_bf16` and the lengths were checked.
        unsafe { launch(OP, &mut args, cfg) }
    }
}
