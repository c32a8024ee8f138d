//! bf16 matrix multiplication: `c (+)= bf16(a) · bf16(b)` with f32 accumulation, the CPU side of
//! the bf16 compute mode (`WANRT_COMPUTE=bf16`, [`super::compute`]).
//!
//! On CPUs with AVX512-BF16 (Zen 4 and later, Intel Cooper Lake and Sapphire Rapids and later)
//! the product runs on `vdpbf16ps`, which multiplies 32 bf16 pairs and adds them into 16 f32 sums
//! per instruction: twice the multiply-adds of an f32 FMA, and half the bytes per operand
//! (1.4-1.5× the f32 gemm crate's rate measured on Zen 5, `examples/gemm_rate.rs`). Elsewhere
//! the inputs are rounded into f32 copies and multiplied by [`sgemm_raw`]: the same values,
//! slower.
//!
//! Layout. Both operands are packed once per call into bf16 *pairs* (`u32` words holding
//! elements `2p` and `2p + 1` of the depth, `2p` in the low half), the unit `vdpbf16ps` reads:
//! `a` in panels of [`MR`] rows (`[panel][pair][MR]`), `b` in panels of [`NR`] columns
//! (`[panel][pair][NR]`); an odd depth and the last partial panels are padded with zeros. The
//! micro-kernel keeps an `MR × NR` block of `c` in 28 of the 32 vector registers and, per depth
//! pair, loads two vectors of `b` and broadcasts one word of `a` per row. The loops around it
//! block the depth by 192 pairs, so that one call's operands (24 KiB of `b`, 10.5 KiB of `a`)
//! stay in a 48 KiB L1 cache, and the columns and rows by 16 panels, so that the `b` block
//! (384 KiB) and the `a` block (168 KiB) stay in a 1 MiB L2 cache. Threads take contiguous ranges of column panels (or of row panels when
//! there are few columns).

use std::ops::Range;

use super::gemm::{sgemm_raw, MatRef, RawMatMut};

/// Rows of `c` per micro-kernel call.
pub const MR: usize = 14;
/// Columns of `c` per micro-kernel call (two 16-lane vectors).
pub const NR: usize = 32;
/// Depth pairs per block (384 elements of depth).
const KC_PAIRS: usize = 192;
/// Column panels per block (512 columns).
const NC_PANELS: usize = 16;
/// Row panels per block (224 rows).
const MC_PANELS: usize = 16;

/// True when this CPU multiplies bf16 in hardware (AVX512-BF16), so that [`bgemm`] runs at the
/// bf16 rate rather than through rounded f32 copies.
pub fn has_bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `c = bf16(a) · bf16(b)` (or `c += …` when `accumulate`), with `c` row-major
/// `a.rows × b.cols`: every input value rounded to the nearest bf16 (ties to even), products
/// summed in f32. `threads` > 1 splits the work over the rayon pool.
///
/// # Panics
/// If the views do not fit their slices or the inner dimensions differ (a bug in the caller).
pub fn bgemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], accumulate: bool, threads: usize) {
    assert_eq!(c.len(), a.rows * b.cols, "bgemm: output size");
    let c = RawMatMut {
        ptr: c.as_mut_ptr(),
        rows: a.rows,
        cols: b.cols,
        row_stride: b.cols,
    };
    // SAFETY: `c` describes exactly the exclusively borrowed slice.
    unsafe { bgemm_raw(a, b, c, accumulate, threads) }
}

