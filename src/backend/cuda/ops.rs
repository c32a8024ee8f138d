//! The CUDA side of the op dispatch. Every op of [`crate::tensor::ops`] checks its shapes and
//! dtypes once, then calls the function of the same name here when its inputs live on a CUDA
//! device (`crate::tensor::ops::on_cuda`); inputs are on one device, outputs stay there.
//!
//! The kernels behind these entries come from `kernels/*.cu` (the `cuda-kernels` launchers) and
//! cuBLASLt. Activations on the device are bf16 (the contract of the CUDA backend), or f32 where
//! the reference keeps f32 (time embedding, modulation, the residual stream): the element-wise
//! ops, reductions, softmax and RoPE take either and compute in f32; a binary op with an f32
//! operand gives f32. The shape ops move any dtype. Norm weights and biases are widened to f32 on
//! the device, as the reference keeps them. An entry (or a case
//! of one) whose kernel is not wired yet returns `not_on_cuda`'s typed error naming what is
//! missing; nothing here falls back to the host silently.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use half::bf16;

use super::gemm::{self, GemmDims};
use super::gemm_fp8::{self, Fp8Operands};
use super::kernels::attention_q8::attention_q8_workspace_bytes;
use super::kernels::convert::Fp8Format;
use super::kernels::qk_norm_rope::RopeTables;
use super::kernels::strided_copy::CopyPlan;
use super::kernels::Kernels;
use super::{not_on_cuda, CudaDevice, CudaStorage};
use crate::backend::cpu::attention::AttnDims;
use crate::backend::cpu::attention_q8::{Q8Path, Q8Scheme};
use crate::backend::cpu::conv::Conv3dGeom;
use crate::backend::cpu::elementwise::{BinaryOp, UnaryOp};
use crate::backend::cpu::reduce::ReduceOp;
use crate::backend::gemm_plan::{gemm_path, Epilogue, GemmPath};
use crate::backend::q8_kernel::Q8Kernel;
use crate::error::{Error, Result};
use crate::tensor::ops::AttentionParams;
use crate::tensor::{DType, Shape, Tensor, Weight};

/// The device and storage of a CUDA input of `op`, checking that it holds `dtype`.
fn input<'t>(
    op: &'static str,
    x: &'t Tensor,
    dtype: DType,
) -> Result<(&'t Arc<CudaDevice>, &'t CudaStorage)> {
    if x.dtype() != dtype {
        return Err(Error::UnsupportedDType {
            op,
            dtype: x.dtype(),
        });
    }
    let s = x.cuda_storage(op)?;
    Ok((s.device(), s))
}

/// A new device buffer for `n` values of `dtype` on `dev`.
fn output(dev: &Arc<CudaDevice>, dtype: DType, n: usize) -> Result<CudaStorage> {
    let bytes = n.checked_mul(dtype.size_in_bytes()).ok_or_else(|| {
        Error::InvalidArgument(format!("{n} values of {dtype:?} overflow a buffer size"))
    })?;
    dev.alloc(bytes)
}

/// The value of `w` on its device in `dtype` (bf16 or f32): as stored when it is `dtype`, f32
/// and bf16 converted, fp8 decoded with its scale (through bf16, which holds every fp8 value
/// exactly; the weight-only fp8 path).
fn weight_values(op: &'static str, w: &Weight, dtype: DType) -> Result<Tensor> {
    match (w.dtype(), w.scale) {
        (from, None) if from == dtype => Ok(w.tensor.clone()),
        (DType::F8E4M3 | DType::F8E5M2, scale) => {
            fp8_to_bf16(&w.tensor, scale.unwrap_or(1.0))?.to_dtype(dtype)
        }
        (DType::F32 | DType::BF16, None) => convert(&w.tensor, dtype),
        (from, Some(_)) => Err(not_on_cuda(&format!(
            "scaled {from:?} weights (a scale is applied to fp8 only)"
        ))),
        (from, None) => Err(Error::UnsupportedDType { op, dtype: from }),
    }
}

/// The f32 values of a norm weight or bias of `n` values on the device ([`weight_values`]);
/// `None` gives `fill` everywhere (uploaded: `n` small values per call).
fn weight_f32(
    op: &'static str,
    dev: &Arc<CudaDevice>,
    w: Option<&Weight>,
    n: usize,
    fill: f32,
) -> Result<Tensor> {
    let Some(w) = w else {
        let host = Tensor::from_f32(vec![fill; n], [n])?;
        return host.to_device(crate::backend::Device::Cuda(dev.ordinal()));
    };
    if w.tensor.elem_count() != n {
        return Err(Error::ShapeMismatch {
            op,
            expected: format!("{n} values"),
            got: w.tensor.shape().clone(),
        });
    }
    weight_values(op, w, DType::F32)
}

/// The rows and the size of the last dim of `x`.
fn rows_cols(x: &Tensor) -> (usize, usize) {
    let cols = x.dims().last().copied().unwrap_or(1);
    (x.elem_count().checked_div(cols).unwrap_or(0), cols)
}

