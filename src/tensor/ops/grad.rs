//! The backward ops of training: the gradients of the forward ops the DiT blocks use (linear
//! layers, layer and RMS norms, interleaved RoPE, the tanh GELU, attention). Shapes and dtypes
//! are checked here; the arithmetic is in [`crate::backend::cpu::grad`].

use super::elementwise::f32_input;
use super::nn::widen_weight;
use crate::backend::cpu::grad::{self as kernels, AttentionDims};
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor, Weight};

fn mismatch(op: &'static str, expected: impl Into<String>, got: &Tensor) -> Error {
    Error::ShapeMismatch {
        op,
        expected: expected.into(),
        got: got.shape().clone(),
    }
}

/// `(rows, last)` of a tensor viewed as `[rows, last]`.
fn rows_last(t: &Tensor, op: &'static str) -> Result<(usize, usize)> {
    match t.dims().split_last() {
        Some((&last, lead)) => Ok((lead.iter().product(), last)),
        None => Err(mismatch(op, "at least one dimension", t)),
    }
}

/// The gradients of [`super::attention`] with respect to its inputs.
#[derive(Debug, Clone)]
pub struct AttentionGrads {
    /// `d loss / d q`, `[B, Sq, H, D]`.
    pub dq: Tensor,
    /// `d loss / d k`, `[B, Sk, H, D]`.
    pub dk: Tensor,
    /// `d loss / d v`, `[B, Sk, H, D]`.
    pub dv: Tensor,
}

/// The gradients of `softmax(scale · q kᵀ) v` (unmasked, no bias; q `[B, Sq, H, D]`, k and v
/// `[B, Sk, H, D]`) for the output gradient `dout [B, Sq, H, D]`. The attention probabilities are
/// recomputed, so nothing from the forward pass is needed.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dout: &Tensor,
    scale: f32,
) -> Result<AttentionGrads> {
    const OP: &str = "attention_backward";
    let &[batch, q_len, heads, head_dim] = q.dims() else {
        return Err(mismatch(OP, "q [B, Sq, H, D]", q));
    };
    let kd = k.dims();
    if kd.len() != 4 || kd[0] != batch || kd[2] != heads || kd[3] != head_dim {
        return Err(mismatch(
            OP,
            format!("k [{batch}, Sk, {heads}, {head_dim}]"),
            k,
        ));
    }
    if v.dims() != kd {
        return Err(mismatch(OP, format!("v {kd:?} like k"), v));
    }
    if dout.dims() != q.dims() {
        return Err(mismatch(OP, format!("dout {:?} like q", q.dims()), dout));
    }
    let (qs, ks, vs, ds) = (
        f32_input(OP, q)?,
        f32_input(OP, k)?,
        f32_input(OP, v)?,
        f32_input(OP, dout)?,
    );
    let dims = AttentionDims {
        batch,
        q_len,
        kv_len: kd[1],
        heads,
        head_dim,
    };
    let mut dq = vec![0.0; qs.len()];
    let (mut dk, mut dv) = (vec![0.0; ks.len()], vec![0.0; ks.len()]);
    kernels::attention_grad(&qs, &ks, &vs, &ds, dims, scale, &mut dq, &mut dk, &mut dv);
    Ok(AttentionGrads {
        dq: Tensor::from_f32(dq, q.shape().clone())?,
        dk: Tensor::from_f32(dk, k.shape().clone())?,
        dv: Tensor::from_f32(dv, k.shape().clone())?,
    })
}

