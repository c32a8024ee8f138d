//! The flow-matching objective (lora-guidance-training.md §4.1) and musubi-tuner's timestep
//! sampling (§4.2).

use super::rng::TrainRng;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `--timestep_sampling`: how the noise level of a training sample is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestepSampling {
    /// musubi's default: `u ~ U(0,1)`, `idx = floor(u·(t_max − t_min) + t_min)`, timestep
    /// `1000 − idx`, `σ = timestep / 1000` (the shift is not applied).
    #[default]
    Sigma,
    /// `t = u`.
    Uniform,
    /// `t = sigmoid(sigmoid_scale · n)`, `n ~ N(0, 1)`.
    Sigmoid,
    /// `t = shift(sigmoid(sigmoid_scale · n); discrete_flow_shift)`.
    Shift,
}

impl TimestepSampling {
    /// The mode of musubi's flag value (`sigma`, `uniform`, `sigmoid`, `shift`).
    pub fn parse(s: &str) -> Result<TimestepSampling> {
        Ok(match s {
            "sigma" => TimestepSampling::Sigma,
            "uniform" => TimestepSampling::Uniform,
            "sigmoid" => TimestepSampling::Sigmoid,
            "shift" => TimestepSampling::Shift,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "timestep_sampling `{other}`: expected sigma, uniform, sigmoid or shift"
                )))
            }
        })
    }
}

/// The timestep flags: `--timestep_sampling`, `--sigmoid_scale`, `--discrete_flow_shift`,
/// `--min_timestep`, `--max_timestep` (musubi's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timesteps {
    /// The sampling mode.
    pub sampling: TimestepSampling,
    /// `ss` of the sigmoid and shift modes (1.0).
    pub sigmoid_scale: f64,
    /// `s` of the shift mode, `s·t / (1 + (s − 1)·t)` (1.0).
    pub discrete_flow_shift: f64,
    /// The smallest timestep, in `[0, 1000]` (0).
    pub min_timestep: f64,
    /// The largest timestep, in `[0, 1000]` (1000).
    pub max_timestep: f64,
}

impl Default for Timesteps {
    fn default() -> Timesteps {
        Timesteps {
            sampling: TimestepSampling::Sigma,
            sigmoid_scale: 1.0,
            discrete_flow_shift: 1.0,
            min_timestep: 0.0,
            max_timestep: 1000.0,
        }
    }
}

/// One drawn noise level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseLevel {
    /// `σ` of `x_t = (1 − σ)·x0 + σ·noise`.
    pub sigma: f32,
    /// The DiT's timestep input: `σ·1000` in the sigma mode, `σ·1000 + 1` otherwise (as musubi).
    pub timestep: f32,
}

impl Timesteps {
    /// Rejects out-of-range flags.
    pub fn validate(&self) -> Result<()> {
        let range = 0.0 <= self.min_timestep
            && self.min_timestep < self.max_timestep
            && self.max_timestep <= 1000.0;
        if !(range && self.sigmoid_scale.is_finite() && self.discrete_flow_shift > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "timesteps {self:?}: need 0 <= min_timestep < max_timestep <= 1000, a finite sigmoid_scale and discrete_flow_shift > 0"
            )));
        }
        Ok(())
    }

    /// Draws one noise level from `rng`.
    pub fn sample(&self, rng: &mut TrainRng) -> NoiseLevel {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let t = match self.sampling {
            TimestepSampling::Sigma => {
                let u = rng.uniform();
                let idx = (u * (self.max_timestep - self.min_timestep) + self.min_timestep).floor();
                let timestep = 1000.0 - idx;
                return NoiseLevel {
                    sigma: (timestep / 1000.0) as f32,
                    timestep: timestep as f32,
                };
            }
            TimestepSampling::Uniform => rng.uniform(),
            TimestepSampling::Sigmoid => sigmoid(self.sigmoid_scale * rng.normal()),
            TimestepSampling::Shift => {
                let (t, s) = (
                    sigmoid(self.sigmoid_scale * rng.normal()),
                    self.discrete_flow_shift,
                );
                s * t / (1.0 + (s - 1.0) * t)
            }
        };
        let (lo, hi) = (self.min_timestep / 1000.0, self.max_timestep / 1000.0);
        let t = t * (hi - lo) + lo;
        NoiseLevel {
            sigma: t as f32,
            timestep: (t * 1000.0 + 1.0) as f32,
        }
    }
}