/// [`bgemm`] into a strided output.
///
/// # Safety
/// Every element `(r, c)` of `c` (`r < c.rows`, `col < c.cols`) must be valid for reads and
/// writes, and no other thread may access those elements during the call.
///
/// # Panics
/// If the views do not fit their slices or the dimensions disagree (a bug in the caller).
pub unsafe fn bgemm_raw(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: RawMatMut,
    accumulate: bool,
    threads: usize,
) {
    assert_eq!(a.cols, b.rows, "bgemm: inner dimensions differ");
    assert!(fits(&a) && fits(&b), "bgemm: view outside its slice");
    assert!(c.rows == a.rows && c.cols == b.cols, "bgemm: output shape");
    if a.rows == 0 || b.cols == 0 || a.cols == 0 || !has_bf16_dot() {
        // SAFETY: forwarded caller contract.
        unsafe { bgemm_rounded_copies(a, b, c, accumulate, threads) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX512-BF16 (checked above); forwarded caller contract.
    unsafe {
        avx512::bgemm(a, b, c, accumulate, threads.max(1))
    };
}

/// The portable path: rounds both operands into f32 copies and multiplies them with sgemm.
///
/// # Safety
/// As [`bgemm_raw`].
unsafe fn bgemm_rounded_copies(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: RawMatMut,
    accumulate: bool,
    threads: usize,
) {
    let round = |m: MatRef<'_>| -> Vec<f32> {
        let mut v = Vec::with_capacity(m.rows * m.cols);
        for r in 0..m.rows {
            v.extend((0..m.cols).map(|c| round_bf16(m.data[r * m.row_stride + c * m.col_stride])));
        }
        v
    };
    let (av, bv) = (round(a), round(b));
    // SAFETY: forwarded caller contract.
    unsafe {
        sgemm_raw(
            MatRef::row_major(&av, a.rows, a.cols),
            MatRef::row_major(&bv, b.rows, b.cols),
            c,
            accumulate,
            threads,
        )
    }
}

/// `x` rounded to the nearest bf16 (ties to even) and widened back.
fn round_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(x)) << 16)
}

/// The bits of `x` rounded to the nearest bf16, ties to even; NaN stays NaN (quieted).
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The pair word of `x0` (low half) and `x1`.
#[inline(always)]
fn pair(x0: f32, x1: f32) -> u32 {
    u32::from(bf16_bits(x0)) | (u32::from(bf16_bits(x1)) << 16)
}

