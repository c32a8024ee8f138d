//! Reading video clips as RGB8 frames, for training data.
//!
//! H.264 in MP4 (what cameras, phones and wanrt itself write) is demuxed here and decoded by
//! the OpenH264 decoder compiled into wanrt (the default `openh264-source` feature). Anything
//! else (WebM, MKV, AVI, MOV with other codecs, HEVC MP4, or any clip in a build without the
//! built-in decoder) goes to the system's `ffmpeg` when it is on the `PATH`; without it the
//! error names the file, why wanrt cannot read it itself and that ffmpeg is missing.
//!
//! The files are untrusted: sizes, counts and offsets are checked before use, the decoded size
//! is capped ([`MAX_DECODED_BYTES`]), and damaged input is an error, never a panic.

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{isobmff, samples, sniff, MediaFormat};
use crate::error::{Error, Result};

/// The most bytes of RGB8 frames one clip may decode to.
pub const MAX_DECODED_BYTES: usize = 4 << 30;

/// The widest and tallest frame accepted.
const MAX_SIDE: usize = 16384;

/// A decoded clip: `frames` RGB8 frames of `width × height`, one after another.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedVideo {
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Number of frames decoded.
    pub frames: usize,
    /// `frames × height × width × 3` bytes.
    pub rgb: Vec<u8>,
    /// The average frame rate the container states, when known.
    pub fps: Option<f64>,
}

impl DecodedVideo {
    /// Frame `i`'s `height × width × 3` bytes.
    pub fn frame(&self, i: usize) -> &[u8] {
        let n = self.width * self.height * 3;
        &self.rgb[i * n..(i + 1) * n]
    }

    /// Appends one frame, checking its size against the first and the byte cap.
    fn push(&mut self, width: usize, height: usize, rgb: &[u8]) -> std::result::Result<(), String> {
        if self.frames == 0 {
            if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
                return Err(format!("a frame of {width}x{height} pixels"));
            }
            (self.width, self.height) = (width, height);
        } else if (width, height) != (self.width, self.height) {
            return Err(format!(
                "frame {} is {width}x{height}, the first was {}x{}",
                self.frames, self.width, self.height
            ));
        }
        if self.rgb.len() + rgb.len() > MAX_DECODED_BYTES {
            return Err(format!(
                "the decoded frames exceed {} GiB",
                MAX_DECODED_BYTES >> 30
            ));
        }
        self.rgb.extend_from_slice(rgb);
        self.frames += 1;
        Ok(())
    }

    fn empty(fps: Option<f64>) -> Self {
        Self {
            width: 0,
            height: 0,
            frames: 0,
            rgb: Vec::new(),
            fps,
        }
    }
}

/// Decodes at most `max_frames` frames (all when `None`) of the clip at `path`: H.264 MP4 with
/// the built-in decoder, anything else with the system's `ffmpeg`. A clip with no decodable
/// frame is returned with `frames == 0`; a damaged or unsupported file is an error naming it.
pub fn decode_video(path: &Path, max_frames: Option<usize>) -> Result<DecodedVideo> {
    decode_video_with(path, max_frames, OsStr::new("ffmpeg"))
}

/// [`decode_video`] with the ffmpeg program to fall back on.
pub(crate) fn decode_video_with(
    path: &Path,
    max_frames: Option<usize>,
    ffmpeg: &OsStr,
) -> Result<DecodedVideo> {
    let why_not_builtin = match sniff(path)? {
        Some(MediaFormat::Mp4) => {
            let moov = isobmff::read_moov(path)?;
            let bad = |e: String| Error::bad_file(path, e);
            match samples::h264_track(&moov).map_err(bad)? {
                Some(track) => match builtin::decode(path, &track, max_frames)? {
                    Some(mut video) => {
                        video.fps = isobmff::summarize(&moov).map_err(bad)?.fps;
                        return Ok(video);
                    }
                    None => "this build of wanrt has no built-in H.264 decoder",
                },
                None => "its video track is not H.264 (wanrt decodes H.264 MP4 itself)",
            }
        }
        _ => "it is not an MP4 file (wanrt decodes H.264 MP4 itself)",
    };
    ffmpeg::decode(ffmpeg, path, max_frames, why_not_builtin)
}

/// Decoding with the OpenH264 decoder compiled into wanrt.
mod builtin {
    use super::*;
    use crate::video::samples::H264Track;

