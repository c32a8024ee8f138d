//! Block swapping on a CUDA device (low-VRAM mode): the swapped blocks' tensors in pinned host
//! memory, copied on a side stream into device buffers taken from the device's allocator just
//! before the copy, in the order of [`crate::backend::block_swap::schedule`]. Events order the
//! two streams: a copy starts once the device's stream has run everything queued before it (so
//! a buffer the allocator hands out again, and a slot's previous block, are done with), and a
//! block computes once its copy has ended. At most [`SLOTS`] swapped blocks are on the device
//! at once.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaStream, PinnedHostSlice};

use super::{driver, CudaDevice, CudaStorage};
use crate::backend::block_swap::{schedule, SwapStep, SLOTS};
use crate::error::{Error, Result};

/// The last blocks of a model in pinned host memory, streamed in for each forward.
pub struct BlockSwap {
    device: Arc<CudaDevice>,
    copies: Arc<CudaStream>,
    /// Per swapped block, its parts (one per tensor, as the caller lays them out).
    host: Vec<Vec<PinnedHostSlice<u8>>>,
    blocks: usize,
}

impl BlockSwap {
    /// Keeps `swapped` (the parts of the last `swapped.len()` of `blocks` blocks, in order) in
    /// pinned memory of device `ordinal`'s context.
    pub fn new(ordinal: usize, blocks: usize, swapped: &[Vec<&[u8]>]) -> Result<BlockSwap> {
        if swapped.len() > blocks {
            return Err(Error::InvalidArgument(format!(
                "{} swapped blocks of a model with {blocks}",
                swapped.len()
            )));
        }
        if swapped.iter().flatten().any(|p| p.is_empty()) {
            return Err(Error::InvalidArgument(
                "block swap: an empty part (a tensor without elements)".into(),
            ));
        }
        let device = CudaDevice::get(ordinal)?;
        let ctx = device.stream().context();
        let copies = driver("creating the block-swap stream", || ctx.new_stream())?;
        let pin = |bytes: &&[u8]| {
            // SAFETY: every byte is written by the copy below before any read.
            let mut pinned = driver("pinned host memory", || unsafe {
                ctx.alloc_pinned::<u8>(bytes.len())
            })?;
            driver("pinned host memory", || pinned.as_mut_slice())?.copy_from_slice(bytes);
            Ok(pinned)
        };
        let host = swapped
            .iter()
            .map(|parts| parts.iter().map(pin).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        Ok(BlockSwap {
            device,
            copies,
            host,
            blocks,
        })
    }

    /// How many blocks are swapped.
    pub fn swapped(&self) -> usize {
        self.host.len()
    }

    /// Swapped block `index`'s parts (counted from the first swapped block) copied to the
    /// device on its stream, for computing that block alone.
    pub fn fetch(&self, index: usize) -> Result<Vec<CudaStorage>> {
        let parts = self.host.get(index).ok_or_else(|| {
            Error::InvalidArgument(format!("swapped block {index} of {}", self.host.len()))
        })?;
        let main = self.device.stream();
        parts
            .iter()
            .map(|src| {
                let mut dst = self.device.alloc(src.len())?;
                {
                    let mut view = dst.view_mut::<u8>(src.len())?;
                    driver("block swap copy", || main.memcpy_htod(src, &mut view))?;
                }
                Ok(dst)
            })
            .collect()
    }

    /// Overwrites swapped block `index`'s pinned parts with the device bytes `parts` (one per
    /// part, each as long), waiting for the copies: a block changed on the device (LoRAs
    /// re-merged) kept.
    pub fn store(&mut self, index: usize, parts: &[&CudaStorage]) -> Result<()> {
        let count = self.host.len();
        let host = self
            .host
            .get_mut(index)
            .ok_or_else(|| Error::InvalidArgument(format!("swapped block {index} of {count}")))?;
        if host.len() != parts.len() || host.iter().zip(parts).any(|(h, p)| h.len() != p.len()) {
            return Err(Error::InvalidArgument(
                "block swap: storing parts of other sizes than the block's".into(),
            ));
        }
        let main = self.device.stream();
        for (dst, src) in host.iter_mut().zip(parts) {
            let view = src.view::<u8>(src.len())?;
            driver("block swap copy back", || main.memcpy_dtoh(&view, dst))?;
        }
        driver("block swap copy back", || main.synchronize())
    }

    /// One forward: `compute(block, parts)` for every block in order, `parts` the device copies
    /// of a swapped block's parts (each as long as the part given to [`BlockSwap::new`]; `None`
    /// for a resident block). The computation must be queued on the device's stream; the parts
    /// go back to the allocator when `compute` drops them.
    pub fn forward(
        &mut self,
        mut compute: impl FnMut(usize, Option<Vec<CudaStorage>>) -> Result<()>,
    ) -> Result<()> {
        let first = self.blocks - self.host.len();
        let main = Arc::clone(self.device.stream());
        let ctx = main.context();
        let event = || driver("creating a block-swap event", || ctx.new_event(None));
        let ready: Vec<CudaEvent> = (0..SLOTS).map(|_| event()).collect::<Result<_>>()?;
        let copied: Vec<CudaEvent> = (0..SLOTS).map(|_| event()).collect::<Result<_>>()?;
        let mut slots: [Option<Vec<CudaStorage>>; SLOTS] = Default::default();
        for step in schedule(self.blocks, self.host.len()) {
            match step {
                SwapStep::Prefetch { block, slot, .. } => {
                    let parts = &self.host[block - first];
                    let mut dst = parts
                        .iter()
                        .map(|p| self.device.alloc(p.len()))
                        .collect::<Result<Vec<_>>>()?;
                    // Everything queued on the device's stream so far (the slot's previous
                    // block, the last users of the buffers just taken) ends before the copy.
                    driver("block swap", || ready[slot].record(&main))?;
                    driver("block swap", || self.copies.wait(&ready[slot]))?;
                    for (src, d) in parts.iter().zip(&mut dst) {
                        let mut view = d.view_mut::<u8>(src.len())?;
                        driver("block swap copy", || {
                            self.copies.memcpy_htod(src, &mut view)
                        })?;
                    }
                    driver("block swap", || copied[slot].record(&self.copies))?;
                    slots[slot] = Some(dst);
                }
                SwapStep::Compute { block, slot } => match slot {
                    None => compute(block, None)?,
                    Some(s) => {
                        driver("block swap", || main.wait(&copied[s]))?;
                        let parts = slots[s].take().expect("the schedule fills a slot first");
                        compute(block, Some(parts))?;
                    }
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams five blocks of distinct bytes in two parts each, three swapped, twice, and
    /// checks that each computes from its own parts (copied back on the device's stream).
    /// Skips without a device.
    #[test]
    fn gpu_block_swap_computes_each_block_from_its_own_bytes() {
        if let Err(e) = CudaDevice::get(0) {
            println!("gpu_block_swap_computes_each_block_from_its_own_bytes: SKIP: {e}");
            return;
        }
        let bytes: Vec<Vec<u8>> = (0..3usize)
            .map(|b| (0..1000 + b).map(|i| (i * 7 + b * 31) as u8).collect())
            .collect();
        let parts: Vec<Vec<&[u8]>> = bytes.iter().map(|b| vec![&b[..7], &b[7..]]).collect();
        let mut swap = BlockSwap::new(0, 5, &parts).unwrap();
        assert_eq!(swap.swapped(), 3);
        for _ in 0..2 {
            let mut seen = Vec::new();
            swap.forward(|block, parts| {
                if let Some(p) = parts {
                    let copied: Vec<Vec<u8>> = p.iter().map(|s| s.download().unwrap()).collect();
                    assert_eq!(copied.concat(), bytes[block - 2], "block {block}");
                }
                seen.push(block);
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        }
    }
}
