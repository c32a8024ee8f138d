//! The memory plan of a generation on a CUDA device (low-VRAM mode, issue #16 item 5): from the
//! device memory wanrt may use and the sizes of the models and of the working memory at the
//! requested resolution, how many transformer blocks live in pinned host memory and are
//! streamed in for each forward (`blocks_to_swap`, the last blocks, as musubi-tuner swaps
//! them), where the text encoder runs, and whether the VAE decodes whole frames or tiles.
//!
//! A generation runs in three phases that do not overlap: text encoding, denoising, decoding.
//! The DiT's resident weights (everything but the swapped blocks) and, with swapping, two
//! device slots of the largest swapped block (one computing, one being filled) stay on the
//! device throughout, and so does the text encoder when it is placed there (the pipeline keeps
//! it loaded for the next generation); the VAE's working memory is counted for decoding only.
//! The plan is the one with the fewest swapped blocks whose every phase fits (swapping costs
//! copies on every step, tiling about one more VAE decode once), at that count the text encoder
//! on the device when it fits beside the DiT in every phase, then whole frames preferred. LoRAs
//! merged on the device add a phase between generations (at load, on a strength change): the
//! resident model plus one part's merge (`LoraMergeBytes::extra`), which must fit too. The
//! working
//! memory figures are the CPU's f32 estimates (the `memory` module), upper bounds for the
//! device's bf16 activations; the budget keeps [`DEVICE_RESERVE`] free for the CUDA context's
//! own allocations (cuBLASLt workspaces, module images) and the allocator's rounding.

use std::collections::BTreeMap;

use serde::Serialize;

use super::memory::{self, gib, Shapes, VaeTiling};
use crate::error::{Error, Result};
use crate::io::config::{DitConfig, T5Config, VaeConfig};
use crate::lora::LoraMergeBytes;
use crate::model::vae::Tiling;
use crate::tensor::{DType, Weight};

/// Device memory left out of the budget for what the caching allocator does not see.
pub const DEVICE_RESERVE: u64 = 768 << 20;

/// Parameters of the Wan2.1 VAE (127 M), for an estimate before it is loaded.
const VAE_PARAMS: u64 = 126_900_000;

/// The bytes of a DiT's weights as stored, per transformer block and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DitBytes {
    /// Block `i`'s weights (`blocks.i.*`).
    pub blocks: Vec<u64>,
    /// Everything else (embeddings, time projection, head).
    pub other: u64,
}

impl DitBytes {
    /// The bytes of loaded weights (canonical names), as stored.
    pub fn from_weights(weights: &BTreeMap<String, Weight>) -> DitBytes {
        let mut bytes = DitBytes {
            blocks: Vec::new(),
            other: 0,
        };
        for (name, w) in weights {
            let n = (w.tensor.elem_count() * w.dtype().size_in_bytes()) as u64;
            let block = name
                .strip_prefix("blocks.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            match block {
                Some(i) => {
                    if bytes.blocks.len() <= i {
                        bytes.blocks.resize(i + 1, 0);
                    }
                    bytes.blocks[i] += n;
                }
                None => bytes.other += n,
            }
        }
        bytes
    }

    /// The bytes of a T2V DiT of `cfg` whose block linear weights are stored as `linear` and
    /// every other parameter as `rest` (ComfyUI's fp8 checkpoints: fp8 and bf16).
    pub fn estimate(cfg: &DitConfig, linear: DType, rest: DType) -> DitBytes {
        let (d, f) = (cfg.dim as u64, cfg.ffn_dim as u64);
        let (l, r) = (linear.size_in_bytes() as u64, rest.size_in_bytes() as u64);
        // Self- and cross-attention q, k, v, o and the two feed-forward layers; their biases,
        // the q/k norms, the cross-attention norm and the modulation.
        let block_linear = 8 * d * d + 2 * d * f;
        let block_rest = 8 * d + f + d + 4 * d + 2 * d + 6 * d;
        let patch: u64 = cfg.patch_size.iter().map(|&p| p as u64).product();
        let (i, o, t, q) = (
            cfg.in_dim as u64,
            cfg.out_dim as u64,
            cfg.text_dim as u64,
            cfg.freq_dim as u64,
        );
        let other = (i * patch + 1) * d          // patch embedding
            + (t + 1) * d + (d + 1) * d          // text embedding
            + (q + 1) * d + (d + 1) * d          // time embedding
            + (d + 1) * 6 * d                    // time projection
            + (d + 1) * o * patch + 2 * d; // head and its modulation
        DitBytes {
            blocks: vec![block_linear * l + block_rest * r; cfg.num_layers],
            other: other * r,
        }
    }

