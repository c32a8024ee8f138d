//! A pipeline on a CUDA device (issue #16 items 3 and 5): at load, the memory plan
//! ([`device_plan::plan`]) from the device's free memory (or `max_device_memory`) for the
//! default request's size, which decides the blocks kept in pinned host memory
//! ([`WanDit::to_device_with_swap`]), where the text encoder runs and the VAE's tiling; LoRAs in
//! [`Mode::Merged`] merged on the device one block at a time ([`DeviceMerge`]) into the placed
//! model, the pristine weights kept on the host (the mapped files), so that a strength change
//! re-merges in place without reading the files again. Each generation
//! plans again at its own size with the loaded choices fixed, so a request that does not fit is
//! refused before any work, and the plan it ran with is recorded in its metadata.

use std::collections::BTreeMap;

use super::device_plan::{self, DeviceNeeds, DevicePlan, DitBytes, Placement, PlanRequest};
use super::memory::VaeTiling;
use super::{build_dit, GenerateRequest, LoadOptions, WeightMemory};
use crate::backend::cuda::{self, DeviceMerge};
use crate::backend::Device;
use crate::error::Result;
use crate::io::config::{DitConfig, T5Config, VaeConfig};
use crate::lora::{self, Lora, LoraMergeBytes, Mode, Pristine};
use crate::model::dit::WanDit;
use crate::tensor::{DType, Weight};

/// What a pipeline on a CUDA device was loaded with.
#[derive(Debug)]
pub(super) struct OnDevice {
    /// The plan chosen at load.
    pub plan: DevicePlan,
    /// The free device memory that plan started from: every generation plans from it again,
    /// the models it placed being on the device since.
    pub free: u64,
    /// The bytes of the DiT's weights per block, as stored.
    pub dit_bytes: DitBytes,
    /// `max_device_memory` as loaded.
    pub max_device_memory: Option<u64>,
    /// The LoRAs merged on the device, for strength changes.
    pub loras: Option<DeviceLoras>,
}

/// LoRAs merged on the device, for strength changes.
pub(super) struct DeviceLoras {
    merge: DeviceMerge,
    /// Each LoRA's strength now.
    pub strengths: Vec<f32>,
}

impl std::fmt::Debug for DeviceLoras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceLoras({:?})", self.strengths)
    }
}

impl DeviceLoras {
    /// Re-merges every LoRA into `dit` at `strengths`, in place, one block at a time, from the
    /// pristine weights on the host; the strengths kept once it is done.
    pub fn remerge(&mut self, dit: &mut WanDit, strengths: &[f32]) -> Result<()> {
        self.merge.apply(dit, strengths, Pristine::Host)?;
        self.strengths = strengths.to_vec();
        Ok(())
    }

    /// The device bytes of the merge, for plans.
    fn bytes(&self) -> &LoraMergeBytes {
        self.merge.bytes()
    }
}

/// The plan's request: the free memory, with the load options' bounds.
pub(super) fn plan_request(options: &LoadOptions, free: u64) -> PlanRequest {
    PlanRequest {
        free,
        max_device_memory: options.max_device_memory,
        blocks_to_swap: options.blocks_to_swap,
        vae_tiling: VaeTiling::Auto,
        text_encoder: match options.t5_device {
            Some(Device::Cuda(_)) => Some(Placement::Device),
            Some(Device::Cpu) => Some(Placement::Cpu),
            None => None,
        },
    }
}

/// What `req` needs on the device with `batch` samples per forward, for models of these
/// configs (the text encoder in bf16 there).
pub(super) fn needs_of(
    req: &GenerateRequest,
    batch: usize,
    dit: (&DitConfig, &DitBytes),
    t5: &T5Config,
    vae: &VaeConfig,
) -> DeviceNeeds {
    let neg = req.uses_negative_prompt();
    // Batched CFG keeps a concatenated copy of both contexts (as the host estimate counts).
    let contexts =
        1 + usize::from(neg) + 2 * usize::from(neg && batch == 2) + usize::from(req.nag.is_some());
    DeviceNeeds::for_video(
        dit.0,
        dit.1.clone(),
        t5,
        DType::BF16,
        vae,
        [req.frames, req.height, req.width],
        batch,
        contexts,
    )
}

