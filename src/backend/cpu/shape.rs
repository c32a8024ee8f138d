//! CPU kernels for shape ops: they move the bytes of contiguous tensors of any dtype.
//!
//! Every kernel works on byte slices and an element size, so one implementation serves f32
//! activations and bf16/fp8 weights alike. Copies are done in the longest contiguous runs the
//! layout allows (dims that stay adjacent are merged first), and large copies are split over
//! rayon tasks of whole output rows or slabs.

use rayon::prelude::*;

/// Bytes per parallel task: below this, handing a copy to another thread costs more than it
/// saves.
const PAR_BYTES: usize = 1 << 17;
/// Contiguous runs at least this long are copied as rows; shorter ones go through cache tiles.
const MIN_RUN: usize = 64;
/// Side of the square tiles of a transposing copy, in elements.
const TILE: usize = 16;

/// Splits `dst` into chunks of whole rows of `row` bytes (at least [`PAR_BYTES`] per chunk) and
/// calls `f(first_row, chunk)` on each, in parallel when there is more than one.
fn par_rows(dst: &mut [u8], row: usize, f: impl Fn(usize, &mut [u8]) + Sync) {
    if row == 0 || dst.is_empty() {
        return;
    }
    let rows = PAR_BYTES.div_ceil(row);
    if dst.len() <= rows * row {
        f(0, dst);
    } else {
        dst.par_chunks_mut(rows * row)
            .enumerate()
            .for_each(|(i, c)| f(i * rows, c));
    }
}

/// Row `r` of `dst` (rows of `row` bytes) becomes `src[r * src_stride + offset..][..row]`: the
/// copy behind `narrow` (one slice of each outer row) and `chunk`.
///
/// # Panics
/// If a row reads past the end of `src` (a bug in the caller).
pub fn gather_rows(src: &[u8], src_stride: usize, offset: usize, dst: &mut [u8], row: usize) {
    par_rows(dst, row, |r0, chunk| {
        for (r, d) in chunk.chunks_exact_mut(row).enumerate() {
            d.copy_from_slice(&src[(r0 + r) * src_stride + offset..][..row]);
        }
    });
}

/// Concatenation along a dim: row `r` of `dst` is row `r` of every `srcs[i]` (rows of
/// `widths[i]` bytes) side by side.
///
/// # Panics
/// If `srcs` are shorter than `dst` needs (a bug in the caller).
pub fn cat_rows(srcs: &[&[u8]], widths: &[usize], dst: &mut [u8]) {
    let row: usize = widths.iter().sum();
    par_rows(dst, row, |r0, chunk| {
        for (r, d) in chunk.chunks_exact_mut(row).enumerate() {
            let mut at = 0;
            for (s, &w) in srcs.iter().zip(widths) {
                d[at..at + w].copy_from_slice(&s[(r0 + r) * w..][..w]);
                at += w;
            }
        }
    });
}

/// `dst` = the contiguous tensor `src` (dims `dims`, `elem` bytes per element) with its dims
/// reordered: output dim `i` is input dim `perm[i]`.
///
/// # Panics
/// If `perm` is not a permutation of `0..dims.len()` or the lengths do not match (a bug in the
/// caller).
pub fn permute(src: &[u8], elem: usize, dims: &[usize], perm: &[usize], dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        dims.iter().product::<usize>() * elem,
        "permute: input length"
    );
    assert_eq!(src.len(), dst.len(), "permute: output length");
    if dst.is_empty() {
        return;
    }
    let mut strides = vec![elem; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1];
    }
    // (size, input stride in bytes) per output dim, size-1 dims dropped, the bytes of one
    // element as a last dim; then dims that the input also steps through as one are merged.
    let mut view: Vec<(usize, usize)> = Vec::with_capacity(perm.len() + 1);
    let trailing_bytes = std::iter::once((elem, 1));
    for (n, s) in perm
        .iter()
        .map(|&p| (dims[p], strides[p]))
        .filter(|&(n, _)| n != 1)
        .chain(trailing_bytes)
    {
        match view.last_mut() {
            Some(last) if last.1 == s * n => *last = (last.0 * n, s),
            _ => view.push((n, s)),
        }
    }
    // The innermost dim is now the longest contiguous run of input bytes (stride 1).
    let (run, _) = view.pop().expect("the element dim is always there");
    if view.is_empty() {
        dst.copy_from_slice(src);
        return;
    }
    match view.iter().position(|&(_, s)| s == run) {
        Some(p) if run < MIN_RUN => tiled(src, &view, run, p, dst),
        _ => runs(src, &view, run, dst),
    }
}

