//! The UMT5-XXL text encoder Wan2.1 conditions on (wan-architecture.md §3), its tokenizer with
//! Wan's prompt cleaning, and a text-embedding cache.
//!
//! - [`Umt5Encoder`]: the encoder, written against the tensor ops only (token and bucket ids are
//!   host data; everything after the lookups runs on the weights' device). Built from canonical weights
//!   (original Wan `.pth` names; [`crate::io::layout::canonical_weights`] renames the
//!   transformers/ComfyUI layouts) kept in their stored dtype and widened panel by panel by the
//!   linear ops, plus a [`T5Config`].
//! - [`Umt5Tokenizer`] and [`clean_prompt`]: prompt → token ids as upstream computes them.
//! - [`TextEncoder`]: tokenizer + encoder + caches (in memory, optionally on disk), the entry
//!   point a pipeline uses.

mod block;
mod byte_tokenizer;
mod cache;
mod charsmap;
mod clean;
mod html;
mod shapes;
mod tokenizer;

use std::collections::BTreeMap;
use std::path::Path;

pub use crate::io::config::T5Config;
pub use cache::{file_identity, CacheStats, TextEmbedding, TextEncoder};
pub use clean::clean_prompt;
pub use html::html_unescape;
pub use shapes::weight_shapes;
pub use tokenizer::{Tokenized, Umt5Tokenizer};

use block::{bucket_matrix, position_bias, Block, Shared, EPS};

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::io::layout::{self, Component};
use crate::tensor::ops::{cat, embedding};
use crate::tensor::{Tensor, Weight};

/// The UMT5 encoder (Wan's `T5Encoder`, encoder only): token embedding without scaling, blocks
/// of relative-position-biased attention without `1/√d` and a gated GELU(tanh) feed-forward,
/// RMS norms, a final norm.
#[derive(Debug, Clone)]
pub struct Umt5Encoder {
    cfg: T5Config,
    token_embedding: Weight,
    blocks: Vec<Block>,
    /// The one table of a `shared_pos` encoder, `[num_buckets, heads]`.
    shared_pos: Option<Weight>,
    norm: Weight,
}

