//! The demo model: the real Wan2.1 architecture at a tiny width with random weights, built in
//! memory, so `wanrt generate --demo` runs the whole pipeline in seconds without a download.
//! **Its output is noise**: nothing was trained.
//!
//! - Text encoder: a 2-block UMT5 of width 32. Its tokenizer is a sentencepiece-style Unigram
//!   model (the format of google/umt5-xxl's `tokenizer.json`) whose vocabulary is only
//!   `<pad>`, `</s>`, `<unk>` and the 256 byte pieces `<0x00>`..`<0xFF>`: with byte fallback
//!   every text becomes its UTF-8 bytes, one token each (no real tokenizer file is needed;
//!   [`Umt5Tokenizer::byte_level`]).
//! - DiT: 2 blocks of width 64 (4 heads of 16), taking 32-wide text.
//! - VAE: the Wan2.1 VAE structure at base width 8.
//!
//! Weights are Gaussian (Philox, so the same seed gives the same model on every machine),
//! scaled by `1/√fan_in`; norm gains are 1.

use std::collections::BTreeMap;

use super::{ModelInfo, Pipeline};
use crate::error::Result;
use crate::io::config::{DitConfig, ModelType, T5Config, VaeConfig};
use crate::model::dit::WanDit;
use crate::model::t5::{self, TextEncoder, Umt5Encoder, Umt5Tokenizer};
use crate::model::vae::{self, WanVae};
use crate::sampler::{fill_normal, Stream};
use crate::tensor::{Tensor, Weight};

/// The demo text encoder's width (the DiT's text input).
const TEXT_DIM: usize = 32;

/// Random weights: consecutive stretches of one seeded Gaussian stream.
struct Builder {
    seed: u64,
    offset: u64,
    map: BTreeMap<String, Weight>,
}

impl Builder {
    fn new(seed: u64) -> Builder {
        Builder {
            seed,
            offset: 0,
            map: BTreeMap::new(),
        }
    }

    /// A Gaussian tensor times `scale`.
    fn normal(&mut self, name: String, dims: &[usize], scale: f32) -> Result<()> {
        let mut v = vec![0f32; dims.iter().product()];
        fill_normal(self.seed, Stream::Latent, self.offset, &mut v);
        self.offset += v.len() as u64;
        v.iter_mut().for_each(|x| *x *= scale);
        self.map
            .insert(name, Weight::new(Tensor::from_f32(v, dims)?));
        Ok(())
    }

    /// A weight scaled by its fan-in (every dim but the first).
    fn weight(&mut self, name: String, dims: &[usize]) -> Result<()> {
        let fan_in = dims[1..].iter().product::<usize>().max(1) as f32;
        self.normal(name, dims, fan_in.sqrt().recip())
    }

    fn ones(&mut self, name: String, dims: &[usize]) -> Result<()> {
        let t = Tensor::from_f32(vec![1.0; dims.iter().product()], dims)?;
        self.map.insert(name, Weight::new(t));
        Ok(())
    }

    /// Every tensor of `shapes`, in order: norm gains (`gamma`s, 1-D `norm` weights) 1, the
    /// token embedding unit Gaussian, position tables 0.1, biases 0.02, other weights scaled by
    /// their fan-in.
    fn from_shapes(seed: u64, shapes: Vec<(String, Vec<usize>)>) -> Result<Builder> {
        let mut b = Builder::new(seed);
        for (name, dims) in shapes {
            if name.ends_with("gamma") || (name.contains("norm") && dims.len() == 1) {
                b.ones(name, &dims)?;
            } else if name == "token_embedding.weight" {
                b.normal(name, &dims, 1.0)?;
            } else if name.contains("pos_embedding") {
                b.normal(name, &dims, 0.1)?;
            } else if name.ends_with(".bias") {
                b.normal(name, &dims, 0.02)?;
            } else {
                b.weight(name, &dims)?;
            }
        }
        Ok(b)
    }

