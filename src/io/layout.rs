//! Recognising what a checkpoint holds and renaming its tensors to the canonical names.
//!
//! The canonical names are the original Wan ones (`wan/modules/*.py` state dicts): every
//! layout users have (ComfyUI, diffusers, transformers …) is renamed to them, so the models
//! are written against one naming only. Detection and renaming look only at names, dims and
//! dtypes ([`MetaMap`]), so they work on a list of shapes without any data (the real 1.3B/14B
//! key sets are tested that way); [`canonical_weights`] then attaches the data.
//!
//! Canonical LoRA names (every format is renamed to these; `<m>` is an original DiT module
//! such as `blocks.0.self_attn.q`):
//! - `<m>.lora_down.weight` `[rank, in]`, `<m>.lora_up.weight` `[out, rank]`, `<m>.alpha`
//!   (scalar, only where the file stores one);
//! - full deltas: `<m>.diff` (added to `<m>.weight`), `<m>.diff_b` (added to `<m>.bias`; also
//!   PEFT's `lora_B.bias`) and `blocks.N.diff_m` (added to `blocks.N.modulation`);
//! - DoRA's magnitude `<m>.dora_scale` (also PEFT's `lora_magnitude_vector`).

use std::collections::{BTreeMap, BTreeSet};

use super::config::ModelType;
use super::Checkpoint;
use crate::error::{Error, Result};
use crate::tensor::{checked_product, DType, Weight};

/// The dims and dtype of one stored tensor: all that detection and config inference read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Stored element type.
    pub dtype: DType,
}

impl TensorMeta {
    /// A meta from dims and dtype.
    pub fn new(dims: impl Into<Vec<usize>>, dtype: DType) -> TensorMeta {
        TensorMeta {
            dims: dims.into(),
            dtype,
        }
    }

    fn elem_count(&self) -> u128 {
        checked_product(&self.dims).map_or(u128::MAX, |n| n as u128)
    }
}

/// Tensor metas by name.
pub type MetaMap = BTreeMap<String, TensorMeta>;

/// What a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The diffusion transformer (`WanModel`), text-to-video or image-to-video.
    Dit(ModelType),
    /// The Wan2.1 video VAE.
    Vae,
    /// The UMT5-XXL text encoder (encoder only).
    Umt5Encoder,
    /// A LoRA (or delta) adapter for the DiT.
    Lora,
    /// None of the above.
    Unknown,
}

/// How a checkpoint names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// The original Wan names (nothing to rename). Also reported for an unknown component.
    Original,
    /// ComfyUI: the DiT's original names under `model.diffusion_model.`, or the UMT5
    /// transformers names under `text_encoders.umt5xxl.transformer.`.
    ComfyUi,
    /// diffusers (`WanTransformer3DModel`, `AutoencoderKLWan`; LoRAs on their module names).
    Diffusers,
    /// transformers (`UMT5EncoderModel`: `shared.weight`, `encoder.block.N.layer…`).
    Transformers,
}

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// No fp8: the float dtype that holds most of the elements (`F32`, `BF16`, `F16`).
    Float(DType),
    /// Plain fp8 weights (cast, no scale); the other tensors in a wider float type.
    Fp8(DType),
    /// ComfyUI scaled fp8: fp8 weights with a per-tensor `scale_weight` (value × scale).
    ScaledFp8(DType),
}

/// The LoRA file format (the container conventions; the module naming is in [`KeyLayout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// musubi-tuner / kohya: `lora_unet_<module, dots as _>.lora_down.weight`/`.lora_up.weight`
    /// and `.alpha`.
    Musubi,
    /// ComfyUI / diffusion-pipe: `diffusion_model.<module>.lora_A.weight`/`.lora_B.weight`
    /// (`.alpha` optional).
    Comfy,
    /// diffusers / PEFT: `transformer.<diffusers module>.lora_A.weight`/`.lora_B.weight`.
    Diffusers,
    /// lightx2v distill LoRAs: `diffusion_model.<module>.lora_up/lora_down.weight` without
    /// alpha, plus full deltas `.diff`, `.diff_b`, `blocks.N.diff_m`.
    Lightx2v,
}

/// The LoRA scale numerator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoraAlpha {
    /// No `.alpha` tensors (every loader then uses scale 1).
    Absent,
    /// `.alpha` tensors exist but their values were not read (detection from metas only).
    NotRead,
    /// Every module has an `.alpha` of this value.
    Uniform(f32),
    /// The modules' alphas differ (or only some modules have one).
    PerModule,
}

/// What a LoRA file holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraInfo {
    /// The file format.
    pub format: LoraFormat,
    /// Number of low-rank (down, up) pairs.
    pub modules: usize,
    /// Smallest rank over the pairs (0 when there are none).
    pub rank_min: usize,
    /// Largest rank over the pairs (0 when there are none).
    pub rank_max: usize,
    /// The alphas.
    pub alpha: LoraAlpha,
    /// Number of full-delta tensors (`.diff`, `.diff_b`, `.diff_m`).
    pub deltas: usize,
}

/// The result of detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detected {
    /// What the checkpoint is.
    pub component: Component,
    /// How its tensors are named.
    pub layout: KeyLayout,
    /// How its weights are stored.
    pub quant: Quant,
    /// LoRA details, for [`Component::Lora`] only.
    pub lora: Option<LoraInfo>,
}

/// The metas of a checkpoint, under their stored names.
pub fn metas(ckpt: &Checkpoint) -> MetaMap {
    ckpt.tensors
        .iter()
        .map(|(k, t)| (k.clone(), TensorMeta::new(t.dims(), t.dtype())))
        .collect()
}

