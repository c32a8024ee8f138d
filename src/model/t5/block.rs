//! One UMT5 encoder block and the bidirectional relative-position bias
//! (wan-architecture.md §3.2).

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::ops::{attention, embedding, AttentionParams};
use crate::tensor::{Tensor, Weight};

/// The RMS norms' epsilon (T5 `LayerNorm`, no mean, no bias).
pub(super) const EPS: f32 = 1e-6;

/// Relative distances at and beyond this share the last bucket (Wan's `max_dist`).
const MAX_DISTANCE: usize = 128;

/// One encoder block's parameters, in their stored dtype.
#[derive(Debug, Clone)]
pub(super) struct Block {
    pub norm1: Weight,
    pub q: Weight,
    pub k: Weight,
    pub v: Weight,
    pub o: Weight,
    /// This block's relative-position table `[num_buckets, heads]`, or `None` when the encoder
    /// shares one table across blocks.
    pub pos: Option<Weight>,
    pub norm2: Weight,
    /// The GELU branch of the gated feed-forward (`ffn.gate.0`, HF `wi_0`).
    pub gate: Weight,
    /// The linear branch (`ffn.fc1`, HF `wi_1`).
    pub fc1: Weight,
    pub fc2: Weight,
}

/// What every block of one forward shares.
pub(super) struct Shared<'a> {
    /// Real tokens per batch entry: keys past them are masked.
    pub lens: &'a [usize],
    /// `bucket(k − q)` for every query/key pair, `[L, L]` row-major.
    pub buckets: &'a [u32],
    /// The bias of a shared table, built once (`None` with per-block tables).
    pub shared_bias: Option<&'a Tensor>,
    pub heads: usize,
}

impl Block {
    /// The block with its weights on `d` (stored dtypes kept).
    pub fn to_device(&self, d: Device) -> Result<Block> {
        let m = |w: &Weight| w.to_device(d);
        Ok(Block {
            norm1: m(&self.norm1)?,
            q: m(&self.q)?,
            k: m(&self.k)?,
            v: m(&self.v)?,
            o: m(&self.o)?,
            pos: self.pos.as_ref().map(m).transpose()?,
            norm2: m(&self.norm2)?,
            gate: m(&self.gate)?,
            fc1: m(&self.fc1)?,
            fc2: m(&self.fc2)?,
        })
    }

    /// `x [B, L, dim]` → `[B, L, dim]`:
    /// `x += O·Attn(RMS1 x)`, then `x += FC2(FC1(RMS2 x) ⊙ gelu_tanh(GATE(RMS2 x)))`.
    pub fn forward(&self, x: &Tensor, s: &Shared<'_>) -> Result<Tensor> {
        let &[b, l, _] = x.dims() else {
            return Err(Error::ShapeMismatch {
                op: "T5 block",
                expected: "[B, L, dim]".into(),
                got: x.shape().clone(),
            });
        };
        let own_bias;
        let bias = match (&self.pos, s.shared_bias) {
            (Some(table), _) => {
                own_bias = position_bias(table, s.buckets, l)?;
                &own_bias
            }
            (None, Some(shared)) => shared,
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "T5 block: no relative-position table".into(),
                ))
            }
        };
        let h = x.rms_norm(Some(&self.norm1), EPS)?;
        let dim_attn = self.q.dims()[0];
        let head_dim = dim_attn / s.heads;
        let split = |w: &Weight| -> Result<Tensor> {
            h.linear(w, None)?.reshape([b, l, s.heads, head_dim])
        };
        let (q, k, v) = (split(&self.q)?, split(&self.k)?, split(&self.v)?);
        // T5 does not scale the logits by 1/sqrt(head_dim).
        let params = AttentionParams {
            scale: 1.0,
            kv_lens: Some(s.lens),
            bias: Some(bias),
        };
        let a = attention(&q, &k, &v, &params)?.reshape([b, l, dim_attn])?;
        let x = x.add(&a.linear(&self.o, None)?)?;
        let h = x.rms_norm(Some(&self.norm2), EPS)?;
        let gated = h
            .linear(&self.fc1, None)?
            .mul(&h.linear(&self.gate, None)?.gelu_tanh()?)?;
        x.add(&gated.linear(&self.fc2, None)?)
    }
}

