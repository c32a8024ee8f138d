//! On which steps guidance is applied (`../shared/docs/lora-guidance-training.md` §3.1, musubi's
//! `--cfg_skip_mode`). On the other steps the unconditional pass is not run and the step uses the
//! conditional velocity alone.

use crate::error::{Error, Result};

/// musubi-tuner's `--cfg_skip_mode` patterns, with `apply_steps = ⌊N·ratio⌋`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfgSkipMode {
    /// Skip guidance on the first steps: apply on the last `apply_steps`.
    Early,
    /// Skip guidance on the last steps: apply on the first `apply_steps`.
    Late,
    /// Apply on the middle `apply_steps`, starting at `⌊(N − apply_steps)/2⌋`.
    EarlyLate,
    /// Skip the middle `N − apply_steps`, starting at `⌊apply_steps/2⌋`, apply elsewhere.
    Middle,
    /// Spread the applied steps: `w += ratio` each step, apply (and `w −= 1`) when `w ≥ 1`.
    Alternate,
}

/// The steps on which guidance is applied. 10 steps, ratio 0.6: `Early` gives `SSSSAAAAAA`,
/// `Late` `AAAAAASSSS`, `Middle` `AAASSSSAAA`, `EarlyLate` `SSAAAAAASS`, `Alternate`
/// `SASASAASAS` (A = applied, S = skipped).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CfgSchedule {
    /// Every step (the default).
    #[default]
    Always,
    /// Exactly the listed step indices (0-based).
    Steps(Vec<usize>),
    /// The steps `i` with `⌊start·N⌋ ≤ i < ⌊end·N⌋` (fractions of the schedule in `[0, 1]`).
    Range {
        /// First fraction.
        start: f64,
        /// End fraction (exclusive).
        end: f64,
    },
    /// A musubi-tuner pattern applying guidance on about `ratio·N` steps.
    Skip {
        /// The pattern.
        mode: CfgSkipMode,
        /// The fraction of steps with guidance, in `[0, 1]`.
        ratio: f64,
    },
}

/// `⌊fraction·steps⌋` as Python's `int(fraction * steps)` computes it (for fractions in [0, 1]).
pub(crate) fn fraction_step(fraction: f64, steps: usize) -> usize {
    (fraction * steps as f64) as usize
}

/// Checks that `v` is a fraction in `[0, 1]`.
pub(crate) fn check_fraction(what: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        return Err(Error::InvalidArgument(format!(
            "{what} must be a fraction in [0, 1], got {v}"
        )));
    }
    Ok(())
}

impl CfgSchedule {
    /// For each of `steps` steps, whether guidance is applied. Errors on a step index past the
    /// schedule, a fraction outside `[0, 1]` or `start > end`.
    pub fn resolve(&self, steps: usize) -> Result<Vec<bool>> {
        Ok(match self {
            CfgSchedule::Always => vec![true; steps],
            CfgSchedule::Steps(list) => {
                if let Some(&i) = list.iter().find(|&&i| i >= steps) {
                    return Err(Error::InvalidArgument(format!(
                        "cfg schedule: step {i} is past the last of {steps} steps"
                    )));
                }
                (0..steps).map(|i| list.contains(&i)).collect()
            }
            CfgSchedule::Range { start, end } => {
                check_fraction("cfg range start", *start)?;
                check_fraction("cfg range end", *end)?;
                if start > end {
                    return Err(Error::InvalidArgument(format!(
                        "cfg range: start {start} after end {end}"
                    )));
                }
                let (a, b) = (fraction_step(*start, steps), fraction_step(*end, steps));
                (0..steps).map(|i| a <= i && i < b).collect()
            }
            CfgSchedule::Skip { mode, ratio } => {
                check_fraction("cfg apply ratio", *ratio)?;
                skip_pattern(*mode, *ratio, steps)
            }
        })
    }
}

fn skip_pattern(mode: CfgSkipMode, ratio: f64, steps: usize) -> Vec<bool> {
    let apply = fraction_step(ratio, steps);
    let window = |a: usize, b: usize| (0..steps).map(|i| a <= i && i < b).collect();
    match mode {
        CfgSkipMode::Early => window(steps - apply, steps),
        CfgSkipMode::Late => window(0, apply),
        CfgSkipMode::EarlyLate => {
            let a = (steps - apply) / 2;
            window(a, a + apply)
        }
        CfgSkipMode::Middle => {
            let skip = steps - apply;
            let a = (steps - skip) / 2;
            (0..steps).map(|i| i < a || i >= a + skip).collect()
        }
        CfgSkipMode::Alternate => {
            let mut w = 0.0;
            (0..steps)
                .map(|_| {
                    w += ratio;
                    let apply = w >= 1.0;
                    if apply {
                        w -= 1.0;
                    }
                    apply
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &CfgSchedule, steps: usize) -> String {
        s.resolve(steps)
            .unwrap()
            .iter()
            .map(|&a| if a { 'A' } else { 'S' })
            .collect()
    }

    #[test]
    fn musubi_patterns() {
        let cases = [
            (CfgSkipMode::Early, "SSSSAAAAAA"),
            (CfgSkipMode::Late, "AAAAAASSSS"),
            (CfgSkipMode::Middle, "AAASSSSAAA"),
            (CfgSkipMode::EarlyLate, "SSAAAAAASS"),
            (CfgSkipMode::Alternate, "SASASAASAS"),
        ];
        for (mode, want) in cases {
            let s = CfgSchedule::Skip { mode, ratio: 0.6 };
            assert_eq!(pattern(&s, 10), want, "{mode:?}");
        }
    }
}
