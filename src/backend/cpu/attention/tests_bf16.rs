//! [`super::attention_bf16`], both paths, against an f64 reference that rounds where they round.

use half::bf16 as Bf16;

use super::*;
use crate::tensor::random::values;

/// The two ways [`attention_bf16`] computes, and their key tiles (the probabilities are rounded
/// relative to the running maximum of the tiles seen so far).
#[derive(Clone, Copy, Debug)]
enum Path {
    Packed,
    RoundedCopies,
}

impl Path {
    fn tile_k(self) -> usize {
        match self {
            Path::Packed => bf16::TILE_K,
            Path::RoundedCopies => TILE_K,
        }
    }

    fn run(self, q: &[f32], k: &[f32], v: &[f32], dims: AttnDims, opts: &AttnOpts<'_>) -> Vec<f32> {
        let mut out = vec![f32::NAN; q.len()];
        if has_work("test", q, k, v, dims, opts, &mut out).unwrap() {
            match self {
                Path::Packed => bf16::attention(q, k, v, dims, opts, &mut out),
                Path::RoundedCopies => attention_bf16_rounded_copies(q, k, v, dims, opts, &mut out),
            }
        }
        out
    }
}

/// The paths this CPU can run (the packed one needs AVX512-BF16).
fn paths() -> Vec<Path> {
    if has_bf16_dot() {
        vec![Path::Packed, Path::RoundedCopies]
    } else {
        println!("no AVX512-BF16 on this CPU: the packed path is not tested");
        vec![Path::RoundedCopies]
    }
}

fn round(x: f32) -> f64 {
    Bf16::from_f32(x).to_f64()
}

/// Per output element: the value in f64 from bf16 q, k, v, the online softmax over key tiles of
/// `tile_k` with each probability rounded to bf16 at its tile's running maximum, and the
/// tolerance: 1e-5 plus 2⁻⁸ of the largest `|p·v| / Σp` of its row (an f32 rounding of a logit
/// may move one probability across a bf16 rounding boundary).
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttnDims,
    opts: &AttnOpts<'_>,
    tile_k: usize,
) -> Vec<(f64, f64)> {
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: d,
    } = dims;
    let at = |b: usize, s: usize, len: usize, h: usize| ((b * len + s) * heads + h) * d;
    let mut out = vec![(0.0, 1e-5); q.len()];
    for b in 0..batch {
        let keys = opts.kv_lens.map_or(kv_len, |l| l[b]);
        for h in 0..heads {
            let plane = if opts.bias_per_batch {
                b * heads + h
            } else {
                h
            };
            for i in 0..q_len {
                let qi = &q[at(b, i, q_len, h)..][..d];
                let logits: Vec<f64> = (0..keys)
                    .map(|j| {
                        let kj = &k[at(b, j, kv_len, h)..][..d];
                        let dot: f64 = qi.iter().zip(kj).map(|(&x, &y)| round(x) * round(y)).sum();
                        let bias = opts
                            .bias
                            .map_or(0.0, |bias| bias[(plane * q_len + i) * kv_len + j] as f64);
                        opts.scale as f64 * dot + bias
                    })
                    .collect();
                let (mut m, mut l, mut o) = (f64::NEG_INFINITY, 0.0, vec![0.0; d]);
                for (t, tile) in logits.chunks(tile_k).enumerate() {
                    let m_new = tile.iter().cloned().fold(m, f64::max);
                    if m_new == f64::NEG_INFINITY {
                        continue;
                    }
                    let c = (m - m_new).exp();
                    o.iter_mut().for_each(|x| *x *= c);
                    l *= c;
                    m = m_new;
                    for (j, &x) in tile.iter().enumerate() {
                        let p = (x - m).exp();
                        l += p;
                        let vj = &v[at(b, t * tile_k + j, kv_len, h)..][..d];
                        let p = Bf16::from_f64(p).to_f64();
                        o.iter_mut().zip(vj).for_each(|(o, &y)| *o += p * round(y));
                    }
                }
                if l == 0.0 {
                    continue;
                }
                let peak = logits
                    .iter()
                    .enumerate()
                    .map(|(j, &x)| {
                        let vj = &v[at(b, j, kv_len, h)..][..d];
                        (x - m).exp() * vj.iter().fold(0f64, |a, &y| a.max(round(y).abs()))
                    })
                    .fold(0.0, f64::max);
                let tol = 1e-5 + peak / l / 256.0;
                for (c, o) in o.iter().enumerate() {
                    out[at(b, i, q_len, h) + c] = (o / l, tol);
                }
            }
        }
    }
    out
}