/// `x` (fp8 codes) decoded and multiplied by `scale`, rounded to bf16 once.
fn fp8_to_bf16(x: &Tensor, scale: f32) -> Result<Tensor> {
    const OP: &str = "fp8_to_bf16";
    let format = match x.dtype() {
        DType::F8E4M3 => Fp8Format::E4M3Fn,
        DType::F8E5M2 => Fp8Format::E5M2,
        dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
    };
    let src = x.cuda_storage(OP)?;
    let dev = src.device();
    let n = x.elem_count();
    let mut out = output(dev, DType::BF16, n)?;
    dev.kernels()?.fp8_to_bf16(
        dev.stream(),
        &src.view::<u8>(n)?,
        format,
        scale,
        &mut out.view_mut::<bf16>(n)?,
        n,
    )?;
    Ok(Tensor::from_cuda(out, DType::BF16, x.shape().clone()))
}

/// The dtype of an activation input of `op`: bf16 or f32 (the dtypes CUDA activations have).
fn activation(op: &'static str, x: &Tensor) -> Result<DType> {
    match x.dtype() {
        d @ (DType::BF16 | DType::F32) => Ok(d),
        dtype => Err(Error::UnsupportedDType { op, dtype }),
    }
}

/// `a op b` with numpy broadcasting into `out`, for bf16 and f32 operands in any mix, computed
/// in f32: the result is f32 when either operand is (the modulation and the residual stream
/// stay f32), bf16 when both are.
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, out: &Shape) -> Result<Tensor> {
    const OP: &str = "binary";
    let (da, db) = (activation(OP, a)?, activation(OP, b)?);
    let (sa, sb) = (a.cuda_storage(OP)?, b.cuda_storage(OP)?);
    let (na, nb, n) = (a.elem_count(), b.elem_count(), out.elem_count());
    let dev = sa.device();
    let dtype = if da == DType::F32 || db == DType::F32 {
        DType::F32
    } else {
        DType::BF16
    };
    let mut o = output(dev, dtype, n)?;
    let (k, s) = (dev.kernels()?, dev.stream());
    let (ad, bd, od) = (a.dims(), b.dims(), out.dims());
    match (da, db) {
        (DType::BF16, DType::BF16) => k.binary(
            s,
            op,
            &sa.view::<bf16>(na)?,
            ad,
            &sb.view::<bf16>(nb)?,
            bd,
            &mut o.view_mut::<bf16>(n)?,
            od,
        ),
        (DType::BF16, _) => k.binary(
            s,
            op,
            &sa.view::<bf16>(na)?,
            ad,
            &sb.view::<f32>(nb)?,
            bd,
            &mut o.view_mut::<f32>(n)?,
            od,
        ),
        (_, DType::BF16) => k.binary(
            s,
            op,
            &sa.view::<f32>(na)?,
            ad,
            &sb.view::<bf16>(nb)?,
            bd,
            &mut o.view_mut::<f32>(n)?,
            od,
        ),
        _ => k.binary(
            s,
            op,
            &sa.view::<f32>(na)?,
            ad,
            &sb.view::<f32>(nb)?,
            bd,
            &mut o.view_mut::<f32>(n)?,
            od,
        ),
    }?;
    Ok(Tensor::from_cuda(o, dtype, out.clone()))
}

/// `op(x)` elementwise for bf16 or f32 `x` (every [`UnaryOp`], affine and clamp included),
/// computed in f32, the result in `x`'s dtype.
pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "unary";
    let dtype = activation(OP, x)?;
    let src = x.cuda_storage(OP)?;
    let dev = src.device();
    let n = x.elem_count();
    let mut out = output(dev, dtype, n)?;
    let (k, s) = (dev.kernels()?, dev.stream());
    if dtype == DType::BF16 {
        k.unary(
            s,
            op,
            &src.view::<bf16>(n)?,
            &mut out.view_mut::<bf16>(n)?,
            n,
        )?;
    } else {
        k.unary(s, op, &src.view::<f32>(n)?, &mut out.view_mut::<f32>(n)?, n)?;
    }
    Ok(Tensor::from_cuda(out, dtype, x.shape().clone()))
}

/// The reduction `op` over `dim` (kept with size 1) of bf16 or f32 `x`, accumulated in f32, the
/// result in `x`'s dtype.
pub fn reduce(op: ReduceOp, x: &Tensor, dim: usize) -> Result<Tensor> {
    const OP: &str = "reduce";
    let dtype = activation(OP, x)?;
    let src = x.cuda_storage(OP)?;
    let dev = src.device();
    let d = x.dims();
    let (outer, n, inner) = (
        d[..dim].iter().product::<usize>(),
        d[dim],
        d[dim + 1..].iter().product::<usize>(),
    );
    let mut dims = d.to_vec();
    dims[dim] = 1;
    let shape = Shape::new(dims)?;
    let (total, m) = (x.elem_count(), shape.elem_count());
    let mut out = output(dev, dtype, m)?;
    let (k, s) = (dev.kernels()?, dev.stream());
    if dtype == DType::BF16 {
        let (xv, mut ov) = (src.view::<bf16>(total)?, out.view_mut::<bf16>(m)?);
        k.reduce(s, op, &xv, &mut ov, outer, n, inner)?;
    } else {
        let (xv, mut ov) = (src.view::<f32>(total)?, out.view_mut::<f32>(m)?);
        k.reduce(s, op, &xv, &mut ov, outer, n, inner)?;
    }
    Ok(Tensor::from_cuda(out, dtype, shape))
}

