//! The few ISO base media (MP4) box operations muxide does not offer: adding a comment to a
//! finished file, and reading a file's video track size, frame count, rate and comment.
//!
//! A box is `u32 BE size | 4-byte type | body`; size 1 means a `u64` size follows the type, size
//! 0 means "to the end of the parent". Errors are one-line strings; callers add the path.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};

/// One box inside a buffer: its type and byte range, header included.
#[derive(Debug, Clone, Copy)]
pub(super) struct BoxRef {
    /// The four-character type.
    pub(super) kind: [u8; 4],
    /// Where the header starts.
    pub(super) start: usize,
    /// Where the body starts.
    pub(super) body: usize,
    /// One past the last byte.
    pub(super) end: usize,
}

/// The iTunes comment item, `©cmt`.
const COMMENT: [u8; 4] = *b"\xa9cmt";

/// The largest `moov` [`summarize_file`] reads (a real one is a few kB per minute of video).
const MAX_MOOV: u64 = 64 << 20;

pub(super) fn u32_at(buf: &[u8], at: usize) -> Result<u32, String> {
    buf.get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
        .ok_or_else(|| format!("truncated box at byte {at}"))
}

pub(super) fn u64_at(buf: &[u8], at: usize) -> Result<u64, String> {
    buf.get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
        .ok_or_else(|| format!("truncated box at byte {at}"))
}

fn kind_name(kind: [u8; 4]) -> String {
    kind.iter()
        .map(|&c| if c.is_ascii_graphic() { c as char } else { '?' })
        .collect()
}

/// The boxes that tile `buf[start..end]`.
pub(super) fn children(buf: &[u8], start: usize, end: usize) -> Result<Vec<BoxRef>, String> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        if end - at < 8 {
            return Err(format!("{} stray bytes at byte {at}", end - at));
        }
        let size32 = u32_at(buf, at)?;
        let kind: [u8; 4] = buf[at + 4..at + 8].try_into().unwrap();
        let (size, header) = match size32 {
            0 => ((end - at) as u64, 8),
            1 => (u64_at(buf, at + 8)?, 16),
            s => (u64::from(s), 8),
        };
        if size < header || size > (end - at) as u64 {
            return Err(format!(
                "box `{}` at byte {at} has size {size}, which does not fit its parent",
                kind_name(kind)
            ));
        }
        out.push(BoxRef {
            kind,
            start: at,
            body: at + header as usize,
            end: at + size as usize,
        });
        at += size as usize;
    }
    Ok(out)
}

/// The first child of `parent` of type `kind`.
pub(super) fn child(buf: &[u8], parent: BoxRef, kind: &[u8; 4]) -> Result<Option<BoxRef>, String> {
    Ok(children(buf, parent.body, parent.end)?
        .into_iter()
        .find(|b| &b.kind == kind))
}

/// Follows a path of box types down from `parent`.
pub(super) fn descend(
    buf: &[u8],
    mut parent: BoxRef,
    path: &[&[u8; 4]],
) -> Result<Option<BoxRef>, String> {
    for kind in path {
        match child(buf, parent, kind)? {
            Some(b) => parent = b,
            None => return Ok(None),
        }
    }
    Ok(Some(parent))
}

/// A box with a 32-bit size.
fn make_box(kind: &[u8; 4], body: &[u8]) -> Result<Vec<u8>, String> {
    let size = u32::try_from(body.len() + 8).map_err(|_| "box over 4 GiB".to_string())?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    Ok(out)
}

/// `udta/meta/ilst/©cmt/data` holding `text` as UTF-8.
fn comment_udta(text: &str) -> Result<Vec<u8>, String> {
    // data: type 1 (UTF-8), locale 0, then the text.
    let data = make_box(
        b"data",
        &[&[0, 0, 0, 1, 0, 0, 0, 0], text.as_bytes()].concat(),
    )?;
    let ilst = make_box(b"ilst", &make_box(&COMMENT, &data)?)?;
    // hdlr: version and flags, pre_defined, handler `mdir`, 12 reserved bytes (QuickTime puts
    // the manufacturer `appl` first, as iTunes-style writers do), an empty name.
    let mut hdlr = vec![0u8; 8];
    hdlr.extend_from_slice(b"mdirappl");
    hdlr.extend_from_slice(&[0u8; 9]);
    let meta = [vec![0u8; 4], make_box(b"hdlr", &hdlr)?, ilst].concat();
    make_box(b"udta", &make_box(b"meta", &meta)?)
}

