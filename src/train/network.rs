//! The trainable LoRA network over the DiT (musubi-tuner's `networks/lora.py`,
//! lora-guidance-training.md §4.3): a low-rank pair on every linear of every block
//! ([`BLOCK_LINEARS`](crate::model::dit::BLOCK_LINEARS): self- and cross-attention q, k, v, o
//! and ffn.0, ffn.2), saved in musubi's format.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::safetensors;
use crate::lora::Lora;
use crate::model::dit::{Adapters, DitConfig, TrainableDelta, BLOCK_LINEARS as TARGETS};
use crate::tensor::{random, Tensor};

/// One module's trainable pair (f32).
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `[rank, in]`.
    pub down: Tensor,
    /// `[out, rank]`.
    pub up: Tensor,
}

/// A LoRA network of one rank and alpha over every block linear of a DiT.
#[derive(Debug, Clone)]
pub struct LoraNetwork {
    rank: usize,
    alpha: f32,
    /// By canonical module path (`blocks.0.self_attn.q`).
    modules: BTreeMap<String, LoraPair>,
}

/// musubi's key prefix of a canonical module path: `blocks.0.ffn.2` -> `lora_unet_blocks_0_ffn_2`.
pub fn musubi_name(module: &str) -> String {
    format!("lora_unet_{}", module.replace('.', "_"))
}

