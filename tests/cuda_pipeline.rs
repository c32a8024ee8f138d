//! The pipeline with its DiT on CUDA: the demo model generates there, the latent matching the
//! CPU run's at the bf16-compute tolerance, the metadata naming the device; a pipeline loaded
//! there from files merges its LoRA on the device like the CPU merge (also after a strength
//! change, with blocks swapped too), records its device plan, and computes the same bits with blocks swapped; a DiT's
//! forward with swapped blocks equals the resident one bit for bit. And the fixture cases that
//! state no bf16 bound of their own, held on CUDA to the DiT cases' `rel_l2_bf16_compute`
//! ([`BF16_BOUND`]; the fixtures are f64): the `vae_decode`, `vae_encode` and `t5_encode` cases
//! with their models moved to the device, the `pipeline` case through a pipeline loaded there
//! (its device plan, the VAE decoding there), and every `sampler` case with its latent on the
//! device in f32. Compiled in every build; without a CUDA device each test prints why it
//! skipped.

mod common;
#[allow(dead_code)]
mod kinds;

use wanrt::backend::Device;
use wanrt::model::dit::{AttentionChoice, ForwardOptions, TeaCacheSignal, WanDit};
use wanrt::pipeline::{Flow, GenerateRequest, Generation, LoadOptions, LoraSpec, Pipeline};
use wanrt::Tensor;

use common::{cuda_device, find_cases, fixtures_root, model, Case};
use kinds::bf16::{load, worst, BF16_BOUND, VAE_T5_CASES};

/// The CUDA backend computes in bf16 with f32 accumulation: the tolerance of the fixtures'
/// `rel_l2_bf16_compute` for one DiT forward (0.03); the latent moves less than a velocity.
const BF16_LATENT_TOLERANCE: f64 = 3e-2;

#[test]
fn the_demo_generates_on_cuda_like_on_the_cpu() {
    let Some(dev) = common::cuda_device("the_demo_generates_on_cuda_like_on_the_cpu") else {
        return;
    };
    let mut req = GenerateRequest::new("a red fox in the snow");
    (req.width, req.height, req.frames, req.steps, req.seed) = (32, 32, 5, 3, Some(11));
    // The exact attention on both (auto would pick the 8-bit kernel on the GPU).
    req.attention = AttentionChoice::Bf16;
    let cpu = Pipeline::demo(0).unwrap();
    let gpu = Pipeline::demo(0).unwrap().to_device(dev).unwrap();
    assert_eq!(gpu.device(), dev);
    let run = |p: &Pipeline| p.generate(&req, &mut |_| Flow::Continue).unwrap();
    let (a, b) = (run(&cpu), run(&gpu));
    assert_eq!(b.metadata(gpu.info())["device"], dev.to_string());
    assert_eq!(
        b.latent.device(),
        wanrt::backend::Device::Cpu,
        "the latent comes back"
    );
    assert_eq!(b.frames.len(), a.frames.len());
    let err = common::rel_l2_tensors(&b.latent, &a.latent);
    println!("demo latent, CUDA against CPU: rel_l2 {err:.2e}");
    assert!(err < BF16_LATENT_TOLERANCE, "rel_l2 {err}");
}

/// The fixtures' tiny models (the bf16 DiT).
fn tiny_files() -> wanrt::pipeline::ModelFiles {
    common::tiny_files_bf16()
}

fn small_request() -> GenerateRequest {
    let mut req = GenerateRequest::new("a red fox in the snow");
    (req.width, req.height, req.frames, req.steps, req.seed) = (32, 32, 5, 3, Some(7));
    req.guidance_scale = 3.0;
    req.attention = AttentionChoice::Bf16;
    req
}

fn lora(strength: f32) -> Vec<LoraSpec> {
    vec![LoraSpec {
        path: model("tiny-lora/lora_distill_lightx2v.safetensors"),
        strength,
    }]
}

fn generate(p: &Pipeline) -> Generation {
    p.generate(&small_request(), &mut |_| Flow::Continue)
        .unwrap()
}

