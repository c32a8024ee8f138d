//! The sampler driver's settings (TeaCache, Skip Layer Guidance, CFG schedules), cancellation,
//! seeded noise and bad input, with fake models that record what they are asked. The solvers
//! themselves are checked against the fixtures (`tests/kinds/sampler.rs`).

use wanrt::sampler::{
    fill_normal, noise, BlockMode, CfgSchedule, CfgSkipMode, Flow, Guidance, Pass, PassRequest,
    PassUse, Sampler, SamplerConfig, Schedule, Slg, SolverKind, StepInfo, Stream, TeaCache,
    TeaCacheInput, TeaCacheModel, VelocityModel,
};
use wanrt::{Error, Tensor};

/// A host f32 latent.
fn t(v: &[f32]) -> Tensor {
    Tensor::from_f32(v.to_vec(), [v.len()]).unwrap()
}

/// The values of an f32 latent.
fn vals(x: &Tensor) -> Vec<f32> {
    x.f32_data().unwrap().to_vec()
}

/// `f(x)` elementwise, as a tensor shaped as `x`.
fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> wanrt::Result<Tensor> {
    let v = x.f32_data()?.iter().map(|&x| f(x)).collect();
    Tensor::from_f32(v, x.shape().clone())
}

/// One request the fake model received.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    step: usize,
    pass: Pass,
    skip: Vec<usize>,
    blocks: BlockMode,
    indicator: bool,
}

/// A linear fake: `v_c = x`, `v_u = 0.5·x + (number of skipped blocks)`; the TeaCache indicator
/// of a pass at a step is `[signal(step, pass)]`.
struct Fake {
    calls: Vec<Call>,
    signal: fn(usize, Pass) -> f32,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            calls: Vec::new(),
            signal: |_, _| 1.0,
        }
    }

    fn calls_at(&self, step: usize, pass: Pass) -> Vec<&Call> {
        self.calls
            .iter()
            .filter(|c| c.step == step && c.pass == pass)
            .collect()
    }
}

