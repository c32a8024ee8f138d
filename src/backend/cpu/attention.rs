//! Scaled dot-product attention in tiles with an online softmax (the flash-attention scheme).
//!
//! Each parallel job owns one (batch, head, query tile). It walks the keys in tiles: the logits
//! of a tile come from one sgemm of the (scaled) queries with the keys, are folded into a running
//! row maximum and row sum, and the softmax-weighted values are accumulated with a second sgemm
//! reading v in place (the `[S, H, D]` layout is a strided view with row stride `H·D`); the
//! result goes straight to its rows of the `[B, Sq, H, D]` output. Memory is O(tile) per job plus
//! one transposed copy of k, O(tokens·D) overall, never O(tokens²). The exponentials, the other
//! hot loop, use a polynomial that vectorises (AVX-512 or AVX2 chosen at run time).
//! [`attention_bf16`] (the bf16 compute mode) runs the same scheme with bf16 products, on
//! `vdpbf16ps` with each head's keys and values packed once (`bf16` below) where the CPU has
//! AVX512-BF16.

use rayon::prelude::*;

use super::compute::round_to_bf16;
use super::gemm::{sgemm, MatRef, RawMatMut};
use super::gemm_bf16::has_bf16_dot;
use crate::error::{Error, Result};

mod bf16;
#[cfg(test)]
mod tests_bf16;

/// Queries per job. Big tiles amortise the gemm crate's per-call packing of the k and v tiles
/// (256 x 256 ran about 10% faster than 128 x 256 at 3744 tokens, d 128).
const TILE_Q: usize = 256;
/// Keys per logits tile.
const TILE_K: usize = 256;

/// The sizes of an attention call: q is `[batch, q_len, heads, head_dim]`, k and v are
/// `[batch, kv_len, heads, head_dim]`, all row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Batch size.
    pub batch: usize,
    /// Query tokens.
    pub q_len: usize,
    /// Key/value tokens.
    pub kv_len: usize,
    /// Heads.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl AttnDims {
    /// Checks the lengths of q and the output (`batch·q_len·heads·head_dim`) and of k and v
    /// (`batch·kv_len·heads·head_dim`); `op` names the caller in the error.
    pub fn check_buffers<T, U>(
        &self,
        op: &str,
        q: &[T],
        k: &[T],
        v: &[T],
        out: &[U],
    ) -> Result<()> {
        self.check_lens(op, [q.len(), k.len(), v.len(), out.len()])
    }

    /// [`AttnDims::check_buffers`] for buffers given by their lengths `[q, k, v, out]` (device
    /// buffers); a size that overflows `usize` is refused too.
    pub fn check_lens(&self, op: &str, [q, k, v, out]: [usize; 4]) -> Result<()> {
        let row = [self.batch, self.heads, self.head_dim]
            .into_iter()
            .try_fold(1usize, usize::checked_mul);
        let sizes =
            row.and_then(|r| Some((r.checked_mul(self.q_len)?, r.checked_mul(self.kv_len)?)));
        match sizes {
            Some((q_size, kv_size))
                if q == q_size && out == q_size && k == kv_size && v == kv_size =>
            {
                Ok(())
            }
            _ => Err(Error::InvalidArgument(format!(
                "{op}: buffer sizes do not match {self:?}"
            ))),
        }
    }
}

/// What changes the logits: `softmax(scale · q kᵀ + bias)`, keys limited per batch.
#[derive(Clone, Copy, Debug)]
pub struct AttnOpts<'a> {
    /// Multiplier of q kᵀ.
    pub scale: f32,
    /// Batch `b` attends only to its first `kv_lens[b]` keys.
    pub kv_lens: Option<&'a [usize]>,
    /// Added to the logits: `[heads, q_len, kv_len]`, or `[batch, heads, q_len, kv_len]` when
    /// `bias_per_batch`.
    pub bias: Option<&'a [f32]>,
    /// Whether `bias` has a batch dimension.
    pub bias_per_batch: bool,
}

/// Computes attention into `out` (`[batch, q_len, heads, head_dim]`). A query row whose keys are
/// all masked (`kv_lens[b] == 0`, or a bias of `-inf` everywhere) gets zeros.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttnDims,
    opts: &AttnOpts<'_>,
    out: &mut [f32],
) -> Result<()> {
    if has_work("attention", q, k, v, dims, opts, out)? {
        attention_f32(q, k, v, dims, opts, out, false);
    }
    Ok(())
}

