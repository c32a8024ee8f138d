//! LoRAs for the Wan DiT: every file format users share, one representation, merged into the
//! weights or applied on the fly (lora-guidance-training.md §1).
//!
//! [`Lora::open`] reads a musubi/kohya, ComfyUI/diffusion-pipe, diffusers/PEFT or lightx2v file
//! through [`crate::io::layout`], which renames every format to the canonical names, and keeps
//! per original Wan module path (`blocks.0.self_attn.q`) its low-rank pair and full deltas
//! ([`LoraModule`]). A pair changes its weight by `scale · up @ down` with
//! `scale = strength · alpha / rank`, or `strength` when the file has no alpha (as ComfyUI and
//! lightx2v read such files). A DoRA file's pairs carry their magnitude ([`LowRank::magnitude`]);
//! LoHa and LoKr files are refused, naming the format.
//!
//! [`merge`] bakes any number of LoRAs into canonical weights in f32 and stores the result back
//! in the base dtype ([`StoreAs`]); [`unmerged`] instead returns per-layer [`LinearDelta`]s for
//! [`crate::model::dit::WanDit::set_linear_deltas`]; [`open_dit`] does either and builds the model. Both report the
//! keys that matched no module of the model ([`Report`]).

mod apply;
pub(crate) mod blockwise;
#[cfg(test)]
pub(crate) mod kernel_emulation;
mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The merge on a CUDA device (`cuda` feature).
#[cfg(feature = "cuda")]
pub use crate::backend::cuda::DeviceMerge;
#[cfg(any(test, feature = "cuda"))]
pub(crate) use apply::Change;
pub use apply::{merge, open_dit, unmerged, LoraReport, MergePlan, Mode, Report, Unmerged};
#[cfg(feature = "cuda")]
pub(crate) use blockwise::by_block;
pub use blockwise::{LoraMergeBytes, Pristine};
#[cfg(feature = "cuda")]
pub(crate) use store::fp8_scale;
pub use store::StoreAs;

use crate::error::{Error, Result};
use crate::io::layout::{self, LoraFormat};
use crate::io::Checkpoint;
use crate::model::dit::LinearDelta;
use crate::tensor::Tensor;

/// A low-rank pair: the weight changes by `scale · up @ down`.
#[derive(Debug, Clone)]
pub struct LowRank {
    /// `[rank, in]`, f32.
    pub down: Tensor,
    /// `[out, rank]`, f32.
    pub up: Tensor,
    /// The file's alpha for this module, if it has one.
    pub alpha: Option<f32>,
    /// DoRA's magnitude `m`, `[out]` f32 (the file's `dora_scale` `[out, 1]` or PEFT's
    /// `lora_magnitude_vector` `[out]`), if this pair is a DoRA one: the weight then becomes
    /// `m · (W + ΔW) / ‖W + ΔW‖` with one norm per output row (see [`merge`]).
    pub magnitude: Option<Tensor>,
}

impl LowRank {
    /// The rank.
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }

    /// `strength · alpha / rank`; `strength` without an alpha. An alpha of 0 means "alpha =
    /// rank" as in kohya/musubi, which write it so for networks trained without an alpha.
    pub fn scale(&self, strength: f32) -> f32 {
        pair_scale(self.alpha, self.rank(), strength)
    }
}

/// [`LowRank::scale`] of a pair with this alpha and rank.
pub(crate) fn pair_scale(alpha: Option<f32>, rank: usize, strength: f32) -> f32 {
    match alpha {
        Some(a) if a != 0.0 => strength * a / rank as f32,
        _ => strength,
    }
}

/// What one LoRA changes in one module (`<m>` = its canonical path).
#[derive(Debug, Clone, Default)]
pub struct LoraModule {
    /// The low-rank pair on `<m>.weight`.
    pub low_rank: Option<LowRank>,
    /// Full delta of `<m>.weight` (norm weights in lightx2v files).
    pub diff: Option<Tensor>,
    /// Full delta of `<m>.bias`.
    pub diff_b: Option<Tensor>,
    /// Full delta of `<m>.modulation` (`<m>` is `blocks.N` or `head`).
    pub diff_m: Option<Tensor>,
}

