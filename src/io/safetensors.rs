//! safetensors files and sharded safetensors folders, memory-mapped and zero-copy; writing
//! safetensors files atomically.
//!
//! A file is `u64 LE header length | JSON header | tensor data`. The header maps each tensor name
//! to `{dtype, shape, data_offsets}` (offsets relative to the data section) plus an optional
//! `__metadata__` string map. Every field is checked before a tensor is built: the header length
//! against the file size (before anything is allocated), duplicate keys (which a plain serde map
//! silently merges), the metadata type, the dtype names, `dtype × shape = byte length` without
//! overflow, and offsets that tile the data section exactly (no overlap, gap, or byte outside).
//! The work per header is bounded: at most [`MAX_TENSORS`] tensors of at most [`MAX_RANK`]
//! dimensions, refused while parsing. Errors name the file, the tensor and the file byte. The `safetensors` crate's own checks then
//! run as a second gate; tensors borrow their bytes from one shared memory map.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::{Checkpoint, FileFormat};
use crate::error::{Error, Result};
use crate::tensor::{checked_product, DType, Shape, Tensor};

/// Bytes of the little-endian header length that starts every file.
const LEN_BYTES: usize = 8;
/// The largest header the format allows (the limit of the reference implementation).
const MAX_HEADER: u64 = 100_000_000;
/// The most tensors a header may describe, and the most entries of its `__metadata__` or of a
/// weight map. The largest Wan files (a 14B DiT in scaled fp8, a LoRA with full deltas) hold a
/// few thousand tensors; the limit bounds the time and memory a hostile header of millions of
/// empty tensors or metadata entries could cost.
pub const MAX_TENSORS: usize = 65_536;
/// The most dimensions a tensor's shape may have (Wan's weights have at most 5).
pub const MAX_RANK: usize = 16;
/// The key of the free-form string metadata in a header.
const METADATA_KEY: &str = "__metadata__";
/// The suffix of the weight map of a sharded folder.
const INDEX_SUFFIX: &str = ".safetensors.index.json";

/// Maps a file read-only (it must be a regular file). The map is shared by all tensors of the
/// file.
pub(crate) fn map_file(path: &Path) -> Result<Arc<memmap2::Mmap>> {
    let file = super::input::open_regular(path)?;
    // SAFETY: the map is read-only. Model files are not expected to change while loaded; if
    // another process truncates one, reads may fault, as with every mmap-based loader.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(map))
}

/// Reads one safetensors file; every tensor borrows its bytes from a memory map of the file.
pub fn read_file(path: &Path) -> Result<Checkpoint> {
    let map = map_file(path)?;
    let file_len = map.len();
    let Some(len_bytes) = map.get(..LEN_BYTES) else {
        return Err(Error::bad_file(
            path,
            format!("file is {file_len} bytes long, shorter than the 8-byte header length of a safetensors file"),
        ));
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    let room = (file_len - LEN_BYTES) as u64;
    if header_len > room {
        return Err(Error::bad_file(
            path,
            format!("header length {header_len} (file bytes 0..8) runs past the end of the file: only {room} bytes follow"),
        ));
    }
    if header_len > MAX_HEADER {
        return Err(Error::bad_file(
            path,
            format!("header length {header_len} (file bytes 0..8) exceeds the format's limit of {MAX_HEADER} bytes"),
        ));
    }
    let data_start = LEN_BYTES + header_len as usize;
    let header = parse_header(path, &map[LEN_BYTES..data_start])?;
    check_layout(path, &header.tensors, data_start, file_len)?;
    // Our checks are a superset of the reference implementation's; running it as well keeps
    // the two from drifting apart should the format gain a rule.
    ::safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
        Error::bad_file(
            path,
            format!("rejected by the safetensors reference checks: {e}"),
        )
    })?;
    let mut tensors = BTreeMap::new();
    for (name, info) in header.tensors {
        let (s, e) = info.data_offsets;
        let shape = Shape::new(info.shape).map_err(|e| tensor_error(path, &name, e))?;
        let t = Tensor::from_mmap(
            map.clone(),
            data_start + s..data_start + e,
            info.dtype,
            shape,
        )
        .map_err(|e| tensor_error(path, &name, e))?;
        tensors.insert(name, t);
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: FileFormat::Safetensors,
        tensors,
        metadata: header.metadata,
    })
}

