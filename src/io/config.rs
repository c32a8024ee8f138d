//! Model hyper-parameters, inferred from the canonical tensor shapes and overridable by a
//! `config.json` in the original Wan names.
//!
//! Real checkpoints carry no config; everything but a few constants can be read off the
//! shapes (the DiT's head count comes from head_dim 128). A `config.json` fills in what the
//! shapes cannot say (the head count of a non-standard width, `text_len`, `eps`, the VAE
//! latent statistics); where the shapes do say something, the json must agree, otherwise
//! [`Error::InvalidConfig`] names the field and both values.

use std::fmt::Debug;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::layout::{count_blocks, MetaMap};
use crate::error::{Error, Result};

/// The attention head width of every Wan DiT.
pub const DIT_HEAD_DIM: usize = 128;

/// Which Wan DiT variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Text-to-video (also text-to-image with one frame).
    T2v,
    /// Image-to-video: CLIP image tokens (`img_emb`, `k_img`/`v_img`) and 36 input channels.
    I2v,
}

/// The DiT (`WanModel`) hyper-parameters, in the original Wan names.
#[derive(Debug, Clone, PartialEq)]
pub struct DitConfig {
    /// T2V or I2V.
    pub model_type: ModelType,
    /// Hidden width (1536 for 1.3B, 5120 for 14B).
    pub dim: usize,
    /// Feed-forward inner width (8960 for 1.3B, 13824 for 14B).
    pub ffn_dim: usize,
    /// Attention heads (`dim / 128` for the real models).
    pub num_heads: usize,
    /// Transformer blocks (30 for 1.3B, 40 for 14B).
    pub num_layers: usize,
    /// Input latent channels (16; 36 for I2V: noise, mask and image latent).
    pub in_dim: usize,
    /// Output latent channels (16).
    pub out_dim: usize,
    /// Text embedding width (4096, the UMT5 width).
    pub text_dim: usize,
    /// Width of the sinusoidal time embedding (256).
    pub freq_dim: usize,
    /// Text tokens the context is zero-padded to (512).
    pub text_len: usize,
    /// LayerNorm / RMSNorm epsilon (1e-6).
    pub eps: f64,
    /// Patch size over (time, height, width): (1, 2, 2).
    pub patch_size: [usize; 3],
}

/// `config.json` of a DiT in the original Wan names; unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
struct DitJson {
    model_type: Option<String>,
    dim: Option<usize>,
    ffn_dim: Option<usize>,
    num_heads: Option<usize>,
    num_layers: Option<usize>,
    in_dim: Option<usize>,
    out_dim: Option<usize>,
    text_dim: Option<usize>,
    freq_dim: Option<usize>,
    text_len: Option<usize>,
    eps: Option<f64>,
    patch_size: Option<[usize; 3]>,
    qk_norm: Option<bool>,
    cross_attn_norm: Option<bool>,
    window_size: Option<[i64; 2]>,
}

impl DitJson {
    /// The json's `model_type`, if it gives one.
    fn model_type(&self) -> Result<Option<ModelType>> {
        match self.model_type.as_deref() {
            None => Ok(None),
            Some("t2v") => Ok(Some(ModelType::T2v)),
            Some("i2v") => Ok(Some(ModelType::I2v)),
            Some(other) => Err(Error::UnsupportedModel(format!(
                "DiT model_type `{other}` (only t2v and i2v exist in Wan2.1)"
            ))),
        }
    }
}

impl DitConfig {
    /// Infers the config from canonical DiT weights alone (head count from head_dim 128).
    pub fn infer(weights: &MetaMap) -> Result<DitConfig> {
        DitConfig::resolve(weights, None)
    }

    /// Infers the config from canonical DiT weights, overridden by the `config.json` at
    /// `json` when given.
    pub fn load(weights: &MetaMap, json: Option<&Path>) -> Result<DitConfig> {
        DitConfig::resolve(weights, json.map(read_json).transpose()?.as_deref())
    }

