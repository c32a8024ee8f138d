//! Stored parameters: a tensor in its file dtype plus the per-tensor scale of ComfyUI "scaled
//! fp8" checkpoints.

use std::ops::Range;

use super::{convert, DType, Tensor};
use crate::backend::Device;
use crate::error::{Error, Result};

/// A model parameter as stored: its tensor (any float dtype, usually memory-mapped) and an
/// optional scale (`value = stored × scale`, the `<module>.scale_weight` of ComfyUI scaled fp8).
///
/// The value is dequantized lazily: ops widen the rows they need ([`Weight::widen_rows`]).
#[derive(Clone, Debug)]
pub struct Weight {
    /// The stored tensor.
    pub tensor: Tensor,
    /// Multiplier applied on widening; `None` means 1.
    pub scale: Option<f32>,
}

impl Weight {
    /// A weight without a scale.
    pub fn new(tensor: Tensor) -> Weight {
        Weight {
            tensor,
            scale: None,
        }
    }

    /// The dimensions of the stored tensor.
    pub fn dims(&self) -> &[usize] {
        self.tensor.dims()
    }

    /// The stored dtype.
    pub fn dtype(&self) -> DType {
        self.tensor.dtype()
    }

    /// The weight on `device` as stored: the same dtype and scale (bf16, fp8 and scaled fp8
    /// stay so; nothing is widened), the stored bytes copied once ([`Tensor::to_device`]).
    pub fn to_device(&self, device: Device) -> Result<Weight> {
        Ok(Weight {
            tensor: self.tensor.to_device(device)?,
            scale: self.scale,
        })
    }

    /// Widens rows `rows` (of the tensor viewed as `[dims[0], rest]`) into `out`, applying the
    /// scale. `out.len()` must be `rows.len() × rest`.
    pub fn widen_rows(&self, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        let dims = self.tensor.dims();
        let outer = dims.first().copied().unwrap_or(1);
        let row = self.tensor.elem_count().checked_div(outer).unwrap_or(0);
        if rows.end > outer || out.len() != rows.len() * row {
            return Err(Error::InvalidArgument(format!(
                "widen_rows: rows {rows:?} into {} values for a weight of shape {:?}",
                out.len(),
                dims
            )));
        }
        let es = self.dtype().size_in_bytes();
        let bytes = &self.tensor.raw_bytes()?[rows.start * row * es..rows.end * row * es];
        convert::widen_to_f32(bytes, self.dtype(), out)?;
        if let Some(s) = self.scale {
            out.iter_mut().for_each(|v| *v *= s);
        }
        Ok(())
    }

    /// The whole value as an f32 tensor on the host (scale applied; a device weight is copied
    /// to the host first).
    pub fn to_f32(&self) -> Result<Tensor> {
        if self.tensor.device() != Device::Cpu {
            return self.to_device(Device::Cpu)?.to_f32();
        }
        let mut out = vec![0.0; self.tensor.elem_count()];
        let outer = self.tensor.dims().first().copied().unwrap_or(1);
        if self.tensor.dims().is_empty() {
            out = self.tensor.to_f32_vec()?;
            if let Some(s) = self.scale {
                out.iter_mut().for_each(|v| *v *= s);
            }
        } else {
            self.widen_rows(0..outer, &mut out)?;
        }
        Tensor::from_f32(out, self.tensor.shape().clone())
    }
}

impl From<Tensor> for Weight {
    fn from(tensor: Tensor) -> Weight {
        Weight::new(tensor)
    }
}