/// Softmax over the last dim of bf16 or f32 `x`, in f32, the result in `x`'s dtype.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "softmax_last";
    let dtype = activation(OP, x)?;
    let src = x.cuda_storage(OP)?;
    let dev = src.device();
    let (rows, cols) = rows_cols(x);
    let n = x.elem_count();
    let mut out = output(dev, dtype, n)?;
    let (k, s) = (dev.kernels()?, dev.stream());
    if dtype == DType::BF16 {
        let (xv, mut ov) = (src.view::<bf16>(n)?, out.view_mut::<bf16>(n)?);
        k.softmax_last(s, &xv, &mut ov, rows, cols)?;
    } else {
        let (xv, mut ov) = (src.view::<f32>(n)?, out.view_mut::<f32>(n)?);
        k.softmax_last(s, &xv, &mut ov, rows, cols)?;
    }
    Ok(Tensor::from_cuda(out, dtype, x.shape().clone()))
}

/// Layer norm over the last dim of bf16 or f32 `x` with an optional affine (a missing weight is
/// 1, a missing bias 0); statistics and affine in f32, the output in `x`'s dtype (bf16 rounded
/// once; f32 for the residual stream, as the reference keeps it).
pub fn layer_norm(x: &Tensor, w: Option<&Weight>, b: Option<&Weight>, eps: f32) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let dtype = activation(OP, x)?;
    let src = x.cuda_storage(OP)?;
    let dev = src.device();
    let (rows, cols) = rows_cols(x);
    let weight = weight_f32(OP, dev, w, cols, 1.0)?;
    let bias = weight_f32(OP, dev, b, cols, 0.0)?;
    let n = x.elem_count();
    let mut out = output(dev, dtype, n)?;
    let (k, s) = (dev.kernels()?, dev.stream());
    let wv = weight.cuda_storage(OP)?.view::<f32>(cols)?;
    let bv = bias.cuda_storage(OP)?.view::<f32>(cols)?;
    if dtype == DType::BF16 {
        let (xv, mut ov) = (src.view::<bf16>(n)?, out.view_mut::<bf16>(n)?);
        k.layer_norm_affine(s, &xv, &wv, &bv, &mut ov, rows, cols, eps)?;
    } else {
        let (xv, mut ov) = (src.view::<f32>(n)?, out.view_mut::<f32>(n)?);
        k.layer_norm_affine(s, &xv, &wv, &bv, &mut ov, rows, cols, eps)?;
    }
    Ok(Tensor::from_cuda(out, dtype, x.shape().clone()))
}

/// RMS norm over the last dim of bf16 `x` with an optional gain (missing: 1), through the q/k
/// norm kernel without RoPE: statistics in f32, the normalised value rounded to bf16 before the
/// f32 gain (as the DiT's reference does), the output rounded to bf16 once. The kernel works on
/// channel pairs, so an odd last dim is refused.
pub fn rms_norm(x: &Tensor, w: Option<&Weight>, eps: f32) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    let (dev, src) = input(OP, x, DType::BF16)?;
    let (rows, cols) = rows_cols(x);
    if !cols.is_multiple_of(2) {
        return Err(not_on_cuda(&format!("rms_norm over an odd dim ({cols})")));
    }
    let weight = weight_f32(OP, dev, w, cols, 1.0)?;
    let n = x.elem_count();
    let mut out = output(dev, DType::BF16, n)?;
    dev.kernels()?.rms_norm_rope(
        dev.stream(),
        &src.view::<bf16>(n)?,
        &weight.cuda_storage(OP)?.view::<f32>(cols)?,
        None,
        &mut out.view_mut::<bf16>(n)?,
        rows,
        1,
        cols,
        eps,
    )?;
    Ok(Tensor::from_cuda(out, DType::BF16, x.shape().clone()))
}

/// The Wan VAE's channel RMS norm of bf16 `[B, C, ...]` (shapes checked by the caller): the
/// per-position norm and the scaling in f32 with `gamma` widened to f32, the output rounded to
/// bf16 once.
pub fn channel_rms_norm(x: &Tensor, gamma: &Weight) -> Result<Tensor> {
    const OP: &str = "channel_rms_norm";
    let (dev, src) = input(OP, x, DType::BF16)?;
    let (b, c) = (x.dims()[0], x.dims()[1]);
    let positions = x.dims()[2..].iter().product();
    let g = weight_f32(OP, dev, Some(gamma), c, 1.0)?;
    let n = x.elem_count();
    let mut out = output(dev, DType::BF16, n)?;
    dev.kernels()?.channel_rms_norm(
        dev.stream(),
        &src.view::<bf16>(n)?,
        &g.cuda_storage(OP)?.view::<f32>(c)?,
        &mut out.view_mut::<bf16>(n)?,
        b,
        c,
        positions,
    )?;
    Ok(Tensor::from_cuda(out, DType::BF16, x.shape().clone()))
}

