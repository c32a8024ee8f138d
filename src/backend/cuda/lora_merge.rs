//! LoRA merge on a CUDA device (issue #16 item 3): the pristine weights and the LoRA factors stay
//! on the device, and each merge computes every targeted weight in one batched launch
//! (`kernels/lora_merge.cu`, preceded by a max-reduction launch when a scaled fp8 weight needs a
//! new scale), so changing a strength re-merges without reading the disk or the host again.
//!
//! The kernel is hand-written rather than a cuBLASLt `up @ down` GEMM plus element-wise passes:
//! a LoRA's rank (4 to 128) makes the product a few FMAs per weight value, so the merge is bound
//! by reading and writing the weight once, which one fused kernel does (a GEMM would write an f32
//! delta of the weight's size and read it back, 8 more bytes per value against an fp8 weight's
//! 2); and its fixed rounding order (one fma chain over the rank) is emulated bit for bit on the
//! CPU (`src/lora/kernel_emulation.rs`), where cuBLASLt's summation order is unspecified.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::kernels::lora_merge::{dtype_code, MergeJob, MergePass, MergeTerm, MAX_TERMS};
use super::{driver, CudaDevice, CudaStorage};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::lora::{
    check_strength, fp8_scale, pair_scale, Change, Lora, MergePlan, Report, StoreAs,
};
use crate::tensor::{DType, Shape, Tensor, Weight};

