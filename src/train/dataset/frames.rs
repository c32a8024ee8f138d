//! Which frames of a clip become training items: musubi-tuner's frame counts, decimation to
//! Wan's 16 fps and the five extraction modes, as pure functions of the clip's frame count.

use serde::Deserialize;

/// The frame rate Wan2.1 is trained at; clips with a `source_fps` are decimated to it.
pub const WAN_FPS: f64 = 16.0;

/// How windows of frames are taken from a clip (`frame_extraction` in the TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameExtraction {
    /// One window per target length, at frame 0.
    Head,
    /// Consecutive, non-overlapping windows `0, T, 2T, …` that fit in the clip.
    Chunk,
    /// Windows every `frame_stride` frames that fit in the clip.
    Slide,
    /// `frame_sample` windows spread evenly from the first to the last position that fits.
    Uniform,
    /// One window at 0 over the whole clip, at most `max_frames`, rounded down to `1 + 4k`.
    Full,
}

/// The frame settings of a video dataset, already validated and normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameSettings {
    /// Window lengths, each `1 + 4k`, sorted and without duplicates (`target_frames`).
    pub target_frames: Vec<usize>,
    /// The extraction mode (`frame_extraction`).
    pub extraction: FrameExtraction,
    /// Step between `slide` windows (`frame_stride`, at least 1).
    pub frame_stride: usize,
    /// Number of `uniform` windows (`frame_sample`, at least 1).
    pub frame_sample: usize,
    /// Longest `full` window before rounding (`max_frames`, at least 1).
    pub max_frames: usize,
    /// The clip's frame rate when it must be decimated to [`WAN_FPS`] (`source_fps`).
    pub source_fps: Option<f64>,
}

impl Default for FrameSettings {
    /// musubi-tuner's defaults: `target_frames = [1]`, `head`, stride 1, sample 1,
    /// `max_frames = 129`, no decimation.
    fn default() -> Self {
        Self {
            target_frames: vec![1],
            extraction: FrameExtraction::Head,
            frame_stride: 1,
            frame_sample: 1,
            max_frames: 129,
            source_fps: None,
        }
    }
}

/// One training item cut from a clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameWindow {
    /// Position of the first frame among the kept (decimated) frames; names the item.
    pub start: usize,
    /// Indices of the window's frames in the decoded clip, in order; always `1 + 4k` of them.
    pub frames: Vec<usize>,
}

impl FrameWindow {
    /// The item key musubi-tuner derives from the clip's stem and extension:
    /// `{stem}_{start:05}-{frames:03}{ext}`.
    pub fn item_key(&self, stem: &str, ext: &str) -> String {
        format!("{stem}_{:05}-{:03}{ext}", self.start, self.frames.len())
    }
}

/// Rounds a frame count down to the nearest `1 + 4k` (the VAE's temporal stride); `None` for 0.
pub fn round_down_4n1(frames: usize) -> Option<usize> {
    frames.checked_sub(1).map(|f| f / 4 * 4 + 1)
}

