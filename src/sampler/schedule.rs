//! Flow-matching schedules: the sigma grid a solver walks and the timesteps the model is called
//! with, built exactly as the upstream schedulers build them (their rounding included, since a
//! sampler reference is only reproducible on the same grid).

use crate::error::{Error, Result};

/// The number of training timesteps of every Wan model; `t = 1000·σ`.
const TRAIN_STEPS: f64 = 1000.0;

/// A sampling schedule: `sigmas[i]` is the noise level of the sample at step `i`, and
/// `timesteps[i]` the timestep the model is given at step `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// `N` model timesteps, one per step (upstream truncates them to integers for some solvers).
    pub timesteps: Vec<f64>,
    /// `N + 1` sigmas, strictly decreasing, ending in 0.
    pub sigmas: Vec<f64>,
}

/// Flow-matching time shift: `σ' = shift·σ / (1 + (shift − 1)·σ)`.
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// The same shift in f32, with the operations in upstream's (torch/numpy f32) order.
fn shift_sigma_f32(sigma: f32, shift: f32) -> f32 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// numpy's `linspace(start, stop, num)` (endpoint included), value for value:
/// `start + i·step` with `step = (stop − start)/(num − 1)`, the last element exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

pub(crate) fn check_steps(steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::InvalidArgument(
            "a schedule needs at least one step".into(),
        ));
    }
    Ok(())
}

fn check_shift(shift: f64) -> Result<()> {
    if !(shift.is_finite() && shift > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "shift must be finite and positive, got {shift}"
        )));
    }
    Ok(())
}

impl Schedule {
    /// A schedule from its parts, validated: `sigmas.len() == timesteps.len() + 1 ≥ 2`, sigmas
    /// finite, in `[0, 1]`, strictly decreasing and ending in 0, timesteps finite.
    pub fn new(timesteps: Vec<f64>, sigmas: Vec<f64>) -> Result<Schedule> {
        let bad = |what: String| Err(Error::InvalidArgument(format!("schedule: {what}")));
        if timesteps.is_empty() || sigmas.len() != timesteps.len() + 1 {
            return bad(format!(
                "{} timesteps and {} sigmas (need N >= 1 timesteps and N + 1 sigmas)",
                timesteps.len(),
                sigmas.len()
            ));
        }
        if let Some(s) = sigmas.iter().find(|s| !(0.0..=1.0).contains(*s)) {
            return bad(format!("sigma {s} outside [0, 1]"));
        }
        if let Some(w) = sigmas.windows(2).find(|w| w[1] >= w[0]) {
            return bad(format!(
                "sigmas must decrease strictly, got {} then {}",
                w[0], w[1]
            ));
        }
        if sigmas[sigmas.len() - 1] != 0.0 {
            return bad("the last sigma must be 0".into());
        }
        if let Some(t) = timesteps.iter().find(|t| !t.is_finite()) {
            return bad(format!("timestep {t} is not finite"));
        }
        Ok(Schedule { timesteps, sigmas })
    }

    /// The number of steps (model evaluations without guidance).
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// Wan's FlowUniPCMultistepScheduler grid (`set_timesteps(steps, shift)`):
    /// `σ = linspace(0.999, 0, N+1)[:N]` in f64 (0.999 as the f32 the scheduler stores), shifted;
    /// timesteps `int64(1000·σ)` (truncated); sigmas stored as f32, then 0.
    /// N = 50, shift 5: timesteps 999, 995, 991, …, 172, 92.
    pub fn wan_unipc(steps: usize, shift: f64) -> Result<Schedule> {
        check_steps(steps)?;
        check_shift(shift)?;
        let sigma_max = 0.999f32 as f64;
        let sig: Vec<f64> = linspace(sigma_max, 0.0, steps + 1)[..steps]
            .iter()
            .map(|&s| shift_sigma(s, shift))
            .collect();
        Self::truncated_f32(&sig)
    }

    /// Wan's DPM++ grid (`get_sampling_sigmas(steps, shift)` passed to
    /// FlowDPMSolverMultistepScheduler): `σ = linspace(1, 0, N+1)[:N]` shifted, timesteps
    /// `int64(1000·σ)` starting at 1000, sigmas stored as f32, then 0.
    pub fn wan_dpm(steps: usize, shift: f64) -> Result<Schedule> {
        check_steps(steps)?;
        check_shift(shift)?;
        let sig: Vec<f64> = linspace(1.0, 0.0, steps + 1)[..steps]
            .iter()
            .map(|&s| shift_sigma(s, shift))
            .collect();
        Self::truncated_f32(&sig)
    }