/// The permuted copy as rows: each output row of `run` bytes is one contiguous input run.
fn runs(src: &[u8], view: &[(usize, usize)], run: usize, dst: &mut [u8]) {
    par_rows(dst, run, |r0, chunk| {
        let (mut idx, mut off) = (vec![0; view.len()], 0);
        let mut r = r0;
        for (d, &(n, s)) in view.iter().enumerate().rev() {
            idx[d] = r % n;
            off += idx[d] * s;
            r /= n;
        }
        for d in chunk.chunks_exact_mut(run) {
            d.copy_from_slice(&src[off..off + run]);
            for (i, &(n, s)) in view.iter().enumerate().rev() {
                idx[i] += 1;
                off += s;
                if idx[i] < n {
                    break;
                }
                idx[i] = 0;
                off -= n * s;
            }
        }
    });
}

/// The permuted copy through square tiles, for layouts whose contiguous runs are short. Units of
/// `unit` bytes are moved; output dim `p` is the one the input stores contiguously (stride
/// `unit`), the last output dim is read with a large stride. A tile of `TILE × TILE` units
/// reads whole cache lines of the input and writes whole lines of the output. Parallel over
/// slabs of output dim 0.
fn tiled(src: &[u8], view: &[(usize, usize)], unit: usize, p: usize, dst: &mut [u8]) {
    let slab = dst.len() / view[0].0;
    let mut per_task = PAR_BYTES.div_ceil(slab);
    if p == 0 {
        per_task = per_task.max(TILE);
    }
    let task = |i: usize, dst: &mut [u8]| {
        let mut sub = view.to_vec();
        sub[0].0 = dst.len() / slab;
        let src = &src[i * per_task * view[0].1..];
        match unit {
            1 => tile_copy::<1>(src, &sub, unit, p, dst),
            2 => tile_copy::<2>(src, &sub, unit, p, dst),
            4 => tile_copy::<4>(src, &sub, unit, p, dst),
            8 => tile_copy::<8>(src, &sub, unit, p, dst),
            16 => tile_copy::<16>(src, &sub, unit, p, dst),
            _ => tile_copy::<0>(src, &sub, unit, p, dst),
        }
    };
    if view[0].0 <= per_task {
        task(0, dst);
    } else {
        dst.par_chunks_mut(per_task * slab)
            .enumerate()
            .for_each(|(i, d)| task(i, d));
    }
}

/// See [`tiled`]; `N` is `unit` as a constant so that each move is one load and store (0 for
/// other sizes).
fn tile_copy<const N: usize>(
    src: &[u8],
    view: &[(usize, usize)],
    unit: usize,
    p: usize,
    dst: &mut [u8],
) {
    let len = if N > 0 { N } else { unit };
    let k = view.len();
    let mut out_strides = vec![len; k];
    for i in (0..k - 1).rev() {
        out_strides[i] = out_strides[i + 1] * view[i + 1].0;
    }
    let (np, nl, sl) = (view[p].0, view[k - 1].0, view[k - 1].1);
    let op = out_strides[p];
    // Odometer over every dim but `p` and the last.
    let others: Vec<usize> = (0..k - 1).filter(|&d| d != p).collect();
    let mut idx = vec![0; k];
    let (mut si, mut di) = (0, 0);
    loop {
        for p0 in (0..np).step_by(TILE) {
            for l0 in (0..nl).step_by(TILE) {
                for pi in p0..(p0 + TILE).min(np) {
                    let (s, d) = (si + pi * len, di + pi * op);
                    for l in l0..(l0 + TILE).min(nl) {
                        dst[d + l * len..][..len].copy_from_slice(&src[s + l * sl..][..len]);
                    }
                }
            }
        }
        let mut carried = true;
        for &d in others.iter().rev() {
            idx[d] += 1;
            si += view[d].1;
            di += out_strides[d];
            if idx[d] < view[d].0 {
                carried = false;
                break;
            }
            idx[d] = 0;
            si -= view[d].0 * view[d].1;
            di -= view[d].0 * out_strides[d];
        }
        if carried {
            return;
        }
    }
}

