//! Stand-in for the CUDA backend in builds without the `cuda` feature: the same items, with
//! uninhabited storage and constructors that return [`Error::CudaNotCompiled`].

use crate::backend::DeviceInfo;
use crate::error::{Error, Result};

#[path = "cuda/ops.rs"]
pub mod ops;

/// Device memory; uninhabited in builds without CUDA.
pub enum CudaStorage {}

impl CudaStorage {
    /// Copies host bytes to device `ordinal`: always an error in this build.
    pub fn upload(_ordinal: usize, _bytes: &[u8]) -> Result<CudaStorage> {
        Err(Error::CudaNotCompiled)
    }

    /// The device's bytes copied to the host.
    pub fn download(&self) -> Result<Vec<u8>> {
        match *self {}
    }

    /// The ordinal of the device holding the bytes.
    pub fn ordinal(&self) -> usize {
        match *self {}
    }
}

/// Reports whether a CUDA device can be used: always an error in this build.
pub fn device_available() -> Result<()> {
    Err(Error::CudaNotCompiled)
}

/// Lists the CUDA devices: always an error in this build.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    Err(Error::CudaNotCompiled)
}

/// The error of an op asked to run on CUDA: this build has no CUDA.
fn not_on_cuda(_what: &str) -> Error {
    Error::CudaNotCompiled
}
