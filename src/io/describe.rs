//! Human descriptions of checkpoints: what `wanrt inspect` prints.
//!
//! The model line reads like `dit t2v, ComfyUI layout, scaled fp8 e4m3fn, dim 64, 2 layers`,
//! `vae, diffusers layout, f32, dim 8, z_dim 16` or `lora, musubi format, rank 4, alpha 2, 20
//! modules`.

use std::collections::BTreeMap;
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
    /// Number of stored tensors (markers and scales included).
    pub tensors: usize,
    /// Stored tensors per dtype, most frequent first.
    pub dtypes: Vec<(DType, usize)>,
}

/// Describes a checkpoint. Fails where [`layout::canonical_metas`] or the config inference
/// would (an unknown key, inconsistent shapes), so a file that describes cleanly also loads.
/// An unrecognised file is described as `unknown`, not an error.
pub fn summarize(ckpt: &Checkpoint) -> Result<Summary> {
    let detected = layout::detect(ckpt)?;
    let model = if detected.component == Component::Unknown {
        "unknown (not a Wan DiT, VAE, UMT5 encoder or LoRA)".to_string()
    } else {
        let (_, canonical) = layout::canonical_metas(&layout::metas(ckpt))?;
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

impl fmt::Display for Summary {
    /// Three lines: format, model, tensors with their dtypes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format:  {}", self.format)?;
        writeln!(f, "model:   {}", self.model)?;
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