/// The metas of canonical weights (the stored tensors; scales are not shown).
pub fn weight_metas(weights: &BTreeMap<String, Weight>) -> MetaMap {
    weights
        .iter()
        .map(|(k, w)| (k.clone(), TensorMeta::new(w.dims(), w.dtype())))
        .collect()
}

/// Detects what `metas` describe and checks that every name is known.
///
/// Fails (naming the key) on a tensor that does not belong to the detected component and
/// layout. LoRA alphas are reported as [`LoraAlpha::NotRead`]: use [`detect`] to read them.
pub fn detect_metas(metas: &MetaMap) -> Result<Detected> {
    Ok(plan(metas, false)?.detected)
}

/// Detects what `metas` describe and renames them to the canonical names: markers and
/// scales are dropped, a transformers `encoder.embed_tokens.weight` tied to `shared.weight`
/// (same dims and dtype) too.
pub fn canonical_metas(metas: &MetaMap) -> Result<(Detected, MetaMap)> {
    let plan = plan(metas, false)?;
    ensure_known(&plan.detected)?;
    for (dup, kept) in &plan.ties {
        if metas[dup] != metas[kept] {
            return Err(tie_error(dup, kept));
        }
    }
    let out = plan
        .entries
        .iter()
        .map(|e| (e.canonical.clone(), metas[&e.stored].clone()))
        .collect();
    Ok((plan.detected, out))
}

/// Detects what a checkpoint holds (reading the LoRA alphas, tiny scalars).
pub fn detect(ckpt: &Checkpoint) -> Result<Detected> {
    let mut plan = plan(&metas(ckpt), false)?;
    resolve_alpha(&mut plan, ckpt)?;
    Ok(plan.detected)
}

/// Every tensor of `ckpt` under its canonical name, as a [`Weight`].
///
/// ComfyUI `scale_weight`s become [`Weight::scale`] of their weight (dequantized lazily as
/// value × scale), the `scaled_fp8` marker and `scale_input`s are dropped, and so is a
/// transformers `encoder.embed_tokens.weight` that duplicates `shared.weight` (an error if
/// it differs). Fails on an unknown component or a key that does not map, naming it.
pub fn canonical_weights(ckpt: &Checkpoint) -> Result<(Detected, BTreeMap<String, Weight>)> {
    let mut plan = plan(&metas(ckpt), false)?;
    ensure_known(&plan.detected)?;
    resolve_alpha(&mut plan, ckpt)?;
    let weights = plan_weights(&plan, ckpt)?;
    Ok((plan.detected, weights))
}

/// A LoRA file read leniently: what [`canonical_lora`] returns.
#[derive(Debug, Clone)]
pub struct CanonicalLora {
    /// The detection result (component [`Component::Lora`]).
    pub detected: Detected,
    /// The tensors that map to a Wan DiT module, under their canonical LoRA names.
    pub weights: BTreeMap<String, Weight>,
    /// Canonical name -> stored name, for messages that name the key as the file has it.
    pub stored: BTreeMap<String, String>,
    /// Stored names of the tensors that map to no Wan DiT module (another architecture's
    /// modules, unknown suffixes): a loader ignores them and reports them.
    pub unmatched: Vec<String>,
}

/// Reads a LoRA like [`canonical_weights`], except that a tensor naming no Wan DiT module is
/// listed in [`CanonicalLora::unmatched`] instead of failing the whole file (ComfyUI logs such
/// keys as "lora key not loaded" and goes on). Fails on a file that is not a LoRA, and on
/// malformed LoRA tensors (a 4-D matrix, a non-scalar alpha, a down without its up, ranks that
/// disagree).
pub fn canonical_lora(ckpt: &Checkpoint) -> Result<CanonicalLora> {
    let mut plan = plan(&metas(ckpt), true)?;
    if plan.detected.component != Component::Lora {
        return Err(Error::UnsupportedModel(format!(
            "{}: not a LoRA (it holds a {})",
            ckpt.path.display(),
            plan.detected.component
        )));
    }
    resolve_alpha(&mut plan, ckpt)?;
    Ok(CanonicalLora {
        weights: plan_weights(&plan, ckpt)?,
        stored: plan
            .entries
            .iter()
            .map(|e| (e.canonical.clone(), e.stored.clone()))
            .collect(),
        unmatched: std::mem::take(&mut plan.unmatched),
        detected: plan.detected,
    })
}

/// Where one canonical tensor is stored in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredName {
    /// The name in the file.
    pub stored: String,
    /// The canonical (original Wan) name.
    pub canonical: String,
    /// The stored name of its ComfyUI `scale_weight`, if it has one.
    pub scale: Option<String>,
}

/// The stored name of every canonical tensor of `metas` (for writing a modified checkpoint
/// back in its own key layout). Markers, `scale_input`s and tied duplicates are not listed.
pub fn stored_names(metas: &MetaMap) -> Result<Vec<StoredName>> {
    let plan = plan(metas, false)?;
    ensure_known(&plan.detected)?;
    Ok(plan
        .entries
        .into_iter()
        .map(|e| StoredName {
            stored: e.stored,
            canonical: e.canonical,
            scale: e.scale,
        })
        .collect())
}

