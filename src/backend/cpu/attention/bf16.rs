//! [`super::attention_bf16`] on AVX512-BF16: both products on [`bgemm_packed`].
//!
//! Each head's keys and values are rounded and packed into bf16 pairs once ([`PackedA`] panels
//! of 14 keys, [`PackedB`] panels of 32 channels) and shared by all its query tiles; a job (one
//! batch, head and query tile) packs its queries once. The logits are formed transposed,
//! `Sᵀ = K·Qᵀ` (keys × queries): the softmax's running maxima and sums then run down the
//! columns, 16 queries per vector, and the probabilities of a key pair are two contiguous rows
//! of `Sᵀ`, which is what packing them as the left operand of `O = P·V` reads.

use super::{exp_approx, for_each_tile, write_normalized, AttnDims, AttnOpts};
use crate::backend::cpu::gemm::{MatRef, RawMatMut};
use crate::backend::cpu::gemm_bf16::{bgemm_packed, PackedA, PackedB, MR, NR};

use rayon::prelude::*;

/// Queries per job: a whole number of panels of both products (14 rows of `P`, 32 columns of
/// `Qᵀ`).
const TILE_Q: usize = 224;
/// Keys per tile: whole panels of `K` (14 rows) and whole pairs of `V`.
pub(super) const TILE_K: usize = 224;
const _: () = assert!(
    TILE_Q.is_multiple_of(MR)
        && TILE_Q.is_multiple_of(NR)
        && TILE_K.is_multiple_of(MR)
        && TILE_K.is_multiple_of(2)
);

/// The attention with bf16 products; the caller checked the sizes and that the CPU has
/// AVX512-BF16, and that there are queries and keys.
pub(super) fn attention<'a>(
    q: &[f32],
    k: &'a [f32],
    v: &'a [f32],
    dims: AttnDims,
    opts: &AttnOpts<'_>,
    out: &mut [f32],
) {
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: d,
    } = dims;
    let row = heads * d;
    // Per (batch, head): its keys `[keys, d]` and values `[keys, d]`, only the attended ones.
    let packed: Vec<(PackedA, PackedB)> = (0..batch * heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / heads, bh % heads);
            let view = |x: &'a [f32]| MatRef {
                data: &x[b * kv_len * row + h * d..],
                rows: opts.kv_lens.map_or(kv_len, |l| l[b]),
                cols: d,
                row_stride: row,
                col_stride: 1,
            };
            let (mut kp, mut vp) = (PackedA::default(), PackedB::default());
            kp.pack(view(k));
            vp.pack(view(v));
            (kp, vp)
        })
        .collect();
    for_each_tile(
        dims,
        opts,
        TILE_Q,
        out,
        || Scratch::new(d),
        |s, t| {
            let (kp, vp) = &packed[t.b * heads + t.h];
            s.qt.pack(MatRef {
                data: &q[(t.b * q_len + t.q0) * row + t.h * d..],
                rows: d,
                cols: t.tq,
                row_stride: 1,
                col_stride: row,
            });
            let tq = t.tq;
            let o = &mut s.o[..tq * d];
            o.fill(0.0);
            s.m[..tq].fill(f32::NEG_INFINITY);
            s.l[..tq].fill(0.0);
            let o_mat = RawMatMut {
                ptr: o.as_mut_ptr(),
                rows: tq,
                cols: d,
                row_stride: d,
            };
            for k0 in (0..t.keys).step_by(TILE_K) {
                let keys = k0..TILE_K.min(t.keys - k0) + k0;
                let tk = keys.len();
                let logits_t = RawMatMut {
                    ptr: s.s.as_mut_ptr(),
                    rows: tk,
                    cols: tq,
                    row_stride: TILE_Q,
                };
                // SAFETY: `logits_t` lies in `s.s` (`TILE_K` rows of `TILE_Q`), borrowed here.
                unsafe {
                    bgemm_packed(
                        kp.block(keys.clone(), 0..d),
                        s.qt.block(0..d, 0..tq),
                        logits_t,
                        false,
                    )
                };
                let bias = t.bias.map(|b| (&b[k0..], kv_len));
                let state = Running {
                    m: &mut s.m[..tq],
                    l: &mut s.l[..tq],
                    o,
                    d,
                };
                // SAFETY: the CPU has AVX512F and FMA (it has AVX512-BF16).
                unsafe { softmax_columns(&mut s.s, tk, tq, opts.scale, bias, state, &mut s.work) };
                s.p.pack(MatRef {
                    data: &s.s,
                    rows: tq,
                    cols: tk,
                    row_stride: 1,
                    col_stride: TILE_Q,
                });
                // SAFETY: `o_mat` is `o`, this job's scratch.
                unsafe { bgemm_packed(s.p.block(0..tq, 0..tk), vp.block(keys, 0..d), o_mat, true) };
            }
            // SAFETY: the tile's block of `out` is ours (`for_each_tile`).
            unsafe { write_normalized(o, &s.l[..tq], d, t.dst) };
        },
    );
}