    /// Integer (truncated) timesteps and f32 sigmas from an f64 grid, as Wan's schedulers store them.
    fn truncated_f32(sig: &[f64]) -> Result<Schedule> {
        let timesteps = sig.iter().map(|s| (s * TRAIN_STEPS).trunc()).collect();
        let sigmas = sig.iter().map(|&s| s as f32 as f64).chain([0.0]).collect();
        Schedule::new(timesteps, sigmas)
    }

    /// diffusers' FlowMatchEulerDiscreteScheduler(shift) grid for `set_timesteps(steps)`: the
    /// scheduler's own (already shifted, f32) sigma range `[1, m]`, `m = shift(0.001)`, spaced
    /// linearly in f64 and shifted once more; sigmas stored as f32, timesteps `1000·σ` in f32.
    pub fn flow_match_euler(steps: usize, shift: f64) -> Result<Schedule> {
        check_steps(steps)?;
        check_shift(shift)?;
        let s32 = shift as f32;
        let sigma_max = shift_sigma_f32(1.0, s32) as f64;
        let sigma_min = shift_sigma_f32(1.0f32 / 1000.0, s32) as f64;
        let sig: Vec<f32> = linspace(sigma_max * TRAIN_STEPS, sigma_min * TRAIN_STEPS, steps)
            .iter()
            .map(|&t| shift_sigma(t / TRAIN_STEPS, shift) as f32)
            .collect();
        Self::new_f32(&sig)
    }

    /// An explicit sigma list (one per step, the final 0 appended), shifted as diffusers'
    /// FlowMatchEuler `set_timesteps(sigmas=…)` does: in f32, timesteps `1000·σ` in f32.
    /// The sigmas must lie in `(0, 1]` and decrease strictly.
    pub fn from_sigmas(sigmas: &[f64], shift: f64) -> Result<Schedule> {
        check_steps(sigmas.len())?;
        check_shift(shift)?;
        if let Some(s) = sigmas.iter().find(|s| !(**s > 0.0 && **s <= 1.0)) {
            return Err(Error::InvalidArgument(format!(
                "explicit sigma {s} outside (0, 1]"
            )));
        }
        let s32 = shift as f32;
        let sig: Vec<f32> = sigmas
            .iter()
            .map(|&s| shift_sigma_f32(s as f32, s32))
            .collect();
        Self::new_f32(&sig)
    }

    fn new_f32(sig: &[f32]) -> Result<Schedule> {
        let timesteps = sig
            .iter()
            .map(|&s| (s * TRAIN_STEPS as f32) as f64)
            .collect();
        let sigmas = sig.iter().map(|&s| s as f64).chain([0.0]).collect();
        Schedule::new(timesteps, sigmas)
    }