    /// All the DiT's bytes.
    pub fn total(&self) -> u64 {
        self.blocks.iter().sum::<u64>() + self.other
    }
}

/// The bytes of a UMT5 encoder of `cfg` stored as `dtype`, and its working memory for one
/// prompt (f32 activations of one block, the attention scores of all heads).
pub fn text_encoder_bytes(cfg: &T5Config, dtype: DType) -> (u64, u64) {
    let (d, a, f) = (cfg.dim as u64, cfg.dim_attn as u64, cfg.dim_ffn as u64);
    let per_block = 4 * d * a + 3 * d * f + 2 * d + (cfg.num_heads * cfg.num_buckets) as u64;
    let params = cfg.vocab as u64 * d + cfg.num_layers as u64 * per_block + d;
    let tokens = cfg.text_len as u64;
    let working = tokens * (8 * d + 3 * f) * 4 + cfg.num_heads as u64 * tokens * tokens * 4;
    (params * dtype.size_in_bytes() as u64, working)
}

/// What a generation needs on the device, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNeeds {
    /// The DiT's weights as stored.
    pub dit: DitBytes,
    /// The text encoder's weights.
    pub text_encoder: u64,
    /// Encoding one prompt.
    pub text_encoding: u64,
    /// The VAE's weights.
    pub vae: u64,
    /// The denoising working memory (activations, cached text keys and values, latents).
    pub denoising: u64,
    /// The decoding working memory with whole frames.
    pub decoding_whole: u64,
    /// The decoding working memory with the default tiles ([`Tiling::default`]).
    pub decoding_tiled: u64,
    /// LoRAs merged on the device one part of the DiT at a time (at load and on a strength
    /// change, between generations); empty without them.
    pub lora: LoraMergeBytes,
}

impl DeviceNeeds {
    /// The needs of a `frames × height × width` video (a multiple of 16 on each side, `4k + 1`
    /// frames) with `batch` samples per forward (2: batched CFG) and `contexts` cached text
    /// contexts, for models of these configs and weight sizes (the VAE's stored as bf16).
    #[allow(clippy::too_many_arguments)]
    pub fn for_video(
        dit_cfg: &DitConfig,
        dit: DitBytes,
        t5: &T5Config,
        t5_dtype: DType,
        vae: &VaeConfig,
        video: [usize; 3],
        batch: usize,
        contexts: usize,
    ) -> DeviceNeeds {
        let [frames, h, w] = video;
        let latent = [vae.z_dim, (frames - 1) / 4 + 1, h / 8, w / 8];
        let estimate = |tiling: Option<Tiling>| {
            let shapes = Shapes {
                dit: dit_cfg,
                vae,
                latent,
                video,
                batch,
                contexts,
                tiling,
            };
            memory::estimate(&shapes, Default::default())
        };
        let (text_encoder, text_encoding) = text_encoder_bytes(t5, t5_dtype);
        let whole = estimate(None);
        DeviceNeeds {
            dit,
            text_encoder,
            text_encoding,
            vae: VAE_PARAMS * 2,
            denoising: whole.denoising,
            decoding_whole: whole.decoding,
            decoding_tiled: estimate(Some(Tiling::default())).decoding,
            lora: LoraMergeBytes::default(),
        }
    }
}

/// Where the text encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// On the device, resident for the pipeline's life (counted in every phase).
    Device,
    /// On the CPU, its output copied to the device.
    Cpu,
}

/// What the plan asks for beyond the sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanRequest {
    /// The device's free memory (the driver's figure).
    pub free: u64,
    /// `--max-device-memory`: a bound below the free memory.
    pub max_device_memory: Option<u64>,
    /// `--blocks-to-swap`: this many, not chosen.
    pub blocks_to_swap: Option<usize>,
    /// `--vae-tiling`: `Auto` lets the plan choose.
    pub vae_tiling: VaeTiling,
    /// Where the text encoder runs, when already decided (a loaded pipeline's).
    pub text_encoder: Option<Placement>,
}

