//! Launchers of `kernels/strided_copy.cu`: the data movement of permute, narrow, pad_zeros and
//! cat, for elements of any size, planned here as one strided walk ([`CopyPlan`]).

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, DeviceRepr, PushKernelArg};

use super::layout::{contiguous_strides, Region, MAX_RANK};
use super::{grid_config, launch, Kernels};
use crate::error::{Error, Result};

/// Element sizes the kernel is compiled for, in bytes (`strided_copy_b<size>`).
pub(crate) const ELEMENT_SIZES: [usize; 5] = [1, 2, 4, 8, 16];

/// A copy of a region: every index of `region` reads the source at `src_offset` plus its
/// strides (operand 0) and writes the destination at `dst_offset` plus its strides (operand 1);
/// indices outside the region's bounds write zero (padding). Counts are in elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyPlan {
    region: Region<2>,
    src_offset: i64,
    dst_offset: i64,
}

impl CopyPlan {
    /// The contiguous `out` of a tensor of `dims` permuted by `perm` (output dim `i` is input
    /// dim `perm[i]`).
    pub fn permute(dims: &[usize], perm: &[usize]) -> CopyPlan {
        let src = contiguous_strides(dims);
        let out: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let dst = contiguous_strides(&out);
        let strides = perm.iter().zip(dst).map(|(&p, d)| [src[p], d]).collect();
        CopyPlan::new(Region::new(out, strides), 0, 0)
    }

    /// Elements `start..start + len` along `dim` of a tensor of `dims`, contiguous.
    pub fn narrow(dims: &[usize], dim: usize, start: usize, len: usize) -> CopyPlan {
        let src = contiguous_strides(dims);
        let mut out = dims.to_vec();
        out[dim] = len;
        let strides = src
            .iter()
            .zip(contiguous_strides(&out))
            .map(|(&s, d)| [s, d]);
        CopyPlan::new(
            Region::new(out, strides.collect()),
            start as i64 * src[dim],
            0,
        )
    }

    /// A tensor of `dims` with `pads[d] = (before, after)` zeros along each dim, contiguous.
    pub fn pad(dims: &[usize], pads: &[(usize, usize)]) -> CopyPlan {
        let src = contiguous_strides(dims);
        let out: Vec<usize> = dims
            .iter()
            .zip(pads)
            .map(|(&n, &(b, a))| n + b + a)
            .collect();
        let strides = src
            .iter()
            .zip(contiguous_strides(&out))
            .map(|(&s, d)| [s, d]);
        let mut region = Region::new(out, strides.collect());
        region.bounds = dims
            .iter()
            .zip(pads)
            .map(|(&n, &(b, _))| (b, b + n))
            .collect();
        let offset = -pads
            .iter()
            .zip(&src)
            .map(|(&(b, _), &s)| b as i64 * s)
            .sum::<i64>();
        CopyPlan::new(region, offset, 0)
    }

    /// One input of `dims` of a concatenation into `out` along `dim`, placed at `at` along it.
    pub fn cat_part(dims: &[usize], out: &[usize], dim: usize, at: usize) -> CopyPlan {
        let dst = contiguous_strides(out);
        let strides = contiguous_strides(dims)
            .into_iter()
            .zip(dst.iter().copied());
        CopyPlan::new(
            Region::new(dims.to_vec(), strides.map(|(s, d)| [s, d]).collect()),
            0,
            at as i64 * dst[dim],
        )
    }

    fn new(mut region: Region<2>, src_offset: i64, dst_offset: i64) -> CopyPlan {
        region.simplify();
        CopyPlan {
            region,
            src_offset,
            dst_offset,
        }
    }

