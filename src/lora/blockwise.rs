//! LoRAs merged one part of the DiT at a time, as the CUDA merge does
//! ([`crate::lora::DeviceMerge`]) so that the device holds at most one block's extra copies: the
//! changed parameters grouped by transformer block in block order, then those outside the
//! blocks; and per part the bytes its merge brings to the device ([`LoraMergeBytes`]), which
//! the device memory plan counts.

#[cfg(any(test, feature = "cuda"))]
use super::apply::TargetChanges;
#[cfg(any(test, feature = "cuda"))]
use super::Change;
use crate::io::config::DitConfig;
use crate::tensor::DType;
#[cfg(any(test, feature = "cuda"))]
use crate::tensor::Weight;
#[cfg(any(test, feature = "cuda"))]
use std::collections::BTreeMap;

const F32: u64 = 4;

/// The transformer block a canonical parameter name belongs to (`blocks.N.…`); `None` for the
/// parameters outside the blocks.
#[cfg(any(test, feature = "cuda"))]
pub(crate) fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Targets grouped by part of the model: each block's in block order (by number, not by name:
/// block 2 before block 10), then those outside the blocks (`None`); each group keeps the
/// targets' order.
#[cfg(any(test, feature = "cuda"))]
pub(crate) type Groups<'p, 'a> = Vec<(Option<usize>, Vec<TargetChanges<'p, 'a>>)>;

/// Groups `targets` as [`Groups`] says.
#[cfg(any(test, feature = "cuda"))]
pub(crate) fn by_block<'p, 'a>(targets: Vec<TargetChanges<'p, 'a>>) -> Groups<'p, 'a> {
    let mut groups: BTreeMap<(bool, usize), Vec<TargetChanges<'p, 'a>>> = BTreeMap::new();
    for t in targets {
        let block = block_of(t.0);
        groups
            .entry((block.is_none(), block.unwrap_or(0)))
            .or_default()
            .push(t);
    }
    groups
        .into_iter()
        .map(|((outside, b), ts)| ((!outside).then_some(b), ts))
        .collect()
}

/// Where a merge reads the pristine weights from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pristine {
    /// The model's own parameters, which still hold them (the first merge, at load): each
    /// merged in place over its own bytes; only a parameter the model keeps in another dtype
    /// (the modulations, widened to f32) is copied in from the host.
    InModel,
    /// The host's copies, copied in one part at a time (a re-merge at new strengths).
    Host,
}

/// The device bytes of merging LoRAs one part of the DiT at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraMergeBytes {
    /// Per transformer block: the bytes of the pristine weights the LoRAs change in it, as
    /// stored (copied in for the block's re-merge), and of the LoRAs' factors and full deltas
    /// on it (f32, copied in beside them).
    pub blocks: Vec<[u64; 2]>,
    /// The same for the parameters outside the blocks.
    pub other: [u64; 2],
}

impl LoraMergeBytes {
    /// The bytes of merging `groups` (from [`by_block`]) into `weights` (the pristine ones).
    #[cfg(any(test, feature = "cuda"))]
    pub(crate) fn of(
        weights: &BTreeMap<String, Weight>,
        groups: &Groups<'_, '_>,
    ) -> LoraMergeBytes {
        let mut bytes = LoraMergeBytes::default();
        for (block, targets) in groups {
            let mut sum = [0u64; 2];
            for (name, changes) in targets {
                let w = &weights[*name];
                sum[0] += (w.tensor.elem_count() * w.dtype().size_in_bytes()) as u64;
                for (_, c) in changes {
                    let values = match c {
                        Change::Pair(p) => p.up.elem_count() + p.down.elem_count(),
                        Change::Full(t) => t.elem_count(),
                    };
                    sum[1] += values as u64 * F32;
                }
            }
            match block {
                Some(b) => {
                    if bytes.blocks.len() <= *b {
                        bytes.blocks.resize(b + 1, [0, 0]);
                    }
                    bytes.blocks[*b] = sum;
                }
                None => bytes.other = sum,
            }
        }
        bytes
    }

    /// An estimate for LoRAs of `ranks`, each with a low-rank pair on every linear layer of
    /// every block of a DiT of `cfg` whose block linear weights are stored as `linear` (what
    /// style and step-distill LoRAs change: rank 16 to 128 pairs on every block linear; their
    /// small full deltas on biases and norms are left out).
    pub fn estimate(cfg: &DitConfig, linear: DType, ranks: &[usize]) -> LoraMergeBytes {
        let (d, f) = (cfg.dim as u64, cfg.ffn_dim as u64);
        let weights = (8 * d * d + 2 * d * f) * linear.size_in_bytes() as u64;
        // Per unit of rank: eight d×d layers (up and down d each), ffn.0 and ffn.2 (d + f).
        let rank: u64 = ranks.iter().map(|&r| r as u64).sum();
        let factors = rank * (8 * 2 * d + 2 * (d + f)) * F32;
        LoraMergeBytes {
            blocks: vec![[weights, factors]; cfg.num_layers],
            other: [0, 0],
        }
    }

