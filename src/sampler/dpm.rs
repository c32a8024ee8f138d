//! Wan's FlowDPMSolverMultistepScheduler (`wan/utils/fm_solvers.py`) with Wan's settings:
//! DPM-Solver++ 2M, midpoint, lower-order final step, final sigma 0
//! (`../shared/docs/wan-architecture.md` §4.6). Step 0 (warm-up) and the last step are first
//! order; every other step is second order (at step 1 after σ_0 = 1 the second-order term
//! vanishes because λ(1) = −∞, exactly as upstream).
//!
//! Scalar coefficients are computed in f32 from the f32 sigmas (upstream's 0-dim tensors), the
//! elementwise update in f64, except that the sample term `(σ_t/σ_s)·x` is an f32 product:
//! upstream's `step` casts the sample to float32 before the update (the x0 predictions keep the
//! sample's precision).

use super::kernels::{check_step, ensure_len, fill, update};
use super::unipc::lambda;
use super::{Real, Schedule, Solver};
use crate::error::Result;

/// The DPM++ 2M solver state: the previous x0 prediction.
#[derive(Debug, Clone)]
pub struct DpmPp2m<T: Real> {
    schedule: Schedule,
    step: usize,
    len: Option<usize>,
    /// x0 prediction of the current step (scratch, reused).
    m_cur: Vec<T>,
    /// x0 prediction of step `i − 1`.
    m_prev: Vec<T>,
}

impl<T: Real> DpmPp2m<T> {
    /// A solver at step 0 of `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        DpmPp2m {
            schedule,
            step: 0,
            len: None,
            m_cur: Vec::new(),
            m_prev: Vec::new(),
        }
    }
}

impl<T: Real> Solver<T> for DpmPp2m<T> {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step
    }

    fn step(&mut self, model_output: &[T], sample: &mut [T]) -> Result<()> {
        let n = self.schedule.steps();
        check_step(
            "dpm++",
            &mut self.len,
            self.step,
            n,
            model_output.len(),
            sample.len(),
        )?;
        let i = self.step;
        let sig = |j: usize| self.schedule.sigmas[j] as f32;
        let (s_t, s_0) = (sig(i + 1), sig(i));
        let sigma = s_0 as f64;
        ensure_len(&mut self.m_cur, sample.len());
        {
            let x: &[T] = sample;
            fill(&mut self.m_cur, |k| {
                x[k].to_f64() - sigma * model_output[k].to_f64()
            });
        }
        let h = lambda(s_t) - lambda(s_0);
        let c_x = s_t / s_0;
        let sample_term = |x: f64| (c_x * x as f32) as f64;
        let c_m = (1.0 - s_t) * ((-h).exp() - 1.0);
        let m = &self.m_cur;
        if i == 0 || i + 1 == n {
            let c_m = c_m as f64;
            update(sample, |k, x| sample_term(x) - c_m * m[k].to_f64());
        } else {
            let h0 = lambda(s_0) - lambda(sig(i - 1));
            let inv_r0 = (1.0 / (h0 / h)) as f64;
            let c_half = (0.5 * c_m) as f64;
            let c_m = c_m as f64;
            let mp = &self.m_prev;
            update(sample, |k, x| {
                let (m, mp) = (m[k].to_f64(), mp[k].to_f64());
                sample_term(x) - c_m * m - c_half * (inv_r0 * (m - mp))
            });
        }
        std::mem::swap(&mut self.m_prev, &mut self.m_cur);
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
        let mut s = DpmPp2m::<f64>::new(Schedule::wan_dpm(6, 3.0).unwrap());
        let mut x = eps.to_vec(); // σ_0 = 1: pure noise
        while !s.is_done() {
            let v: Vec<f64> = (0..2).map(|k| eps[k] - x0[k]).collect();
            s.step(&v, &mut x).unwrap();
        }
        for k in 0..2 {
            assert!((x[k] - x0[k]).abs() < 1e-6, "{} vs {}", x[k], x0[k]);
        }
    }
}
