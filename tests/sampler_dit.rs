//! The sampler driving the tiny Wan DiT through [`WanVelocity`]: batched CFG with NAG, TeaCache's
//! residual hooks and Skip Layer Guidance. Fixtures: `$WANRT_FIXTURES`, default
//! `../shared/fixtures` next to the crate.

use wanrt::model::dit::{NagParams, WanDit};
use wanrt::sampler::{
    noise, Flow, Guidance, PassUse, Sampler, SamplerConfig, Slg, SolverKind, StepReport, TeaCache,
    TeaCacheModel, WanVelocity,
};
use wanrt::Tensor;

mod common;

fn tiny() -> WanDit {
    let dir = common::model("tiny-dit");
    WanDit::open(
        dir.join("dit_f32.safetensors"),
        Some(&dir.join("config.json")),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

const LATENT: [usize; 4] = [16, 2, 4, 6];

/// The model with a prompt (seed 1) and a negative prompt (seed 2) of different lengths.
fn model(dit: &WanDit) -> WanVelocity<'_> {
    let text_dim = dit.config().text_dim;
    let enc = |seed, len| {
        let ctx: Tensor = noise(seed, &[len, text_dim]).unwrap();
        dit.encode_text(&[ctx], true).unwrap()
    };
    WanVelocity::new(dit, &LATENT, enc(1, 7), Some(enc(2, 4))).unwrap()
}

fn nag(dit: &WanDit) -> NagParams {
    let ctx = noise(3, &[5, dit.config().text_dim]).unwrap();
    let mut n = NagParams::new(dit.encode_text(&[ctx], true).unwrap());
    n.scale = 3.0;
    n
}

fn config(steps: usize) -> SamplerConfig {
    let schedule = SolverKind::UniPc.schedule(steps, 3.0).unwrap();
    SamplerConfig::new(SolverKind::UniPc, schedule, Guidance::Cfg { scale: 5.0 })
}

/// Samples from seed 11's noise; returns the final latent and the step reports.
fn sample(config: SamplerConfig, m: &mut WanVelocity<'_>) -> (Vec<f32>, Vec<StepReport>) {
    let mut x = noise(11, &LATENT).unwrap();
    let mut reports = Vec::new();
    let mut s = Sampler::new(config).unwrap();
    s.run(m, &mut x, |p| {
        reports.push(p.report);
        Flow::Continue
    })
    .unwrap();
    (x.to_f32_vec().unwrap(), reports)
}

#[test]
fn batched_cfg_with_nag_matches_separate_passes() {
    let dit = tiny();
    let (single, _) = sample(config(4), &mut model(&dit).with_nag(nag(&dit)));
    let mut batched = model(&dit).with_nag(nag(&dit)).with_batched_cfg().unwrap();
    let (both, _) = sample(config(4), &mut batched);
    assert!(
        common::rel_l2_f32(&both, &single) < 1e-5,
        "{}",
        common::rel_l2_f32(&both, &single)
    );
    // NAG acts (on the conditional pass).
    let (plain, _) = sample(config(4), &mut model(&dit));
    assert!(common::rel_l2_f32(&plain, &single) > 1e-4);
}

#[test]
fn teacache_hooks_on_the_dit() {
    let dit = tiny();
    let (plain, _) = sample(config(5), &mut model(&dit));
    // poly(d) = d ≥ 0 and threshold 0: every step computes, exactly as without TeaCache.
    let mut never = TeaCache::wan(TeaCacheModel::T2v1_3B, 0.0);
    never.coefficients = [0.0, 0.0, 0.0, 1.0, 0.0];
    let mut c = config(5);
    c.teacache = Some(never.clone());
    let (same, reports) = sample(c, &mut model(&dit));
    assert_eq!(same, plain);
    assert!(reports.iter().all(|r| r.cond == PassUse::Computed));
    // A huge threshold reuses the residual on every step but the forced first and last.
    never.threshold = 1e9;
    let mut c = config(5);
    c.teacache = Some(never);
    let (cached, reports) = sample(c, &mut model(&dit).with_batched_cfg().unwrap());
    let (cp, r) = (PassUse::Computed, PassUse::Reused);
    for pick in [|r: &StepReport| r.cond, |r: &StepReport| r.uncond] {
        let used: Vec<PassUse> = reports.iter().map(pick).collect();
        assert_eq!(used, [cp, r, r, r, cp]);
    }
    assert!(cached.iter().all(|v| v.is_finite()));
    let err = common::rel_l2_f32(&cached, &plain);
    assert!(err > 1e-6 && err < 1.0, "{err}");
}

#[test]
fn slg_skips_dit_blocks() {
    let dit = tiny();
    let (plain, _) = sample(config(3), &mut model(&dit));
    let mut c = config(3);
    c.slg = Some(Slg {
        blocks: vec![1],
        start: 0.0,
        end: 1.0,
    });
    let (slg, reports) = sample(c.clone(), &mut model(&dit).with_batched_cfg().unwrap());
    assert!(reports.iter().all(|r| r.slg));
    assert!(common::rel_l2_f32(&slg, &plain) > 1e-4);
    let (unbatched, _) = sample(c.clone(), &mut model(&dit));
    assert_eq!(slg, unbatched, "SLG passes are never batched");
    // A block the model does not have.
    c.slg = Some(Slg {
        blocks: vec![2],
        ..Slg::default()
    });
    c.slg.as_mut().unwrap().start = 0.0;
    let mut x = noise(11, &LATENT).unwrap();
    let mut s = Sampler::new(c).unwrap();
    let err = s.step(&mut model(&dit), &mut x).unwrap_err();
    assert!(err.to_string().contains("skip block 2"), "{err}");
}
