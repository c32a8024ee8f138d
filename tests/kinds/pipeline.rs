//! `pipeline` cases: prompt → T5 → DiT with the case's solver and CFG → VAE → 8-bit frames,
//! through the public [`Pipeline`] API from the case's model files, starting from the case's
//! `x_T`. Expected: `latent`, `video` (kept for the check) and `frames` (`[F, H, W, 3]`, also
//! held to `tolerance.frames_max_abs_diff`).

use wanrt::backend::Device;
use wanrt::model::dit::AttentionChoice;
use wanrt::pipeline::{Flow, GenerateRequest, LoadOptions, ModelSource, Pipeline};
use wanrt::DType;

use super::{compare, Check, MaxAbs, Output, Stop};
use crate::common::{f64_data, tensor, Case};

/// The request a case describes, from `x_T`.
fn request(case: &Case, x_t: wanrt::Tensor) -> Result<GenerateRequest, Stop> {
    let whole = |key: &str| -> Result<usize, Stop> {
        let v = case.f64(key)?;
        if v.fract() != 0.0 || v < 0.0 {
            return Err(Stop::Fail(format!(
                "`{key}` must be a whole number, got {v}"
            )));
        }
        Ok(v as usize)
    };
    let mut req = GenerateRequest::new(case.str("prompt")?);
    req.negative_prompt = Some(case.str("negative_prompt")?.to_string());
    req.solver = case.str("solver")?.parse()?;
    req.steps = whole("steps")?;
    req.shift = case.f64("shift")?;
    req.guidance_scale = case.f64("guidance_scale")?;
    req.frames = whole("frames")?;
    req.height = whole("height")?;
    req.width = whole("width")?;
    req.seed = Some(0);
    req.latent_init = Some(x_t.to_dtype(DType::F32)?);
    Ok(req)
}

/// The case's model files.
fn source(case: &Case) -> Result<ModelSource, Stop> {
    Ok(ModelSource {
        dit: Some(case.path("dit")?),
        vae: Some(case.path("vae")?),
        t5: Some(case.path("t5")?),
        tokenizer: Some(case.path("tokenizer")?),
        dit_config: Some(case.path("dit_config")?),
        vae_config: Some(case.path("vae_config")?),
        t5_config: Some(case.path("t5_config")?),
        ..ModelSource::default()
    })
}

fn output(name: &str, dims: &[usize], data: Vec<f64>) -> Output {
    Output {
        name: name.into(),
        dims: dims.to_vec(),
        data,
    }
}

pub fn run(case: &Case) -> Result<Vec<Check>, Stop> {
    run_on(case, Device::Cpu)
}

/// [`run`] with the pipeline loaded on `device` (its plan, its exact bf16 attention on CUDA).
pub fn run_on(case: &Case, device: Device) -> Result<Vec<Check>, Stop> {
    let files = source(case)?.resolve()?;
    let options = LoadOptions {
        device,
        ..LoadOptions::default()
    };
    let pipe = Pipeline::load(&files, &[], &options)?;
    let inputs = case.tensors("inputs")?;
    let mut req = request(case, tensor(&inputs, "x_T")?.clone())?;
    req.keep_video = true;
    if device != Device::Cpu {
        req.attention = AttentionChoice::Bf16;
    }
    let g = pipe.generate(&req, &mut |_| Flow::Continue)?;
    let video = g
        .video
        .as_ref()
        .ok_or_else(|| Stop::Fail("the video was not kept".into()))?;
    let frames: Vec<f64> = g.frames.iter().map(|&v| v as f64).collect();
    let outputs = [
        output("latent", g.latent.dims(), f64_data(&g.latent)?),
        output("video", video.dims(), f64_data(video)?),
        output(
            "frames",
            &[g.frame_count, g.height, g.width, 3],
            frames.clone(),
        ),
    ];
    let expected = case.tensors("expected")?;
    let mut checks = compare(&expected, &outputs)?;
    let tol = case
        .get("tolerance")
        .and_then(|t| t.get("frames_max_abs_diff"))
        .and_then(|v| v.as_f64())
        .ok_or_else(|| Stop::Fail("no tolerance.frames_max_abs_diff".into()))?;
    let want = f64_data(tensor(&expected, "frames")?)?;
    if let Some(c) = checks.iter_mut().find(|c| c.name == "frames") {
        c.max_abs = Some(MaxAbs::of(&frames, &want, tol));
    }
    Ok(checks)
}
