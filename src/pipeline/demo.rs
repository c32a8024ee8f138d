//! The demo model: the real Wan2.1 architecture at a tiny width with random weights, built in
//! memory, so `wanrt generate --demo` runs the whole pipeline in seconds without a download.
//! **Its output is noise**: nothing was trained.
//!
//! - Text encoder: a 2-block UMT5 of width 32. Its tokenizer is a sentencepiece-style Unigram
//!   model (the format of google/umt5-xxl's `tokenizer.json`) whose vocabulary is only
//!   `<pad>`, `</s>`, `<unk>` and the 256 byte pieces `<0x00>`..`<0xFF>`: with byte fallback
//!   every text becomes its UTF-8 bytes, one token each (no real tokenizer file is needed).
//! - DiT: 2 blocks of width 64 (4 heads of 16), taking 32-wide text.
//! - VAE: the Wan2.1 VAE structure at base width 8.
//!
//! Weights are Gaussian (Philox, so the same seed gives the same model on every machine),
//! scaled by `1/√fan_in`; norm gains are 1.

use std::collections::BTreeMap;

use tokenizers::models::unigram::Unigram;
use tokenizers::pre_tokenizers::metaspace::Metaspace;
use tokenizers::Tokenizer;

use super::{ModelInfo, Pipeline};
use crate::error::{Error, Result};
use crate::io::config::{DitConfig, ModelType, T5Config, VaeConfig};
use crate::model::dit::WanDit;
use crate::model::t5::{TextEncoder, Umt5Encoder, Umt5Tokenizer};
use crate::model::vae::WanVae;
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

    /// `{p}.weight` (fan-in scaled) and a small `{p}.bias`.
    fn layer(&mut self, p: &str, dims: &[usize]) -> Result<()> {
        self.weight(format!("{p}.weight"), dims)?;
        self.normal(format!("{p}.bias"), &[dims[0]], 0.02)
    }
}

/// A Unigram tokenizer.json with byte fallback and no other pieces (see the module docs).
pub(super) fn byte_tokenizer() -> Result<Umt5Tokenizer> {
    let mut vocab: Vec<(String, f64)> = ["<pad>", "</s>", "<unk>"]
        .iter()
        .map(|t| (t.to_string(), 0.0))
        .collect();
    vocab.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), -1.0)));
    let err = |e: tokenizers::Error| Error::InvalidArgument(format!("demo tokenizer: {e}"));
    let model = Unigram::from(vocab, Some(2), true).map_err(err)?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Metaspace::default()));
    let json = tok.to_string(false).map_err(err)?;
    Umt5Tokenizer::from_bytes(json.as_bytes(), "<demo byte tokenizer>")
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
    let mut b = Builder::new(seed);
    let (d, f) = (cfg.dim, cfg.dim_ffn);
    b.normal("token_embedding.weight".into(), &[cfg.vocab, d], 1.0)?;
    for i in 0..cfg.num_layers {
        let p = format!("blocks.{i}");
        b.ones(format!("{p}.norm1.weight"), &[d])?;
        b.ones(format!("{p}.norm2.weight"), &[d])?;
        for m in ["q", "k", "v"] {
            b.weight(format!("{p}.attn.{m}.weight"), &[cfg.dim_attn, d])?;
        }
        b.weight(format!("{p}.attn.o.weight"), &[d, cfg.dim_attn])?;
        b.normal(
            format!("{p}.pos_embedding.embedding.weight"),
            &[cfg.num_buckets, cfg.num_heads],
            0.1,
        )?;
        b.weight(format!("{p}.ffn.gate.0.weight"), &[f, d])?;
        b.weight(format!("{p}.ffn.fc1.weight"), &[f, d])?;
        b.weight(format!("{p}.ffn.fc2.weight"), &[d, f])?;
    }
    b.ones("norm.weight".into(), &[d])?;
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

/// The VAE's residual block `{p}`.
fn vae_res(b: &mut Builder, p: &str, cin: usize, cout: usize) -> Result<()> {
    b.ones(format!("{p}.residual.0.gamma"), &[cin, 1, 1, 1])?;
    b.layer(&format!("{p}.residual.2"), &[cout, cin, 3, 3, 3])?;
    b.ones(format!("{p}.residual.3.gamma"), &[cout, 1, 1, 1])?;
    b.layer(&format!("{p}.residual.6"), &[cout, cout, 3, 3, 3])?;
    if cin != cout {
        b.layer(&format!("{p}.shortcut"), &[cout, cin, 1, 1, 1])?;
    }
    Ok(())
}

/// The VAE's middle (residual, attention, residual) and head of `side`.
fn vae_middle_head(b: &mut Builder, side: &str, c: usize, out: usize) -> Result<()> {
    vae_res(b, &format!("{side}.middle.0"), c, c)?;
    b.ones(format!("{side}.middle.1.norm.gamma"), &[c, 1, 1])?;
    b.layer(&format!("{side}.middle.1.to_qkv"), &[3 * c, c, 1, 1])?;
    b.layer(&format!("{side}.middle.1.proj"), &[c, c, 1, 1])?;
    vae_res(b, &format!("{side}.middle.2"), c, c)?;
    b.ones(format!("{side}.head.0.gamma"), &[c, 1, 1, 1])?;
    b.layer(&format!("{side}.head.2"), &[out, c, 3, 3, 3])
}

