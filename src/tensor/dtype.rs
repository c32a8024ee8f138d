//! Element types of tensors, as they are stored in model files.

use crate::error::{Error, Result};

/// The element type of a tensor.
///
/// The float types are those Wan checkpoints use; the integer types appear in state dicts
/// (step counters, ids) and are carried through but not computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// float8 e4m3fn: 4 exponent bits, 3 mantissa bits, no infinities, max 448.
    F8E4M3,
    /// float8 e5m2: 5 exponent bits, 2 mantissa bits, IEEE-like, max finite 57344.
    F8E5M2,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 12] = [
        DType::Bool,
        DType::U8,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::F8E4M3,
        DType::F8E5M2,
    ];

    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E4M3 | DType::F8E5M2 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// True for the floating-point types.
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            DType::F16 | DType::BF16 | DType::F32 | DType::F64 | DType::F8E4M3 | DType::F8E5M2
        )
    }

    /// The dtype's name in safetensors headers (`"F32"`, `"BF16"`, `"F8_E4M3"` …).
    pub const fn safetensors_name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
        }
    }

    /// Parses a safetensors dtype name.
    pub fn from_safetensors_name(name: &str) -> Result<DType> {
        DType::ALL
            .into_iter()
            .find(|d| d.safetensors_name() == name)
            .ok_or_else(|| Error::UnknownDType(name.to_string()))
    }

    /// The short human name used in reports (`f32`, `bf16`, `fp8 e4m3fn` …).
    pub const fn name(self) -> &'static str {
        match self.c_name().to_str() {
            Ok(name) => name,
            Err(_) => panic!("dtype names are ASCII"),
        }
    }

    /// [`DType::name`] as a C string (the C API hands it out).
    pub const fn c_name(self) -> &'static std::ffi::CStr {
        match self {
            DType::Bool => c"bool",
            DType::U8 => c"u8",
            DType::I8 => c"i8",
            DType::I16 => c"i16",
            DType::I32 => c"i32",
            DType::I64 => c"i64",
            DType::F16 => c"f16",
            DType::BF16 => c"bf16",
            DType::F32 => c"f32",
            DType::F64 => c"f64",
            DType::F8E4M3 => c"fp8 e4m3fn",
            DType::F8E5M2 => c"fp8 e5m2",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
