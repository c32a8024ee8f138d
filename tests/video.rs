//! Video output: MP4 decodes (mp4 demuxer + OpenH264 decoder, and ffprobe when installed) to the
//! right frame count, size, pixels and 16 fps; PNG round-trips exactly; GIF keeps its frames;
//! every format gives its metadata back; bad input and unwritable paths fail cleanly.

#![cfg(feature = "openh264-source")]

mod common;

use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::process::Command;

use common::readback::{decode, ffprobe};

use wanrt::video::{
    self, frame_file_name, probe, read_metadata, write_gif, write_mp4, write_png, write_png_frames,
    MediaFormat, Mp4Options,
};

/// Generation parameters with a non-Latin prompt (Wan's default negative prompt is Chinese).
const META: &str = r#"{"prompt":"a cat surfing, golden hour","negative_prompt":"色调艳丽，过曝","seed":42,"steps":8,"lora":[{"file":"ghibli.safetensors","sha256":"ab12","strength":0.9}]}"#;

/// A smooth moving gradient, `frames × height × width × 3` bytes.
fn clip(frames: usize, width: usize, height: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames * width * height * 3);
    let tau = std::f64::consts::TAU;
    for t in 0..frames {
        let phase = t as f64 / frames as f64;
        for y in 0..height {
            for x in 0..width {
                let (u, v) = (x as f64 / width as f64, y as f64 / height as f64);
                out.push((128.0 + 100.0 * (tau * (u + phase)).sin()) as u8);
                out.push((128.0 + 100.0 * (tau * (v - phase)).cos()) as u8);
                out.push((255.0 * (u + v) / 2.0) as u8);
            }
        }
    }
    out
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let mse = se / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

fn check_mp4(frames: usize, width: usize, height: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let rgb = clip(frames, width, height);
    write_mp4(
        &path,
        &rgb,
        width,
        height,
        &Mp4Options::default(),
        Some(META),
    )
    .unwrap();

    let d = decode(&path);
    assert_eq!((d.width, d.height), (width, height));
    assert_eq!(d.durations.len(), frames, "samples in the track");
    assert_eq!(d.frames, frames, "frames decoded");
    // 16 fps, constant: every sample lasts timescale / 16.
    assert!(
        d.durations
            .iter()
            .all(|&t| u64::from(t) * 16 == u64::from(d.timescale)),
        "durations {:?} at timescale {}",
        d.durations,
        d.timescale
    );
    let db = psnr(&d.rgb, &rgb);
    println!(
        "{frames} frames {width}x{height}: PSNR {db:.1} dB, {} bytes",
        fs::metadata(&path).unwrap().len()
    );
    assert!(db > 30.0, "PSNR {db:.1} dB");

    let info = probe(&path).unwrap();
    assert_eq!(info.format, MediaFormat::Mp4);
    assert_eq!(
        (info.width, info.height, info.frames),
        (width, height, frames)
    );
    assert_eq!(info.fps, Some(16.0));
    assert_eq!(info.metadata.as_deref(), Some(META));
    assert_eq!(read_metadata(&path).unwrap().as_deref(), Some(META));

    if let Some(report) = ffprobe(&path) {
        let s = &report["streams"][0];
        assert_eq!(s["codec_name"], "h264", "{report}");
        assert_eq!(s["pix_fmt"], "yuv420p", "{report}");
        assert_eq!(
            (s["width"].as_u64(), s["height"].as_u64()),
            (Some(width as u64), Some(height as u64))
        );
        assert_eq!(s["r_frame_rate"], "16/1", "{report}");
        assert_eq!(s["nb_read_frames"], frames.to_string(), "{report}");
        assert_eq!(report["format"]["tags"]["comment"], META, "{report}");
    }
}

#[test]
fn mp4_9_frames_64x48() {
    check_mp4(9, 64, 48);
}

#[test]
fn mp4_33_frames_256x192() {
    check_mp4(33, 256, 192);
}

#[test]
fn mp4_single_frame_lasts_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.mp4");
    write_mp4(
        &path,
        &clip(1, 32, 16),
        32,
        16,
        &Mp4Options::default(),
        None,
    )
    .unwrap();
    let d = decode(&path);
    assert_eq!(d.frames, 1);
    assert_eq!(u64::from(d.durations[0]) * 16, u64::from(d.timescale));
    let info = probe(&path).unwrap();
    assert_eq!(
        (info.frames, info.fps, info.metadata),
        (1, Some(16.0), None)
    );
    if let Some(report) = ffprobe(&path) {
        assert_eq!(report["streams"][0]["nb_read_frames"], "1", "{report}");
    }
}