    /// The plan over elements `factor` times larger, when the innermost dim is one contiguous,
    /// unpadded run in both buffers that splits into whole wide elements and every other step
    /// and offset falls on one.
    fn widened(&self, factor: usize) -> Option<CopyPlan> {
        let r = &self.region;
        let last = r.dims.len() - 1;
        let f = factor as i64;
        let fits = r.strides[last] == [1, 1]
            && r.bounds[last] == (0, r.dims[last])
            && r.dims[last].is_multiple_of(factor)
            && r.strides[..last].iter().flatten().all(|s| s % f == 0)
            && self.src_offset % f == 0
            && self.dst_offset % f == 0;
        if !fits {
            return None;
        }
        let mut region = r.clone();
        region.dims[last] /= factor;
        region.bounds[last] = (0, region.dims[last]);
        for s in region.strides[..last].iter_mut().flatten() {
            *s /= f;
        }
        Some(CopyPlan {
            region,
            src_offset: self.src_offset / f,
            dst_offset: self.dst_offset / f,
        })
    }

    /// The lowest and highest element offset the plan touches in operand `k` (`None` when it
    /// reads nothing there: an empty region, or a source wholly padded).
    fn reach(&self, k: usize) -> Option<(i64, i64)> {
        let r = &self.region;
        let mut lo = if k == 0 {
            self.src_offset
        } else {
            self.dst_offset
        };
        let mut hi = lo;
        for (d, s) in r.strides.iter().enumerate() {
            let (first, end) = if k == 0 { r.bounds[d] } else { (0, r.dims[d]) };
            if first >= end {
                return None;
            }
            let (a, b) = (first as i64 * s[k], (end - 1) as i64 * s[k]);
            lo += a.min(b);
            hi += a.max(b);
        }
        Some((lo, hi))
    }
}

/// `CopyPlan` of `kernels/strided_copy.cu`.
#[repr(C)]
#[derive(Clone, Copy)]
struct KernelPlan {
    rank: i32,
    dims: [u32; MAX_RANK],
    lo: [u32; MAX_RANK],
    hi: [u32; MAX_RANK],
    src_strides: [i64; MAX_RANK],
    dst_strides: [i64; MAX_RANK],
    src_offset: i64,
    dst_offset: i64,
}

// SAFETY: `#[repr(C)]` plain data laid out as the kernel's struct.
unsafe impl DeviceRepr for KernelPlan {}

/// Whether a buffer starts on a 16-byte boundary.
fn aligned16<T>(b: &impl DevicePtr<T>, stream: &CudaStream) -> bool {
    let (ptr, _sync) = b.device_ptr(stream);
    ptr % 16 == 0
}

