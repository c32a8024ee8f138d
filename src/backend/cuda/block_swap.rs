//! Block swapping on a CUDA device (low-VRAM mode): the swapped blocks' weights in pinned host
//! memory, two device slots, a side stream for the copies and events ordering it against the
//! device's stream, run in the order of [`crate::backend::block_swap::schedule`].

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaStream, PinnedHostSlice};

use super::{driver, CudaDevice, CudaStorage};
use crate::backend::block_swap::{schedule, SwapStep, SLOTS};
use crate::error::{Error, Result};

/// The last blocks of a model in pinned host memory, streamed through two device slots.
pub struct BlockSwap {
    device: Arc<CudaDevice>,
    copies: Arc<CudaStream>,
    /// Per swapped block, its weights' bytes (one buffer, as the caller lays them out).
    host: Vec<PinnedHostSlice<u8>>,
    slots: Vec<CudaStorage>,
    /// Recorded on the side stream when a slot's copy has ended.
    copied: Vec<CudaEvent>,
    /// Recorded on the device's stream when the block in a slot has computed.
    used: Vec<CudaEvent>,
    blocks: usize,
}

impl BlockSwap {
    /// Keeps `swapped` (the bytes of the last `swapped.len()` of `blocks` blocks, in order) in
    /// pinned memory and allocates the two slots on device `ordinal` (the largest block each).
    pub fn new(ordinal: usize, blocks: usize, swapped: &[&[u8]]) -> Result<BlockSwap> {
        if swapped.len() > blocks {
            return Err(Error::InvalidArgument(format!(
                "{} swapped blocks of a model with {blocks}",
                swapped.len()
            )));
        }
        let device = CudaDevice::get(ordinal)?;
        let ctx = device.stream().context();
        let copies = driver("creating the block-swap stream", || ctx.new_stream())?;
        let host = swapped
            .iter()
            .map(|bytes| {
                // SAFETY: every byte is written by the copy below before any read.
                let mut pinned = driver("pinned host memory", || unsafe {
                    ctx.alloc_pinned::<u8>(bytes.len())
                })?;
                driver("pinned host memory", || pinned.as_mut_slice())?.copy_from_slice(bytes);
                Ok(pinned)
            })
            .collect::<Result<Vec<_>>>()?;
        let slot_bytes = swapped.iter().map(|b| b.len()).max().unwrap_or(0);
        let slots = if swapped.is_empty() {
            Vec::new()
        } else {
            (0..SLOTS)
                .map(|_| device.alloc(slot_bytes))
                .collect::<Result<_>>()?
        };
        let event = || driver("creating a block-swap event", || ctx.new_event(None));
        Ok(BlockSwap {
            copied: (0..SLOTS).map(|_| event()).collect::<Result<_>>()?,
            used: (0..SLOTS).map(|_| event()).collect::<Result<_>>()?,
            device,
            copies,
            host,
            slots,
            blocks,
        })
    }

    /// How many blocks are swapped.
    pub fn swapped(&self) -> usize {
        self.host.len()
    }

    /// One forward: `compute(block, weights)` for every block in order, `weights` the slot
    /// holding a swapped block's bytes (its first bytes; `None` for a resident block). The
    /// computation must be queued on the device's stream.
    pub fn forward(
        &mut self,
        mut compute: impl FnMut(usize, Option<&CudaStorage>) -> Result<()>,
    ) -> Result<()> {
        let first = self.blocks - self.host.len();
        let main = Arc::clone(self.device.stream());
        for step in schedule(self.blocks, self.host.len()) {
            match step {
                SwapStep::Prefetch { block, slot, after } => {
                    let src = &self.host[block - first];
                    if after.is_some() {
                        driver("block swap", || self.copies.wait(&self.used[slot]))?;
                    }
                    let mut dst = self.slots[slot].view_mut::<u8>(src.len())?;
                    driver("block swap copy", || self.copies.memcpy_htod(src, &mut dst))?;
                    driver("block swap", || self.copied[slot].record(&self.copies))?;
                }
                SwapStep::Compute { block, slot } => match slot {
                    None => compute(block, None)?,
                    Some(s) => {
                        driver("block swap", || main.wait(&self.copied[s]))?;
                        compute(block, Some(&self.slots[s]))?;
                        driver("block swap", || self.used[s].record(&main))?;
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

    /// Streams five blocks of distinct bytes, three swapped, and checks that each computes from
    /// the right bytes (copied back from its slot on the device's stream). Skips without a
    /// device.
    #[test]
    fn each_block_computes_from_its_own_bytes() {
        if let Err(e) = CudaDevice::get(0) {
            println!("each_block_computes_from_its_own_bytes: SKIP: {e}");
            return;
        }
        let bytes: Vec<Vec<u8>> = (0..3u8).map(|b| vec![b + 10; 1000 + b as usize]).collect();
        let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        let mut swap = BlockSwap::new(0, 5, &refs).unwrap();
        let mut seen = Vec::new();
        swap.forward(|block, weights| {
            seen.push((block, weights.map(|w| w.download().unwrap()[0])));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (0, None),
                (1, None),
                (2, Some(10)),
                (3, Some(11)),
                (4, Some(12))
            ]
        );
    }
}
