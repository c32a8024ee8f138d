//! The CPU arithmetic of the sampler ops ([`crate::tensor::ops::sampler`]) on host slices, and
//! the step checks the solvers share. Every update is evaluated per element in f64 and rounded to
//! the sample's type, in upstream's operation order; the CUDA kernels (`kernels/sampler.cu`)
//! repeat the same operations without contraction, so f32 latents get the same bits.

use rayon::prelude::*;

use super::Real;
use crate::error::{Error, Result};
use crate::tensor::ops::sampler::{DpmStep, UniPcPredictor, UniPcStep};
use crate::tensor::Tensor;

/// `(c_x·x − c_m·m)`, the first-order part every UniPC update shares.
fn unipc_base(c_x: f64, c_m: f64, x: f64, m: f64) -> f64 {
    c_x * x - c_m * m
}

/// The UniPC history a step reads: the previous start, the last two x0 predictions.
pub(crate) struct UniPcSlices<'a, T> {
    pub last_sample: &'a [T],
    pub x0_prev: &'a [T],
    pub x0_prev2: Option<&'a [T]>,
}

/// One UniPC step: returns `(sample, x0, start)`; `start` (the corrected sample the predictor
/// steps from) is `None` when there is no corrector (it is then `x` itself).
#[allow(clippy::type_complexity)]
pub(crate) fn unipc_step<T: Real>(
    x: &[T],
    v: &[T],
    history: Option<UniPcSlices<'_, T>>,
    c: &UniPcStep,
) -> Result<(Vec<T>, Vec<T>, Option<Vec<T>>)> {
    let n = x.len();
    let mut m = vec![T::default(); n];
    let sigma = c.sigma;
    fill(&mut m, |k| x[k].to_f64() - sigma * v[k].to_f64());
    let start = match (&c.corrector, &history) {
        (None, _) => None,
        (Some(cc), Some(h)) => {
            let mut out = vec![T::default(); n];
            let (xl, mp) = (h.last_sample, h.x0_prev);
            let m = &m;
            match (cc.second_order, h.x0_prev2) {
                (None, _) => fill(&mut out, |k| {
                    let (xl, mp, m) = (xl[k].to_f64(), mp[k].to_f64(), m[k].to_f64());
                    unipc_base(cc.c_x, cc.c_m, xl, mp) - cc.c_d * (0.5 * (m - mp))
                }),
                (Some(s), Some(mpp)) => fill(&mut out, |k| {
                    let (xl, mp, mpp, m) = (
                        xl[k].to_f64(),
                        mp[k].to_f64(),
                        mpp[k].to_f64(),
                        m[k].to_f64(),
                    );
                    let d1 = (mpp - mp) / s.rk;
                    unipc_base(cc.c_x, cc.c_m, xl, mp) - cc.c_d * (s.rho0 * d1 + s.rho1 * (m - mp))
                }),
                (Some(_), None) => {
                    return Err(missing("unipc_step", "the x0 prediction before last"))
                }
            }
            Some(out)
        }
        (Some(_), None) => return Err(missing("unipc_step", "the history the corrector reads")),
    };
    let xs: &[T] = start.as_deref().unwrap_or(x);
    let mut out = vec![T::default(); n];
    match c.predictor {
        UniPcPredictor::X0 => out.copy_from_slice(&m),
        UniPcPredictor::First { c_x, c_m } => fill(&mut out, |k| {
            unipc_base(c_x, c_m, xs[k].to_f64(), m[k].to_f64())
        }),
        UniPcPredictor::Second { c_x, c_m, c_d, rk } => {
            let mp = history
                .as_ref()
                .map(|h| h.x0_prev)
                .ok_or_else(|| missing("unipc_step", "the previous x0 prediction"))?;
            fill(&mut out, |k| {
                let (m, mp) = (m[k].to_f64(), mp[k].to_f64());
                unipc_base(c_x, c_m, xs[k].to_f64(), m) - c_d * (0.5 * ((mp - m) / rk))
            })
        }
    }
    Ok((out, m, start))
}

/// One DPM++ 2M step: returns `(sample, x0)`.
pub(crate) fn dpm_step<T: Real>(
    x: &[T],
    v: &[T],
    x0_prev: Option<&[T]>,
    c: &DpmStep,
) -> Result<(Vec<T>, Vec<T>)> {
    let n = x.len();
    let mut m = vec![T::default(); n];
    let sigma = c.sigma;
    fill(&mut m, |k| x[k].to_f64() - sigma * v[k].to_f64());
    let c_x = c.c_x;
    let sample_term = |x: f64| (c_x * x as f32) as f64;
    let c_m = c.c_m;
    let mut out = vec![T::default(); n];
    let ms = &m;
    match c.second {
        None => fill(&mut out, |k| {
            sample_term(x[k].to_f64()) - c_m * ms[k].to_f64()
        }),
        Some(s) => {
            let mp = x0_prev.ok_or_else(|| missing("dpm_step", "the previous x0 prediction"))?;
            fill(&mut out, |k| {
                let (m, mp) = (ms[k].to_f64(), mp[k].to_f64());
                sample_term(x[k].to_f64()) - c_m * m - s.c_half * (s.inv_r0 * (m - mp))
            })
        }
    }
    Ok((out, m))
}

