//! The dataset path end to end, on a tiny dataset the test writes itself: images (PNG, JPEG,
//! WebP) and MP4 clips with captions, a musubi TOML with `head` and `uniform` extraction at
//! two resolutions; `wanrt cache latents` and `wanrt cache text` on the fixture VAE and UMT5;
//! the fixture DiT trained a few steps on the CPU; the LoRA written, loaded into the pipeline,
//! changing its output. Then the data side's bad inputs.

#![cfg(feature = "openh264-source")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wanrt::io::safetensors::read_file;
use wanrt::model::dit::WanDit;
use wanrt::pipeline::{Flow, GenerateRequest, LoadOptions, LoraSpec, ModelSource, Pipeline};
use wanrt::tensor::random;
use wanrt::train::cache::{list_items, CacheItem};
use wanrt::train::optim::Scheduler;
use wanrt::train::{loss_and_grads, LoraNetwork, NoiseLevel, TrainConfig, Trainer};
use wanrt::video::{write_mp4, Mp4Options};

use common::model;

fn wanrt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .args(args)
        .output()
        .expect("run wanrt")
}

/// `wanrt cache latents` on the fixture VAE; its stderr, asserting success as `ok` says.
fn cache_latents(toml: &Path, ok: bool) -> String {
    let vae = model("tiny-vae/vae_f32.safetensors");
    let out = wanrt(&[
        "cache",
        "latents",
        "--dataset_config",
        toml.to_str().unwrap(),
        "--vae",
        vae.to_str().unwrap(),
        "--quiet",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.success(), ok, "{err}");
    err
}

/// `wanrt cache text` on the fixture UMT5 (musubi's `--dataset-config` spelling).
fn cache_text(toml: &Path) -> String {
    let t5 = model("tiny-umt5/umt5_enc_f32.safetensors");
    let tok = model("tiny-umt5/tokenizer.json");
    let out = wanrt(&[
        "cache",
        "text",
        "--dataset-config",
        toml.to_str().unwrap(),
        "--t5",
        t5.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--batch_size",
        "16",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

/// A `w × h` picture with a diagonal gradient shifted by `k`.
fn picture(w: u32, h: u32, k: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 6 + k * 9) as u8,
            (y * 5 + k * 3) as u8,
            ((x + y) * 3) as u8,
        ])
    })
}

/// An MP4 of `frames` moving gradients.
fn clip(path: &Path, w: u32, h: u32, frames: u32) {
    let rgb: Vec<u8> = (0..frames)
        .flat_map(|k| picture(w, h, k).into_raw())
        .collect();
    write_mp4(
        path,
        &rgb,
        w as usize,
        h as usize,
        &Mp4Options::default(),
        None,
    )
    .unwrap();
}

