//! [`TextEncoder`]: tokenizer + encoder behind two caches, so that a prompt (the negative
//! prompt above all) is encoded once per process, and optionally once per machine.
//!
//! - In memory: an LRU of the last contexts, keyed by token ids (prompts that clean to the same
//!   text share an entry).
//! - On disk (optional): one safetensors file per (encoder, token ids), named by a hash of the
//!   encoder's identity ([`file_identity`]), the compute path and the ids. The file's metadata
//!   repeats all three and is checked on reading, so a hash collision or a stale file is a miss,
//!   never a wrong embedding. Files are written atomically; an unreadable one is a miss and is
//!   rewritten.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Tokenized, Umt5Encoder, Umt5Tokenizer};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::ops::activation_dtype;
use crate::tensor::{DType, Tensor};

/// Contexts kept in memory by default (each at most `text_len × dim` f32: 8 MiB for umt5-xxl).
const DEFAULT_MEMORY_ENTRIES: usize = 32;
/// Bytes hashed at each end of an encoder file by [`file_identity`].
const IDENTITY_SPAN: u64 = 1 << 20;
/// Names the layout of cache files and how their values were computed; a different backend
/// or precision must use another tag.
const CACHE_TAG: &str = "wanrt-t5-cache-v1/cpu-f32";

/// A prompt's text embedding.
#[derive(Debug, Clone)]
pub struct TextEmbedding {
    /// The encoder output trimmed to the prompt's tokens, `[L, dim]` f32: a context
    /// [`crate::model::dit::WanDit`] takes.
    pub context: Tensor,
    /// The cleaned prompt and its ids; [`Tokenized::truncated`] tells whether it was cut to
    /// `text_len` tokens.
    pub tokens: Tokenized,
}

/// What the caches of a [`TextEncoder`] did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Contexts served from memory.
    pub memory_hits: u64,
    /// Contexts read from the disk cache.
    pub disk_hits: u64,
    /// Contexts computed by the encoder.
    pub encoded: u64,
    /// Disk cache files that could not be written (the context was still returned).
    pub disk_errors: u64,
    /// The last of those errors.
    pub last_disk_error: Option<String>,
}

/// The LRU of contexts by token ids.
#[derive(Debug, Default)]
struct Memory {
    capacity: usize,
    clock: u64,
    entries: HashMap<Vec<u32>, (Tensor, u64)>,
}

impl Memory {
    fn get(&mut self, ids: &[u32]) -> Option<Tensor> {
        self.clock += 1;
        let (t, used) = self.entries.get_mut(ids)?;
        *used = self.clock;
        Some(t.clone())
    }

    fn insert(&mut self, ids: &[u32], t: &Tensor) {
        if self.capacity == 0 {
            return;
        }
        self.clock += 1;
        self.entries.insert(ids.to_vec(), (t.clone(), self.clock));
        self.evict();
    }

    /// Drops the least recently used entries beyond the capacity.
    fn evict(&mut self) {
        while self.entries.len() > self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
                .expect("over capacity, so not empty");
            self.entries.remove(&oldest);
        }
    }
}

/// Prompt → text embedding: Wan's cleaning, the tokenizer, the UMT5 encoder, and the caches.
/// Safe to share between threads (two threads asking for the same new prompt at once may both
/// encode it).
#[derive(Debug)]
pub struct TextEncoder {
    tokenizer: Umt5Tokenizer,
    encoder: Umt5Encoder,
    identity: Option<String>,
    /// Where the encoder runs.
    device: Device,
    disk: Option<PathBuf>,
    memory: Mutex<Memory>,
    stats: Mutex<CacheStats>,
}

impl TextEncoder {
    /// Pairs a tokenizer with an encoder (the tokenizer takes the encoder's `text_len`), with
    /// an in-memory cache of 32 contexts and no disk cache. Fails when
    /// the tokenizer can produce ids the encoder has no embedding for.
    pub fn new(tokenizer: Umt5Tokenizer, encoder: Umt5Encoder) -> Result<TextEncoder> {
        let cfg = encoder.config();
        if tokenizer.vocab_size() > cfg.vocab {
            return Err(Error::InvalidConfig(format!(
                "the tokenizer has {} tokens but the UMT5 encoder only {} embeddings",
                tokenizer.vocab_size(),
                cfg.vocab
            )));
        }
        let tokenizer = tokenizer.with_text_len(cfg.text_len)?;
        Ok(TextEncoder {
            tokenizer,
            encoder,
            identity: None,
            device: Device::Cpu,
            disk: None,
            memory: Mutex::new(Memory {
                capacity: DEFAULT_MEMORY_ENTRIES,
                ..Memory::default()
            }),
            stats: Mutex::new(CacheStats::default()),
        })
    }

