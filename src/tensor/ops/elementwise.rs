//! Elementwise tensor ops: broadcast arithmetic, activations, reductions over one dim, softmax.
//!
//! All take f32 tensors (`UnsupportedDType` otherwise) and return new contiguous f32 tensors;
//! the kernels are in [`crate::backend::cpu::elementwise`] and [`crate::backend::cpu::reduce`].

use std::borrow::Cow;

use super::on_cuda;
use super::shape::check_dim;
use crate::backend::cpu::elementwise::{self as kernels, BinaryOp, UnaryOp};
use crate::backend::cpu::reduce::{self, ReduceOp};
use crate::backend::cuda::ops as cuda;
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

/// The f32 elements of an activation tensor (borrowed unless a mapped range is misaligned), or
/// `UnsupportedDType` naming `op`.
pub(crate) fn f32_input<'a>(op: &'static str, t: &'a Tensor) -> Result<Cow<'a, [f32]>> {
    if t.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType {
            op,
            dtype: t.dtype(),
        });
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
        let dims = kernels::broadcast_dims(self.dims(), rhs.dims()).ok_or_else(|| {
            Error::ShapeMismatch {
                op: name,
                expected: format!("a shape that broadcasts with {}", self.shape()),
                got: rhs.shape().clone(),
            }
        })?;
        let shape = Shape::new(dims)?;
        if on_cuda(name, &[self, rhs])? {
            return cuda::binary(op, self, rhs, &shape);
        }
        let (a, b) = (f32_input(name, self)?, f32_input(name, rhs)?);
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
            return Err(Error::InvalidArgument(format!(
                "clamp: min {min} must not exceed max {max}"
            )));
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
        if on_cuda(name, &[self])? {
            return cuda::unary(op, self);
        }
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
        let dims = self.dims();
        let n = check_dim(name, self, dim)?;
        if n == 0 && op == ReduceOp::Max {
            return Err(Error::InvalidArgument(format!(
                "{name}: dim {dim} of shape {} is empty",
                self.shape()
            )));
        }
        if on_cuda(name, &[self])? {
            return cuda::reduce(op, self, dim);
        }
        let x = f32_input(name, self)?;
        let mut out_dims = dims.to_vec();
        out_dims[dim] = 1;
        let shape = Shape::new(out_dims)?;
        let (outer, inner) = (
            dims[..dim].iter().product(),
            dims[dim + 1..].iter().product(),
        );
        let mut out = vec![0.0; shape.elem_count()];
        reduce::reduce(op, &x, outer, n, inner, &mut out);
        Tensor::from_f32(out, shape)
    }

    /// Softmax over the last dim, computed stably (`e^(x - max)`). Errors on a rank-0 tensor.
    pub fn softmax_last(&self) -> Result<Tensor> {
        const OP: &str = "softmax_last";
        let Some(&n) = self.dims().last() else {
            return Err(Error::InvalidArgument(
                "softmax_last: a scalar has no last dim".into(),
            ));
        };
        if on_cuda(OP, &[self])? {
            return cuda::softmax_last(self);
        }
        let x = f32_input(OP, self)?;
        let mut out = vec![0.0; x.len()];
        reduce::softmax_last(&x, n, &mut out);
        Tensor::from_f32(out, self.shape().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(data: &[f32], dims: &[usize]) -> Tensor {
        Tensor::from_f32(data.to_vec(), dims).unwrap()
    }

    fn seq(dims: &[usize]) -> Tensor {
        let n = dims.iter().product::<usize>();
        t(
            &(0..n).map(|i| i as f32 * 0.5 - 3.0).collect::<Vec<_>>(),
            dims,
        )
    }

    #[test]
    fn binary_ops_broadcast_and_return_owned_f32() {
        let a = seq(&[2, 3, 4]);
        let bias = seq(&[4]);
        let sum = a.add(&bias).unwrap();
        assert_eq!(sum.dims(), &[2, 3, 4]);
        let (x, b, s) = (
            a.f32_data().unwrap(),
            bias.f32_data().unwrap(),
            sum.f32_data().unwrap(),
        );
        assert!((0..24).all(|i| s[i] == x[i] + b[i % 4]));
        // Per-row scale [2, 3, 1] and a scalar on the left.
        let scale = seq(&[2, 3, 1]);
        let prod = a.mul(&scale).unwrap();
        let (sc, p) = (scale.f32_data().unwrap(), prod.f32_data().unwrap());
        assert!((0..24).all(|i| p[i] == x[i] * sc[i / 4]));
        let two = t(&[2.0], &[]);
        let q = two.div(&a).unwrap();
        assert!(q
            .f32_data()
            .unwrap()
            .iter()
            .zip(x)
            .all(|(q, x)| *q == 2.0 / x));
        assert_eq!(two.sub(&two).unwrap().dims(), &[] as &[usize]);
        // Empty dims broadcast to empty results.
        let e = Tensor::from_f32(vec![], [0, 4]).unwrap();
        assert_eq!(e.add(&bias).unwrap().dims(), &[0, 4]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let a = seq(&[2, 3]);
        assert!(matches!(
            a.add(&seq(&[3, 2])),
            Err(Error::ShapeMismatch { op: "add", .. })
        ));
        assert!(matches!(
            a.mul(&seq(&[2])),
            Err(Error::ShapeMismatch { .. })
        ));
        let h = a.to_dtype(DType::BF16).unwrap();
        assert!(matches!(
            a.add(&h),
            Err(Error::UnsupportedDType {
                op: "add",
                dtype: DType::BF16
            })
        ));
        assert!(matches!(
            h.silu(),
            Err(Error::UnsupportedDType { op: "silu", .. })
        ));
        assert!(matches!(
            h.sum_keepdim(0),
            Err(Error::UnsupportedDType { .. })
        ));
        assert!(matches!(
            h.softmax_last(),
            Err(Error::UnsupportedDType { .. })
        ));
        assert!(matches!(a.sum_keepdim(2), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            seq(&[]).mean_keepdim(0),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            seq(&[2, 0]).max_keepdim(1),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            seq(&[]).softmax_last(),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(a.clamp(1.0, 0.0), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            a.clamp(f32::NAN, 0.0),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn unary_ops_keep_shape() {
        let x = t(&[-2.0, -0.5, 0.0, 0.5, 4.0, 9.0], &[2, 3]);
        let v = |r: Result<Tensor>| {
            let r = r.unwrap();
            assert_eq!(r.dims(), &[2, 3]);
            r.to_f32_vec().unwrap()
        };
        assert_eq!(v(x.abs()), [2.0, 0.5, 0.0, 0.5, 4.0, 9.0]);
        assert_eq!(v(x.sqr()), [4.0, 0.25, 0.0, 0.25, 16.0, 81.0]);
        assert_eq!(v(x.affine(2.0, 1.0)), [-3.0, 0.0, 1.0, 2.0, 9.0, 19.0]);
        assert_eq!(v(x.clamp(-1.0, 1.0)), [-1.0, -0.5, 0.0, 0.5, 1.0, 1.0]);
        assert_eq!(v(x.abs().unwrap().sqrt())[4..], [2.0, 3.0]);
        assert!(v(x.sqrt())[0].is_nan());
        let close = |got: Vec<f32>, f: fn(f64) -> f64| {
            for (g, &x) in got.iter().zip(x.f32_data().unwrap()) {
                let w = f(x as f64);
                assert!((*g as f64 - w).abs() <= 1e-6 * w.abs() + 1e-12, "{g} {w}");
            }
        };
        close(v(x.exp()), f64::exp);
        close(v(x.tanh()), f64::tanh);
        close(v(x.silu()), |x| x / (1.0 + (-x).exp()));
        close(v(x.gelu_tanh()), |x| {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        });
        // erf at these points, from tables: erf(-sqrt2) .. erf(9/sqrt2).
        let erf = [
            -0.954_499_736_103_642,
            -0.382_924_922_548_026,
            0.0,
            0.382_924_922_548_026,
            0.999_936_657_516_334,
            1.0,
        ];
        let g = v(x.gelu_erf());
        for ((g, &x), e) in g.iter().zip(x.f32_data().unwrap()).zip(erf) {
            let w = 0.5 * x as f64 * (1.0 + e);
            assert!((*g as f64 - w).abs() <= 1e-6 * w.abs(), "{g} {w}");
        }
        // Rank 0 and empty tensors.
        assert_eq!(t(&[-3.0], &[]).abs().unwrap().to_f32_vec().unwrap(), [3.0]);
        assert_eq!(seq(&[3, 0]).silu().unwrap().dims(), &[3, 0]);
    }

    #[test]
    fn reductions_keep_the_dim() {
        let x = seq(&[2, 3, 4]);
        let d = x.f32_data().unwrap();
        let at = |i: usize, j: usize, k: usize| d[(i * 3 + j) * 4 + k];
        let s = x.sum_keepdim(1).unwrap();
        assert_eq!(s.dims(), &[2, 1, 4]);
        let s = s.f32_data().unwrap();
        for i in 0..2 {
            for k in 0..4 {
                assert_eq!(s[i * 4 + k], at(i, 0, k) + at(i, 1, k) + at(i, 2, k));
            }
        }
        let m = x.mean_keepdim(2).unwrap();
        assert_eq!(m.dims(), &[2, 3, 1]);
        assert_eq!(
            m.f32_data().unwrap()[4],
            (0..4).map(|k| at(1, 1, k)).sum::<f32>() / 4.0
        );
        let mx = x.max_keepdim(0).unwrap();
        assert_eq!(mx.dims(), &[1, 3, 4]);
        assert_eq!(mx.f32_data().unwrap(), &d[12..]);
        let v = seq(&[5]);
        assert_eq!(v.sum_keepdim(0).unwrap().dims(), &[1]);
        assert_eq!(v.max_keepdim(0).unwrap().to_f32_vec().unwrap(), [-1.0]);
        assert_eq!(v.mean_keepdim(0).unwrap().to_f32_vec().unwrap(), [-2.0]);
        let e = seq(&[2, 0]).sum_keepdim(1).unwrap();
        assert_eq!(e.to_f32_vec().unwrap(), [0.0, 0.0]);
        assert!(seq(&[2, 0]).mean_keepdim(1).unwrap().to_f32_vec().unwrap()[0].is_nan());
        assert_eq!(seq(&[0, 2]).max_keepdim(1).unwrap().dims(), &[0, 1]);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let x = seq(&[3, 5]);
        let y = x.softmax_last().unwrap();
        assert_eq!(y.dims(), &[3, 5]);
        for row in y.f32_data().unwrap().chunks(5) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(row.windows(2).all(|w| w[0] < w[1]));
        }
        assert_eq!(
            t(&[7.0], &[1])
                .softmax_last()
                .unwrap()
                .to_f32_vec()
                .unwrap(),
            [1.0]
        );
        assert_eq!(seq(&[2, 0]).softmax_last().unwrap().dims(), &[2, 0]);
    }
}
