//! LoRA merge on a CUDA device (issue #16 item 3), one part of the DiT at a time: the pristine
//! weights and the LoRA factors stay on the host (the pristine ones as read: the memory-mapped
//! file's bytes, or the host copy a format conversion made) and never all on the device. For
//! each block in order, then for the parameters outside the blocks, the merge copies in what it
//! needs (the factors, and on a re-merge the pristine weights), computes every targeted weight
//! of that part in one batched launch (`kernels/lora_merge.cu`, preceded by a max-reduction
//! launch when a scaled fp8 weight needs a new scale) writing each into the model's own device
//! bytes where it can, and frees the copies before the next part ([`WanDit::update_params`]
//! streams a swapped block in and out of its pinned host memory around it). So the device holds
//! at most one part's extra copies ([`crate::lora::LoraMergeBytes`]), and changing a strength
//! re-merges in place without reading the disk.
//!
//! The kernel is hand-written rather than a cuBLASLt `up @ down` GEMM plus element-wise passes:
//! a LoRA's rank (4 to 128) makes the product a few FMAs per weight value, so the merge is bound
//! by reading and writing the weight once, which one fused kernel does (a GEMM would write an f32
//! delta of the weight's size and read it back, 8 more bytes per value against an fp8 weight's
//! 2); and its fixed rounding order (one fma chain over the rank) is emulated bit for bit on the
//! CPU (`src/lora/kernel_emulation.rs`), where cuBLASLt's summation order is unspecified. Each
//! value is read and written by the same thread, so a weight merged over its own bytes (in
//! place, at load) reads every pristine value before it is overwritten.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::kernels::lora_merge::{dtype_code, MergeJob, MergePass, MergeTerm, MAX_TERMS};
use super::{driver, CudaDevice, CudaStorage};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::lora::{
    by_block, check_strength, fp8_scale, pair_scale, Change, Lora, LoraMergeBytes, MergePlan,
    Pristine, Report, StoreAs,
};
use crate::model::dit::WanDit;
use crate::tensor::{DType, Tensor, Weight};

/// One change of a weight, its tensors on the host.
struct HostChange {
    /// The index of its LoRA.
    lora: usize,
    /// `Some((alpha, rank))` for a pair, `None` for a full delta.
    pair: Option<(Option<f32>, usize)>,
    /// `up` of a pair, the delta of a full delta (f32).
    a: Tensor,
    /// `down` of a pair.
    b: Option<Tensor>,
}

/// One weight that LoRAs change.
struct Target {
    name: String,
    /// The weight as read, on the host (its scale kept).
    pristine: Weight,
    /// Its merged dtype and whether that carries a new fp8 scale.
    stored: (DType, bool),
    /// The inner dimension the kernel tiles (the weight's `in` for a pair).
    cols: usize,
    changes: Vec<HostChange>,
}

/// LoRAs ready to merge on a CUDA device at any strengths, one part of the DiT at a time:
/// [`DeviceMerge::apply`] computes the changed weights as the CPU's [`crate::lora::merge`] with
/// [`StoreAs::Same`] (within one rounding step: the fp8 weights requantized with round to
/// nearest even and saturation, scaled fp8 ones with a new scale `max|W'| / fp8 max`). DoRA
/// pairs are merged on the CPU only.
pub struct DeviceMerge {
    device: Arc<CudaDevice>,
    ordinal: usize,
    loras: Vec<PathBuf>,
    /// The targets by part of the model, in merge order.
    groups: Vec<(Option<usize>, Vec<Target>)>,
    bytes: LoraMergeBytes,
    /// What the merge applies and ignores (matching as in [`crate::lora::merge`]).
    pub report: Report,
}

