//! PyTorch `.pth` zip checkpoints (`torch.save` since PyTorch 1.6) through a restricted
//! unpickler.
//!
//! A checkpoint is a zip archive of stored members under one folder: `data.pkl` (the pickled
//! object), `data/<key>` (the raw little-endian bytes of each storage), `byteorder` and a few
//! version files. The pickle is read by an unpickler that executes nothing and knows only the
//! globals of a state dict; the tensors it describes then borrow their bytes straight from the
//! memory-mapped file. Nested dicts (`{"state_dict": {...}}`) are flattened with `.` joins;
//! leaves that are not tensors are skipped.

mod unpickle;
mod zip;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use self::unpickle::{Id, Obj, Pickle, TensorRef};
use self::zip::Archive;
use super::safetensors::map_file;
use super::{Checkpoint, FileFormat};
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

/// Deepest dict nesting that is flattened.
const MAX_DEPTH: usize = 64;

/// Reads a `torch.save` zip checkpoint holding a state dict (possibly nested in dicts).
pub fn read_file(path: &Path) -> Result<Checkpoint> {
    let map = map_file(path)?;
    let mut zip = Archive::open(path, &map[..])?;
    if let Some(r) = zip.member("byteorder")? {
        let order = map[r].trim_ascii();
        if order != b"little" {
            let what = format!(
                "byteorder is `{}`; only little-endian checkpoints are supported",
                String::from_utf8_lossy(&order[..order.len().min(32)])
            );
            return Err(Error::bad_file(path, what));
        }
    }
    let pkl = zip.require("data.pkl", "not a torch.save checkpoint")?;
    let pkl_name = format!("{}/data.pkl", zip.prefix());
    let pickle = unpickle::parse(&map[pkl.clone()], path, &pkl_name)?;
    let mut tensors = BTreeMap::new();
    Flattener {
        path,
        map: &map,
        zip,
        pickle: &pickle,
        // A non-contiguous tensor is copied; all copies together may not exceed the file.
        copy_budget: map.len(),
        // Shared sub-dicts could otherwise expand a small pickle into exponentially many names.
        name_budget: pkl.len().saturating_mul(2).saturating_add(4096),
        tensors: &mut tensors,
    }
    .root(&pkl_name)?;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: FileFormat::Pth,
        tensors,
        metadata: BTreeMap::new(),
    })
}

/// Walks the unpickled dicts and turns their tensors into [`Tensor`]s.
struct Flattener<'a> {
    path: &'a Path,
    map: &'a Arc<memmap2::Mmap>,
    zip: Archive<'a>,
    pickle: &'a Pickle,
    copy_budget: usize,
    name_budget: usize,
    tensors: &'a mut BTreeMap<String, Tensor>,
}