/// The flow-matching input and target of a batch `x0 [B, ..]` with `noise` of the same shape
/// and one `σ` per sample: `x_t = (1 − σ)·x0 + σ·noise` and `target = noise − x0`.
pub fn noisy_input(x0: &Tensor, noise: &Tensor, sigmas: &[f32]) -> Result<(Tensor, Tensor)> {
    let d = x0.dims();
    if noise.dims() != d || d.first() != Some(&sigmas.len()) {
        return Err(Error::ShapeMismatch {
            op: "noisy_input",
            expected: format!(
                "noise like x0 {d:?} and one sigma per sample ({})",
                sigmas.len()
            ),
            got: noise.shape().clone(),
        });
    }
    let mut per = vec![1usize; d.len()];
    per[0] = sigmas.len();
    let s = Tensor::from_f32(sigmas.to_vec(), per.as_slice())?;
    let keep = Tensor::from_f32(sigmas.iter().map(|s| 1.0 - s).collect(), per.as_slice())?;
    let x_t = x0.mul(&keep)?.add(&noise.mul(&s)?)?;
    Ok((x_t, noise.sub(x0)?))
}

/// `mean((pred − target)²)` (summed in f64) and its gradient `2·(pred − target)/n`.
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<(f64, Tensor)> {
    if pred.dims() != target.dims() {
        return Err(Error::ShapeMismatch {
            op: "mse",
            expected: format!("target like the prediction {:?}", pred.dims()),
            got: target.shape().clone(),
        });
    }
    let diff = pred.sub(target)?;
    let v = diff.f32_data()?;
    let n = v.len().max(1) as f64;
    let loss = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / n;
    Ok((loss, diff.affine((2.0 / n) as f32, 0.0)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_mode_draws_whole_timesteps_and_the_others_follow_their_formulas() {
        let mut rng = TrainRng::new(3);
        let ts = Timesteps::default();
        for _ in 0..200 {
            let n = ts.sample(&mut rng);
            assert!(n.timestep >= 1.0 && n.timestep <= 1000.0 && n.timestep.fract() == 0.0);
            assert_eq!(n.sigma, n.timestep / 1000.0);
        }
        let (mut a, mut b) = (TrainRng::new(9), TrainRng::new(9));
        let shift = Timesteps {
            sampling: TimestepSampling::Shift,
            discrete_flow_shift: 3.0,
            ..ts
        };
        let n = shift.sample(&mut a);
        let t = 1.0 / (1.0 + (-b.normal()).exp());
        let want = 3.0 * t / (1.0 + 2.0 * t);
        assert!((n.sigma as f64 - want).abs() < 1e-6);
        assert!((n.timestep as f64 - (want * 1000.0 + 1.0)).abs() < 1e-3);
        let narrow = Timesteps {
            sampling: TimestepSampling::Uniform,
            min_timestep: 200.0,
            max_timestep: 300.0,
            ..ts
        };
        for _ in 0..100 {
            let s = narrow.sample(&mut rng).sigma;
            assert!((0.2..=0.3).contains(&s));
        }
        assert!(Timesteps {
            max_timestep: 1001.0,
            ..ts
        }
        .validate()
        .is_err());
        assert!(TimestepSampling::parse("logsnr").is_err());
    }

    #[test]
    fn flow_matching_input_target_and_mse() {
        let x0 = Tensor::from_f32(vec![1.0, 2.0, 3.0, 4.0], [2, 2]).unwrap();
        let noise = Tensor::from_f32(vec![0.0, 1.0, -1.0, 0.0], [2, 2]).unwrap();
        let (x_t, target) = noisy_input(&x0, &noise, &[0.25, 0.5]).unwrap();
        assert_eq!(x_t.to_f32_vec().unwrap(), [0.75, 1.75, 1.0, 2.0]);
        assert_eq!(target.to_f32_vec().unwrap(), [-1.0, -1.0, -4.0, -4.0]);
        let (loss, grad) = mse(&x_t, &target).unwrap();
        assert_eq!(
            loss,
            (1.75f64.powi(2) + 2.75f64.powi(2) + 25.0 + 36.0) / 4.0
        );
        assert_eq!(grad.to_f32_vec().unwrap(), [0.875, 1.375, 2.5, 3.0]);
        assert!(noisy_input(&x0, &noise, &[0.5]).is_err());
    }
}
