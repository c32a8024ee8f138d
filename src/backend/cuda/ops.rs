//! The CUDA side of the op dispatch. Every op of [`crate::tensor::ops`] checks its shapes and
//! dtypes once, then calls the function of the same name here when its inputs live on a CUDA
//! device (`crate::tensor::ops::on_cuda`); inputs are on one device, outputs stay there.
//!
//! The kernels behind these entries come from `kernels/*.cu` (the `cuda-kernels` launchers) and
//! cuBLASLt. An entry whose kernel is not wired yet returns `not_on_cuda`'s typed
//! error; nothing here falls back to the host silently.

use super::not_on_cuda;
use crate::backend::cpu::elementwise::{BinaryOp, UnaryOp};
use crate::backend::cpu::reduce::ReduceOp;
use crate::error::Result;
use crate::tensor::ops::AttentionParams;
use crate::tensor::{DType, Shape, Tensor, Weight};

/// `a op b` with numpy broadcasting into `out`.
pub fn binary(_op: BinaryOp, _a: &Tensor, _b: &Tensor, _out: &Shape) -> Result<Tensor> {
    Err(not_on_cuda("binary ops"))
}

/// `op(x)` elementwise.
pub fn unary(_op: UnaryOp, _x: &Tensor) -> Result<Tensor> {
    Err(not_on_cuda("unary ops"))
}

/// The reduction `op` over `dim`, kept with size 1.
pub fn reduce(_op: ReduceOp, _x: &Tensor, _dim: usize) -> Result<Tensor> {
    Err(not_on_cuda("reductions"))
}

/// Softmax over the last dim.
pub fn softmax_last(_x: &Tensor) -> Result<Tensor> {
    Err(not_on_cuda("softmax_last"))
}

/// Layer norm over the last dim with an optional affine.
pub fn layer_norm(
    _x: &Tensor,
    _w: Option<&Weight>,
    _b: Option<&Weight>,
    _eps: f32,
) -> Result<Tensor> {
    Err(not_on_cuda("layer_norm"))
}

/// RMS norm over the last dim with an optional gain.
pub fn rms_norm(_x: &Tensor, _w: Option<&Weight>, _eps: f32) -> Result<Tensor> {
    Err(not_on_cuda("rms_norm"))
}

/// The Wan VAE's channel RMS norm of `[B, C, ...]`.
pub fn channel_rms_norm(_x: &Tensor, _gamma: &Weight) -> Result<Tensor> {
    Err(not_on_cuda("channel_rms_norm"))
}

/// Rotary embedding on interleaved pairs of `[B, S, H, D]` with f32 `[S, D/2]` tables.
pub fn rope_interleaved(_x: &Tensor, _cos: &Tensor, _sin: &Tensor) -> Result<Tensor> {
    Err(not_on_cuda("rope_interleaved"))
}

/// Rows `ids` of the table `[V, D]` (ids checked against `V`).
pub fn embedding(_ids: &[u32], _table: &Weight) -> Result<Tensor> {
    Err(not_on_cuda("embedding"))
}

/// Batched matrix product into `out`.
pub fn matmul(_a: &Tensor, _b: &Tensor, _out: &Shape) -> Result<Tensor> {
    Err(not_on_cuda("matmul"))
}

/// `x · Wᵀ + b` into `out`, the weight in its stored dtype; in f32 with `keep_f32`, in bf16
/// with f32 accumulation otherwise.
pub fn linear(
    _x: &Tensor,
    _w: &Weight,
    _bias: Option<&Weight>,
    _keep_f32: bool,
    _out: &Shape,
) -> Result<Tensor> {
    Err(not_on_cuda("linear"))
}

/// `softmax(scale · q kᵀ + bias) v`, `[B, S, H, D]` layouts.
pub fn attention(
    _q: &Tensor,
    _k: &Tensor,
    _v: &Tensor,
    _p: &AttentionParams<'_>,
) -> Result<Tensor> {
    Err(not_on_cuda("attention"))
}

/// 3-D convolution into `out` (`[B, Cout, T', H', W']`).
pub fn conv3d(
    _x: &Tensor,
    _w: &Weight,
    _bias: Option<&Weight>,
    _stride: [usize; 3],
    _padding: [usize; 3],
    _out: &Shape,
) -> Result<Tensor> {
    Err(not_on_cuda("conv3d"))
}

/// Nearest ×2 upsampling of the last two dims into `out`.
pub fn upsample_nearest2x(_x: &Tensor, _out: &Shape) -> Result<Tensor> {
    Err(not_on_cuda("upsample_nearest2x"))
}

/// The dims of `x` reordered by `perm` into `out`.
pub fn permute(_x: &Tensor, _perm: &[usize], _out: &Shape) -> Result<Tensor> {
    Err(not_on_cuda("permute"))
}

/// Elements `start..start + len` along `dim` into `out`.
pub fn narrow(_x: &Tensor, _dim: usize, _start: usize, _out: &Shape) -> Result<Tensor> {
    Err(not_on_cuda("narrow"))
}

/// `x` zero-padded by `pads` into `out`.
pub fn pad_zeros(_x: &Tensor, _pads: &[(usize, usize)], _out: &Shape) -> Result<Tensor> {
    Err(not_on_cuda("pad_zeros"))
}

/// `tensors` concatenated along `dim` into `out`.
pub fn cat(_tensors: &[&Tensor], _dim: usize, _out: &Shape) -> Result<Tensor> {
    Err(not_on_cuda("cat"))
}

/// `x` converted to `dtype` (round to nearest even; fp8 saturating).
pub fn convert(_x: &Tensor, _dtype: DType) -> Result<Tensor> {
    Err(not_on_cuda("dtype conversion"))
}