#[test]
fn a_pipeline_loaded_on_cuda_merges_there_like_the_cpu_and_swaps_blocks_bit_for_bit() {
    let test = "a_pipeline_loaded_on_cuda_merges_there_like_the_cpu_and_swaps_blocks_bit_for_bit";
    let Some(dev) = common::cuda_device(test) else {
        return;
    };
    let files = tiny_files();
    let on = |blocks_to_swap| LoadOptions {
        device: dev,
        blocks_to_swap,
        ..LoadOptions::default()
    };
    let cpu = Pipeline::load(&files, &lora(1.0), &LoadOptions::default()).unwrap();
    let mut gpu = Pipeline::load(&files, &lora(1.0), &on(None)).unwrap();
    let (a, b) = (generate(&cpu), generate(&gpu));
    let err = common::rel_l2_tensors(&b.latent, &a.latent);
    println!("LoRA merged on the device, latent against the CPU merge: rel_l2 {err:.2e}");
    assert!(err < BF16_LATENT_TOLERANCE, "rel_l2 {err}");
    let meta = b.to_json(gpu.info());
    let plan = &meta["device_plan"];
    assert_eq!(plan["blocks_to_swap"], 0, "{meta}");
    assert!(plan["budget"].as_u64().unwrap() > 0, "{meta}");
    assert!(plan["text_encoder"].is_string() && plan["vae_tiling"].is_string());

    // Two of the two blocks swapped: the same bits.
    let mut swapped = Pipeline::load(&files, &lora(1.0), &on(Some(2))).unwrap();
    assert_eq!(swapped.dit().swapped_blocks(), 2);
    let c = generate(&swapped);
    assert_eq!(c.device_plan.as_ref().unwrap().blocks_to_swap, 2);
    assert_eq!(
        c.latent.to_f32_vec().unwrap(),
        b.latent.to_f32_vec().unwrap()
    );

    // A new strength, re-merged on the device, against the CPU merged at it.
    gpu.set_lora_strength(0, 0.5).unwrap();
    assert_eq!(gpu.info().loras[0].strength, 0.5);
    let cpu_half = Pipeline::load(&files, &lora(0.5), &LoadOptions::default()).unwrap();
    let (a, b) = (generate(&cpu_half), generate(&gpu));
    let err = common::rel_l2_tensors(&b.latent, &a.latent);
    println!("re-merged at 0.5, latent against the CPU merge: rel_l2 {err:.2e}");
    assert!(err < BF16_LATENT_TOLERANCE, "rel_l2 {err}");
    // Re-merged in place in the swapped blocks' pinned memory: the resident model's bits.
    swapped.set_lora_strength(0, 0.5).unwrap();
    assert_eq!(
        generate(&swapped).latent.to_f32_vec().unwrap(),
        b.latent.to_f32_vec().unwrap()
    );
}

#[test]
fn a_forward_with_swapped_blocks_equals_the_resident_one_bit_for_bit() {
    let test = "a_forward_with_swapped_blocks_equals_the_resident_one_bit_for_bit";
    let Some(dev) = common::cuda_device(test) else {
        return;
    };
    let dit = WanDit::open(
        model("tiny-dit/dit_fp8_e4m3fn_scaled.safetensors"),
        Some(&model("tiny-dit/config.json")),
    )
    .unwrap();
    let cfg = dit.config().clone();
    let latent = wanrt::sampler::noise(3, &[1, cfg.in_dim, 2, 4, 6])
        .unwrap()
        .to_device(dev)
        .unwrap();
    let context = wanrt::sampler::noise(4, &[7, cfg.text_dim]).unwrap();
    let opts = ForwardOptions {
        signal: Some(TeaCacheSignal::Block0Input),
        ..ForwardOptions::default()
    };
    let run = |m: &WanDit, cache_kv: bool| {
        let text = m
            .encode_text(&[context.to_device(dev).unwrap()], cache_kv)
            .unwrap();
        let out = m.forward_with(&latent, &[600.0], &text, &opts).unwrap();
        let bits = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_f32_vec().unwrap();
        (bits(&out.velocity), bits(&out.signal.unwrap()))
    };
    let resident = dit.to_device(dev).unwrap();
    let want = [run(&resident, false), run(&resident, true)];
    for swap in 1..=cfg.num_layers {
        let swapped = dit.to_device_with_swap(dev, swap).unwrap();
        assert_eq!(swapped.swapped_blocks(), swap);
        for cache_kv in [false, true] {
            let got = run(&swapped, cache_kv);
            assert!(
                got == want[usize::from(cache_kv)],
                "{swap} swapped, cache {cache_kv}"
            );
        }
    }
    assert!(dit.to_device_with_swap(dev, cfg.num_layers + 1).is_err());
    assert!(dit.to_device_with_swap(Device::Cpu, 1).is_err());
}

/// Runs `cases` on the device and holds each to the bound.
fn check_on_cuda(test: &str, cases: &[Case]) {
    let Some(dev) = cuda_device(test) else {
        return;
    };
    assert!(!cases.is_empty(), "{test}: no case found");
    for case in cases {
        let err = worst(case, dev);
        println!("{}: CUDA rel_l2={err:.3e} bound={BF16_BOUND:e}", case.name);
        assert!(err <= BF16_BOUND, "{} on CUDA: {err:e}", case.name);
    }
}

/// Every case of `kind` under the fixtures.
fn cases_of(kind: &str) -> Vec<Case> {
    let dirs = find_cases(&fixtures_root().join("cases")).unwrap_or_default();
    dirs.iter()
        .filter_map(|d| Case::load(d).ok())
        .filter(|c| c.kind == kind)
        .collect()
}

#[test]
fn vae_and_t5_fixtures_on_cuda() {
    check_on_cuda("vae_and_t5_fixtures_on_cuda", &load(&VAE_T5_CASES));
}

#[test]
fn pipeline_fixtures_on_cuda() {
    check_on_cuda("pipeline_fixtures_on_cuda", &cases_of("pipeline"));
}

#[test]
fn sampler_fixtures_on_cuda() {
    check_on_cuda("sampler_fixtures_on_cuda", &cases_of("sampler"));
}
