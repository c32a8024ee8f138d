//! `wanrt bench`, run as a process: every target at tiny shapes with `--json`, the markdown
//! row, and bad flags.

use std::process::{Command, Output};

use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run wanrt")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("utf-8 output")
}

/// Runs `args --iters 2 --json` and returns the one JSON object it printed.
fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--iters", "2", "--warmup", "0", "--threads", "1", "--json"]);
    let out = bench(&all);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let v: Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(v["iters"], 2);
    assert_eq!(v["threads"], 1);
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["samples_ms"].as_array().map(Vec::len), Some(2));
    let ms = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(ms("min_ms") > 0.0 && ms("min_ms") <= ms("median_ms"));
    assert!(ms("median_ms") <= ms("max_ms") && ms("sd_ms") >= 0.0);
    assert!(ms("gflop") > 0.0 && ms("cpu_ms") >= 0.0 && ms("minor_faults") >= 0.0);
    assert!(ms("peak_rss_mb") > 1.0, "VmHWM read: {v}");
    v
}

#[test]
fn dit_block_json() {
    let v = json(&[
        "dit-block",
        "--dim",
        "32",
        "--heads",
        "2",
        "--ffn-dim",
        "48",
        "--tokens",
        "10",
        "--text-len",
        "7",
    ]);
    assert_eq!(v["target"], "dit-block");
    assert_eq!(v["dtype"], "bf16");
    let s = &v["shape"];
    let shape = [
        ("dim", 32),
        ("heads", 2),
        ("ffn_dim", 48),
        ("tokens", 10),
        ("text_len", 7),
        ("batch", 1),
    ];
    for (k, n) in shape {
        assert_eq!(s[k], n, "{k} in {s}");
    }
}

/// The 1.3B config cut to one layer (the 14B one takes ten seconds to build here; its forward
/// is covered by tests/dit.rs).
#[test]
fn dit_json_real_config() {
    let v = json(&[
        "dit", "--config", "1.3b", "--layers", "1", "--frames", "1", "--height", "4", "--width",
        "8", "--dtype", "fp8",
    ]);
    assert_eq!(v["target"], "dit");
    assert_eq!(v["dtype"], "fp8");
    let s = &v["shape"];
    assert_eq!(s["layers"], 1);
    assert_eq!(s["tokens"], 8);
    assert_eq!(s["latent"], serde_json::json!([1, 4, 8]));
    assert_eq!(s["dim"], 1536);
}

#[test]
fn dit_json_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let cfg = r#"{"_class_name": "WanModel", "dim": 64, "ffn_dim": 96, "num_heads": 4,
        "num_layers": 2, "in_dim": 16, "out_dim": 16, "text_len": 8, "model_type": "t2v"}"#;
    std::fs::write(&path, cfg).unwrap();
    let p = path.to_str().unwrap();
    let v = json(&["dit", "--config", p, "--tokens", "6", "--batch", "2"]);
    assert_eq!(v["shape"]["layers"], 2);
    assert_eq!(v["shape"]["dim"], 64);
    assert_eq!(v["shape"]["tokens"], 6);
    assert_eq!(v["shape"]["batch"], 2);
}

#[test]
fn attention_and_gemm_json() {
    let v = json(&[
        "attention",
        "--tokens",
        "20",
        "--kv-tokens",
        "9",
        "--heads",
        "3",
        "--head-dim",
        "8",
    ]);
    assert_eq!(v["target"], "attention");
    assert_eq!(v["shape"]["kv_tokens"], 9);
    assert_eq!(v["shape"]["head_dim"], 8);
    for dtype in ["f32", "bf16", "fp8"] {
        let v = json(&[
            "gemm", "--tokens", "5", "--in", "16", "--out", "24", "--dtype", dtype,
        ]);
        assert_eq!(v["target"], "gemm");
        assert_eq!(v["dtype"], dtype);
        assert_eq!(v["shape"]["in"], 16);
        assert_eq!(v["shape"]["out"], 24);
    }
}

