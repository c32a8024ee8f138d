//! Storing merged f32 values back in a checkpoint dtype: bf16/f16 round to nearest even, fp8
//! rounds to nearest even and saturates, ComfyUI scaled fp8 stores `W / scale` with the scale
//! recomputed from the merged weight (`max|W| / fp8 max`), so that no merged value clips.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::convert::narrow_from_f32;
use crate::tensor::fp8::{E4M3_MAX, E5M2_MAX};
use crate::tensor::{DType, Tensor, Weight};

/// How merged weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreAs {
    /// Every parameter keeps its dtype; a ComfyUI scaled fp8 weight stays scaled, with a new
    /// scale `max|W'| / fp8 max` when a LoRA changed it (the old scale would clip a merged
    /// weight that grew past `fp8 max · scale`).
    Same,
    /// Every parameter in this float dtype (f32, bf16 or f16); fp8 scales are folded in.
    Float(DType),
    /// Block linear weights in this fp8 dtype (a plain cast), the rest bf16.
    Fp8(DType),
    /// ComfyUI scaled fp8: block linear weights in this fp8 dtype with a per-tensor scale
    /// `max|W| / fp8 max` (an unchanged weight already scaled in this dtype keeps its scale),
    /// the rest bf16.
    ScaledFp8(DType),
}

impl StoreAs {
    /// Checks that the dtype fits the variant.
    pub fn validate(self) -> Result<()> {
        let ok = match self {
            StoreAs::Same => true,
            StoreAs::Float(d) => matches!(d, DType::F32 | DType::BF16 | DType::F16),
            StoreAs::Fp8(d) | StoreAs::ScaledFp8(d) => fp8_max(d).is_some(),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "cannot store merged weights as {self}"
            )))
        }
    }

    /// How parameter `name` (now `w`) is stored.
    fn target(self, name: &str, w: &Weight) -> Target {
        // ComfyUI fp8 checkpoints quantize only the linear weights inside the blocks.
        let block_linear =
            name.starts_with("blocks.") && name.ends_with(".weight") && w.dims().len() == 2;
        match self {
            StoreAs::Same => match w.scale {
                Some(_) => Target::Scaled(w.dtype()),
                None => Target::Plain(w.dtype()),
            },
            StoreAs::Float(d) => Target::Plain(d),
            StoreAs::Fp8(d) if block_linear => Target::Plain(d),
            StoreAs::ScaledFp8(d) if block_linear => Target::Scaled(d),
            StoreAs::Fp8(_) | StoreAs::ScaledFp8(_) => Target::Plain(DType::BF16),
        }
    }

    /// The dtype in which parameter `name` (now `w`) is stored, and whether with a scale.
    pub(super) fn stored_form(self, name: &str, w: &Weight) -> (DType, bool) {
        match self.target(name, w) {
            Target::Plain(d) => (d, false),
            Target::Scaled(d) => (d, true),
        }
    }

    /// The merged f32 `values` of parameter `name`, whose stored form was `old`. A scaled fp8
    /// target gets the scale `max|values| / fp8 max`; fails when that maximum is not finite.
    pub(super) fn store(self, name: &str, values: Vec<f32>, old: &Weight) -> Result<Weight> {
        let shape = old.tensor.shape().clone();
        match self.target(name, old) {
            Target::Plain(DType::F32) => Ok(Weight::new(Tensor::from_f32(values, shape)?)),
            Target::Plain(d) => Ok(Weight::new(Tensor::from_bytes(
                narrow(&values, d),
                d,
                shape,
            )?)),
            Target::Scaled(d) => {
                // A maximum is exact in any order: the same bits for every thread count. A NaN
                // is kept (`f32::max` would drop it).
                let amax = values.par_iter().map(|v| v.abs()).reduce(
                    || 0.0,
                    |a, b| {
                        if a.is_nan() || b.is_nan() {
                            f32::NAN
                        } else {
                            a.max(b)
                        }
                    },
                );
                let scale = fp8_scale(name, d, amax)?;
                let q: Vec<f32> = values.par_iter().map(|v| v / scale).collect();
                let tensor = Tensor::from_bytes(narrow(&q, d), d, shape)?;
                Ok(Weight {
                    tensor,
                    scale: Some(scale),
                })
            }
        }
    }

    /// Parameter `name` as this setting stores it, or `None` where it already is.
    pub(super) fn convert(self, name: &str, w: &Weight) -> Result<Option<Weight>> {
        let unchanged = match self.target(name, w) {
            Target::Plain(d) => w.dtype() == d && w.scale.is_none(),
            Target::Scaled(d) => w.dtype() == d && w.scale.is_some(),
        };
        if unchanged {
            return Ok(None);
        }
        self.store(name, widen(w)?, w).map(Some)
    }
}