impl DeviceMerge {
    /// Matches `loras` against `weights` (the strengths only need to be valid here) for merges
    /// on device `ordinal`, keeping on the host the weights they change (as read: no copy) and
    /// their factors. Errors as [`crate::lora::merge`]'s, plus a DoRA pair and more than four
    /// changes to one weight.
    pub fn new(
        weights: &BTreeMap<String, Weight>,
        loras: &[(&Lora, f32)],
        ordinal: usize,
    ) -> Result<DeviceMerge> {
        let device = CudaDevice::get(ordinal)?;
        let plan = MergePlan::new(weights, loras, StoreAs::Same)?;
        let groups = by_block(plan.changes()?);
        let bytes = LoraMergeBytes::of(weights, &groups);
        let groups = groups
            .into_iter()
            .map(|(block, targets)| {
                let targets = targets
                    .into_iter()
                    .map(|(name, changes)| target(weights, &plan, name, changes))
                    .collect::<Result<Vec<_>>>()?;
                Ok((block, targets))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceMerge {
            device,
            ordinal,
            loras: loras.iter().map(|(l, _)| l.path.clone()).collect(),
            groups,
            bytes,
            report: plan.report,
        })
    }

    /// The device bytes of each part's merge, for the memory plan.
    pub fn bytes(&self) -> &LoraMergeBytes {
        &self.bytes
    }

    /// The parts of the model the LoRAs change, in merge order: blocks in order (`Some`), then
    /// the parameters outside the blocks (`None`).
    pub fn parts(&self) -> impl Iterator<Item = Option<usize>> + '_ {
        self.groups.iter().map(|(block, _)| *block)
    }

    /// Merges every LoRA at `strengths` (one per LoRA, in the order given to
    /// [`DeviceMerge::new`]) into `dit` on the device, one part at a time
    /// ([`WanDit::update_params`]), from the pristine weights `pristine` names. Fails, changing
    /// nothing, on a wrong count or a non-finite strength; a device error midway leaves the
    /// parts before it merged at the new strengths.
    pub fn apply(&self, dit: &mut WanDit, strengths: &[f32], pristine: Pristine) -> Result<()> {
        self.check(strengths)?;
        for part in self.parts() {
            dit.update_params(part, &mut |params| {
                self.merge_part(part, strengths, params, pristine)
            })?;
        }
        Ok(())
    }

    /// Checks `strengths`: one finite number per LoRA.
    fn check(&self, strengths: &[f32]) -> Result<()> {
        if strengths.len() != self.loras.len() {
            return Err(Error::InvalidArgument(format!(
                "{} strengths for {} LoRAs",
                strengths.len(),
                self.loras.len()
            )));
        }
        for (path, &s) in self.loras.iter().zip(strengths) {
            check_strength(path, s)?;
        }
        Ok(())
    }