impl Tensor {
    /// For `y = x · Wᵀ + b` ([`Tensor::linear`]), the input gradient `dy · W`: `self` is `dy`
    /// `[.., out]`, `weight` `[out, in]` in any float dtype (frozen, widened panel by panel).
    /// Returns `[.., in]`.
    pub fn linear_backward_input(&self, weight: &Weight) -> Result<Tensor> {
        const OP: &str = "linear_backward_input";
        let dy = f32_input(OP, self)?;
        if !weight.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: weight.dtype(),
            });
        }
        let &[n_out, n_in] = weight.dims() else {
            return Err(mismatch(OP, "weight [out, in]", &weight.tensor));
        };
        let (rows, last) = rows_last(self, OP)?;
        if last != n_out {
            return Err(mismatch(OP, format!("dy [.., {n_out}]"), self));
        }
        let lead = &self.dims()[..self.dims().len() - 1];
        let shape = Shape::new([lead, &[n_in]].concat())?;
        let mut dx = vec![0.0; shape.elem_count()];
        kernels::linear_input_grad(&dy, rows, weight, &mut dx)?;
        Tensor::from_f32(dx, shape)
    }

    /// For `y = x · Wᵀ` ([`Tensor::linear`]), the weight gradient `dyᵀ · x` summed over every
    /// row: `self` is `dy` `[.., out]`, `x` `[.., in]` with the same leading dims. Returns
    /// `[out, in]`.
    pub fn linear_backward_weight(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "linear_backward_weight";
        let (dy, xs) = (f32_input(OP, self)?, f32_input(OP, x)?);
        let (rows, n_out) = rows_last(self, OP)?;
        let (x_rows, n_in) = rows_last(x, OP)?;
        if self.dims()[..self.dims().len() - 1] != x.dims()[..x.dims().len() - 1] {
            return Err(mismatch(
                OP,
                format!("x with the leading dims of dy {:?}", self.dims()),
                x,
            ));
        }
        debug_assert_eq!(rows, x_rows);
        let mut dw = vec![0.0; n_out * n_in];
        kernels::linear_weight_grad(&dy, &xs, rows, &mut dw);
        Tensor::from_f32(dw, [n_out, n_in])
    }

    /// For `y = layer_norm(x, weight, bias, eps)` ([`Tensor::layer_norm`]), the input gradient:
    /// `self` is `x`, `dy` the output gradient (same shape). Statistics in f64.
    pub fn layer_norm_backward(
        &self,
        dy: &Tensor,
        weight: Option<&Weight>,
        eps: f32,
    ) -> Result<Tensor> {
        self.norm_backward("layer_norm_backward", dy, weight, eps, true)
    }

    /// For `y = rms_norm(x, weight, eps)` ([`Tensor::rms_norm`]), the input gradient: `self` is
    /// `x`, `dy` the output gradient (same shape). Statistics in f64.
    pub fn rms_norm_backward(
        &self,
        dy: &Tensor,
        weight: Option<&Weight>,
        eps: f32,
    ) -> Result<Tensor> {
        self.norm_backward("rms_norm_backward", dy, weight, eps, false)
    }

    fn norm_backward(
        &self,
        op: &'static str,
        dy: &Tensor,
        weight: Option<&Weight>,
        eps: f32,
        centered: bool,
    ) -> Result<Tensor> {
        if dy.shape() != self.shape() {
            return Err(mismatch(op, format!("dy {:?} like x", self.dims()), dy));
        }
        let (x, g) = (f32_input(op, self)?, f32_input(op, dy)?);
        let (_, d) = rows_last(self, op)?;
        let w = weight.map(|w| widen_weight(w, d, op)).transpose()?;
        let mut dx = vec![0.0; x.len()];
        kernels::norm_grad(&x, &g, &mut dx, d, w.as_deref(), eps, centered);
        Tensor::from_f32(dx, self.shape().clone())
    }

    /// For `y = gelu_tanh(x)` ([`Tensor::gelu_tanh`]), the input gradient `dy · gelu_tanh'(x)`:
    /// `self` is `x`.
    pub fn gelu_tanh_backward(&self, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "gelu_tanh_backward";
        if dy.shape() != self.shape() {
            return Err(mismatch(OP, format!("dy {:?} like x", self.dims()), dy));
        }
        let (x, g) = (f32_input(OP, self)?, f32_input(OP, dy)?);
        let mut dx = vec![0.0; x.len()];
        kernels::gelu_tanh_grad(&x, &g, &mut dx);
        Tensor::from_f32(dx, self.shape().clone())
    }

    /// For `y = x.rope_interleaved(cos, sin)`, the input gradient: the inverse rotation of `dy`
    /// (`self`), which is the same op with the sines negated.
    pub fn rope_interleaved_backward(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        self.rope_interleaved(cos, &sin.affine(-1.0, 0.0)?)
    }
}

#[cfg(test)]
mod tests {
    //! Every backward op against central finite differences of its forward op, along random
    //! directions: `⟨dy, f(x + εd) − f(x − εd)⟩ / 2ε ≈ ⟨backward(dy), d⟩`.

    use super::*;
    use crate::tensor::ops::{attention, AttentionParams};
    use crate::tensor::random;
    use crate::tensor::DType;

