//! Normalized Attention Guidance in the text cross-attention (lora-guidance-training.md §3.4).

use super::TextContext;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// NAG settings: a negative context whose cross-attention output steers the positive one in
/// every block.
#[derive(Debug, Clone)]
pub struct NagParams {
    /// Guidance scale `s` (1 disables the guidance; default 11).
    pub scale: f32,
    /// Norm-ratio threshold `τ` (default 2.5).
    pub tau: f32,
    /// Blend `α` between the guided and the positive output (default 0.25).
    pub alpha: f32,
    /// The negative text context, one sample shared by every guided sample: made by
    /// [`super::WanDit::encode_text`] from the unpadded `[L, text_dim]` context, like the positive
    /// one (with its K/V cached when it serves many steps).
    pub negative_context: TextContext,
    /// Which batch samples are guided (`None`: all). With batched CFG only the conditional
    /// sample is normally guided.
    pub guided: Option<Vec<bool>>,
}

impl NagParams {
    /// The defaults of Kijai's `WanVideoApplyNAG`: scale 11, τ 2.5, α 0.25, every sample guided.
    pub fn new(negative_context: TextContext) -> NagParams {
        NagParams {
            scale: 11.0,
            tau: 2.5,
            alpha: 0.25,
            negative_context,
            guided: None,
        }
    }

    /// Whether batch sample `b` is guided.
    pub fn guides(&self, b: usize) -> bool {
        self.guided
            .as_ref()
            .is_none_or(|g| g.get(b).copied().unwrap_or(false))
    }

    /// Checks the parameters against a batch of `batch` samples.
    pub(super) fn validate(&self, batch: usize) -> Result<()> {
        if ![self.scale, self.tau, self.alpha]
            .iter()
            .all(|v| v.is_finite())
            || self.tau < 0.0
        {
            return Err(Error::InvalidArgument(format!(
                "NAG scale {}, tau {}, alpha {}: need finite values and tau >= 0",
                self.scale, self.tau, self.alpha
            )));
        }
        match &self.guided {
            Some(g) if g.len() != batch => Err(Error::InvalidArgument(format!(
                "NAG `guided` has {} entries for a batch of {batch}",
                g.len()
            ))),
            _ => Ok(()),
        }
    }
}

/// Mixes the positive and negative attention outputs `[.., C]` (heads flattened):
/// `Z_g = s·Z+ − (s−1)·Z−`; per token, when `r = ‖Z_g‖₁/‖Z+‖₁ > τ`, `Z_g` is scaled by
/// `‖Z+‖₁·τ / (‖Z_g‖₁ + 1e-7)`; the result is `α·Z_g + (1−α)·Z+`.
///
/// The conditional rescale is written as one factor `min(1, ‖Z+‖₁·τ / (‖Z_g‖₁ + 1e-7))`, which
/// is the reference where `r > τ` and 1 elsewhere except within 1e-7 of `‖Z_g‖₁` of the
/// threshold (a relative change below 1e-7/‖Z_g‖₁). The reference's NaN ratio (both norms 0)
/// only arises where `Z_g` is 0, which any factor leaves 0.
pub(super) fn nag_combine(zp: &Tensor, zn: &Tensor, p: &NagParams) -> Result<Tensor> {
    let last = zp.dims().len() - 1;
    let zg = zp
        .affine(p.scale, 0.0)?
        .sub(&zn.affine(p.scale - 1.0, 0.0)?)?;
    let n_p = zp.abs()?.sum_keepdim(last)?;
    let n_g = zg.abs()?.sum_keepdim(last)?;
    let factor = n_p
        .affine(p.tau, 0.0)?
        .div(&n_g.affine(1.0, 1e-7)?)?
        .clamp(0.0, 1.0)?;
    zg.mul(&factor.affine(p.alpha, 0.0)?)?
        .add(&zp.affine(1.0 - p.alpha, 0.0)?)
}
