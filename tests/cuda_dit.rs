//! The DiT on a CUDA device: weights moved in their stored dtype, a transformer block and a whole
//! forward run there against the CPU backend with no device-to-host copy, and the
//! `dit_forward*` fixture cases the CUDA attention takes at their `rel_l2_bf16_compute` with the
//! bf16 and the 8-bit (`q8`) attention kernels. Compiled in every build; without a CUDA device each test prints why it
//! skipped.

use std::collections::BTreeMap;

use wanrt::backend::{cuda, Device};
use wanrt::io::config::{DitConfig, ModelType};
use wanrt::model::dit::{weight_shapes, AttentionChoice, ForwardOptions, WanDit};
use wanrt::tensor::random;
use wanrt::{DType, Tensor};

mod common;
#[allow(dead_code)]
mod kinds;

use common::{cuda_device as gpu, find_cases, fixtures_root, rel_l2_f32 as rel_l2, Case};
use kinds::Stop;

/// A small config whose heads (64 wide) the CUDA attention kernel takes.
fn config() -> DitConfig {
    DitConfig {
        model_type: ModelType::T2v,
        dim: 128,
        ffn_dim: 320,
        num_heads: 2,
        num_layers: 2,
        in_dim: 4,
        out_dim: 4,
        text_dim: 48,
        freq_dim: 32,
        text_len: 12,
        eps: 1e-6,
        patch_size: [1, 2, 2],
    }
}

/// Random values `±amp` (seeded), rounded to bf16 so that both backends see the same inputs.
fn noise(dims: &[usize], seed: u32, amp: f32) -> Tensor {
    let n = dims.iter().product();
    let v = random::values(n, seed)
        .into_iter()
        .map(|u| half::bf16::from_f32(amp * (2.0 * u - 1.0)).to_f32())
        .collect();
    Tensor::from_f32(v, dims).unwrap()
}

/// A model with random bf16 weights of amplitude 0.2 (0.1 for the modulation), times `gain`.
fn model(cfg: &DitConfig, gain: f32) -> WanDit {
    let weights: BTreeMap<_, _> = weight_shapes(cfg)
        .into_iter()
        .enumerate()
        .map(|(i, (name, dims))| {
            let amp = if name.ends_with("modulation") {
                0.1
            } else {
                0.2
            };
            let t = noise(&dims, 7000 + i as u32, gain * amp);
            (name, t.to_dtype(DType::BF16).unwrap().into())
        })
        .collect();
    WanDit::new(weights, cfg.clone()).unwrap()
}

#[test]
fn weights_move_in_their_stored_dtype() {
    let Some(dev) = gpu("weights_move_in_their_stored_dtype") else {
        return;
    };
    let dit = model(&config(), 1.0);
    let on = dit.to_device(dev).unwrap();
    assert_eq!((on.device(), on.weight_dtype()), (dev, DType::BF16));
    let back = on.to_device(Device::Cpu).unwrap();
    assert_eq!(back.weight_dtype(), DType::BF16);
}