/// [`attention`] with bf16 products, the arithmetic of the CUDA kernel: the logits are
/// `bf16(q)·bf16(k)ᵀ` summed in f32, then scaled (and biased) in f32; the softmax, its row maxima
/// and sums stay f32; the probabilities are rounded to bf16 for the product with `bf16(v)`,
/// which sums in f32. q, k and v are rounded here (they may be f32 values). On CPUs with
/// AVX512-BF16 the products run on `vdpbf16ps` with each head's keys and values packed once
/// (`bf16` below); elsewhere on f32 copies of the rounded values, slower, the same products.
pub fn attention_bf16(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttnDims,
    opts: &AttnOpts<'_>,
    out: &mut [f32],
) -> Result<()> {
    if has_work("attention_bf16", q, k, v, dims, opts, out)? {
        if has_bf16_dot() {
            bf16::attention(q, k, v, dims, opts, out);
        } else {
            attention_bf16_rounded_copies(q, k, v, dims, opts, out);
        }
    }
    Ok(())
}

/// [`attention_bf16`] through the f32 tiles: rounded copies of q, k and v, probabilities rounded
/// before the value product.
fn attention_bf16_rounded_copies(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttnDims,
    opts: &AttnOpts<'_>,
    out: &mut [f32],
) {
    let rounded = |x: &[f32]| {
        let mut x = x.to_vec();
        round_to_bf16(&mut x);
        x
    };
    let (q, k, v) = (rounded(q), rounded(k), rounded(v));
    attention_f32(&q, &k, &v, dims, opts, out, true);
}

/// Checks the buffers and options; false when there is nothing to compute (no queries, or no
/// keys: then `out` is zeros).
fn has_work(
    op: &str,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttnDims,
    opts: &AttnOpts<'_>,
    out: &mut [f32],
) -> Result<bool> {
    dims.check_buffers(op, q, k, v, out)?;
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        ..
    } = dims;
    let bias_size = if opts.bias_per_batch { batch } else { 1 } * heads * q_len * kv_len;
    if opts.bias.is_some_and(|b| b.len() != bias_size) {
        return Err(Error::InvalidArgument(format!(
            "{op}: bias size does not match {dims:?}"
        )));
    }
    if let Some(lens) = opts.kv_lens {
        if lens.len() != batch || lens.iter().any(|&l| l > kv_len) {
            return Err(Error::InvalidArgument(format!(
                "{op}: kv_lens {lens:?} for batch {batch} and {kv_len} keys"
            )));
        }
    }
    if kv_len == 0 {
        // No keys: every query row is fully masked.
        out.fill(0.0);
        return Ok(false);
    }
    Ok(!q.is_empty())
}

/// One parallel job of the attention: a (batch, head, query tile).
struct Tile<'a> {
    b: usize,
    h: usize,
    /// First query and number of queries.
    q0: usize,
    tq: usize,
    /// Keys attended to (`kv_lens[b]`).
    keys: usize,
    /// Row `i` of the tile's bias starts at `i * kv_len`.
    bias: Option<&'a [f32]>,
    /// The tile's `tq × head_dim` block of the output.
    dst: RawMatMut,
}

/// Runs `job` on every (batch, head, query tile of `tile_q` queries) in parallel, with per-thread
/// scratch from `scratch`. Each tile's `dst` is its own block of `out`: jobs may write it.
fn for_each_tile<S>(
    dims: AttnDims,
    opts: &AttnOpts<'_>,
    tile_q: usize,
    out: &mut [f32],
    scratch: impl Fn() -> S + Send + Sync,
    job: impl Fn(&mut S, Tile<'_>) + Send + Sync,
) {
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: d,
    } = dims;
    let q_tiles = q_len.div_ceil(tile_q);
    let row = heads * d;
    let out_all = RawMatMut {
        ptr: out.as_mut_ptr(),
        rows: batch * q_len,
        cols: row,
        row_stride: row,
    };
    (0..batch * heads * q_tiles)
        .into_par_iter()
        .for_each_init(scratch, |scratch, i| {
            let (b, h, t) = (i / (heads * q_tiles), i / q_tiles % heads, i % q_tiles);
            let q0 = t * tile_q;
            let tq = tile_q.min(q_len - q0);
            let plane = if opts.bias_per_batch {
                b * heads + h
            } else {
                h
            };
            let tile = Tile {
                b,
                h,
                q0,
                tq,
                keys: opts.kv_lens.map_or(kv_len, |l| l[b]),
                bias: opts.bias.map(|bias| &bias[(plane * q_len + q0) * kv_len..]),
                // Distinct (batch, head, query tile)s own disjoint blocks of `out`, which this
                // function borrows exclusively for the whole parallel loop.
                dst: out_all.block(b * q_len + q0, h * d, tq, d),
            };
            job(scratch, tile)
        });
}

