//! Low-VRAM mode of a DiT on a CUDA device (`--blocks-to-swap N`): the last `N` blocks' tensors
//! live in pinned host memory ([`BlockSwap`]) and are streamed in for each pass over the blocks,
//! each while the block before it computes. The DiT keeps for each swapped block only its
//! skeleton (the structure and fp8 scales, every tensor empty) and the dtype and shape of each
//! tensor, so the host holds the block's bytes once, pinned.

use std::sync::Mutex;

use super::block::Block;
use super::weights::ParamUpdate;
use crate::backend::cuda::{BlockSwap, CudaStorage};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

/// A swapped block without its bytes.
struct Skeleton {
    /// The block with every tensor replaced by an empty one (scales kept).
    block: Block,
    /// Each tensor's dtype and shape, in [`Block::map_tensors`] order.
    tensors: Vec<(DType, Shape)>,
}

impl Skeleton {
    /// The block computing from `parts`, the device copies of its tensors.
    fn on_device(&self, parts: Vec<CudaStorage>) -> Result<Block> {
        let mut parts = parts.into_iter();
        let mut metas = self.tensors.iter();
        self.block.map_tensors(&mut |_| {
            let (Some(storage), Some((dtype, shape))) = (parts.next(), metas.next()) else {
                return Err(Error::Device(
                    "block swap: fewer device parts than tensors".into(),
                ));
            };
            Ok(Tensor::from_cuda(storage, *dtype, shape.clone()))
        })
    }
}

/// The swapped blocks of a DiT and their streamer.
pub(super) struct SwappedBlocks {
    skeletons: Vec<Skeleton>,
    stream: Mutex<BlockSwap>,
}

impl std::fmt::Debug for SwappedBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SwappedBlocks({})", self.skeletons.len())
    }
}

impl SwappedBlocks {
    /// Pins `swapped` (the last blocks of a model of `total` blocks, on the host or on device
    /// `ordinal`) for streaming to device `ordinal`. Blocks carrying unmerged LoRA deltas are
    /// refused: merge the LoRAs to swap their blocks.
    pub fn new(swapped: Vec<Block>, total: usize, ordinal: usize) -> Result<SwappedBlocks> {
        let mut skeletons = Vec::with_capacity(swapped.len());
        // Per block, its tensors on the host (the bytes pinned below, then dropped).
        let mut host: Vec<Vec<Tensor>> = Vec::with_capacity(swapped.len());
        for mut block in swapped {
            if block.has_deltas() {
                return Err(Error::InvalidArgument(
                    "blocks_to_swap needs merged LoRAs (LoRA mode merge): a swapped block \
                     cannot carry runtime deltas"
                        .into(),
                ));
            }
            let (mut tensors, mut bytes) = (Vec::new(), Vec::new());
            let skeleton = block.map_tensors(&mut |t| {
                tensors.push((t.dtype(), t.shape().clone()));
                bytes.push(t.to_device(Device::Cpu)?);
                Ok(Tensor::zeros([0], t.dtype()))
            })?;
            skeletons.push(Skeleton {
                block: skeleton,
                tensors,
            });
            host.push(bytes);
        }
        let parts = host
            .iter()
            .map(|ts| ts.iter().map(Tensor::raw_bytes).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let stream = BlockSwap::new(ordinal, total, &parts)?;
        Ok(SwappedBlocks {
            skeletons,
            stream: Mutex::new(stream),
        })
    }

    /// How many blocks are swapped.
    pub fn len(&self) -> usize {
        self.skeletons.len()
    }

    /// `f(i, block)` for every block `i` in order: `resident[i]` for the resident ones, the
    /// swapped ones streamed in.
    pub fn each_block(
        &self,
        resident: &[Block],
        f: &mut dyn FnMut(usize, &Block) -> Result<()>,
    ) -> Result<()> {
        let first = resident.len();
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        stream.forward(|i, parts| match parts {
            None => f(i, &resident[i]),
            Some(p) => f(i, &self.skeletons[i - first].on_device(p)?),
        })
    }

    /// Runs `update` on swapped block `index`'s parameters (counted from the first swapped one;
    /// block `block` of the model): the block is copied to the device for it, then its pinned
    /// host bytes are overwritten with what `update` left and its skeleton takes the new scales.
    /// On an error the pinned bytes stay as they were.
    pub fn update(
        &mut self,
        index: usize,
        block: usize,
        update: &mut ParamUpdate<'_>,
    ) -> Result<()> {
        let stream = self.stream.get_mut().unwrap_or_else(|e| e.into_inner());
        let skeleton = &mut self.skeletons[index];
        let mut on_device = skeleton.on_device(stream.fetch(index)?)?;
        on_device.update(block, update)?;
        let mut parts = Vec::with_capacity(skeleton.tensors.len());
        let emptied = on_device.map_tensors(&mut |t| {
            parts.push(t.clone());
            Ok(Tensor::zeros([0], t.dtype()))
        })?;
        let storages = parts
            .iter()
            .map(|t| t.cuda_storage("block swap"))
            .collect::<Result<Vec<_>>>()?;
        stream.store(index, &storages)?;
        skeleton.block = emptied;
        Ok(())
    }

    /// Swapped block `index` (counted from the first swapped one) copied to the device alone.
    pub fn fetch(&self, index: usize) -> Result<Block> {
        let stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        self.skeletons[index].on_device(stream.fetch(index)?)
    }
}