/// Adds `text` as the movie's comment (`moov/udta`) to a complete MP4 that has no `udta` yet.
/// When `moov` precedes `mdat` (fast start) the sample chunk offsets move by the inserted size.
pub(super) fn add_comment(file: &[u8], text: &str) -> Result<Vec<u8>, String> {
    let top = children(file, 0, file.len())?;
    let moov = *top
        .iter()
        .find(|b| &b.kind == b"moov")
        .ok_or("no `moov` box")?;
    if child(file, moov, b"udta")?.is_some() {
        return Err("the movie already has a `udta` box".into());
    }
    let udta = comment_udta(text)?;
    let mut new_moov = file[moov.start..moov.end].to_vec();
    new_moov.extend_from_slice(&udta);
    let new_size = new_moov.len();
    if moov.body - moov.start == 16 {
        new_moov[8..16].copy_from_slice(&(new_size as u64).to_be_bytes());
    } else {
        let size = u32::try_from(new_size).map_err(|_| "`moov` over 4 GiB".to_string())?;
        new_moov[0..4].copy_from_slice(&size.to_be_bytes());
    }
    let data_after = top
        .iter()
        .any(|b| &b.kind == b"mdat" && b.start > moov.start);
    if data_after {
        shift_chunk_offsets(&mut new_moov, udta.len() as u64)?;
    }
    Ok([&file[..moov.start], &new_moov, &file[moov.end..]].concat())
}

