//! The one error type of the crate.
//!
//! Variants are grouped by concern and carry the context a user needs to fix the problem: the
//! file, the tensor name, the expected and the actual shape. Every variant maps onto a C status
//! code (see [`Error::status`]) so the C ABI can report it without losing meaning.

use std::path::PathBuf;

use crate::tensor::{DType, Shape};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in wanrt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === Files and formats ===
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file whose bytes do not follow its format.
    #[error("{path}: {what}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and where, in one line.
        what: String,
    },
    /// A pickle that names a global outside the allow-list of a state dict.
    #[error("{path}: pickle references forbidden global `{global}` (only tensor state dicts are loaded; nothing is executed)")]
    ForbiddenGlobal {
        /// The `.pth` file.
        path: PathBuf,
        /// `module.name` of the rejected global.
        global: String,
    },
    /// A dtype string that wanrt does not know.
    #[error("unknown dtype `{0}`")]
    UnknownDType(String),

    // === Models and weights ===
    /// A tensor the model needs is not in the checkpoint.
    #[error("missing tensor `{name}`{}", context_suffix(.context))]
    MissingTensor {
        /// Canonical tensor name.
        name: String,
        /// Which file or component was being read.
        context: String,
    },
    /// A model file that is readable but not of a kind wanrt supports.
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    /// A configuration value that is out of range or contradicts the weights.
    #[error("invalid config: {0}")]
    InvalidConfig(String),

    // === Tensors and ops ===
    /// Two shapes that had to agree do not.
    #[error("{op}: shape mismatch, expected {expected}, got {got}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// What the operation needed.
        expected: String,
        /// What it received.
        got: Shape,
    },
    /// An operation received a dtype it does not support.
    #[error("{op}: unsupported dtype {dtype:?}")]
    UnsupportedDType {
        /// The operation.
        op: &'static str,
        /// The dtype it received.
        dtype: DType,
    },
    /// A shape whose element count or byte size overflows `usize`.
    #[error("shape {0:?} is too large")]
    ShapeOverflow(Vec<usize>),
    /// An argument outside its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    // === Devices ===
    /// The CUDA backend was asked for but this build has no `cuda` feature.
    #[error("this build of wanrt has no CUDA support (rebuild with `--features cuda`)")]
    CudaNotCompiled,
    /// A device-side failure (driver, NVRTC, cuBLAS).
    #[error("device error: {0}")]
    Device(String),
    /// The inputs of one op live on different devices (move them with `Tensor::to_device`).
    #[error("{op}: inputs on different devices ({devices})")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// The devices of its inputs, in order.
        devices: String,
    },

    // === Runtime ===
    /// A request needs more working memory than the machine has (checked before any heavy work).
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The caller cancelled the operation through its callback.
    #[error("cancelled")]
    Cancelled,
    /// Sampling made the latent non-finite (NaN or infinity) at step `step` (0-based) of
    /// `steps`: the numbers overflowed, so the video would be garbage.
    #[error(
        "the latent holds {value} after denoising step {} of {steps}: the numbers overflowed \
         (try a lower guidance scale or LoRA strength, or check the model file)",
        .step + 1
    )]
    NonFiniteLatent {
        /// The step that produced it (0-based).
        step: usize,
        /// The number of steps.
        steps: usize,
        /// The first non-finite value.
        value: f64,
    },
}

fn context_suffix(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!(" in {context}")
    }
}

/// The message of a caught panic (the payload `catch_unwind` returns): the text of a
/// `panic!("literal")` or a formatted `panic!`, `None` for any other payload. The CLI and the
/// C ABI report panics with it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// Coarse classification of an [`Error`], stable across versions; the C ABI returns these codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// An argument was out of range or inconsistent.
    InvalidArgument = 1,
    /// A file or tensor was not found.
    NotFound = 2,
    /// A file was malformed or of an unsupported kind.
    BadFile = 3,
    /// Memory could not be allocated.
    OutOfMemory = 4,
    /// The device failed or is missing.
    DeviceError = 5,
    /// The caller cancelled.
    Cancelled = 6,
    /// A bug in wanrt.
    Internal = 7,
}

impl Error {
    /// Builds a [`Error::BadFile`] for `path`.
    pub fn bad_file(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            what: what.into(),
        }
    }

    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The status code the C ABI reports for this error.
    pub fn status(&self) -> Status {
        match self {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Status::NotFound
            }
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::OutOfMemory => {
                Status::OutOfMemory
            }
            Error::Io { .. }
            | Error::BadFile { .. }
            | Error::ForbiddenGlobal { .. }
            | Error::UnknownDType(_)
            | Error::UnsupportedModel(_) => Status::BadFile,
            Error::MissingTensor { .. } => Status::NotFound,
            Error::InvalidConfig(_)
            | Error::ShapeMismatch { .. }
            | Error::UnsupportedDType { .. }
            | Error::ShapeOverflow(_)
            | Error::DeviceMismatch { .. }
            | Error::InvalidArgument(_)
            | Error::NonFiniteLatent { .. } => Status::InvalidArgument,
            Error::OutOfMemory(_) => Status::OutOfMemory,
            Error::CudaNotCompiled | Error::Device(_) => Status::DeviceError,
            Error::Cancelled => Status::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_of_every_payload_kind() {
        let caught = |f: fn()| std::panic::catch_unwind(f).unwrap_err();
        assert_eq!(
            panic_message(caught(|| panic!("plain")).as_ref()),
            Some("plain")
        );
        let formatted = caught(|| panic!("formatted {}", 7));
        assert_eq!(panic_message(formatted.as_ref()), Some("formatted 7"));
        let other = caught(|| std::panic::panic_any(7u8));
        assert_eq!(panic_message(other.as_ref()), None);
    }
}
