//! Normalisations, rotary embedding and embedding lookup: shape checks, then the slice kernels
//! of [`crate::backend::cpu::norm`] and [`crate::backend::cpu::rope`].

use std::borrow::Cow;

use rayon::prelude::*;

use super::on_cuda;
use crate::backend::cpu::{norm, rope};
use crate::backend::cuda::ops as cuda;
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

/// `x` and the tensors of the weights that are present: the inputs whose devices must agree.
pub(super) fn with_weights<'a, const N: usize>(
    x: &'a Tensor,
    weights: [Option<&'a Weight>; N],
) -> Vec<&'a Tensor> {
    std::iter::once(x)
        .chain(weights.into_iter().flatten().map(|w| &w.tensor))
        .collect()
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
        let d = last_dim(self, OP)?;
        if on_cuda(OP, &with_weights(self, [weight, bias]))? {
            return cuda::layer_norm(self, weight, bias, eps);
        }
        let x = f32_input(self, OP)?;
        let w = weight.map(|w| widen_weight(w, d, OP)).transpose()?;
        let b = bias.map(|b| widen_weight(b, d, OP)).transpose()?;
        let mut out = vec![0.0; x.len()];
        norm::layer_norm(&x, &mut out, d, w.as_deref(), b.as_deref(), eps);
        Tensor::from_f32(out, self.shape().clone())
    }

    /// RMS norm over the last dim: `x / sqrt(mean(x^2) + eps) * weight`. Statistics in f64.
    pub fn rms_norm(&self, weight: Option<&Weight>, eps: f32) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        let d = last_dim(self, OP)?;
        if on_cuda(OP, &with_weights(self, [weight, None]))? {
            return cuda::rms_norm(self, weight, eps);
        }
        let x = f32_input(self, OP)?;
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
        let dims = self.dims();
        if dims.len() < 2 {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "[B, C, ...]".into(),
                got: self.shape().clone(),
            });
        }
        if on_cuda(OP, &[self, &gamma.tensor])? {
            return cuda::channel_rms_norm(self, gamma);
        }
        let x = f32_input(self, OP)?;
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
        if on_cuda(OP, &[self, cos, sin])? {
            return cuda::rope_interleaved(self, cos, sin);
        }
        let x = f32_input(self, OP)?;
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
    if on_cuda(OP, &[&table.tensor])? {
        return cuda::embedding(ids, table);
    }
    let mut out = vec![0.0; ids.len() * d];
    if d > 0 {
        out.par_chunks_mut(d)
            .zip(ids.par_iter())
            .try_for_each(|(row, &id)| table.widen_rows(id as usize..id as usize + 1, row))?;
    }
    Tensor::from_f32(out, [ids.len(), d])
}

#[cfg(test)]
mod tests {
    use super::super::conv::tests::{tensor, weight};
    use super::embedding;
    use crate::backend::cpu::conv::test_support::{assert_close, values};
    use crate::error::Error;
    use crate::tensor::{DType, Tensor, Weight};

    fn widened(w: &Weight) -> Vec<f64> {
        w.to_f32()
            .unwrap()
            .f32_data()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect()
    }