impl LoraNetwork {
    /// A fresh network for `cfg`: every `down` drawn Kaiming-uniform (`a = √5`, i.e.
    /// `U(−1/√in, 1/√in)`) from `seed`, every `up` zero. `alpha` 0 means `alpha = rank`.
    pub fn new(cfg: &DitConfig, rank: usize, alpha: f32, seed: u32) -> Result<LoraNetwork> {
        if rank == 0 || !alpha.is_finite() || alpha < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "network_dim {rank} and network_alpha {alpha}: the rank must be positive and alpha finite and >= 0"
            )));
        }
        let mut modules = BTreeMap::new();
        for i in 0..cfg.num_layers {
            for (j, t) in TARGETS.iter().enumerate() {
                let (out, inp) = match *t {
                    "ffn.0" => (cfg.ffn_dim, cfg.dim),
                    "ffn.2" => (cfg.dim, cfg.ffn_dim),
                    _ => (cfg.dim, cfg.dim),
                };
                let bound = 1.0 / (inp as f32).sqrt();
                let stream =
                    seed.wrapping_add(((i * TARGETS.len() + j) as u32).wrapping_mul(0x9E37_79B9));
                let down = random::tensor(&[rank, inp], stream, 0.0, bound)?;
                let up = Tensor::from_f32(vec![0.0; out * rank], [out, rank])?;
                modules.insert(format!("blocks.{i}.{t}"), LoraPair { down, up });
            }
        }
        Ok(LoraNetwork {
            rank,
            alpha,
            modules,
        })
    }

    /// The network held in a LoRA file (to continue training it): every module must be a
    /// low-rank pair of one rank on a block linear, with one alpha (or none, meaning the rank).
    pub fn from_lora(lora: &Lora) -> Result<LoraNetwork> {
        let bad = |what: String| Error::bad_file(&lora.path, what);
        let (mut rank, mut alpha) = (None, None);
        let mut modules = BTreeMap::new();
        for (name, m) in &lora.modules {
            let lr = m
                .low_rank
                .as_ref()
                .filter(|_| m.diff.is_none() && m.diff_b.is_none() && m.diff_m.is_none());
            let target = name
                .strip_prefix("blocks.")
                .and_then(|r| r.split_once('.'))
                .is_some_and(|(i, t)| i.parse::<usize>().is_ok() && TARGETS.contains(&t));
            let Some(lr) = lr.filter(|_| target) else {
                return Err(bad(format!(
                    "`{name}` is not a low-rank pair on a block linear: only such networks can be trained"
                )));
            };
            let a = lr.alpha.filter(|&a| a != 0.0).unwrap_or(lr.rank() as f32);
            if *rank.get_or_insert(lr.rank()) != lr.rank() || *alpha.get_or_insert(a) != a {
                return Err(bad(format!(
                    "`{name}` has rank {} and alpha {a}, unlike the other modules",
                    lr.rank()
                )));
            }
            let pair = LoraPair {
                down: lr.down.clone(),
                up: lr.up.clone(),
            };
            modules.insert(name.clone(), pair);
        }
        Ok(LoraNetwork {
            rank: rank.unwrap_or(1),
            alpha: alpha.unwrap_or(1.0),
            modules,
        })
    }

    /// The rank (`network_dim`).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// `network_alpha` (0 stands for the rank).
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// The multiplier of every module's output: `alpha / rank` (1 when alpha is 0).
    pub fn scale(&self) -> f32 {
        if self.alpha == 0.0 {
            1.0
        } else {
            self.alpha / self.rank as f32
        }
    }

    /// The pairs by canonical module path.
    pub fn modules(&self) -> &BTreeMap<String, LoraPair> {
        &self.modules
    }

    /// The pairs, to update them (an optimizer step). Shapes must not change.
    pub fn modules_mut(&mut self) -> impl Iterator<Item = (&String, &mut LoraPair)> {
        self.modules.iter_mut()
    }

    /// The network as the DiT's trainable adapters.
    pub fn adapters(&self) -> Adapters {
        let scale = self.scale();
        self.modules
            .iter()
            .map(|(name, p)| {
                let d = TrainableDelta {
                    down: p.down.clone(),
                    up: p.up.clone(),
                    scale,
                };
                (name.clone(), d)
            })
            .collect()
    }

    /// Writes the network atomically in musubi's format: `lora_unet_…​.lora_down.weight`,
    /// `.lora_up.weight` and `.alpha` (f32) per module, with `ss_network_module`,
    /// `ss_network_dim`, `ss_network_alpha` and the entries of `metadata` (other `ss_*` keys).
    pub fn save(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        let alpha = Tensor::from_f32(vec![self.alpha], &[] as &[usize])?;
        let mut named: Vec<(String, &Tensor)> = Vec::new();
        for (name, p) in &self.modules {
            let m = musubi_name(name);
            named.push((format!("{m}.lora_down.weight"), &p.down));
            named.push((format!("{m}.lora_up.weight"), &p.up));
            named.push((format!("{m}.alpha"), &alpha));
        }
        let mut meta = metadata.clone();
        meta.insert("ss_network_module".into(), "networks.lora_wan".into());
        meta.insert("ss_network_dim".into(), self.rank.to_string());
        meta.insert("ss_network_alpha".into(), format!("{:?}", self.alpha));
        let tensors: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        safetensors::write_file(path, &tensors, &meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dit::tests::tiny;

    #[test]
    fn fresh_network_is_kaiming_down_and_zero_up_and_round_trips_through_musubi_files() {
        let net = LoraNetwork::new(&tiny(2), 4, 1.0, 7).unwrap();
        assert_eq!(net.modules().len(), 20);
        assert_eq!(net.scale(), 0.25);
        let ffn2 = &net.modules()["blocks.1.ffn.2"];
        assert_eq!(
            (ffn2.down.dims(), ffn2.up.dims()),
            (&[4, 40][..], &[16, 4][..])
        );
        let bound = 1.0 / 40f32.sqrt();
        let down = ffn2.down.to_f32_vec().unwrap();
        assert!(
            down.iter().all(|v| v.abs() <= bound) && down.iter().any(|v| v.abs() > bound / 2.0)
        );
        assert!(ffn2.up.to_f32_vec().unwrap().iter().all(|&v| v == 0.0));
        let q0 = net.modules()["blocks.0.self_attn.q"]
            .down
            .to_f32_vec()
            .unwrap();
        let q1 = net.modules()["blocks.1.self_attn.q"]
            .down
            .to_f32_vec()
            .unwrap();
        assert_ne!(q0, q1, "every module draws its own values");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.safetensors");
        net.save(&path, &BTreeMap::new()).unwrap();
        let ckpt = crate::io::open(&path).unwrap();
        assert_eq!(ckpt.metadata["ss_network_dim"], "4");
        assert_eq!(ckpt.metadata["ss_network_alpha"], "1.0");
        let lora = Lora::open(&path).unwrap();
        assert_eq!(
            lora.stored_name("blocks.1.ffn.2.lora_up.weight"),
            "lora_unet_blocks_1_ffn_2.lora_up.weight"
        );
        let back = LoraNetwork::from_lora(&lora).unwrap();
        assert_eq!((back.rank(), back.alpha()), (4, 1.0));
        for (name, p) in net.modules() {
            let q = &back.modules()[name];
            assert_eq!(p.down.to_f32_vec().unwrap(), q.down.to_f32_vec().unwrap());
            assert_eq!(p.up.to_f32_vec().unwrap(), q.up.to_f32_vec().unwrap());
        }
        assert!(LoraNetwork::new(&tiny(2), 0, 1.0, 7).is_err());
    }
}
