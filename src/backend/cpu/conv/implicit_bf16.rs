//! Stride-1 3-D convolution in bf16 as an implicit GEMM on AVX512-BF16 (`vdpbf16ps`), with no
//! im2col matrix.
//!
//! The input is copied once, zero-padded, into bf16 channel *pairs*: `u32` words holding
//! channels `2c` (low half) and `2c + 1` at one position, plane by plane (`[pair][Tp·Hp·Wp]`),
//! the unit `vdpbf16ps` reads. Output positions are numbered on the padded grid,
//! `v = (t·Hp + h)·Wp + w`, so the input under kernel tap `(dt, dh, dw)` for 32 consecutive
//! positions is 32 consecutive words at `v + (dt·Hp + dh)·Wp + dw`: the micro-kernel reads its
//! right operand straight from the packed input. Positions with `w ≥ W'` or `h ≥ H'` (the grid's
//! padding columns and rows) are computed and dropped. The weight is packed once per call into
//! panels of [`MR`] output channels, depth ordered tap by tap and channel pair by pair within a
//! tap. Each micro-kernel call sums the whole depth for an `MR × 32` block in 28 vector
//! registers; jobs of [`JOB_PANELS`] position panels run in parallel, each into its own small
//! `Cout × 32·JOB_PANELS` tile, which is then written out with the bias and rounded to bf16.

use rayon::prelude::*;

use super::Conv3dGeom;

/// Output channels per micro-kernel call.
const MR: usize = 14;
/// Output positions per micro-kernel call (two 16-lane vectors).
const NR: usize = 32;
/// Position panels per parallel job (one weight panel is reused over them).
const JOB_PANELS: usize = 4;

/// Whether [`conv3d`] handles `g` on this CPU: stride 1 on every axis and AVX512-BF16.
pub(super) fn applies(g: &Conv3dGeom) -> bool {
    g.stride == [1, 1, 1] && super::super::gemm_bf16::has_bf16_dot()
}

/// The bits of `x` rounded to the nearest bf16 (ties to even; NaN stays NaN, quieted), as
/// `half::bf16::from_f32`, written so that loops over it vectorise.
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        rounded
    }
}

/// The padded input grid and where the output positions lie on it.
struct Grid {
    /// Padded extent (frames, rows, columns).
    padded: [usize; 3],
    /// Output extent.
    out: [usize; 3],
    /// Words per packed channel-pair plane (the padded grid plus reads past its end).
    plane: usize,
    /// Positions on the padded grid up to the last output position's row end.
    virtual_len: usize,
}

impl Grid {
    fn new(g: &Conv3dGeom, out: [usize; 3]) -> Grid {
        let padded: [usize; 3] = std::array::from_fn(|a| g.input[a] + 2 * g.padding[a]);
        let [_, hp, wp] = padded;
        let virtual_len = (out[0] - 1) * hp * wp + out[1] * wp;
        // The last panel reads up to NR − 1 positions past `virtual_len`, plus the largest tap
        // offset: at most `kw − 1 + NR` words past the padded grid.
        let plane = padded.iter().product::<usize>() + g.kernel[2] + NR;
        Grid {
            padded,
            out,
            plane,
            virtual_len,
        }
    }

    /// The offset of each kernel tap `(dt, dh, dw)` on the grid, in weight order.
    fn tap_offsets(&self, kernel: [usize; 3]) -> Vec<usize> {
        let [_, hp, wp] = self.padded;
        let mut offs = Vec::with_capacity(kernel.iter().product());
        for dt in 0..kernel[0] {
            for dh in 0..kernel[1] {
                for dw in 0..kernel[2] {
                    offs.push((dt * hp + dh) * wp + dw);
                }
            }
        }
        offs
    }

    /// The runs of output positions among grid positions `v0..v1`: `(v, p, len)` for the grid
    /// positions `v..v + len`, which are outputs `p..p + len` (within one channel).
    fn output_runs(&self, v0: usize, v1: usize, runs: &mut Vec<Run>) {
        let [_, hp, wp] = self.padded;
        let [_, ho, wo] = self.out;
        runs.clear();
        let mut v = v0;
        while v < v1 {
            let (row, w) = (v / wp, v % wp);
            let (t, h) = (row / hp, row % hp);
            let end = (v1 - row * wp).min(wo);
            if h < ho && w < end {
                runs.push((v, (t * ho + h) * wo + w, end - w));
            }
            v = (row + 1) * wp;
        }
    }
}

