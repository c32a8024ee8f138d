//! 3-D convolution as im2col + GEMM, tiled over output positions, and nearest upsampling.
//!
//! The im2col matrix of a whole video would be huge (96 channels × 27 taps × 480 × 832 floats
//! per frame ≈ 4 GB), so the output positions of each batch item are cut into tiles whose
//! column matrix (and the GEMM result) stays within `COLS_BUDGET` floats; each tile is one GEMM
//! `out[Cout, tile] = W[Cout, K] · cols[K, tile]` with `K = Cin·kt·kh·kw`.
//! A 1×1×1 kernel with stride 1 and no padding needs no columns: it is one GEMM on the input.
//! In bf16 ([`conv3d_bf16`]) stride-1 convolutions on CPUs with AVX512-BF16 skip the columns
//! altogether (an implicit GEMM on a bf16 copy of the input, `conv/implicit_bf16.rs`); the
//! others multiply the columns with [`bgemm`].

mod implicit_bf16;

use rayon::prelude::*;

use super::compute::round_to_bf16;
use super::gemm::{sgemm, MatRef};
use super::gemm_bf16::bgemm;

/// A GEMM with [`sgemm`]'s contract: `c (+)= a · b` over `threads` threads.
type Gemm = fn(MatRef<'_>, MatRef<'_>, &mut [f32], bool, usize);

/// Floats in one scratch matrix of a tile (16 MiB).
const COLS_BUDGET: usize = 4 << 20;

/// The geometry of a 3-D convolution (one batch item).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dGeom {
    /// Input channels.
    pub cin: usize,
    /// Input extent (frames, rows, columns), before padding.
    pub input: [usize; 3],
    /// Output channels.
    pub cout: usize,
    /// Kernel extent (frames, rows, columns).
    pub kernel: [usize; 3],
    /// Stride per axis (each ≥ 1).
    pub stride: [usize; 3],
    /// Zero padding on both sides, per axis.
    pub padding: [usize; 3],
}

impl Conv3dGeom {
    /// The output extent (frames, rows, columns), or `None` when the kernel is larger than the
    /// padded input on some axis or a stride is 0.
    pub fn output(&self) -> Option<[usize; 3]> {
        let mut o = [0; 3];
        for (a, o) in o.iter_mut().enumerate() {
            let padded = self.padding[a].checked_mul(2)?.checked_add(self.input[a])?;
            if self.stride[a] == 0 || self.kernel[a] == 0 || self.kernel[a] > padded {
                return None;
            }
            *o = (padded - self.kernel[a]) / self.stride[a] + 1;
        }
        Some(o)
    }

    /// The GEMM depth `Cin·kt·kh·kw`.
    pub(crate) fn depth(&self) -> usize {
        self.cin * self.kernel.iter().product::<usize>()
    }
}

/// Convolves `x` (`[batch, cin, t, h, w]`) with `weight` (`[cout, cin, kt, kh, kw]`, f32) into
/// `out` (`[batch, cout, t', h', w']`), adding `bias` (`cout` values) when given.
///
/// # Panics
/// If the geometry is invalid or the slice lengths disagree with it (a bug in the caller; the
/// tensor op validates both).
pub fn conv3d(
    x: &[f32],
    batch: usize,
    g: &Conv3dGeom,
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    check_sizes(x, batch, g, weight, bias, out);
    conv3d_tiled(x, g, weight, bias, out, COLS_BUDGET, sgemm);
}

/// [`conv3d`] in bf16: `out = bf16(bf16(bias) + Σ bf16(x)·bf16(weight))`, every product exact
/// and the sums in f32 (the numerics of the CUDA backend's bf16 convolution). The inputs need not
/// be rounded already.
///
/// # Panics
/// As [`conv3d`].
pub fn conv3d_bf16(
    x: &[f32],
    batch: usize,
    g: &Conv3dGeom,
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    check_sizes(x, batch, g, weight, bias, out);
    if out.is_empty() {
        return;
    }
    let mut bias = bias.map(<[f32]>::to_vec);
    if let Some(b) = &mut bias {
        round_to_bf16(b);
    }
    if implicit_bf16::applies(g) {
        implicit_bf16::conv3d(x, g, weight, bias.as_deref(), out);
        return;
    }
    conv3d_tiled(x, g, weight, bias.as_deref(), out, COLS_BUDGET, bgemm);
    round_to_bf16(out);
}