/// Normalises `target_frames` as musubi-tuner does: each value rounded down to `1 + 4k`, then
/// sorted and deduplicated. `None` when a value is 0.
pub fn normalize_target_frames(values: &[usize]) -> Option<Vec<usize>> {
    let mut out = values
        .iter()
        .map(|&f| round_down_4n1(f))
        .collect::<Option<Vec<_>>>()?;
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The frames of a clip of `frame_count` decoded frames that are kept when it is decimated
/// from `source_fps` to [`WAN_FPS`]; every frame without a `source_fps`.
///
/// musubi-tuner's rule: an accumulator starts at 0 and grows by `16 / source_fps` per decoded
/// frame; a frame is kept when the accumulator's integer part differs from the previous kept
/// frame's. A clip slower than 16 fps therefore keeps every frame (nothing is duplicated).
pub fn decimate(frame_count: usize, source_fps: Option<f64>) -> Vec<usize> {
    let Some(fps) = source_fps else {
        return (0..frame_count).collect();
    };
    let delta = WAN_FPS / fps;
    let mut acc = 0.0f64;
    let mut previous = None;
    let mut kept = Vec::new();
    for i in 0..frame_count {
        // `acc` is never negative, so truncation is Python's `int()`.
        let index = acc as u64;
        acc += delta;
        if previous != Some(index) {
            previous = Some(index);
            kept.push(i);
        }
    }
    kept
}

/// The windows a clip of `frame_count` decoded frames yields under `settings`, in musubi-tuner's
/// order (by target length, then by position). A clip shorter than every target yields none.
///
/// Positions are taken over the kept frames after [`decimate`]; each window lists the decoded
/// frame indices it covers. `uniform` may yield the same window more than once (when fewer
/// positions fit than `frame_sample`), as musubi-tuner does.
pub fn extract_windows(frame_count: usize, settings: &FrameSettings) -> Vec<FrameWindow> {
    let kept = decimate(frame_count, settings.source_fps);
    let n = kept.len();
    let mut starts: Vec<(usize, usize)> = Vec::new();
    let fitting = settings.target_frames.iter().copied().filter(|&t| t <= n);
    match settings.extraction {
        FrameExtraction::Head => starts.extend(fitting.map(|t| (0, t))),
        FrameExtraction::Uniform if settings.frame_sample == 1 => {
            starts.extend(fitting.map(|t| (0, t)))
        }
        FrameExtraction::Chunk => {
            for t in fitting {
                starts.extend((0..=n - t).step_by(t).map(|i| (i, t)));
            }
        }
        FrameExtraction::Slide => {
            for t in fitting {
                starts.extend((0..=n - t).step_by(settings.frame_stride).map(|i| (i, t)));
            }
        }
        FrameExtraction::Uniform => {
            for t in fitting {
                starts.extend(linspace_floor(n - t, settings.frame_sample).map(|i| (i, t)));
            }
        }
        FrameExtraction::Full => {
            if let Some(t) = round_down_4n1(n.min(settings.max_frames)) {
                starts.push((0, t));
            }
        }
    }
    starts
        .into_iter()
        .map(|(start, len)| FrameWindow {
            start,
            frames: kept[start..start + len].to_vec(),
        })
        .collect()
}

/// `numpy.linspace(0, stop, count, dtype=int)` for `count >= 2`: `i · (stop / (count − 1))`
/// floored, with the last value exactly `stop`.
fn linspace_floor(stop: usize, count: usize) -> impl Iterator<Item = usize> {
    let step = stop as f64 / (count - 1) as f64;
    (0..count).map(move |i| {
        if i == count - 1 {
            stop
        } else {
            (i as f64 * step) as usize
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings(extraction: FrameExtraction, target_frames: &[usize]) -> FrameSettings {
        FrameSettings {
            target_frames: target_frames.to_vec(),
            extraction,
            ..FrameSettings::default()
        }
    }

    fn starts(windows: &[FrameWindow]) -> Vec<(usize, usize)> {
        windows.iter().map(|w| (w.start, w.frames.len())).collect()
    }

    #[test]
    fn target_frames_round_down_sort_and_dedupe() {
        assert_eq!(
            normalize_target_frames(&[45, 1, 16, 13, 17, 4]),
            Some(vec![1, 13, 17, 45])
        );
        assert_eq!(normalize_target_frames(&[5, 0]), None);
        assert_eq!(round_down_4n1(81), Some(81));
        assert_eq!(round_down_4n1(84), Some(81));
        assert_eq!(round_down_4n1(85), Some(85));
    }

    #[test]
    fn decimation_from_30_fps_keeps_16_of_30() {
        let kept = decimate(30, Some(30.0));
        assert_eq!(kept.len(), 16);
        // 16/30 per frame: integer parts 0,0,1,1,2,2,… keep the first of each.
        assert_eq!(&kept[..8], &[0, 2, 4, 6, 8, 10, 12, 14]);
        assert_eq!(decimate(30, None).len(), 30);
        assert_eq!(decimate(10, Some(8.0)), (0..10).collect::<Vec<_>>());
        assert_eq!(decimate(48, Some(24.0)).len(), 32);
    }

    #[test]
    fn head_takes_each_fitting_target_at_zero() {
        let s = settings(FrameExtraction::Head, &[1, 25, 45]);
        assert_eq!(starts(&extract_windows(30, &s)), [(0, 1), (0, 25)]);
        assert!(extract_windows(0, &s).is_empty());
    }

    #[test]
    fn chunk_tiles_without_overlap() {
        let s = settings(FrameExtraction::Chunk, &[5, 9]);
        assert_eq!(
            starts(&extract_windows(19, &s)),
            [(0, 5), (5, 5), (10, 5), (0, 9), (9, 9)]
        );
    }

    #[test]
    fn slide_steps_by_stride() {
        let mut s = settings(FrameExtraction::Slide, &[9]);
        s.frame_stride = 4;
        assert_eq!(starts(&extract_windows(20, &s)), [(0, 9), (4, 9), (8, 9)]);
        assert_eq!(starts(&extract_windows(9, &s)), [(0, 9)]);
    }

    #[test]
    fn uniform_spreads_like_numpy_linspace() {
        let mut s = settings(FrameExtraction::Uniform, &[9]);
        s.frame_sample = 4;
        // np.linspace(0, 91, 4, dtype=int) == [0, 30, 60, 91]
        assert_eq!(
            starts(&extract_windows(100, &s)),
            [(0, 9), (30, 9), (60, 9), (91, 9)]
        );
        // Fewer positions than samples: repeated windows, as in musubi-tuner.
        assert_eq!(
            starts(&extract_windows(10, &s)),
            [(0, 9), (0, 9), (0, 9), (1, 9)]
        );
        s.frame_sample = 1;
        assert_eq!(starts(&extract_windows(100, &s)), [(0, 9)]);
    }

    #[test]
    fn full_takes_the_clip_up_to_max_frames() {
        let mut s = settings(FrameExtraction::Full, &[1]);
        assert_eq!(starts(&extract_windows(100, &s)), [(0, 97)]);
        assert_eq!(starts(&extract_windows(200, &s)), [(0, 129)]);
        s.max_frames = 30;
        assert_eq!(starts(&extract_windows(200, &s)), [(0, 29)]);
        assert!(extract_windows(0, &s).is_empty());
    }

    #[test]
    fn windows_map_back_to_decoded_frames() {
        let mut s = settings(FrameExtraction::Chunk, &[5]);
        s.source_fps = Some(32.0);
        let w = extract_windows(20, &s);
        assert_eq!(starts(&w), [(0, 5), (5, 5)]);
        assert_eq!(w[1].frames, [10, 12, 14, 16, 18]);
        assert_eq!(w[1].item_key("clip", ".mp4"), "clip_00005-005.mp4");
    }

    fn any_settings() -> impl Strategy<Value = FrameSettings> {
        (
            proptest::collection::vec(1usize..60, 1..4),
            prop_oneof![
                Just(FrameExtraction::Head),
                Just(FrameExtraction::Chunk),
                Just(FrameExtraction::Slide),
                Just(FrameExtraction::Uniform),
                Just(FrameExtraction::Full),
            ],
            1usize..8,
            1usize..8,
            1usize..140,
            proptest::option::of(8.0f64..60.0),
        )
            .prop_map(
                |(t, extraction, frame_stride, frame_sample, max_frames, source_fps)| {
                    FrameSettings {
                        target_frames: normalize_target_frames(&t).unwrap(),
                        extraction,
                        frame_stride,
                        frame_sample,
                        max_frames,
                        source_fps,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn windows_lie_inside_the_clip_with_4n1_lengths(n in 0usize..200, s in any_settings()) {
            for w in extract_windows(n, &s) {
                prop_assert!(!w.frames.is_empty());
                prop_assert_eq!((w.frames.len() - 1) % 4, 0);
                prop_assert!(w.frames.windows(2).all(|p| p[0] < p[1]));
                prop_assert!(*w.frames.last().unwrap() < n);
                if s.extraction != FrameExtraction::Full {
                    prop_assert!(s.target_frames.contains(&w.frames.len()));
                } else {
                    prop_assert!(w.frames.len() <= s.max_frames);
                }
            }
        }

        #[test]
        fn decimation_keeps_about_16_fps(n in 0usize..300, fps in 16.0f64..120.0) {
            let kept = decimate(n, Some(fps));
            let expected = n as f64 * WAN_FPS / fps;
            prop_assert!((kept.len() as f64 - expected).abs() <= 1.0 + 1e-9);
            prop_assert!(kept.windows(2).all(|p| p[0] < p[1]));
        }
    }
}