struct Case {
    dims: AttnDims,
    scale: f32,
    kv_lens: Option<Vec<usize>>,
    bias: Option<(Vec<f32>, bool)>,
}

impl Case {
    fn new(batch: usize, q_len: usize, kv_len: usize, heads: usize, head_dim: usize) -> Self {
        Case {
            dims: AttnDims {
                batch,
                q_len,
                kv_len,
                heads,
                head_dim,
            },
            scale: 1.0 / (head_dim as f32).sqrt(),
            kv_lens: None,
            bias: None,
        }
    }

    fn inputs(&self) -> [Vec<f32>; 3] {
        let AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        } = self.dims;
        let kv = batch * kv_len * heads * head_dim;
        [
            values(batch * q_len * heads * head_dim, 1),
            values(kv, 2),
            values(kv, 3),
        ]
    }

    fn opts(&self) -> AttnOpts<'_> {
        AttnOpts {
            scale: self.scale,
            kv_lens: self.kv_lens.as_deref(),
            bias: self.bias.as_ref().map(|b| b.0.as_slice()),
            bias_per_batch: self.bias.as_ref().is_some_and(|b| b.1),
        }
    }

    /// Every path within the reference's tolerance.
    fn check(&self) {
        let [q, k, v] = self.inputs();
        let opts = self.opts();
        for path in paths() {
            let want = reference(&q, &k, &v, self.dims, &opts, path.tile_k());
            let got = path.run(&q, &k, &v, self.dims, &opts);
            for (i, (&g, &(w, tol))) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= tol,
                    "{path:?} {:?} at {i}: {g} vs {w} (tolerance {tol:e})",
                    self.dims
                );
            }
        }
    }
}

#[test]
fn bf16_matches_rounded_reference_on_odd_sizes() {
    for d in [64, 128] {
        for (sq, sk) in [(1, 1), (7, 65), (129, 7), (65, 300), (300, 129), (230, 449)] {
            Case::new(2, sq, sk, 2, d).check();
        }
    }
    let mut odd = Case::new(1, 5, 9, 3, 3);
    odd.scale = 0.7;
    odd.check();
}

#[test]
fn bf16_limits_keys_and_stays_stable() {
    let mut c = Case::new(3, 20, 300, 2, 64);
    c.kv_lens = Some(vec![300, 1, 257]);
    c.check();
    c.kv_lens = Some(vec![0, 10, 0]);
    c.check();
    let mut peaked = Case::new(1, 33, 300, 1, 64);
    peaked.scale = 40.0;
    peaked.check();
}

#[test]
fn bf16_adds_bias_and_zeroes_masked_rows() {
    // The T5 encoder's shape, scaled down: a shared bias, no scaling.
    let mut t5 = Case::new(2, 70, 70, 4, 64);
    t5.scale = 1.0;
    t5.bias = Some((values(4 * 70 * 70, 4), false));
    t5.check();
    let mut per_batch = Case::new(2, 70, 300, 2, 128);
    per_batch.kv_lens = Some(vec![300, 123]);
    per_batch.bias = Some((values(2 * 2 * 70 * 300, 5), true));
    per_batch.check();
    // -inf bias: row 0 sees no key at all, row 1 only key 280 (in the second key tile), row 2
    // only keys in the first tile.
    let (sq, sk) = (3, 300);
    let mut bias = vec![f32::NEG_INFINITY; sq * sk];
    bias[sk + 280] = 0.0;
    bias[2 * sk..2 * sk + 10].fill(0.5);
    let mut masked = Case::new(1, sq, sk, 1, 64);
    masked.bias = Some((bias, false));
    masked.check();
}

/// The tolerance is tight enough to tell bf16 products from f32 ones: the f32 attention on the
/// same inputs falls outside it.
#[test]
fn bf16_reference_tells_f32_products_apart() {
    let c = Case::new(2, 65, 300, 2, 128);
    let [q, k, v] = c.inputs();
    let opts = c.opts();
    let want = reference(&q, &k, &v, c.dims, &opts, TILE_K);
    let mut f32_out = vec![0.0; q.len()];
    attention(&q, &k, &v, c.dims, &opts, &mut f32_out).unwrap();
    let outside = f32_out
        .iter()
        .zip(&want)
        .filter(|(&g, &(w, tol))| (g as f64 - w).abs() > tol)
        .count();
    assert!(
        outside > want.len() / 100,
        "{outside} of {} outside",
        want.len()
    );
}
