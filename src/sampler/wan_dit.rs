//! The Wan DiT as a [`VelocityModel`]: the prompt and negative prompt, NAG in the conditional
//! pass, Skip Layer Guidance and TeaCache through [`ForwardOptions`], and classifier-free
//! guidance as one batch of 2 when both passes ask for the same thing.

use super::{BlockMode, Pass, PassRequest, StepInfo, TeaCacheInput, VelocityModel};
use crate::error::{Error, Result};
use crate::model::dit::{
    CrossKv, ForwardOptions, NagParams, SelfAttention, TeaCacheSignal, TextContext, WanDit,
};
use crate::tensor::ops::cat;
use crate::tensor::Tensor;

/// A [`WanDit`] with the text contexts of one generation.
///
/// The latent the sampler holds is one sample `[C, T, H, W]`, on the DiT's device; the velocity
/// is returned there in the latent's dtype. The residuals TeaCache reuses are kept here, one per
/// pass. The one host read is the TeaCache indicator (the modulation input, a few thousand
/// values, never the latent), when the driver asks for it.
#[derive(Debug)]
pub struct WanVelocity<'a> {
    dit: &'a WanDit,
    /// `[1, C, T, H, W]`.
    dims: Vec<usize>,
    cond: TextContext,
    uncond: Option<TextContext>,
    /// `[cond, uncond]` as one batch, when CFG is batched.
    batched: Option<TextContext>,
    nag: Option<NagParams>,
    attention: SelfAttention,
    residual: [Option<Tensor>; 2],
}