    /// Merges the targets of `part` at `strengths` into `params` (that part's parameters on
    /// this device, by canonical name): into a parameter's own bytes when it is stored in the
    /// merged dtype and no other tensor shares them, else into a new buffer that replaces it
    /// (converted to the parameter's dtype: a modulation widened to f32). The copies it makes
    /// (factors, pristine weights) are freed when it returns.
    pub(crate) fn merge_part(
        &self,
        part: Option<usize>,
        strengths: &[f32],
        params: &mut [(String, &mut Weight)],
        pristine: Pristine,
    ) -> Result<()> {
        self.check(strengths)?;
        let Some((_, targets)) = self.groups.iter().find(|(b, _)| *b == part) else {
            return Ok(());
        };
        let dev = &self.device;
        let stream = dev.stream();
        let kernels = dev.kernels()?;
        // A host tensor copied in (kept alive in `copies`) and its device address.
        let copy_in = |t: &Tensor, copies: &mut Vec<Tensor>| -> Result<u64> {
            let c = t.to_device(Device::Cuda(self.ordinal))?;
            let a = address(c.cuda_storage("LoRA merge")?)?;
            copies.push(c);
            Ok(a)
        };
        let scaled = targets.iter().filter(|t| t.stored.1).count();
        let mut amax = driver("LoRA merge scratch", || {
            stream.alloc_zeros::<u32>(scaled.max(1))
        })?;
        // What the launches read and the new buffers they write, alive until they end.
        let mut copies: Vec<Tensor> = Vec::new();
        let mut fresh: Vec<Option<CudaStorage>> = Vec::with_capacity(targets.len());
        let mut jobs = Vec::with_capacity(targets.len());
        let mut slot = 0;
        for t in targets {
            let param = param(params, &t.name)?;
            let (dtype, with_scale) = t.stored;
            let n = t.pristine.tensor.elem_count();
            let kept_as = param.dtype();
            let own = (kept_as == dtype)
                .then(|| param.tensor.cuda_storage_mut())
                .flatten();
            let (out, in_model, buffer) = match own {
                Some(own) => {
                    let out = address_mut(own)?;
                    (out, (pristine == Pristine::InModel).then_some(out), None)
                }
                None if with_scale && kept_as != dtype => {
                    return Err(Error::InvalidArgument(format!(
                        "LoRA merge: `{}` is kept as {kept_as:?} but merged as scaled {dtype:?}",
                        t.name
                    )))
                }
                None => {
                    let mut buffer = dev.alloc(n * dtype.size_in_bytes())?;
                    (address_mut(&mut buffer)?, None, Some(buffer))
                }
            };
            fresh.push(buffer);
            let w = match in_model {
                Some(w) => w,
                None => copy_in(&t.pristine.tensor, &mut copies)?,
            };
            let mut job = MergeJob {
                w,
                out,
                n: n as i64,
                cols: i32::try_from(t.cols).map_err(|_| too_large(&t.name))?,
                w_dtype: dtype_code("LoRA merge", t.pristine.dtype())?,
                out_dtype: dtype_code("LoRA merge", dtype)?,
                terms: t.changes.len() as i32,
                w_scale: t.pristine.scale.unwrap_or(1.0),
                ..MergeJob::default()
            };
            if with_scale {
                let (base, _sync) = amax.device_ptr_mut(stream);
                job.amax = base + 4 * slot as u64;
                slot += 1;
            }
            for (term, c) in job.term.iter_mut().zip(&t.changes) {
                let strength = strengths[c.lora];
                let a = copy_in(&c.a, &mut copies)?;
                let b = match &c.b {
                    Some(b) => copy_in(b, &mut copies)?,
                    None => 0,
                };
                *term = MergeTerm {
                    a,
                    b,
                    rank: c.pair.map_or(0, |(_, r)| r as i32),
                    scale: match c.pair {
                        Some((alpha, rank)) => pair_scale(alpha, rank, strength),
                        None => strength,
                    },
                };
            }
            jobs.push(job);
        }
        let launch = |pass: MergePass, jobs: &[MergeJob]| -> Result<()> {
            let table = driver("LoRA merge jobs", || stream.clone_htod(jobs))?;
            // SAFETY: every address points into a live buffer of this device sized by the job
            // (the parameters' own bytes, the copies and new buffers above, the maxima), all
            // alive until the stream is synchronized below; each job writes its own output and
            // slot, reading its input value before writing the same index when they are one
            // buffer. All of it runs on the device's one stream, in order.
            unsafe { kernels.lora_merge(stream, pass, &table.as_view(), jobs) }?;
            driver("LoRA merge", || stream.synchronize())
        };
        if scaled > 0 {
            launch(MergePass::Amax, &jobs)?;
            let maxima = driver("LoRA merge maxima", || stream.clone_dtoh(&amax))?;
            let mut next = maxima.iter();
            for (job, t) in jobs.iter_mut().zip(targets) {
                if job.amax != 0 {
                    let bits = *next.next().expect("one slot per scaled target");
                    job.out_scale = fp8_scale(&t.name, t.stored.0, f32::from_bits(bits))?;
                }
            }
        }
        launch(MergePass::Store, &jobs)?;
        drop(copies);
        for ((t, buffer), job) in targets.iter().zip(fresh).zip(&jobs) {
            let param = param(params, &t.name)?;
            if let Some(buffer) = buffer {
                let shape = t.pristine.tensor.shape().clone();
                let merged = Tensor::from_cuda(buffer, t.stored.0, shape);
                param.tensor = merged.to_dtype(param.dtype())?;
            }
            if t.stored.1 {
                param.scale = Some(job.out_scale);
            }
        }
        Ok(())
    }
}

