//! Launchers of `kernels/patchify.cu`: latent video to patch tokens and back (patch `(1, ph, pw)`).

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaStream, CudaView, CudaViewMut, PushKernelArg};
use half::bf16;

use super::{check_len, elementwise_config, launch, product, to_i32, Kernels};
use crate::error::{Error, Result};

/// The sizes of a patchify or unpatchify: a latent `[channels, frames, height, width]` cut into
/// patches of `1 × patch[0] × patch[1]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PatchDims {
    /// Latent channels.
    pub channels: usize,
    /// Latent frames.
    pub frames: usize,
    /// Latent height (a multiple of `patch[0]`).
    pub height: usize,
    /// Latent width (a multiple of `patch[1]`).
    pub width: usize,
    /// Patch height and width.
    pub patch: [usize; 2],
}

impl PatchDims {
    /// Checks the sizes; returns (tokens, features per token, kernel sizes as i32).
    fn check(&self, op: &str) -> Result<(usize, usize, [i32; 6])> {
        let [ph, pw] = self.patch;
        if ph == 0 || pw == 0 || !self.height.is_multiple_of(ph) || !self.width.is_multiple_of(pw) {
            return Err(Error::InvalidArgument(format!(
                "{op}: latent {}x{} is not cut by patch {ph}x{pw}",
                self.height, self.width
            )));
        }
        let tokens = product(op, &[self.frames, self.height / ph, self.width / pw])?;
        let features = product(op, &[self.channels, ph, pw])?;
        product(op, &[tokens, features])?;
        let sizes = [
            to_i32(op, "channels", self.channels)?,
            to_i32(op, "frames", self.frames)?,
            to_i32(op, "height", self.height)?,
            to_i32(op, "width", self.width)?,
            to_i32(op, "patch height", ph)?,
            to_i32(op, "patch width", pw)?,
        ];
        Ok((tokens, features, sizes))
    }
}

impl Kernels {
    /// Cuts the latent `x` (`[channels, frames, height, width]` f32) into tokens: `out` is
    /// `[frames·(height/ph)·(width/pw), channels·ph·pw]` bf16, tokens in `(f, hh, ww)` order and
    /// features in `(c, kh, kw)` order (the patch embedding's weight layout).
    pub(crate) fn patchify(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, bf16>,
        dims: PatchDims,
    ) -> Result<()> {
        self.rearrange("patchify", &self.patchify, stream, x, out, dims)
    }

    /// The inverse of the DiT head's layout: `x` is `[tokens, ph·pw·channels]` f32 with features
    /// in `(kh, kw, c)` order, `out` the latent `[channels, frames, height, width]` f32 with
    /// `out[c, f, hh·ph + kh, ww·pw + kw] = x[token(f, hh, ww), (kh·pw + kw)·channels + c]`.
    pub(crate) fn unpatchify(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, f32>,
        dims: PatchDims,
    ) -> Result<()> {
        self.rearrange("unpatchify", &self.unpatchify, stream, x, out, dims)
    }

    /// Checks the sizes and launches `function`, one thread per value of `x` and `out`.
    fn rearrange<O>(
        &self,
        op: &str,
        function: &CudaFunction,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, O>,
        dims: PatchDims,
    ) -> Result<()> {
        let (tokens, features, s) = dims.check(op)?;
        let n = tokens * features;
        check_len(op, "x", x.len(), n)?;
        check_len(op, "out", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let mut args = stream.launch_builder(function);
        args.arg(x).arg(out);
        for v in &s {
            args.arg(v);
        }
        // SAFETY: both patch kernels take (x, out, C, F, H, W, ph, pw) and the lengths were
        // checked.
        unsafe { launch(op, &mut args, elementwise_config(n)) }
    }
}