    /// Infers the config from canonical DiT weights, overridden by `json` (the text of a
    /// `config.json`) when given. The json's `num_heads`, `text_len` and `eps` win; its other
    /// fields must agree with the shapes.
    pub fn resolve(weights: &MetaMap, json: Option<&str>) -> Result<DitConfig> {
        let j: DitJson = parse_json(json, &["WanModel"])?;
        let pe = dims(weights, "patch_embedding.weight", 5, "DiT")?;
        let (dim, in_dim, patch_size) = (pe[0], pe[1], [pe[2], pe[3], pe[4]]);
        let head = dims(weights, "head.head.weight", 2, "DiT")?[0];
        let patch_vol = patch_size.iter().product::<usize>();
        if patch_vol == 0 || head % patch_vol != 0 {
            return Err(Error::InvalidConfig(format!(
                "head.head.weight has {head} rows, not a multiple of the patch volume {patch_vol}"
            )));
        }
        let model_type = if weights
            .keys()
            .any(|k| k.starts_with("img_emb.") || k.contains(".cross_attn.k_img."))
        {
            ModelType::I2v
        } else {
            ModelType::T2v
        };
        let json_type = j.model_type()?;
        if j.qk_norm == Some(false) || j.cross_attn_norm == Some(false) {
            return Err(Error::UnsupportedModel(
                "DiT without qk_norm or cross_attn_norm".into(),
            ));
        }
        if j.window_size.is_some_and(|w| w != [-1, -1]) {
            return Err(Error::UnsupportedModel(format!(
                "DiT with local attention window {:?}",
                j.window_size.unwrap_or_default()
            )));
        }
        let dim = agree("dim", j.dim, dim)?;
        let num_heads = match j.num_heads {
            Some(h) => h,
            None if dim % DIT_HEAD_DIM == 0 => dim / DIT_HEAD_DIM,
            None => {
                return Err(Error::InvalidConfig(format!(
                    "num_heads: dim {dim} is not a multiple of head_dim {DIT_HEAD_DIM}; give num_heads in a config.json"
                )))
            }
        };
        if num_heads == 0 || dim % num_heads != 0 {
            return Err(Error::InvalidConfig(format!(
                "num_heads: {num_heads} does not divide dim {dim}"
            )));
        }
        Ok(DitConfig {
            model_type: agree("model_type", json_type, model_type)?,
            dim,
            ffn_dim: agree(
                "ffn_dim",
                j.ffn_dim,
                dims(weights, "blocks.0.ffn.0.weight", 2, "DiT")?[0],
            )?,
            num_heads,
            num_layers: agree(
                "num_layers",
                j.num_layers,
                count_blocks(weights.keys(), "blocks.")?,
            )?,
            in_dim: agree("in_dim", j.in_dim, in_dim)?,
            out_dim: agree("out_dim", j.out_dim, head / patch_vol)?,
            text_dim: agree(
                "text_dim",
                j.text_dim,
                dims(weights, "text_embedding.0.weight", 2, "DiT")?[1],
            )?,
            freq_dim: agree(
                "freq_dim",
                j.freq_dim,
                dims(weights, "time_embedding.0.weight", 2, "DiT")?[1],
            )?,
            text_len: j.text_len.unwrap_or(512),
            eps: j.eps.unwrap_or(1e-6),
            patch_size: agree("patch_size", j.patch_size, patch_size)?,
        })
    }