fn fits(m: &MatRef<'_>) -> bool {
    if m.rows == 0 || m.cols == 0 {
        return true;
    }
    (m.rows - 1) * m.row_stride + (m.cols - 1) * m.col_stride < m.data.len()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::{pair, MatRef, RawMatMut, KC_PAIRS, MC_PANELS, MR, NC_PANELS, NR};

    /// Packs `width` lines of `m` starting at line `l0` into `out` (`[pair][width]` words), where a
    /// line is a row of `m` (`along_rows`, the `a` side) or a column (the `b` side) and pairs run
    /// along the other axis. Lines and depth past the matrix's end are zeros. The loop runs along
    /// whichever axis is contiguous in memory, so reads stream.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512-BF16.
    unsafe fn pack_panel(
        m: &MatRef<'_>,
        along_rows: bool,
        l0: usize,
        width: usize,
        out: &mut [u32],
    ) {
        let (lines, depth, line_stride, depth_stride) = if along_rows {
            (m.rows, m.cols, m.row_stride, m.col_stride)
        } else {
            (m.cols, m.rows, m.col_stride, m.row_stride)
        };
        debug_assert_eq!(out.len(), depth.div_ceil(2) * width);
        let live = width.min(lines.saturating_sub(l0));
        if live < width {
            out.fill(0);
        }
        let at = |l: usize, d: usize| m.data[(l0 + l) * line_stride + d * depth_stride];
        if depth_stride == 1 {
            // Each line is contiguous: walk it pair by pair.
            for l in 0..live {
                let base = (l0 + l) * line_stride;
                // SAFETY: the CPU has AVX512-BF16 (this module's precondition).
                unsafe { pack_line(&m.data[base..base + depth], &mut out[l..], width) };
            }
        } else if line_stride == 1 {
            // The lines are side by side: 16 lines per vector, two depth rows at a time.
            let lines = (live, depth, depth_stride);
            // SAFETY: the CPU has AVX512F; the panel's lines and depth lie in `m.data[l0..]`
            // (the view fits its slice) and `out` is one whole panel.
            unsafe { super::pack_avx512::contiguous_lines(&m.data[l0..], lines, width, out) };
        } else {
            // Neither axis is contiguous: element by element.
            for (p, words) in out.chunks_exact_mut(width).enumerate() {
                let d0 = 2 * p;
                for (l, w) in words.iter_mut().enumerate().take(live) {
                    let x1 = if d0 + 1 < depth { at(l, d0 + 1) } else { 0.0 };
                    *w = pair(at(l, d0), x1);
                }
            }
        }
    }

    /// Packs every panel of `m` (rows of `MR` for `a`, columns of `NR` for `b`), in parallel, into
    /// `buf` (resized); returns the words per panel.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512-BF16.
    pub(super) unsafe fn pack(
        m: &MatRef<'_>,
        along_rows: bool,
        width: usize,
        buf: &mut Vec<u32>,
    ) -> usize {
        let (lines, depth) = if along_rows {
            (m.rows, m.cols)
        } else {
            (m.cols, m.rows)
        };
        let panel_words = depth.div_ceil(2) * width;
        // Every word is written below: keep the old contents rather than zeroing them first.
        let len = lines.div_ceil(width) * panel_words;
        buf.truncate(len);
        buf.resize(len, 0);
        buf.par_chunks_mut(panel_words)
            .enumerate()
            // SAFETY: forwarded precondition.
            .for_each(|(i, out)| unsafe { pack_panel(m, along_rows, i * width, width, out) });
        panel_words
    }

    /// Converts one contiguous line to pair words, 32 values per vector conversion, and stores word
    /// `p` at `out[p * width]`.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512-BF16; `out` holds `(line.len() + 1) / 2` words at stride
    /// `width`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pack_line(line: &[f32], out: &mut [u32], width: usize) {
        let full = line.len() / 32;
        let mut words = [0u32; 16];
        for c in 0..full {
            let lo = _mm512_loadu_ps(line.as_ptr().add(32 * c));
            let hi = _mm512_loadu_ps(line.as_ptr().add(32 * c + 16));
            // Lanes 0-15 from `lo`, 16-31 from `hi`: word i holds values 2i (low half) and 2i + 1.
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(words.as_mut_ptr().cast(), v);
            for (i, &w) in words.iter().enumerate() {
                out[(16 * c + i) * width] = w;
            }
        }
        let rest = &line[32 * full..];
        for (i, w) in rest.chunks(2).enumerate() {
            out[(16 * full + i) * width] = pair(w[0], w.get(1).copied().unwrap_or(0.0));
        }
    }

    /// The packed operands of one product and where its output goes.
    struct Packed<'a> {
        a: &'a [u32],
        b: &'a [u32],
        /// Words per `a` panel and per `b` panel (pairs × MR, pairs × NR).
        a_panel: usize,
        b_panel: usize,
        pairs: usize,
        c: RawMatMut,
        accumulate: bool,
    }

    /// # Safety
    /// The CPU has AVX512F and AVX512-BF16; the views fit (checked by the caller) and `c`
    /// follows [`super::bgemm_raw`]'s contract.
    pub(super) unsafe fn bgemm(
        a: MatRef<'_>,
        b: MatRef<'_>,
        c: RawMatMut,
        accumulate: bool,
        threads: usize,
    ) {
        // Taken, not borrowed, from the thread's cache: a nested call (rayon may run another job
        // on this thread while it waits) allocates its own.
        let (mut abuf, mut bbuf) = PACKED.take();
        let a_panel = pack(&a, true, MR, &mut abuf);
        let b_panel = pack(&b, false, NR, &mut bbuf);
        let p = Packed {
            a: &abuf,
            b: &bbuf,
            a_panel,
            b_panel,
            pairs: a.cols.div_ceil(2),
            c,
            accumulate,
        };
        let (m_panels, n_panels) = (a.rows.div_ceil(MR), b.cols.div_ceil(NR));
        let split_columns = n_panels >= 4 * threads || n_panels >= m_panels;
        let (count, jobs) = if split_columns {
            (n_panels, threads.min(n_panels))
        } else {
            (m_panels, threads.min(m_panels))
        };
        let range = |t: usize| (t * count / jobs, (t + 1) * count / jobs);
        let run = |t: usize| {
            let (lo, hi) = range(t);
            // SAFETY: forwarded; the jobs' panel ranges are disjoint, so are their `c` blocks.
            unsafe {
                if split_columns {
                    block_loop(&p, (0, m_panels), (lo, hi))
                } else {
                    block_loop(&p, (lo, hi), (0, n_panels))
                }
            }
        };
        if jobs <= 1 {
            run(0);
        } else {
            (0..jobs).into_par_iter().for_each(run);
        }
        PACKED.set((abuf, bbuf));
    }

    thread_local! {
        /// The packed operands' buffers, kept between calls so that they are not re-faulted in.
        static PACKED: std::cell::Cell<(Vec<u32>, Vec<u32>)> =
            const { std::cell::Cell::new((Vec::new(), Vec::new())) };
    }

    /// Computes the `c` block of row panels `mp` and column panels `np` (half-open ranges).
    ///
    /// # Safety
    /// As [`bgemm`]; no other thread touches this block of `c`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn block_loop(p: &Packed<'_>, mp: (usize, usize), np: (usize, usize)) {
        let c = p.c;
        for k0 in (0..p.pairs).step_by(KC_PAIRS) {
            let kp = KC_PAIRS.min(p.pairs - k0);
            let load_c = p.accumulate || k0 > 0;
            for j0 in (np.0..np.1).step_by(NC_PANELS) {
                for i0 in (mp.0..mp.1).step_by(MC_PANELS) {
                    for j in j0..(j0 + NC_PANELS).min(np.1) {
                        let b = p.b.as_ptr().add(j * p.b_panel + k0 * NR);
                        let cols = NR.min(c.cols - j * NR);
                        for i in i0..(i0 + MC_PANELS).min(mp.1) {
                            let a = p.a.as_ptr().add(i * p.a_panel + k0 * MR);
                            let rows = MR.min(c.rows - i * MR);
                            let out = c.ptr.add(i * MR * c.row_stride + j * NR);
                            kernel(kp, a, b, out, c.row_stride, rows, cols, load_c);
                        }
                    }
                }
            }
        }
    }

    /// `c[..rows, ..cols] (+)= Σ_p a[p] ⊗ b[p]` over `kp` depth pairs: `a` holds `MR` words per
    /// pair, `b` `NR` words per pair, `c` has row stride `ldc`.
    ///
    /// # Safety
    /// `a` and `b` are valid for `kp` pairs; `c`'s `rows × cols` block is valid and ours.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        kp: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        load_c: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for q in 0..kp {
            let bq = b.add(q * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq.add(16).cast()));
            let aq = a.add(q * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let ar: __m512bh = std::mem::transmute(_mm512_set1_epi32(*aq.add(r) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], ar, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], ar, b1);
            }
        }
        let mask = |n: usize| -> __mmask16 {
            if n >= 16 {
                0xffff
            } else {
                (1u16 << n) - 1
            }
        };
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let row = c.add(r * ldc);
            let (mut v0, mut v1) = (acc[0], acc[1]);
            if load_c {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.add(16)));
            }
            _mm512_mask_storeu_ps(row, m0, v0);
            _mm512_mask_storeu_ps(row.add(16), m1, v1);
        }
    }
}

