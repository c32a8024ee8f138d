//! musubi-tuner's dataset TOML (`[general]` and `[[datasets]]`), parsed, inherited and
//! validated into [`DatasetConfig`].
//!
//! Semantics follow musubi-tuner: a dataset is a video dataset when it names a
//! `video_directory` or a `video_jsonl_file`, an image dataset otherwise; the "ascendable" keys
//! (`resolution`, `caption_extension`, `batch_size`, `num_repeats`, `enable_bucket`,
//! `bucket_no_upscale`) are the only ones `[general]` accepts, and a dataset inherits each of
//! them from `[general]` when it does not set it; everything else has musubi-tuner's default.
//! Unknown keys, keys of the other dataset kind, wrong types and out-of-range values are errors
//! that name the key and its line. Paths are kept as written (musubi-tuner resolves them
//! against the working directory).

use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::buckets::{BucketSelector, Size};
use super::frames::{normalize_target_frames, FrameExtraction, FrameSettings};
use crate::error::{Error, Result};
use crate::io::input;

/// Dataset TOML files larger than this are refused before parsing.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A parsed and validated dataset config: every dataset with its inherited values resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetConfig {
    /// The `[[datasets]]`, in file order.
    pub datasets: Vec<Dataset>,
}

/// One `[[datasets]]` entry, with `[general]` and the defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Target width and height (`resolution`, default 960×544).
    pub resolution: Size,
    /// Caption file extension, e.g. `.txt` (`caption_extension`; required for directories).
    pub caption_extension: Option<String>,
    /// Items per batch (`batch_size`, default 1).
    pub batch_size: usize,
    /// How many times each item is repeated per epoch (`num_repeats`, default 1).
    pub num_repeats: usize,
    /// Whether items are grouped into aspect-ratio buckets (`enable_bucket`, default false).
    pub enable_bucket: bool,
    /// Keep images smaller than the resolution at their own size (`bucket_no_upscale`; always
    /// false without buckets).
    pub bucket_no_upscale: bool,
    /// Where the media and captions come from.
    pub source: MediaSource,
    /// Where cache files go (`cache_directory`; defaults to the media directory).
    pub cache_directory: PathBuf,
    /// `None` for an image dataset; the frame settings of a video dataset.
    pub frames: Option<FrameSettings>,
}

/// The media of a dataset: a directory (captions beside the files) or a JSONL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaSource {
    /// `image_directory` or `video_directory`.
    Directory(PathBuf),
    /// `image_jsonl_file` or `video_jsonl_file`: one `{"image_path"|"video_path", "caption"}`
    /// object per line.
    Jsonl(PathBuf),
}

impl Dataset {
    /// The bucket selector musubi-tuner uses when it caches this dataset's latents: the
    /// dataset's own settings for images, while video datasets always get buckets and never
    /// `bucket_no_upscale` (whatever `enable_bucket` says).
    pub fn bucket_selector(&self) -> Result<BucketSelector> {
        match self.frames {
            None => {
                BucketSelector::new(self.resolution, self.enable_bucket, self.bucket_no_upscale)
            }
            Some(_) => BucketSelector::new(self.resolution, true, false),
        }
    }
}

impl DatasetConfig {
    /// Reads and parses a dataset TOML (a regular file of at most [`MAX_CONFIG_BYTES`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = input::read_text_capped(path, MAX_CONFIG_BYTES, "dataset config")?;
        Self::parse(&text, path)
    }

    /// Parses dataset TOML `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| line_with_text(text, s.start))
                .unwrap_or_default();
            bad(path, format!("{at}{}", e.message()))
        })?;
        let general = raw.general.unwrap_or_default();
        let ctx = Ctx { text, path };
        let datasets = raw
            .datasets
            .iter()
            .map(|d| resolve(&ctx, &general, d))
            .collect::<Result<Vec<_>>>()?;
        if datasets.is_empty() {
            return Err(bad(path, "no [[datasets]] entry".into()));
        }
        for (i, a) in datasets.iter().enumerate() {
            if let Some(j) = datasets[..i]
                .iter()
                .position(|b| b.cache_directory == a.cache_directory)
            {
                return Err(bad(
                    path,
                    format!(
                        "datasets {} and {} share the cache directory {}; each dataset needs \
                         its own",
                        j + 1,
                        i + 1,
                        a.cache_directory.display()
                    ),
                ));
            }
        }
        Ok(Self { datasets })
    }
}