/// Packs one batch item `x` (`[cin, t, h, w]`) into zero-padded channel-pair planes.
fn pack_input(x: &[f32], g: &Conv3dGeom, grid: &Grid, packed: &mut [u32]) {
    let [t, h, w] = g.input;
    let [pt, ph, pw] = g.padding;
    let [_, hp, wp] = grid.padded;
    let channel = t * h * w;
    packed
        .par_chunks_mut(grid.plane)
        .enumerate()
        .for_each(|(pair, dst)| {
            dst.fill(0);
            let lo = &x[2 * pair * channel..(2 * pair + 1) * channel];
            let second = (2 * pair + 1 < g.cin).then(|| &x[(2 * pair + 1) * channel..][..channel]);
            for (row, src) in lo.chunks_exact(w).enumerate() {
                let (ti, hi) = (row / h, row % h);
                let at = ((ti + pt) * hp + hi + ph) * wp + pw;
                let out = &mut dst[at..at + w];
                match second {
                    Some(second) => {
                        let src1 = &second[row * w..(row + 1) * w];
                        for ((o, &a), &b) in out.iter_mut().zip(src).zip(src1) {
                            *o = bf16_bits(a) | (bf16_bits(b) << 16);
                        }
                    }
                    None => {
                        for (o, &a) in out.iter_mut().zip(src) {
                            *o = bf16_bits(a);
                        }
                    }
                }
            }
        });
}

/// Packs `weight` (`[cout, cin, taps]`) into panels of `MR` output channels, `[panel][tap]
/// [pair][MR]` words (zeros past `cout` and past an odd `cin`).
fn pack_weight(weight: &[f32], cout: usize, cin: usize, taps: usize) -> Vec<u32> {
    let pairs = cin.div_ceil(2);
    let panel = taps * pairs * MR;
    let mut packed = vec![0u32; cout.div_ceil(MR) * panel];
    packed
        .par_chunks_mut(panel)
        .zip(weight.par_chunks(MR * cin * taps))
        .for_each(|(dst, rows)| {
            for (r, row) in rows.chunks_exact(cin * taps).enumerate() {
                for (pair, ch) in row.chunks(2 * taps).enumerate() {
                    let (lo, hi) = ch.split_at(taps);
                    for tap in 0..taps {
                        let high = hi.get(tap).map_or(0, |&v| bf16_bits(v) << 16);
                        dst[(tap * pairs + pair) * MR + r] = bf16_bits(lo[tap]) | high;
                    }
                }
            }
        });
    packed
}

/// A pointer that jobs on several threads write through, each to its own elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: the jobs write disjoint output positions (see `conv3d`).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Element `i` (a method, so that closures capture the whole `Send` wrapper).
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Grid positions `v..v + len` that are outputs `p..p + len`: `(v, p, len)`.
type Run = (usize, usize, usize);

