//! Convolutions and nearest upsampling: shape checks, then [`crate::backend::cpu::conv`].

use super::nn::{f32_input, widen_weight, with_weights};
use super::on_cuda;
use crate::backend::cpu::compute::rounds_to_bf16;
use crate::backend::cpu::conv::{self, Conv3dGeom};
use crate::backend::cuda::ops as cuda;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor, Weight};

impl Tensor {
    /// 3-D convolution: `self` `[B, Cin, T, H, W]`, `w` `[Cout, Cin, kt, kh, kw]` (any float
    /// dtype, widened once per call), optional `bias` `[Cout]`, symmetric zero `padding` and
    /// `stride` per axis (frames, rows, columns) -> `[B, Cout, T', H', W']` with
    /// `T' = (T + 2·pt - kt) / st + 1` etc. Causal padding is the caller's (`pad_zeros`).
    /// Computed in the backend's compute dtype, like [`Tensor::linear`].
    pub fn conv3d(
        &self,
        w: &Weight,
        bias: Option<&Weight>,
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Result<Tensor> {
        const OP: &str = "conv3d";
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
        let shape = Shape::new([b, cout, ot, oh, ow])?;
        if on_cuda(OP, &with_weights(self, [Some(w), bias]))? {
            return cuda::conv3d(self, w, bias, &g, &shape);
        }
        let x = f32_input(self, OP)?;
        let weight = widen_weight(w, w.tensor.elem_count(), OP)?;
        let bias = bias.map(|bw| widen_weight(bw, cout, OP)).transpose()?;
        let mut out = vec![0.0; shape.elem_count()];
        let conv = if rounds_to_bf16()? {
            conv::conv3d_bf16
        } else {
            conv::conv3d
        };
        conv(&x, b, &g, &weight, bias.as_deref(), &mut out);
        Tensor::from_f32(out, shape)
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
        let shape = Shape::new(out_dims)?;
        if on_cuda(OP, &[self])? {
            return cuda::upsample_nearest2x(self, &shape);
        }
        let x = f32_input(self, OP)?;
        let mut out = vec![0.0; x.len() * 4];
        conv::upsample_nearest2x(&x, &mut out, h, w);
        Tensor::from_f32(out, shape)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::backend::cpu::conv::test_support::{assert_close, conv3d_reference, values};
    use crate::backend::cpu::conv::Conv3dGeom;
    use crate::error::Error;
    use crate::tensor::{DType, Tensor, Weight};

    pub(crate) fn tensor(dims: &[usize], seed: u32) -> Tensor {
        Tensor::from_f32(values(dims.iter().product(), seed), dims).unwrap()
    }

    /// A weight stored as `dtype`; fp8 carries a scale, as ComfyUI scaled fp8 does.
    pub(crate) fn weight(dims: &[usize], seed: u32, dtype: DType) -> Weight {
        let t = tensor(dims, seed).to_dtype(dtype).unwrap();
        let scale = matches!(dtype, DType::F8E4M3 | DType::F8E5M2).then_some(0.75);
        Weight { tensor: t, scale }
    }

    fn check3d(
        xd: [usize; 5],
        wd: [usize; 5],
        stride: [usize; 3],
        padding: [usize; 3],
        dtype: DType,
    ) {
        let x = tensor(&xd, 11);
        let w = weight(&wd, 12, dtype);
        let b = weight(&[wd[0]], 13, dtype);
        let y = x.conv3d(&w, Some(&b), stride, padding).unwrap();
        let g = Conv3dGeom {
            cin: xd[1],
            input: [xd[2], xd[3], xd[4]],
            cout: wd[0],
            kernel: [wd[2], wd[3], wd[4]],
            stride,
            padding,
        };
        let [ot, oh, ow] = g.output().unwrap();
        assert_eq!(y.dims(), &[xd[0], wd[0], ot, oh, ow]);
        // The reference sees the dequantized weight values.
        let wf = w.to_f32().unwrap();
        let bf = b.to_f32().unwrap();
        let want = conv3d_reference(
            x.f32_data().unwrap(),
            xd[0],
            &g,
            wf.f32_data().unwrap(),
            Some(bf.f32_data().unwrap()),
        );
        assert_close(
            y.f32_data().unwrap(),
            &want,
            1e-5,
            &format!("{xd:?} {wd:?} {dtype}"),
        );
    }

    #[test]
    fn conv3d_matches_reference_for_weight_dtypes_and_vae_shapes() {
        for dtype in [
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::F8E4M3,
            DType::F8E5M2,
        ] {
            // ResidualBlock conv after causal padding (time padded by the caller).
            check3d(
                [1, 4, 5, 6, 7],
                [3, 4, 3, 3, 3],
                [1, 1, 1],
                [0, 1, 1],
                dtype,
            );
            // Shortcut 1×1×1, time_conv (3,1,1) with stride 2, patch embedding (1,2,2)/(1,2,2).
            check3d(
                [2, 5, 3, 4, 5],
                [6, 5, 1, 1, 1],
                [1, 1, 1],
                [0, 0, 0],
                dtype,
            );
            check3d(
                [1, 3, 7, 4, 3],
                [3, 3, 3, 1, 1],
                [2, 1, 1],
                [0, 0, 0],
                dtype,
            );
            check3d(
                [1, 4, 2, 6, 10],
                [8, 4, 1, 2, 2],
                [1, 2, 2],
                [0, 0, 0],
                dtype,
            );
        }
    }

    #[test]
    fn conv2d_is_conv3d_with_one_frame() {
        for (stride, padding, k) in [
            ([1, 1], [1, 1], 3),
            ([2, 2], [0, 0], 3),
            ([1, 1], [0, 0], 1),
            ([2, 1], [1, 0], 3),
        ] {
            let x = tensor(&[2, 3, 9, 8], 21);
            let w = weight(&[4, 3, k, k], 22, DType::BF16);
            let y = x.conv2d(&w, None, stride, padding).unwrap();
            let g = Conv3dGeom {
                cin: 3,
                input: [1, 9, 8],
                cout: 4,
                kernel: [1, k, k],
                stride: [1, stride[0], stride[1]],
                padding: [0, padding[0], padding[1]],
            };
            let [_, oh, ow] = g.output().unwrap();
            assert_eq!(y.dims(), &[2, 4, oh, ow]);
            let wf = w.to_f32().unwrap();
            let want = conv3d_reference(x.f32_data().unwrap(), 2, &g, wf.f32_data().unwrap(), None);
            assert_close(y.f32_data().unwrap(), &want, 1e-5, "conv2d");
        }
    }

    #[test]
    fn conv_errors_are_typed() {
        let x = tensor(&[1, 3, 2, 4, 4], 1);
        let w = weight(&[2, 3, 3, 3, 3], 2, DType::F32);
        let shape_err =
            |r: crate::error::Result<Tensor>| matches!(r, Err(Error::ShapeMismatch { .. }));
        // Bad ranks.
        assert!(shape_err(
            x.reshape([3, 2, 4, 4])
                .unwrap()
                .conv3d(&w, None, [1; 3], [1; 3])
        ));
        assert!(shape_err(x.conv3d(
            &weight(&[2, 3, 3, 3], 2, DType::F32),
            None,
            [1; 3],
            [1; 3]
        )));
        assert!(shape_err(x.conv2d(&w, None, [1; 2], [1; 2])));
        // Channel mismatch, wrong bias length.
        assert!(shape_err(x.conv3d(
            &weight(&[2, 4, 3, 3, 3], 2, DType::F32),
            None,
            [1; 3],
            [1; 3]
        )));
        assert!(shape_err(x.conv3d(
            &w,
            Some(&weight(&[3], 3, DType::F32)),
            [1; 3],
            [1; 3]
        )));
        // Kernel larger than the padded input (2 frames, kernel 3, no time padding).
        assert!(shape_err(x.conv3d(&w, None, [1; 3], [0, 1, 1])));
        assert!(x.conv3d(&w, None, [1; 3], [1, 0, 0]).is_ok());
        // Zero stride, non-f32 activations.
        assert!(matches!(
            x.conv3d(&w, None, [1, 0, 1], [1; 3]),
            Err(Error::InvalidArgument(_))
        ));
        let xb = x.to_dtype(DType::BF16).unwrap();
        assert!(matches!(
            xb.conv3d(&w, None, [1; 3], [1; 3]),
            Err(Error::UnsupportedDType { .. })
        ));
        assert!(matches!(
            xb.upsample_nearest2x(),
            Err(Error::UnsupportedDType { .. })
        ));
        assert!(shape_err(tensor(&[4], 1).upsample_nearest2x()));
    }

    #[test]
    fn upsample_doubles_the_last_two_dims() {
        let x = tensor(&[2, 3, 2, 3, 5], 5);
        let y = x.upsample_nearest2x().unwrap();
        assert_eq!(y.dims(), &[2, 3, 2, 6, 10]);
        let (xv, yv) = (x.f32_data().unwrap(), y.f32_data().unwrap());
        for p in 0..12 {
            for i in 0..6 {
                for j in 0..10 {
                    assert_eq!(yv[(p * 6 + i) * 10 + j], xv[(p * 3 + i / 2) * 5 + j / 2]);
                }
            }
        }
        assert_eq!(
            tensor(&[3, 1], 1).upsample_nearest2x().unwrap().dims(),
            &[6, 2]
        );
    }
}
