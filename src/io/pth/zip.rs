//! The zip container of a `torch.save` checkpoint.
//!
//! The central directory is parsed by the `zip` crate; a member's bytes are then used in place,
//! straight from the memory map. That only works for stored (uncompressed) members, which is
//! what `torch.save` writes: every member's data is aligned for mapping.

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use crate::error::{Error, Result};

/// A torch zip archive over the bytes of a mapped file.
pub(super) struct Archive<'a> {
    path: &'a Path,
    len: usize,
    zip: ZipArchive<Cursor<&'a [u8]>>,
    /// The folder every member lives in (`archive`, or the stem of the file torch saved to).
    prefix: String,
    /// Members already located, by name.
    cache: HashMap<String, Range<usize>>,
}

impl<'a> Archive<'a> {
    /// Reads the central directory and finds the archive's folder prefix.
    pub(super) fn open(path: &'a Path, bytes: &'a [u8]) -> Result<Archive<'a>> {
        let zip = ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| Error::bad_file(path, format!("not a readable zip archive: {e}")))?;
        // torch names the folder after the first member, as its own reader does.
        let first = zip
            .file_names_raw()
            .next()
            .ok_or_else(|| Error::bad_file(path, "zip archive has no members"))?;
        let prefix = match first.iter().position(|&b| b == b'/') {
            Some(n) if n > 0 => String::from_utf8(first[..n].to_vec()).ok(),
            _ => None,
        }
        .ok_or_else(|| {
            Error::bad_file(
                path,
                format!(
                    "zip member `{}` is not inside a folder: not a torch.save checkpoint",
                    String::from_utf8_lossy(first)
                ),
            )
        })?;
        Ok(Archive {
            path,
            len: bytes.len(),
            zip,
            prefix,
            cache: HashMap::new(),
        })
    }

    /// The folder prefix of all members (`<prefix>/data.pkl`).
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The byte range (inside the mapped file) of the stored member `<prefix>/<rel>`, or `None`
    /// when the archive has no such member.
    pub(super) fn member(&mut self, rel: &str) -> Result<Option<Range<usize>>> {
        let name = format!("{}/{rel}", self.prefix);
        if let Some(r) = self.cache.get(&name) {
            return Ok(Some(r.clone()));
        }
        let Some(index) = self.zip.index_for_name(&name) else {
            return Ok(None);
        };
        let path = self.path;
        let bad = |what: String| Error::bad_file(path, format!("zip member `{name}` {what}"));
        let file = self
            .zip
            .by_index_raw(index)
            .map_err(|e| bad(format!("has an unreadable header: {e}")))?;
        if file.encrypted() {
            return Err(bad("is encrypted".into()));
        }
        if file.compression() != CompressionMethod::Stored {
            return Err(bad(format!(
                "is compressed ({}); only stored members can be memory-mapped, as torch.save writes them",
                file.compression()
            )));
        }
        if file.size() != file.compressed_size() {
            return Err(bad(format!(
                "is stored but declares {} bytes and occupies {}",
                file.size(),
                file.compressed_size()
            )));
        }
        let start = file
            .data_start()
            .ok_or_else(|| bad("has no known data offset".into()))?;
        let end = start
            .checked_add(file.size())
            .filter(|&e| e <= self.len as u64)
            .ok_or_else(|| {
                bad(format!(
                    "has {} bytes at offset {start}, past the end of the file ({} bytes)",
                    file.size(),
                    self.len
                ))
            })?;
        // Both fit in the file length, hence in usize.
        let range = start as usize..end as usize;
        drop(file);
        self.cache.insert(name, range.clone());
        Ok(Some(range))
    }

    /// Like [`Archive::member`], but a missing member is an error naming `what` needs it.
    pub(super) fn require(&mut self, rel: &str, what: &str) -> Result<Range<usize>> {
        self.member(rel)?.ok_or_else(|| {
            Error::bad_file(
                self.path,
                format!("{what}: zip member `{}/{rel}` is missing", self.prefix),
            )
        })
    }
}
