//! Compute devices. The CPU backend is the reference and runs anywhere; the CUDA backend is
//! compiled with the `cuda` feature. Without that feature [`cuda`] is a stand-in whose types are
//! uninhabited and whose constructors return [`crate::Error::CudaNotCompiled`], so callers need
//! no `#[cfg]`.

pub mod attention_emulation;
pub mod cpu;
#[cfg_attr(not(feature = "cuda"), path = "cuda_dummy.rs")]
pub mod cuda;

/// Where a tensor lives and its ops run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// Host memory, CPU kernels.
    Cpu,
}
