//! The tensor core: dtypes, shapes, storage and the [`Tensor`] handle.
//!
//! Tensors are contiguous and row-major. A tensor is a cheap handle (an `Arc` to its storage):
//! cloning shares the bytes. Ops never mutate their inputs; they return new tensors. Weights keep
//! their stored dtype (bf16, fp8 …) and are widened to f32 block by block by the ops that use
//! them, so a checkpoint is never copied whole into f32.

pub mod convert;
mod dtype;
pub mod fp8;
pub mod ops;
pub mod random;
mod shape;
mod storage;
mod weight;

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

pub use dtype::DType;
pub use shape::{checked_product, Shape};
pub use storage::Storage;
pub use weight::Weight;

use crate::backend::cuda::{self, CudaStorage};
use crate::backend::Device;
use crate::error::{Error, Result};

/// A plain element type that a tensor's bytes can be viewed as.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// The dtype whose elements are `Self`.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(impl Element for $t { const DTYPE: DType = DType::$d; })*};
}
element!(f32 => F32, f64 => F64, half::f16 => F16, half::bf16 => BF16, u8 => U8, i8 => I8,
         i16 => I16, i32 => I32, i64 => I64);

/// A contiguous n-dimensional array.
#[derive(Clone)]
pub struct Tensor {
    shape: Shape,
    dtype: DType,
    storage: Arc<Storage>,
}

impl Tensor {
    /// An f32 tensor that takes ownership of `data`.
    pub fn from_f32(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        check_len("from_f32", &shape, data.len())?;
        Ok(Tensor {
            shape,
            dtype: DType::F32,
            storage: Arc::new(Storage::F32(data)),
        })
    }

    /// A tensor of any element type, copying `data`.
    pub fn from_slice<T: Element>(data: &[T], shape: impl Into<Shape>) -> Result<Tensor> {
        if T::DTYPE == DType::F32 {
            let v: &[f32] = bytemuck::cast_slice(data);
            return Tensor::from_f32(v.to_vec(), shape);
        }
        Tensor::from_bytes(bytemuck::cast_slice(data).to_vec(), T::DTYPE, shape)
    }

    /// A tensor of `dtype` from its little-endian bytes.
    pub fn from_bytes(bytes: Vec<u8>, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        check_bytes("from_bytes", &shape, dtype, bytes.len())?;
        if dtype == DType::F32 {
            let data = bytemuck::pod_collect_to_vec::<u8, f32>(&bytes);
            return Ok(Tensor {
                shape,
                dtype,
                storage: Arc::new(Storage::F32(data)),
            });
        }
        Ok(Tensor {
            shape,
            dtype,
            storage: Arc::new(Storage::Bytes(bytes)),
        })
    }

    /// A tensor that borrows `range` of a memory map (zero-copy).
    pub fn from_mmap(
        map: Arc<memmap2::Mmap>,
        range: Range<usize>,
        dtype: DType,
        shape: impl Into<Shape>,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if range.start > range.end || range.end > map.len() {
            return Err(Error::InvalidArgument(format!(
                "from_mmap: range {range:?} outside a map of {} bytes",
                map.len()
            )));
        }
        check_bytes("from_mmap", &shape, dtype, range.len())?;
        Ok(Tensor {
            shape,
            dtype,
            storage: Arc::new(Storage::Mapped { map, range }),
        })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = shape.elem_count();
        let storage = if dtype == DType::F32 {
            Storage::F32(vec![0.0; n])
        } else {
            Storage::Bytes(vec![0; n * dtype.size_in_bytes()])
        };
        Tensor {
            shape,
            dtype,
            storage: Arc::new(storage),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// The device holding the data.
    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cuda(c) => Device::Cuda(c.ordinal()),
            _ => Device::Cpu,
        }
    }

