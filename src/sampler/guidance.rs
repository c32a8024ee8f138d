//! Combining the conditional and unconditional model passes into one velocity
//! (`../shared/docs/lora-guidance-training.md` §3.1-3.2).

use rayon::prelude::*;

use super::Real;
use crate::error::{Error, Result};
use crate::tensor::ops::sampler::{cfg, cfg_zero_star, zeros_like};
use crate::tensor::Tensor;

/// How the conditional velocity `v_c` and the unconditional one `v_u` are combined at a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Guidance {
    /// Classifier-free guidance `v = v_u + g·(v_c − v_u)`; with `g = 1` the unconditional pass is
    /// skipped and `v = v_c`.
    Cfg {
        /// The guidance scale `g` (Wan's default 5.0).
        scale: f64,
    },
    /// CFG-Zero*: `s* = ⟨v_c, v_u⟩ / (‖v_u‖² + 1e-8)` over the whole sample,
    /// `v = s*·v_u + g·(v_c − s*·v_u)`; and zero-init: `v = 0` on every step `i ≤ zero_steps`
    /// (so 0 zeroes step 0 only; `None` disables zero-init).
    CfgZeroStar {
        /// The guidance scale `g`.
        scale: f64,
        /// The last zero-init step index, if any (Wan T2V uses 1).
        zero_steps: Option<usize>,
    },
}

impl Guidance {
    /// Checks the scale is finite.
    pub fn validate(&self) -> Result<()> {
        let (Guidance::Cfg { scale } | Guidance::CfgZeroStar { scale, .. }) = *self;
        if !scale.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "guidance scale must be finite, got {scale}"
            )));
        }
        Ok(())
    }

    /// True when step `step`'s velocity is zero whatever the model says, so no pass is needed.
    pub fn skips_model(&self, step: usize) -> bool {
        matches!(*self, Guidance::CfgZeroStar { zero_steps: Some(z), .. } if step <= z)
    }

    /// True when step `step` needs the unconditional pass.
    pub fn needs_uncond(&self, step: usize) -> bool {
        match *self {
            Guidance::Cfg { scale } => scale != 1.0,
            Guidance::CfgZeroStar { .. } => !self.skips_model(step),
        }
    }

    /// The guided velocity of step `step` (one fused op on the velocities' device): zeros
    /// shaped as `cond` on steps where [`Guidance::skips_model`] holds, `cond` itself where
    /// [`Guidance::needs_uncond`] is false; `uncond` may be `None` exactly then.
    pub fn combine(&self, step: usize, cond: &Tensor, uncond: Option<&Tensor>) -> Result<Tensor> {
        self.validate()?;
        if self.skips_model(step) {
            return zeros_like(cond);
        }
        let uncond = match (uncond, self.needs_uncond(step)) {
            (_, false) => return Ok(cond.clone()),
            (Some(u), true) => u,
            (None, true) => {
                return Err(Error::InvalidArgument(format!(
                    "guidance {self:?} needs the unconditional velocity at step {step}"
                )))
            }
        };
        match *self {
            Guidance::Cfg { scale } => cfg(cond, uncond, scale),
            Guidance::CfgZeroStar { scale, .. } => cfg_zero_star(cond, uncond, scale),
        }
    }
}

/// Elements per partial sum of [`cfg_zero_star_scale`]: a fixed size, so that the summation
/// order does not depend on the thread count (`kernels/sampler.cu` uses the same chunks).
pub(crate) const PARTIAL: usize = 1 << 14;

