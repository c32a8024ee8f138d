//! The sampler's fused ops: one solver step, one guidance combination, the non-finite check and
//! seeded noise, each one pass over the latent. They take f32 or f64 tensors on the CPU
//! (the arithmetic of `crate::sampler`'s solvers, in f64 per element, rounded to the tensor's
//! dtype) and f32 tensors on a CUDA device (the kernels of `kernels/sampler.cu`, the same
//! operations in the same order without contraction, so the bits agree). The per-step scalar
//! coefficients are computed on the host by the solvers and passed in.

use std::borrow::Cow;

use super::on_cuda;
use crate::backend::cuda::sampler_ops as cuda;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::sampler::{fill_normal, kernels as cpu, Real, Stream};
use crate::tensor::{DType, Shape, Tensor};

/// UniPC's corrector (UniC) re-doing the previous step with the new x0 prediction `m`:
/// `(c_x·x_last − c_m·m_prev) − c_d·D`, with `D = ½(m − m_prev)` at first order and
/// `D = ρ0·(m_prev2 − m_prev)/r_k + ρ1·(m − m_prev)` at second order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniPcCorrector {
    /// The coefficient of the previous start sample.
    pub c_x: f64,
    /// The coefficient of the previous x0 prediction.
    pub c_m: f64,
    /// The coefficient of the difference term.
    pub c_d: f64,
    /// The second-order terms, when the last predictor was second order.
    pub second_order: Option<UniPcSecondOrder>,
}

/// The second-order terms of UniPC's corrector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniPcSecondOrder {
    /// ρ0 of the 2×2 solve.
    pub rho0: f64,
    /// ρ1 of the 2×2 solve.
    pub rho1: f64,
    /// `r_k`, the ratio of the λ steps.
    pub rk: f64,
}

/// UniPC's predictor (UniP) from the (corrected) sample `x` and the x0 prediction `m`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UniPcPredictor {
    /// The last step to σ = 0: the x0 prediction itself.
    X0,
    /// First order: `c_x·x − c_m·m`.
    First {
        /// The coefficient of the sample.
        c_x: f64,
        /// The coefficient of the x0 prediction.
        c_m: f64,
    },
    /// Second order: `(c_x·x − c_m·m) − c_d·(½·(m_prev − m)/r_k)`.
    Second {
        /// The coefficient of the sample.
        c_x: f64,
        /// The coefficient of the x0 prediction.
        c_m: f64,
        /// The coefficient of the difference term.
        c_d: f64,
        /// `r_k`, the ratio of the λ steps.
        rk: f64,
    },
}

/// The coefficients of one UniPC step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniPcStep {
    /// σ of the sample: the x0 prediction is `m = x − σ·v`.
    pub sigma: f64,
    /// The corrector (every step but the first).
    pub corrector: Option<UniPcCorrector>,
    /// The predictor.
    pub predictor: UniPcPredictor,
}

/// What a UniPC step reads of the previous steps.
#[derive(Debug, Clone, Copy)]
pub struct UniPcHistory<'a> {
    /// The (corrected) sample the last predictor started from.
    pub last_sample: &'a Tensor,
    /// The x0 prediction of the previous step.
    pub x0_prev: &'a Tensor,
    /// The x0 prediction of the step before (a second-order corrector reads it).
    pub x0_prev2: Option<&'a Tensor>,
}

/// The results of a UniPC step.
#[derive(Debug, Clone)]
pub struct UniPcOut {
    /// The sample at the next σ.
    pub sample: Tensor,
    /// This step's x0 prediction.
    pub x0: Tensor,
    /// The (corrected) sample the predictor started from: the next step's `last_sample`.
    pub start: Tensor,
}

/// The coefficients of one DPM++ 2M step: `(c_x·x)₃₂ − c_m·m [− c_half·(inv_r0·(m − m_prev))]`,
/// the sample term an f32 product (upstream casts the sample to float32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpmStep {
    /// σ of the sample: the x0 prediction is `m = x − σ·v`.
    pub sigma: f64,
    /// The f32 coefficient of the sample.
    pub c_x: f32,
    /// The coefficient of the x0 prediction.
    pub c_m: f64,
    /// The second-order term, on the steps that have it.
    pub second: Option<DpmSecondOrder>,
}

/// The second-order term of a DPM++ 2M step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpmSecondOrder {
    /// `½·c_m`, rounded as upstream (in f32).
    pub c_half: f64,
    /// `1/r0`.
    pub inv_r0: f64,
}