/// The chosen plan, with its peak per phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevicePlan {
    /// The last this many transformer blocks live in pinned host memory and are prefetched
    /// into two device slots for each forward.
    pub blocks_to_swap: usize,
    /// Where the text encoder runs.
    pub text_encoder: Placement,
    /// The VAE's tiling (`off` or tiles, never `auto`).
    #[serde(serialize_with = "display")]
    pub vae_tiling: VaeTiling,
    /// The bytes the plan may use: the free memory (less [`DEVICE_RESERVE`]) bounded by
    /// `--max-device-memory`.
    pub budget: u64,
    /// The DiT's bytes kept on the device (its other weights, the resident blocks, the slots).
    pub dit_resident: u64,
    /// The estimated peak of each phase: text encoding, denoising, decoding.
    pub peaks: [u64; 3],
    /// The estimated peak while LoRAs merge on the device (at load and on a strength change):
    /// the resident model plus one part's merge ([`LoraMergeBytes::extra`]); 0 without LoRAs
    /// merged there.
    pub lora_merge: u64,
}

fn display<S: serde::Serializer>(t: &VaeTiling, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(t)
}

impl DevicePlan {
    /// The estimated peak over the generation.
    pub fn peak(&self) -> u64 {
        self.peaks
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(self.lora_merge)
    }

    /// One line for logs: `blocks_to_swap 4, text encoder cpu, VAE tiling off, peak … of …`,
    /// and the LoRA merge's peak when LoRAs merge on the device.
    pub fn summary(&self) -> String {
        let lora = match self.lora_merge {
            0 => String::new(),
            bytes => format!(" (LoRA merge {})", gib(bytes)),
        };
        format!(
            "blocks_to_swap {}, text encoder {}, VAE tiling {}, peak {}{lora} of a {} budget",
            self.blocks_to_swap,
            match self.text_encoder {
                Placement::Device => "on the device",
                Placement::Cpu => "on the CPU",
            },
            self.vae_tiling,
            gib(self.peak()),
            gib(self.budget)
        )
    }
}

/// The DiT's device bytes with the last `swap` blocks swapped: its other weights, the resident
/// blocks, and two slots of the largest swapped block.
fn dit_resident(dit: &DitBytes, swap: usize) -> u64 {
    let split = dit.blocks.len() - swap;
    let slot = dit.blocks[split..].iter().copied().max().unwrap_or(0);
    dit.other + dit.blocks[..split].iter().sum::<u64>() + 2 * slot
}

/// Chooses the plan (see the module docs). Fails with [`Error::OutOfMemory`] when no plan fits,
/// naming the smallest need, and with [`Error::InvalidArgument`] for a `blocks_to_swap` above
/// the DiT's block count.
pub fn plan(needs: &DeviceNeeds, req: &PlanRequest) -> Result<DevicePlan> {
    let blocks = needs.dit.blocks.len();
    let budget = req
        .free
        .saturating_sub(DEVICE_RESERVE)
        .min(req.max_device_memory.unwrap_or(u64::MAX));
    let swaps: Vec<usize> = match req.blocks_to_swap {
        Some(n) if n > blocks => {
            return Err(Error::InvalidArgument(format!(
                "--blocks-to-swap {n}: the DiT has {blocks} blocks"
            )))
        }
        Some(n) => vec![n],
        None => (0..=blocks).collect(),
    };
    let tilings = match req.vae_tiling {
        VaeTiling::Auto => vec![VaeTiling::Off, VaeTiling::Tiled(Tiling::default())],
        t => vec![t],
    };
    let decoding = |t: VaeTiling| match t {
        VaeTiling::Off | VaeTiling::Auto => needs.decoding_whole,
        VaeTiling::Tiled(_) => needs.decoding_tiled,
    };
    let placements = match req.text_encoder {
        Some(p) => vec![p],
        None => vec![Placement::Device, Placement::Cpu],
    };
    for &swap in &swaps {
        let dit = dit_resident(&needs.dit, swap);
        for &text_encoder in &placements {
            let (resident, encode) = match text_encoder {
                Placement::Device => (
                    dit + needs.text_encoder,
                    dit + needs.text_encoder + needs.text_encoding,
                ),
                Placement::Cpu => (dit, dit),
            };
            let denoise = resident + needs.denoising;
            let decode = |t: VaeTiling| resident + needs.vae + decoding(t);
            let lora_merge = match needs.lora.is_empty() {
                true => 0,
                false => resident + needs.lora.extra(&needs.dit.blocks, swap),
            };
            if encode.max(denoise).max(lora_merge) > budget {
                continue;
            }
            let Some(&tiling) = tilings.iter().find(|&&t| decode(t) <= budget) else {
                continue;
            };
            return Ok(DevicePlan {
                blocks_to_swap: swap,
                text_encoder,
                vae_tiling: tiling,
                budget,
                dit_resident: dit,
                peaks: [encode, denoise, decode(tiling)],
                lora_merge,
            });
        }
    }
    let most = *swaps.last().expect("at least one swap count");
    let least = dit_resident(&needs.dit, most);
    let decode = tilings.iter().map(|&t| decoding(t)).min().unwrap_or(0);
    Err(Error::OutOfMemory(format!(
        "no device plan fits in {}: with {most} of {blocks} blocks swapped the DiT keeps {} on \
         the device, denoising needs {} more and decoding {} (VAE included); lower the size or \
         the frame count, or raise --max-device-memory",
        gib(budget),
        gib(least),
        gib(needs.denoising),
        gib(needs.vae + decode)
    )))
}