/// The f32 tiles: two sgemm per key tile. `round_p` rounds the probabilities to bf16 before the
/// value product ([`attention_bf16`] without AVX512-BF16).
#[allow(clippy::too_many_arguments)]
fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttnDims,
    opts: &AttnOpts<'_>,
    out: &mut [f32],
    round_p: bool,
) {
    let AttnDims {
        q_len,
        kv_len,
        heads,
        head_dim: d,
        ..
    } = dims;
    let row = heads * d;
    // k transposed to [batch, heads, d, kv_len]: the logits GEMM then reads contiguous rows.
    // Packed from the strided [kv_len, heads, d] layout, the gemm crate copies element by
    // element, which took a tenth of the whole attention time.
    let mut kt = vec![0.0; k.len()];
    kt.par_chunks_mut(d * kv_len)
        .enumerate()
        .for_each(|(bh, dst)| {
            let (b, h) = (bh / heads, bh % heads);
            for j in 0..kv_len {
                let src = &k[(b * kv_len + j) * row + h * d..][..d];
                src.iter()
                    .enumerate()
                    .for_each(|(c, &x)| dst[c * kv_len + j] = x);
            }
        });
    for_each_tile(
        dims,
        opts,
        TILE_Q,
        out,
        || Scratch::new(d),
        |scratch, t| {
            let job = Job {
                q: &q[(t.b * q_len + t.q0) * row + t.h * d..],
                kt: &kt[(t.b * heads + t.h) * d * kv_len..],
                v: &v[t.b * kv_len * row + t.h * d..],
                bias: t.bias,
                tq: t.tq,
                keys: t.keys,
                kv_len,
                row,
                d,
                scale: opts.scale,
                round_p,
            };
            // SAFETY: the tile's block of `out` is ours (`for_each_tile`).
            unsafe { job.run(scratch, t.dst) };
        },
    );
}

/// Per-thread buffers, reused across jobs.
struct Scratch {
    /// Scaled queries `[TILE_Q, d]`.
    q: Vec<f32>,
    /// Logits, then probabilities `[TILE_Q, TILE_K]`.
    s: Vec<f32>,
    /// Unnormalised output `[TILE_Q, d]`.
    o: Vec<f32>,
    /// Running row maxima and sums.
    m: Vec<f32>,
    l: Vec<f32>,
}

impl Scratch {
    fn new(d: usize) -> Self {
        Scratch {
            q: vec![0.0; TILE_Q * d],
            s: vec![0.0; TILE_Q * TILE_K],
            o: vec![0.0; TILE_Q * d],
            m: vec![0.0; TILE_Q],
            l: vec![0.0; TILE_Q],
        }
    }
}

/// One (batch, head, query tile): slices start at the job's first element.
struct Job<'a> {
    q: &'a [f32],
    /// This (batch, head)'s keys, transposed: `[d, kv_len]`.
    kt: &'a [f32],
    v: &'a [f32],
    /// Row `i` of the tile's bias starts at `i * kv_len`.
    bias: Option<&'a [f32]>,
    tq: usize,
    /// Keys attended to (`kv_lens[b]`).
    keys: usize,
    kv_len: usize,
    /// Stride between tokens in q, k, v and the output (`heads · d`).
    row: usize,
    d: usize,
    scale: f32,
    /// Round the probabilities to bf16 before the value product.
    round_p: bool,
}

