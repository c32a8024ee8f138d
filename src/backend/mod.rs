//! Compute devices. The CPU backend is the reference and runs anywhere; the CUDA backend is
//! compiled with the `cuda` feature. Without that feature [`cuda`] is a stand-in whose types are
//! uninhabited and whose constructors return [`crate::Error::CudaNotCompiled`], so callers need
//! no `#[cfg]`.

pub mod attention_emulation;
pub mod block_swap;
pub mod cpu;
#[cfg_attr(not(feature = "cuda"), path = "cuda_dummy.rs")]
pub mod cuda;
pub mod gemm_plan;
pub mod q8_kernel;
pub mod staging;

/// Where a tensor lives and its ops run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory, CPU kernels.
    Cpu,
    /// The CUDA device of this ordinal (as the driver numbers them).
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = crate::Error;
    /// `cpu`, `cuda` (ordinal 0) or `cuda:N`, in any case; `gpu` and `gpu:N` are aliases of
    /// `cuda`. The one parser of every device flag and binding.
    fn from_str(s: &str) -> crate::Result<Device> {
        let lower = s.to_ascii_lowercase();
        let (name, ordinal) = match lower.split_once(':') {
            Some((name, n)) => (name, n.parse().ok()),
            None => (lower.as_str(), Some(0)),
        };
        match (name, ordinal) {
            ("cpu", _) if !lower.contains(':') => Ok(Device::Cpu),
            ("cuda" | "gpu", Some(n)) => Ok(Device::Cuda(n)),
            _ => Err(crate::Error::InvalidArgument(format!(
                "unknown device `{s}` (expected cpu, cuda or cuda:N)"
            ))),
        }
    }
}

impl Device {
    /// Fails for a device this build or machine cannot run on: CUDA in a build without the
    /// `cuda` feature ([`crate::Error::CudaNotCompiled`]), without the NVIDIA driver library, or
    /// with an ordinal past the devices the driver reports ([`crate::Error::Device`]).
    pub fn ensure_supported(self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(ordinal) => {
                cuda::device_available()?;
                let count = cuda::list_devices()?.len();
                if ordinal < count {
                    Ok(())
                } else {
                    Err(crate::Error::Device(format!(
                        "cuda:{ordinal}: the CUDA driver reports {count} device(s)"
                    )))
                }
            }
        }
    }
}

/// One CUDA device as the driver reports it ([`cuda::list_devices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The ordinal to pass as [`Device::Cuda`].
    pub ordinal: usize,
    /// The product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability `(major, minor)`, e.g. `(9, 0)`.
    pub compute_capability: (i32, i32),
    /// Total memory in bytes.
    pub total_memory: usize,
}

/// The bytes one device's caching allocator accounts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Bytes held by live tensors.
    pub in_use: usize,
    /// Bytes of freed buffers kept for reuse.
    pub cached: usize,
    /// The limit on `in_use + cached`.
    pub limit: usize,
}

/// The CUDA devices present ([`cuda::list_devices`]): an empty list when wanrt is built without
/// CUDA or the NVIDIA driver library is missing; an error when the driver fails to answer.
pub fn cuda_devices() -> crate::Result<Vec<DeviceInfo>> {
    if cuda::device_available().is_err() {
        return Ok(Vec::new());
    }
    cuda::list_devices()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn device_names_parse_in_one_grammar() {
        for (name, device) in [
            ("cpu", Device::Cpu),
            ("CPU", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("gpu", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
            ("CUDA:1", Device::Cuda(1)),
        ] {
            assert_eq!(name.parse::<Device>().unwrap(), device, "{name}");
            assert_eq!(device.to_string().parse::<Device>().unwrap(), device);
        }
        for bad in ["cuda:x", "gpu:-1", "cuda:", "cpu:0", "tpu", "", "cuda:1:2"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
            assert!(e.to_string().contains("cuda:N"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_absent_cuda_device_is_a_typed_device_error() {
        assert!(Device::Cpu.ensure_supported().is_ok());
        // No machine has a millionth GPU; without CUDA or a driver the cause is named instead.
        let e = Device::Cuda(1_000_000).ensure_supported().unwrap_err();
        assert_eq!(e.status(), crate::Status::DeviceError, "{e}");
        assert!(
            matches!(e, Error::CudaNotCompiled)
                || e.to_string().contains("driver")
                || e.to_string().contains("cuda:1000000"),
            "{e}"
        );
    }
}
