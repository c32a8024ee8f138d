//! The 8-bit attention scheme (SageAttention2 class), emulated on the CPU with exactly the
//! arithmetic the CUDA kernels do, so that the kernels can be checked against it and its error
//! measured without a GPU. One function, [`attention_q8`], runs every path; a [`Q8Scheme`] holds
//! the path's parameters ([`Q8Scheme::for_path`]).
//!
//! Per (batch, head), for `softmax(scale · q kᵀ) v` (non-causal, no mask, no bias):
//!
//! 1. **K smoothing**: `k ← k − mean(k)` over the whole sequence, per channel (the mean is
//!    summed in f64 and rounded to f32). Softmax is shift-invariant per row, so the output is
//!    unchanged in exact arithmetic while the INT8 range of K shrinks.
//! 2. **Q and K to INT8**: q is first multiplied by `scale · log2(e)` (so logits come out in base 2),
//!    then (with [`Q8Scheme::balance_channels`], a measured option, off in every chosen scheme)
//!    channels are balanced by powers of two, then each group of [`Q8Scheme::q_group`]
//!    consecutive queries (and [`Q8Scheme::k_group`] keys) is quantized with one scale
//!    `amax / 127` ([`super::quant8`]), rounding per [`Q8Scheme::rounding`].
//! 3. **Logits**: `s = (Σ q8·k8 in i32) as f32 · (q_scale · k_scale)`, exact up to that
//!    one f32 product (|Σ| ≤ 127²·d < 2^24 for `d ≤ 1024`).
//! 4. **Online softmax over key tiles** of [`Q8Scheme::tile_k`] keys, in base 2:
//!    `m' = max(m, max s)`, `c = 2^(m − m')`, `p = 2^(s − (m' − o))` with the offset
//!    `o = 8.807 ≈ log2(448)` for e4m3 P (so P fills `(0, 448]`) and 0 for f16 P; p is rounded to
//!    the P·V format (e4m3 round-to-nearest-even, saturating; or f16), and the row sum is
//!    `l' = l·c + Σ p` over the **rounded** p (f32, key order), so the weights the output uses are
//!    exactly normalised.
//! 5. **V**: with [`Q8Scheme::smooth_v`], its mean over the sequence per channel is subtracted
//!    first (and added to the output). Then f16 (saturating at ±65504) on the fp16 path; on the
//!    fp8 path, per channel
//!    `v · (448 / amax_c)` rounded to e4m3 over the whole sequence, the scale `amax_c / 448`
//!    applied to the output.
//! 6. **P·V**: each MMA instruction adds the exact sum of [`Q8Scheme::mma_k`] products to its
//!    accumulator, rounded to the accumulator's format ([`MmaAccum`]). With an f32 accumulator
//!    (fp16 P·V) the MMAs accumulate straight into the output, rescaled by `c` before each
//!    tile: one level. With FP22 (e4m3 P·V), two levels: a fresh accumulator per key tile, and
//!    at the tile's end `o ← o·c + acc` (a product, then a sum, each rounded to f32).
//! 7. **Output**: `o · (1 / l) · v_scale_c + v_mean_c`, f32.
//!
//! The kernels' `ex2.approx` and the order of their in-MMA sums are not reproduced bit for bit
//! (std `exp2`, and the exact sum of each MMA's products): kernel and emulation agree to within
//! that accumulation-order rounding, far below the scheme's own error.
//!
//! **Chosen scheme** (docs/PERF.md, "8-bit attention, per-token scales", has the error table
//! and the per-term breakdown): one INT8 scale per query and one per key (per token: the
//! `head_dim` values of one row), round to nearest even, K and V smoothed, no channel balancing;
//! fp16 P·V with f32 accumulation ([`Q8Path::Sm80`]). That is the arithmetic of the mma.sync
//! kernel (`kernels/attention_q8.cu`, every GPU), and, with a key tile of 128 instead of 64, of
//! the sm_90a wgmma kernel (`kernels/attention_q8_sm90.cu`, [`Q8Path::Sm90`]; the tile changes
//! only where the online softmax rescales, so the two agree to within accumulation-order
//! rounding). It meets relative L2 ≤ 1e-2 and cosine ≥ 0.9995 against f64 attention on the
//! fixture model's attention and on random-weight 1.3B/14B inputs (8.4e-3 and 8.9e-3); coarser Q
//! or K scales do not (per-warp Q or per-block K: 1.2-1.6e-2), and neither does e4m3 P·V (the
//! scheme of [`Q8Path::Sm89`], 3.2-3.5e-2: V's and P's 3-bit mantissas), which is why `auto`
//! never runs it: it has a kernel (the e4m3 variant in `kernels/attention_q8.cu`, sm_89 and
//! sm_90) only for the explicit choice `--attention q8-fp8`. K channels whose spread (not
//! offset) is 8× the others' exceed the bounds with any per-token scale.

