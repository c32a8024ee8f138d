//! A pipeline built from weights in memory ([`Pipeline::from_weights`], what `wanrt bench
//! pipeline` runs) on CUDA: it plans and places its models as [`Pipeline::load`] does with the
//! same weights read from files (the same device plan, the same placement, the same bits), and
//! `wanrt bench pipeline --device cuda` reports that plan with the VAE decoding on the device.
//! Compiled in every build; without a CUDA device each test prints why it skipped. The bench
//! runs `$WANRT_BIN` when set (the GPU runner's bundled binary), else the one cargo built.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use wanrt::backend::Device;
use wanrt::io::config::{T5Config, VaeConfig};
use wanrt::io::layout::{canonical_weights, weight_metas};
use wanrt::model::dit::{AttentionChoice, WanDit};
use wanrt::model::t5::Umt5Tokenizer;
use wanrt::pipeline::{Flow, GenerateRequest, LoadOptions, ModelWeights, Pipeline};

/// `path`'s weights under their canonical names.
fn canonical(path: &Path) -> std::collections::BTreeMap<String, wanrt::tensor::Weight> {
    canonical_weights(&wanrt::io::open(path).unwrap())
        .unwrap()
        .1
}

#[test]
fn weights_in_memory_plan_and_place_like_the_same_weights_loaded_from_files() {
    let test = "weights_in_memory_plan_and_place_like_the_same_weights_loaded_from_files";
    let Some(dev) = common::cuda_device(test) else {
        return;
    };
    let files = common::tiny_files_bf16();
    let in_memory = || {
        let (t5, vae) = (canonical(&files.t5), canonical(&files.vae));
        let t5_cfg = T5Config::load(&weight_metas(&t5), files.t5_config.as_deref()).unwrap();
        let vae_cfg = VaeConfig::load(&weight_metas(&vae), files.vae_config.as_deref()).unwrap();
        ModelWeights {
            tokenizer: Umt5Tokenizer::from_file(&files.tokenizer).unwrap(),
            t5: (t5, t5_cfg),
            dit: WanDit::read_weights(&files.dit, files.dit_config.as_deref()).unwrap(),
            vae: (vae, vae_cfg),
        }
    };
    let mut req = GenerateRequest::new("a red fox in the snow");
    (req.width, req.height, req.frames, req.steps, req.seed) = (32, 32, 5, 3, Some(7));
    req.attention = AttentionChoice::Bf16;
    // A limit far below the free memory, so that both plans start from the same budget.
    for blocks_to_swap in [None, Some(1)] {
        let options = LoadOptions {
            device: dev,
            blocks_to_swap,
            max_device_memory: Some(4 << 30),
            ..LoadOptions::default()
        };
        let loaded = Pipeline::load(&files, &[], &options).unwrap();
        let built = Pipeline::from_weights(in_memory(), &options).unwrap();
        for p in [&loaded, &built] {
            assert_eq!((p.device(), p.decode_device()), (dev, dev));
        }
        assert_eq!(
            built.text_encoder().device(),
            loaded.text_encoder().device()
        );
        assert_eq!(built.dit().swapped_blocks(), loaded.dit().swapped_blocks());
        let run = |p: &Pipeline| p.generate(&req, &mut |_| Flow::Continue).unwrap();
        let (a, b) = (run(&loaded), run(&built));
        let plan = a.device_plan.clone().expect("a plan on CUDA");
        println!("{blocks_to_swap:?}: {}", plan.summary());
        assert_eq!(plan.budget, 4 << 30);
        assert_eq!(b.device_plan, Some(plan));
        assert_eq!(
            a.latent.to_f32_vec().unwrap(),
            b.latent.to_f32_vec().unwrap()
        );
        assert_eq!(a.frames, b.frames);
    }
}

#[test]
fn bench_pipeline_on_cuda_reports_the_plan_and_decodes_there() {
    let test = "bench_pipeline_on_cuda_reports_the_plan_and_decodes_there";
    let Some(dev) = common::cuda_device(test) else {
        return;
    };
    // `$WANRT_BIN` where the GPU runner puts the bundle's binary, else the one cargo built.
    let wanrt = std::env::var_os("WANRT_BIN").unwrap_or(env!("CARGO_BIN_EXE_wanrt").into());
    let out = Command::new(wanrt)
        .args([
            "bench", "pipeline", "--config", "tiny", "--width", "48", "--height", "32",
        ])
        .args([
            "--frames", "5", "--steps", "2", "--prompt", "a fox", "--device", "cuda",
        ])
        .args([
            "--blocks-to-swap",
            "1",
            "--max-device-memory",
            "4G",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let plan = &v["plan"];
    println!("bench pipeline on {dev}: plan {plan}");
    assert_eq!(plan["blocks_to_swap"], 1, "{v}");
    assert_eq!(plan["budget"], 4u64 << 30, "{v}");
    assert_eq!(v["max_device_memory"], 4u64 << 30);
    assert_eq!(v["device"], dev.to_string());
    assert_eq!(v["vae_device"], dev.to_string());
    let t5 = match plan["text_encoder"].as_str() {
        Some("device") => dev,
        _ => Device::Cpu,
    };
    assert_eq!(v["t5_device"], t5.to_string(), "{v}");
    assert!(v["device_memory_mb"].as_f64().unwrap() > 0.0);
}
