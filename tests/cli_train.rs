//! `wanrt train`, run as a process on the fixture DiT and musubi caches the test writes: musubi
//! flag spellings, notes for ignored flags, the LoRAs, states and metrics it writes, resume
//! (also after a SIGKILL), bad flags, and a full disk during a save.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::train_caches::write_caches;
use wanrt::lora::Lora;
use wanrt::train::metrics::read_metrics;

fn train(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .arg("train")
        .args(args)
        .output()
        .expect("run wanrt")
}

/// The model, cache and output flags of a run writing `{out}/mine*`, plus `more`.
fn args(cache: &Path, out: &Path, more: &[&str]) -> Vec<String> {
    args_from("--cache_directory", cache, out, more)
}

/// [`args`] with the items named by `source` (`--cache_directory` or `--dataset_config`).
fn args_from(source: &str, items: &Path, out: &Path, more: &[&str]) -> Vec<String> {
    let dit = common::model("tiny-dit/dit_bf16.safetensors");
    let config = common::model("tiny-dit/config.json");
    let mut a: Vec<String> = vec![
        "--dit".into(),
        dit.display().to_string(),
        "--dit-config".into(),
        config.display().to_string(),
        source.into(),
        items.display().to_string(),
        "--output_dir".into(),
        out.display().to_string(),
        "--output_name".into(),
        "mine".into(),
        "--learning_rate".into(),
        "1e-3".into(),
    ];
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

fn caches() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    write_caches(&cache);
    (tmp, cache)
}