impl<'a> WanVelocity<'a> {
    /// The model for latents of shape `latent` (`[C, T, H, W]`), with the prompt's context and,
    /// for guidance, the negative prompt's (each from [`WanDit::encode_text`] of one context).
    pub fn new(
        dit: &'a WanDit,
        latent: &[usize],
        cond: TextContext,
        uncond: Option<TextContext>,
    ) -> Result<WanVelocity<'a>> {
        if latent.len() != 4 {
            return Err(Error::InvalidArgument(format!(
                "WanVelocity: latent dims {latent:?}, expected [C, T, H, W]"
            )));
        }
        Ok(WanVelocity {
            dit,
            dims: [&[1][..], latent].concat(),
            cond,
            uncond,
            batched: None,
            nag: None,
            attention: SelfAttention::Exact,
            residual: [None, None],
        })
    }

    /// Applies NAG in the conditional pass.
    pub fn with_nag(mut self, nag: NagParams) -> WanVelocity<'a> {
        self.nag = Some(nag);
        self
    }

    /// Computes the DiT's self-attention with `attention` in every pass.
    pub fn with_attention(mut self, attention: SelfAttention) -> WanVelocity<'a> {
        self.attention = attention;
        self
    }

    /// Runs the two passes as one batch of 2 whenever they use the same blocks (no TeaCache
    /// indicator or residual, the same skipped blocks). Keeps a concatenated copy of both
    /// contexts (and of their cached K/V): memory for speed.
    pub fn with_batched_cfg(mut self) -> Result<WanVelocity<'a>> {
        let uncond = self.uncond.as_ref().ok_or_else(|| {
            Error::InvalidArgument("batched CFG needs the negative context".into())
        })?;
        let kv = match (&self.cond.kv, &uncond.kv) {
            (Some(a), Some(b)) => Some(
                a.iter()
                    .zip(b)
                    .map(|(a, b)| {
                        Ok(CrossKv {
                            k: cat(&[&a.k, &b.k], 0)?,
                            v: cat(&[&a.v, &b.v], 0)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            _ => None,
        };
        self.batched = Some(TextContext {
            embedded: cat(&[&self.cond.embedded, &uncond.embedded], 0)?,
            kv,
        });
        Ok(self)
    }

    fn text(&self, pass: Pass) -> Result<&TextContext> {
        match pass {
            Pass::Cond => Ok(&self.cond),
            Pass::Uncond => self.uncond.as_ref().ok_or_else(|| {
                Error::InvalidArgument("guidance needs the negative prompt's context".into())
            }),
        }
    }

    /// One pass on its own, with its hooks.
    fn single(&mut self, latent: &Tensor, t: f32, req: &mut PassRequest<'_>) -> Result<()> {
        let k = req.pass.index();
        let reuse_residual = match req.blocks {
            BlockMode::Reuse => Some(self.residual[k].clone().ok_or_else(|| {
                Error::InvalidArgument(format!("no residual kept for the {:?} pass", req.pass))
            })?),
            _ => None,
        };
        let opts = ForwardOptions {
            nag: self.nag.clone().filter(|_| req.pass == Pass::Cond),
            skip_blocks: req.skip_blocks.to_vec(),
            signal: req.indicator.map(|i| match i {
                TeaCacheInput::TimeEmbedding => TeaCacheSignal::TimeEmbedding,
                TeaCacheInput::TimeProjection => TeaCacheSignal::TimeProjection,
            }),
            reuse_residual,
            return_residual: req.blocks == BlockMode::RunAndKeep,
            attention: self.attention,
        };
        let x = latent.reshape(self.dims.as_slice())?;
        let out = self
            .dit
            .forward_with(&x, &[t], self.text(req.pass)?, &opts)?;
        req.velocity = Some(sample_of(&out.velocity, 0, latent)?);
        req.signal = out.signal;
        if req.blocks == BlockMode::RunAndKeep {
            self.residual[k] = out.residual;
        }
        Ok(())
    }

    /// Both passes as a batch `[cond, uncond]`, NAG guiding the conditional sample only.
    fn run_batched(
        &self,
        text: &TextContext,
        latent: &Tensor,
        t: f32,
        passes: &mut [PassRequest<'_>],
    ) -> Result<()> {
        let one = latent.reshape(self.dims.as_slice())?;
        let x = cat(&[&one, &one], 0)?;
        let opts = ForwardOptions {
            nag: self.nag.clone().map(|n| NagParams {
                guided: Some(vec![true, false]),
                ..n
            }),
            skip_blocks: passes[0].skip_blocks.to_vec(),
            attention: self.attention,
            ..Default::default()
        };
        let v = self.dit.forward_with(&x, &[t, t], text, &opts)?.velocity;
        for p in passes {
            p.velocity = Some(sample_of(&v, p.pass.index(), latent)?);
        }
        Ok(())
    }
}

/// Sample `b` of a velocity batch, shaped and typed as `latent`.
fn sample_of(v: &Tensor, b: usize, latent: &Tensor) -> Result<Tensor> {
    if v.dims().first().is_none_or(|&n| n <= b)
        || v.elem_count() / v.dims()[0] != latent.elem_count()
    {
        return Err(Error::InvalidArgument(format!(
            "WanVelocity: the model's velocity {} does not hold sample {b} of {}",
            v.shape(),
            latent.shape()
        )));
    }
    v.narrow(0, b, 1)?
        .reshape(latent.shape().clone())?
        .to_dtype(latent.dtype())
}

impl VelocityModel for WanVelocity<'_> {
    fn evaluate(
        &mut self,
        latent: &Tensor,
        at: &StepInfo,
        passes: &mut [PassRequest<'_>],
    ) -> Result<()> {
        let t = at.timestep as f32;
        let plain = |p: &PassRequest<'_>| p.blocks == BlockMode::Run && p.indicator.is_none();
        if let (Some(text), [a, b]) = (&self.batched, &*passes) {
            if plain(a) && plain(b) && a.skip_blocks == b.skip_blocks && a.pass != b.pass {
                return self.run_batched(text, latent, t, passes);
            }
        }
        for p in passes {
            self.single(latent, t, p)?;
        }
        Ok(())
    }
}
