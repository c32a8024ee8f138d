//! Wan's FlowUniPCMultistepScheduler (`wan/utils/fm_solvers_unipc.py`, itself diffusers'
//! UniPCMultistepScheduler for flow matching) with Wan's defaults: `solver_order=2`,
//! `predict_x0=True`, `solver_type='bh2'`, `lower_order_final=True`, corrector on every step,
//! final sigma 0. The recurrence is `../shared/docs/wan-architecture.md` §4.5.
//!
//! Scalar coefficients (λ, h, φ, B, the corrector's 2×2 solve) are computed in f32 from the f32
//! sigmas, as upstream computes them on 0-dim f32 tensors; the elementwise combinations follow
//! upstream's operation order in f64.
//!
//! Upstream finds its first step index by looking the first timestep up and starts at index 1
//! when that integer timestep occurs twice (only with very many steps or a very high shift);
//! this solver always starts at step 0.

use super::kernels::{check_step, ensure_len, fill, update};
use super::{Real, Schedule, Solver};
use crate::error::Result;

/// `λ(σ) = ln(1−σ) − ln σ` in f32 (`+∞` at σ = 0, `−∞` at σ = 1).
pub(super) fn lambda(sigma: f32) -> f32 {
    (1.0 - sigma).ln() - sigma.ln()
}

/// The UniPC solver state: the last two x0 predictions and the sample the last predictor
/// started from.
#[derive(Debug, Clone)]
pub struct UniPc<T: Real> {
    schedule: Schedule,
    step: usize,
    len: Option<usize>,
    /// x0 prediction of the current step (scratch, reused).
    m_cur: Vec<T>,
    /// x0 prediction of step `i − 1`.
    m_prev: Vec<T>,
    /// x0 prediction of step `i − 2`.
    m_prev2: Vec<T>,
    /// The (corrected) sample at step `i − 1`, from which the last predictor stepped.
    last_sample: Vec<T>,
    /// The order the last predictor used (the corrector of the next step uses the same).
    last_order: usize,
}

impl<T: Real> UniPc<T> {
    /// A solver at step 0 of `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        UniPc {
            schedule,
            step: 0,
            len: None,
            m_cur: Vec::new(),
            m_prev: Vec::new(),
            m_prev2: Vec::new(),
            last_sample: Vec::new(),
            last_order: 0,
        }
    }

    /// The x0 prediction of the last step taken (empty before the first step).
    pub fn last_x0(&self) -> &[T] {
        &self.m_prev
    }

    fn sigma32(&self, i: usize) -> f32 {
        self.schedule.sigmas[i] as f32
    }

    /// UniC: re-does step `i − 1` from `last_sample` using the new x0 prediction `m_cur`,
    /// writing the corrected sample into `sample`.
    fn correct(&self, sample: &mut [T]) {
        let i = self.step;
        let (s_t, s_0) = (self.sigma32(i), self.sigma32(i - 1));
        let h = lambda(s_t) - lambda(s_0);
        let hh = -h;
        let phi1 = hh.exp_m1();
        let b_h = hh.exp_m1(); // bh2
        let c_x = (s_t / s_0) as f64;
        let c_m = ((1.0 - s_t) * phi1) as f64;
        let c_d = ((1.0 - s_t) * b_h) as f64;
        let (xl, mp, m) = (&self.last_sample, &self.m_prev, &self.m_cur);
        if self.last_order == 1 {
            fill(sample, |k| {
                let (xl, mp, m) = (xl[k].to_f64(), mp[k].to_f64(), m[k].to_f64());
                (c_x * xl - c_m * mp) - c_d * (0.5 * (m - mp))
            });
            return;
        }
        // Order 2: rho solves [[1, 1], [r, 1]]·rho = [b0, b1].
        let rk = (lambda(self.sigma32(i - 2)) - lambda(s_0)) / h;
        let k1 = phi1 / hh - 1.0;
        let b0 = k1 * 1.0 / b_h;
        let k2 = k1 / hh - 0.5;
        let b1 = k2 * 2.0 / b_h;
        let [rho0, rho1] = solve2_unit_rows(rk, b0, b1).map(|r| r as f64);
        let rk = rk as f64;
        let mpp = &self.m_prev2;
        fill(sample, |k| {
            let (xl, mp, mpp, m) = (
                xl[k].to_f64(),
                mp[k].to_f64(),
                mpp[k].to_f64(),
                m[k].to_f64(),
            );
            let d1 = (mpp - mp) / rk;
            (c_x * xl - c_m * mp) - c_d * (rho0 * d1 + rho1 * (m - mp))
        });
    }

    /// UniP: steps `sample` (at σ_i, x0 prediction `m_cur`) to σ_{i+1} with `order`.
    fn predict(&self, sample: &mut [T], order: usize) {
        let i = self.step;
        let (s_t, s_0) = (self.sigma32(i + 1), self.sigma32(i));
        let m = &self.m_cur;
        if s_t == 0.0 {
            // The limit of the update at σ = 0 (λ = +∞) is the x0 prediction itself.
            fill(sample, |k| m[k].to_f64());
            return;
        }
        let h = lambda(s_t) - lambda(s_0);
        let phi1 = (-h).exp_m1();
        let b_h = phi1; // bh2
        let c_x = (s_t / s_0) as f64;
        let c_m = ((1.0 - s_t) * phi1) as f64;
        if order == 1 {
            update(sample, |k, x| c_x * x - c_m * m[k].to_f64());
            return;
        }
        let rk = ((lambda(self.sigma32(i - 1)) - lambda(s_0)) / h) as f64;
        let c_d = ((1.0 - s_t) * b_h) as f64;
        let mp = &self.m_prev;
        update(sample, |k, x| {
            let (m, mp) = (m[k].to_f64(), mp[k].to_f64());
            (c_x * x - c_m * m) - c_d * (0.5 * ((mp - m) / rk))
        });
    }
}

