//! Model files: reading safetensors and PyTorch `.pth` checkpoints, recognising key layouts and
//! renaming them to the canonical (original Wan) names, and inferring model configs.
//!
//! [`open`] reads any supported file (or a sharded safetensors folder) into a [`Checkpoint`]:
//! every tensor under the name it has in the file, borrowing its bytes from a memory map.

pub mod atomic;
pub mod config;
pub mod describe;
pub mod input;
pub mod layout;
pub mod pth;
pub mod safetensors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The container format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// A `.safetensors` file.
    Safetensors,
    /// A folder of safetensors shards with a `*.safetensors.index.json` weight map.
    ShardedSafetensors,
    /// A PyTorch zip checkpoint (`torch.save`), read through a restricted unpickler.
    Pth,
}

impl std::fmt::Display for FileFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileFormat::Safetensors => "safetensors",
            FileFormat::ShardedSafetensors => "sharded safetensors",
            FileFormat::Pth => "pytorch .pth",
        })
    }
}

/// Every tensor of one checkpoint, under the names it has in the file.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The file or folder it was read from.
    pub path: PathBuf,
    /// The container format.
    pub format: FileFormat,
    /// The tensors, by stored name.
    pub tensors: BTreeMap<String, Tensor>,
    /// The safetensors `__metadata__` (empty for other formats).
    pub metadata: BTreeMap<String, String>,
}

/// Reads a checkpoint: a safetensors file, a PyTorch `.pth` zip, a `*.safetensors.index.json`
/// (the sharded model it describes), or a folder holding either an index with its shards or
/// exactly one model file.
pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return safetensors::read_folder(path);
    }
    if safetensors::is_index(path) {
        return safetensors::read_index(path);
    }
    let mut magic = [0u8; 4];
    {
        use std::io::Read;
        let mut f = input::open_regular(path)?;
        let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
        if n < 4 {
            return Err(Error::bad_file(
                path,
                format!("file is {n} bytes long, too short for any model format"),
            ));
        }
    }
    if magic == *b"PK\x03\x04" {
        pth::read_file(path)
    } else {
        safetensors::read_file(path)
    }
}
