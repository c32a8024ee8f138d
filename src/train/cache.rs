//! Training items from musubi-tuner's cache files (lora-guidance-training.md §5.4): latent caches
//! `{stem}[_{start}-{T}]_{W}x{H}_wan.safetensors` holding `latents_{F}x{H}x{W}_{dtype}`
//! `[16, F, H, W]`, each paired with its text-encoder cache `{stem}_wan_te.safetensors` holding
//! `varlen_t5_{dtype}` `[L, text_dim]`.

use std::path::{Path, PathBuf};

use super::dataset::DatasetConfig;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// One training item: the paths of its latent and text caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheItem {
    /// The latent cache.
    pub latents: PathBuf,
    /// The text-encoder cache.
    pub text: PathBuf,
}

/// A loaded item: `latents [16, F, H, W]` and `t5 [L, text_dim]`, both f32.
#[derive(Debug, Clone)]
pub struct CachedSample {
    /// The normalised VAE latent.
    pub latents: Tensor,
    /// The text embedding, unpadded.
    pub t5: Tensor,
}

/// The stem of a latent cache's file name: the name without `_wan.safetensors`, its `WxH`
/// size and, for a video window, its `start-T` token. `None` for a file that is not one.
fn latent_stem(name: &str) -> Option<&str> {
    let rest = name.strip_suffix("_wan.safetensors")?;
    let (rest, size) = rest.rsplit_once('_')?;
    let (w, h) = size.split_once('x')?;
    if !(w.parse::<u32>().is_ok() && h.parse::<u32>().is_ok()) {
        return None;
    }
    let window = |t: &str| {
        t.split_once('-')
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
    };
    match rest.rsplit_once('_') {
        Some((stem, last)) if window(last) => Some(stem),
        _ => Some(rest),
    }
}

/// Every item cached in `dir`, sorted by latent file name. A latent cache without its text
/// cache is an error naming both.
pub fn list_items(dir: &Path) -> Result<Vec<CacheItem>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut items = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(latent_stem) else {
            continue;
        };
        let text = dir.join(format!("{stem}_wan_te.safetensors"));
        if !text.is_file() {
            return Err(Error::InvalidArgument(format!(
                "latent cache {} has no text-encoder cache {} (make it with `wanrt cache text`)",
                entry.path().display(),
                text.display()
            )));
        }
        items.push(CacheItem {
            latents: entry.path(),
            text,
        });
    }
    items.sort_by(|a, b| a.latents.cmp(&b.latents));
    if items.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no latent cache (`*_wan.safetensors`) in {} (make them with `wanrt cache latents`)",
            dir.display()
        )));
    }
    Ok(items)
}

/// Every item of a dataset config as musubi-tuner's training sees them: the items cached in
/// each dataset's `cache_directory` (as [`list_items`] pairs them), in dataset order, each
/// repeated `num_repeats` times, so that an epoch visits every repeat once. `batch_size` is not
/// used: the trainer takes one item per step, so an epoch is `items × num_repeats` steps
/// whatever the batch size. A dataset whose cache directory is missing or holds no latent
/// cache is an error naming the `wanrt cache` commands to run with `toml` (the config's path).
pub fn dataset_items(config: &DatasetConfig, toml: &Path) -> Result<Vec<CacheItem>> {
    let mut all = Vec::new();
    for (i, dataset) in config.datasets.iter().enumerate() {
        let dir = &dataset.cache_directory;
        if !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "dataset {} is not cached yet: no cache directory {} (run `wanrt cache latents \
                 --dataset_config {toml}` and `wanrt cache text --dataset_config {toml}` first)",
                i + 1,
                dir.display(),
                toml = toml.display(),
            )));
        }
        let items = list_items(dir)?;
        for _ in 0..dataset.num_repeats {
            all.extend(items.iter().cloned());
        }
    }
    Ok(all)
}

/// The one tensor of `path` whose key starts with `prefix`, widened to f32, from a cache whose
/// `architecture` metadata is `wan`.
fn cached_tensor(path: &Path, prefix: &str) -> Result<Tensor> {
    let ckpt = crate::io::open(path)?;
    match ckpt.metadata.get("architecture").map(String::as_str) {
        Some("wan") => {}
        other => {
            return Err(Error::bad_file(
                path,
                format!("a cache for architecture {other:?}, not `wan`"),
            ))
        }
    }
    let mut found = ckpt.tensors.iter().filter(|(k, _)| k.starts_with(prefix));
    match (found.next(), found.next()) {
        (Some((_, t)), None) => t.to_dtype(DType::F32),
        _ => Err(Error::bad_file(
            path,
            format!("expected exactly one tensor `{prefix}…`"),
        )),
    }
}

impl CacheItem {
    /// Reads the item, checking that the latent has `channels` channels and the text
    /// embedding `text_dim` columns (a cache made for another model fails here).
    pub fn load(&self, channels: usize, text_dim: usize) -> Result<CachedSample> {
        let latents = cached_tensor(&self.latents, "latents_")?;
        let ok = latents.dims().len() == 4 && latents.dims()[0] == channels;
        if !ok {
            return Err(Error::bad_file(
                &self.latents,
                format!(
                    "latents of shape {:?}, not [{channels}, F, H, W]",
                    latents.dims()
                ),
            ));
        }
        let t5 = cached_tensor(&self.text, "varlen_t5_")?;
        let d = t5.dims();
        if d.len() != 2 || d[0] == 0 || d[1] != text_dim {
            return Err(Error::bad_file(
                &self.text,
                format!("a text embedding of shape {d:?}, not [L, {text_dim}]"),
            ));
        }
        Ok(CachedSample { latents, t5 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_cache_names_parse_back_to_their_stem() {
        assert_eq!(latent_stem("cat_0512x0384_wan.safetensors"), Some("cat"));
        assert_eq!(
            latent_stem("my_clip_00016-033_0640x0360_wan.safetensors"),
            Some("my_clip")
        );
        assert_eq!(latent_stem("cat_wan_te.safetensors"), None);
        assert_eq!(latent_stem("cat.safetensors"), None);
    }
}