/// The plan at load, from `free` device bytes: for the default request's size, with the
/// options' bounds (`max_device_memory`, `blocks_to_swap`, `t5_device`). Its inputs are the
/// DiT's config and stored bytes per block, the text encoder's and the VAE's configs and the
/// device merge's bytes (`lora`, when LoRAs are merged there), so models read from files and
/// the same models built in memory plan alike.
pub(super) fn load_plan(
    dit: (&DitConfig, &DitBytes),
    configs: (&T5Config, &VaeConfig),
    options: &LoadOptions,
    free: u64,
    lora: Option<&LoraMergeBytes>,
) -> Result<DevicePlan> {
    let mut needs = needs_of(&GenerateRequest::default(), 1, dit, configs.0, configs.1);
    if let Some(l) = lora {
        needs.lora = l.clone();
    }
    device_plan::plan(&needs, &plan_request(options, free))
}

/// The DiT of [`super::Pipeline::load`] and [`super::Pipeline::from_weights`] on CUDA device
/// `ordinal`: the plan at load ([`load_plan`]) from the device's free memory, then the DiT
/// built with `loras` (merged on the device in [`Mode::Merged`], as deltas in
/// [`Mode::Unmerged`]) and placed with the plan's swapped blocks. Returns the DiT, the LoRA
/// report, the weights' bytes and what the pipeline keeps of it.
pub(super) fn build(
    base: BTreeMap<String, Weight>,
    cfg: DitConfig,
    loras: &[(&Lora, f32)],
    options: &LoadOptions,
    ordinal: usize,
    configs: (&T5Config, &VaeConfig),
) -> Result<(WanDit, lora::Report, WeightMemory, OnDevice)> {
    let dit_bytes = DitBytes::from_weights(&base);
    let merge = match (options.lora_mode, loras.is_empty()) {
        (Mode::Merged, false) => Some(DeviceMerge::new(&base, loras, ordinal)?),
        _ => None,
    };
    // Nothing of the merge is on the device yet: it copies in one part at a time.
    let free = cuda::free_memory(ordinal)?;
    let lora = merge.as_ref().map(DeviceMerge::bytes);
    let plan = load_plan((&cfg, &dit_bytes), configs, options, free, lora)?;
    log::info!("device plan at load: {}", plan.summary());
    if let Some(max) = options.max_device_memory {
        cuda::set_memory_limit(ordinal, max)?;
    }
    let device = Device::Cuda(ordinal);
    let swap = plan.blocks_to_swap;
    let (dit, report, weights, loras) = match merge {
        Some(merge) => {
            // The pristine model placed as planned, then merged over its own bytes.
            let strengths: Vec<f32> = loras.iter().map(|(_, s)| *s).collect();
            let mut dit = WanDit::new(base, cfg)?.to_device_with_swap(device, swap)?;
            merge.apply(&mut dit, &strengths, Pristine::InModel)?;
            let weights = WeightMemory {
                dit: dit_bytes.total(),
                ..WeightMemory::default()
            };
            let report = merge.report.clone();
            (dit, report, weights, Some(DeviceLoras { merge, strengths }))
        }
        None => {
            let (dit, report, weights) = build_dit(base, cfg, loras, options.lora_mode)?;
            (
                dit.to_device_with_swap(device, swap)?,
                report,
                weights,
                None,
            )
        }
    };
    let kept = OnDevice {
        plan,
        free,
        dit_bytes,
        max_device_memory: options.max_device_memory,
        loras,
    };
    Ok((dit, report, weights, kept))
}