/// `dst` = `src` (dims `dims`, `elem` bytes per element) with `pads[i].0` elements before and
/// `pads[i].1` after along each dim `i`. `dst` must hold zeros: only the interior is written.
///
/// # Panics
/// If the lengths do not match (a bug in the caller).
pub fn pad(src: &[u8], elem: usize, dims: &[usize], pads: &[(usize, usize)], dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        dims.iter().product::<usize>() * elem,
        "pad: input length"
    );
    let out_dims: Vec<usize> = dims
        .iter()
        .zip(pads)
        .map(|(&n, &(b, a))| n + b + a)
        .collect();
    assert_eq!(
        dst.len(),
        out_dims.iter().product::<usize>() * elem,
        "pad: output length"
    );
    if src.is_empty() {
        return;
    }
    let Some(last) = pads.iter().rposition(|&(b, a)| b + a > 0) else {
        dst.copy_from_slice(src);
        return;
    };
    let first = pads.iter().position(|&(b, a)| b + a > 0).unwrap_or(last);
    // Below `last`, every padded row is one contiguous block of the input.
    let block = dims[last + 1..].iter().product::<usize>() * elem;
    let mut in_strides = vec![block; last + 1];
    let mut out_strides = vec![block; last + 1];
    for i in (0..last).rev() {
        in_strides[i] = in_strides[i + 1] * dims[i + 1];
        out_strides[i] = out_strides[i + 1] * out_dims[i + 1];
    }
    // Dims before `first` are unpadded: their slabs are independent tasks.
    let (in_slab, out_slab) = (
        in_strides[first] * dims[first],
        out_strides[first] * out_dims[first],
    );
    let level = PadLevel {
        dims,
        pads,
        in_strides: &in_strides,
        out_strides: &out_strides,
        last,
    };
    par_rows(dst, out_slab, |s0, chunk| {
        for (s, d) in chunk.chunks_exact_mut(out_slab).enumerate() {
            level.copy(&src[(s0 + s) * in_slab..][..in_slab], d, first, 0, 0);
        }
    });
}

/// The geometry of a padded copy, walked recursively by dim.
struct PadLevel<'a> {
    dims: &'a [usize],
    pads: &'a [(usize, usize)],
    in_strides: &'a [usize],
    out_strides: &'a [usize],
    last: usize,
}

