//! Opening the files wanrt reads, safely: every reader goes through [`open_regular`] (model
//! files, media, caches) or [`read_capped`] (small text files).
//!
//! A path must name a regular file after following links: a FIFO would block the reader
//! forever and a device such as `/dev/zero` never ends, so both are refused with
//! [`Error::BadFile`] before a byte is read. On Unix the file is opened non-blocking and checked
//! again through its handle, so a path swapped for a FIFO between the two checks cannot block
//! either. Small text files (configs, tokenizers, weight-map indexes) are read with a size cap.

use std::fs::{File, FileType};
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The most bytes of a model's `config.json` (real ones are under 2 KB).
pub const CONFIG_LIMIT: u64 = 1 << 20;
/// The most bytes of a `*.safetensors.index.json` weight map (a 14B model's is about 100 KB).
pub const INDEX_LIMIT: u64 = 16 << 20;
/// The most bytes of a `tokenizer.json` (google/umt5-xxl's is about 16 MB).
pub const TOKENIZER_LIMIT: u64 = 64 << 20;

/// Opens `path` for reading; fails with [`Error::BadFile`] unless it is a regular file after
/// following links (a folder, FIFO, socket or device is refused without blocking).
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    check_regular(path, meta.file_type())?;
    let file = open_nonblocking(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    check_regular(path, meta.file_type())?;
    Ok(file)
}

/// Reads all of the regular file `path`, which may hold at most `limit` bytes; `what` names
/// the kind of file in the error (`"config.json"`). The limit holds even if the file grows
/// while it is read.
pub fn read_capped(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let too_big = |len: u64| {
        Error::bad_file(
            path,
            format!("{len} bytes is more than the {limit}-byte limit for a {what}"),
        )
    };
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > limit {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// As [`read_capped`], for a file that must be UTF-8 text.
pub fn read_text_capped(path: &Path, limit: u64, what: &str) -> Result<String> {
    String::from_utf8(read_capped(path, limit, what)?)
        .map_err(|e| Error::bad_file(path, format!("{what} is not UTF-8 text: {e}")))
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking only affects FIFOs and devices; reads of a regular file are unchanged.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

fn check_regular(path: &Path, kind: FileType) -> Result<()> {
    if kind.is_file() {
        return Ok(());
    }
    Err(Error::bad_file(
        path,
        format!("is {}, not a regular file", kind_name(kind)),
    ))
}

/// "a folder", "a FIFO", … for a file type that is not a regular file.
fn kind_name(kind: FileType) -> &'static str {
    if kind.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    "a special file"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_refused_and_caps_hold() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_regular(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");

        let file = dir.path().join("config.json");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(
            read_capped(&file, 10, "config.json").unwrap(),
            b"0123456789"
        );
        let err = read_capped(&file, 9, "config.json").unwrap_err();
        assert_eq!(err.status(), crate::error::Status::BadFile);
        assert!(
            err.to_string()
                .contains("10 bytes is more than the 9-byte limit for a config.json"),
            "{err}"
        );
        std::fs::write(&file, b"\xff").unwrap();
        let err = read_text_capped(&file, 9, "config.json").unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn devices_and_fifos_are_refused_without_blocking() {
        let err = read_capped(Path::new("/dev/zero"), 1 << 20, "tokenizer.json").unwrap_err();
        assert!(err.to_string().contains("is a device"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.safetensors");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
        let err = open_regular(&fifo).unwrap_err();
        assert_eq!(err.status(), crate::error::Status::BadFile);
        assert!(err.to_string().contains("is a FIFO"), "{err}");
    }
}