/// Rotary embedding on interleaved pairs of bf16 or f32 `[B, S, H, D]` with f32 `[S, D/2]`
/// tables (shapes checked by the caller), in f32, the result in `x`'s dtype.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    const OP: &str = "rope_interleaved";
    let dtype = activation(OP, x)?;
    let (_, c) = input(OP, cos, DType::F32)?;
    let (_, sn) = input(OP, sin, DType::F32)?;
    let &[b, seq, heads, head_dim] = x.dims() else {
        return Err(Error::InvalidArgument(format!(
            "{OP}: x must be [B, S, H, D]"
        )));
    };
    let src = x.cuda_storage(OP)?;
    let dev = src.device();
    let (n, t) = (x.elem_count(), cos.elem_count());
    let (cv, sv) = (c.view::<f32>(t)?, sn.view::<f32>(t)?);
    let tables = || RopeTables { cos: &cv, sin: &sv };
    let dims = [b, seq, heads, head_dim];
    let mut out = output(dev, dtype, n)?;
    let (k, s) = (dev.kernels()?, dev.stream());
    if dtype == DType::BF16 {
        let (xv, mut ov) = (src.view::<bf16>(n)?, out.view_mut::<bf16>(n)?);
        k.rope_interleaved(s, &xv, tables(), &mut ov, dims)?;
    } else {
        let (xv, mut ov) = (src.view::<f32>(n)?, out.view_mut::<f32>(n)?);
        k.rope_interleaved(s, &xv, tables(), &mut ov, dims)?;
    }
    Ok(Tensor::from_cuda(out, dtype, x.shape().clone()))
}

/// Rows `ids` of the table `[V, D]` (ids checked against `V` by the caller) as bf16 `[n, D]`:
/// the ids are uploaded (host data, like a prompt's tokens), the table used in bf16
/// ([`weight_values`]: as stored when bf16, converted per call otherwise).
pub fn embedding(ids: &[u32], table: &Weight) -> Result<Tensor> {
    const OP: &str = "embedding";
    let &[vocab, d] = table.dims() else {
        return Err(Error::InvalidArgument(format!("{OP}: a table [V, D]")));
    };
    let values = weight_values(OP, table, DType::BF16)?;
    let src = values.cuda_storage(OP)?;
    let dev = src.device();
    let ids_dev = CudaStorage::upload(dev.ordinal(), bytemuck::cast_slice(ids))?;
    let n = ids.len();
    let mut out = output(dev, DType::BF16, n * d)?;
    dev.kernels()?.embedding(
        dev.stream(),
        &ids_dev.view::<u32>(n)?,
        &src.view::<bf16>(vocab * d)?,
        &mut out.view_mut::<bf16>(n * d)?,
        vocab,
        d,
    )?;
    Ok(Tensor::from_cuda(out, DType::BF16, Shape::new([n, d])?))
}

/// Batched matrix product of bf16 `a` `[.., m, k]` and `b` (`[k, n]` shared, or `[.., k, n]`)
/// into `out`, through cuBLASLt with f32 accumulation (shapes checked by the caller).
pub fn matmul(a: &Tensor, b: &Tensor, out: &Shape) -> Result<Tensor> {
    const OP: &str = "matmul";
    let (dev, sa) = input(OP, a, DType::BF16)?;
    let (_, sb) = input(OP, b, DType::BF16)?;
    let (ad, bd) = (a.dims(), b.dims());
    let (m, k, n) = (ad[ad.len() - 2], ad[ad.len() - 1], bd[bd.len() - 1]);
    let dims = if bd.len() == 2 {
        // A shared rhs: every row of `a` in one product.
        GemmDims {
            batch: 1,
            rows: a.elem_count().checked_div(k).unwrap_or(0),
            k,
            n,
        }
    } else {
        GemmDims {
            batch: ad[..ad.len() - 2].iter().product(),
            rows: m,
            k,
            n,
        }
    };
    if k == 0 {
        return Err(not_on_cuda("matmul over an empty inner dim"));
    }
    let mut o = output(dev, DType::BF16, out.elem_count())?;
    gemm::matmul_bf16(
        dev,
        &sa.view::<bf16>(a.elem_count())?,
        &sb.view::<bf16>(b.elem_count())?,
        &mut o.view_mut::<bf16>(out.elem_count())?,
        dims,
    )?;
    Ok(Tensor::from_cuda(o, DType::BF16, out.clone()))
}

