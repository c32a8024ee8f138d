//! Reproducible pseudo-random tensors, for benchmarks, tests and random-weight models (not for
//! sampling noise: that is [`crate::sampler::noise`]).
//!
//! The generator is counter-based: element `i` of stream `seed` is a hash of `(seed, i)`
//! (the SplitMix64 finalizer), so any chunk is computed on its own and chunks run in parallel.
//! Gigabytes of random bf16 weights (a 30-layer 1.3B model) then take a second or two instead of
//! the minutes a sequential generator would.

use rayon::prelude::*;

use crate::backend::cpu::elementwise::simd;
use crate::error::{Error, Result};
use crate::tensor::convert::narrow_from_f32;
use crate::tensor::{DType, Tensor, Weight};

/// Elements per parallel job.
const CHUNK: usize = 1 << 16;

/// Element `i` of stream `seed`, uniform in `[-1, 1)`. A 32-bit hash (two multiply-xorshift
/// rounds) so that the loops below vectorise; streams longer than 2^32 elements would repeat,
/// far beyond any Wan tensor.
#[inline(always)]
fn uniform(seed: u32, i: u32) -> f32 {
    let mut z = i ^ seed.wrapping_mul(0x9E37_79B9);
    z = (z ^ (z >> 16)).wrapping_mul(0x21F0_AAAD);
    z = (z ^ (z >> 15)).wrapping_mul(0x735A_2D97);
    z ^= z >> 15;
    // The top 24 bits are exact in an f32.
    (z >> 8) as f32 * (2.0 / (1u32 << 24) as f32) - 1.0
}

/// `out[j] = center + amp · u(seed, offset + j)`, in the widest SIMD instruction set.
fn fill(seed: u32, offset: usize, center: f32, amp: f32, out: &mut [f32]) {
    simd(|| {
        for (j, o) in out.iter_mut().enumerate() {
            *o = center + amp * uniform(seed, (offset + j) as u32);
        }
    })
}

/// As [`fill`], rounded to bf16 (to nearest even; the values are finite).
fn fill_bf16(seed: u32, offset: usize, center: f32, amp: f32, out: &mut [u16]) {
    simd(|| {
        for (j, o) in out.iter_mut().enumerate() {
            let b = (center + amp * uniform(seed, (offset + j) as u32)).to_bits();
            *o = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
        }
    })
}

/// `n` values of stream `seed`, uniform in `[-1, 1)`.
pub fn values(n: usize, seed: u32) -> Vec<f32> {
    filled(n, seed, 0.0, 1.0)
}

/// `n` values `center + amp · u(seed, i)`, generated in parallel chunks.
fn filled(n: usize, seed: u32, center: f32, amp: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    v.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, out)| fill(seed, c * CHUNK, center, amp, out));
    v
}

/// An f32 tensor of `center + amp · U[-1, 1)` values.
pub fn tensor(dims: &[usize], seed: u32, center: f32, amp: f32) -> Result<Tensor> {
    Tensor::from_f32(filled(dims.iter().product(), seed, center, amp), dims)
}

/// A weight of `dtype` holding `center + amp · U[-1, 1)` values (rounded to `dtype`), generated
/// chunk by chunk straight into its storage bytes.
pub fn weight(dims: &[usize], dtype: DType, seed: u32, center: f32, amp: f32) -> Result<Weight> {
    let n = dims.iter().product::<usize>();
    match dtype {
        DType::F32 => return Ok(Weight::new(tensor(dims, seed, center, amp)?)),
        DType::BF16 => {
            let mut bytes = vec![0u8; 2 * n];
            // The allocator aligns buffers to at least 16 bytes, so this cast succeeds.
            let v: &mut [u16] = bytemuck::try_cast_slice_mut(&mut bytes)
                .map_err(|e| Error::InvalidArgument(format!("random bf16 buffer: {e}")))?;
            v.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, out)| fill_bf16(seed, c * CHUNK, center, amp, out));
            return Ok(Weight::new(Tensor::from_bytes(bytes, dtype, dims)?));
        }
        _ => {}
    }
    let es = dtype.size_in_bytes();
    let mut bytes = vec![0u8; n * es];
    bytes
        .par_chunks_mut(CHUNK * es)
        .enumerate()
        .for_each(|(c, out)| {
            let mut vals = vec![0f32; out.len() / es];
            fill(seed, c * CHUNK, center, amp, &mut vals);
            let mut narrow = Vec::with_capacity(out.len());
            narrow_from_f32(&vals, dtype, &mut narrow);
            out.copy_from_slice(&narrow);
        });
    Ok(Weight::new(Tensor::from_bytes(bytes, dtype, dims)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_centred() {
        let n = 100_000;
        let v: Vec<f32> = (0..n).map(|i| uniform(7, i)).collect();
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = v.iter().sum::<f32>() / n as f32;
        let var = v.iter().map(|x| x * x).sum::<f32>() / n as f32;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "variance {var}");
        assert_ne!(uniform(1, 5), uniform(2, 5));
    }

    /// Every dtype holds the f32 values rounded as the library rounds them, across chunks.
    #[test]
    fn weights_are_the_f32_values_rounded() {
        let dims = [3, CHUNK / 2 + 5];
        let f = tensor(&dims, 3, 0.5, 0.25).unwrap().to_f32_vec().unwrap();
        for dtype in [DType::BF16, DType::F16, DType::F8E4M3, DType::F8E5M2] {
            let w = weight(&dims, dtype, 3, 0.5, 0.25).unwrap();
            assert_eq!((w.dtype(), w.dims()), (dtype, &dims[..]));
            let mut want = Vec::new();
            narrow_from_f32(&f, dtype, &mut want);
            assert_eq!(w.tensor.raw_bytes().unwrap(), &want[..], "{dtype:?}");
        }
    }
}
