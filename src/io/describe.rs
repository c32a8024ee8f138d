//! Human descriptions of checkpoints: what `wanrt inspect` prints.
//!
//! The model line reads like `dit t2v, ComfyUI layout, scaled fp8 e4m3fn, dim 64, 2 layers`,
//! `vae, diffusers layout, f32, dim 8, z_dim 16` or `lora, musubi format, rank 4, alpha 2, 20
//! modules`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::config::{ModelType, T5Config, VaeConfig};
use super::layout::{self, Component, Detected, KeyLayout, LoraAlpha, LoraFormat, MetaMap, Quant};
use super::{Checkpoint, FileFormat};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// What one checkpoint holds, in words and counts.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The container format.
    pub format: FileFormat,
    /// The detection result.
    pub detected: Detected,
    /// The model line (component, layout, storage, main sizes).
    pub model: String,
    /// Further `(label, text)` lines: for a LoRA, the modules its pairs target and the
    /// parameters its full deltas change.
    pub details: Vec<(&'static str, String)>,
    /// Which shard of how many this file is, for one file of a sharded model
    /// (`…-00001-of-00002.safetensors`): the model line then describes the shard's tensors
    /// only (component, layout, storage), since the sizes need the whole model.
    pub shard: Option<(usize, usize)>,
    /// Number of stored tensors (markers and scales included).
    pub tensors: usize,
    /// Stored tensors per dtype, most frequent first.
    pub dtypes: Vec<(DType, usize)>,
}

/// Describes a checkpoint. Fails where [`layout::canonical_metas`] or the config inference
/// would (an unknown key, inconsistent shapes), so a file that describes cleanly also loads.
/// An unrecognised file is described as `unknown`, not an error. One shard of a sharded model
/// is described as such ([`Summary::shard`]).
pub fn summarize(ckpt: &Checkpoint) -> Result<Summary> {
    let detected = layout::detect(ckpt)?;
    let shard = match ckpt.format {
        FileFormat::Safetensors => super::safetensors::shard_position(&ckpt.path),
        _ => None,
    };
    let mut details = Vec::new();
    let model = if detected.component == Component::Unknown {
        "unknown (not a Wan DiT, VAE, UMT5 encoder or LoRA)".to_string()
    } else if shard.is_some() {
        let Detected {
            component,
            layout,
            quant,
            ..
        } = &detected;
        format!("{component}, {layout} layout, {quant}")
    } else {
        let (_, canonical) = layout::canonical_metas(&layout::metas(ckpt))?;
        if detected.component == Component::Lora {
            details = lora_details(&canonical);
        }
        describe_model(&detected, &canonical)?
    };
    let mut counts: BTreeMap<DType, usize> = BTreeMap::new();
    for t in ckpt.tensors.values() {
        *counts.entry(t.dtype()).or_default() += 1;
    }
    let mut dtypes: Vec<(DType, usize)> = counts.into_iter().collect();
    dtypes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Summary {
        format: ckpt.format,
        detected,
        model,
        details,
        shard,
        tensors: ckpt.tensors.len(),
        dtypes,
    })
}

/// The model line for `detected` with its canonical tensor metas.
pub fn describe_model(detected: &Detected, canonical: &MetaMap) -> Result<String> {
    let Detected {
        component,
        layout,
        quant,
        lora,
    } = detected;
    Ok(match component {
        Component::Dit(_) => {
            let dim = canonical
                .get("patch_embedding.weight")
                .and_then(|m| m.dims.first())
                .ok_or_else(|| Error::MissingTensor {
                    name: "patch_embedding.weight".into(),
                    context: "DiT".into(),
                })?;
            let layers = layout::count_blocks(canonical.keys(), "blocks.")?;
            format!("{component}, {layout} layout, {quant}, dim {dim}, {layers} layers")
        }
        Component::Vae => {
            let c = VaeConfig::infer(canonical)?;
            format!(
                "{component}, {layout} layout, {quant}, dim {}, z_dim {}",
                c.dim, c.z_dim
            )
        }
        Component::Umt5Encoder => {
            let c = T5Config::infer(canonical)?;
            format!(
                "{component}, {layout} layout, {quant}, dim {}, {} layers",
                c.dim, c.num_layers
            )
        }
        Component::Lora => {
            let Some(l) = lora else {
                return Err(Error::InvalidArgument("LoRA without LoRA details".into()));
            };
            let mut s = format!("{component}, {} format", l.format);
            if l.modules > 0 {
                match (l.rank_min, l.rank_max) {
                    (a, b) if a == b => s += &format!(", rank {a}"),
                    (a, b) => s += &format!(", rank {a}-{b}"),
                }
                s += &match l.alpha {
                    LoraAlpha::Absent => ", no alpha".to_string(),
                    LoraAlpha::NotRead => ", with alpha".to_string(),
                    LoraAlpha::Uniform(a) => format!(", alpha {a}"),
                    LoraAlpha::PerModule => ", alpha per module".to_string(),
                };
                s += &format!(", {} modules", l.modules);
            }
            if l.deltas > 0 {
                s += &format!(", {} full deltas", l.deltas);
            }
            s
        }
        Component::Unknown => component.to_string(),
    })
}

