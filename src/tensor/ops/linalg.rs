//! Tensor ops: matrix products, linear layers and attention. Shapes and dtypes are checked here;
//! the arithmetic is in `backend::cpu::{gemm, linear, attention, attention_q8}`.

use std::borrow::Cow;

use super::nn::with_weights;
use super::{bf16_if, on_cuda};
use crate::backend::cpu::compute::{round_to_bf16, rounds_to_bf16};
use crate::backend::cpu::{attention as attn, attention_q8 as attn_q8, gemm, linear as lin};
use crate::backend::cuda::ops as cuda;
use crate::backend::gemm_plan::Epilogue;
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
        if on_cuda(OP, &[self, rhs])? {
            return cuda::matmul(self, rhs, &shape);
        }
        let round = rounds_to_bf16()?;
        let a = bf16_if(round, f32_input(self, OP)?);
        let b = bf16_if(round, f32_input(rhs, OP)?);
        let mut out = vec![0.0; shape.elem_count()];
        let batch = batch_dims.iter().product();
        gemm::matmul_batched(&a, &b, &mut out, batch, m, k, n, b_shared, round);
        if round {
            round_to_bf16(&mut out);
        }
        Tensor::from_f32(out, shape)
    }

    /// Linear layer `x · Wᵀ + b`: `self` is `[.., in]` (f32), `weight` `[out, in]` and `bias`
    /// `[out]` in any float dtype (with their scales). Returns `[.., out]`. The weight is widened
    /// to f32 panel by panel inside the GEMM loop, never whole. Computed in the backend's compute
    /// dtype (bf16 inputs and output on CUDA and under `WANRT_COMPUTE=bf16`, f32 accumulation).
    pub fn linear(&self, weight: &Weight, bias: Option<&Weight>) -> Result<Tensor> {
        self.linear_in("linear", weight, bias, false, Epilogue::None)
    }

    /// [`Tensor::linear`] followed by [`Tensor::gelu_tanh`]: on CUDA one GEMM with the bias and
    /// GELU fused into cuBLASLt's epilogue (applied to the f32 result, rounded to bf16 once); on
    /// the CPU the two ops in turn.
    pub fn linear_gelu_tanh(&self, weight: &Weight, bias: Option<&Weight>) -> Result<Tensor> {
        self.linear_in("linear_gelu_tanh", weight, bias, false, Epilogue::GeluTanh)
    }

    /// [`Tensor::linear`] kept in f32 on every backend: the reference's f32 regions (the time
    /// embedding and projection, the DiT's head).
    pub fn linear_f32(&self, weight: &Weight, bias: Option<&Weight>) -> Result<Tensor> {
        self.linear_in("linear_f32", weight, bias, true, Epilogue::None)
    }

    fn linear_in(
        &self,
        op: &'static str,
        weight: &Weight,
        bias: Option<&Weight>,
        keep_f32: bool,
        epilogue: Epilogue,
    ) -> Result<Tensor> {
        for w in std::iter::once(weight).chain(bias) {
            if !w.dtype().is_float() {
                return Err(Error::UnsupportedDType {
                    op,
                    dtype: w.dtype(),
                });
            }
        }
        let &[n_out, n_in] = weight.dims() else {
            return Err(mismatch(op, "weight [out, in]", &weight.tensor));
        };
        let Some((&last, lead)) = self.dims().split_last() else {
            return Err(mismatch(op, format!("input [.., {n_in}]"), self));
        };
        if last != n_in {
            return Err(mismatch(
                op,
                format!("input [.., {n_in}] for weight [{n_out}, {n_in}]"),
                self,
            ));
        }
        if let Some(b) = bias.filter(|b| b.dims() != [n_out]) {
            return Err(mismatch(op, format!("bias [{n_out}]"), &b.tensor));
        }
        let shape = Shape::new([lead, &[n_out]].concat())?;
        if on_cuda(op, &with_weights(self, [Some(weight), bias]))? {
            return cuda::linear(self, weight, bias, keep_f32, epilogue, &shape);
        }
        let round = !keep_f32 && rounds_to_bf16()?;
        let x = bf16_if(round, f32_input(self, op)?);
        let bias = bias.map(|b| b.to_f32()?.to_f32_vec()).transpose()?;
        let bias = bias.map(|b| bf16_if(round, Cow::Owned(b)));
        let rows = lead.iter().product();
        let mut out = vec![0.0; shape.elem_count()];
        lin::linear(&x, rows, weight, bias.as_deref(), round, &mut out)?;
        if round {
            round_to_bf16(&mut out);
        }
        let out = Tensor::from_f32(out, shape)?;
        match epilogue {
            Epilogue::None => Ok(out),
            Epilogue::GeluTanh => out.gelu_tanh(),
        }
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
/// stays O(tokens · D). A query whose keys are all masked gets zeros. q, k, v and the output are
/// in the backend's compute dtype (bf16 on CUDA and under `WANRT_COMPUTE=bf16`, where both
/// products multiply bf16 values, the probabilities rounded to bf16 for the second); the logits,
/// the softmax and the bias are f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams<'_>) -> Result<Tensor> {
    const OP: &str = "attention";
    let dims = attn_dims(q, k, v, OP)?;
    let attn::AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        ..
    } = dims;
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
    let inputs: Vec<&Tensor> = [q, k, v].into_iter().chain(p.bias).collect();
    if on_cuda(OP, &inputs)? {
        return cuda::attention(q, k, v, p);
    }
    let round = rounds_to_bf16()?;
    let (qs, ks, vs) = (f32_input(q, OP)?, f32_input(k, OP)?, f32_input(v, OP)?);
    let bias = p.bias.map(|b| f32_input(b, OP)).transpose()?;
    let opts = attn::AttnOpts {
        scale: p.scale,
        kv_lens: p.kv_lens,
        bias: bias.as_deref(),
        bias_per_batch,
    };
    let mut out = vec![0.0; q.elem_count()];
    if round {
        // Rounds q, k and v itself, and multiplies in bf16.
        attn::attention_bf16(&qs, &ks, &vs, dims, &opts, &mut out)?;
    } else {
        attn::attention(&qs, &ks, &vs, dims, &opts, &mut out)?;
    }
    if round {
        round_to_bf16(&mut out);
    }
    Tensor::from_f32(out, q.shape().clone())
}

