//! Training metrics: one JSON object per optimizer step in a JSONL file (loss, learning rate,
//! gradient norm, step time), and the loss curve drawn from that file as a PNG.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::video::write_png;

/// One line of the metrics file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps taken, this one included.
    pub step: usize,
    /// The epoch of the step (from 0).
    pub epoch: usize,
    /// The step's flow-matching loss (written so that it reads back bit for bit).
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f32,
    /// The gradients' global norm before clipping.
    pub grad_norm: f64,
    /// Wall-clock seconds of the step (loading the item, forward, backward, update).
    pub step_time_s: f64,
}

/// The metrics file of a run, open for appending.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

/// The lines of the metrics file at `path` (none when it does not exist).
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

impl MetricsLog {
    /// Opens the metrics file at `path` for a run that has taken `steps_taken` steps: the lines
    /// of later steps (from a run killed after its last save) are dropped, atomically, and new
    /// lines are appended after the others. A fresh run (0 steps) starts an empty file.
    pub fn open(path: &Path, steps_taken: usize) -> Result<MetricsLog> {
        let kept: Vec<StepMetrics> = read_metrics(path)?
            .into_iter()
            .filter(|m| m.step <= steps_taken)
            .collect();
        let mut text = String::new();
        for m in &kept {
            text.push_str(&line(m)?);
        }
        write_atomic(path, |w| w.write_all(text.as_bytes()))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one step's line.
    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let l = line(m)?;
        self.file
            .write_all(l.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

fn line(m: &StepMetrics) -> Result<String> {
    serde_json::to_string(m)
        .map(|s| s + "\n")
        .map_err(|e| Error::InvalidArgument(format!("metrics do not serialise: {e}")))
}

const WIDTH: usize = 640;
const HEIGHT: usize = 320;
const MARGIN: usize = 16;

/// Draws the loss of every step (grey) and its exponential moving average (weight 0.1, blue)
/// against the step on a white 640×320 canvas, the vertical axis spanning the losses' range,
/// and writes it atomically as a PNG at `path` with that range in its metadata.
pub fn write_loss_curve(path: &Path, metrics: &[StepMetrics]) -> Result<()> {
    if metrics.is_empty() {
        return Err(Error::InvalidArgument(
            "no step to draw a loss curve of".into(),
        ));
    }
    let losses: Vec<f64> = metrics.iter().map(|m| m.loss).collect();
    let mut smooth = Vec::with_capacity(losses.len());
    let mut ema = losses[0];
    for &l in &losses {
        ema = 0.9 * ema + 0.1 * l;
        smooth.push(ema);
    }
    let lo = losses.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = losses.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut canvas = Canvas::new();
    canvas.frame([200, 200, 200]);
    canvas.polyline(&losses, lo, hi, [150, 150, 150]);
    canvas.polyline(&smooth, lo, hi, [30, 80, 200]);
    let meta = format!(
        "{{\"steps\":{},\"loss_min\":{lo},\"loss_max\":{hi}}}",
        metrics.len()
    );
    write_png(path, &canvas.rgb, WIDTH, HEIGHT, Some(&meta))
}

/// An RGB8 image to draw the curve on.
struct Canvas {
    rgb: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            rgb: vec![255; WIDTH * HEIGHT * 3],
        }
    }

    fn set(&mut self, x: usize, y: usize, color: [u8; 3]) {
        if x < WIDTH && y < HEIGHT {
            let i = (y * WIDTH + x) * 3;
            self.rgb[i..i + 3].copy_from_slice(&color);
        }
    }

    /// The plotting area's border.
    fn frame(&mut self, color: [u8; 3]) {
        let (x1, y1) = (WIDTH - MARGIN, HEIGHT - MARGIN);
        for x in MARGIN..=x1 {
            self.set(x, MARGIN, color);
            self.set(x, y1, color);
        }
        for y in MARGIN..=y1 {
            self.set(MARGIN, y, color);
            self.set(x1, y, color);
        }
    }

    /// `values` (by index) as connected segments, `lo` at the bottom and `hi` at the top.
    fn polyline(&mut self, values: &[f64], lo: f64, hi: f64, color: [u8; 3]) {
        let (w, h) = ((WIDTH - 2 * MARGIN) as f64, (HEIGHT - 2 * MARGIN) as f64);
        let span = if hi > lo { hi - lo } else { 1.0 };
        let point = |i: usize, v: f64| {
            let x = MARGIN as f64 + w * i as f64 / (values.len().max(2) - 1) as f64;
            let y = MARGIN as f64 + h * (1.0 - (v - lo) / span);
            (x, y)
        };
        let mut prev = point(0, values[0]);
        for (i, &v) in values.iter().enumerate() {
            let next = point(i, v);
            let n = (next.0 - prev.0).abs().max((next.1 - prev.1).abs()).ceil() as usize + 1;
            for k in 0..=n {
                let t = k as f64 / n as f64;
                let x = prev.0 + t * (next.0 - prev.0);
                let y = prev.1 + t * (next.1 - prev.1);
                self.set(x.round() as usize, y.round() as usize, color);
            }
            prev = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(step: usize, loss: f64) -> StepMetrics {
        StepMetrics {
            step,
            epoch: 0,
            loss,
            lr: 1e-3,
            grad_norm: 0.5,
            step_time_s: 0.01,
        }
    }

    #[test]
    fn reopening_keeps_the_steps_taken_and_losses_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut log = MetricsLog::open(&path, 0).unwrap();
        let losses = [0.1f64 + 1e-17, 1.0 / 3.0, 0.25];
        for (i, &l) in losses.iter().enumerate() {
            log.append(&m(i + 1, l)).unwrap();
        }
        drop(log);
        let back = read_metrics(&path).unwrap();
        assert_eq!(back.iter().map(|m| m.loss).collect::<Vec<_>>(), losses);
        // A resume after step 2: step 3's line goes, the next is appended after step 2's.
        let mut log = MetricsLog::open(&path, 2).unwrap();
        log.append(&m(3, 9.0)).unwrap();
        let back = read_metrics(&path).unwrap();
        assert_eq!(
            back.iter().map(|m| (m.step, m.loss)).collect::<Vec<_>>(),
            [(1, losses[0]), (2, losses[1]), (3, 9.0)]
        );
        std::fs::write(&path, "{\"step\": 1}\n").unwrap();
        let err = MetricsLog::open(&path, 1).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn loss_curve_is_a_png_of_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let ms: Vec<_> = (1..=20).map(|i| m(i, 1.0 / i as f64)).collect();
        write_loss_curve(&path, &ms).unwrap();
        let info = crate::video::probe(&path).unwrap();
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        assert!(write_loss_curve(&path, &[]).is_err());
    }
}