impl<'a> Job<'a> {
    /// # Safety
    /// `dst` must be valid for writes and not accessed by anyone else during the call.
    unsafe fn run(&self, s: &mut Scratch, dst: RawMatMut) {
        let (tq, d) = (self.tq, self.d);
        let qs = &mut s.q[..tq * d];
        for (i, r) in qs.chunks_exact_mut(d).enumerate() {
            let src = &self.q[i * self.row..i * self.row + d];
            r.iter_mut()
                .zip(src)
                .for_each(|(o, &x)| *o = x * self.scale);
        }
        let o = &mut s.o[..tq * d];
        o.fill(0.0);
        s.m[..tq].fill(f32::NEG_INFINITY);
        s.l[..tq].fill(0.0);
        let qv = MatRef::row_major(qs, tq, d);
        for k0 in (0..self.keys).step_by(TILE_K) {
            let tk = TILE_K.min(self.keys - k0);
            let kt = MatRef {
                data: &self.kt[k0..],
                rows: d,
                cols: tk,
                row_stride: self.kv_len,
                col_stride: 1,
            };
            let v = MatRef {
                data: &self.v[k0 * self.row..],
                rows: tk,
                cols: d,
                row_stride: self.row,
                col_stride: 1,
            };
            let logits = &mut s.s[..tq * tk];
            sgemm(qv, kt, logits, false, 1);
            let bias = self.bias.map(|b| (&b[k0..], self.kv_len));
            softmax_update(logits, tk, bias, &mut s.m[..tq], &mut s.l[..tq], o, d);
            if self.round_p {
                round_to_bf16(logits);
            }
            sgemm(MatRef::row_major(logits, tq, tk), v, o, true, 1);
        }
        // SAFETY: forwarded caller contract.
        unsafe { write_normalized(o, &s.l[..tq], d, dst) };
    }
}

/// Writes the output rows `o[i] / l[i]` (zeros where `l[i]` is 0: no key) into `dst`.
///
/// # Safety
/// `dst` (`l.len()` rows of `d`) must be valid for writes and not accessed by anyone else during
/// the call.
unsafe fn write_normalized(o: &[f32], l: &[f32], d: usize, dst: RawMatMut) {
    for (i, (r, &l)) in o.chunks_exact(d).zip(l).enumerate() {
        let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
        // SAFETY: row `i` of `dst` holds `d` elements we may write (the caller's contract).
        let out = unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(i * dst.row_stride), d) };
        out.iter_mut().zip(r).for_each(|(y, &x)| *y = x * inv);
    }
}

