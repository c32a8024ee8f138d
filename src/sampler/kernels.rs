//! Elementwise helpers shared by the solvers: length checks, buffer reuse and a parallel
//! per-element update evaluated in f64.

use rayon::prelude::*;

use super::Real;
use crate::error::{Error, Result};

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

/// `x[i] = f(i, x[i])` in place, evaluated in f64.
pub(crate) fn update<T: Real>(x: &mut [T], f: impl Fn(usize, f64) -> f64 + Sync) {
    if x.len() < PAR_MIN_LEN {
        x.iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = T::from_f64(f(i, o.to_f64())));
    } else {
        x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
            let base = c * CHUNK;
            chunk
                .iter_mut()
                .enumerate()
                .for_each(|(j, o)| *o = T::from_f64(f(base + j, o.to_f64())));
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
    model_output: usize,
    sample: usize,
) -> Result<()> {
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

/// Makes `buf` hold `len` elements, allocating only the first time.
pub(crate) fn ensure_len<T: Real>(buf: &mut Vec<T>, len: usize) {
    if buf.len() != len {
        buf.clear();
        buf.resize(len, T::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_and_serial_paths_see_the_right_indices() {
        for len in [10, PAR_MIN_LEN + CHUNK / 2 + 3] {
            let mut v = vec![0.0f32; len];
            fill(&mut v, |k| k as f64);
            assert!(
                v.iter().enumerate().all(|(k, &x)| x == k as f32),
                "fill, len {len}"
            );
            update(&mut v, |k, x| x + 2.0 * k as f64);
            assert!(
                v.iter().enumerate().all(|(k, &x)| x == 3.0 * k as f32),
                "update, len {len}"
            );
        }
    }

    #[test]
    fn step_checks() {
        let mut len = None;
        assert!(check_step("t", &mut len, 0, 2, 3, 3).is_ok());
        assert_eq!(len, Some(3));
        assert!(check_step("t", &mut len, 1, 2, 3, 4).is_err());
        assert!(check_step("t", &mut len, 1, 2, 2, 3).is_err());
        assert!(check_step("t", &mut len, 2, 2, 3, 3).is_err());
    }
}