fn tensor_error(path: &Path, name: &str, e: Error) -> Error {
    Error::bad_file(path, format!("tensor `{name}`: {e}"))
}

/// A parsed header: the tensors by name and the metadata.
#[derive(Default)]
struct Header {
    tensors: BTreeMap<String, Info>,
    metadata: BTreeMap<String, String>,
}

/// One tensor entry of a header.
struct Info {
    dtype: DType,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// A tensor entry as written; the dtype is resolved after parsing so that an unknown one can be
/// reported with the tensor's name.
#[derive(Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Dims,
    data_offsets: (usize, usize),
}

/// A shape of at most [`MAX_RANK`] dimensions, refused as soon as it runs longer.
struct Dims(Vec<usize>);

impl<'de> Deserialize<'de> for Dims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(DimsVisitor)
    }
}

struct DimsVisitor;

impl<'de> Visitor<'de> for DimsVisitor {
    type Value = Dims;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a shape: an array of at most {MAX_RANK} sizes")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Dims, A::Error> {
        let mut dims = Vec::new();
        while let Some(d) = seq.next_element()? {
            if dims.len() == MAX_RANK {
                return Err(de::Error::custom(format!(
                    "shape has more than {MAX_RANK} dimensions"
                )));
            }
            dims.push(d);
        }
        Ok(Dims(dims))
    }
}

/// Parses the header JSON in one streaming pass (no `serde_json::Value`, nothing allocated
/// beyond what the header's own bytes describe), rejecting duplicate keys.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let mut context = String::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = de
        .deserialize_map(HeaderVisitor {
            context: &mut context,
        })
        .and_then(|h| de.end().map(|()| h));
    parsed.map_err(|e| {
        let pos = format!(" at line {} column {}", e.line(), e.column());
        let msg = e.to_string();
        let msg = msg.strip_suffix(&pos).unwrap_or(&msg);
        let at = LEN_BYTES + byte_of(bytes, e.line(), e.column());
        Error::bad_file(
            path,
            format!("invalid header{context} near file byte {at}: {msg}"),
        )
    })
}

/// The byte index in `text` of serde_json's error position (1-based line and column; the
/// column counts bytes).
fn byte_of(text: &[u8], line: usize, column: usize) -> usize {
    let line_start = match line.checked_sub(2) {
        None => 0,
        Some(n) => text
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .nth(n)
            .map_or(0, |(i, _)| i + 1),
    };
    (line_start + column.saturating_sub(1)).min(text.len())
}

/// Visits the top-level header object; `context` tracks the entry being read so that errors
/// can name it.
struct HeaderVisitor<'a> {
    context: &'a mut String,
}

impl<'de> Visitor<'de> for HeaderVisitor<'_> {
    type Value = Header;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object mapping tensor names to {dtype, shape, data_offsets}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
        let mut header = Header::default();
        let mut seen_metadata = false;
        while let Some(key) = map.next_key::<String>()? {
            let duplicate = if key == METADATA_KEY {
                std::mem::replace(&mut seen_metadata, true)
            } else {
                header.tensors.contains_key(&key)
            };
            if duplicate {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            if key != METADATA_KEY && header.tensors.len() == MAX_TENSORS {
                return Err(de::Error::custom(format!(
                    "more than {MAX_TENSORS} tensors (wanrt's limit per file)"
                )));
            }
            if key == METADATA_KEY {
                *self.context = format!(" in `{METADATA_KEY}`");
                let m: Option<StringMap> = map.next_value()?;
                header.metadata = m.map(|m| m.0).unwrap_or_default();
            } else {
                *self.context = format!(" in tensor `{key}`");
                let raw: RawInfo = map.next_value()?;
                let dtype = DType::from_safetensors_name(&raw.dtype).map_err(|_| {
                    de::Error::custom(match parse_format_dtype(&raw.dtype) {
                        Some(_) => format!("dtype `{}` is not supported by wanrt", raw.dtype),
                        None => format!("unknown dtype `{}`", raw.dtype),
                    })
                })?;
                let info = Info {
                    dtype,
                    shape: raw.shape.0,
                    data_offsets: raw.data_offsets,
                };
                header.tensors.insert(key, info);
            }
            self.context.clear();
        }
        Ok(header)
    }
}

