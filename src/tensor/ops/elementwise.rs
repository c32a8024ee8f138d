//! Elementwise tensor ops: broadcast arithmetic, activations, reductions over one dim, softmax.
//!
//! All take f32 tensors (`UnsupportedDType` otherwise) and return new contiguous f32 tensors;
//! the kernels are in [`crate::backend::cpu::elementwise`] and [`crate::backend::cpu::reduce`].

use std::borrow::Cow;

use crate::backend::cpu::elementwise::{self as kernels, BinaryOp, UnaryOp};
use crate::backend::cpu::reduce::{self, ReduceOp};
use crate::error::{Error, Result};
use super::shape::check_dim;
use crate::tensor::{DType, Shape, Tensor};

/// The f32 elements of an activation tensor (borrowed unless a mapped range is misaligned), or
/// `UnsupportedDType` naming `op`.
pub(crate) fn f32_input<'a>(op: &'static str, t: &'a Tensor) -> Result<Cow<'a, [f32]>> {
    if t.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType { op, dtype: t.dtype() });
    }
    t.as_slice::<f32>()
}

impl Tensor {
    /// `self + rhs`, with numpy broadcasting (dims aligned from the right, size-1 dims repeat).
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary("add", BinaryOp::Add, rhs)
    }

    /// `self - rhs`, with numpy broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary("sub", BinaryOp::Sub, rhs)
    }

    /// `self * rhs`, with numpy broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary("mul", BinaryOp::Mul, rhs)
    }

    /// `self / rhs`, with numpy broadcasting (IEEE: `x / 0` is ±inf or NaN).
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary("div", BinaryOp::Div, rhs)
    }

    fn binary(&self, name: &'static str, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        let (a, b) = (f32_input(name, self)?, f32_input(name, rhs)?);
        let dims = kernels::broadcast_dims(self.dims(), rhs.dims()).ok_or_else(|| Error::ShapeMismatch {
            op: name,
            expected: format!("a shape that broadcasts with {}", self.shape()),
            got: rhs.shape().clone(),
        })?;
        let shape = Shape::new(dims)?;
        let mut out = vec![0.0; shape.elem_count()];
        kernels::binary(op, &a, self.dims(), &b, rhs.dims(), &mut out, shape.dims());
        Tensor::from_f32(out, shape)
    }

    /// `self * mul + add`, elementwise.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        self.unary("affine", UnaryOp::Affine { mul, add })
    }

    /// Every element limited to `[min, max]` (NaN stays NaN). Errors when `min > max` or a bound
    /// is NaN.
    pub fn clamp(&self, min: f32, max: f32) -> Result<Tensor> {
        if min.is_nan() || max.is_nan() || min > max {
            return Err(Error::InvalidArgument(format!("clamp: min {min} must not exceed max {max}")));
        }
        self.unary("clamp", UnaryOp::Clamp { min, max })
    }

    /// SiLU: `x * sigmoid(x)`.
    pub fn silu(&self) -> Result<Tensor> {
        self.unary("silu", UnaryOp::Silu)
    }

    /// GELU, tanh form: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary("gelu_tanh", UnaryOp::GeluTanh)
    }

    /// GELU, exact form: `0.5 x (1 + erf(x / sqrt(2)))`.
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.unary("gelu_erf", UnaryOp::GeluErf)
    }

    /// `tanh(x)`, elementwise.
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary("tanh", UnaryOp::Tanh)
    }

    /// `e^x`, elementwise.
    pub fn exp(&self) -> Result<Tensor> {
        self.unary("exp", UnaryOp::Exp)
    }

    /// `|x|`, elementwise.
    pub fn abs(&self) -> Result<Tensor> {
        self.unary("abs", UnaryOp::Abs)
    }

    /// `x^2`, elementwise.
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary("sqr", UnaryOp::Sqr)
    }

    /// `sqrt(x)`, elementwise (NaN for negative `x`).
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary("sqrt", UnaryOp::Sqrt)
    }

    fn unary(&self, name: &'static str, op: UnaryOp) -> Result<Tensor> {
        let x = f32_input(name, self)?;
        let mut out = vec![0.0; x.len()];
        kernels::unary(op, &x, &mut out);
        Tensor::from_f32(out, self.shape().clone())
    }

    /// The sum over `dim`, which is kept with size 1 (0 over an empty dim).
    pub fn sum_keepdim(&self, dim: usize) -> Result<Tensor> {
        self.reduce("sum_keepdim", ReduceOp::Sum, dim)
    }

    /// The mean over `dim`, which is kept with size 1 (NaN over an empty dim).
    pub fn mean_keepdim(&self, dim: usize) -> Result<Tensor> {
        self.reduce("mean_keepdim", ReduceOp::Mean, dim)
    }

    /// The maximum over `dim`, which is kept with size 1 (NaN where a NaN is met). Errors when
    /// `dim` is empty.
    pub fn max_keepdim(&self, dim: usize) -> Result<Tensor> {
        self.reduce("max_keepdim", ReduceOp::Max, dim)
    }

    fn reduce(&self, name: &'static str, op: ReduceOp, dim: usize) -> Result<Tensor> {
        let x = f32_input(name, self)?;
        let dims = self.dims();
        let n = check_dim(name, self, dim)?;
        if n == 0 && op == ReduceOp::Max {
            return Err(Error::InvalidArgument(format!(
                "{name}: dim {dim} of shape {} is empty",
                self.shape()
            )));
        }
        let mut out_dims = dims.to_vec();
        out_dims[dim] = 1;
        let shape = Shape::new(out_dims)?;
        let (outer, inner) = (dims[..dim].iter().product(), dims[dim + 1..].iter().product());
        let mut out = vec![0.0; shape.elem_count()];
        reduce::reduce(op, &x, outer, n, inner, &mut out);
        Tensor::from_f32(out, shape)
    }

    /// Softmax over the last dim, computed stably (`e^(x - max)`). Errors on a rank-0 tensor.
    pub fn softmax_last(&self) -> Result<Tensor> {
        let x = f32_input("softmax_last", self)?;
        let Some(&n) = self.dims().last() else {
            return Err(Error::InvalidArgument("softmax_last: a scalar has no last dim".into()));
        };
        let mut out = vec![0.0; x.len()];
        reduce::softmax_last(&x, n, &mut out);
        Tensor::from_f32(out, self.shape().clone())
    }
}
