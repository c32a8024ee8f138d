//! The Wan DiT's hooks, batching and input errors (its fixture cases run in the harness,
//! `tests/kinds/dit.rs`). Fixtures: `$WANRT_FIXTURES`, default `../shared/fixtures` next to the crate.

use std::collections::BTreeMap;
use std::path::Path;

use wanrt::model::dit::{
    weight_shapes, DitConfig, ForwardOptions, NagParams, TeaCacheSignal, WanDit,
};
use wanrt::tensor::Weight;
use wanrt::{Error, Tensor};

mod common;
use common::{model, rel_l2_tensors};

/// Canonical weights of a checkpoint file or folder, in any layout.
fn load_weights(path: &Path) -> BTreeMap<String, Weight> {
    let ck = wanrt::io::open(path).unwrap_or_else(|e| panic!("{e}"));
    wanrt::io::layout::canonical_weights(&ck)
        .unwrap_or_else(|e| panic!("{e}"))
        .1
}

/// The config of `weights`, from their shapes and a Wan `config.json`.
fn load_config(weights: &BTreeMap<String, Weight>, json: &Path) -> DitConfig {
    DitConfig::load(&wanrt::io::layout::weight_metas(weights), Some(json))
        .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------- the tiny model

fn tiny_weights() -> (BTreeMap<String, Weight>, DitConfig) {
    let dir = model("tiny-dit");
    let w = load_weights(&dir.join("dit_f32.safetensors"));
    let cfg = load_config(&w, &dir.join("config.json"));
    (w, cfg)
}

fn tiny() -> (WanDit, DitConfig) {
    let (w, cfg) = tiny_weights();
    (WanDit::new(w, cfg.clone()).unwrap(), cfg)
}

/// Deterministic pseudo-random values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

fn rand_tensor(dims: &[usize], seed: u64) -> Tensor {
    Tensor::from_f32(noise(dims.iter().product(), seed), dims).unwrap()
}

/// A latent of `b` samples on a (2, 2, 3) token grid.
fn sample(b: usize) -> Tensor {
    rand_tensor(&[b, 16, 2, 4, 6], 1)
}

#[test]
fn batch_equals_single_samples() {
    let (dit, cfg) = tiny();
    let lat = rand_tensor(&[2, 16, 2, 4, 6], 1);
    let ctx = [
        rand_tensor(&[5, cfg.text_dim], 2),
        rand_tensor(&[9, cfg.text_dim], 3),
    ];
    let ts = [900.0, 250.0];
    let both = dit
        .forward(&lat, &ts, &ctx, &ForwardOptions::default())
        .unwrap();
    for b in 0..2 {
        let one = dit
            .forward(
                &lat.narrow(0, b, 1).unwrap(),
                &ts[b..b + 1],
                &ctx[b..b + 1],
                &ForwardOptions::default(),
            )
            .unwrap();
        let err = rel_l2_tensors(&both.narrow(0, b, 1).unwrap(), &one);
        assert!(err < 1e-6, "sample {b}: {err}");
    }
}

#[test]
fn cached_kv_and_residual_hooks_reproduce_the_forward() {
    let (dit, cfg) = tiny();
    let lat = sample(1);
    let ctx = [rand_tensor(&[6, cfg.text_dim], 4)];
    let plain = dit
        .forward(&lat, &[500.0], &ctx, &ForwardOptions::default())
        .unwrap();
    let text = dit.encode_text(&ctx, true).unwrap();
    let opts = ForwardOptions {
        return_residual: true,
        signal: Some(TeaCacheSignal::Block0Input),
        ..Default::default()
    };
    let out = dit.forward_with(&lat, &[500.0], &text, &opts).unwrap();
    assert!(rel_l2_tensors(&out.velocity, &plain) < 1e-6);
    assert_eq!(out.signal.as_ref().unwrap().dims(), [1, 12, cfg.dim]);
    // Reusing the residual (TeaCache's skip) gives the same output without running the blocks.
    let reuse = ForwardOptions {
        reuse_residual: out.residual.clone(),
        ..Default::default()
    };
    let again = dit.forward_with(&lat, &[500.0], &text, &reuse).unwrap();
    assert!(rel_l2_tensors(&again.velocity, &plain) < 1e-6);
    // Skipping every block is the same as a zero residual.
    let skip_all = ForwardOptions {
        skip_blocks: (0..cfg.num_layers).collect(),
        ..Default::default()
    };
    let zero = ForwardOptions {
        reuse_residual: Some(Tensor::zeros([1, 12, cfg.dim], wanrt::DType::F32)),
        ..Default::default()
    };
    let a = dit
        .forward_with(&lat, &[500.0], &text, &skip_all)
        .unwrap()
        .velocity;
    let b = dit
        .forward_with(&lat, &[500.0], &text, &zero)
        .unwrap()
        .velocity;
    assert!(rel_l2_tensors(&a, &b) < 1e-6);
    assert!(
        rel_l2_tensors(&a, &plain) > 1e-3,
        "skipping blocks must change the output"
    );
    for (sig, dims) in [
        (TeaCacheSignal::TimeEmbedding, vec![1, cfg.dim]),
        (TeaCacheSignal::TimeProjection, vec![1, 6, cfg.dim]),
    ] {
        let o = ForwardOptions {
            signal: Some(sig),
            ..Default::default()
        };
        assert_eq!(
            dit.forward_with(&lat, &[500.0], &text, &o)
                .unwrap()
                .signal
                .unwrap()
                .dims(),
            dims.as_slice()
        );
    }
}

#[test]
fn nag_scale_one_is_plain_and_guides_only_chosen_samples() {
    let (dit, cfg) = tiny();
    let lat = sample(2);
    let ctx = [
        rand_tensor(&[6, cfg.text_dim], 5),
        rand_tensor(&[6, cfg.text_dim], 5),
    ];
    let neg = dit
        .encode_text(&[rand_tensor(&[8, cfg.text_dim], 6)], true)
        .unwrap();
    let plain = dit
        .forward(&lat, &[700.0, 700.0], &ctx, &ForwardOptions::default())
        .unwrap();
    let mut nag = NagParams::new(neg);
    nag.scale = 1.0;
    let one = dit
        .forward(
            &lat,
            &[700.0, 700.0],
            &ctx,
            &ForwardOptions {
                nag: Some(nag.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(rel_l2_tensors(&one, &plain) < 1e-6);
    nag.scale = 11.0;
    nag.guided = Some(vec![true, false]);
    let g = dit
        .forward(
            &lat,
            &[700.0, 700.0],
            &ctx,
            &ForwardOptions {
                nag: Some(nag),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(rel_l2_tensors(&g.narrow(0, 0, 1).unwrap(), &plain.narrow(0, 0, 1).unwrap()) > 1e-4);
    assert!(rel_l2_tensors(&g.narrow(0, 1, 1).unwrap(), &plain.narrow(0, 1, 1).unwrap()) < 1e-6);
}

// ---------------------------------------------------------------------------- bad input

fn assert_invalid<T: std::fmt::Debug>(r: wanrt::Result<T>, what: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.status(), wanrt::Status::InvalidArgument, "{what}: {e}");
            println!("{what}: {e}");
        }
        Ok(v) => panic!("{what}: accepted ({v:?})"),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let (dit, cfg) = tiny();
    let ctx = [rand_tensor(&[4, cfg.text_dim], 7)];
    let none = ForwardOptions::default();
    assert_invalid(
        dit.forward(&rand_tensor(&[1, 16, 2, 5, 6], 1), &[1.0], &ctx, &none),
        "odd height",
    );
    assert_invalid(
        dit.forward(&rand_tensor(&[1, 16, 2, 4, 7], 1), &[1.0], &ctx, &none),
        "odd width",
    );
    assert_invalid(
        dit.forward(&rand_tensor(&[1, 8, 2, 4, 6], 1), &[1.0], &ctx, &none),
        "wrong channels",
    );
    assert_invalid(
        dit.forward(&rand_tensor(&[16, 2, 4, 6], 1), &[1.0], &ctx, &none),
        "rank 4 latent",
    );
    let wide = [rand_tensor(&[4, cfg.text_dim + 1], 7)];
    assert_invalid(
        dit.forward(&sample(1), &[1.0], &wide, &none),
        "context width",
    );
    let long = [rand_tensor(&[cfg.text_len + 1, cfg.text_dim], 7)];
    assert_invalid(
        dit.forward(&sample(1), &[1.0], &long, &none),
        "context too long",
    );
    assert_invalid(
        dit.forward(&sample(1), &[f32::NAN], &ctx, &none),
        "NaN timestep",
    );
    assert_invalid(
        dit.forward(&sample(1), &[1.0, 2.0], &ctx, &none),
        "timestep count",
    );
    assert_invalid(
        dit.forward(&sample(2), &[1.0, 2.0], &ctx, &none),
        "context count",
    );
    let skip = ForwardOptions {
        skip_blocks: vec![cfg.num_layers],
        ..Default::default()
    };
    assert_invalid(
        dit.forward(&sample(1), &[1.0], &ctx, &skip),
        "skip block out of range",
    );
    let two = dit
        .encode_text(&[ctx[0].clone(), ctx[0].clone()], false)
        .unwrap();
    let nag = ForwardOptions {
        nag: Some(NagParams::new(two)),
        ..Default::default()
    };
    assert_invalid(
        dit.forward(&sample(1), &[1.0], &ctx, &nag),
        "NAG context of 2 samples",
    );
}

#[test]
fn checkpoint_config_mismatch_is_an_error() {
    let (weights, cfg) = tiny_weights();
    let w = || weights.clone();
    let bad = [
        (
            "more layers",
            DitConfig {
                num_layers: cfg.num_layers + 1,
                ..cfg.clone()
            },
        ),
        (
            "fewer layers",
            DitConfig {
                num_layers: cfg.num_layers - 1,
                ..cfg.clone()
            },
        ),
        (
            "other width",
            DitConfig {
                dim: cfg.dim * 2,
                num_heads: cfg.num_heads * 2,
                ..cfg.clone()
            },
        ),
        (
            "other ffn",
            DitConfig {
                ffn_dim: cfg.ffn_dim + 2,
                ..cfg.clone()
            },
        ),
        (
            "other text_dim",
            DitConfig {
                text_dim: cfg.text_dim * 2,
                ..cfg.clone()
            },
        ),
        (
            "indivisible heads",
            DitConfig {
                num_heads: 3,
                ..cfg.clone()
            },
        ),
    ];
    for (what, c) in bad {
        let e = WanDit::new(w(), c).expect_err(what);
        assert!(
            matches!(e, Error::InvalidConfig(_) | Error::MissingTensor { .. }),
            "{what}: {e}"
        );
        println!("{what}: {e}");
    }
    let mut missing = w();
    missing.remove("blocks.1.ffn.2.bias");
    let e = WanDit::new(missing, cfg).expect_err("missing tensor");
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
}

// ---------------------------------------------------------------------------- real configs

/// Random bf16 weights for every canonical tensor of `cfg` (uniform, `±1/sqrt(fan_in)`), built
/// from the shapes the model itself checks.
fn random_weights(cfg: &DitConfig) -> BTreeMap<String, Weight> {
    weight_shapes(cfg)
        .into_iter()
        .enumerate()
        .map(|(k, (name, dims))| {
            // Norm gains near 1, everything else scaled by its fan-in.
            let gain = name.contains("norm") && dims.len() == 1;
            let amp = 1.0 / (dims[1..].iter().product::<usize>().max(1) as f32).sqrt();
            let v: Vec<half::bf16> = noise(dims.iter().product(), k as u64)
                .into_iter()
                .map(|x| half::bf16::from_f32(if gain { 1.0 + 0.1 * x } else { x * amp }))
                .collect();
            (
                name,
                Weight::new(Tensor::from_slice(&v, dims.as_slice()).unwrap()),
            )
        })
        .collect()
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}

/// A real config cut to 2 layers, with random bf16 weights, at a small latent (1×4×8).
fn real_config_forward(preset: &str) {
    let cfg = DitConfig {
        num_layers: 2,
        ..DitConfig::preset(preset).unwrap()
    };
    let weights = random_weights(&cfg);
    let bytes: usize = weights
        .values()
        .map(|w| w.tensor.raw_bytes().unwrap().len())
        .sum();
    let dit = WanDit::new(weights, cfg.clone()).unwrap();
    let latent = rand_tensor(&[1, 16, 1, 4, 8], 11);
    let ctx = [rand_tensor(&[20, 4096], 12)];
    let start = std::time::Instant::now();
    let v = dit
        .forward(&latent, &[999.0], &ctx, &ForwardOptions::default())
        .unwrap();
    assert_eq!(v.dims(), [1, 16, 1, 4, 8]);
    assert!(v.to_f32_vec().unwrap().iter().all(|x| x.is_finite()));
    println!(
        "{preset}, 2 layers: weights {:.0} MiB (bf16), forward {:.2} s, peak RSS {:.0} MiB",
        bytes as f64 / 1048576.0,
        start.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
}

#[test]
fn real_config_1_3b_two_layers() {
    real_config_forward("1.3b");
}

#[test]
#[ignore = "about 1.9 GB of random weights; run with --ignored"]
fn real_config_14b_two_layers() {
    real_config_forward("14b");
}
