//! LoRAs: the unmerged mode against the `lora_merge` fixtures (the merged mode runs in the
//! harness, `tests/kinds/lora.rs`), every format giving the same merge, DoRA, merging into fp8
//! and bf16 checkpoints, stacking, `wanrt lora merge`, and bad input (LoHa and LoKr included).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures_root, model, rel_l2_f32, Case};
use wanrt::io::config::DitConfig;
use wanrt::io::layout::{self, Quant};
use wanrt::io::safetensors::write_file;
use wanrt::lora::{self, Lora, Mode, StoreAs};
use wanrt::model::dit::{weight_shapes, ForwardOptions, WanDit};
use wanrt::tensor::{random, Weight};
use wanrt::{DType, Tensor};

fn config() -> PathBuf {
    model("tiny-dit/config.json")
}

fn base(rel: &str) -> BTreeMap<String, Weight> {
    WanDit::read_weights(model(rel), Some(&config()))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .0
}

fn open(rel: &str) -> Lora {
    Lora::open(model(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn values(w: &Weight) -> Vec<f32> {
    w.to_f32().unwrap().to_f32_vec().unwrap()
}

/// The tiny LoRAs' targets: the ten linears of each of the two blocks.
const TARGETS: [&str; 10] = [
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.0",
    "ffn.2",
];

/// The same targets in diffusers `WanTransformer3DModel` names.
const DIFFUSERS: [&str; 10] = [
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ffn.net.0.proj",
    "ffn.net.2",
];

/// Writes `tensors` as a safetensors LoRA in `dir`.
fn write_lora(dir: &Path, name: &str, tensors: &BTreeMap<String, Tensor>) -> PathBuf {
    let path = dir.join(name);
    let list: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    write_file(&path, &list, &BTreeMap::new()).unwrap();
    path
}

/// The musubi fixture LoRA's raw tensors.
fn musubi_tensors() -> BTreeMap<String, Tensor> {
    wanrt::io::open(model("tiny-lora/lora_musubi.safetensors"))
        .unwrap()
        .tensors
}

fn scaled(t: &Tensor, s: f32) -> Tensor {
    let v = t.to_f32_vec().unwrap().iter().map(|x| x * s).collect();
    Tensor::from_f32(v, t.shape().clone()).unwrap()
}

/// The musubi LoRA (`lora_unet_blocks_N_<target with _>`) rewritten with `key(block, target
/// index, part)` for part `down`/`up`, alpha baked into the matrices by `bake(alpha / rank)`
/// -> (down factor, up factor) and no alpha tensors.
fn convert(
    key: impl Fn(usize, usize, &str) -> String,
    bake: impl Fn(f32) -> (f32, f32),
) -> BTreeMap<String, Tensor> {
    let src = musubi_tensors();
    let mut out = BTreeMap::new();
    for block in 0..2 {
        for (i, t) in TARGETS.iter().enumerate() {
            let b = format!("lora_unet_blocks_{block}_{}", t.replace('.', "_"));
            let down = &src[&format!("{b}.lora_down.weight")];
            let up = &src[&format!("{b}.lora_up.weight")];
            let alpha = src[&format!("{b}.alpha")].to_f32_vec().unwrap()[0];
            let (fd, fu) = bake(alpha / down.dims()[0] as f32);
            out.insert(key(block, i, "down"), scaled(down, fd));
            out.insert(key(block, i, "up"), scaled(up, fu));
        }
    }
    out
}

/// diffusers' `_convert_non_diffusers_wan_lora_to_diffusers` split of `alpha / rank` over the
/// two matrices (powers of two moved from down to up while down·2 < up).
fn diffusers_bake(scale: f32) -> (f32, f32) {
    let (mut down, mut up) = (scale, 1.0f32);
    while down * 2.0 < up {
        down *= 2.0;
        up /= 2.0;
    }
    (down, up)
}

fn merged(weights: BTreeMap<String, Weight>, loras: &[(&Lora, f32)]) -> BTreeMap<String, Weight> {
    lora::merge(weights, loras, StoreAs::Same)
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

// ---------------------------------------------------------------------------- the fixtures

fn forward(dit: &WanDit, case: &Case) -> Vec<f32> {
    let inputs = case.tensors("inputs").unwrap();
    let ctx = &inputs["context"];
    let d = ctx.dims().to_vec();
    let context = ctx.reshape([d[1], d[2]]).unwrap();
    let t = inputs["timestep"].to_f32_vec().unwrap();
    dit.forward(
        &inputs["latent"],
        &t,
        &[context],
        &ForwardOptions::default(),
    )
    .unwrap()
    .to_f32_vec()
    .unwrap()
}

fn case(name: &str) -> Case {
    Case::load(&fixtures_root().join("cases").join(name)).unwrap()
}

#[test]
fn unmerged_mode_matches_the_fixtures_and_the_merged_mode() {
    for name in [
        "lora_merge_musubi",
        "lora_merge_comfy",
        "lora_merge_distill",
    ] {
        let c = case(name);
        let adapter = Lora::open(c.path("lora").unwrap()).unwrap();
        let strength = c.f64("strength").unwrap() as f32;
        let expected = c.tensors("expected").unwrap()["velocity"]
            .to_f32_vec()
            .unwrap();
        let tol = c.rel_l2_tolerance().unwrap();
        let run = |mode| {
            let (dit, report) = lora::open_dit(
                c.path("dit").unwrap(),
                Some(&c.path("config").unwrap()),
                &[(&adapter, strength)],
                mode,
            )
            .unwrap();
            assert!(report.warnings().is_empty(), "{:?}", report.warnings());
            assert_eq!(report.loras[0].low_rank, 20);
            forward(&dit, &c)
        };
        let unmerged = run(Mode::Unmerged);
        let err = rel_l2_f32(&unmerged, &expected);
        assert!(err <= tol, "{name}: unmerged rel_l2 {err:e} > {tol:e}");
        let both = rel_l2_f32(&unmerged, &run(Mode::Merged));
        assert!(both < 1e-5, "{name}: merged vs unmerged {both:e}");
    }
}

#[test]
fn deltas_can_be_detached_and_are_checked() {
    let c = case("lora_merge_musubi");
    let adapter = open("tiny-lora/lora_musubi.safetensors");
    let (mut dit, _) = lora::open_dit(
        model("tiny-dit/dit_f32.safetensors"),
        Some(&config()),
        &[(&adapter, 0.8)],
        Mode::Unmerged,
    )
    .unwrap();
    let plain = forward(
        &WanDit::open(model("tiny-dit/dit_f32.safetensors"), Some(&config())).unwrap(),
        &c,
    );
    let with = forward(&dit, &c);
    assert!(rel_l2_f32(&with, &plain) > 1e-3);
    // A bad delta changes nothing.
    let u = lora::unmerged(base("tiny-dit/dit_f32.safetensors"), &[(&adapter, 0.8)]).unwrap();
    let mut wrong = u.deltas.clone();
    let d = wrong.remove("blocks.0.ffn.0").unwrap();
    wrong.insert("blocks.0.ffn.2".into(), d.clone());
    assert!(dit.set_linear_deltas(wrong).is_err());
    let mut unknown = BTreeMap::new();
    unknown.insert("blocks.0.norm3".to_string(), d);
    assert!(dit.set_linear_deltas(unknown).is_err());
    assert_eq!(forward(&dit, &c), with);
    dit.set_linear_deltas(BTreeMap::new()).unwrap();
    assert_eq!(forward(&dit, &c), plain);
}

// ---------------------------------------------------------------------------- formats

#[test]
fn every_format_gives_the_same_merged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let peft = convert(
        |b, i, part| {
            let ab = if part == "down" { "A" } else { "B" };
            format!("transformer.blocks.{b}.{}.lora_{ab}.weight", DIFFUSERS[i])
        },
        diffusers_bake,
    );
    // musubi `convert_lora.py --target other`: both matrices times sqrt(alpha / rank).
    let pipe = convert(
        |b, i, part| {
            let ab = if part == "down" { "A" } else { "B" };
            format!("diffusion_model.blocks.{b}.{}.lora_{ab}.weight", TARGETS[i])
        },
        |s| (s.sqrt(), s.sqrt()),
    );
    // The ComfyUI "Fun" spelling with alpha = rank written by `convert_lora.py --target default`.
    let mut fun = convert(
        |b, i, part| {
            format!(
                "lora_unet__blocks_{b}_{}.lora_{part}.weight",
                TARGETS[i].replace('.', "_")
            )
        },
        |s| (s, 1.0),
    );
    for b in 0..2 {
        for t in TARGETS {
            let a = Tensor::from_f32(vec![4.0], []).unwrap();
            fun.insert(
                format!("lora_unet__blocks_{b}_{}.alpha", t.replace('.', "_")),
                a,
            );
        }
    }
    let files = [
        model("tiny-lora/lora_musubi.safetensors"),
        model("tiny-lora/lora_comfy.safetensors"),
        write_lora(dir.path(), "peft.safetensors", &peft),
        write_lora(dir.path(), "pipe.safetensors", &pipe),
        write_lora(dir.path(), "fun.safetensors", &fun),
    ];
    let formats: Vec<String> = files
        .iter()
        .map(|f| Lora::open(f).unwrap().format.to_string())
        .collect();
    assert_eq!(
        formats,
        ["musubi", "ComfyUI", "diffusers", "ComfyUI", "musubi"]
    );

    let reference = merged(
        base("tiny-dit/dit_f32.safetensors"),
        &[(&Lora::open(&files[0]).unwrap(), 0.8)],
    );
    let expected = case("lora_merge_musubi").tensors("expected").unwrap();
    for f in &files[1..] {
        let l = Lora::open(f).unwrap();
        let m = merged(base("tiny-dit/dit_f32.safetensors"), &[(&l, 0.8)]);
        for b in 0..2 {
            for t in TARGETS {
                let k = format!("blocks.{b}.{t}.weight");
                let err = rel_l2_f32(&values(&m[&k]), &values(&reference[&k]));
                assert!(err < 1e-6, "{}: {k} differs by {err:e}", f.display());
                if let Some(want) = expected.get(&format!("merged.{k}")) {
                    let err = rel_l2_f32(&values(&m[&k]), &want.to_f32_vec().unwrap());
                    assert!(err < 1e-6, "{}: {k} vs the fixture {err:e}", f.display());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------- DoRA

/// DoRA's merge of one weight in f64: `W + s · (m · (W + ΔW) / (‖W + ΔW‖ + ε) − W)`, the norm
/// over each output row (peft's `torch.linalg.norm(W + ΔW, dim=1)`), ε = f32::EPSILON.
fn naive_dora(w: &Weight, lora: &Lora, module: &str, strength: f32) -> Vec<f64> {
    let p = lora.modules[module].low_rank.as_ref().unwrap();
    let m = p.magnitude.as_ref().unwrap().to_f32_vec().unwrap();
    let (plain, base) = (naive_merge(w, lora, module, 1.0), values(w));
    let n = base.len() / m.len();
    let mut out = Vec::with_capacity(base.len());
    for (o, row) in plain.chunks(n).enumerate() {
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        for (i, x) in row.iter().enumerate() {
            let w = base[o * n + i] as f64;
            let dora = m[o] as f64 * x / (norm + f32::EPSILON as f64);
            out.push(w + strength as f64 * (dora - w));
        }
    }
    out
}

/// Magnitudes `0.5 + 0.03 · o` for `n` output rows.
fn magnitudes(n: usize, dims: &[usize]) -> Tensor {
    Tensor::from_f32((0..n).map(|o| 0.5 + 0.03 * o as f32).collect(), dims).unwrap()
}

#[test]
fn dora_renormalizes_each_output_row() {
    // The musubi LoRA with DoRA magnitudes on two layers, `[out, 1]` (kohya/LyCORIS) and `[out]`.
    let mut tensors = musubi_tensors();
    let (q, ffn) = ("lora_unet_blocks_0_self_attn_q", "lora_unet_blocks_1_ffn_0");
    let out = |b: &str, t: &BTreeMap<String, Tensor>| t[&format!("{b}.lora_up.weight")].dims()[0];
    let (oq, of) = (out(q, &tensors), out(ffn, &tensors));
    tensors.insert(format!("{q}.dora_scale"), magnitudes(oq, &[oq, 1]));
    tensors.insert(format!("{ffn}.dora_scale"), magnitudes(of, &[of]));
    let dir = tempfile::tempdir().unwrap();
    let dora = Lora::open(write_lora(dir.path(), "dora.safetensors", &tensors)).unwrap();
    assert!(dora.unmatched.is_empty(), "{:?}", dora.unmatched);
    let plain = open("tiny-lora/lora_musubi.safetensors");
    let before = base("tiny-dit/dit_f32.safetensors");
    let doras = ["blocks.0.self_attn.q", "blocks.1.ffn.0"];
    for strength in [1.0, 0.6] {
        let (after, report) =
            lora::merge(before.clone(), &[(&dora, strength)], StoreAs::Same).unwrap();
        assert!(report.warnings().is_empty(), "{:?}", report.warnings());
        assert_eq!(report.loras[0].low_rank, 20);
        let reference = merged(before.clone(), &[(&plain, strength)]);
        for (k, w) in &after {
            let m = k.strip_suffix(".weight").unwrap_or(k);
            if doras.contains(&m) {
                let want = naive_dora(&before[k], &dora, m, strength);
                let got = values(w);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
                        "{k}: {g} {w}"
                    );
                }
                let off = rel_l2_f32(&got, &values(&reference[k]));
                assert!(off > 1e-3, "{k}: DoRA and LoRA merges agree ({off:e})");
            } else {
                assert_eq!(values(w), values(&reference[k]), "{k}");
            }
        }
        // Unmerged, the DoRA layers are merged into f32 copies and the others stay low-rank.
        let u = lora::unmerged(before.clone(), &[(&dora, strength)]).unwrap();
        assert_eq!(u.deltas.len(), 18);
        for m in doras {
            let k = format!("{m}.weight");
            assert!(!u.deltas.contains_key(m));
            assert_eq!(u.weights[&k].dtype(), DType::F32);
            assert_eq!(values(&u.weights[&k]), values(&after[&k]), "{k}");
        }
    }

    // PEFT's `lora_magnitude_vector` in a ComfyUI/diffusion-pipe file gives the same merge.
    let mut peft = convert(
        |b, i, ab| {
            let ab = if ab == "down" { "A" } else { "B" };
            format!("diffusion_model.blocks.{b}.{}.lora_{ab}.weight", TARGETS[i])
        },
        |s| (s, 1.0),
    );
    let key = |m: &str| format!("diffusion_model.{m}.lora_magnitude_vector");
    peft.insert(key(doras[0]), magnitudes(oq, &[oq]));
    peft.insert(key(doras[1]), magnitudes(of, &[of]));
    let l = Lora::open(write_lora(dir.path(), "peft.safetensors", &peft)).unwrap();
    let a = merged(before.clone(), &[(&l, 0.6)]);
    let b = merged(before.clone(), &[(&dora, 0.6)]);
    for m in doras {
        let k = format!("{m}.weight");
        let err = rel_l2_f32(&values(&a[&k]), &values(&b[&k]));
        assert!(err < 1e-6, "{k}: {err:e}");
    }

    // A magnitude per input column (LyCORIS `wd_on_out = False`) is refused, naming the key.
    let mut bad = musubi_tensors();
    bad.insert(format!("{ffn}.dora_scale"), t(&[1, 64], 0.5));
    let err = lora_error(&bad);
    assert!(
        err.contains(&format!("{ffn}.dora_scale")) && err.contains("[1, 64]"),
        "{err}"
    );
}

#[test]
fn loha_and_lokr_files_are_refused_naming_the_format() {
    let loha = BTreeMap::from([
        (
            "lora_unet_blocks_0_self_attn_q.hada_w1_a".to_string(),
            t(&[64, 4], 0.1),
        ),
        (
            "lora_unet_blocks_0_self_attn_q.hada_w1_b".to_string(),
            t(&[4, 64], 0.1),
        ),
        (
            "lora_unet_blocks_0_self_attn_q.hada_w2_a".to_string(),
            t(&[64, 4], 0.1),
        ),
        (
            "lora_unet_blocks_0_self_attn_q.hada_w2_b".to_string(),
            t(&[4, 64], 0.1),
        ),
        (
            "lora_unet_blocks_0_self_attn_q.alpha".to_string(),
            t(&[], 4.0),
        ),
    ]);
    let lokr = BTreeMap::from([
        (
            "diffusion_model.blocks.0.ffn.0.lokr_w1".to_string(),
            t(&[8, 8], 0.1),
        ),
        (
            "diffusion_model.blocks.0.ffn.0.lokr_w2".to_string(),
            t(&[16, 8], 0.1),
        ),
    ]);
    // A file mixing LoRA pairs with LoKr factors is refused too, not merged in part.
    let mut mixed = musubi_tensors();
    mixed.insert("lora_unet_blocks_1_ffn_2.lokr_w1".into(), t(&[8, 8], 0.1));
    for (tensors, format) in [(loha, "LoHa"), (lokr, "LoKr"), (mixed, "LoKr")] {
        let err = lora_error(&tensors);
        assert!(err.contains(&format!("a {format} file")), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let e = Lora::open(write_lora(dir.path(), "x.safetensors", &tensors)).unwrap_err();
        assert_eq!(e.status(), wanrt::Status::BadFile, "{e}");
    }
}

// ---------------------------------------------------------------------------- dtypes

/// The spacing of fp8 values around `x` (in stored units).
fn fp8_step(x: f32, dtype: DType) -> f32 {
    let (min_exp, man) = match dtype {
        DType::F8E4M3 => (-6, 3),
        _ => (-14, 2),
    };
    let e = if x == 0.0 {
        min_exp
    } else {
        (x.abs().log2().floor() as i32).max(min_exp)
    };
    2f32.powi(e - man)
}

/// The f32 merge of one weight computed naively: `W + scale · up @ down` in f64.
fn naive_merge(w: &Weight, lora: &Lora, module: &str, strength: f32) -> Vec<f64> {
    let p = lora.modules[module].low_rank.as_ref().unwrap();
    let (down, up) = (p.down.to_f32_vec().unwrap(), p.up.to_f32_vec().unwrap());
    let (out, r, inp) = (p.up.dims()[0], p.rank(), p.down.dims()[1]);
    let s = p.scale(strength) as f64;
    let base = values(w);
    (0..out * inp)
        .map(|e| {
            let (o, i) = (e / inp, e % inp);
            let d: f64 = (0..r)
                .map(|j| up[o * r + j] as f64 * down[j * inp + i] as f64)
                .sum();
            base[e] as f64 + s * d
        })
        .collect()
}

#[test]
fn fp8_merges_are_within_one_rounding_step() {
    let adapter = open("tiny-lora/lora_musubi.safetensors");
    // Strength 40 pushes merged weights past the scaled checkpoint's old range (448 · scale):
    // the scale is recomputed from the merged weight, so nothing clips.
    for (file, dtype, has_scale, strength) in [
        (
            "tiny-dit/dit_fp8_e4m3fn_scaled.safetensors",
            DType::F8E4M3,
            true,
            0.8,
        ),
        (
            "tiny-dit/dit_fp8_e4m3fn_scaled.safetensors",
            DType::F8E4M3,
            true,
            40.0,
        ),
        (
            "tiny-dit/dit_fp8_e5m2.safetensors",
            DType::F8E5M2,
            false,
            0.8,
        ),
    ] {
        let before = base(file);
        let after = merged(before.clone(), &[(&adapter, strength)]);
        let max = if dtype == DType::F8E4M3 {
            448.0
        } else {
            57344.0
        };
        let mut past_old_range = 0;
        for b in 0..2 {
            for t in TARGETS {
                let m = format!("blocks.{b}.{t}");
                let k = format!("{m}.weight");
                let (old, new) = (&before[&k], &after[&k]);
                assert_eq!(new.dtype(), dtype, "{file} {k}");
                assert_eq!(new.scale.is_some(), has_scale);
                let want = naive_merge(old, &adapter, &m, strength);
                let amax = want.iter().fold(0f64, |a, w| a.max(w.abs()));
                if let (Some(old_s), Some(new_s)) = (old.scale, new.scale) {
                    let rel = (new_s as f64 - amax / max as f64).abs() / (amax / max as f64);
                    assert!(rel < 1e-6, "{file} {k}: scale {new_s}, max|W'| {amax}");
                    past_old_range += usize::from(amax > (max * old_s) as f64);
                }
                let s = new.scale.unwrap_or(1.0);
                let got = new.tensor.to_f32_vec().unwrap();
                for (q, w) in got.iter().zip(&want) {
                    let x = (*w / s as f64) as f32;
                    assert!(x.abs() <= max * (1.0 + 1e-6), "{file} {k}: {x} clips");
                    let err = (*q as f64 - x as f64).abs();
                    let bound = 0.5 * fp8_step(x, dtype) as f64 * (1.0 + 1e-3);
                    assert!(
                        err <= bound,
                        "{file} {k}: stored {q}, merge {x} (step {})",
                        fp8_step(x, dtype)
                    );
                }
                assert_ne!(
                    got,
                    old.tensor.to_f32_vec().unwrap(),
                    "{file} {k} unchanged"
                );
            }
        }
        if strength > 1.0 {
            assert!(past_old_range > 0, "strength {strength} stays in range");
        }
        // Untouched tensors are kept as they are.
        assert_eq!(
            after["head.head.weight"].tensor.raw_bytes().unwrap(),
            before["head.head.weight"].tensor.raw_bytes().unwrap()
        );
        assert_eq!(
            after["head.head.weight"].scale,
            before["head.head.weight"].scale
        );
    }
}

#[test]
fn bf16_merge_rounds_to_nearest_even_and_f32_is_exact() {
    let adapter = open("tiny-lora/lora_musubi.safetensors");
    let m = "blocks.1.ffn.2";
    let k = format!("{m}.weight");
    for file in [
        "tiny-dit/dit_bf16.safetensors",
        "tiny-dit/dit_comfy_bf16.safetensors",
    ] {
        let before = base(file);
        let after = merged(before.clone(), &[(&adapter, 0.8)]);
        assert_eq!(after[&k].dtype(), DType::BF16);
        let want = naive_merge(&before[&k], &adapter, m, 0.8);
        for (q, w) in values(&after[&k]).iter().zip(&want) {
            // Half a bf16 ulp (8 significant bits), plus the f32 arithmetic on operands < 1.
            let ulp = 2f64.powi((w.abs().log2().floor() as i32) - 7);
            assert!(
                (*q as f64 - w).abs() <= 0.5 * ulp * (1.0 + 1e-3) + 1e-7,
                "{file}: {q} vs {w}"
            );
        }
    }
    let before = base("tiny-dit/dit_f32.safetensors");
    let after = merged(before.clone(), &[(&adapter, 0.8)]);
    let want = naive_merge(&before[&k], &adapter, m, 0.8);
    let got = values(&after[&k]);
    for (q, w) in got.iter().zip(&want) {
        assert!(
            (*q as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
            "{q} vs {w}"
        );
    }
}

#[test]
fn conversions_to_other_storage() {
    let adapter = open("tiny-lora/lora_distill_lightx2v.safetensors");
    let f32s = merged(base("tiny-dit/dit_f32.safetensors"), &[(&adapter, 1.0)]);
    for store in [
        "bf16",
        "fp8_e4m3fn",
        "fp8_e4m3fn_scaled",
        "fp8_e5m2_scaled",
        "f32",
    ] {
        let store: StoreAs = store.parse().unwrap();
        let (w, _) = lora::merge(
            base("tiny-dit/dit_f32.safetensors"),
            &[(&adapter, 1.0)],
            store,
        )
        .unwrap();
        for (k, v) in &w {
            let block_linear =
                k.starts_with("blocks.") && k.ends_with(".weight") && v.dims().len() == 2;
            let (dtype, scaled) = match store {
                StoreAs::Float(d) => (d, false),
                StoreAs::Fp8(d) if block_linear => (d, false),
                StoreAs::ScaledFp8(d) if block_linear => (d, true),
                _ => (DType::BF16, false),
            };
            assert_eq!(
                (v.dtype(), v.scale.is_some()),
                (dtype, scaled),
                "{store} {k}"
            );
            let err = rel_l2_f32(&values(v), &values(&f32s[k]));
            let tol = match dtype {
                DType::F32 => 0.0,
                DType::BF16 => 4e-3,
                _ => 0.15,
            };
            assert!(err <= tol, "{store} {k}: {err:e}");
        }
    }
    assert!("fp9".parse::<StoreAs>().is_err());
    assert!(lora::merge(
        base("tiny-dit/dit_f32.safetensors"),
        &[(&adapter, 1.0)],
        StoreAs::ScaledFp8(DType::BF16)
    )
    .is_err());
}

// ---------------------------------------------------------------------------- stacking

#[test]
fn stacked_loras_add_their_deltas() {
    let a = open("tiny-lora/lora_musubi.safetensors");
    let b = open("tiny-lora/lora_distill_lightx2v.safetensors");
    let w0 = base("tiny-dit/dit_f32.safetensors");
    let wa = merged(w0.clone(), &[(&a, 0.8)]);
    let wb = merged(w0.clone(), &[(&b, -0.5)]);
    let (wab, report) = lora::merge(w0.clone(), &[(&a, 0.8), (&b, -0.5)], StoreAs::Same).unwrap();
    assert_eq!(report.loras.len(), 2);
    assert_eq!(
        (report.loras[1].low_rank, report.loras[1].full_deltas),
        (20, 32)
    );
    let mut changed = 0;
    for (k, w) in &w0 {
        let (x0, xa, xb, xab) = (values(w), values(&wa[k]), values(&wb[k]), values(&wab[k]));
        let sum: Vec<f32> = (0..x0.len()).map(|i| xa[i] + xb[i] - x0[i]).collect();
        let err = rel_l2_f32(&xab, &sum);
        assert!(err < 1e-6, "{k}: {err:e}");
        changed += usize::from(xab != x0);
    }
    assert_eq!(changed, 20 + 32);

    // Unmerged stacking (ranks concatenated) gives the same forward.
    let c = case("lora_merge_musubi");
    let run = |mode| {
        let (dit, _) = lora::open_dit(
            model("tiny-dit/dit_f32.safetensors"),
            Some(&config()),
            &[(&a, 0.8), (&b, -0.5)],
            mode,
        )
        .unwrap();
        forward(&dit, &c)
    };
    let err = rel_l2_f32(&run(Mode::Unmerged), &run(Mode::Merged));
    assert!(err < 1e-5, "{err:e}");
}

// ---------------------------------------------------------------------------- bad input

fn lora_error(tensors: &BTreeMap<String, Tensor>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write_lora(dir.path(), "bad.safetensors", tensors);
    let l = match Lora::open(&path) {
        Err(e) => return e.to_string(),
        Ok(l) => l,
    };
    match lora::merge(
        base("tiny-dit/dit_f32.safetensors"),
        &[(&l, 1.0)],
        StoreAs::Same,
    ) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted: {:?}", tensors.keys()),
    }
}

fn t(dims: &[usize], v: f32) -> Tensor {
    Tensor::from_f32(vec![v; dims.iter().product()], dims).unwrap()
}

#[test]
fn bad_loras_are_clear_errors() {
    let pair = |m: &str, down: &[usize], up: &[usize]| {
        BTreeMap::from([
            (format!("diffusion_model.{m}.lora_A.weight"), t(down, 0.1)),
            (format!("diffusion_model.{m}.lora_B.weight"), t(up, 0.1)),
        ])
    };
    let err = lora_error(&pair("blocks.0.self_attn.q", &[4, 64], &[64, 8]));
    assert!(
        err.contains("rank") && err.contains("blocks.0.self_attn.q"),
        "{err}"
    );

    let mut nan = musubi_tensors();
    let key = "lora_unet_blocks_1_ffn_0.lora_up.weight";
    let mut v = nan[key].to_f32_vec().unwrap();
    v[5] = f32::NAN;
    nan.insert(
        key.into(),
        Tensor::from_f32(v, nan[key].shape().clone()).unwrap(),
    );
    let err = lora_error(&nan);
    assert!(err.contains(key) && err.contains("NaN"), "{err}");

    let sdxl = BTreeMap::from([
        (
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight".to_string(),
            t(&[4, 320], 0.1),
        ),
        (
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight".to_string(),
            t(&[320, 4], 0.1),
        ),
        (
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha".to_string(),
            t(&[], 4.0),
        ),
        (
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".to_string(),
            t(&[4, 768], 0.1),
        ),
        (
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".to_string(),
            t(&[3072, 4], 0.1),
        ),
    ]);
    let err = lora_error(&sdxl);
    assert!(
        err.contains("SDXL") && err.contains("lora_unet_down_blocks_0"),
        "{err}"
    );

    // A LoRA for a wider model (dim 128): the first key whose shape disagrees is named.
    let mut wide = pair("blocks.0.self_attn.q", &[4, 128], &[128, 4]);
    wide.extend(pair("blocks.0.self_attn.k", &[4, 128], &[128, 4]));
    let err = lora_error(&wide);
    assert!(
        err.contains("diffusion_model.blocks.0.self_attn.k.lora_B.weight")
            && err.contains("[128, 128]"),
        "{err}"
    );

    // Keys for modules the model lacks only: nothing matches.
    let err = lora_error(&pair("blocks.7.ffn.0", &[4, 64], &[128, 4]));
    assert!(
        err.contains("no key matches") && err.contains("blocks.7.ffn.0"),
        "{err}"
    );

    let adapter = open("tiny-lora/lora_musubi.safetensors");
    for s in [f32::NAN, f32::INFINITY] {
        let err = lora::merge(
            base("tiny-dit/dit_f32.safetensors"),
            &[(&adapter, s)],
            StoreAs::Same,
        )
        .unwrap_err();
        assert!(err.to_string().contains("strength"), "{err}");
        assert!(lora::unmerged(base("tiny-dit/dit_f32.safetensors"), &[(&adapter, s)]).is_err());
    }
    assert!(Lora::open(model("tiny-dit/dit_f32.safetensors")).is_err());
}

#[test]
fn keys_matching_no_module_are_warnings() {
    let mut tensors = musubi_tensors();
    let extra = [
        ("lora_unet_blocks_7_self_attn_q.lora_down.weight", [4, 64]),
        ("lora_unet_blocks_7_self_attn_q.lora_up.weight", [64, 4]),
        (
            "lora_unet_blocks_0_cross_attn_k_img.lora_down.weight",
            [4, 64],
        ),
        (
            "lora_unet_blocks_0_cross_attn_k_img.lora_up.weight",
            [64, 4],
        ),
        (
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
            [4, 768],
        ),
    ];
    for (k, d) in extra {
        tensors.insert(k.to_string(), t(&d, 0.1));
    }
    let dir = tempfile::tempdir().unwrap();
    let l = Lora::open(write_lora(dir.path(), "extra.safetensors", &tensors)).unwrap();
    let (w, report) = lora::merge(
        base("tiny-dit/dit_f32.safetensors"),
        &[(&l, 0.8)],
        StoreAs::Same,
    )
    .unwrap();
    let mut unmatched = report.loras[0].unmatched.clone();
    unmatched.sort();
    let mut want: Vec<&str> = extra.iter().map(|e| e.0).collect();
    want.sort();
    assert_eq!(unmatched, want);
    assert_eq!(report.warnings().len(), extra.len());
    assert_eq!(report.loras[0].low_rank, 20);
    let reference = merged(
        base("tiny-dit/dit_f32.safetensors"),
        &[(&open("tiny-lora/lora_musubi.safetensors"), 0.8)],
    );
    assert_eq!(
        values(&w["blocks.0.self_attn.q.weight"]),
        values(&reference["blocks.0.self_attn.q.weight"])
    );
}

// ---------------------------------------------------------------------------- the CLI

fn wanrt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .args(args)
        .output()
        .expect("run wanrt")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn cli_merge_reloads_and_reproduces_the_merged_forward() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    let lora_file = model("tiny-lora/lora_musubi.safetensors");
    let spec = format!("{}:0.8", lora_file.display());
    let r = wanrt(&[
        "lora",
        "merge",
        "--dit",
        path(&model("tiny-dit/dit_f32.safetensors")),
        "--lora",
        &spec,
        "--out",
        path(&out),
        "--config",
        path(&config()),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let c = case("lora_merge_musubi");
    let dit = WanDit::open(&out, Some(&config())).unwrap();
    let expected = c.tensors("expected").unwrap()["velocity"]
        .to_f32_vec()
        .unwrap();
    let err = rel_l2_f32(&forward(&dit, &c), &expected);
    assert!(err <= c.rel_l2_tolerance().unwrap(), "{err:e}");
    let ck = wanrt::io::open(&out).unwrap();
    assert_eq!(ck.metadata["wanrt.merge_dtype"], "same");
    let rec: serde_json::Value = serde_json::from_str(&ck.metadata["wanrt.merged_loras"]).unwrap();
    assert_eq!(rec[0]["strength"], 0.8);
    assert_eq!(rec[0]["file"], lora_file.display().to_string());

    // A ComfyUI base stays in its layout; two LoRAs stack; the result is what merging in
    // memory gives, bit for bit.
    let distill = model("tiny-lora/lora_distill_lightx2v.safetensors");
    let r = wanrt(&[
        "lora",
        "merge",
        "--dit",
        path(&model("tiny-dit/dit_comfy_bf16.safetensors")),
        "--lora",
        &spec,
        "--lora",
        path(&distill),
        "--out",
        path(&out),
        "--config",
        path(&config()),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let ck = wanrt::io::open(&out).unwrap();
    assert!(ck
        .tensors
        .contains_key("model.diffusion_model.blocks.0.self_attn.q.weight"));
    assert_eq!(ck.tensors.len(), 69);
    let want = merged(
        base("tiny-dit/dit_comfy_bf16.safetensors"),
        &[
            (&open("tiny-lora/lora_musubi.safetensors"), 0.8),
            (&Lora::open(&distill).unwrap(), 1.0),
        ],
    );
    let (_, got) = layout::canonical_weights(&ck).unwrap();
    for (k, w) in &want {
        assert_eq!(
            got[k].tensor.raw_bytes().unwrap(),
            w.tensor.raw_bytes().unwrap(),
            "{k}"
        );
    }
}

#[test]
fn cli_merge_writes_scaled_fp8() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fp8.safetensors");
    let spec = format!(
        "{}:0.8",
        model("tiny-lora/lora_comfy.safetensors").display()
    );
    for base_file in [
        "tiny-dit/dit_f32.safetensors",
        "tiny-dit/dit_fp8_e4m3fn_scaled.safetensors",
    ] {
        let r = wanrt(&[
            "lora",
            "merge",
            "--dit",
            path(&model(base_file)),
            "--lora",
            &spec,
            "--out",
            path(&out),
            "--dtype",
            "fp8_e4m3fn_scaled",
            "--config",
            path(&config()),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let ck = wanrt::io::open(&out).unwrap();
        assert_eq!(
            layout::detect(&ck).unwrap().quant,
            Quant::ScaledFp8(DType::F8E4M3)
        );
        assert_eq!(ck.tensors["scaled_fp8"].dtype(), DType::F8E4M3);
        assert_eq!(ck.tensors.len(), 90, "{base_file}");
        assert_eq!(
            ck.tensors["blocks.1.ffn.2.scale_weight"].dims(),
            [0usize; 0]
        );
        // Within fp8 precision of the merge in f32.
        let want = merged(
            base(base_file),
            &[(&open("tiny-lora/lora_comfy.safetensors"), 0.8)],
        );
        let (_, got) = layout::canonical_weights(&ck).unwrap();
        let err = rel_l2_f32(
            &values(&got["blocks.1.ffn.2.weight"]),
            &values(&want["blocks.1.ffn.2.weight"]),
        );
        assert!(err < 0.05, "{base_file}: {err:e}");
        WanDit::open(&out, Some(&config())).unwrap();
    }
    // Back to bf16: the scales and the marker go.
    let bf16 = dir.path().join("bf16.safetensors");
    let r = wanrt(&[
        "lora",
        "merge",
        "--dit",
        path(&out),
        "--lora",
        &spec,
        "--out",
        path(&bf16),
        "--dtype",
        "bf16",
        "--config",
        path(&config()),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let ck = wanrt::io::open(&bf16).unwrap();
    assert_eq!(ck.tensors.len(), 69);
    assert!(ck.tensors.values().all(|t| t.dtype() == DType::BF16));
    let rec: serde_json::Value = serde_json::from_str(&ck.metadata["wanrt.merged_loras"]).unwrap();
    assert_eq!(
        rec.as_array().unwrap().len(),
        2,
        "the merge history is kept"
    );
}

#[test]
fn cli_merge_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.safetensors");
    let sdxl = BTreeMap::from([
        (
            "lora_unet_up_blocks_1_attentions_0_proj_out.lora_down.weight".to_string(),
            t(&[4, 640], 0.1),
        ),
        (
            "lora_unet_up_blocks_1_attentions_0_proj_out.lora_up.weight".to_string(),
            t(&[640, 4], 0.1),
        ),
    ]);
    let sdxl = write_lora(dir.path(), "sdxl.safetensors", &sdxl);
    let musubi = model("tiny-lora/lora_musubi.safetensors");
    let nan = format!("{}:nan", musubi.display());
    for (lora_arg, needle) in [
        (path(&sdxl), "SDXL"),
        (nan.as_str(), "strength"),
        ("/nonexistent.safetensors:0.5", "nonexistent"),
    ] {
        let r = wanrt(&[
            "lora",
            "merge",
            "--dit",
            path(&model("tiny-dit/dit_f32.safetensors")),
            "--lora",
            lora_arg,
            "--out",
            path(&out),
            "--config",
            path(&config()),
        ]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{stderr}"
        );
    }
    assert!(!out.exists());
}

#[test]
fn modulation_delta_spellings_agree() {
    // lightx2v `blocks.N.diff_m` and Kijai's `blocks.N.modulation.diff` are the same delta.
    let dir = tempfile::tempdir().unwrap();
    let delta = Tensor::from_f32((0..384).map(|i| i as f32 * 1e-3).collect(), [1, 6, 64]).unwrap();
    let w0 = base("tiny-dit/dit_f32.safetensors");
    let mut results = Vec::new();
    for key in [
        "diffusion_model.blocks.1.diff_m",
        "diffusion_model.blocks.1.modulation.diff",
    ] {
        let l = Lora::open(write_lora(
            dir.path(),
            "m.safetensors",
            &BTreeMap::from([(key.to_string(), delta.clone())]),
        ))
        .unwrap();
        assert!(l.modules["blocks.1"].diff_m.is_some(), "{key}");
        let (w, report) = lora::merge(w0.clone(), &[(&l, 2.0)], StoreAs::Same).unwrap();
        assert_eq!(report.loras[0].full_deltas, 1);
        results.push(values(&w["blocks.1.modulation"]));
    }
    assert_eq!(results[0], results[1]);
    let want: Vec<f32> = values(&w0["blocks.1.modulation"])
        .iter()
        .enumerate()
        .map(|(i, x)| x + 2.0 * (i as f32 * 1e-3))
        .collect();
    assert_eq!(results[0], want);
}

/// The largest anonymous (non-file) memory of `wanrt lora merge` on a DiT of the 1.3B shape
/// (30 blocks, random bf16 weights, 2.8 GB) with a rank-32 LoRA on all 300 block linears: the
/// merge streams, so it holds about one merged weight besides the LoRA, not the model (the
/// base is memory-mapped; its page cache is not counted). Ignored: it writes 5.7 GB to the
/// temporary folder. `cargo test --release --test lora -- --ignored --nocapture merge_memory`.
#[test]
#[ignore]
fn merge_memory_1_3b() {
    let cfg = DitConfig::preset("1.3b").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shapes: BTreeMap<String, Vec<usize>> = weight_shapes(&cfg).into_iter().collect();
    let dit = dir.path().join("dit.safetensors");
    {
        let weights: Vec<(&str, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(i, (name, dims))| {
                let w = random::weight(dims, DType::BF16, i as u32, 0.0, 0.02).unwrap();
                (name.as_str(), w.tensor)
            })
            .collect();
        let list: Vec<(&str, &Tensor)> = weights.iter().map(|(n, t)| (*n, t)).collect();
        write_file(&dit, &list, &BTreeMap::new()).unwrap();
    }
    let mut tensors = BTreeMap::new();
    for block in 0..cfg.num_layers {
        for (i, t) in TARGETS.iter().enumerate() {
            let dims = &shapes[&format!("blocks.{block}.{t}.weight")];
            let b = format!("lora_unet_blocks_{block}_{}", t.replace('.', "_"));
            let seed = (1000 + 10 * block + i) as u32;
            let down = random::tensor(&[32, dims[1]], 2 * seed, 0.0, 0.01).unwrap();
            let up = random::tensor(&[dims[0], 32], 2 * seed + 1, 0.0, 0.01).unwrap();
            tensors.insert(format!("{b}.lora_down.weight"), down);
            tensors.insert(format!("{b}.lora_up.weight"), up);
            tensors.insert(
                format!("{b}.alpha"),
                Tensor::from_f32(vec![16.0], []).unwrap(),
            );
        }
    }
    let lora_file = write_lora(dir.path(), "lora.safetensors", &tensors);
    drop(tensors);
    let out = dir.path().join("merged.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .args(["lora", "merge", "--dit", path(&dit), "--lora"])
        .args([path(&lora_file), "--out", path(&out)])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // RssAnon has no high-water mark: sample it.
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let anon = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("RssAnon:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        });
        peak_kib = peak_kib.max(anon.unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success());
    let mib = |bytes: u64| bytes / (1 << 20);
    let (model, lora_size) = (
        std::fs::metadata(&dit).unwrap().len(),
        std::fs::metadata(&lora_file).unwrap().len(),
    );
    // The same tensors in the same dtypes; only the header (the merge's metadata) differs.
    assert!(std::fs::metadata(&out).unwrap().len().abs_diff(model) < 1 << 16);
    eprintln!(
        "lora merge of a {} MiB bf16 DiT with a {} MiB LoRA: peak anonymous memory {} MiB",
        mib(model),
        mib(lora_size),
        peak_kib / 1024
    );
    assert!(
        peak_kib * 1024 < model / 2,
        "the merge held {} MiB",
        peak_kib / 1024
    );
}