    /// A published Wan2.1 T2V shape, `1.3b` or `14b`, for building models without weights
    /// (random-weight benchmarks and tests).
    pub fn preset(name: &str) -> Result<DitConfig> {
        let (dim, ffn_dim, num_layers) = match name {
            "1.3b" => (1536, 8960, 30),
            "14b" => (5120, 13824, 40),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "no DiT preset `{other}` (1.3b, 14b)"
                )))
            }
        };
        Ok(DitConfig {
            model_type: ModelType::T2v,
            dim,
            ffn_dim,
            num_heads: dim / DIT_HEAD_DIM,
            num_layers,
            in_dim: 16,
            out_dim: 16,
            text_dim: 4096,
            freq_dim: 256,
            text_len: 512,
            eps: 1e-6,
            patch_size: [1, 2, 2],
        })
    }

    /// The config of a `config.json` file alone, without weights: the fields it gives over
    /// `base` (`num_heads` defaults to `dim / 128`). For models built without weights; a
    /// checkpoint's config comes from [`DitConfig::load`], which checks the json against it.
    pub fn from_json_file(path: &Path, base: DitConfig) -> Result<DitConfig> {
        let j: DitJson = parse_json(Some(&read_json(path)?), &["WanModel"])?;
        let model_type = j.model_type()?.unwrap_or(base.model_type);
        let dim = j.dim.unwrap_or(base.dim);
        Ok(DitConfig {
            model_type,
            dim,
            ffn_dim: j.ffn_dim.unwrap_or(base.ffn_dim),
            num_heads: j.num_heads.unwrap_or(dim / DIT_HEAD_DIM),
            num_layers: j.num_layers.unwrap_or(base.num_layers),
            in_dim: j.in_dim.unwrap_or(base.in_dim),
            out_dim: j.out_dim.unwrap_or(base.out_dim),
            text_dim: j.text_dim.unwrap_or(base.text_dim),
            freq_dim: j.freq_dim.unwrap_or(base.freq_dim),
            text_len: j.text_len.unwrap_or(base.text_len),
            eps: j.eps.unwrap_or(base.eps),
            patch_size: j.patch_size.unwrap_or(base.patch_size),
        })
    }

    /// Per-head width (`dim / num_heads`).
    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// Fails with [`Error::UnsupportedModel`] for the variants wanrt cannot run yet (I2V).
    pub fn ensure_supported(&self) -> Result<()> {
        match self.model_type {
            ModelType::T2v => Ok(()),
            ModelType::I2v => Err(Error::UnsupportedModel(
                "I2V (image-to-video) DiT recognised, but I2V is not supported yet".into(),
            )),
        }
    }
}

/// The Wan2.1 VAE hyper-parameters, in the original Wan names.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Base channel width (96).
    pub dim: usize,
    /// Latent channels (16).
    pub z_dim: usize,
    /// Channel multiplier per resolution stage ([1, 2, 4, 4]).
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage (2; the decoder has one more).
    pub num_res_blocks: usize,
    /// Whether each encoder downsampling also halves time ([false, true, true]); the decoder
    /// upsamples in the reverse order.
    pub temperal_downsample: Vec<bool>,
    /// Per-channel latent mean: encode gives `(mu - mean) / std`.
    pub latents_mean: Vec<f32>,
    /// Per-channel latent standard deviation.
    pub latents_std: Vec<f32>,
}

/// The Wan2.1 latent statistics (`wan/modules/vae.py`, `WanVAE.__init__`).
const WAN_LATENTS_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
const WAN_LATENTS_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

impl Default for VaeConfig {
    /// The real Wan2.1 VAE.
    fn default() -> VaeConfig {
        VaeConfig {
            dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temperal_downsample: vec![false, true, true],
            latents_mean: WAN_LATENTS_MEAN.to_vec(),
            latents_std: WAN_LATENTS_STD.to_vec(),
        }
    }
}

/// `config.json` of a VAE (original names; diffusers' `base_dim` is accepted for `dim`).
#[derive(Debug, Default, Deserialize)]
struct VaeJson {
    #[serde(alias = "base_dim")]
    dim: Option<usize>,
    z_dim: Option<usize>,
    dim_mult: Option<Vec<usize>>,
    num_res_blocks: Option<usize>,
    attn_scales: Option<Vec<f64>>,
    temperal_downsample: Option<Vec<bool>>,
    latents_mean: Option<Vec<f32>>,
    latents_std: Option<Vec<f32>>,
}