fn losses(out: &Path) -> Vec<u64> {
    read_metrics(&out.join("mine-metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.loss.to_bits())
        .collect()
}

#[test]
fn trains_saves_and_resumes_with_musubi_flags() {
    let (tmp, cache) = caches();
    let out = tmp.path().join("out");
    let curve = tmp.path().join("loss.png");
    let run = train(&args(
        &cache,
        &out,
        &[
            "--network-dim",
            "2",
            "--max_train_epochs",
            "3",
            "--save_every_n_epochs",
            "1",
            "--save-every-n-steps",
            "4",
            "--sdpa",
            "--mixed_precision",
            "bf16",
            "--save_state",
            "--metadata_trigger_phrase",
            "tiny style",
            "--loss_curve",
            curve.to_str().unwrap(),
        ],
    ));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("note: --sdpa")
            && err.contains("note: --mixed_precision")
            && err.contains("step 6/6"),
        "{err}"
    );
    // musubi's names: epochs 1 and 2 (not the last), step 4, the final file; each with a state.
    for stem in ["mine-000001", "mine-000002", "mine-step00000004", "mine"] {
        assert!(out.join(format!("{stem}.safetensors")).is_file(), "{stem}");
        assert!(
            out.join(format!("{stem}-state/state.json")).is_file(),
            "{stem}"
        );
    }
    assert!(!out.join("mine-000003.safetensors").exists());
    let lora = Lora::open(out.join("mine.safetensors")).unwrap();
    assert_eq!(lora.metadata["ss_network_dim"], "2");
    assert_eq!(lora.metadata["ss_steps"], "6");
    assert_eq!(lora.metadata["modelspec.trigger_phrase"], "tiny style");
    assert_eq!(lora.modules.len(), 20);
    let step4 = Lora::open(out.join("mine-step00000004.safetensors")).unwrap();
    assert_eq!(step4.metadata["ss_steps"], "4");
    let metrics = read_metrics(&out.join("mine-metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.iter().map(|m| m.step).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(metrics
        .iter()
        .all(|m| m.loss > 0.0 && m.step_time_s > 0.0 && m.lr == 1e-3));
    let png = wanrt::video::probe(&curve).unwrap();
    assert_eq!((png.width, png.height), (640, 320));

    let resumed = train(&args(
        &cache,
        &out,
        &[
            "--network_dim",
            "2",
            "--max_train_epochs",
            "4",
            "--resume",
            out.join("mine-state").to_str().unwrap(),
        ],
    ));
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    assert!(
        err.contains("step 8/8") && !err.contains("step 6/8"),
        "{err}"
    );
    assert_eq!(
        Lora::open(out.join("mine.safetensors")).unwrap().metadata["ss_steps"],
        "8"
    );
    assert_eq!(losses(&out).len(), 8);

    for (flag, value, says) in [
        (
            "--timestep_sampling",
            "logsnr",
            "timestep_sampling `logsnr`",
        ),
        (
            "--optimizer_type",
            "Adafactor",
            "--optimizer_type `Adafactor`",
        ),
        ("--not_a_flag", "1", "--not_a_flag"),
    ] {
        let bad = train(&args(&cache, &out, &[flag, value]));
        assert!(!bad.status.success());
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(err.contains("error: ") && err.contains(says), "{err}");
    }
}

/// A dataset TOML of an image and a video dataset over `caches` (the video one repeated twice,
/// `batch_size` 2 from `[general]`), written under `root`.
fn dataset_toml(root: &Path, caches: [&Path; 2]) -> PathBuf {
    let toml = root.join("dataset.toml");
    let text = format!(
        "[general]\ncaption_extension = \".txt\"\nbatch_size = 2\n\n\
         [[datasets]]\nimage_directory = {:?}\ncache_directory = {:?}\n\n\
         [[datasets]]\nvideo_directory = {:?}\ncache_directory = {:?}\nnum_repeats = 2\n",
        root.join("images"),
        caches[0],
        root.join("videos"),
        caches[1],
    );
    std::fs::write(&toml, text).unwrap();
    toml
}

/// `--dataset_config`: the items of every dataset's cache folder, each `num_repeats` times an
/// epoch; `batch_size` is noted as unused; both item sources, or a dataset not cached yet, fail
/// with a message saying what to do.
#[test]
fn a_dataset_config_trains_on_the_caches_of_every_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let caches = ["cache/a", "cache/b"].map(|c| tmp.path().join(c));
    for dir in &caches {
        std::fs::create_dir_all(dir).unwrap();
        write_caches(dir);
    }
    let toml = dataset_toml(tmp.path(), [&caches[0], &caches[1]]);
    let out = tmp.path().join("out");
    let one_epoch = ["--network_dim", "2", "--max_train_epochs", "1"];
    let run = train(&args_from("--dataset_config", &toml, &out, &one_epoch));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    // 2 items of the first dataset + 2 × 2 of the second.
    assert!(err.contains("step 6/6") && !err.contains("step 7"), "{err}");
    assert!(err.contains("note: batch_size"), "{err}");
    let lora = Lora::open(out.join("mine.safetensors")).unwrap();
    assert_eq!(lora.metadata["ss_num_train_items"], "6");
    assert_eq!(losses(&out).len(), 6);

    let mut both = args_from("--dataset_config", &toml, &out, &one_epoch);
    both.extend(["--cache_directory".into(), caches[0].display().to_string()]);
    let bad = train(&both);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("--cache_directory") && err.contains("--dataset_config"),
        "{err}"
    );

    let uncached = tmp.path().join("uncached");
    std::fs::create_dir(&uncached).unwrap();
    let toml = dataset_toml(&uncached, [&caches[0], &uncached.join("cache")]);
    let bad = train(&args_from("--dataset_config", &toml, &out, &one_epoch));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(
        err.contains("dataset 2 is not cached yet")
            && err.contains("wanrt cache latents --dataset_config")
            && err.contains("wanrt cache text --dataset_config"),
        "{err}"
    );
}

/// A run killed with SIGKILL after a save and resumed from that save takes the steps an
/// uninterrupted run takes: the same losses, bit for bit, and the same final LoRA.
#[test]
fn killed_after_a_save_and_resumed_matches_an_uninterrupted_run() {
    let (tmp, cache) = caches();
    let more = [
        "--network_dim",
        "2",
        "--max_train_steps",
        "40",
        "--save_every_n_steps",
        "4",
        "--save_state",
        "--lr_scheduler",
        "cosine",
        "--seed",
        "7",
    ];
    let whole = tmp.path().join("whole");
    let run = train(&args(&cache, &whole, &more));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let want = losses(&whole);
    assert_eq!(want.len(), 40);

    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .arg("train")
        .args(args(&cache, &killed, &more))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let state = killed.join("mine-step00000004-state");
    let saved = format!("saved {}", state.display());
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == saved {
            child.kill().unwrap();
            break;
        }
        seen.push(line);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "not killed: {status} {seen:?}");
    let taken = losses(&killed).len();
    assert!((4..40).contains(&taken), "{taken} steps before the kill");

    let resumed = train(&args(
        &cache,
        &killed,
        &[&more[..], &["--resume", state.to_str().unwrap()]].concat(),
    ));
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(losses(&killed), want);
    let (a, b) = (
        Lora::open(whole.join("mine.safetensors")).unwrap(),
        Lora::open(killed.join("mine.safetensors")).unwrap(),
    );
    for (name, m) in &a.modules {
        let (p, q) = (
            m.low_rank.as_ref().unwrap(),
            b.modules[name].low_rank.as_ref().unwrap(),
        );
        assert_eq!(
            p.up.to_f32_vec().unwrap(),
            q.up.to_f32_vec().unwrap(),
            "{name}"
        );
        assert_eq!(
            p.down.to_f32_vec().unwrap(),
            q.down.to_f32_vec().unwrap(),
            "{name}"
        );
    }
}

