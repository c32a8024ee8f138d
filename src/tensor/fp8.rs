//! float8 conversions: the e4m3fn and e5m2 formats of PyTorch (`torch.float8_e4m3fn`,
//! `torch.float8_e5m2`), with the saturating rounding of CUDA's `satfinite` conversions.
//!
//! - fp8 → f32 is exact (every fp8 value is an f32 value); decoding is a 256-entry table.
//! - f32 → fp8 rounds to nearest, ties to even, and saturates to the largest finite value
//!   (448 for e4m3fn, which has no infinity; 57344 for e5m2), as CUDA's `satfinite` conversions
//!   do. Infinities saturate too. NaN stays NaN (code `0x7f`, sign kept).

/// Largest finite e4m3fn value.
pub const E4M3_MAX: f32 = 448.0;
/// Largest finite e5m2 value.
pub const E5M2_MAX: f32 = 57344.0;

/// The 256 e4m3fn codes decoded to f32.
pub static E4M3_TO_F32: [f32; 256] = build_table(4, 3);
/// The 256 e5m2 codes decoded to f32.
pub static E5M2_TO_F32: [f32; 256] = build_table(5, 2);

/// Decodes one fp8 code of a format with `exp_bits` exponent and `man_bits` mantissa bits.
const fn decode(code: u8, exp_bits: u32, man_bits: u32) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0f32 };
    let exp_mask = (1u32 << exp_bits) - 1;
    let man_mask = (1u32 << man_bits) - 1;
    let e = (code as u32 >> man_bits) & exp_mask;
    let m = code as u32 & man_mask;
    let bias = (1i32 << (exp_bits - 1)) - 1;
    if exp_bits == 4 {
        // e4m3fn: only S.1111.111 is NaN; the top exponent otherwise holds normal numbers.
        if e == exp_mask && m == man_mask {
            return f32::NAN;
        }
    } else if e == exp_mask {
        // e5m2 is IEEE-like.
        return if m == 0 {
            sign * f32::INFINITY
        } else {
            f32::NAN
        };
    }
    if e == 0 {
        // Subnormal: m · 2^(1 − bias − man_bits); the scale is a power of two, so this is exact.
        let scale = f32::from_bits(((127 + 1 - bias - man_bits as i32) as u32) << 23);
        return sign * (m as f32) * scale;
    }
    let bits = ((e as i32 - bias + 127) as u32) << 23 | m << (23 - man_bits);
    sign * f32::from_bits(bits)
}

const fn build_table(exp_bits: u32, man_bits: u32) -> [f32; 256] {
    let mut table = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = decode(i as u8, exp_bits, man_bits);
        i += 1;
    }
    table
}

/// Encodes `x` with round-to-nearest-even and saturation. `max_code` is the largest finite
/// positive code; normal numbers start at exponent `1 − bias`.
#[inline]
fn encode(x: f32, exp_bits: u32, man_bits: u32, max_code: u8, max: f32) -> u8 {
    let sign = ((x.to_bits() >> 24) & 0x80) as u8;
    if x.is_nan() {
        return sign | 0x7f;
    }
    let a = x.abs();
    if a >= max {
        return sign | max_code;
    }
    let bias = (1i32 << (exp_bits - 1)) - 1;
    let min_normal = f32::from_bits(((1 - bias + 127) as u32) << 23);
    let code = if a < min_normal {
        // Subnormal range: count steps of 2^(1 − bias − man_bits). Scaling by a power of two is
        // exact, so the only rounding is the ties-to-even round here. A result equal to
        // 2^man_bits is the smallest normal code, which the same integer encodes.
        let steps = f32::from_bits(((bias - 1 + man_bits as i32 + 127) as u32) << 23);
        (a * steps).round_ties_even() as u32
    } else {
        // Normal range: round the f32 mantissa to `man_bits` bits (ties to even); a carry out
        // of the mantissa moves into the exponent, which is the correct result.
        let shift = 23 - man_bits;
        let bits = a.to_bits();
        let rounded = bits + ((1 << (shift - 1)) - 1) + ((bits >> shift) & 1);
        (rounded >> shift) - (((127 - bias) as u32) << man_bits)
    };
    sign | (code.min(max_code as u32) as u8)
}

/// f32 → e4m3fn code.
#[inline]
pub fn f32_to_e4m3(x: f32) -> u8 {
    encode(x, 4, 3, 0x7e, E4M3_MAX)
}

/// f32 → e5m2 code.
#[inline]
pub fn f32_to_e5m2(x: f32) -> u8 {
    encode(x, 5, 2, 0x7b, E5M2_MAX)
}

/// e4m3fn code → f32 (exact).
#[inline]
pub fn e4m3_to_f32(code: u8) -> f32 {
    E4M3_TO_F32[code as usize]
}

/// e5m2 code → f32 (exact).
#[inline]
pub fn e5m2_to_f32(code: u8) -> f32 {
    E5M2_TO_F32[code as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
        assert_eq!(e5m2_to_f32(0x7b), 57344.0);
        assert_eq!(e5m2_to_f32(0x7c), f32::INFINITY);
        assert_eq!(e5m2_to_f32(0x01), 2f32.powi(-16));
        assert_eq!(f32_to_e4m3(1e9), 0x7e);
        assert_eq!(f32_to_e4m3(-f32::INFINITY), 0xfe);
        assert_eq!(f32_to_e5m2(f32::INFINITY), 0x7b);
        assert!(e5m2_to_f32(f32_to_e5m2(f32::NAN)).is_nan());
    }
}