impl Flattener<'_> {
    fn bad(&self, what: String) -> Error {
        Error::bad_file(self.path, what)
    }

    fn root(&mut self, pkl_name: &str) -> Result<()> {
        let root = self.pickle.root;
        match self.pickle.get(root) {
            Obj::Dict(_) => self.dict(root, "", 0),
            other => Err(self.bad(format!(
                "`{pkl_name}` holds a {}, not a dict of tensors",
                other.kind()
            ))),
        }
    }

    fn dict(&mut self, dict: Id, prefix: &str, depth: usize) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(self.bad(format!(
                "dicts nested more than {MAX_DEPTH} deep at `{prefix}`"
            )));
        }
        let pickle = self.pickle;
        let Obj::Dict(items) = pickle.get(dict) else {
            return Ok(());
        };
        for &(k, v) in items {
            self.charge(1)?;
            let value = pickle.get(v);
            if !matches!(value, Obj::Tensor(_) | Obj::Dict(_)) {
                continue;
            }
            let key = match pickle.get(k) {
                Obj::Str(s) => s.clone(),
                Obj::Int(i) => i.to_string(),
                other => {
                    let place = if prefix.is_empty() {
                        "the top-level dict".to_string()
                    } else {
                        format!("the dict `{prefix}`")
                    };
                    return Err(self.bad(format!("{place} has a {} key", other.kind())));
                }
            };
            let name = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            self.charge(name.len())?;
            match value {
                Obj::Tensor(t) => {
                    let tensor = self.tensor(t, &name)?;
                    if self.tensors.insert(name.clone(), tensor).is_some() {
                        return Err(self.bad(format!("duplicate tensor name `{name}`")));
                    }
                }
                _ => self.dict(v, &name, depth + 1)?,
            }
        }
        Ok(())
    }

    fn charge(&mut self, n: usize) -> Result<()> {
        self.name_budget = self.name_budget.checked_sub(n).ok_or_else(|| {
            self.bad("nested dicts expand to far more entries than the pickle holds (a dict shared many times?)".into())
        })?;
        Ok(())
    }

    /// Builds the tensor `_rebuild_tensor_v2` describes: a view of the storage's zip member when
    /// it is contiguous, a copy otherwise. Every index is checked to stay inside the storage.
    fn tensor(&mut self, t: &TensorRef, name: &str) -> Result<Tensor> {
        let pickle = self.pickle;
        let Obj::Storage(s) = pickle.get(t.storage) else {
            return Err(self.bad(format!("tensor `{name}` has no storage")));
        };
        let key = match pickle.get(s.key) {
            Obj::Str(k) => k.as_str(),
            _ => "",
        };
        let member = format!("data/{key}");
        let range = self
            .zip
            .require(&member, &format!("tensor `{name}`: storage `{key}`"))?;
        let es = s.dtype.size_in_bytes();
        let need = s.numel.checked_mul(es).filter(|&n| n <= range.len()).ok_or_else(|| {
            self.bad(format!(
                "tensor `{name}`: storage `{key}` declares {} elements of {} but zip member `{}/{member}` holds {} bytes",
                s.numel,
                s.dtype,
                self.zip.prefix(),
                range.len()
            ))
        })?;
        let storage = &self.map[range.start..range.start + need];
        let shape =
            Shape::new(t.size.clone()).map_err(|e| self.bad(format!("tensor `{name}`: {e}")))?;
        let numel = shape.elem_count();
        let bytes = numel
            .checked_mul(es)
            .ok_or_else(|| self.bad(format!("tensor `{name}`: size {shape} too large")))?;
        if numel == 0 {
            return Tensor::from_bytes(Vec::new(), s.dtype, shape);
        }
        // The last element the view reaches; dims of size 1 never move the index.
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .filter(|(&n, _)| n > 1)
            .try_fold(t.offset, |acc, (&n, &st)| {
                (n - 1).checked_mul(st)?.checked_add(acc)
            });
        if last.is_none_or(|last| last >= s.numel) {
            return Err(self.bad(format!(
                "tensor `{name}`: offset {}, size {:?}, stride {:?} reach past the {} elements of storage `{key}`",
                t.offset, t.size, t.stride, s.numel
            )));
        }
        if is_contiguous(&t.size, &t.stride) {
            let start = range.start + t.offset * es;
            return Tensor::from_mmap(self.map.clone(), start..start + bytes, s.dtype, shape);
        }
        self.copy_budget = self.copy_budget.checked_sub(bytes).ok_or_else(|| {
            self.bad(format!(
                "tensor `{name}`: the strided view (size {:?}, stride {:?}) would copy {bytes} bytes, more than the file justifies",
                t.size, t.stride
            ))
        })?;
        let mut out = Vec::with_capacity(bytes);
        gather(storage, es, t, &mut out);
        Tensor::from_bytes(out, s.dtype, shape)
    }
}

/// True when `stride` is the row-major stride of `size` (dims of size 1 may have any stride).
fn is_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&n, &st) in size.iter().zip(stride).rev() {
        if n != 1 && st != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

/// Appends the elements of a strided view of `storage` (elements of `es` bytes) in row-major
/// order. The caller has checked that every index stays below the storage's element count and
/// that the view has elements.
fn gather(storage: &[u8], es: usize, t: &TensorRef, out: &mut Vec<u8>) {
    // Dims of size 1 do not move the index; dropping them also keeps every `n * stride` below
    // twice the storage length.
    let dims: Vec<(usize, usize)> = t
        .size
        .iter()
        .copied()
        .zip(t.stride.iter().copied())
        .filter(|&(n, _)| n > 1)
        .collect();
    let Some((&(inner_n, inner_st), outer)) = dims.split_last() else {
        out.extend_from_slice(&storage[t.offset * es..][..es]);
        return;
    };
    let mut idx = vec![0usize; outer.len()];
    let mut base = t.offset;
    loop {
        for j in 0..inner_n {
            let e = (base + j * inner_st) * es;
            out.extend_from_slice(&storage[e..e + es]);
        }
        // Advance the outer index like an odometer.
        let mut d = outer.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            let (n, st) = outer[d];
            idx[d] += 1;
            base += st;
            if idx[d] < n {
                break;
            }
            idx[d] = 0;
            base -= n * st;
        }
    }
}