/// The tensors of `plan` under their canonical names, with their scales attached.
fn plan_weights(plan: &Plan, ckpt: &Checkpoint) -> Result<BTreeMap<String, Weight>> {
    for (dup, kept) in &plan.ties {
        if ckpt.tensors[dup].raw_bytes()? != ckpt.tensors[kept].raw_bytes()? {
            return Err(tie_error(dup, kept));
        }
    }
    let mut out = BTreeMap::new();
    for e in &plan.entries {
        let mut w = Weight::new(ckpt.tensors[&e.stored].clone());
        if let Some(s) = &e.scale {
            let v = ckpt.tensors[s].to_f32_vec()?;
            match v.as_slice() {
                [x] if x.is_finite() => w.scale = Some(*x),
                _ => {
                    return Err(Error::UnsupportedModel(format!(
                        "`{s}`: scale {v:?} is not one finite number"
                    )))
                }
            }
        }
        out.insert(e.canonical.clone(), w);
    }
    Ok(out)
}

/// The number of blocks `<prefix>N.` in `names` (max N + 1), checking that they are 0..N.
pub fn count_blocks<'a>(
    names: impl IntoIterator<Item = &'a String>,
    prefix: &str,
) -> Result<usize> {
    let ids: BTreeSet<usize> = names
        .into_iter()
        .filter_map(|n| split_index(n, prefix))
        .map(|(i, _)| i)
        .collect();
    match ids.last() {
        Some(&last) if last + 1 != ids.len() => Err(Error::UnsupportedModel(format!(
            "blocks `{prefix}N` are not numbered from 0 without gaps: {} blocks, the last is {last}",
            ids.len()
        ))),
        _ => Ok(ids.len()),
    }
}

fn ensure_known(d: &Detected) -> Result<()> {
    if d.component == Component::Unknown {
        return Err(Error::UnsupportedModel(
            "not a Wan DiT, VAE, UMT5 encoder or LoRA (no known key found)".into(),
        ));
    }
    Ok(())
}

fn tie_error(dup: &str, kept: &str) -> Error {
    Error::UnsupportedModel(format!(
        "`{dup}` differs from `{kept}` (expected the tied copy)"
    ))
}

// === The plan: stored name -> canonical name ===

struct Entry {
    stored: String,
    canonical: String,
    /// Stored name of the `scale_weight` that multiplies this weight.
    scale: Option<String>,
}

struct Plan {
    detected: Detected,
    entries: Vec<Entry>,
    /// (dropped duplicate, kept tensor): tied embeddings.
    ties: Vec<(String, String)>,
    /// LoRA: canonical module -> stored alpha name.
    alphas: BTreeMap<String, String>,
    /// LoRA read leniently: stored names that map to no module.
    unmatched: Vec<String>,
}

const COMFY_DIT_PREFIX: &str = "model.diffusion_model.";
const COMFY_T5_PREFIX: &str = "text_encoders.umt5xxl.transformer.";
const SCALED_FP8_MARKER: &str = "scaled_fp8";

fn unmapped(what: &str, layout: KeyLayout, key: &str) -> Error {
    Error::UnsupportedModel(format!(
        "unknown tensor `{key}` for a {what} in {layout} layout"
    ))
}

/// A checkpoint's names with the container conventions taken off.
struct Container<'a> {
    /// The ComfyUI prefix every key carries, if any.
    prefix: Option<&'static str>,
    /// (stored name, name without the prefix) of every tensor but markers and scales.
    names: Vec<(&'a str, &'a str)>,
    /// The dtype of the `scaled_fp8` marker.
    marker: Option<DType>,
    /// Weight name (without prefix) -> stored name of its `scale_weight`.
    scales: BTreeMap<String, String>,
}

fn container(metas: &MetaMap) -> Result<Container<'_>> {
    let prefix = [COMFY_DIT_PREFIX, COMFY_T5_PREFIX]
        .into_iter()
        .find(|p| metas.keys().any(|k| k.starts_with(p)));
    let mut c = Container {
        prefix,
        names: Vec::new(),
        marker: None,
        scales: BTreeMap::new(),
    };
    for (stored, meta) in metas {
        // ComfyUI writes the marker with or without the model prefix.
        let stripped = match prefix {
            _ if stored == SCALED_FP8_MARKER => stored.as_str(),
            Some(p) => stored.strip_prefix(p).ok_or_else(|| {
                Error::UnsupportedModel(format!(
                    "tensor `{stored}` lacks the `{p}` prefix of the other tensors"
                ))
            })?,
            None => stored.as_str(),
        };
        if stripped == SCALED_FP8_MARKER {
            c.marker = Some(meta.dtype);
        } else if let Some(m) = stripped.strip_suffix(".scale_weight") {
            if meta.elem_count() != 1 {
                return Err(Error::UnsupportedModel(format!(
                    "`{stored}`: scale of shape {:?} (only per-tensor ComfyUI scales are supported)",
                    meta.dims
                )));
            }
            c.scales.insert(format!("{m}.weight"), stored.clone());
        } else if !stripped.ends_with(".scale_input") {
            // `scale_input` only serves ComfyUI's fp8 matmul fast path; the value is unaffected.
            c.names.push((stored.as_str(), stripped));
        }
    }
    Ok(c)
}

/// The canonical name of a DiT, VAE or T5 tensor `name` (prefix removed), if it maps.
fn rename(kind: Kind, layout: KeyLayout, name: &str, vae_resnets: usize) -> Option<String> {
    match (kind, layout) {
        (Kind::Dit, KeyLayout::Original) => is_dit_key(name).then(|| name.to_string()),
        (Kind::Dit, _) => dit_from_diffusers(name),
        (Kind::Vae, KeyLayout::Original) => is_vae_key(name).then(|| name.to_string()),
        (Kind::Vae, _) => vae_from_diffusers(name, vae_resnets),
        (Kind::T5, KeyLayout::Original) => is_t5_key(name).then(|| name.to_string()),
        (Kind::T5, _) => t5_from_transformers(name),
        // LoRAs are renamed by `lora_plan`; unknown models are not renamed.
        (Kind::Lora | Kind::Unknown, _) => None,
    }
}

