//! A dataset's media files and their captions, as musubi-tuner finds them: every image
//! (`png jpg jpeg webp bmp avif`) or video (`mp4 webm avi mkv mov flv wmv m4v mpg mpeg`) file of
//! the directory, in either case, sorted by name, with its caption read from
//! `<stem><caption_extension>` and stripped; or the objects of a JSONL file, one per line:
//! `{"image_path": …, "caption": …}` (`video_path` for video datasets).
//!
//! A directory file without a caption file is skipped and listed in
//! [`MediaListing::missing_captions`] (the caching commands report the count); a JSONL line that
//! is not such an object is an error naming the line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config::{Dataset, MediaSource};
use crate::error::{Error, Result};
use crate::io::input;

/// The largest caption file or JSONL file read.
const MAX_TEXT_BYTES: u64 = 64 << 20;

/// Image file extensions musubi-tuner lists (wanrt decodes png, jpg/jpeg and webp).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "avif"];

/// Video file extensions musubi-tuner lists.
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "webm", "avi", "mkv", "mov", "flv", "wmv", "m4v", "mpg", "mpeg",
];

/// One media file with its caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFile {
    /// The image or video.
    pub path: PathBuf,
    /// Its file name without the extension; names its cache files.
    pub stem: String,
    /// The caption, stripped.
    pub caption: String,
}

/// What [`list_media`] finds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaListing {
    /// The files with a caption, in order.
    pub files: Vec<MediaFile>,
    /// Directory files skipped because their caption file does not exist.
    pub missing_captions: Vec<PathBuf>,
}

/// The media files of `dataset` with their captions.
pub fn list_media(dataset: &Dataset) -> Result<MediaListing> {
    let video = dataset.frames.is_some();
    match &dataset.source {
        MediaSource::Directory(dir) => {
            let ext = dataset.caption_extension.as_deref().unwrap_or_default();
            list_directory(dir, video, ext)
        }
        MediaSource::Jsonl(file) => list_jsonl(file, video),
    }
}

fn stem_of(path: &Path) -> Result<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::bad_file(path, "a media file name that is not UTF-8"))
}

fn list_directory(dir: &Path, video: bool, caption_extension: &str) -> Result<MediaListing> {
    let known = if video {
        VIDEO_EXTENSIONS
    } else {
        IMAGE_EXTENSIONS
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if ext.is_some_and(|e| known.contains(&e.as_str())) && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut listing = MediaListing::default();
    for path in paths {
        let stem = stem_of(&path)?;
        let caption_path = dir.join(format!("{stem}{caption_extension}"));
        if !caption_path.exists() {
            listing.missing_captions.push(path);
            continue;
        }
        let caption = input::read_text_capped(&caption_path, MAX_TEXT_BYTES, "caption")?;
        listing.files.push(MediaFile {
            path,
            stem,
            caption: caption.trim().to_owned(),
        });
    }
    Ok(listing)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlLine {
    #[serde(alias = "video_path")]
    image_path: Option<PathBuf>,
    caption: String,
    /// Control videos are accepted and not used (wanrt trains text-to-video LoRAs).
    #[serde(rename = "control_path", default)]
    _control_path: Option<serde::de::IgnoredAny>,
}

fn list_jsonl(file: &Path, video: bool) -> Result<MediaListing> {
    let key = if video { "video_path" } else { "image_path" };
    let text = input::read_text_capped(file, MAX_TEXT_BYTES, "JSONL file")?;
    let mut listing = MediaListing::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |what: String| Error::bad_file(file, format!("line {}: {what}", i + 1));
        let item: JsonlLine = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        let path = item.image_path.ok_or_else(|| at(format!("no `{key}`")))?;
        listing.files.push(MediaFile {
            stem: stem_of(&path)?,
            path,
            caption: item.caption.trim().to_owned(),
        });
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dataset::DatasetConfig;

    fn dataset(toml: &str) -> Dataset {
        DatasetConfig::parse(toml, Path::new("d.toml"))
            .unwrap()
            .datasets
            .remove(0)
    }

    #[test]
    fn directories_pair_files_with_captions_and_count_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["b.PNG", "a.jpg", "c.webp", "notes.md", "clip.mp4"] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        std::fs::write(d.join("a.txt"), "  a cat \n").unwrap();
        std::fs::write(d.join("b.txt"), "a dog").unwrap();
        std::fs::write(d.join("clip.txt"), "a clip").unwrap();
        let toml = format!(
            "[[datasets]]\nimage_directory = {:?}\ncaption_extension = \".txt\"\n",
            d.display()
        );
        let l = list_media(&dataset(&toml)).unwrap();
        let got: Vec<_> = l
            .files
            .iter()
            .map(|f| (&f.stem[..], &f.caption[..]))
            .collect();
        assert_eq!(got, [("a", "a cat"), ("b", "a dog")]);
        assert_eq!(l.missing_captions, [d.join("c.webp")]);
        let toml = toml.replace("image_directory", "video_directory");
        let l = list_media(&dataset(&toml)).unwrap();
        assert_eq!(l.files.len(), 1);
        assert_eq!(l.files[0].stem, "clip");
    }

    #[test]
    fn jsonl_lines_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("v.jsonl");
        std::fs::write(
            &j,
            "{\"video_path\": \"x/one.mp4\", \"caption\": \"first \"}\n\n\
             {\"video_path\": \"two.mp4\", \"caption\": \"second\", \"control_path\": \"c\"}\n",
        )
        .unwrap();
        let toml = format!(
            "[[datasets]]\nvideo_jsonl_file = {:?}\ncache_directory = \"c\"\n",
            j.display()
        );
        let l = list_media(&dataset(&toml)).unwrap();
        assert_eq!(l.files[0].stem, "one");
        assert_eq!(l.files[0].caption, "first");
        assert_eq!(l.files[1].path, PathBuf::from("two.mp4"));
        std::fs::write(&j, "{\"video_path\": \"a.mp4\"}\n").unwrap();
        let e = list_media(&dataset(&toml)).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("caption"), "{e}");
        std::fs::write(&j, "{\"caption\": \"x\"}\n").unwrap();
        let e = list_media(&dataset(&toml)).unwrap_err().to_string();
        assert!(e.contains("video_path"), "{e}");
    }
}
