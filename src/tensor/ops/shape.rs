//! Shape ops: permute, transpose, narrow, cat, chunk, pad_zeros.
//!
//! They work on tensors of any dtype by moving bytes (kernels in [`crate::backend::cpu::shape`])
//! and always produce contiguous tensors. Where the result is the input (an identity permutation,
//! a full-range narrow, zero padding) it shares the input's storage, which is safe because
//! tensors are immutable; narrowing a memory-mapped tensor along its outermost dims borrows the
//! same map without copying.

use std::sync::Arc;

use super::on_cuda;
use crate::backend::cpu::shape as kernels;
use crate::backend::cuda::ops as cuda;
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Storage, Tensor};

/// The size of `dim` of `t`, or an `InvalidArgument` error naming `op`.
pub(crate) fn check_dim(op: &str, t: &Tensor, dim: usize) -> Result<usize> {
    t.dims().get(dim).copied().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{op}: dim {dim} out of range for shape {}",
            t.shape()
        ))
    })
}

/// A zeroed output buffer. f32 stays typed so that the result owns `Storage::F32` (which ops
/// read without a copy); other dtypes are plain bytes.
enum OutBuf {
    F32(Vec<f32>),
    Bytes(Vec<u8>),
}

impl OutBuf {
    fn zeros(dtype: DType, shape: &Shape) -> Result<OutBuf> {
        let n = shape.elem_count();
        if dtype == DType::F32 {
            return Ok(OutBuf::F32(vec![0.0; n]));
        }
        let bytes = n
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| Error::ShapeOverflow(shape.dims().to_vec()))?;
        Ok(OutBuf::Bytes(vec![0; bytes]))
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            OutBuf::F32(v) => bytemuck::cast_slice_mut(v),
            OutBuf::Bytes(v) => v,
        }
    }

    fn into_tensor(self, dtype: DType, shape: Shape) -> Result<Tensor> {
        match self {
            OutBuf::F32(v) => Tensor::from_f32(v, shape),
            OutBuf::Bytes(v) => Tensor::from_bytes(v, dtype, shape),
        }
    }
}