/// [`attention`] (no mask, no bias) through the 8-bit scheme `scheme`: q `[B, Sq, H, D]`, k and
/// v `[B, Sk, H, D]` -> `[B, Sq, H, D]`. On the CPU (f32), emulated with the kernels' arithmetic
/// ([`crate::backend::cpu::attention_q8`]), slow, for checking the scheme; on CUDA (bf16), the
/// 8-bit kernels, which take the scheme of `Q8Path::Sm80` or `Q8Path::Sm90` (the same fp16
/// arithmetic; the device picks the kernel, `crate::backend::cuda::ops::q8_kernel`) only.
pub fn attention_q8(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    scheme: &attn_q8::Q8Scheme,
) -> Result<Tensor> {
    const OP: &str = "attention_q8";
    let dims = attn_dims(q, k, v, OP)?;
    if on_cuda(OP, &[q, k, v])? {
        return cuda::attention_q8(q, k, v, scale, scheme);
    }
    let (qs, ks, vs) = (f32_input(q, OP)?, f32_input(k, OP)?, f32_input(v, OP)?);
    let mut out = vec![0.0; q.elem_count()];
    attn_q8::attention_q8(&qs, &ks, &vs, dims, scale, scheme, &mut out)?;
    Tensor::from_f32(out, q.shape().clone())
}

