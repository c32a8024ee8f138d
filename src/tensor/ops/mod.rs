//! The op surface the models are written against. Each op checks dtypes and shapes, then
//! dispatches once on its inputs' device (`on_cuda`): to a CPU kernel of
//! [`crate::backend::cpu`] or to [`crate::backend::cuda::ops`]. Inputs on different devices are
//! an [`Error::DeviceMismatch`]; data moves only through [`Tensor::to_device`]. On the CPU
//! activations are f32; weights are [`super::Weight`]s in any stored dtype.

mod conv;
mod elementwise;
mod grad;
mod linalg;
mod nn;
pub mod sampler;
mod shape;

pub use grad::{attention_backward, AttentionGrads};
pub use linalg::{attention, attention_q8, AttentionParams};
pub use nn::embedding;
pub use shape::cat;

use std::borrow::Cow;

use crate::backend::cpu::compute::round_to_bf16;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// True when every input of `op` is on a CUDA device, false when every one is on the CPU;
/// [`Error::DeviceMismatch`] when they are not all on the same device.
pub(crate) fn on_cuda(op: &'static str, inputs: &[&Tensor]) -> Result<bool> {
    let Some(first) = inputs.first() else {
        return Ok(false);
    };
    let device = first.device();
    if inputs.iter().any(|t| t.device() != device) {
        let devices = inputs
            .iter()
            .map(|t| t.device().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::DeviceMismatch { op, devices });
    }
    Ok(device != Device::Cpu)
}

/// The dtype activations have on `device`: f32 on the CPU (also under `WANRT_COMPUTE=bf16`,
/// which rounds values but keeps them in f32), bf16 on CUDA. Model code converts its inputs with
/// it, so it runs on either backend without a branch of its own.
pub fn activation_dtype(device: Device) -> DType {
    match device {
        Device::Cpu => DType::F32,
        Device::Cuda(_) => DType::BF16,
    }
}

/// `x` rounded to bf16 when `round` (the CPU's bf16 compute emulation), `x` itself otherwise.
pub(crate) fn bf16_if(round: bool, x: Cow<'_, [f32]>) -> Cow<'_, [f32]> {
    if !round {
        return x;
    }
    let mut v = x.into_owned();
    round_to_bf16(&mut v);
    Cow::Owned(v)
}