#[test]
fn mp4_frame_rate_and_quantiser_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = clip(12, 64, 48);
    let opts = |fps, qp| Mp4Options {
        fps,
        qp,
        ..Mp4Options::default()
    };
    let path = dir.path().join("24.mp4");
    write_mp4(&path, &rgb, 64, 48, &opts(24.0, 20), None).unwrap();
    assert_eq!(probe(&path).unwrap().fps, Some(24.0));
    assert!(Mp4Options::default().fps == video::DEFAULT_FPS && video::DEFAULT_FPS == 16.0);
    for bad in [0.0, -1.0, f64::NAN] {
        assert!(write_mp4(&path, &rgb, 64, 48, &opts(bad, 20), None).is_err());
    }
    assert!(write_mp4(&path, &rgb, 64, 48, &opts(16.0, 52), None).is_err());

    // A coarser quantiser gives a smaller file and a lower PSNR.
    let (fine, coarse) = (dir.path().join("q10.mp4"), dir.path().join("q40.mp4"));
    write_mp4(&fine, &rgb, 64, 48, &opts(16.0, 10), None).unwrap();
    write_mp4(&coarse, &rgb, 64, 48, &opts(16.0, 40), None).unwrap();
    let size = |p: &Path| fs::metadata(p).unwrap().len();
    assert!(
        size(&fine) > 2 * size(&coarse),
        "{} vs {}",
        size(&fine),
        size(&coarse)
    );
    assert!(psnr(&decode(&fine).rgb, &rgb) > psnr(&decode(&coarse).rgb, &rgb) + 5.0);
}

#[test]
fn png_frames_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frames");
    let (frames, width, height) = (5, 33, 17); // odd sizes are fine for PNG
    let rgb = clip(frames, width, height);
    let paths = write_png_frames(&out, &rgb, width, height, Some(META)).unwrap();
    assert_eq!(paths.len(), frames);
    for (i, path) in paths.iter().enumerate() {
        assert_eq!(path, &out.join(frame_file_name(i)));
        let decoder = png::Decoder::new(BufReader::new(fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (width as u32, height as u32));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let n = width * height * 3;
        assert_eq!(
            &buf[..info.buffer_size()],
            &rgb[i * n..(i + 1) * n],
            "frame {i}"
        );
        assert_eq!(read_metadata(path).unwrap().as_deref(), Some(META));
    }
    assert_eq!(frame_file_name(0), "frame_00000.png");
    let names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), frames, "no stray temporary files: {names:?}");

    let single = dir.path().join("one.png");
    write_png(&single, &rgb[..width * height * 3], width, height, None).unwrap();
    let info = probe(&single).unwrap();
    assert_eq!(
        (
            info.format,
            info.width,
            info.height,
            info.frames,
            info.metadata
        ),
        (MediaFormat::Png, width, height, 1, None)
    );
    assert!(
        write_png(&single, &rgb, width, height, None).is_err(),
        "five frames for one image"
    );
}

#[test]
fn gif_keeps_frames_loops_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.gif");
    let (frames, width, height) = (9, 64, 48);
    write_gif(
        &path,
        &clip(frames, width, height),
        width,
        height,
        16.0,
        Some(META),
    )
    .unwrap();

    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let mut decoder = options.read_info(fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(
        (decoder.width(), decoder.height()),
        (width as u16, height as u16)
    );
    let mut delays = Vec::new();
    while let Some(frame) = decoder.read_next_frame().unwrap() {
        delays.push(frame.delay);
    }
    assert_eq!(decoder.repeat(), gif::Repeat::Infinite);
    assert_eq!(delays.len(), frames);
    // 16 fps in hundredths: 6 and 7 alternating, 9 frames in round(900 / 16) = 56.
    assert_eq!(
        delays.iter().map(|&d| u32::from(d)).sum::<u32>(),
        56,
        "{delays:?}"
    );

    let info = probe(&path).unwrap();
    assert_eq!(info.format, MediaFormat::Gif);
    assert_eq!(
        (info.width, info.height, info.frames),
        (width, height, frames)
    );
    assert!((info.fps.unwrap() - 16.0).abs() < 0.2, "{:?}", info.fps);
    assert_eq!(info.metadata.as_deref(), Some(META));

    if let Some(report) = ffprobe(&path) {
        assert_eq!(
            report["streams"][0]["nb_read_frames"],
            frames.to_string(),
            "{report}"
        );
    }
}

#[test]
fn metadata_round_trips_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = clip(3, 16, 16);
    // Longer than one GIF sub-block (255 bytes), with multi-byte characters across the splits.
    let long =
        serde_json::json!({ "prompt": "水墨画风格的山水，".repeat(40), "seed": 7 }).to_string();
    assert!(long.len() > 1000);
    for meta in [None, Some(META), Some(long.as_str())] {
        let mp4 = dir.path().join("a.mp4");
        let gif = dir.path().join("a.gif");
        let png = dir.path().join("a.png");
        write_mp4(&mp4, &rgb, 16, 16, &Mp4Options::default(), meta).unwrap();
        write_gif(&gif, &rgb, 16, 16, 16.0, meta).unwrap();
        write_png(&png, &rgb[..16 * 16 * 3], 16, 16, meta).unwrap();
        for p in [&mp4, &gif, &png] {
            assert_eq!(
                read_metadata(p).unwrap().as_deref(),
                meta,
                "{}",
                p.display()
            );
        }
        // The comment box must not disturb the samples it moved.
        assert_eq!(decode(&mp4).frames, 3);
    }
    let other = dir.path().join("model.safetensors");
    fs::write(&other, b"\x08\0\0\0\0\0\0\0{}      ").unwrap();
    assert_eq!(video::sniff(&other).unwrap(), None);
    assert_eq!(video::sniff(dir.path()).unwrap(), None);
    assert!(read_metadata(&other).is_err());
}

