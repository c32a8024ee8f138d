//! Atomic file writes: a file either appears complete at its path or not at all.
//!
//! The bytes go to a hidden temporary file in the destination folder (the same file system, so
//! the final rename is atomic), which is flushed, synced and renamed over the path; the folder is
//! then synced so the rename itself survives a crash. On any error the temporary file is removed
//! and an existing file at the path is left untouched.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Writes a file atomically: `write` receives a buffered writer to a temporary file next to
/// `path`, which replaces `path` only once `write` returned `Ok` and the data is on disk.
///
/// Errors are reported against `path` (an [`Error::Io`]); wrap codec errors in
/// [`std::io::Error::other`] to pass them through `write`.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    write_atomic_file(path, |file| {
        let mut w = BufWriter::new(file);
        write(&mut w)
            .and_then(|()| w.flush())
            .map_err(|e| Error::io(path, e))
    })
}

/// As [`write_atomic`], but `write` receives the temporary file itself (so it can write at
/// offsets) and returns the crate's errors, which are passed through unchanged; it reports its
/// own I/O errors (against `path`, say).
pub fn write_atomic_file<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut fs::File) -> Result<()>,
{
    let (dir, tmp) = temp_path(path)?;
    let written = (|| -> Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(path, e))?;
        write(&mut file)?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if let Err(e) = written {
        // Best effort: the temporary file may not exist, and the original error matters more.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable.
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Checks that a file can be created at `path` (its folder exists and is writable) by creating
/// and removing a temporary file there, so callers can fail before any heavy work.
pub fn check_writable(path: &Path) -> Result<()> {
    let (_, tmp) = temp_path(path)?;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(path, e))?;
    fs::remove_file(&tmp).map_err(|e| Error::io(&tmp, e))
}

/// The folder of `path` and a fresh hidden temporary name in it, unique within this process
/// (the process id keeps concurrent processes apart).
fn temp_path(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} names no file", path.display())))?;
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok((dir, tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        write_atomic(&path, |w| w.write_all(b"one")).unwrap();
        write_atomic(&path, |w| w.write_all(b"two")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(entries(dir.path()), ["a.bin"]);
    }

    #[test]
    fn failed_write_keeps_the_old_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        write_atomic(&path, |w| w.write_all(b"old")).unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("encoder failed"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("encoder failed"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["a.bin"]);
    }

    #[test]
    fn missing_folder_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/a.bin");
        let err = write_atomic(&path, |w| w.write_all(b"x")).unwrap_err();
        assert!(err.to_string().contains("no/such/dir/a.bin"), "{err}");
        assert!(check_writable(&path).is_err());
        assert!(check_writable(&dir.path().join("ok.bin")).is_ok());
        assert!(entries(dir.path()).is_empty());
    }
}