    /// Opens the encoder checkpoint `t5` (any layout [`Umt5Encoder::open`] reads, config
    /// overridden by `config_json`) and `tokenizer_json`; the encoder's identity for the disk
    /// cache is [`file_identity`] of `t5`.
    pub fn open(
        t5: impl AsRef<Path>,
        config_json: Option<&Path>,
        tokenizer_json: impl AsRef<Path>,
    ) -> Result<TextEncoder> {
        let t5 = t5.as_ref();
        let encoder = Umt5Encoder::open(t5, config_json)?;
        let tokenizer = Umt5Tokenizer::from_file(tokenizer_json)?;
        Ok(TextEncoder::new(tokenizer, encoder)?.with_identity(file_identity(t5)?))
    }

    /// Runs the encoder on `device` (its weights moved there in their stored dtypes; e.g. CUDA
    /// for T5 in bf16 while the DiT runs elsewhere). Contexts still come back as host f32
    /// `[L, dim]` (one device-to-host copy per newly encoded prompt, which the caches then
    /// hold), and the disk cache keys on the device's activation dtype too, so bf16 contexts
    /// and f32 ones are never mixed.
    pub fn to_device(mut self, device: Device) -> Result<TextEncoder> {
        self.encoder = self.encoder.to_device(device)?;
        self.device = device;
        Ok(self)
    }

    /// Where the encoder runs ([`TextEncoder::to_device`]).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Names the encoder's weights for the disk cache (any string that changes when the
    /// weights change; [`file_identity`] of the checkpoint is what [`TextEncoder::open`] uses).
    pub fn with_identity(mut self, identity: impl Into<String>) -> TextEncoder {
        self.identity = Some(identity.into());
        self
    }

    /// Keeps the last `entries` contexts in memory (0: no memory cache).
    pub fn with_memory_capacity(self, entries: usize) -> TextEncoder {
        {
            let mut m = self.lock_memory();
            m.capacity = entries;
            m.evict();
        }
        self
    }