#[test]
fn odd_sizes_and_bad_buffers_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.mp4");
    let err = write_mp4(
        &path,
        &clip(2, 65, 48),
        65,
        48,
        &Mp4Options::default(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("even"), "{err}");
    let err = write_mp4(
        &path,
        &clip(2, 64, 47),
        64,
        47,
        &Mp4Options::default(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("64x47"), "{err}");
    let rgb = clip(2, 16, 16);
    let short = &rgb[..rgb.len() - 1];
    assert!(write_mp4(&path, short, 16, 16, &Mp4Options::default(), None).is_err());
    assert!(write_gif(&path, short, 16, 16, 16.0, None).is_err());
    assert!(write_png_frames(dir.path(), short, 16, 16, None).is_err());
    assert!(write_mp4(&path, &[], 16, 16, &Mp4Options::default(), None).is_err());
    assert!(write_gif(&path, &rgb, 0, 16, 16.0, None).is_err());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn unwritable_paths_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = clip(2, 16, 16);
    let missing = dir.path().join("no/such/folder");
    let err = write_mp4(
        &missing.join("a.mp4"),
        &rgb,
        16,
        16,
        &Mp4Options::default(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no/such/folder/a.mp4"), "{err}");
    assert!(write_gif(&missing.join("a.gif"), &rgb, 16, 16, 16.0, None).is_err());
    assert!(write_png(&missing.join("a.png"), &rgb[..768], 16, 16, None).is_err());

    // A file where the frame folder should be.
    let file = dir.path().join("taken");
    fs::write(&file, b"x").unwrap();
    let err = write_png_frames(&file, &rgb, 16, 16, None).unwrap_err();
    assert!(err.to_string().contains("taken"), "{err}");
    assert!(write_png_frames(&file.join("sub"), &rgb, 16, 16, None).is_err());

    // A failed write leaves an existing output as it was.
    let out = dir.path().join("keep.mp4");
    fs::write(&out, b"previous").unwrap();
    assert!(write_mp4(&out, &rgb, 15, 16, &Mp4Options::default(), None).is_err());
    assert_eq!(fs::read(&out).unwrap(), b"previous");

    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["keep.mp4", "taken"], "no temporary files left");
}

#[cfg(not(feature = "openh264-dylib"))]
#[test]
fn loading_a_library_needs_the_dylib_feature() {
    let opts = Mp4Options {
        openh264_library: Some("libopenh264.so".into()),
        ..Mp4Options::default()
    };
    let err = video::encode_mp4(&clip(1, 16, 16), 16, 16, &opts, None).unwrap_err();
    assert!(err.to_string().contains("openh264-dylib"), "{err}");
}

#[test]
fn wanrt_inspect_prints_outputs_back() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = clip(9, 64, 48);
    let mp4 = dir.path().join("out.mp4");
    let gif = dir.path().join("out.gif");
    write_mp4(&mp4, &rgb, 64, 48, &Mp4Options::default(), Some(META)).unwrap();
    write_gif(&gif, &rgb, 64, 48, 16.0, None).unwrap();
    let frames = write_png_frames(&dir.path().join("frames"), &rgb, 64, 48, Some(META)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .arg("inspect")
        .args([&mp4, &gif, &frames[0]])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!(
        "{}\n  format:   mp4\n  video:    64x48, 9 frames, 16 fps\n  metadata: {META}\n\
         {}\n  format:   gif\n  video:    64x48, 9 frames, 16.071 fps\n  metadata: (none)\n\
         {}\n  format:   png\n  video:    64x48, 1 frame\n  metadata: {META}\n",
        mp4.display(),
        gif.display(),
        frames[0].display()
    );
    assert_eq!(stdout, expected);
}

#[cfg(feature = "openh264-dylib")]
#[test]
fn a_library_that_cannot_be_loaded_is_a_clear_error() {
    let opts = Mp4Options {
        openh264_library: Some("/no/such/libopenh264.so".into()),
        ..Mp4Options::default()
    };
    let err = video::encode_mp4(&clip(1, 16, 16), 16, 16, &opts, None).unwrap_err();
    assert!(err.to_string().contains("/no/such/libopenh264.so"), "{err}");
}
