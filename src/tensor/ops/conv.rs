//! Convolutions and nearest upsampling: shape checks, then [`crate::backend::cpu::conv`].

use super::nn::{f32_input, widen_weight};
use crate::backend::cpu::conv::{self, Conv3dGeom};
use crate::error::{Error, Result};
use crate::tensor::{Tensor, Weight};

impl Tensor {
    /// 3-D convolution: `self` `[B, Cin, T, H, W]`, `w` `[Cout, Cin, kt, kh, kw]` (any float
    /// dtype, widened once per call), optional `bias` `[Cout]`, symmetric zero `padding` and
    /// `stride` per axis (frames, rows, columns) -> `[B, Cout, T', H', W']` with
    /// `T' = (T + 2·pt - kt) / st + 1` etc. Causal padding is the caller's (`pad_zeros`).
    pub fn conv3d(
        &self,
        w: &Weight,
        bias: Option<&Weight>,
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Result<Tensor> {
        const OP: &str = "conv3d";
        let x = f32_input(self, OP)?;
        let &[b, cin, t, h, wd] = self.dims() else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "an input [B, Cin, T, H, W]".into(),
                got: self.shape().clone(),
            });
        };
        let &[cout, wcin, kt, kh, kw] = w.dims() else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "a weight [Cout, Cin, kt, kh, kw]".into(),
                got: w.tensor.shape().clone(),
            });
        };
        if wcin != cin {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!("a weight with {cin} input channels"),
                got: w.tensor.shape().clone(),
            });
        }
        if stride.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "{OP}: stride {stride:?} has a zero"
            )));
        }
        let g = Conv3dGeom {
            cin,
            input: [t, h, wd],
            cout,
            kernel: [kt, kh, kw],
            stride,
            padding,
        };
        let Some([ot, oh, ow]) = g.output() else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!(
                    "an input at least as large as the kernel {:?} after padding {padding:?}",
                    g.kernel
                ),
                got: self.shape().clone(),
            });
        };
        let weight = widen_weight(w, w.tensor.elem_count(), OP)?;
        let bias = bias.map(|bw| widen_weight(bw, cout, OP)).transpose()?;
        let mut out = vec![0.0; b * cout * ot * oh * ow];
        conv::conv3d(&x, b, &g, &weight, bias.as_deref(), &mut out);
        Tensor::from_f32(out, [b, cout, ot, oh, ow])
    }

    /// 2-D convolution: `self` `[B, Cin, H, W]`, `w` `[Cout, Cin, kh, kw]`, optional `bias`
    /// `[Cout]`, `stride` and symmetric zero `padding` per axis (rows, columns) ->
    /// `[B, Cout, H', W']`. Runs as [`Tensor::conv3d`] with a one-frame kernel.
    pub fn conv2d(
        &self,
        w: &Weight,
        bias: Option<&Weight>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        let &[b, cin, h, wd] = self.dims() else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "an input [B, Cin, H, W]".into(),
                got: self.shape().clone(),
            });
        };
        let &[cout, wcin, kh, kw] = w.dims() else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "a weight [Cout, Cin, kh, kw]".into(),
                got: w.tensor.shape().clone(),
            });
        };
        let w3 = Weight {
            tensor: w.tensor.reshape([cout, wcin, 1, kh, kw])?,
            scale: w.scale,
        };
        let y = self.reshape([b, cin, 1, h, wd])?.conv3d(
            &w3,
            bias,
            [1, stride[0], stride[1]],
            [0, padding[0], padding[1]],
        )?;
        let (oh, ow) = (y.dims()[3], y.dims()[4]);
        y.reshape([b, cout, oh, ow])
    }

    /// Nearest-neighbour ×2 upsampling of the last two dims (each value becomes a 2×2 block).
    pub fn upsample_nearest2x(&self) -> Result<Tensor> {
        const OP: &str = "upsample_nearest2x";
        let x = f32_input(self, OP)?;
        let dims = self.dims();
        if dims.len() < 2 {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "at least two dimensions".into(),
                got: self.shape().clone(),
            });
        }
        let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 2] = 2 * h;
        out_dims[dims.len() - 1] = 2 * w;
        let shape = crate::tensor::Shape::new(out_dims)?;
        let mut out = vec![0.0; x.len() * 4];
        conv::upsample_nearest2x(&x, &mut out, h, w);
        Tensor::from_f32(out, shape)
    }
}
