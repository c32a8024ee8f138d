//! Launchers of `kernels/linear_f32.cu`: the f32 linear layers (`linear_f32`) of the reference's
//! f32 regions.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{check_len, launch, product, to_i32, Activation, Kernels};
use crate::error::{Error, Result};

/// Rows and columns of the output tile of one block (`TILE` of the kernel).
const TILE: usize = 64;

impl Kernels {
    /// `out = x · wᵀ + bias` in f32: `x` `[rows, k]` and `out` `[rows, n]` f32, `w` `[n, k]` as
    /// stored (bf16 or f32, widened exactly), `bias` `[n]` f32 or none.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_f32<W: Activation>(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, f32>,
        w: &CudaView<'_, W>,
        bias: Option<&CudaView<'_, f32>>,
        out: &mut CudaViewMut<'_, f32>,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        const OP: &str = "linear_f32";
        check_len(OP, "x", x.len(), product(OP, &[rows, k])?)?;
        check_len(OP, "w", w.len(), product(OP, &[n, k])?)?;
        check_len(OP, "out", out.len(), product(OP, &[rows, n])?)?;
        if let Some(b) = bias {
            check_len(OP, "bias", b.len(), n)?;
        }
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let (gx, gy) = (n.div_ceil(TILE), rows.div_ceil(TILE));
        if gy > 65_535 {
            return Err(Error::InvalidArgument(format!(
                "{OP}: {rows} rows in one launch"
            )));
        }
        let cfg = LaunchConfig {
            grid_dim: (to_i32(OP, "n", gx)? as u32, gy as u32, 1),
            block_dim: (16, 16, 1),
            shared_mem_bytes: 0,
        };
        let has_bias = i32::from(bias.is_some());
        let (rows, n, k) = (
            to_i32(OP, "rows", rows)?,
            to_i32(OP, "n", n)?,
            to_i32(OP, "k", k)?,
        );
        let mut args = stream.launch_builder(&self.linear_f32[usize::from(W::IS_F32)]);
        args.arg(x).arg(w);
        // Without a bias the kernel reads none: `x` stands in for its pointer.
        match bias {
            Some(b) => args.arg(b),
            None => args.arg(x),
        };
        args.arg(&has_bias).arg(out).arg(&rows).arg(&n).arg(&k);
        // SAFETY: the arguments match `linear_f32_w_*` and the lengths were checked.
        unsafe { launch(OP, &mut args, cfg) }
    }
}