/// Both blocks of the model on CUDA (batch 2, so the generic modulation path runs; cached and
/// uncached cross-attention K/V) against the CPU backend, with no download while they run.
#[test]
fn blocks_on_cuda_match_the_cpu_without_downloads() {
    let Some(dev) = gpu("blocks_on_cuda_match_the_cpu_without_downloads") else {
        return;
    };
    let cfg = config();
    let dit = model(&cfg, 1.0);
    let gpu_dit = dit.to_device(dev).unwrap();
    for batch in [1, 2] {
        let grid = [2, 3, 5];
        let s: usize = grid.iter().product();
        let x = noise(&[batch, s, cfg.dim], 100 + batch as u32, 1.0);
        let e0 = noise(&[batch, 6, cfg.dim], 200 + batch as u32, 0.3);
        let ctx: Vec<Tensor> = (0..batch)
            .map(|b| noise(&[5 + b, cfg.text_dim], 300 + b as u32, 1.0))
            .collect();
        let ctx_dev: Vec<Tensor> = ctx.iter().map(|c| c.to_device(dev).unwrap()).collect();
        for cache_kv in [false, true] {
            let text = dit.encode_text(&ctx, cache_kv).unwrap();
            let text_dev = gpu_dit.encode_text(&ctx_dev, cache_kv).unwrap();
            let (xd, ed) = (x.to_device(dev).unwrap(), e0.to_device(dev).unwrap());
            for block in 0..cfg.num_layers {
                let want = dit.block_forward(block, &x, &e0, grid, &text).unwrap();
                let before = cuda::download_count();
                let got = gpu_dit
                    .block_forward(block, &xd, &ed, grid, &text_dev)
                    .unwrap();
                assert_eq!(cuda::download_count(), before, "downloads in a block");
                assert_eq!(got.dims(), want.dims());
                let got = got.to_device(Device::Cpu).unwrap().to_f32_vec().unwrap();
                let err = rel_l2(&got, &want.to_f32_vec().unwrap());
                assert!(
                    err < 2e-2,
                    "block {block}, batch {batch}, cache {cache_kv}: rel L2 {err:e}"
                );
            }
        }
    }
}

/// A whole forward on CUDA against the CPU, with no device-to-host copy while it runs (the
/// model uploads the timestep sinusoid and the RoPE tables; it downloads nothing).
#[test]
fn forward_on_cuda_matches_the_cpu_without_downloads() {
    let Some(dev) = gpu("forward_on_cuda_matches_the_cpu_without_downloads") else {
        return;
    };
    let cfg = config();
    let dit = model(&cfg, 1.0);
    let latent = noise(&[1, cfg.in_dim, 2, 4, 6], 400, 1.0);
    let ctx = [noise(&[5, cfg.text_dim], 401, 1.0)];
    let want = dit
        .forward(&latent, &[600.0], &ctx, &ForwardOptions::default())
        .unwrap();
    let gpu_dit = dit.to_device(dev).unwrap();
    let ctx_dev = [ctx[0].to_device(dev).unwrap()];
    let latent_dev = latent.to_device(dev).unwrap();
    let before = cuda::download_count();
    let got = gpu_dit
        .forward(&latent_dev, &[600.0], &ctx_dev, &ForwardOptions::default())
        .unwrap();
    assert_eq!(cuda::download_count(), before, "downloads in a forward");
    let got = got.to_device(Device::Cpu).unwrap().to_f32_vec().unwrap();
    let err = rel_l2(&got, &want.to_f32_vec().unwrap());
    assert!(err < 2e-2, "forward: rel L2 {err:e}");
}

/// Every `dit_forward*` fixture case with a `rel_l2_bf16_compute` and heads the CUDA attention
/// takes (64 or 128 wide: the `tiny-dit-hd128` cases, NAG included) with the DiT on CUDA, within
/// that tolerance.
#[test]
fn dit_forward_fixture_cases_on_cuda_at_the_bf16_tolerance() {
    fixture_cases_on_cuda(
        "dit_forward_fixture_cases_on_cuda_at_the_bf16_tolerance",
        AttentionChoice::Bf16,
    );
}

/// The same cases with the 8-bit attention kernel (issue 15: `q8` at the bf16 tolerance).
#[test]
fn dit_forward_fixture_cases_on_cuda_with_q8_attention() {
    fixture_cases_on_cuda(
        "dit_forward_fixture_cases_on_cuda_with_q8_attention",
        AttentionChoice::Q8,
    );
}