    /// Also caches contexts as files in `dir` (created if missing). Needs an identity
    /// ([`TextEncoder::open`] or [`TextEncoder::with_identity`]).
    pub fn with_disk_cache(mut self, dir: impl Into<PathBuf>) -> Result<TextEncoder> {
        if self.identity.is_none() {
            return Err(Error::InvalidArgument(
                "a disk cache needs the encoder's identity: use TextEncoder::open or \
                 TextEncoder::with_identity"
                    .into(),
            ));
        }
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        self.disk = Some(dir);
        Ok(self)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Umt5Tokenizer {
        &self.tokenizer
    }

    /// The encoder.
    pub fn encoder(&self) -> &Umt5Encoder {
        &self.encoder
    }

    /// What the caches did so far.
    pub fn stats(&self) -> CacheStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Cleans and tokenizes `prompt` and returns its embedding, from a cache when possible.
    /// An empty prompt is `</s>` alone (a one-row context), as upstream encodes it.
    pub fn encode(&self, prompt: &str) -> Result<TextEmbedding> {
        let tokens = self.tokenizer.tokenize(prompt)?;
        let context = self.encode_ids(&tokens.ids)?;
        Ok(TextEmbedding { context, tokens })
    }

    /// The context `[L, dim]` of token ids (unpadded, `</s>` last), from a cache when possible.
    pub fn encode_ids(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(t) = self.lock_memory().get(ids) {
            self.update(|s| s.memory_hits += 1);
            return Ok(t);
        }
        let file = self.disk_file(ids);
        if let Some(t) = file.as_ref().and_then(|f| self.read_disk(f, ids)) {
            self.lock_memory().insert(ids, &t);
            self.update(|s| s.disk_hits += 1);
            return Ok(t);
        }
        let t = self
            .encoder
            .encode(&[ids])?
            .pop()
            .expect("one context per prompt")
            .to_device(Device::Cpu)?
            .to_dtype(DType::F32)?;
        self.update(|s| s.encoded += 1);
        if let Some(f) = &file {
            if let Err(e) = self.write_disk(f, ids, &t) {
                self.update(|s| {
                    s.disk_errors += 1;
                    s.last_disk_error = Some(e.to_string());
                });
            }
        }
        self.lock_memory().insert(ids, &t);
        Ok(t)
    }

    fn lock_memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut CacheStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The metadata a cache file of `ids` must carry.
    fn disk_metadata(&self, ids: &[u32]) -> BTreeMap<String, String> {
        let ids_text = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let mut meta = BTreeMap::from([
            ("cache".to_string(), CACHE_TAG.to_string()),
            (
                "encoder".to_string(),
                self.identity.clone().unwrap_or_default(),
            ),
            ("ids".to_string(), ids_text),
        ]);
        if let Some(compute) = self.compute_tag() {
            meta.insert("compute".to_string(), compute);
        }
        meta
    }

    /// The encoder's activation dtype when it is not f32 (absent for the CPU, so the files of
    /// CPU encodes keep their names and metadata).
    fn compute_tag(&self) -> Option<String> {
        let dtype = activation_dtype(self.device);
        (dtype != DType::F32).then(|| format!("{dtype:?}"))
    }

    fn disk_file(&self, ids: &[u32]) -> Option<PathBuf> {
        let (dir, identity) = (self.disk.as_ref()?, self.identity.as_ref()?);
        let mut h = Fnv::new();
        h.write(CACHE_TAG.as_bytes());
        h.write(&[0xff]);
        h.write(identity.as_bytes());
        h.write(&[0xff]);
        if let Some(compute) = self.compute_tag() {
            h.write(compute.as_bytes());
            h.write(&[0xff]);
        }
        ids.iter().for_each(|id| h.write(&id.to_le_bytes()));
        Some(dir.join(format!("t5-{:016x}.safetensors", h.finish())))
    }

    /// The cached context in `file`, if it is there, readable and made for these ids.
    fn read_disk(&self, file: &Path, ids: &[u32]) -> Option<Tensor> {
        if !file.is_file() {
            return None;
        }
        let ckpt = crate::io::safetensors::read_file(file).ok()?;
        if ckpt.metadata != self.disk_metadata(ids) {
            return None;
        }
        let t = ckpt.tensors.get("context")?;
        let dim = self.encoder.config().dim;
        if t.dims() != [ids.len(), dim] || t.dtype() != DType::F32 {
            return None;
        }
        // Owned, so the cache file may be replaced while the context is in use.
        Tensor::from_f32(t.to_f32_vec().ok()?, [ids.len(), dim]).ok()
    }

    fn write_disk(&self, file: &Path, ids: &[u32], t: &Tensor) -> Result<()> {
        crate::io::safetensors::write_file(file, &[("context", t)], &self.disk_metadata(ids))
    }
}

/// An identity of the weights at `path` (a file, or a folder of shards) for the disk cache:
/// the total size and a 64-bit FNV-1a hash of each file's size and first and last MiB (and, in
/// a folder, its name).
///
/// It depends on the content, not the path or modification time, so a moved or copied
/// checkpoint keeps its cached embeddings; reading 2 MiB per file costs milliseconds. Two
/// checkpoints of equal size that agree in their first and last MiB would share entries: the
/// first MiB holds the safetensors header or the `.pth` pickle plus the first weights, the last
/// MiB the last weights (the final norm), so any retraining of the encoder changes it.
pub fn file_identity(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            let p = entry.map_err(|e| Error::io(path, e))?.path();
            if p.is_file() {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut h = Fnv::new();
    let mut total = 0u64;
    for f in &files {
        if meta.is_dir() {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            h.write(name.unwrap_or_default().as_bytes());
        }
        let mut file = crate::io::input::open_regular(f)?;
        let size = file.metadata().map_err(|e| Error::io(f, e))?.len();
        total += size;
        h.write(&size.to_le_bytes());
        let head_len = size.min(IDENTITY_SPAN);
        let tail_start = size.saturating_sub(IDENTITY_SPAN).max(head_len);
        let mut buf = vec![0u8; head_len as usize];
        file.read_exact(&mut buf).map_err(|e| Error::io(f, e))?;
        h.write(&buf);
        buf.resize((size - tail_start) as usize, 0);
        file.seek(SeekFrom::Start(tail_start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| Error::io(f, e))?;
        h.write(&buf);
    }
    Ok(format!("{total}-{:016x}", h.finish()))
}

/// 64-bit FNV-1a: stable across platforms and Rust versions, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
