//! `wanrt inspect`, run as a process on every fixture model and on bad files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::model;

fn inspect(paths: &[PathBuf]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .arg("inspect")
        .args(paths)
        .output()
        .expect("run wanrt")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("utf-8 output")
}

/// What inspect prints for each fixture model: the model line (with a LoRA's `targets` and
/// `deltas` lines) and the tensor line.
const EXPECTED: [(&str, &str, &str, &str); 19] = [
    (
        "tiny-dit/dit_f32.safetensors",
        "safetensors",
        "dit t2v, original layout, f32, dim 64, 2 layers",
        "69 (f32 69)",
    ),
    (
        "tiny-dit/dit_bf16.safetensors",
        "safetensors",
        "dit t2v, original layout, bf16, dim 64, 2 layers",
        "69 (bf16 69)",
    ),
    (
        "tiny-dit/dit_comfy_bf16.safetensors",
        "safetensors",
        "dit t2v, ComfyUI layout, bf16, dim 64, 2 layers",
        "69 (bf16 69)",
    ),
    (
        "tiny-dit/dit_diffusers_f32.safetensors",
        "safetensors",
        "dit t2v, diffusers layout, f32, dim 64, 2 layers",
        "69 (f32 69)",
    ),
    (
        "tiny-dit/dit_fp8_e4m3fn_scaled.safetensors",
        "safetensors",
        "dit t2v, original layout, scaled fp8 e4m3fn, dim 64, 2 layers",
        "90 (bf16 49, fp8 e4m3fn 21, f32 20)",
    ),
    (
        "tiny-dit/dit_fp8_e5m2.safetensors",
        "safetensors",
        "dit t2v, original layout, fp8 e5m2, dim 64, 2 layers",
        "69 (bf16 49, fp8 e5m2 20)",
    ),
    (
        "tiny-lora/lora_musubi.safetensors",
        "safetensors",
        "lora, musubi format, rank 4, alpha 2, 20 modules\n  targets: blocks 0-1: cross_attn.{k,o,q,v}, ffn.{0,2}, self_attn.{k,o,q,v}",
        "60 (f32 60)",
    ),
    (
        "tiny-lora/lora_comfy.safetensors",
        "safetensors",
        "lora, ComfyUI format, rank 4, alpha 2, 20 modules\n  targets: blocks 0-1: cross_attn.{k,o,q,v}, ffn.{0,2}, self_attn.{k,o,q,v}",
        "60 (f32 60)",
    ),
    (
        "tiny-lora/lora_distill_lightx2v.safetensors",
        "safetensors",
        "lora, lightx2v format, rank 4, no alpha, 20 modules, 32 full deltas\n  targets: blocks 0-1: cross_attn.{k,o,q,v}, ffn.{0,2}, self_attn.{k,o,q,v}\n  deltas:  blocks 0-1: cross_attn.{k.bias,norm_k.weight,norm_q.weight,o.bias,q.bias,v.bias}, ffn.{0.bias,2.bias}, modulation, norm3.weight, self_attn.{k.bias,norm_k.weight,norm_q.weight,o.bias,q.bias,v.bias}",
        "72 (f32 72)",
    ),
    (
        "tiny-vae/vae_f32.safetensors",
        "safetensors",
        "vae, original layout, f32, dim 8, z_dim 16",
        "194 (f32 194)",
    ),
    (
        "tiny-vae/vae_diffusers_f32.safetensors",
        "safetensors",
        "vae, diffusers layout, f32, dim 8, z_dim 16",
        "194 (f32 194)",
    ),
    (
        "tiny-umt5/umt5_enc_f32.safetensors",
        "safetensors",
        "umt5 encoder, original layout, f32, dim 32, 2 layers",
        "22 (f32 22)",
    ),
    (
        "tiny-umt5/umt5_enc_hf_f32.safetensors",
        "safetensors",
        "umt5 encoder, transformers layout, f32, dim 32, 2 layers",
        "22 (f32 22)",
    ),
    (
        "tiny-vae/vae_bf16.pth",
        "pytorch .pth",
        "vae, original layout, bf16, dim 8, z_dim 16",
        "194 (bf16 194)",
    ),
    (
        "tiny-umt5/umt5_enc_bf16.pth",
        "pytorch .pth",
        "umt5 encoder, original layout, bf16, dim 32, 2 layers",
        "22 (bf16 22)",
    ),
    (
        "tiny-dit-sharded",
        "sharded safetensors",
        "dit t2v, original layout, bf16, dim 64, 2 layers",
        "69 (bf16 69)",
    ),
    (
        "tiny-dit-sharded/diffusion_pytorch_model.safetensors.index.json",
        "sharded safetensors",
        "dit t2v, original layout, bf16, dim 64, 2 layers",
        "69 (bf16 69)",
    ),
    (
        "tiny-dit-sharded/diffusion_pytorch_model-00001-of-00002.safetensors",
        "safetensors, shard 1 of 2 (inspect its folder or index.json for the whole model)",
        "dit t2v, original layout, bf16",
        "34 (bf16 34)",
    ),
    (
        "tiny-dit-sharded/diffusion_pytorch_model-00002-of-00002.safetensors",
        "safetensors, shard 2 of 2 (inspect its folder or index.json for the whole model)",
        "dit t2v, original layout, bf16",
        "35 (bf16 35)",
    ),
];

