//! [`super::PackedA`], [`super::PackedB`] and [`super::bgemm_packed`] against [`super::bgemm`].

use super::*;
use crate::tensor::random::values;

/// `m` stored row-major (`transposed == false`) or column-major, as a view.
fn view(data: &[f32], rows: usize, cols: usize, transposed: bool) -> MatRef<'_> {
    if transposed {
        MatRef::row_major(data, cols, rows).t()
    } else {
        MatRef::row_major(data, rows, cols)
    }
}

fn sub<'a>(m: MatRef<'a>, rows: &Range<usize>, cols: &Range<usize>) -> MatRef<'a> {
    MatRef {
        data: &m.data[rows.start * m.row_stride + cols.start * m.col_stride..],
        rows: rows.len(),
        cols: cols.len(),
        ..m
    }
}

/// Blocks of packed operands give bgemm's result on the same blocks, bit for bit, for both
/// storage orders (the contiguous-lines packing and the strided one), odd sizes and depths.
#[test]
fn packed_blocks_match_bgemm() {
    if !has_bf16_dot() {
        println!("no AVX512-BF16 on this CPU: bgemm_packed is not tested");
        return;
    }
    let (m, k, n) = (45, 37, 70);
    let (av, bv) = (values(m * k, 1), values(k * n, 2));
    let blocks = [
        (0..m, 0..k, 0..n),
        (14..45, 4..37, 32..70),
        (28..29, 10..20, 64..65),
        (0..14, 2..2, 0..32),
    ];
    for (at, bt) in [(false, false), (true, true), (false, true)] {
        let (a, b) = (view(&av, m, k, at), view(&bv, k, n, bt));
        let (mut pa, mut pb) = (PackedA::default(), PackedB::default());
        pa.pack(a);
        pb.pack(b);
        for (rows, depth, cols) in blocks.clone() {
            for accumulate in [false, true] {
                let init = values(rows.len() * cols.len(), 3);
                let mut want = init.clone();
                let (sa, sb) = (sub(a, &rows, &depth), sub(b, &depth, &cols));
                bgemm(sa, sb, &mut want, accumulate, 1);
                let mut got = init;
                let c = RawMatMut {
                    ptr: got.as_mut_ptr(),
                    rows: rows.len(),
                    cols: cols.len(),
                    row_stride: cols.len(),
                };
                let (ba, bb) = (
                    pa.block(rows.clone(), depth.clone()),
                    pb.block(depth.clone(), cols.clone()),
                );
                // SAFETY: `c` describes exactly `got`.
                unsafe { bgemm_packed(ba, bb, c, accumulate) };
                assert_eq!(
                    got, want,
                    "{rows:?} {depth:?} {cols:?} at={at} bt={bt} acc={accumulate}"
                );
            }
        }
    }
}

/// The contiguous-lines packing writes the scalar rounding's words, special values included.
#[test]
fn contiguous_packing_rounds_like_strided() {
    if !has_bf16_dot() {
        eprintln!("SKIP contiguous_packing_rounds_like_strided: no AVX512-BF16 on this CPU");
        return;
    }
    let mut data = values(40 * 9, 4);
    let special = [
        f32::NAN,
        f32::INFINITY,
        -0.0,
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        1e-40,
        f32::MAX,
        f32::from_bits(0x7f80_0001),
    ];
    data[..special.len()].copy_from_slice(&special);
    for (rows, cols) in [(40, 9), (9, 40)] {
        // Column-major storage: the lines (rows) lie next to each other.
        let mut contiguous = PackedA::default();
        contiguous.pack(view(&data, rows, cols, true));
        // `[panel][pair][MR]` words of element (r, c) = data[r + c * rows], by scalar rounding.
        let at = |r: usize, c: usize| {
            if r < rows && c < cols {
                data[r + c * rows]
            } else {
                0.0
            }
        };
        let mut reference = Vec::new();
        for panel in 0..rows.div_ceil(MR) {
            for p in 0..cols.div_ceil(2) {
                for l in 0..MR {
                    let r = panel * MR + l;
                    reference.push(pair(at(r, 2 * p), at(r, 2 * p + 1)));
                }
            }
        }
        assert_eq!(contiguous.0.words, reference, "{rows}x{cols}");
    }
}

#[test]
fn unaligned_blocks_are_refused() {
    if !has_bf16_dot() {
        eprintln!("SKIP unaligned_blocks_are_refused: no AVX512-BF16 on this CPU");
        return;
    }
    let data = values(64, 5);
    let mut p = PackedB::default();
    p.pack(MatRef::row_major(&data, 8, 8));
    let refused = std::panic::catch_unwind(|| {
        let _ = p.block(1..8, 0..8);
    });
    assert!(
        refused.is_err(),
        "a block starting at an odd row was accepted"
    );
}