/// A byte count as `--max-device-memory` takes it: a number with an optional suffix K, M, G or
/// T (powers of 1024, an optional `B` or `iB` after it), e.g. `24G`, `1.5T`, `8000M`.
pub fn parse_memory_size(s: &str) -> Result<u64> {
    let bad = || {
        Error::InvalidArgument(format!(
            "memory size `{s}`: expected a number with an optional K, M, G or T suffix (24G)"
        ))
    };
    let t = s.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let (number, shift) = match t.char_indices().last() {
        Some((i, c @ ('K' | 'M' | 'G' | 'T'))) => (&t[..i], 10 * (1 + "KMGT".find(c).unwrap_or(0))),
        _ => (t, 0),
    };
    let v: f64 = number.trim().parse().map_err(|_| bad())?;
    let bytes = v * (1u64 << shift) as f64;
    if !(1.0..1.8e19).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;
    const GIB: u64 = 1 << 30;

    /// 14B in fp8 (ComfyUI's layout) at 640×480×81, CFG 1 (one sample, one context).
    fn needs_14b_fp8() -> DeviceNeeds {
        let cfg = DitConfig::preset("14b").unwrap();
        let dit = DitBytes::estimate(&cfg, DType::F8E4M3, DType::BF16);
        let (t5, vae) = (T5Config::default(), VaeConfig::default());
        DeviceNeeds::for_video(&cfg, dit, &t5, DType::BF16, &vae, [81, 480, 640], 1, 1)
    }

    fn checked(needs: &DeviceNeeds, req: PlanRequest) -> DevicePlan {
        let p = plan(needs, &req).unwrap();
        assert!(p.peak() <= p.budget, "{}", p.summary());
        assert!(p.budget + DEVICE_RESERVE <= req.free);
        p
    }

    #[test]
    fn the_size_estimates_match_the_published_models() {
        let n = needs_14b_fp8();
        // 14B parameters, the blocks' linear weights in one byte: about 14 GB.
        let dit = n.dit.total() as f64 / 1e9;
        assert!((13.5..15.5).contains(&dit), "{dit} GB");
        assert_eq!(n.dit.blocks.len(), 40);
        // umt5-xxl's encoder: 5.7 B parameters, 11.4 GB in bf16.
        let t5 = n.text_encoder as f64 / 1e9;
        assert!((11.0..12.0).contains(&t5), "{t5} GB");
        assert!(n.decoding_tiled < n.decoding_whole);
    }

    /// Checks that `req`'s plan is the least swapping one: one block fewer does not fit.
    fn least_swapping(needs: &DeviceNeeds, req: PlanRequest) -> DevicePlan {
        let p = checked(needs, req);
        if p.blocks_to_swap > 0 {
            let fewer = PlanRequest {
                blocks_to_swap: Some(p.blocks_to_swap - 1),
                ..req
            };
            assert!(matches!(plan(needs, &fewer), Err(Error::OutOfMemory(_))));
        }
        p
    }

    #[test]
    fn fourteen_b_fp8_at_640x480x81_fits_in_24_gb() {
        let needs = needs_14b_fp8();
        // A 24 GB card (a few blocks swapped), and a larger one limited to 24 GiB with
        // --max-device-memory (which these estimates fit without swapping).
        let card = PlanRequest {
            free: 24 * GB,
            ..Default::default()
        };
        let limited = PlanRequest {
            free: 80 * GB,
            max_device_memory: Some(24 * GIB),
            ..Default::default()
        };
        let (a, b) = (
            least_swapping(&needs, card),
            least_swapping(&needs, limited),
        );
        assert!(
            a.blocks_to_swap > 0 && a.blocks_to_swap < 10,
            "{}",
            a.summary()
        );
        assert_eq!(b.budget, 24 * GIB);
        assert!(b.blocks_to_swap <= a.blocks_to_swap, "{}", b.summary());
        for p in [&a, &b] {
            // The 11 GB text encoder cannot sit beside 14 GB of DiT weights.
            assert_eq!(p.text_encoder, Placement::Cpu);
            assert_eq!(p.vae_tiling, VaeTiling::Off);
        }
        // 832×480 needs more swapping in the same 24 GB.
        let cfg = DitConfig::preset("14b").unwrap();
        let (t5, vae) = (T5Config::default(), VaeConfig::default());
        let hd = DeviceNeeds::for_video(
            &cfg,
            needs.dit,
            &t5,
            DType::BF16,
            &vae,
            [81, 480, 832],
            1,
            1,
        );
        let p = least_swapping(&hd, card);
        assert!(p.blocks_to_swap > a.blocks_to_swap, "{}", p.summary());
    }

    #[test]
    fn eighty_gb_swaps_nothing() {
        let p = checked(
            &needs_14b_fp8(),
            PlanRequest {
                free: 80 * GB,
                ..Default::default()
            },
        );
        assert_eq!(p.blocks_to_swap, 0);
        assert_eq!(p.text_encoder, Placement::Device);
        assert_eq!(p.vae_tiling, VaeTiling::Off);
        assert_eq!(p.dit_resident, needs_14b_fp8().dit.total());
    }

    #[test]
    fn a_forced_swap_count_is_kept_or_refused() {
        let needs = needs_14b_fp8();
        let req = PlanRequest {
            free: 80 * GB,
            blocks_to_swap: Some(10),
            ..Default::default()
        };
        let p = checked(&needs, req);
        assert_eq!(p.blocks_to_swap, 10);
        let block = needs.dit.blocks[0];
        assert_eq!(p.dit_resident, needs.dit.total() - 8 * block);
        let too_many = PlanRequest {
            blocks_to_swap: Some(41),
            ..req
        };
        assert!(matches!(
            plan(&needs, &too_many),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn tiles_are_chosen_when_whole_frames_do_not_fit_and_nothing_fits_in_too_little() {
        // Short clips: the decode, not the denoising, sets the peak.
        let needs = DeviceNeeds {
            denoising: GIB,
            ..needs_14b_fp8()
        };
        // Everything swapped: the DiT keeps its other weights and two slots.
        let all = dit_resident(&needs.dit, 40);
        let budget = all + needs.denoising.max(needs.vae + needs.decoding_tiled);
        assert!(budget < all + needs.vae + needs.decoding_whole);
        let p = checked(
            &needs,
            PlanRequest {
                free: budget + DEVICE_RESERVE,
                ..Default::default()
            },
        );
        assert_eq!(p.blocks_to_swap, 40);
        assert_eq!(p.vae_tiling, VaeTiling::Tiled(Tiling::default()));
        let e = plan(
            &needs_14b_fp8(),
            &PlanRequest {
                free: 4 * GB,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::OutOfMemory(_)), "{e}");
        assert!(e.to_string().contains("40 of 40 blocks swapped"), "{e}");
    }

    #[test]
    fn memory_sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_memory_size("24G").unwrap(), 24 * GIB);
        assert_eq!(parse_memory_size("24GiB").unwrap(), 24 * GIB);
        assert_eq!(parse_memory_size("1.5t").unwrap(), 3 << 39);
        assert_eq!(parse_memory_size("512 MB").unwrap(), 512 << 20);
        assert_eq!(parse_memory_size("1000").unwrap(), 1000);
        for bad in ["", "G", "-1G", "0", "24X", "nanG", "1e30"] {
            assert!(parse_memory_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loaded_weights_are_counted_per_block() {
        use crate::tensor::Tensor;
        let w = |n: usize, d: DType| Weight::new(Tensor::zeros([n], d));
        let weights = BTreeMap::from([
            ("blocks.0.ffn.0.weight".to_string(), w(10, DType::F8E4M3)),
            ("blocks.0.ffn.0.bias".to_string(), w(2, DType::BF16)),
            ("blocks.1.ffn.0.weight".to_string(), w(10, DType::F8E4M3)),
            ("head.head.weight".to_string(), w(3, DType::F32)),
        ]);
        let b = DitBytes::from_weights(&weights);
        assert_eq!(b.blocks, vec![14, 10]);
        assert_eq!(b.other, 12);
        assert_eq!(b.total(), 36);
    }
}
