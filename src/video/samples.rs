//! The H.264 samples of an MP4's video track, as Annex-B access units ready for a decoder:
//! the `avcC` parameter sets and NAL length size, and each sample's offset and size from the
//! sample table (`stsz`, `stsc`, `stco`/`co64`).
//!
//! Every count and offset comes from an untrusted file: each is checked against the `moov`
//! buffer or the file's length before it is used, and the errors are one-line strings.

use std::io::{Read, Seek, SeekFrom};

use super::isobmff::{child, children, descend, u32_at, u64_at, BoxRef};

/// The most samples a track may list (a 2-hour clip at 120 fps has under a million).
const MAX_SAMPLES: u64 = 1 << 20;

/// The largest single sample read (an H.264 frame of a 4K intra picture is a few MB).
const MAX_SAMPLE_BYTES: u64 = 64 << 20;

/// Where an H.264 track's samples are and how to turn them into Annex-B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct H264Track {
    /// The sequence and picture parameter sets, each with an Annex-B start code in front.
    pub parameter_sets: Vec<u8>,
    /// Bytes of each NAL unit's length prefix in the samples (1, 2 or 4).
    pub length_size: usize,
    /// Each sample's file offset and size, in decoding order.
    pub samples: Vec<(u64, u64)>,
}

/// A byte at `at`.
fn u8_at(buf: &[u8], at: usize) -> Result<u8, String> {
    buf.get(at)
        .copied()
        .ok_or_else(|| format!("truncated box at byte {at}"))
}

/// A big-endian `u16` at `at`.
fn u16_at(buf: &[u8], at: usize) -> Result<u16, String> {
    Ok(u16::from(u8_at(buf, at)?) << 8 | u16::from(u8_at(buf, at + 1)?))
}

/// The first video track's H.264 configuration and sample table; `Ok(None)` when the track is
/// not H.264 (`avc1`/`avc3`), so that another decoder may try.
pub(super) fn h264_track(moov: &[u8]) -> Result<Option<H264Track>, String> {
    let (_, trak) = super::isobmff::video_track(moov)?;
    let stbl =
        descend(moov, trak, &[b"mdia", b"minf", b"stbl"])?.ok_or("video track without `stbl`")?;
    let stsd = child(moov, stbl, b"stsd")?.ok_or("video track without `stsd`")?;
    // stsd: version and flags, entry count, then the sample entries as boxes.
    let entry = *children(moov, stsd.body + 8, stsd.end)?
        .first()
        .ok_or("`stsd` without a sample entry")?;
    if !matches!(&entry.kind, b"avc1" | b"avc3") {
        return Ok(None);
    }
    // A visual sample entry has 78 bytes of fields before its child boxes.
    let fields_end = entry.body + 78;
    if fields_end > entry.end {
        return Err("truncated `avc1` sample entry".into());
    }
    let avcc_box = children(moov, fields_end, entry.end)?
        .into_iter()
        .find(|b| &b.kind == b"avcC")
        .ok_or("`avc1` sample entry without `avcC`")?;
    let (parameter_sets, length_size) = avcc(moov, avcc_box)?;
    Ok(Some(H264Track {
        parameter_sets,
        length_size,
        samples: sample_table(moov, stbl)?,
    }))
}

/// The Annex-B parameter sets and the NAL length size of an `avcC` box.
fn avcc(buf: &[u8], b: BoxRef) -> Result<(Vec<u8>, usize), String> {
    let body = buf.get(b.body..b.end).ok_or("truncated `avcC`")?;
    let length_size = usize::from(u8_at(body, 4)? & 3) + 1;
    if length_size == 3 {
        return Err("`avcC` declares 3-byte NAL lengths, which H.264 does not allow".into());
    }
    let mut sets = Vec::new();
    let mut at = 5;
    for mask in [0x1f, 0xff] {
        let count = u8_at(body, at)? & mask;
        at += 1;
        for _ in 0..count {
            let len = usize::from(u16_at(body, at)?);
            let nal = body
                .get(at + 2..at + 2 + len)
                .ok_or("truncated parameter set in `avcC`")?;
            sets.extend_from_slice(&[0, 0, 0, 1]);
            sets.extend_from_slice(nal);
            at += 2 + len;
        }
    }
    Ok((sets, length_size))
}

