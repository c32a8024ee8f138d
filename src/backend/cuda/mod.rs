//! The CUDA backend: cudarc with dynamic loading, one context and stream per device, a caching
//! allocator with a memory limit, pinned host staging buffers for uploads (`staging.rs`), one
//! cuBLASLt handle per device (bf16 GEMMs in `gemm.rs`, fp8 in `gemm_fp8.rs`), and
//! [`CudaStorage`], the device memory of a tensor.
//!
//! cudarc panics when a library is missing, so every entry first probes the library
//! ([`device_available`]) and contains any panic of the driver calls, returning a typed error
//! that names the library.

mod allocator;
mod block_swap;
mod gemm;
mod gemm_fp8;
pub(crate) mod kernels;
mod lora_merge;
pub mod ops;
pub mod sampler_ops;
mod staging;

pub use block_swap::BlockSwap;
pub use lora_merge::DeviceMerge;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut, DriverError};

use crate::backend::{DeviceInfo, MemoryUsage};
use crate::error::{Error, Result};
use allocator::{Pool, Take};
use kernels::Kernels;
use staging::Staging;

/// The driver library cudarc opens (the same name for CUDA 12 and 13 drivers).
const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// Checks that the CUDA driver library can be loaded. cudarc panics when a library is missing,
/// so the presence check comes first and never lets a panic escape.
pub fn device_available() -> Result<()> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Device(format!(
            "the CUDA driver library ({DRIVER_LIBRARY}) could not be loaded"
        )))
    }
}

/// Runs a driver call after the library probe, turning its error and any panic into typed
/// errors that name `what`.
fn driver<T>(what: &str, f: impl FnOnce() -> std::result::Result<T, DriverError>) -> Result<T> {
    device_available()?;
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(driver_error(what, e)),
        Err(p) => Err(Error::Device(format!(
            "{what}: {}",
            crate::error::panic_message(p.as_ref()).unwrap_or("the CUDA driver call panicked")
        ))),
    }
}

fn driver_error(what: &str, e: DriverError) -> Error {
    if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        Error::OutOfMemory(format!("{what}: the CUDA device is out of memory"))
    } else {
        Error::Device(format!("{what}: {e}"))
    }
}

/// The error of an op whose CUDA kernel is not wired into the dispatch yet.
fn not_on_cuda(what: &str) -> Error {
    Error::Device(format!("{what} have no CUDA implementation yet"))
}

/// Device-to-host copies ([`CudaStorage::download`]) made by this process.
static DOWNLOADS: AtomicU64 = AtomicU64::new(0);

/// The number of device-to-host copies this process has made so far, on every device: each
/// [`CudaStorage::download`] (so each [`crate::tensor::Tensor::to_device`] to the CPU) counts
/// one. Tests take the difference around a piece of work to prove it stays on the device.
pub fn download_count() -> u64 {
    DOWNLOADS.load(Ordering::Relaxed)
}

/// Every CUDA device the driver reports, with name, compute capability and memory. Opens each
/// device's context (kept for later use).
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    let count = driver("listing CUDA devices", CudaContext::device_count)?;
    (0..usize::try_from(count).unwrap_or(0))
        .map(|ordinal| {
            let dev = CudaDevice::get(ordinal)?;
            let ctx = dev.stream.context();
            let what = format!("querying CUDA device {ordinal}");
            Ok(DeviceInfo {
                ordinal,
                name: driver(&what, || ctx.name())?,
                compute_capability: driver(&what, || ctx.compute_capability())?,
                total_memory: driver(&what, || ctx.total_mem())?,
            })
        })
        .collect()
}

/// Waits until the work queued on device `ordinal` has finished (for timing; the ops never
/// need it, as they all run on the device's one stream).
pub fn synchronize(ordinal: usize) -> Result<()> {
    let dev = CudaDevice::get(ordinal)?;
    driver("synchronizing the CUDA stream", || dev.stream.synchronize())
}

/// The device memory wanrt could still take on device `ordinal`: the driver's free figure plus
/// the buffers wanrt's allocator caches, bounded by the allocator's limit less what it holds.
pub fn free_memory(ordinal: usize) -> Result<u64> {
    let dev = CudaDevice::get(ordinal)?;
    let (free, _total) = driver("reading the free device memory", || {
        dev.stream.context().mem_get_info()
    })?;
    let usage = dev.memory_usage();
    let below_limit = usage.limit.saturating_sub(usage.in_use);
    Ok((free + usage.cached).min(below_limit) as u64)
}