/// `--attention` picks the kernel by choice name: on the CPU, `q8` runs the scheme's emulation
/// (and says so on stderr); both report TOPS, the same count as the TFLOP/s.
#[test]
fn attention_choices_report_tops() {
    let shape = [
        "attention",
        "--tokens",
        "40",
        "--heads",
        "2",
        "--head-dim",
        "64",
    ];
    for choice in ["bf16", "q8"] {
        let v = json(&[&shape[..], &["--attention", choice]].concat());
        assert_eq!(v["shape"]["attention"], choice);
        let tops = v["tops"].as_f64().unwrap_or_else(|| panic!("tops in {v}"));
        assert!(tops > 0.0 && (tops - v["tflops"].as_f64().unwrap()).abs() <= 1e-9 * tops);
    }
    let out = bench(&[&shape[..], &["--attention", "q8", "--iters", "1"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("emulation"));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("| TOPS |"), "{stdout}");
    assert_eq!(lines[0].matches('|').count(), lines[2].matches('|').count());
    assert!(lines[2].contains("attention=q8"), "{stdout}");
    // The DiT forward takes the choice too; no other target reports TOPS.
    let v = json(&[
        "dit",
        "--config",
        "1.3b",
        "--layers",
        "1",
        "--tokens",
        "4",
        "--attention",
        "q8",
    ]);
    assert_eq!(v["shape"]["attention"], "q8");
    assert!(v.get("tops").is_none(), "{v}");
}

#[test]
fn markdown_row() {
    let out = bench(&[
        "gemm", "--tokens", "4", "--in", "8", "--out", "8", "--iters", "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].contains("mean ± sd (ms)") && lines[0].contains("median (ms)"));
    assert!(lines[2].starts_with("| gemm | tokens=4 in=8 out=8 | bf16 | cpu |"));
    assert!(lines[2].contains(" ± "));
}

/// `bench pipeline` at tiny sizes: one whole generation through the pipeline, its stage times,
/// memory and plan fields.
#[test]
fn pipeline_json() {
    let out = bench(&[
        "pipeline",
        "--config",
        "tiny",
        "--layers",
        "1",
        "--width",
        "48",
        "--height",
        "32",
        "--frames",
        "5",
        "--steps",
        "3",
        "--prompt",
        "a fox",
        "--threads",
        "1",
        "--json",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let v: Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(v["target"], "pipeline");
    assert_eq!(v["config"], "tiny");
    assert_eq!(v["layers"], 1);
    assert_eq!(
        (v["width"].clone(), v["height"].clone()),
        (48.into(), 32.into())
    );
    assert_eq!(
        (v["frames"].clone(), v["steps"].clone()),
        (5.into(), 3.into())
    );
    // 5 frames: 2 latent frames of 4x6, patches of 2x2: 12 tokens.
    assert_eq!(v["latent"], serde_json::json!([2, 4, 6]));
    assert_eq!(v["tokens"], 12);
    // "▁a▁fox" byte by byte (▁ is 3 bytes), then </s>.
    assert_eq!(v["prompt_tokens"], 11);
    assert_eq!(
        (v["device"].clone(), v["threads"].clone()),
        ("cpu".into(), 1.into())
    );
    // Everything on the CPU, as `wanrt generate` places it there: no device plan.
    assert_eq!(v["plan"], Value::Null);
    assert_eq!(
        (v["t5_device"].clone(), v["vae_device"].clone()),
        ("cpu".into(), "cpu".into())
    );
    assert_eq!(v["max_device_memory"], Value::Null);
    assert_eq!(v["device_memory_mb"], Value::Null);
    let t = &v["timings"];
    let s = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k} in {t}"));
    let steps: Vec<f64> = t["steps_s"]
        .as_array()
        .expect("steps_s")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect();
    assert_eq!(steps.len(), 3);
    assert!(steps.iter().all(|&x| x > 0.0));
    assert!(s("text_encoding_s") > 0.0 && s("decoding_s") > 0.0);
    assert!(s("denoising_s") >= steps.iter().sum::<f64>() * 0.999);
    let stages = s("text_encoding_s") + s("denoising_s") + s("decoding_s");
    assert!(s("total_s") >= stages * 0.999, "{t}");
    assert!(v["peak_rss_mb"].as_f64().expect("peak_rss_mb") > 1.0);
}

#[test]
fn pipeline_markdown() {
    let out = bench(&[
        "pipeline",
        "--config",
        "tiny",
        "--width",
        "32",
        "--height",
        "32",
        "--frames",
        "1",
        "--steps",
        "2",
        "--threads",
        "1",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for row in [
        "| text encoding |",
        "| step 1 |",
        "| step 2 |",
        "| VAE decode |",
        "| total |",
    ] {
        assert!(stdout.contains(row), "{row} in {stdout}");
    }
    assert!(
        stdout.starts_with("pipeline tiny (DiT layers 2), 32x32x1, 2 steps"),
        "{stdout}"
    );
}

#[test]
fn bad_flags_are_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["gemm", "--device", "cuda"], "no CUDA support"),
        (&["gemm", "--iters", "0"], "--iters must be at least 1"),
        (&["gemm", "--threads", "0"], "--threads must be at least 1"),
        (&["gemm", "--tokens", "0"], "--tokens must be at least 1"),
        (&["gemm", "--dtype", "int4"], "invalid value 'int4'"),
        (
            &["attention", "--attention", "int8"],
            "unknown attention `int8`",
        ),
        (&["dit-block", "--dim", "30", "--heads", "4"], "dim 30"),
        (
            &["dit", "--config", "7b"],
            "not 1.3b, 14b or an existing config.json",
        ),
        (&["dit", "--layers", "31"], "the model has 30 layers"),
        (
            &["dit", "--height", "3", "--frames", "1", "--width", "4"],
            "multiple of the patch size",
        ),
        (
            &["dit", "--tokens", "4", "--frames", "2"],
            "cannot be used with",
        ),
        (&["pipeline", "--config", "7b"], "not 1.3b, 14b"),
        (
            &["pipeline", "--layers", "0"],
            "--layers must be at least 1",
        ),
        (
            &["pipeline", "--config", "14b", "--layers", "41"],
            "the model has 40 layers",
        ),
        (
            &["pipeline", "--width", "100"],
            "width 100 is not a multiple of 16",
        ),
        (
            &["pipeline", "--config", "tiny", "--blocks-to-swap", "1"],
            "apply to a CUDA device only",
        ),
        (
            &["pipeline", "--max-device-memory", "lots"],
            "memory size `lots`",
        ),
    ];
    for (args, want) in cases {
        let out = bench(args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {:?}",
            text(&out.stdout)
        );
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