/// A matrix packed once into bf16 pairs as the left operand of [`bgemm_packed`]: panels of
/// [`MR`] rows, pairs along the columns (the layout [`bgemm`] packs `a` into). For products that
/// reuse an operand (an attention head's keys across its query tiles): rounded and packed once.
#[derive(Default)]
pub struct PackedA(Panels);

/// A matrix packed once into bf16 pairs as the right operand of [`bgemm_packed`]: panels of
/// [`NR`] columns, pairs along the rows (the layout [`bgemm`] packs `b` into).
#[derive(Default)]
pub struct PackedB(Panels);

/// A block of a [`PackedA`] or [`PackedB`]: whole panels and a range of depth pairs.
#[derive(Clone, Copy)]
pub struct PackedBlock<'a> {
    /// The words from the block's first panel on.
    words: &'a [u32],
    /// Lines (rows of `a`, columns of `b`) per panel, and words per panel.
    width: usize,
    panel_words: usize,
    /// The block's lines, first depth pair and depth.
    lines: usize,
    pair0: usize,
    depth: usize,
}

impl PackedA {
    /// Packs `a` (every value rounded to the nearest bf16) into this buffer, reusing its memory.
    ///
    /// # Panics
    /// If the view does not fit its slice.
    pub fn pack(&mut self, a: MatRef<'_>) {
        self.0.pack(&a, true, MR);
    }