impl Kernels {
    /// Runs `plan` from `src` to `dst` (bytes of elements of `elem` bytes: 1, 2, 4 or 8). Every
    /// offset the plan reaches is checked against the buffers first.
    pub(crate) fn strided_copy(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaView<'_, u8>,
        dst: &mut CudaViewMut<'_, u8>,
        elem: usize,
        plan: &CopyPlan,
    ) -> Result<()> {
        const OP: &str = "strided_copy";
        if !ELEMENT_SIZES[..4].contains(&elem) {
            return Err(Error::InvalidArgument(format!(
                "{OP}: elements of {elem} bytes"
            )));
        }
        plan.region.check_rank(OP)?;
        let n = plan.region.count(OP)?;
        if n == 0 {
            return Ok(());
        }
        let (mut plan, mut elem) = (plan.clone(), elem);
        if aligned16(src, stream) && aligned16(dst, stream) {
            if let Some((wide, size)) = [16, 8, 4]
                .into_iter()
                .filter(|&s| s > elem)
                .find_map(|s| plan.widened(s / elem).map(|p| (p, s)))
            {
                (plan, elem) = (wide, size);
            }
        }
        for (k, name, bytes) in [(0, "src", src.len()), (1, "dst", dst.len())] {
            if let Some((lo, hi)) = plan.reach(k) {
                if lo < 0 || hi >= (bytes / elem) as i64 {
                    return Err(Error::InvalidArgument(format!(
                        "{OP}: the plan reaches elements {lo}..={hi} of `{name}`, which holds {}",
                        bytes / elem
                    )));
                }
            }
        }
        let r = &plan.region;
        let bound = |f: fn(&(usize, usize)) -> usize| {
            let mut a = [0u32; MAX_RANK];
            for (a, b) in a.iter_mut().zip(&r.bounds) {
                *a = f(b) as u32;
            }
            a
        };
        let kplan = KernelPlan {
            rank: r.dims.len() as i32,
            dims: r.dims_array(),
            lo: bound(|b| b.0),
            hi: bound(|b| b.1),
            src_strides: r.strides_array(0),
            dst_strides: r.strides_array(1),
            src_offset: plan.src_offset,
            dst_offset: plan.dst_offset,
        };
        let n = plan.region.count(OP)?;
        let index = ELEMENT_SIZES
            .iter()
            .position(|&s| s == elem)
            .expect("a size listed");
        let mut args = stream.launch_builder(&self.strided_copy[index]);
        args.arg(src).arg(dst).arg(&kplan).arg(&n);
        // SAFETY: the arguments match `strided_copy_b<elem>`; every offset the plan reaches was
        // checked against both buffers, and widened elements start on their alignment.
        unsafe { launch(OP, &mut args, grid_config(n as usize)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan run on the host, element by element, as the kernel does.
    fn run(plan: &CopyPlan, src: &[i32], dst: &mut [i32]) {
        let r = &plan.region;
        let n: usize = r.dims.iter().product();
        for e in 0..n {
            let (mut rem, mut s, mut d, mut inside) = (e, plan.src_offset, plan.dst_offset, true);
            for k in (0..r.dims.len()).rev() {
                let i = rem % r.dims[k];
                rem /= r.dims[k];
                inside &= i >= r.bounds[k].0 && i < r.bounds[k].1;
                s += i as i64 * r.strides[k][0];
                d += i as i64 * r.strides[k][1];
            }
            dst[d as usize] = if inside { src[s as usize] } else { 0 };
        }
    }

    fn seq(n: usize) -> Vec<i32> {
        (1..=n as i32).collect()
    }

    #[test]
    fn plans_move_what_the_cpu_shape_ops_move() {
        use crate::tensor::Tensor;
        let dims = [2usize, 3, 4];
        let x = Tensor::from_slice(&seq(24), dims).unwrap();
        let check = |plan: CopyPlan, want: Tensor| {
            let want: Vec<i32> = bytemuck::cast_slice(want.raw_bytes().unwrap()).to_vec();
            let mut got = vec![i32::MIN; want.len()];
            run(&plan, &seq(24), &mut got);
            assert_eq!(got, want, "{plan:?}");
        };
        check(
            CopyPlan::permute(&dims, &[2, 0, 1]),
            x.permute(&[2, 0, 1]).unwrap(),
        );
        check(CopyPlan::narrow(&dims, 1, 1, 2), x.narrow(1, 1, 2).unwrap());
        let pads = [(0, 1), (2, 0), (1, 3)];
        check(CopyPlan::pad(&dims, &pads), x.pad_zeros(&pads).unwrap());
        // Both halves of a cat along the last dim.
        let out = [2, 3, 8];
        let mut got = vec![i32::MIN; 48];
        run(&CopyPlan::cat_part(&dims, &out, 2, 0), &seq(24), &mut got);
        run(&CopyPlan::cat_part(&dims, &out, 2, 4), &seq(24), &mut got);
        let want = crate::tensor::ops::cat(&[&x, &x], 2).unwrap();
        assert_eq!(
            got,
            bytemuck::cast_slice::<u8, i32>(want.raw_bytes().unwrap())
        );
    }

    #[test]
    fn contiguous_runs_widen_and_reach_is_exact() {
        // A narrow of whole rows is one run: widened to 4 elements of 4 bytes.
        let p = CopyPlan::narrow(&[6, 8], 0, 2, 3);
        let w = p.widened(4).unwrap();
        assert_eq!((w.region.dims.clone(), w.src_offset), (vec![6], 4));
        assert_eq!(p.reach(0), Some((16, 39)));
        assert_eq!(p.reach(1), Some((0, 23)));
        // A permute's innermost dim is strided in the source: no widening.
        assert!(CopyPlan::permute(&[4, 8], &[1, 0]).widened(2).is_none());
        // Padding reads only the source's own range.
        let p = CopyPlan::pad(&[3, 5], &[(1, 2), (0, 3)]);
        assert_eq!(p.reach(0), Some((0, 14)));
        assert_eq!(p.reach(1), Some((0, 47)));
    }
}
