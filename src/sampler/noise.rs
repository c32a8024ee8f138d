//! Seeded Gaussian noise that is the same on every run, thread count and backend.
//!
//! The generator is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
//! SC'11; the counter-based generator of cuRAND and PyTorch's CUDA generator), written here from
//! the published algorithm and checked against Random123's known-answer vectors. Counter-based
//! means element `k` of a stream is a pure function of `(seed, stream, k)`: noise is generated in
//! parallel blocks keyed by element index, so neither the thread count nor the block size nor
//! the order of generation can change a single bit.
//!
//! Layout: element `k` is lane `k mod 4` of the Philox block with counter
//! `[k/4 (low, high 32 bits), stream (low, high)]` and key `[seed (low, high)]`. Lanes 0, 1 and
//! lanes 2, 3 are Box-Muller pairs: with the block's words `r0..r3`,
//! `u = (r0 + ½)·2⁻³²` (in (0, 1), never 0), `θ = 2π·r1·2⁻³²`, `z0 = √(−2 ln u)·cos θ`,
//! `z1 = √(−2 ln u)·sin θ` (same for `r2, r3`). The transform is evaluated in f64 with `ln`,
//! `cos` and `sin` computed here from IEEE-754 additions, multiplications and divisions only
//! (plus the correctly rounded `sqrt`), never the platform's libm, so any backend that repeats
//! these operations gets the same bits; the result is rounded to f32. Samples lie within
//! ±6.67 (the 32-bit uniform bounds `u` below by 2⁻³³); the mass cut off is about 3·10⁻¹¹.
//!
//! The noise of a shape is its first `n` elements of stream 0, so it does not depend on the
//! shape beyond its element count. LCM re-noising after step `i` draws stream `1 + i`.

use rayon::prelude::*;

use super::{NoiseFn, Real};
use crate::error::Result;
use crate::tensor::ops::sampler::seeded_normal;
use crate::tensor::{Shape, Tensor};

/// An independent stream of a seed's noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The initial latent noise `x_T` (stream 0).
    Latent,
    /// The fresh noise LCM mixes in after step `step` (stream `1 + step`).
    Renoise {
        /// The step just taken.
        step: usize,
    },
}

impl Stream {
    /// The stream's number in the Philox counter.
    pub(crate) fn id(self) -> u64 {
        match self {
            Stream::Latent => 0,
            Stream::Renoise { step } => 1 + step as u64,
        }
    }
}

/// The initial latent noise for `seed`: an f32 tensor of `shape` filled from [`Stream::Latent`].
pub fn noise(seed: u64, shape: &[usize]) -> Result<Tensor> {
    let shape = Shape::new(shape.to_vec())?;
    let mut data = vec![0.0f32; shape.elem_count()];
    fill_normal(seed, Stream::Latent, 0, &mut data);
    Tensor::from_f32(data, shape)
}

/// The LCM solver's noise source for `seed`: after step `i` it draws [`Stream::Renoise`]
/// `{ step: i }`, shaped as the sample, in its dtype and on its device (generated there).
pub fn renoise_fn(seed: u64) -> NoiseFn {
    Box::new(move |step, like: &Tensor| {
        seeded_normal(
            seed,
            Stream::Renoise { step },
            like.shape(),
            like.dtype(),
            like.device(),
        )
    })
}

/// Elements per parallel task (a multiple of 4, so tasks start on block boundaries).
const CHUNK: usize = 1 << 14;

/// Fills `out` with elements `offset..offset + out.len()` of `stream` of `seed`: standard normal
/// samples rounded to f32 (then widened to `T`). Element `k` has the same value whichever call
/// and however many threads produce it.
pub fn fill_normal<T: Real>(seed: u64, stream: Stream, offset: u64, out: &mut [T]) {
    let gen = Gen {
        key: [seed as u32, (seed >> 32) as u32],
        stream: stream.id(),
    };
    if out.len() <= CHUNK {
        gen.fill(offset, out);
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| gen.fill(offset + (c * CHUNK) as u64, chunk));
    }
}

/// One seed's stream.
#[derive(Clone, Copy)]
struct Gen {
    key: [u32; 2],
    stream: u64,
}

impl Gen {
    /// The four normals of Philox block `block`.
    fn block(&self, block: u64) -> [f32; 4] {
        let ctr = [
            block as u32,
            (block >> 32) as u32,
            self.stream as u32,
            (self.stream >> 32) as u32,
        ];
        let r = philox4x32_10(ctr, self.key);
        let (z0, z1) = box_muller(r[0], r[1]);
        let (z2, z3) = box_muller(r[2], r[3]);
        [z0, z1, z2, z3]
    }

    /// Elements `offset..offset + out.len()`.
    fn fill<T: Real>(&self, offset: u64, out: &mut [T]) {
        let mut k = offset;
        let mut rest = out;
        while !rest.is_empty() {
            let z = self.block(k / 4);
            let lane = (k % 4) as usize;
            let n = (4 - lane).min(rest.len());
            for (o, &z) in rest[..n].iter_mut().zip(&z[lane..]) {
                *o = T::from_f64(z as f64);
            }
            rest = &mut rest[n..];
            k += n as u64;
        }
    }
}

/// Philox4x32 with 10 rounds: `counter` under `key` (Random123's `philox4x32_R(10, …)`).
pub(crate) fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = M0 * c[0] as u64;
        let p1 = M1 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// Two independent N(0, 1) samples from two 32-bit words.
fn box_muller(a: u32, b: u32) -> (f32, f32) {
    const TWO_POW_M32: f64 = 1.0 / 4_294_967_296.0;
    let u = (a as f64 + 0.5) * TWO_POW_M32;
    let r = (-2.0 * ln_unit(u)).sqrt();
    let (s, c) = sin_cos_turns(b as f64 * TWO_POW_M32);
    ((r * c) as f32, (r * s) as f32)
}