    /// The block of rows `rows` and columns `cols`: `rows.start` a multiple of [`MR`],
    /// `cols.start` even, `cols.end` even or the last column.
    ///
    /// # Panics
    /// If the ranges break those rules or lie outside the matrix.
    pub fn block(&self, rows: Range<usize>, cols: Range<usize>) -> PackedBlock<'_> {
        self.0.block(MR, rows, cols)
    }
}

impl PackedB {
    /// Packs `b` (every value rounded to the nearest bf16) into this buffer, reusing its memory.
    ///
    /// # Panics
    /// If the view does not fit its slice.
    pub fn pack(&mut self, b: MatRef<'_>) {
        self.0.pack(&b, false, NR);
    }

    /// The block of rows `rows` and columns `cols`: `rows.start` even, `rows.end` even or the
    /// last row, `cols.start` a multiple of [`NR`].
    ///
    /// # Panics
    /// If the ranges break those rules or lie outside the matrix.
    pub fn block(&self, rows: Range<usize>, cols: Range<usize>) -> PackedBlock<'_> {
        self.0.block(NR, cols, rows)
    }
}

/// Packed panels of `lines` lines (rows of `a` or columns of `b`) and `depth` elements along the
/// pairs: `[panel][pair][width]` words, as `avx512::pack` writes them.
#[derive(Default)]
struct Panels {
    words: Vec<u32>,
    lines: usize,
    depth: usize,
}

impl Panels {
    fn pack(&mut self, m: &MatRef<'_>, along_rows: bool, width: usize) {
        assert!(fits(m), "PackedA/PackedB: view outside its slice");
        (self.lines, self.depth) = if along_rows {
            (m.rows, m.cols)
        } else {
            (m.cols, m.rows)
        };
        if self.lines == 0 || self.depth == 0 {
            self.words.clear();
            return;
        }
        assert!(has_bf16_dot(), "PackedA/PackedB: needs AVX512-BF16");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX512-BF16 (asserted).
        unsafe {
            avx512::pack(m, along_rows, width, &mut self.words)
        };
    }

    fn block(&self, width: usize, lines: Range<usize>, depth: Range<usize>) -> PackedBlock<'_> {
        assert!(
            lines.start.is_multiple_of(width)
                && lines.start <= lines.end
                && lines.end <= self.lines
                && depth.start.is_multiple_of(2)
                && depth.start <= depth.end
                && (depth.end.is_multiple_of(2) || depth.end == self.depth)
                && depth.end <= self.depth,
            "PackedA/PackedB: block {lines:?} x {depth:?} of {} x {}",
            self.lines,
            self.depth
        );
        let panel_words = self.depth.div_ceil(2) * width;
        PackedBlock {
            words: &self.words[(lines.start / width * panel_words).min(self.words.len())..],
            width,
            panel_words,
            lines: lines.len(),
            pair0: depth.start / 2,
            depth: depth.len(),
        }
    }
}

