//! TeaCache for Wan (`../shared/docs/lora-guidance-training.md` §3.6, ali-vilab's
//! `TeaCache4Wan2.1`): skip every DiT block on a step whose timestep-embedding input barely moved
//! since the last computed step, adding the blocks' residual cached then instead.
//!
//! Per pass (conditional and unconditional keep separate state), with `inp` the indicator the
//! model returns (the time embedding `e`, or `e0` in "ret steps" mode):
//! `d = mean|inp − inp_prev| / mean|inp_prev|`, `acc += poly(d)` (per-model coefficients,
//! highest degree first); if `acc < threshold` the blocks are skipped and the cached residual
//! reused, else they run, the residual is cached and `acc = 0`. `inp_prev` is updated on every
//! call. Forced steps always compute (and reset `acc`): the first step (first 5 in "ret steps"
//! mode) and the last step (not in "ret steps" mode), and any pass with no residual cached yet.
//!
//! Off by default. Useless at 4-8 distilled steps: with the first and last steps forced, only a
//! few steps remain; between timesteps that far apart the indicator changes a lot, so little or
//! nothing is skipped, and each skipped distilled step would cost quality. Made for 30-50 step
//! sampling.
//!
//! The driver reads the indicator by asking for a pass with the cached residual (no blocks) and
//! keeps that output when the indicator allows reuse; otherwise it runs the blocks. The
//! indicator stays where the model computed it: on a CUDA device the change `d` is reduced there
//! and one scalar is read back per pass and step.

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The Wan models TeaCache has fitted coefficients for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeaCacheModel {
    /// Wan2.1 T2V 1.3B (suggested thresholds 0.05-0.08).
    T2v1_3B,
    /// Wan2.1 T2V 14B (suggested thresholds 0.14-0.2).
    T2v14B,
    /// Wan2.1 I2V 14B at 480p (suggested thresholds 0.13-0.26).
    I2v14B480p,
    /// Wan2.1 I2V 14B at 720p (suggested thresholds 0.18-0.3).
    I2v14B720p,
}

impl TeaCacheModel {
    /// TeaCache4Wan2.1's rescaling polynomial, highest degree first: for the time-embedding
    /// indicator (`ret_steps = false`) or the time-projection one (`ret_steps = true`).
    pub fn coefficients(self, ret_steps: bool) -> [f64; 5] {
        use TeaCacheModel::*;
        match (self, ret_steps) {
            (T2v1_3B, false) => [
                2.39676752e+03,
                -1.31110545e+03,
                2.01331979e+02,
                -8.29855975e+00,
                1.37887774e-01,
            ],
            (T2v1_3B, true) => [
                -5.21862437e+04,
                9.23041404e+03,
                -5.28275948e+02,
                1.36987616e+01,
                -4.99875664e-02,
            ],
            (T2v14B, false) => [
                -5784.54975374,
                5449.50911966,
                -1811.16591783,
                256.27178429,
                -13.02252404,
            ],
            (T2v14B, true) => [
                -3.03318725e+05,
                4.90537029e+04,
                -2.65530556e+03,
                5.87365115e+01,
                -3.15583525e-01,
            ],
            (I2v14B480p, false) => [
                -3.02331670e+02,
                2.23948934e+02,
                -5.25463970e+01,
                5.87348440e+00,
                -2.01973289e-01,
            ],
            (I2v14B480p, true) => [
                2.57151496e+05,
                -3.54229917e+04,
                1.40286849e+03,
                -1.35890334e+01,
                1.32517977e-01,
            ],
            (I2v14B720p, false) => [
                -114.36346466,
                65.26524496,
                -18.82220707,
                4.91518089,
                -0.23412683,
            ],
            (I2v14B720p, true) => [
                8.10705460e+03,
                2.13393892e+03,
                -3.72934672e+02,
                1.66203073e+01,
                -4.17769401e-02,
            ],
        }
    }
}

/// Which model tensor is the TeaCache indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeaCacheInput {
    /// `e = time_embedding(sinusoid(t))` (the default mode).
    TimeEmbedding,
    /// `e0 = time_projection(e)` ("ret steps" mode).
    TimeProjection,
}

/// TeaCache settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TeaCache {
    /// The rescaling polynomial of the relative L1 change, highest degree first.
    pub coefficients: [f64; 5],
    /// Blocks are skipped while the accumulated rescaled change stays below this.
    pub threshold: f64,
    /// The indicator the model must return.
    pub input: TeaCacheInput,
    /// The number of leading steps always computed (at least 1: the first step has no cache).
    pub forced_first: usize,
    /// Whether the last step is always computed.
    pub force_last: bool,
}

impl TeaCache {
    /// TeaCache4Wan2.1's default mode: the time-embedding indicator, first and last steps forced.
    pub fn wan(model: TeaCacheModel, threshold: f64) -> TeaCache {
        TeaCache {
            coefficients: model.coefficients(false),
            threshold,
            input: TeaCacheInput::TimeEmbedding,
            forced_first: 1,
            force_last: true,
        }
    }

    /// TeaCache4Wan2.1's "ret steps" mode: the time-projection indicator, the first 5 steps
    /// forced, the last one not.
    pub fn wan_ret_steps(model: TeaCacheModel, threshold: f64) -> TeaCache {
        TeaCache {
            coefficients: model.coefficients(true),
            threshold,
            input: TeaCacheInput::TimeProjection,
            forced_first: 5,
            force_last: false,
        }
    }

