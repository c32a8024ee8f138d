//! The sampling loop the pipeline drives: schedule, solver, guidance, CFG schedule, Skip Layer
//! Guidance and TeaCache in one value, stepped with a [`VelocityModel`].

use super::model::{BlockMode, Pass, PassRequest, StepInfo, VelocityModel};
use super::noise::renoise_fn;
use super::teacache::TeaCacheState;
use super::{CfgSchedule, Guidance, NoiseFn, Schedule, Slg, Solver, SolverKind, TeaCache};
use crate::error::{Error, Result};
use crate::tensor::ops::sampler::{first_non_finite, zeros_like};
use crate::tensor::Tensor;

/// Everything that defines a sampling run besides the model and the initial latent.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// The solver.
    pub solver: SolverKind,
    /// The schedule it walks (e.g. [`SolverKind::schedule`]).
    pub schedule: Schedule,
    /// How the passes are combined.
    pub guidance: Guidance,
    /// The steps with guidance (default: all); elsewhere only the conditional pass runs.
    pub cfg_schedule: CfgSchedule,
    /// Skip Layer Guidance in the unconditional pass (default: off).
    pub slg: Option<Slg>,
    /// TeaCache (default: off).
    pub teacache: Option<TeaCache>,
    /// The seed of LCM's re-noising stream ([`super::Stream::Renoise`]); record it with the
    /// initial noise's seed.
    pub seed: u64,
}

impl SamplerConfig {
    /// A config with the default CFG schedule (every step), no SLG, no TeaCache and seed 0.
    pub fn new(solver: SolverKind, schedule: Schedule, guidance: Guidance) -> SamplerConfig {
        SamplerConfig {
            solver,
            schedule,
            guidance,
            cfg_schedule: CfgSchedule::Always,
            slg: None,
            teacache: None,
            seed: 0,
        }
    }
}

/// What became of one pass at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassUse {
    /// Not evaluated.
    NotRun,
    /// Evaluated with its blocks (those SLG skips aside).
    Computed,
    /// Evaluated with TeaCache's cached residual instead of the blocks.
    Reused,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    /// The step index.
    pub step: usize,
    /// The conditional pass.
    pub cond: PassUse,
    /// The unconditional pass.
    pub uncond: PassUse,
    /// Whether the unconditional pass skipped SLG's blocks.
    pub slg: bool,
}

/// What the per-step callback of [`Sampler::run`] sees.
#[derive(Debug)]
pub struct Progress<'a> {
    /// The step just taken (0-based).
    pub step: usize,
    /// The number of steps.
    pub steps: usize,
    /// The noise level the step started from.
    pub sigma: f64,
    /// The noise level of `latent` now.
    pub sigma_next: f64,
    /// The latent after the step (on the model's device).
    pub latent: &'a Tensor,
    /// The guided velocity the step used; `latent − sigma_next·velocity` estimates the clean
    /// latent for a preview (exact for Euler).
    pub velocity: &'a Tensor,
    /// The passes the step ran.
    pub report: StepReport,
}

/// The callback's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Take the next step.
    Continue,
    /// Stop: [`Sampler::run`] returns [`Error::Cancelled`].
    Cancel,
}

/// A sampling run over latent tensors (f32 for the pipeline, f64 for float64 references), on
/// the CPU or on the model's CUDA device.
///
/// Each [`Sampler::step`] evaluates the model as the settings say (no pass on CFG-Zero*'s
/// zero-init steps; the conditional pass; the unconditional one where guidance applies, without
/// SLG's blocks inside its range; TeaCache's reuse decision per pass), combines the passes and
/// advances the latent, each through one fused op on the latent's device.
#[derive(Debug)]
pub struct Sampler {
    solver: Box<dyn Solver>,
    guidance: Guidance,
    cfg_applied: Vec<bool>,
    slg: Option<Slg>,
    teacache: Option<(TeaCache, [TeaCacheState; 2])>,
    seed: u64,
    velocity: Option<Tensor>,
}

impl Sampler {
    /// A sampler at step 0; LCM re-noises from the config's seed.
    pub fn new(config: SamplerConfig) -> Result<Sampler> {
        let noise = renoise_fn(config.seed);
        Sampler::with_noise(config, noise)
    }

