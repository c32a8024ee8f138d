//! Launchers of `kernels/sampler.cu`: the fused solver steps, the guidance combinations, the
//! non-finite check and the seeded noise. Every kernel of the file takes its f32 inputs, its
//! outputs, the element count (`i64`), then its integer flags and its f64 coefficients, in that
//! order; [`SamplerKernel`] names one and [`Kernels::sampler`] checks and launches it.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};

use super::{check_len, elementwise_config, launch, Kernels};
use crate::error::{Error, Result};

/// Elements per CFG-Zero* partial sum (`CFG_ZERO_STAR_CHUNK` of the kernel file, the CPU's
/// `PARTIAL`).
pub(crate) const CFG_ZERO_STAR_CHUNK: usize = 1 << 14;

/// A kernel of `kernels/sampler.cu` with the (x, …, out, …, n, flags, coefficients) layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SamplerKernel {
    /// Inputs x, v, x_last, x0_prev, x0_prev2; outputs sample, x0, start; flags corrector and
    /// predictor; 11 coefficients.
    UniPc,
    /// Inputs x, v, x0_prev; outputs sample, x0; flag second order; coefficients `c_x` (an f32
    /// value, narrowed exactly in the kernel), σ, c_m, c_half, 1/r0.
    Dpm,
    /// Inputs x, v; output sample; coefficient dt.
    Euler,
    /// Inputs x, v, ε; output sample; flag re-noise; coefficients σ, next σ.
    Lcm,
    /// Inputs cond, uncond; output guided; coefficient scale.
    Cfg,
}

impl SamplerKernel {
    /// (inputs, outputs, flags, coefficients).
    fn arity(self) -> (usize, usize, usize, usize) {
        match self {
            SamplerKernel::UniPc => (5, 3, 2, 11),
            SamplerKernel::Dpm => (3, 2, 1, 5),
            SamplerKernel::Euler => (2, 1, 0, 1),
            SamplerKernel::Lcm => (3, 1, 1, 2),
            SamplerKernel::Cfg => (2, 1, 0, 1),
        }
    }

    fn name(self) -> &'static str {
        match self {
            SamplerKernel::UniPc => "unipc_step_f32",
            SamplerKernel::Dpm => "dpm_step_f32",
            SamplerKernel::Euler => "euler_step_f32",
            SamplerKernel::Lcm => "lcm_step_f32",
            SamplerKernel::Cfg => "cfg_f32",
        }
    }
}

