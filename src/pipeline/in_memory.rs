//! A pipeline from weights in memory ([`Pipeline::from_weights`]): the models built and placed
//! by the code that places the models [`Pipeline::load`] reads from files (on a CUDA device,
//! its memory plan), so that a pipeline of random weights (`wanrt bench pipeline`) runs what
//! `wanrt generate` runs with the same options.

use std::collections::BTreeMap;

use super::{build_in_pool, place_models, weight_bytes, LoadOptions, Pipeline};
use crate::error::Result;
use crate::io::config::{DitConfig, T5Config, VaeConfig};
use crate::model::t5::{TextEncoder, Umt5Encoder, Umt5Tokenizer};
use crate::model::vae::WanVae;
use crate::tensor::Weight;

/// The three models as weights in memory (canonical names, any dtype each model takes) with
/// their configs, for [`Pipeline::from_weights`].
pub struct ModelWeights {
    /// The text encoder's tokenizer.
    pub tokenizer: Umt5Tokenizer,
    /// The UMT5 encoder's weights and config.
    pub t5: (BTreeMap<String, Weight>, T5Config),
    /// The DiT's weights and config.
    pub dit: (BTreeMap<String, Weight>, DitConfig),
    /// The VAE's weights and config.
    pub vae: (BTreeMap<String, Weight>, VaeConfig),
}

impl Pipeline {
    /// A pipeline of the models in `weights`, built and placed as [`Pipeline::load`] builds and
    /// places models read from files, with `options` and no LoRA: on a CUDA device the memory
    /// plan at load from the device's free memory and the options' bounds
    /// (`max_device_memory`, `blocks_to_swap`, `t5_device`) places the DiT with its swapped
    /// blocks, the VAE and the text encoder, and each generation plans again and records its
    /// plan ([`Generation::device_plan`](super::Generation::device_plan)); on the CPU the
    /// models stay there, the text encoder on `options.t5_device` when given. Every weight
    /// counts in the memory checks as a loaded file's do.
    pub fn from_weights(weights: ModelWeights, options: &LoadOptions) -> Result<Pipeline> {
        build_in_pool(options, || {
            let ModelWeights {
                tokenizer,
                t5,
                dit,
                vae,
            } = weights;
            let (text_bytes, vae_bytes) = (weight_bytes(&t5.0), weight_bytes(&vae.0));
            let text = TextEncoder::new(tokenizer, Umt5Encoder::new(t5.0, t5.1)?)?;
            let vae = WanVae::new(vae.0, vae.1)?;
            let mut p = place_models(text, dit, vae, Vec::new(), options)?;
            p.weights.text_encoder = text_bytes.0;
            p.weights.vae = vae_bytes.0;
            p.weights.allocated += text_bytes.1 + vae_bytes.1;
            Ok(p)
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::backend::Device;
    use crate::io::safetensors::write_file;
    use crate::model::dit::{tests::tiny, weight_shapes, WanDit};
    use crate::pipeline::device_plan::{DitBytes, Placement};
    use crate::pipeline::on_device::load_plan;
    use crate::tensor::{DType, Tensor};

    const GIB: u64 = 1 << 30;

    /// What the device plan at load is made from, for a DiT given in memory (the bench's path,
    /// [`Pipeline::from_weights`]) and for the same weights read from a file (`Pipeline::load`'s
    /// path): the same config and bytes per block (fp8 block weights, bf16 others), hence the
    /// same plan for every free memory and every limit.
    #[test]
    fn weights_in_memory_plan_like_the_same_weights_read_from_a_file() {
        let cfg = tiny(3);
        let in_memory: BTreeMap<String, Weight> = weight_shapes(&cfg)
            .into_iter()
            .map(|(name, dims)| {
                let fp8 =
                    name.starts_with("blocks.") && name.ends_with(".weight") && dims.len() == 2;
                let dtype = if fp8 { DType::F8E4M3 } else { DType::BF16 };
                (name, Weight::new(Tensor::zeros(&dims[..], dtype)))
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (file, config) = (
            dir.path().join("dit.safetensors"),
            dir.path().join("config.json"),
        );
        let tensors: Vec<(&str, &Tensor)> = in_memory
            .iter()
            .map(|(name, w)| (name.as_str(), &w.tensor))
            .collect();
        write_file(&file, &tensors, &BTreeMap::new()).unwrap();
        let wan_config = json!({
            "model_type": "t2v", "patch_size": cfg.patch_size, "text_len": cfg.text_len,
            "in_dim": cfg.in_dim, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
            "freq_dim": cfg.freq_dim, "text_dim": cfg.text_dim, "out_dim": cfg.out_dim,
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "eps": cfg.eps,
        });
        std::fs::write(&config, wan_config.to_string()).unwrap();
        let (read, read_cfg) = WanDit::read_weights(&file, Some(&config)).unwrap();
        assert_eq!(read_cfg, cfg);
        let (bytes, read_bytes) = (
            DitBytes::from_weights(&in_memory),
            DitBytes::from_weights(&read),
        );
        assert_eq!(bytes, read_bytes);
        assert_eq!(bytes.blocks.len(), 3);

        let (t5, vae) = (T5Config::default(), VaeConfig::default());
        let cuda = LoadOptions {
            device: Device::Cuda(0),
            ..LoadOptions::default()
        };
        let options = [
            cuda,
            LoadOptions {
                blocks_to_swap: Some(2),
                max_device_memory: Some(20 * GIB),
                ..cuda
            },
            LoadOptions {
                t5_device: Some(Device::Cuda(0)),
                ..cuda
            },
            LoadOptions {
                t5_device: Some(Device::Cpu),
                ..cuda
            },
        ];
        for free in [GIB, 16 * GIB, 140 * GIB] {
            for o in &options {
                let plan = |b: &DitBytes| load_plan((&cfg, b), (&t5, &vae), o, free, None);
                let (a, b) = (plan(&bytes), plan(&read_bytes));
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "free {free}, {o:?}");
            }
        }
        // The plans differ with the inputs (these are not all the same refusal).
        let roomy = load_plan((&cfg, &bytes), (&t5, &vae), &options[0], 140 * GIB, None).unwrap();
        assert_eq!(roomy.text_encoder, Placement::Device);
        let limited = load_plan((&cfg, &bytes), (&t5, &vae), &options[1], 140 * GIB, None).unwrap();
        assert_eq!((limited.blocks_to_swap, limited.budget), (2, 20 * GIB));
        let small = load_plan((&cfg, &bytes), (&t5, &vae), &options[2], GIB, None);
        assert!(
            matches!(small, Err(crate::Error::OutOfMemory(_))),
            "{small:?}"
        );
    }
}