/// The per-tensor scale of a scaled fp8 (`d`) parameter `name` whose merged values reach
/// `max |W'| = amax`: `amax / fp8 max`, at least 1e-12. Fails when `amax` is not finite or `d`
/// is no fp8 dtype.
pub(crate) fn fp8_scale(name: &str, d: DType, amax: f32) -> Result<f32> {
    let max = fp8_max(d).ok_or(Error::UnsupportedDType {
        op: "scaled fp8 store",
        dtype: d,
    })?;
    if !amax.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "the merged `{name}` holds values of magnitude {amax}: it cannot be stored as \
             scaled {d} (a LoRA strength too large?)"
        )));
    }
    Ok((amax / max).max(1e-12))
}

/// A parameter's stored form.
enum Target {
    /// This dtype, no scale.
    Plain(DType),
    /// This fp8 dtype with a per-tensor scale computed from the values.
    Scaled(DType),
}

fn fp8_max(d: DType) -> Option<f32> {
    match d {
        DType::F8E4M3 => Some(E4M3_MAX),
        DType::F8E5M2 => Some(E5M2_MAX),
        _ => None,
    }
}

/// Elements converted per parallel job.
const CHUNK: usize = 1 << 16;

/// `values` narrowed to `dtype` bytes, in parallel.
fn narrow(values: &[f32], dtype: DType) -> Vec<u8> {
    let parts: Vec<Vec<u8>> = values
        .par_chunks(CHUNK)
        .map(|c| {
            let mut out = Vec::with_capacity(c.len() * dtype.size_in_bytes());
            narrow_from_f32(c, dtype, &mut out);
            out
        })
        .collect();
    parts.concat()
}

/// The whole value of a weight in f32 (scale applied), widened in parallel row blocks.
pub(super) fn widen(w: &Weight) -> Result<Vec<f32>> {
    let n = w.tensor.elem_count();
    let Some(&rows) = w.dims().first() else {
        return w.to_f32()?.to_f32_vec();
    };
    let mut out = vec![0f32; n];
    if n == 0 {
        return Ok(out);
    }
    let row = n / rows;
    let block = CHUNK.div_ceil(row).max(1);
    out.par_chunks_mut(block * row)
        .enumerate()
        .try_for_each(|(i, c)| {
            let r0 = i * block;
            w.widen_rows(r0..r0 + c.len() / row, c)
        })?;
    Ok(out)
}

impl FromStr for StoreAs {
    type Err = Error;

    /// `same`, `f32`, `bf16`, `f16`, `fp8_e4m3fn`, `fp8_e5m2`, `fp8_e4m3fn_scaled` or
    /// `fp8_e5m2_scaled`.
    fn from_str(s: &str) -> Result<StoreAs> {
        Ok(match s {
            "same" => StoreAs::Same,
            "f32" => StoreAs::Float(DType::F32),
            "bf16" => StoreAs::Float(DType::BF16),
            "f16" => StoreAs::Float(DType::F16),
            "fp8_e4m3fn" => StoreAs::Fp8(DType::F8E4M3),
            "fp8_e5m2" => StoreAs::Fp8(DType::F8E5M2),
            "fp8_e4m3fn_scaled" => StoreAs::ScaledFp8(DType::F8E4M3),
            "fp8_e5m2_scaled" => StoreAs::ScaledFp8(DType::F8E5M2),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown storage `{s}` (same, f32, bf16, f16, fp8_e4m3fn, fp8_e5m2, fp8_e4m3fn_scaled, fp8_e5m2_scaled)"
                )))
            }
        })
    }
}

impl fmt::Display for StoreAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fp8 = |d: &DType| match d {
            DType::F8E4M3 => "fp8_e4m3fn".to_string(),
            DType::F8E5M2 => "fp8_e5m2".to_string(),
            d => d.to_string(),
        };
        match self {
            StoreAs::Same => f.write_str("same"),
            StoreAs::Float(d) => write!(f, "{d}"),
            StoreAs::Fp8(d) => f.write_str(&fp8(d)),
            StoreAs::ScaledFp8(d) => write!(f, "{}_scaled", fp8(d)),
        }
    }
}
