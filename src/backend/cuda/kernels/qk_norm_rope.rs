//! Launchers of `kernels/qk_norm_rope.cu`: the DiT's RMSNorm of q or k over the full model dim,
//! fused with the 3-D RoPE of self-attention.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};
use half::bf16;

use super::{check_len, launch, product, row_config, to_i32, Kernels};
use crate::error::{Error, Result};

/// The cosine and sine tables of RoPE, `[tokens, head_dim/2]` f32 each, rows in token order (as
/// `crate::model::dit::rope::RopeTable` builds them).
pub(crate) struct RopeTables<'a, 'b> {
    /// `cos(angle)` per token and channel pair.
    pub cos: &'a CudaView<'b, f32>,
    /// `sin(angle)` per token and channel pair.
    pub sin: &'a CudaView<'b, f32>,
}

impl Kernels {
    /// The DiT's q/k norm: per token (row of `heads·head_dim` bf16 values),
    /// `y = bf16(x / sqrt(mean(x²) + eps)) · weight` with the statistics in f32, then, when `rope`
    /// is given, channels `(2j, 2j+1)` of every head rotated by the table's angle for that token
    /// and pair (in f32); `out` is rounded to bf16 once at the end. `x` and `out` are row-major
    /// `[tokens, heads·head_dim]` (the `[tokens, heads, head_dim]` layout of attention), `weight`
    /// is `[heads·head_dim]` f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rms_norm_rope(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        weight: &CudaView<'_, f32>,
        rope: Option<RopeTables<'_, '_>>,
        out: &mut CudaViewMut<'_, bf16>,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "rms_norm_rope";
        if !head_dim.is_multiple_of(2) {
            return Err(Error::InvalidArgument(format!(
                "{OP}: head_dim {head_dim} is odd"
            )));
        }
        let dim = product(OP, &[heads, head_dim])?;
        let n = product(OP, &[tokens, dim])?;
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        check_len(OP, "weight", weight.len(), dim)?;
        if let Some(t) = &rope {
            check_len(OP, "cos", t.cos.len(), tokens * head_dim / 2)?;
            check_len(OP, "sin", t.sin.len(), tokens * head_dim / 2)?;
        }
        if n == 0 {
            return Ok(());
        }
        let cfg = row_config(tokens)?;
        let dim = to_i32(OP, "heads·head_dim", dim)?;
        let head_dim = to_i32(OP, "head_dim", head_dim)?;
        let mut args = stream.launch_builder(&self.rms_norm_rope);
        // Without RoPE the tables are not read: `x` stands in for their pointers.
        let apply_rope = i32::from(rope.is_some());
        args.arg(x).arg(weight);
        match &rope {
            Some(t) => args.arg(t.cos).arg(t.sin),
            None => args.arg(x).arg(x),
        };
        args.arg(&apply_rope)
            .arg(out)
            .arg(&dim)
            .arg(&head_dim)
            .arg(&eps);
        // SAFETY: the arguments match `rms_norm_rope_bf16` and the lengths were checked.
        unsafe { launch(OP, &mut args, cfg) }
    }
}