    /// A sampler whose LCM re-noising comes from `noise` (stored noise of a reference).
    pub fn with_noise(config: SamplerConfig, noise: NoiseFn) -> Result<Sampler> {
        config.guidance.validate()?;
        let steps = config.schedule.steps();
        let cfg_applied = config.cfg_schedule.resolve(steps)?;
        if let Some(s) = &config.slg {
            s.validate()?;
        }
        if let Some(t) = &config.teacache {
            t.validate()?;
        }
        Ok(Sampler {
            solver: config.solver.build(config.schedule, Some(noise))?,
            guidance: config.guidance,
            cfg_applied,
            slg: config.slg,
            teacache: config.teacache.map(|t| (t, Default::default())),
            seed: config.seed,
            velocity: None,
        })
    }

    /// The solver (its step index, schedule and, through `Debug`, its history).
    pub fn solver(&self) -> &dyn Solver {
        self.solver.as_ref()
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        self.solver.schedule()
    }

    /// The index of the next step.
    pub fn step_index(&self) -> usize {
        self.solver.step_index()
    }

    /// True when every step has been taken.
    pub fn is_done(&self) -> bool {
        self.solver.is_done()
    }

    /// The re-noising seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether step `step` runs the unconditional pass (guidance applies there and is not
    /// plain CFG at scale 1, and the step is no zero-init step).
    pub fn uses_uncond(&self, step: usize) -> bool {
        self.guidance.needs_uncond(step) && self.cfg_applied.get(step).copied().unwrap_or(false)
    }

    /// Whether step `step`'s unconditional pass skips SLG's blocks.
    pub fn slg_active(&self, step: usize) -> bool {
        let steps = self.schedule().steps();
        self.uses_uncond(step) && self.slg.as_ref().is_some_and(|s| s.active(step, steps))
    }

    /// A pass's TeaCache state, when TeaCache is on.
    pub fn teacache_state(&self, pass: Pass) -> Option<&TeaCacheState> {
        self.teacache.as_ref().map(|(_, s)| &s[pass.index()])
    }

    /// The velocity the last step used (`None` before the first step).
    pub fn velocity(&self) -> Option<&Tensor> {
        self.velocity.as_ref()
    }

    /// Takes one step: evaluates `model` at `latent` and replaces `latent` by the next sample.
    /// Fails with [`Error::NonFiniteLatent`] when the step leaves a NaN or an infinity in
    /// `latent`.
    pub fn step<M: VelocityModel + ?Sized>(
        &mut self,
        model: &mut M,
        latent: &mut Tensor,
    ) -> Result<StepReport> {
        let schedule = self.solver.schedule();
        let (i, steps) = (self.solver.step_index(), schedule.steps());
        if i >= steps {
            return Err(Error::InvalidArgument(format!(
                "sampler: all {steps} steps have been taken"
            )));
        }
        let at = StepInfo {
            step: i,
            steps,
            timestep: schedule.timesteps[i],
            sigma: schedule.sigmas[i],
        };
        let mut report = StepReport {
            step: i,
            cond: PassUse::NotRun,
            uncond: PassUse::NotRun,
            slg: false,
        };
        let v = if self.guidance.skips_model(i) {
            zeros_like(latent)?
        } else {
            let uncond = self.uses_uncond(i);
            report.slg = self.slg_active(i);
            let [cond, un] = self.evaluate(model, latent, &at, uncond, &mut report)?;
            let cond = cond.ok_or_else(|| no_velocity(Pass::Cond))?;
            match (uncond, un) {
                (false, _) => cond,
                (true, Some(un)) => self.guidance.combine(i, &cond, Some(&un))?,
                (true, None) => return Err(no_velocity(Pass::Uncond)),
            }
        };
        self.solver.step(&v, latent)?;
        self.velocity = Some(v);
        if let Some(value) = first_non_finite(latent)? {
            return Err(Error::NonFiniteLatent {
                step: i,
                steps,
                value,
            });
        }
        Ok(report)
    }