/// The bucket of relative position `rel = key − query` (bidirectional, as Wan's
/// `T5RelativeEmbedding`): half the buckets for keys after the query; within a half, exact
/// distances below a quarter of the buckets, then logarithmic bins up to [`MAX_DISTANCE`].
/// The logarithm is taken in f32 exactly as upstream does (`torch.log` on float32, divided by
/// `log(max_dist / max_exact)` as f32, truncated), so bin edges land where upstream's do.
pub(super) fn relative_bucket(rel: i64, num_buckets: usize) -> usize {
    let half = num_buckets / 2;
    let base = if rel > 0 { half } else { 0 };
    let n = rel.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return base + n;
    }
    let ratio = ((n as f32) / (max_exact as f32)).ln()
        / ((MAX_DISTANCE as f64 / max_exact as f64).ln() as f32);
    let large = max_exact + (ratio * (half - max_exact) as f32) as usize;
    base + large.min(half - 1)
}

/// `bucket(k − q)` for a `len × len` attention, row-major by query: the ids the position
/// bias looks up (host data, like token ids).
pub(super) fn bucket_matrix(len: usize, num_buckets: usize) -> Result<Vec<u32>> {
    if num_buckets == 0 || num_buckets > 256 {
        return Err(Error::InvalidConfig(format!(
            "T5: {num_buckets} relative-position buckets (1 to 256 supported)"
        )));
    }
    let mut out = Vec::with_capacity(len * len);
    for q in 0..len as i64 {
        out.extend((0..len as i64).map(|k| relative_bucket(k - q, num_buckets) as u32));
    }
    Ok(out)
}

/// The attention bias `[H, L, L]` of a table `[num_buckets, H]`:
/// `bias[h, q, k] = table[bucket(k − q), h]`, as tensor ops (an [`embedding`] lookup of the
/// bucket ids, then a permute), on the table's device.
pub(super) fn position_bias(table: &Weight, buckets: &[u32], len: usize) -> Result<Tensor> {
    let &[_, heads] = table.dims() else {
        return Err(Error::ShapeMismatch {
            op: "T5 position bias",
            expected: "a table [num_buckets, heads]".into(),
            got: table.tensor.shape().clone(),
        });
    };
    if buckets.len() != len * len {
        return Err(Error::InvalidArgument(format!(
            "T5 position bias: {} bucket ids for {len} tokens",
            buckets.len()
        )));
    }
    embedding(buckets, table)?
        .reshape([len, len, heads])?
        .permute(&[2, 0, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the bucket changes, from upstream's `_relative_position_bucket` (32 buckets, max
    /// distance 128) evaluated with torch over -600..=600: (first distance, bucket) on each side.
    #[test]
    fn buckets_match_upstream_edges() {
        let after = [
            (1, 17),
            (7, 23),
            (8, 24),
            (12, 25),
            (16, 26),
            (23, 27),
            (32, 28),
            (46, 29),
            (64, 30),
            (91, 31),
        ];
        let mut edges_after = Vec::new();
        let mut edges_before = Vec::new();
        let (mut pa, mut pb) = (usize::MAX, usize::MAX);
        for n in 0..=600i64 {
            let (a, b) = (relative_bucket(n, 32), relative_bucket(-n, 32));
            if a != pa && n > 0 {
                edges_after.push((n, a));
            }
            if b != pb && n > 0 {
                edges_before.push((n, b));
            }
            (pa, pb) = (a, b);
        }
        assert_eq!(relative_bucket(0, 32), 0);
        let want_after: Vec<(i64, usize)> = (1..=8)
            .map(|n| (n, 16 + n as usize))
            .chain(after.iter().copied().filter(|&(n, _)| n > 8))
            .collect();
        assert_eq!(edges_after, want_after);
        let want_before: Vec<(i64, usize)> = want_after.iter().map(|&(n, b)| (n, b - 16)).collect();
        assert_eq!(edges_before, want_before);
        // wan-architecture.md §3.2 examples.
        for (rel, b) in [
            (-1, 1),
            (-10, 8),
            (-20, 10),
            (-100, 15),
            (20, 26),
            (70, 30),
            (100, 31),
        ] {
            assert_eq!(relative_bucket(rel, 32), b, "rel {rel}");
        }
    }

    #[test]
    fn bias_gathers_the_table_per_head() {
        let nb = 32;
        let heads = 3;
        let table: Vec<f32> = (0..nb * heads).map(|i| i as f32).collect();
        let table = Weight::new(Tensor::from_f32(table, [nb, heads]).unwrap());
        let len = 5;
        let buckets = bucket_matrix(len, nb).unwrap();
        let bias = position_bias(&table, &buckets, len).unwrap();
        let v = bias.f32_data().unwrap();
        for h in 0..heads {
            for q in 0..len {
                for k in 0..len {
                    let b = relative_bucket(k as i64 - q as i64, nb);
                    assert_eq!(v[(h * len + q) * len + k], (b * heads + h) as f32);
                }
            }
        }
    }
}
