//! `vae_decode` and `vae_encode` cases: the case's VAE checkpoint (any layout and dtype) decodes
//! its normalized latent to video, or encodes its video to the normalized posterior mean.

use wanrt::backend::Device;
use wanrt::model::vae::{DecodeOptions, WanVae};
use wanrt::{DType, Tensor};

use super::{compare, Check, Output, Stop};
use crate::common::{tensor, Case};

fn output(name: &str, t: &Tensor) -> Result<Output, Stop> {
    Ok(Output {
        name: name.into(),
        dims: t.dims().to_vec(),
        data: t
            .to_device(Device::Cpu)?
            .to_f32_vec()?
            .into_iter()
            .map(f64::from)
            .collect(),
    })
}

pub fn run(case: &Case) -> Result<Vec<Check>, Stop> {
    run_on(case, Device::Cpu)
}

/// Runs the case with the VAE and its input on `device`.
pub fn run_on(case: &Case, device: Device) -> Result<Vec<Check>, Stop> {
    let vae = WanVae::open(case.path("vae")?, Some(&case.path("config")?))?.to_device(device)?;
    let inputs = case.tensors("inputs")?;
    let input = |name: &str| -> Result<Tensor, Stop> {
        Ok(tensor(&inputs, name)?
            .to_dtype(DType::F32)?
            .to_device(device)?)
    };
    let out = match case.kind.as_str() {
        "vae_decode" => output(
            "video",
            &vae.decode(&input("latent")?, &DecodeOptions::default())?,
        )?,
        _ => output("latent", &vae.encode(&input("video")?)?)?,
    };
    compare(&case.tensors("expected")?, &[out])
}