/// With `lenient`, LoRA tensors that map to no module are collected in [`Plan::unmatched`]
/// instead of failing.
fn plan(metas: &MetaMap, lenient: bool) -> Result<Plan> {
    let Container {
        prefix,
        names,
        marker,
        mut scales,
    } = container(metas)?;
    let (component, mut layout) = classify(names.iter().map(|n| n.1));
    let mut ties = Vec::new();
    let mut alphas = BTreeMap::new();
    let mut lora = None;
    let mut unmatched = Vec::new();
    let mut entries = Vec::with_capacity(names.len());
    let identity = |stored: &str| Entry {
        stored: stored.into(),
        canonical: stored.into(),
        scale: None,
    };
    match component {
        Kind::Lora => {
            let p = lora_plan(&names, metas, lenient)?;
            (entries, lora, layout, alphas, unmatched) =
                (p.entries, Some(p.info), p.layout, p.alphas, p.unmatched);
        }
        Kind::Unknown => entries = names.iter().map(|n| identity(n.0)).collect(),
        kind => {
            let vae_resnets = decoder_resnets_per_block(names.iter().map(|n| n.1));
            let shared = names.iter().find(|n| n.1 == "shared.weight");
            for &(stored, name) in &names {
                // transformers ties `encoder.embed_tokens.weight` to `shared.weight`.
                if let (KeyLayout::Transformers, "encoder.embed_tokens.weight", Some(kept)) =
                    (layout, name, shared)
                {
                    ties.push((stored.to_string(), kept.0.to_string()));
                    continue;
                }
                let canonical = match (layout, name) {
                    (KeyLayout::Transformers, "encoder.embed_tokens.weight") => {
                        Some("token_embedding.weight".to_string())
                    }
                    _ => rename(kind, layout, name, vae_resnets),
                };
                let canonical = canonical.ok_or_else(|| unmapped(kind.name(), layout, stored))?;
                entries.push(Entry {
                    stored: stored.to_string(),
                    canonical,
                    scale: scales.remove(name),
                });
            }
        }
    }
    if let Some((w, s)) = scales.into_iter().next() {
        return Err(Error::UnsupportedModel(format!(
            "scale `{s}` has no weight `{w}`"
        )));
    }
    if let Some(p) = prefix {
        let expected = if p == COMFY_DIT_PREFIX {
            (Kind::Dit, KeyLayout::Original)
        } else {
            (Kind::T5, KeyLayout::Transformers)
        };
        if (component, layout) != expected {
            return Err(Error::UnsupportedModel(format!(
                "a `{p}` checkpoint holding a {} in {layout} layout",
                component.name(),
            )));
        }
        layout = KeyLayout::ComfyUi;
    }
    check_unique(&entries)?;

    let component = match component {
        Kind::Dit if entries.iter().any(|e| is_i2v_key(&e.canonical)) => {
            Component::Dit(ModelType::I2v)
        }
        Kind::Dit => Component::Dit(ModelType::T2v),
        Kind::Vae => Component::Vae,
        Kind::T5 => Component::Umt5Encoder,
        Kind::Lora => Component::Lora,
        Kind::Unknown => Component::Unknown,
    };
    let quant = quant_of(&entries, metas, marker);
    Ok(Plan {
        detected: Detected {
            component,
            layout,
            quant,
            lora,
        },
        entries,
        ties,
        alphas,
        unmatched,
    })
}

fn check_unique(entries: &[Entry]) -> Result<()> {
    let mut seen = BTreeMap::new();
    for e in entries {
        if let Some(first) = seen.insert(e.canonical.as_str(), e.stored.as_str()) {
            return Err(Error::UnsupportedModel(format!(
                "`{first}` and `{}` both map to `{}`",
                e.stored, e.canonical
            )));
        }
    }
    Ok(())
}

fn quant_of(entries: &[Entry], metas: &MetaMap, marker: Option<DType>) -> Quant {
    let is_fp8 = |d: DType| matches!(d, DType::F8E4M3 | DType::F8E5M2);
    let mut elems: BTreeMap<DType, u128> = BTreeMap::new();
    let mut scaled_fp8 = None;
    for e in entries {
        let m = &metas[&e.stored];
        if m.dtype.is_float() {
            *elems.entry(m.dtype).or_default() += m.elem_count();
        }
        if e.scale.is_some() && is_fp8(m.dtype) {
            scaled_fp8 = Some(m.dtype);
        }
    }
    let most = |pred: &dyn Fn(DType) -> bool| {
        elems
            .iter()
            .filter(|(d, _)| pred(**d))
            .max_by_key(|(_, n)| **n)
            .map(|(d, _)| *d)
    };
    if marker.is_some() || entries.iter().any(|e| e.scale.is_some()) {
        // ComfyUI: the marker's dtype names the fp8 type; float32 means e4m3fn.
        let m = marker.filter(|d| is_fp8(*d)).unwrap_or(DType::F8E4M3);
        return Quant::ScaledFp8(scaled_fp8.unwrap_or(m));
    }
    if let Some(d) = most(&|d| is_fp8(d)) {
        return Quant::Fp8(d);
    }
    Quant::Float(most(&|_| true).unwrap_or(DType::F32))
}

