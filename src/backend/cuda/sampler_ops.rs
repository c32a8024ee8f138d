//! The CUDA side of [`crate::tensor::ops::sampler`]: f32 latents, the kernels of
//! `kernels/sampler.cu`. The op layer has checked shapes, dtypes (f32) and devices; each entry
//! allocates its outputs on the inputs' device and launches one kernel (CFG-Zero*: two).

use std::sync::Arc;

use super::kernels::sampler::{SamplerKernel, CFG_ZERO_STAR_CHUNK};
use super::{CudaDevice, CudaStorage};
use crate::error::{Error, Result};
use crate::tensor::ops::sampler::{DpmStep, UniPcHistory, UniPcOut, UniPcPredictor, UniPcStep};
use crate::tensor::{DType, Shape, Tensor};

/// The device memory of an f32 CUDA input of `op`.
fn storage<'t>(op: &'static str, x: &'t Tensor) -> Result<&'t CudaStorage> {
    if x.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType {
            op,
            dtype: x.dtype(),
        });
    }
    x.cuda_storage(op)
}

/// A new buffer of `n` f32 values on `dev`.
fn alloc_f32(dev: &Arc<CudaDevice>, n: usize) -> Result<CudaStorage> {
    dev.alloc(n * std::mem::size_of::<f32>())
}

/// `storage` as an f32 tensor of `shape`.
fn tensor(storage: CudaStorage, shape: &Shape) -> Tensor {
    Tensor::from_cuda(storage, DType::F32, shape.clone())
}

/// Launches a uniform sampler kernel over `x`'s elements with `inputs` (f32 tensors of `x`'s
/// size) and `outputs` new buffers; returns them as tensors of `x`'s shape.
fn run(
    op: &'static str,
    kernel: SamplerKernel,
    x: &Tensor,
    inputs: &[&Tensor],
    outputs: usize,
    flags: &[i32],
    coefficients: &[f64],
) -> Result<Vec<Tensor>> {
    let n = x.elem_count();
    let dev = storage(op, x)?.device();
    let stores = inputs
        .iter()
        .map(|t| storage(op, t))
        .collect::<Result<Vec<_>>>()?;
    let views = stores
        .iter()
        .map(|s| s.view::<f32>(n))
        .collect::<Result<Vec<_>>>()?;
    let mut outs = (0..outputs)
        .map(|_| alloc_f32(dev, n))
        .collect::<Result<Vec<_>>>()?;
    {
        let mut out_views = outs
            .iter_mut()
            .map(|s| s.view_mut::<f32>(n))
            .collect::<Result<Vec<_>>>()?;
        let mut out_refs: Vec<_> = out_views.iter_mut().collect();
        let in_refs: Vec<_> = views.iter().collect();
        dev.kernels()?.sampler(
            dev.stream(),
            kernel,
            &in_refs,
            &mut out_refs,
            n,
            flags,
            coefficients,
        )?;
    }
    Ok(outs.into_iter().map(|s| tensor(s, x.shape())).collect())
}

fn missing(op: &str, what: &str) -> Error {
    Error::InvalidArgument(format!("{op}: the step needs {what}"))
}

/// One UniPC step on the device (`unipc_step_f32`).
pub fn unipc_step(
    sample: &Tensor,
    velocity: &Tensor,
    history: Option<UniPcHistory<'_>>,
    c: &UniPcStep,
) -> Result<UniPcOut> {
    const OP: &str = "unipc_step";
    let (mut flags, mut k) = ([0i32; 2], [0.0f64; 11]);
    k[0] = c.sigma;
    if let Some(cc) = &c.corrector {
        flags[0] = 1;
        k[1..4].copy_from_slice(&[cc.c_x, cc.c_m, cc.c_d]);
        if let Some(s) = cc.second_order {
            flags[0] = 2;
            k[4..7].copy_from_slice(&[s.rho0, s.rho1, s.rk]);
        }
    }
    match c.predictor {
        UniPcPredictor::X0 => {}
        UniPcPredictor::First { c_x, c_m } => {
            flags[1] = 1;
            k[7..9].copy_from_slice(&[c_x, c_m]);
        }
        UniPcPredictor::Second { c_x, c_m, c_d, rk } => {
            flags[1] = 2;
            k[7..11].copy_from_slice(&[c_x, c_m, c_d, rk]);
        }
    }
    let needs_history = flags[0] != 0 || flags[1] == 2;
    // Inputs the flags leave unread are passed as the sample (a valid buffer of the right size).
    let (last, prev, prev2) = match history {
        Some(h) => (h.last_sample, h.x0_prev, h.x0_prev2.unwrap_or(sample)),
        None if needs_history => return Err(missing(OP, "the previous steps' history")),
        None => (sample, sample, sample),
    };
    if flags[0] == 2 && history.and_then(|h| h.x0_prev2).is_none() {
        return Err(missing(OP, "the x0 prediction before last"));
    }
    let mut out = run(
        OP,
        SamplerKernel::UniPc,
        sample,
        &[sample, velocity, last, prev, prev2],
        3,
        &flags,
        &k,
    )?
    .into_iter();
    let mut next = || out.next().expect("three outputs");
    Ok(UniPcOut {
        sample: next(),
        x0: next(),
        start: next(),
    })
}