impl VaeConfig {
    /// Infers the config from canonical VAE weights alone (latent statistics: Wan's).
    pub fn infer(weights: &MetaMap) -> Result<VaeConfig> {
        VaeConfig::resolve(weights, None)
    }

    /// Infers the config from canonical VAE weights, overridden by the `config.json` at
    /// `json` when given.
    pub fn load(weights: &MetaMap, json: Option<&Path>) -> Result<VaeConfig> {
        VaeConfig::resolve(weights, json.map(read_json).transpose()?.as_deref())
    }

    /// Infers the config from canonical VAE weights, overridden by `json` (the text of a
    /// `config.json`) when given: its latent statistics win, its other fields must agree
    /// with the shapes.
    pub fn resolve(weights: &MetaMap, json: Option<&str>) -> Result<VaeConfig> {
        let j: VaeJson = parse_json(json, &["AutoencoderKLWan"])?;
        if j.attn_scales.as_ref().is_some_and(|a| !a.is_empty()) {
            return Err(Error::UnsupportedModel(
                "VAE with attention outside the middle blocks (attn_scales)".into(),
            ));
        }
        let dim = dims(weights, "encoder.conv1.weight", 5, "VAE")?[0];
        let z_dim = dims(weights, "conv2.weight", 5, "VAE")?[0];
        let enc_out = dims(weights, "encoder.head.2.weight", 5, "VAE")?[0];
        if enc_out != 2 * z_dim {
            return Err(Error::InvalidConfig(format!(
                "VAE encoder outputs {enc_out} channels, expected 2 × z_dim = {}",
                2 * z_dim
            )));
        }
        // Walk the encoder's flat list: residual blocks, a resample closing each stage but the last.
        let (mut mults, mut blocks, mut temporal) = (Vec::new(), Vec::new(), Vec::new());
        let (mut width, mut in_stage) = (dim, 0);
        for k in 0..count_blocks(weights.keys(), "encoder.downsamples.")? {
            let p = format!("encoder.downsamples.{k}");
            if weights.contains_key(&format!("{p}.residual.2.weight")) {
                width = dims(weights, &format!("{p}.residual.2.weight"), 5, "VAE")?[0];
                in_stage += 1;
            } else if weights.contains_key(&format!("{p}.resample.1.weight")) {
                mults.push(width);
                blocks.push(in_stage);
                temporal.push(weights.contains_key(&format!("{p}.time_conv.weight")));
                in_stage = 0;
            } else {
                return Err(Error::MissingTensor {
                    name: format!("{p}.residual.2.weight"),
                    context: "VAE".into(),
                });
            }
        }
        mults.push(width);
        blocks.push(in_stage);
        if mults.iter().any(|w| w % dim != 0) || blocks.iter().any(|b| *b != blocks[0]) {
            return Err(Error::InvalidConfig(format!(
                "VAE encoder stages of widths {mults:?} with {blocks:?} residual blocks are not a Wan VAE of base width {dim}"
            )));
        }
        let dim_mult: Vec<usize> = mults.iter().map(|w| w / dim).collect();
        let defaults = VaeConfig::default();
        let latents_mean = j.latents_mean.unwrap_or(defaults.latents_mean);
        let latents_std = j.latents_std.unwrap_or(defaults.latents_std);
        for (field, v) in [
            ("latents_mean", &latents_mean),
            ("latents_std", &latents_std),
        ] {
            if v.len() != z_dim {
                return Err(Error::InvalidConfig(format!(
                    "{field} has {} values for z_dim {z_dim} (give both in config.json)",
                    v.len()
                )));
            }
        }
        if latents_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::InvalidConfig(format!(
                "latents_std {latents_std:?} must be finite and positive"
            )));
        }
        Ok(VaeConfig {
            dim: agree("dim", j.dim, dim)?,
            z_dim: agree("z_dim", j.z_dim, z_dim)?,
            dim_mult: agree("dim_mult", j.dim_mult, dim_mult)?,
            num_res_blocks: agree("num_res_blocks", j.num_res_blocks, blocks[0])?,
            temperal_downsample: agree("temperal_downsample", j.temperal_downsample, temporal)?,
            latents_mean,
            latents_std,
        })
    }
}