/// Per-thread buffers, reused across jobs.
struct Scratch {
    /// The job's queries, transposed and packed: `Qᵀ` `[d, TILE_Q]`.
    qt: PackedB,
    /// Logits, then probabilities, transposed: `Sᵀ` `[TILE_K, TILE_Q]`.
    s: Vec<f32>,
    /// The probabilities packed as the left operand of `P·V`.
    p: PackedA,
    /// Unnormalised output `[TILE_Q, d]`.
    o: Vec<f32>,
    /// Running maxima and sums per query.
    m: Vec<f32>,
    l: Vec<f32>,
    /// Two rows of `TILE_Q` for [`softmax_columns`].
    work: Vec<f32>,
}

impl Scratch {
    fn new(d: usize) -> Self {
        Scratch {
            qt: PackedB::default(),
            s: vec![0.0; TILE_K * TILE_Q],
            p: PackedA::default(),
            o: vec![0.0; TILE_Q * d],
            m: vec![0.0; TILE_Q],
            l: vec![0.0; TILE_Q],
            work: vec![0.0; 2 * TILE_Q],
        }
    }
}

/// The online softmax's state for the `tq` queries of a job.
struct Running<'a> {
    /// Maxima and sums per query.
    m: &'a mut [f32],
    l: &'a mut [f32],
    /// The unnormalised output rows, `d` wide.
    o: &'a mut [f32],
    d: usize,
}

/// Folds a transposed logits tile (`tk` rows of `tq` queries, row stride `TILE_Q`) into the
/// running softmax: scales it, adds the bias (`(slice, row stride)`, rows by query), updates the
/// maxima and sums, rescales the output rows and leaves `exp(logit - max)` in `s`.
///
/// # Safety
/// The CPU has AVX512F and FMA.
#[target_feature(enable = "avx512f,fma")]
unsafe fn softmax_columns(
    s: &mut [f32],
    tk: usize,
    tq: usize,
    scale: f32,
    bias: Option<(&[f32], usize)>,
    run: Running<'_>,
    work: &mut [f32],
) {
    let (max, sum) = work.split_at_mut(TILE_Q);
    let (max, sum) = (&mut max[..tq], &mut sum[..tq]);
    max.copy_from_slice(run.m);
    for (j, r) in s.chunks_exact_mut(TILE_Q).take(tk).enumerate() {
        let r = &mut r[..tq];
        match bias {
            Some((b, stride)) => r
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = x.mul_add(scale, b[i * stride + j])),
            None => r.iter_mut().for_each(|x| *x *= scale),
        }
        for (m, &x) in max.iter_mut().zip(r.iter()) {
            *m = if x > *m { x } else { *m };
        }
    }
    // `max` becomes what the exponentials subtract: 0 for a query with no key yet (a maximum of
    // -inf), so that its masked logits give exp(-inf) = 0 rather than NaN.
    for (i, (m, corr)) in max.iter_mut().zip(sum.iter_mut()).enumerate() {
        let sub = if *m == f32::NEG_INFINITY { 0.0 } else { *m };
        *corr = exp_approx::<true>(run.m[i] - sub);
        run.m[i] = *m;
        *m = sub;
    }
    for ((corr, l), o) in sum
        .iter()
        .zip(run.l.iter_mut())
        .zip(run.o.chunks_exact_mut(run.d))
    {
        *l *= corr;
        if *corr != 1.0 {
            o.iter_mut().for_each(|x| *x *= corr);
        }
    }
    sum.fill(0.0);
    for r in s.chunks_exact_mut(TILE_Q).take(tk) {
        for ((x, &m), sum) in r[..tq].iter_mut().zip(max.iter()).zip(sum.iter_mut()) {
            *x = exp_approx::<true>(*x - m);
            *sum += *x;
        }
    }
    run.l.iter_mut().zip(sum.iter()).for_each(|(l, s)| *l += s);
}
