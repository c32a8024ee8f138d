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

/// The bits of `x` rounded to the nearest bf16 (ties to even).
fn bf16_bits(x: f32) -> u32 {
    u32::from(half::bf16::from_f32(x).to_bits())
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

    /// The output index of grid position `v` (within one channel), if it is an output position.
    fn output_index(&self, v: usize) -> Option<usize> {
        let [_, hp, wp] = self.padded;
        let [_, ho, wo] = self.out;
        let (t, r) = (v / (hp * wp), v % (hp * wp));
        let (h, w) = (r / wp, r % wp);
        (h < ho && w < wo).then_some((t * ho + h) * wo + w)
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
        .enumerate()
        .for_each(|(p, dst)| {
            for (q, words) in dst.chunks_exact_mut(MR).enumerate() {
                let (tap, pair) = (q / pairs, q % pairs);
                for (r, word) in words.iter_mut().enumerate() {
                    let co = p * MR + r;
                    if co >= cout {
                        break;
                    }
                    let at = |ci: usize| weight[(co * cin + ci) * taps + tap];
                    let hi = if 2 * pair + 1 < cin {
                        bf16_bits(at(2 * pair + 1)) << 16
                    } else {
                        0
                    };
                    *word = bf16_bits(at(2 * pair)) | hi;
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
    let mut packed = vec![0u32; pairs * grid.plane];
    let in_len = g.cin * g.input.iter().product::<usize>();
    let out_len = g.cout * o.iter().product::<usize>();
    let positions = o.iter().product::<usize>();
    let jobs = grid.virtual_len.div_ceil(NR * JOB_PANELS);
    let tile_cols = NR * JOB_PANELS;
    for (xb, ob) in x.chunks_exact(in_len).zip(out.chunks_exact_mut(out_len)) {
        pack_input(xb, g, &grid, &mut packed);
        let dst = SharedOut(ob.as_mut_ptr());
        let packed = &packed[..];
        (0..jobs).into_par_iter().for_each_init(
            || vec![0f32; g.cout * tile_cols],
            |tile, job| {
                let v0 = job * tile_cols;
                let panels = JOB_PANELS.min((grid.virtual_len - v0).div_ceil(NR));
                for (i, ap) in a.chunks_exact(a_panel).enumerate() {
                    let rows = MR.min(g.cout - i * MR);
                    for j in 0..panels {
                        let c = &mut tile[i * MR * tile_cols + j * NR..];
                        // SAFETY: the CPU has AVX512-BF16 (`applies`); the panel reads `pairs`
                        // words per tap from `v0 + j·NR + offset` on, 32 of them, which lie in
                        // each plane (`Grid::plane` covers the last panel and largest offset);
                        // `c` holds `rows` rows of `tile_cols` from the panel's column on.
                        unsafe {
                            kernel::block(
                                ap.as_ptr(),
                                packed.as_ptr().add(v0 + j * NR),
                                (&offsets, pairs, grid.plane),
                                c.as_mut_ptr(),
                                (tile_cols, rows),
                            )
                        };
                    }
                }
                let dst = dst;
                for v in v0..(v0 + panels * NR).min(grid.virtual_len) {
                    let Some(p) = grid.output_index(v) else {
                        continue;
                    };
                    for co in 0..g.cout {
                        let sum = tile[co * tile_cols + v - v0] + bias.map_or(0.0, |b| b[co]);
                        // SAFETY: `p < positions`, so the element lies in `ob`; grid positions
                        // map to distinct outputs and each job owns its positions.
                        unsafe {
                            *dst.0.add(co * positions + p) = half::bf16::from_f32(sum).to_f32()
                        };
                    }
                }
            },
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// `c[..rows, ..32] = Σ_tap Σ_pair a · b`: `a` holds `MR` words per (tap, pair), tap-major;
    /// the `b` words of tap `t` and pair `p` are the 32 at `b + offsets[t] + p·plane`; `c` has
    /// row stride `ldc`.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512-BF16; every read lies in its buffer and `c`'s block is
    /// valid and ours.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn block(
        a: *const u32,
        b: *const u32,
        (offsets, pairs, plane): (&[usize], usize, usize),
        c: *mut f32,
        (ldc, rows): (usize, usize),
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let mut aq = a;
        for &off in offsets {
            let mut bq = b.add(off);
            for _ in 0..pairs {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq.add(NR / 2).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let ar: __m512bh = std::mem::transmute(_mm512_set1_epi32(*aq.add(r) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], ar, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], ar, b1);
                }
                aq = aq.add(MR);
                bq = bq.add(plane);
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let row = c.add(r * ldc);
            _mm512_storeu_ps(row, acc[0]);
            _mm512_storeu_ps(row.add(NR / 2), acc[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    /// Never called: [`super::applies`] is false off x86-64.
    pub(super) unsafe fn block(
        _: *const u32,
        _: *const u32,
        _: (&[usize], usize, usize),
        _: *mut f32,
        _: (usize, usize),
    ) {
        unreachable!("implicit bf16 conv3d needs AVX512-BF16")
    }
}
