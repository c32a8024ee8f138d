//! Conversions between element types, slice by slice.
//!
//! f32 is the hub: every float type widens to f32 exactly (fp8, f16 and bf16 values are all f32
//! values) and f32 narrows to each with round-to-nearest-even (fp8 saturating, see
//! [`super::fp8`]). Integer types convert through f64 so that i64 values above 2^24 survive a
//! round trip through [`DType::F64`].

use half::{bf16, f16};

use super::fp8;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Widens `src` (elements of `dtype`, little-endian bytes) into `out`.
///
/// `out.len()` elements are converted; `src` must hold at least that many.
pub fn widen_to_f32(src: &[u8], dtype: DType, out: &mut [f32]) -> Result<()> {
    let n = out.len();
    let need = n * dtype.size_in_bytes();
    if src.len() < need {
        return Err(Error::InvalidArgument(format!(
            "widen_to_f32: {} bytes for {n} {dtype} elements",
            src.len()
        )));
    }
    let src = &src[..need];
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::F8E4M3 => {
            for (o, &c) in out.iter_mut().zip(src) {
                *o = fp8::E4M3_TO_F32[c as usize];
            }
        }
        DType::F8E5M2 => {
            for (o, &c) in out.iter_mut().zip(src) {
                *o = fp8::E5M2_TO_F32[c as usize];
            }
        }
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32;
            }
        }
        DType::Bool | DType::U8 => {
            for (o, &c) in out.iter_mut().zip(src) {
                *o = c as f32;
            }
        }
        DType::I8 => {
            for (o, &c) in out.iter_mut().zip(src) {
                *o = c as i8 as f32;
            }
        }
        DType::I16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = i16::from_le_bytes([c[0], c[1]]) as f32;
            }
        }
        DType::I32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32;
            }
        }
        DType::I64 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(8)) {
                *o = i64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32;
            }
        }
    }
    Ok(())
}

/// Narrows f32 values to `dtype`, appending little-endian bytes to `out`.
///
/// Floats round to nearest even (fp8 saturates to its finite range; NaN stays NaN). Integer
/// targets round to nearest and saturate; NaN becomes 0.
pub fn narrow_from_f32(src: &[f32], dtype: DType, out: &mut Vec<u8>) {
    out.reserve(src.len() * dtype.size_in_bytes());
    match dtype {
        DType::F32 => src
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::BF16 => src
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes())),
        DType::F16 => src
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes())),
        DType::F8E4M3 => out.extend(src.iter().map(|&v| fp8::f32_to_e4m3(v))),
        DType::F8E5M2 => out.extend(src.iter().map(|&v| fp8::f32_to_e5m2(v))),
        DType::F64 => src
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as f64).to_le_bytes())),
        DType::Bool => out.extend(src.iter().map(|&v| u8::from(v != 0.0 && !v.is_nan()))),
        DType::U8 => out.extend(src.iter().map(|&v| v.round() as u8)),
        DType::I8 => out.extend(src.iter().map(|&v| v.round() as i8 as u8)),
        DType::I16 => src
            .iter()
            .for_each(|v| out.extend_from_slice(&(v.round() as i16).to_le_bytes())),
        DType::I32 => src
            .iter()
            .for_each(|v| out.extend_from_slice(&(v.round() as i32).to_le_bytes())),
        DType::I64 => src
            .iter()
            .for_each(|v| out.extend_from_slice(&(v.round() as i64).to_le_bytes())),
    }
}

/// Converts `src` (elements of `from`) to the bytes of `to`. f64 → narrower float types round
/// once, directly from f64, where the target allows it (f32, f16, bf16).
pub fn convert_bytes(src: &[u8], from: DType, to: DType) -> Result<Vec<u8>> {
    let n = src.len() / from.size_in_bytes();
    if from == to {
        return Ok(src.to_vec());
    }
    if from == DType::F64 && matches!(to, DType::F16 | DType::BF16 | DType::I64) {
        let mut out = Vec::with_capacity(n * to.size_in_bytes());
        for c in src.chunks_exact(8) {
            let v = f64::from_le_bytes(c.try_into().expect("8-byte chunk"));
            match to {
                DType::F16 => out.extend_from_slice(&f16::from_f64(v).to_bits().to_le_bytes()),
                DType::BF16 => out.extend_from_slice(&bf16::from_f64(v).to_bits().to_le_bytes()),
                _ => out.extend_from_slice(&(v.round() as i64).to_le_bytes()),
            }
        }
        return Ok(out);
    }
    if to == DType::F64 && matches!(from, DType::I64 | DType::I32) {
        let mut out = Vec::with_capacity(n * 8);
        for c in src.chunks_exact(from.size_in_bytes()) {
            let v = if from == DType::I64 {
                i64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f64
            } else {
                i32::from_le_bytes(c.try_into().expect("4-byte chunk")) as f64
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        return Ok(out);
    }
    // Everything else goes through f32 in blocks, so no full-size f32 copy is ever made.
    const BLOCK: usize = 1 << 14;
    let mut out = Vec::with_capacity(n * to.size_in_bytes());
    let mut buf = vec![0f32; BLOCK.min(n)];
    let es = from.size_in_bytes();
    for start in (0..n).step_by(BLOCK) {
        let len = BLOCK.min(n - start);
        widen_to_f32(&src[start * es..(start + len) * es], from, &mut buf[..len])?;
        narrow_from_f32(&buf[..len], to, &mut out);
    }
    Ok(out)
}
