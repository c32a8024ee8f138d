//! `wanrt train`, run as a process on the fixture DiT and musubi caches the test writes: musubi
//! flag spellings, notes for ignored flags, the LoRA and state it writes, resume, bad flags.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use wanrt::io::safetensors::write_file;
use wanrt::lora::Lora;
use wanrt::tensor::random;
use wanrt::DType;

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .arg("train")
        .args(args)
        .output()
        .expect("run wanrt")
}

/// A latent cache `[16, 1, 4, 4]` and its text cache `[5, 32]` (the tiny DiT's widths).
fn write_caches(dir: &Path) {
    let meta = BTreeMap::from([("architecture".to_string(), "wan".to_string())]);
    let l = random::tensor(&[16, 1, 4, 4], 1, 0.0, 1.0)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let t = random::tensor(&[5, 32], 2, 0.0, 1.0)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    write_file(
        &dir.join("img_0032x0032_wan.safetensors"),
        &[("latents_1x4x4_bfloat16", &l)],
        &meta,
    )
    .unwrap();
    write_file(
        &dir.join("img_wan_te.safetensors"),
        &[("varlen_t5_bfloat16", &t)],
        &meta,
    )
    .unwrap();
}

#[test]
fn trains_saves_and_resumes_with_musubi_flags() {
    let tmp = tempfile::tempdir().unwrap();
    write_caches(tmp.path());
    let dit = common::model("tiny-dit/dit_bf16.safetensors");
    let config = common::model("tiny-dit/config.json");
    let out = tmp.path().join("out");
    let base = [
        "--dit",
        dit.to_str().unwrap(),
        "--dit-config",
        config.to_str().unwrap(),
        "--cache_directory",
        tmp.path().to_str().unwrap(),
        "--output_dir",
        out.to_str().unwrap(),
        "--output_name",
        "mine",
        "--learning_rate",
        "1e-3",
    ];
    let run = train(
        &[
            &base[..],
            &[
                "--network-dim",
                "2",
                "--max_train_steps",
                "2",
                "--sdpa",
                "--save_state",
            ],
        ]
        .concat(),
    );
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("note: --sdpa is ignored") && err.contains("step 2/2"),
        "{err}"
    );
    let lora = Lora::open(out.join("mine.safetensors")).unwrap();
    assert_eq!(lora.metadata["ss_network_dim"], "2");
    assert_eq!(lora.modules.len(), 20);

    let state = out.join("mine-state");
    let resumed = train(
        &[
            &base[..],
            &[
                "--network_dim",
                "2",
                "--max_train_steps",
                "3",
                "--resume",
                state.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    assert!(
        err.contains("step 3/3") && !err.contains("step 1/3"),
        "{err}"
    );
    assert_eq!(
        Lora::open(out.join("mine.safetensors")).unwrap().metadata["ss_steps"],
        "3"
    );

    let bad = train(&[&base[..], &["--timestep_sampling", "logsnr"]].concat());
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("timestep_sampling `logsnr`"),
        "{err}"
    );
}