/// Folds a logits tile (`rows × tk`, row-major) into the running softmax: adds the bias rows
/// (`(slice, row stride)`), updates the row maxima `m` and sums `l`, rescales the accumulated
/// output rows `o` (`d` wide) and leaves `exp(logit - m)` in `s` for the value GEMM.
fn softmax_update(
    s: &mut [f32],
    tk: usize,
    bias: Option<(&[f32], usize)>,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    d: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature.
            return unsafe { softmax_update_avx512(s, tk, bias, m, l, o, d) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features.
            return unsafe { softmax_update_avx2(s, tk, bias, m, l, o, d) };
        }
    }
    softmax_update_generic::<false>(s, tk, bias, m, l, o, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn softmax_update_avx512(
    s: &mut [f32],
    tk: usize,
    bias: Option<(&[f32], usize)>,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    d: usize,
) {
    softmax_update_generic::<true>(s, tk, bias, m, l, o, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_update_avx2(
    s: &mut [f32],
    tk: usize,
    bias: Option<(&[f32], usize)>,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    d: usize,
) {
    softmax_update_generic::<true>(s, tk, bias, m, l, o, d)
}

/// Lanes of the manual reductions: wide enough for AVX-512, and the compiler splits it for
/// narrower vectors.
const LANES: usize = 16;

#[inline(always)]
fn softmax_update_generic<const FMA: bool>(
    s: &mut [f32],
    tk: usize,
    bias: Option<(&[f32], usize)>,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    d: usize,
) {
    for (i, row) in s.chunks_exact_mut(tk).enumerate() {
        if let Some((b, stride)) = bias {
            row.iter_mut()
                .zip(&b[i * stride..i * stride + tk])
                .for_each(|(x, &y)| *x += y);
        }
        let m_new = row_max(row).max(m[i]);
        if m_new == f32::NEG_INFINITY {
            // Every key so far is masked: nothing to add, and exp(-inf - -inf) would be NaN.
            row.fill(0.0);
            continue;
        }
        let sum = exp_sub_sum::<FMA>(row, m_new);
        let corr = exp_approx::<FMA>(m[i] - m_new);
        l[i] = l[i] * corr + sum;
        m[i] = m_new;
        if corr != 1.0 {
            o[i * d..(i + 1) * d].iter_mut().for_each(|x| *x *= corr);
        }
    }
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    acc.iter().fold(tail, |a, &x| if x > a { x } else { a })
}

/// Replaces each `x` by `exp(x - max)` and returns their sum.
#[inline(always)]
fn exp_sub_sum<const FMA: bool>(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c.iter_mut()) {
            *x = exp_approx::<FMA>(*x - max);
            *a += *x;
        }
    }
    let mut sum = 0.0;
    for x in chunks.into_remainder() {
        *x = exp_approx::<FMA>(*x - max);
        sum += *x;
    }
    sum + acc.iter().sum::<f32>()
}

/// `a·b + c`, fused where the caller's target has FMA (elsewhere `mul_add` is a slow libm call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for `x <= 0` to about 3e-7 relative error, branch-free so that loops vectorise:
/// `e^x = 2^n · e^f` with `n` the nearest integer to `x·log2(e)`, `f = x - n·ln 2` (in two parts,
/// so that `f` is exact) and a degree-6 polynomial for `e^f`, `|f| <= ln(2)/2`. Below -87, where
/// `e^x` nears the smallest normal float, it returns 0.
#[inline(always)]
fn exp_approx<const FMA: bool>(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // A comparison, not f32::max, so that NaN propagates.
    let xc = if x < -87.0 { -87.0 } else { x };
    let r = madd::<FMA>(xc, std::f32::consts::LOG2_E, ROUND);
    let n = r - ROUND;
    let f = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, xc));
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = madd::<FMA>(p, f, c);
    }
    let pow2n = f32::from_bits(r.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * pow2n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random::values;

    /// Direct softmax attention in f64, one (batch, head, query) at a time.
    fn reference(q: &[f32], k: &[f32], v: &[f32], dims: AttnDims, opts: &AttnOpts<'_>) -> Vec<f64> {
        let AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim: d,
        } = dims;
        let mut out = vec![0.0; q.len()];
        for b in 0..batch {
            let keys = opts.kv_lens.map_or(kv_len, |l| l[b]);
            for h in 0..heads {
                for i in 0..q_len {
                    let qi = &q[((b * q_len + i) * heads + h) * d..][..d];
                    let logits: Vec<f64> = (0..keys)
                        .map(|j| {
                            let kj = &k[((b * kv_len + j) * heads + h) * d..][..d];
                            let dot: f64 =
                                qi.iter().zip(kj).map(|(&x, &y)| x as f64 * y as f64).sum();
                            let plane = if opts.bias_per_batch {
                                b * heads + h
                            } else {
                                h
                            };
                            let bias = opts
                                .bias
                                .map_or(0.0, |bias| bias[(plane * q_len + i) * kv_len + j] as f64);
                            opts.scale as f64 * dot + bias
                        })
                        .collect();
                    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    if max == f64::NEG_INFINITY {
                        continue;
                    }
                    let p: Vec<f64> = logits.iter().map(|&x| (x - max).exp()).collect();
                    let sum: f64 = p.iter().sum();
                    let o = &mut out[((b * q_len + i) * heads + h) * d..][..d];
                    for (j, &pj) in p.iter().enumerate() {
                        let vj = &v[((b * kv_len + j) * heads + h) * d..][..d];
                        o.iter_mut()
                            .zip(vj)
                            .for_each(|(o, &y)| *o += pj / sum * y as f64);
                    }
                }
            }
        }
        out
    }

    fn check(
        dims: AttnDims,
        scale: f32,
        kv_lens: Option<&[usize]>,
        bias: Option<(Vec<f32>, bool)>,
    ) {
        let AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        } = dims;
        let q = values(batch * q_len * heads * head_dim, 1);
        let k = values(batch * kv_len * heads * head_dim, 2);
        let v = values(batch * kv_len * heads * head_dim, 3);
        let opts = AttnOpts {
            scale,
            kv_lens,
            bias: bias.as_ref().map(|b| b.0.as_slice()),
            bias_per_batch: bias.as_ref().is_some_and(|b| b.1),
        };
        let mut out = vec![f32::NAN; q.len()];
        attention(&q, &k, &v, dims, &opts, &mut out).unwrap();
        let want = reference(&q, &k, &v, dims, &opts);
        for (i, (&g, &e)) in out.iter().zip(&want).enumerate() {
            assert!((g as f64 - e).abs() <= 2e-5, "{dims:?} at {i}: {g} vs {e}");
        }
    }

    fn dims(batch: usize, q_len: usize, kv_len: usize, heads: usize, head_dim: usize) -> AttnDims {
        AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        }
    }

    #[test]
    fn odd_sizes_and_head_dims() {
        for d in [64, 128] {
            for (sq, sk) in [(1, 1), (7, 65), (129, 7), (65, 300), (300, 129)] {
                check(dims(2, sq, sk, 2, d), 1.0 / (d as f32).sqrt(), None, None);
            }
        }
        check(dims(1, 5, 9, 3, 1), 0.7, None, None);
    }

    #[test]
    fn large_logits_stay_stable() {
        // Logits of several hundred: a naive exp would overflow.
        check(dims(1, 33, 300, 1, 64), 40.0, None, None);
    }

    #[test]
    fn kv_lens_limit_keys() {
        check(dims(3, 20, 300, 2, 64), 0.125, Some(&[300, 1, 257]), None);
        // No keys at all: zeros, not NaN.
        check(dims(2, 4, 10, 1, 64), 0.125, Some(&[0, 10]), None);
    }

    #[test]
    fn bias_shared_and_per_batch() {
        let (b, sq, sk, h) = (2, 70, 300, 2);
        check(
            dims(b, sq, sk, h, 64),
            0.125,
            None,
            Some((values(h * sq * sk, 4), false)),
        );
        check(
            dims(b, sq, sk, h, 128),
            0.09,
            Some(&[300, 123]),
            Some((values(b * h * sq * sk, 5), true)),
        );
    }

    #[test]
    fn masked_rows_give_zeros() {
        // -inf bias: row 0 sees no key at all, row 1 only key 280 (in the second key tile),
        // row 2 only keys in the first tile.
        let (sq, sk) = (3, 300);
        let mut bias = vec![f32::NEG_INFINITY; sq * sk];
        bias[sk + 280] = 0.0;
        bias[2 * sk..2 * sk + 10].fill(0.5);
        check(dims(1, sq, sk, 1, 64), 0.125, None, Some((bias, false)));
    }

    #[test]
    fn exp_matches_std() {
        for i in 0..=100_000 {
            let x = -90.0 * i as f32 / 100_000.0;
            let e = (x as f64).exp();
            for g in [exp_approx::<false>(x), exp_approx::<true>(x)] {
                if x < -87.0 {
                    assert_eq!(g, 0.0);
                } else {
                    assert!(
                        ((g as f64 - e) / e).abs() < 5e-7,
                        "exp({x}) = {g}, want {e}"
                    );
                }
            }
        }
        for fma in [false, true] {
            let f = if fma {
                exp_approx::<true>
            } else {
                exp_approx::<false>
            };
            assert_eq!(f(f32::NEG_INFINITY), 0.0);
            assert!(f(f32::NAN).is_nan());
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let d = dims(1, 2, 3, 1, 4);
        let opts = AttnOpts {
            scale: 1.0,
            kv_lens: Some(&[4]),
            bias: None,
            bias_per_batch: false,
        };
        let (q, k) = (vec![0.0; 8], vec![0.0; 12]);
        let mut out = vec![0.0; 8];
        assert!(attention(&q, &k, &k, d, &opts, &mut out).is_err());
        let opts = AttnOpts {
            kv_lens: None,
            bias: Some(&[0.0; 5]),
            ..opts
        };
        assert!(attention(&q, &k, &k, d, &opts, &mut out).is_err());
        assert!(attention(
            &q[..7],
            &k,
            &k,
            d,
            &AttnOpts { bias: None, ..opts },
            &mut out
        )
        .is_err());
    }
}