/// A dtype name as the `safetensors` crate knows it (a superset of wanrt's dtypes).
fn parse_format_dtype(name: &str) -> Option<::safetensors::Dtype> {
    use serde::de::IntoDeserializer;
    let de: de::value::StrDeserializer<'_, de::value::Error> = name.into_deserializer();
    ::safetensors::Dtype::deserialize(de).ok()
}

/// The `safetensors` crate's dtype for a wanrt dtype.
fn format_dtype(d: DType) -> ::safetensors::Dtype {
    use ::safetensors::Dtype as S;
    match d {
        DType::Bool => S::BOOL,
        DType::U8 => S::U8,
        DType::I8 => S::I8,
        DType::I16 => S::I16,
        DType::I32 => S::I32,
        DType::I64 => S::I64,
        DType::F16 => S::F16,
        DType::BF16 => S::BF16,
        DType::F32 => S::F32,
        DType::F64 => S::F64,
        DType::F8E4M3 => S::F8_E4M3,
        DType::F8E5M2 => S::F8_E5M2,
    }
}

/// A JSON object of strings to strings that rejects duplicate keys.
struct StringMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(StringMapVisitor)
    }
}

struct StringMapVisitor;

impl<'de> Visitor<'de> for StringMapVisitor {
    type Value = StringMap;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of strings to strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((k, v)) = map.next_entry::<String, String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key `{k}`")));
            }
            if out.len() == MAX_TENSORS {
                return Err(de::Error::custom(format!(
                    "more than {MAX_TENSORS} entries (wanrt's limit)"
                )));
            }
            out.insert(k, v);
        }
        Ok(StringMap(out))
    }
}

/// Checks that every tensor's byte length matches its dtype and shape and that the tensors tile
/// the data section `data_start..file_len` exactly, in offset order.
fn check_layout(
    path: &Path,
    tensors: &BTreeMap<String, Info>,
    data_start: usize,
    file_len: usize,
) -> Result<()> {
    let data_len = file_len - data_start;
    let mut order: Vec<(&String, &Info)> = tensors.iter().collect();
    order.sort_by_key(|(_, info)| info.data_offsets);
    let mut covered = 0;
    let mut previous: Option<&str> = None;
    for (name, info) in order {
        let fail = |what: String| Err(Error::bad_file(path, format!("tensor `{name}`: {what}")));
        let (s, e) = info.data_offsets;
        if e < s {
            return fail(format!("data_offsets [{s}, {e}] end before they start"));
        }
        let Some(size) =
            checked_product(&info.shape).and_then(|n| n.checked_mul(info.dtype.size_in_bytes()))
        else {
            return fail(format!(
                "shape {:?} of {} overflows: its byte size does not fit in usize",
                info.shape, info.dtype
            ));
        };
        if e - s != size {
            return fail(format!(
                "{} × shape {:?} is {size} bytes but data_offsets [{s}, {e}] hold {} bytes",
                info.dtype,
                info.shape,
                e - s
            ));
        }
        if e > data_len {
            return fail(format!(
                "data_offsets [{s}, {e}] run past the end of the file (the data section is file bytes {data_start}..{file_len})"
            ));
        }
        let (from, to) = (data_start + s, data_start + e);
        if s < covered {
            let other = previous.unwrap_or_default();
            return fail(format!(
                "file bytes {from}..{to} overlap tensor `{other}`, which ends at file byte {}",
                data_start + covered
            ));
        }
        if s > covered {
            return fail(format!(
                "gap before it: file bytes {}..{from} belong to no tensor",
                data_start + covered
            ));
        }
        covered = e;
        previous = Some(name);
    }
    if covered != data_len {
        return Err(Error::bad_file(
            path,
            format!(
                "file bytes {}..{file_len} after the last tensor belong to no tensor",
                data_start + covered
            ),
        ));
    }
    Ok(())
}

