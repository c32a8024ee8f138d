//! safetensors files, memory-mapped and zero-copy.
//!
//! The header is parsed and validated by the `safetensors` crate (header length inside the
//! file, offsets contiguous and in bounds, dtype × shape = byte length, no overflow); tensors
//! then borrow their bytes from one shared memory map.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{Checkpoint, FileFormat};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

/// Maps a file read-only. The map is shared by all tensors of the file.
pub(crate) fn map_file(path: &Path) -> Result<Arc<memmap2::Mmap>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only. Model files are not expected to change while loaded; if
    // another process truncates one, reads may fault, as with every mmap-based loader.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(map))
}

fn dtype_of(d: ::safetensors::Dtype) -> Result<DType> {
    use ::safetensors::Dtype as S;
    Ok(match d {
        S::BOOL => DType::Bool,
        S::U8 => DType::U8,
        S::I8 => DType::I8,
        S::I16 => DType::I16,
        S::I32 => DType::I32,
        S::I64 => DType::I64,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        S::F8_E4M3 => DType::F8E4M3,
        S::F8_E5M2 => DType::F8E5M2,
        other => return Err(Error::UnknownDType(format!("{other:?}"))),
    })
}

/// Reads one safetensors file.
pub fn read_file(path: &Path) -> Result<Checkpoint> {
    let map = map_file(path)?;
    let (header_len, meta) = ::safetensors::SafeTensors::read_metadata(&map)
        .map_err(|e| Error::bad_file(path, format!("invalid safetensors header: {e}")))?;
    let data_start = 8 + header_len;
    let mut tensors = BTreeMap::new();
    for (name, info) in meta.tensors() {
        let dtype = dtype_of(info.dtype)
            .map_err(|e| Error::bad_file(path, format!("tensor `{name}`: {e}")))?;
        let shape = Shape::new(info.shape.clone())
            .map_err(|e| Error::bad_file(path, format!("tensor `{name}`: {e}")))?;
        let (s, e) = info.data_offsets;
        let range = data_start + s..data_start + e;
        let t = Tensor::from_mmap(map.clone(), range, dtype, shape)
            .map_err(|e| Error::bad_file(path, format!("tensor `{name}`: {e}")))?;
        tensors.insert(name, t);
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(Checkpoint { path: path.to_path_buf(), format: FileFormat::Safetensors, tensors, metadata })
}

/// Reads a model folder: the shards named by its `*.safetensors.index.json`, or its single
/// model file.
pub fn read_folder(path: &Path) -> Result<Checkpoint> {
    Err(Error::bad_file(path, "folders are not supported yet"))
}