/// A save that runs out of space (the file size limit `ulimit -f`, with SIGXFSZ ignored so
/// that writes fail with EFBIG as on a full disk) fails with a clear error and leaves the
/// files of the previous run as they were, with no temporary file behind.
#[test]
fn a_full_disk_during_a_save_fails_clearly_and_keeps_the_previous_files() {
    let (tmp, cache) = caches();
    let out = tmp.path().join("out");
    let first = train(&args(
        &cache,
        &out,
        &["--network_dim", "2", "--max_train_steps", "1"],
    ));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let lora = out.join("mine.safetensors");
    let before = std::fs::read(&lora).unwrap();
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let files = names(&out);

    // The rank-64 LoRA is far larger than the limit; the metrics file stays well below it.
    let limit_kib = 64;
    assert!(before.len() < limit_kib * 1024);
    let full = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
            limit_kib * 2
        ))
        .arg(env!("CARGO_BIN_EXE_wanrt"))
        .arg("train")
        .args(args(
            &cache,
            &out,
            &["--network_dim", "64", "--max_train_steps", "1"],
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: ") && err.contains("mine.safetensors") && err.contains("too large"),
        "{err}"
    );
    assert!(!err.contains("internal error"), "{err}");
    assert_eq!(std::fs::read(&lora).unwrap(), before);
    assert_eq!(names(&out), files);
}

/// `--sample_prompts` with `--sample_every_n_steps`: each prompt line becomes a video of its
/// options, generated with the network as trained so far, its parameters in the file.
#[test]
fn sample_prompts_become_videos_with_their_parameters() {
    let (tmp, cache) = caches();
    let out = tmp.path().join("out");
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "# musubi's options\na windy hill --w 48 --h 32 --f 5 --d 3 --s 2 --fs 3 --l 1\n",
    )
    .unwrap();
    let mut more: Vec<String> = vec![];
    for (flag, file) in [
        ("--vae", "tiny-vae/vae_f32.safetensors"),
        ("--vae-config", "tiny-vae/config.json"),
        ("--t5", "tiny-umt5/umt5_enc_f32.safetensors"),
        ("--t5-config", "tiny-umt5/config.json"),
        ("--tokenizer", "tiny-umt5/tokenizer.json"),
    ] {
        more.extend([flag.to_string(), common::model(file).display().to_string()]);
    }
    more.extend(
        [
            "--sample_prompts",
            prompts.to_str().unwrap(),
            "--sample_every_n_steps",
            "2",
            "--max_train_steps",
            "2",
            "--network_dim",
            "2",
        ]
        .map(String::from),
    );
    let more: Vec<&str> = more.iter().map(String::as_str).collect();
    let run = train(&args(&cache, &out, &more));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let video = out.join("sample/mine_000002_00_3.mp4");
    let info = wanrt::video::probe(&video).unwrap();
    assert_eq!((info.width, info.height, info.frames), (48, 32, 5));
    let meta: serde_json::Value = serde_json::from_str(&info.metadata.unwrap()).unwrap();
    assert_eq!(meta["prompt"], "a windy hill", "{meta}");
    assert!(err.contains(&format!("saved {}", video.display())), "{err}");
    assert!(!out.join("sample/.mine-sampling.safetensors").exists());

    let bad = train(&args(&cache, &out, &["--sample_every_n_steps", "2"]));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("need --sample_prompts"));
}