    /// Whether there is nothing to merge.
    pub fn is_empty(&self) -> bool {
        self.blocks
            .iter()
            .chain([&self.other])
            .all(|b| *b == [0, 0])
    }

    /// The device bytes a merge adds to the model's own while it merges, with the last `swap`
    /// of the DiT's blocks swapped (`blocks`: each block's bytes as stored): the most over the
    /// parts of its pristine weights and factors, a swapped block's own bytes added (it is
    /// copied in for its merge, then back to pinned host memory).
    pub fn extra(&self, blocks: &[u64], swap: usize) -> u64 {
        let first_swapped = blocks.len().saturating_sub(swap);
        let per_block = self.blocks.iter().enumerate().map(|(i, [w, f])| {
            let copied_in = if i >= first_swapped {
                blocks.get(i).copied().unwrap_or(0)
            } else {
                0
            };
            w + f + copied_in
        });
        per_block
            .chain([self.other[0] + self.other[1]])
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lora::kernel_emulation::merge_as_kernel;
    use crate::lora::kernel_emulation::tests::weight;
    use crate::lora::{Lora, LoraModule, LowRank, MergePlan, StoreAs};
    use crate::model::dit::tests::tiny;
    use crate::model::dit::{weight_shapes, WanDit};
    use crate::tensor::{random, Tensor};

    /// A LoRA on the tiny DiT: a pair on `ffn.0` of blocks 0, 2 and 10 and on `head.head`,
    /// a bias delta on block 2's `self_attn.o` and a modulation delta on block 10.
    pub(crate) fn lora(cfg: &DitConfig, rank: usize, seed: u32) -> Lora {
        let f32s = |n: usize, s: u32| -> Vec<f32> {
            random::values(n, s).into_iter().map(|u| 0.3 * u).collect()
        };
        let pair = |out: usize, inp: usize, s: u32| LoraModule {
            low_rank: Some(LowRank {
                down: Tensor::from_f32(f32s(rank * inp, s), [rank, inp]).unwrap(),
                up: Tensor::from_f32(f32s(out * rank, s + 1), [out, rank]).unwrap(),
                alpha: Some(rank as f32 / 2.0),
                magnitude: None,
            }),
            ..Default::default()
        };
        let (d, f) = (cfg.dim, cfg.ffn_dim);
        let mut modules = BTreeMap::new();
        for b in [0, 2, 10] {
            modules.insert(format!("blocks.{b}.ffn.0"), pair(f, d, seed + b as u32));
        }
        modules.insert("head.head".into(), pair(4 * cfg.out_dim, d, seed + 20));
        modules.insert(
            "blocks.2.self_attn.o".into(),
            LoraModule {
                diff_b: Some(Tensor::from_f32(f32s(d, seed + 30), [d]).unwrap()),
                ..Default::default()
            },
        );
        modules.insert(
            "blocks.10".into(),
            LoraModule {
                diff_m: Some(Tensor::from_f32(f32s(6 * d, seed + 40), [1, 6, d]).unwrap()),
                ..Default::default()
            },
        );
        Lora {
            path: format!("blockwise-{seed}.safetensors").into(),
            format: crate::io::layout::LoraFormat::Musubi,
            modules,
            stored: BTreeMap::new(),
            unmatched: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// The tiny DiT's weights: the linear weights in `dtype`, the rest bf16.
    pub(crate) fn weights(cfg: &DitConfig, dtype: DType) -> BTreeMap<String, Weight> {
        weight_shapes(cfg)
            .into_iter()
            .enumerate()
            .map(|(i, (name, dims))| {
                let d = if dims.len() == 2 { dtype } else { DType::BF16 };
                let w = weight(&dims, d, None, 100 + i as u32);
                (name, w)
            })
            .collect()
    }

    #[test]
    fn targets_are_grouped_by_block_in_block_order_then_the_rest() {
        let cfg = tiny(11);
        let w = weights(&cfg, DType::F8E4M3);
        let (a, b) = (lora(&cfg, 4, 1), lora(&cfg, 8, 50));
        let plan = MergePlan::new(&w, &[(&a, 1.0), (&b, 0.5)], StoreAs::Same).unwrap();
        let groups = by_block(plan.changes().unwrap());
        let parts: Vec<Option<usize>> = groups.iter().map(|(b, _)| *b).collect();
        assert_eq!(parts, vec![Some(0), Some(2), Some(10), None]);
        let names = |g: usize| -> Vec<&str> { groups[g].1.iter().map(|t| t.0).collect() };
        assert_eq!(names(0), ["blocks.0.ffn.0.weight"]);
        assert_eq!(
            names(1),
            ["blocks.2.ffn.0.weight", "blocks.2.self_attn.o.bias"]
        );
        assert_eq!(names(2), ["blocks.10.ffn.0.weight", "blocks.10.modulation"]);
        assert_eq!(names(3), ["head.head.weight"]);
        // Both LoRAs' changes, in LoRA order, on each target.
        assert!(groups
            .iter()
            .flat_map(|(_, ts)| ts)
            .all(|(_, changes)| changes.iter().map(|c| c.0).eq([0, 1])));

        // The bytes each part brings to the device: the fp8 ffn.0 weight and both pairs.
        let bytes = LoraMergeBytes::of(&w, &groups);
        let (d, f) = (cfg.dim as u64, cfg.ffn_dim as u64);
        let pairs = (4 + 8) * (d + f) * F32;
        assert_eq!(bytes.blocks.len(), 11);
        assert_eq!(bytes.blocks[0], [f * d, pairs]);
        assert_eq!(bytes.blocks[1], [0, 0]);
        assert_eq!(bytes.blocks[2], [f * d + 2 * d, pairs + 2 * d * F32]);
        assert_eq!(
            bytes.blocks[10],
            [f * d + 2 * 6 * d, pairs + 2 * 6 * d * F32]
        );
        let head = 16 * d;
        assert_eq!(bytes.other, [head, (4 + 8) * (16 + d) * F32]);
        assert!(!bytes.is_empty() && LoraMergeBytes::default().is_empty());
        // Resident, the largest part's copies; a swapped block adds its own bytes.
        let block_bytes = vec![1000; 11];
        let largest = bytes.blocks[10][0] + bytes.blocks[10][1];
        assert_eq!(bytes.extra(&block_bytes, 0), largest);
        assert_eq!(bytes.extra(&block_bytes, 1), largest + 1000);
        assert_eq!(bytes.extra(&block_bytes, 9), largest + 1000);
        // The estimate of the same pairs on every block linear counts the ffn.0 pair alike.
        let e = LoraMergeBytes::estimate(&cfg, DType::F8E4M3, &[4, 8]);
        assert_eq!(e.blocks.len(), 11);
        assert_eq!(e.blocks[0][0], 8 * d * d + 2 * d * f);
        assert_eq!(e.blocks[0][1], 12 * 16 * d * F32 + 2 * pairs);
    }

    /// Merging part by part through [`WanDit::update_params`] (as the CUDA merge does, here
    /// with its emulated arithmetic) gives the model built from the whole merge: every target
    /// is found in its part by name, the modulation in the f32 table the model keeps.
    #[test]
    fn a_merge_part_by_part_is_the_whole_merge() {
        let cfg = tiny(11);
        let w = weights(&cfg, DType::BF16);
        let (a, b) = (lora(&cfg, 4, 1), lora(&cfg, 8, 50));
        let strengths = [0.8, -1.5];
        let loras = [(&a, strengths[0]), (&b, strengths[1])];
        let plan = MergePlan::new(&w, &loras, StoreAs::Same).unwrap();
        let merged = merge_as_kernel(&plan, &w, &strengths).unwrap();
        let mut whole = w.clone();
        whole.extend(merged.clone());
        let mut whole = WanDit::new(whole, cfg.clone()).unwrap();

        let mut dit = WanDit::new(w.clone(), cfg.clone()).unwrap();
        let mut seen = Vec::new();
        for (part, targets) in by_block(plan.changes().unwrap()) {
            dit.update_params(part, &mut |params| {
                for (name, _) in &targets {
                    let (_, p) = params.iter_mut().find(|(n, _)| n == name).unwrap();
                    let m = &merged[*name];
                    p.tensor = m.tensor.to_dtype(p.dtype())?;
                    seen.push(name.to_string());
                }
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(seen.len(), merged.len());
        let all = every_param;
        let (got, want) = (all(&mut dit), all(&mut whole));
        assert_eq!(got.len(), w.len());
        assert_eq!(got, want);
        let base = all(&mut WanDit::new(w, cfg.clone()).unwrap());
        for name in [
            "blocks.10.modulation",
            "head.head.weight",
            "blocks.2.self_attn.o.bias",
        ] {
            assert_ne!(got[name], base[name], "{name}");
        }
    }

    /// Every parameter of `dit` by name: its stored bytes (copied to the host) and scale.
    pub(crate) fn every_param(dit: &mut WanDit) -> BTreeMap<String, (Vec<u8>, Option<f32>)> {
        let mut out = BTreeMap::new();
        let parts = (0..dit.config().num_layers).map(Some).chain([None]);
        for part in parts.collect::<Vec<_>>() {
            dit.update_params(part, &mut |params| {
                for (n, p) in params.iter() {
                    let host = p.tensor.to_device(crate::backend::Device::Cpu)?;
                    out.insert(n.clone(), (host.raw_bytes()?.to_vec(), p.scale));
                }
                Ok(())
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn an_update_keeps_dtypes_and_shapes() {
        let cfg = tiny(2);
        let mut dit = WanDit::new(weights(&cfg, DType::BF16), cfg).unwrap();
        let e = dit
            .update_params(Some(1), &mut |params| {
                let (_, p) = params
                    .iter_mut()
                    .find(|(n, _)| n == "blocks.1.ffn.2.weight")
                    .unwrap();
                p.tensor = p.tensor.to_dtype(DType::F32)?;
                Ok(())
            })
            .unwrap_err();
        assert!(e.to_string().contains("blocks.1.ffn.2.weight"), "{e}");
        assert!(dit.update_params(Some(2), &mut |_| Ok(())).is_err());
    }
}