/// A LoRA's `targets` (modules of its low-rank pairs) and `deltas` (parameters its full deltas
/// change) lines, from its canonical metas.
fn lora_details(canonical: &MetaMap) -> Vec<(&'static str, String)> {
    let pairs = canonical
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_down.weight"))
        .map(str::to_string);
    let deltas = canonical.keys().filter_map(|k| {
        let (m, param) = [
            (".diff_b", "bias"),
            (".diff_m", "modulation"),
            (".diff", "weight"),
        ]
        .iter()
        .find_map(|(s, p)| k.strip_suffix(s).map(|m| (m, p)))?;
        Some(format!("{m}.{param}"))
    });
    [
        ("targets", summarize_paths(pairs)),
        ("deltas", summarize_paths(deltas)),
    ]
    .into_iter()
    .filter(|(_, s)| !s.is_empty())
    .collect()
}

/// Canonical paths, blocks grouped by what they hold:
/// `blocks 0-29: cross_attn.{k,o,q,v}, ffn.{0,2}; head.head`.
fn summarize_paths(paths: impl Iterator<Item = String>) -> String {
    let mut per_block: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut top = Vec::new();
    for p in paths {
        let block = p.strip_prefix("blocks.").and_then(|r| {
            let (i, rest) = r.split_once('.')?;
            Some((i.parse::<usize>().ok()?, rest.to_string()))
        });
        match block {
            Some((i, rest)) => {
                per_block.entry(i).or_default().insert(rest);
            }
            None => top.push(p),
        }
    }
    let mut groups: BTreeMap<BTreeSet<String>, Vec<usize>> = BTreeMap::new();
    for (i, names) in per_block {
        groups.entry(names).or_default().push(i);
    }
    // In the order of each group's first block.
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|(_, blocks)| blocks[0]);
    let mut parts: Vec<String> = groups
        .into_iter()
        .map(|(names, blocks)| {
            let names: Vec<String> = names.into_iter().collect();
            format!("blocks {}: {}", ranges(&blocks), braces(&names))
        })
        .collect();
    if !top.is_empty() {
        parts.push(braces(&top));
    }
    parts.join("; ")
}

/// Sorted numbers as `0-3,7,9-10`.
fn ranges(ids: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Sorted dotted names with a shared first component in braces: `ffn.{0,2}, norm3.weight`.
fn braces(names: &[String]) -> String {
    let mut by_head: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in names {
        let (head, rest) = n.split_once('.').unwrap_or((n, ""));
        by_head.entry(head).or_default().push(rest);
    }
    by_head
        .into_iter()
        .map(|(head, rests)| match rests.as_slice() {
            [""] => head.to_string(),
            [one] => format!("{head}.{one}"),
            many => format!("{head}.{{{}}}", many.join(",")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Summary {
    /// Format (with the shard of a sharded model), model, any detail lines, then the tensors
    /// with their dtypes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "format:  {}", self.format)?;
        if let Some((i, n)) = self.shard {
            write!(
                f,
                ", shard {i} of {n} (inspect its folder or index.json for the whole model)"
            )?;
        }
        writeln!(f)?;
        writeln!(f, "model:   {}", self.model)?;
        for (label, text) in &self.details {
            writeln!(f, "{:<9}{text}", format!("{label}:"))?;
        }
        let dtypes: Vec<String> = self
            .dtypes
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect();
        write!(f, "tensors: {} ({})", self.tensors, dtypes.join(", "))
    }
}

impl fmt::Display for ModelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelType::T2v => "t2v",
            ModelType::I2v => "i2v",
        })
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Dit(t) => write!(f, "dit {t}"),
            Component::Vae => f.write_str("vae"),
            Component::Umt5Encoder => f.write_str("umt5 encoder"),
            Component::Lora => f.write_str("lora"),
            Component::Unknown => f.write_str("unknown"),
        }
    }
}

impl fmt::Display for KeyLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyLayout::Original => "original",
            KeyLayout::ComfyUi => "ComfyUI",
            KeyLayout::Diffusers => "diffusers",
            KeyLayout::Transformers => "transformers",
        })
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quant::Float(d) | Quant::Fp8(d) => write!(f, "{d}"),
            Quant::ScaledFp8(d) => write!(f, "scaled {d}"),
        }
    }
}

impl fmt::Display for LoraFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoraFormat::Musubi => "musubi",
            LoraFormat::Comfy => "ComfyUI",
            LoraFormat::Diffusers => "diffusers",
            LoraFormat::Lightx2v => "lightx2v",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_grouped_by_block_sets() {
        let mut paths: Vec<String> = Vec::new();
        for i in [0, 1, 2, 5, 7] {
            paths.push(format!("blocks.{i}.self_attn.q"));
            paths.push(format!("blocks.{i}.ffn.0"));
        }
        paths.push("blocks.3.self_attn.q".into());
        paths.push("head.head".into());
        paths.push("time_projection.1".into());
        assert_eq!(
            summarize_paths(paths.into_iter()),
            "blocks 0-2,5,7: ffn.0, self_attn.q; blocks 3: self_attn.q; head.head, time_projection.1"
        );
        assert_eq!(summarize_paths(std::iter::empty()), "");
    }

    #[test]
    fn shard_names_are_recognised() {
        use crate::io::safetensors::shard_position;
        use std::path::Path;
        let pos = |name: &str| shard_position(Path::new(name));
        assert_eq!(
            pos("m/diffusion_pytorch_model-00001-of-00002.safetensors"),
            Some((1, 2))
        );
        assert_eq!(pos("model-3-of-12.safetensors"), Some((3, 12)));
        for name in [
            "model-00001-of-00001.safetensors",
            "model-00000-of-00002.safetensors",
            "model-00003-of-00002.safetensors",
            "model-00001-of-00002.pth",
            "model-0x1-of-00002.safetensors",
            "model-of-00002.safetensors",
            "model.safetensors",
        ] {
            assert_eq!(pos(name), None, "{name}");
        }
    }
}
