//! Launcher of `kernels/channel_norm.cu`: the Wan VAE's channel RMS norm.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};
use half::bf16;

use super::{check_len, grid_stride_config, launch, product, to_i32, Kernels};
use crate::error::Result;

impl Kernels {
    /// `out[b, c, p] = x[b, c, p] / max(‖x[b, :, p]‖₂, 1e-12) · √C · gamma[c]` for `x` and `out`
    /// `[batch, channels, positions]` bf16 and `gamma` `[channels]` f32: the sum of squares and
    /// the scaling in f32, the output rounded to bf16 once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn channel_rms_norm(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        gamma: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, bf16>,
        batch: usize,
        channels: usize,
        positions: usize,
    ) -> Result<()> {
        const OP: &str = "channel_rms_norm";
        let n = product(OP, &[batch, channels, positions])?;
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        check_len(OP, "gamma", gamma.len(), channels)?;
        if n == 0 {
            return Ok(());
        }
        let total = product(OP, &[batch, positions])?;
        let channels = to_i32(OP, "channels", channels)?;
        let (positions, total_i64) = (positions as i64, total as i64);
        let mut args = stream.launch_builder(&self.channel_rms_norm);
        args.arg(x)
            .arg(gamma)
            .arg(out)
            .arg(&channels)
            .arg(&positions)
            .arg(&total_i64);
        // SAFETY: the arguments match `channel_rms_norm_bf16` and the lengths were checked.
        unsafe { launch(OP, &mut args, grid_stride_config(total)) }
    }
}
