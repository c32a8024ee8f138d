//! LCM-style few-step sampling for distilled models (lightx2v's step-distill scheduler,
//! ComfyUI's `lcm` sampler for flow models): predict x0, then re-noise it to the next sigma with
//! fresh noise: `x0 = x − σ_i·v`; `x_{i+1} = (1 − σ_{i+1})·x0 + σ_{i+1}·ε_i`; the last step
//! returns x0. Computed in f64 (the reference is float64 throughout).

use super::kernels::check_step;
use super::{Schedule, Solver};
use crate::error::{Error, Result};
use crate::tensor::ops::sampler::lcm_step;
use crate::tensor::Tensor;

/// Gives the fresh noise `ε_i` for step `i` (called after every step but the last), shaped as
/// `like` (the sample) and on its device. Typically a seeded Gaussian stream; a fixture passes
/// stored noise.
pub type NoiseFn = Box<dyn FnMut(usize, &Tensor) -> Result<Tensor> + Send>;

/// The LCM solver: its schedule and its noise source.
pub struct Lcm {
    schedule: Schedule,
    step: usize,
    len: Option<usize>,
    noise: NoiseFn,
}

impl std::fmt::Debug for Lcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lcm")
            .field("schedule", &self.schedule)
            .field("step", &self.step)
            .finish()
    }
}

impl Lcm {
    /// A solver at step 0 of `schedule`, drawing fresh noise from `noise`.
    pub fn new(schedule: Schedule, noise: NoiseFn) -> Self {
        Lcm {
            schedule,
            step: 0,
            len: None,
            noise,
        }
    }
}

impl Solver for Lcm {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step
    }

    fn step(&mut self, model_output: &Tensor, sample: &mut Tensor) -> Result<()> {
        let n = self.schedule.steps();
        check_step("lcm", &mut self.len, self.step, n, model_output, sample)?;
        let i = self.step;
        let sigma = self.schedule.sigmas[i];
        let next = self.schedule.sigmas[i + 1];
        *sample = if i + 1 == n {
            lcm_step(sample, model_output, sigma, None)?
        } else {
            let eps = (self.noise)(i, sample)?;
            if eps.shape() != sample.shape() {
                return Err(Error::InvalidArgument(format!(
                    "lcm: the noise source gave {} for a sample of {}",
                    eps.shape(),
                    sample.shape()
                )));
            }
            lcm_step(sample, model_output, sigma, Some((next, &eps)))?
        };
        self.step += 1;
        Ok(())
    }
}
