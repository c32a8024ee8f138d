//! Reading back the MP4s wanrt writes with other readers: the `mp4` demuxer with OpenH264's
//! decoder, and ffprobe when it is installed.

use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::process::Command;

/// What the mp4 crate and OpenH264's decoder make of a file.
pub struct Decoded {
    pub width: usize,
    pub height: usize,
    pub timescale: u32,
    pub durations: Vec<u32>,
    /// RGB8 frames one after another.
    pub rgb: Vec<u8>,
    pub frames: usize,
}

/// Demuxes with `mp4` (samples are AVCC: 4-byte lengths), rewrites to Annex-B with the avcC
/// parameter sets in front, and decodes with OpenH264.
pub fn decode(path: &Path) -> Decoded {
    use openh264::decoder::Decoder;
    let size = fs::metadata(path).unwrap().len();
    let reader = BufReader::new(fs::File::open(path).unwrap());
    let mut mp4 = mp4::Mp4Reader::read_header(reader, size).unwrap();
    let (id, track) = mp4
        .tracks()
        .iter()
        .find(|(_, t)| t.media_type().unwrap() == mp4::MediaType::H264)
        .expect("an H.264 track");
    let (id, width, height) = (*id, track.width() as usize, track.height() as usize);
    let timescale = track.timescale();
    let count = track.sample_count();
    let mut params = Vec::new();
    for ps in [
        track.sequence_parameter_set().unwrap(),
        track.picture_parameter_set().unwrap(),
    ] {
        params.extend_from_slice(&[0, 0, 0, 1]);
        params.extend_from_slice(ps);
    }
    let mut decoder = Decoder::new().unwrap();
    let mut out = Decoded {
        width,
        height,
        timescale,
        durations: Vec::new(),
        rgb: Vec::new(),
        frames: 0,
    };
    let mut frame = vec![0u8; width * height * 3];
    for i in 1..=count {
        let sample = mp4.read_sample(id, i).unwrap().expect("sample");
        out.durations.push(sample.duration);
        let mut annexb = params.clone();
        let mut avcc = &sample.bytes[..];
        while !avcc.is_empty() {
            let len = u32::from_be_bytes(avcc[..4].try_into().unwrap()) as usize;
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(&avcc[4..4 + len]);
            avcc = &avcc[4 + len..];
        }
        if let Some(yuv) = decoder.decode(&annexb).unwrap() {
            yuv.write_rgb8(&mut frame);
            out.rgb.extend_from_slice(&frame);
            out.frames += 1;
        }
    }
    for yuv in decoder.flush_remaining().unwrap() {
        yuv.write_rgb8(&mut frame);
        out.rgb.extend_from_slice(&frame);
        out.frames += 1;
    }
    out
}

/// ffprobe's view of the first video stream (and the container's comment), or `None` with the
/// reason printed when ffprobe is not installed.
pub fn ffprobe(path: &Path) -> Option<serde_json::Value> {
    let run = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,r_frame_rate,nb_read_frames,pix_fmt:format_tags=comment",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output();
    match run {
        Err(e) => {
            eprintln!("skipping the ffprobe check: ffprobe not runnable ({e}); apt install ffmpeg");
            None
        }
        Ok(out) => {
            assert!(
                out.status.success(),
                "ffprobe failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stderr.is_empty(),
                "ffprobe reported: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(serde_json::from_slice(&out.stdout).unwrap())
        }
    }
}
