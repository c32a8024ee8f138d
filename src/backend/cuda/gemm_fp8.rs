//! The fp8 (e4m3fn) linear layer through cuBLASLt's C API. cudarc's safe cuBLASLt API knows no
//! fp8 types or scale pointers, so this is a thin wrapper of its `result`/`sys` bindings: one
//! matmul descriptor, three layouts, one heuristic query and one `cublasLtMatmul`, each handle
//! destroyed by a guard. The numerics are those `crate::backend::gemm_plan` emulates.
//!
//! Operands (column-major, as in `gemm.rs`): `A` is the weight (`[n, k]` row-major, used
//! transposed, the "TN" layout fp8 needs), `B` the quantized activations, `D = alpha · scale_B ·
//! (A·B) (+ bias, GELU)` in bf16 with the weight's stored scale as `alpha` (a host scalar) and
//! the activations' dynamic scale read by cuBLASLt from the device (`B_SCALE_POINTER`), so no
//! host round trip is needed. The bias is bf16 (cuBLASLt's rule for a bf16 `D`).

use std::ffi::c_void;

use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::cublaslt::MatmulShared;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use half::bf16;

use super::gemm::{check, handle, GemmDims};
use super::CudaDevice;
use crate::backend::gemm_plan::Epilogue;
use crate::error::{Error, Result};
use std::sync::Arc;

/// Bytes of cuBLASLt workspace the fp8 GEMM offers (NVIDIA's recommendation for Hopper; the
/// buffer comes from the caching allocator, so the same one is reused call after call).
const WORKSPACE: usize = 32 << 20;

/// The inputs of one fp8 linear layer.
pub(crate) struct Fp8Operands<'a, 'v> {
    /// Activation codes, `[rows, k]` row-major.
    pub x: &'a CudaView<'v, u8>,
    /// The activations' dequantization scale (one f32 on the device).
    pub x_scale: &'a CudaView<'v, f32>,
    /// Weight codes, `[n, k]` row-major.
    pub w: &'a CudaView<'v, u8>,
    /// The weight's stored scale.
    pub w_scale: f32,
    /// `[n]` bf16, added in the epilogue.
    pub bias: Option<&'a CudaView<'v, bf16>>,
}

