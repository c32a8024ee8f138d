//! `sampler` cases: a solver, a schedule and a guidance method driven by the toy elementwise
//! models the fixtures state in their `model` field, in f64 like the reference, through the
//! pipeline's own [`Sampler`] driver. Expected: `timesteps` (what the model is called with),
//! `sigmas` (the grid, with or without the final 0), `states` (the sample after each step) and
//! `final`.

use wanrt::backend::Device;
use wanrt::sampler::{
    Flow, Guidance, NoiseFn, Pass, PassRequest, Sampler, SamplerConfig, Schedule, SolverKind,
    StepInfo, VelocityModel,
};
use wanrt::{DType, Tensor};

use super::{compare, Check, Output, Stop};
use crate::common::{f64_data, tensor, Case};

/// The fixtures' conditional toy model: `v = tanh(x)·(1+s) + 0.1·cos(3s)·x`, `s = t/1000`.
fn toy_cond(x: &[f64], s: f64, v: &mut [f64]) {
    let c = 0.1 * (3.0 * s).cos();
    v.iter_mut()
        .zip(x)
        .for_each(|(v, &x)| *v = x.tanh() * (1.0 + s) + c * x);
}

/// The fixtures' unconditional toy model: `v = 0.5·tanh(0.7x)·(1+0.5s) − 0.05x`.
fn toy_uncond(x: &[f64], s: f64, v: &mut [f64]) {
    v.iter_mut()
        .zip(x)
        .for_each(|(v, &x)| *v = 0.5 * (0.7 * x).tanh() * (1.0 + 0.5 * s) - 0.05 * x);
}

/// The fixtures' toy models as a [`VelocityModel`]; records the timestep of each step it is
/// called at.
struct Toy {
    timesteps: Vec<Option<f64>>,
}

impl VelocityModel for Toy {
    fn evaluate(
        &mut self,
        latent: &Tensor,
        at: &StepInfo,
        passes: &mut [PassRequest<'_>],
    ) -> wanrt::Result<()> {
        self.timesteps[at.step] = Some(at.timestep);
        let s = at.timestep / 1000.0;
        let x = host_f64(latent)?;
        for p in passes {
            let mut v = vec![0.0; x.len()];
            match p.pass {
                Pass::Cond => toy_cond(&x, s, &mut v),
                Pass::Uncond => toy_uncond(&x, s, &mut v),
            }
            p.velocity = Some(like(&v, latent)?);
        }
        Ok(())
    }
}

fn schedule(case: &Case, kind: SolverKind, shift: f64) -> Result<Schedule, Stop> {
    Ok(
        if let Some(list) = case.opt_f64_list("denoising_step_list")? {
            Schedule::distilled(&list, shift)?
        } else if let Some(sigmas) = case.opt_f64_list("sigmas")? {
            Schedule::from_sigmas(&sigmas, shift)?
        } else {
            let steps = case.f64("steps")?;
            if steps.fract() != 0.0 || steps < 0.0 {
                return Err(Stop::Fail(format!(
                    "steps must be a whole number, got {steps}"
                )));
            }
            kind.schedule(steps as usize, shift)?
        },
    )
}

fn guidance(case: &Case) -> Result<Guidance, Stop> {
    let scale = case.opt_f64("guidance_scale")?.unwrap_or(1.0);
    let g = match case.get("guidance").map(|g| g.as_str().unwrap_or("?")) {
        None | Some("cfg") => Guidance::Cfg { scale },
        Some("cfg_zero_star") => Guidance::CfgZeroStar {
            scale,
            zero_steps: case.opt_f64("zero_steps")?.map(|z| z as usize),
        },
        Some(other) => {
            return Err(Stop::Skip(format!(
                "guidance `{other}` is not implemented yet"
            )))
        }
    };
    g.validate()?;
    Ok(g)
}

/// A latent's values in f64 on the host (the CPU's f64 latent as it is).
fn host_f64(t: &Tensor) -> wanrt::Result<Vec<f64>> {
    let t = t.to_device(Device::Cpu)?.to_dtype(DType::F64)?;
    Ok(t.as_slice::<f64>()?.into_owned())
}

/// `values` as a tensor shaped, typed and placed as `latent`.
fn like(values: &[f64], latent: &Tensor) -> wanrt::Result<Tensor> {
    Tensor::from_slice(values, latent.shape().clone())?
        .to_dtype(latent.dtype())?
        .to_device(latent.device())
}

/// Hands out `noise[i]` (the case's stored fresh noise) at step `i`.
fn stored_noise(noise: Vec<f64>) -> NoiseFn {
    Box::new(move |i, like: &Tensor| {
        let n = like.elem_count();
        let src = noise.get(i * n..(i + 1) * n).ok_or_else(|| {
            wanrt::Error::InvalidArgument(format!("the stored noise has no entry for step {i}"))
        })?;
        self::like(src, like)
    })
}

pub fn run(case: &Case) -> Result<Vec<Check>, Stop> {
    run_on(case, Device::Cpu)
}

/// [`run`] with the latent on `device`: the host's f64, or f32 on a CUDA device (the toy
/// models still computed on the host in f64).
pub fn run_on(case: &Case, device: Device) -> Result<Vec<Check>, Stop> {
    let kind: SolverKind = case.str("solver")?.parse()?;
    let schedule = schedule(case, kind, case.f64("shift")?)?;
    let config = SamplerConfig::new(kind, schedule.clone(), guidance(case)?);
    let inputs = case.tensors("inputs")?;
    let expected = case.tensors("expected")?;
    let x_t = tensor(&inputs, "x_T")?;
    let mut x = Tensor::from_slice(&f64_data(x_t)?, x_t.dims())?;
    if device != Device::Cpu {
        x = x.to_dtype(DType::F32)?.to_device(device)?;
    }
    let mut sampler = match inputs.get("noise") {
        Some(noise) => Sampler::with_noise(config, stored_noise(f64_data(noise)?))?,
        None => Sampler::new(config)?,
    };

    let steps = schedule.steps();
    let mut model = Toy {
        timesteps: vec![None; steps],
    };
    let mut states = Vec::with_capacity(steps * x.elem_count());
    sampler.run(&mut model, &mut x, |p| {
        states.extend(host_f64(p.latent).expect("a readable latent"));
        Flow::Continue
    })?;

    // References list the sigma grid either with its final 0 or without it.
    let mut sigmas = schedule.sigmas.clone();
    if expected.get("sigmas").is_some_and(|t| t.dims() == [steps]) {
        sigmas.pop();
    }
    // The timesteps the model was called with; a zero-init step calls no model and has the
    // schedule's.
    let timesteps = model
        .timesteps
        .iter()
        .zip(&schedule.timesteps)
        .map(|(called, t)| called.unwrap_or(*t))
        .collect();
    let dims = x_t.dims().to_vec();
    let outputs = [
        Output {
            name: "timesteps".into(),
            dims: vec![steps],
            data: timesteps,
        },
        Output {
            name: "sigmas".into(),
            dims: vec![sigmas.len()],
            data: sigmas,
        },
        Output {
            name: "states".into(),
            dims: [&[steps][..], &dims].concat(),
            data: states,
        },
        Output {
            name: "final".into(),
            dims,
            data: host_f64(&x)?,
        },
    ];
    compare(&expected, &outputs)
}