/// `epilogue(x · Wᵀ + b)` into `out` (shapes checked by the caller) for bf16 `x`, through
/// cuBLASLt with f32 accumulation, the bias (as bf16) and the epilogue fused into the GEMM. The
/// path is [`gemm_path`]'s for the device: an e4m3fn weight on sm_89/sm_90 stays fp8 (its stored
/// scale applied by cuBLASLt) against activations quantized per tensor on the device; a bf16
/// weight is used as stored; an f32 one is rounded to bf16, and an fp8 one on other GPUs (or of
/// sizes the fp8 kernels refuse, or e5m2) decoded with its scale into a bf16 scratch from the
/// caching allocator (weight-only fp8). An f32 `x` is rounded to bf16 first (where the CPU's bf16
/// emulation rounds it). `keep_f32` (the reference's f32 regions) runs [`linear_f32`] instead.
pub fn linear(
    x: &Tensor,
    w: &Weight,
    bias: Option<&Weight>,
    keep_f32: bool,
    epilogue: Epilogue,
    out: &Shape,
) -> Result<Tensor> {
    const OP: &str = "linear";
    if keep_f32 {
        return linear_f32(x, w, bias, out);
    }
    let x = &convert(x, DType::BF16)?;
    let (dev, sx) = input(OP, x, DType::BF16)?;
    let &[n, k] = w.dims() else {
        return Err(Error::InvalidArgument(format!("{OP}: weight [out, in]")));
    };
    if k == 0 {
        return Err(not_on_cuda("linear with no input features"));
    }
    let bias = bias
        .map(|b| weight_values(OP, b, DType::BF16))
        .transpose()?;
    let dims = GemmDims {
        batch: 1,
        rows: x.elem_count() / k,
        k,
        n,
    };
    let mut o = output(dev, DType::BF16, out.elem_count())?;
    let bias_view = bias
        .as_ref()
        .map(|b| b.cuda_storage(OP)?.view::<bf16>(n))
        .transpose()?;
    let x_view = sx.view::<bf16>(x.elem_count())?;
    let mut out_view = o.view_mut::<bf16>(out.elem_count())?;
    match gemm_path(dev.capability(), w.dtype(), n, k) {
        GemmPath::Fp8E4m3 => {
            let n_x = x.elem_count();
            let mut codes = output(dev, DType::F8E4M3, n_x)?;
            let mut amax = output(dev, DType::F32, 1)?;
            let mut x_scale = output(dev, DType::F32, 1)?;
            dev.kernels()?.quantize_e4m3fn(
                dev.stream(),
                &x_view,
                &mut amax.view_mut::<u32>(1)?,
                &mut x_scale.view_mut::<f32>(1)?,
                &mut codes.view_mut::<u8>(n_x)?,
                n_x,
            )?;
            let operands = Fp8Operands {
                x: &codes.view::<u8>(n_x)?,
                x_scale: &x_scale.view::<f32>(1)?,
                w: &w.tensor.cuda_storage(OP)?.view::<u8>(n * k)?,
                w_scale: w.scale.unwrap_or(1.0),
                bias: bias_view.as_ref(),
            };
            gemm_fp8::linear_e4m3(dev, &operands, epilogue, &mut out_view, dims)?;
        }
        GemmPath::Bf16 | GemmPath::DequantToBf16 => {
            let weight = weight_values(OP, w, DType::BF16)?;
            gemm::linear_bf16(
                dev,
                &x_view,
                &weight.cuda_storage(OP)?.view::<bf16>(n * k)?,
                bias_view.as_ref(),
                epilogue,
                &mut out_view,
                dims,
            )?;
        }
    }
    Ok(Tensor::from_cuda(o, DType::BF16, out.clone()))
}

/// `x · Wᵀ + b` in f32 into `out`: `x` bf16 or f32 (widened exactly), the weight as stored when
/// bf16 or f32 (fp8 decoded with its scale into bf16 first), the bias in f32, f32 products and
/// sums, an f32 result: the reference's f32 layers (time embedding and projection, the head).
fn linear_f32(x: &Tensor, w: &Weight, bias: Option<&Weight>, out: &Shape) -> Result<Tensor> {
    const OP: &str = "linear_f32";
    let x = &convert(x, DType::F32)?;
    let (dev, sx) = input(OP, x, DType::F32)?;
    let &[n, k] = w.dims() else {
        return Err(Error::InvalidArgument(format!("{OP}: weight [out, in]")));
    };
    if k == 0 {
        return Err(not_on_cuda("linear with no input features"));
    }
    let weight = match (w.dtype(), w.scale) {
        (DType::BF16 | DType::F32, None) => w.tensor.clone(),
        _ => weight_values(OP, w, DType::BF16)?,
    };
    let bias = bias.map(|b| weight_values(OP, b, DType::F32)).transpose()?;
    let bias_view = bias
        .as_ref()
        .map(|b| b.cuda_storage(OP)?.view::<f32>(n))
        .transpose()?;
    let rows = x.elem_count().checked_div(k).unwrap_or(0);
    let mut o = output(dev, DType::F32, out.elem_count())?;
    let (kern, s) = (dev.kernels()?, dev.stream());
    let xv = sx.view::<f32>(x.elem_count())?;
    let ws = weight.cuda_storage(OP)?;
    {
        let mut ov = o.view_mut::<f32>(out.elem_count())?;
        let b = bias_view.as_ref();
        if weight.dtype() == DType::BF16 {
            let wv = ws.view::<bf16>(n * k)?;
            kern.linear_f32(s, &xv, &wv, b, &mut ov, rows, n, k)?;
        } else {
            let wv = ws.view::<f32>(n * k)?;
            kern.linear_f32(s, &xv, &wv, b, &mut ov, rows, n, k)?;
        }
    }
    Ok(Tensor::from_cuda(o, DType::F32, out.clone()))
}

