//! Writing musubi-tuner's cache files from a dataset TOML (lora-guidance-training.md §5.4), as
//! `wan_cache_latents.py` and `wan_cache_text_encoder_outputs.py` do; [`super::cache`] reads
//! them back.
//!
//! - Latents: `{cache_dir}/{stem}_{W:04}x{H:04}_wan.safetensors` per image and
//!   `{stem}_{start:05}-{T:03}_{W:04}x{H:04}_wan.safetensors` per clip window (`W×H` the
//!   original size), holding `latents_{F}x{h}x{w}_bfloat16` `[16, F, h, w]`: the media resized
//!   and centre-cropped into its bucket, scaled to `[-1, 1]` and VAE-encoded (NaNs written as 0).
//!   Metadata `architecture = wan`, `width`, `height`, `format_version = 1.0.1`, and
//!   `frame_count` for clips.
//! - Text: `{cache_dir}/{stem}_wan_te.safetensors` per file, holding `varlen_t5_bfloat16`
//!   `[L, 4096]` (the UMT5 output trimmed to the caption's tokens); metadata
//!   `architecture = wan`, `caption1`, `format_version = 1.0.1`.
//!
//! A cache file that already exists and reads as a `wan` cache with its tensor is kept
//! ([`CacheReport::existing`]); one that does not (damaged, or another model's) is written
//! again. Files are written atomically. Media that yield nothing (no caption file, unreadable,
//! no frames, shorter than every `target_frames`) are skipped and counted, with the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::dataset::{
    extract_windows, fit_to_bucket, list_media, media, Dataset, DatasetConfig, FrameExtraction,
    FrameSettings, MediaFile,
};
use crate::error::{Error, Result};
use crate::model::t5::TextEncoder;
use crate::model::vae::WanVae;
use crate::tensor::{DType, Tensor};

/// The `format_version` musubi-tuner writes.
const FORMAT_VERSION: &str = "1.0.1";

/// What a caching run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheReport {
    /// Cache files written.
    pub written: usize,
    /// Cache files already there and kept.
    pub existing: usize,
    /// Media files skipped because they have no caption file.
    pub missing_captions: Vec<PathBuf>,
    /// Media files that yielded no item, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl CacheReport {
    /// Whether the dataset has any cached item now.
    pub fn any_item(&self) -> bool {
        self.written + self.existing > 0
    }
}

impl fmt::Display for CacheReport {
    /// One line of counts, then one line per skipped file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} written, {} already cached, {} skipped without a caption file, {} skipped \
             unusable",
            self.written,
            self.existing,
            self.missing_captions.len(),
            self.skipped.len()
        )?;
        for path in &self.missing_captions {
            write!(f, "\n  {}: no caption file", path.display())?;
        }
        for (path, why) in &self.skipped {
            write!(f, "\n  {}: {why}", path.display())?;
        }
        Ok(())
    }
}

/// Every dataset's captioned media; the files without a caption go to `report`.
fn listings(config: &DatasetConfig, report: &mut CacheReport) -> Result<Vec<Vec<MediaFile>>> {
    let mut out = Vec::new();
    for d in &config.datasets {
        let l = list_media(d)?;
        report.missing_captions.extend(l.missing_captions);
        out.push(l.files);
    }
    Ok(out)
}

