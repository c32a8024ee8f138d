//! Wan's FlowDPMSolverMultistepScheduler (`wan/utils/fm_solvers.py`) with Wan's settings:
//! DPM-Solver++ 2M, midpoint, lower-order final step, final sigma 0
//! (`../shared/docs/wan-architecture.md` §4.6). Step 0 (warm-up) and the last step are first
//! order; every other step is second order (at step 1 after σ_0 = 1 the second-order term
//! vanishes because λ(1) = −∞, exactly as upstream).
//!
//! Scalar coefficients are computed in f32 from the f32 sigmas (upstream's 0-dim tensors), the
//! elementwise update (x0 prediction and step fused in [`dpm_step`]) in f64, except that the sample term `(σ_t/σ_s)·x` is an f32 product:
//! upstream's `step` casts the sample to float32 before the update (the x0 predictions keep the
//! sample's precision).

use super::kernels::check_step;
use super::unipc::lambda;
use super::{Schedule, Solver};
use crate::error::Result;
use crate::tensor::ops::sampler::{dpm_step, DpmSecondOrder, DpmStep};
use crate::tensor::Tensor;

/// The DPM++ 2M solver state: the previous x0 prediction.
#[derive(Debug, Clone)]
pub struct DpmPp2m {
    schedule: Schedule,
    step: usize,
    len: Option<usize>,
    /// x0 prediction of step `i − 1`.
    m_prev: Option<Tensor>,
}

impl DpmPp2m {
    /// A solver at step 0 of `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        DpmPp2m {
            schedule,
            step: 0,
            len: None,
            m_prev: None,
        }
    }
}

impl Solver for DpmPp2m {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step
    }

    fn step(&mut self, model_output: &Tensor, sample: &mut Tensor) -> Result<()> {
        let n = self.schedule.steps();
        check_step("dpm++", &mut self.len, self.step, n, model_output, sample)?;
        let i = self.step;
        let sig = |j: usize| self.schedule.sigmas[j] as f32;
        let (s_t, s_0) = (sig(i + 1), sig(i));
        let h = lambda(s_t) - lambda(s_0);
        let c_m = (1.0 - s_t) * ((-h).exp() - 1.0);
        let second = (i != 0 && i + 1 != n).then(|| {
            let h0 = lambda(s_0) - lambda(sig(i - 1));
            DpmSecondOrder {
                c_half: (0.5 * c_m) as f64,
                inv_r0: (1.0 / (h0 / h)) as f64,
            }
        });
        let c = DpmStep {
            sigma: s_0 as f64,
            c_x: s_t / s_0,
            c_m: c_m as f64,
            second,
        };
        let prev = self.m_prev.as_ref().filter(|_| second.is_some());
        let (out, x0) = dpm_step(sample, model_output, prev, &c)?;
        *sample = out;
        self.m_prev = Some(x0);
        self.step += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_velocity_reaches_x0() {
        let (x0, eps) = ([0.3f64, -1.0], [1.0f64, 0.5]);
        let mut s = DpmPp2m::new(Schedule::wan_dpm(6, 3.0).unwrap());
        let mut x = Tensor::from_slice(&eps, [2]).unwrap(); // σ_0 = 1: pure noise
        let v: Vec<f64> = (0..2).map(|k| eps[k] - x0[k]).collect();
        let v = Tensor::from_slice(&v, [2]).unwrap();
        while !s.is_done() {
            s.step(&v, &mut x).unwrap();
        }
        let got = x.as_slice::<f64>().unwrap();
        for k in 0..2 {
            assert!((got[k] - x0[k]).abs() < 1e-6, "{} vs {}", got[k], x0[k]);
        }
    }
}