/// Writes the dataset and its TOML under `root`; returns the TOML and the three cache folders.
fn write_dataset(root: &Path) -> (PathBuf, [PathBuf; 3]) {
    let (img, vid) = (root.join("images"), root.join("videos"));
    std::fs::create_dir_all(&img).unwrap();
    std::fs::create_dir_all(&vid).unwrap();
    picture(40, 32, 0).save(img.join("field.png")).unwrap();
    picture(32, 48, 1).save(img.join("tower.jpg")).unwrap();
    picture(36, 36, 2).save(img.join("lake.webp")).unwrap();
    for (stem, caption) in [
        ("field", "a green field"),
        ("tower", "a stone tower"),
        ("lake", "a calm lake\n"),
    ] {
        std::fs::write(img.join(format!("{stem}.txt")), caption).unwrap();
    }
    clip(&vid.join("walk.mp4"), 32, 32, 9);
    clip(&vid.join("pan.mp4"), 48, 32, 7);
    std::fs::write(vid.join("walk.txt"), "a person walking").unwrap();
    std::fs::write(vid.join("pan.txt"), "a camera pan").unwrap();
    let caches = ["cache/images", "cache/head", "cache/uniform"].map(|c| root.join(c));
    let toml = format!(
        r#"
[general]
caption_extension = ".txt"
enable_bucket = true

[[datasets]]
image_directory = "{img}"
cache_directory = "{c0}"
resolution = [32, 32]
num_repeats = 2

[[datasets]]
video_directory = "{vid}"
cache_directory = "{c1}"
resolution = [32, 32]
target_frames = [1, 5]
frame_extraction = "head"

[[datasets]]
video_directory = "{vid}"
cache_directory = "{c2}"
resolution = [48, 32]
target_frames = [5]
frame_extraction = "uniform"
frame_sample = 2
"#,
        img = img.display(),
        vid = vid.display(),
        c0 = caches[0].display(),
        c1 = caches[1].display(),
        c2 = caches[2].display(),
    );
    let path = root.join("dataset.toml");
    std::fs::write(&path, toml).unwrap();
    (path, caches)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn dit() -> WanDit {
    WanDit::open(
        model("tiny-dit/dit_bf16.safetensors"),
        Some(&model("tiny-dit/config.json")),
    )
    .unwrap()
}

/// The mean loss of `net` on one item over fixed noises and levels.
fn fixed_loss(dit: &WanDit, net: &LoraNetwork, item: &CacheItem) -> f64 {
    let s = item.load(16, 32).unwrap();
    let mut dims = vec![1];
    dims.extend_from_slice(s.latents.dims());
    let x0 = s.latents.reshape(&dims[..]).unwrap();
    let mut total = 0.0;
    for (k, sigma) in [0.3f32, 0.6, 0.9].into_iter().enumerate() {
        let noise = random::tensor(&dims, 70 + k as u32, 0.0, 1.0).unwrap();
        let level = NoiseLevel {
            sigma,
            timestep: sigma * 1000.0,
        };
        let ctx = [s.t5.clone()];
        total += loss_and_grads(dit, net, &x0, &noise, &[level], &ctx)
            .unwrap()
            .0;
    }
    total / 3.0
}

fn train_config(steps: usize) -> TrainConfig {
    TrainConfig {
        network_dim: 4,
        network_alpha: 4.0,
        learning_rate: 2e-2,
        lr_scheduler: Scheduler::parse("constant").unwrap(),
        max_train_steps: steps,
        seed: 5,
        ..TrainConfig::default()
    }
}

#[test]
fn a_written_dataset_caches_trains_and_its_lora_changes_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (toml, caches) = write_dataset(tmp.path());

    let log = cache_latents(&toml, true);
    // 3 images; walk (9 frames): head 1 and 5, uniform 2×5; pan (7 frames): the same.
    assert!(log.contains("11 written, 0 already cached"), "{log}");
    assert_eq!(
        names(&caches[0]),
        [
            "field_0040x0032_wan.safetensors",
            "lake_0036x0036_wan.safetensors",
            "tower_0032x0048_wan.safetensors",
        ]
    );
    assert_eq!(
        names(&caches[1]),
        [
            "pan_00000-001_0048x0032_wan.safetensors",
            "pan_00000-005_0048x0032_wan.safetensors",
            "walk_00000-001_0032x0032_wan.safetensors",
            "walk_00000-005_0032x0032_wan.safetensors",
        ]
    );
    assert_eq!(
        names(&caches[2]),
        [
            "pan_00000-005_0048x0032_wan.safetensors",
            "pan_00002-005_0048x0032_wan.safetensors",
            "walk_00000-005_0032x0032_wan.safetensors",
            "walk_00004-005_0032x0032_wan.safetensors",
        ]
    );
    // Keys, shapes and metadata as musubi writes them; buckets per resolution: the 48x32
    // clip fills (32, 32) and (48, 32); the 32x32 one gets (32, 48) at the 48x32 area.
    for (file, key, dims, frames) in [
        (
            caches[0].join("field_0040x0032_wan.safetensors"),
            "latents_1x4x4_bfloat16",
            [16, 1, 4, 4],
            None,
        ),
        (
            caches[1].join("pan_00000-005_0048x0032_wan.safetensors"),
            "latents_2x4x4_bfloat16",
            [16, 2, 4, 4],
            Some("5"),
        ),
        (
            caches[2].join("pan_00002-005_0048x0032_wan.safetensors"),
            "latents_2x4x6_bfloat16",
            [16, 2, 4, 6],
            Some("5"),
        ),
        (
            caches[2].join("walk_00004-005_0032x0032_wan.safetensors"),
            "latents_2x6x4_bfloat16",
            [16, 2, 6, 4],
            Some("5"),
        ),
    ] {
        let c = read_file(&file).unwrap();
        assert_eq!(c.tensors.keys().collect::<Vec<_>>(), [key], "{file:?}");
        assert_eq!(c.tensors[key].dims(), dims);
        assert_eq!(c.metadata["architecture"], "wan");
        assert_eq!(c.metadata["format_version"], "1.0.1");
        assert_eq!(c.metadata.get("frame_count").map(String::as_str), frames);
    }
    let pan = read_file(&caches[1].join("pan_00000-005_0048x0032_wan.safetensors")).unwrap();
    assert_eq!(
        (&pan.metadata["width"][..], &pan.metadata["height"][..]),
        ("48", "32")
    );

    let log = cache_text(&toml);
    assert!(log.contains("note: --batch_size is ignored"), "{log}");
    assert!(log.contains("7 written"), "{log}");
    let te = read_file(&caches[0].join("lake_wan_te.safetensors")).unwrap();
    assert_eq!(te.metadata["caption1"], "a calm lake");
    assert_eq!(te.metadata["architecture"], "wan");
    let t5 = &te.tensors["varlen_t5_bfloat16"];
    assert_eq!(t5.dims()[1], 32);
    assert!(
        t5.dims()[0] > 1 && t5.dims()[0] < 512,
        "trimmed to its tokens"
    );

    // Cached items are skipped on a second run.
    let log = cache_latents(&toml, true);
    assert!(log.contains("0 written, 11 already cached"), "{log}");

    // Every cache reads back; one epoch over all of them trains.
    let items: Vec<CacheItem> = caches.iter().flat_map(|c| list_items(c).unwrap()).collect();
    assert_eq!(items.len(), 11);
    let mut all = Trainer::new(dit(), items.clone(), train_config(items.len())).unwrap();
    while !all.is_done() {
        assert!(all.step().unwrap().loss.is_finite());
    }

    // A repeated batch: the loss on fixed noise falls.
    let item = items[0].clone();
    let mut trainer = Trainer::new(dit(), vec![item.clone()], train_config(8)).unwrap();
    let base = dit();
    let before = fixed_loss(&base, trainer.network(), &item);
    while !trainer.is_done() {
        trainer.step().unwrap();
    }
    let after = fixed_loss(&base, trainer.network(), &item);
    assert!(after < 0.95 * before, "loss {before} -> {after}");

    // The LoRA loads into the pipeline and changes what it makes.
    let lora = tmp.path().join("out/mine.safetensors");
    std::fs::create_dir_all(lora.parent().unwrap()).unwrap();
    trainer.save_lora(&lora).unwrap();
    let files = ModelSource {
        dit: Some(model("tiny-dit/dit_bf16.safetensors")),
        dit_config: Some(model("tiny-dit/config.json")),
        vae: Some(model("tiny-vae/vae_f32.safetensors")),
        t5: Some(model("tiny-umt5/umt5_enc_f32.safetensors")),
        tokenizer: Some(model("tiny-umt5/tokenizer.json")),
        ..ModelSource::default()
    }
    .resolve()
    .unwrap();
    let mut req = GenerateRequest::new("a green field");
    (req.width, req.height, req.frames, req.steps, req.seed) = (32, 32, 1, 2, Some(3));
    let run = |loras: &[LoraSpec]| {
        Pipeline::load(&files, loras, &LoadOptions::default())
            .unwrap()
            .generate(&req, &mut |_| Flow::Continue)
            .unwrap()
            .latent
            .to_f32_vec()
            .unwrap()
    };
    let plain = run(&[]);
    let styled = run(&[LoraSpec {
        path: lora,
        strength: 1.0,
    }]);
    let diff = plain
        .iter()
        .zip(&styled)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff > 1e-3, "the LoRA changed the latent by only {diff}");
}