/// The bf16 operands of an attention call: q `[B, S, H, D]` and k, v `[B, kv_len.., H, D]` on
/// one device, and the dims the kernels use.
struct AttnOperands<'t> {
    dev: &'t Arc<CudaDevice>,
    q: &'t CudaStorage,
    k: &'t CudaStorage,
    v: &'t CudaStorage,
    shape: &'t Shape,
    dims: AttnDims,
}

impl<'t> AttnOperands<'t> {
    /// The operands of `op` with the first `kv_len` keys of k and v (`None`: all of them).
    fn new(
        op: &'static str,
        q: &'t Tensor,
        k: &'t Tensor,
        v: &'t Tensor,
        kv_len: Option<usize>,
    ) -> Result<AttnOperands<'t>> {
        let (&[batch, q_len, heads, head_dim], &[_, all_keys, _, _]) = (q.dims(), k.dims()) else {
            return Err(Error::InvalidArgument(format!(
                "{op}: q and k must be [B, S, H, D]"
            )));
        };
        let (dev, qs) = input(op, q, DType::BF16)?;
        let (_, ks) = input(op, k, DType::BF16)?;
        let (_, vs) = input(op, v, DType::BF16)?;
        Ok(AttnOperands {
            dev,
            q: qs,
            k: ks,
            v: vs,
            shape: q.shape(),
            dims: AttnDims {
                batch,
                q_len,
                kv_len: kv_len.unwrap_or(all_keys),
                heads,
                head_dim,
            },
        })
    }

    /// A fresh bf16 output like q, written by `launch(kernels, stream, q, k, v, out)`.
    fn run(
        &self,
        launch: impl FnOnce(
            &Kernels,
            &Arc<CudaStream>,
            &CudaView<'_, bf16>,
            &CudaView<'_, bf16>,
            &CudaView<'_, bf16>,
            &mut CudaViewMut<'_, bf16>,
        ) -> Result<()>,
    ) -> Result<Tensor> {
        let AttnDims {
            batch,
            kv_len,
            heads,
            head_dim,
            ..
        } = self.dims;
        let n = self.shape.elem_count();
        let kv = batch * kv_len * heads * head_dim;
        let mut out = output(self.dev, DType::BF16, n)?;
        launch(
            &*self.dev.kernels()?,
            self.dev.stream(),
            &self.q.view::<bf16>(n)?,
            &self.k.view::<bf16>(kv)?,
            &self.v.view::<bf16>(kv)?,
            &mut out.view_mut::<bf16>(n)?,
        )?;
        Ok(Tensor::from_cuda(out, DType::BF16, self.shape.clone()))
    }
}

/// `softmax(scale · q kᵀ) v`, `[B, S, H, D]` bf16 layouts (shapes checked by the caller),
/// through the FlashAttention-2-style kernel: head_dim 64 or 128, no bias; `kv_lens` only with
/// batch 1 (the leading keys are a prefix of `k` and `v`). Other cases are refused by name.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams<'_>) -> Result<Tensor> {
    const OP: &str = "attention";
    let (&[batch, _, _, head_dim], &[_, kv_len, _, _]) = (q.dims(), k.dims()) else {
        return Err(Error::InvalidArgument(format!(
            "{OP}: q and k must be [B, S, H, D]"
        )));
    };
    if p.bias.is_some() {
        return Err(not_on_cuda("attention with a logit bias"));
    }
    if head_dim != 64 && head_dim != 128 {
        return Err(not_on_cuda(&format!(
            "attention at head_dim {head_dim} (64 and 128 have a kernel)"
        )));
    }
    let kv_len = match p.kv_lens {
        None => kv_len,
        Some(&[len]) if batch == 1 => len,
        Some(lens) if lens.iter().all(|&l| l == kv_len) => kv_len,
        Some(_) => {
            return Err(not_on_cuda(
                "attention with per-entry kv_lens at batch above 1",
            ))
        }
    };
    let ops = AttnOperands::new(OP, q, k, v, Some(kv_len))?;
    ops.run(|kern, s, q, k, v, out| kern.attention(s, q, k, v, out, ops.dims, p.scale))
}

