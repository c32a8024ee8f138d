//! Flow-matching Euler (diffusers' FlowMatchEulerDiscreteScheduler without stochastic sampling):
//! `x_{i+1} = x_i + (σ_{i+1} − σ_i)·v_i`. As upstream, the step `σ_{i+1} − σ_i` is an f32
//! difference of the f32 sigmas, and the sample enters in f32 (its `step` casts the sample to
//! float32 before the update, whatever the model output's dtype).

use super::kernels::check_step;
use super::{Schedule, Solver};
use crate::error::Result;
use crate::tensor::ops::sampler::euler_step;
use crate::tensor::Tensor;

/// The Euler solver (stateless apart from the step index).
#[derive(Debug, Clone)]
pub struct Euler {
    schedule: Schedule,
    step: usize,
    len: Option<usize>,
}

impl Euler {
    /// A solver at step 0 of `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        Euler {
            schedule,
            step: 0,
            len: None,
        }
    }
}

impl Solver for Euler {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step
    }

    fn step(&mut self, model_output: &Tensor, sample: &mut Tensor) -> Result<()> {
        let n = self.schedule.steps();
        check_step("euler", &mut self.len, self.step, n, model_output, sample)?;
        let i = self.step;
        let dt = (self.schedule.sigmas[i + 1] as f32 - self.schedule.sigmas[i] as f32) as f64;
        *sample = euler_step(sample, model_output, dt)?;
        self.step += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_by_sigma_difference() {
        let t = |v: &[f32]| Tensor::from_f32(v.to_vec(), [2]).unwrap();
        let schedule = Schedule::from_sigmas(&[1.0, 0.5], 1.0).unwrap();
        let mut s = Euler::new(schedule);
        let mut x = t(&[1.0, 2.0]);
        s.step(&t(&[2.0, -2.0]), &mut x).unwrap();
        assert_eq!(x.f32_data().unwrap(), [0.0, 3.0]);
        s.step(&t(&[1.0, 1.0]), &mut x).unwrap();
        assert_eq!(x.f32_data().unwrap(), [-0.5, 2.5]);
        assert!(s.is_done());
    }
}
