//! MP4 output: RGB8 frames → OpenH264 (I420, Constrained Baseline) → muxide (fast-start MP4)
//! → comment box → atomic write.

use std::path::{Path, PathBuf};

use muxide::api::{MuxerBuilder, VideoCodec};
use openh264::encoder::{
    Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, QpRange,
    RateControlMode, VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use openh264::{OpenH264API, Timestamp};

use super::{check_fps, frame_count, isobmff, MediaFormat, MediaInfo, DEFAULT_FPS};
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;

/// The default quantiser: generated 832×480 clips come out at roughly 0.5-3 Mbit/s, without
/// visible blocking (OpenH264 has no CABAC or B-frames, so it needs a lower QP than x264's CRF 23
/// for the same look).
const DEFAULT_QP: u8 = 20;

/// Seconds between keyframes (for seeking; a Wan clip of 81 frames gets three).
const KEYFRAME_SECONDS: f64 = 2.0;

/// How an MP4 is encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Mp4Options {
    /// Frames per second, constant. Default [`DEFAULT_FPS`] (16, Wan2.1's rate).
    pub fps: f64,
    /// The H.264 quantiser, 0..=51, used for every frame: lower is better quality and a larger
    /// file (each step of 6 doubles the quantiser step size). Constant quality suits generated
    /// clips better than a bitrate target: the file is as large as its content needs. Default 20.
    pub qp: u8,
    /// Cisco's prebuilt OpenH264 library to encode with (needs the `openh264-dylib` feature);
    /// `None` uses the encoder compiled into wanrt (the default `openh264-source` feature). See
    /// the patent note in [`crate::video`].
    pub openh264_library: Option<PathBuf>,
}

impl Default for Mp4Options {
    fn default() -> Self {
        Mp4Options {
            fps: DEFAULT_FPS,
            qp: DEFAULT_QP,
            openh264_library: None,
        }
    }
}

/// Encodes `frames` (`F × height × width × 3` RGB8 bytes) as an H.264 MP4 at `path`, atomically,
/// with `metadata` (the generation parameters as JSON, by convention) as the movie's comment.
///
/// Width and height must be even (H.264 4:2:0 subsamples chroma by two; Wan sizes are multiples
/// of 16) and at most 3840×2160.
pub fn write_mp4(
    path: &Path,
    frames: &[u8],
    width: usize,
    height: usize,
    options: &Mp4Options,
    metadata: Option<&str>,
) -> Result<()> {
    let bytes = encode_mp4(frames, width, height, options, metadata)?;
    write_atomic(path, |w| w.write_all(&bytes))
}

/// [`write_mp4`] into memory: the bytes of the MP4 file.
pub fn encode_mp4(
    frames: &[u8],
    width: usize,
    height: usize,
    options: &Mp4Options,
    metadata: Option<&str>,
) -> Result<Vec<u8>> {
    let count = frame_count(frames, width, height)?;
    if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return Err(Error::InvalidArgument(format!(
            "mp4: H.264 needs an even width and height, got {width}x{height}"
        )));
    }
    check_fps(options.fps)?;
    if options.qp > 51 {
        return Err(Error::InvalidArgument(format!(
            "mp4: qp {} is not in 0..=51",
            options.qp
        )));
    }
    let fps = options.fps;
    let codec = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("mp4: {e}"));
    let config = EncoderConfig::new()
        // A one-value QP range pins the quantiser. The buffer-based mode follows it without
        // complaint; the bitrate modes print a warning when frame skipping is off.
        .rate_control_mode(RateControlMode::Bufferbased)
        .qp(QpRange::new(options.qp, options.qp))
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        // Every input frame must become one sample: the clip's length is part of the result.
        .skip_frames(false)
        .complexity(Complexity::High)
        .intra_frame_period(IntraFramePeriod::from_num_frames(
            (fps * KEYFRAME_SECONDS).round().max(1.0) as u32,
        ))
        // The RGB → YUV conversion below uses BT.601 limited-range coefficients: say so.
        .vui(VuiConfig::bt601());
    let mut encoder = Encoder::with_api_config(api(options)?, config)
        .map_err(|e| codec(&format_args!("H.264 encoder: {e}")))?;
    let mut muxer = MuxerBuilder::new(Vec::new())
        .video(VideoCodec::H264, width as u32, height as u32, fps)
        .with_fast_start(true)
        .build()
        .map_err(|e| codec(&e))?;

    let frame_bytes = width * height * 3;
    let mut yuv = YUVBuffer::new(width, height);
    let mut sample = Vec::new();
    for (i, rgb) in frames.chunks_exact(frame_bytes).enumerate() {
        yuv.read_rgb8(RgbSliceU8::new(rgb, (width, height)));
        let pts = i as f64 / fps;
        let stream = encoder
            .encode_at(&yuv, Timestamp::from_millis((pts * 1000.0).round() as u64))
            .map_err(|e| codec(&format_args!("H.264 encoder, frame {i}: {e}")))?;
        let keyframe = match stream.frame_type() {
            FrameType::IDR | FrameType::I => true,
            FrameType::P => false,
            other => {
                return Err(codec(&format_args!(
                    "H.264 encoder returned a {other:?} frame for frame {i} of {count}"
                )))
            }
        };
        sample.clear();
        stream.write_vec(&mut sample);
        muxer
            .write_video(pts, &sample, keyframe)
            .map_err(|e| codec(&e))?;
    }
    muxer.finish_in_place().map_err(|e| codec(&e))?;
    let mut bytes = muxer.into_writer();
    if count == 1 {
        isobmff::set_lone_sample_duration(&mut bytes, 1.0 / fps).map_err(|e| codec(&e))?;
    }
    match metadata {
        Some(text) => isobmff::add_comment(&bytes, text).map_err(|e| codec(&e)),
        None => Ok(bytes),
    }
}

/// The OpenH264 implementation `options` asks for.
fn api(options: &Mp4Options) -> Result<OpenH264API> {
    match &options.openh264_library {
        #[cfg(feature = "openh264-dylib")]
        Some(lib) => OpenH264API::from_blob_path(lib).map_err(|e| {
            Error::InvalidArgument(format!(
                "mp4: cannot load the OpenH264 library {}: {e} (it must be Cisco's unmodified \
                 OpenH264 2.6.0 binary, see https://github.com/cisco/openh264/releases)",
                lib.display()
            ))
        }),
        #[cfg(not(feature = "openh264-dylib"))]
        Some(lib) => Err(Error::InvalidArgument(format!(
            "mp4: this build of wanrt cannot load an OpenH264 library ({}); rebuild with \
             `--features openh264-dylib`",
            lib.display()
        ))),
        #[cfg(feature = "openh264-source")]
        None => Ok(OpenH264API::from_source()),
        #[cfg(not(feature = "openh264-source"))]
        None => Err(Error::InvalidArgument(
            "mp4: this build of wanrt has no built-in H.264 encoder; give the path of Cisco's \
             OpenH264 library (Mp4Options::openh264_library)"
                .into(),
        )),
    }
}

/// Reads an MP4's video track and comment.
pub(super) fn probe(path: &Path) -> Result<MediaInfo> {
    let moov = isobmff::read_moov(path)?;
    let movie = isobmff::summarize(&moov).map_err(|e| Error::bad_file(path, e))?;
    Ok(MediaInfo {
        format: MediaFormat::Mp4,
        width: movie.width,
        height: movie.height,
        frames: movie.frames,
        fps: movie.fps,
        metadata: movie.comment,
    })
}
