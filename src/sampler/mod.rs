//! Flow-matching samplers, guidance and seeded noise.
//!
//! Two layers. A [`Solver`] never calls the model: it takes the velocity at the current step and
//! advances the sample in place from `sigmas[i]` to `sigmas[i + 1]`; it sees velocities, sigmas
//! and latents only. The [`Sampler`] driver is what the pipeline (and the fixture harness) runs:
//! it owns the solver and the guidance settings ([`Guidance`], [`CfgSchedule`], [`Slg`],
//! [`TeaCache`]), asks a [`VelocityModel`] for the passes a step needs, combines them and steps
//! the solver, with a per-step callback for progress, previews and cancellation.
//! [`WanVelocity`] is the Wan DiT as such a model (NAG, SLG, TeaCache, batched CFG). Initial and
//! re-noising noise come from [`noise`] / [`fill_normal`] (Philox4x32-10).
//!
//! Conventions (Wan, `../shared/docs/wan-architecture.md` §4.3): `x_σ = (1−σ)·x0 + σ·ε`, the
//! model predicts `v = ε − x0`, so `x0 = x − σ·v`.
//!
//! Precision follows upstream: the schedules hold exactly the values upstream stores (f32 sigmas
//! for Wan's and diffusers' schedulers); per-step scalar coefficients are computed in f32, as the
//! upstream schedulers compute them; the elementwise updates run in f64 for every element type
//! (for f32 latents at least as accurate as upstream's f32 arithmetic), except that DPM++ and
//! Euler take the sample in f32, as upstream's `step` casts it. Samples and histories are
//! [`Tensor`]s in the caller's dtype (f32 for the pipeline, f64 for checks against float64
//! references; f32 only on CUDA), and every elementwise update is a fused op of
//! [`crate::tensor::ops::sampler`], so a latent on a CUDA device stays there for the whole loop.
//! What a step reads back to the host: one 4-byte flag for the non-finite check and, with
//! TeaCache on, the indicator the model returns (the modulation input, `[dim]`-sized, never the
//! latent); CFG-Zero*'s scalar stays on the device.

mod cfg_schedule;
mod dpm;
mod driver;
mod euler;
mod guidance;
pub(crate) mod kernels;
mod lcm;
mod model;
mod noise;
#[cfg(test)]
mod noise_emulation;
mod schedule;
mod slg;
mod teacache;
mod unipc;
mod wan_dit;

pub use cfg_schedule::{CfgSchedule, CfgSkipMode};
pub use dpm::DpmPp2m;
pub use driver::{Flow, PassUse, Progress, Sampler, SamplerConfig, StepReport};
pub use euler::Euler;
pub use guidance::{cfg_zero_star_scale, Guidance};
pub use lcm::{Lcm, NoiseFn};
pub use model::{BlockMode, Pass, PassRequest, StepInfo, VelocityModel};
pub use noise::{fill_normal, noise, renoise_fn, Stream};
pub use schedule::{shift_sigma, Schedule};
pub use slg::Slg;
pub use teacache::{TeaCache, TeaCacheInput, TeaCacheModel, TeaCacheState};
pub use unipc::UniPc;
pub use wan_dit::WanVelocity;

use crate::error::{Error, Result};
use crate::tensor::{Element, Shape, Tensor};

/// A floating-point element type a sample can be stored in on the host (the dtypes
/// [`crate::tensor::ops::sampler`] accepts on the CPU).
pub trait Real: Element + Default + std::fmt::Debug {
    /// Widens to f64 (exact).
    fn to_f64(self) -> f64;
    /// Rounds an f64 to this type (to nearest even).
    fn from_f64(v: f64) -> Self;
    /// A host tensor of `shape` owning `data`.
    fn into_tensor(data: Vec<Self>, shape: Shape) -> Result<Tensor>;
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn into_tensor(data: Vec<f32>, shape: Shape) -> Result<Tensor> {
        Tensor::from_f32(data, shape)
    }
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn into_tensor(data: Vec<f64>, shape: Shape) -> Result<Tensor> {
        Tensor::from_slice(&data, shape)
    }
}

