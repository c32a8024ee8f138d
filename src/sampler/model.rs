//! What the [`Sampler`](super::Sampler) asks of a model: the velocities of one step's passes.

use super::TeaCacheInput;
use crate::error::Result;
use crate::tensor::Tensor;

/// One of the two guidance passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    /// The pass on the prompt (with NAG, if the model applies it).
    Cond,
    /// The pass on the negative prompt (with Skip Layer Guidance's skipped blocks, if any).
    Uncond,
}

impl Pass {
    /// 0 for [`Pass::Cond`], 1 for [`Pass::Uncond`].
    pub fn index(self) -> usize {
        match self {
            Pass::Cond => 0,
            Pass::Uncond => 1,
        }
    }
}

/// What the model does with its transformer blocks in one pass (TeaCache's hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockMode {
    /// Run the blocks (except [`PassRequest::skip_blocks`]).
    Run,
    /// Run the blocks and keep their total residual for this pass, replacing the kept one
    /// (the DiT's `return_residual`).
    RunAndKeep,
    /// Run no block: add the residual kept for this pass instead (the DiT's `reuse_residual`).
    /// Asked only after a [`BlockMode::RunAndKeep`] of the same pass on the same latent shape.
    Reuse,
}

/// Where a step evaluates the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// The step index (0-based).
    pub step: usize,
    /// The number of steps of the schedule.
    pub steps: usize,
    /// The timestep to give the model, exactly the schedule's (Wan's solvers truncate it to an
    /// integer; a distilled step list gives fractional ones such as 937.5).
    pub timestep: f64,
    /// The noise level of the latent.
    pub sigma: f64,
}

/// One model pass the driver asks for. The model sets [`PassRequest::velocity`] and, when
/// [`PassRequest::indicator`] is set, the TeaCache indicator [`PassRequest::signal`].
#[derive(Debug)]
pub struct PassRequest<'a> {
    /// Which pass.
    pub pass: Pass,
    /// Blocks not to run in this pass (Skip Layer Guidance; empty for none).
    pub skip_blocks: &'a [usize],
    /// What to do with the blocks.
    pub blocks: BlockMode,
    /// The TeaCache indicator to return, if any.
    pub indicator: Option<TeaCacheInput>,
    /// Output: the velocity at the latent, with the latent's shape, dtype and device.
    pub velocity: Option<Tensor>,
    /// Output: the indicator asked for (the model's tensor, on its device).
    pub signal: Option<Tensor>,
}

/// A velocity model the sampler drives: a DiT with its text contexts, or a toy function.
///
/// Each call evaluates one or two passes (never two of the same [`Pass`]) at the same latent
/// and timestep, so a model may batch them (classifier-free guidance as a batch of 2) when
/// their options agree, or run them one by one. A pass with [`BlockMode::Reuse`] and the
/// indicator asked is cheap; the driver uses it to read the indicator before deciding whether
/// the blocks must run, and asks again with [`BlockMode::RunAndKeep`] when they must.
pub trait VelocityModel {
    /// Sets every request's velocity (and signal, when asked) for `latent` at `at`.
    fn evaluate(
        &mut self,
        latent: &Tensor,
        at: &StepInfo,
        passes: &mut [PassRequest<'_>],
    ) -> Result<()>;
}