/// The UMT5 encoder hyper-parameters, in the names of Wan's `T5Encoder`.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    /// Vocabulary size (256384).
    pub vocab: usize,
    /// Model width (4096).
    pub dim: usize,
    /// Total attention width, heads × head width (4096 = 64 × 64).
    pub dim_attn: usize,
    /// Gated feed-forward inner width (10240).
    pub dim_ffn: usize,
    /// Attention heads (64).
    pub num_heads: usize,
    /// Encoder blocks (24).
    pub num_layers: usize,
    /// Relative-position buckets (32).
    pub num_buckets: usize,
    /// One relative-position table shared by all blocks (false for UMT5: one per block).
    pub shared_pos: bool,
    /// Tokens per prompt, padded or truncated (512).
    pub text_len: usize,
}

impl Default for T5Config {
    /// umt5-xxl, as Wan2.1 uses it.
    fn default() -> T5Config {
        T5Config {
            vocab: 256384,
            dim: 4096,
            dim_attn: 4096,
            dim_ffn: 10240,
            num_heads: 64,
            num_layers: 24,
            num_buckets: 32,
            shared_pos: false,
            text_len: 512,
        }
    }
}

/// `config.json` of a T5 encoder in Wan's names.
#[derive(Debug, Default, Deserialize)]
struct T5Json {
    vocab: Option<usize>,
    dim: Option<usize>,
    dim_attn: Option<usize>,
    dim_ffn: Option<usize>,
    num_heads: Option<usize>,
    num_layers: Option<usize>,
    num_buckets: Option<usize>,
    shared_pos: Option<bool>,
    text_len: Option<usize>,
}

impl T5Config {
    /// Infers the config from canonical UMT5 weights alone (`text_len` 512).
    pub fn infer(weights: &MetaMap) -> Result<T5Config> {
        T5Config::resolve(weights, None)
    }

    /// Infers the config from canonical UMT5 weights, overridden by the `config.json` at
    /// `json` when given.
    pub fn load(weights: &MetaMap, json: Option<&Path>) -> Result<T5Config> {
        T5Config::resolve(weights, json.map(read_json).transpose()?.as_deref())
    }

    /// Infers the config from canonical UMT5 weights, overridden by `json` (the text of a
    /// `config.json`) when given: its `text_len` wins, its other fields must agree.
    pub fn resolve(weights: &MetaMap, json: Option<&str>) -> Result<T5Config> {
        let j: T5Json = parse_json(json, &[])?;
        let emb = dims(weights, "token_embedding.weight", 2, "UMT5 encoder")?;
        let shared_pos = weights.contains_key("pos_embedding.embedding.weight");
        let pos_key = if shared_pos {
            "pos_embedding.embedding.weight"
        } else {
            "blocks.0.pos_embedding.embedding.weight"
        };
        let pos = dims(weights, pos_key, 2, "UMT5 encoder")?;
        let dim_attn = dims(weights, "blocks.0.attn.q.weight", 2, "UMT5 encoder")?[0];
        if pos[1] == 0 || dim_attn % pos[1] != 0 {
            return Err(Error::InvalidConfig(format!(
                "UMT5: {} heads do not divide dim_attn {dim_attn}",
                pos[1]
            )));
        }
        Ok(T5Config {
            vocab: agree("vocab", j.vocab, emb[0])?,
            dim: agree("dim", j.dim, emb[1])?,
            dim_attn: agree("dim_attn", j.dim_attn, dim_attn)?,
            dim_ffn: agree(
                "dim_ffn",
                j.dim_ffn,
                dims(weights, "blocks.0.ffn.fc1.weight", 2, "UMT5 encoder")?[0],
            )?,
            num_heads: agree("num_heads", j.num_heads, pos[1])?,
            num_layers: agree(
                "num_layers",
                j.num_layers,
                count_blocks(weights.keys(), "blocks.")?,
            )?,
            num_buckets: agree("num_buckets", j.num_buckets, pos[0])?,
            shared_pos: agree("shared_pos", j.shared_pos, shared_pos)?,
            text_len: j.text_len.unwrap_or(512),
        })
    }
}

