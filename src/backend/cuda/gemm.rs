//! GEMMs through cuBLASLt (cudarc's safe API): bf16 inputs and output, f32 accumulation, the
//! bias and GELU (tanh) applied in cuBLASLt's epilogue. One cuBLASLt handle (with its workspace)
//! per device. The fp8 GEMM, which the safe API cannot express, is in `gemm_fp8.rs`.
//!
//! Row-major products are handed to column-major cuBLASLt transposed: a row-major `[r, c]`
//! matrix is a column-major `c × r` one, so `Y = X·Wᵀ` (row-major) is `Yᵀ = W'ᵀ·X'` there.
//!
//! cudarc panics when `libcublasLt` is missing, so the library is probed first and a missing
//! one is a typed error naming it.

use std::sync::Arc;

use cudarc::cublaslt::{Activation, CudaBlasLT, Matmul, MatmulConfig};
use cudarc::driver::{CudaView, CudaViewMut};
use half::bf16;

use super::CudaDevice;
use crate::backend::gemm_plan::Epilogue;
use crate::error::{Error, Result};

/// The library cuBLASLt is loaded from (cudarc tries the unversioned name first, then the
/// `.so.12`-style names of the CUDA version it is built for; see `kernels/README.md`).
const CUBLASLT_LIBRARY: &str = "libcublasLt.so";

/// The cuBLASLt handle of one device, created on first use.
pub(crate) fn handle(dev: &CudaDevice) -> Result<Arc<CudaBlasLT>> {
    let mut slot = dev.blaslt.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = &*slot {
        return Ok(Arc::clone(h));
    }
    let created = {
        // SAFETY: `is_culib_present` only tries to dlopen the library.
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err(Error::Device(format!(
                "cuBLASLt ({CUBLASLT_LIBRARY}) could not be loaded; the CUDA GEMMs need it"
            )));
        }
        let stream = Arc::clone(dev.stream());
        // `CudaBlasLT::new` unwraps its workspace allocation: contain that panic too.
        match std::panic::catch_unwind(move || CudaBlasLT::new(stream)) {
            Ok(Ok(h)) => Ok(Arc::new(h)),
            Ok(Err(e)) => Err(Error::Device(format!("creating the cuBLASLt handle: {e}"))),
            Err(_) => Err(Error::OutOfMemory(
                "creating the cuBLASLt handle: its workspace could not be allocated".into(),
            )),
        }
    }?;
    *slot = Some(Arc::clone(&created));
    Ok(created)
}

/// The sizes of a row-major product `out[rows, n] = a[rows, k] · op(b)` repeated `batch` times.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmDims {
    /// Independent products (strided through `a`, `b` and `out`).
    pub batch: usize,
    /// Rows of `a` and `out` per product.
    pub rows: usize,
    /// The reduced dim.
    pub k: usize,
    /// Columns of `out`.
    pub n: usize,
}

/// Converts a size to cuBLASLt's `i64`, refusing an overflow.
fn dim(op: &str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::InvalidArgument(format!("{op}: size {v} is too large")))
}

/// `out = epilogue(x · wᵀ (+ bias))`: `x` row-major `[rows, k]`, `w` row-major `[n, k]` (a
/// linear layer's weight), `bias` `[n]`, all bf16; accumulation and epilogue in f32.
pub(crate) fn linear_bf16(
    dev: &CudaDevice,
    x: &CudaView<'_, bf16>,
    w: &CudaView<'_, bf16>,
    bias: Option<&CudaView<'_, bf16>>,
    epilogue: Epilogue,
    out: &mut CudaViewMut<'_, bf16>,
    d: GemmDims,
) -> Result<()> {
    const OP: &str = "linear";
    check(OP, x.len(), d.rows * d.k, "x")?;
    check(OP, w.len(), d.n * d.k, "weight")?;
    check(OP, out.len(), d.rows * d.n, "out")?;
    if let Some(b) = bias {
        check(OP, b.len(), d.n, "bias")?;
    }
    if d.rows == 0 || d.n == 0 {
        return Ok(());
    }
    // Column-major: C (n × rows) = Wᵀ' (the k × n matrix w is, transposed) · X' (k × rows).
    let cfg = MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: d.n as u64,
        n: d.rows as u64,
        k: d.k as u64,
        alpha: 1.0,
        lda: dim(OP, d.k)?,
        ldb: dim(OP, d.k)?,
        beta: 0.0,
        ldc: dim(OP, d.n)?,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    let act = match epilogue {
        Epilogue::None => None,
        Epilogue::GeluTanh => Some(Activation::Gelu),
    };
    run(OP, dev, cfg, (w, x), out, bias, act)
}

/// `out = a · b` per batch entry: `a` row-major `[batch, rows, k]`, `b` row-major `[batch, k, n]`
/// (`batch` of 1 for a shared `b` with `rows` covering every row of `a`), all bf16.
pub(crate) fn matmul_bf16(
    dev: &CudaDevice,
    a: &CudaView<'_, bf16>,
    b: &CudaView<'_, bf16>,
    out: &mut CudaViewMut<'_, bf16>,
    d: GemmDims,
) -> Result<()> {
    const OP: &str = "matmul";
    check(OP, a.len(), d.batch * d.rows * d.k, "lhs")?;
    check(OP, b.len(), d.batch * d.k * d.n, "rhs")?;
    check(OP, out.len(), d.batch * d.rows * d.n, "out")?;
    if d.batch == 0 || d.rows == 0 || d.n == 0 {
        return Ok(());
    }
    let batch = i32::try_from(d.batch)
        .map_err(|_| Error::InvalidArgument(format!("{OP}: batch {} is too large", d.batch)))?;
    // Column-major: C (n × rows) = B' (n × k, as stored) · A' (k × rows, as stored).
    let cfg = MatmulConfig {
        transa: false,
        transb: false,
        transc: false,
        m: d.n as u64,
        n: d.rows as u64,
        k: d.k as u64,
        alpha: 1.0,
        lda: dim(OP, d.n)?,
        ldb: dim(OP, d.k)?,
        beta: 0.0,
        ldc: dim(OP, d.n)?,
        stride_a: Some(dim(OP, d.k * d.n)?),
        stride_b: Some(dim(OP, d.rows * d.k)?),
        stride_c: Some(dim(OP, d.rows * d.n)?),
        stride_bias: None,
        batch_size: Some(batch),
    };
    run(OP, dev, cfg, (b, a), out, None, None)
}

/// Checks a buffer length against the sizes.
pub(crate) fn check(op: &str, len: usize, expected: usize, name: &str) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{op}: `{name}` holds {len} values, the sizes need {expected}"
        )))
    }
}

/// Runs one cuBLASLt matmul of the column-major operands `(a, b)` on the device's stream.
fn run(
    op: &str,
    dev: &CudaDevice,
    cfg: MatmulConfig,
    (a, b): (&CudaView<'_, bf16>, &CudaView<'_, bf16>),
    out: &mut CudaViewMut<'_, bf16>,
    bias: Option<&CudaView<'_, bf16>>,
    act: Option<Activation>,
) -> Result<()> {
    let h = handle(dev)?;
    // SAFETY: the lengths of `a`, `b`, `out` and `bias` were checked against the sizes `cfg`
    // describes, and every view lives on the stream `h` was created with.
    unsafe { h.matmul(cfg, a, b, out, bias, act.as_ref()) }
        .map_err(|e| Error::Device(format!("{op}: cuBLASLt: {e}")))
}