impl Kernels {
    /// Launches `kernel` over `n` elements: every input and output holds `n` f32 values, and
    /// the flags and coefficients are as many as the kernel takes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sampler(
        &self,
        stream: &Arc<CudaStream>,
        kernel: SamplerKernel,
        inputs: &[&CudaView<'_, f32>],
        outputs: &mut [&mut CudaViewMut<'_, f32>],
        n: usize,
        flags: &[i32],
        coefficients: &[f64],
    ) -> Result<()> {
        let op = kernel.name();
        let want = kernel.arity();
        let got = (inputs.len(), outputs.len(), flags.len(), coefficients.len());
        if got != want {
            return Err(Error::InvalidArgument(format!(
                "{op}: (inputs, outputs, flags, coefficients) {got:?}, the kernel takes {want:?}"
            )));
        }
        for x in inputs {
            check_len(op, "input", x.len(), n)?;
        }
        for o in outputs.iter() {
            check_len(op, "output", o.len(), n)?;
        }
        if n == 0 {
            return Ok(());
        }
        let n_i64 = n as i64;
        let function = match kernel {
            SamplerKernel::UniPc => &self.unipc_step,
            SamplerKernel::Dpm => &self.dpm_step,
            SamplerKernel::Euler => &self.euler_step,
            SamplerKernel::Lcm => &self.lcm_step,
            SamplerKernel::Cfg => &self.cfg,
        };
        let mut args = stream.launch_builder(function);
        for x in inputs {
            args.arg(*x);
        }
        for o in outputs.iter_mut() {
            args.arg(&mut **o);
        }
        args.arg(&n_i64);
        for f in flags {
            args.arg(f);
        }
        for c in coefficients {
            args.arg(c);
        }
        // SAFETY: the arity matches the kernel's parameter list (checked above), and every
        // buffer holds the `n` values the kernel reads or writes.
        unsafe { launch(op, &mut args, elementwise_config(n)) }
    }

    /// CFG-Zero*'s guided velocity: the chunk sums into `partials` (two f64 per
    /// [`CFG_ZERO_STAR_CHUNK`]-element chunk), then the combination, which adds them in order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cfg_zero_star(
        &self,
        stream: &Arc<CudaStream>,
        cond: &CudaView<'_, f32>,
        uncond: &CudaView<'_, f32>,
        partials: &mut CudaViewMut<'_, f64>,
        out: &mut CudaViewMut<'_, f32>,
        n: usize,
        scale: f64,
    ) -> Result<()> {
        const OP: &str = "cfg_zero_star";
        check_len(OP, "cond", cond.len(), n)?;
        check_len(OP, "uncond", uncond.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        let chunks = n.div_ceil(CFG_ZERO_STAR_CHUNK);
        check_len(OP, "partials", partials.len(), 2 * chunks)?;
        if n == 0 {
            return Ok(());
        }
        let n_i64 = n as i64;
        {
            let mut args = stream.launch_builder(&self.cfg_zero_star_partials);
            args.arg(cond).arg(uncond).arg(&mut *partials).arg(&n_i64);
            // SAFETY: the arguments match `cfg_zero_star_partials_f32`; the lengths were checked.
            unsafe { launch(OP, &mut args, elementwise_config(chunks)) }?;
        }
        let mut args = stream.launch_builder(&self.cfg_zero_star_combine);
        args.arg(cond)
            .arg(uncond)
            .arg(&mut *partials)
            .arg(out)
            .arg(&n_i64)
            .arg(&scale);
        // SAFETY: the arguments match `cfg_zero_star_combine_f32`; the lengths were checked.
        unsafe { launch(OP, &mut args, elementwise_config(n)) }
    }

    /// Sets `flag` (zeroed by the caller) to `n − i` for the first non-finite `x[i]`; it stays 0
    /// when all `n` values are finite.
    pub(crate) fn first_non_finite(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, f32>,
        flag: &mut CudaViewMut<'_, u64>,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "first_non_finite";
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "flag", flag.len(), 1)?;
        if n == 0 {
            return Ok(());
        }
        let n_i64 = n as i64;
        let mut args = stream.launch_builder(&self.first_non_finite);
        args.arg(x).arg(flag).arg(&n_i64);
        // SAFETY: the arguments match `first_non_finite_f32`; the lengths were checked.
        unsafe { launch(OP, &mut args, elementwise_config(n)) }
    }

    /// Elements `0..n` of stream `stream` of `seed`'s Gaussian noise
    /// (`crate::sampler::fill_normal`'s bits).
    pub(crate) fn philox_normal(
        &self,
        stream: &Arc<CudaStream>,
        out: &mut CudaViewMut<'_, f32>,
        n: usize,
        seed: u64,
        stream_id: u64,
    ) -> Result<()> {
        const OP: &str = "philox_normal";
        check_len(OP, "out", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let n_i64 = n as i64;
        let words = [
            seed as u32,
            (seed >> 32) as u32,
            stream_id as u32,
            (stream_id >> 32) as u32,
        ];
        let mut args = stream.launch_builder(&self.philox_normal);
        args.arg(out).arg(&n_i64);
        for w in &words {
            args.arg(w);
        }
        // SAFETY: the arguments match `philox_normal_f32`; the length was checked.
        unsafe { launch(OP, &mut args, elementwise_config(n.div_ceil(4))) }
    }
}