/// Bounds the bytes wanrt keeps on device `ordinal` ([`CudaDevice::set_memory_limit`]).
pub fn set_memory_limit(ordinal: usize, bytes: u64) -> Result<()> {
    let dev = CudaDevice::get(ordinal)?;
    dev.set_memory_limit(usize::try_from(bytes).unwrap_or(usize::MAX));
    Ok(())
}

/// What the allocator of device `ordinal` holds now ([`CudaDevice::memory_usage`]).
pub fn memory_usage(ordinal: usize) -> Result<MemoryUsage> {
    Ok(CudaDevice::get(ordinal)?.memory_usage())
}

/// One device: its context, the stream every op of wanrt runs on, its allocator and the
/// hand-written kernels loaded into its context.
pub struct CudaDevice {
    ordinal: usize,
    capability: (i32, i32),
    stream: Arc<CudaStream>,
    pool: Mutex<Pool<CudaSlice<u8>>>,
    kernels: OnceLock<Arc<Kernels>>,
    blaslt: Mutex<Option<Arc<cudarc::cublaslt::CudaBlasLT>>>,
    staging: Mutex<Option<Staging>>,
}

impl CudaDevice {
    /// The device of `ordinal`, created on first use (one context per device, kept for the
    /// life of the process). The memory limit starts at the device's total memory.
    pub fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
        let mut devices = DEVICES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(d) = devices.get(&ordinal) {
            return Ok(Arc::clone(d));
        }
        let what = format!("opening CUDA device {ordinal}");
        let count = driver(&what, CudaContext::device_count)?;
        if ordinal >= usize::try_from(count).unwrap_or(0) {
            return Err(Error::Device(format!(
                "{what}: the driver reports {count} device(s)"
            )));
        }
        let ctx = driver(&what, || CudaContext::new(ordinal))?;
        let total = driver(&what, || ctx.total_mem())?;
        let capability = driver(&what, || ctx.compute_capability())?;
        let stream = driver(&what, || ctx.new_stream())?;
        let dev = Arc::new(CudaDevice {
            ordinal,
            capability,
            stream,
            pool: Mutex::new(Pool::new(total)),
            kernels: OnceLock::new(),
            blaslt: Mutex::new(None),
            staging: Mutex::new(None),
        });
        devices.insert(ordinal, Arc::clone(&dev));
        Ok(dev)
    }

    /// The driver's ordinal of this device.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The compute capability `(major, minor)`; it picks the GEMM path
    /// ([`crate::backend::gemm_plan::gemm_path`]).
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    /// The stream wanrt's work on this device is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Bounds the bytes wanrt keeps on this device (in use plus cached); allocations past it
    /// fail with [`Error::OutOfMemory`]. Cached buffers over the new limit are freed.
    pub fn set_memory_limit(&self, bytes: usize) {
        let freed = self.pool().set_limit(bytes);
        drop(freed);
    }

    /// What the allocator holds now.
    pub fn memory_usage(&self) -> MemoryUsage {
        let p = self.pool();
        MemoryUsage {
            in_use: p.in_use(),
            cached: p.cached(),
            limit: p.limit(),
        }
    }

    /// Frees every cached buffer.
    pub fn release_cache(&self) {
        let freed = self.pool().release_cache();
        drop(freed);
    }

    /// The kernels of `kernels/*.cu`, loaded into this device's context on first use (once per
    /// context; a GPU older than sm_80 gets the driver's typed error here, not at `get`).
    fn kernels(&self) -> Result<Arc<Kernels>> {
        if let Some(k) = self.kernels.get() {
            return Ok(Arc::clone(k));
        }
        let ctx = self.stream.context();
        let loaded = catch_unwind(AssertUnwindSafe(|| Kernels::load(ctx))).unwrap_or_else(|p| {
            Err(Error::Device(format!(
                "loading the CUDA kernels: {}",
                crate::error::panic_message(p.as_ref()).unwrap_or("the driver call panicked")
            )))
        })?;
        // Two threads may load at once; both modules are valid and the first one is kept.
        Ok(Arc::clone(self.kernels.get_or_init(|| Arc::new(loaded))))
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool<CudaSlice<u8>>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of at least `bytes` bytes (uninitialised), from the cache or the driver.
    fn alloc(self: &Arc<Self>, bytes: usize) -> Result<CudaStorage> {
        let decision = self.pool().take(bytes)?;
        let (buf, class) = match decision {
            Take::Reuse(b) => {
                let class = b.len();
                (b, class)
            }
            Take::Allocate { class, free } => {
                drop(free);
                // SAFETY: the bytes are written (upload or kernel output) before they are read.
                match driver("CUDA allocation", || unsafe {
                    self.stream.alloc::<u8>(class)
                }) {
                    Ok(b) => (b, class),
                    Err(e) => {
                        self.pool().allocation_failed(class);
                        return Err(e);
                    }
                }
            }
        };
        Ok(CudaStorage {
            buf: Some(buf),
            class,
            len: bytes,
            device: Arc::clone(self),
        })
    }
}

