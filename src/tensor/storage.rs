//! Where a tensor's bytes live.
//!
//! Host tensors either own their data or borrow a byte range of a memory-mapped file (the
//! zero-copy path for weights). The CUDA variant holds device memory with the `cuda` feature;
//! without it the type is uninhabited, so code that matches on storage needs no `#[cfg]`.

use std::ops::Range;
use std::sync::Arc;

use crate::backend::cuda::CudaStorage;

/// The bytes behind a [`super::Tensor`].
pub enum Storage {
    /// f32 data owned by the tensor (the compute dtype of the CPU backend, kept typed so that
    /// ops read it without any cast or copy).
    F32(Vec<f32>),
    /// Little-endian bytes of any other dtype, owned by the tensor.
    Bytes(Vec<u8>),
    /// A byte range of a memory map, shared by every tensor of one file.
    Mapped {
        /// The whole file.
        map: Arc<memmap2::Mmap>,
        /// The tensor's bytes inside it.
        range: Range<usize>,
    },
    /// Device memory.
    Cuda(CudaStorage),
}

impl Storage {
    /// The host bytes, or `None` for device storage.
    pub fn host_bytes(&self) -> Option<&[u8]> {
        match self {
            Storage::F32(v) => Some(bytemuck::cast_slice(v)),
            Storage::Bytes(v) => Some(v),
            Storage::Mapped { map, range } => Some(&map[range.clone()]),
            Storage::Cuda(_) => None,
        }
    }

    /// True when the bytes are borrowed from a memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Storage::Mapped { .. })
    }
}
