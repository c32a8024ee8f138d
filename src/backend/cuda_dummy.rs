//! Stand-in for the CUDA backend in builds without the `cuda` feature.

use crate::error::{Error, Result};

/// Device memory; uninhabited in builds without CUDA.
pub enum CudaStorage {}

/// Reports whether a CUDA device can be used: always an error in this build.
pub fn device_available() -> Result<()> {
    Err(Error::CudaNotCompiled)
}
