//! Normalisations, rotary embedding and embedding lookup: shape checks, then the slice kernels
//! of [`crate::backend::cpu::norm`] and [`crate::backend::cpu::rope`].

use std::borrow::Cow;

use rayon::prelude::*;

use crate::backend::cpu::{norm, rope};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor, Weight};

/// The f32 elements of an activation tensor (borrowed unless a mapped tensor is misaligned).
pub(super) fn f32_input<'a>(x: &'a Tensor, op: &'static str) -> Result<Cow<'a, [f32]>> {
    if x.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType {
            op,
            dtype: x.dtype(),
        });
    }
    x.as_slice::<f32>()
}

/// The whole value of a small weight widened to f32, checked to hold `len` elements.
pub(super) fn widen_weight(w: &Weight, len: usize, op: &'static str) -> Result<Vec<f32>> {
    if !w.dtype().is_float() {
        return Err(Error::UnsupportedDType {
            op,
            dtype: w.dtype(),
        });
    }
    if w.tensor.elem_count() != len {
        return Err(Error::ShapeMismatch {
            op,
            expected: format!("a weight of {len} elements"),
            got: w.tensor.shape().clone(),
        });
    }
    let mut out = vec![0.0; len];
    match w.dims().first() {
        Some(&rows) => w.widen_rows(0..rows, &mut out)?,
        None => out = w.to_f32()?.to_f32_vec()?,
    }
    Ok(out)
}

/// The size of the last dim, or an error for a scalar.
fn last_dim(x: &Tensor, op: &'static str) -> Result<usize> {
    x.dims()
        .last()
        .copied()
        .ok_or_else(|| Error::ShapeMismatch {
            op,
            expected: "at least one dimension".into(),
            got: x.shape().clone(),
        })
}

impl Tensor {
    /// Layer norm over the last dim: `(x - mean) / sqrt(var + eps) * weight + bias`; `weight` and
    /// `bias` (any float dtype) hold as many values as the last dim. Statistics in f64.
    pub fn layer_norm(
        &self,
        weight: Option<&Weight>,
        bias: Option<&Weight>,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        let x = f32_input(self, OP)?;
        let d = last_dim(self, OP)?;
        let w = weight.map(|w| widen_weight(w, d, OP)).transpose()?;
        let b = bias.map(|b| widen_weight(b, d, OP)).transpose()?;
        let mut out = vec![0.0; x.len()];
        norm::layer_norm(&x, &mut out, d, w.as_deref(), b.as_deref(), eps);
        Tensor::from_f32(out, self.shape().clone())
    }

    /// RMS norm over the last dim: `x / sqrt(mean(x^2) + eps) * weight`. Statistics in f64.
    pub fn rms_norm(&self, weight: Option<&Weight>, eps: f32) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        let x = f32_input(self, OP)?;
        let d = last_dim(self, OP)?;
        let w = weight.map(|w| widen_weight(w, d, OP)).transpose()?;
        let mut out = vec![0.0; x.len()];
        norm::rms_norm(&x, &mut out, d, w.as_deref(), eps);
        Tensor::from_f32(out, self.shape().clone())
    }

    /// The Wan VAE's channel RMS norm of `[B, C, ...]`: at every position the channel vector is
    /// divided by `max(||x||_2, 1e-12)` and multiplied by `sqrt(C) * gamma[c]`. `gamma` holds
    /// `C` values (shape `[C]`, `[C, 1, 1]` or `[C, 1, 1, 1]`).
    pub fn channel_rms_norm(&self, gamma: &Weight) -> Result<Tensor> {
        const OP: &str = "channel_rms_norm";
        let x = f32_input(self, OP)?;
        let dims = self.dims();
        if dims.len() < 2 {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "[B, C, ...]".into(),
                got: self.shape().clone(),
            });
        }
        let (b, c) = (dims[0], dims[1]);
        let g = widen_weight(gamma, c, OP)?;
        let positions = dims[2..].iter().product();
        let mut out = vec![0.0; x.len()];
        norm::channel_rms_norm(&x, &mut out, b, c, positions, &g);
        Tensor::from_f32(out, self.shape().clone())
    }

    /// Rotary embedding on interleaved pairs: `self` is `[B, S, H, D]`, `cos`/`sin` are f32
    /// `[S, D/2]`; channels `(2j, 2j+1)` of each head of token `s` rotate by angle `(s, j)`:
    /// `out[2j] = x[2j] cos - x[2j+1] sin`, `out[2j+1] = x[2j] sin + x[2j+1] cos`.
    pub fn rope_interleaved(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        const OP: &str = "rope_interleaved";
        let x = f32_input(self, OP)?;
        let &[_, s, h, d] = self.dims() else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "[B, S, H, D]".into(),
                got: self.shape().clone(),
            });
        };
        if d % 2 != 0 {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "an even head dim".into(),
                got: self.shape().clone(),
            });
        }
        let table = Shape::new([s, d / 2])?;
        for t in [cos, sin] {
            if t.shape() != &table {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    expected: format!("cos/sin of shape {table}"),
                    got: t.shape().clone(),
                });
            }
        }
        let (c, sn) = (f32_input(cos, OP)?, f32_input(sin, OP)?);
        let mut out = vec![0.0; x.len()];
        rope::rope_interleaved(&x, &mut out, s, h, d, &c, &sn);
        Tensor::from_f32(out, self.shape().clone())
    }
}

/// Looks up rows of `table` (`[V, D]`, any float dtype; only the selected rows are widened):
/// returns `[ids.len(), D]` f32. An id `>= V` is an error.
pub fn embedding(ids: &[u32], table: &Weight) -> Result<Tensor> {
    const OP: &str = "embedding";
    let &[v, d] = table.dims() else {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: "a table [V, D]".into(),
            got: table.tensor.shape().clone(),
        });
    };
    if !table.dtype().is_float() {
        return Err(Error::UnsupportedDType {
            op: OP,
            dtype: table.dtype(),
        });
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
        return Err(Error::InvalidArgument(format!(
            "{OP}: id {bad} outside a vocabulary of {v}"
        )));
    }
    let mut out = vec![0.0; ids.len() * d];
    if d > 0 {
        out.par_chunks_mut(d)
            .zip(ids.par_iter())
            .try_for_each(|(row, &id)| table.widen_rows(id as usize..id as usize + 1, row))?;
    }
    Tensor::from_f32(out, [ids.len(), d])
}