// === Classification ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dit,
    Vae,
    T5,
    Lora,
    Unknown,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dit => "DiT",
            Kind::Vae => "VAE",
            Kind::T5 => "UMT5 encoder",
            Kind::Lora => "LoRA",
            Kind::Unknown => "unknown model",
        }
    }
}

const LORA_SUFFIXES: [&str; 8] = [
    ".lora_down.weight",
    ".lora_up.weight",
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_B.bias",
    ".diff",
    ".diff_b",
    ".diff_m",
];

fn classify<'a>(names: impl Iterator<Item = &'a str> + Clone) -> (Kind, KeyLayout) {
    let any = |f: &dyn Fn(&str) -> bool| names.clone().any(f);
    let block =
        |n: &str, p: &str, f: &dyn Fn(&str) -> bool| split_index(n, p).is_some_and(|(_, r)| f(r));
    if any(&|n| n.starts_with("lora_unet_") || LORA_SUFFIXES.iter().any(|s| n.ends_with(s))) {
        return (Kind::Lora, KeyLayout::Original);
    }
    if any(&|n| {
        n == "head.modulation"
            || block(n, "blocks.", &|r| {
                r == "modulation" || r.starts_with("self_attn.")
            })
    }) {
        return (Kind::Dit, KeyLayout::Original);
    }
    if any(&|n| {
        n == "scale_shift_table"
            || n.starts_with("condition_embedder.")
            || block(n, "blocks.", &|r| r.starts_with("attn1."))
    }) {
        return (Kind::Dit, KeyLayout::Diffusers);
    }
    if any(&|n| n.starts_with("encoder.middle.") || n.starts_with("decoder.middle.")) {
        return (Kind::Vae, KeyLayout::Original);
    }
    if any(&|n| {
        n.starts_with("encoder.mid_block.")
            || n.starts_with("decoder.mid_block.")
            || n.starts_with("post_quant_conv.")
    }) {
        return (Kind::Vae, KeyLayout::Diffusers);
    }
    if any(&|n| {
        n == "token_embedding.weight"
            || block(n, "blocks.", &|r| {
                r.starts_with("attn.") || r.starts_with("pos_embedding.")
            })
    }) {
        return (Kind::T5, KeyLayout::Original);
    }
    if any(&|n| {
        n == "shared.weight"
            || n.starts_with("encoder.block.")
            || n == "encoder.final_layer_norm.weight"
    }) {
        return (Kind::T5, KeyLayout::Transformers);
    }
    (Kind::Unknown, KeyLayout::Original)
}

/// `"<prefix>12.rest"` -> `(12, "rest")`.
fn split_index<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (i, rest) = rest.split_once('.')?;
    if i.is_empty() || !i.bytes().all(|b| b.is_ascii_digit()) || (i.len() > 1 && i.starts_with('0'))
    {
        return None;
    }
    Some((i.parse().ok()?, rest))
}

/// Renames `name` by the first `(from, to)` whose `from` is `name` or a dotted prefix of it.
fn map_prefix(name: &str, table: &[(&str, &str)]) -> Option<String> {
    table.iter().find_map(|(from, to)| {
        let rest = name.strip_prefix(from)?;
        (rest.is_empty() || rest.starts_with('.')).then(|| format!("{to}{rest}"))
    })
}

fn is_wb(p: &str) -> bool {
    p == "weight" || p == "bias"
}

// === DiT ===

const DIT_TOP_LINEARS: [&str; 11] = [
    "patch_embedding",
    "text_embedding.0",
    "text_embedding.2",
    "time_embedding.0",
    "time_embedding.2",
    "time_projection.1",
    "head.head",
    "img_emb.proj.0",
    "img_emb.proj.1",
    "img_emb.proj.3",
    "img_emb.proj.4",
];
const DIT_BLOCK_LINEARS: [&str; 13] = [
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "cross_attn.k_img",
    "cross_attn.v_img",
    "ffn.0",
    "ffn.2",
    "norm3",
];
const DIT_BLOCK_RMS: [&str; 5] = [
    "self_attn.norm_q",
    "self_attn.norm_k",
    "cross_attn.norm_q",
    "cross_attn.norm_k",
    "cross_attn.norm_k_img",
];

/// True for a parameter name of the original Wan DiT (T2V or I2V).
fn is_dit_key(name: &str) -> bool {
    if name == "head.modulation" {
        return true;
    }
    if let Some((_, rest)) = split_index(name, "blocks.") {
        if rest == "modulation" {
            return true;
        }
        return rest.rsplit_once('.').is_some_and(|(m, p)| {
            (DIT_BLOCK_LINEARS.contains(&m) && is_wb(p))
                || (DIT_BLOCK_RMS.contains(&m) && p == "weight")
        });
    }
    name.rsplit_once('.')
        .is_some_and(|(m, p)| DIT_TOP_LINEARS.contains(&m) && is_wb(p))
}

fn is_i2v_key(canonical: &str) -> bool {
    canonical.starts_with("img_emb.")
        || canonical.contains(".k_img.")
        || canonical.contains(".v_img.")
}