fn bad(path: &Path, what: String) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        what,
    }
}

/// `line N (`the line's text`): ` for parser errors, whose messages do not name the key.
fn line_with_text(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let begin = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[begin..].lines().next().unwrap_or("").trim();
    let shown: String = line.chars().take(80).collect();
    let prefix = line_prefix(text, offset);
    format!("{} (`{shown}`): ", prefix.trim_end_matches(": "))
}

fn line_prefix(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    format!("line {}: ", before.matches('\n').count() + 1)
}

/// The text being parsed, for turning spans into line numbers.
struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    /// An error about `key`, whose value starts at byte `at`.
    fn error(&self, key: &str, at: usize, what: &str) -> Error {
        bad(
            self.path,
            format!("{}`{key}` {what}", line_prefix(self.text, at)),
        )
    }

    /// A count that must be at least 1.
    fn positive(&self, key: &str, value: Option<&Spanned<usize>>) -> Result<Option<usize>> {
        match value {
            Some(v) if *v.get_ref() == 0 => {
                Err(self.error(key, v.span().start, "must be at least 1"))
            }
            v => Ok(v.map(|v| *v.get_ref())),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    general: Option<RawGeneral>,
    #[serde(default)]
    datasets: Vec<RawDataset>,
}

/// The keys `[general]` accepts (musubi-tuner's "ascendable" keys).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeneral {
    resolution: Option<Spanned<Resolution>>,
    caption_extension: Option<String>,
    batch_size: Option<Spanned<usize>>,
    num_repeats: Option<Spanned<usize>>,
    enable_bucket: Option<bool>,
    bucket_no_upscale: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    resolution: Option<Spanned<Resolution>>,
    caption_extension: Option<String>,
    batch_size: Option<Spanned<usize>>,
    num_repeats: Option<Spanned<usize>>,
    enable_bucket: Option<bool>,
    bucket_no_upscale: Option<bool>,
    image_directory: Option<Spanned<PathBuf>>,
    image_jsonl_file: Option<Spanned<PathBuf>>,
    video_directory: Option<Spanned<PathBuf>>,
    video_jsonl_file: Option<Spanned<PathBuf>>,
    cache_directory: Option<PathBuf>,
    target_frames: Option<Spanned<Vec<usize>>>,
    frame_extraction: Option<Spanned<FrameExtraction>>,
    frame_stride: Option<Spanned<usize>>,
    frame_sample: Option<Spanned<usize>>,
    max_frames: Option<Spanned<usize>>,
    source_fps: Option<Spanned<Fps>>,
}

/// `resolution`: one integer for a square, or `[width, height]`.
#[derive(Clone, Copy)]
struct Resolution(u32, u32);

