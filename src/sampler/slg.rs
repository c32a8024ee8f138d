//! Skip Layer Guidance (`../shared/docs/lora-guidance-training.md` §3.3), in the form of Kijai's
//! `WanVideoSLG` node and musubi's `--slg_mode uncond`: on the steps inside the range, the
//! unconditional pass runs without the chosen blocks (`x_{b+1} = x_b`), and CFG then combines the
//! conditional velocity with that degraded unconditional one. Inert on steps without the
//! unconditional pass (guidance scale 1, or a step the CFG schedule skips).

use super::cfg_schedule::{check_fraction, fraction_step};
use crate::error::{Error, Result};

/// Skip Layer Guidance settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Slg {
    /// The DiT blocks skipped in the unconditional pass (0-based).
    pub blocks: Vec<usize>,
    /// Active from step `⌊start·N⌋` …
    pub start: f64,
    /// … up to, not including, step `⌊end·N⌋` (musubi's rule; `end = 1` includes the last step).
    pub end: f64,
}

impl Default for Slg {
    /// Kijai's `WanVideoSLG` defaults: block 10, from 10 % to the end of the schedule.
    fn default() -> Slg {
        Slg {
            blocks: vec![10],
            start: 0.1,
            end: 1.0,
        }
    }
}

impl Slg {
    /// Checks the fractions (in `[0, 1]`, `start ≤ end`) and that some block is named.
    /// Whether the blocks exist is the model's check.
    pub fn validate(&self) -> Result<()> {
        check_fraction("slg start", self.start)?;
        check_fraction("slg end", self.end)?;
        if self.start > self.end {
            return Err(Error::InvalidArgument(format!(
                "slg: start {} after end {}",
                self.start, self.end
            )));
        }
        if self.blocks.is_empty() {
            return Err(Error::InvalidArgument("slg: no block to skip".into()));
        }
        Ok(())
    }

    /// Whether step `step` of `steps` lies in the range.
    pub fn active(&self, step: usize, steps: usize) -> bool {
        fraction_step(self.start, steps) <= step && step < fraction_step(self.end, steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_follows_musubi() {
        let slg = Slg {
            blocks: vec![9],
            start: 0.1,
            end: 0.3,
        };
        let on: Vec<usize> = (0..50).filter(|&i| slg.active(i, 50)).collect();
        assert_eq!(on, (5..15).collect::<Vec<_>>());
        assert!((0..50).skip(5).all(|i| Slg::default().active(i, 50)));
        assert!(!Slg::default().active(4, 50));
    }

    #[test]
    fn bad_settings() {
        for (start, end) in [(-0.1, 0.5), (0.5, 0.4), (0.0, f64::NAN), (0.0, 1.5)] {
            let slg = Slg {
                blocks: vec![1],
                start,
                end,
            };
            assert!(slg.validate().is_err(), "{start} {end}");
        }
        let empty = Slg {
            blocks: vec![],
            ..Slg::default()
        };
        assert!(empty.validate().is_err());
    }
}
