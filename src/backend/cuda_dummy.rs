//! Stand-in for the CUDA backend in builds without the `cuda` feature: the same items, with
//! uninhabited storage and constructors that return [`Error::CudaNotCompiled`].

use crate::backend::{DeviceInfo, MemoryUsage};
use crate::error::{Error, Result};

/// The CUDA side of the op dispatch, with the signatures of the CUDA build's. No tensor lives on
/// a CUDA device in this build, so the dispatch never reaches these; each returns
/// [`Error::CudaNotCompiled`].
pub mod ops {
    use crate::backend::cpu::attention_q8::Q8Scheme;
    use crate::backend::cpu::conv::Conv3dGeom;
    use crate::backend::cpu::elementwise::{BinaryOp, UnaryOp};
    use crate::backend::cpu::reduce::ReduceOp;
    use crate::backend::gemm_plan::Epilogue;
    use crate::error::{Error, Result};
    use crate::tensor::ops::AttentionParams;
    use crate::tensor::{DType, Shape, Tensor, Weight};

    /// Defines each entry as a function returning [`Error::CudaNotCompiled`].
    macro_rules! not_compiled {
        ($(fn $name:ident($($ty:ty),*);)*) => {$(
            #[doc = concat!("`", stringify!($name), "` on CUDA: not in this build.")]
            pub fn $name($(_: $ty),*) -> Result<Tensor> {
                Err(Error::CudaNotCompiled)
            }
        )*};
    }

    /// The 8-bit attention kernel of a CUDA device: none in this build.
    pub fn q8_kernel(
        _ordinal: usize,
        _head_dim: usize,
    ) -> Result<crate::backend::q8_kernel::Q8Kernel> {
        Err(Error::CudaNotCompiled)
    }

    not_compiled! {
        fn binary(BinaryOp, &Tensor, &Tensor, &Shape);
        fn unary(UnaryOp, &Tensor);
        fn reduce(ReduceOp, &Tensor, usize);
        fn softmax_last(&Tensor);
        fn layer_norm(&Tensor, Option<&Weight>, Option<&Weight>, f32);
        fn rms_norm(&Tensor, Option<&Weight>, f32);
        fn channel_rms_norm(&Tensor, &Weight);
        fn rope_interleaved(&Tensor, &Tensor, &Tensor);
        fn embedding(&[u32], &Weight);
        fn matmul(&Tensor, &Tensor, &Shape);
        fn linear(&Tensor, &Weight, Option<&Weight>, bool, Epilogue, &Shape);
        fn attention(&Tensor, &Tensor, &Tensor, &AttentionParams<'_>);
        fn attention_q8(&Tensor, &Tensor, &Tensor, f32, &Q8Scheme);
        fn conv3d(&Tensor, &Weight, Option<&Weight>, &Conv3dGeom, &Shape);
        fn upsample_nearest2x(&Tensor, &Shape);
        fn permute(&Tensor, &[usize], &Shape);
        fn narrow(&Tensor, usize, usize, &Shape);
        fn pad_zeros(&Tensor, &[(usize, usize)], &Shape);
        fn cat(&[&Tensor], usize, &Shape);
        fn convert(&Tensor, DType);
    }
}

/// The CUDA side of [`crate::tensor::ops::sampler`], with the CUDA build's signatures. No tensor
/// lives on a CUDA device in this build; each returns [`Error::CudaNotCompiled`].
pub mod sampler_ops {
    use crate::error::{Error, Result};
    use crate::tensor::ops::sampler::{DpmStep, UniPcHistory, UniPcOut, UniPcStep};
    use crate::tensor::{Shape, Tensor};

    /// `unipc_step` on CUDA: not in this build.
    pub fn unipc_step(
        _: &Tensor,
        _: &Tensor,
        _: Option<UniPcHistory<'_>>,
        _: &UniPcStep,
    ) -> Result<UniPcOut> {
        Err(Error::CudaNotCompiled)
    }

    /// `dpm_step` on CUDA: not in this build.
    pub fn dpm_step(
        _: &Tensor,
        _: &Tensor,
        _: Option<&Tensor>,
        _: &DpmStep,
    ) -> Result<(Tensor, Tensor)> {
        Err(Error::CudaNotCompiled)
    }

    /// `euler_step` on CUDA: not in this build.
    pub fn euler_step(_: &Tensor, _: &Tensor, _: f64) -> Result<Tensor> {
        Err(Error::CudaNotCompiled)
    }

    /// `lcm_step` on CUDA: not in this build.
    pub fn lcm_step(_: &Tensor, _: &Tensor, _: f64, _: Option<(f64, &Tensor)>) -> Result<Tensor> {
        Err(Error::CudaNotCompiled)
    }

    /// `cfg` on CUDA: not in this build.
    pub fn cfg(_: &Tensor, _: &Tensor, _: f64) -> Result<Tensor> {
        Err(Error::CudaNotCompiled)
    }