/// The target `name` of `plan` with its `changes`, kept on the host. Fails on more changes
/// than the kernel applies to one weight.
fn target(
    weights: &BTreeMap<String, Weight>,
    plan: &MergePlan<'_>,
    name: &str,
    changes: Vec<(usize, Change<'_>)>,
) -> Result<Target> {
    if changes.len() > MAX_TERMS {
        return Err(Error::InvalidArgument(format!(
            "`{name}` is changed {} times; the CUDA merge applies {MAX_TERMS} changes to one \
             weight at most",
            changes.len()
        )));
    }
    let old = &weights[name];
    let mut cols = old.tensor.elem_count().max(1);
    let changes = changes
        .into_iter()
        .map(|(lora, change)| match change {
            Change::Pair(p) => {
                cols = p.down.dims()[1];
                HostChange {
                    lora,
                    pair: Some((p.alpha, p.rank())),
                    a: p.up.clone(),
                    b: Some(p.down.clone()),
                }
            }
            Change::Full(t) => HostChange {
                lora,
                pair: None,
                a: t.clone(),
                b: None,
            },
        })
        .collect();
    Ok(Target {
        name: name.to_string(),
        pristine: old.clone(),
        stored: plan.stored_form(name, old),
        cols,
        changes,
    })
}

/// The parameter `name` of `params`; an error when the part has none of that name.
fn param<'p>(params: &'p mut [(String, &mut Weight)], name: &str) -> Result<&'p mut Weight> {
    params
        .iter_mut()
        .find(|(n, _)| n == name)
        .map(|(_, w)| &mut **w)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "LoRA merge: `{name}` is not a parameter of this part of the model"
            ))
        })
}

fn too_large(name: &str) -> Error {
    Error::InvalidArgument(format!("`{name}` is too large for the CUDA merge"))
}

/// The device address of a storage's bytes (the merge runs on the one stream that wrote them).
fn address(s: &CudaStorage) -> Result<u64> {
    let view = s.view::<u8>(s.len())?;
    let (ptr, _sync) = view.device_ptr(s.device().stream());
    Ok(ptr)
}

