//! A training run with its outputs, as `wanrt train`, the C ABI and the bindings drive it: the
//! [`Trainer`]'s steps, musubi's intermediate saves (lora-guidance-training.md §4.5), the
//! metrics file, the loss curve, and a final save that also happens when the caller cancels.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::metrics::{read_metrics, write_loss_curve, MetricsLog, StepMetrics};
use super::samples::Samples;
use super::trainer::{StepReport, Trainer};
use crate::error::{Error, Result};
use crate::sampler::Flow;

/// Where and when a run writes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outputs {
    /// `--output_dir` (created if missing).
    pub dir: PathBuf,
    /// `--output_name`: the final LoRA is `{name}.safetensors`.
    pub name: String,
    /// `--save_every_n_steps`: `{name}-step{step:08}.safetensors` after every n-th step.
    pub save_every_n_steps: Option<usize>,
    /// `--save_every_n_epochs`: `{name}-{epoch:06}.safetensors` after every n-th epoch but the
    /// last (numbered from 1).
    pub save_every_n_epochs: Option<usize>,
    /// `--save_state`: next to each LoRA, the state to resume from (`{stem}-state`).
    pub save_state: bool,
    /// `--loss_curve`: the PNG of the loss curve, written at the end of the run.
    pub loss_curve: Option<PathBuf>,
}

impl Outputs {
    /// The metrics file: `{dir}/{name}-metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.dir.join(format!("{}-metrics.jsonl", self.name))
    }

    /// The LoRA file of `stem` (`{dir}/{stem}.safetensors`).
    fn lora_path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.safetensors"))
    }
}

/// What a run reports to its caller.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A step was taken (its metrics are written already).
    Step(&'a StepReport),
    /// A LoRA, a state folder or a sample video was written completely.
    Saved(&'a Path),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every step was taken; the final LoRA is at the path.
    Finished(PathBuf),
    /// The caller cancelled after a step; the LoRA of the steps taken is at the path.
    Cancelled(PathBuf),
}

/// A [`Trainer`] with its [`Outputs`].
#[derive(Debug)]
pub struct TrainingRun {
    trainer: Trainer,
    out: Outputs,
    metrics: MetricsLog,
    samples: Option<Samples>,
}

impl TrainingRun {
    /// Prepares the outputs of `trainer` (a fresh or a resumed one): creates the folder and
    /// opens the metrics file, keeping the lines of the steps already taken.
    pub fn new(trainer: Trainer, out: Outputs) -> Result<TrainingRun> {
        if out.name.is_empty() || out.name.contains(['/', '\\']) {
            return Err(Error::InvalidArgument(format!(
                "output_name `{}` must be a non-empty file name",
                out.name
            )));
        }
        if out.save_every_n_steps == Some(0) || out.save_every_n_epochs == Some(0) {
            return Err(Error::InvalidArgument(
                "save_every_n_steps and save_every_n_epochs must be at least 1".into(),
            ));
        }
        std::fs::create_dir_all(&out.dir).map_err(|e| Error::io(&out.dir, e))?;
        let metrics = MetricsLog::open(&out.metrics_path(), trainer.steps_taken())?;
        Ok(TrainingRun {
            trainer,
            out,
            metrics,
            samples: None,
        })
    }

    /// Also makes sample videos as `samples` says (after the saves of the same step).
    pub fn with_samples(mut self, samples: Samples) -> TrainingRun {
        self.samples = Some(samples);
        self
    }

    /// The trainer (its network, steps taken, ...).
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// The outputs.
    pub fn outputs(&self) -> &Outputs {
        &self.out
    }

    /// Takes the remaining steps, writing metrics and the intermediate saves, and calling
    /// `on_event` after each step and save. When it returns [`Flow::Cancel`] after a step, the
    /// run stops there and saves as at the end (the LoRA, its state when `save_state`, the loss
    /// curve). An error stops the run with the files already written left intact.
    pub fn run(&mut self, on_event: &mut dyn FnMut(Event) -> Flow) -> Result<Ending> {
        while !self.trainer.is_done() {
            let start = Instant::now();
            let epochs_before = self.trainer.epochs_done();
            let r = self.trainer.step()?;
            self.metrics.append(&StepMetrics {
                step: r.step,
                epoch: r.epoch,
                loss: r.loss,
                lr: r.lr,
                grad_norm: r.grad_norm,
                step_time_s: start.elapsed().as_secs_f64(),
            })?;
            let flow = on_event(Event::Step(&r));
            if self.out.save_every_n_steps.is_some_and(|n| r.step % n == 0) {
                self.save(&format!("{}-step{:08}", self.out.name, r.step), on_event)?;
            }
            let epoch = self.trainer.epochs_done();
            let epoch_ended = epoch > epochs_before && !self.trainer.is_done();
            if epoch_ended
                && self
                    .out
                    .save_every_n_epochs
                    .is_some_and(|n| epoch.is_multiple_of(n))
            {
                self.save(&format!("{}-{:06}", self.out.name, epoch), on_event)?;
            }
            if let Some(s) = &self.samples {
                let tag = if s.every_n_steps.is_some_and(|n| r.step % n == 0) {
                    Some(format!("{:06}", r.step))
                } else if epoch_ended && s.every_n_epochs.is_some_and(|n| epoch.is_multiple_of(n)) {
                    Some(format!("e{epoch:06}"))
                } else {
                    None
                };
                if let Some(tag) = tag {
                    for path in s.write(&self.trainer, &self.out.dir, &self.out.name, &tag)? {
                        on_event(Event::Saved(&path));
                    }
                }
            }
            if flow == Flow::Cancel {
                return self.finish(on_event).map(Ending::Cancelled);
            }
        }
        self.finish(on_event).map(Ending::Finished)
    }

    /// The final save: `{name}.safetensors`, `{name}-state`, the loss curve.
    fn finish(&mut self, on_event: &mut dyn FnMut(Event) -> Flow) -> Result<PathBuf> {
        let name = self.out.name.clone();
        self.save(&name, on_event)?;
        if let Some(png) = &self.out.loss_curve {
            write_loss_curve(png, &read_metrics(self.metrics.path())?)?;
        }
        Ok(self.out.lora_path(&name))
    }

    /// Writes the LoRA `{stem}.safetensors` and, with `save_state`, the folder `{stem}-state`.
    fn save(&self, stem: &str, on_event: &mut dyn FnMut(Event) -> Flow) -> Result<()> {
        let lora = self.out.lora_path(stem);
        self.trainer.save_lora(&lora)?;
        on_event(Event::Saved(&lora));
        if self.out.save_state {
            let state = self.out.dir.join(format!("{stem}-state"));
            self.trainer.save_state(&state)?;
            on_event(Event::Saved(&state));
        }
        Ok(())
    }
}