impl Tensor {
    /// The tensor with its dims reordered: output dim `i` is input dim `dims[i]`. Errors unless
    /// `dims` is a permutation of `0..rank`.
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        let rank = self.dims().len();
        let mut seen = vec![false; rank];
        let valid = dims.len() == rank
            && dims
                .iter()
                .all(|&d| d < rank && !std::mem::replace(&mut seen[d], true));
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "permute: {dims:?} is not a permutation of the dims of shape {}",
                self.shape()
            )));
        }
        if dims.iter().enumerate().all(|(i, &d)| i == d) {
            return Ok(self.clone());
        }
        let shape = Shape::new(dims.iter().map(|&d| self.dims()[d]).collect::<Vec<_>>())?;
        if on_cuda("permute", &[self])? {
            return cuda::permute(self, dims, &shape);
        }
        let mut out = OutBuf::zeros(self.dtype(), &shape)?;
        kernels::permute(
            self.raw_bytes()?,
            self.dtype().size_in_bytes(),
            self.dims(),
            dims,
            out.bytes_mut(),
        );
        out.into_tensor(self.dtype(), shape)
    }

    /// The tensor with dims `d0` and `d1` swapped.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        check_dim("transpose", self, d0)?;
        check_dim("transpose", self, d1)?;
        let mut perm: Vec<usize> = (0..self.dims().len()).collect();
        perm.swap(d0, d1);
        self.permute(&perm)
    }

    /// Elements `start..start + len` along `dim`. Along the outermost dims of a contiguous tensor
    /// only that range is read; a memory-mapped tensor is then borrowed, not copied.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let n = check_dim("narrow", self, dim)?;
        if start.checked_add(len).is_none_or(|end| end > n) {
            return Err(Error::InvalidArgument(format!(
                "narrow: range {start}..{start}+{len} outside dim {dim} of shape {}",
                self.shape()
            )));
        }
        if len == n {
            return Ok(self.clone());
        }
        let mut dims = self.dims().to_vec();
        dims[dim] = len;
        let shape = Shape::new(dims)?;
        if on_cuda("narrow", &[self])? {
            return cuda::narrow(self, dim, start, &shape);
        }
        let es = self.dtype().size_in_bytes();
        let inner = self.dims()[dim + 1..].iter().product::<usize>() * es;
        let outer: usize = self.dims()[..dim].iter().product();
        if let (1, Storage::Mapped { map, range }) = (outer, self.storage()) {
            let from = range.start + start * inner;
            return Tensor::from_mmap(
                Arc::clone(map),
                from..from + len * inner,
                self.dtype(),
                shape,
            );
        }
        let mut out = OutBuf::zeros(self.dtype(), &shape)?;
        kernels::gather_rows(
            self.raw_bytes()?,
            n * inner,
            start * inner,
            out.bytes_mut(),
            len * inner,
        );
        out.into_tensor(self.dtype(), shape)
    }

    /// Splits `dim` into `n` pieces as torch does: each of `ceil(size / n)` elements but the last,
    /// which may be smaller, so fewer than `n` pieces can come back (`n` empty pieces for an empty
    /// dim). Errors when `n` is 0.
    pub fn chunk(&self, n: usize, dim: usize) -> Result<Vec<Tensor>> {
        let size = check_dim("chunk", self, dim)?;
        if n == 0 {
            return Err(Error::InvalidArgument(
                "chunk: cannot split into 0 pieces".into(),
            ));
        }
        if size == 0 {
            return Ok(vec![self.clone(); n]);
        }
        let step = size.div_ceil(n);
        (0..size)
            .step_by(step)
            .map(|s| self.narrow(dim, s, step.min(size - s)))
            .collect()
    }

    /// The tensor with `pads[i] = (before, after)` zeros added along each dim `i`;
    /// `pads.len()` must equal the rank.
    pub fn pad_zeros(&self, pads: &[(usize, usize)]) -> Result<Tensor> {
        if pads.len() != self.dims().len() {
            return Err(Error::InvalidArgument(format!(
                "pad_zeros: {} (before, after) pairs for shape {}",
                pads.len(),
                self.shape()
            )));
        }
        if pads.iter().all(|&p| p == (0, 0)) {
            return Ok(self.clone());
        }
        let dims = self
            .dims()
            .iter()
            .zip(pads)
            .map(|(&n, &(b, a))| n.checked_add(b)?.checked_add(a))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| Error::ShapeOverflow(self.dims().to_vec()))?;
        let shape = Shape::new(dims)?;
        if on_cuda("pad_zeros", &[self])? {
            return cuda::pad_zeros(self, pads, &shape);
        }
        let mut out = OutBuf::zeros(self.dtype(), &shape)?;
        kernels::pad(
            self.raw_bytes()?,
            self.dtype().size_in_bytes(),
            self.dims(),
            pads,
            out.bytes_mut(),
        );
        out.into_tensor(self.dtype(), shape)
    }
}