/// One LoRA file in canonical form.
#[derive(Debug, Clone)]
pub struct Lora {
    /// Where it was read from.
    pub path: PathBuf,
    /// The file format.
    pub format: LoraFormat,
    /// What it changes, by canonical module path.
    pub modules: BTreeMap<String, LoraModule>,
    /// Canonical LoRA tensor name (`<m>.lora_up.weight` …) -> the key in the file.
    pub stored: BTreeMap<String, String>,
    /// Keys of the file that name no Wan DiT module (ignored, reported as warnings).
    pub unmatched: Vec<String>,
    /// The safetensors metadata (`ss_network_dim` …).
    pub metadata: BTreeMap<String, String>,
}

/// The parts of a canonical LoRA tensor name, longest suffix first.
const PARTS: [&str; 7] = [
    ".lora_down.weight",
    ".lora_up.weight",
    ".alpha",
    ".diff_b",
    ".diff_m",
    ".diff",
    ".dora_scale",
];

impl Lora {
    /// Reads a LoRA file (safetensors or `.pth`) in any supported format.
    pub fn open(path: impl AsRef<Path>) -> Result<Lora> {
        Lora::from_checkpoint(&crate::io::open(path)?)
    }

    /// The LoRA in a checkpoint. Fails on a LoHa or LoKr file (naming the format), a file
    /// that is not a LoRA, a non-finite value, a malformed pair (rank mismatch, one matrix
    /// missing, not 2-D), a DoRA magnitude that is not one value per output row, and on a file
    /// none of whose keys names a Wan DiT module (naming the first key and, when recognisable,
    /// the architecture it was made for).
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Lora> {
        let bad = |what: String| Error::bad_file(&ckpt.path, what);
        if let Some((format, key)) = other_adapter(ckpt.tensors.keys()) {
            return Err(bad(format!(
                "a {format} file (LyCORIS, key `{key}`): wanrt applies LoRA and DoRA files \
                 only (merging {format} factors as a LoRA would change the weights wrongly)"
            )));
        }
        let c = layout::canonical_lora(ckpt)?;
        let format = c
            .detected
            .lora
            .ok_or_else(|| bad("no LoRA details".into()))?
            .format;
        let mut modules: BTreeMap<String, LoraModule> = BTreeMap::new();
        let mut pairs: BTreeMap<String, [Option<Tensor>; 2]> = BTreeMap::new();
        let mut alphas = BTreeMap::new();
        let mut doras = BTreeMap::new();
        for (name, w) in &c.weights {
            let stored = c.stored.get(name).unwrap_or(name);
            let t = w.to_f32()?;
            if let Some(v) = t.f32_data()?.iter().find(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "`{stored}` holds {v}: a LoRA must hold finite numbers"
                )));
            }
            let (module, part) = PARTS
                .iter()
                .find_map(|p| name.strip_suffix(p).map(|m| (m.to_string(), *p)))
                .ok_or_else(|| bad(format!("`{stored}`: not a canonical LoRA tensor")))?;
            let entry = modules.entry(module.clone()).or_default();
            match part {
                ".lora_down.weight" => pairs.entry(module).or_default()[0] = Some(t),
                ".lora_up.weight" => pairs.entry(module).or_default()[1] = Some(t),
                ".alpha" => {
                    alphas.insert(module, t.f32_data()?[0]);
                }
                ".diff_b" => entry.diff_b = Some(t),
                ".diff_m" => entry.diff_m = Some(t),
                ".dora_scale" => {
                    doras.insert(module, (t, stored.clone()));
                }
                _ => entry.diff = Some(t),
            }
        }
        for (module, pair) in pairs {
            let [Some(down), Some(up)] = pair else {
                return Err(bad(format!("`{module}` lacks its down or up matrix")));
            };
            let alpha = alphas.get(&module).copied();
            let out = up.dims()[0];
            let magnitude = match doras.remove(&module) {
                Some((m, _)) if matches!(m.dims(), [n] | [n, 1] if *n == out) => {
                    Some(m.reshape([out])?)
                }
                Some((m, stored)) => {
                    return Err(bad(format!(
                        "DoRA magnitude `{stored}` has shape {:?}; `{module}` has {out} output \
                         rows, so [{out}, 1] or [{out}] was expected (only the decomposition \
                         per output row is supported)",
                        m.dims()
                    )))
                }
                None => None,
            };
            let entry = modules.entry(module).or_default();
            entry.low_rank = Some(LowRank {
                down,
                up,
                alpha,
                magnitude,
            });
        }
        if modules.is_empty() {
            return Err(bad(match foreign_architecture(&c.unmatched) {
                Some((arch, key)) => format!(
                    "a LoRA for {arch} (key `{key}`), not for the Wan2.1 DiT: no key names a Wan module"
                ),
                None => format!(
                    "no key of this LoRA names a Wan2.1 DiT module (first key `{}`)",
                    c.unmatched.first().map_or("", String::as_str)
                ),
            }));
        }
        Ok(Lora {
            path: ckpt.path.clone(),
            format,
            modules,
            stored: c.stored,
            unmatched: c.unmatched,
            metadata: ckpt.metadata.clone(),
        })
    }

    /// The key in the file of the canonical LoRA tensor `name` (the name itself if unknown).
    pub fn stored_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.stored.get(name).map_or(name, String::as_str)
    }
}