impl VelocityModel for Fake {
    fn evaluate(
        &mut self,
        x: &Tensor,
        at: &StepInfo,
        passes: &mut [PassRequest<'_>],
    ) -> wanrt::Result<()> {
        for p in passes {
            self.calls.push(Call {
                step: at.step,
                pass: p.pass,
                skip: p.skip_blocks.to_vec(),
                blocks: p.blocks,
                indicator: p.indicator.is_some(),
            });
            let (scale, bias) = match p.pass {
                Pass::Cond => (1.0, 0.0),
                Pass::Uncond => (0.5, p.skip_blocks.len() as f32),
            };
            p.velocity = Some(map(x, |x| scale * x + bias)?);
            if p.indicator.is_some() {
                p.signal = Some(Tensor::from_f32(vec![(self.signal)(at.step, p.pass)], [1])?);
            }
        }
        Ok(())
    }
}

fn euler(steps: usize, guidance: Guidance) -> SamplerConfig {
    let schedule = SolverKind::Euler.schedule(steps, 5.0).unwrap();
    SamplerConfig::new(SolverKind::Euler, schedule, guidance)
}

fn run(config: SamplerConfig, model: &mut Fake) -> Vec<wanrt::sampler::StepReport> {
    let mut sampler = Sampler::new(config).unwrap();
    let mut x = t(&[0.5, -1.0, 2.0]);
    let mut reports = Vec::new();
    sampler
        .run(model, &mut x, |p| {
            reports.push(p.report);
            Flow::Continue
        })
        .unwrap();
    reports
}

// ------------------------------------------------------------------------------------ TeaCache

/// TeaCache with `poly(d) = d` and threshold 0.25.
fn identity_teacache() -> TeaCache {
    let mut t = TeaCache::wan(TeaCacheModel::T2v1_3B, 0.25);
    t.coefficients = [0.0, 0.0, 0.0, 1.0, 0.0];
    t
}

#[test]
fn teacache_skips_where_the_indicator_says_and_never_on_forced_steps() {
    let mut config = euler(10, Guidance::Cfg { scale: 5.0 });
    config.teacache = Some(identity_teacache());
    let mut model = Fake::new();
    // The conditional indicator never moves (d = 0); the unconditional one grows 10 % a step
    // (d ≈ 0.1), so it accumulates 0.1, 0.2, then crosses 0.25 on every third step.
    model.signal = |step, pass| match pass {
        Pass::Cond => 1.0,
        Pass::Uncond => 1.1f32.powi(step as i32),
    };
    let reports = run(config, &mut model);
    let (c, r) = (PassUse::Computed, PassUse::Reused);
    let cond: Vec<PassUse> = reports.iter().map(|r| r.cond).collect();
    let uncond: Vec<PassUse> = reports.iter().map(|r| r.uncond).collect();
    assert_eq!(
        cond,
        [c, r, r, r, r, r, r, r, r, c],
        "first and last forced"
    );
    assert_eq!(
        uncond,
        [c, r, r, c, r, r, c, r, r, c],
        "separate state per pass"
    );

    for step in 0..10 {
        for (pass, used) in [(Pass::Cond, cond[step]), (Pass::Uncond, uncond[step])] {
            let modes: Vec<BlockMode> = model
                .calls_at(step, pass)
                .iter()
                .map(|c| c.blocks)
                .collect();
            let forced = step == 0 || step == 9;
            let want: &[BlockMode] = match (forced, used) {
                (true, _) => &[BlockMode::RunAndKeep],
                (false, PassUse::Reused) => &[BlockMode::Reuse],
                // The speculative reuse read the indicator, then the blocks ran.
                (false, _) => &[BlockMode::Reuse, BlockMode::RunAndKeep],
            };
            assert_eq!(modes, want, "step {step} {pass:?}");
            assert!(model.calls_at(step, pass)[0].indicator);
        }
    }
}

#[test]
fn teacache_forces_a_pass_without_a_cached_residual() {
    // Guidance only from step 4 on: the unconditional pass first runs there and must compute,
    // although the step is not a forced one.
    let mut config = euler(8, Guidance::Cfg { scale: 5.0 });
    config.teacache = Some(identity_teacache());
    config.cfg_schedule = CfgSchedule::Steps(vec![4, 5, 6]);
    let mut model = Fake::new();
    let reports = run(config, &mut model);
    let uncond: Vec<PassUse> = reports.iter().map(|r| r.uncond).collect();
    let (n, c, r) = (PassUse::NotRun, PassUse::Computed, PassUse::Reused);
    assert_eq!(uncond, [n, n, n, n, c, r, r, n]);
    assert_eq!(
        model.calls_at(4, Pass::Uncond)[0].blocks,
        BlockMode::RunAndKeep
    );
}

#[test]
fn teacache_is_off_by_default_and_documented_models_have_coefficients() {
    let mut model = Fake::new();
    run(euler(4, Guidance::Cfg { scale: 5.0 }), &mut model);
    assert!(model
        .calls
        .iter()
        .all(|c| c.blocks == BlockMode::Run && !c.indicator));
    let t = TeaCache::wan(TeaCacheModel::T2v14B, 0.2);
    assert_eq!(t.coefficients[0], -5784.54975374);
    assert_eq!(t.input, TeaCacheInput::TimeEmbedding);
    let r = TeaCache::wan_ret_steps(TeaCacheModel::T2v1_3B, 0.05);
    assert_eq!(r.coefficients[4], -4.99875664e-02);
    assert_eq!(r.input, TeaCacheInput::TimeProjection);
}

#[test]
fn teacache_needs_the_indicator() {
    struct NoSignal;
    impl VelocityModel for NoSignal {
        fn evaluate(
            &mut self,
            x: &Tensor,
            _: &StepInfo,
            passes: &mut [PassRequest<'_>],
        ) -> wanrt::Result<()> {
            for p in passes {
                p.velocity = Some(map(x, |_| 0.0)?);
            }
            Ok(())
        }
    }
    let mut config = euler(4, Guidance::Cfg { scale: 1.0 });
    config.teacache = Some(identity_teacache());
    let mut s = Sampler::new(config).unwrap();
    let err = s.step(&mut NoSignal, &mut t(&[0.0; 2])).unwrap_err();
    assert!(err.to_string().contains("indicator"), "{err}");
}

// ------------------------------------------------------------------------ Skip Layer Guidance

#[test]
fn slg_skips_the_asked_blocks_in_the_uncond_pass_inside_its_range() {
    let mut config = euler(20, Guidance::Cfg { scale: 3.0 });
    config.slg = Some(Slg {
        blocks: vec![3, 7],
        start: 0.2,
        end: 0.6,
    });
    let mut model = Fake::new();
    let reports = run(config, &mut model);
    for (step, report) in reports.iter().enumerate() {
        let inside = (4..12).contains(&step);
        assert_eq!(report.slg, inside, "step {step}");
        let cond = model.calls_at(step, Pass::Cond);
        let uncond = model.calls_at(step, Pass::Uncond);
        assert_eq!((cond.len(), uncond.len()), (1, 1), "step {step}");
        assert!(cond[0].skip.is_empty(), "the cond pass never skips");
        let want: &[usize] = if inside { &[3, 7] } else { &[] };
        assert_eq!(uncond[0].skip, want, "step {step}");
    }
}

#[test]
fn slg_guides_with_the_degraded_uncond() {
    let mut config = euler(4, Guidance::Cfg { scale: 3.0 });
    config.slg = Some(Slg {
        blocks: vec![0, 1],
        start: 0.0,
        end: 1.0,
    });
    let mut s = Sampler::new(config).unwrap();
    let x = [0.5f32, -1.0];
    s.step(&mut Fake::new(), &mut t(&x)).unwrap();
    // v = u + 3(c − u) with c = x, u = 0.5x + 2 (two blocks skipped).
    for (v, x) in vals(s.velocity().unwrap()).iter().zip(x) {
        let u = 0.5 * x + 2.0;
        assert!((v - (u + 3.0 * (x - u))).abs() < 1e-6);
    }
}

#[test]
fn slg_is_inert_without_the_uncond_pass() {
    let mut config = euler(10, Guidance::Cfg { scale: 1.0 });
    config.slg = Some(Slg::default());
    let mut model = Fake::new();
    let reports = run(config.clone(), &mut model);
    assert!(reports
        .iter()
        .all(|r| !r.slg && r.uncond == PassUse::NotRun));
    assert!(model
        .calls
        .iter()
        .all(|c| c.pass == Pass::Cond && c.skip.is_empty()));
    // Guidance on, but skipped by the CFG schedule on the late half: no SLG there either.
    config.guidance = Guidance::Cfg { scale: 4.0 };
    config.cfg_schedule = CfgSchedule::Range {
        start: 0.0,
        end: 0.5,
    };
    let mut model = Fake::new();
    let reports = run(config, &mut model);
    let slg: Vec<bool> = reports.iter().map(|r| r.slg).collect();
    assert_eq!(
        slg,
        [false, true, true, true, true, false, false, false, false, false]
    );
}

// ---------------------------------------------------------------------------- CFG schedules

fn uncond_steps(config: SamplerConfig) -> Vec<usize> {
    let mut model = Fake::new();
    run(config, &mut model);
    let mut steps: Vec<usize> = model
        .calls
        .iter()
        .filter(|c| c.pass == Pass::Uncond)
        .map(|c| c.step)
        .collect();
    steps.dedup();
    steps
}

#[test]
fn cfg_schedules_run_the_uncond_pass_only_where_guidance_applies() {
    let g = Guidance::Cfg { scale: 5.0 };
    let mut config = euler(10, g);
    assert_eq!(uncond_steps(config.clone()), (0..10).collect::<Vec<_>>());
    config.cfg_schedule = CfgSchedule::Steps(vec![0, 2, 5]);
    assert_eq!(uncond_steps(config.clone()), [0, 2, 5]);
    config.cfg_schedule = CfgSchedule::Range {
        start: 0.25,
        end: 0.75,
    };
    assert_eq!(uncond_steps(config.clone()), [2, 3, 4, 5, 6]);
    config.cfg_schedule = CfgSchedule::Skip {
        mode: CfgSkipMode::Alternate,
        ratio: 0.6,
    };
    assert_eq!(uncond_steps(config.clone()), [1, 3, 5, 6, 8]);
    config.cfg_schedule = CfgSchedule::Skip {
        mode: CfgSkipMode::Early,
        ratio: 0.6,
    };
    assert_eq!(uncond_steps(config), [4, 5, 6, 7, 8, 9]);
}

#[test]
fn skipped_guidance_uses_the_cond_velocity() {
    let mut config = euler(3, Guidance::Cfg { scale: 5.0 });
    config.cfg_schedule = CfgSchedule::Steps(vec![1]);
    let mut s = Sampler::new(config).unwrap();
    let mut x = t(&[0.5, -1.0]);
    let mut model = Fake::new();
    let x0 = vals(&x);
    s.step(&mut model, &mut x).unwrap();
    assert_eq!(vals(s.velocity().unwrap()), x0, "step 0: v = v_c = x");
    let x1 = vals(&x);
    s.step(&mut model, &mut x).unwrap();
    for (v, x) in vals(s.velocity().unwrap()).iter().zip(&x1) {
        let u = 0.5 * x;
        assert!((v - (u + 5.0 * (x - u))).abs() < 1e-6);
    }
}

#[test]
fn cfg_zero_star_zero_init_calls_no_model() {
    let g = Guidance::CfgZeroStar {
        scale: 4.0,
        zero_steps: Some(1),
    };
    let mut model = Fake::new();
    let reports = run(euler(5, g), &mut model);
    assert!(model.calls.iter().all(|c| c.step >= 2));
    assert_eq!(reports[1].cond, PassUse::NotRun);
    assert_eq!(reports[2].uncond, PassUse::Computed);
}

// ---------------------------------------------------------------------- progress and cancel

#[test]
fn the_callback_sees_every_step_and_can_cancel() {
    let config = SamplerConfig::new(
        SolverKind::UniPc,
        SolverKind::UniPc.schedule(8, 3.0).unwrap(),
        Guidance::Cfg { scale: 2.0 },
    );
    let start = t(&[0.3, -0.7, 1.2, 0.05]);

    let mut whole = start.clone();
    let mut seen = Vec::new();
    let mut s = Sampler::new(config.clone()).unwrap();
    s.run(&mut Fake::new(), &mut whole, |p| {
        seen.push((p.step, p.steps, p.sigma, p.sigma_next, vals(p.latent)));
        Flow::Continue
    })
    .unwrap();
    let sig = &config.schedule.sigmas;
    assert_eq!(seen.len(), 8);
    for (i, (step, steps, sigma, next, _)) in seen.iter().enumerate() {
        assert_eq!((*step, *steps, *sigma, *next), (i, 8, sig[i], sig[i + 1]));
    }
    assert_eq!(seen[7].4, vals(&whole));

    // Cancel after step 2: the latent is step 2's, and running on finishes the same way.
    let mut x = start.clone();
    let mut s = Sampler::new(config).unwrap();
    let err = s
        .run(&mut Fake::new(), &mut x, |p| match p.step {
            2 => Flow::Cancel,
            _ => Flow::Continue,
        })
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(s.step_index(), 3);
    assert_eq!(vals(&x), seen[2].4);
    s.run(&mut Fake::new(), &mut x, |_| Flow::Continue).unwrap();
    assert_eq!(vals(&x), vals(&whole));
    assert!(s.step(&mut Fake::new(), &mut x).is_err(), "past the end");
}

// ------------------------------------------------------------------------------------- noise

fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn bits(t: &wanrt::Tensor) -> Vec<u32> {
    t.f32_data().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn noise_is_identical_for_any_thread_count() {
    let shape = [1, 16, 5, 40, 64]; // 204 800 elements: many parallel blocks
    let one = with_threads(1, || noise(1234, &shape).unwrap());
    for threads in [2, 3, 8] {
        let many = with_threads(threads, || noise(1234, &shape).unwrap());
        assert!(bits(&one) == bits(&many), "{threads} threads");
    }
    assert_eq!(bits(&noise(1234, &shape).unwrap()), bits(&one));
}

#[test]
fn noise_values_are_pinned() {
    // The documented generator's first values for seed 0 (the first four recomputed in Python
    // from Random123's known answer for counter 0, key 0): any change to the generator changes
    // every seed's video, so it is caught here.
    let got = bits(&noise(0, &[6]).unwrap());
    let want: Vec<u32> = PINNED.to_vec();
    assert_eq!(got, want, "{:?}", noise(0, &[6]).unwrap().f32_data());
}

/// 0.9911377, -0.9246626, -0.61760896, -0.4820686, -0.15363823, 0.1808259.
const PINNED: [u32; 6] = [
    0x3f7dbb33, 0xbf6cb6b0, 0xbf1e1b9f, 0xbef6d1b2, 0xbe1d5357, 0x3e392a6d,
];

fn draw(seed: u64, stream: Stream, n: usize) -> Vec<f64> {
    let mut v = vec![0.0f64; n];
    fill_normal(seed, stream, 0, &mut v);
    v
}

#[test]
fn noise_is_standard_normal() {
    let n = 1 << 21;
    let z = draw(7, Stream::Latent, n);
    let nf = n as f64;
    let mean = z.iter().sum::<f64>() / nf;
    let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / nf;
    let kurt = z.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / nf / (var * var);
    let tail = z.iter().filter(|x| x.abs() > 2.0).count() as f64 / nf;
    // Standard errors: mean 1/√n ≈ 7e-4, variance √(2/n) ≈ 1e-3, kurtosis √(24/n) ≈ 3.4e-3.
    assert!(mean.abs() < 4e-3, "mean {mean}");
    assert!((var - 1.0).abs() < 6e-3, "variance {var}");
    assert!((kurt - 3.0).abs() < 2e-2, "kurtosis {kurt}");
    assert!((tail - 0.0455).abs() < 7e-4, "P(|z| > 2) = {tail}");
    // Neighbouring elements (Box-Muller pairs, Philox lanes) are uncorrelated.
    for lag in [1, 2, 3, 4] {
        let r = corr(&z[..n - lag], &z[lag..]);
        assert!(r.abs() < 4e-3, "lag {lag}: {r}");
    }
}

fn corr(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += (x - ma) * (y - mb);
        aa += (x - ma) * (x - ma);
        bb += (y - mb) * (y - mb);
    }
    ab / (aa * bb).sqrt()
}

#[test]
fn different_seeds_and_streams_are_uncorrelated() {
    let n = 1 << 18;
    let base = draw(42, Stream::Latent, n);
    let others = [
        draw(43, Stream::Latent, n),
        draw(42 + (1 << 32), Stream::Latent, n),
        draw(42, Stream::Renoise { step: 0 }, n),
        draw(42, Stream::Renoise { step: 1 }, n),
    ];
    for (k, o) in others.iter().enumerate() {
        assert!(o != &base, "{k}");
        let r = corr(&base, o);
        assert!(r.abs() < 1e-2, "{k}: correlation {r}");
    }
    assert_eq!(draw(42, Stream::Latent, n), base, "same seed, same values");
}

#[test]
fn lcm_renoises_from_the_seed() {
    let schedule = SolverKind::Lcm.schedule(4, 5.0).unwrap();
    let mut config = SamplerConfig::new(SolverKind::Lcm, schedule, Guidance::Cfg { scale: 1.0 });
    let go = |config: &SamplerConfig| {
        let mut x = noise(5, &[64]).unwrap();
        let mut s = Sampler::new(config.clone()).unwrap();
        s.run(&mut Fake::new(), &mut x, |_| Flow::Continue).unwrap();
        vals(&x)
    };
    config.seed = 9;
    let a = go(&config);
    assert_eq!(a, go(&config));
    config.seed = 10;
    assert_ne!(a, go(&config));
}

// --------------------------------------------------------------------------------- bad input

#[test]
fn bad_input_gives_clear_errors() {
    let msg = |r: wanrt::Result<Schedule>| r.unwrap_err().to_string();
    assert!(msg(SolverKind::UniPc.schedule(0, 5.0)).contains("at least one step"));
    assert!(msg(SolverKind::Lcm.schedule(0, 5.0)).contains("at least one step"));
    for shift in [-1.0, 0.0, f64::NAN, f64::INFINITY] {
        for kind in [
            SolverKind::UniPc,
            SolverKind::DpmPp,
            SolverKind::Euler,
            SolverKind::Lcm,
        ] {
            assert!(
                msg(kind.schedule(10, shift)).contains("shift"),
                "{kind:?} {shift}"
            );
        }
    }
    assert!(msg(Schedule::from_sigmas(&[1.0, 0.5, 0.6], 1.0)).contains("decrease"));
    assert!(msg(Schedule::new(vec![1.0, 2.0], vec![0.5, 0.5, 0.0])).contains("decrease"));
    assert!(msg(Schedule::from_sigmas(&[1.0, f64::NAN], 1.0)).contains("outside"));
    for list in [
        &[1000.0, 0.0][..],
        &[1001.0, 500.0],
        &[750.0, -5.0],
        &[f64::NAN],
    ] {
        assert!(
            msg(Schedule::distilled(list, 5.0)).contains("(0, 1000]"),
            "{list:?}"
        );
    }

    let err = |config: SamplerConfig| Sampler::new(config).unwrap_err().to_string();
    for scale in [f64::NAN, f64::INFINITY] {
        assert!(err(euler(4, Guidance::Cfg { scale })).contains("guidance scale"));
        let g = Guidance::CfgZeroStar {
            scale,
            zero_steps: None,
        };
        assert!(err(euler(4, g)).contains("guidance scale"));
    }
    let g = Guidance::Cfg { scale: 5.0 };
    let mut c = euler(4, g);
    c.cfg_schedule = CfgSchedule::Steps(vec![4]);
    assert!(err(c).contains("past the last"));
    let mut c = euler(4, g);
    c.cfg_schedule = CfgSchedule::Range {
        start: 0.5,
        end: f64::NAN,
    };
    assert!(err(c).contains("fraction"));
    let mut c = euler(4, g);
    c.slg = Some(Slg {
        start: 0.9,
        end: 0.1,
        ..Slg::default()
    });
    assert!(err(c).contains("slg"));
    let mut c = euler(4, g);
    c.teacache = Some(TeaCache::wan(TeaCacheModel::T2v1_3B, -1.0));
    assert!(err(c).contains("threshold"));

    // A latent whose length changes between steps.
    let mut s = Sampler::new(euler(4, g)).unwrap();
    s.step(&mut Fake::new(), &mut t(&[0.0; 3])).unwrap();
    assert!(s.step(&mut Fake::new(), &mut t(&[0.0; 4])).is_err());
}

// ------------------------------------------------------------------------------ overflow

/// A model whose velocity is finite before step `bad` and infinite from it on.
struct Overflows {
    bad: usize,
}

impl VelocityModel for Overflows {
    fn evaluate(
        &mut self,
        x: &Tensor,
        at: &StepInfo,
        passes: &mut [PassRequest<'_>],
    ) -> wanrt::Result<()> {
        let bad = at.step >= self.bad;
        for p in passes {
            p.velocity = Some(map(x, |x| if bad { f32::INFINITY } else { x })?);
        }
        Ok(())
    }
}

#[test]
fn a_non_finite_latent_is_an_error_naming_the_step() {
    for guidance in [Guidance::Cfg { scale: 1.0 }, Guidance::Cfg { scale: 5.0 }] {
        let mut sampler = Sampler::new(euler(6, guidance)).unwrap();
        let mut x = t(&[0.5, -1.0, 2.0]);
        let mut seen = Vec::new();
        let err = sampler
            .run(&mut Overflows { bad: 2 }, &mut x, |p| {
                seen.push(p.step);
                Flow::Continue
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::NonFiniteLatent {
                    step: 2,
                    steps: 6,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.status(), wanrt::Status::InvalidArgument);
        assert!(err.to_string().contains("step 3 of 6"), "{err}");
        assert_eq!(seen, [0, 1], "no progress is reported for the bad step");
    }
}