/// The device address of a storage's bytes, for writing.
fn address_mut(s: &mut CudaStorage) -> Result<u64> {
    let stream = Arc::clone(s.device().stream());
    let len = s.len();
    let mut view = s.view_mut::<u8>(len)?;
    let (ptr, _sync) = view.device_ptr_mut(&stream);
    Ok(ptr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::kernel_emulation::merge_as_kernel;
    use crate::lora::kernel_emulation::tests::{lora, model, STORED};

    /// Checks that `params` hold `emulated`'s bytes and scales.
    fn assert_bits(
        params: &[(String, &mut Weight)],
        emulated: &BTreeMap<String, Weight>,
        what: &str,
    ) {
        assert_eq!(params.len(), emulated.len());
        for (name, d) in params {
            let e = &emulated[name];
            assert_eq!(d.dtype(), e.dtype(), "{name}");
            assert_eq!(d.scale, e.scale, "{name} {what}");
            let bytes = d.tensor.to_device(Device::Cpu).unwrap();
            assert_eq!(
                bytes.raw_bytes().unwrap(),
                e.tensor.raw_bytes().unwrap(),
                "{name} {what}"
            );
        }
    }

    /// The device merge of one part equals the emulation bit for bit (the emulation equals the
    /// CPU merge within one rounding step, `src/lora/kernel_emulation.rs`), for every stored
    /// dtype: first over the parameters' own pristine bytes, then re-merged in place at new
    /// strengths from the host's pristine weights (the parameters keep their buffers). Skips
    /// without a device.
    #[test]
    fn gpu_device_merge_equals_its_emulation_bit_for_bit() {
        if let Err(e) = CudaDevice::get(0) {
            println!("gpu_device_merge_equals_its_emulation_bit_for_bit: SKIP: {e}");
            return;
        }
        let (out, inp) = (67, 130);
        let (a, b) = (lora(out, inp, 16, 8.0, 31), lora(out, inp, 5, 0.0, 41));
        for (dtype, scale) in STORED {
            let weights = model(out, inp, dtype, scale);
            let loras = [(&a, 1.0), (&b, 1.0)];
            let merge = DeviceMerge::new(&weights, &loras, 0).unwrap();
            assert_eq!(merge.parts().collect::<Vec<_>>(), vec![Some(0)]);
            let plan = MergePlan::new(&weights, &loras, StoreAs::Same).unwrap();
            let mut placed: BTreeMap<String, Weight> = weights
                .iter()
                .map(|(n, w)| (n.clone(), w.to_device(Device::Cuda(0)).unwrap()))
                .collect();
            let address = |w: &Weight| super::address(w.tensor.cuda_storage("test").unwrap());
            let before: Vec<u64> = placed.values().map(|w| address(w).unwrap()).collect();
            let sources = [Pristine::InModel, Pristine::Host, Pristine::Host];
            for (strengths, pristine) in
                [[1.0f32, 0.6], [-0.7, 2.5], [1.0, 0.6]].iter().zip(sources)
            {
                let mut params: Vec<(String, &mut Weight)> =
                    placed.iter_mut().map(|(n, w)| (n.clone(), w)).collect();
                merge
                    .merge_part(Some(0), strengths, &mut params, pristine)
                    .unwrap();
                let emulated = merge_as_kernel(&plan, &weights, strengths).unwrap();
                assert_bits(
                    &params,
                    &emulated,
                    &format!("{dtype:?} {strengths:?} {pristine:?}"),
                );
            }
            let after: Vec<u64> = placed.values().map(|w| address(w).unwrap()).collect();
            assert_eq!(before, after, "merged in place");
        }
        let weights = model(out, inp, DType::BF16, None);
        let merge = DeviceMerge::new(&weights, &[(&a, 1.0)], 0).unwrap();
        let mut w = weights["blocks.0.norm3.bias"]
            .to_device(Device::Cuda(0))
            .unwrap();
        let mut params = vec![("blocks.0.norm3.bias".to_string(), &mut w)];
        for bad in [&[f32::NAN][..], &[1.0, 1.0]] {
            assert!(merge
                .merge_part(Some(0), bad, &mut params, Pristine::Host)
                .is_err());
        }
        // A part without the targeted parameter is refused by name.
        let e = merge
            .merge_part(Some(0), &[1.0], &mut params, Pristine::Host)
            .unwrap_err();
        assert!(e.to_string().contains("blocks.0.self_attn.q.weight"), "{e}");
    }

    /// The whole path on a tiny fp8 DiT with its last three blocks swapped (one of them
    /// changed, its modulation too): merged at load over the model's own bytes, then re-merged
    /// at new strengths from the host, every parameter equals the model built from the
    /// emulated whole merge, resident and swapped blocks alike. Skips without a device.
    #[test]
    fn gpu_block_by_block_merge_of_a_swapped_dit_equals_the_emulated_whole_merge() {
        use crate::lora::blockwise::tests::{every_param, lora, weights};
        use crate::model::dit::tests::tiny;
        if let Err(e) = CudaDevice::get(0) {
            println!("gpu_block_by_block_merge_of_a_swapped_dit_equals_the_emulated_whole_merge: SKIP: {e}");
            return;
        }
        let cfg = tiny(11);
        let w = weights(&cfg, DType::F8E4M3);
        let (a, b) = (lora(&cfg, 4, 1), lora(&cfg, 8, 50));
        let merge = DeviceMerge::new(&w, &[(&a, 1.0), (&b, 1.0)], 0).unwrap();
        let dit = WanDit::new(w.clone(), cfg.clone()).unwrap();
        let mut dit = dit.to_device_with_swap(Device::Cuda(0), 3).unwrap();
        for (strengths, pristine) in [
            ([1.0f32, 0.5], Pristine::InModel),
            ([-0.3, 2.0], Pristine::Host),
        ] {
            merge.apply(&mut dit, &strengths, pristine).unwrap();
            let plan = MergePlan::new(&w, &[(&a, 1.0), (&b, 1.0)], StoreAs::Same).unwrap();
            let mut whole = w.clone();
            whole.extend(merge_as_kernel(&plan, &w, &strengths).unwrap());
            let mut want = WanDit::new(whole, cfg.clone()).unwrap();
            assert_eq!(
                every_param(&mut dit),
                every_param(&mut want),
                "{strengths:?}"
            );
        }
        assert_eq!(dit.swapped_blocks(), 3);
    }
}
