//! Input and output transforms around the blocks: the sinusoidal time embedding, the text
//! context padding, patch embedding and unpatchify (wan-architecture.md §1.3, §1.4, §1.7).

use crate::error::{Error, Result};
use crate::tensor::ops::cat;
use crate::tensor::{Tensor, Weight};

/// `[cos(t·ω_j), sin(t·ω_j)]` with `ω_j = 10000^(−j/half)`, computed in f64 and rounded to f32:
/// `[B, freq_dim]`.
pub fn sinusoid(timesteps: &[f32], freq_dim: usize) -> Result<Tensor> {
    let half = freq_dim / 2;
    let mut out = Vec::with_capacity(timesteps.len() * freq_dim);
    for &t in timesteps {
        let args: Vec<f64> = (0..half)
            .map(|j| t as f64 * 10000f64.powf(-(j as f64) / half as f64))
            .collect();
        out.extend(args.iter().map(|a| a.cos() as f32));
        out.extend(args.iter().map(|a| a.sin() as f32));
    }
    Tensor::from_f32(out, [timesteps.len(), freq_dim])
}

/// Zero-pads each `[L_b, text_dim]` context to `[text_len, text_dim]` and stacks them:
/// `[B, text_len, text_dim]`. The padded slots are later attended to, never masked.
pub fn pad_contexts(context: &[Tensor], text_len: usize, text_dim: usize) -> Result<Tensor> {
    let mut padded = Vec::with_capacity(context.len());
    for (b, c) in context.iter().enumerate() {
        let ok = c.dims().len() == 2 && c.dims()[1] == text_dim && c.dims()[0] <= text_len;
        if !ok {
            return Err(Error::ShapeMismatch {
                op: "WanDit context",
                expected: format!("context {b} as [L <= {text_len}, {text_dim}]"),
                got: c.shape().clone(),
            });
        }
        let p = c.pad_zeros(&[(0, text_len - c.dims()[0]), (0, 0)])?;
        padded.push(p.reshape([1, text_len, text_dim])?);
    }
    let refs: Vec<&Tensor> = padded.iter().collect();
    cat(&refs, 0)
}

/// Conv3d with kernel = stride = patch, flattened to tokens in `(f, hh, ww)` order:
/// `[B, C, T, H, W] -> [B, S, dim]`.
pub fn patchify(latent: &Tensor, w: &Weight, b: &Weight, patch: [usize; 3]) -> Result<Tensor> {
    let y = latent.conv3d(w, Some(b), patch, [0, 0, 0])?;
    let d = y.dims().to_vec();
    let s = d[2] * d[3] * d[4];
    y.reshape([d[0], d[1], s])?.transpose(1, 2)
}

/// `[B, S, pt·ph·pw·C]` (feature `((i_t·ph + i_h)·pw + i_w)·C + c`) back to the latent
/// `[B, C, f·pt, hh·ph, ww·pw]`.
pub fn unpatchify(
    x: &Tensor,
    grid: [usize; 3],
    patch: [usize; 3],
    channels: usize,
) -> Result<Tensor> {
    let b = x.dims()[0];
    let [f, hh, ww] = grid;
    let [pt, ph, pw] = patch;
    x.reshape([b, f, hh, ww, pt, ph, pw, channels])?
        .permute(&[0, 7, 1, 4, 2, 5, 3, 6])?
        .reshape([b, channels, f * pt, hh * ph, ww * pw])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_is_cos_then_sin() {
        // wan-architecture.md §1.4: at t = 999, emb[0..3] = (0.9996, 0.9638, −0.3990).
        let e = sinusoid(&[999.0], 256).unwrap();
        let v = e.f32_data().unwrap();
        assert!(
            (v[0] - 0.9996).abs() < 1e-4
                && (v[1] - 0.9638).abs() < 1e-4
                && (v[2] + 0.3990).abs() < 1e-4
        );
        assert!((v[128] - (999f64).sin() as f32).abs() < 1e-6);
    }
}