use half::f16;
use rayon::prelude::*;

use super::attention::AttnDims;
use super::quant8::{self, Rounding};
use crate::error::{Error, Result};
use crate::tensor::fp8::E4M3_MAX;

/// `log2(448)` as the kernels write it (SageAttention's `S_FP8_OFFSET`): `2^(s − m + 8.807)`
/// is at most 447.86, inside e4m3's range.
pub const P_E4M3_OFFSET: f32 = 8.807;

/// The largest finite f16.
const F16_MAX: f32 = 65504.0;

/// The GPU code path a scheme is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q8Path {
    /// sm_80 / sm_86 (A100, RTX 30xx): INT8 Q·Kᵀ, fp16 P·V with f32 accumulation (`mma.sync`).
    Sm80,
    /// sm_89 (RTX 40xx, L40): INT8 Q·Kᵀ, e4m3 P·V (`mma.sync`, FP22 accumulator).
    Sm89,
    /// sm_90a (H100, H200): sm_80's arithmetic (INT8 Q·Kᵀ, fp16 P·V with f32 accumulation)
    /// through `wgmma` with a key tile of 128 (`kernels/attention_q8_sm90.cu`).
    Sm90,
}

impl Q8Path {
    /// Every path, in the order above.
    pub const ALL: [Q8Path; 3] = [Q8Path::Sm80, Q8Path::Sm89, Q8Path::Sm90];

    /// `sm80`, `sm89` or `sm90`.
    pub fn name(self) -> &'static str {
        match self {
            Q8Path::Sm80 => "sm80",
            Q8Path::Sm89 => "sm89",
            Q8Path::Sm90 => "sm90",
        }
    }
}

/// Which queries and keys share one INT8 scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkGranularity {
    /// One scale per query and one per key (each token's `head_dim` values).
    PerToken,
    /// One scale per query and one per key block.
    PerTokenQ,
    /// One scale per warp's queries (32, or 16 on sm_90) and per key block.
    PerWarp,
    /// One scale per CTA query block (128, or 64 on sm_90) and per key block.
    PerBlock,
}

/// The format P and V take for the P·V product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvFormat {
    /// P in `(0, 1]` and V rounded to f16 (V saturating at ±65504).
    F16,
    /// P scaled by `2^8.807` and V by `448 / amax` per channel, rounded to e4m3.
    E4m3,
}

/// The precision of the P·V MMA accumulator, which decides how many accumulation levels there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmaAccum {
    /// f32, each MMA's sum rounded to nearest even: the MMAs accumulate straight into the f32
    /// output (rescaled by the softmax correction before each key tile), one level.
    F32,
    /// FP22 (1 sign, 8 exponent, 13 mantissa bits), truncated toward zero after each MMA: what
    /// the e4m3 MMAs of sm_89 and sm_90 keep of their "f32" accumulator. Two levels: a fresh
    /// accumulator per key tile, flushed into the f32 output at the tile's end.
    Fp22,
}

impl MmaAccum {
    fn round(self, x: f64) -> f64 {
        match self {
            MmaAccum::F32 => x as f32 as f64,
            // 52 − 13 = 39 mantissa bits dropped; sign and exponent unchanged.
            MmaAccum::Fp22 => f64::from_bits(x.to_bits() & !((1u64 << 39) - 1)),
        }
    }
}

/// The parameters of one path of the scheme (see the module docs for what each one changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Q8Scheme {
    /// Consecutive queries sharing an INT8 scale.
    pub q_group: usize,
    /// Consecutive keys sharing an INT8 scale.
    pub k_group: usize,
    /// How scaled Q and K values round to INT8.
    pub rounding: Rounding,
    /// Keys per online-softmax step (the kernel's key tile).
    pub tile_k: usize,
    /// The P·V operand format.
    pub pv: PvFormat,
    /// Keys summed by one P·V MMA instruction.
    pub mma_k: usize,
    /// The MMA accumulator's precision within a key tile.
    pub accum: MmaAccum,
    /// V smoothing: subtract V's mean over the sequence per channel before its rounding and
    /// add it back to the output (exact, as the softmax weights of a row sum to 1).
    pub smooth_v: bool,
    /// Channel balancing: before the INT8 rounding, each channel `c` of K is divided and the same
    /// channel of Q multiplied by `2^e_c`, `e_c = ⌊(E(amax_c(k)) − E(amax_c(q))) / 2⌋` with `E` the
    /// f32 exponent field and the maxima over the sequence (after the smoothing and the logit
    /// scale). `q·k` is unchanged exactly (powers of two); a K channel with a wide spread hands
    /// half of it (in octaves) to Q, so it coarsens the other channels' steps less.
    pub balance_channels: bool,
}

