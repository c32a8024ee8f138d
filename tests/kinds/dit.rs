//! `dit_forward` and `dit_forward_nag` cases: one DiT forward of the case's checkpoint (any
//! layout and dtype) on its latent, timestep and unpadded context; NAG adds the negative context.
//! The self-attention is the one `WANRT_ATTENTION` asks for ([`super::dit_attention`]).

use wanrt::backend::Device;
use wanrt::model::dit::{ForwardOptions, NagParams, SelfAttention, WanDit};
use wanrt::{DType, Tensor};

use super::{compare, dit_attention, Check, Output, Stop};
use crate::common::{tensor, Case};

/// `[1, L, D]` → `[L, D]` f32: the DiT takes one unpadded context per sample.
fn unbatch(t: &Tensor) -> Result<Tensor, Stop> {
    let d = t.dims();
    if d.len() != 3 || d[0] != 1 {
        return Err(Stop::Fail(format!("context must be [1, L, D], got {d:?}")));
    }
    Ok(t.to_dtype(DType::F32)?.reshape([d[1], d[2]])?)
}

pub fn run(case: &Case) -> Result<Vec<Check>, Stop> {
    run_on(case, Device::Cpu)
}

/// Runs the case with the DiT and its inputs on `device`; the velocity comes back to the host.
pub fn run_on(case: &Case, device: Device) -> Result<Vec<Check>, Stop> {
    run_with(case, device, dit_attention()?)
}

/// [`run_on`] with the self-attention `attention` instead of `WANRT_ATTENTION`'s.
pub fn run_with(case: &Case, device: Device, attention: SelfAttention) -> Result<Vec<Check>, Stop> {
    let dit = WanDit::open(case.path("dit")?, Some(&case.path("config")?))?.to_device(device)?;
    let inputs = case.tensors("inputs")?;
    let latent = tensor(&inputs, "latent")?
        .to_dtype(DType::F32)?
        .to_device(device)?;
    let timesteps = tensor(&inputs, "timestep")?.to_f32_vec()?;
    let context = unbatch(tensor(&inputs, "context")?)?.to_device(device)?;
    let mut opts = ForwardOptions {
        attention,
        ..Default::default()
    };
    if case.str("kind")? == "dit_forward_nag" {
        let negative = unbatch(tensor(&inputs, "negative_context")?)?.to_device(device)?;
        let mut nag = NagParams::new(dit.encode_text(&[negative], false)?);
        nag.scale = case.f64("nag_scale")? as f32;
        nag.tau = case.f64("nag_tau")? as f32;
        nag.alpha = case.f64("nag_alpha")? as f32;
        opts.nag = Some(nag);
    }
    let velocity = dit
        .forward(&latent, &timesteps, &[context], &opts)?
        .to_device(Device::Cpu)?;
    let output = Output {
        name: "velocity".into(),
        dims: velocity.dims().to_vec(),
        data: velocity.to_f32_vec()?.into_iter().map(f64::from).collect(),
    };
    compare(&case.tensors("expected")?, &[output])
}