/// The dims of `name`, which must exist with `rank` dimensions.
fn dims<'a>(weights: &'a MetaMap, name: &str, rank: usize, what: &str) -> Result<&'a [usize]> {
    let m = weights.get(name).ok_or_else(|| Error::MissingTensor {
        name: name.into(),
        context: what.into(),
    })?;
    if m.dims.len() != rank {
        return Err(Error::InvalidConfig(format!(
            "{what}: `{name}` has shape {:?}, expected {rank} dimensions",
            m.dims
        )));
    }
    Ok(&m.dims)
}

/// The json's value of `field` must equal what the weights say.
fn agree<T: PartialEq + Debug>(field: &str, json: Option<T>, weights: T) -> Result<T> {
    match json {
        Some(j) if j != weights => Err(Error::InvalidConfig(format!(
            "{field}: config.json says {j:?}, the weights say {weights:?}"
        ))),
        _ => Ok(weights),
    }
}

fn read_json(path: &Path) -> Result<String> {
    super::input::read_text_capped(path, super::input::CONFIG_LIMIT, "config.json")
}

/// Parses a config json (an absent one gives the defaults). A `_class_name` outside `classes`
/// means the json belongs to another model (or is in names wanrt does not read).
fn parse_json<T: DeserializeOwned + Default>(json: Option<&str>, classes: &[&str]) -> Result<T> {
    let Some(text) = json else {
        return Ok(T::default());
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::InvalidConfig(format!("config.json: {e}")))?;
    if let Some(c) = value.get("_class_name").and_then(|c| c.as_str()) {
        if !classes.contains(&c) {
            return Err(Error::InvalidConfig(format!(
                "config.json describes a `{c}`, not this model (expected one of {classes:?}, in the original Wan names)"
            )));
        }
    }
    serde_json::from_value(value).map_err(|e| Error::InvalidConfig(format!("config.json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_config_files_without_weights() {
        let small = DitConfig::preset("1.3b").unwrap();
        assert_eq!(
            (small.num_heads, small.num_layers, small.head_dim()),
            (12, 30, 128)
        );
        assert_eq!(DitConfig::preset("14b").unwrap().num_heads, 40);
        assert!(DitConfig::preset("7b")
            .unwrap_err()
            .to_string()
            .contains("1.3b, 14b"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"dim": 2048, "num_layers": 2, "eps": 1e-5}"#).unwrap();
        let c = DitConfig::from_json_file(&path, small.clone()).unwrap();
        assert_eq!(
            (c.dim, c.num_heads, c.num_layers, c.eps),
            (2048, 16, 2, 1e-5)
        );
        assert_eq!((c.ffn_dim, c.text_dim), (small.ffn_dim, small.text_dim));
        for (json, message) in [
            (r#"{"model_type": "v2v"}"#, "model_type `v2v`"),
            (r#"{"_class_name": "AutoencoderKLWan"}"#, "AutoencoderKLWan"),
            ("{", "config.json"),
        ] {
            std::fs::write(&path, json).unwrap();
            let err = DitConfig::from_json_file(&path, small.clone()).unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
        }
        let missing = dir.path().join("missing.json");
        assert!(DitConfig::from_json_file(&missing, small).is_err());
    }
}