/// Checks that every tensor has the shape and dtype of `x` and that they share a device;
/// `true` when that device is a CUDA device (which takes f32 only).
fn check(op: &'static str, x: &Tensor, others: &[&Tensor]) -> Result<bool> {
    for t in others {
        if t.shape() != x.shape() {
            return Err(Error::ShapeMismatch {
                op,
                expected: format!("{}", x.shape()),
                got: t.shape().clone(),
            });
        }
        if t.dtype() != x.dtype() {
            return Err(Error::UnsupportedDType {
                op,
                dtype: t.dtype(),
            });
        }
    }
    let all: Vec<&Tensor> = std::iter::once(x).chain(others.iter().copied()).collect();
    let gpu = on_cuda(op, &all)?;
    let ok = if gpu {
        x.dtype() == DType::F32
    } else {
        matches!(x.dtype(), DType::F32 | DType::F64)
    };
    if !ok {
        return Err(Error::UnsupportedDType {
            op,
            dtype: x.dtype(),
        });
    }
    Ok(gpu)
}

/// The host elements of a CPU tensor of `T`'s dtype.
fn host<T: Real>(t: &Tensor) -> Result<Cow<'_, [T]>> {
    t.as_slice::<T>()
}

/// Calls the generic CPU path `$f` with the element type of `$dtype` (f32 or f64, as [`check`]
/// made sure).
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F64 => $f::<f64>($($arg),*),
            _ => $f::<f32>($($arg),*),
        }
    };
}

/// One UniPC step (x0 prediction, corrector, predictor) in one pass over the latent.
pub fn unipc_step(
    sample: &Tensor,
    velocity: &Tensor,
    history: Option<UniPcHistory<'_>>,
    c: &UniPcStep,
) -> Result<UniPcOut> {
    let mut inputs = vec![velocity];
    if let Some(h) = &history {
        inputs.extend([h.last_sample, h.x0_prev]);
        inputs.extend(h.x0_prev2);
    }
    if check("unipc_step", sample, &inputs)? {
        return cuda::unipc_step(sample, velocity, history, c);
    }
    by_dtype!(sample.dtype(), unipc_host(sample, velocity, history, c))
}

fn unipc_host<T: Real>(
    sample: &Tensor,
    velocity: &Tensor,
    history: Option<UniPcHistory<'_>>,
    c: &UniPcStep,
) -> Result<UniPcOut> {
    let (x, v) = (host::<T>(sample)?, host::<T>(velocity)?);
    let hist = match history {
        Some(h) => Some((
            host::<T>(h.last_sample)?,
            host::<T>(h.x0_prev)?,
            h.x0_prev2.map(host::<T>).transpose()?,
        )),
        None => None,
    };
    let slices = hist.as_ref().map(|(l, p, p2)| cpu::UniPcSlices {
        last_sample: l,
        x0_prev: p,
        x0_prev2: p2.as_deref(),
    });
    let (out, x0, start) = cpu::unipc_step(&x, &v, slices, c)?;
    let shape = sample.shape();
    Ok(UniPcOut {
        sample: T::into_tensor(out, shape.clone())?,
        x0: T::into_tensor(x0, shape.clone())?,
        start: match start {
            Some(s) => T::into_tensor(s, shape.clone())?,
            None => sample.clone(),
        },
    })
}

/// One DPM++ 2M step in one pass; returns `(sample, x0)`. `x0_prev` is needed on the steps
/// with the second-order term.
pub fn dpm_step(
    sample: &Tensor,
    velocity: &Tensor,
    x0_prev: Option<&Tensor>,
    c: &DpmStep,
) -> Result<(Tensor, Tensor)> {
    let mut inputs = vec![velocity];
    inputs.extend(x0_prev);
    if check("dpm_step", sample, &inputs)? {
        return cuda::dpm_step(sample, velocity, x0_prev, c);
    }
    by_dtype!(sample.dtype(), dpm_host(sample, velocity, x0_prev, c))
}

fn dpm_host<T: Real>(
    sample: &Tensor,
    velocity: &Tensor,
    x0_prev: Option<&Tensor>,
    c: &DpmStep,
) -> Result<(Tensor, Tensor)> {
    let prev = x0_prev.map(host::<T>).transpose()?;
    let (x, v) = (host::<T>(sample)?, host::<T>(velocity)?);
    let (out, m) = cpu::dpm_step(&x, &v, prev.as_deref(), c)?;
    let shape = sample.shape();
    Ok((
        T::into_tensor(out, shape.clone())?,
        T::into_tensor(m, shape.clone())?,
    ))
}

/// One flow-matching Euler step `x + dt·v` (the sample taken in f32, as upstream).
pub fn euler_step(sample: &Tensor, velocity: &Tensor, dt: f64) -> Result<Tensor> {
    if check("euler_step", sample, &[velocity])? {
        return cuda::euler_step(sample, velocity, dt);
    }
    by_dtype!(sample.dtype(), euler_host(sample, velocity, dt))
}

fn euler_host<T: Real>(sample: &Tensor, velocity: &Tensor, dt: f64) -> Result<Tensor> {
    let out = cpu::euler_step(&host::<T>(sample)?, &host::<T>(velocity)?, dt);
    T::into_tensor(out, sample.shape().clone())
}

