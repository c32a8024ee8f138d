//! How much memory a generation needs, estimated from the shapes before any heavy work, how
//! much the machine has, and the plan that fits: CFG batched or not, the VAE decoding whole
//! frames or tiles.
//!
//! What must fit is the weights of the three models plus the memory allocated while
//! generating. The weights are counted whole: memory-mapped files (the DiT, the text encoder,
//! the VAE) still have to be paged in to be used, and merged LoRA copies and unmerged LoRA
//! deltas are allocated. The working memory is the DiT's activations and its cached
//! cross-attention keys and values, then the VAE decoder's causal caches and working frames;
//! the figures are upper-bound estimates of the live f32 buffers, not measurements.
//!
//! The budget is the kernel's `MemAvailable` (which counts file pages in the page cache as
//! available, so mapped weights already read are not lost from it) plus the weights this
//! process already allocated (counted in the need, already missing from `MemAvailable`).

use crate::error::{Error, Result};
use crate::io::config::{DitConfig, VaeConfig};
use crate::model::vae::Tiling;

const F32: u64 = 4;

/// The bytes of a pipeline's weights, by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightMemory {
    /// The DiT's parameters (memory-mapped or, where LoRAs were merged, copies).
    pub dit: u64,
    /// The UMT5 text encoder.
    pub text_encoder: u64,
    /// The VAE.
    pub vae: u64,
    /// Unmerged LoRAs: their files' tensors and the per-layer deltas built from them.
    pub loras: u64,
    /// Of the above, the bytes allocated in process memory (not backed by a model file).
    pub allocated: u64,
}

impl WeightMemory {
    /// All weights.
    pub fn total(&self) -> u64 {
        self.dit + self.text_encoder + self.vae + self.loras
    }
}

/// A generation's estimated memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The weights, loaded for the whole generation.
    pub weights: WeightMemory,
    /// The DiT forward passes (one step's activations, the latent buffers and the cached text
    /// keys and values).
    pub denoising: u64,
    /// The streamed VAE decode (causal caches and one frame's activations, or one tile's and
    /// the blended video with tiling) and the frames.
    pub decoding: u64,
}

impl MemoryEstimate {
    /// The working memory: denoising and decoding do not overlap.
    pub fn working(&self) -> u64 {
        self.denoising.max(self.decoding)
    }

    /// The peak: the weights plus the working memory.
    pub fn peak(&self) -> u64 {
        self.weights.total() + self.working()
    }
}

/// How the VAE decodes: whole frames, or overlapping tiles (less memory, about twice the
/// compute, not bit-identical). Parsed from `auto`, `off` or `TILE,OVERLAP` (latent pixels).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VaeTiling {
    /// Whole frames when they fit in the memory available, else the default tiles
    /// ([`Tiling::default`]).
    #[default]
    Auto,
    /// Whole frames.
    Off,
    /// These tiles.
    Tiled(Tiling),
}

impl std::str::FromStr for VaeTiling {
    type Err = Error;
    /// `auto`, `off`, or `TILE,OVERLAP` in latent pixels (`32,8`: 256-pixel tiles).
    fn from_str(s: &str) -> Result<VaeTiling> {
        let bad = || {
            Error::InvalidArgument(format!(
                "VAE tiling `{s}`: expected auto, off, or TILE,OVERLAP in latent pixels (e.g. \
                 32,8) with TILE > OVERLAP"
            ))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(VaeTiling::Auto),
            "off" => Ok(VaeTiling::Off),
            spec => {
                let (tile, overlap) = spec.split_once(',').ok_or_else(bad)?;
                let tiling = Tiling {
                    tile: tile.trim().parse().map_err(|_| bad())?,
                    overlap: overlap.trim().parse().map_err(|_| bad())?,
                };
                tiling.validate().map_err(|_| bad())?;
                Ok(VaeTiling::Tiled(tiling))
            }
        }
    }
}

impl std::fmt::Display for VaeTiling {
    /// The form [`VaeTiling::from_str`](std::str::FromStr) reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaeTiling::Auto => f.write_str("auto"),
            VaeTiling::Off => f.write_str("off"),
            VaeTiling::Tiled(t) => write!(f, "{},{}", t.tile, t.overlap),
        }
    }
}

