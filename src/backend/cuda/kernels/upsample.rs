//! Launcher of `kernels/upsample.cu`: nearest-neighbour ×2 upsampling.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};
use half::bf16;

use super::{check_len, grid_stride_config, launch, product, to_i32, Kernels};
use crate::error::Result;

impl Kernels {
    /// `out[p, y, x] = x[p, y / 2, x / 2]` for `x` `[planes, h, w]` and `out`
    /// `[planes, 2h, 2w]` bf16 (an exact copy of values).
    pub(crate) fn upsample_nearest2x(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        out: &mut CudaViewMut<'_, bf16>,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        const OP: &str = "upsample_nearest2x";
        let n = product(OP, &[planes, h, w])?;
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "out", out.len(), product(OP, &[n, 4])?)?;
        if n == 0 {
            return Ok(());
        }
        let threads = product(OP, &[planes, h, w.div_ceil(2)])?;
        // The kernel forms output offsets in 64 bits but holds 2h and 2w in i32s.
        let (_, _) = (to_i32(OP, "2h", 2 * h)?, to_i32(OP, "2w", 2 * w)?);
        let (h, w) = (h as i32, w as i32);
        let planes = planes as i64;
        let mut args = stream.launch_builder(&self.upsample_nearest2x);
        args.arg(x).arg(out).arg(&planes).arg(&h).arg(&w);
        // SAFETY: the arguments match `upsample_nearest2x_bf16` and the lengths were checked.
        unsafe { launch(OP, &mut args, grid_stride_config(threads)) }
    }
}