/// Solves `[[1, 1], [r, 1]]·x = [b0, b1]` in f32 by LU with partial pivoting (as LAPACK's
/// `gesv` behind upstream's `torch.linalg.solve`).
fn solve2_unit_rows(r: f32, b0: f32, b1: f32) -> [f32; 2] {
    if r.abs() > 1.0 {
        // Pivot on the second row: [[r, 1], [1, 1]]·x = [b1, b0].
        let l = 1.0 / r;
        let u22 = 1.0 - l;
        let x1 = (b0 - l * b1) / u22;
        [(b1 - x1) / r, x1]
    } else {
        let u22 = 1.0 - r;
        let x1 = (b1 - r * b0) / u22;
        [b0 - x1, x1]
    }
}

impl<T: Real> Solver<T> for UniPc<T> {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step
    }

    fn step(&mut self, model_output: &[T], sample: &mut [T]) -> Result<()> {
        let n = self.schedule.steps();
        check_step(
            "unipc",
            &mut self.len,
            self.step,
            n,
            model_output.len(),
            sample.len(),
        )?;
        let len = sample.len();
        let i = self.step;
        // Convert the velocity to an x0 prediction at σ_i.
        let sigma = self.sigma32(i) as f64;
        ensure_len(&mut self.m_cur, len);
        {
            let x: &[T] = sample;
            fill(&mut self.m_cur, |k| {
                x[k].to_f64() - sigma * model_output[k].to_f64()
            });
        }
        if i > 0 {
            self.correct(sample);
        }
        // Warm-up (step 0) and the lower-order final step are first order.
        let order = 2.min(n - i).min(i + 1);
        ensure_len(&mut self.last_sample, len);
        self.last_sample.copy_from_slice(sample);
        self.predict(sample, order);
        self.last_order = order;
        // Rotate the history: the oldest buffer becomes the next step's scratch.
        std::mem::swap(&mut self.m_prev2, &mut self.m_prev);
        std::mem::swap(&mut self.m_prev, &mut self.m_cur);
        self.step += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve2_matches_the_closed_form() {
        for &r in &[-3.0f32, -1.2, -0.9, -0.3, 0.5, 2.0] {
            let (b0, b1) = (0.7f32, -0.2f32);
            let [x0, x1] = solve2_unit_rows(r, b0, b1);
            assert!((x0 + x1 - b0).abs() < 1e-5, "r={r}");
            assert!((r * x0 + x1 - b1).abs() < 1e-5, "r={r}");
        }
    }

    #[test]
    fn lambda_limits() {
        assert_eq!(lambda(0.0), f32::INFINITY);
        assert_eq!(lambda(1.0), f32::NEG_INFINITY);
        assert!(lambda(0.5).abs() < 1e-7);
    }

    /// With a model that predicts the exact velocity of a straight path (`v = ε − x0`), every
    /// solver must land on x0.
    #[test]
    fn exact_velocity_reaches_x0() {
        let x0 = [0.3f64, -1.0, 2.0];
        let eps = [1.0f64, 0.5, -0.7];
        let schedule = Schedule::wan_unipc(7, 3.0).unwrap();
        let mut s = UniPc::<f64>::new(schedule.clone());
        let mut x: Vec<f64> = (0..3)
            .map(|k| (1.0 - schedule.sigmas[0]) * x0[k] + schedule.sigmas[0] * eps[k])
            .collect();
        while !s.is_done() {
            let v: Vec<f64> = (0..3).map(|k| eps[k] - x0[k]).collect();
            s.step(&v, &mut x).unwrap();
        }
        for k in 0..3 {
            assert!((x[k] - x0[k]).abs() < 1e-6, "{} vs {}", x[k], x0[k]);
        }
        assert!(
            s.step(&[0.0; 3], &mut x).is_err(),
            "stepping past the end is an error"
        );
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut s = UniPc::<f32>::new(Schedule::wan_unipc(3, 3.0).unwrap());
        let mut x = vec![0.0f32; 4];
        assert!(s.step(&[0.0; 3], &mut x).is_err());
        s.step(&[0.0; 4], &mut x).unwrap();
        let mut y = vec![0.0f32; 5];
        assert!(s.step(&[0.0; 5], &mut y).is_err());
    }
}
