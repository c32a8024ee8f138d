//! PNG output: one lossless 8-bit RGB image per frame, the metadata in an `iTXt` chunk.

use std::fs;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use super::{codec_error, frame_count, MediaFormat, MediaInfo, METADATA_KEY};
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;

/// The file name of frame `index` in a frame folder: `frame_00000.png`, `frame_00001.png`, ...
pub fn frame_file_name(index: usize) -> String {
    format!("frame_{index:05}.png")
}

/// Writes one RGB8 frame (`height × width × 3` bytes) as a PNG at `path`, atomically, with
/// `metadata` in an `iTXt` chunk with keyword [`METADATA_KEY`].
pub fn write_png(
    path: &Path,
    rgb: &[u8],
    width: usize,
    height: usize,
    metadata: Option<&str>,
) -> Result<()> {
    let count = frame_count(rgb, width, height)?;
    if count != 1 {
        return Err(Error::InvalidArgument(format!(
            "png: {count} frames given where one image was expected"
        )));
    }
    let (w, h) = png_size(width, height)?;
    write_atomic(path, |out| encode(out, rgb, w, h, metadata))
}

/// Writes every frame of `frames` (`F × height × width × 3` RGB8 bytes) into the folder `dir`
/// (created if missing) as [`frame_file_name`]`(i)`, each file atomically and each with
/// `metadata`. Returns the paths in frame order.
///
/// Files of the same names are replaced; other files in the folder are left alone. On an error
/// the frames this call already wrote are removed again.
pub fn write_png_frames(
    dir: &Path,
    frames: &[u8],
    width: usize,
    height: usize,
    metadata: Option<&str>,
) -> Result<Vec<PathBuf>> {
    frame_count(frames, width, height)?;
    let (w, h) = png_size(width, height)?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    for (i, rgb) in frames.chunks_exact(width * height * 3).enumerate() {
        let path = dir.join(frame_file_name(i));
        if let Err(e) = write_atomic(&path, |out| encode(out, rgb, w, h, metadata)) {
            for p in &written {
                // Best effort: the error that stopped the write matters more.
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
        written.push(path);
    }
    Ok(written)
}

/// PNG sizes are `u32`.
fn png_size(width: usize, height: usize) -> Result<(u32, u32)> {
    match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(Error::InvalidArgument(format!(
            "png: {width}x{height} is larger than PNG allows"
        ))),
    }
}

fn encode(
    out: &mut dyn Write,
    rgb: &[u8],
    width: u32,
    height: u32,
    metadata: Option<&str>,
) -> std::io::Result<()> {
    let err = |e| codec_error("png encoder", e);
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    if let Some(text) = metadata {
        encoder
            .add_itxt_chunk(METADATA_KEY.to_string(), text.to_string())
            .map_err(err)?;
    }
    let mut writer = encoder.write_header().map_err(err)?;
    writer.write_image_data(rgb).map_err(err)?;
    writer.finish().map_err(err)
}

/// Reads a PNG's size and its [`METADATA_KEY`] text (`iTXt` or `tEXt`).
pub(super) fn probe(path: &Path) -> Result<MediaInfo> {
    let file = crate::io::input::open_regular(path)?;
    let bad = |e: png::DecodingError| Error::bad_file(path, format!("png: {e}"));
    let reader = png::Decoder::new(BufReader::new(file))
        .read_info()
        .map_err(bad)?;
    let info = reader.info();
    let metadata = match info.utf8_text.iter().find(|c| c.keyword == METADATA_KEY) {
        Some(chunk) => Some(chunk.get_text().map_err(bad)?),
        None => info
            .uncompressed_latin1_text
            .iter()
            .find(|c| c.keyword == METADATA_KEY)
            .map(|c| c.text.clone()),
    };
    Ok(MediaInfo {
        format: MediaFormat::Png,
        width: info.width as usize,
        height: info.height as usize,
        frames: 1,
        fps: None,
        metadata,
    })
}
