//! Index plans shared by the launchers that walk a region of a tensor with per-operand strides
//! (broadcast binary ops, strided copies): size-1 dims dropped and adjacent dims merged, so that
//! the kernels' per-element index arithmetic runs over as few dims as possible.

use crate::error::{Error, Result};

/// The most dims a plan passes to a kernel (`MAX_RANK` of `kernels/typed.cuh`).
pub(crate) const MAX_RANK: usize = 8;

/// A region of `dims` in which operand `k` steps by `strides[d][k]` elements along dim `d`, and
/// only indices `bounds[d].0..bounds[d].1` along dim `d` are read (the others are padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Region<const K: usize> {
    pub dims: Vec<usize>,
    pub strides: Vec<[i64; K]>,
    pub bounds: Vec<(usize, usize)>,
}

/// The element strides of a contiguous row-major tensor of `dims`.
pub(crate) fn contiguous_strides(dims: &[usize]) -> Vec<i64> {
    let mut strides = vec![1i64; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * dims[d + 1] as i64;
    }
    strides
}

impl<const K: usize> Region<K> {
    /// A region read in full along every dim.
    pub fn new(dims: Vec<usize>, strides: Vec<[i64; K]>) -> Region<K> {
        let bounds = dims.iter().map(|&n| (0, n)).collect();
        Region {
            dims,
            strides,
            bounds,
        }
    }

    fn full(&self, d: usize) -> bool {
        self.bounds[d] == (0, self.dims[d])
    }

    /// The same walk over fewer dims: size-1 dims read in full are dropped, and a dim is merged
    /// into the next inner one where every operand steps over the inner one exactly (and
    /// neither is padded). At least one dim is kept.
    pub fn simplify(&mut self) {
        let mut out = Region::<K> {
            dims: vec![],
            strides: vec![],
            bounds: vec![],
        };
        for d in 0..self.dims.len() {
            if self.dims[d] == 1 && self.full(d) {
                continue;
            }
            let last = out.dims.len().wrapping_sub(1);
            let merge = !out.dims.is_empty()
                && out.full(last)
                && self.full(d)
                && (0..K).all(|k| out.strides[last][k] == self.strides[d][k] * self.dims[d] as i64);
            if merge {
                out.dims[last] *= self.dims[d];
                out.bounds[last] = (0, out.dims[last]);
                out.strides[last] = self.strides[d];
            } else {
                out.dims.push(self.dims[d]);
                out.strides.push(self.strides[d]);
                out.bounds.push(self.bounds[d]);
            }
        }
        if out.dims.is_empty() {
            out.dims.push(1);
            out.strides.push([0; K]);
            out.bounds.push((0, 1));
        }
        *self = out;
    }

    /// The number of elements of the region as the `u32` the kernels index with; `op` names
    /// the caller in the error for a larger region.
    pub fn count(&self, op: &str) -> Result<u32> {
        let n = self
            .dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        u32::try_from(n).map_err(|_| {
            Error::InvalidArgument(format!(
                "{op}: {n} elements in one launch (the CUDA kernels index below 2^32)"
            ))
        })
    }

    /// Checks that the plan fits the kernels' fixed arrays.
    pub fn check_rank(&self, op: &str) -> Result<()> {
        if self.dims.len() <= MAX_RANK {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "{op}: {} dims after merging (the CUDA kernels take {MAX_RANK})",
                self.dims.len()
            )))
        }
    }

    /// The dims as the kernels' fixed `u32` array (unused entries 1).
    pub fn dims_array(&self) -> [u32; MAX_RANK] {
        let mut a = [1u32; MAX_RANK];
        for (a, &d) in a.iter_mut().zip(&self.dims) {
            *a = d as u32;
        }
        a
    }

    /// Operand `k`'s strides as the kernels' fixed array (unused entries 0).
    pub fn strides_array(&self, k: usize) -> [i64; MAX_RANK] {
        let mut a = [0i64; MAX_RANK];
        for (a, s) in a.iter_mut().zip(&self.strides) {
            *a = s[k];
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_dims_merge_into_one_run() {
        let dims = vec![2, 3, 4];
        let s = contiguous_strides(&dims);
        assert_eq!(s, [12, 4, 1]);
        let mut r = Region::new(dims, s.iter().map(|&v| [v, v]).collect());
        r.simplify();
        assert_eq!(r.dims, [24]);
        assert_eq!(r.strides, [[1, 1]]);
    }

    #[test]
    fn broadcast_and_padded_dims_stay_apart() {
        // A [2, 3, 4] plus a [3, 1] bias: dims 0 and 1 do not merge for the bias (stride 0 then
        // 1), dim 2 is a broadcast run for it.
        let mut r = Region::new(vec![2, 3, 4], vec![[12, 0], [4, 1], [1, 0]]);
        r.simplify();
        assert_eq!(r.dims, [2, 3, 4]);
        // Size-1 dims go; a padded dim is kept whole.
        let mut p = Region::<1> {
            dims: vec![1, 5, 6],
            strides: vec![[30], [6], [1]],
            bounds: vec![(0, 1), (1, 4), (0, 6)],
        };
        p.simplify();
        assert_eq!(p.dims, [5, 6]);
        assert_eq!(p.bounds, [(1, 4), (0, 6)]);
        let mut scalar = Region::<2>::new(vec![1, 1], vec![[0, 0], [0, 0]]);
        scalar.simplify();
        assert_eq!((scalar.dims, scalar.strides), (vec![1], vec![[0, 0]]));
        assert!(Region::<1>::new(vec![1 << 20, 1 << 12], vec![[1], [1]])
            .count("t")
            .is_err());
    }
}