/// Asserts the slice lengths agree with `g` (and `g` is valid).
fn check_sizes(
    x: &[f32],
    batch: usize,
    g: &Conv3dGeom,
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &[f32],
) {
    let o = g.output().expect("conv3d: invalid geometry");
    let in_len = g.cin * g.input.iter().product::<usize>();
    assert_eq!(x.len(), batch * in_len, "conv3d: input size");
    assert_eq!(
        out.len(),
        batch * g.cout * o.iter().product::<usize>(),
        "conv3d: output size"
    );
    assert_eq!(weight.len(), g.cout * g.depth(), "conv3d: weight size");
    assert!(bias.is_none_or(|b| b.len() == g.cout), "conv3d: bias size");
}

/// [`conv3d`] with im2col tiles of at most `budget` floats (at least one position per tile),
/// multiplied by `gemm`; the sizes are checked.
#[allow(clippy::too_many_arguments)]
fn conv3d_tiled(
    x: &[f32],
    g: &Conv3dGeom,
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    budget: usize,
    gemm: Gemm,
) {
    let o = g.output().expect("conv3d: invalid geometry");
    let in_len = g.cin * g.input.iter().product::<usize>();
    let positions = o.iter().product::<usize>();
    let k = g.depth();
    if out.is_empty() {
        return;
    }
    let threads = rayon::current_num_threads();
    let w = MatRef::row_major(weight, g.cout, k);
    let pointwise = g.kernel == [1, 1, 1] && g.stride == [1, 1, 1] && g.padding == [0, 0, 0];
    // Both scratch matrices (`cols` [K, tile] and `tmp` [Cout, tile]) stay within the budget.
    let tile = (budget / k.max(g.cout).max(1)).clamp(1, positions);
    let mut cols = if pointwise {
        Vec::new()
    } else {
        vec![0f32; k * tile]
    };
    let mut tmp = if tile < positions {
        vec![0f32; g.cout * tile]
    } else {
        Vec::new()
    };
    for (xb, ob) in x
        .chunks_exact(in_len)
        .zip(out.chunks_exact_mut(g.cout * positions))
    {
        if pointwise {
            fill_bias(ob, bias, positions);
            gemm(
                w,
                MatRef::row_major(xb, g.cin, positions),
                ob,
                bias.is_some(),
                threads,
            );
            continue;
        }
        for p0 in (0..positions).step_by(tile) {
            let n = tile.min(positions - p0);
            let cols = &mut cols[..k * n];
            im2col(xb, g, &o, p0, cols);
            let b = MatRef::row_major(cols, k, n);
            if n == positions {
                fill_bias(ob, bias, n);
                gemm(w, b, ob, bias.is_some(), threads);
            } else {
                let tmp = &mut tmp[..g.cout * n];
                fill_bias(tmp, bias, n);
                gemm(w, b, tmp, bias.is_some(), threads);
                for (orow, trow) in ob.chunks_exact_mut(positions).zip(tmp.chunks_exact(n)) {
                    orow[p0..p0 + n].copy_from_slice(trow);
                }
            }
        }
    }
}

/// Sets each row of `c` (`rows × n`) to its bias value (the GEMM then accumulates onto it).
fn fill_bias(c: &mut [f32], bias: Option<&[f32]>, n: usize) {
    if let Some(bias) = bias {
        for (row, &b) in c.chunks_exact_mut(n).zip(bias) {
            row.fill(b);
        }
    }
}