impl Q8Scheme {
    /// The scheme of `path` with per-token Q and K scales and no channel balancing (the chosen
    /// scheme for [`Q8Path::Sm80`] and [`Q8Path::Sm90`]; the e4m3 path's error is in the module
    /// docs).
    pub fn for_path(path: Q8Path) -> Q8Scheme {
        Q8Scheme::with_granularity(path, QkGranularity::PerToken)
    }

    /// `path`'s scheme with the INT8 scales at `gran`.
    pub fn with_granularity(path: Q8Path, gran: QkGranularity) -> Q8Scheme {
        // (warp queries, CTA queries, key block) as SageAttention2 tiles each path.
        let (warp_q, block_q, block_k) = match path {
            Q8Path::Sm80 | Q8Path::Sm89 => (32, 128, 64),
            Q8Path::Sm90 => (16, 64, 128),
        };
        // wgmma m64nNk16 f16 sums 16 products per instruction, as mma.sync m16n8k16 does.
        let (pv, mma_k, accum) = match path {
            Q8Path::Sm80 | Q8Path::Sm90 => (PvFormat::F16, 16, MmaAccum::F32),
            Q8Path::Sm89 => (PvFormat::E4m3, 32, MmaAccum::Fp22),
        };
        let (q_group, k_group) = match gran {
            QkGranularity::PerToken => (1, 1),
            QkGranularity::PerTokenQ => (1, block_k),
            QkGranularity::PerWarp => (warp_q, block_k),
            QkGranularity::PerBlock => (block_q, block_k),
        };
        Q8Scheme {
            q_group,
            k_group,
            rounding: Rounding::NearestEven,
            tile_k: block_k,
            pv,
            mma_k,
            accum,
            smooth_v: true,
            balance_channels: false,
        }
    }

    fn check(&self) -> Result<()> {
        let sizes = [self.q_group, self.k_group, self.tile_k, self.mma_k];
        if sizes.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "q8 attention: group, tile and MMA sizes must be at least 1 in {self:?}"
            )));
        }
        Ok(())
    }
}

/// The quantized operands of one (batch, head).
struct Operands {
    /// INT8 queries `[q_len, d]` (scaled by `scale · log2 e`) and their group scales.
    q: Vec<i8>,
    q_scale: Vec<f32>,
    /// INT8 smoothed keys `[kv_len, d]` and their group scales.
    k: Vec<i8>,
    k_scale: Vec<f32>,
    /// V as the P·V MMA reads it (f16 or e4m3 values, widened) `[kv_len, d]`.
    v: Vec<f32>,
    /// Per-channel factor of the output (the V scale; 1 for f16).
    v_scale: Vec<f32>,
    /// Per-channel V mean added to the output (zeros without V smoothing).
    v_mean: Vec<f32>,
}

/// `softmax(scale · q kᵀ) v` through the 8-bit scheme `scheme`: q `[batch, q_len, heads, d]`,
/// k and v `[batch, kv_len, heads, d]`, out like q, all f32 row-major. No keys (`kv_len == 0`)
/// gives zeros. Non-finite inputs or scale, or a scheme with a zero size, are
/// [`Error::InvalidArgument`].
pub fn attention_q8(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttnDims,
    scale: f32,
    scheme: &Q8Scheme,
    out: &mut [f32],
) -> Result<()> {
    scheme.check()?;
    dims.check_buffers("q8 attention", q, k, v, out)?;
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: d,
    } = dims;
    if d > 1024 {
        return Err(Error::InvalidArgument(format!(
            "q8 attention: head_dim {d} over 1024 could overflow the INT8 dot products"
        )));
    }
    if !scale.is_finite() || [q, k, v].iter().any(|x| x.iter().any(|x| !x.is_finite())) {
        return Err(Error::InvalidArgument(
            "q8 attention: the inputs and the scale must be finite".into(),
        ));
    }
    if kv_len == 0 {
        out.fill(0.0);
        return Ok(());
    }
    if q.is_empty() {
        return Ok(());
    }
    let ops: Vec<Operands> = (0..batch * heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / heads, bh % heads);
            let gather = |x: &[f32], len: usize| -> Vec<f32> {
                let row = heads * d;
                (0..len)
                    .flat_map(|i| &x[(b * len + i) * row + h * d..][..d])
                    .copied()
                    .collect()
            };
            quantize(
                gather(q, q_len),
                gather(k, kv_len),
                gather(v, kv_len),
                d,
                scale,
                scheme,
            )
        })
        .collect();
    out.par_chunks_mut(heads * d).enumerate().for_each_init(
        || Scratch::new(scheme.tile_k, d),
        |scratch, (token, dst)| {
            let (b, i) = (token / q_len, token % q_len);
            for (h, o) in dst.chunks_exact_mut(d).enumerate() {
                row(&ops[b * heads + h], i, kv_len, d, scheme, scratch, o);
            }
        },
    );
    Ok(())
}