/// Reads a model folder: the shards named by its `*.safetensors.index.json` (format
/// [`FileFormat::ShardedSafetensors`]), or, without an index, its single `*.safetensors` or
/// `*.pth` file.
///
/// The index's `weight_map` must name plain file names inside the folder that all exist, and
/// must agree exactly with the shards: every listed tensor in the shard it is mapped to, no
/// tensor in two shards, no tensor that the index does not list.
pub fn read_folder(path: &Path) -> Result<Checkpoint> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Err(Error::bad_file(path, "is not a folder"));
    }
    let mut indexes = Vec::new();
    let mut models = Vec::new();
    let mut others = Vec::new();
    for entry in fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let file = entry.path();
        if !file.is_file() {
            others.push(name);
        } else if name.ends_with(INDEX_SUFFIX) {
            indexes.push(file);
        } else if name.ends_with(".safetensors") || name.ends_with(".pth") {
            models.push(file);
        } else {
            others.push(name);
        }
    }
    indexes.sort();
    models.sort();
    match (indexes.as_slice(), models.as_slice()) {
        ([index], _) => read_sharded(path, index),
        ([], [model]) => super::open(model),
        ([], []) => {
            others.sort();
            Err(Error::bad_file(
                path,
                format!(
                    "no model file in the folder (looked for *{INDEX_SUFFIX}, *.safetensors, *.pth); found: {}",
                    if others.is_empty() { "nothing".to_string() } else { others.join(", ") }
                ),
            ))
        }
        ([], _) => Err(Error::bad_file(
            path,
            format!(
                "several model files and no *{INDEX_SUFFIX}; pass one of: {}",
                file_names(&models)
            ),
        )),
        _ => Err(Error::bad_file(
            path,
            format!("several weight-map indexes: {}", file_names(&indexes)),
        )),
    }
}

/// Reads the sharded model a `*.safetensors.index.json` describes: its shards, in its folder,
/// checked as [`read_folder`] checks them.
pub fn read_index(index: &Path) -> Result<Checkpoint> {
    let dir = match index.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    read_sharded(dir, index)
}

/// Whether `path` names an index (`*.safetensors.index.json`).
pub fn is_index(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(INDEX_SUFFIX))
}

/// Which shard of how many `path` names, for the files of a sharded model
/// (`…-00001-of-00002.safetensors`: `Some((1, 2))`); `None` for any other name, a shard
/// number outside `1..=total` or a total below 2.
pub fn shard_position(path: &Path) -> Option<(usize, usize)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".safetensors")?;
    let (rest, total) = name.rsplit_once("-of-")?;
    let (_, index) = rest.rsplit_once('-')?;
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<usize>().ok())
            .flatten()
    };
    let (index, total) = (number(index)?, number(total)?);
    (total >= 2 && (1..=total).contains(&index)).then_some((index, total))
}

fn file_names(paths: &[PathBuf]) -> String {
    let names: Vec<_> = paths
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy())
        .collect();
    names.join(", ")
}

/// The part of a `*.safetensors.index.json` that wanrt reads (its `metadata` is ignored).
#[derive(Deserialize)]
struct Index {
    weight_map: StringMap,
}