impl<'de> Deserialize<'de> for Resolution {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Resolution;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer or [width, height]")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Resolution, E> {
                let side = u32::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))?;
                Ok(Resolution(side, side))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Resolution, A::Error> {
                let w = seq.next_element()?;
                let h = seq.next_element()?;
                match (w, h, seq.next_element::<u32>()?) {
                    (Some(w), Some(h), None) => Ok(Resolution(w, h)),
                    _ => Err(de::Error::invalid_length(0, &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `source_fps`: a float, as musubi-tuner demands (`30` is refused, `30.0` accepted).
struct Fps(f64);

impl<'de> Deserialize<'de> for Fps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fps;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a float such as 30.0 (musubi-tuner refuses integers here)")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Fps, E> {
                Ok(Fps(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where an optional value starts in the text.
fn start<T>(value: &Option<Spanned<T>>) -> Option<usize> {
    value.as_ref().map(|v| v.span().start)
}

fn resolve(ctx: &Ctx, general: &RawGeneral, d: &RawDataset) -> Result<Dataset> {
    let is_video = d.video_directory.is_some() || d.video_jsonl_file.is_some();
    let (dir, jsonl, misplaced) = if is_video {
        (
            ("video_directory", &d.video_directory),
            ("video_jsonl_file", &d.video_jsonl_file),
            vec![
                ("image_directory", start(&d.image_directory)),
                ("image_jsonl_file", start(&d.image_jsonl_file)),
            ],
        )
    } else {
        (
            ("image_directory", &d.image_directory),
            ("image_jsonl_file", &d.image_jsonl_file),
            vec![
                ("target_frames", start(&d.target_frames)),
                ("frame_extraction", start(&d.frame_extraction)),
                ("frame_stride", start(&d.frame_stride)),
                ("frame_sample", start(&d.frame_sample)),
                ("max_frames", start(&d.max_frames)),
                ("source_fps", start(&d.source_fps)),
            ],
        )
    };
    let kind = if is_video { "a video" } else { "an image" };
    if let Some((key, Some(at))) = misplaced.into_iter().find(|(_, at)| at.is_some()) {
        return Err(ctx.error(
            key,
            at,
            &format!("is not a key of {kind} dataset (a dataset is a video dataset when it has a video_directory or video_jsonl_file)"),
        ));
    }
    let source = match (dir.1, jsonl.1) {
        (Some(dir), None) => MediaSource::Directory(dir.get_ref().clone()),
        (None, Some(jsonl)) => MediaSource::Jsonl(jsonl.get_ref().clone()),
        (Some(_), Some(j)) => {
            return Err(ctx.error(
                jsonl.0,
                j.span().start,
                &format!("cannot be combined with `{}`: give one of them", dir.0),
            ))
        }
        (None, None) => {
            return Err(bad(
                ctx.path,
                "a dataset has none of image_directory, image_jsonl_file, video_directory, \
                 video_jsonl_file"
                    .into(),
            ))
        }
    };
    let caption_extension = d
        .caption_extension
        .clone()
        .or_else(|| general.caption_extension.clone());
    let cache_directory = match (&d.cache_directory, &source) {
        (Some(cache), _) => cache.clone(),
        (None, MediaSource::Directory(dir)) => dir.clone(),
        (None, MediaSource::Jsonl(_)) => {
            let at = start(jsonl.1).unwrap_or_default();
            return Err(ctx.error(jsonl.0, at, "needs a `cache_directory` in its dataset"));
        }
    };
    if let (None, MediaSource::Directory(_)) = (&caption_extension, &source) {
        let at = start(dir.1).unwrap_or_default();
        return Err(ctx.error(
            dir.0,
            at,
            "needs a `caption_extension` (in the dataset or in [general])",
        ));
    }
    let resolution = d.resolution.as_ref().or(general.resolution.as_ref());
    let enable_bucket = d.enable_bucket.or(general.enable_bucket).unwrap_or(false);
    let no_upscale = d
        .bucket_no_upscale
        .or(general.bucket_no_upscale)
        .unwrap_or(false);
    let frames = if is_video {
        Some(frame_settings(ctx, d)?)
    } else {
        None
    };
    let dataset = Dataset {
        resolution: resolution.map_or((960, 544), |r| {
            let Resolution(w, h) = *r.get_ref();
            (w, h)
        }),
        caption_extension,
        batch_size: ctx
            .positive(
                "batch_size",
                d.batch_size.as_ref().or(general.batch_size.as_ref()),
            )?
            .unwrap_or(1),
        num_repeats: ctx
            .positive(
                "num_repeats",
                d.num_repeats.as_ref().or(general.num_repeats.as_ref()),
            )?
            .unwrap_or(1),
        enable_bucket,
        bucket_no_upscale: enable_bucket && no_upscale,
        source,
        cache_directory,
        frames,
    };
    if let Err(e) = dataset.bucket_selector() {
        let what = match e {
            Error::InvalidArgument(m) => m,
            other => other.to_string(),
        };
        let at = resolution.map(|r| r.span().start).unwrap_or_default();
        return Err(ctx.error("resolution", at, &format!("is not usable: {what}")));
    }
    Ok(dataset)
}

fn frame_settings(ctx: &Ctx, d: &RawDataset) -> Result<FrameSettings> {
    let default = FrameSettings::default();
    let target_frames = match &d.target_frames {
        None => default.target_frames,
        Some(t) => normalize_target_frames(t.get_ref())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ctx.error(
                    "target_frames",
                    t.span().start,
                    "must list frame counts of at least 1",
                )
            })?,
    };
    let source_fps = match &d.source_fps {
        Some(f) if !(f.get_ref().0.is_finite() && f.get_ref().0 > 0.0) => {
            return Err(ctx.error(
                "source_fps",
                f.span().start,
                "must be a positive frame rate",
            ))
        }
        f => f.as_ref().map(|f| f.get_ref().0),
    };
    Ok(FrameSettings {
        target_frames,
        extraction: d
            .frame_extraction
            .as_ref()
            .map_or(default.extraction, |e| *e.get_ref()),
        frame_stride: ctx
            .positive("frame_stride", d.frame_stride.as_ref())?
            .unwrap_or(default.frame_stride),
        frame_sample: ctx
            .positive("frame_sample", d.frame_sample.as_ref())?
            .unwrap_or(default.frame_sample),
        max_frames: ctx
            .positive("max_frames", d.max_frames.as_ref())?
            .unwrap_or(default.max_frames),
        source_fps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DatasetConfig> {
        DatasetConfig::parse(text, Path::new("d.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const MIXED: &str = r#"
[general]
resolution = [960, 544]
caption_extension = ".txt"
batch_size = 2
enable_bucket = true
bucket_no_upscale = true

[[datasets]]
image_directory = "img"
cache_directory = "cache/img"
num_repeats = 3

[[datasets]]
video_directory = "vid"
resolution = 512
target_frames = [1, 25, 47, 45]
frame_extraction = "uniform"
frame_sample = 4
source_fps = 30.0

[[datasets]]
video_jsonl_file = "clips.jsonl"
cache_directory = "cache/jsonl"
enable_bucket = false
"#;

    #[test]
    fn general_is_inherited_and_defaults_fill_the_rest() {
        let c = parse(MIXED).unwrap();
        let [img, vid, jsonl] = &c.datasets[..] else {
            panic!("three datasets expected")
        };
        assert_eq!(img.resolution, (960, 544));
        assert_eq!(img.caption_extension.as_deref(), Some(".txt"));
        assert_eq!((img.batch_size, img.num_repeats), (2, 3));
        assert!(img.enable_bucket && img.bucket_no_upscale);
        assert_eq!(img.source, MediaSource::Directory("img".into()));
        assert_eq!(img.cache_directory, PathBuf::from("cache/img"));
        assert_eq!(img.frames, None);

        assert_eq!(vid.resolution, (512, 512));
        assert_eq!(vid.cache_directory, PathBuf::from("vid"));
        let f = vid.frames.as_ref().unwrap();
        assert_eq!(f.target_frames, [1, 25, 45]);
        assert_eq!(f.extraction, FrameExtraction::Uniform);
        assert_eq!((f.frame_stride, f.frame_sample, f.max_frames), (1, 4, 129));
        assert_eq!(f.source_fps, Some(30.0));

        assert_eq!(jsonl.source, MediaSource::Jsonl("clips.jsonl".into()));
        assert!(!jsonl.enable_bucket && !jsonl.bucket_no_upscale);
        assert_eq!(jsonl.num_repeats, 1);
        assert_eq!(jsonl.frames, Some(FrameSettings::default()));
        // Latent caching buckets videos whatever enable_bucket says.
        assert!(jsonl.bucket_selector().unwrap().buckets().len() > 1);
        assert_eq!(
            img.bucket_selector().unwrap().select((300, 200)).unwrap(),
            (288, 192)
        );
    }

    #[test]
    fn defaults_match_musubi() {
        let c = parse("[[datasets]]\nimage_jsonl_file = \"a.jsonl\"\ncache_directory = \"c\"\n")
            .unwrap();
        let d = &c.datasets[0];
        assert_eq!(d.resolution, (960, 544));
        assert_eq!((d.batch_size, d.num_repeats), (1, 1));
        assert!(!d.enable_bucket && !d.bucket_no_upscale);
        assert_eq!(d.caption_extension, None);
        assert_eq!(d.bucket_selector().unwrap().buckets(), &[(960, 544)]);
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let e = error("[[datasets]]\nimage_directory = \"i\"\ncaption_extention = \".txt\"\n");
        assert!(
            e.contains("caption_extention") && e.contains("line 3"),
            "{e}"
        );
        let e = error("[general]\nresolution = 512\ntarget_frames = [1]\n[[datasets]]\n");
        assert!(e.contains("target_frames") && e.contains("line 3"), "{e}");
        let e = error("[trainer]\nlr = 1\n");
        assert!(e.contains("trainer") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn keys_of_the_other_dataset_kind_are_refused() {
        let e = error(
            "[general]\ncaption_extension = \".txt\"\n[[datasets]]\nimage_directory = \"i\"\n\
             frame_stride = 2\n",
        );
        assert!(e.contains("frame_stride") && e.contains("line 5"), "{e}");
        let e = error(
            "[[datasets]]\nvideo_directory = \"v\"\ncaption_extension = \".txt\"\n\
             image_directory = \"i\"\n",
        );
        assert!(e.contains("image_directory") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_typed_errors_with_lines() {
        let head = "[[datasets]]\nvideo_directory = \"v\"\ncaption_extension = \".txt\"\n";
        for (line, needle) in [
            ("source_fps = 30", "float"),
            ("source_fps = -1.0", "source_fps"),
            ("batch_size = \"2\"", "string"),
            ("batch_size = -2", "-2"),
            ("frame_stride = 0", "frame_stride"),
            ("target_frames = [0]", "target_frames"),
            ("target_frames = []", "target_frames"),
            ("frame_extraction = \"random\"", "random"),
            ("resolution = [512]", "resolution"),
            ("resolution = [16, 16]", "resolution"),
            ("enable_bucket = 1", "bool"),
        ] {
            let err = parse(&format!("{head}{line}\n")).unwrap_err();
            assert!(matches!(err, Error::BadFile { .. }), "{line}: {err:?}");
            let e = err.to_string();
            assert!(e.contains(needle) && e.contains("line 4"), "{line}: {e}");
        }
        assert!(parse(&format!("{head}source_fps = 30.0\n")).is_ok());
    }

    #[test]
    fn sources_captions_and_caches_are_checked() {
        for (text, needle) in [
            ("[[datasets]]\nresolution = 512\n", "none of"),
            (
                "[[datasets]]\nimage_directory = \"i\"\n",
                "caption_extension",
            ),
            (
                "[[datasets]]\nvideo_jsonl_file = \"v.jsonl\"\n",
                "cache_directory",
            ),
            (
                "[[datasets]]\nimage_directory = \"i\"\nimage_jsonl_file = \"j\"\n\
                 caption_extension = \".txt\"\n",
                "image_jsonl_file",
            ),
            ("[general]\nbatch_size = 1\n", "no [[datasets]]"),
            (
                "[general]\ncaption_extension = \".txt\"\n[[datasets]]\nimage_directory = \"a\"\n\
                 [[datasets]]\nvideo_directory = \"v\"\ncache_directory = \"a\"\n",
                "datasets 1 and 2",
            ),
            ("[[datasets]\n", "line 1"),
        ] {
            let e = error(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn load_refuses_special_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DatasetConfig::load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("regular file"));
        let big = dir.path().join("big.toml");
        std::fs::write(&big, "#".repeat(MAX_CONFIG_BYTES as usize + 1)).unwrap();
        assert!(DatasetConfig::load(&big).is_err());
        let ok = dir.path().join("d.toml");
        std::fs::write(&ok, MIXED).unwrap();
        assert_eq!(DatasetConfig::load(&ok).unwrap().datasets.len(), 3);
        assert!(DatasetConfig::load(&dir.path().join("missing.toml")).is_err());
    }
}
