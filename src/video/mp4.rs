//! MP4 output: RGB8 frames → OpenH264 (I420, Constrained Baseline) → muxide (fast-start MP4)
//! → comment box → atomic write.

use std::path::{Path, PathBuf};

use muxide::api::{MuxerBuilder, VideoCodec};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, QpRange,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use openh264::{OpenH264API, Timestamp};

use super::{check_fps, frame_count, isobmff, MediaFormat, MediaInfo, DEFAULT_FPS};
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;

/// Default bitrate per pixel and frame: 1.6 Mbit/s for 832×480 at 16 fps, where OpenH264's
/// Baseline output of generated video looks clean.
const DEFAULT_BITS_PER_PIXEL: f64 = 0.25;

/// Seconds between keyframes (for seeking; a Wan clip of 81 frames gets three).
const KEYFRAME_SECONDS: f64 = 2.0;

/// How an MP4 is encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Mp4Options {
    /// Frames per second, constant. Default [`DEFAULT_FPS`] (16, Wan2.1's rate).
    pub fps: f64,
    /// Target bitrate in bits per second; `None` (the default) picks 0.25 bit per pixel and
    /// frame (1.6 Mbit/s at 832×480, 16 fps).
    pub bitrate: Option<u32>,
    /// The coarsest quantiser the rate control may use, 0..=51 (lower is better quality). It
    /// wins over the bitrate: detailed clips get more bits rather than visible blocks. Default 32.
    pub max_qp: u8,
    /// Cisco's prebuilt OpenH264 library to encode with (needs the `openh264-dylib` feature);
    /// `None` uses the encoder compiled into wanrt (the default `openh264-source` feature). See
    /// the patent note in [`crate::video`].
    pub openh264_library: Option<PathBuf>,
}

impl Default for Mp4Options {
    fn default() -> Self {
        Mp4Options {
            fps: DEFAULT_FPS,
            bitrate: None,
            max_qp: 32,
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
    if width % 2 != 0 || height % 2 != 0 {
        return Err(Error::InvalidArgument(format!(
            "mp4: H.264 needs an even width and height, got {width}x{height}"
        )));
    }
    check_fps(options.fps)?;
    if options.max_qp > 51 {
        return Err(Error::InvalidArgument(format!(
            "mp4: max_qp {} is not in 0..=51",
            options.max_qp
        )));
    }
    let fps = options.fps;
    let codec = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("mp4: {e}"));
    let bitrate = match options.bitrate {
        Some(b) => b,
        None => (width as f64 * height as f64 * fps * DEFAULT_BITS_PER_PIXEL).min(u32::MAX as f64)
            as u32,
    };
    let config = EncoderConfig::new()
        .usage_type(UsageType::CameraVideoNonRealTime)
        .rate_control_mode(RateControlMode::Quality)
        .bitrate(BitRate::from_bps(bitrate))
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .qp(QpRange::new(0, options.max_qp))
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
    let bytes = muxer.into_writer();
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
                "mp4: cannot load the OpenH264 library {}: {e} (it must be an unmodified \
                 release from https://github.com/cisco/openh264/releases)",
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