fn read_sharded(dir: &Path, index_path: &Path) -> Result<Checkpoint> {
    let bad = |what: String| Error::bad_file(index_path, what);
    let text =
        super::input::read_capped(index_path, super::input::INDEX_LIMIT, "weight-map index")?;
    let index: Index =
        serde_json::from_slice(&text).map_err(|e| bad(format!("invalid index: {e}")))?;
    let weight_map = index.weight_map.0;
    if weight_map.is_empty() {
        return Err(bad("weight_map lists no tensors".into()));
    }
    // Shard file name -> the first tensor mapped to it (for messages).
    let mut shards: BTreeMap<&str, &str> = BTreeMap::new();
    for (tensor, shard) in &weight_map {
        let mut parts = Path::new(shard).components();
        let plain = matches!((parts.next(), parts.next()), (Some(Component::Normal(c)), None) if c == shard.as_str())
            && !shard.contains('\\');
        if !plain {
            return Err(bad(format!(
                "weight_map maps tensor `{tensor}` to `{shard}`, which is not a plain file name inside the folder"
            )));
        }
        shards.entry(shard).or_insert(tensor);
    }
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (&shard, &example) in &shards {
        let shard_path = dir.join(shard);
        if !shard_path.is_file() {
            return Err(bad(format!(
                "shard `{shard}` (holding tensor `{example}` among others) is not in the folder"
            )));
        }
        let ck = read_file(&shard_path)?;
        for (name, t) in ck.tensors {
            if tensors.contains_key(&name) {
                // It came from the shard the weight map names (checked below when it was added).
                let first = &weight_map[&name];
                return Err(bad(format!(
                    "tensor `{name}` appears in two shards: `{first}` and `{shard}`"
                )));
            }
            match weight_map.get(&name) {
                Some(mapped) if mapped == shard => {}
                Some(mapped) => {
                    return Err(bad(format!(
                        "tensor `{name}` is in shard `{shard}` but the weight_map maps it to `{mapped}`"
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "shard `{shard}` holds tensor `{name}`, which the weight_map does not list"
                    )))
                }
            }
            tensors.insert(name, t);
        }
        for (k, v) in ck.metadata {
            metadata.entry(k).or_insert(v);
        }
    }
    if let Some((name, shard)) = weight_map
        .iter()
        .find(|(name, _)| !tensors.contains_key(*name))
    {
        return Err(bad(format!(
            "tensor `{name}` is mapped to shard `{shard}`, which does not contain it"
        )));
    }
    Ok(Checkpoint {
        path: dir.to_path_buf(),
        format: FileFormat::ShardedSafetensors,
        tensors,
        metadata,
    })
}

/// Writes `tensors` and `metadata` as a safetensors file, atomically: the bytes go to a
/// temporary file in the same folder, which is synced and then renamed over `path`, so readers
/// (and memory maps of an older version) never see a partial file.
///
/// The layout is the one the Python writer produces: `__metadata__` first (omitted when empty),
/// tensors ordered by decreasing dtype alignment, then by name (so every tensor stays aligned to
/// its element size), and the header padded with spaces to a multiple of 8 bytes. Files without
/// metadata (or with one key) are byte-identical to what the Python writer produces.
pub fn write_file(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(name, t)| TensorSpec {
            name: name.to_string(),
            dtype: t.dtype(),
            dims: t.dims().to_vec(),
        })
        .collect();
    write_file_with(path, &specs, metadata, |put| {
        tensors.iter().try_for_each(|(name, t)| put(name, t))
    })
}

/// The name, dtype and shape of a tensor that [`write_file_with`] will write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name in the file.
    pub name: String,
    /// Its dtype.
    pub dtype: DType,
    /// Its shape.
    pub dims: Vec<usize>,
}