    fn rand(dims: &[usize], seed: u32) -> Tensor {
        random::tensor(dims, seed, 0.0, 1.0).unwrap()
    }

    fn dot(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    /// Checks the gradient `grad` of `x ↦ ⟨dy, f(x)⟩` at `x` along a random direction.
    fn check(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, dy: &Tensor, grad: &Tensor, seed: u32) {
        let d = rand(x.dims(), seed);
        let eps = 1e-2f32;
        let plus = f(&x.add(&d.affine(eps, 0.0).unwrap()).unwrap());
        let minus = f(&x.sub(&d.affine(eps, 0.0).unwrap()).unwrap());
        let numeric = (dot(dy, &plus) - dot(dy, &minus)) / (2.0 * eps as f64);
        let analytic = dot(grad, &d);
        let err = (numeric - analytic).abs() / analytic.abs().max(1e-3);
        assert!(err < 2e-3, "numeric {numeric} analytic {analytic}");
    }

    #[test]
    fn norms_gelu_and_rope_match_finite_differences() {
        let x = rand(&[3, 5, 16], 1);
        let dy = rand(&[3, 5, 16], 2);
        let w = random::weight(&[16], DType::BF16, 3, 1.0, 0.5).unwrap();
        let ln = |x: &Tensor| x.layer_norm(Some(&w), None, 1e-6).unwrap();
        check(
            ln,
            &x,
            &dy,
            &x.layer_norm_backward(&dy, Some(&w), 1e-6).unwrap(),
            4,
        );
        let rms = |x: &Tensor| x.rms_norm(Some(&w), 1e-6).unwrap();
        check(
            rms,
            &x,
            &dy,
            &x.rms_norm_backward(&dy, Some(&w), 1e-6).unwrap(),
            5,
        );
        let gelu = |x: &Tensor| x.gelu_tanh().unwrap();
        check(gelu, &x, &dy, &x.gelu_tanh_backward(&dy).unwrap(), 6);
        let (x4, dy4) = (
            x.reshape([1, 15, 2, 8]).unwrap(),
            dy.reshape([1, 15, 2, 8]).unwrap(),
        );
        let (cos, sin) = (rand(&[15, 4], 7), rand(&[15, 4], 8));
        let rope = |x: &Tensor| x.rope_interleaved(&cos, &sin).unwrap();
        check(
            rope,
            &x4,
            &dy4,
            &dy4.rope_interleaved_backward(&cos, &sin).unwrap(),
            9,
        );
    }

    #[test]
    fn linear_grads_match_finite_differences() {
        let x = rand(&[2, 7, 12], 10);
        let dy = rand(&[2, 7, 9], 11);
        let w = random::weight(&[9, 12], DType::BF16, 12, 0.0, 0.5).unwrap();
        let lin = |x: &Tensor| x.linear(&w, None).unwrap();
        check(lin, &x, &dy, &dy.linear_backward_input(&w).unwrap(), 13);
        let wt = w.to_f32().unwrap();
        let by_w = |w: &Tensor| x.linear(&Weight::new(w.clone()), None).unwrap();
        check(by_w, &wt, &dy, &dy.linear_backward_weight(&x).unwrap(), 14);
        assert!(dy
            .linear_backward_weight(&x.narrow(1, 0, 6).unwrap())
            .is_err());
        assert!(x.linear_backward_input(&w).is_err());
    }

    #[test]
    fn attention_grads_match_finite_differences() {
        // More queries than one tile, so the tiled accumulation of dk and dv is exercised.
        let (q, k, v) = (
            rand(&[2, 130, 3, 4], 20),
            rand(&[2, 9, 3, 4], 21),
            rand(&[2, 9, 3, 4], 22),
        );
        let dout = rand(&[2, 130, 3, 4], 23);
        let scale = 0.5;
        let p = AttentionParams {
            scale,
            kv_lens: None,
            bias: None,
        };
        let g = attention_backward(&q, &k, &v, &dout, scale).unwrap();
        check(|q| attention(q, &k, &v, &p).unwrap(), &q, &dout, &g.dq, 24);
        check(|k| attention(&q, k, &v, &p).unwrap(), &k, &dout, &g.dk, 25);
        check(|v| attention(&q, &k, v, &p).unwrap(), &v, &dout, &g.dv, 26);
        assert!(attention_backward(&q, &k, &v, &k, scale).is_err());
    }
}