    /// Checks the threshold (finite, ≥ 0), the coefficients (finite) and `forced_first ≥ 1`.
    pub fn validate(&self) -> Result<()> {
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "teacache threshold must be finite and >= 0, got {}",
                self.threshold
            )));
        }
        if !self.coefficients.iter().all(|c| c.is_finite()) {
            return Err(Error::InvalidArgument(
                "teacache coefficients must be finite".into(),
            ));
        }
        if self.forced_first == 0 {
            return Err(Error::InvalidArgument(
                "teacache: the first step must be computed (forced_first >= 1)".into(),
            ));
        }
        Ok(())
    }

    /// Whether step `step` of `steps` always runs the blocks.
    pub fn forced(&self, step: usize, steps: usize) -> bool {
        step < self.forced_first || (self.force_last && step + 1 == steps)
    }

    /// The rescaled change `poly(d)`.
    pub fn rescale(&self, d: f64) -> f64 {
        self.coefficients.iter().fold(0.0, |acc, &c| acc * d + c)
    }
}

/// One pass's TeaCache state.
#[derive(Debug, Clone, Default)]
pub struct TeaCacheState {
    /// The accumulated rescaled change since the last computed step.
    pub accumulated: f64,
    /// The indicator of the last call (on the model's device).
    pub previous: Option<Tensor>,
    /// Whether the model holds a residual for this pass.
    pub has_residual: bool,
    /// Steps on which this pass ran its blocks.
    pub computed: usize,
    /// Steps on which this pass reused the cached residual.
    pub reused: usize,
}

impl TeaCacheState {
    /// Whether this pass must run its blocks whatever the indicator says.
    pub(crate) fn must_compute(&self, cfg: &TeaCache, step: usize, steps: usize) -> bool {
        !self.has_residual || self.previous.is_none() || cfg.forced(step, steps)
    }

    /// Takes this step's indicator and decides: `true` to reuse the residual. A forced step
    /// always computes. Does not count the step (see [`TeaCacheState::record`]).
    pub(crate) fn observe(&mut self, cfg: &TeaCache, signal: Tensor, forced: bool) -> Result<bool> {
        let reuse = match (&self.previous, forced) {
            (Some(prev), false) => {
                if prev.elem_count() != signal.elem_count() {
                    return Err(Error::InvalidArgument(format!(
                        "teacache: the indicator has {} elements, before {}",
                        signal.elem_count(),
                        prev.elem_count()
                    )));
                }
                self.accumulated += cfg.rescale(rel_l1(&signal, prev)?);
                // NaN (a zero or broken indicator) never reuses.
                self.accumulated < cfg.threshold
            }
            _ => false,
        };
        if !reuse {
            self.accumulated = 0.0;
        }
        self.previous = Some(signal);
        Ok(reuse)
    }

    /// Counts a step of this pass: reused, or computed with its residual now cached.
    pub(crate) fn record(&mut self, reused: bool) {
        if reused {
            self.reused += 1;
        } else {
            self.computed += 1;
            self.has_residual = true;
        }
    }
}

/// `mean|a − b| / mean|b|` of two indicators of as many elements: on the host accumulated in
/// f64; on a device reduced there in f32, the one quotient read back.
fn rel_l1(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.device() == Device::Cpu {
        let (a, b) = (a.to_f32_vec()?, b.to_f32_vec()?);
        let (num, den) = a.iter().zip(&b).fold((0.0f64, 0.0f64), |(n, d), (&a, &b)| {
            (n + (a as f64 - b as f64).abs(), d + (b as f64).abs())
        });
        return Ok(num / den);
    }
    let n = [a.elem_count()];
    let b = b.reshape(n)?;
    let num = a.reshape(n)?.sub(&b)?.abs()?.sum_keepdim(0)?;
    let quotient = num.div(&b.abs()?.sum_keepdim(0)?)?;
    Ok(f64::from(quotient.to_device(Device::Cpu)?.to_f32_vec()?[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_is_highest_degree_first() {
        let mut t = TeaCache::wan(TeaCacheModel::T2v1_3B, 0.05);
        t.coefficients = [1.0, 0.0, 0.0, 2.0, 3.0];
        assert_eq!(t.rescale(2.0), 16.0 + 4.0 + 3.0);
    }

    #[test]
    fn accumulates_until_the_threshold() {
        let mut t = TeaCache::wan(TeaCacheModel::T2v1_3B, 0.25);
        t.coefficients = [0.0, 0.0, 0.0, 1.0, 0.0]; // poly(d) = d
        let mut s = TeaCacheState::default();
        let v2 = |v: f32| Tensor::from_f32(vec![v, v], [2]).unwrap();
        assert!(!s.observe(&t, v2(1.0), true).unwrap());
        // d = 0.1 each time: 0.1, 0.2 reuse; 0.3 computes and resets.
        let mut v = 1.0f32;
        let mut got = vec![];
        for _ in 0..4 {
            v *= 1.1;
            got.push(s.observe(&t, v2(v), false).unwrap());
        }
        assert_eq!(got, [true, true, false, true]);
        let one = Tensor::from_f32(vec![1.0], [1]).unwrap();
        assert!(s.observe(&t, one, false).is_err());
    }

    #[test]
    fn forced_steps() {
        let t = TeaCache::wan(TeaCacheModel::T2v14B, 0.2);
        let forced: Vec<bool> = (0..5).map(|i| t.forced(i, 5)).collect();
        assert_eq!(forced, [true, false, false, false, true]);
        let r = TeaCache::wan_ret_steps(TeaCacheModel::T2v14B, 0.2);
        assert!((0..5).all(|i| r.forced(i, 8)) && !r.forced(5, 8) && !r.forced(7, 8));
        assert!(TeaCache {
            threshold: f64::NAN,
            ..t.clone()
        }
        .validate()
        .is_err());
        assert!(TeaCache {
            forced_first: 0,
            ..t
        }
        .validate()
        .is_err());
    }
}