/// The LyCORIS format other than LoRA (LoHa or LoKr) that a key of the file belongs to, with
/// that key.
fn other_adapter<'a>(
    keys: impl IntoIterator<Item = &'a String>,
) -> Option<(&'static str, &'a str)> {
    keys.into_iter().find_map(|k| {
        let last = k.rsplit('.').next().unwrap_or(k);
        if last.starts_with("hada_") {
            Some(("LoHa", k.as_str()))
        } else if last.starts_with("lokr_") {
            Some(("LoKr", k.as_str()))
        } else {
            None
        }
    })
}

/// The model family that keys of another architecture belong to, with the key that shows it.
fn foreign_architecture(keys: &[String]) -> Option<(&'static str, &str)> {
    const FAMILIES: [(&str, &[&str]); 2] = [
        (
            "a Stable Diffusion / SDXL UNet",
            &[
                "lora_unet_down_blocks_",
                "lora_unet_up_blocks_",
                "lora_unet_mid_block_",
                "lora_unet_input_blocks_",
                "lora_unet_output_blocks_",
                "lora_unet_middle_block_",
                "lora_te_",
                "lora_te1_",
                "lora_te2_",
                "unet.down_blocks.",
                "unet.up_blocks.",
            ],
        ),
        (
            "Flux",
            &[
                "lora_unet_double_blocks_",
                "lora_unet_single_blocks_",
                "transformer.transformer_blocks.",
                "transformer.single_transformer_blocks.",
            ],
        ),
    ];
    FAMILIES.iter().find_map(|(name, prefixes)| {
        prefixes
            .iter()
            .find_map(|p| keys.iter().find(|k| k.starts_with(p)))
            .map(|k| (*name, k.as_str()))
    })
}

/// Checks a strength of the LoRA read from `path`: any finite number (negative strengths
/// subtract a LoRA).
pub(crate) fn check_strength(path: &Path, strength: f32) -> Result<()> {
    if strength.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "strength {strength} for LoRA {}: it must be a finite number",
            path.display()
        )))
    }
}

/// Combines the low-rank pairs on one layer into one delta: the downs stacked over the rank,
/// the ups (times their scales) side by side.
fn combine(pairs: &[(&LowRank, f32)]) -> Result<LinearDelta> {
    let rank: usize = pairs.iter().map(|(p, _)| p.rank()).sum();
    let [out, inp] = [pairs[0].0.up.dims()[0], pairs[0].0.down.dims()[1]];
    let mut down = Vec::with_capacity(rank * inp);
    let mut up = vec![0f32; out * rank];
    let mut col = 0;
    for (p, scale) in pairs {
        down.extend_from_slice(p.down.f32_data()?);
        let (u, r) = (p.up.f32_data()?, p.rank());
        for o in 0..out {
            for j in 0..r {
                up[o * rank + col + j] = scale * u[o * r + j];
            }
        }
        col += r;
    }
    LinearDelta::new(
        Tensor::from_f32(down, [rank, inp])?,
        Tensor::from_f32(up, [out, rank])?,
    )
}
