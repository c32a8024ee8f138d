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
/// The latent the sampler holds is one sample `[C, T, H, W]`. The residuals TeaCache reuses
/// are kept here, one per pass.
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
    fn single(&mut self, latent: &[f32], t: f32, req: &mut PassRequest<'_, f32>) -> Result<()> {
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
        let x = Tensor::from_slice(latent, self.dims.as_slice())?;
        let out = self
            .dit
            .forward_with(&x, &[t], self.text(req.pass)?, &opts)?;
        copy_out(&out.velocity, 0, req.velocity)?;
        req.signal = out.signal.map(|s| s.to_f32_vec()).transpose()?;
        if req.blocks == BlockMode::RunAndKeep {
            self.residual[k] = out.residual;
        }
        Ok(())
    }

    /// Both passes as a batch `[cond, uncond]`, NAG guiding the conditional sample only.
    fn run_batched(
        &self,
        text: &TextContext,
        latent: &[f32],
        t: f32,
        passes: &mut [PassRequest<'_, f32>],
    ) -> Result<()> {
        let mut dims = self.dims.clone();
        dims[0] = 2;
        let x = Tensor::from_f32([latent, latent].concat(), dims.as_slice())?;
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
            copy_out(&v, p.pass.index(), p.velocity)?;
        }
        Ok(())
    }
}

/// Copies sample `b` of a velocity batch into `out`.
fn copy_out(v: &Tensor, b: usize, out: &mut [f32]) -> Result<()> {
    let n = out.len();
    let src = v.f32_data()?.get(b * n..(b + 1) * n).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "WanVelocity: the model's velocity {} does not hold sample {b} of {n} elements",
            v.shape()
        ))
    })?;
    out.copy_from_slice(src);
    Ok(())
}

impl VelocityModel<f32> for WanVelocity<'_> {
    fn evaluate(
        &mut self,
        latent: &[f32],
        at: &StepInfo,
        passes: &mut [PassRequest<'_, f32>],
    ) -> Result<()> {
        let t = at.timestep as f32;
        let plain = |p: &PassRequest<'_, f32>| p.blocks == BlockMode::Run && p.indicator.is_none();
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
