//! Layout detection, canonical renaming and config inference, on the fixture models and on
//! synthetic key sets of the real checkpoints (names and shapes only, no data).

use std::collections::BTreeMap;

use wanrt::io::config::{DitConfig, ModelType, T5Config, VaeConfig};
use wanrt::io::layout::{
    self, canonical_metas, canonical_weights, detect_metas, Component, Detected, KeyLayout,
    LoraAlpha, LoraFormat, LoraInfo, MetaMap, Quant, TensorMeta,
};
use wanrt::io::{self, Checkpoint};
use wanrt::tensor::{DType, Tensor, Weight};
use wanrt::Error;

mod common;
use common::model;

// === Helpers ===

fn open(rel: &str) -> Checkpoint {
    io::open(model(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn canonical(rel: &str) -> BTreeMap<String, Weight> {
    canonical_weights(&open(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .1
}

fn canonical_meta_map(rel: &str) -> MetaMap {
    canonical_metas(&layout::metas(&open(rel))).unwrap().1
}

fn values(w: &Weight) -> Vec<f32> {
    w.to_f32().unwrap().to_f32_vec().unwrap()
}

/// Same names, dtypes, dims, bytes and scales.
fn assert_identical(a: &BTreeMap<String, Weight>, b: &BTreeMap<String, Weight>, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: key sets differ"
    );
    for (k, wa) in a {
        let wb = &b[k];
        assert_eq!(
            (wa.dtype(), wa.dims()),
            (wb.dtype(), wb.dims()),
            "{what}: `{k}`"
        );
        assert_eq!(
            wa.tensor.raw_bytes().unwrap(),
            wb.tensor.raw_bytes().unwrap(),
            "{what}: `{k}` data"
        );
        assert_eq!(wa.scale, wb.scale, "{what}: `{k}` scale");
    }
}

/// `stored` (a dtype code) is `x` rounded to nearest even in `dtype`; where our rounding and
/// the fixture's disagree, `x` must be a tie (up to `rel_tie` relative) between the two:
/// the fixtures rounded from float64, we from float32.
fn assert_rounds(stored: f32, x: f64, dtype: DType, rel_tie: f64, what: &str) {
    let ours = Tensor::from_f32(vec![x as f32], [1usize])
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .to_f32_vec()
        .unwrap()[0];
    if ours == stored {
        return;
    }
    let (da, db) = ((ours as f64 - x).abs(), (stored as f64 - x).abs());
    assert!(
        (da - db).abs() <= rel_tie * x.abs(),
        "{what}: {x} rounds to {ours} in {dtype}, the file has {stored}"
    );
}

const FP8_LINEARS: [&str; 6] = [
    ".q.weight",
    ".k.weight",
    ".v.weight",
    ".o.weight",
    ".ffn.0.weight",
    ".ffn.2.weight",
];

fn is_fp8_linear(k: &str) -> bool {
    k.starts_with("blocks.") && FP8_LINEARS.iter().any(|s| k.ends_with(s))
}

fn err_text<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    r.expect_err("expected an error").to_string()
}

// === Detection of every fixture model ===

fn dit(layout: KeyLayout, quant: Quant) -> Detected {
    Detected {
        component: Component::Dit(ModelType::T2v),
        layout,
        quant,
        lora: None,
    }
}

fn plain(component: Component, layout: KeyLayout, dtype: DType) -> Detected {
    Detected {
        component,
        layout,
        quant: Quant::Float(dtype),
        lora: None,
    }
}

fn lora(format: LoraFormat, alpha: LoraAlpha, deltas: usize) -> Detected {
    Detected {
        component: Component::Lora,
        layout: KeyLayout::Original,
        quant: Quant::Float(DType::F32),
        lora: Some(LoraInfo {
            format,
            modules: 20,
            rank_min: 4,
            rank_max: 4,
            alpha,
            deltas,
        }),
    }
}

/// Every model file of the fixtures and what it is (read from the files with python).
fn expected() -> Vec<(&'static str, Detected)> {
    use KeyLayout::*;
    vec![
        (
            "tiny-dit/dit_f32.safetensors",
            dit(Original, Quant::Float(DType::F32)),
        ),
        (
            "tiny-dit/dit_bf16.safetensors",
            dit(Original, Quant::Float(DType::BF16)),
        ),
        (
            "tiny-dit/dit_comfy_bf16.safetensors",
            dit(ComfyUi, Quant::Float(DType::BF16)),
        ),
        (
            "tiny-dit/dit_diffusers_f32.safetensors",
            dit(Diffusers, Quant::Float(DType::F32)),
        ),
        (
            "tiny-dit/dit_fp8_e4m3fn_scaled.safetensors",
            dit(Original, Quant::ScaledFp8(DType::F8E4M3)),
        ),
        (
            "tiny-dit/dit_fp8_e5m2.safetensors",
            dit(Original, Quant::Fp8(DType::F8E5M2)),
        ),
        ("tiny-dit-sharded", dit(Original, Quant::Float(DType::BF16))),
        (
            "tiny-dit-hd128/dit_f32.safetensors",
            dit(Original, Quant::Float(DType::F32)),
        ),
        (
            "tiny-dit-hd128/dit_bf16.safetensors",
            dit(Original, Quant::Float(DType::BF16)),
        ),
        (
            "tiny-lora/lora_musubi.safetensors",
            lora(LoraFormat::Musubi, LoraAlpha::Uniform(2.0), 0),
        ),
        (
            "tiny-lora/lora_comfy.safetensors",
            lora(LoraFormat::Comfy, LoraAlpha::Uniform(2.0), 0),
        ),
        // 2 blocks x (10 bias deltas + 5 norm deltas + 1 modulation delta)
        (
            "tiny-lora/lora_distill_lightx2v.safetensors",
            lora(LoraFormat::Lightx2v, LoraAlpha::Absent, 32),
        ),
        (
            "tiny-vae/vae_f32.safetensors",
            plain(Component::Vae, Original, DType::F32),
        ),
        (
            "tiny-vae/vae_diffusers_f32.safetensors",
            plain(Component::Vae, Diffusers, DType::F32),
        ),
        (
            "tiny-vae/vae_bf16.pth",
            plain(Component::Vae, Original, DType::BF16),
        ),
        (
            "tiny-umt5/umt5_enc_f32.safetensors",
            plain(Component::Umt5Encoder, Original, DType::F32),
        ),
        (
            "tiny-umt5/umt5_enc_hf_f32.safetensors",
            plain(Component::Umt5Encoder, Transformers, DType::F32),
        ),
        (
            "tiny-umt5/umt5_enc_bf16.pth",
            plain(Component::Umt5Encoder, Original, DType::BF16),
        ),
    ]
}

fn check_detection(filter: impl Fn(&str) -> bool) {
    let mut n = 0;
    for (rel, want) in expected().into_iter().filter(|(r, _)| filter(r)) {
        let ckpt = open(rel);
        assert_eq!(layout::detect(&ckpt).unwrap(), want, "{rel}");
        let (got, weights) = canonical_weights(&ckpt).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(got, want, "{rel}");
        assert!(!weights.is_empty(), "{rel}");
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn every_fixture_model_file_is_expected() {
    let listed: Vec<&str> = expected().iter().map(|e| e.0).collect();
    for dir in std::fs::read_dir(model("")).unwrap() {
        let dir = dir.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        if name == "tiny-dit-sharded" {
            assert!(listed.contains(&"tiny-dit-sharded"));
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let file = f.file_name().unwrap().to_str().unwrap();
            if file.ends_with(".safetensors") || file.ends_with(".pth") {
                let rel = format!("{name}/{file}");
                assert!(
                    listed.contains(&rel.as_str()),
                    "fixture model {rel} has no expectation here"
                );
            }
        }
    }
}

#[test]
fn detects_safetensors_fixtures() {
    check_detection(|r| r.ends_with(".safetensors"));
}

#[test]
fn detects_pth_fixtures() {
    check_detection(|r| r.ends_with(".pth"));
}

#[test]
fn detects_sharded_folder() {
    check_detection(|r| r == "tiny-dit-sharded");
}

#[test]
fn detection_from_metas_leaves_alpha_unread() {
    let d = detect_metas(&layout::metas(&open("tiny-lora/lora_musubi.safetensors"))).unwrap();
    assert_eq!(d.lora.unwrap().alpha, LoraAlpha::NotRead);
}

// === The same weights in every layout give the same canonical tensors ===

#[test]
fn dit_diffusers_equals_original() {
    let orig = canonical("tiny-dit/dit_f32.safetensors");
    assert_eq!(orig.len(), 69);
    assert_identical(
        &orig,
        &canonical("tiny-dit/dit_diffusers_f32.safetensors"),
        "diffusers",
    );
}

#[test]
fn dit_comfy_bf16_equals_bf16() {
    assert_identical(
        &canonical("tiny-dit/dit_bf16.safetensors"),
        &canonical("tiny-dit/dit_comfy_bf16.safetensors"),
        "comfy",
    );
}

#[test]
fn dit_sharded_equals_bf16() {
    assert_identical(
        &canonical("tiny-dit/dit_bf16.safetensors"),
        &canonical("tiny-dit-sharded"),
        "sharded",
    );
}

#[test]
fn dit_bf16_is_f32_rounded() {
    let f32s = canonical("tiny-dit/dit_f32.safetensors");
    let bf = canonical("tiny-dit/dit_bf16.safetensors");
    assert_eq!(
        f32s.keys().collect::<Vec<_>>(),
        bf.keys().collect::<Vec<_>>()
    );
    for (k, w) in &bf {
        assert_eq!(w.dtype(), DType::BF16, "{k}");
        for (s, x) in values(w).iter().zip(values(&f32s[k])) {
            assert_rounds(*s, x as f64, DType::BF16, 0.0, k);
        }
    }
}

#[test]
fn dit_fp8_e5m2_is_f32_rounded() {
    let f32s = canonical("tiny-dit/dit_f32.safetensors");
    let e5 = canonical("tiny-dit/dit_fp8_e5m2.safetensors");
    assert_eq!(
        f32s.keys().collect::<Vec<_>>(),
        e5.keys().collect::<Vec<_>>()
    );
    let mut fp8 = 0;
    for (k, w) in &e5 {
        let dtype = if is_fp8_linear(k) {
            DType::F8E5M2
        } else {
            DType::BF16
        };
        fp8 += (dtype == DType::F8E5M2) as usize;
        assert_eq!((w.dtype(), w.scale), (dtype, None), "{k}");
        for (s, x) in values(w).iter().zip(values(&f32s[k])) {
            assert_rounds(*s, x as f64, dtype, 0.0, k);
        }
    }
    assert_eq!(fp8, 2 * 10);
}

/// The fixture stores `q = e4m3(w / scale)` with `scale = max|w| / 448` per tensor and the
/// value `q × scale` (`make_fixtures.py fp8_scaled`).
#[test]
fn dit_fp8_e4m3fn_scaled_is_f32_rounded_with_scale() {
    let f32s = canonical("tiny-dit/dit_f32.safetensors");
    let e4 = canonical("tiny-dit/dit_fp8_e4m3fn_scaled.safetensors");
    assert_eq!(
        f32s.keys().collect::<Vec<_>>(),
        e4.keys().collect::<Vec<_>>(),
        "marker and scales are dropped"
    );
    let mut scaled = 0;
    for (k, w) in &e4 {
        let reference = values(&f32s[k]);
        if !is_fp8_linear(k) {
            assert_eq!((w.dtype(), w.scale), (DType::BF16, None), "{k}");
            for (s, x) in values(w).iter().zip(&reference) {
                assert_rounds(*s, *x as f64, DType::BF16, 0.0, k);
            }
            continue;
        }
        scaled += 1;
        assert_eq!(w.dtype(), DType::F8E4M3, "{k}");
        let scale = w.scale.unwrap_or_else(|| panic!("{k} has no scale"));
        let max = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            ((scale as f64) - max as f64 / 448.0).abs() <= 1e-6 * scale as f64,
            "{k}: scale {scale}, max {max}"
        );
        let codes = w.tensor.to_f32_vec().unwrap();
        let deq = values(w);
        for ((c, d), x) in codes.iter().zip(&deq).zip(&reference) {
            assert_eq!(*d, c * scale, "{k}: dequantized = value x scale");
            // The fixture divided in float64; allow near-ties from dividing in float32 here.
            assert_rounds(*c, *x as f64 / scale as f64, DType::F8E4M3, 1e-6, k);
        }
    }
    assert_eq!(scaled, 2 * 10);
}

#[test]
fn vae_diffusers_equals_original() {
    let orig = canonical("tiny-vae/vae_f32.safetensors");
    assert_eq!(orig.len(), 194);
    assert_identical(
        &orig,
        &canonical("tiny-vae/vae_diffusers_f32.safetensors"),
        "vae diffusers",
    );
}

#[test]
fn umt5_transformers_equals_original() {
    let orig = canonical("tiny-umt5/umt5_enc_f32.safetensors");
    assert_eq!(orig.len(), 22);
    assert_identical(
        &orig,
        &canonical("tiny-umt5/umt5_enc_hf_f32.safetensors"),
        "umt5 hf",
    );
}

#[test]
fn pth_fixtures_are_f32_rounded_to_bf16() {
    for (pth, f32_file) in [
        ("tiny-vae/vae_bf16.pth", "tiny-vae/vae_f32.safetensors"),
        (
            "tiny-umt5/umt5_enc_bf16.pth",
            "tiny-umt5/umt5_enc_f32.safetensors",
        ),
    ] {
        let f32s = canonical(f32_file);
        let bf = canonical(pth);
        assert_eq!(
            f32s.keys().collect::<Vec<_>>(),
            bf.keys().collect::<Vec<_>>(),
            "{pth}"
        );
        for (k, w) in &bf {
            assert_eq!(w.dtype(), DType::BF16, "{pth} {k}");
            for (s, x) in values(w).iter().zip(values(&f32s[k])) {
                assert_rounds(*s, x as f64, DType::BF16, 0.0, k);
            }
        }
    }
}

#[test]
fn lora_formats_give_the_same_canonical_lora() {
    let musubi = canonical("tiny-lora/lora_musubi.safetensors");
    assert_identical(
        &musubi,
        &canonical("tiny-lora/lora_comfy.safetensors"),
        "comfy lora",
    );
    for k in [
        "blocks.0.self_attn.q.lora_down.weight",
        "blocks.1.ffn.2.lora_up.weight",
        "blocks.1.cross_attn.o.alpha",
    ] {
        assert!(musubi.contains_key(k), "{k}");
    }
    let distill = canonical("tiny-lora/lora_distill_lightx2v.safetensors");
    for k in [
        "blocks.0.diff_m",
        "blocks.1.norm3.diff",
        "blocks.0.self_attn.norm_q.diff",
        "blocks.0.ffn.0.diff_b",
        "blocks.1.cross_attn.v.lora_up.weight",
    ] {
        assert!(distill.contains_key(k), "{k}");
    }
    assert_eq!(distill["blocks.0.diff_m"].dims(), &[1, 6, 64]);
}

// === Config inference on the fixtures ===

fn tiny_dit_config() -> DitConfig {
    DitConfig {
        model_type: ModelType::T2v,
        dim: 64,
        ffn_dim: 128,
        num_heads: 4,
        num_layers: 2,
        in_dim: 16,
        out_dim: 16,
        text_dim: 32,
        freq_dim: 256,
        text_len: 512,
        eps: 1e-6,
        patch_size: [1, 2, 2],
    }
}

#[test]
fn tiny_dit_config_from_json_in_every_layout() {
    let json = model("tiny-dit/config.json");
    for rel in [
        "tiny-dit/dit_f32.safetensors",
        "tiny-dit/dit_diffusers_f32.safetensors",
        "tiny-dit/dit_comfy_bf16.safetensors",
        "tiny-dit/dit_fp8_e4m3fn_scaled.safetensors",
        "tiny-dit/dit_fp8_e5m2.safetensors",
    ] {
        let cfg = DitConfig::load(&canonical_meta_map(rel), Some(&json)).unwrap();
        assert_eq!(cfg, tiny_dit_config(), "{rel}");
        cfg.ensure_supported().unwrap();
        assert_eq!(cfg.head_dim(), 16);
    }
    // The sharded folder's config.json (with `_class_name: WanModel`) describes the same model.
    let sharded = model("tiny-dit-sharded/config.json");
    let cfg = DitConfig::load(
        &canonical_meta_map("tiny-dit/dit_bf16.safetensors"),
        Some(&sharded),
    )
    .unwrap();
    assert_eq!(cfg, tiny_dit_config());
}

#[test]
fn tiny_dit_config_needs_num_heads() {
    let metas = canonical_meta_map("tiny-dit/dit_f32.safetensors");
    let e = DitConfig::infer(&metas).unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
    assert!(
        e.to_string().contains("num_heads") && e.to_string().contains("64"),
        "{e}"
    );
    // Only num_heads is missing: the json's value wins.
    let cfg = DitConfig::resolve(&metas, Some(r#"{"num_heads": 8, "text_len": 77}"#)).unwrap();
    assert_eq!((cfg.num_heads, cfg.text_len, cfg.dim), (8, 77, 64));
}

#[test]
fn dit_json_contradicting_the_weights_names_the_field() {
    let metas = canonical_meta_map("tiny-dit/dit_f32.safetensors");
    for (json, field, a, b) in [
        (r#"{"num_heads": 4, "dim": 128}"#, "dim", "128", "64"),
        (
            r#"{"num_heads": 4, "num_layers": 3}"#,
            "num_layers",
            "3",
            "2",
        ),
        (
            r#"{"num_heads": 4, "ffn_dim": 256}"#,
            "ffn_dim",
            "256",
            "128",
        ),
        (
            r#"{"num_heads": 4, "text_dim": 4096}"#,
            "text_dim",
            "4096",
            "32",
        ),
        (
            r#"{"num_heads": 4, "model_type": "i2v"}"#,
            "model_type",
            "I2v",
            "T2v",
        ),
        (r#"{"num_heads": 4, "in_dim": 36}"#, "in_dim", "36", "16"),
    ] {
        let e = DitConfig::resolve(&metas, Some(json)).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, Error::InvalidConfig(_)), "{json}: {s}");
        assert!(
            s.contains(field) && s.contains(a) && s.contains(b),
            "{json}: {s}"
        );
    }
    for bad in [
        r#"{"num_heads": 5}"#,
        r#"{"num_heads": 0}"#,
        "not json",
        r#"{"dim": "x"}"#,
    ] {
        assert!(
            matches!(
                DitConfig::resolve(&metas, Some(bad)),
                Err(Error::InvalidConfig(_))
            ),
            "{bad}"
        );
    }
    let e = DitConfig::resolve(
        &metas,
        Some(r#"{"_class_name": "WanTransformer3DModel", "num_attention_heads": 4}"#),
    );
    assert!(err_text(e).contains("WanTransformer3DModel"));
}

#[test]
fn tiny_vae_config() {
    let want = VaeConfig {
        dim: 8,
        ..VaeConfig::default()
    };
    for rel in [
        "tiny-vae/vae_f32.safetensors",
        "tiny-vae/vae_diffusers_f32.safetensors",
    ] {
        let metas = canonical_meta_map(rel);
        assert_eq!(
            VaeConfig::load(&metas, Some(&model("tiny-vae/config.json"))).unwrap(),
            want,
            "{rel}"
        );
        assert_eq!(VaeConfig::infer(&metas).unwrap(), want, "{rel}");
    }
    let metas = canonical_meta_map("tiny-vae/vae_f32.safetensors");
    let e = VaeConfig::resolve(&metas, Some(r#"{"dim_mult": [1, 2, 2, 4]}"#));
    assert!(err_text(e).contains("dim_mult"));
    let e = VaeConfig::resolve(&metas, Some(r#"{"latents_mean": [0.0]}"#));
    assert!(err_text(e).contains("latents_mean"));
    let mean: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let json = format!(r#"{{"latents_mean": {mean:?}}}"#);
    assert_eq!(
        VaeConfig::resolve(&metas, Some(&json))
            .unwrap()
            .latents_mean,
        mean
    );
}

#[test]
fn tiny_t5_config() {
    let want = T5Config {
        vocab: 260,
        dim: 32,
        dim_attn: 32,
        dim_ffn: 64,
        num_heads: 4,
        num_layers: 2,
        num_buckets: 32,
        shared_pos: false,
        text_len: 512,
    };
    for rel in [
        "tiny-umt5/umt5_enc_f32.safetensors",
        "tiny-umt5/umt5_enc_hf_f32.safetensors",
    ] {
        let metas = canonical_meta_map(rel);
        assert_eq!(
            T5Config::load(&metas, Some(&model("tiny-umt5/config.json"))).unwrap(),
            want,
            "{rel}"
        );
        assert_eq!(T5Config::infer(&metas).unwrap(), want, "{rel}");
    }
    let metas = canonical_meta_map("tiny-umt5/umt5_enc_f32.safetensors");
    assert!(
        err_text(T5Config::resolve(&metas, Some(r#"{"num_heads": 64}"#))).contains("num_heads")
    );
    assert_eq!(
        T5Config::resolve(&metas, Some(r#"{"text_len": 226}"#))
            .unwrap()
            .text_len,
        226
    );
}

// === Synthetic key sets of the real checkpoints (shapes only) ===

/// Builds a [`MetaMap`] of one dtype.
struct Metas(MetaMap, DType);

impl Metas {
    fn t(&mut self, k: impl Into<String>, dims: &[usize]) {
        self.0.insert(k.into(), TensorMeta::new(dims, self.1));
    }

    /// `<k>.weight` `[o, i, kernel…]` and `<k>.bias` `[o]`.
    fn conv(&mut self, k: &str, o: usize, i: usize, kernel: &[usize]) {
        self.t(format!("{k}.weight"), &[&[o, i][..], kernel].concat());
        self.t(format!("{k}.bias"), &[o]);
    }

    fn linear(&mut self, k: &str, o: usize, i: usize) {
        self.conv(k, o, i, &[]);
    }
}

/// The original Wan DiT state dict (§1.2 of the architecture notes).
fn wan_dit_metas(dim: usize, ffn: usize, layers: usize, i2v: bool, dtype: DType) -> MetaMap {
    let mut m = Metas(MetaMap::new(), dtype);
    m.conv(
        "patch_embedding",
        dim,
        if i2v { 36 } else { 16 },
        &[1, 2, 2],
    );
    m.linear("text_embedding.0", dim, 4096);
    m.linear("text_embedding.2", dim, dim);
    m.linear("time_embedding.0", dim, 256);
    m.linear("time_embedding.2", dim, dim);
    m.linear("time_projection.1", 6 * dim, dim);
    m.t("head.modulation", &[1, 2, dim]);
    m.linear("head.head", 64, dim);
    for b in 0..layers {
        let p = format!("blocks.{b}");
        m.t(format!("{p}.modulation"), &[1, 6, dim]);
        for a in ["self_attn", "cross_attn"] {
            for l in ["q", "k", "v", "o"] {
                m.linear(&format!("{p}.{a}.{l}"), dim, dim);
            }
            m.t(format!("{p}.{a}.norm_q.weight"), &[dim]);
            m.t(format!("{p}.{a}.norm_k.weight"), &[dim]);
        }
        m.t(format!("{p}.norm3.weight"), &[dim]);
        m.t(format!("{p}.norm3.bias"), &[dim]);
        m.linear(&format!("{p}.ffn.0"), ffn, dim);
        m.linear(&format!("{p}.ffn.2"), dim, ffn);
        if i2v {
            m.linear(&format!("{p}.cross_attn.k_img"), dim, dim);
            m.linear(&format!("{p}.cross_attn.v_img"), dim, dim);
            m.t(format!("{p}.cross_attn.norm_k_img.weight"), &[dim]);
        }
    }
    if i2v {
        m.t("img_emb.proj.0.weight", &[1280]);
        m.t("img_emb.proj.0.bias", &[1280]);
        m.linear("img_emb.proj.1", 1280, 1280);
        m.linear("img_emb.proj.3", dim, 1280);
        m.t("img_emb.proj.4.weight", &[dim]);
        m.t("img_emb.proj.4.bias", &[dim]);
    }
    m.0
}

/// Original -> diffusers names, written independently of the library from the
/// `convert_wan_to_diffusers.py` table (§1.10).
fn to_diffusers(name: &str) -> String {
    let mut s = name.to_string();
    for (a, b) in [
        (
            "time_embedding.0",
            "condition_embedder.time_embedder.linear_1",
        ),
        (
            "time_embedding.2",
            "condition_embedder.time_embedder.linear_2",
        ),
        (
            "text_embedding.0",
            "condition_embedder.text_embedder.linear_1",
        ),
        (
            "text_embedding.2",
            "condition_embedder.text_embedder.linear_2",
        ),
        ("time_projection.1", "condition_embedder.time_proj"),
        ("head.modulation", "scale_shift_table"),
        ("head.head", "proj_out"),
        ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
        (
            "img_emb.proj.1",
            "condition_embedder.image_embedder.ff.net.0.proj",
        ),
        (
            "img_emb.proj.3",
            "condition_embedder.image_embedder.ff.net.2",
        ),
        ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
        (".modulation", ".scale_shift_table"),
        ("self_attn.", "attn1."),
        ("cross_attn.", "attn2."),
        (".norm_k_img.", ".norm_added_k."),
        (".k_img.", ".add_k_proj."),
        (".v_img.", ".add_v_proj."),
        (".q.", ".to_q."),
        (".k.", ".to_k."),
        (".v.", ".to_v."),
        (".o.", ".to_out.0."),
        (".norm3.", ".norm2."),
        (".ffn.0.", ".ffn.net.0.proj."),
        (".ffn.2.", ".ffn.net.2."),
    ] {
        s = s.replace(a, b);
    }
    s
}

#[test]
fn real_dit_configs_from_shapes() {
    for (dim, ffn, layers, i2v, tensors, heads) in [
        (1536, 8960, 30, false, 825, 12),
        (5120, 13824, 40, false, 1095, 40),
        (5120, 13824, 40, true, 1303, 40),
    ] {
        let metas = wan_dit_metas(dim, ffn, layers, i2v, DType::BF16);
        assert_eq!(metas.len(), tensors);
        let model_type = if i2v { ModelType::I2v } else { ModelType::T2v };
        let (d, canon) = canonical_metas(&metas).unwrap();
        assert_eq!(
            d,
            Detected {
                component: Component::Dit(model_type),
                layout: KeyLayout::Original,
                quant: Quant::Float(DType::BF16),
                lora: None
            }
        );
        assert_eq!(canon, metas);
        let cfg = DitConfig::infer(&canon).unwrap();
        let want = DitConfig {
            model_type,
            dim,
            ffn_dim: ffn,
            num_heads: heads,
            num_layers: layers,
            in_dim: if i2v { 36 } else { 16 },
            out_dim: 16,
            text_dim: 4096,
            freq_dim: 256,
            text_len: 512,
            eps: 1e-6,
            patch_size: [1, 2, 2],
        };
        assert_eq!(cfg, want);
        assert_eq!(cfg.head_dim(), 128);
        match cfg.ensure_supported() {
            Ok(()) => assert!(!i2v),
            Err(e) => assert!(
                i2v && matches!(e, Error::UnsupportedModel(_)) && e.to_string().contains("I2V"),
                "{e}"
            ),
        }

        // The same model in diffusers names maps back 1:1.
        let diffusers: MetaMap = metas
            .iter()
            .map(|(k, v)| (to_diffusers(k), v.clone()))
            .collect();
        assert!(
            diffusers.contains_key("blocks.0.attn1.to_out.0.weight")
                && diffusers.contains_key("scale_shift_table")
        );
        let (d, back) = canonical_metas(&diffusers).unwrap();
        assert_eq!(
            (d.component, d.layout),
            (Component::Dit(model_type), KeyLayout::Diffusers)
        );
        assert_eq!(back, metas);
    }
}

#[test]
fn comfy_scaled_fp8_dit_from_shapes() {
    let metas = wan_dit_metas(1536, 8960, 30, false, DType::BF16);
    let mut comfy = MetaMap::new();
    for (k, v) in &metas {
        let mut v = v.clone();
        if is_fp8_linear(k) {
            v.dtype = DType::F8E4M3;
            let scale = format!(
                "model.diffusion_model.{}scale_weight",
                k.strip_suffix("weight").unwrap()
            );
            comfy.insert(scale, TensorMeta::new([], DType::F32));
        }
        comfy.insert(format!("model.diffusion_model.{k}"), v);
    }
    comfy.insert(
        "model.diffusion_model.scaled_fp8".into(),
        TensorMeta::new([0], DType::F8E4M3),
    );
    let (d, canon) = canonical_metas(&comfy).unwrap();
    assert_eq!(d, dit(KeyLayout::ComfyUi, Quant::ScaledFp8(DType::F8E4M3)));
    assert_eq!(
        canon.keys().collect::<Vec<_>>(),
        metas.keys().collect::<Vec<_>>()
    );
    assert_eq!(canon["blocks.29.ffn.2.weight"].dtype, DType::F8E4M3);
    assert_eq!(DitConfig::infer(&canon).unwrap().num_layers, 30);
}

impl Metas {
    /// A VAE residual block `in -> out`.
    fn res(&mut self, p: &str, i: usize, o: usize) {
        self.t(format!("{p}.residual.0.gamma"), &[i, 1, 1, 1]);
        self.conv(&format!("{p}.residual.2"), o, i, &[3, 3, 3]);
        self.t(format!("{p}.residual.3.gamma"), &[o, 1, 1, 1]);
        self.conv(&format!("{p}.residual.6"), o, o, &[3, 3, 3]);
        if i != o {
            self.conv(&format!("{p}.shortcut"), o, i, &[1, 1, 1]);
        }
    }

    /// A VAE middle: residual, attention, residual.
    fn middle(&mut self, side: &str, c: usize) {
        self.res(&format!("{side}.middle.0"), c, c);
        self.t(format!("{side}.middle.1.norm.gamma"), &[c, 1, 1]);
        self.conv(&format!("{side}.middle.1.to_qkv"), 3 * c, c, &[1, 1]);
        self.conv(&format!("{side}.middle.1.proj"), c, c, &[1, 1]);
        self.res(&format!("{side}.middle.2"), c, c);
    }
}

/// The original Wan VAE state dict (`WanVAE_` in `wan/modules/vae.py`).
fn wan_vae_metas(
    dim: usize,
    z: usize,
    mult: &[usize],
    res_blocks: usize,
    temporal: &[bool],
) -> MetaMap {
    let mut m = Metas(MetaMap::new(), DType::F32);
    let top = dim * mult[mult.len() - 1];
    // Encoder: per stage, residual blocks then a downsampling (all but the last stage).
    let dims: Vec<usize> = [1].iter().chain(mult).map(|u| dim * u).collect();
    m.conv("encoder.conv1", dim, 3, &[3, 3, 3]);
    let mut k = 0;
    for i in 0..mult.len() {
        let (mut cin, cout) = (dims[i], dims[i + 1]);
        for _ in 0..res_blocks {
            m.res(&format!("encoder.downsamples.{k}"), cin, cout);
            cin = cout;
            k += 1;
        }
        if i != mult.len() - 1 {
            m.conv(
                &format!("encoder.downsamples.{k}.resample.1"),
                cout,
                cout,
                &[3, 3],
            );
            if temporal[i] {
                m.conv(
                    &format!("encoder.downsamples.{k}.time_conv"),
                    cout,
                    cout,
                    &[3, 1, 1],
                );
            }
            k += 1;
        }
    }
    m.middle("encoder", top);
    m.t("encoder.head.0.gamma", &[top, 1, 1, 1]);
    m.conv("encoder.head.2", 2 * z, top, &[3, 3, 3]);
    m.conv("conv1", 2 * z, 2 * z, &[1, 1, 1]);
    m.conv("conv2", z, z, &[1, 1, 1]);
    // Decoder: per stage, one more residual block; the upsampling halves the channels.
    let dims: Vec<usize> = [mult[mult.len() - 1]]
        .iter()
        .chain(mult.iter().rev())
        .map(|u| dim * u)
        .collect();
    m.conv("decoder.conv1", top, z, &[3, 3, 3]);
    m.middle("decoder", top);
    let mut k = 0;
    for i in 0..mult.len() {
        let (mut cin, cout) = (if i > 0 { dims[i] / 2 } else { dims[i] }, dims[i + 1]);
        for _ in 0..res_blocks + 1 {
            m.res(&format!("decoder.upsamples.{k}"), cin, cout);
            cin = cout;
            k += 1;
        }
        if i != mult.len() - 1 {
            m.conv(
                &format!("decoder.upsamples.{k}.resample.1"),
                cout / 2,
                cout,
                &[3, 3],
            );
            if temporal[temporal.len() - 1 - i] {
                m.conv(
                    &format!("decoder.upsamples.{k}.time_conv"),
                    2 * cout,
                    cout,
                    &[3, 1, 1],
                );
            }
            k += 1;
        }
    }
    m.t("decoder.head.0.gamma", &[dim, 1, 1, 1]);
    m.conv("decoder.head.2", 3, dim, &[3, 3, 3]);
    m.0
}

#[test]
fn real_vae_config_from_shapes() {
    let metas = wan_vae_metas(96, 16, &[1, 2, 4, 4], 2, &[false, true, true]);
    assert_eq!(metas.len(), 194);
    assert_eq!(
        metas["decoder.upsamples.3.time_conv.weight"].dims,
        [768, 384, 3, 1, 1]
    );
    assert_eq!(
        metas["decoder.upsamples.4.shortcut.weight"].dims,
        [384, 192, 1, 1, 1]
    );
    let (d, canon) = canonical_metas(&metas).unwrap();
    assert_eq!(d, plain(Component::Vae, KeyLayout::Original, DType::F32));
    assert_eq!(VaeConfig::infer(&canon).unwrap(), VaeConfig::default());
    // The tiny generator agrees with the fixture's key set.
    let tiny = wan_vae_metas(8, 16, &[1, 2, 4, 4], 2, &[false, true, true]);
    assert_eq!(tiny, canonical_meta_map("tiny-vae/vae_f32.safetensors"));
    // Other structures are read off the encoder.
    let other = wan_vae_metas(32, 4, &[1, 2, 2], 1, &[true, false]);
    let cfg = VaeConfig::resolve(
        &other,
        Some(&format!(
            r#"{{"latents_mean": {:?}, "latents_std": {:?}}}"#,
            [0.0; 4], [1.0; 4]
        )),
    )
    .unwrap();
    assert_eq!(
        (
            cfg.dim,
            cfg.z_dim,
            cfg.dim_mult,
            cfg.num_res_blocks,
            cfg.temperal_downsample
        ),
        (32, 4, vec![1, 2, 2], 1, vec![true, false])
    );
    assert!(
        err_text(VaeConfig::infer(&other)).contains("latents_mean"),
        "Wan's statistics have 16 channels"
    );
}

fn umt5_metas(vocab: usize, dim: usize, ffn: usize, heads: usize, layers: usize) -> MetaMap {
    let mut m = Metas(MetaMap::new(), DType::BF16);
    m.t("token_embedding.weight", &[vocab, dim]);
    for b in 0..layers {
        m.t(format!("blocks.{b}.norm1.weight"), &[dim]);
        for l in ["q", "k", "v", "o"] {
            m.t(format!("blocks.{b}.attn.{l}.weight"), &[dim, dim]);
        }
        m.t(
            format!("blocks.{b}.pos_embedding.embedding.weight"),
            &[32, heads],
        );
        m.t(format!("blocks.{b}.norm2.weight"), &[dim]);
        m.t(format!("blocks.{b}.ffn.gate.0.weight"), &[ffn, dim]);
        m.t(format!("blocks.{b}.ffn.fc1.weight"), &[ffn, dim]);
        m.t(format!("blocks.{b}.ffn.fc2.weight"), &[dim, ffn]);
    }
    m.t("norm.weight", &[dim]);
    m.0
}

#[test]
fn real_umt5_config_from_shapes() {
    let metas = umt5_metas(256384, 4096, 10240, 64, 24);
    assert_eq!(metas.len(), 242);
    let (d, canon) = canonical_metas(&metas).unwrap();
    assert_eq!(
        d,
        plain(Component::Umt5Encoder, KeyLayout::Original, DType::BF16)
    );
    assert_eq!(T5Config::infer(&canon).unwrap(), T5Config::default());

    // ComfyUI: transformers names under a prefix, with the tied embedding copy (243 keys).
    let hf: [(&str, &str); 10] = [
        ("norm1.weight", "layer.0.layer_norm.weight"),
        ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
        ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
        ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
        ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
        (
            "pos_embedding.embedding.weight",
            "layer.0.SelfAttention.relative_attention_bias.weight",
        ),
        ("norm2.weight", "layer.1.layer_norm.weight"),
        ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
        ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
        ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
    ];
    let mut comfy = MetaMap::new();
    for (k, v) in &metas {
        let name = match k.as_str() {
            "token_embedding.weight" => "shared.weight".to_string(),
            "norm.weight" => "encoder.final_layer_norm.weight".to_string(),
            _ => {
                let (b, rest) = k["blocks.".len()..].split_once('.').unwrap();
                format!(
                    "encoder.block.{b}.{}",
                    hf.iter().find(|p| p.0 == rest).unwrap().1
                )
            }
        };
        comfy.insert(
            format!("text_encoders.umt5xxl.transformer.{name}"),
            v.clone(),
        );
    }
    comfy.insert(
        "text_encoders.umt5xxl.transformer.encoder.embed_tokens.weight".into(),
        metas["token_embedding.weight"].clone(),
    );
    assert_eq!(comfy.len(), 243);
    let (d, back) = canonical_metas(&comfy).unwrap();
    assert_eq!(
        d,
        plain(Component::Umt5Encoder, KeyLayout::ComfyUi, DType::BF16)
    );
    assert_eq!(back, metas);
}

// === LoRA key formats from shapes ===

fn lora_metas(keys: &[(&str, &[usize])]) -> MetaMap {
    keys.iter()
        .map(|(k, d)| (k.to_string(), TensorMeta::new(*d, DType::BF16)))
        .collect()
}

#[test]
fn musubi_i2v_and_top_level_modules_unmangle() {
    let metas = lora_metas(&[
        (
            "lora_unet_blocks_39_cross_attn_k_img.lora_down.weight",
            &[8, 5120],
        ),
        (
            "lora_unet_blocks_39_cross_attn_k_img.lora_up.weight",
            &[5120, 8],
        ),
        ("lora_unet_blocks_39_cross_attn_k_img.alpha", &[]),
        ("lora_unet__blocks_2_ffn_0.lora_down.weight", &[16, 5120]),
        ("lora_unet__blocks_2_ffn_0.lora_up.weight", &[13824, 16]),
        ("lora_unet_time_projection_1.lora_down.weight", &[4, 5120]),
        ("lora_unet_time_projection_1.lora_up.weight", &[30720, 4]),
    ]);
    let (d, canon) = canonical_metas(&metas).unwrap();
    let info = d.lora.unwrap();
    assert_eq!(
        (info.format, info.modules, info.rank_min, info.rank_max),
        (LoraFormat::Musubi, 3, 4, 16)
    );
    assert_eq!(info.alpha, LoraAlpha::NotRead);
    assert_eq!(
        canon.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "blocks.2.ffn.0.lora_down.weight",
            "blocks.2.ffn.0.lora_up.weight",
            "blocks.39.cross_attn.k_img.alpha",
            "blocks.39.cross_attn.k_img.lora_down.weight",
            "blocks.39.cross_attn.k_img.lora_up.weight",
            "time_projection.1.lora_down.weight",
            "time_projection.1.lora_up.weight",
        ]
    );
}

#[test]
fn diffusers_lora_maps_module_names() {
    let metas = lora_metas(&[
        (
            "transformer.blocks.0.attn1.to_out.0.lora_A.weight",
            &[4, 1536],
        ),
        (
            "transformer.blocks.0.attn1.to_out.0.lora_B.weight",
            &[1536, 4],
        ),
        ("transformer.blocks.0.attn1.to_out.0.lora_B.bias", &[1536]),
        (
            "transformer.blocks.7.attn2.add_v_proj.lora_A.weight",
            &[4, 5120],
        ),
        (
            "transformer.blocks.7.attn2.add_v_proj.lora_B.weight",
            &[5120, 4],
        ),
        ("transformer.proj_out.lora_A.weight", &[4, 1536]),
        ("transformer.proj_out.lora_B.weight", &[64, 4]),
    ]);
    let (d, canon) = canonical_metas(&metas).unwrap();
    assert_eq!(
        (d.component, d.layout),
        (Component::Lora, KeyLayout::Diffusers)
    );
    let info = d.lora.unwrap();
    assert_eq!(
        (info.format, info.modules, info.alpha, info.deltas),
        (LoraFormat::Diffusers, 3, LoraAlpha::Absent, 1)
    );
    for k in [
        "blocks.0.self_attn.o.lora_down.weight",
        "blocks.0.self_attn.o.lora_up.weight",
        "blocks.0.self_attn.o.diff_b",
        "blocks.7.cross_attn.v_img.lora_down.weight",
        "head.head.lora_up.weight",
    ] {
        assert!(canon.contains_key(k), "{k} in {:?}", canon.keys());
    }
}

#[test]
fn bad_loras_are_rejected_with_the_key() {
    for (keys, needle) in [
        (
            vec![(
                "lora_unet_blocks_0_self_attn_q.lora_down.weight",
                &[4usize, 64][..],
            )],
            "blocks.0.self_attn.q",
        ),
        (
            vec![
                ("diffusion_model.blocks.0.ffn.0.lora_A.weight", &[4, 64][..]),
                (
                    "diffusion_model.blocks.0.ffn.0.lora_B.weight",
                    &[128, 8][..],
                ),
            ],
            "rank",
        ),
        (
            vec![
                (
                    "diffusion_model.blocks.0.ffn.0.lora_A.weight",
                    &[4, 64, 1, 1][..],
                ),
                (
                    "diffusion_model.blocks.0.ffn.0.lora_B.weight",
                    &[128, 4, 1, 1][..],
                ),
            ],
            "2-D",
        ),
        (
            vec![(
                "lora_unet_blocks_0_self_attn_x.lora_down.weight",
                &[4, 64][..],
            )],
            "lora_unet_blocks_0_self_attn_x.lora_down.weight",
        ),
        (
            vec![("diffusion_model.blocks.0.bogus.lora_A.weight", &[4, 64][..])],
            "diffusion_model.blocks.0.bogus.lora_A.weight",
        ),
        (
            vec![
                ("lora_unet_blocks_0_ffn_0.lora_down.weight", &[4, 64][..]),
                ("lora_unet_blocks_0_ffn_0.lora_up.weight", &[128, 4][..]),
                ("lora_unet__blocks_0_ffn_0.lora_down.weight", &[4, 64][..]),
                ("lora_unet__blocks_0_ffn_0.lora_up.weight", &[128, 4][..]),
            ],
            "both map to",
        ),
    ] {
        let metas = lora_metas(&keys);
        let e = err_text(canonical_metas(&metas));
        assert!(e.contains(needle), "{keys:?}: {e}");
    }
}

// === Bad names and scales in model files ===

#[test]
fn unknown_and_unmapped_keys_are_named() {
    let base = layout::metas(&open("tiny-dit/dit_f32.safetensors"));
    let diff = layout::metas(&open("tiny-dit/dit_diffusers_f32.safetensors"));
    let vae = layout::metas(&open("tiny-vae/vae_diffusers_f32.safetensors"));
    let t5 = layout::metas(&open("tiny-umt5/umt5_enc_hf_f32.safetensors"));
    let comfy = layout::metas(&open("tiny-dit/dit_comfy_bf16.safetensors"));
    let meta = TensorMeta::new([64], DType::F32);
    for (mut metas, key) in [
        (base.clone(), "blocks.0.self_attn.x.weight"),
        (base.clone(), "blocks.0.norm1.weight"),
        (base.clone(), "img_emb.emb_pos"),
        (diff, "blocks.0.attn1.to_x.weight"),
        (vae, "decoder.up_blocks.0.resnets.0.norm3.gamma"),
        (t5, "decoder.block.0.layer.0.SelfAttention.q.weight"),
        (comfy, "first_stage_model.decoder.conv1.weight"),
        (base.clone(), "blocks.0.self_attn.q.scale_weight"),
    ] {
        metas.insert(key.into(), meta.clone());
        let e = canonical_metas(&metas).unwrap_err();
        assert!(matches!(e, Error::UnsupportedModel(_)), "{key}: {e}");
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
    // A scale without its weight, and a per-block scale.
    let mut m = base.clone();
    m.insert(
        "blocks.0.ffn.1.scale_weight".into(),
        TensorMeta::new([], DType::F32),
    );
    assert!(err_text(canonical_metas(&m)).contains("blocks.0.ffn.1.scale_weight"));
    let mut m = base.clone();
    m.insert(
        "blocks.0.ffn.0.scale_weight".into(),
        TensorMeta::new([128, 1, 1], DType::F32),
    );
    assert!(err_text(canonical_metas(&m)).contains("blocks.0.ffn.0.scale_weight"));
    // Not a Wan model at all.
    let m = lora_metas(&[("foo.weight", &[3, 3])]);
    assert_eq!(detect_metas(&m).unwrap().component, Component::Unknown);
    assert!(matches!(
        canonical_metas(&m),
        Err(Error::UnsupportedModel(_))
    ));
}

#[test]
fn tied_umt5_embedding_is_dropped_only_when_equal() {
    let mut ckpt = open("tiny-umt5/umt5_enc_hf_f32.safetensors");
    let shared = ckpt.tensors["shared.weight"].clone();
    ckpt.tensors.insert(
        "encoder.embed_tokens.weight".into(),
        Tensor::from_f32(shared.to_f32_vec().unwrap(), shared.shape().clone()).unwrap(),
    );
    let (_, weights) = canonical_weights(&ckpt).unwrap();
    assert_identical(
        &weights,
        &canonical("tiny-umt5/umt5_enc_f32.safetensors"),
        "tied",
    );
    ckpt.tensors.insert(
        "encoder.embed_tokens.weight".into(),
        Tensor::zeros(shared.shape().clone(), DType::F32),
    );
    let e = err_text(canonical_weights(&ckpt));
    assert!(e.contains("encoder.embed_tokens.weight"), "{e}");
}
