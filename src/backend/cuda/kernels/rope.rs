//! Launchers of `kernels/rope.cu`: rotary embedding on interleaved pairs, bf16 or f32.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};

use super::qk_norm_rope::RopeTables;
use super::{check_len, grid_config, launch, product, to_u32, Activation, Kernels};
use crate::error::{Error, Result};

impl Kernels {
    /// Rotates `x` `[batch, seq, heads, head_dim]` of `T` into `out`: channels `(2j, 2j+1)` of
    /// every head of token `s` turn by the angle of `(s, j)` in the tables (`[seq, head_dim/2]`
    /// f32), computed in f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rope_interleaved<T: Activation>(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, T>,
        tables: RopeTables<'_, '_>,
        out: &mut CudaViewMut<'_, T>,
        dims: [usize; 4],
    ) -> Result<()> {
        const OP: &str = "rope_interleaved";
        let [_, seq, heads, head_dim] = dims;
        if !head_dim.is_multiple_of(2) {
            return Err(Error::InvalidArgument(format!(
                "{OP}: head_dim {head_dim} is odd"
            )));
        }
        let n = product(OP, &dims)?;
        let half = head_dim / 2;
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        check_len(OP, "cos", tables.cos.len(), product(OP, &[seq, half])?)?;
        check_len(OP, "sin", tables.sin.len(), product(OP, &[seq, half])?)?;
        if n == 0 {
            return Ok(());
        }
        let pairs = n / 2;
        let threads = if half.is_multiple_of(4) {
            pairs / 4
        } else {
            pairs
        };
        let (seq, heads, half, pairs) = (
            to_u32(OP, "seq", seq)?,
            to_u32(OP, "heads", heads)?,
            to_u32(OP, "head_dim", half)?,
            to_u32(OP, "pairs", pairs)?,
        );
        let mut args = stream.launch_builder(&self.rope_interleaved[usize::from(T::IS_F32)]);
        args.arg(x)
            .arg(tables.cos)
            .arg(tables.sin)
            .arg(out)
            .arg(&seq)
            .arg(&heads)
            .arg(&half)
            .arg(&pairs);
        // SAFETY: the arguments match `rope_interleaved_*` and the lengths were checked.
        unsafe { launch(OP, &mut args, grid_config(threads)) }
    }
}
