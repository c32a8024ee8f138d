//! `lora_train_step` cases: the flow-matching loss of one sample at the case's `sigma` (timestep
//! `σ·1000`) with the case's LoRA as the trainable network, and the gradient of every
//! `lora_down` / `lora_up` (expected as `grad.<musubi key>`).

use wanrt::lora::Lora;
use wanrt::model::dit::WanDit;
use wanrt::train::{self, musubi_name, LoraNetwork, NoiseLevel};
use wanrt::DType;

use super::{compare, Check, Output, Stop};
use crate::common::{tensor, Case};

pub fn run(case: &Case) -> Result<Vec<Check>, Stop> {
    let dit = WanDit::open(case.path("dit")?, Some(&case.path("config")?))?;
    let net = LoraNetwork::from_lora(&Lora::open(case.path("lora")?)?)?;
    let inputs = case.tensors("inputs")?;
    let x0 = tensor(&inputs, "x0")?.to_dtype(DType::F32)?;
    let noise = tensor(&inputs, "noise")?.to_dtype(DType::F32)?;
    let ctx = tensor(&inputs, "context")?.to_dtype(DType::F32)?;
    let d = ctx.dims().to_vec();
    if d.len() != 3 || d[0] != 1 {
        return Err(Stop::Fail(format!("context must be [1, L, D], got {d:?}")));
    }
    let sigma = case.f64("sigma")? as f32;
    let level = NoiseLevel {
        sigma,
        timestep: sigma * 1000.0,
    };
    let context = ctx.reshape([d[1], d[2]])?;
    let (loss, grads) = train::loss_and_grads(&dit, &net, &x0, &noise, &[level], &[context])?;
    let mut outputs = vec![Output {
        name: "loss".into(),
        dims: vec![1],
        data: vec![loss],
    }];
    for (module, g) in &grads {
        let key = musubi_name(module);
        outputs.push(Output::of(format!("grad.{key}.lora_down.weight"), &g.down)?);
        outputs.push(Output::of(format!("grad.{key}.lora_up.weight"), &g.up)?);
    }
    compare(&case.tensors("expected")?, &outputs)
}