/// `softmax(scale · q kᵀ) v` through an 8-bit kernel, `[B, S, H, D]` bf16 layouts (shapes
/// checked by the caller), head_dim 64 or 128, unmasked. The fp16 scheme (`Q8Path::Sm80`, or
/// `Q8Path::Sm90`, the same arithmetic with 128-key tiles: either is accepted and the device
/// decides) runs in the kernel [`q8_kernel`] picks: mma.sync (`kernels/attention_q8.cu`, every
/// GPU) or, on sm_90 at head_dim 128, wgmma (`kernels/attention_q8_sm90.cu`). The e4m3 scheme
/// `Q8Path::Sm89` runs in `kernels/attention_q8.cu` on sm_89 and sm_90 devices. Any other scheme
/// is refused by name. The quantized operands live in a workspace allocated per call.
pub fn attention_q8(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    scheme: &Q8Scheme,
) -> Result<Tensor> {
    const OP: &str = "attention_q8";
    let Some(path) = Q8Path::ALL
        .into_iter()
        .find(|&p| *scheme == Q8Scheme::for_path(p))
    else {
        return Err(not_on_cuda(&format!(
            "8-bit attention with the scheme {scheme:?} (the kernels run sm80's, sm89's and sm90's)"
        )));
    };
    let ops = AttnOperands::new(OP, q, k, v, None)?;
    let head_dim = ops.dims.head_dim;
    if head_dim != 64 && head_dim != 128 {
        return Err(not_on_cuda(&format!(
            "8-bit attention at head_dim {head_dim} (64 and 128 have a kernel)"
        )));
    }
    let path = match path {
        Q8Path::Sm89 => Q8Path::Sm89,
        Q8Path::Sm80 | Q8Path::Sm90 => {
            match Q8Kernel::for_device(ops.dev.capability(), head_dim)? {
                Q8Kernel::MmaSync => Q8Path::Sm80,
                Q8Kernel::Wgmma => Q8Path::Sm90,
            }
        }
    };
    let ws_bytes = attention_q8_workspace_bytes(ops.dims, path)?;
    let mut ws = ops.dev.alloc(ws_bytes)?;
    ops.run(|kern, s, q, k, v, out| {
        let mut ws = ws.view_mut::<u8>(ws_bytes)?;
        kern.attention_q8(s, q, k, v, out, &mut ws, ops.dims, scale, path)
    })
}

/// The 8-bit attention kernel [`attention_q8`] runs on CUDA device `ordinal` at `head_dim`
/// ([`Q8Kernel::for_device`]: wgmma on sm_90 at 128 unless `WANRT_Q8_KERNEL` is `mma`), for
/// metadata and logs.
pub fn q8_kernel(ordinal: usize, head_dim: usize) -> Result<Q8Kernel> {
    Q8Kernel::for_device(CudaDevice::get(ordinal)?.capability(), head_dim)
}

/// 3-D convolution of bf16 `x` (`[B, Cin, T, H, W]`) of geometry `g` into `out`
/// (`[B, Cout, T', H', W']`; shapes checked by the caller) through the implicit-GEMM kernel:
/// input, weight and bias in bf16 ([`weight_values`]; a missing bias is zero), products summed
/// in f32, the output rounded to bf16 once (the rounding points `WANRT_COMPUTE=bf16` emulates
/// on the CPU).
pub fn conv3d(
    x: &Tensor,
    w: &Weight,
    bias: Option<&Weight>,
    g: &Conv3dGeom,
    out: &Shape,
) -> Result<Tensor> {
    const OP: &str = "conv3d";
    let (dev, sx) = input(OP, x, DType::BF16)?;
    let (b, cout) = (x.dims()[0], g.cout);
    let weight = weight_values(OP, w, DType::BF16)?;
    let bias = match bias {
        Some(bw) => weight_values(OP, bw, DType::BF16)?,
        None => Tensor::zeros([cout], DType::BF16).to_device(x.device())?,
    };
    let mut o = output(dev, DType::BF16, out.elem_count())?;
    dev.kernels()?.conv3d(
        dev.stream(),
        &sx.view::<bf16>(x.elem_count())?,
        &weight
            .cuda_storage(OP)?
            .view::<bf16>(w.tensor.elem_count())?,
        &bias.cuda_storage(OP)?.view::<bf16>(cout)?,
        &mut o.view_mut::<bf16>(out.elem_count())?,
        b,
        g,
    )?;
    Ok(Tensor::from_cuda(o, DType::BF16, out.clone()))
}

/// Nearest ×2 upsampling of the last two dims of bf16 `x` into `out` (exact copies).
pub fn upsample_nearest2x(x: &Tensor, out: &Shape) -> Result<Tensor> {
    const OP: &str = "upsample_nearest2x";
    let (dev, src) = input(OP, x, DType::BF16)?;
    let d = x.dims();
    let (h, w) = (d[d.len() - 2], d[d.len() - 1]);
    let planes = d[..d.len() - 2].iter().product();
    let n = x.elem_count();
    let mut o = output(dev, DType::BF16, out.elem_count())?;
    dev.kernels()?.upsample_nearest2x(
        dev.stream(),
        &src.view::<bf16>(n)?,
        &mut o.view_mut::<bf16>(out.elem_count())?,
        planes,
        h,
        w,
    )?;
    Ok(Tensor::from_cuda(o, DType::BF16, out.clone()))
}

