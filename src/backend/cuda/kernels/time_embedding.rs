//! Launcher of `kernels/time_embedding.cu`: the sinusoidal time embedding of the DiT.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{check_len, launch, to_i32, Kernels};
use crate::error::{Error, Result};

impl Kernels {
    /// Writes `[cos(t·ω_0..half), sin(t·ω_0..half)]` to `out` (`[dim]` f32, cosines first), with
    /// `half = dim/2` and `ω_j = 10000^(−j/half)`; the angles are formed in f64 as upstream does
    /// (wan-architecture.md §1.4) and rounded to f32 at the end.
    pub(crate) fn sinusoidal_embedding(
        &self,
        stream: &Arc<CudaStream>,
        t: f64,
        out: &mut CudaViewMut<'_, f32>,
        dim: usize,
    ) -> Result<()> {
        const OP: &str = "sinusoidal_embedding";
        if !dim.is_multiple_of(2) {
            return Err(Error::InvalidArgument(format!("{OP}: dim {dim} is odd")));
        }
        check_len(OP, "out", out.len(), dim)?;
        if dim == 0 {
            return Ok(());
        }
        let half = to_i32(OP, "dim", dim / 2)?;
        let cfg = LaunchConfig {
            grid_dim: ((dim / 2).div_ceil(128) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut args = stream.launch_builder(&self.sinusoidal_embedding);
        args.arg(&t).arg(out).arg(&half);
        // SAFETY: the arguments match `sinusoidal_embedding_f32` and the length was checked.
        unsafe { launch(OP, &mut args, cfg) }
    }
}
