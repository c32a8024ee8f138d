//! dtype conversions: fp8 against all 256 codes and an independent brute-force reference,
//! bf16/f16 round trips, and whole-tensor conversions.

use proptest::prelude::*;
use wanrt::tensor::fp8::{e4m3_to_f32, e5m2_to_f32, f32_to_e4m3, f32_to_e5m2};
use wanrt::{DType, Tensor};

/// Decodes a code from the format's definition, in f64, independently of the library.
fn reference_decode(code: u8, exp_bits: i32, man_bits: i32, fnuz_e4m3: bool) -> f64 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((code as i32) >> man_bits) & ((1 << exp_bits) - 1);
    let m = (code as i32) & ((1 << man_bits) - 1);
    let bias = (1 << (exp_bits - 1)) - 1;
    let top = (1 << exp_bits) - 1;
    if fnuz_e4m3 && e == top && m == (1 << man_bits) - 1 {
        return f64::NAN;
    }
    if !fnuz_e4m3 && e == top {
        return if m == 0 {
            sign * f64::INFINITY
        } else {
            f64::NAN
        };
    }
    let frac = m as f64 / (1 << man_bits) as f64;
    if e == 0 {
        sign * frac * 2f64.powi(1 - bias)
    } else {
        sign * (1.0 + frac) * 2f64.powi(e - bias)
    }
}

/// The code nearest to `x` among all finite codes (ties to the even code), saturating.
fn reference_encode(x: f32, decode: fn(u8) -> f32, max: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = (x as f64).abs().min(max as f64);
    let mut best = 0u8;
    let mut best_err = f64::INFINITY;
    for code in 0u8..0x80 {
        let v = decode(code) as f64;
        if !v.is_finite() {
            continue;
        }
        let err = (v - a).abs();
        if err < best_err || (err == best_err && code % 2 == 0) {
            best = code;
            best_err = err;
        }
    }
    sign | best
}

#[test]
fn fp8_decode_matches_the_format_definition_for_all_codes() {
    for code in 0..=255u8 {
        let (a, b) = (e4m3_to_f32(code) as f64, reference_decode(code, 4, 3, true));
        assert!(
            a == b || (a.is_nan() && b.is_nan()),
            "e4m3 {code:#04x}: {a} vs {b}"
        );
        let (a, b) = (
            e5m2_to_f32(code) as f64,
            reference_decode(code, 5, 2, false),
        );
        assert!(
            a == b || (a.is_nan() && b.is_nan()),
            "e5m2 {code:#04x}: {a} vs {b}"
        );
    }
}

#[test]
fn fp8_round_trips_every_finite_code() {
    for code in 0..=255u8 {
        let v = e4m3_to_f32(code);
        if v.is_nan() {
            assert!(e4m3_to_f32(f32_to_e4m3(v)).is_nan());
        } else {
            assert_eq!(f32_to_e4m3(v), code, "e4m3 {code:#04x} ({v})");
        }
        let v = e5m2_to_f32(code);
        if v.is_nan() {
            assert!(e5m2_to_f32(f32_to_e5m2(v)).is_nan());
        } else if v.is_infinite() {
            assert_eq!(f32_to_e5m2(v), (code & 0x80) | 0x7b, "inf saturates");
        } else {
            assert_eq!(f32_to_e5m2(v), code, "e5m2 {code:#04x} ({v})");
        }
    }
}

#[test]
fn fp8_ties_round_to_even_and_saturate() {
    for code in 0u8..0x7e {
        // Midpoints between neighbouring e4m3 codes go to the even one.
        let (lo, hi) = (e4m3_to_f32(code), e4m3_to_f32(code + 1));
        let mid = ((lo as f64 + hi as f64) / 2.0) as f32;
        let want = if code % 2 == 0 { code } else { code + 1 };
        assert_eq!(f32_to_e4m3(mid), want, "e4m3 midpoint {mid}");
    }
    for code in 0u8..0x7b {
        let (lo, hi) = (e5m2_to_f32(code), e5m2_to_f32(code + 1));
        let mid = ((lo as f64 + hi as f64) / 2.0) as f32;
        let want = if code % 2 == 0 { code } else { code + 1 };
        assert_eq!(f32_to_e5m2(mid), want, "e5m2 midpoint {mid}");
    }
    assert_eq!(e4m3_to_f32(f32_to_e4m3(465.0)), 448.0);
    assert_eq!(e4m3_to_f32(f32_to_e4m3(-1e30)), -448.0);
    assert_eq!(e5m2_to_f32(f32_to_e5m2(1e30)), 57344.0);
    assert_eq!(e5m2_to_f32(f32_to_e5m2(f32::NEG_INFINITY)), -57344.0);
}

