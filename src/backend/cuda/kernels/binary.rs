//! Launchers of `kernels/binary.cu`: numpy-broadcast add, sub, mul and div on bf16 and f32.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

use super::layout::{contiguous_strides, Region, MAX_RANK};
use super::{check_len, grid_config, launch, Activation, Kernels};
use crate::backend::cpu::elementwise::BinaryOp;
use crate::error::{Error, Result};

/// `BroadcastPlan` of `kernels/binary.cu`.
#[repr(C)]
#[derive(Clone, Copy)]
struct BroadcastPlan {
    rank: i32,
    dims: [u32; MAX_RANK],
    a_strides: [i64; MAX_RANK],
    b_strides: [i64; MAX_RANK],
}

// SAFETY: `#[repr(C)]` plain data laid out as the kernel's struct.
unsafe impl DeviceRepr for BroadcastPlan {}

/// The walk over the output `out` of `a op b`: operand strides of 0 along broadcast dims.
fn broadcast_region(a: &[usize], b: &[usize], out: &[usize]) -> Region<2> {
    let aligned = |dims: &[usize]| -> Vec<i64> {
        let strides = contiguous_strides(dims);
        let pad = out.len() - dims.len();
        (0..out.len())
            .map(|d| match d.checked_sub(pad) {
                Some(i) if dims[i] != 1 => strides[i],
                _ => 0,
            })
            .collect()
    };
    let (sa, sb) = (aligned(a), aligned(b));
    let strides = sa.into_iter().zip(sb).map(|(a, b)| [a, b]).collect();
    let mut r = Region::new(out.to_vec(), strides);
    r.simplify();
    r
}

impl Kernels {
    /// `out = a op b` with numpy broadcasting: `a` of `a_dims`, `b` of `b_dims` (bf16 or f32),
    /// `out` of `out_dims` (their broadcast, checked by the caller), computed in f32. `O` is f32
    /// when `A` or `B` is, bf16 otherwise (the kernels' dtype rule; anything else is refused).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn binary<A: Activation, B: Activation, O: Activation>(
        &self,
        stream: &Arc<CudaStream>,
        op: BinaryOp,
        a: &CudaView<'_, A>,
        a_dims: &[usize],
        b: &CudaView<'_, B>,
        b_dims: &[usize],
        out: &mut CudaViewMut<'_, O>,
        out_dims: &[usize],
    ) -> Result<()> {
        const OP: &str = "binary";
        if O::IS_F32 != (A::IS_F32 || B::IS_F32) {
            return Err(Error::InvalidArgument(format!(
                "{OP}: the output is f32 exactly when an operand is"
            )));
        }
        let n_of = |d: &[usize]| d.iter().product::<usize>();
        check_len(OP, "a", a.len(), n_of(a_dims))?;
        check_len(OP, "b", b.len(), n_of(b_dims))?;
        check_len(OP, "out", out.len(), n_of(out_dims))?;
        if n_of(out_dims) == 0 {
            return Ok(());
        }
        let region = broadcast_region(a_dims, b_dims, out_dims);
        region.check_rank(OP)?;
        let n = region.count(OP)?;
        let plan = BroadcastPlan {
            rank: region.dims.len() as i32,
            dims: region.dims_array(),
            a_strides: region.strides_array(0),
            b_strides: region.strides_array(1),
        };
        let code: i32 = match op {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
        };
        let function = &self.binary[usize::from(A::IS_F32) * 2 + usize::from(B::IS_F32)];
        let mut args = stream.launch_builder(function);
        args.arg(&code).arg(a).arg(b).arg(out).arg(&plan).arg(&n);
        // One thread per group of 8 outputs (or per output when runs are short).
        let vector = if region.dims[region.dims.len() - 1].is_multiple_of(8) {
            8
        } else {
            1
        };
        // SAFETY: the arguments match `binary_*` of the operands' dtypes, every offset of the
        // plan lies inside the operand whose length was checked.
        unsafe { launch(OP, &mut args, grid_config(n as usize / vector)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_regions_merge_what_they_can() {
        // A same-shape op is one contiguous run.
        let r = broadcast_region(&[2, 3, 4], &[2, 3, 4], &[2, 3, 4]);
        assert_eq!((r.dims, r.strides), (vec![24], vec![[1, 1]]));
        // A bias over the last dim: rows of a, one repeated vector of b.
        let r = broadcast_region(&[2, 3, 4], &[4], &[2, 3, 4]);
        assert_eq!((r.dims, r.strides), (vec![6, 4], vec![[4, 0], [1, 1]]));
        // A per-row gate [B, 1, D] over [B, S, D], and a scalar on the left.
        let r = broadcast_region(&[2, 5, 8], &[2, 1, 8], &[2, 5, 8]);
        assert_eq!(r.strides, vec![[40, 8], [8, 0], [1, 1]]);
        let r = broadcast_region(&[], &[3, 1], &[3, 1]);
        assert_eq!((r.dims, r.strides), (vec![3], vec![[0, 1]]));
    }
}