/// `ln x` for a positive normal `x`, from basic IEEE operations only (error below
/// `1e-15·max(1, |ln x|)`): `x = m·2^e` with `m ∈ [√½, √2)`, `ln m = 2·atanh(s)`, `s = (m − 1)/(m + 1)`,
/// `|s| ≤ 0.172`, series to `s²¹`.
fn ln_unit(x: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m >= SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // 1 + s²/3 + s⁴/5 + … + s²⁰/21, Horner from the highest term.
    let p = (0..=20)
        .rev()
        .step_by(2)
        .fold(0.0, |p, n| p * s2 + INV_ODD[n / 2]);
    e as f64 * LN_2 + 2.0 * s * p
}

/// `(sin 2πt, cos 2πt)` for `t ∈ [0, 1)` from basic IEEE operations only (|error| < 1e-15):
/// `t = q/4 + r` with `q` the nearest quarter turn (exact), `|2πr| ≤ π/4`, Taylor series to
/// degree 17 (sin) and 18 (cos), then rotated by `q` quarter turns.
fn sin_cos_turns(t: f64) -> (f64, f64) {
    let q = (t * 4.0).round();
    let a = (t - q * 0.25) * std::f64::consts::TAU;
    let a2 = a * a;
    // sin a = a·Σ (−a²)^k/(2k+1)!, cos a = Σ (−a²)^k/(2k)!, k ≤ 8 and 9; Horner from the top.
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for k in (0..=9).rev() {
        let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
        if k <= 8 {
            s = s * a2 + sign * INV_FACT[2 * k + 1];
        }
        c = c * a2 + sign * INV_FACT[2 * k];
    }
    let s = a * s;
    match q as u32 % 4 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// `1/n!` for `n ≤ 18` (each `n!` exact in f64, then one correctly rounded division).
pub(super) const INV_FACT: [f64; 19] = {
    let mut out = [0.0; 19];
    let (mut f, mut n) = (1.0f64, 0);
    while n < 19 {
        if n > 0 {
            f *= n as f64;
        }
        out[n] = 1.0 / f;
        n += 1;
    }
    out
};

/// `1/(2k + 1)` for `k ≤ 10`.
pub(super) const INV_ODD: [f64; 11] = {
    let mut out = [0.0; 11];
    let mut k = 0;
    while k < 11 {
        out[k] = 1.0 / (2 * k + 1) as f64;
        k += 1;
    }
    out
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's `kat_vectors` for philox4x32 with 10 rounds: counter, key, expected output.
    #[test]
    fn philox_known_answers() {
        let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            (
                [0; 4],
                [0; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (ctr, key, want) in cases {
            assert_eq!(philox4x32_10(ctr, key), want, "ctr {ctr:x?}");
        }
    }

    #[test]
    fn ln_matches_libm() {
        let mut worst = 0.0f64;
        for i in 0..200_000u64 {
            let x = ((i * 2_654_435_761) % (1u64 << 32)) as f64 / 4_294_967_296.0 + 1e-10;
            let err = (ln_unit(x) - x.ln()).abs() / x.ln().abs().max(1.0);
            worst = worst.max(err);
        }
        for x in [
            2f64.powi(-33),
            0.5,
            std::f64::consts::FRAC_1_SQRT_2,
            1.0 - 1e-10,
            0.999,
        ] {
            worst = worst.max((ln_unit(x) - x.ln()).abs() / x.ln().abs().max(1.0));
        }
        assert!(worst < 1e-15, "ln error {worst:e}");
    }

    #[test]
    fn sin_cos_match_libm() {
        let mut worst = 0.0f64;
        for i in 0..200_000u64 {
            let t = ((i * 2_654_435_761) % (1u64 << 32)) as f64 / 4_294_967_296.0;
            let (s, c) = sin_cos_turns(t);
            let a = t * std::f64::consts::TAU;
            worst = worst.max((s - a.sin()).abs()).max((c - a.cos()).abs());
        }
        assert!(worst < 1e-15, "sin/cos error {worst:e}");
        assert_eq!(sin_cos_turns(0.0), (0.0, 1.0));
        assert_eq!(sin_cos_turns(0.25), (1.0, 0.0));
    }

    #[test]
    fn offsets_and_chunking_do_not_change_elements() {
        let n = 3 * CHUNK + 7;
        let mut whole = vec![0.0f32; n];
        fill_normal(42, Stream::Latent, 0, &mut whole);
        // Odd offsets, lengths that straddle Philox blocks and parallel chunks.
        for (start, len) in [
            (0, 3),
            (1, 6),
            (5, 2),
            (CHUNK - 3, 9),
            (2 * CHUNK + 1, CHUNK),
        ] {
            let mut part = vec![0.0f32; len];
            fill_normal(42, Stream::Latent, start as u64, &mut part);
            assert_eq!(part, whole[start..start + len], "offset {start}");
        }
        let mut wide = vec![0.0f64; n];
        fill_normal(42, Stream::Latent, 0, &mut wide);
        assert!(wide.iter().zip(&whole).all(|(&w, &f)| w == f as f64));
    }

    #[test]
    fn streams_differ() {
        let mut a = vec![0.0f32; 64];
        let mut b = vec![0.0f32; 64];
        fill_normal(1, Stream::Latent, 0, &mut a);
        fill_normal(1, Stream::Renoise { step: 0 }, 0, &mut b);
        assert_ne!(a, b);
        let t = noise(1, &[2, 4, 8]).unwrap();
        assert_eq!(t.dims(), &[2, 4, 8]);
        assert_eq!(t.f32_data().unwrap(), &a[..]);
    }
}