    /// The clip's frames, or `None` when this build has no built-in decoder.
    #[cfg(feature = "openh264-source")]
    pub(super) fn decode(
        path: &Path,
        track: &H264Track,
        max_frames: Option<usize>,
    ) -> Result<Option<DecodedVideo>> {
        let bad = |e: String| Error::bad_file(path, format!("H.264: {e}"));
        let mut file = crate::io::input::open_regular(path)?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        // The decoder's frame accessors assert on formats it never produces; a bug there
        // must still be an error.
        let run = std::panic::AssertUnwindSafe(|| {
            decode_samples(&mut file, len, track, max_frames.unwrap_or(usize::MAX))
        });
        match std::panic::catch_unwind(run) {
            Ok(r) => r.map(Some).map_err(bad),
            Err(_) => Err(bad("the decoder failed".into())),
        }
    }

    #[cfg(feature = "openh264-source")]
    fn decode_samples(
        file: &mut std::fs::File,
        len: u64,
        track: &H264Track,
        max_frames: usize,
    ) -> std::result::Result<DecodedVideo, String> {
        use openh264::decoder::Decoder;
        use openh264::formats::YUVSource;

        let mut decoder = Decoder::new().map_err(|e| e.to_string())?;
        let mut video = DecodedVideo::empty(None);
        let mut rgb = Vec::new();
        let mut take =
            |video: &mut DecodedVideo, yuv: &dyn YUVSource, write: &dyn Fn(&mut [u8])| {
                let (w, h) = yuv.dimensions();
                rgb.resize(w * h * 3, 0);
                write(&mut rgb);
                video.push(w, h, &rgb)
            };
        for i in 0..track.samples.len() {
            if video.frames >= max_frames {
                return Ok(video);
            }
            let unit = track.access_unit(file, len, i)?;
            let decoded = decoder
                .decode(&unit)
                .map_err(|e| format!("sample {i}: {e}"))?;
            if let Some(yuv) = decoded {
                take(&mut video, &yuv, &|t| yuv.write_rgb8(t))?;
            }
        }
        for yuv in decoder.flush_remaining().map_err(|e| e.to_string())? {
            if video.frames >= max_frames {
                break;
            }
            take(&mut video, &yuv, &|t| yuv.write_rgb8(t))?;
        }
        Ok(video)
    }

    /// The clip's frames, or `None` when this build has no built-in decoder.
    #[cfg(not(feature = "openh264-source"))]
    pub(super) fn decode(
        _path: &Path,
        _track: &H264Track,
        _max_frames: Option<usize>,
    ) -> Result<Option<DecodedVideo>> {
        Ok(None)
    }
}

/// Decoding with the system's `ffmpeg`, which writes the frames as a stream of binary PPMs.
mod ffmpeg {
    use super::*;