/// Fills `cols` (`[K, n]`) with the input values under each kernel tap for output positions
/// `p0..p0+n` (flattened over `o`), zeros where the tap falls into the padding.
/// Row `((ci·kt + dt)·kh + dh)·kw + dw` matches the weight layout `[cout, cin, kt, kh, kw]`.
fn im2col(x: &[f32], g: &Conv3dGeom, o: &[usize; 3], p0: usize, cols: &mut [f32]) {
    let n = cols.len() / g.depth();
    let [t, h, w] = g.input;
    let [kt, kh, kw] = g.kernel;
    let [st, sh, sw] = g.stride;
    let [pt, ph, pw] = g.padding;
    let ow = o[2];
    cols.par_chunks_mut(n).enumerate().for_each(|(row, dst)| {
        let dw = row % kw;
        let dh = (row / kw) % kh;
        let dt = (row / (kw * kh)) % kt;
        let ci = row / (kw * kh * kt);
        let plane = &x[ci * t * h * w..(ci + 1) * t * h * w];
        // Output columns whose input column `wo·sw + dw - pw` lies inside [0, w).
        let wo_lo = pw.saturating_sub(dw).div_ceil(sw).min(ow);
        let wo_hi = if w + pw > dw {
            ((w + pw - dw - 1) / sw + 1).min(ow)
        } else {
            0
        };
        let mut p = p0;
        let mut d = 0;
        while d < n {
            let (orow, wo0) = (p / ow, p % ow);
            let run = (ow - wo0).min(n - d);
            let seg = &mut dst[d..d + run];
            let (to, ho) = (orow / o[1], orow % o[1]);
            let ti = (to * st + dt).wrapping_sub(pt);
            let hi = (ho * sh + dh).wrapping_sub(ph);
            if ti >= t || hi >= h || wo_lo >= wo_hi {
                seg.fill(0.0);
            } else {
                let src = &plane[(ti * h + hi) * w..(ti * h + hi + 1) * w];
                let (lo, hi_) = (wo_lo.clamp(wo0, wo0 + run), wo_hi.clamp(wo0, wo0 + run));
                seg[..lo - wo0].fill(0.0);
                seg[hi_ - wo0..].fill(0.0);
                let mid = &mut seg[lo - wo0..hi_ - wo0];
                // A non-empty run starts inside [wo_lo, wo_hi), so `first` is a valid column.
                if !mid.is_empty() {
                    let first = lo * sw + dw - pw;
                    if sw == 1 {
                        mid.copy_from_slice(&src[first..first + mid.len()]);
                    } else {
                        for (j, v) in mid.iter_mut().enumerate() {
                            *v = src[first + j * sw];
                        }
                    }
                }
            }
            d += run;
            p += run;
        }
    });
}

/// Nearest-neighbour ×2 upsampling of `planes` planes of `h × w` into `2h × 2w`, in parallel.
///
/// # Panics
/// If the slice lengths disagree (a bug in the caller).
pub fn upsample_nearest2x(x: &[f32], out: &mut [f32], h: usize, w: usize) {
    assert_eq!(out.len(), 4 * x.len(), "upsample_nearest2x: output size");
    if x.is_empty() {
        return;
    }
    out.par_chunks_mut(4 * h * w)
        .zip(x.par_chunks(h * w))
        .for_each(|(o, p)| {
            for (orows, row) in o.chunks_exact_mut(4 * w).zip(p.chunks_exact(w)) {
                let (first, second) = orows.split_at_mut(2 * w);
                for (pair, &v) in first.chunks_exact_mut(2).zip(row) {
                    pair[0] = v;
                    pair[1] = v;
                }
                second.copy_from_slice(first);
            }
        });
}