/// Smooths and quantizes one (batch, head): q `[q_len, d]`, k and v `[kv_len, d]`.
fn quantize(
    mut q: Vec<f32>,
    mut k: Vec<f32>,
    mut v: Vec<f32>,
    d: usize,
    scale: f32,
    s: &Q8Scheme,
) -> Operands {
    subtract_mean(&mut k, d);
    let v_mean = if s.smooth_v {
        subtract_mean(&mut v, d)
    } else {
        vec![0.0; d]
    };
    let qmul = scale * std::f32::consts::LOG2_E;
    q.iter_mut().for_each(|x| *x *= qmul);
    if s.balance_channels {
        balance_channels(&mut q, &mut k, d);
    }
    let int8 = |x: &[f32], group: usize| {
        let mut codes = vec![0i8; x.len()];
        let scales = x
            .chunks(group * d)
            .zip(codes.chunks_mut(group * d))
            .map(|(g, c)| quant8::quantize_int8(g, s.rounding, c))
            .collect();
        (codes, scales)
    };
    let (q8, q_scale) = int8(&q, s.q_group);
    let (k8, k_scale) = int8(&k, s.k_group);
    let v_scale = match s.pv {
        PvFormat::F16 => {
            v.iter_mut()
                .for_each(|x| *x = f16::from_f32(x.clamp(-F16_MAX, F16_MAX)).to_f32());
            vec![1.0; d]
        }
        PvFormat::E4m3 => {
            let scales: Vec<(f32, f32)> = channel_amax(&v, d)
                .iter()
                .map(|&a| quant8::scales(a, E4M3_MAX))
                .collect();
            v.chunks_exact_mut(d).for_each(|r| {
                r.iter_mut()
                    .zip(&scales)
                    .for_each(|(x, &(inv, _))| *x = quant8::through_e4m3(*x, inv))
            });
            scales.iter().map(|&(_, sc)| sc).collect()
        }
    };
    Operands {
        q: q8,
        q_scale,
        k: k8,
        k_scale,
        v,
        v_scale,
        v_mean,
    }
}

/// Subtracts from the rows `[len, d]` of `x` their mean per channel (summed in f64, rounded to
/// f32) and returns it.
fn subtract_mean(x: &mut [f32], d: usize) -> Vec<f32> {
    let rows = x.len() / d;
    let mut sum = vec![0f64; d];
    x.chunks_exact(d)
        .for_each(|r| sum.iter_mut().zip(r).for_each(|(m, &x)| *m += x as f64));
    let mean: Vec<f32> = sum.iter().map(|m| (m / rows as f64) as f32).collect();
    x.chunks_exact_mut(d)
        .for_each(|r| r.iter_mut().zip(&mean).for_each(|(x, m)| *x -= m));
    mean
}

/// The per-channel largest magnitude over the rows `[len, d]` of `x`.
fn channel_amax(x: &[f32], d: usize) -> Vec<f32> {
    let mut amax = vec![0f32; d];
    x.chunks_exact(d).for_each(|r| {
        amax.iter_mut()
            .zip(r)
            .for_each(|(m, &x)| *m = m.max(x.abs()))
    });
    amax
}

/// The exponent `e_c` of [`Q8Scheme::balance_channels`] for channel maxima `aq` (of Q) and `ak`
/// (of K): half the difference of their f32 exponent fields, rounded down; 0 if either is 0.
fn balance_exponent(aq: f32, ak: f32) -> i32 {
    let field = |x: f32| ((x.to_bits() >> 23) & 0xff) as i32;
    if aq > 0.0 && ak > 0.0 {
        (field(ak) - field(aq)) >> 1
    } else {
        0
    }
}