/// `out = epilogue(x · wᵀ · scales + bias)` in bf16, fp8 inputs, f32 accumulation.
pub(crate) fn linear_e4m3(
    dev: &Arc<CudaDevice>,
    ops: &Fp8Operands<'_, '_>,
    epilogue: Epilogue,
    out: &mut CudaViewMut<'_, bf16>,
    d: GemmDims,
) -> Result<()> {
    const OP: &str = "linear (fp8)";
    check(OP, ops.x.len(), d.rows * d.k, "x")?;
    check(OP, ops.w.len(), d.n * d.k, "weight")?;
    check(OP, ops.x_scale.len(), 1, "x scale")?;
    check(OP, out.len(), d.rows * d.n, "out")?;
    if let Some(b) = ops.bias {
        check(OP, b.len(), d.n, "bias")?;
    }
    if d.rows == 0 || d.n == 0 {
        return Ok(());
    }
    let h = handle(dev)?;
    let mut workspace = dev.alloc(WORKSPACE)?;
    let stream = dev.stream();
    let cublas = |e: CublasError| Error::Device(format!("{OP}: cuBLASLt: {e}"));
    let (k, n, rows) = (d.k as u64, d.n as u64, d.rows as u64);
    let ld = |v: usize| i64::try_from(v).map_err(|_| Error::InvalidArgument(format!("{OP}: {v}")));
    let (ldk, ldn) = (ld(d.k)?, ld(d.n)?);

    let desc = Desc::new().map_err(cublas)?;
    let (x_scale, _s) = ops.x_scale.device_ptr(stream);
    let (bias, _b) = ops.bias.map(|b| b.device_ptr(stream)).unzip();
    // SAFETY: each attribute is given a value of the type and size cuBLASLt documents for it;
    // the pointers stay valid until the matmul is queued (their guards live to the end).
    unsafe {
        use sys::cublasLtMatmulDescAttributes_t as A;
        desc.set(A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
        desc.set(A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?;
        desc.set(A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale)?;
        desc.set(
            A::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &epilogue_code(epilogue, bias.is_some()),
        )?;
        if let Some(bias) = &bias {
            desc.set(A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias)?;
            desc.set(
                A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &sys::cudaDataType_t::CUDA_R_16BF,
            )?;
        }
    }
    let fp8 = sys::cudaDataType_t::CUDA_R_8F_E4M3;
    let a = Layout::new(fp8, k, n, ldk).map_err(cublas)?;
    let b = Layout::new(fp8, k, rows, ldk).map_err(cublas)?;
    let c = Layout::new(sys::cudaDataType_t::CUDA_R_16BF, n, rows, ldn).map_err(cublas)?;
    let pref = Pref::new(WORKSPACE).map_err(cublas)?;
    // SAFETY: every handle is live (guards), the layouts describe the checked buffer lengths.
    let heuristic = unsafe {
        lt::get_matmul_algo_heuristic(*h.handle(), desc.0, a.0, b.0, c.0, c.0, pref.0)
    }
    .map_err(|e| Error::Device(format!("{OP}: cuBLASLt has no fp8 kernel for {d:?}: {e}")))?;
    let alpha = ops.w_scale;
    let beta = 0f32;
    let (w_ptr, _w) = ops.w.device_ptr(stream);
    let (x_ptr, _x) = ops.x.device_ptr(stream);
    let (o_ptr, _o) = out.device_ptr_mut(stream);
    let ws = workspace.view_mut::<u8>(WORKSPACE)?;
    let (ws_ptr, _ws) = ws.device_ptr(stream);
    // SAFETY: the buffers hold what the layouts describe (lengths checked above), all on
    // `stream`, which the matmul is queued on; `C` is not read (beta 0) and aliases `D`.
    unsafe {
        lt::matmul(
            *h.handle(),
            desc.0,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            w_ptr as *const c_void,
            a.0,
            x_ptr as *const c_void,
            b.0,
            o_ptr as *const c_void,
            c.0,
            o_ptr as *mut c_void,
            c.0,
            &heuristic.algo,
            ws_ptr as *mut c_void,
            WORKSPACE,
            stream.cu_stream() as sys::cudaStream_t,
        )
    }
    .map_err(cublas)
}

/// cuBLASLt's epilogue for `epilogue` with or without a bias.
fn epilogue_code(epilogue: Epilogue, bias: bool) -> sys::cublasLtEpilogue_t {
    use sys::cublasLtEpilogue_t as E;
    match (epilogue, bias) {
        (Epilogue::None, false) => E::CUBLASLT_EPILOGUE_DEFAULT,
        (Epilogue::None, true) => E::CUBLASLT_EPILOGUE_BIAS,
        (Epilogue::GeluTanh, false) => E::CUBLASLT_EPILOGUE_GELU,
        (Epilogue::GeluTanh, true) => E::CUBLASLT_EPILOGUE_GELU_BIAS,
    }
}

/// A matmul descriptor (f32 compute and scale types), destroyed on drop.
struct Desc(sys::cublasLtMatmulDesc_t);

impl Desc {
    fn new() -> std::result::Result<Desc, CublasError> {
        lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map(Desc)
    }

    /// Sets one attribute to `value`.
    ///
    /// # Safety
    /// `T` must be the type cuBLASLt documents for `attr`.
    unsafe fn set<T>(&self, attr: sys::cublasLtMatmulDescAttributes_t, value: &T) -> Result<()> {
        // SAFETY: the caller's contract; `value` is read during the call only.
        unsafe {
            lt::set_matmul_desc_attribute(
                self.0,
                attr,
                value as *const T as *const c_void,
                std::mem::size_of::<T>(),
            )
        }
        .map_err(|e| Error::Device(format!("cuBLASLt matmul attribute {attr:?}: {e}")))
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed once. A failure leaks the handle.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

/// A matrix layout (`rows × cols` column-major, leading dim `ld`), destroyed on drop.
struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(
        dtype: sys::cudaDataType_t,
        rows: u64,
        cols: u64,
        ld: i64,
    ) -> std::result::Result<Layout, CublasError> {
        lt::create_matrix_layout(dtype, rows, cols, ld).map(Layout)
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by `create_matrix_layout`, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

/// A heuristic preference allowing `workspace` bytes, destroyed on drop.
struct Pref(sys::cublasLtMatmulPreference_t);

impl Pref {
    fn new(workspace: usize) -> std::result::Result<Pref, CublasError> {
        let pref = Pref(lt::create_matmul_pref()?);
        // SAFETY: MAX_WORKSPACE_BYTES takes a u64 (usize on the 64-bit hosts wanrt builds for).
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace as *const usize as *const c_void,
                std::mem::size_of::<usize>(),
            )?;
        }
        Ok(pref)
    }
}

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}