/// Writes a safetensors file whose tensors are produced one at a time, so that only the tensor
/// being produced needs to be in memory. The header is laid out from `specs` exactly as
/// [`write_file`] lays it out; then `produce` passes every tensor to `put` once, in any order,
/// and `put` checks it against its spec and writes it at its offset. Atomic as [`write_file`]:
/// on any error (from `produce`, a tensor unknown, repeated or unlike its spec, or one never
/// put) no file appears and an existing one is untouched.
pub fn write_file_with<F>(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    produce: F,
) -> Result<()>
where
    F: FnOnce(&mut dyn FnMut(&str, &Tensor) -> Result<()>) -> Result<()>,
{
    let mut order: Vec<&TensorSpec> = specs.iter().collect();
    // The reference writer's order: its dtype enum is declared by increasing alignment.
    order.sort_by(|a, b| {
        format_dtype(b.dtype)
            .cmp(&format_dtype(a.dtype))
            .then(a.name.cmp(&b.name))
    });
    if let Some(w) = order.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(Error::InvalidArgument(format!(
            "write_file: tensor `{}` given twice",
            w[0].name
        )));
    }
    if order.iter().any(|t| t.name == METADATA_KEY) {
        return Err(Error::InvalidArgument(format!(
            "write_file: `{METADATA_KEY}` is not a tensor name"
        )));
    }
    let mut entries = Vec::with_capacity(order.len());
    let mut offset = 0;
    for t in &order {
        let len = checked_product(&t.dims)
            .and_then(|n| n.checked_mul(t.dtype.size_in_bytes()))
            .ok_or_else(|| Error::ShapeOverflow(t.dims.clone()))?;
        entries.push(Entry {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.dims,
            offsets: [offset, offset + len],
        });
        offset += len;
    }
    let mut header = serde_json::to_vec(&HeaderOut {
        metadata,
        entries: &entries,
    })
    .map_err(|e| Error::InvalidArgument(format!("write_file: header: {e}")))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let data_start = (8 + header.len()) as u64;
    let index: BTreeMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name, i))
        .collect();

    super::atomic::write_atomic_file(path, |file| {
        use std::io::{Seek, SeekFrom, Write};
        let io_err = |e| Error::io(path, e);
        file.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io_err)?;
        file.write_all(&header).map_err(io_err)?;
        let mut written = vec![false; entries.len()];
        produce(&mut |name, t| {
            let i = *index.get(name).ok_or_else(|| {
                Error::InvalidArgument(format!("write_file: tensor `{name}` is not in the header"))
            })?;
            let e = &entries[i];
            if written[i] {
                return Err(Error::InvalidArgument(format!(
                    "write_file: tensor `{name}` written twice"
                )));
            }
            if t.dtype() != e.dtype || t.dims() != e.shape {
                return Err(Error::InvalidArgument(format!(
                    "write_file: tensor `{name}` is {} {:?}, but the header says {} {:?}",
                    t.dtype(),
                    t.dims(),
                    e.dtype,
                    e.shape
                )));
            }
            file.seek(SeekFrom::Start(data_start + e.offsets[0] as u64))
                .map_err(io_err)?;
            file.write_all(t.raw_bytes()?).map_err(io_err)?;
            written[i] = true;
            Ok(())
        })?;
        match written.iter().position(|w| !w) {
            Some(i) => Err(Error::InvalidArgument(format!(
                "write_file: tensor `{}` was never written",
                entries[i].name
            ))),
            None => Ok(()),
        }
    })
}

/// One tensor entry of a header being written.
struct Entry<'a> {
    name: &'a str,
    dtype: DType,
    shape: &'a [usize],
    offsets: [usize; 2],
}

/// The header being written, serialized in file order.
struct HeaderOut<'a> {
    metadata: &'a BTreeMap<String, String>,
    entries: &'a [Entry<'a>],
}

#[derive(Serialize)]
struct InfoOut<'a> {
    dtype: &'static str,
    shape: &'a [usize],
    data_offsets: [usize; 2],
}

impl Serialize for HeaderOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if !self.metadata.is_empty() {
            map.serialize_entry(METADATA_KEY, self.metadata)?;
        }
        for e in self.entries {
            let info = InfoOut {
                dtype: e.dtype.safetensors_name(),
                shape: e.shape,
                data_offsets: e.offsets,
            };
            map.serialize_entry(e.name, &info)?;
        }
        map.end()
    }
}
