//! f32 matrix multiplication through the `gemm` crate (AVX-512 kernels with `x86-v4`).

/// A read-only f32 matrix view: `data[r * row_stride + c * col_stride]` is element `(r, c)`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows, in elements.
    pub row_stride: usize,
    /// Distance between columns, in elements.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn fits(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        last < self.data.len()
    }
}

/// A mutable strided f32 matrix behind a raw pointer: element `(r, c)` is at
/// `ptr + r * row_stride + c`. Kernels use it to let several threads write disjoint blocks of one
/// output (column panels of a linear layer, heads of an attention output).
#[derive(Clone, Copy, Debug)]
pub struct RawMatMut {
    /// Element `(0, 0)`.
    pub ptr: *mut f32,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows, in elements.
    pub row_stride: usize,
}

impl RawMatMut {
    /// The `rows × cols` block whose first element is `(r0, c0)`.
    ///
    /// # Panics
    /// If the block does not lie inside `self`.
    pub fn block(self, r0: usize, c0: usize, rows: usize, cols: usize) -> RawMatMut {
        assert!(
            r0 + rows <= self.rows && c0 + cols <= self.cols,
            "RawMatMut::block out of range"
        );
        // The offset stays inside the matrix `self` describes, so the pointer stays in bounds.
        RawMatMut {
            ptr: self.ptr.wrapping_add(r0 * self.row_stride + c0),
            rows,
            cols,
            row_stride: self.row_stride,
        }
    }
}

// SAFETY: a `RawMatMut` is only a description of memory; `sgemm_raw`'s contract makes callers
// guarantee exclusive access to the described elements.
unsafe impl Send for RawMatMut {}
unsafe impl Sync for RawMatMut {}

/// `c = a · b` (or `c += a · b` when `accumulate`), with `c` row-major `a.rows × b.cols`.
/// `threads` > 1 lets the gemm crate split the work over the rayon pool.
///
/// # Panics
/// If the views do not fit their slices or the inner dimensions differ (a bug in the caller).
pub fn sgemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], accumulate: bool, threads: usize) {
    assert_eq!(c.len(), a.rows * b.cols, "sgemm: output size");
    let c = RawMatMut {
        ptr: c.as_mut_ptr(),
        rows: a.rows,
        cols: b.cols,
        row_stride: b.cols,
    };
    // SAFETY: `c` describes exactly the exclusively borrowed slice.
    unsafe { sgemm_raw(a, b, c, accumulate, threads) }
}

/// [`sgemm`] into a strided output: `c = a · b` (or `c += a · b` when `accumulate`).
///
/// # Safety
/// Every element `(r, c)` of `c` (`r < c.rows`, `col < c.cols`) must be valid for reads and
/// writes, and no other thread may access those elements during the call.
///
/// # Panics
/// If the views do not fit their slices or the dimensions disagree (a bug in the caller).
pub unsafe fn sgemm_raw(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: RawMatMut,
    accumulate: bool,
    threads: usize,
) {
    assert_eq!(a.cols, b.rows, "sgemm: inner dimensions differ");
    assert!(a.fits() && b.fits(), "sgemm: view outside its slice");
    assert!(c.rows == a.rows && c.cols == b.cols, "sgemm: output shape");
    if a.rows == 0 || b.cols == 0 {
        return;
    }
    if a.cols == 0 {
        if !accumulate {
            for r in 0..c.rows {
                // SAFETY: row `r` of `c` is valid and exclusively ours (the caller's contract).
                unsafe { std::slice::from_raw_parts_mut(c.ptr.add(r * c.row_stride), c.cols) }
                    .fill(0.0);
            }
        }
        return;
    }
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts keep every read of `a` and `b` inside their slices; the caller vouches
    // for `c`. gemm computes dst = alpha·dst + beta·(lhs·rhs).
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            c.ptr,
            1,
            c.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Batched `c[i] = a[i] · b[i]` for `batch` row-major `m × k` and `k × n` matrices into row-major
/// `m × n` outputs; with `b_shared` one `b` serves every batch entry. With `bf16` the inputs are
/// rounded to bf16 and multiplied with f32 sums ([`super::gemm_bf16::bgemm`]).
///
/// # Panics
/// If a slice length disagrees with the sizes (a bug in the caller).
#[allow(clippy::too_many_arguments)]
pub fn matmul_batched(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    b_shared: bool,
    bf16: bool,
) {
    use rayon::prelude::*;
    let b_count = if b_shared { 1 } else { batch };
    assert!(
        a.len() == batch * m * k && b.len() == b_count * k * n && c.len() == batch * m * n,
        "matmul_batched: sizes"
    );
    if batch == 0 || m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let one = |i: usize, c: &mut [f32], threads: usize| {
        let bi = if b_shared { 0 } else { i };
        let a = MatRef::row_major(&a[i * m * k..(i + 1) * m * k], m, k);
        let b = MatRef::row_major(&b[bi * k * n..(bi + 1) * k * n], k, n);
        if bf16 {
            super::gemm_bf16::bgemm(a, b, c, false, threads);
        } else {
            sgemm(a, b, c, false, threads);
        }
    };
    if batch >= threads {
        // Enough independent products: one per thread, each single-threaded.
        c.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, c)| one(i, c, 1));
    } else {
        c.chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, c)| one(i, c, threads));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_and_output_block() {
        // a is 3x2 stored transposed (2x3), b is 2x4 row-major; c goes into columns 1..5 of a
        // 3x6 buffer whose other entries must stay untouched.
        let (m, k, n) = (3, 2, 4);
        let at: Vec<f32> = (0..k * m).map(|i| i as f32 - 2.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i * i) as f32 * 0.25).collect();
        let mut buf = vec![7.0f32; m * 6];
        let whole = RawMatMut {
            ptr: buf.as_mut_ptr(),
            rows: m,
            cols: 6,
            row_stride: 6,
        };
        let a = MatRef::row_major(&at, k, m).t();
        // SAFETY: the block lies inside `buf`, borrowed exclusively here.
        unsafe {
            sgemm_raw(
                a,
                MatRef::row_major(&b, k, n),
                whole.block(0, 1, m, n),
                true,
                2,
            )
        };
        for i in 0..m {
            for j in 0..6 {
                let want = if (1..5).contains(&j) {
                    7.0 + (0..k)
                        .map(|l| at[l * m + i] * b[l * n + j - 1])
                        .sum::<f32>()
                } else {
                    7.0
                };
                assert_eq!(buf[i * 6 + j], want, "({i}, {j})");
            }
        }
    }

    #[test]
    fn empty_inner_dimension_zeroes_or_keeps() {
        let mut c = vec![3.0; 4];
        sgemm(
            MatRef::row_major(&[], 2, 0),
            MatRef::row_major(&[], 0, 2),
            &mut c,
            true,
            1,
        );
        assert_eq!(c, [3.0; 4]);
        sgemm(
            MatRef::row_major(&[], 2, 0),
            MatRef::row_major(&[], 0, 2),
            &mut c,
            false,
            1,
        );
        assert_eq!(c, [0.0; 4]);
    }
}