impl PadLevel<'_> {
    fn copy(&self, src: &[u8], dst: &mut [u8], d: usize, si: usize, di: usize) {
        let di = di + self.pads[d].0 * self.out_strides[d];
        if d == self.last {
            let len = self.dims[d] * self.in_strides[d];
            dst[di..di + len].copy_from_slice(&src[si..si + len]);
            return;
        }
        for i in 0..self.dims[d] {
            self.copy(
                src,
                dst,
                d + 1,
                si + i * self.in_strides[d],
                di + i * self.out_strides[d],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes 0, 1, 2, ... (wrapping) so that every misplaced byte shows.
    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn unravel(mut l: usize, dims: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; dims.len()];
        for i in (0..dims.len()).rev() {
            idx[i] = l % dims[i];
            l /= dims[i];
        }
        idx
    }

    fn ravel(idx: &[usize], dims: &[usize]) -> usize {
        idx.iter().zip(dims).fold(0, |acc, (&i, &n)| acc * n + i)
    }

    fn permute_ref(src: &[u8], elem: usize, dims: &[usize], perm: &[usize]) -> Vec<u8> {
        let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let n: usize = dims.iter().product();
        let mut out = vec![0; n * elem];
        for l in 0..n {
            let oi = unravel(l, &out_dims);
            let mut ii = vec![0; dims.len()];
            for (o, &p) in perm.iter().enumerate() {
                ii[p] = oi[o];
            }
            let s = ravel(&ii, dims);
            out[l * elem..][..elem].copy_from_slice(&src[s * elem..][..elem]);
        }
        out
    }

    #[test]
    fn permute_matches_reference() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[], &[]),
            (&[5], &[0]),
            (&[3, 4], &[1, 0]),
            (&[2, 3, 4], &[0, 2, 1]),
            (&[2, 3, 4], &[2, 0, 1]),
            (&[2, 3, 4, 5], &[0, 2, 1, 3]),
            (&[2, 1, 4, 5], &[3, 1, 0, 2]),
            (&[1, 1, 1], &[2, 1, 0]),
            (&[2, 0, 3], &[2, 1, 0]),
            (&[37, 53], &[1, 0]),
            (&[4, 3, 2, 3, 2, 5, 2], &[1, 3, 5, 2, 4, 6, 0]),
            (&[3, 5, 2, 7, 2], &[0, 2, 4, 1, 3]),
            // Large: parallel slabs, tiles with edges, and long runs.
            (&[300, 200], &[1, 0]),
            (&[17, 300, 40], &[1, 0, 2]),
            (&[2, 130, 9, 70], &[0, 2, 1, 3]),
            (&[16, 3000], &[1, 0]),
            (&[3000, 16], &[1, 0]),
        ];
        for &(dims, perm) in cases {
            for elem in [1, 2, 4, 8] {
                let src = bytes(dims.iter().product::<usize>() * elem);
                let mut dst = vec![0; src.len()];
                permute(&src, elem, dims, perm, &mut dst);
                assert!(
                    dst == permute_ref(&src, elem, dims, perm),
                    "{dims:?} {perm:?} elem {elem}"
                );
            }
        }
    }

    #[test]
    fn gather_and_cat_rows() {
        let src = bytes(6 * 10);
        let mut dst = vec![0; 6 * 4];
        gather_rows(&src, 10, 3, &mut dst, 4);
        for r in 0..6 {
            assert_eq!(&dst[r * 4..][..4], &src[r * 10 + 3..][..4]);
        }
        let (a, b) = (bytes(3 * 2), bytes(3 * 5));
        let mut dst = vec![0; 3 * 7];
        cat_rows(&[&a, &b], &[2, 5], &mut dst);
        for r in 0..3 {
            assert_eq!(&dst[r * 7..][..2], &a[r * 2..][..2]);
            assert_eq!(&dst[r * 7 + 2..][..5], &b[r * 5..][..5]);
        }
        // Many rows: the parallel path.
        let src = bytes(100_000 * 3);
        let mut dst = vec![0; 100_000 * 2];
        gather_rows(&src, 3, 1, &mut dst, 2);
        assert!(dst.chunks(2).zip(src.chunks(3)).all(|(d, s)| d == &s[1..]));
    }

    fn pad_ref(src: &[u8], elem: usize, dims: &[usize], pads: &[(usize, usize)]) -> Vec<u8> {
        let out_dims: Vec<usize> = dims
            .iter()
            .zip(pads)
            .map(|(&n, &(b, a))| n + b + a)
            .collect();
        let n: usize = out_dims.iter().product();
        let mut out = vec![0; n * elem];
        for l in 0..n {
            let oi = unravel(l, &out_dims);
            let inside = oi
                .iter()
                .zip(dims)
                .zip(pads)
                .all(|((&o, &n), &(b, _))| o >= b && o < b + n);
            if inside {
                let ii: Vec<usize> = oi.iter().zip(pads).map(|(&o, &(b, _))| o - b).collect();
                out[l * elem..][..elem].copy_from_slice(&src[ravel(&ii, dims) * elem..][..elem]);
            }
        }
        out
    }

    #[test]
    fn pad_matches_reference() {
        type Case<'a> = (&'a [usize], &'a [(usize, usize)]);
        let cases: &[Case] = &[
            (&[], &[]),
            (&[3], &[(1, 2)]),
            (&[3], &[(0, 0)]),
            (&[2, 3], &[(0, 0), (2, 0)]),
            (&[2, 3, 4], &[(1, 0), (0, 0), (0, 3)]),
            (&[2, 3, 4], &[(0, 0), (1, 1), (0, 0)]),
            (&[2, 0, 4], &[(1, 0), (0, 1), (0, 0)]),
            (&[1, 4, 3, 5, 6], &[(0, 0), (0, 0), (2, 0), (1, 1), (1, 1)]),
            (&[64, 30, 40], &[(0, 0), (2, 0), (0, 0)]),
        ];
        for &(dims, pads) in cases {
            for elem in [1, 2, 4] {
                let src = bytes(dims.iter().product::<usize>() * elem);
                let want = pad_ref(&src, elem, dims, pads);
                let mut dst = vec![0; want.len()];
                pad(&src, elem, dims, pads, &mut dst);
                assert!(dst == want, "{dims:?} {pads:?} elem {elem}");
            }
        }
    }
}