/// diffusers `WanTransformer3DModel` -> original (`convert_wan_to_diffusers.py`, reversed).
const DIFFUSERS_DIT_TOP: [(&str, &str); 12] = [
    (
        "condition_embedder.time_embedder.linear_1",
        "time_embedding.0",
    ),
    (
        "condition_embedder.time_embedder.linear_2",
        "time_embedding.2",
    ),
    (
        "condition_embedder.text_embedder.linear_1",
        "text_embedding.0",
    ),
    (
        "condition_embedder.text_embedder.linear_2",
        "text_embedding.2",
    ),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    (
        "condition_embedder.image_embedder.ff.net.0.proj",
        "img_emb.proj.1",
    ),
    (
        "condition_embedder.image_embedder.ff.net.2",
        "img_emb.proj.3",
    ),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("scale_shift_table", "head.modulation"),
    ("proj_out", "head.head"),
    ("patch_embedding", "patch_embedding"),
];
const DIFFUSERS_DIT_BLOCK: [(&str, &str); 19] = [
    ("scale_shift_table", "modulation"),
    ("attn1.to_q", "self_attn.q"),
    ("attn1.to_k", "self_attn.k"),
    ("attn1.to_v", "self_attn.v"),
    ("attn1.to_out.0", "self_attn.o"),
    ("attn1.norm_q", "self_attn.norm_q"),
    ("attn1.norm_k", "self_attn.norm_k"),
    ("attn2.to_q", "cross_attn.q"),
    ("attn2.to_k", "cross_attn.k"),
    ("attn2.to_v", "cross_attn.v"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn2.norm_q", "cross_attn.norm_q"),
    ("attn2.norm_k", "cross_attn.norm_k"),
    ("attn2.add_k_proj", "cross_attn.k_img"),
    ("attn2.add_v_proj", "cross_attn.v_img"),
    ("attn2.norm_added_k", "cross_attn.norm_k_img"),
    // diffusers' norm2 is the affine cross-attention LayerNorm, Wan's norm3.
    ("norm2", "norm3"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
];

/// A diffusers DiT name (parameter or module path) in original names, unchecked.
fn dit_path_from_diffusers(name: &str) -> Option<String> {
    match split_index(name, "blocks.") {
        Some((i, rest)) => {
            map_prefix(rest, &DIFFUSERS_DIT_BLOCK).map(|r| format!("blocks.{i}.{r}"))
        }
        None => map_prefix(name, &DIFFUSERS_DIT_TOP),
    }
}

fn dit_from_diffusers(name: &str) -> Option<String> {
    dit_path_from_diffusers(name).filter(|n| is_dit_key(n))
}

// === VAE ===

fn is_vae_residual(s: &str) -> bool {
    matches!(s, "residual.0.gamma" | "residual.3.gamma")
        || s.strip_prefix("residual.2.")
            .or_else(|| s.strip_prefix("residual.6."))
            .or_else(|| s.strip_prefix("shortcut."))
            .is_some_and(is_wb)
}

/// True for a parameter name of the original Wan VAE.
fn is_vae_key(name: &str) -> bool {
    let conv = |s: &str, m: &str| {
        s.strip_prefix(m)
            .and_then(|p| p.strip_prefix('.'))
            .is_some_and(is_wb)
    };
    if conv(name, "conv1") || conv(name, "conv2") {
        return true;
    }
    let (side, rest) = match name.split_once('.') {
        Some((s @ ("encoder" | "decoder"), r)) => (s, r),
        _ => return false,
    };
    if conv(rest, "conv1") || rest == "head.0.gamma" || conv(rest, "head.2") {
        return true;
    }
    if let Some((i, s)) = split_index(rest, "middle.") {
        return match i {
            0 | 2 => is_vae_residual(s),
            1 => s == "norm.gamma" || conv(s, "to_qkv") || conv(s, "proj"),
            _ => false,
        };
    }
    let stages = if side == "encoder" {
        "downsamples."
    } else {
        "upsamples."
    };
    split_index(rest, stages)
        .is_some_and(|(_, s)| is_vae_residual(s) || conv(s, "resample.1") || conv(s, "time_conv"))
}

/// Residual blocks per diffusers decoder up block (`num_res_blocks + 1`).
fn decoder_resnets_per_block<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names
        .filter_map(|n| {
            let (_, rest) = split_index(n, "decoder.up_blocks.")?;
            split_index(rest, "resnets.").map(|(j, _)| j + 1)
        })
        .max()
        .unwrap_or(0)
}

fn vae_resnet_suffix(s: &str) -> Option<String> {
    map_prefix(
        s,
        &[
            ("norm1", "residual.0"),
            ("conv1", "residual.2"),
            ("norm2", "residual.3"),
            ("conv2", "residual.6"),
            ("conv_shortcut", "shortcut"),
            ("resample", "resample"),
            ("time_conv", "time_conv"),
        ],
    )
}

/// diffusers `AutoencoderKLWan` -> original (`convert_wan_to_diffusers.py convert_vae`, reversed).
fn vae_from_diffusers(name: &str, resnets: usize) -> Option<String> {
    let out = if let Some(s) = map_prefix(
        name,
        &[("quant_conv", "conv1"), ("post_quant_conv", "conv2")],
    ) {
        s
    } else {
        let (side, rest) = name.split_once('.')?;
        let mapped = if let Some(s) = map_prefix(
            rest,
            &[
                ("conv_in", "conv1"),
                ("norm_out", "head.0"),
                ("conv_out", "head.2"),
            ],
        ) {
            s
        } else if let Some(s) = rest.strip_prefix("mid_block.") {
            if let Some(a) = s.strip_prefix("attentions.0.") {
                format!("middle.1.{a}")
            } else {
                let (j, r) = split_index(s, "resnets.")?;
                format!("middle.{}.{}", [0, 2].get(j)?, vae_resnet_suffix(r)?)
            }
        } else if side == "encoder" {
            let (i, r) = split_index(rest, "down_blocks.")?;
            format!("downsamples.{i}.{}", vae_resnet_suffix(r)?)
        } else {
            // Decoder up block b holds `resnets` residual blocks then one upsampler; the
            // original numbers them all in one flat list.
            let (b, r) = split_index(rest, "up_blocks.")?;
            let base = b * (resnets + 1);
            if let Some((j, r)) = split_index(r, "resnets.") {
                format!("upsamples.{}.{}", base + j, vae_resnet_suffix(r)?)
            } else {
                format!(
                    "upsamples.{}.{}",
                    base + resnets,
                    r.strip_prefix("upsamplers.0.")?
                )
            }
        };
        format!("{side}.{mapped}")
    };
    is_vae_key(&out).then_some(out)
}

// === UMT5 encoder ===

const T5_BLOCK_KEYS: [&str; 10] = [
    "norm1.weight",
    "attn.q.weight",
    "attn.k.weight",
    "attn.v.weight",
    "attn.o.weight",
    "pos_embedding.embedding.weight",
    "norm2.weight",
    "ffn.gate.0.weight",
    "ffn.fc1.weight",
    "ffn.fc2.weight",
];

/// transformers `UMT5EncoderModel` names of [`T5_BLOCK_KEYS`], in the same order.
const T5_HF_BLOCK_KEYS: [&str; 10] = [
    "layer.0.layer_norm.weight",
    "layer.0.SelfAttention.q.weight",
    "layer.0.SelfAttention.k.weight",
    "layer.0.SelfAttention.v.weight",
    "layer.0.SelfAttention.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight",
    "layer.1.layer_norm.weight",
    // HF computes act(wi_0 x) · wi_1 x: wi_0 is Wan's GELU gate.
    "layer.1.DenseReluDense.wi_0.weight",
    "layer.1.DenseReluDense.wi_1.weight",
    "layer.1.DenseReluDense.wo.weight",
];

/// True for a parameter name of the original Wan T5 encoder (`shared_pos` puts the
/// position embedding at the top level).
fn is_t5_key(name: &str) -> bool {
    matches!(
        name,
        "token_embedding.weight" | "norm.weight" | "pos_embedding.embedding.weight"
    ) || split_index(name, "blocks.").is_some_and(|(_, r)| T5_BLOCK_KEYS.contains(&r))
}

fn t5_from_transformers(name: &str) -> Option<String> {
    match name {
        "shared.weight" => return Some("token_embedding.weight".into()),
        "encoder.final_layer_norm.weight" => return Some("norm.weight".into()),
        _ => {}
    }
    let (i, rest) = split_index(name, "encoder.block.")?;
    let k = T5_HF_BLOCK_KEYS.iter().position(|k| *k == rest)?;
    Some(format!("blocks.{i}.{}", T5_BLOCK_KEYS[k]))
}

// === LoRA ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoraPart {
    Down,
    Up,
    Alpha,
    Diff,
    DiffB,
    DiffM,
    /// DoRA's magnitude (`dora_scale`, PEFT's `lora_magnitude_vector`).
    DoraScale,
}