/// Device memory of one tensor: a buffer of the device's caching allocator (returned to its
/// cache on drop) holding `len` bytes.
pub struct CudaStorage {
    buf: Option<CudaSlice<u8>>,
    class: usize,
    len: usize,
    device: Arc<CudaDevice>,
}

impl CudaStorage {
    /// Copies host bytes to device `ordinal` through the device's pinned staging buffers, chunk
    /// by chunk (`crate::backend::staging`): the host memory used is bounded whatever the size,
    /// and bytes of a memory-mapped file are read from the map as they are copied. The copy is
    /// queued on the device's stream, which every later op uses.
    pub fn upload(ordinal: usize, bytes: &[u8]) -> Result<CudaStorage> {
        let dev = CudaDevice::get(ordinal)?;
        let mut s = dev.alloc(bytes.len())?;
        let dst = s.buf.as_mut().expect("a live storage holds its buffer");
        let mut view = dst.slice_mut(..bytes.len());
        let mut staging = dev.staging.lock().unwrap_or_else(|e| e.into_inner());
        if staging.is_none() {
            *staging = Some(Staging::new(dev.stream.context())?);
        }
        staging
            .as_mut()
            .expect("created above")
            .upload(&dev.stream, bytes, &mut view)?;
        Ok(s)
    }

    /// The device's bytes copied to the host (waits for the stream); counted by
    /// [`download_count`].
    pub fn download(&self) -> Result<Vec<u8>> {
        DOWNLOADS.fetch_add(1, Ordering::Relaxed);
        let src = self.buf.as_ref().expect("a live storage holds its buffer");
        let mut out = vec![0u8; self.len];
        driver("copy from the CUDA device", || {
            self.device
                .stream
                .memcpy_dtoh(&src.slice(..self.len), &mut out)?;
            self.device.stream.synchronize()
        })?;
        Ok(out)
    }

    /// The first `n` elements of the bytes as `T` (the tensor's dtype); `InvalidArgument` when
    /// the storage holds fewer bytes.
    pub(crate) fn view<T: bytemuck::Pod>(&self, n: usize) -> Result<CudaView<'_, T>> {
        check_view::<T>(n, self.len)?;
        let buf = self.buf.as_ref().expect("a live storage holds its buffer");
        // SAFETY: `T` is plain old data, `n` of them fit in the buffer (checked above), and the
        // allocator's buffers start on the driver's 256-byte alignment.
        let v = unsafe { buf.transmute::<T>(n) };
        Ok(v.expect("the length was checked"))
    }

    /// The first `n` elements of the bytes as `T`, for writing; as [`CudaStorage::view`].
    pub(crate) fn view_mut<T: bytemuck::Pod>(&mut self, n: usize) -> Result<CudaViewMut<'_, T>> {
        check_view::<T>(n, self.len)?;
        let buf = self.buf.as_mut().expect("a live storage holds its buffer");
        // SAFETY: as in `view`.
        let v = unsafe { buf.transmute_mut::<T>(n) };
        Ok(v.expect("the length was checked"))
    }

    /// The device holding the bytes.
    pub(crate) fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// The ordinal of the device holding the bytes.
    pub fn ordinal(&self) -> usize {
        self.device.ordinal
    }

    /// The number of bytes of the tensor.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a tensor without elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Checks that `n` values of `T` fit in `bytes` bytes.
fn check_view<T>(n: usize, bytes: usize) -> Result<()> {
    match n.checked_mul(std::mem::size_of::<T>()) {
        Some(need) if need <= bytes => Ok(()),
        _ => Err(Error::InvalidArgument(format!(
            "a view of {n} values of {} bytes over a CUDA buffer of {bytes} bytes",
            std::mem::size_of::<T>()
        ))),
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.device.pool().give_back(self.class, buf);
        }
    }
}
