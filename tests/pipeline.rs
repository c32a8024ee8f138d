//! The pipeline end to end: the `pipeline_t2v` fixture through `wanrt generate` (its PNG frames
//! against the expected frames, its MP4 decoded), model folders in both layouts, LoRAs (wrong
//! ones refused, trigger phrases offered), cancellation (from the callback and by Ctrl-C), bad
//! input refused before any work, and the `--demo` run. The same fixture through the library
//! API is the harness's `pipeline` kind (`tests/kinds/pipeline.rs`). Unix only: model folders
//! are built from symbolic links, and Ctrl-C is a SIGINT.
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{f64_data, fixtures_root, model, readback, tensor, Case};
use wanrt::lora::Mode;
use wanrt::model::dit::AttentionChoice;
use wanrt::model::vae::Tiling;
use wanrt::pipeline::{
    Flow, GenerateRequest, LoadOptions, LoraSpec, ModelFiles, ModelSource, Pipeline, Progress,
    Stage, VaeTiling, MAX_SEED,
};
use wanrt::{Error, Tensor};

fn case() -> Case {
    Case::load(&fixtures_root().join("cases/pipeline_t2v")).unwrap()
}

fn wanrt(args: &[OsString]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .arg("generate")
        .args(args)
        .output()
        .expect("run wanrt")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--flag value` pairs as arguments.
fn args(pairs: &[(&str, &dyn AsRef<std::ffi::OsStr>)]) -> Vec<OsString> {
    let mut out = Vec::new();
    for (flag, value) in pairs {
        out.push(OsString::from(flag));
        if !value.as_ref().is_empty() {
            out.push(value.as_ref().to_os_string());
        }
    }
    out
}

/// The fixture's explicit model files as flags.
fn model_flags() -> Vec<OsString> {
    model_flags_but(None)
}

/// [`model_flags`] without `skip`.
fn model_flags_but(skip: Option<&str>) -> Vec<OsString> {
    let c = case();
    let p = |k: &str| c.path(k).unwrap();
    let flags = [
        ("--dit", p("dit")),
        ("--vae", p("vae")),
        ("--t5", p("t5")),
        ("--tokenizer", p("tokenizer")),
        ("--dit-config", p("dit_config")),
        ("--vae-config", p("vae_config")),
        ("--t5-config", p("t5_config")),
    ];
    let mut out = Vec::new();
    for (flag, path) in flags.iter().filter(|(f, _)| Some(*f) != skip) {
        out.extend([OsString::from(flag), path.clone().into_os_string()]);
    }
    out
}

/// A file named like a folder entry: a symbolic link to a fixture file.
fn link(src: &Path, dst: &Path) {
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(src, dst).unwrap();
}

/// Decodes a PNG into RGB8.
fn read_png(path: &Path) -> (Vec<u8>, u32, u32) {
    let decoder = png::Decoder::new(BufReader::new(fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (buf, info.width, info.height)
}

/// Checks an MP4 of `frames` frames of `w`×`h` at 16 fps with three readers.
fn check_mp4(path: &Path, frames: usize, w: usize, h: usize) {
    let info = wanrt::video::probe(path).unwrap();
    assert_eq!((info.frames, info.width, info.height), (frames, w, h));
    assert!((info.fps.unwrap() - 16.0).abs() < 1e-9);
    assert!(info.metadata.unwrap().contains("\"seed\""));
    let decoded = readback::decode(path);
    assert_eq!(
        (decoded.frames, decoded.width, decoded.height),
        (frames, w, h)
    );
    if let Some(report) = readback::ffprobe(path) {
        let s = &report["streams"][0];
        let frames_read: usize = s["nb_read_frames"].as_str().unwrap().parse().unwrap();
        assert_eq!(frames_read, frames);
        assert_eq!(
            (s["width"].as_u64(), s["height"].as_u64()),
            (Some(w as u64), Some(h as u64))
        );
        assert_eq!(s["r_frame_rate"], "16/1");
    }
}

// ------------------------------------------------------------------- the fixture via the CLI

#[test]
fn cli_reproduces_the_fixture_frames() {
    let c = case();
    let dir = tempfile::tempdir().unwrap();
    let frames_dir = dir.path().join("frames");
    let out = dir.path().join("out.mp4");
    let num = |k: &str| c.f64(k).unwrap().to_string();
    let mut a = model_flags();
    a.extend(args(&[
        ("--prompt", &c.str("prompt").unwrap()),
        ("--negative-prompt", &c.str("negative_prompt").unwrap()),
        ("--sampler", &c.str("solver").unwrap()),
        ("--steps", &num("steps")),
        ("--shift", &num("shift")),
        ("--cfg", &num("guidance_scale")),
        ("--frames", &num("frames")),
        ("--width", &num("width")),
        ("--height", &num("height")),
        ("--seed", &"0"),
        ("--latent-init", &c.path("inputs").unwrap()),
        ("--frames-dir", &frames_dir),
        ("--out", &out),
        ("--json", &""),
    ]));
    let run = wanrt(&a);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(json["seed"], 0);
    assert_eq!(json["latent_init"], true);
    assert!(json["timings"]["steps_s"].as_array().unwrap().len() == 4);

    let expected = c.tensors("expected").unwrap();
    let want = tensor(&expected, "frames").unwrap();
    let [f, h, w] = [want.dims()[0], want.dims()[1], want.dims()[2]];
    let want = f64_data(want).unwrap();
    let tol = c.json["tolerance"]["frames_max_abs_diff"].as_f64().unwrap();
    let mut worst = 0.0f64;
    for i in 0..f {
        let (rgb, pw, ph) = read_png(&frames_dir.join(wanrt::video::frame_file_name(i)));
        assert_eq!((pw as usize, ph as usize), (w, h));
        let n = h * w * 3;
        for (a, b) in rgb.iter().zip(&want[i * n..(i + 1) * n]) {
            worst = worst.max((*a as f64 - b).abs());
        }
    }
    assert!(!frames_dir.join(wanrt::video::frame_file_name(f)).exists());
    eprintln!("CLI frames: max abs diff {worst} (tolerance {tol})");
    assert!(worst <= tol, "max abs diff {worst} > {tol}");
    check_mp4(&out, f, w, h);
}

// ------------------------------------------------------------------- model folders

/// The tiny models as the official Wan-AI folder: the sharded DiT with its config, the
/// `.pth` VAE and text encoder, the tokenizer under google/umt5-xxl.
fn wan_ai_folder(dir: &Path, with_vae: bool) {
    for e in fs::read_dir(model("tiny-dit-sharded")).unwrap() {
        let p = e.unwrap().path();
        link(&p, &dir.join(p.file_name().unwrap()));
    }
    if with_vae {
        link(&model("tiny-vae/vae_bf16.pth"), &dir.join("Wan2.1_VAE.pth"));
    }
    link(
        &model("tiny-umt5/umt5_enc_bf16.pth"),
        &dir.join("models_t5_umt5-xxl-enc-bf16.pth"),
    );
    link(
        &model("tiny-umt5/tokenizer.json"),
        &dir.join("google/umt5-xxl/tokenizer.json"),
    );
}

/// The tiny fixture models as explicit files.
fn tiny_files() -> ModelFiles {
    ModelSource {
        dit: Some(model("tiny-dit/dit_f32.safetensors")),
        vae: Some(model("tiny-vae/vae_f32.safetensors")),
        t5: Some(model("tiny-umt5/umt5_enc_f32.safetensors")),
        tokenizer: Some(model("tiny-umt5/tokenizer.json")),
        dit_config: Some(model("tiny-dit/config.json")),
        ..ModelSource::default()
    }
    .resolve()
    .unwrap()
}

/// A small request the tiny models run in well under a second.
fn small(prompt: &str) -> GenerateRequest {
    let mut r = GenerateRequest::new(prompt);
    (r.width, r.height, r.frames, r.steps, r.seed) = (32, 32, 5, 2, Some(3));
    r
}

#[test]
fn both_folder_layouts_load_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let wan = dir.path().join("Wan2.1-T2V-tiny");
    wan_ai_folder(&wan, true);
    let source = ModelSource {
        models_dir: Some(wan.clone()),
        ..ModelSource::default()
    };
    let files = source.resolve().unwrap();
    assert_eq!(files.layout, wanrt::pipeline::ModelLayout::WanAi);
    assert_eq!(files.dit, wan);
    let pipe = Pipeline::load(&files, &[], &wanrt::pipeline::LoadOptions::default()).unwrap();
    let g = pipe
        .generate(&small("a hill"), &mut |_| Flow::Continue)
        .unwrap();
    assert_eq!((g.frame_count, g.width, g.height), (5, 32, 32));
    assert_eq!(g.frames.len(), 5 * 32 * 32 * 3);

    // ComfyUI's tree, with a stray file the scan must pass over, and no tokenizer at first.
    let comfy = dir.path().join("ComfyUI");
    let m = comfy.join("models");
    link(
        &model("tiny-dit/dit_comfy_bf16.safetensors"),
        &m.join("diffusion_models/wan_tiny.safetensors"),
    );
    link(
        &model("tiny-vae/vae_f32.safetensors"),
        &m.join("vae/wan_2.1_vae.safetensors"),
    );
    link(
        &model("tiny-umt5/umt5_enc_hf_f32.safetensors"),
        &m.join("text_encoders/umt5_tiny.safetensors"),
    );
    link(
        &model("tiny-lora/lora_comfy.safetensors"),
        &m.join("text_encoders/not_a_text_encoder.safetensors"),
    );
    let source = ModelSource {
        models_dir: Some(comfy.clone()),
        dit_config: Some(model("tiny-dit/config.json")),
        ..ModelSource::default()
    };
    let e = source.resolve().unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("ComfyUI") && e.contains("--tokenizer"),
        "{e}"
    );
    link(
        &model("tiny-umt5/tokenizer.json"),
        &m.join("text_encoders/tokenizer.json"),
    );
    let files = source.resolve().unwrap();
    assert_eq!(files.layout, wanrt::pipeline::ModelLayout::ComfyUi);
    assert!(files.t5.ends_with("umt5_tiny.safetensors"), "{files:?}");
    let pipe = Pipeline::load(&files, &[], &wanrt::pipeline::LoadOptions::default()).unwrap();
    let g2 = pipe
        .generate(&small("a hill"), &mut |_| Flow::Continue)
        .unwrap();
    assert_eq!(g2.frames.len(), g.frames.len());

    // Two DiTs: the folder no longer says which.
    link(
        &model("tiny-dit/dit_f32.safetensors"),
        &m.join("diffusion_models/other.safetensors"),
    );
    let e = source.resolve().unwrap_err().to_string();
    assert!(e.contains("several") && e.contains("--dit"), "{e}");
}

#[test]
fn missing_model_files_name_the_file_and_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let wan = dir.path().join("wan");
    wan_ai_folder(&wan, false);
    let run = wanrt(&args(&[("--models", &wan), ("--prompt", &"x")]));
    assert!(!run.status.success());
    let e = text(&run.stderr);
    assert!(
        e.contains("Wan2.1_VAE.pth") && e.contains("official Wan-AI folder"),
        "{e}"
    );
    let missing = dir.path().join("nope.safetensors");
    let mut a = model_flags_but(Some("--dit"));
    a.extend(args(&[("--dit", &missing), ("--prompt", &"x")]));
    let e = text(&wanrt(&a).stderr);
    assert!(e.contains("nope.safetensors") && e.contains("DiT"), "{e}");
    let e = text(&wanrt(&args(&[("--models", &dir.path()), ("--prompt", &"x")])).stderr);
    assert!(
        e.contains("neither an official Wan-AI") && e.contains("ComfyUI"),
        "{e}"
    );
    let e = text(&wanrt(&args(&[("--prompt", &"x")])).stderr);
    assert!(e.contains("no DiT given"), "{e}");
}

// ------------------------------------------------------------------- LoRAs

/// Writes f32 tensors (all 0.01) as a safetensors file with `metadata`.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>)], metadata: &[(&str, &str)]) {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, d)| {
            let n: usize = d.iter().product();
            (0..n).flat_map(|_| 0.01f32.to_le_bytes()).collect()
        })
        .collect();
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, d), b)| (*name, TensorView::new(Dtype::F32, d.clone(), b).unwrap()))
        .collect();
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn loras_for_other_models_are_refused_and_triggers_offered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let sdxl = dir.path().join("sdxl.safetensors");
    write_safetensors(
        &sdxl,
        &[
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                vec![4, 320],
            ),
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
                vec![320, 4],
            ),
        ],
        &[],
    );
    let big = dir.path().join("wan14b.safetensors");
    write_safetensors(
        &big,
        &[
            (
                "lora_unet_blocks_0_self_attn_q.lora_down.weight",
                vec![4, 5120],
            ),
            (
                "lora_unet_blocks_0_self_attn_q.lora_up.weight",
                vec![5120, 4],
            ),
        ],
        &[],
    );
    for (lora, needle) in [(&sdxl, "Stable Diffusion"), (&big, "another model size")] {
        let mut a = model_flags();
        a.extend(args(&[
            ("--lora", lora),
            ("--prompt", &"x"),
            ("--out", &out),
        ]));
        let run = wanrt(&a);
        assert!(!run.status.success());
        let e = text(&run.stderr);
        assert!(e.contains(needle), "{e}");
        assert!(!out.exists());
    }

    // A style LoRA for this DiT whose metadata names its trigger phrase.
    let style = dir.path().join("style.safetensors");
    write_safetensors(
        &style,
        &[
            (
                "lora_unet_blocks_0_self_attn_q.lora_down.weight",
                vec![2, 64],
            ),
            ("lora_unet_blocks_0_self_attn_q.lora_up.weight", vec![64, 2]),
        ],
        &[("modelspec.trigger_phrase", "Ghibli style.")],
    );
    let files = tiny_files();
    let spec = LoraSpec {
        path: style.clone(),
        strength: 0.5,
    };
    let pipe = Pipeline::load(&files, &[spec], &wanrt::pipeline::LoadOptions::default()).unwrap();
    assert_eq!(pipe.lora_triggers(), ["Ghibli style."]);
    assert_eq!(pipe.info().loras[0].low_rank, 1);
    let mut req = small("a hill");
    req.lora_trigger = true;
    let g = pipe.generate(&req, &mut |_| Flow::Continue).unwrap();
    assert_eq!(g.params.prompt, "Ghibli style. a hill");
    let meta = g.metadata(pipe.info());
    assert_eq!(meta["loras"][0]["file"], "style.safetensors");
    assert_eq!(meta["loras"][0]["strength"], 0.5);

    let mut a = model_flags();
    a.extend(args(&[
        ("--lora", &format!("{}:0.5", style.display())),
        ("--prompt", &"a hill"),
        ("--width", &"32"),
        ("--height", &"32"),
        ("--frames", &"1"),
        ("--steps", &"1"),
        ("--out", &dir.path().join("one.png")),
        ("--lora-mode", &"runtime"),
        ("--threads", &"1"),
        ("--json", &""),
    ]));
    let run = wanrt(&a);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("--lora-trigger"));
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(json["lora_mode"], "runtime");

    runtime_loras_match_merged_and_change_strength(&files, &style);
}

/// LoRAs loaded unmerged give what merged ones give, and their strength changes without
/// reloading (only there).
fn runtime_loras_match_merged_and_change_strength(
    files: &wanrt::pipeline::ModelFiles,
    lora: &Path,
) {
    let load = |strength, lora_mode| {
        let spec = LoraSpec {
            path: lora.to_path_buf(),
            strength,
        };
        let options = LoadOptions {
            lora_mode,
            ..LoadOptions::default()
        };
        Pipeline::load(files, &[spec], &options).unwrap()
    };
    let latent = |pipe: &Pipeline| {
        let g = pipe
            .generate(&small("a hill"), &mut |_| Flow::Continue)
            .unwrap();
        g.latent.to_f32_vec().unwrap()
    };
    let close = |a: &[f32], b: &[f32]| {
        let err = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        err < 1e-4
    };
    let mut merged = load(40.0, Mode::Merged);
    let mut runtime = load(40.0, Mode::Unmerged);
    let plain = Pipeline::load(files, &[], &LoadOptions::default()).unwrap();
    let (m, r, p) = (latent(&merged), latent(&runtime), latent(&plain));
    assert!(close(&m, &r), "runtime and merged LoRAs agree");
    assert!(!close(&r, &p), "the LoRA changes the result");
    assert_eq!(runtime.info().lora_mode, Mode::Unmerged);

    runtime.set_lora_strength(0, 0.0).unwrap();
    assert_eq!(runtime.info().loras[0].strength, 0.0);
    assert!(close(&latent(&runtime), &p), "strength 0 is the base model");
    runtime.set_lora_strength(0, 40.0).unwrap();
    assert_eq!(
        latent(&runtime),
        r,
        "back to the first strength, bit for bit"
    );

    let e = runtime.set_lora_strength(1, 1.0).unwrap_err().to_string();
    assert!(
        e.contains("LoRA index 1: the pipeline has 1 LoRA(s)"),
        "{e}"
    );
    let e = runtime
        .set_lora_strength(0, f32::NAN)
        .unwrap_err()
        .to_string();
    assert!(e.contains("finite"), "{e}");
    let e = merged.set_lora_strength(0, 1.0).unwrap_err().to_string();
    assert!(e.contains("runtime"), "{e}");
    assert_eq!(latent(&merged), m, "a refused change changes nothing");
}

// ------------------------------------------------------------------- cancellation

#[test]
fn cancelling_from_the_callback_stops_within_one_step() {
    let pipe = Pipeline::demo(0).unwrap();
    let mut req = small("a hill");
    req.steps = 6;
    for (stage, at) in [
        (Stage::TextEncoding, 0),
        (Stage::Denoising, 2),
        (Stage::Decoding, 1),
    ] {
        let mut seen: Vec<Progress> = Vec::new();
        let r = pipe.generate(&req, &mut |p| {
            seen.push(*p);
            if p.stage == stage && p.done == at {
                Flow::Cancel
            } else {
                Flow::Continue
            }
        });
        assert!(matches!(r, Err(Error::Cancelled)), "{stage:?}: {r:?}");
        let last = seen.last().unwrap();
        assert_eq!(
            (last.stage, last.done),
            (stage, at),
            "{stage:?}: no call after the cancel"
        );
    }
    // Progress covers every stage, with sigma while denoising.
    let mut seen: Vec<Progress> = Vec::new();
    pipe.generate(&req, &mut |p| {
        seen.push(*p);
        Flow::Continue
    })
    .unwrap();
    let den: Vec<&Progress> = seen
        .iter()
        .filter(|p| p.stage == Stage::Denoising)
        .collect();
    assert_eq!(den.len(), 7);
    assert!(den.windows(2).all(|w| w[1].sigma < w[0].sigma));
    assert_eq!(den.last().unwrap().sigma, Some(0.0));
    assert!(seen
        .iter()
        .any(|p| p.stage == Stage::Decoding && p.done == 5));
}

#[test]
fn ctrl_c_cancels_the_cli_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.mp4");
    let child = Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .args(["generate", "--demo", "--steps", "1000", "--out"])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let run = child.wait_with_output().unwrap();
    let waited = sent.elapsed();
    assert!(!run.status.success());
    let e = text(&run.stderr);
    assert!(e.contains("cancelled"), "{e}");
    // One demo step takes well under a second even in a debug build.
    assert!(waited < Duration::from_secs(20), "stopped after {waited:?}");
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

// ------------------------------------------------------------------- bad input

#[test]
fn bad_input_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.mp4");
    let cases: [(&[&str], &str); 12] = [
        (&["--width", "40"], "multiple of 16"),
        (&["--height", "100"], "use 96 or 112"),
        (&["--frames", "8"], "1 + 4k"),
        (&["--seed", "-1"], "seed out of range"),
        (&["--seed", "9223372036854775808"], "seed out of range"),
        (&["--sampler", "ddim"], "unknown solver"),
        (&["--preset", "fast"], "unknown preset"),
        (&["--slg-blocks", "7"], "SLG block 7"),
        (&["--nag-alpha", "2"], "alpha"),
        (&["--device", "cuda:99"], "CUDA"),
        (&["--device", "cuda:x"], "expected cpu, cuda or cuda:N"),
        (&["--device", "gpu:-1"], "expected cpu, cuda or cuda:N"),
    ];
    for (extra, needle) in cases {
        let mut a = args(&[("--demo", &""), ("--out", &out)]);
        a.extend(extra.iter().map(OsString::from));
        let start = Instant::now();
        let run = wanrt(&a);
        assert!(!run.status.success(), "{extra:?} was accepted");
        let e = text(&run.stderr);
        assert!(e.contains(needle), "{extra:?}: {e}");
        assert!(start.elapsed() < Duration::from_secs(20), "{extra:?} ran");
        assert!(!out.exists());
    }
    if common::cuda_device("bad_input_is_refused_before_any_work: --device cuda:0").is_none() {
        let mut a = args(&[("--demo", &""), ("--out", &out)]);
        a.extend(["--device", "cuda:0"].map(OsString::from));
        let run = wanrt(&a);
        let e = text(&run.stderr);
        assert!(!run.status.success() && e.contains("CUDA"), "{e}");
        assert!(!e.contains("panicked"), "{e}");
    }
    for (path, needle) in [
        (dir.path().join("missing/x.mp4"), "missing"),
        (dir.path().join("x.webm"), "unknown format"),
        (dir.path().to_path_buf(), "unknown format"),
    ] {
        let e = text(&wanrt(&args(&[("--demo", &""), ("--out", &path)])).stderr);
        assert!(e.contains(needle), "{}: {e}", path.display());
    }
    let unwritable = Path::new("/proc/version/x.mp4");
    let e = text(&wanrt(&args(&[("--demo", &""), ("--out", &unwritable)])).stderr);
    assert!(e.contains("/proc/version/x.mp4"), "{e}");
    assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn the_library_checks_the_request_against_the_model() {
    let pipe = Pipeline::demo(0).unwrap();
    let e = |r: GenerateRequest| pipe.check(&r).unwrap_err().to_string();
    let mut r = small("x");
    (r.width, r.height, r.frames) = (16384, 16384, 81);
    let oom = pipe.check(&r).unwrap_err();
    assert_eq!(oom.status(), wanrt::Status::OutOfMemory, "{oom}");
    assert!(oom.to_string().contains("denoising 16384x16384"), "{oom}");
    let mut r = small("x");
    r.seed = Some(MAX_SEED + 1);
    assert!(e(r).contains("out of range"));
    let mut r = small("x");
    r.prompt = "word ".repeat(200);
    assert!(e(r).contains("tokens long"));
    let mut r = small("x");
    r.latent_init = Some(Tensor::zeros([1, 16, 2, 4, 5], wanrt::DType::F32));
    assert!(e(r).contains("initial latent"));
    // Non-finite initial latents are refused before any work: no progress is reported.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut r = small("x");
        let mut v = vec![0.25f32; 16 * 2 * 4 * 4];
        v[77] = bad;
        r.latent_init = Some(Tensor::from_f32(v, [1, 16, 2, 4, 4]).unwrap());
        assert!(e(r.clone()).contains(&format!("holds {bad} at element 77")));
        let mut calls = 0;
        let err = pipe
            .generate(&r, &mut |_| {
                calls += 1;
                Flow::Continue
            })
            .unwrap_err();
        assert_eq!(err.status(), wanrt::Status::InvalidArgument, "{err}");
        assert_eq!(calls, 0, "{err}");
    }
    let mut r = small("x");
    r.teacache = Some(0.1);
    assert!(e(r).contains("TeaCache"));
    assert!(pipe.check(&small("x")).unwrap().memory.peak() > 0);
}

#[test]
fn pipelines_with_their_own_threads_run_side_by_side() {
    let results: Vec<(usize, usize, bool)> = std::thread::scope(|s| {
        let runs: Vec<_> = [1, 3]
            .into_iter()
            .map(|n| {
                s.spawn(move || {
                    let mut pipe = Pipeline::demo(0).unwrap();
                    pipe.set_threads(Some(n)).unwrap();
                    let (mut seen, mut named) = (0, true);
                    let req = small("a hill");
                    pipe.generate(&req, &mut |_| {
                        seen = rayon::current_num_threads();
                        let t = std::thread::current();
                        named &= t.name().is_some_and(|n| n.starts_with("wanrt-"));
                        Flow::Continue
                    })
                    .unwrap();
                    (pipe.threads(), seen, named)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(results, [(1, 1, true), (3, 3, true)]);
    let mut pipe = Pipeline::demo(0).unwrap();
    assert!(pipe.set_threads(Some(0)).is_err());
    pipe.set_threads(None).unwrap();
    assert_eq!(pipe.threads(), rayon::current_num_threads());
}

#[test]
fn vae_tiling_is_chosen_and_recorded() {
    let pipe = Pipeline::demo(0).unwrap();
    let mut req = small("a hill");
    (req.width, req.height) = (64, 48);
    let whole = pipe.generate(&req, &mut |_| Flow::Continue).unwrap();
    // Plenty of memory here: auto decodes whole frames, and says so.
    assert_eq!(whole.params.vae_tiling, VaeTiling::Off);
    assert_eq!(whole.metadata(pipe.info())["vae_tiling"], "off");
    assert_eq!(whole.metadata(pipe.info())["device"], "cpu");
    assert_eq!(pipe.device(), wanrt::backend::Device::Cpu);
    req.vae_tiling = "4,1".parse().unwrap();
    let tiled = pipe.generate(&req, &mut |_| Flow::Continue).unwrap();
    assert_eq!(tiled.metadata(pipe.info())["vae_tiling"], "4,1");
    assert_eq!(tiled.frames.len(), whole.frames.len());
    assert_ne!(tiled.frames, whole.frames, "tiles blend, not bit-identical");
    let diff = tiled
        .frames
        .iter()
        .zip(&whole.frames)
        .map(|(a, b)| a.abs_diff(*b) as f64)
        .sum::<f64>()
        / whole.frames.len() as f64;
    assert!(
        diff < 16.0,
        "tiles decode the same video: mean |diff| {diff}"
    );
    req.vae_tiling = VaeTiling::Tiled(Tiling {
        tile: 4,
        overlap: 4,
    });
    let e = pipe.check(&req).unwrap_err().to_string();
    assert!(e.contains("larger than the overlap"), "{e}");
    let est = pipe.check(&small("x")).unwrap().memory;
    assert_eq!(est.peak(), est.weights.total() + est.working());
}

// ------------------------------------------------------------------- the demo

#[test]
fn demo_runs_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.mp4");
    let start = Instant::now();
    let run = wanrt(&args(&[
        ("--demo", &""),
        ("--out", &out),
        ("--seed", &"7"),
        ("--json", &""),
        ("--threads", &"2"),
        ("--vae-tiling", &"auto"),
    ]));
    assert!(run.status.success(), "{}", text(&run.stderr));
    eprintln!(
        "wanrt generate --demo: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(json["models"]["demo"], true);
    assert_eq!(json["seed"], 7);
    assert_eq!(json["vae_tiling"], "off");
    check_mp4(&out, 17, 320, 192);
    assert!(text(&run.stderr).contains("noise"));

    let pipe = Pipeline::demo(0).unwrap();
    let gen = |seed| {
        let mut r = small("a hill");
        r.seed = Some(seed);
        pipe.generate(&r, &mut |_| Flow::Continue).unwrap().frames
    };
    assert_eq!(gen(1), gen(1));
    assert_ne!(gen(1), gen(2));
}

// ------------------------------------------------------------------- determinism

/// Runs `f` on a rayon pool of `threads` threads.
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// The frames and the latent's bits of one generation.
fn bits(pipe: &Pipeline, req: &GenerateRequest) -> (Vec<u8>, Vec<u32>) {
    let g = pipe.generate(req, &mut |_| Flow::Continue).unwrap();
    let latent = g.latent.to_f32_vec().unwrap();
    (g.frames, latent.iter().map(|v| v.to_bits()).collect())
}

#[test]
fn same_bits_on_one_and_two_threads() {
    // The pipeline fixture, through the library, from its x_T.
    let c = case();
    let source = ModelSource {
        dit: Some(c.path("dit").unwrap()),
        vae: Some(c.path("vae").unwrap()),
        t5: Some(c.path("t5").unwrap()),
        tokenizer: Some(c.path("tokenizer").unwrap()),
        dit_config: Some(c.path("dit_config").unwrap()),
        vae_config: Some(c.path("vae_config").unwrap()),
        t5_config: Some(c.path("t5_config").unwrap()),
        ..ModelSource::default()
    };
    let files = source.resolve().unwrap();
    let pipe = Pipeline::load(&files, &[], &LoadOptions::default()).unwrap();
    let mut req = GenerateRequest::new(c.str("prompt").unwrap());
    req.negative_prompt = Some(c.str("negative_prompt").unwrap().to_string());
    req.solver = c.str("solver").unwrap().parse().unwrap();
    let num = |k: &str| c.f64(k).unwrap();
    (req.steps, req.frames) = (num("steps") as usize, num("frames") as usize);
    (req.width, req.height) = (num("width") as usize, num("height") as usize);
    (req.shift, req.guidance_scale) = (num("shift"), num("guidance_scale"));
    req.seed = Some(0);
    let inputs = c.tensors("inputs").unwrap();
    let x_t = tensor(&inputs, "x_T").unwrap();
    req.latent_init = Some(x_t.to_dtype(wanrt::DType::F32).unwrap());
    let one = on_threads(1, || bits(&pipe, &req));
    assert_eq!(on_threads(2, || bits(&pipe, &req)), one, "pipeline fixture");

    // The demo from its seed, with CFG-Zero* over a latent of several reduction chunks.
    let pipe = Pipeline::demo(0).unwrap();
    let mut req = small("a hill at dawn");
    (req.width, req.height, req.frames, req.steps) = (256, 256, 5, 2);
    (req.cfg_zero_star, req.zero_init_steps) = (true, Some(1));
    let one = on_threads(1, || bits(&pipe, &req));
    assert_eq!(on_threads(2, || bits(&pipe, &req)), one, "demo, CFG-Zero*");
}

// ------------------------------------------------------------------- attention choice

#[test]
fn q8_attention_runs_and_is_recorded() {
    let files = tiny_files();
    let pipe = Pipeline::load(&files, &[], &LoadOptions::default()).unwrap();
    let run = |attention| {
        let mut req = small("a hill");
        req.attention = attention;
        pipe.generate(&req, &mut |_| Flow::Continue).unwrap()
    };
    let (exact, q8) = (run(AttentionChoice::Bf16), run(AttentionChoice::Q8));
    assert_eq!(q8.metadata(pipe.info())["attention"], "q8");
    assert_eq!(exact.metadata(pipe.info())["attention"], "bf16");
    // The 8-bit scheme changes the latent a little, not much.
    let (a, b) = (
        exact.latent.to_f32_vec().unwrap(),
        q8.latent.to_f32_vec().unwrap(),
    );
    let err = common::rel_l2_f32(&b, &a);
    assert!(err > 0.0 && err < 0.05, "rel_l2 {err}");
    // q8-fp8 (the e4m3 P·V scheme's emulation here) is recorded by its name and changes the
    // latent differently from q8.
    let fp8 = run(AttentionChoice::Q8Fp8);
    assert_eq!(fp8.metadata(pipe.info())["attention"], "q8-fp8");
    let c = fp8.latent.to_f32_vec().unwrap();
    let err = common::rel_l2_f32(&c, &a);
    assert!(err > 0.0 && err < 0.1 && c != b, "rel_l2 {err}");

    let mut flags = model_flags();
    flags.extend(args(&[
        ("--prompt", &"a hill"),
        ("--width", &"32"),
        ("--height", &"32"),
        ("--frames", &"1"),
        ("--steps", &"1"),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let mut ok = flags.clone();
    ok.extend(args(&[
        ("--attention", &"q8"),
        ("--json", &""),
        ("--out", &dir.path().join("one.png")),
    ]));
    let out = wanrt(&ok);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["attention"], "q8");
    flags.extend(args(&[("--attention", &"int8")]));
    let bad = wanrt(&flags);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("unknown attention `int8`"));
}

/// `generate_streamed` hands every frame over in order as it is decoded, the same bytes the
/// result holds, and a frame hook's `Flow::Cancel` stops the generation.
#[test]
fn frames_are_streamed_as_decoded() {
    let pipe = Pipeline::demo(0).unwrap();
    let mut streamed = Vec::new();
    let mut order = Vec::new();
    let g = pipe
        .generate_streamed(&small("x"), &mut |_| Flow::Continue, &mut |f| {
            order.push((f.index, f.count, f.width, f.height));
            streamed.extend_from_slice(f.rgb);
            Flow::Continue
        })
        .unwrap();
    assert_eq!(order, (0..5).map(|i| (i, 5, 32, 32)).collect::<Vec<_>>());
    assert_eq!(streamed, g.frames);
    let mut seen = 0;
    let e = pipe
        .generate_streamed(&small("x"), &mut |_| Flow::Continue, &mut |f| {
            seen = f.index + 1;
            if f.index == 1 {
                Flow::Cancel
            } else {
                Flow::Continue
            }
        })
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert_eq!(seen, 2);
}