/// Naive references shared by the conv and nn tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Conv3dGeom;

    /// Deterministic pseudo-random values in [-2, 2).
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        let v = crate::tensor::random::values(n, seed);
        v.into_iter().map(|x| 2.0 * x).collect()
    }

    /// Direct-loop 3-D convolution in f64 (same layouts as [`super::conv3d`]).
    pub(crate) fn conv3d_reference(
        x: &[f32],
        batch: usize,
        g: &Conv3dGeom,
        w: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<f64> {
        let [t, h, wd] = g.input;
        let [kt, kh, kw] = g.kernel;
        let [ot, oh, ow] = g.output().unwrap();
        let mut out = Vec::with_capacity(batch * g.cout * ot * oh * ow);
        for b in 0..batch {
            for co in 0..g.cout {
                for (to, ho, wo) in
                    (0..ot).flat_map(|a| (0..oh).flat_map(move |c| (0..ow).map(move |e| (a, c, e))))
                {
                    let mut acc = bias.map_or(0.0, |bs| bs[co] as f64);
                    for ci in 0..g.cin {
                        for dt in 0..kt {
                            for dh in 0..kh {
                                for dw in 0..kw {
                                    let ti =
                                        (to * g.stride[0] + dt) as isize - g.padding[0] as isize;
                                    let hi =
                                        (ho * g.stride[1] + dh) as isize - g.padding[1] as isize;
                                    let wi =
                                        (wo * g.stride[2] + dw) as isize - g.padding[2] as isize;
                                    if ti < 0 || hi < 0 || wi < 0 {
                                        continue;
                                    }
                                    let (ti, hi, wi) = (ti as usize, hi as usize, wi as usize);
                                    if ti >= t || hi >= h || wi >= wd {
                                        continue;
                                    }
                                    let xv = x[(((b * g.cin + ci) * t + ti) * h + hi) * wd + wi];
                                    let wv = w[(((co * g.cin + ci) * kt + dt) * kh + dh) * kw + dw];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
        out
    }

    /// Asserts `got` matches `want` to f32 GEMM accuracy (scaled by the reference's size).
    pub(crate) fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = (want.iter().map(|v| v * v).sum::<f64>() / want.len().max(1) as f64).sqrt();
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * (scale + w.abs()),
                "{what}: element {i}: {g} vs {w}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{assert_close, conv3d_reference, values};
    use super::*;

    fn check(batch: usize, g: Conv3dGeom, budget: usize, with_bias: bool) {
        let [t, h, w] = g.input;
        let x = values(batch * g.cin * t * h * w, 1);
        let wt = values(g.cout * g.depth(), 2);
        let bias = values(g.cout, 3);
        let bias = with_bias.then_some(&bias[..]);
        let o = g.output().unwrap();
        let mut out = vec![f32::NAN; batch * g.cout * o.iter().product::<usize>()];
        conv3d_tiled(&x, &g, &wt, bias, &mut out, budget, sgemm);
        let want = conv3d_reference(&x, batch, &g, &wt, bias);
        assert_close(&out, &want, 1e-5, &format!("{g:?} budget {budget}"));
    }

    fn geom(
        cin: usize,
        input: [usize; 3],
        cout: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Conv3dGeom {
        Conv3dGeom {
            cin,
            input,
            cout,
            kernel,
            stride,
            padding,
        }
    }

    #[test]
    fn matches_reference_over_kernels_strides_paddings_and_tiles() {
        let kernels = [
            [3, 3, 3],
            [1, 1, 1],
            [3, 1, 1],
            [1, 2, 2],
            [1, 3, 3],
            [2, 3, 1],
        ];
        for kernel in kernels {
            for stride in [[1, 1, 1], [2, 2, 2], [1, 2, 2], [2, 1, 1]] {
                for padding in [[0, 0, 0], [1, 1, 1], [0, 1, 1], [1, 0, 2]] {
                    let g = geom(3, [4, 7, 9], 5, kernel, stride, padding);
                    let k = g.depth();
                    // Whole video in one tile, tiles that split output rows, one position a tile.
                    for budget in [COLS_BUDGET, 13 * k, 1] {
                        check(2, g, budget, budget != 1);
                    }
                }
            }
        }
    }

    #[test]
    fn pointwise_and_odd_extents() {
        check(
            3,
            geom(7, [1, 5, 3], 2, [1, 1, 1], [1, 1, 1], [0, 0, 0]),
            COLS_BUDGET,
            true,
        );
        check(
            1,
            geom(1, [1, 1, 1], 1, [1, 1, 1], [1, 1, 1], [0, 0, 0]),
            COLS_BUDGET,
            false,
        );
        // Kernel exactly the padded input; stride larger than the kernel.
        check(
            1,
            geom(2, [3, 3, 3], 4, [3, 3, 3], [1, 1, 1], [0, 0, 0]),
            COLS_BUDGET,
            true,
        );
        check(
            1,
            geom(2, [5, 11, 13], 3, [1, 2, 2], [3, 3, 3], [0, 1, 0]),
            40,
            true,
        );
    }

    /// `conv3d_bf16` against the f64 reference on bf16-rounded inputs, its output rounded.
    fn check_bf16(batch: usize, g: Conv3dGeom) {
        let rounded = |n: usize, seed: u32| {
            let mut v = values(n, seed);
            round_to_bf16(&mut v);
            v
        };
        let [t, h, w] = g.input;
        // Unrounded inputs: the conv rounds them itself.
        let x = values(batch * g.cin * t * h * w, 5);
        let wt = values(g.cout * g.depth(), 6);
        let bias = rounded(g.cout, 7);
        let o = g.output().unwrap();
        let mut out = vec![f32::NAN; batch * g.cout * o.iter().product::<usize>()];
        conv3d_bf16(&x, batch, &g, &wt, Some(&bias), &mut out);
        let (mut xr, mut wr) = (x.clone(), wt.clone());
        round_to_bf16(&mut xr);
        round_to_bf16(&mut wr);
        let want = conv3d_reference(&xr, batch, &g, &wr, Some(&bias));
        assert!(out.iter().all(|v| half::bf16::from_f32(*v).to_f32() == *v));
        // The output's own bf16 rounding (2^-9 relative) dominates the f32 sums' error.
        assert_close(&out, &want, 4e-3, &format!("bf16 {g:?}"));
    }

    #[test]
    fn bf16_matches_reference_on_rounded_inputs() {
        // Stride 1 (the implicit GEMM where the CPU has AVX512-BF16): several position jobs,
        // output-channel panels with a partial last one, odd input channels, every VAE kernel.
        let cases = [
            ([3, 3, 3], [1, 1, 1]),
            ([3, 3, 3], [0, 1, 1]),
            ([1, 1, 1], [0, 0, 0]),
            ([3, 1, 1], [0, 0, 0]),
            ([1, 3, 3], [0, 1, 1]),
            ([2, 3, 1], [1, 0, 2]),
        ];
        for (kernel, padding) in cases {
            check_bf16(2, geom(5, [3, 9, 40], 17, kernel, [1, 1, 1], padding));
            check_bf16(1, geom(4, [1, 2, 3], 30, kernel, [1, 1, 1], [1, 1, 1]));
        }
        // Strided (im2col and bgemm).
        check_bf16(2, geom(3, [4, 7, 9], 5, [1, 3, 3], [1, 2, 2], [0, 1, 1]));
        check_bf16(1, geom(6, [5, 6, 8], 4, [3, 1, 1], [2, 1, 1], [0, 0, 0]));
    }

    #[test]
    fn output_geometry() {
        let g = geom(1, [3, 60, 104], 1, [1, 2, 2], [1, 2, 2], [0, 0, 0]);
        assert_eq!(g.output(), Some([3, 30, 52]));
        let g = geom(1, [1, 2, 2], 1, [1, 3, 3], [1, 1, 1], [0, 0, 0]);
        assert_eq!(g.output(), None);
        let g = geom(1, [1, 2, 2], 1, [1, 3, 3], [1, 1, 1], [0, 1, 1]);
        assert_eq!(g.output(), Some([1, 2, 2]));
        let g = geom(1, [1, 2, 2], 1, [1, 1, 1], [0, 1, 1], [0, 0, 0]);
        assert_eq!(g.output(), None);
    }

    #[test]
    fn upsample_replicates_each_value_into_a_block() {
        let (n, h, w) = (3, 5, 7);
        let x = values(n * h * w, 4);
        let mut out = vec![0.0; 4 * x.len()];
        upsample_nearest2x(&x, &mut out, h, w);
        for p in 0..n {
            for i in 0..2 * h {
                for j in 0..2 * w {
                    assert_eq!(
                        out[(p * 2 * h + i) * 2 * w + j],
                        x[(p * h + i / 2) * w + j / 2]
                    );
                }
            }
        }
    }
}