/// Concatenates `tensors` along `dim`. They must share dtype, rank and every other dim.
pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
    let Some(&first) = tensors.first() else {
        return Err(Error::InvalidArgument("cat: no tensors".into()));
    };
    check_dim("cat", first, dim)?;
    let mut total = 0usize;
    for t in tensors {
        if t.dtype() != first.dtype() {
            return Err(Error::InvalidArgument(format!(
                "cat: dtypes differ ({} and {})",
                first.dtype(),
                t.dtype()
            )));
        }
        let compatible = t.dims().len() == first.dims().len()
            && t.dims()
                .iter()
                .zip(first.dims())
                .enumerate()
                .all(|(i, (a, b))| i == dim || a == b);
        if !compatible {
            let mut expected = first.dims().to_vec();
            expected[dim] = t.dims().get(dim).copied().unwrap_or(0);
            return Err(Error::ShapeMismatch {
                op: "cat",
                expected: format!(
                    "{expected:?} (all dims but {dim} equal to those of {})",
                    first.shape()
                ),
                got: t.shape().clone(),
            });
        }
        total = total
            .checked_add(t.dims()[dim])
            .ok_or_else(|| Error::ShapeOverflow(first.dims().to_vec()))?;
    }
    if tensors.len() == 1 {
        return Ok(first.clone());
    }
    let mut dims = first.dims().to_vec();
    dims[dim] = total;
    let shape = Shape::new(dims)?;
    if on_cuda("cat", tensors)? {
        return cuda::cat(tensors, dim, &shape);
    }
    let inner = first.dims()[dim + 1..].iter().product::<usize>() * first.dtype().size_in_bytes();
    let srcs = tensors
        .iter()
        .map(|t| t.raw_bytes())
        .collect::<Result<Vec<_>>>()?;
    let widths: Vec<usize> = tensors.iter().map(|t| t.dims()[dim] * inner).collect();
    let mut out = OutBuf::zeros(first.dtype(), &shape)?;
    kernels::cat_rows(&srcs, &widths, out.bytes_mut());
    out.into_tensor(first.dtype(), shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ops::cat;

    fn seq(dims: &[usize]) -> Tensor {
        let n = dims.iter().product::<usize>();
        Tensor::from_f32((0..n).map(|i| i as f32).collect(), dims).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.to_f32_vec().unwrap()
    }

    #[test]
    fn permute_and_transpose() {
        let x = seq(&[2, 3, 4]);
        let p = x.permute(&[2, 0, 1]).unwrap();
        assert_eq!(p.dims(), &[4, 2, 3]);
        let (d, xd) = (p.f32_data().unwrap(), x.f32_data().unwrap());
        for (k, i, j) in
            (0..4).flat_map(|k| (0..2).flat_map(move |i| (0..3).map(move |j| (k, i, j))))
        {
            assert_eq!(d[(k * 2 + i) * 3 + j], xd[(i * 3 + j) * 4 + k]);
        }
        assert_eq!(
            vals(&x.transpose(0, 2).unwrap()),
            vals(&x.permute(&[2, 1, 0]).unwrap())
        );
        assert_eq!(vals(&x.transpose(1, 1).unwrap()), vals(&x));
        // bf16 moves the same way, bit for bit.
        let h = x.to_dtype(DType::BF16).unwrap();
        let hp = h.permute(&[2, 0, 1]).unwrap();
        assert_eq!(hp.dtype(), DType::BF16);
        assert_eq!(vals(&hp), vals(&p));
        assert!(matches!(x.permute(&[0, 1]), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            x.permute(&[0, 1, 1]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            x.permute(&[0, 1, 3]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(x.transpose(0, 3), Err(Error::InvalidArgument(_))));
        assert_eq!(seq(&[]).permute(&[]).unwrap().dims(), &[] as &[usize]);
    }

    #[test]
    fn narrow_and_chunk() {
        let x = seq(&[4, 3, 2]);
        let n = x.narrow(1, 1, 2).unwrap();
        assert_eq!(n.dims(), &[4, 2, 2]);
        assert_eq!(&vals(&n)[..4], &[2.0, 3.0, 4.0, 5.0]);
        assert_eq!(
            vals(&x.narrow(0, 3, 1).unwrap()),
            (18..24).map(|v| v as f32).collect::<Vec<_>>()
        );
        assert_eq!(x.narrow(2, 2, 0).unwrap().dims(), &[4, 3, 0]);
        assert!(matches!(x.narrow(1, 2, 2), Err(Error::InvalidArgument(_))));
        assert!(matches!(x.narrow(3, 0, 1), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            x.narrow(0, usize::MAX, 2),
            Err(Error::InvalidArgument(_))
        ));

        let c = x.chunk(3, 0).unwrap();
        assert_eq!(c.iter().map(|t| t.dims()[0]).collect::<Vec<_>>(), [2, 2]);
        let c = seq(&[5]).chunk(3, 0).unwrap();
        assert_eq!(
            c.iter().map(vals).collect::<Vec<_>>(),
            [vec![0.0, 1.0], vec![2.0, 3.0], vec![4.0]]
        );
        let c = seq(&[2, 12]).chunk(6, 1).unwrap();
        assert_eq!(c.len(), 6);
        assert_eq!(vals(&c[5]), [10.0, 11.0, 22.0, 23.0]);
        assert_eq!(seq(&[0, 2]).chunk(3, 0).unwrap().len(), 3);
        assert!(matches!(x.chunk(0, 0), Err(Error::InvalidArgument(_))));
        assert!(matches!(x.chunk(2, 5), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn narrow_of_a_mapped_tensor_borrows_the_map() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..64u8).collect();
        std::io::Write::write_all(&mut file, &data).unwrap();
        // SAFETY: the temporary file is not modified while mapped.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
        let t = Tensor::from_mmap(map, 8..56, DType::BF16, [4, 6]).unwrap();
        let n = t.narrow(0, 1, 2).unwrap();
        assert!(n.is_mapped());
        assert_eq!(n.raw_bytes().unwrap(), &data[20..44]);
        let m = t.narrow(1, 2, 3).unwrap();
        assert!(!m.is_mapped());
        assert_eq!(&m.raw_bytes().unwrap()[..6], &data[12..18]);
    }

    #[test]
    fn cat_along_any_dim() {
        let (a, b) = (seq(&[2, 1, 3]), seq(&[2, 2, 3]).affine(1.0, 100.0).unwrap());
        let c = cat(&[&a, &b], 1).unwrap();
        assert_eq!(c.dims(), &[2, 3, 3]);
        let v = vals(&c);
        assert_eq!(
            &v[..9],
            &[0.0, 1.0, 2.0, 100.0, 101.0, 102.0, 103.0, 104.0, 105.0]
        );
        assert_eq!(&v[9..12], &[3.0, 4.0, 5.0]);
        let c0 = cat(&[&a, &a, &a], 0).unwrap();
        assert_eq!(c0.dims(), &[6, 1, 3]);
        assert_eq!(vals(&c0), [vals(&a), vals(&a), vals(&a)].concat());
        let e = cat(&[&seq(&[2, 0]), &seq(&[2, 3])], 1).unwrap();
        assert_eq!(vals(&e), vals(&seq(&[2, 3])));
        let h = cat(
            &[
                &a.to_dtype(DType::F16).unwrap(),
                &b.to_dtype(DType::F16).unwrap(),
            ],
            1,
        )
        .unwrap();
        assert_eq!(h.dtype(), DType::F16);
        assert_eq!(vals(&h), v);
        assert!(matches!(cat(&[], 0), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            cat(&[&a, &b], 0),
            Err(Error::ShapeMismatch { op: "cat", .. })
        ));
        assert!(matches!(
            cat(&[&a, &seq(&[2, 3])], 1),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(cat(&[&a, &a], 3), Err(Error::InvalidArgument(_))));
        let h = a.to_dtype(DType::BF16).unwrap();
        assert!(matches!(cat(&[&a, &h], 0), Err(Error::InvalidArgument(_))));
    }

    proptest::proptest! {
        #[test]
        fn cat_of_chunks_is_the_identity(
            dims in proptest::collection::vec(1usize..6, 1..5),
            dim in 0usize..4,
            n in 1usize..7,
        ) {
            let dim = dim % dims.len();
            let x = seq(&dims).to_dtype(DType::BF16).unwrap();
            let parts = x.chunk(n, dim).unwrap();
            proptest::prop_assert!(parts.len() <= n);
            let refs: Vec<&Tensor> = parts.iter().collect();
            let y = cat(&refs, dim).unwrap();
            proptest::prop_assert_eq!(y.dims(), x.dims());
            proptest::prop_assert_eq!(y.raw_bytes().unwrap(), x.raw_bytes().unwrap());
        }
    }

    #[test]
    fn pad_zeros_surrounds_with_zeros() {
        let x = seq(&[2, 2]);
        let p = x.pad_zeros(&[(1, 0), (0, 2)]).unwrap();
        assert_eq!(p.dims(), &[3, 4]);
        assert_eq!(
            vals(&p),
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0]
        );
        let h = x
            .to_dtype(DType::F8E4M3)
            .unwrap()
            .pad_zeros(&[(1, 0), (0, 2)])
            .unwrap();
        assert_eq!(h.dtype(), DType::F8E4M3);
        assert_eq!(vals(&h), vals(&p));
        assert_eq!(
            seq(&[0, 2]).pad_zeros(&[(1, 1), (0, 0)]).unwrap().dims(),
            &[2, 2]
        );
        assert_eq!(
            vals(&seq(&[0, 2]).pad_zeros(&[(1, 1), (0, 0)]).unwrap()),
            [0.0; 4]
        );
        assert!(matches!(
            x.pad_zeros(&[(1, 1)]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            x.pad_zeros(&[(usize::MAX, 1), (0, 0)]),
            Err(Error::ShapeOverflow(_))
        ));
    }
}