/// The sizes of an attention call, checked: q `[B, Sq, H, D]`, k and v `[B, Sk, H, D]`.
fn attn_dims(q: &Tensor, k: &Tensor, v: &Tensor, op: &'static str) -> Result<attn::AttnDims> {
    let (qd, kd) = (q.dims(), k.dims());
    let &[batch, q_len, heads, head_dim] = qd else {
        return Err(mismatch(op, "q [B, Sq, H, D]", q));
    };
    let kv_expected = || format!("[{batch}, Sk, {heads}, {head_dim}]");
    if kd.len() != 4 || kd[0] != batch || kd[2] != heads || kd[3] != head_dim {
        return Err(mismatch(op, format!("k {}", kv_expected()), k));
    }
    if v.dims() != kd {
        return Err(mismatch(op, format!("v {kd:?} like k"), v));
    }
    Ok(attn::AttnDims {
        batch,
        q_len,
        kv_len: kd[1],
        heads,
        head_dim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random::values;

    fn t(dims: &[usize], seed: u32) -> Tensor {
        Tensor::from_f32(values(dims.iter().product(), seed), dims).unwrap()
    }

    fn assert_close(got: &Tensor, want: &[f64], tol: f64) {
        let g = got.to_f32_vec().unwrap();
        assert_eq!(g.len(), want.len());
        for (i, (&g, &w)) in g.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
                "at {i}: {g} vs {w}"
            );
        }
    }

    /// Naive `[batch, m, k] x [batch or 1, k, n]` in f64.
    fn matmul_ref(
        a: &[f32],
        b: &[f32],
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        shared: bool,
    ) -> Vec<f64> {
        let mut out = vec![0.0; batch * m * n];
        for bi in 0..batch {
            let bb = if shared { 0 } else { bi };
            for i in 0..m {
                for j in 0..n {
                    out[(bi * m + i) * n + j] = (0..k)
                        .map(|l| a[(bi * m + i) * k + l] as f64 * b[(bb * k + l) * n + j] as f64)
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn matmul_batched_and_broadcast() {
        for (m, k, n) in [(1, 1, 1), (7, 65, 129), (129, 7, 65), (65, 129, 1)] {
            let a = t(&[2, 3, m, k], 1);
            let b = t(&[2, 3, k, n], 2);
            let want = matmul_ref(
                &a.to_f32_vec().unwrap(),
                &b.to_f32_vec().unwrap(),
                6,
                m,
                k,
                n,
                false,
            );
            let got = a.matmul(&b).unwrap();
            assert_eq!(got.dims(), [2, 3, m, n]);
            assert_close(&got, &want, 1e-5);
            let b2 = t(&[k, n], 3);
            let want = matmul_ref(
                &a.to_f32_vec().unwrap(),
                &b2.to_f32_vec().unwrap(),
                6,
                m,
                k,
                n,
                true,
            );
            assert_close(&a.matmul(&b2).unwrap(), &want, 1e-5);
        }
        // Plain 2-D product.
        let (a, b) = (t(&[5, 3], 4), t(&[3, 2], 5));
        let want = matmul_ref(
            &a.to_f32_vec().unwrap(),
            &b.to_f32_vec().unwrap(),
            1,
            5,
            3,
            2,
            true,
        );
        assert_close(&a.matmul(&b).unwrap(), &want, 1e-6);
    }

    #[test]
    fn matmul_errors() {
        let a = t(&[2, 3, 4], 1);
        assert!(matches!(
            a.matmul(&t(&[5, 2], 2)),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            a.matmul(&t(&[3, 4, 2], 2)),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            a.matmul(&t(&[4], 2)),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            t(&[4], 1).matmul(&t(&[4, 2], 2)),
            Err(Error::ShapeMismatch { .. })
        ));
        let bf = t(&[4, 2], 2).to_dtype(DType::BF16).unwrap();
        assert!(matches!(a.matmul(&bf), Err(Error::UnsupportedDType { .. })));
    }

    #[test]
    fn linear_keeps_leading_dims() {
        let x = t(&[2, 3, 7], 1);
        let w = t(&[5, 7], 2);
        let b = t(&[5], 3);
        for dtype in [
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::F8E4M3,
            DType::F8E5M2,
        ] {
            let weight = Weight::new(w.to_dtype(dtype).unwrap());
            let bias = Weight::new(b.to_dtype(dtype).unwrap());
            let got = x.linear(&weight, Some(&bias)).unwrap();
            assert_eq!(got.dims(), [2, 3, 5]);
            // Reference on the dequantized values: x · Wᵀ + b.
            let wt = weight.to_f32().unwrap().to_f32_vec().unwrap();
            let bv = bias.to_f32().unwrap().to_f32_vec().unwrap();
            let mut w_t = vec![0.0; 35];
            for o in 0..5 {
                for i in 0..7 {
                    w_t[i * 5 + o] = wt[o * 7 + i];
                }
            }
            let mut want = matmul_ref(&x.to_f32_vec().unwrap(), &w_t, 1, 6, 7, 5, true);
            want.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += bv[i % 5] as f64);
            assert_close(&got, &want, 1e-5);
        }
        // A 1-D input is a single row.
        assert_eq!(
            t(&[7], 4)
                .linear(&Weight::new(w.clone()), None)
                .unwrap()
                .dims(),
            [5]
        );
    }

    #[test]
    fn linear_errors() {
        let x = t(&[2, 7], 1);
        let w = Weight::new(t(&[5, 7], 2));
        let shape_err = |r: Result<Tensor>| matches!(r, Err(Error::ShapeMismatch { .. }));
        let dtype_err = |r: Result<Tensor>| matches!(r, Err(Error::UnsupportedDType { .. }));
        assert!(shape_err(t(&[2, 6], 1).linear(&w, None)));
        assert!(shape_err(x.linear(&Weight::new(t(&[35], 2)), None)));
        assert!(shape_err(x.linear(&w, Some(&Weight::new(t(&[4], 3))))));
        assert!(shape_err(
            Tensor::from_f32(vec![1.0], []).unwrap().linear(&w, None)
        ));
        assert!(dtype_err(x.to_dtype(DType::BF16).unwrap().linear(&w, None)));
        let int_w = Weight::new(Tensor::from_slice(&[0i32; 35], [5, 7]).unwrap());
        assert!(dtype_err(x.linear(&int_w, None)));
    }

    #[test]
    fn attention_shapes_and_errors() {
        let (q, k) = (t(&[2, 5, 3, 8], 1), t(&[2, 9, 3, 8], 2));
        let p = AttentionParams {
            scale: 0.3,
            kv_lens: None,
            bias: None,
        };
        assert_eq!(attention(&q, &k, &k, &p).unwrap().dims(), [2, 5, 3, 8]);
        let shape_err = |r: Result<Tensor>| matches!(r, Err(Error::ShapeMismatch { .. }));
        assert!(shape_err(attention(&t(&[2, 5, 24], 1), &k, &k, &p)));
        assert!(shape_err(attention(&q, &t(&[2, 9, 3, 4], 2), &k, &p)));
        assert!(shape_err(attention(
            &q,
            &t(&[1, 9, 3, 8], 2),
            &t(&[1, 9, 3, 8], 2),
            &p
        )));
        assert!(shape_err(attention(&q, &k, &t(&[2, 8, 3, 8], 3), &p)));
        for dims in [
            &[3, 5, 8][..],
            &[2, 3, 5, 8],
            &[1, 3, 5, 9],
            &[3, 3, 5, 9],
            &[5, 9],
        ] {
            let bias = t(dims, 4);
            assert!(shape_err(attention(
                &q,
                &k,
                &k,
                &AttentionParams {
                    bias: Some(&bias),
                    ..p
                }
            )));
        }
        let lens_err = |lens: &[usize]| {
            let r = attention(
                &q,
                &k,
                &k,
                &AttentionParams {
                    kv_lens: Some(lens),
                    ..p
                },
            );
            matches!(r, Err(Error::InvalidArgument(_)))
        };
        assert!(lens_err(&[9]) && lens_err(&[9, 10]) && !lens_err(&[9, 0]));
        let bf = q.to_dtype(DType::BF16).unwrap();
        assert!(matches!(
            attention(&bf, &k, &k, &p),
            Err(Error::UnsupportedDType { .. })
        ));
        // No keys at all: zeros.
        let empty = t(&[2, 0, 3, 8], 5);
        let out = attention(&q, &empty, &empty, &p).unwrap();
        assert!(out.to_f32_vec().unwrap().iter().all(|&x| x == 0.0));
    }

    #[test]
    fn attention_bias_layouts_agree() {
        // A [H, Sq, Sk] bias equals the same bias repeated over the batch.
        let (q, k, v) = (
            t(&[2, 6, 2, 64], 1),
            t(&[2, 11, 2, 64], 2),
            t(&[2, 11, 2, 64], 3),
        );
        let bias = t(&[2, 6, 11], 4);
        let repeated = Tensor::from_f32(
            [bias.to_f32_vec().unwrap(), bias.to_f32_vec().unwrap()].concat(),
            [2, 2, 6, 11],
        )
        .unwrap();
        let p = AttentionParams {
            scale: 0.125,
            kv_lens: Some(&[11, 4]),
            bias: Some(&bias),
        };
        let a = attention(&q, &k, &v, &p).unwrap().to_f32_vec().unwrap();
        let b = attention(
            &q,
            &k,
            &v,
            &AttentionParams {
                bias: Some(&repeated),
                ..p
            },
        )
        .unwrap()
        .to_f32_vec()
        .unwrap();
        assert_eq!(a, b);
    }
}