    fn layer_norm_reference(
        x: &[f32],
        d: usize,
        w: Option<&[f64]>,
        b: Option<&[f64]>,
        eps: f64,
    ) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(d) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for (i, &v) in row.iter().enumerate() {
                let n = (v as f64 - mean) / (var + eps).sqrt();
                out.push(n * w.map_or(1.0, |w| w[i]) + b.map_or(0.0, |b| b[i]));
            }
        }
        out
    }

    #[test]
    fn layer_norm_matches_reference_with_any_affine_dtype() {
        for (dims, dtype) in [
            (vec![3, 5, 7], DType::BF16),
            (vec![2, 1536], DType::F32),
            (vec![1, 5120], DType::F8E4M3),
            (vec![4, 1], DType::F16),
            (vec![0, 9], DType::F32),
        ] {
            let d = *dims.last().unwrap();
            let x = tensor(&dims, 1);
            let (w, b) = (weight(&[d], 2, dtype), weight(&[d], 3, dtype));
            let xs = x.f32_data().unwrap();
            let (wv, bv) = (widened(&w), widened(&b));
            for (wo, bo) in [
                (None, None),
                (Some(&w), None),
                (None, Some(&b)),
                (Some(&w), Some(&b)),
            ] {
                let y = x.layer_norm(wo, bo, 1e-6).unwrap();
                assert_eq!(y.dims(), x.dims());
                let want =
                    layer_norm_reference(xs, d, wo.map(|_| &wv[..]), bo.map(|_| &bv[..]), 1e-6);
                assert_close(
                    y.f32_data().unwrap(),
                    &want,
                    1e-5,
                    &format!("layer_norm {dims:?}"),
                );
            }
        }
    }

    #[test]
    fn rms_norm_matches_reference() {
        for (dims, dtype) in [
            (vec![3, 5, 7], DType::BF16),
            (vec![2, 5120], DType::F8E5M2),
            (vec![6, 1536], DType::F32),
        ] {
            let d = *dims.last().unwrap();
            let x = tensor(&dims, 4);
            let w = weight(&[d], 5, dtype);
            let wv = widened(&w);
            for wo in [None, Some(&w)] {
                let y = x.rms_norm(wo, 1e-6).unwrap();
                let mut want = Vec::new();
                for row in x.f32_data().unwrap().chunks(d) {
                    let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
                    for (i, &v) in row.iter().enumerate() {
                        want.push(v as f64 / (ms + 1e-6).sqrt() * wo.map_or(1.0, |_| wv[i]));
                    }
                }
                assert_close(
                    y.f32_data().unwrap(),
                    &want,
                    1e-5,
                    &format!("rms_norm {dims:?}"),
                );
            }
        }
    }

    #[test]
    fn channel_rms_norm_matches_reference() {
        for (dims, gdims) in [
            (vec![2, 5, 3, 4, 6], vec![5, 1, 1, 1]),
            (vec![1, 7, 3, 5], vec![7, 1, 1]),
            (vec![3, 4], vec![4]),
            (vec![1, 96, 2, 33, 40], vec![96, 1, 1, 1]),
        ] {
            let x = tensor(&dims, 6);
            let g = weight(&gdims, 7, DType::BF16);
            let gv = widened(&g);
            let y = x.channel_rms_norm(&g).unwrap();
            let (b, c) = (dims[0], dims[1]);
            let p: usize = dims[2..].iter().product();
            let xs = x.f32_data().unwrap();
            let mut want = vec![0.0; xs.len()];
            for bi in 0..b {
                for pi in 0..p {
                    let at = |ci: usize| (bi * c + ci) * p + pi;
                    let norm = (0..c)
                        .map(|ci| (xs[at(ci)] as f64).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    for ci in 0..c {
                        want[at(ci)] =
                            xs[at(ci)] as f64 / norm.max(1e-12) * (c as f64).sqrt() * gv[ci];
                    }
                }
            }
            assert_close(
                y.f32_data().unwrap(),
                &want,
                1e-5,
                &format!("channel_rms_norm {dims:?}"),
            );
        }
        // A zero channel vector stays zero (the norm is clamped to 1e-12, not divided by 0).
        let z = Tensor::zeros([1, 3, 2], DType::F32)
            .channel_rms_norm(&weight(&[3], 1, DType::F32))
            .unwrap();
        assert!(z.f32_data().unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn norm_errors_are_typed() {
        let x = tensor(&[2, 6], 1);
        let shape_err =
            |r: crate::error::Result<Tensor>| matches!(r, Err(Error::ShapeMismatch { .. }));
        assert!(shape_err(x.layer_norm(
            Some(&weight(&[5], 1, DType::F32)),
            None,
            1e-6
        )));
        assert!(shape_err(x.layer_norm(
            None,
            Some(&weight(&[7], 1, DType::F32)),
            1e-6
        )));
        assert!(shape_err(
            x.rms_norm(Some(&weight(&[2, 6], 1, DType::F32)), 1e-6)
        ));
        assert!(shape_err(x.channel_rms_norm(&weight(&[2], 1, DType::F32))));
        assert!(shape_err(tensor(&[4], 1).channel_rms_norm(&weight(
            &[4],
            1,
            DType::F32
        ))));
        let scalar = Tensor::from_f32(vec![1.0], [0usize; 0]).unwrap();
        assert!(shape_err(scalar.layer_norm(None, None, 1e-6)));
        let xb = x.to_dtype(DType::BF16).unwrap();
        assert!(matches!(
            xb.rms_norm(None, 1e-6),
            Err(Error::UnsupportedDType { .. })
        ));
        let iw = Weight::new(Tensor::from_slice(&[1i32; 6], [6]).unwrap());
        assert!(matches!(
            x.rms_norm(Some(&iw), 1e-6),
            Err(Error::UnsupportedDType { .. })
        ));
    }

    #[test]
    fn rope_matches_the_complex_rotation() {
        let (b, s, h, d) = (2, 5, 3, 8);
        let x = tensor(&[b, s, h, d], 8);
        let angles: Vec<f64> = values(s * d / 2, 9)
            .iter()
            .map(|&a| a as f64 * 3.0)
            .collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos() as f32).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin() as f32).collect();
        let (ct, st) = (
            Tensor::from_f32(cos.clone(), [s, d / 2]).unwrap(),
            Tensor::from_f32(sin.clone(), [s, d / 2]).unwrap(),
        );
        let y = x.rope_interleaved(&ct, &st).unwrap();
        let xs = x.f32_data().unwrap();
        let mut want = vec![0.0; xs.len()];
        for bi in 0..b {
            for si in 0..s {
                for hi in 0..h {
                    for j in 0..d / 2 {
                        let i = ((bi * s + si) * h + hi) * d + 2 * j;
                        let (re, im) = (xs[i] as f64, xs[i + 1] as f64);
                        let (c, sn) = (cos[si * d / 2 + j] as f64, sin[si * d / 2 + j] as f64);
                        want[i] = re * c - im * sn;
                        want[i + 1] = re * sn + im * c;
                    }
                }
            }
        }
        assert_close(y.f32_data().unwrap(), &want, 1e-6, "rope");

        let shape_err =
            |r: crate::error::Result<Tensor>| matches!(r, Err(Error::ShapeMismatch { .. }));
        assert!(shape_err(
            x.reshape([b * s, h, d]).unwrap().rope_interleaved(&ct, &st)
        ));
        let short = Tensor::from_f32(vec![0.0; (s - 1) * d / 2], [s - 1, d / 2]).unwrap();
        assert!(shape_err(x.rope_interleaved(&short, &st)));
        assert!(shape_err(x.rope_interleaved(&ct, &short)));
        assert!(shape_err(
            tensor(&[1, s, 1, 3], 1).rope_interleaved(&ct, &st)
        ));
        let cb = ct.to_dtype(DType::BF16).unwrap();
        assert!(matches!(
            x.rope_interleaved(&cb, &st),
            Err(Error::UnsupportedDType { .. })
        ));
    }

    #[test]
    fn embedding_widens_the_selected_rows() {
        for dtype in [DType::F32, DType::BF16, DType::F8E4M3] {
            let table = weight(&[10, 6], 10, dtype);
            let full = table.to_f32().unwrap();
            let ids = [3u32, 0, 9, 3];
            let y = embedding(&ids, &table).unwrap();
            assert_eq!(y.dims(), &[4, 6]);
            for (row, &id) in y.f32_data().unwrap().chunks(6).zip(&ids) {
                assert_eq!(
                    row,
                    &full.f32_data().unwrap()[id as usize * 6..id as usize * 6 + 6]
                );
            }
            assert!(matches!(
                embedding(&[10], &table),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert_eq!(
            embedding(&[], &weight(&[10, 6], 1, DType::F32))
                .unwrap()
                .dims(),
            &[0, 6]
        );
        assert!(matches!(
            embedding(&[0], &weight(&[60], 1, DType::F32)),
            Err(Error::ShapeMismatch { .. })
        ));
    }
}