/// Runs a copy plan from `x` into `out`, a buffer of `out_elems` elements of `x`'s dtype.
fn copy_into(x: &Tensor, plan: &CopyPlan, out: &mut CudaStorage, out_elems: usize) -> Result<()> {
    const OP: &str = "strided_copy";
    let src = x.cuda_storage(OP)?;
    let es = x.dtype().size_in_bytes();
    let dev = Arc::clone(src.device());
    dev.kernels()?.strided_copy(
        dev.stream(),
        &src.view::<u8>(x.elem_count() * es)?,
        &mut out.view_mut::<u8>(out_elems * es)?,
        es,
        plan,
    )
}

/// A new tensor of `shape` in `x`'s dtype on `x`'s device, filled by `plan` from `x`.
fn copied(x: &Tensor, plan: &CopyPlan, shape: &Shape) -> Result<Tensor> {
    let dev = x.cuda_storage("strided_copy")?.device();
    let mut out = output(dev, x.dtype(), shape.elem_count())?;
    copy_into(x, plan, &mut out, shape.elem_count())?;
    Ok(Tensor::from_cuda(out, x.dtype(), shape.clone()))
}

/// The dims of `x` (any dtype) reordered by `perm` into `out`, by a strided copy.
pub fn permute(x: &Tensor, perm: &[usize], out: &Shape) -> Result<Tensor> {
    copied(x, &CopyPlan::permute(x.dims(), perm), out)
}

/// Elements `start..start + len` along `dim` of `x` (any dtype) into `out`, by a strided copy.
pub fn narrow(x: &Tensor, dim: usize, start: usize, out: &Shape) -> Result<Tensor> {
    copied(
        x,
        &CopyPlan::narrow(x.dims(), dim, start, out.dims()[dim]),
        out,
    )
}

/// `x` (any dtype) zero-padded by `pads` into `out`, by a strided copy that writes the zeros.
pub fn pad_zeros(x: &Tensor, pads: &[(usize, usize)], out: &Shape) -> Result<Tensor> {
    copied(x, &CopyPlan::pad(x.dims(), pads), out)
}

/// `tensors` (one dtype, checked by the caller) concatenated along `dim` into `out`: one
/// strided copy per input into its slice of the output.
pub fn cat(tensors: &[&Tensor], dim: usize, out: &Shape) -> Result<Tensor> {
    const OP: &str = "cat";
    let first = tensors
        .first()
        .ok_or_else(|| Error::InvalidArgument(format!("{OP}: no tensors")))?;
    let dev = first.cuda_storage(OP)?.device();
    let n = out.elem_count();
    let mut o = output(dev, first.dtype(), n)?;
    let mut at = 0;
    for t in tensors {
        copy_into(
            t,
            &CopyPlan::cat_part(t.dims(), out.dims(), dim, at),
            &mut o,
            n,
        )?;
        at += t.dims()[dim];
    }
    Ok(Tensor::from_cuda(o, first.dtype(), out.clone()))
}

/// `x` converted to `dtype`: f32 -> bf16 (round to nearest even), bf16 -> f32 and fp8 -> bf16
/// or f32 (exact). Other pairs are refused by name.
pub fn convert(x: &Tensor, dtype: DType) -> Result<Tensor> {
    const OP: &str = "to_dtype";
    let n = x.elem_count();
    match (x.dtype(), dtype) {
        (from, to) if from == to => Ok(x.clone()),
        (DType::F32, DType::BF16) => {
            let (dev, src) = input(OP, x, DType::F32)?;
            let mut out = output(dev, DType::BF16, n)?;
            dev.kernels()?.f32_to_bf16(
                dev.stream(),
                &src.view::<f32>(n)?,
                &mut out.view_mut::<bf16>(n)?,
                n,
            )?;
            Ok(Tensor::from_cuda(out, DType::BF16, x.shape().clone()))
        }
        (DType::BF16, DType::F32) => {
            let (dev, src) = input(OP, x, DType::BF16)?;
            let mut out = output(dev, DType::F32, n)?;
            dev.kernels()?.bf16_to_f32(
                dev.stream(),
                &src.view::<bf16>(n)?,
                &mut out.view_mut::<f32>(n)?,
                n,
            )?;
            Ok(Tensor::from_cuda(out, DType::F32, x.shape().clone()))
        }
        (DType::F8E4M3 | DType::F8E5M2, DType::BF16 | DType::F32) => {
            fp8_to_bf16(x, 1.0)?.to_dtype(dtype)
        }
        (from, to) => Err(not_on_cuda(&format!("conversion {from:?} -> {to:?}"))),
    }
}