impl VaeTiling {
    /// The tiles to decode with, for the decoder's options; `None` for whole frames (and for
    /// `Auto`, which [`Pipeline::check`](super::Pipeline::check) resolves first).
    pub fn tiles(self) -> Option<Tiling> {
        match self {
            VaeTiling::Tiled(t) => Some(t),
            VaeTiling::Auto | VaeTiling::Off => None,
        }
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
    /// The VAE's tiles; `None`: whole frames.
    pub tiling: Option<Tiling>,
}

/// Estimates the working memory of a generation with these shapes.
pub(super) fn estimate(s: &Shapes<'_>, weights: WeightMemory) -> MemoryEstimate {
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
    let vae = match s.tiling {
        None => vae_decode(s.vae, vh, vw),
        Some(tiling) => {
            // One tile's decode, plus the blended f32 video and its per-pixel weights.
            let side = 8 * tiling.tile as u64;
            vae_decode(s.vae, vh.min(side), vw.min(side)) + (3 * frames + 1) * vh * vw * F32
        }
    };
    MemoryEstimate {
        weights,
        denoising: activations + text_kv + buffers,
        decoding: vae + rgb + latent,
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

/// The plan chosen for a request so that it fits in memory, with its estimate
/// ([`Pipeline::check`](super::Pipeline::check)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Run CFG's two passes as one batch.
    pub batch_cfg: bool,
    /// The VAE's tiles (`None`: whole frames); never [`VaeTiling::Auto`].
    pub tiling: VaeTiling,
    /// The estimate of that plan.
    pub memory: MemoryEstimate,
    /// The memory available when it was chosen ([`available_memory`]; with the DiT on a CUDA
    /// device, the device's free memory or the device plan's budget); `None`: unknown, so
    /// nothing was checked.
    pub available: Option<u64>,
}

/// Chooses the plan that fits in `available` bytes (`None`: unknown, so nothing is checked):
/// batched CFG when `batch_cfg` allows it and it fits, whole-frame decoding unless `tiling`
/// asks for tiles or is `Auto` and whole frames do not fit. `estimate(batch, tiles)` gives the
/// estimate of one plan; `what` describes the request in messages. Fails with
/// [`Error::OutOfMemory`] naming the part that does not fit.
pub(super) fn fit(
    estimate: impl Fn(usize, Option<Tiling>) -> MemoryEstimate,
    batch_cfg: bool,
    tiling: VaeTiling,
    available: Option<u64>,
    what: &str,
) -> Result<Fit> {
    let whole = |t: VaeTiling| match t {
        VaeTiling::Auto => VaeTiling::Off,
        t => t,
    };
    let Some(available) = available else {
        let tiling = whole(tiling);
        let memory = estimate(if batch_cfg { 2 } else { 1 }, tiling.tiles());
        return Ok(Fit {
            batch_cfg,
            tiling,
            memory,
            available: None,
        });
    };
    let one = estimate(1, whole(tiling).tiles());
    let w = one.weights;
    // What this process already holds is missing from `MemAvailable` but counted in the need.
    let budget = available + w.allocated;
    let fits = |bytes: u64| w.total() + bytes <= budget;
    let oom = |m: String| Err(Error::OutOfMemory(m));
    if !fits(0) {
        return oom(format!(
            "the weights alone need about {} (DiT {}, text encoder {}, VAE {}, unmerged LoRAs \
             {}) but only {} is available: use a smaller model or a lower-precision (fp8) \
             checkpoint, or free memory",
            gib(w.total()),
            gib(w.dit),
            gib(w.text_encoder),
            gib(w.vae),
            gib(w.loras),
            gib(budget)
        ));
    }
    if !fits(one.denoising) {
        return oom(format!(
            "denoising {what} needs about {} beyond the {} of weights, but only {} is \
             available: lower the size or the frame count, or free memory",
            gib(one.denoising),
            gib(w.total()),
            gib(budget)
        ));
    }
    let tiling = match tiling {
        VaeTiling::Auto if !fits(one.decoding) => VaeTiling::Tiled(Tiling::default()),
        VaeTiling::Auto => VaeTiling::Off,
        t => t,
    };
    let batch_cfg = batch_cfg && fits(estimate(2, tiling.tiles()).denoising);
    let memory = estimate(if batch_cfg { 2 } else { 1 }, tiling.tiles());
    if !fits(memory.decoding) {
        return oom(format!(
            "VAE decoding {what} with {} needs about {} beyond the {} of weights, but only {} \
             is available: {}lower the size or the frame count, or free memory",
            match tiling {
                VaeTiling::Tiled(t) => format!("tiles of {},{}", t.tile, t.overlap),
                _ => "whole frames".into(),
            },
            gib(memory.decoding),
            gib(w.total()),
            gib(budget),
            match tiling {
                VaeTiling::Off => "use VAE tiling (auto), ",
                _ => "use smaller tiles, ",
            }
        ));
    }
    Ok(Fit {
        batch_cfg,
        tiling,
        memory,
        available: Some(available),
    })
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

    const GIB: u64 = 1 << 30;

    fn shapes<'a>(dit: &'a DitConfig, vae: &'a VaeConfig, batch: usize) -> Shapes<'a> {
        Shapes {
            dit,
            vae,
            latent: [16, 21, 60, 104],
            video: [81, 480, 832],
            batch,
            contexts: 2,
            tiling: None,
        }
    }

    #[test]
    fn estimates_grow_with_size_and_batch() {
        let (dit, vae) = (DitConfig::preset("1.3b").unwrap(), VaeConfig::default());
        let w = WeightMemory::default();
        let one = estimate(&shapes(&dit, &vae, 1), w);
        let two = estimate(&shapes(&dit, &vae, 2), w);
        assert!(two.denoising > one.denoising && two.decoding == one.decoding);
        // 832x480x81 on the 1.3B model: 32760 tokens; a few GiB, not tens.
        let gb = one.denoising as f64 / 1e9;
        assert!((2.0..8.0).contains(&gb), "{gb} GB");
        let small = Shapes {
            latent: [16, 2, 60, 104],
            video: [5, 480, 832],
            ..shapes(&dit, &vae, 1)
        };
        assert!(estimate(&small, w).denoising < one.denoising);
        assert!(one.peak() >= one.decoding);
        // The real VAE at 832x480: measured 4.5 GiB (docs/PERF.md); estimated 5.0.
        let vae_gib = vae_decode(&vae, 480, 832) as f64 / GIB as f64;
        assert!((4.5..5.5).contains(&vae_gib), "{vae_gib} GiB");
        // Tiles: about a quarter of the whole-frame decode (docs/PERF.md: 1.4 against 5.0).
        let tiled = Shapes {
            tiling: Some(Tiling::default()),
            ..shapes(&dit, &vae, 1)
        };
        let t = estimate(&tiled, w).decoding as f64 / one.decoding as f64;
        assert!((0.2..0.6).contains(&t), "{t}");
    }

    #[test]
    fn the_weights_count_in_the_peak() {
        let (dit, vae) = (DitConfig::preset("14b").unwrap(), VaeConfig::default());
        // 14B bf16 plus UMT5-XXL bf16 (the example) on a machine with 32 GB free.
        let w = WeightMemory {
            dit: 28 * GIB,
            text_encoder: 11 * GIB,
            vae: GIB / 2,
            ..WeightMemory::default()
        };
        let e = |batch, tiles| {
            estimate(
                &Shapes {
                    tiling: tiles,
                    ..shapes(&dit, &vae, batch)
                },
                w,
            )
        };
        assert_eq!(e(1, None).peak(), w.total() + e(1, None).working());
        let err = fit(e, true, VaeTiling::Auto, Some(32 * GIB), "832x480")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the weights alone need about 39.5 GiB"),
            "{err}"
        );
        assert!(err.contains("text encoder 11.0 GiB"), "{err}");
        // Merged copies already allocated count in the budget as well as in the need.
        let held = WeightMemory {
            allocated: 28 * GIB,
            ..w
        };
        let e = |batch, tiles| {
            estimate(
                &Shapes {
                    tiling: tiles,
                    ..shapes(&dit, &vae, batch)
                },
                held,
            )
        };
        assert!(fit(e, true, VaeTiling::Auto, Some(40 * GIB), "832x480").is_ok());
    }

    #[test]
    fn auto_tiling_and_batching_follow_the_memory() {
        let (dit, vae) = (DitConfig::preset("1.3b").unwrap(), VaeConfig::default());
        let w = WeightMemory {
            dit: 3 * GIB,
            ..WeightMemory::default()
        };
        // 5 frames: denoising is light, whole-frame decoding is not.
        let e = |batch, tiles| {
            estimate(
                &Shapes {
                    tiling: tiles,
                    latent: [16, 2, 60, 104],
                    video: [5, 480, 832],
                    ..shapes(&dit, &vae, batch)
                },
                w,
            )
        };
        let (whole, tiled) = (e(1, None), e(1, Some(Tiling::default())));
        let plenty = fit(e, true, VaeTiling::Auto, Some(64 * GIB), "x").unwrap();
        assert_eq!((plenty.batch_cfg, plenty.tiling), (true, VaeTiling::Off));
        // Room for denoising and tiles, not for whole frames: tiles, chosen automatically.
        let room = w.total() + whole.denoising.max(tiled.decoding) + GIB / 8;
        assert!(
            room < w.total() + whole.decoding,
            "the test needs a tight budget"
        );
        let tight = fit(e, true, VaeTiling::Auto, Some(room), "x").unwrap();
        assert_eq!(tight.tiling, VaeTiling::Tiled(Tiling::default()));
        assert!(!tight.batch_cfg, "batched CFG does not fit either");
        assert!(tight.memory.peak() <= room);
        let err = fit(e, true, VaeTiling::Off, Some(room), "832x480")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("VAE decoding 832x480 with whole frames"),
            "{err}"
        );
        assert!(err.contains("use VAE tiling (auto)"), "{err}");
        let err = fit(
            e,
            false,
            VaeTiling::Auto,
            Some(w.total() + GIB / 2),
            "832x480",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("out of memory: denoising 832x480"), "{err}");
        // Unknown memory: no check, whole frames for auto.
        let unknown = fit(e, true, VaeTiling::Auto, None, "x").unwrap();
        assert_eq!((unknown.batch_cfg, unknown.tiling), (true, VaeTiling::Off));
    }