impl LoraPart {
    fn canonical_suffix(self) -> &'static str {
        match self {
            LoraPart::Down => ".lora_down.weight",
            LoraPart::Up => ".lora_up.weight",
            LoraPart::Alpha => ".alpha",
            LoraPart::Diff => ".diff",
            LoraPart::DiffB => ".diff_b",
            LoraPart::DiffM => ".diff_m",
            LoraPart::DoraScale => ".dora_scale",
        }
    }
}

const LORA_PARTS: [(&str, LoraPart); 12] = [
    (".lora_down.weight", LoraPart::Down),
    (".lora_up.weight", LoraPart::Up),
    (".lora_A.weight", LoraPart::Down),
    (".lora_B.weight", LoraPart::Up),
    (".lora_B.bias", LoraPart::DiffB),
    (".alpha", LoraPart::Alpha),
    (".diff_b", LoraPart::DiffB),
    (".diff_m", LoraPart::DiffM),
    (".diff", LoraPart::Diff),
    (".dora_scale", LoraPart::DoraScale),
    (".lora_magnitude_vector.weight", LoraPart::DoraScale),
    (".lora_magnitude_vector", LoraPart::DoraScale),
];

/// A musubi/kohya module name (`blocks_0_self_attn_q`, dots mangled to `_`) in original names.
fn unmangle_musubi(m: &str) -> Option<String> {
    let mangle = |s: &str| s.replace('.', "_");
    if let Some((i, rest)) = split_index(&m.replacen('_', ".", 1).replacen('_', ".", 1), "blocks.")
    {
        // `blocks_12_cross_attn_k_img` -> (12, "cross_attn_k_img")
        return DIT_BLOCK_LINEARS
            .iter()
            .chain(&DIT_BLOCK_RMS)
            .find(|c| mangle(c) == rest)
            .map(|c| format!("blocks.{i}.{c}"));
    }
    DIT_TOP_LINEARS
        .iter()
        .find(|c| mangle(c) == m)
        .map(|c| c.to_string())
}

struct LoraPlan {
    entries: Vec<Entry>,
    info: LoraInfo,
    layout: KeyLayout,
    alphas: BTreeMap<String, String>,
    unmatched: Vec<String>,
}