/// One change of a weight, its tensors on the device.
struct DeviceChange {
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
struct DeviceTarget {
    name: String,
    /// The weight as read, on the device (its scale kept).
    pristine: Weight,
    /// Its merged dtype and whether that carries a new fp8 scale.
    stored: (DType, bool),
    /// The inner dimension the kernel tiles (the weight's `in` for a pair).
    cols: usize,
    changes: Vec<DeviceChange>,
}

/// LoRAs ready to merge on a CUDA device at any strengths: [`DeviceMerge::merge`] computes the
/// changed weights as the CPU's [`crate::lora::merge`] with [`StoreAs::Same`] (within one
/// rounding step: the fp8 weights requantized with round to nearest even and saturation, scaled
/// fp8 ones with a new scale `max|W'| / fp8 max`). DoRA pairs are merged on the CPU only.
pub struct DeviceMerge {
    device: Arc<CudaDevice>,
    loras: Vec<PathBuf>,
    targets: Vec<DeviceTarget>,
    /// What the merge applies and ignores (matching as in [`crate::lora::merge`]).
    pub report: Report,
}

impl DeviceMerge {
    /// Matches `loras` against `weights` (the strengths only need to be valid here) and copies
    /// to device `ordinal` every weight they change (as stored) and their factors. Errors as
    /// [`crate::lora::merge`]'s, plus a DoRA pair and more than four changes to one weight.
    pub fn new(
        weights: &BTreeMap<String, Weight>,
        loras: &[(&Lora, f32)],
        ordinal: usize,
    ) -> Result<DeviceMerge> {
        let device = CudaDevice::get(ordinal)?;
        let plan = MergePlan::new(weights, loras, StoreAs::Same)?;
        let on_device = |t: &Tensor| t.to_device(Device::Cuda(ordinal));
        let mut targets = Vec::new();
        for (name, changes) in plan.changes()? {
            if changes.len() > MAX_TERMS {
                return Err(Error::InvalidArgument(format!(
                    "`{name}` is changed {} times; the CUDA merge applies {MAX_TERMS} changes \
                     to one weight at most",
                    changes.len()
                )));
            }
            let old = &weights[name];
            let n = old.tensor.elem_count();
            let mut cols = n.max(1);
            let changes = changes
                .into_iter()
                .map(|(lora, change)| {
                    Ok(match change {
                        Change::Pair(p) => {
                            cols = p.down.dims()[1];
                            DeviceChange {
                                lora,
                                pair: Some((p.alpha, p.rank())),
                                a: on_device(&p.up)?,
                                b: Some(on_device(&p.down)?),
                            }
                        }
                        Change::Full(t) => DeviceChange {
                            lora,
                            pair: None,
                            a: on_device(t)?,
                            b: None,
                        },
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            targets.push(DeviceTarget {
                name: name.to_string(),
                pristine: Weight {
                    tensor: on_device(&old.tensor)?,
                    scale: old.scale,
                },
                stored: plan.stored_form(name, old),
                cols,
                changes,
            });
        }
        Ok(DeviceMerge {
            device,
            loras: loras.iter().map(|(l, _)| l.path.clone()).collect(),
            targets,
            report: plan.report,
        })
    }

    /// The canonical names of the weights the LoRAs change.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().map(|t| t.name.as_str())
    }

    /// Every changed weight merged from the pristine ones with `strengths` (one per LoRA, in
    /// the order given to [`DeviceMerge::new`]), on the device, by canonical name.
    pub fn merge(&self, strengths: &[f32]) -> Result<BTreeMap<String, Weight>> {
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
        let dev = &self.device;
        let stream = dev.stream();
        let kernels = dev.kernels()?;
        let scaled = self.targets.iter().filter(|t| t.stored.1).count();
        let mut amax = driver("LoRA merge scratch", || {
            stream.alloc_zeros::<u32>(scaled.max(1))
        })?;
        let mut outputs = Vec::with_capacity(self.targets.len());
        let mut jobs = Vec::with_capacity(self.targets.len());
        let mut slot = 0;
        for t in &self.targets {
            let (dtype, with_scale) = t.stored;
            let n = t.pristine.tensor.elem_count();
            let mut out = dev.alloc(n * dtype.size_in_bytes())?;
            let mut job = MergeJob {
                w: address(t.pristine.tensor.cuda_storage("LoRA merge")?)?,
                out: address_mut(&mut out)?,
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
                *term = MergeTerm {
                    a: address(c.a.cuda_storage("LoRA merge")?)?,
                    b: match &c.b {
                        Some(b) => address(b.cuda_storage("LoRA merge")?)?,
                        None => 0,
                    },
                    rank: c.pair.map_or(0, |(_, r)| r as i32),
                    scale: match c.pair {
                        Some((alpha, rank)) => pair_scale(alpha, rank, strength),
                        None => strength,
                    },
                };
            }
            jobs.push(job);
            outputs.push(out);
        }
        let launch = |pass: MergePass, jobs: &[MergeJob]| -> Result<()> {
            let table = driver("LoRA merge jobs", || stream.clone_htod(jobs))?;
            // SAFETY: every address points into a live buffer of this device sized by the job
            // (the pristine weight and the factors held by `self`, the outputs and the maxima
            // above, all alive until the stream is synchronized below), and each job writes its
            // own output and slot. All of it runs on the device's one stream, in order.
            unsafe { kernels.lora_merge(stream, pass, &table.as_view(), jobs) }?;
            driver("LoRA merge", || stream.synchronize())
        };
        if scaled > 0 {
            launch(MergePass::Amax, &jobs)?;
            let maxima = driver("LoRA merge maxima", || stream.clone_dtoh(&amax))?;
            let mut next = maxima.iter();
            for (job, t) in jobs.iter_mut().zip(&self.targets) {
                if job.amax != 0 {
                    let bits = *next.next().expect("one slot per scaled target");
                    job.out_scale = fp8_scale(&t.name, t.stored.0, f32::from_bits(bits))?;
                }
            }
        }
        launch(MergePass::Store, &jobs)?;
        let mut merged = BTreeMap::new();
        for ((t, out), job) in self.targets.iter().zip(outputs).zip(&jobs) {
            let shape: Shape = t.pristine.tensor.shape().clone();
            let tensor = Tensor::from_cuda(out, t.stored.0, shape);
            let scale = t.stored.1.then_some(job.out_scale);
            merged.insert(t.name.clone(), Weight { tensor, scale });
        }
        Ok(merged)
    }
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

    /// The device merge equals the emulation bit for bit (the emulation equals the CPU merge
    /// within one rounding step, `src/lora/kernel_emulation.rs`), for every stored dtype, and
    /// re-merges at new strengths from the pristine weights. Skips without a device.
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
            let plan = MergePlan::new(&weights, &loras, StoreAs::Same).unwrap();
            for strengths in [[1.0f32, 0.6], [-0.7, 2.5], [1.0, 0.6]] {
                let device = merge.merge(&strengths).unwrap();
                let emulated = merge_as_kernel(&plan, &weights, &strengths).unwrap();
                assert_eq!(device.len(), emulated.len());
                for (name, e) in &emulated {
                    let d = &device[name];
                    assert_eq!(d.dtype(), e.dtype(), "{name}");
                    assert_eq!(d.scale, e.scale, "{name} {dtype:?} {strengths:?}");
                    let bytes = d.tensor.to_device(Device::Cpu).unwrap();
                    assert_eq!(
                        bytes.raw_bytes().unwrap(),
                        e.tensor.raw_bytes().unwrap(),
                        "{name} {dtype:?} {strengths:?}"
                    );
                }
            }
        }
        let weights = model(out, inp, DType::BF16, None);
        let merge = DeviceMerge::new(&weights, &[(&a, 1.0)], 0).unwrap();
        assert!(merge.merge(&[f32::NAN]).is_err());
        assert!(merge.merge(&[1.0, 1.0]).is_err());
    }
}
