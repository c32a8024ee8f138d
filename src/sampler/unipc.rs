//! Wan's FlowUniPCMultistepScheduler (`wan/utils/fm_solvers_unipc.py`, itself diffusers'
//! UniPCMultistepScheduler for flow matching) with Wan's defaults: `solver_order=2`,
//! `predict_x0=True`, `solver_type='bh2'`, `lower_order_final=True`, corrector on every step,
//! final sigma 0. The recurrence is `../shared/docs/wan-architecture.md` §4.5.
//!
//! Scalar coefficients (λ, h, φ, B, the corrector's 2×2 solve) are computed in f32 from the f32
//! sigmas, as upstream computes them on 0-dim f32 tensors; the elementwise combinations (the x0
//! prediction, the corrector and the predictor, fused in [`unipc_step`]: one pass over the
//! latent) follow upstream's operation order in f64.
//!
//! Upstream finds its first step index by looking the first timestep up and starts at index 1
//! when that integer timestep occurs twice (only with very many steps or a very high shift);
//! this solver always starts at step 0.

use super::kernels::check_step;
use super::{Schedule, Solver};
use crate::error::Result;
use crate::tensor::ops::sampler::{
    unipc_step, UniPcCorrector, UniPcHistory, UniPcPredictor, UniPcSecondOrder, UniPcStep,
};
use crate::tensor::Tensor;

/// `λ(σ) = ln(1−σ) − ln σ` in f32 (`+∞` at σ = 0, `−∞` at σ = 1).
pub(super) fn lambda(sigma: f32) -> f32 {
    (1.0 - sigma).ln() - sigma.ln()
}

/// The UniPC solver state: the last two x0 predictions and the sample the last predictor
/// started from.
#[derive(Debug, Clone)]
pub struct UniPc {
    schedule: Schedule,
    step: usize,
    len: Option<usize>,
    /// x0 prediction of step `i − 1`.
    m_prev: Option<Tensor>,
    /// x0 prediction of step `i − 2`.
    m_prev2: Option<Tensor>,
    /// The (corrected) sample at step `i − 1`, from which the last predictor stepped.
    last_sample: Option<Tensor>,
    /// The order the last predictor used (the corrector of the next step uses the same).
    last_order: usize,
}

impl UniPc {
    /// A solver at step 0 of `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        UniPc {
            schedule,
            step: 0,
            len: None,
            m_prev: None,
            m_prev2: None,
            last_sample: None,
            last_order: 0,
        }
    }

    /// The x0 prediction of the last step taken (`None` before the first step).
    pub fn last_x0(&self) -> Option<&Tensor> {
        self.m_prev.as_ref()
    }

    fn sigma32(&self, i: usize) -> f32 {
        self.schedule.sigmas[i] as f32
    }

    /// UniC's coefficients: re-doing step `i − 1` from `last_sample` with the new x0
    /// prediction.
    fn corrector(&self) -> UniPcCorrector {
        let i = self.step;
        let (s_t, s_0) = (self.sigma32(i), self.sigma32(i - 1));
        let h = lambda(s_t) - lambda(s_0);
        let hh = -h;
        let phi1 = hh.exp_m1();
        let b_h = hh.exp_m1(); // bh2
        let second_order = (self.last_order != 1).then(|| {
            // Order 2: rho solves [[1, 1], [r, 1]]·rho = [b0, b1].
            let rk = (lambda(self.sigma32(i - 2)) - lambda(s_0)) / h;
            let k1 = phi1 / hh - 1.0;
            let b0 = k1 * 1.0 / b_h;
            let k2 = k1 / hh - 0.5;
            let b1 = k2 * 2.0 / b_h;
            let [rho0, rho1] = solve2_unit_rows(rk, b0, b1).map(|r| r as f64);
            UniPcSecondOrder {
                rho0,
                rho1,
                rk: rk as f64,
            }
        });
        UniPcCorrector {
            c_x: (s_t / s_0) as f64,
            c_m: ((1.0 - s_t) * phi1) as f64,
            c_d: ((1.0 - s_t) * b_h) as f64,
            second_order,
        }
    }

    /// UniP's coefficients: stepping the sample at σ_i to σ_{i+1} with `order`.
    fn predictor(&self, order: usize) -> UniPcPredictor {
        let i = self.step;
        let (s_t, s_0) = (self.sigma32(i + 1), self.sigma32(i));
        if s_t == 0.0 {
            // The limit of the update at σ = 0 (λ = +∞) is the x0 prediction itself.
            return UniPcPredictor::X0;
        }
        let h = lambda(s_t) - lambda(s_0);
        let phi1 = (-h).exp_m1();
        let b_h = phi1; // bh2
        let c_x = (s_t / s_0) as f64;
        let c_m = ((1.0 - s_t) * phi1) as f64;
        if order == 1 {
            return UniPcPredictor::First { c_x, c_m };
        }
        UniPcPredictor::Second {
            c_x,
            c_m,
            c_d: ((1.0 - s_t) * b_h) as f64,
            rk: ((lambda(self.sigma32(i - 1)) - lambda(s_0)) / h) as f64,
        }
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

impl Solver for UniPc {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step
    }

    fn step(&mut self, model_output: &Tensor, sample: &mut Tensor) -> Result<()> {
        let n = self.schedule.steps();
        check_step("unipc", &mut self.len, self.step, n, model_output, sample)?;
        let i = self.step;
        // Warm-up (step 0) and the lower-order final step are first order.
        let order = 2.min(n - i).min(i + 1);
        let history = match (&self.last_sample, &self.m_prev) {
            (Some(last_sample), Some(x0_prev)) if i > 0 => Some(UniPcHistory {
                last_sample,
                x0_prev,
                x0_prev2: self.m_prev2.as_ref(),
            }),
            _ => None,
        };
        let c = UniPcStep {
            sigma: self.sigma32(i) as f64,
            corrector: (i > 0).then(|| self.corrector()),
            predictor: self.predictor(order),
        };
        let out = unipc_step(sample, model_output, history, &c)?;
        *sample = out.sample;
        self.last_sample = Some(out.start);
        self.last_order = order;
        self.m_prev2 = self.m_prev.replace(out.x0);
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
        let mut s = UniPc::new(schedule.clone());
        let start: Vec<f64> = (0..3)
            .map(|k| (1.0 - schedule.sigmas[0]) * x0[k] + schedule.sigmas[0] * eps[k])
            .collect();
        let mut x = Tensor::from_slice(&start, [3]).unwrap();
        let v: Vec<f64> = (0..3).map(|k| eps[k] - x0[k]).collect();
        let v = Tensor::from_slice(&v, [3]).unwrap();
        while !s.is_done() {
            s.step(&v, &mut x).unwrap();
        }
        let got = x.as_slice::<f64>().unwrap();
        for k in 0..3 {
            assert!((got[k] - x0[k]).abs() < 1e-6, "{} vs {}", got[k], x0[k]);
        }
        assert!(
            s.step(&v, &mut x).is_err(),
            "stepping past the end is an error"
        );
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let zeros = |n: usize| Tensor::from_f32(vec![0.0; n], [n]).unwrap();
        let mut s = UniPc::new(Schedule::wan_unipc(3, 3.0).unwrap());
        let mut x = zeros(4);
        assert!(s.step(&zeros(3), &mut x).is_err());
        s.step(&zeros(4), &mut x).unwrap();
        let mut y = zeros(5);
        assert!(s.step(&zeros(5), &mut y).is_err());
    }
}
