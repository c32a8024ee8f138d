//! The trainer's random numbers: one seeded ChaCha8 stream whose position is saved with the
//! training state, so that a resumed run draws exactly what an uninterrupted one would.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded random stream with a saveable position.
#[derive(Debug, Clone)]
pub struct TrainRng {
    seed: u64,
    inner: ChaCha8Rng,
}

impl TrainRng {
    /// The stream of `seed`, at its start.
    pub fn new(seed: u64) -> TrainRng {
        TrainRng {
            seed,
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The stream of `seed` at `position` (a value of [`TrainRng::position`]).
    pub fn at(seed: u64, position: u128) -> TrainRng {
        let mut rng = TrainRng::new(seed);
        rng.inner.set_word_pos(position);
        rng
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The position in the stream (32-bit words drawn so far).
    pub fn position(&self) -> u128 {
        self.inner.get_word_pos()
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller on two uniforms).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (1.0 - self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_resumes_at_its_saved_position() {
        let mut a = TrainRng::new(42);
        a.normal();
        a.uniform();
        let mut b = TrainRng::at(42, a.position());
        assert_eq!(a.next_u64(), b.next_u64());
        assert_eq!(a.normal().to_bits(), b.normal().to_bits());
        assert_ne!(TrainRng::new(1).next_u64(), TrainRng::new(2).next_u64());
    }
}
