//! The DiT on a CUDA device: weights moved in their stored dtype, a transformer block run there
//! against the CPU backend, with no device-to-host copy during the block. Compiled in every
//! build; without a CUDA device each test prints why it skipped.

use std::collections::BTreeMap;

use wanrt::backend::{cuda, Device};
use wanrt::io::config::{DitConfig, ModelType};
use wanrt::model::dit::{weight_shapes, ForwardOptions, WanDit};
use wanrt::tensor::random;
use wanrt::{DType, Error, Tensor};

mod common;

use common::{cuda_device as gpu, rel_l2_f32 as rel_l2};

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

/// A model with random bf16 weights.
fn model(cfg: &DitConfig) -> WanDit {
    let weights: BTreeMap<_, _> = weight_shapes(cfg)
        .into_iter()
        .enumerate()
        .map(|(i, (name, dims))| {
            let amp = if name.ends_with("modulation") {
                0.1
            } else {
                0.2
            };
            let t = noise(&dims, 7000 + i as u32, amp);
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
    let dit = model(&config());
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
    let dit = model(&cfg);
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

/// A whole forward on CUDA: today the patch embedding (conv3d, the VAE/T5 lane's CUDA op) is
/// the one op the DiT uses that has no CUDA kernel, and its refusal is a typed error.
#[test]
fn forward_on_cuda_is_a_result_never_a_panic() {
    let Some(dev) = gpu("forward_on_cuda_is_a_result_never_a_panic") else {
        return;
    };
    let cfg = config();
    let dit = model(&cfg);
    let latent = noise(&[1, cfg.in_dim, 2, 4, 6], 400, 1.0);
    let ctx = [noise(&[5, cfg.text_dim], 401, 1.0)];
    let want = dit
        .forward(&latent, &[600.0], &ctx, &ForwardOptions::default())
        .unwrap();
    let gpu_dit = dit.to_device(dev).unwrap();
    let ctx_dev = [ctx[0].to_device(dev).unwrap()];
    let got = gpu_dit.forward(
        &latent.to_device(dev).unwrap(),
        &[600.0],
        &ctx_dev,
        &ForwardOptions::default(),
    );
    match got {
        Ok(v) => {
            let v = v.to_device(Device::Cpu).unwrap().to_f32_vec().unwrap();
            let err = rel_l2(&v, &want.to_f32_vec().unwrap());
            assert!(err < 2e-2, "forward: rel L2 {err:e}");
        }
        Err(e) => assert!(
            matches!(e, Error::Device(_)) && e.to_string().contains("conv3d"),
            "{e}"
        ),
    }
}