proptest! {
    #[test]
    fn fp8_encode_is_nearest_even(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        if x.is_nan() {
            prop_assert!(e4m3_to_f32(f32_to_e4m3(x)).is_nan());
            prop_assert!(e5m2_to_f32(f32_to_e5m2(x)).is_nan());
        } else {
            prop_assert_eq!(f32_to_e4m3(x), reference_encode(x, e4m3_to_f32, 448.0));
            prop_assert_eq!(f32_to_e5m2(x), reference_encode(x, e5m2_to_f32, 57344.0));
        }
    }

    #[test]
    fn fp8_encode_is_nearest_even_in_range(x in -600.0f32..600.0) {
        prop_assert_eq!(f32_to_e4m3(x), reference_encode(x, e4m3_to_f32, 448.0));
        prop_assert_eq!(f32_to_e5m2(x), reference_encode(x, e5m2_to_f32, 57344.0));
    }

    #[test]
    fn fp8_encode_small_values(x in -0.02f32..0.02) {
        prop_assert_eq!(f32_to_e4m3(x), reference_encode(x, e4m3_to_f32, 448.0));
        prop_assert_eq!(f32_to_e5m2(x), reference_encode(x, e5m2_to_f32, 57344.0));
    }

    #[test]
    fn tensor_conversions_widen_exactly(values in prop::collection::vec(-1e4f32..1e4, 1..64)) {
        let t = Tensor::from_slice(&values, [values.len()]).unwrap();
        for dtype in [DType::BF16, DType::F16, DType::F8E4M3, DType::F8E5M2, DType::F64] {
            let narrow = t.to_dtype(dtype).unwrap();
            let wide = narrow.to_f32_vec().unwrap();
            for (&v, &w) in values.iter().zip(&wide) {
                let want = match dtype {
                    DType::BF16 => half::bf16::from_f32(v).to_f32(),
                    DType::F16 => half::f16::from_f32(v).to_f32(),
                    DType::F8E4M3 => e4m3_to_f32(f32_to_e4m3(v)),
                    DType::F8E5M2 => e5m2_to_f32(f32_to_e5m2(v)),
                    _ => v,
                };
                prop_assert_eq!(w.to_bits(), want.to_bits(), "{} {}", dtype, v);
            }
            // Converting the narrow tensor to f32 and back is the identity.
            let back = Tensor::from_f32(wide, [values.len()]).unwrap().to_dtype(dtype).unwrap();
            prop_assert_eq!(back.raw_bytes().unwrap(), narrow.raw_bytes().unwrap());
        }
    }
}

#[test]
fn bf16_and_f16_conversions_keep_nan_and_inf() {
    let t = Tensor::from_slice(&[f32::NAN, f32::INFINITY, -0.0, 65520.0], [4]).unwrap();
    let b = t.to_dtype(DType::BF16).unwrap().to_f32_vec().unwrap();
    assert!(b[0].is_nan() && b[1] == f32::INFINITY && b[2].is_sign_negative());
    let h = t.to_dtype(DType::F16).unwrap().to_f32_vec().unwrap();
    assert!(h[0].is_nan() && h[1] == f32::INFINITY && h[3] == f32::INFINITY);
}

#[test]
fn shapes_that_overflow_are_rejected() {
    assert!(wanrt::Shape::new(vec![usize::MAX, 2]).is_err());
    assert!(Tensor::from_bytes(vec![0; 3], DType::F32, [1]).is_err());
}