impl Umt5Encoder {
    /// Builds the encoder from canonical weights (original Wan names, wan-architecture.md
    /// §3.4) and its config. Every tensor's shape is checked against the config (a mismatch is
    /// [`Error::InvalidConfig`], a missing tensor [`Error::MissingTensor`], a tensor the model
    /// does not use [`Error::UnsupportedModel`]).
    pub fn new(weights: BTreeMap<String, Weight>, cfg: T5Config) -> Result<Umt5Encoder> {
        check_config(&cfg)?;
        let mut t = Take(weights);
        let (dim, attn, ffn) = (cfg.dim, cfg.dim_attn, cfg.dim_ffn);
        let table = [cfg.num_buckets, cfg.num_heads];
        let token_embedding = t.weight("token_embedding.weight", &[cfg.vocab, dim])?;
        let shared_pos = if cfg.shared_pos {
            Some(t.weight("pos_embedding.embedding.weight", &table)?)
        } else {
            None
        };
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let mut w =
                    |name: &str, dims: &[usize]| t.weight(&format!("blocks.{i}.{name}"), dims);
                Ok(Block {
                    norm1: w("norm1.weight", &[dim])?,
                    q: w("attn.q.weight", &[attn, dim])?,
                    k: w("attn.k.weight", &[attn, dim])?,
                    v: w("attn.v.weight", &[attn, dim])?,
                    o: w("attn.o.weight", &[dim, attn])?,
                    pos: if cfg.shared_pos {
                        None
                    } else {
                        Some(w("pos_embedding.embedding.weight", &table)?)
                    },
                    norm2: w("norm2.weight", &[dim])?,
                    gate: w("ffn.gate.0.weight", &[ffn, dim])?,
                    fc1: w("ffn.fc1.weight", &[ffn, dim])?,
                    fc2: w("ffn.fc2.weight", &[dim, ffn])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = t.weight("norm.weight", &[dim])?;
        if let Some(name) = t.0.keys().next() {
            return Err(Error::UnsupportedModel(format!(
                "UMT5 encoder: unexpected tensor `{name}` for a config of {} layers{}",
                cfg.num_layers,
                if cfg.shared_pos {
                    " with a shared position table"
                } else {
                    ""
                }
            )));
        }
        Ok(Umt5Encoder {
            cfg,
            token_embedding,
            blocks,
            shared_pos,
            norm,
        })
    }

    /// Opens a UMT5 encoder checkpoint (the official `.pth`, or safetensors in the original,
    /// transformers or ComfyUI layout, in any dtype the io module reads), renames it to the
    /// canonical names and builds the encoder; the config is inferred from the shapes and
    /// overridden by `config_json` (Wan names) if given.
    pub fn open(path: impl AsRef<Path>, config_json: Option<&Path>) -> Result<Umt5Encoder> {
        let path = path.as_ref();
        let (found, weights) = layout::canonical_weights(&crate::io::open(path)?)?;
        if found.component != Component::Umt5Encoder {
            return Err(Error::UnsupportedModel(format!(
                "{}: a {:?}, not a UMT5 encoder",
                path.display(),
                found.component
            )));
        }
        let cfg = T5Config::load(&layout::weight_metas(&weights), config_json)?;
        Umt5Encoder::new(weights, cfg)
    }

    /// The encoder with its weights on `device` in their stored dtypes: it then encodes on that
    /// device (token ids stay host data; the hidden states it returns live on `device`).
    pub fn to_device(&self, device: Device) -> Result<Umt5Encoder> {
        Ok(Umt5Encoder {
            cfg: self.cfg.clone(),
            token_embedding: self.token_embedding.to_device(device)?,
            blocks: self
                .blocks
                .iter()
                .map(|b| b.to_device(device))
                .collect::<Result<_>>()?,
            shared_pos: self
                .shared_pos
                .as_ref()
                .map(|t| t.to_device(device))
                .transpose()?,
            norm: self.norm.to_device(device)?,
        })
    }

    /// The config.
    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    /// Encodes a batch of unpadded token sequences (each 1 to `text_len` ids, EOS included, as
    /// [`Umt5Tokenizer`] produces them) and returns each prompt's hidden states trimmed to its
    /// length, `[L_b, dim]`: the contexts [`crate::model::dit::WanDit`] takes.
    pub fn encode(&self, ids: &[&[u32]]) -> Result<Vec<Tensor>> {
        let (hidden, lens) = self.hidden(ids)?;
        lens.iter()
            .enumerate()
            .map(|(b, &n)| {
                hidden
                    .narrow(0, b, 1)?
                    .narrow(1, 0, n)?
                    .reshape([n, self.cfg.dim])
            })
            .collect()
    }

    /// Upstream's output shape: `[B, text_len, dim]` with every row past a prompt's length zero
    /// (what Wan computes with `padding='max_length'` and a mask, then trims and zero-pads).
    pub fn forward(&self, ids: &[&[u32]]) -> Result<Tensor> {
        let (hidden, _) = self.hidden(ids)?;
        let l = hidden.dims()[1];
        hidden.pad_zeros(&[(0, 0), (0, self.cfg.text_len - l), (0, 0)])
    }

    /// The batch padded to its longest prompt, `[B, L_max, dim]`, rows past each length zero,
    /// and the lengths.
    ///
    /// Upstream runs all `text_len` positions with padding keys masked; a real token's output
    /// depends only on the real tokens before and after it (the bias depends on positions, not
    /// on the padding), so computing on `L_max` positions gives the same values for less work.
    fn hidden(&self, ids: &[&[u32]]) -> Result<(Tensor, Vec<usize>)> {
        let c = &self.cfg;
        if ids.is_empty() {
            return Err(Error::InvalidArgument("UMT5: empty batch".into()));
        }
        let lens: Vec<usize> = ids.iter().map(|s| s.len()).collect();
        if let Some(b) = lens.iter().position(|&n| n == 0 || n > c.text_len) {
            return Err(Error::InvalidArgument(format!(
                "UMT5: prompt {b} has {} tokens; 1 to text_len = {} are allowed (tokenize first: \
                 it appends EOS and truncates)",
                lens[b], c.text_len
            )));
        }
        let l = *lens.iter().max().expect("non-empty batch");
        let mut flat = vec![0u32; ids.len() * l];
        for (row, s) in flat.chunks_exact_mut(l).zip(ids) {
            row[..s.len()].copy_from_slice(s);
        }
        let mut x = embedding(&flat, &self.token_embedding)?.reshape([ids.len(), l, c.dim])?;
        let buckets = bucket_matrix(l, c.num_buckets)?;
        let shared_bias = self
            .shared_pos
            .as_ref()
            .map(|t| position_bias(t, &buckets, l))
            .transpose()?;
        let shared = Shared {
            lens: &lens,
            buckets: &buckets,
            shared_bias: shared_bias.as_ref(),
            heads: c.num_heads,
        };
        for block in &self.blocks {
            x = block.forward(&x, &shared)?;
        }
        let x = x.rms_norm(Some(&self.norm), EPS)?;
        // Rows past each prompt's length are zero: its real rows, padded back to `l`.
        let rows = lens
            .iter()
            .enumerate()
            .map(|(b, &n)| {
                x.narrow(0, b, 1)?
                    .narrow(1, 0, n)?
                    .pad_zeros(&[(0, 0), (0, l - n), (0, 0)])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((cat(&rows.iter().collect::<Vec<_>>(), 0)?, lens))
    }
}

/// Rejects configs the forward cannot run.
fn check_config(c: &T5Config) -> Result<()> {
    let bad = |what: String| Err(Error::InvalidConfig(format!("UMT5: {what}")));
    if c.dim == 0 || c.dim_attn == 0 || c.dim_ffn == 0 || c.vocab == 0 {
        return bad(format!("zero width in {c:?}"));
    }
    if c.num_heads == 0 || !c.dim_attn.is_multiple_of(c.num_heads) {
        return bad(format!(
            "{} heads do not divide dim_attn {}",
            c.num_heads, c.dim_attn
        ));
    }
    if c.num_buckets == 0 || c.num_buckets > 256 {
        return bad(format!("{} buckets (1 to 256 supported)", c.num_buckets));
    }
    if c.text_len == 0 {
        return bad("text_len 0".into());
    }
    Ok(())
}

/// Removes named tensors from the map, checking their shapes.
struct Take(BTreeMap<String, Weight>);

impl Take {
    fn weight(&mut self, name: &str, dims: &[usize]) -> Result<Weight> {
        let w = self.0.remove(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            context: "UMT5 encoder".into(),
        })?;
        if w.dims() != dims {
            return Err(Error::InvalidConfig(format!(
                "UMT5: tensor `{name}` has shape {:?} but the config needs {dims:?}",
                w.dims()
            )));
        }
        if !w.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op: "UMT5 weight",
                dtype: w.dtype(),
            });
        }
        Ok(w)
    }
}