/// Runs every `dit_forward*` fixture case that states a `rel_l2_bf16_compute` and has heads of 64
/// or 128 on CUDA with the self-attention of `choice`, each held to that tolerance; prints why it
/// skips any other case, and skips everything (printing why) without a device.
fn fixture_cases_on_cuda(test: &str, choice: AttentionChoice) {
    let Some(dev) = gpu(test) else {
        return;
    };
    let dirs = find_cases(&fixtures_root()).expect("the fixture folder");
    let mut ran = 0;
    for dir in dirs {
        let case = Case::load(&dir).unwrap();
        if !case.str("kind").unwrap().starts_with("dit_forward") {
            continue;
        }
        // Cases with only an f32 tolerance (dit_forward_nag_s3, _s11: 1e-4) are out of a bf16
        // backend's reach; the CPU harness skips them under WANRT_ATTENTION=q8 too.
        let Some(tol) = case.bf16_compute_tolerance().unwrap() else {
            println!("{}: skipped, no rel_l2_bf16_compute", case.name);
            continue;
        };
        // The CUDA attention kernels (bf16 and 8-bit) take head_dim 64 and 128; the `tiny-dit`
        // cases have heads of 16.
        let cfg = DitConfig::from_json_file(
            &case.path("config").unwrap(),
            DitConfig::preset("1.3b").unwrap(),
        )
        .unwrap();
        let head_dim = cfg.dim / cfg.num_heads;
        if head_dim != 64 && head_dim != 128 {
            println!(
                "{}: skipped, head_dim {head_dim} has no CUDA attention kernel",
                case.name
            );
            continue;
        }
        let checks = match kinds::dit::run_with(&case, dev, choice.on(dev)) {
            Ok(c) => c,
            Err(Stop::Skip(why) | Stop::Fail(why)) => panic!("{}: {why}", case.name),
        };
        let name = choice.name();
        for c in checks {
            println!(
                "{} {}: CUDA {name} rel_l2={:.3e} bound={tol:e}",
                case.name, c.name, c.rel_l2
            );
            assert!(
                c.rel_l2 <= tol,
                "{} {} on CUDA with {name}: {:e}",
                case.name,
                c.name,
                c.rel_l2
            );
        }
        ran += 1;
    }
    assert!(
        ran > 0,
        "no dit_forward case under {}",
        fixtures_root().display()
    );
}

/// The 1.3B config cut to 2 layers with random weights at 832×480×81 (32,760 tokens, head_dim
/// 128) on CUDA against the CPU backend, compared on the first and last frames' tokens.
#[test]
fn a_1_3b_config_forward_at_32760_tokens_matches_the_cpu() {
    let Some(dev) = gpu("a_1_3b_config_forward_at_32760_tokens_matches_the_cpu") else {
        return;
    };
    let cfg = DitConfig {
        num_layers: 2,
        ..DitConfig::preset("1.3b").unwrap()
    };
    // Weights scaled towards 1/√fan-in so that activations stay O(1) at the real width.
    let dit = model(&cfg, 0.05);
    let latent = noise(&[1, cfg.in_dim, 21, 60, 104], 500, 1.0);
    let ctx = [noise(&[120, cfg.text_dim], 501, 1.0)];
    let want = dit
        .forward(&latent, &[700.0], &ctx, &ForwardOptions::default())
        .unwrap()
        .to_f32_vec()
        .unwrap();
    let got = dit
        .to_device(dev)
        .unwrap()
        .forward(
            &latent.to_device(dev).unwrap(),
            &[700.0],
            &[ctx[0].to_device(dev).unwrap()],
            &ForwardOptions::default(),
        )
        .unwrap()
        .to_device(Device::Cpu)
        .unwrap()
        .to_f32_vec()
        .unwrap();
    assert_eq!(got.len(), want.len());
    // The output is [1, C, T, H, W]: per channel, the first and the last latent frame.
    let frame = 60 * 104;
    let per_channel = 21 * frame;
    let slice = |v: &[f32]| -> Vec<f32> {
        (0..cfg.out_dim)
            .flat_map(|c| {
                let base = c * per_channel;
                let last = base + 20 * frame;
                v[base..base + frame]
                    .iter()
                    .chain(&v[last..last + frame])
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let err = rel_l2(&slice(&got), &slice(&want));
    println!("1.3B config, 2 layers, 32,760 tokens: CUDA vs CPU rel_l2={err:.3e}");
    assert!(err < 3e-2, "rel L2 {err:e}");
}