/// The canonical module and part of a LoRA tensor `name` (container prefix removed), if it
/// names a parameter of the Wan DiT.
fn lora_target(format: LoraFormat, name: &str) -> Option<(String, LoraPart)> {
    let (raw, part) = LORA_PARTS
        .iter()
        .find_map(|(s, p)| name.strip_suffix(s).map(|m| (m, *p)))?;
    let module = match format {
        LoraFormat::Musubi => {
            // ComfyUI accepts the "Fun" spelling `lora_unet__blocks…` too.
            let m = raw.strip_prefix("lora_unet_")?;
            unmangle_musubi(m.strip_prefix('_').unwrap_or(m))?
        }
        LoraFormat::Diffusers => dit_path_from_diffusers(raw.strip_prefix("transformer.")?)?,
        LoraFormat::Comfy | LoraFormat::Lightx2v => raw
            .strip_prefix("diffusion_model.")
            .unwrap_or(raw)
            .to_string(),
    };
    // Kijai's loader spells a modulation delta `<blocks.N|head>.modulation.diff`.
    let (module, part) = match module.strip_suffix(".modulation") {
        Some(m) if part == LoraPart::Diff => (m.to_string(), LoraPart::DiffM),
        _ => (module, part),
    };
    let target = match part {
        LoraPart::DiffB => format!("{module}.bias"),
        LoraPart::DiffM => format!("{module}.modulation"),
        _ => format!("{module}.weight"),
    };
    is_dit_key(&target).then_some((module, part))
}

fn lora_plan(names: &[(&str, &str)], metas: &MetaMap, lenient: bool) -> Result<LoraPlan> {
    let has = |f: &dyn Fn(&str) -> bool| names.iter().any(|n| f(n.1));
    let format = if has(&|n| n.starts_with("lora_unet_")) {
        LoraFormat::Musubi
    } else if has(&|n| n.starts_with("transformer.")) {
        LoraFormat::Diffusers
    } else if has(&|n| n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight")) {
        LoraFormat::Comfy
    } else {
        LoraFormat::Lightx2v
    };
    let layout = if format == LoraFormat::Diffusers {
        KeyLayout::Diffusers
    } else {
        KeyLayout::Original
    };

    let mut entries = Vec::new();
    let mut unmatched = Vec::new();
    let mut pairs: BTreeMap<String, [Option<&TensorMeta>; 2]> = BTreeMap::new();
    let mut alphas = BTreeMap::new();
    let mut doras = Vec::new();
    let mut deltas = 0;
    for &(stored, name) in names {
        let Some((module, part)) = lora_target(format, name) else {
            if lenient {
                unmatched.push(stored.to_string());
                continue;
            }
            return Err(Error::UnsupportedModel(format!(
                "unknown tensor `{stored}` for a LoRA in {format} format"
            )));
        };
        let meta = &metas[stored];
        match part {
            LoraPart::Down | LoraPart::Up => {
                if meta.dims.len() != 2 {
                    return Err(Error::UnsupportedModel(format!(
                        "`{stored}`: LoRA matrix of shape {:?} (only 2-D linear LoRAs are supported)",
                        meta.dims
                    )));
                }
                pairs.entry(module.clone()).or_default()[(part == LoraPart::Up) as usize] =
                    Some(meta);
            }
            LoraPart::Alpha => {
                if meta.elem_count() != 1 {
                    return Err(Error::UnsupportedModel(format!(
                        "`{stored}`: alpha of shape {:?} is not a scalar",
                        meta.dims
                    )));
                }
                alphas.insert(module.clone(), stored.to_string());
            }
            LoraPart::DoraScale => doras.push(module.clone()),
            _ => deltas += 1,
        }
        entries.push(Entry {
            stored: stored.to_string(),
            canonical: format!("{module}{}", part.canonical_suffix()),
            scale: None,
        });
    }

    let mut ranks = Vec::new();
    for (m, pair) in &pairs {
        match pair {
            [Some(down), Some(up)] if down.dims[0] == up.dims[1] => ranks.push(down.dims[0]),
            [Some(down), Some(up)] => {
                return Err(Error::UnsupportedModel(format!(
                    "LoRA `{m}`: down {:?} and up {:?} disagree on the rank",
                    down.dims, up.dims
                )))
            }
            _ => {
                return Err(Error::UnsupportedModel(format!(
                    "LoRA `{m}` has only one of its down/up matrices"
                )))
            }
        }
    }
    if let Some(m) = doras.iter().find(|m| !pairs.contains_key(*m)) {
        return Err(Error::UnsupportedModel(format!(
            "DoRA magnitude for `{m}` without down/up matrices"
        )));
    }
    if let Some(m) = alphas.keys().find(|m| !pairs.contains_key(*m)) {
        return Err(Error::UnsupportedModel(format!(
            "LoRA alpha for `{m}` without down/up matrices"
        )));
    }
    let alpha = if alphas.is_empty() {
        LoraAlpha::Absent
    } else {
        LoraAlpha::NotRead
    };
    let info = LoraInfo {
        format,
        modules: pairs.len(),
        rank_min: ranks.iter().copied().min().unwrap_or(0),
        rank_max: ranks.iter().copied().max().unwrap_or(0),
        alpha,
        deltas,
    };
    Ok(LoraPlan {
        entries,
        info,
        layout,
        alphas,
        unmatched,
    })
}

/// Reads the LoRA alphas into the plan's [`LoraInfo`].
fn resolve_alpha(plan: &mut Plan, ckpt: &Checkpoint) -> Result<()> {
    let Some(info) = plan.detected.lora.as_mut() else {
        return Ok(());
    };
    if plan.alphas.is_empty() {
        return Ok(());
    }
    let mut values = Vec::new();
    for stored in plan.alphas.values() {
        let v = ckpt.tensors[stored].to_f32_vec()?;
        values.push(v[0]);
    }
    let first = values[0];
    info.alpha = if plan.alphas.len() == info.modules && values.iter().all(|v| *v == first) {
        LoraAlpha::Uniform(first)
    } else {
        LoraAlpha::PerModule
    };
    Ok(())
}
