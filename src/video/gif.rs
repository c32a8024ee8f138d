//! Animated GIF output: a 256-colour palette per frame (NeuQuant, frames quantised in
//! parallel), looping forever, the metadata in a comment extension.

use std::io::{BufReader, Read};
use std::path::Path;

use gif::{AnyExtension, Encoder, Frame, Repeat};
use rayon::prelude::*;

use super::{check_fps, codec_error, frame_count, MediaFormat, MediaInfo};
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;

/// NeuQuant sampling speed, 1 (best) to 30 (fastest); 10 is the gif crate's own default.
const QUANTIZE_SPEED: i32 = 10;

/// GIF block introducers and extension labels.
const EXTENSION: u8 = 0x21;
const IMAGE: u8 = 0x2c;
const TRAILER: u8 = 0x3b;
const COMMENT: u8 = 0xfe;
const GRAPHIC_CONTROL: u8 = 0xf9;

/// Writes `frames` (`F × height × width × 3` RGB8 bytes) as an animated GIF at `path`,
/// atomically, looping forever at `fps`, with `metadata` in a comment extension (UTF-8; the
/// format asks for ASCII but readers pass the bytes through).
///
/// GIF delays are whole hundredths of a second: frame `i` lasts
/// `round(100 (i + 1) / fps) - round(100 i / fps)`, so 16 fps alternates 6 and 7.
pub fn write_gif(
    path: &Path,
    frames: &[u8],
    width: usize,
    height: usize,
    fps: f64,
    metadata: Option<&str>,
) -> Result<()> {
    frame_count(frames, width, height)?;
    check_fps(fps)?;
    let (Ok(w), Ok(h)) = (u16::try_from(width), u16::try_from(height)) else {
        return Err(Error::InvalidArgument(format!(
            "gif: {width}x{height} is larger than GIF allows (65535x65535)"
        )));
    };
    let centis = |i: usize| (i as f64 * 100.0 / fps).round();
    let quantized: Vec<Frame<'static>> = frames
        .par_chunks_exact(width * height * 3)
        .enumerate()
        .map(|(i, rgb)| {
            let mut frame = Frame::from_rgb_speed(w, h, rgb, QUANTIZE_SPEED);
            frame.delay = (centis(i + 1) - centis(i)).min(f64::from(u16::MAX)) as u16;
            frame
        })
        .collect();
    write_atomic(path, |out| {
        let err = |e| codec_error("gif encoder", e);
        let mut encoder = Encoder::new(out, w, h, &[]).map_err(err)?;
        encoder.set_repeat(Repeat::Infinite).map_err(err)?;
        if let Some(text) = metadata {
            encoder
                .write_raw_extension(AnyExtension(COMMENT), &[text.as_bytes()])
                .map_err(err)?;
        }
        for frame in &quantized {
            encoder.write_frame(frame).map_err(err)?;
        }
        encoder.into_inner().map_err(err).map(|_| ())
    })
}

/// Walks a GIF's blocks: size, frame count, total delay and the first comment.
pub(super) fn probe(path: &Path) -> Result<MediaInfo> {
    let file = crate::io::input::open_regular(path)?;
    let mut r = Blocks(BufReader::new(file));
    let bad = |what: &str| Error::bad_file(path, format!("gif: {what}"));
    let io = |e| Error::io(path, e);
    let mut screen = [0u8; 13];
    r.0.read_exact(&mut screen).map_err(io)?;
    let width = u16::from_le_bytes([screen[6], screen[7]]) as usize;
    let height = u16::from_le_bytes([screen[8], screen[9]]) as usize;
    r.skip_color_table(screen[10]).map_err(io)?;
    let (mut frames, mut centis, mut comment) = (0usize, 0u64, None);
    loop {
        match r.byte().map_err(io)? {
            EXTENSION => {
                let label = r.byte().map_err(io)?;
                let data = r.sub_blocks(label == COMMENT || label == GRAPHIC_CONTROL);
                let data = data.map_err(io)?;
                if label == COMMENT && comment.is_none() {
                    comment = Some(String::from_utf8_lossy(&data).into_owned());
                } else if label == GRAPHIC_CONTROL && data.len() >= 3 {
                    centis += u64::from(u16::from_le_bytes([data[1], data[2]]));
                }
            }
            IMAGE => {
                frames += 1;
                let mut descriptor = [0u8; 9];
                r.0.read_exact(&mut descriptor).map_err(io)?;
                r.skip_color_table(descriptor[8]).map_err(io)?;
                r.byte().map_err(io)?; // LZW minimum code size
                r.sub_blocks(false).map_err(io)?;
            }
            TRAILER => break,
            other => return Err(bad(&format!("unknown block 0x{other:02x}"))),
        }
    }
    Ok(MediaInfo {
        format: MediaFormat::Gif,
        width,
        height,
        frames,
        fps: (centis > 0).then(|| frames as f64 * 100.0 / centis as f64),
        metadata: comment,
    })
}

/// A GIF byte stream read block by block.
struct Blocks<R>(R);

impl<R: Read> Blocks<R> {
    fn byte(&mut self) -> std::io::Result<u8> {
        let mut b = [0u8];
        self.0.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// Skips the colour table a packed field (screen or image descriptor) announces.
    fn skip_color_table(&mut self, packed: u8) -> std::io::Result<()> {
        if packed & 0x80 != 0 {
            let len = 3u64 << ((packed & 7) + 1);
            std::io::copy(&mut (&mut self.0).take(len), &mut std::io::sink())?;
        }
        Ok(())
    }

    /// Reads sub-blocks up to the terminator, returning their bytes when `keep`.
    fn sub_blocks(&mut self, keep: bool) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let len = self.byte()? as usize;
            if len == 0 {
                return Ok(out);
            }
            let mut block = [0u8; 255];
            self.0.read_exact(&mut block[..len])?;
            if keep {
                out.extend_from_slice(&block[..len]);
            }
        }
    }
}