/// `c = a · b` (or `c += a · b` when `accumulate`) for packed blocks: `a` from a [`PackedA`],
/// `b` from a [`PackedB`], the same sums as [`bgemm`] of the unpacked matrices, on the calling
/// thread (callers parallelise over blocks). Meant for blocks of a few hundred rows and columns,
/// which stay in the caller's cache without further blocking.
///
/// # Safety
/// As [`bgemm_raw`] for `c`.
///
/// # Panics
/// If the CPU lacks AVX512-BF16 (see [`has_bf16_dot`]), the depths differ, `c` is not
/// `a`'s rows × `b`'s columns, or `a` and `b` come from the wrong sides.
pub unsafe fn bgemm_packed(a: PackedBlock<'_>, b: PackedBlock<'_>, c: RawMatMut, accumulate: bool) {
    assert!(has_bf16_dot(), "bgemm_packed: needs AVX512-BF16");
    assert!(
        a.width == MR && b.width == NR,
        "bgemm_packed: operands' sides"
    );
    assert_eq!(a.depth, b.depth, "bgemm_packed: inner dimensions differ");
    assert!(
        c.rows == a.lines && c.cols == b.lines,
        "bgemm_packed: output shape"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let pairs = a.depth.div_ceil(2);
        for j in 0..b.lines.div_ceil(NR) {
            let bp = b.words[j * b.panel_words + b.pair0 * NR..].as_ptr();
            let cols = NR.min(c.cols - j * NR);
            for i in 0..a.lines.div_ceil(MR) {
                let ap = a.words[i * a.panel_words + a.pair0 * MR..].as_ptr();
                let rows = MR.min(c.rows - i * MR);
                // SAFETY: the CPU has AVX512-BF16; the panels hold `pairs` pairs from `pair0` on
                // (the blocks' ranges were checked); `c` block `(i, j)` lies in `c`, which the
                // caller lends us.
                unsafe {
                    let out = c.ptr.add(i * MR * c.row_stride + j * NR);
                    avx512::kernel(pairs, ap, bp, out, c.row_stride, rows, cols, accumulate);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod pack_avx512 {
    use std::arch::x86_64::*;

    /// Packs `lines` lines of `data` that lie next to each other in memory (line stride 1; the
    /// depth elements `depth_stride` apart) into `out`, `[panel][pair][width]` words (every word
    /// written, zeros past the lines and the depth), 16 lines per step.
    ///
    /// # Safety
    /// The CPU has AVX512F; every element `l + e·depth_stride` (`l < lines`, `e < depth`) lies
    /// in `data`, and `out` holds the whole panels.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn contiguous_lines(
        data: &[f32],
        (lines, depth, depth_stride): (usize, usize, usize),
        width: usize,
        out: &mut [u32],
    ) {
        let pairs = depth.div_ceil(2);
        for (panel, words) in out.chunks_exact_mut(pairs * width).enumerate() {
            let l0 = panel * width;
            let live = width.min(lines - l0);
            for (p, words) in words.chunks_exact_mut(width).enumerate() {
                for c in (0..width).step_by(16) {
                    let n = live.saturating_sub(c).min(16);
                    let at = |e: usize| (e < depth && n > 0).then(|| l0 + c + e * depth_stride);
                    // SAFETY: the `n` lanes read lie in `data` (the caller's contract).
                    let (x0, x1) =
                        unsafe { (load(data, at(2 * p), n), load(data, at(2 * p + 1), n)) };
                    let pair = _mm512_or_si512(
                        _mm512_srli_epi32::<16>(rounded(x0)),
                        _mm512_and_si512(rounded(x1), _mm512_set1_epi32(0xffff_0000u32 as i32)),
                    );
                    let store = words[c..].as_mut_ptr().cast();
                    // SAFETY: `min(16, width - c)` words from `c` lie in this pair's `width`.
                    unsafe { _mm512_mask_storeu_epi32(store, mask(width - c), pair) };
                }
            }
        }
    }

    /// The first `n` lanes of 16 floats of `data` from `at` (zeros in the others; all zeros
    /// without `at`).
    ///
    /// # Safety
    /// The CPU has AVX512F; `data[at..at + n]` exists.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(data: &[f32], at: Option<usize>, n: usize) -> __m512 {
        match at {
            // SAFETY: the caller's contract; masked-off lanes are not accessed.
            Some(at) => unsafe { _mm512_maskz_loadu_ps(mask(n), data.as_ptr().add(at)) },
            None => _mm512_setzero_ps(),
        }
    }

    /// The first `n` lanes (all 16 from `n = 16` on).
    fn mask(n: usize) -> __mmask16 {
        (1u32 << n.min(16)).wrapping_sub(1) as __mmask16
    }

    /// The bits of `x` with the bf16 rounding added (nearest, ties to even) and NaN quieted, as
    /// [`super::bf16_bits`]: the bf16 is the high half.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn rounded(x: __m512) -> __m512i {
        let b = _mm512_castps_si512(x);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(b, _mm512_set1_epi32(0x40_0000)))
    }
}

#[cfg(test)]
mod tests_packed;

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        crate::tensor::random::values(n, seed)
    }

    /// `Σ bf16(a)·bf16(b)` in f64 and the sum of |terms| (the scale of the rounding error).
    fn reference(a: MatRef<'_>, b: MatRef<'_>, r: usize, c: usize) -> (f64, f64) {
        (0..a.cols).fold((0.0, 0.0), |(s, m), i| {
            let t = round_bf16(a.data[r * a.row_stride + i * a.col_stride]) as f64
                * round_bf16(b.data[i * b.row_stride + c * b.col_stride]) as f64;
            (s + t, m + t.abs())
        })
    }

    fn check(m: usize, k: usize, n: usize, b_transposed: bool, accumulate: bool, threads: usize) {
        let (av, bv) = (values(m * k, 1), values(k * n, 2));
        let a = MatRef::row_major(&av, m, k);
        let b = if b_transposed {
            MatRef::row_major(&bv, n, k).t()
        } else {
            MatRef::row_major(&bv, k, n)
        };
        let init = values(m * n, 3);
        let mut c = init.clone();
        bgemm(a, b, &mut c, accumulate, threads);
        for r in 0..m {
            for col in 0..n {
                let (want, mag) = reference(a, b, r, col);
                let want = want
                    + if accumulate {
                        init[r * n + col] as f64
                    } else {
                        0.0
                    };
                let got = c[r * n + col] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * (mag + 1.0),
                    "{m}x{k}x{n} bt={b_transposed} acc={accumulate} t={threads} at ({r},{col}): \
                     {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn matches_rounded_reference_on_odd_sizes_layouts_and_threads() {
        for (m, k, n) in [
            (1, 1, 1),
            (13, 7, 31),
            (15, 33, 33),
            (29, 1100, 65),
            (3, 2050, 5),
            (130, 64, 300),
        ] {
            for (bt, acc, threads) in [(false, false, 1), (true, true, 2), (false, true, 3)] {
                check(m, k, n, bt, acc, threads);
            }
        }
    }

    #[test]
    fn writes_only_its_block_of_a_strided_output() {
        let (m, k, n) = (17, 9, 40);
        let (av, bv) = (values(m * k, 4), values(k * n, 5));
        let mut buf = vec![7.0f32; m * (n + 3)];
        let whole = RawMatMut {
            ptr: buf.as_mut_ptr(),
            rows: m,
            cols: n + 3,
            row_stride: n + 3,
        };
        let (a, b) = (MatRef::row_major(&av, m, k), MatRef::row_major(&bv, k, n));
        // SAFETY: the block lies inside `buf`, borrowed exclusively here.
        unsafe { bgemm_raw(a, b, whole.block(0, 2, m, n), false, 2) };
        for r in 0..m {
            for col in 0..n + 3 {
                let got = buf[r * (n + 3) + col];
                if (2..n + 2).contains(&col) {
                    let (want, mag) = reference(a, b, r, col - 2);
                    assert!((got as f64 - want).abs() <= 1e-6 * (mag + 1.0));
                } else {
                    assert_eq!(got, 7.0, "({r}, {col}) outside the block");
                }
            }
        }
    }

    #[test]
    fn portable_path_rounds_the_same_values() {
        let (m, k, n) = (9, 21, 19);
        let (av, bv) = (values(m * k, 6), values(k * n, 7));
        let (a, b) = (MatRef::row_major(&av, m, k), MatRef::row_major(&bv, k, n));
        let mut c = vec![0.0f32; m * n];
        let out = RawMatMut {
            ptr: c.as_mut_ptr(),
            rows: m,
            cols: n,
            row_stride: n,
        };
        // SAFETY: `out` describes exactly `c`.
        unsafe { bgemm_rounded_copies(a, b, out, false, 1) };
        for r in 0..m {
            for col in 0..n {
                let (want, mag) = reference(a, b, r, col);
                assert!((c[r * n + col] as f64 - want).abs() <= 1e-6 * (mag + 1.0));
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_nan() {
        for x in [
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            -3.3,
            1e-40,
            f32::MAX,
        ] {
            assert_eq!(round_bf16(x), half::bf16::from_f32(x).to_f32(), "{x}");
        }
        assert!(round_bf16(f32::NAN).is_nan());
    }
}