    /// The tensor on `device`: itself when it is there already, otherwise a copy (host to
    /// device, device to host, or between two devices through the host). Moving data between
    /// devices happens only here, so every transfer is explicit.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        let storage = match device {
            Device::Cpu => {
                let bytes = self.cuda_storage("to_device")?.download()?;
                return Tensor::from_bytes(bytes, self.dtype, self.shape.clone());
            }
            Device::Cuda(_) if self.device() != Device::Cpu => {
                return self.to_device(Device::Cpu)?.to_device(device);
            }
            Device::Cuda(ordinal) => CudaStorage::upload(ordinal, self.raw_bytes()?)?,
        };
        Ok(Tensor::from_cuda(storage, self.dtype, self.shape.clone()))
    }

    /// A tensor over device memory that a CUDA op produced; `storage` holds exactly the bytes
    /// of `shape` in `dtype`.
    pub(crate) fn from_cuda(storage: CudaStorage, dtype: DType, shape: Shape) -> Tensor {
        Tensor {
            shape,
            dtype,
            storage: Arc::new(Storage::Cuda(storage)),
        }
    }

    /// The device memory of a CUDA tensor; `InvalidArgument` naming `op` for a host tensor.
    pub(crate) fn cuda_storage(&self, op: &'static str) -> Result<&CudaStorage> {
        match &*self.storage {
            Storage::Cuda(c) => Ok(c),
            _ => Err(Error::InvalidArgument(format!(
                "{op}: expected a CUDA tensor, got one on the cpu"
            ))),
        }
    }

    /// The device memory of a CUDA tensor for writing in place; `None` for a host tensor or
    /// one whose storage another tensor shares.
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_storage_mut(&mut self) -> Option<&mut CudaStorage> {
        match Arc::get_mut(&mut self.storage)? {
            Storage::Cuda(c) => Some(c),
            _ => None,
        }
    }

    /// The storage behind this tensor.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// True when the data is borrowed from a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        self.storage.is_mapped()
    }

    /// The little-endian bytes of a host tensor.
    pub fn raw_bytes(&self) -> Result<&[u8]> {
        self.storage.host_bytes().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "raw_bytes: the tensor is on {}; copy it with to_device(Device::Cpu)",
                self.device()
            ))
        })
    }

    /// The elements as `T`, borrowed when the bytes are suitably aligned, copied otherwise.
    pub fn as_slice<T: Element>(&self) -> Result<Cow<'_, [T]>> {
        if T::DTYPE != self.dtype {
            return Err(Error::UnsupportedDType {
                op: "as_slice",
                dtype: self.dtype,
            });
        }
        let bytes = self.raw_bytes()?;
        Ok(match bytemuck::try_cast_slice(bytes) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
        })
    }

    /// The f32 data of an owned f32 tensor, without a copy.
    pub fn f32_data(&self) -> Result<&[f32]> {
        match &*self.storage {
            Storage::F32(v) => Ok(v),
            _ => Err(Error::UnsupportedDType {
                op: "f32_data",
                dtype: self.dtype,
            }),
        }
    }

    /// All elements widened to f32 (exact for every float dtype).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        if let Storage::F32(v) = &*self.storage {
            return Ok(v.clone());
        }
        let mut out = vec![0.0; self.elem_count()];
        convert::widen_to_f32(self.raw_bytes()?, self.dtype, &mut out)?;
        Ok(out)
    }

    /// The tensor converted to `dtype` (round to nearest even; fp8 saturating).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        if self.device() != Device::Cpu {
            return cuda::ops::convert(self, dtype);
        }
        if dtype == DType::F32 {
            return Tensor::from_f32(self.to_f32_vec()?, self.shape.clone());
        }
        let bytes = convert::convert_bytes(self.raw_bytes()?, self.dtype, dtype)?;
        Tensor::from_bytes(bytes, dtype, self.shape.clone())
    }

    /// The same data under another shape with the same element count.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                expected: format!("{} elements", self.elem_count()),
                got: shape,
            });
        }
        Ok(Tensor {
            shape,
            dtype: self.dtype,
            storage: self.storage.clone(),
        })
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({}, {:?}{}{})",
            self.dtype,
            self.shape,
            match self.device() {
                Device::Cpu => String::new(),
                d => format!(", {d}"),
            },
            if self.is_mapped() { ", mapped" } else { "" }
        )
    }
}

fn check_len(op: &'static str, shape: &Shape, len: usize) -> Result<()> {
    if shape.elem_count() != len {
        return Err(Error::ShapeMismatch {
            op,
            expected: format!("{len} elements"),
            got: shape.clone(),
        });
    }
    Ok(())
}

fn check_bytes(op: &'static str, shape: &Shape, dtype: DType, len: usize) -> Result<()> {
    let need = shape
        .elem_count()
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| Error::ShapeOverflow(shape.dims().to_vec()))?;
    if need != len {
        return Err(Error::ShapeMismatch {
            op,
            expected: format!("{len} bytes of {dtype}"),
            got: shape.clone(),
        });
    }
    Ok(())
}