/// One DPM++ 2M step on the device (`dpm_step_f32`); returns `(sample, x0)`.
pub fn dpm_step(
    sample: &Tensor,
    velocity: &Tensor,
    x0_prev: Option<&Tensor>,
    c: &DpmStep,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "dpm_step";
    let (c_half, inv_r0) = c.second.map_or((0.0, 0.0), |s| (s.c_half, s.inv_r0));
    let prev = match (c.second, x0_prev) {
        (Some(_), None) => return Err(missing(OP, "the previous x0 prediction")),
        (_, p) => p.unwrap_or(sample),
    };
    let out = run(
        OP,
        SamplerKernel::Dpm,
        sample,
        &[sample, velocity, prev],
        2,
        &[c.second.is_some() as i32],
        &[c.c_x as f64, c.sigma, c.c_m, c_half, inv_r0],
    )?;
    let [s, m]: [Tensor; 2] = out.try_into().expect("two outputs");
    Ok((s, m))
}

/// One Euler step on the device (`euler_step_f32`).
pub fn euler_step(sample: &Tensor, velocity: &Tensor, dt: f64) -> Result<Tensor> {
    let out = run(
        "euler_step",
        SamplerKernel::Euler,
        sample,
        &[sample, velocity],
        1,
        &[],
        &[dt],
    )?;
    Ok(out.into_iter().next().expect("one output"))
}

/// One LCM step on the device (`lcm_step_f32`).
pub fn lcm_step(
    sample: &Tensor,
    velocity: &Tensor,
    sigma: f64,
    renoise: Option<(f64, &Tensor)>,
) -> Result<Tensor> {
    let (next, eps) = renoise.unwrap_or((0.0, sample));
    let out = run(
        "lcm_step",
        SamplerKernel::Lcm,
        sample,
        &[sample, velocity, eps],
        1,
        &[renoise.is_some() as i32],
        &[sigma, next],
    )?;
    Ok(out.into_iter().next().expect("one output"))
}

/// Classifier-free guidance on the device (`cfg_f32`).
pub fn cfg(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    let out = run(
        "cfg",
        SamplerKernel::Cfg,
        cond,
        &[cond, uncond],
        1,
        &[],
        &[scale],
    )?;
    Ok(out.into_iter().next().expect("one output"))
}

/// CFG-Zero* on the device: the chunk sums and the combination, the scalar kept on the device.
pub fn cfg_zero_star(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    const OP: &str = "cfg_zero_star";
    let n = cond.elem_count();
    let (c, u) = (storage(OP, cond)?, storage(OP, uncond)?);
    let dev = c.device();
    let chunks = n.div_ceil(CFG_ZERO_STAR_CHUNK);
    let mut partials = dev.alloc(2 * chunks * std::mem::size_of::<f64>())?;
    let mut out = alloc_f32(dev, n)?;
    dev.kernels()?.cfg_zero_star(
        dev.stream(),
        &c.view::<f32>(n)?,
        &u.view::<f32>(n)?,
        &mut partials.view_mut::<f64>(2 * chunks)?,
        &mut out.view_mut::<f32>(n)?,
        n,
        scale,
    )?;
    Ok(tensor(out, cond.shape()))
}

/// Zeros of `x`'s shape (f32) on its device.
pub fn zeros_like(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "zeros_like";
    let n = x.elem_count();
    let dev = storage(OP, x)?.device();
    let mut out = alloc_f32(dev, n)?;
    zero(dev, &mut out, n)?;
    Ok(tensor(out, x.shape()))
}

/// Clears the first `n` f32-sized values of `s`.
fn zero(dev: &Arc<CudaDevice>, s: &mut CudaStorage, n: usize) -> Result<()> {
    let mut view = s.view_mut::<f32>(n)?;
    super::driver("clearing a CUDA buffer", || {
        dev.stream().memset_zeros(&mut view)
    })
}

/// The first non-finite value of `x`: one 8-byte flag read back (and `x` itself only when the
/// flag reports a value).
pub fn first_non_finite(x: &Tensor) -> Result<Option<f64>> {
    const OP: &str = "first_non_finite";
    let n = x.elem_count();
    let s = storage(OP, x)?;
    let dev = s.device();
    let mut flag = alloc_f32(dev, 2)?;
    zero(dev, &mut flag, 2)?;
    dev.kernels()?.first_non_finite(
        dev.stream(),
        &s.view::<f32>(n)?,
        &mut flag.view_mut::<u64>(1)?,
        n,
    )?;
    let bytes = flag.download()?;
    let flag = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if flag == 0 {
        return Ok(None);
    }
    let index = n - flag as usize;
    let all = s.download()?;
    let at = &all[4 * index..4 * index + 4];
    Ok(Some(
        f32::from_le_bytes(at.try_into().expect("4 bytes")) as f64
    ))
}

/// Elements `0..shape.elem_count()` of stream `stream_id` of `seed`'s noise, generated on device
/// `ordinal` (`philox_normal_f32`).
pub fn seeded_normal(ordinal: usize, seed: u64, stream_id: u64, shape: &Shape) -> Result<Tensor> {
    let dev = CudaDevice::get(ordinal)?;
    let n = shape.elem_count();
    let mut out = alloc_f32(&dev, n)?;
    dev.kernels()?.philox_normal(
        dev.stream(),
        &mut out.view_mut::<f32>(n)?,
        n,
        seed,
        stream_id,
    )?;
    Ok(tensor(out, shape))
}
