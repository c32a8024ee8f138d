//! The 8-bit quantizers of the q8 attention scheme ([`super::attention_q8`]), written as the
//! kernels compute them so that the CPU emulation rounds exactly as they do.
//!
//! - **INT8, symmetric, one scale per group**: `scale = amax / 127` and
//!   `code = sat(round(x · (127 / amax)))` in `[-127, 127]` (`cvt.rni.sat.s8.f32` rounds to
//!   nearest even; SageAttention's Triton quantizer rounds half away from zero). An all-zero
//!   group has scale 0 and codes 0. Dequantized, `code · scale` is within `scale / 2` of `x`
//!   (plus the f32 rounding of the two products).
//! - **e4m3 with a scale**: `code = e4m3(x · (max / amax))`, round to nearest even and saturating
//!   to ±448 (`cvt.rn.satfinite.e4m3x2`, [`crate::tensor::fp8::f32_to_e4m3`]); the dequantized
//!   value is `e4m3_to_f32(code) · amax / max`.

use crate::tensor::fp8::{e4m3_to_f32, f32_to_e4m3};

/// The largest INT8 code used (symmetric: -128 is never produced).
pub const INT8_MAX: f32 = 127.0;

/// How a scaled value is rounded to an integer code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Ties to the even integer (CUDA's `cvt.rni`, `__float2int_rn`).
    NearestEven,
    /// Ties away from zero (`x + 0.5·sign(x)`, then truncation, as SageAttention's Triton code).
    NearestAway,
}

impl Rounding {
    /// Rounds `x` to an integer value.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Rounding::NearestEven => x.round_ties_even(),
            Rounding::NearestAway => x.round(),
        }
    }
}

/// The multiplier that maps a group of largest magnitude `amax` onto `[-max, max]`, and the
/// scale that maps the codes back: `(max / amax, amax / max)`; `(0, 0)` for an all-zero group.
pub fn scales(amax: f32, max: f32) -> (f32, f32) {
    if amax > 0.0 {
        (max / amax, amax / max)
    } else {
        (0.0, 0.0)
    }
}

/// The largest `|x|` of `xs` (0 for an empty slice).
pub fn amax(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
}

/// One value to INT8: `round(x · inv)` saturated to `[-127, 127]`.
pub fn to_int8(x: f32, inv: f32, rounding: Rounding) -> i8 {
    rounding.round(x * inv).clamp(-INT8_MAX, INT8_MAX) as i8
}

/// Quantizes one group to INT8 with its own scale: writes the codes to `out` and returns the
/// dequantization scale (`amax / 127`).
pub fn quantize_int8(xs: &[f32], rounding: Rounding, out: &mut [i8]) -> f32 {
    let (inv, scale) = scales(amax(xs), INT8_MAX);
    out.iter_mut()
        .zip(xs)
        .for_each(|(o, &x)| *o = to_int8(x, inv, rounding));
    scale
}

/// One value through e4m3 with the multiplier `inv`: the decoded code, `e4m3(x · inv)` as f32.
pub fn through_e4m3(x: f32, inv: f32) -> f32 {
    e4m3_to_f32(f32_to_e4m3(x * inv))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::tensor::fp8::E4M3_MAX;

    fn group() -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-1e4f32..1e4, 1..200)
    }

    proptest! {
        /// Codes stay in [-127, 127] and the largest magnitude maps to ±127.
        #[test]
        fn int8_range(xs in group(), away in any::<bool>()) {
            let r = if away { Rounding::NearestAway } else { Rounding::NearestEven };
            let mut q = vec![0i8; xs.len()];
            let scale = quantize_int8(&xs, r, &mut q);
            prop_assert!(q.iter().all(|&c| c != i8::MIN));
            let m = amax(&xs);
            if m > 0.0 {
                prop_assert_eq!(q.iter().map(|c| c.unsigned_abs()).max(), Some(127));
                prop_assert_eq!(scale, m / 127.0);
            } else {
                prop_assert!(q.iter().all(|&c| c == 0) && scale == 0.0);
            }
        }

        /// Round trip: every value comes back within half a step (and the f32 rounding of the
        /// scaling), and the code is the nearest integer to the scaled value.
        #[test]
        fn int8_round_trip(xs in group()) {
            let mut q = vec![0i8; xs.len()];
            let scale = quantize_int8(&xs, Rounding::NearestEven, &mut q);
            let (inv, _) = scales(amax(&xs), INT8_MAX);
            for (&x, &c) in xs.iter().zip(&q) {
                let err = (x as f64 - c as f64 * scale as f64).abs();
                // Half a step, plus the f32 roundings of `inv` and of `x · inv` (each at most
                // 2^-24 relative, so about 1.5e-5 of a step at |x · inv| ≤ 127).
                prop_assert!(err <= (0.5 + 1e-4) * scale as f64 + 1e-30, "{x} -> {c}·{scale}");
                let y = (x * inv) as f64;
                prop_assert!((y - c as f64).abs() <= 0.5);
            }
        }

        /// Saturation: scaled values past ±127 clamp, whatever the multiplier.
        #[test]
        fn int8_saturates(x in -1e6f32..1e6, inv in 0.0f32..10.0) {
            let c = to_int8(x, inv, Rounding::NearestEven) as f32;
            prop_assert_eq!(c, (x * inv).round_ties_even().clamp(-127.0, 127.0));
        }

        /// e4m3 with a scale: results are e4m3 values, saturate at ±448, and are the nearest
        /// e4m3 value to the scaled input (relative step 2^-4 for normal values).
        #[test]
        fn e4m3_range_and_rounding(x in -1e3f32..1e3, amax in 1e-3f32..1e3) {
            let (inv, scale) = scales(amax, E4M3_MAX);
            let y = through_e4m3(x, inv);
            let s = x * inv;
            prop_assert!(y.abs() <= E4M3_MAX);
            if s.abs() >= E4M3_MAX {
                prop_assert_eq!(y, E4M3_MAX.copysign(s));
            } else if s.abs() >= 2f32.powi(-6) {
                prop_assert!(((y - s) / s).abs() <= 1.0 / 16.0 * (1.0 + 1e-6));
            } else {
                // Subnormals: steps of 2^-9.
                prop_assert!((y - s).abs() <= 2f32.powi(-10));
            }
            // Round trip of a value inside the group's range.
            if x.abs() <= amax {
                let back = y * scale;
                let bound = x.abs() / 16.0 * (1.0 + 1e-5) + amax * 2f32.powi(-10) / E4M3_MAX * 2.0;
                prop_assert!((back - x).abs() <= bound);
            }
        }
    }

    #[test]
    fn rounding_modes_differ_on_ties() {
        assert_eq!(to_int8(2.5, 1.0, Rounding::NearestEven), 2);
        assert_eq!(to_int8(2.5, 1.0, Rounding::NearestAway), 3);
        assert_eq!(to_int8(-3.5, 1.0, Rounding::NearestEven), -4);
        assert_eq!(to_int8(-2.5, 1.0, Rounding::NearestAway), -3);
        assert_eq!(to_int8(1e9, 1.0, Rounding::NearestEven), 127);
        assert_eq!(to_int8(-1e9, 1.0, Rounding::NearestAway), -127);
    }
}
