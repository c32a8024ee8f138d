//! How much working memory a generation needs, estimated from the shapes before any heavy work,
//! and how much the machine has.
//!
//! The weights are memory-mapped from the model files (page cache the kernel can drop and
//! re-read), so they are not counted; what must fit is the memory allocated while generating:
//! the DiT's activations and its cached cross-attention keys and values, and the VAE decoder's
//! causal caches and working frames. The figures are upper-bound estimates of the live f32
//! buffers, not measurements.

use crate::io::config::{DitConfig, VaeConfig};

const F32: u64 = 4;

/// A generation's estimated working memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The DiT forward passes (one step's activations, the latent buffers and the cached text
    /// keys and values).
    pub denoising: u64,
    /// The streamed VAE decode (causal caches and one frame's activations) and the frames.
    pub decoding: u64,
}

impl MemoryEstimate {
    /// The peak: denoising and decoding do not overlap, but the frames and latent outlive both.
    pub fn peak(&self) -> u64 {
        self.denoising.max(self.decoding)
    }
}

/// The shapes an estimate needs.
pub(super) struct Shapes<'a> {
    pub dit: &'a DitConfig,
    pub vae: &'a VaeConfig,
    /// `[C, T, h, w]` of the latent.
    pub latent: [usize; 4],
    /// Video frames, height and width.
    pub video: [usize; 3],
    /// Samples per DiT forward (2 with batched CFG).
    pub batch: usize,
    /// Text contexts whose K/V are cached (prompt, negative prompt, NAG's negative prompt;
    /// the batched copy of the first two counts twice).
    pub contexts: usize,
}

/// Estimates the working memory of a generation with these shapes.
pub(super) fn estimate(s: &Shapes<'_>) -> MemoryEstimate {
    let (d, f) = (s.dit.dim as u64, s.dit.ffn_dim as u64);
    let p = s.dit.patch_size;
    let [_, t, h, w] = s.latent.map(|v| v as u64);
    let tokens = (t / p[0] as u64) * (h / p[1] as u64) * (w / p[2] as u64);
    // Per token and sample: the residual stream, its modulated norm, q, k, v (and their RoPE'd
    // copies and k's transposed copy), the attention output and its projection (11 × dim), and
    // the feed-forward hidden layer before and after the GELU (2 × ffn_dim).
    let activations = s.batch as u64 * tokens * (11 * d + 2 * f) * F32;
    let text_kv = s.contexts as u64 * s.dit.num_layers as u64 * 2 * s.dit.text_len as u64 * d * F32;
    let latent = s.latent.iter().product::<usize>() as u64 * F32;
    // The latent, the sampler's velocities (cond, uncond, guided) and the solver's history.
    let buffers = 8 * latent;
    let [frames, vh, vw] = s.video.map(|v| v as u64);
    let rgb = frames * vh * vw * 3;
    MemoryEstimate {
        denoising: activations + text_kv + buffers,
        decoding: vae_decode(s.vae, vh, vw) + rgb + latent,
    }
}

/// The streamed decoder at frame size `h × w`: per resolution stage (stage `i` from the output
/// runs at `1/2^i` of the size with `dim·dim_mult[i]` channels), every causal conv keeps its
/// last two input frames and one frame's activations are alive, about 18 feature maps of the
/// stage in all. Calibrated on the measured peak of a whole-frame 832×480 decode of the real
/// VAE, 4.5 GiB beyond its weights (docs/PERF.md); this gives 5.0 GiB.
fn vae_decode(v: &VaeConfig, h: u64, w: u64) -> u64 {
    const MAPS_PER_STAGE: u64 = 18;
    let mut total = 0;
    for (i, &m) in v.dim_mult.iter().enumerate() {
        let pixels = (h * w) >> (2 * i);
        total += MAPS_PER_STAGE * (v.dim * m) as u64 * pixels * F32;
    }
    total
}

/// The memory the kernel says can be allocated without swapping (`MemAvailable` of
/// `/proc/meminfo`), in bytes; `None` where that is not known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// `bytes` in GiB with one decimal, for messages.
pub(super) fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_grow_with_size_and_batch() {
        let (dit, vae) = (DitConfig::preset("1.3b").unwrap(), VaeConfig::default());
        let shapes = |batch, frames: usize| Shapes {
            dit: &dit,
            vae: &vae,
            latent: [16, (frames - 1) / 4 + 1, 60, 104],
            video: [frames, 480, 832],
            batch,
            contexts: 2,
        };
        let one = estimate(&shapes(1, 81));
        let two = estimate(&shapes(2, 81));
        assert!(two.denoising > one.denoising && two.decoding == one.decoding);
        // 832x480x81 on the 1.3B model: 32760 tokens; a few GiB, not tens.
        let gb = one.denoising as f64 / 1e9;
        assert!((2.0..8.0).contains(&gb), "{gb} GB");
        assert!(estimate(&shapes(1, 5)).denoising < one.denoising);
        assert!(one.peak() >= one.decoding);
        // The real VAE at 832x480: measured 4.5 GiB (docs/PERF.md); estimated 5.0.
        let vae_gib = vae_decode(&vae, 480, 832) as f64 / (1u64 << 30) as f64;
        assert!((4.5..5.5).contains(&vae_gib), "{vae_gib} GiB");
    }

    #[test]
    fn reads_meminfo_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(available_memory().is_some_and(|b| b > 0));
        }
    }
}