    /// A distilled `denoising_step_list` (lightx2v `WanStepDistillScheduler`): for each `d`,
    /// `σ = 1 − (1000 − d)/1000`, shifted; the model gets `t = 1000·σ'` (not truncated); sigmas
    /// in f64, then 0. `[1000, 750, 500, 250]` with shift 5 gives timesteps
    /// `[1000, 937.5, 833.33…, 625]`. Entries must lie in `(0, 1000]` and decrease strictly.
    pub fn distilled(step_list: &[f64], shift: f64) -> Result<Schedule> {
        check_steps(step_list.len())?;
        check_shift(shift)?;
        if let Some(d) = step_list
            .iter()
            .find(|d| !(**d > 0.0 && **d <= TRAIN_STEPS))
        {
            return Err(Error::InvalidArgument(format!(
                "denoising step {d} outside (0, 1000]"
            )));
        }
        let sig: Vec<f64> = step_list
            .iter()
            .map(|&d| shift_sigma(1.0 - (TRAIN_STEPS - d) / TRAIN_STEPS, shift))
            .collect();
        let timesteps = sig.iter().map(|s| s * TRAIN_STEPS).collect();
        Schedule::new(timesteps, sig.into_iter().chain([0.0]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[f64]) -> Vec<i64> {
        v.iter().map(|&t| t as i64).collect()
    }

    #[test]
    fn wan_unipc_matches_the_documented_grids() {
        let s = Schedule::wan_unipc(50, 5.0).unwrap();
        let t = ints(&s.timesteps);
        assert_eq!(&t[..6], &[999, 995, 991, 987, 982, 978]);
        assert_eq!(&t[47..], &[241, 172, 92]);
        assert_eq!(s.sigmas.len(), 51);
        assert!((s.sigmas[0] - 0.99980).abs() < 1e-5, "{}", s.sigmas[0]);
        assert!((s.sigmas[1] - 0.995732).abs() < 1e-6);
        assert!((s.sigmas[48] - 0.172265).abs() < 1e-6);
        assert!((s.sigmas[49] - 0.092507).abs() < 1e-6);
        assert_eq!(s.sigmas[50], 0.0);
        // Sigmas are the f32 values the scheduler stores.
        assert!(s.sigmas.iter().all(|&x| x as f32 as f64 == x));

        let t3 = ints(&Schedule::wan_unipc(50, 3.0).unwrap().timesteps);
        assert_eq!(
            (&t3[..4], &t3[47..]),
            (&[999, 992, 985, 978][..], &[160, 111, 57][..])
        );
        let t8 = ints(&Schedule::wan_unipc(50, 8.0).unwrap().timesteps);
        assert_eq!(
            (&t8[..3], &t8[47..]),
            (&[999, 997, 994][..], &[337, 249, 140][..])
        );
    }

    #[test]
    fn wan_dpm_starts_at_sigma_one() {
        let s = Schedule::wan_dpm(50, 5.0).unwrap();
        let t = ints(&s.timesteps);
        assert_eq!(&t[..3], &[1000, 995, 991]);
        assert_eq!(t[49], 92);
        assert_eq!(s.sigmas[0], 1.0);
        assert_eq!(s.sigmas[50], 0.0);
    }

    #[test]
    fn flow_match_euler_grid() {
        // diffusers: linspace(1000, 1000·m, N)/1000 shifted again, m = shift(0.001).
        let s = Schedule::flow_match_euler(10, 5.0).unwrap();
        assert_eq!(s.sigmas[0], 1.0);
        assert_eq!(s.timesteps[0], 1000.0);
        let m = shift_sigma(0.001, 5.0);
        let last = shift_sigma(m, 5.0);
        assert!(
            (s.sigmas[9] - last).abs() < 1e-7,
            "{} vs {last}",
            s.sigmas[9]
        );
        assert_eq!(s.sigmas[10], 0.0);
    }

    #[test]
    fn distilled_step_list() {
        let s = Schedule::distilled(&[1000.0, 750.0, 500.0, 250.0], 5.0).unwrap();
        let want = [1000.0, 937.5, 2500.0 / 3.0, 625.0];
        for (t, w) in s.timesteps.iter().zip(want) {
            assert!((t - w).abs() < 1e-9, "{t} vs {w}");
        }
        let s8 = Schedule::distilled(&[1000.0, 750.0, 500.0, 250.0], 8.0).unwrap();
        for (t, w) in s8
            .timesteps
            .iter()
            .zip([1000.0, 960.0, 8000.0 / 9.0, 8000.0 / 11.0])
        {
            assert!((t - w).abs() < 1e-9, "{t} vs {w}");
        }
        assert_eq!(s.sigmas, vec![1.0, 0.9375, 2.5 / 3.0, 0.625, 0.0]);
    }

    #[test]
    fn explicit_sigmas_get_a_final_zero() {
        let s = Schedule::from_sigmas(&[1.0, 0.9375, 0.8333, 0.625], 1.0).unwrap();
        assert_eq!(s.sigmas.len(), 5);
        assert_eq!(s.sigmas[2], 0.8333f32 as f64);
        assert_eq!(s.timesteps[1], 937.5);
        assert_eq!(s.sigmas[4], 0.0);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Schedule::wan_unipc(0, 5.0).is_err());
        assert!(Schedule::wan_unipc(10, -1.0).is_err());
        assert!(Schedule::wan_dpm(10, f64::NAN).is_err());
        assert!(Schedule::flow_match_euler(10, 0.0).is_err());
        assert!(Schedule::from_sigmas(&[1.0, 0.5, 0.7], 1.0).is_err());
        assert!(Schedule::from_sigmas(&[1.5, 0.5], 1.0).is_err());
        assert!(Schedule::from_sigmas(&[], 1.0).is_err());
        assert!(Schedule::distilled(&[1000.0, 0.0], 5.0).is_err());
        assert!(Schedule::distilled(&[1001.0, 500.0], 5.0).is_err());
        assert!(Schedule::distilled(&[500.0, 750.0], 5.0).is_err());
        assert!(Schedule::new(vec![1.0], vec![0.5, 0.1]).is_err());
    }
}
