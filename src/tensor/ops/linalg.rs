//! Tensor ops: matrix products, linear layers and attention. Shapes and dtypes are checked here;
//! the arithmetic is in `backend::cpu::{gemm, linear, attention}`.

use std::borrow::Cow;

use crate::backend::cpu::{attention as attn, gemm, linear as lin};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor, Weight};

/// The f32 elements of an activation tensor (borrowed when possible), or `UnsupportedDType`.
fn f32_input<'a>(t: &'a Tensor, op: &'static str) -> Result<Cow<'a, [f32]>> {
    if t.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType {
            op,
            dtype: t.dtype(),
        });
    }
    t.as_slice::<f32>()
}

fn mismatch(op: &'static str, expected: impl Into<String>, got: &Tensor) -> Error {
    Error::ShapeMismatch {
        op,
        expected: expected.into(),
        got: got.shape().clone(),
    }
}

impl Tensor {
    /// Matrix product `[.., m, k] × [.., k, n] -> [.., m, n]`. The batch dimensions must be
    /// equal, or `rhs` 2-D (one matrix for every batch entry of `self`).
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        let a = f32_input(self, OP)?;
        let b = f32_input(rhs, OP)?;
        let (ad, bd) = (self.dims(), rhs.dims());
        if ad.len() < 2 {
            return Err(mismatch(OP, "lhs of rank >= 2", self));
        }
        let (batch_dims, m, k) = (&ad[..ad.len() - 2], ad[ad.len() - 2], ad[ad.len() - 1]);
        let b_shared = bd.len() == 2;
        let b_ok = bd.len() >= 2
            && bd[bd.len() - 2] == k
            && (b_shared || bd[..bd.len() - 2] == *batch_dims);
        if !b_ok {
            let expected = format!(
                "rhs [{k}, n] or [{}, {k}, n] for lhs {:?}",
                fmt_dims(batch_dims),
                ad
            );
            return Err(mismatch(OP, expected, rhs));
        }
        let n = bd[bd.len() - 1];
        let mut dims = ad.to_vec();
        *dims.last_mut().expect("rank >= 2") = n;
        let shape = Shape::new(dims)?;
        let mut out = vec![0.0; shape.elem_count()];
        let batch = batch_dims.iter().product();
        gemm::matmul_batched(&a, &b, &mut out, batch, m, k, n, b_shared);
        Tensor::from_f32(out, shape)
    }

    /// Linear layer `x · Wᵀ + b`: `self` is `[.., in]` (f32), `weight` `[out, in]` and `bias`
    /// `[out]` in any float dtype (with their scales). Returns `[.., out]`. The weight is widened
    /// to f32 panel by panel inside the GEMM loop, never whole.
    pub fn linear(&self, weight: &Weight, bias: Option<&Weight>) -> Result<Tensor> {
        const OP: &str = "linear";
        let x = f32_input(self, OP)?;
        for w in std::iter::once(weight).chain(bias) {
            if !w.dtype().is_float() {
                return Err(Error::UnsupportedDType {
                    op: OP,
                    dtype: w.dtype(),
                });
            }
        }
        let &[n_out, n_in] = weight.dims() else {
            return Err(mismatch(OP, "weight [out, in]", &weight.tensor));
        };
        let Some((&last, lead)) = self.dims().split_last() else {
            return Err(mismatch(OP, format!("input [.., {n_in}]"), self));
        };
        if last != n_in {
            return Err(mismatch(
                OP,
                format!("input [.., {n_in}] for weight [{n_out}, {n_in}]"),
                self,
            ));
        }
        let bias = match bias {
            Some(b) if b.dims() != [n_out] => {
                return Err(mismatch(OP, format!("bias [{n_out}]"), &b.tensor))
            }
            Some(b) => Some(b.to_f32()?.to_f32_vec()?),
            None => None,
        };
        let rows = lead.iter().product();
        let shape = Shape::new([lead, &[n_out]].concat())?;
        let mut out = vec![0.0; shape.elem_count()];
        lin::linear(&x, rows, weight, bias.as_deref(), &mut out)?;
        Tensor::from_f32(out, shape)
    }
}

fn fmt_dims(d: &[usize]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Options of [`attention`].
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams<'a> {
    /// Multiplier of the logits `q kᵀ` (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Per batch entry, the number of leading keys attended to; the rest are ignored.
    pub kv_lens: Option<&'a [usize]>,
    /// Added to the logits: f32 `[H, Sq, Sk]` or `[B, H, Sq, Sk]` (T5 relative-position bias).
    pub bias: Option<&'a Tensor>,
}

/// `softmax(scale · q kᵀ + bias) v` per batch entry and head: q `[B, Sq, H, D]`, k and v
/// `[B, Sk, H, D]` (f32) -> `[B, Sq, H, D]`. Computed in tiles with an online softmax, so memory
/// stays O(tokens · D). A query whose keys are all masked gets zeros.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams<'_>) -> Result<Tensor> {
    const OP: &str = "attention";
    let (qd, kd) = (q.dims(), k.dims());
    let &[batch, q_len, heads, head_dim] = qd else {
        return Err(mismatch(OP, "q [B, Sq, H, D]", q));
    };
    let kv_expected = || format!("[{batch}, Sk, {heads}, {head_dim}]");
    if kd.len() != 4 || kd[0] != batch || kd[2] != heads || kd[3] != head_dim {
        return Err(mismatch(OP, format!("k {}", kv_expected()), k));
    }
    if v.dims() != kd {
        return Err(mismatch(OP, format!("v {kd:?} like k"), v));
    }
    let kv_len = kd[1];
    let (qs, ks, vs) = (f32_input(q, OP)?, f32_input(k, OP)?, f32_input(v, OP)?);
    let bias = p.bias.map(|b| f32_input(b, OP)).transpose()?;
    let bias_per_batch = match p.bias.map(Tensor::dims) {
        None => false,
        Some(d) if d == [heads, q_len, kv_len] => false,
        Some(d) if d == [batch, heads, q_len, kv_len] => true,
        Some(_) => {
            let expected = format!(
                "bias [{heads}, {q_len}, {kv_len}] or [{batch}, {heads}, {q_len}, {kv_len}]"
            );
            return Err(mismatch(OP, expected, p.bias.expect("matched Some")));
        }
    };
    if let Some(lens) = p.kv_lens {
        if lens.len() != batch || lens.iter().any(|&l| l > kv_len) {
            return Err(Error::InvalidArgument(format!(
                "attention: kv_lens {lens:?} must have {batch} entries of at most {kv_len}"
            )));
        }
    }
    let dims = attn::AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim,
    };
    let opts = attn::AttnOpts {
        scale: p.scale,
        kv_lens: p.kv_lens,
        bias: bias.as_deref(),
        bias_per_batch,
    };
    let mut out = vec![0.0; q.elem_count()];
    attn::attention(&qs, &ks, &vs, dims, &opts, &mut out)?;
    Tensor::from_f32(out, q.shape().clone())
}