/// Convolves `x` (`[B, cin, t, h, w]`) with `weight` (`[cout, cin, kt, kh, kw]`) at stride 1
/// into `out` (`[B, cout, t', h', w']`): `bf16(bias + Σ bf16(x)·bf16(w))`, the bias already
/// bf16, the sums in f32.
///
/// # Panics
/// If [`applies`] is false for `g` or the slice lengths disagree with `g` (checked by the
/// caller, [`super::conv3d_bf16`]).
pub(super) fn conv3d(
    x: &[f32],
    g: &Conv3dGeom,
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(
        applies(g),
        "implicit bf16 conv3d: needs stride 1 and AVX512-BF16"
    );
    let o = g.output().expect("conv3d: invalid geometry");
    let grid = Grid::new(g, o);
    let taps = g.kernel.iter().product::<usize>();
    let pairs = g.cin.div_ceil(2);
    let offsets = grid.tap_offsets(g.kernel);
    let a = pack_weight(weight, g.cout, g.cin, taps);
    let a_panel = taps * pairs * MR;
    let in_len = g.cin * g.input.iter().product::<usize>();
    let positions = o.iter().product::<usize>();
    let tile_cols = NR * JOB_PANELS;
    let jobs = grid.virtual_len.div_ceil(tile_cols);
    // Taken out of the thread-local, not borrowed: a nested call on this thread (rayon may run
    // other work while it waits) then simply allocates its own.
    let mut packed = PACKED_INPUT.take();
    packed.resize(pairs * grid.plane, 0);
    for (xb, ob) in x
        .chunks_exact(in_len)
        .zip(out.chunks_exact_mut(g.cout * positions))
    {
        pack_input(xb, g, &grid, &mut packed);
        let dst = SharedOut(ob.as_mut_ptr());
        let packed = &packed[..];
        (0..jobs).into_par_iter().for_each(|job| {
            let v0 = job * tile_cols;
            let v1 = (v0 + tile_cols).min(grid.virtual_len);
            TILE.with_borrow_mut(|(tile, runs)| {
                tile.resize(g.cout * tile_cols, 0.0);
                for (i, ap) in a.chunks_exact(a_panel).enumerate() {
                    let rows = MR.min(g.cout - i * MR);
                    for j in 0..(v1 - v0).div_ceil(NR) {
                        let c = &mut tile[i * MR * tile_cols + j * NR..];
                        // SAFETY: the CPU has AVX512-BF16 (`applies`); the panel reads 32
                        // words per tap and pair from `v0 + j·NR + offset` on in each plane,
                        // which `Grid::plane` covers (the last panel, the largest offset);
                        // `c` holds `rows` rows of `tile_cols` from the panel's column on.
                        unsafe {
                            kernel::block(
                                ap.as_chunks::<MR>().0,
                                packed.as_ptr().add(v0 + j * NR),
                                (&offsets, pairs, grid.plane),
                                c.as_mut_ptr(),
                                (tile_cols, rows),
                            )
                        };
                    }
                }
                grid.output_runs(v0, v1, runs);
                for (co, sums) in tile.chunks_exact(tile_cols).enumerate() {
                    let b = bias.map_or(0.0, |b| b[co]);
                    for &(v, p, len) in runs.iter() {
                        // SAFETY: outputs `p..p + len` of channel `co` lie in `ob`; the jobs'
                        // grid positions, hence their outputs, are disjoint.
                        let out = unsafe {
                            std::slice::from_raw_parts_mut(dst.at(co * positions + p), len)
                        };
                        for (o, &s) in out.iter_mut().zip(&sums[v - v0..]) {
                            *o = f32::from_bits(bf16_bits(s + b) << 16);
                        }
                    }
                }
            });
        });
    }
    PACKED_INPUT.set(packed);
}

thread_local! {
    /// The packed input of the calling thread's convolutions (kept: no page faults per call).
    static PACKED_INPUT: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    /// A job's output tile and its output runs, per worker thread.
    static TILE: std::cell::RefCell<(Vec<f32>, Vec<Run>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// `c[..rows, ..32] = Σ_tap Σ_pair a · b`: `a` holds the `MR` words of each (tap, pair),
    /// tap-major; the `b` words of tap `t` and pair `p` are the 32 at `b + offsets[t] + p·plane`;
    /// `c` has row stride `ldc`.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512-BF16; `a` holds `offsets.len() · pairs` entries, every
    /// `b` read lies in its buffer and `c`'s block is valid and ours.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn block(
        a: &[[u32; MR]],
        b: *const u32,
        (offsets, pairs, plane): (&[usize], usize, usize),
        c: *mut f32,
        (ldc, rows): (usize, usize),
    ) {
        // Nothing in the loop may panic, not even a debug build's pointer checks (those of
        // `ptr::add` and unaligned reads): a possible exit keeps the accumulators in memory. So
        // `a` is a slice, pointers step by `wrapping_add` and `b` comes in by masked loads.
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for (a_tap, &off) in a.chunks_exact(pairs).zip(offsets) {
            let mut bq = b.wrapping_add(off).cast::<i32>();
            for words in a_tap {
                let b0: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(!0, bq));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_maskz_loadu_epi32(!0, bq.wrapping_add(NR / 2)));
                for (acc, &word) in acc.iter_mut().zip(words) {
                    let ar: __m512bh = std::mem::transmute(_mm512_set1_epi32(word as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], ar, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], ar, b1);
                }
                bq = bq.wrapping_add(plane);
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let row = c.wrapping_add(r * ldc);
            _mm512_storeu_ps(row, acc[0]);
            _mm512_storeu_ps(row.wrapping_add(NR / 2), acc[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    /// Never called: [`super::applies`] is false off x86-64.
    pub(super) unsafe fn block(
        _: &[[u32; super::MR]],
        _: *const u32,
        _: (&[usize], usize, usize),
        _: *mut f32,
        _: (usize, usize),
    ) {
        unreachable!("implicit bf16 conv3d needs AVX512-BF16")
    }
}