    #[test]
    fn vae_tiling_parses_and_prints() {
        for s in ["auto", "off", "32,8", "16,0"] {
            assert_eq!(s.parse::<VaeTiling>().unwrap().to_string(), s);
        }
        assert_eq!(
            " 24 , 4".parse::<VaeTiling>().unwrap().tiles(),
            Some(Tiling {
                tile: 24,
                overlap: 4
            })
        );
        for bad in ["", "on", "8", "8,8", "0,0", "-1,2", "8,2,1"] {
            let err = bad.parse::<VaeTiling>().unwrap_err().to_string();
            assert!(
                err.contains("expected auto, off, or TILE,OVERLAP"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn reads_meminfo_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(available_memory().is_some_and(|b| b > 0));
        }
    }

    /// 14B fp8 (the real sizes) with a style and a step-distill LoRA (rank 32 and 64 on every
    /// block linear) at 640×480×81, CFG 1, under `--max-device-memory 24G` on a larger card:
    /// the plan counts the block-by-block merge and fits. The earlier layout (every pristine
    /// targeted weight and all factors kept on the device, all merged weights there at once
    /// during the merge) fits with no swap count.
    #[test]
    fn fourteen_b_fp8_with_two_loras_plans_within_24_gib() {
        use super::super::device_plan::{plan, DeviceNeeds, DitBytes, PlanRequest};
        use crate::io::config::T5Config;
        use crate::lora::LoraMergeBytes;
        use crate::tensor::DType;
        let cfg = DitConfig::preset("14b").unwrap();
        let dit = DitBytes::estimate(&cfg, DType::F8E4M3, DType::BF16);
        let (t5, vae) = (T5Config::default(), VaeConfig::default());
        let video = [81, 480, 640];
        let base = DeviceNeeds::for_video(&cfg, dit, &t5, DType::BF16, &vae, video, 1, 1);
        let lora = LoraMergeBytes::estimate(&cfg, DType::F8E4M3, &[32, 64]);
        let needs = DeviceNeeds {
            lora: lora.clone(),
            ..base.clone()
        };
        let req = PlanRequest {
            free: 141 * GIB,
            max_device_memory: Some(24 * GIB),
            ..Default::default()
        };
        let with = plan(&needs, &req).unwrap();
        let without = plan(&base, &req).unwrap();
        assert!(with.peak() <= 24 * GIB, "{}", with.summary());
        assert!(with.lora_merge > with.dit_resident, "{}", with.summary());
        assert!(
            with.summary().contains("(LoRA merge 13.9 GiB)"),
            "{}",
            with.summary()
        );
        assert!(!without.summary().contains("LoRA"), "{}", without.summary());
        // One block's copies: far below a denoising step's working memory, so the LoRAs cost
        // no extra swapping.
        assert!(with.lora_merge < with.peaks[1], "{}", with.summary());
        assert_eq!(with.blocks_to_swap, without.blocks_to_swap);
        assert_eq!(with.peaks, without.peaks);
        // The earlier layout: the pristine targets and factors resident in every phase.
        let kept: u64 = lora.blocks.iter().map(|[w, f]| w + f).sum();
        let mut before = base.clone();
        before.dit.other += kept;
        let e = plan(&before, &req).unwrap_err();
        assert!(matches!(e, Error::OutOfMemory(_)), "{e}");
        // Even with every block swapped (the pristine copies stayed on the device).
        let unbounded = PlanRequest {
            blocks_to_swap: Some(40),
            free: 1 << 50,
            max_device_memory: None,
            ..req
        };
        let all_swapped = plan(&before, &unbounded).unwrap();
        // Its merge held the pristine targets, the factors and every merged weight at once.
        let targets: u64 = lora.blocks.iter().map(|[w, _]| w).sum();
        let merge_before = base.dit.total() + kept + targets;
        println!(
            "14B fp8 + LoRAs r32 + r64, 640x480x81, 24 GiB: after {}; before: generation \
             peak {} with all 40 blocks swapped, merge peak {}",
            with.summary(),
            gib(all_swapped.peak()),
            gib(merge_before)
        );
        assert!(all_swapped.peak() > 24 * GIB && merge_before > 24 * GIB);
    }
}