fn block(path: &Path, format: &str, model: &str, tensors: &str) -> String {
    format!(
        "{}\n  format:  {format}\n  model:   {model}\n  tensors: {tensors}\n",
        path.display()
    )
}

fn check_described(filter: impl Fn(&str) -> bool) {
    let cases: Vec<_> = EXPECTED.iter().filter(|e| filter(e.0)).collect();
    assert!(!cases.is_empty());
    let paths: Vec<PathBuf> = cases.iter().map(|e| model(e.0)).collect();
    let out = inspect(&paths);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{stderr}");
    let want: String = cases
        .iter()
        .zip(&paths)
        .map(|(e, p)| block(p, e.1, e.2, e.3))
        .collect();
    assert_eq!(stdout, want);
}

#[test]
fn describes_every_safetensors_fixture() {
    check_described(|r| r.ends_with(".safetensors"));
}

#[test]
fn describes_pth_fixtures() {
    check_described(|r| r.ends_with(".pth"));
}

#[test]
fn describes_sharded_folder() {
    check_described(|r| r == "tiny-dit-sharded");
}

#[test]
fn describes_one_shard_and_an_index() {
    check_described(|r| r.starts_with("tiny-dit-sharded/"));
}

/// A safetensors file from (name, dtype, shape) headers with zero-filled data.
fn safetensors_bytes(tensors: &[(&str, &str, &[usize])]) -> Vec<u8> {
    let mut header = Vec::new();
    let mut offset = 0;
    for (name, dtype, shape) in tensors {
        let size = shape.iter().product::<usize>() * if *dtype == "F32" { 4 } else { 2 };
        header.push(format!(
            r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{offset},{}]}}"#,
            offset + size
        ));
        offset += size;
    }
    let json = format!("{{{}}}", header.join(","));
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.resize(bytes.len() + offset, 0);
    bytes
}

/// Bad inputs: (file name, bytes or None for a directory, a fragment of the message).
fn bad_inputs(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let good = std::fs::read(model("tiny-dit/dit_f32.safetensors")).unwrap();
    let mut lying = good.clone();
    lying[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
    // A xorshift stream: random bytes that are the same on every run.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated.safetensors", good[..good.len() / 2].to_vec(), ""),
        ("random.safetensors", random, ""),
        ("lying_header.safetensors", lying, ""),
        ("empty.safetensors", Vec::new(), "too short"),
        (
            "unknown_key.safetensors",
            safetensors_bytes(&[
                ("head.modulation", "F32", &[1, 2, 8]),
                ("blocks.0.bogus.weight", "F32", &[8]),
            ]),
            "blocks.0.bogus.weight",
        ),
        (
            "no_heads.safetensors",
            safetensors_bytes(&[
                ("head.modulation", "F32", &[1, 2, 8]),
                ("blocks.0.modulation", "F32", &[1, 6, 8]),
            ]),
            "patch_embedding.weight",
        ),
    ];
    let mut out = Vec::new();
    for (name, bytes, needle) in files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        out.push((p, needle));
    }
    let sub = dir.join("a_directory");
    std::fs::create_dir(&sub).unwrap();
    out.push((sub, ""));
    out.push((dir.join("missing.safetensors"), "No such file"));
    out
}

fn assert_one_error_line(stderr: &str, path: &Path, needle: &str) {
    let prefix = format!("error: {}: ", path.display());
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&*path.display().to_string()))
        .collect();
    assert_eq!(lines.len(), 1, "{path:?}: {stderr}");
    assert!(
        lines[0].starts_with(&prefix) && lines[0].len() > prefix.len(),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(needle), "{} lacks `{needle}`", lines[0]);
}

#[test]
fn each_bad_file_gives_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    for (path, needle) in bad_inputs(dir.path()) {
        let out = inspect(std::slice::from_ref(&path));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{path:?}: {stderr}");
        assert_one_error_line(&stderr, &path, needle);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "{path:?}");
    }
}

#[test]
fn good_files_are_still_described_next_to_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bad = bad_inputs(dir.path());
    let good = model("tiny-lora/lora_musubi.safetensors");
    let mut paths: Vec<PathBuf> = bad.iter().map(|b| b.0.clone()).collect();
    paths.insert(2, good.clone());
    let out = inspect(&paths);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), bad.len(), "{stderr}");
    for (path, needle) in &bad {
        assert_one_error_line(&stderr, path, needle);
    }
    assert_eq!(
        stdout,
        block(
            &good,
            "safetensors",
            "lora, musubi format, rank 4, alpha 2, 20 modules\n  targets: blocks 0-1: cross_attn.{k,o,q,v}, ffn.{0,2}, self_attn.{k,o,q,v}",
            "60 (f32 60)"
        )
    );
}

#[test]
fn unrecognised_models_are_described_not_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("other.safetensors");
    std::fs::write(&p, safetensors_bytes(&[("foo.weight", "BF16", &[2, 3])])).unwrap();
    let out = inspect(std::slice::from_ref(&p));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("model:   unknown (not a Wan DiT, VAE, UMT5 encoder or LoRA)")
    );
}

#[test]
fn inspect_needs_a_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .arg("inspect")
        .output()
        .unwrap();
    assert!(!out.status.success());
}