fn vae(seed: u64) -> Result<WanVae> {
    let cfg = VaeConfig {
        dim: 8,
        ..VaeConfig::default()
    };
    let (stages, z) = (cfg.dim_mult.len(), cfg.z_dim);
    let mut b = Builder::new(seed);
    // Encoder (wan-architecture.md §2.3).
    let enc: Vec<usize> = std::iter::once(1)
        .chain(cfg.dim_mult.iter().copied())
        .map(|m| m * cfg.dim)
        .collect();
    b.layer("encoder.conv1", &[enc[0], 3, 3, 3, 3])?;
    let mut k = 0;
    for i in 0..stages {
        let mut cin = enc[i];
        for _ in 0..cfg.num_res_blocks {
            vae_res(&mut b, &format!("encoder.downsamples.{k}"), cin, enc[i + 1])?;
            cin = enc[i + 1];
            k += 1;
        }
        if i + 1 < stages {
            let p = format!("encoder.downsamples.{k}");
            b.layer(&format!("{p}.resample.1"), &[cin, cin, 3, 3])?;
            if cfg.temperal_downsample[i] {
                b.layer(&format!("{p}.time_conv"), &[cin, cin, 3, 1, 1])?;
            }
            k += 1;
        }
    }
    vae_middle_head(&mut b, "encoder", enc[stages], 2 * z)?;
    b.layer("conv1", &[2 * z, 2 * z, 1, 1, 1])?;
    // Decoder (§2.4).
    let dec: Vec<usize> = std::iter::once(cfg.dim_mult[stages - 1])
        .chain(cfg.dim_mult.iter().rev().copied())
        .map(|m| m * cfg.dim)
        .collect();
    b.layer("conv2", &[z, z, 1, 1, 1])?;
    b.layer("decoder.conv1", &[dec[0], z, 3, 3, 3])?;
    vae_res(&mut b, "decoder.middle.0", dec[0], dec[0])?;
    b.ones("decoder.middle.1.norm.gamma".into(), &[dec[0], 1, 1])?;
    b.layer("decoder.middle.1.to_qkv", &[3 * dec[0], dec[0], 1, 1])?;
    b.layer("decoder.middle.1.proj", &[dec[0], dec[0], 1, 1])?;
    vae_res(&mut b, "decoder.middle.2", dec[0], dec[0])?;
    let (mut cin, mut k) = (dec[0], 0);
    for i in 0..stages {
        let cout = dec[i + 1];
        for _ in 0..=cfg.num_res_blocks {
            vae_res(&mut b, &format!("decoder.upsamples.{k}"), cin, cout)?;
            cin = cout;
            k += 1;
        }
        if i + 1 < stages {
            let p = format!("decoder.upsamples.{k}");
            if cfg.temperal_downsample[stages - 2 - i] {
                b.layer(&format!("{p}.time_conv"), &[2 * cout, cout, 3, 1, 1])?;
            }
            b.layer(&format!("{p}.resample.1"), &[cout / 2, cout, 3, 3])?;
            cin = cout / 2;
            k += 1;
        }
    }
    b.ones("decoder.head.0.gamma".into(), &[cin, 1, 1, 1])?;
    b.layer("decoder.head.2", &[3, cin, 3, 3, 3])?;
    WanVae::new(b.map, cfg)
}

impl Pipeline {
    /// The demo pipeline (`wanrt generate --demo`): the real architectures at a tiny width
    /// (2-block UMT5 and DiT, a VAE of base width 8) with random weights, built in memory, and
    /// a byte-level tokenizer; the same `seed` gives the same models. **Its videos are noise.**
    pub fn demo(seed: u64) -> Result<Pipeline> {
        let start = std::time::Instant::now();
        let text = t5(byte_tokenizer()?, seed)?;
        let mut p = Pipeline::from_models(text, dit(seed ^ 1)?, vae(seed ^ 2)?)?;
        p.info = ModelInfo {
            demo: true,
            load_seconds: start.elapsed().as_secs_f64(),
            ..ModelInfo::default()
        };
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_encodes_utf8_bytes() {
        let tok = byte_tokenizer().unwrap();
        assert_eq!(tok.vocab_size(), 259);
        let t = tok.tokenize("ab é").unwrap();
        // Metaspace turns the text into "▁ab▁é" (▁ is 3 bytes): 3 + 2 + 3 + 2 bytes, then </s>.
        assert_eq!(t.ids.len(), 11, "{:?}", t.ids);
        assert_eq!(*t.ids.last().unwrap(), tok.eos_id());
        assert!(t.ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
    }
}