/// Multiplies each channel of q `[q_len, d]` by `2^e_c` and of k `[kv_len, d]` by `2^-e_c`
/// ([`Q8Scheme::balance_channels`]).
fn balance_channels(q: &mut [f32], k: &mut [f32], d: usize) {
    let (aq, ak) = (channel_amax(q, d), channel_amax(k, d));
    let e: Vec<i32> = aq
        .iter()
        .zip(&ak)
        .map(|(&a, &b)| balance_exponent(a, b))
        .collect();
    let (qf, kf): (Vec<f32>, Vec<f32>) = e.iter().map(|&e| (2f32.powi(e), 2f32.powi(-e))).unzip();
    q.chunks_exact_mut(d)
        .for_each(|r| r.iter_mut().zip(&qf).for_each(|(x, f)| *x *= f));
    k.chunks_exact_mut(d)
        .for_each(|r| r.iter_mut().zip(&kf).for_each(|(x, f)| *x *= f));
}

/// Per-thread buffers.
struct Scratch {
    /// Logits, then rounded probabilities, of one key tile.
    p: Vec<f32>,
    /// Unnormalised output (f32).
    o: Vec<f32>,
    /// The MMA accumulator of the tile, and one MMA's exact sums.
    acc: Vec<f64>,
    mma: Vec<f64>,
}

impl Scratch {
    fn new(tile_k: usize, d: usize) -> Scratch {
        Scratch {
            p: vec![0.0; tile_k],
            o: vec![0.0; d],
            acc: vec![0.0; d],
            mma: vec![0.0; d],
        }
    }
}

/// One query row `i` of one (batch, head) into `out` (`d` values).
fn row(
    ops: &Operands,
    i: usize,
    kv_len: usize,
    d: usize,
    s: &Q8Scheme,
    sc: &mut Scratch,
    out: &mut [f32],
) {
    let qi = &ops.q[i * d..][..d];
    let qs = ops.q_scale[i / s.q_group];
    let offset = match s.pv {
        PvFormat::F16 => 0.0,
        PvFormat::E4m3 => P_E4M3_OFFSET,
    };
    let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
    sc.o.fill(0.0);
    for t0 in (0..kv_len).step_by(s.tile_k) {
        let tk = s.tile_k.min(kv_len - t0);
        let p = &mut sc.p[..tk];
        for (j, pj) in p.iter_mut().enumerate() {
            let key = t0 + j;
            let kj = &ops.k[key * d..][..d];
            let dot: i32 = qi.iter().zip(kj).map(|(&a, &b)| a as i32 * b as i32).sum();
            *pj = dot as f32 * (qs * ops.k_scale[key / s.k_group]);
        }
        let m_new = p.iter().fold(m, |a, &x| a.max(x));
        let corr = (m - m_new).exp2();
        let shift = m_new - offset;
        let mut sum = 0f32;
        for x in p.iter_mut() {
            let e = (*x - shift).exp2();
            *x = match s.pv {
                PvFormat::F16 => f16::from_f32(e).to_f32(),
                PvFormat::E4m3 => quant8::through_e4m3(e, 1.0),
            };
            sum += *x;
        }
        l = l * corr + sum;
        m = m_new;
        // One level (f32): the MMAs add into the rescaled output. Two (FP22): into a fresh
        // accumulator, flushed into the output at the tile's end.
        let one_level = s.accum == MmaAccum::F32;
        if one_level {
            sc.acc
                .iter_mut()
                .zip(&sc.o)
                .for_each(|(a, &o)| *a = (o * corr) as f64);
        } else {
            sc.acc.fill(0.0);
        }
        for (c0, pc) in p.chunks(s.mma_k).enumerate() {
            sc.mma.fill(0.0);
            for (j, &pj) in pc.iter().enumerate() {
                let vj = &ops.v[(t0 + c0 * s.mma_k + j) * d..][..d];
                sc.mma
                    .iter_mut()
                    .zip(vj)
                    .for_each(|(a, &x)| *a += pj as f64 * x as f64);
            }
            sc.acc
                .iter_mut()
                .zip(&sc.mma)
                .for_each(|(a, &x)| *a = s.accum.round(*a + x));
        }
        sc.o.iter_mut().zip(&sc.acc).for_each(|(o, &a)| {
            *o = if one_level {
                a as f32
            } else {
                *o * corr + a as f32
            }
        });
    }
    let inv_l = 1.0 / l;
    for (c, y) in out.iter_mut().enumerate() {
        *y = sc.o[c] * inv_l * ops.v_scale[c] + ops.v_mean[c];
    }
}
