//! `lora_merge` cases: the case's LoRA merged at its strength into the DiT checkpoint (any
//! format the loader reads), then one forward; also the merged weights the case names as
//! `merged.<canonical key>`.

use wanrt::lora::{self, Lora, StoreAs};
use wanrt::model::dit::{ForwardOptions, WanDit};
use wanrt::DType;

use super::{compare, Check, Output, Stop};
use crate::common::{tensor, Case};

pub fn run(case: &Case) -> Result<Vec<Check>, Stop> {
    let (weights, cfg) = WanDit::read_weights(case.path("dit")?, Some(&case.path("config")?))?;
    let adapter = Lora::open(case.path("lora")?)?;
    let strength = case.f64("strength")? as f32;
    let (merged, _) = lora::merge(weights, &[(&adapter, strength)], StoreAs::Same)?;
    let expected = case.tensors("expected")?;
    let mut outputs = Vec::new();
    for name in expected.keys() {
        if let Some(key) = name.strip_prefix("merged.") {
            let w = merged
                .get(key)
                .ok_or_else(|| format!("no merged weight `{key}`"))?;
            outputs.push(Output::of(name.clone(), &w.to_f32()?)?);
        }
    }
    let dit = WanDit::new(merged, cfg)?;
    let inputs = case.tensors("inputs")?;
    let latent = tensor(&inputs, "latent")?.to_dtype(DType::F32)?;
    let timesteps = tensor(&inputs, "timestep")?.to_f32_vec()?;
    let ctx = tensor(&inputs, "context")?.to_dtype(DType::F32)?;
    let d = ctx.dims().to_vec();
    if d.len() != 3 || d[0] != 1 {
        return Err(Stop::Fail(format!("context must be [1, L, D], got {d:?}")));
    }
    let context = ctx.reshape([d[1], d[2]])?;
    let velocity = dit.forward(&latent, &timesteps, &[context], &ForwardOptions::default())?;
    outputs.push(Output::of("velocity".into(), &velocity)?);
    compare(&expected, &outputs)
}