    /// `{p}.weight` (fan-in scaled) and a small `{p}.bias`.
    fn layer(&mut self, p: &str, dims: &[usize]) -> Result<()> {
        self.weight(format!("{p}.weight"), dims)?;
        self.normal(format!("{p}.bias"), &[dims[0]], 0.02)
    }
}

fn t5(tokenizer: Umt5Tokenizer, seed: u64) -> Result<TextEncoder> {
    let cfg = T5Config {
        vocab: tokenizer.vocab_size(),
        dim: TEXT_DIM,
        dim_attn: TEXT_DIM,
        dim_ffn: 2 * TEXT_DIM,
        num_heads: 4,
        num_layers: 2,
        ..T5Config::default()
    };
    let b = Builder::from_shapes(seed, t5::weight_shapes(&cfg))?;
    TextEncoder::new(tokenizer, Umt5Encoder::new(b.map, cfg)?)
}

fn dit(seed: u64) -> Result<WanDit> {
    let cfg = DitConfig {
        model_type: ModelType::T2v,
        dim: 64,
        ffn_dim: 128,
        num_heads: 4,
        num_layers: 2,
        in_dim: 16,
        out_dim: 16,
        text_dim: TEXT_DIM,
        freq_dim: 256,
        text_len: 512,
        eps: 1e-6,
        patch_size: [1, 2, 2],
    };
    let (d, p) = (cfg.dim, cfg.patch_size);
    let mut b = Builder::new(seed);
    b.layer("patch_embedding", &[d, cfg.in_dim, p[0], p[1], p[2]])?;
    b.layer("text_embedding.0", &[d, cfg.text_dim])?;
    b.layer("text_embedding.2", &[d, d])?;
    b.layer("time_embedding.0", &[d, cfg.freq_dim])?;
    b.layer("time_embedding.2", &[d, d])?;
    b.layer("time_projection.1", &[6 * d, d])?;
    for i in 0..cfg.num_layers {
        let bp = format!("blocks.{i}");
        for a in ["self_attn", "cross_attn"] {
            for m in ["q", "k", "v", "o"] {
                b.layer(&format!("{bp}.{a}.{m}"), &[d, d])?;
            }
            b.ones(format!("{bp}.{a}.norm_q.weight"), &[d])?;
            b.ones(format!("{bp}.{a}.norm_k.weight"), &[d])?;
        }
        b.layer(&format!("{bp}.ffn.0"), &[cfg.ffn_dim, d])?;
        b.layer(&format!("{bp}.ffn.2"), &[d, cfg.ffn_dim])?;
        b.layer(&format!("{bp}.norm3"), &[d])?;
        b.normal(format!("{bp}.modulation"), &[1, 6, d], 0.1)?;
    }
    b.normal("head.modulation".into(), &[1, 2, d], 0.1)?;
    b.layer("head.head", &[p.iter().product::<usize>() * cfg.out_dim, d])?;
    WanDit::new(b.map, cfg)
}

fn vae(seed: u64) -> Result<WanVae> {
    let cfg = VaeConfig {
        dim: 8,
        ..VaeConfig::default()
    };
    let b = Builder::from_shapes(seed, vae::weight_shapes(&cfg))?;
    WanVae::new(b.map, cfg)
}

impl Pipeline {
    /// The demo pipeline (`wanrt generate --demo`): the real architectures at a tiny width
    /// (2-block UMT5 and DiT, a VAE of base width 8) with random weights, built in memory, and
    /// a byte-level tokenizer; the same `seed` gives the same models. **Its videos are noise.**
    pub fn demo(seed: u64) -> Result<Pipeline> {
        let start = std::time::Instant::now();
        let text = t5(Umt5Tokenizer::byte_level()?, seed)?;
        let mut p = Pipeline::from_models(text, dit(seed ^ 1)?, vae(seed ^ 2)?)?;
        p.info = ModelInfo {
            demo: true,
            load_seconds: start.elapsed().as_secs_f64(),
            ..ModelInfo::default()
        };
        Ok(p)
    }
}