/// The `(count, first-entry offset)` of a full box holding a table after its entry count.
fn table(buf: &[u8], b: BoxRef, entry_bytes: usize) -> Result<(usize, usize), String> {
    let count = u32_at(buf, b.body + 4)? as usize;
    let first = b.body + 8;
    if count > (b.end.saturating_sub(first)) / entry_bytes {
        return Err(format!(
            "`{}` lists {count} entries, more than its box holds",
            String::from_utf8_lossy(&b.kind)
        ));
    }
    Ok((count, first))
}

/// Each sample's offset and size from `stsz`, `stsc` and `stco` (or `co64`).
fn sample_table(buf: &[u8], stbl: BoxRef) -> Result<Vec<(u64, u64)>, String> {
    let stsz = child(buf, stbl, b"stsz")?.ok_or("video track without `stsz`")?;
    let constant = u32_at(buf, stsz.body + 4)?;
    let count = u64::from(u32_at(buf, stsz.body + 8)?);
    if count > MAX_SAMPLES {
        return Err(format!("{count} samples is implausibly many"));
    }
    let sizes: Vec<u64> = if constant == 0 {
        let sizes_box = BoxRef {
            body: stsz.body + 4,
            ..stsz
        };
        let (n, first) = table(buf, sizes_box, 4)?;
        if n as u64 != count {
            return Err("`stsz` lists a different number of sizes than samples".into());
        }
        (0..n)
            .map(|i| u32_at(buf, first + 4 * i).map(u64::from))
            .collect::<Result<_, _>>()?
    } else {
        vec![u64::from(constant); count as usize]
    };
    let stsc = child(buf, stbl, b"stsc")?.ok_or("video track without `stsc`")?;
    let (runs, stsc_first) = table(buf, stsc, 12)?;
    let (offsets, wide, co_first) = match child(buf, stbl, b"stco")? {
        Some(b) => {
            let (n, first) = table(buf, b, 4)?;
            (n, false, first)
        }
        None => {
            let b = child(buf, stbl, b"co64")?.ok_or("video track without `stco` or `co64`")?;
            let (n, first) = table(buf, b, 8)?;
            (n, true, first)
        }
    };
    let mut out = Vec::with_capacity(sizes.len());
    for run in 0..runs {
        let at = stsc_first + 12 * run;
        let first_chunk = u32_at(buf, at)? as usize;
        let per_chunk = u64::from(u32_at(buf, at + 4)?);
        let next_first = if run + 1 < runs {
            u32_at(buf, at + 12)? as usize
        } else {
            offsets + 1
        };
        if first_chunk == 0 || next_first < first_chunk || next_first > offsets + 1 {
            return Err(format!("`stsc` entry {run} names chunks outside `stco`"));
        }
        for chunk in first_chunk..next_first {
            let i = chunk - 1;
            let mut offset = if wide {
                u64_at(buf, co_first + 8 * i)?
            } else {
                u64::from(u32_at(buf, co_first + 4 * i)?)
            };
            for _ in 0..per_chunk {
                let Some(&size) = sizes.get(out.len()) else {
                    return Err("`stsc` maps more samples than `stsz` lists".into());
                };
                out.push((offset, size));
                offset = offset.checked_add(size).ok_or("sample offset overflows")?;
            }
        }
    }
    if out.len() != sizes.len() {
        return Err(format!(
            "`stsc` maps {} of the {} samples",
            out.len(),
            sizes.len()
        ));
    }
    Ok(out)
}

impl H264Track {
    /// Sample `i` read from `file` (of `file_len` bytes) as one Annex-B access unit, the
    /// parameter sets in front (so the decoder can start anywhere and survives lost ones).
    pub(super) fn access_unit<R: Read + Seek>(
        &self,
        file: &mut R,
        file_len: u64,
        i: usize,
    ) -> Result<Vec<u8>, String> {
        let (offset, size) = self.samples[i];
        if size > MAX_SAMPLE_BYTES || offset.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(format!(
                "sample {i} ({size} bytes at byte {offset}) lies beyond the end of the file"
            ));
        }
        let mut avcc = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut avcc))
            .map_err(|e| format!("sample {i}: {e}"))?;
        let mut out = self.parameter_sets.clone();
        let mut rest = &avcc[..];
        while !rest.is_empty() {
            let n = self.length_size;
            let len = rest
                .get(..n)
                .ok_or_else(|| format!("sample {i}: truncated NAL length"))?
                .iter()
                .fold(0usize, |acc, &b| acc << 8 | usize::from(b));
            let nal = rest
                .get(n..n + len)
                .ok_or_else(|| format!("sample {i}: a NAL unit runs past the sample"))?;
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
            rest = &rest[n + len..];
        }
        Ok(out)
    }
}
