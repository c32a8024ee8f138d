//! Launcher of `kernels/conv3d.cu`: the VAE's 3-D convolution as an implicit GEMM on the
//! tensor cores.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{check_len, launch, product, to_i32, Kernels};
use crate::backend::cpu::conv::Conv3dGeom;
use crate::error::{Error, Result};

/// The kernel's `Geometry` argument: [`Conv3dGeom`] and its output size as `i32`s, in the
/// order of the C struct.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Geometry([i32; 17]);

// SAFETY: a plain `#[repr(C)]` array of `i32`, laid out as the kernel's struct of 17 ints.
unsafe impl DeviceRepr for Geometry {}

/// Output channels and positions per block (the kernel's `BM` and `BN`).
const TILE: usize = 64;

impl Kernels {
    /// `out = conv3d(x, w) + bias` for `batch` inputs `x` `[batch, cin, t, h, w]` bf16, the
    /// weight `w` `[cout, cin·kt·kh·kw]` bf16, `bias` `[cout]` bf16 and `out`
    /// `[batch, cout, ot, oh, ow]` bf16: products summed in f32 on the tensor cores, the bias
    /// added in f32, the sum rounded to bf16 once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv3d(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        w: &CudaView<'_, bf16>,
        bias: &CudaView<'_, bf16>,
        out: &mut CudaViewMut<'_, bf16>,
        batch: usize,
        g: &Conv3dGeom,
    ) -> Result<()> {
        const OP: &str = "conv3d";
        let Some(o) = g.output() else {
            return Err(Error::InvalidArgument(format!(
                "{OP}: the kernel {:?} does not fit the padded input {:?}",
                g.kernel, g.input
            )));
        };
        let positions = product(OP, &[batch, o[0], o[1], o[2]])?;
        check_len(
            OP,
            "x",
            x.len(),
            product(OP, &[batch, g.cin, g.input.iter().product()])?,
        )?;
        check_len(OP, "w", w.len(), product(OP, &[g.cout, g.depth()])?)?;
        check_len(OP, "bias", bias.len(), g.cout)?;
        check_len(OP, "out", out.len(), product(OP, &[positions, g.cout])?)?;
        // The kernel holds the GEMM depth in an i32 (offsets are 64-bit).
        to_i32(OP, "depth", g.depth())?;
        if positions == 0 || g.cout == 0 {
            return Ok(());
        }
        let mut sizes = [0i32; 17];
        let all = [g.cin, g.input[0], g.input[1], g.input[2], g.cout]
            .into_iter()
            .chain(g.kernel)
            .chain(g.stride)
            .chain(g.padding)
            .chain(o);
        for (s, v) in sizes.iter_mut().zip(all) {
            *s = to_i32(OP, "size", v)?;
        }
        let batch_i32 = to_i32(OP, "batch", batch)?;
        let blocks_n = u32::try_from(positions.div_ceil(TILE))
            .map_err(|_| Error::InvalidArgument(format!("{OP}: {positions} positions")))?;
        let blocks_m = u32::try_from(g.cout.div_ceil(TILE))
            .ok()
            .filter(|&b| b <= 65_535)
            .ok_or_else(|| Error::InvalidArgument(format!("{OP}: {} channels", g.cout)))?;
        let cfg = LaunchConfig {
            grid_dim: (blocks_n, blocks_m, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let geometry = Geometry(sizes);
        let mut args = stream.launch_builder(&self.conv3d);
        args.arg(x)
            .arg(w)
            .arg(bias)
            .arg(out)
            .arg(&geometry)
            .arg(&batch_i32);
        // SAFETY: the arguments match `conv3d_implicit_gemm_bf16` and the lengths were checked.
        unsafe { launch(OP, &mut args, cfg) }
    }
}
