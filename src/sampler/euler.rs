//! Flow-matching Euler (diffusers' FlowMatchEulerDiscreteScheduler without stochastic sampling):
//! `x_{i+1} = x_i + (σ_{i+1} − σ_i)·v_i`. As upstream, the step `σ_{i+1} − σ_i` is an f32
//! difference of the f32 sigmas, and the sample enters in f32 (its `step` casts the sample to
//! float32 before the update, whatever the model output's dtype).

use super::kernels::{check_step, update};
use super::{Real, Schedule, Solver};
use crate::error::Result;

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

impl<T: Real> Solver<T> for Euler {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step
    }

    fn step(&mut self, model_output: &[T], sample: &mut [T]) -> Result<()> {
        let n = self.schedule.steps();
        check_step(
            "euler",
            &mut self.len,
            self.step,
            n,
            model_output.len(),
            sample.len(),
        )?;
        let i = self.step;
        let dt = (self.schedule.sigmas[i + 1] as f32 - self.schedule.sigmas[i] as f32) as f64;
        update(sample, |k, x| {
            (x as f32 as f64) + dt * model_output[k].to_f64()
        });
        self.step += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_by_sigma_difference() {
        let schedule = Schedule::from_sigmas(&[1.0, 0.5], 1.0).unwrap();
        let mut s = Euler::new(schedule);
        let mut x = vec![1.0f32, 2.0];
        Solver::<f32>::step(&mut s, &[2.0, -2.0], &mut x).unwrap();
        assert_eq!(x, vec![0.0, 3.0]);
        Solver::<f32>::step(&mut s, &[1.0, 1.0], &mut x).unwrap();
        assert_eq!(x, vec![-0.5, 2.5]);
        assert!(Solver::<f32>::is_done(&s));
    }
}