/// The data side's bad inputs: an image without a caption and a damaged image (skipped and
/// counted), a zero-frame and an unreadable clip, clips shorter than every `target_frames`
/// (nothing to cache: an error), an unknown TOML key (named with its line), a cache from
/// another model (rewritten when caching, refused when training).
#[test]
fn bad_data_is_skipped_with_a_count_or_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (img, vid) = (root.join("img"), root.join("vid"));
    std::fs::create_dir_all(&img).unwrap();
    std::fs::create_dir_all(&vid).unwrap();
    picture(32, 32, 0).save(img.join("good.png")).unwrap();
    picture(32, 32, 1).save(img.join("nocaption.png")).unwrap();
    std::fs::write(img.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    for stem in ["good", "broken"] {
        std::fs::write(img.join(format!("{stem}.txt")), "x").unwrap();
    }
    clip(&vid.join("short.mp4"), 32, 32, 3);
    std::fs::write(vid.join("garbage.mp4"), b"\0\0\0\x10ftypisom\0\0\0\0junk").unwrap();
    // A valid MP4 header with its sample data cut away: no frame decodes.
    let mut empty = std::fs::read(vid.join("short.mp4")).unwrap();
    empty.truncate(empty.len() - 200);
    std::fs::write(vid.join("empty.mp4"), &empty).unwrap();
    for stem in ["short", "garbage", "empty"] {
        std::fs::write(vid.join(format!("{stem}.txt")), "x").unwrap();
    }
    let cache = root.join("cache");
    let toml = root.join("d.toml");
    let write_toml = |extra: &str| {
        std::fs::write(
            &toml,
            format!(
                "[general]\ncaption_extension = \".txt\"\nresolution = 32\n\n[[datasets]]\n\
                 image_directory = \"{}\"\ncache_directory = \"{}\"\n\n[[datasets]]\n\
                 video_directory = \"{}\"\ntarget_frames = [9]\n{extra}",
                img.display(),
                cache.display(),
                vid.display()
            ),
        )
        .unwrap()
    };
    write_toml("");
    let log = cache_latents(&toml, true);
    assert!(
        log.contains(
            "1 written, 0 already cached, 1 skipped without a caption file, 4 skipped unusable"
        ),
        "{log}"
    );
    assert!(log.contains("nocaption.png: no caption file"), "{log}");
    assert!(log.contains("broken.png: image:"), "{log}");
    assert!(
        log.contains("short.mp4: 3 frames is shorter than every target_frames [9]"),
        "{log}"
    );
    assert!(log.contains("garbage.mp4:"), "{log}");
    assert!(log.contains("empty.mp4:"), "{log}");
    // No partial files were left behind anywhere.
    for dir in [&cache, &vid] {
        assert!(
            names(dir).iter().all(|n| !n.starts_with('.')),
            "{:?}",
            names(dir)
        );
    }

    // Only the clips: nothing can be cached, which is an error.
    std::fs::write(
        &toml,
        format!(
            "[[datasets]]\nvideo_directory = \"{}\"\ncaption_extension = \".txt\"\n\
             target_frames = [9]\n",
            vid.display()
        ),
    )
    .unwrap();
    let log = cache_latents(&toml, false);
    assert!(log.contains("nothing was cached"), "{log}");

    write_toml("frame_extration = \"head\"\n");
    let log = cache_latents(&toml, false);
    assert!(
        log.contains("frame_extration") && log.contains("line 12"),
        "{log}"
    );

    // Another model's cache under a wan name is written again; a wan-named cache with the
    // wrong width is refused by the trainer, naming the file.
    write_toml("");
    let good = cache.join("good_0032x0032_wan.safetensors");
    let hv = std::collections::BTreeMap::from([("architecture".into(), "hunyuan_video".into())]);
    let other = random::tensor(&[16, 1, 4, 4], 1, 0.0, 1.0).unwrap();
    wanrt::io::safetensors::write_file(&good, &[("latents_1x4x4_float32", &other)], &hv).unwrap();
    let log = cache_latents(&toml, true);
    assert!(log.contains("1 written, 0 already cached"), "{log}");
    assert_eq!(read_file(&good).unwrap().metadata["architecture"], "wan");
    cache_text(&toml);
    let wan = std::collections::BTreeMap::from([("architecture".into(), "wan".into())]);
    let wide = random::tensor(&[3, 4096], 1, 0.0, 1.0).unwrap();
    let te = cache.join("good_wan_te.safetensors");
    wanrt::io::safetensors::write_file(&te, &[("varlen_t5_float32", &wide)], &wan).unwrap();
    let items = list_items(&cache).unwrap();
    let e = items[0].load(16, 32).unwrap_err().to_string();
    assert!(e.contains("good_wan_te") && e.contains("4096"), "{e}");
}