impl OnDevice {
    /// The plan of `req` with the loaded choices (blocks swapped, text encoder placement)
    /// fixed: batched CFG when `batched` allows it and it fits. Fails with
    /// [`crate::Error::OutOfMemory`] when the request does not fit.
    pub fn plan_for(
        &self,
        req: &GenerateRequest,
        batched: bool,
        dit: &DitConfig,
        configs: (&T5Config, &VaeConfig),
    ) -> Result<(DevicePlan, bool)> {
        let plan_req = PlanRequest {
            free: self.free,
            max_device_memory: self.max_device_memory,
            blocks_to_swap: Some(self.plan.blocks_to_swap),
            vae_tiling: req.vae_tiling,
            text_encoder: Some(self.plan.text_encoder),
        };
        let plan = |batch: usize| {
            let mut needs = needs_of(req, batch, (dit, &self.dit_bytes), configs.0, configs.1);
            if let Some(l) = &self.loras {
                needs.lora = l.bytes().clone();
            }
            device_plan::plan(&needs, &plan_req)
        };
        if batched {
            if let Ok(p) = plan(2) {
                return Ok((p, true));
            }
        }
        Ok((plan(1)?, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::device_plan::plan;

    const GIB: u64 = 1 << 30;

    /// The load decisions for the 14B fp8 DiT at the default request's size, from a fake free
    /// memory figure: an explicit swap count and a CUDA text encoder are kept, the plan chooses
    /// otherwise, and a generation plans again with the loaded choices fixed.
    #[test]
    fn the_load_plan_follows_the_options_and_the_free_memory() {
        let cfg = DitConfig::preset("14b").unwrap();
        let bytes = DitBytes::estimate(&cfg, DType::F8E4M3, DType::BF16);
        let (t5, vae) = (T5Config::default(), VaeConfig::default());
        let req = GenerateRequest::default();
        let needs = needs_of(&req, 1, (&cfg, &bytes), &t5, &vae);
        let cuda = LoadOptions {
            device: Device::Cuda(0),
            ..LoadOptions::default()
        };
        let roomy = plan(&needs, &plan_request(&cuda, 140 * GIB)).unwrap();
        assert_eq!(roomy.blocks_to_swap, 0);
        assert_eq!(roomy.text_encoder, Placement::Device);
        let small = plan(&needs, &plan_request(&cuda, 24 * GIB)).unwrap();
        assert!(small.blocks_to_swap > 0, "{}", small.summary());
        assert_eq!(small.text_encoder, Placement::Cpu);
        let forced = LoadOptions {
            blocks_to_swap: Some(7),
            max_device_memory: Some(40 * GIB),
            ..cuda
        };
        let p = plan(&needs, &plan_request(&forced, 140 * GIB)).unwrap();
        assert_eq!((p.blocks_to_swap, p.budget), (7, 40 * GIB));
        let t5_cuda = LoadOptions {
            t5_device: Some(Device::Cuda(0)),
            ..cuda
        };
        let e = plan(&needs, &plan_request(&t5_cuda, 24 * GIB)).unwrap_err();
        assert!(matches!(e, crate::Error::OutOfMemory(_)), "{e}");

        let loaded = OnDevice {
            plan: small.clone(),
            free: 24 * GIB,
            dit_bytes: bytes,
            max_device_memory: None,
            loras: None,
        };
        let (again, batched) = loaded.plan_for(&req, true, &cfg, (&t5, &vae)).unwrap();
        assert_eq!(again.blocks_to_swap, small.blocks_to_swap);
        assert_eq!(again.text_encoder, Placement::Cpu);
        assert!(again.peak() <= again.budget);
        assert!(!batched || req.uses_negative_prompt());
        let mut huge = req.clone();
        (huge.width, huge.height, huge.frames) = (1920, 1088, 161);
        let e = loaded
            .plan_for(&huge, false, &cfg, (&t5, &vae))
            .unwrap_err();
        assert!(matches!(e, crate::Error::OutOfMemory(_)), "{e}");
    }
}