/// A multistep (or single-step) solver over a fixed [`Schedule`].
///
/// Step `i` takes the model output `v_i` evaluated at the current sample and at
/// `schedule().timesteps[i]`, and replaces the sample by the sample at `sigmas[i + 1]`. All
/// history (previous x0 predictions, the previous sample) lives in the solver value, as tensors on
/// the sample's device.
pub trait Solver: Send + std::fmt::Debug {
    /// The schedule being followed.
    fn schedule(&self) -> &Schedule;

    /// The number of steps taken so far (the index of the next step).
    fn step_index(&self) -> usize;

    /// Replaces `sample` by the sample one step on, given the model output at the current step;
    /// the step is one fused op of [`crate::tensor::ops::sampler`] on the sample's device.
    ///
    /// Errors when the schedule is exhausted, or the tensors differ in shape, dtype or device
    /// from each other or in length from the first sample the solver saw.
    fn step(&mut self, model_output: &Tensor, sample: &mut Tensor) -> Result<()>;

    /// The timestep the model must be called with for the next step, or `None` when done.
    fn timestep(&self) -> Option<f64> {
        self.schedule().timesteps.get(self.step_index()).copied()
    }

    /// The sigma of the current sample, or `None` when done.
    fn sigma(&self) -> Option<f64> {
        let s = self.schedule();
        (self.step_index() < s.steps()).then(|| s.sigmas[self.step_index()])
    }

    /// True when every step of the schedule has been taken.
    fn is_done(&self) -> bool {
        self.step_index() >= self.schedule().steps()
    }
}

/// The solvers wanrt offers, by the names users pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverKind {
    /// Wan's FlowUniPCMultistep (bh2, order 2); Wan's default.
    UniPc,
    /// Wan's FlowDPMSolverMultistep (DPM++ 2M, midpoint).
    DpmPp,
    /// Flow-matching Euler (diffusers' FlowMatchEulerDiscrete).
    Euler,
    /// Few-step LCM sampling with fresh noise after each step (for distilled models/LoRAs).
    Lcm,
}

impl std::str::FromStr for SolverKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<SolverKind> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "unipc" => SolverKind::UniPc,
            "dpm++" | "dpmpp" | "dpm++2m" => SolverKind::DpmPp,
            "euler" => SolverKind::Euler,
            "lcm" => SolverKind::Lcm,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown solver `{s}` (expected unipc, dpm++, euler or lcm)"
                )))
            }
        })
    }
}

impl SolverKind {
    /// The schedule this solver uses upstream for `steps` steps and `shift`: Wan's UniPC grid
    /// (first sigma 0.9997…), Wan's `get_sampling_sigmas` for DPM++ (first sigma 1), diffusers'
    /// FlowMatchEuler grid for Euler, and for LCM the evenly spaced distilled step list
    /// `1000, 1000 − 1000/steps, …` (4 steps: `[1000, 750, 500, 250]`, as lightx2v).
    pub fn schedule(self, steps: usize, shift: f64) -> Result<Schedule> {
        match self {
            SolverKind::UniPc => Schedule::wan_unipc(steps, shift),
            SolverKind::DpmPp => Schedule::wan_dpm(steps, shift),
            SolverKind::Euler => Schedule::flow_match_euler(steps, shift),
            SolverKind::Lcm => {
                schedule::check_steps(steps)?;
                let list: Vec<f64> = (0..steps)
                    .map(|i| 1000.0 - 1000.0 * i as f64 / steps as f64)
                    .collect();
                Schedule::distilled(&list, shift)
            }
        }
    }

    /// Builds the solver over `schedule`. LCM needs `noise`, the source of the fresh noise it
    /// mixes in after every step but the last; the other solvers ignore it.
    pub fn build(self, schedule: Schedule, noise: Option<NoiseFn>) -> Result<Box<dyn Solver>> {
        Ok(match self {
            SolverKind::UniPc => Box::new(UniPc::new(schedule)),
            SolverKind::DpmPp => Box::new(DpmPp2m::new(schedule)),
            SolverKind::Euler => Box::new(Euler::new(schedule)),
            SolverKind::Lcm => {
                let noise = noise.ok_or_else(|| {
                    Error::InvalidArgument("the lcm solver needs a noise source".into())
                })?;
                Box::new(Lcm::new(schedule, noise))
            }
        })
    }
}
