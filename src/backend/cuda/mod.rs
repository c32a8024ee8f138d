//! The CUDA backend (cudarc, NVRTC-compiled kernels from `kernels/`, cuBLASLt GEMMs).

use crate::error::{Error, Result};

pub(crate) mod kernels;

/// Device memory of one tensor.
pub enum CudaStorage {}

/// Checks that the CUDA driver library can be loaded. cudarc panics when a library is missing,
/// so the presence check comes first and never lets a panic escape.
pub fn device_available() -> Result<()> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Device("libcuda could not be loaded".into()))
    }
}