/// Encodes every image and clip window of `config` with `vae` into latent caches.
/// `progress(done, total)` is called after each media file.
pub fn cache_latents(
    config: &DatasetConfig,
    vae: &WanVae,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CacheReport> {
    cache_each(config, progress, |dataset, file| match &dataset.frames {
        None => cache_image(dataset, vae, file),
        Some(frames) => cache_clip(dataset, frames, vae, file),
    })
}

/// Runs `cache_file` on every captioned media file of `config`, creating each dataset's cache
/// folder first, and counts what it did; `progress(done, total)` is called after each file.
/// A media file that cannot be read (an [`Error::BadFile`] naming it) is skipped with the
/// reason; any other error (a cache write failing on a full disk) stops the run.
fn cache_each(
    config: &DatasetConfig,
    progress: &mut dyn FnMut(usize, usize),
    mut cache_file: impl FnMut(&Dataset, &MediaFile) -> Result<Outcome>,
) -> Result<CacheReport> {
    let mut report = CacheReport::default();
    let lists = listings(config, &mut report)?;
    let total = lists.iter().map(Vec::len).sum();
    let mut done = 0;
    for (dataset, files) in config.datasets.iter().zip(&lists) {
        create_dir(&dataset.cache_directory)?;
        for file in files {
            match cache_file(dataset, file) {
                Ok(Outcome::Items { written, existing }) => {
                    report.written += written;
                    report.existing += existing;
                }
                Ok(Outcome::Skipped(why)) => report.skipped.push((file.path.clone(), why)),
                Err(Error::BadFile { path, what }) if path == file.path => {
                    report.skipped.push((path, what))
                }
                Err(e) => return Err(e),
            }
            done += 1;
            progress(done, total);
        }
    }
    Ok(report)
}

/// What caching one media file did.
enum Outcome {
    Items { written: usize, existing: usize },
    Skipped(String),
}

impl Outcome {
    /// One cache file written.
    const WRITTEN: Outcome = Outcome::Items {
        written: 1,
        existing: 0,
    };
    /// One cache file already there and kept.
    const EXISTING: Outcome = Outcome::Items {
        written: 0,
        existing: 1,
    };
}

fn cache_image(dataset: &Dataset, vae: &WanVae, file: &MediaFile) -> Result<Outcome> {
    let image = media::load_image(&file.path)?;
    let path = dataset.cache_directory.join(format!(
        "{}_{:04}x{:04}_wan.safetensors",
        file.stem, image.width, image.height
    ));
    if is_cached(&path, "latents_") {
        return Ok(Outcome::EXISTING);
    }
    let bucket = dataset.bucket_selector()?.select(image.size())?;
    let frame = media::fit_image(&image, bucket)?;
    write_latents(&path, vae, &[frame], image.size(), None)?;
    Ok(Outcome::WRITTEN)
}

/// How many frames must be decoded for `settings`: all, except for `head` (the longest target)
/// and `full` (`max_frames`) without decimation.
fn frames_needed(settings: &FrameSettings) -> Option<usize> {
    match (settings.extraction, settings.source_fps) {
        (FrameExtraction::Head, None) => settings.target_frames.last().copied(),
        (FrameExtraction::Full, None) => Some(settings.max_frames),
        _ => None,
    }
}

fn cache_clip(
    dataset: &Dataset,
    settings: &FrameSettings,
    vae: &WanVae,
    file: &MediaFile,
) -> Result<Outcome> {
    let video = crate::video::decode_video(&file.path, frames_needed(settings))?;
    if video.frames == 0 {
        return Ok(Outcome::Skipped("no frame could be decoded".into()));
    }
    let windows = extract_windows(video.frames, settings);
    if windows.is_empty() {
        return Ok(Outcome::Skipped(format!(
            "{} frames{} is shorter than every target_frames {:?}",
            video.frames,
            if settings.source_fps.is_some() {
                " (before decimation to 16 fps)"
            } else {
                ""
            },
            settings.target_frames
        )));
    }
    let size = (video.width as u32, video.height as u32);
    let bucket = dataset.bucket_selector()?.select(size)?;
    let fit = fit_to_bucket(size, bucket)?;
    let (mut written, mut existing) = (0, 0);
    for window in &windows {
        let path = dataset.cache_directory.join(format!(
            "{}_{:04}x{:04}_wan.safetensors",
            window.item_key(&file.stem, ""),
            size.0,
            size.1
        ));
        if is_cached(&path, "latents_") {
            existing += 1;
            continue;
        }
        let frames: Vec<_> = window
            .frames
            .iter()
            .map(|&i| {
                let frame = media::RgbImage {
                    width: size.0,
                    height: size.1,
                    data: video.frame(i).to_vec(),
                };
                media::apply_fit(&frame, &fit)
            })
            .collect();
        write_latents(&path, vae, &frames, size, Some(frames.len()))?;
        written += 1;
    }
    Ok(Outcome::Items { written, existing })
}

/// Whether `path` is a readable `wan` cache holding a tensor whose name starts with `prefix`.
fn is_cached(path: &Path, prefix: &str) -> bool {
    if !path.exists() {
        return false;
    }
    let ok = crate::io::open(path).is_ok_and(|c| {
        c.metadata.get("architecture").map(String::as_str) == Some("wan")
            && c.tensors.keys().any(|k| k.starts_with(prefix))
    });
    if !ok {
        log::warn!(
            "{}: not a readable wan cache (damaged, or another model's): writing it again",
            path.display()
        );
    }
    ok
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// The metadata every cache carries, plus `extra`.
fn metadata(extra: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([
        ("architecture".to_owned(), "wan".to_owned()),
        ("format_version".to_owned(), FORMAT_VERSION.to_owned()),
    ]);
    m.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    m
}

/// `t` as bf16 with NaNs replaced by 0 (with a warning), as musubi-tuner saves it.
fn to_cache_dtype(t: &Tensor, path: &Path) -> Result<Tensor> {
    let mut v = t.to_f32_vec()?;
    let nans = v.iter().filter(|x| x.is_nan()).count();
    if nans > 0 {
        log::warn!("{}: {nans} NaN values written as 0", path.display());
        v.iter_mut().filter(|x| x.is_nan()).for_each(|x| *x = 0.0);
    }
    Tensor::from_f32(v, t.dims())?.to_dtype(DType::BF16)
}

fn write_latents(
    path: &Path,
    vae: &WanVae,
    frames: &[media::RgbImage],
    (width, height): (u32, u32),
    frame_count: Option<usize>,
) -> Result<()> {
    let z = vae.encode(&media::frames_to_tensor(frames)?)?;
    let d = z.dims()[1..].to_vec();
    let latents = to_cache_dtype(&z.reshape(&d[..])?, path)?;
    let key = format!("latents_{}x{}x{}_bfloat16", d[1], d[2], d[3]);
    let mut extra = vec![("width", width.to_string()), ("height", height.to_string())];
    if let Some(n) = frame_count {
        extra.push(("frame_count", n.to_string()));
    }
    crate::io::safetensors::write_file(path, &[(&key, &latents)], &metadata(&extra))
}

/// Encodes every caption of `config` with `text` into text-encoder caches.
/// `progress(done, total)` is called after each media file.
pub fn cache_text(
    config: &DatasetConfig,
    text: &TextEncoder,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CacheReport> {
    cache_each(config, progress, |dataset, file| {
        let path = dataset
            .cache_directory
            .join(format!("{}_wan_te.safetensors", file.stem));
        if is_cached(&path, "varlen_t5_") {
            return Ok(Outcome::EXISTING);
        }
        let context = text.encode(&file.caption)?.context;
        let t5 = to_cache_dtype(&context, &path)?;
        let meta = metadata(&[("caption1", file.caption.clone())]);
        crate::io::safetensors::write_file(&path, &[("varlen_t5_bfloat16", &t5)], &meta)?;
        Ok(Outcome::WRITTEN)
    })
}
