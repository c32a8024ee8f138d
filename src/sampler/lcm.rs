//! LCM-style few-step sampling for distilled models (lightx2v's step-distill scheduler,
//! ComfyUI's `lcm` sampler for flow models): predict x0, then re-noise it to the next sigma with
//! fresh noise: `x0 = x − σ_i·v`; `x_{i+1} = (1 − σ_{i+1})·x0 + σ_{i+1}·ε_i`; the last step
//! returns x0. Computed in f64 (the reference is float64 throughout).

use super::kernels::{check_step, ensure_len, update};
use super::{Real, Schedule, Solver};
use crate::error::{Error, Result};

/// Fills its buffer with the fresh noise `ε_i` for step `i` (called after every step but the
/// last). Typically a seeded Gaussian stream; a fixture passes stored noise.
pub type NoiseFn<T> = Box<dyn FnMut(usize, &mut [T]) -> Result<()> + Send>;

/// The LCM solver: its schedule, its noise source and a reused noise buffer.
pub struct Lcm<T: Real> {
    schedule: Schedule,
    step: usize,
    len: Option<usize>,
    noise: NoiseFn<T>,
    eps: Vec<T>,
}

impl<T: Real> std::fmt::Debug for Lcm<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lcm")
            .field("schedule", &self.schedule)
            .field("step", &self.step)
            .finish()
    }
}

impl<T: Real> Lcm<T> {
    /// A solver at step 0 of `schedule`, drawing fresh noise from `noise`.
    pub fn new(schedule: Schedule, noise: NoiseFn<T>) -> Self {
        Lcm {
            schedule,
            step: 0,
            len: None,
            noise,
            eps: Vec::new(),
        }
    }
}

impl<T: Real> Solver<T> for Lcm<T> {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step
    }

    fn step(&mut self, model_output: &[T], sample: &mut [T]) -> Result<()> {
        let n = self.schedule.steps();
        check_step(
            "lcm",
            &mut self.len,
            self.step,
            n,
            model_output.len(),
            sample.len(),
        )?;
        let i = self.step;
        let sigma = self.schedule.sigmas[i];
        let next = self.schedule.sigmas[i + 1];
        if i + 1 == n {
            update(sample, |k, x| x - sigma * model_output[k].to_f64());
        } else {
            ensure_len(&mut self.eps, sample.len());
            (self.noise)(i, &mut self.eps)?;
            if self.eps.len() != sample.len() {
                return Err(Error::InvalidArgument(
                    "lcm: the noise source resized its buffer".into(),
                ));
            }
            let eps = &self.eps;
            update(sample, |k, x| {
                let x0 = x - sigma * model_output[k].to_f64();
                (1.0 - next) * x0 + next * eps[k].to_f64()
            });
        }
        self.step += 1;
        Ok(())
    }
}