    /// Takes every remaining step, calling `on_step` after each; [`Flow::Cancel`] stops with
    /// [`Error::Cancelled`], leaving `latent` as that step made it.
    pub fn run<M, F>(&mut self, model: &mut M, latent: &mut Tensor, mut on_step: F) -> Result<()>
    where
        M: VelocityModel + ?Sized,
        F: FnMut(&Progress<'_>) -> Flow,
    {
        while !self.is_done() {
            let report = self.step(model, latent)?;
            let (i, s) = (report.step, self.schedule());
            let velocity = self
                .velocity
                .as_ref()
                .expect("a step taken leaves its velocity");
            let progress = Progress {
                step: i,
                steps: s.steps(),
                sigma: s.sigmas[i],
                sigma_next: s.sigmas[i + 1],
                latent,
                velocity,
                report,
            };
            if on_step(&progress) == Flow::Cancel {
                return Err(Error::Cancelled);
            }
        }
        Ok(())
    }

    /// The conditional (and unconditional) velocity at step `at`, with TeaCache's decisions.
    fn evaluate<M: VelocityModel + ?Sized>(
        &mut self,
        model: &mut M,
        latent: &Tensor,
        at: &StepInfo,
        uncond: bool,
        report: &mut StepReport,
    ) -> Result<[Option<Tensor>; 2]> {
        let skip: &[usize] = match &self.slg {
            Some(s) if report.slg => &s.blocks,
            _ => &[],
        };
        let (mode, indicator) = match &self.teacache {
            None => ([BlockMode::Run; 2], None),
            Some((cfg, st)) => {
                let mode = |p: usize| {
                    if st[p].must_compute(cfg, at.step, at.steps) {
                        BlockMode::RunAndKeep
                    } else {
                        BlockMode::Reuse
                    }
                };
                ([mode(0), mode(1)], Some(cfg.input))
            }
        };
        let mut reqs = [
            PassRequest {
                pass: Pass::Cond,
                skip_blocks: &[],
                blocks: mode[0],
                indicator,
                velocity: None,
                signal: None,
            },
            PassRequest {
                pass: Pass::Uncond,
                skip_blocks: skip,
                blocks: mode[1],
                indicator,
                velocity: None,
                signal: None,
            },
        ];
        let count = if uncond { 2 } else { 1 };
        model.evaluate(latent, at, &mut reqs[..count])?;
        let Some((cfg, states)) = &mut self.teacache else {
            report.cond = PassUse::Computed;
            report.uncond = if uncond {
                PassUse::Computed
            } else {
                PassUse::NotRun
            };
            return Ok(reqs.map(|r| r.velocity));
        };
        // TeaCache: read each pass's indicator, decide, and re-run the passes whose speculative
        // reuse the indicator rejects (the price of reading the indicator first: one pass
        // without blocks, a small fraction of a DiT pass).
        let mut redo = [false; 2];
        for (k, req) in reqs[..count].iter_mut().enumerate() {
            let signal = req.signal.take().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the model returned no TeaCache indicator for the {:?} pass",
                    req.pass
                ))
            })?;
            let forced = req.blocks == BlockMode::RunAndKeep;
            let reuse = states[k].observe(cfg, signal, forced)?;
            states[k].record(reuse);
            redo[k] = !forced && !reuse;
            let used = if reuse {
                PassUse::Reused
            } else {
                PassUse::Computed
            };
            match req.pass {
                Pass::Cond => report.cond = used,
                Pass::Uncond => report.uncond = used,
            }
        }
        for req in reqs.iter_mut() {
            req.blocks = BlockMode::RunAndKeep;
            req.indicator = None;
        }
        let range = match redo {
            [true, true] => 0..2,
            [true, false] => 0..1,
            [false, true] => 1..2,
            [false, false] => return Ok(reqs.map(|r| r.velocity)),
        };
        model.evaluate(latent, at, &mut reqs[range])?;
        Ok(reqs.map(|r| r.velocity))
    }
}

/// The error for a model that set no velocity for `pass`.
fn no_velocity(pass: Pass) -> Error {
    Error::InvalidArgument(format!(
        "the model returned no velocity for the {pass:?} pass"
    ))
}
