//! The CPU backend's emulation of bf16 compute (`WANRT_COMPUTE=bf16`).
//!
//! The CUDA backend stores the activations that enter and leave its GEMM-class ops (linear
//! layers, matrix products, convolutions, attention) in bf16 and keeps f32 everywhere the
//! reference does (time embedding and projection, modulation, norm statistics and outputs, RoPE
//! angles, the residual stream, the head; wan-architecture.md §1.9). With `WANRT_COMPUTE=bf16`
//! the CPU backend rounds to bf16 at exactly those places (the inputs, weights, bias and output
//! of those ops, round to nearest even) and computes in f32 between them, so the numerics of the
//! CUDA path are checked against the fixtures on any machine. Unset or `f32`: no rounding.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::DType;

/// The environment variable that selects the compute dtype.
pub const COMPUTE_VAR: &str = "WANRT_COMPUTE";

/// The dtype the CPU backend stores GEMM-class activations in: [`DType::F32`] (the default) or
/// [`DType::BF16`], read once from `WANRT_COMPUTE`. An unknown value is an `InvalidArgument`
/// error from every op that consults it.
pub fn compute_dtype() -> Result<DType> {
    static MODE: OnceLock<std::result::Result<DType, String>> = OnceLock::new();
    MODE.get_or_init(|| {
        let value = std::env::var(COMPUTE_VAR).unwrap_or_default();
        match value.as_str() {
            "" | "f32" => Ok(DType::F32),
            "bf16" => Ok(DType::BF16),
            other => Err(format!("{COMPUTE_VAR}={other}: expected `f32` or `bf16`")),
        }
    })
    .clone()
    .map_err(Error::InvalidArgument)
}

/// True when GEMM-class ops round to bf16 (`WANRT_COMPUTE=bf16`).
pub fn rounds_to_bf16() -> Result<bool> {
    Ok(compute_dtype()? == DType::BF16)
}

/// Rounds every value to the nearest bf16 (ties to even; NaN and infinities kept).
pub fn round_to_bf16(values: &mut [f32]) {
    values.par_chunks_mut(1 << 14).for_each(|c| {
        c.iter_mut()
            .for_each(|v| *v = half::bf16::from_f32(*v).to_f32())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_bf16() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6.
        let mut v = [
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            1.0 + 2f32.powi(-8) + 2f32.powi(-20),
            -3.0,
            f32::INFINITY,
        ];
        round_to_bf16(&mut v);
        assert_eq!(
            v,
            [
                1.0,
                1.0 + 2f32.powi(-6),
                1.0 + 2f32.powi(-7),
                -3.0,
                f32::INFINITY
            ]
        );
        let mut n = [f32::NAN];
        round_to_bf16(&mut n);
        assert!(n[0].is_nan());
    }
}