    /// `cfg_zero_star` on CUDA: not in this build.
    pub fn cfg_zero_star(_: &Tensor, _: &Tensor, _: f64) -> Result<Tensor> {
        Err(Error::CudaNotCompiled)
    }

    /// `zeros_like` on CUDA: not in this build.
    pub fn zeros_like(_: &Tensor) -> Result<Tensor> {
        Err(Error::CudaNotCompiled)
    }

    /// `first_non_finite` on CUDA: not in this build.
    pub fn first_non_finite(_: &Tensor) -> Result<Option<f64>> {
        Err(Error::CudaNotCompiled)
    }

    /// `seeded_normal` on CUDA: not in this build.
    pub fn seeded_normal(_: usize, _: u64, _: u64, _: &Shape) -> Result<Tensor> {
        Err(Error::CudaNotCompiled)
    }
}

/// Device memory; uninhabited in builds without CUDA.
pub enum CudaStorage {}

impl CudaStorage {
    /// Copies host bytes to device `ordinal`: always an error in this build.
    pub fn upload(_ordinal: usize, _bytes: &[u8]) -> Result<CudaStorage> {
        Err(Error::CudaNotCompiled)
    }

    /// The device's bytes copied to the host.
    pub fn download(&self) -> Result<Vec<u8>> {
        match *self {}
    }

    /// The ordinal of the device holding the bytes.
    pub fn ordinal(&self) -> usize {
        match *self {}
    }
}

/// Reports whether a CUDA device can be used: always an error in this build.
pub fn device_available() -> Result<()> {
    Err(Error::CudaNotCompiled)
}

/// Lists the CUDA devices: always an error in this build.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    Err(Error::CudaNotCompiled)
}

/// Device-to-host copies made so far: always 0 in this build.
pub fn download_count() -> u64 {
    0
}

/// Waits for the work queued on a CUDA device: always an error in this build.
pub fn synchronize(_ordinal: usize) -> Result<()> {
    Err(Error::CudaNotCompiled)
}

/// The device memory wanrt could take on a CUDA device: always an error in this build.
pub fn free_memory(_ordinal: usize) -> Result<u64> {
    Err(Error::CudaNotCompiled)
}

/// Bounds the memory wanrt keeps on a CUDA device: always an error in this build.
pub fn set_memory_limit(_ordinal: usize, _bytes: u64) -> Result<()> {
    Err(Error::CudaNotCompiled)
}

/// Block swapping; never built in this build.
pub struct BlockSwap {
    never: std::convert::Infallible,
}

impl BlockSwap {
    /// Keeps swapped blocks in pinned memory: always an error in this build.
    pub fn new(_ordinal: usize, _blocks: usize, _swapped: &[Vec<&[u8]>]) -> Result<BlockSwap> {
        Err(Error::CudaNotCompiled)
    }

    /// How many blocks are swapped.
    pub fn swapped(&self) -> usize {
        match self.never {}
    }

    /// One swapped block's parts copied to the device.
    pub fn fetch(&self, _index: usize) -> Result<Vec<CudaStorage>> {
        match self.never {}
    }

    /// Overwrites one swapped block's pinned parts.
    pub fn store(&mut self, _index: usize, _parts: &[&CudaStorage]) -> Result<()> {
        match self.never {}
    }

    /// One forward through the blocks.
    pub fn forward(
        &mut self,
        _compute: impl FnMut(usize, Option<Vec<CudaStorage>>) -> Result<()>,
    ) -> Result<()> {
        match self.never {}
    }
}

/// The LoRA merge on a CUDA device; never built in this build.
pub struct DeviceMerge {
    never: std::convert::Infallible,
    /// What the merge applies and ignores.
    pub report: crate::lora::Report,
}

impl DeviceMerge {
    /// Matches LoRAs against the weights for merges on a device: always an error in this build.
    pub fn new(
        _weights: &std::collections::BTreeMap<String, crate::tensor::Weight>,
        _loras: &[(&crate::lora::Lora, f32)],
        _ordinal: usize,
    ) -> Result<DeviceMerge> {
        Err(Error::CudaNotCompiled)
    }

    /// The device bytes of each part's merge.
    pub fn bytes(&self) -> &crate::lora::LoraMergeBytes {
        match self.never {}
    }

    /// Merges the LoRAs at `strengths` into a model, one part at a time.
    pub fn apply(
        &self,
        _dit: &mut crate::model::dit::WanDit,
        _strengths: &[f32],
        _pristine: crate::lora::Pristine,
    ) -> Result<()> {
        match self.never {}
    }
}

/// What a CUDA device's allocator holds: always an error in this build.
pub fn memory_usage(_ordinal: usize) -> Result<MemoryUsage> {
    Err(Error::CudaNotCompiled)
}
