//! Launcher of `kernels/embedding.cu`: rows of a table by id.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{check_len, launch, product, to_i32, Kernels};
use crate::error::{Error, Result};

impl Kernels {
    /// `out[i, :] = table[ids[i], :]` for `ids` `[n]`, `table` `[vocab, d]` and `out` `[n, d]`
    /// bf16 (exact copies). An id `>= vocab` gives a zero row (the op refuses such ids on the
    /// host before it launches).
    pub(crate) fn embedding(
        &self,
        stream: &Arc<CudaStream>,
        ids: &CudaView<'_, u32>,
        table: &CudaView<'_, bf16>,
        out: &mut CudaViewMut<'_, bf16>,
        vocab: usize,
        d: usize,
    ) -> Result<()> {
        const OP: &str = "embedding";
        let n = ids.len();
        check_len(OP, "table", table.len(), product(OP, &[vocab, d])?)?;
        check_len(OP, "out", out.len(), product(OP, &[n, d])?)?;
        if n == 0 || d == 0 {
            return Ok(());
        }
        if vocab == 0 {
            return Err(Error::InvalidArgument(format!("{OP}: an empty table")));
        }
        let (n_i32, d_i32) = (to_i32(OP, "ids", n)?, to_i32(OP, "d", d)?);
        let vocab = u32::try_from(vocab)
            .map_err(|_| Error::InvalidArgument(format!("{OP}: a vocabulary of {vocab}")))?;
        let cfg = LaunchConfig {
            // One block per id, grid-stride past 65535 ids.
            grid_dim: (n.min(65_535) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut args = stream.launch_builder(&self.embedding);
        args.arg(ids)
            .arg(table)
            .arg(out)
            .arg(&n_i32)
            .arg(&d_i32)
            .arg(&vocab);
        // SAFETY: the arguments match `embedding_bf16`, the lengths were checked, and the
        // kernel reads only rows below `vocab`.
        unsafe { launch(OP, &mut args, cfg) }
    }
}
