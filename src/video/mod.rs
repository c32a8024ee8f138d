//! Video output: RGB8 frames to MP4 (H.264), animated GIF or PNG files, each carrying the
//! generation parameters, and the reader that prints them back.
//!
//! Frames come as one `&[u8]` of `F × H × W × 3` bytes (8-bit RGB, row-major, frames one after
//! another) with the width and height; this module knows nothing of tensors.
//!
//! - [`write_mp4`]: H.264 (Constrained Baseline, 4:2:0, BT.601 limited range signalled in the
//!   stream) at a constant frame rate, 16 fps by default (Wan2.1's rate), encoded by OpenH264 and
//!   muxed by muxide into a fast-start MP4. Width and height must be even.
//! - [`write_png_frames`] / [`write_png`]: one lossless PNG per frame (`frame_00000.png`, ...).
//! - [`write_gif`]: an animated GIF that loops forever, with a 256-colour palette per frame.
//!
//! Every writer is atomic (see [`crate::io::atomic`]): a file appears complete or not at all.
//!
//! # Generation metadata
//! Each writer takes an optional text, by convention the JSON of the generation parameters, and
//! stores it where standard tools look:
//! - MP4: an iTunes-style comment, `moov/udta/meta/ilst/©cmt` (ffprobe prints it as the
//!   `comment` tag, as ComfyUI does for its workflows). muxide can only write a title and a date,
//!   so the box is inserted into the finished file and the chunk offsets are moved to match.
//! - PNG: an uncompressed `iTXt` chunk (UTF-8, so non-Latin prompts survive) with keyword
//!   [`METADATA_KEY`].
//! - GIF: a comment extension after the header.
//!
//! [`decode_video`] reads clips back as RGB8 frames (H.264 MP4 built in, other formats through
//! the system's ffmpeg), for training data.
//!
//! [`read_metadata`] returns the text of any of the three; [`probe`] adds the format, size, frame
//! count and frame rate (what `wanrt inspect` prints).
//!
//! # H.264 patents
//! H.264 is covered by patents. Cisco pays the MPEG LA royalties for **its own prebuilt OpenH264
//! binaries** only, when the user downloads them (<https://www.openh264.org/faq.html>); an
//! encoder compiled from source, as the default `openh264-source` feature does, is not covered.
//! Whether that matters depends on where and how wanrt is used and shipped; this is a legal call
//! for whoever distributes binaries, not a technical one. The alternative is to build with
//! `--no-default-features --features openh264-dylib` and have users download Cisco's binary
//! themselves, then pass its path in [`Mp4Options::openh264_library`]. openh264 0.9 loads only
//! the OpenH264 2.6.0 release binaries it knows by SHA-256 (on Linux x86-64
//! `libopenh264-2.6.0-linux64.8.so`, from `http://ciscobinary.openh264.org/` as `.bz2`, listed
//! on <https://github.com/cisco/openh264/releases>); a distribution's own build, such as Debian's
//! `libopenh264-7`, is refused with a hash error. PNG and GIF carry no such burden.

mod decode;
mod gif;
mod isobmff;
mod mp4;
mod png;
mod samples;

use std::fmt;
use std::io::Read;
use std::path::Path;

pub use self::decode::{decode_video, DecodedVideo, MAX_DECODED_BYTES};
pub use self::gif::write_gif;
pub use self::mp4::{encode_mp4, write_mp4, Mp4Options};
pub use self::png::{frame_file_name, write_png, write_png_frames};
use crate::error::{Error, Result};

/// Wan2.1's frame rate, the default of every writer.
pub const DEFAULT_FPS: f64 = 16.0;

/// The PNG text keyword under which the generation metadata is stored.
pub const METADATA_KEY: &str = "wanrt";

/// A media file format this module writes and reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaFormat {
    /// MP4 (ISO base media file) with an H.264 track.
    Mp4,
    /// A single PNG image.
    Png,
    /// A (possibly animated) GIF.
    Gif,
}

impl fmt::Display for MediaFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MediaFormat::Mp4 => "mp4",
            MediaFormat::Png => "png",
            MediaFormat::Gif => "gif",
        })
    }
}

/// What [`probe`] finds in a media file.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    /// The container format.
    pub format: MediaFormat,
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Number of frames (1 for a PNG).
    pub frames: usize,
    /// Frames per second: the track's average for MP4, from the frame delays for GIF, `None`
    /// for PNG (and for a GIF without delays).
    pub fps: Option<f64>,
    /// The recorded generation metadata, if any.
    pub metadata: Option<String>,
}

impl fmt::Display for MediaInfo {
    /// Three lines: format, size with frames and rate, metadata.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format:   {}", self.format)?;
        let plural = if self.frames == 1 { "" } else { "s" };
        write!(
            f,
            "video:    {}x{}, {} frame{plural}",
            self.width, self.height, self.frames
        )?;
        if let Some(fps) = self.fps {
            write!(f, ", {} fps", (fps * 1000.0).round() / 1000.0)?;
        }
        writeln!(f)?;
        write!(
            f,
            "metadata: {}",
            self.metadata.as_deref().unwrap_or("(none)")
        )
    }
}

/// Recognises a media file by its first bytes; `None` for anything else (a model file or a
/// folder, say).
pub fn sniff(path: &Path) -> Result<Option<MediaFormat>> {
    if path.is_dir() {
        return Ok(None);
    }
    let mut head = [0u8; 12];
    let mut f = crate::io::input::open_regular(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(|e| Error::io(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    Ok(if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(MediaFormat::Png)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(MediaFormat::Gif)
    } else if head.len() >= 8 && &head[4..8] == b"ftyp" {
        Some(MediaFormat::Mp4)
    } else {
        None
    })
}

/// Reads the format, size, frame count, frame rate and metadata of an MP4, PNG or GIF file.
pub fn probe(path: &Path) -> Result<MediaInfo> {
    match sniff(path)? {
        Some(MediaFormat::Mp4) => mp4::probe(path),
        Some(MediaFormat::Png) => png::probe(path),
        Some(MediaFormat::Gif) => gif::probe(path),
        None => Err(Error::bad_file(path, "not an MP4, PNG or GIF file")),
    }
}

/// The generation metadata recorded in an MP4, PNG or GIF file (`None` when it has none).
pub fn read_metadata(path: &Path) -> Result<Option<String>> {
    Ok(probe(path)?.metadata)
}

/// Checks a frame buffer against its size and returns the number of frames.
fn frame_count(frames: &[u8], width: usize, height: usize) -> Result<usize> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidArgument(format!(
            "video: frame size {width}x{height} is empty"
        )));
    }
    let frame_bytes = width
        .checked_mul(height)
        .and_then(|p| p.checked_mul(3))
        .ok_or_else(|| Error::InvalidArgument(format!("video: {width}x{height} is too large")))?;
    if frames.is_empty() || !frames.len().is_multiple_of(frame_bytes) {
        return Err(Error::InvalidArgument(format!(
            "video: {} bytes are not a whole number (>= 1) of {width}x{height} RGB8 frames \
             ({frame_bytes} bytes each)",
            frames.len()
        )));
    }
    Ok(frames.len() / frame_bytes)
}

/// Checks a frame rate: finite, positive and at most 1000 fps.
fn check_fps(fps: f64) -> Result<()> {
    if fps.is_finite() && fps > 0.0 && fps <= 1000.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "video: frame rate {fps} is not in (0, 1000]"
        )))
    }
}

/// Wraps a codec error so [`crate::io::atomic::write_atomic`] reports it against the path.
fn codec_error(codec: &str, e: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{codec}: {e}"))
}