    pub(super) fn decode(
        program: &OsStr,
        path: &Path,
        max_frames: Option<usize>,
        why_not_builtin: &str,
    ) -> Result<DecodedVideo> {
        let bad = |what: String| Error::bad_file(path, what);
        // `file:` keeps ffmpeg from reading a name as a URL or an option.
        let mut input = std::ffi::OsString::from("file:");
        input.push(path.as_os_str());
        let mut cmd = Command::new(program);
        cmd.args(["-nostdin", "-v", "error", "-i"]).arg(&input);
        if let Some(n) = max_frames {
            cmd.arg("-frames:v").arg(n.to_string());
        }
        cmd.args([
            "-f",
            "image2pipe",
            "-c:v",
            "ppm",
            "-pix_fmt",
            "rgb24",
            "pipe:1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(format!(
                    "cannot decode this video: {why_not_builtin}, and `{}` was not found to \
                     decode it (install ffmpeg, or convert the clip to H.264 MP4)",
                    program.to_string_lossy()
                )))
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut out = Vec::new();
        let read = child
            .stdout
            .take()
            .map(|s| s.take(MAX_DECODED_BYTES as u64 + 1).read_to_end(&mut out));
        let output = child.wait_with_output().map_err(|e| Error::io(path, e))?;
        if let Some(Err(e)) = read {
            return Err(Error::io(path, e));
        }
        if !output.status.success() {
            let log = String::from_utf8_lossy(&output.stderr);
            let last = log.lines().last().unwrap_or("no message").trim();
            return Err(bad(format!("ffmpeg could not decode it: {last}")));
        }
        parse_ppm_stream(&out).map_err(|e| bad(format!("ffmpeg output: {e}")))
    }

    /// Splits concatenated binary PPMs (`P6 w h 255`, then the pixels) into frames.
    pub(super) fn parse_ppm_stream(mut data: &[u8]) -> std::result::Result<DecodedVideo, String> {
        let mut video = DecodedVideo::empty(None);
        while !data.is_empty() {
            let mut fields = [0usize; 3];
            let mut at = 2;
            if !data.starts_with(b"P6") {
                return Err("not a binary PPM".into());
            }
            for field in &mut fields {
                while data.get(at).is_some_and(u8::is_ascii_whitespace) {
                    at += 1;
                }
                let digits = data[at.min(data.len())..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                let text = std::str::from_utf8(&data[at.min(data.len())..][..digits])
                    .map_err(|e| e.to_string())?;
                *field = text.parse().map_err(|_| "a bad PPM header")?;
                at += digits;
            }
            let [w, h, max] = fields;
            if max != 255 || data.get(at).is_none_or(|c| !c.is_ascii_whitespace()) {
                return Err("a PPM that is not 8-bit".into());
            }
            at += 1;
            let n = w
                .checked_mul(h)
                .and_then(|p| p.checked_mul(3))
                .ok_or("a frame too large")?;
            let pixels = data.get(at..at + n).ok_or("a truncated frame")?;
            video.push(w, h, pixels)?;
            data = &data[at + n..];
        }
        Ok(video)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ppm_streams_split_into_frames() {
        let mut s = b"P6\n2 1\n255\n".to_vec();
        s.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        s.extend_from_slice(b"P6 2 1 255\n");
        s.extend_from_slice(&[7; 6]);
        let v = ffmpeg::parse_ppm_stream(&s).unwrap();
        assert_eq!((v.width, v.height, v.frames), (2, 1, 2));
        assert_eq!(v.frame(1), &[7; 6]);
        assert!(ffmpeg::parse_ppm_stream(b"P6 2 1 255\n\x01").is_err());
        assert!(ffmpeg::parse_ppm_stream(b"P5 2 1 255\n\x01\x01").is_err());
        assert!(ffmpeg::parse_ppm_stream(b"P6 2 1 65535\n").is_err());
        assert_eq!(ffmpeg::parse_ppm_stream(b"").unwrap().frames, 0);
    }

    #[test]
    fn other_formats_without_ffmpeg_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let webm = dir.path().join("clip.webm");
        std::fs::write(&webm, b"\x1a\x45\xdf\xa3 not really webm").unwrap();
        let e = decode_video_with(&webm, None, OsStr::new("/nonexistent/ffmpeg"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("clip.webm") && e.contains("not an MP4") && e.contains("ffmpeg"),
            "{e}"
        );
    }

    /// A 3-frame 32×16 clip: a gradient that moves one pixel per frame.
    #[cfg(feature = "openh264-source")]
    fn clip() -> (Vec<u8>, Vec<u8>) {
        let (w, h, f) = (32, 16, 3);
        let frames: Vec<u8> = (0..f * h * w * 3)
            .map(|i| {
                let (k, px) = (i / (h * w * 3), i % (h * w * 3) / 3);
                ((px % w + k) * 7 + (px / w) * 5) as u8
            })
            .collect();
        let mp4 = super::super::encode_mp4(&frames, w, h, &Default::default(), None).unwrap();
        (frames, mp4)
    }

    #[cfg(feature = "openh264-source")]
    #[test]
    fn wanrt_mp4s_decode_back_to_their_frames() {
        let (frames, mp4) = clip();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.mp4");
        std::fs::write(&path, &mp4).unwrap();
        let v = decode_video(&path, None).unwrap();
        assert_eq!((v.width, v.height, v.frames), (32, 16, 3));
        assert_eq!(v.fps, Some(16.0));
        let err = v
            .rgb
            .iter()
            .zip(&frames)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
            .sum::<f64>()
            / frames.len() as f64;
        assert!(err < 6.0, "mean abs error {err}");
        assert_eq!(decode_video(&path, Some(2)).unwrap().frames, 2);
    }

    #[cfg(feature = "openh264-source")]
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// A wanrt MP4 cut short or with bytes overwritten decodes to an error or to frames,
        /// never a panic (the ffmpeg fallback is pointed at a missing program).
        #[test]
        fn damaged_mp4s_never_panic(
            cut in 0usize..4096,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        ) {
            let (_, mut mp4) = clip();
            for (at, byte) in flips {
                let n = mp4.len();
                mp4[at % n] = byte;
            }
            mp4.truncate(mp4.len().saturating_sub(cut));
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("d.mp4");
            std::fs::write(&path, &mp4).unwrap();
            let _ = decode_video_with(&path, None, OsStr::new("/nonexistent/ffmpeg"));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any bytes after a PPM header are a frame or an error, never a panic.
        #[test]
        fn damaged_ppm_streams_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut s = b"P6 2 2 255\n".to_vec();
            s.extend_from_slice(&data);
            let _ = ffmpeg::parse_ppm_stream(&s);
        }
    }
}