/// One Euler step `x + dt·v`, the sample taken in f32.
pub(crate) fn euler_step<T: Real>(x: &[T], v: &[T], dt: f64) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    fill(&mut out, |k| {
        (x[k].to_f64() as f32 as f64) + dt * v[k].to_f64()
    });
    out
}

/// One LCM step: `x0 = x − σ·v`, then `(1 − next)·x0 + next·ε` when re-noising.
pub(crate) fn lcm_step<T: Real>(
    x: &[T],
    v: &[T],
    sigma: f64,
    renoise: Option<(f64, &[T])>,
) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    match renoise {
        None => fill(&mut out, |k| x[k].to_f64() - sigma * v[k].to_f64()),
        Some((next, eps)) => fill(&mut out, |k| {
            let x0 = x[k].to_f64() - sigma * v[k].to_f64();
            (1.0 - next) * x0 + next * eps[k].to_f64()
        }),
    }
    out
}

/// Classifier-free guidance `u + g·(c − u)`.
pub(crate) fn cfg<T: Real>(cond: &[T], uncond: &[T], scale: f64) -> Vec<T> {
    let mut out = vec![T::default(); cond.len()];
    fill(&mut out, |k| {
        let (c, u) = (cond[k].to_f64(), uncond[k].to_f64());
        u + scale * (c - u)
    });
    out
}

/// CFG-Zero*'s combination `s*·u + g·(c − s*·u)` with `s*` from
/// [`super::cfg_zero_star_scale`].
pub(crate) fn cfg_zero_star<T: Real>(cond: &[T], uncond: &[T], scale: f64) -> Vec<T> {
    let st = super::cfg_zero_star_scale(cond, uncond);
    let mut out = vec![T::default(); cond.len()];
    fill(&mut out, |k| {
        let (c, u) = (cond[k].to_f64(), uncond[k].to_f64());
        st * u + scale * (c - st * u)
    });
    out
}

/// The first value that is a NaN or an infinity, widened to f64.
pub(crate) fn first_non_finite<T: Real>(x: &[T]) -> Option<f64> {
    x.iter().map(|v| v.to_f64()).find(|v| !v.is_finite())
}

fn missing(op: &str, what: &str) -> Error {
    Error::InvalidArgument(format!("{op}: the step needs {what}"))
}

/// Latents at or above this many elements are updated on the rayon pool; below it the
/// scheduling overhead would dominate.
const PAR_MIN_LEN: usize = 1 << 15;
/// Elements per rayon task: large enough to amortise the task, small enough to balance.
const CHUNK: usize = 1 << 13;

/// `out[i] = f(i)` for every element, with `f` evaluated in f64 and rounded to `T`.
///
/// `f` may read other slices by index (the solvers' histories); it must not read `out`, which
/// callers pass its old values through explicitly when an update is in place.
pub(crate) fn fill<T: Real>(out: &mut [T], f: impl Fn(usize) -> f64 + Sync) {
    if out.len() < PAR_MIN_LEN {
        out.iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = T::from_f64(f(i)));
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let base = c * CHUNK;
                chunk
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, o)| *o = T::from_f64(f(base + j)));
            });
    }
}

/// Checks that a step's model output and sample have the solver's latent length, fixing that
/// length on the first step, and that the schedule is not exhausted.
pub(crate) fn check_step(
    op: &'static str,
    len: &mut Option<usize>,
    step: usize,
    steps: usize,
    model_output: &Tensor,
    sample: &Tensor,
) -> Result<()> {
    let (model_output, sample) = (model_output.elem_count(), sample.elem_count());
    if step >= steps {
        return Err(Error::InvalidArgument(format!(
            "{op}: all {steps} steps of the schedule have been taken"
        )));
    }
    let want = *len.get_or_insert(sample);
    if model_output != want || sample != want {
        return Err(Error::InvalidArgument(format!(
            "{op}: model output has {model_output} elements and sample {sample}; the solver expects {want}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_and_serial_fills_see_the_right_indices() {
        for len in [10, PAR_MIN_LEN + CHUNK / 2 + 3] {
            let mut v = vec![0.0f32; len];
            fill(&mut v, |k| k as f64);
            assert!(
                v.iter().enumerate().all(|(k, &x)| x == k as f32),
                "fill, len {len}"
            );
        }
    }

    #[test]
    fn step_checks() {
        let t = |n: usize| Tensor::from_f32(vec![0.0; n], [n]).unwrap();
        let mut len = None;
        assert!(check_step("t", &mut len, 0, 2, &t(3), &t(3)).is_ok());
        assert_eq!(len, Some(3));
        assert!(check_step("t", &mut len, 1, 2, &t(3), &t(4)).is_err());
        assert!(check_step("t", &mut len, 1, 2, &t(2), &t(3)).is_err());
        assert!(check_step("t", &mut len, 2, 2, &t(3), &t(3)).is_err());
    }
}