/// Adds `delta` to every `stco`/`co64` entry of every track of a `moov` buffer.
fn shift_chunk_offsets(moov: &mut [u8], delta: u64) -> Result<(), String> {
    let root = children(moov, 0, moov.len())?[0];
    for trak in children(moov, root.body, root.end)? {
        if &trak.kind != b"trak" {
            continue;
        }
        let Some(stbl) = descend(moov, trak, &[b"mdia", b"minf", b"stbl"])? else {
            continue;
        };
        for table in children(moov, stbl.body, stbl.end)? {
            let width = match &table.kind {
                b"stco" => 4,
                b"co64" => 8,
                _ => continue,
            };
            let count = u32_at(moov, table.body + 4)? as usize;
            let first = table.body + 8;
            if first + count * width > table.end {
                return Err(format!(
                    "`{}` table overruns its box",
                    kind_name(table.kind)
                ));
            }
            for i in 0..count {
                let at = first + i * width;
                if width == 4 {
                    let v = u64::from(u32_at(moov, at)?) + delta;
                    let v = u32::try_from(v).map_err(|_| "chunk offset over 4 GiB".to_string())?;
                    moov[at..at + 4].copy_from_slice(&v.to_be_bytes());
                } else {
                    let v = u64_at(moov, at)? + delta;
                    moov[at..at + 8].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    Ok(())
}

/// Gives the only sample of a one-frame movie the duration `seconds`, in its `stts` and in the
/// `mdhd`, `tkhd` and `mvhd` durations. (muxide derives a sample's duration from the next
/// timestamp and gives a lone sample one tick.)
pub(super) fn set_lone_sample_duration(file: &mut [u8], seconds: f64) -> Result<(), String> {
    let top = children(file, 0, file.len())?;
    let moov = *top
        .iter()
        .find(|b| &b.kind == b"moov")
        .ok_or("no `moov` box")?;
    let mvhd = child(file, moov, b"mvhd")?.ok_or("no `mvhd` box")?;
    let (movie_scale, at, wide) = scale_and_duration(file, mvhd)?;
    let movie_ticks = (seconds * f64::from(movie_scale)).round() as u64;
    put(file, at, wide, movie_ticks)?;
    for trak in children(file, moov.body, moov.end)? {
        if &trak.kind != b"trak" {
            continue;
        }
        let tkhd = child(file, trak, b"tkhd")?.ok_or("track without `tkhd`")?;
        // tkhd: version and flags, two times, track id, reserved, then the duration.
        let wide = file.get(tkhd.body) == Some(&1);
        put(
            file,
            tkhd.body + if wide { 28 } else { 20 },
            wide,
            movie_ticks,
        )?;
        let mdhd = descend(file, trak, &[b"mdia", b"mdhd"])?.ok_or("track without `mdhd`")?;
        let (media_scale, at, wide) = scale_and_duration(file, mdhd)?;
        let media_ticks = (seconds * f64::from(media_scale)).round() as u64;
        put(file, at, wide, media_ticks)?;
        let stts = descend(file, trak, &[b"mdia", b"minf", b"stbl", b"stts"])?
            .ok_or("track without `stts`")?;
        // stts: version and flags, entry count, then (sample count, delta) pairs.
        if u32_at(file, stts.body + 4)? != 1 || u32_at(file, stts.body + 8)? != 1 {
            return Err("the track has more than one sample".into());
        }
        put(file, stts.body + 12, false, media_ticks)?;
    }
    Ok(())
}

/// The timescale of an `mvhd` or `mdhd` box, and where its duration is and whether it is 64-bit.
fn scale_and_duration(buf: &[u8], b: BoxRef) -> Result<(u32, usize, bool), String> {
    // version and flags, creation and modification times (32- or 64-bit), timescale, duration.
    Ok(match buf.get(b.body) {
        Some(1) => (u32_at(buf, b.body + 20)?, b.body + 24, true),
        _ => (u32_at(buf, b.body + 12)?, b.body + 16, false),
    })
}

/// Writes a 32- or 64-bit big-endian value.
fn put(buf: &mut [u8], at: usize, wide: bool, value: u64) -> Result<(), String> {
    let bytes = if wide {
        value.to_be_bytes().to_vec()
    } else {
        u32::try_from(value)
            .map_err(|_| format!("duration {value} does not fit 32 bits"))?
            .to_be_bytes()
            .to_vec()
    };
    buf.get_mut(at..at + bytes.len())
        .ok_or_else(|| format!("truncated box at byte {at}"))?
        .copy_from_slice(&bytes);
    Ok(())
}

/// What [`summarize`] reads from a `moov` box.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Movie {
    /// The video track's width and height (`tkhd`, whole pixels).
    pub width: usize,
    /// See `width`.
    pub height: usize,
    /// The video track's sample count (`stsz`).
    pub frames: usize,
    /// Average frames per second (`mdhd` timescale and duration); `None` for a zero duration.
    pub fps: Option<f64>,
    /// The movie's `©cmt` comment.
    pub comment: Option<String>,
}

/// The `moov` box itself and its first video `trak`, in a `moov` buffer (the whole box).
pub(super) fn video_track(moov: &[u8]) -> Result<(BoxRef, BoxRef), String> {
    let root = *children(moov, 0, moov.len())?
        .first()
        .ok_or("empty `moov`")?;
    for trak in children(moov, root.body, root.end)? {
        if &trak.kind != b"trak" {
            continue;
        }
        if let Some(hdlr) = descend(moov, trak, &[b"mdia", b"hdlr"])? {
            if moov.get(hdlr.body + 8..hdlr.body + 12) == Some(b"vide") {
                return Ok((root, trak));
            }
        }
    }
    Err("no video track".into())
}

/// Reads the first video track and the comment of a `moov` buffer (the whole box).
pub(super) fn summarize(moov: &[u8]) -> Result<Movie, String> {
    let (root, trak) = video_track(moov)?;
    let tkhd = child(moov, trak, b"tkhd")?.ok_or("video track without `tkhd`")?;
    // tkhd ends with width and height as 16.16 fixed point.
    let width = (u32_at(moov, tkhd.end - 8)? >> 16) as usize;
    let height = (u32_at(moov, tkhd.end - 4)? >> 16) as usize;
    let mdhd = descend(moov, trak, &[b"mdia", b"mdhd"])?.ok_or("video track without `mdhd`")?;
    let (timescale, at, wide) = scale_and_duration(moov, mdhd)?;
    let duration = if wide {
        u64_at(moov, at)?
    } else {
        u64::from(u32_at(moov, at)?)
    };
    let stsz = descend(moov, trak, &[b"mdia", b"minf", b"stbl", b"stsz"])?
        .ok_or("video track without `stsz`")?;
    let frames = u32_at(moov, stsz.body + 8)? as usize;
    let fps = (duration > 0).then(|| frames as f64 * f64::from(timescale) / duration as f64);
    Ok(Movie {
        width,
        height,
        frames,
        fps,
        comment: comment(moov, root)?,
    })
}

/// `moov/udta/meta/ilst/©cmt/data` as text.
fn comment(buf: &[u8], moov: BoxRef) -> Result<Option<String>, String> {
    let Some(meta) = descend(buf, moov, &[b"udta", b"meta"])? else {
        return Ok(None);
    };
    // ISO meta is a full box (4 bytes of version and flags); QuickTime's is not.
    let body = if buf.get(meta.body + 4..meta.body + 8) == Some(b"hdlr") {
        meta.body
    } else {
        meta.body + 4
    };
    let inner = BoxRef { body, ..meta };
    let Some(data) = descend(buf, inner, &[b"ilst", &COMMENT, b"data"])? else {
        return Ok(None);
    };
    let text = buf
        .get(data.body + 8..data.end)
        .ok_or("truncated comment `data` box")?;
    Ok(Some(String::from_utf8_lossy(text).into_owned()))
}

/// Reads the top-level `moov` box of an MP4 file without reading the media data.
pub(super) fn read_moov(path: &Path) -> Result<Vec<u8>> {
    let bad = |what: String| Error::bad_file(path, what);
    let io = |e| Error::io(path, e);
    let mut f = crate::io::input::open_regular(path)?;
    let len = f.metadata().map_err(io)?.len();
    let mut at = 0u64;
    while at + 8 <= len {
        f.seek(SeekFrom::Start(at)).map_err(io)?;
        let mut head = [0u8; 16];
        f.read_exact(&mut head[..8]).map_err(io)?;
        let size = match u32::from_be_bytes(head[..4].try_into().unwrap()) {
            0 => len - at,
            1 => {
                f.read_exact(&mut head[8..]).map_err(io)?;
                u64::from_be_bytes(head[8..].try_into().unwrap())
            }
            s => u64::from(s),
        };
        if size < 8 || size > len - at {
            return Err(bad(format!(
                "box `{}` at byte {at} has size {size}, beyond the end of the file",
                kind_name(head[4..8].try_into().unwrap())
            )));
        }
        if &head[4..8] == b"moov" {
            if size > MAX_MOOV {
                return Err(bad(format!(
                    "`moov` box of {size} bytes is implausibly large"
                )));
            }
            let mut moov = vec![0u8; size as usize];
            f.seek(SeekFrom::Start(at)).map_err(io)?;
            f.read_exact(&mut moov).map_err(io)?;
            return Ok(moov);
        }
        at += size;
    }
    Err(bad("no `moov` box (an incomplete or fragmented MP4)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal fast-start file: ftyp, moov (one video trak with a 2-entry stco), mdat.
    fn tiny_mp4() -> Vec<u8> {
        let b = |k: &[u8; 4], body: &[u8]| make_box(k, body).unwrap();
        let mut tkhd = vec![0u8; 76];
        tkhd.extend_from_slice(&(64u32 << 16).to_be_bytes());
        tkhd.extend_from_slice(&(48u32 << 16).to_be_bytes());
        let mut mdhd = vec![0u8; 12];
        mdhd.extend_from_slice(&90_000u32.to_be_bytes());
        mdhd.extend_from_slice(&(2 * 5625u32).to_be_bytes());
        mdhd.extend_from_slice(&[0u8; 4]);
        let hdlr = [&[0u8; 8][..], b"vide", &[0u8; 13]].concat();
        let stsz = [0u32, 0, 2, 3, 3]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<_>>();
        let offsets = |first: u32| {
            [0u32, 2, first, first + 3]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect::<Vec<_>>()
        };
        let build = |first: u32| {
            let stbl = [b(b"stsz", &stsz), b(b"stco", &offsets(first))].concat();
            let minf = b(b"minf", &b(b"stbl", &stbl));
            let mdia = b(
                b"mdia",
                &[b(b"mdhd", &mdhd), b(b"hdlr", &hdlr), minf].concat(),
            );
            let trak = b(b"trak", &[b(b"tkhd", &tkhd), mdia].concat());
            b(b"moov", &trak)
        };
        let ftyp = b(b"ftyp", b"isom\0\0\0\0");
        let moov_len = build(0).len() as u32;
        let first = ftyp.len() as u32 + moov_len + 8;
        [ftyp, build(first), b(b"mdat", b"abcdef")].concat()
    }

    /// The bytes the stco of `file` points at.
    fn samples(file: &[u8]) -> Vec<Vec<u8>> {
        let top = children(file, 0, file.len()).unwrap();
        let moov = *top.iter().find(|b| &b.kind == b"moov").unwrap();
        let stco = descend(file, moov, &[b"trak", b"mdia", b"minf", b"stbl", b"stco"])
            .unwrap()
            .unwrap();
        (0..2)
            .map(|i| {
                let at = u32_at(file, stco.body + 8 + 4 * i).unwrap() as usize;
                file[at..at + 3].to_vec()
            })
            .collect()
    }

    #[test]
    fn comment_round_trips_and_offsets_follow() {
        let file = tiny_mp4();
        assert_eq!(samples(&file), [b"abc".to_vec(), b"def".to_vec()]);
        let moov = |f: &[u8]| {
            let top = children(f, 0, f.len()).unwrap();
            let m = top.iter().find(|b| &b.kind == b"moov").unwrap();
            f[m.start..m.end].to_vec()
        };
        assert_eq!(summarize(&moov(&file)).unwrap().comment, None);

        let text = "{\"prompt\":\"一只猫\",\"seed\":42}";
        let with = add_comment(&file, text).unwrap();
        assert_eq!(samples(&with), [b"abc".to_vec(), b"def".to_vec()]);
        let movie = summarize(&moov(&with)).unwrap();
        assert_eq!(
            movie,
            Movie {
                width: 64,
                height: 48,
                frames: 2,
                fps: Some(16.0),
                comment: Some(text.to_string()),
            }
        );
        assert!(add_comment(&with, "again").is_err());
    }

    #[test]
    fn malformed_boxes_are_errors() {
        let mut file = tiny_mp4();
        file[2] = 0xff; // ftyp claims more bytes than the file holds
        assert!(add_comment(&file, "x").is_err());
        assert!(add_comment(b"\0\0\0\x08ftyp", "x").is_err());
        assert!(summarize(b"").is_err());
    }
}