/// CFG-Zero*'s optimised scale `s* = ⟨v_c, v_u⟩ / (‖v_u‖² + 1e-8)`, accumulated in f64.
///
/// Deterministic: the sums run over fixed chunks of `PARTIAL` elements, each summed serially
/// (in parallel across chunks), and the partial sums are added in chunk order, so the result
/// has the same bits for every thread count and every schedule of rayon's work stealing.
pub fn cfg_zero_star_scale<T: Real>(cond: &[T], uncond: &[T]) -> f64 {
    let partials: Vec<(f64, f64)> = cond
        .par_chunks(PARTIAL)
        .zip(uncond.par_chunks(PARTIAL))
        .map(|(c, u)| {
            c.iter().zip(u).fold((0.0, 0.0), |(dot, norm), (c, u)| {
                let (c, u) = (c.to_f64(), u.to_f64());
                (dot + c * u, norm + u * u)
            })
        })
        .collect();
    let (dot, norm) = partials
        .iter()
        .fold((0.0, 0.0), |(d, n), (pd, pn)| (d + pd, n + pn));
    dot / (norm + 1e-8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v, [v.len()]).unwrap()
    }

    fn f64s(t: &Tensor) -> Vec<f64> {
        t.as_slice::<f64>().unwrap().into_owned()
    }

    #[test]
    fn cfg_combines_and_skips_uncond_at_scale_one() {
        let g = Guidance::Cfg { scale: 5.0 };
        let (c, u) = (t(&[1.0, 2.0]), t(&[0.5, 1.0]));
        assert_eq!(f64s(&g.combine(0, &c, Some(&u)).unwrap()), [3.0, 6.0]);
        let g1 = Guidance::Cfg { scale: 1.0 };
        assert!(!g1.needs_uncond(0));
        assert_eq!(f64s(&g1.combine(0, &c, None).unwrap()), [1.0, 2.0]);
        assert!(g.combine(0, &c, None).is_err());
        assert!(
            g.combine(0, &c, Some(&t(&[1.0]))).is_err(),
            "lengths differ"
        );
        assert!(Guidance::Cfg { scale: f64::NAN }
            .combine(0, &c, None)
            .is_err());
    }

    #[test]
    fn cfg_zero_star_zero_init_and_scale() {
        let g = Guidance::CfgZeroStar {
            scale: 3.0,
            zero_steps: Some(1),
        };
        assert!(g.skips_model(0) && g.skips_model(1) && !g.skips_model(2));
        let (c, u) = ([1.0f64, 2.0], [2.0f64, 0.0]);
        assert_eq!(f64s(&g.combine(1, &t(&c), None).unwrap()), [0.0, 0.0]);
        let st = cfg_zero_star_scale(&c, &u);
        assert!((st - 2.0 / (4.0 + 1e-8)).abs() < 1e-15);
        let out = f64s(&g.combine(2, &t(&c), Some(&t(&u))).unwrap());
        for k in 0..2 {
            let want = st * u[k] + 3.0 * (c[k] - st * u[k]);
            assert!((out[k] - want).abs() < 1e-12);
        }
    }

    #[test]
    fn cfg_zero_star_scale_has_the_same_bits_for_every_thread_count() {
        // Values over 12 orders of magnitude, so that any change of summation order shows.
        let n = 40 * PARTIAL + 123;
        let wide = |seed: u32| -> Vec<f32> {
            let v = crate::tensor::random::values(n, seed);
            v.iter()
                .enumerate()
                .map(|(i, x)| x * 10f32.powi((i % 13) as i32 - 6))
                .collect()
        };
        let (c, u) = (wide(1), wide(2));
        // The documented order: each chunk serially, then the chunks in order.
        let (mut dot, mut norm) = (0.0f64, 0.0f64);
        for (c, u) in c.chunks(PARTIAL).zip(u.chunks(PARTIAL)) {
            let (mut d, mut m) = (0.0f64, 0.0f64);
            for (&c, &u) in c.iter().zip(u) {
                d += c as f64 * u as f64;
                m += u as f64 * u as f64;
            }
            dot += d;
            norm += m;
        }
        let want = dot / (norm + 1e-8);
        for threads in [1, 2, 3, 4, 7] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for _ in 0..3 {
                let got = pool.install(|| cfg_zero_star_scale(&c, &u));
                assert_eq!(got.to_bits(), want.to_bits(), "{threads} threads");
            }
        }
    }
}
