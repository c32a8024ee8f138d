//! `vae_decode` and `vae_encode` cases: the case's VAE checkpoint (any layout and dtype) decodes
//! its normalized latent to video, or encodes its video to the normalized posterior mean.

use wanrt::model::vae::{DecodeOptions, WanVae};
use wanrt::{DType, Tensor};

use super::{compare, Check, Output, Stop};
use crate::common::{tensor, Case};

fn output(name: &str, t: &Tensor) -> Result<Output, Stop> {
    Ok(Output {
        name: name.into(),
        dims: t.dims().to_vec(),
        data: t.to_f32_vec()?.into_iter().map(f64::from).collect(),
    })
}

pub fn run(case: &Case) -> Result<Vec<Check>, Stop> {
    let vae = WanVae::open(case.path("vae")?, Some(&case.path("config")?))?;
    let inputs = case.tensors("inputs")?;
    let out = match case.kind.as_str() {
        "vae_decode" => {
            let latent = tensor(&inputs, "latent")?.to_dtype(DType::F32)?;
            output("video", &vae.decode(&latent, &DecodeOptions::default())?)?
        }
        _ => {
            let video = tensor(&inputs, "video")?.to_dtype(DType::F32)?;
            output("latent", &vae.encode(&video)?)?
        }
    };
    compare(&case.tensors("expected")?, &[out])
}