/// One LCM step: the x0 prediction `x − σ·v`, re-noised to `(1 − next)·x0 + next·ε` when
/// `renoise` gives `(next, ε)`.
pub fn lcm_step(
    sample: &Tensor,
    velocity: &Tensor,
    sigma: f64,
    renoise: Option<(f64, &Tensor)>,
) -> Result<Tensor> {
    let mut inputs = vec![velocity];
    inputs.extend(renoise.map(|(_, eps)| eps));
    if check("lcm_step", sample, &inputs)? {
        return cuda::lcm_step(sample, velocity, sigma, renoise);
    }
    by_dtype!(sample.dtype(), lcm_host(sample, velocity, sigma, renoise))
}

fn lcm_host<T: Real>(
    sample: &Tensor,
    velocity: &Tensor,
    sigma: f64,
    renoise: Option<(f64, &Tensor)>,
) -> Result<Tensor> {
    let eps = renoise.map(|(_, e)| host::<T>(e)).transpose()?;
    let renoise = renoise.zip(eps.as_deref()).map(|((next, _), e)| (next, e));
    let out = cpu::lcm_step(&host::<T>(sample)?, &host::<T>(velocity)?, sigma, renoise);
    T::into_tensor(out, sample.shape().clone())
}

/// Classifier-free guidance `u + g·(c − u)`.
pub fn cfg(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    if check("cfg", cond, &[uncond])? {
        return cuda::cfg(cond, uncond, scale);
    }
    by_dtype!(cond.dtype(), cfg_host(cond, uncond, scale, cpu::cfg))
}

/// CFG-Zero*: `s*·u + g·(c − s*·u)` with `s* = ⟨c, u⟩ / (‖u‖² + 1e-8)` summed in f64 over fixed
/// chunks of 2¹⁴ elements in chunk order ([`crate::sampler::cfg_zero_star_scale`]), so the
/// scalar has the same bits on every thread count and on the CUDA device, where it never
/// leaves the device.
pub fn cfg_zero_star(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    if check("cfg_zero_star", cond, &[uncond])? {
        return cuda::cfg_zero_star(cond, uncond, scale);
    }
    by_dtype!(
        cond.dtype(),
        cfg_host(cond, uncond, scale, cpu::cfg_zero_star)
    )
}

fn cfg_host<T: Real>(
    cond: &Tensor,
    uncond: &Tensor,
    scale: f64,
    combine: fn(&[T], &[T], f64) -> Vec<T>,
) -> Result<Tensor> {
    let out = combine(&host::<T>(cond)?, &host::<T>(uncond)?, scale);
    T::into_tensor(out, cond.shape().clone())
}

/// Zeros of `x`'s shape and dtype on its device.
pub fn zeros_like(x: &Tensor) -> Result<Tensor> {
    if check("zeros_like", x, &[])? {
        return cuda::zeros_like(x);
    }
    Ok(Tensor::zeros(x.shape().clone(), x.dtype()))
}

/// The first NaN or infinity of `x` (in element order), widened to f64; `None` when every
/// value is finite. On a CUDA device this reads one 4-byte flag back to the host (and the
/// whole tensor only when there is a non-finite value to report).
pub fn first_non_finite(x: &Tensor) -> Result<Option<f64>> {
    if check("first_non_finite", x, &[])? {
        return cuda::first_non_finite(x);
    }
    by_dtype!(x.dtype(), non_finite_host(x))
}

fn non_finite_host<T: Real>(x: &Tensor) -> Result<Option<f64>> {
    Ok(cpu::first_non_finite(&host::<T>(x)?))
}

/// Elements `0..shape.elem_count()` of stream `stream` of `seed`'s Gaussian noise
/// ([`crate::sampler::fill_normal`]) as a tensor of `dtype` (f32, or f64 on the CPU) on
/// `device`. The CUDA device generates them itself (`kernels/sampler.cu`), with the same bits.
pub fn seeded_normal(
    seed: u64,
    stream: Stream,
    shape: &Shape,
    dtype: DType,
    device: Device,
) -> Result<Tensor> {
    match (device, dtype) {
        (Device::Cuda(ordinal), DType::F32) => {
            cuda::seeded_normal(ordinal, seed, stream.id(), shape)
        }
        (Device::Cpu, DType::F32) => normal_host::<f32>(seed, stream, shape),
        (Device::Cpu, DType::F64) => normal_host::<f64>(seed, stream, shape),
        _ => Err(Error::UnsupportedDType {
            op: "seeded_normal",
            dtype,
        }),
    }
}

fn normal_host<T: Real>(seed: u64, stream: Stream, shape: &Shape) -> Result<Tensor> {
    let mut data = vec![T::default(); shape.elem_count()];
    fill_normal(seed, stream, 0, &mut data);
    T::into_tensor(data, shape.clone())
}
