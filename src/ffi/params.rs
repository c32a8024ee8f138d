//! Parameter structs that carry their own size, and the conversions of C arguments (strings,
//! paths, handles) into Rust values.
//!
//! # The `struct_size` scheme
//! Every parameter struct starts with `size_t struct_size`, the `sizeof` the caller was compiled
//! with, filled in by `wanrt_*_params_init(&p, sizeof p)` together with the library's defaults.
//! Fields are only ever appended, so a struct from an older header is a prefix of the current
//! one. On reading, the library
//! - refuses a size below the first version's (an uninitialised struct, or not this struct);
//! - takes the fields the caller has and the library defaults for the fields appended after the
//!   caller's header was written;
//! - accepts a struct larger than it knows (a newer header, an older library) only when every
//!   byte it does not know is zero, so a caller who sets a newer option is told, not ignored.
//!
//! This is the rule Linux applies to its extensible syscall structs (`clone3`, `openat2`:
//! `copy_struct_from_user`). It asks one thing of new fields: zero must mean "off" or "the
//! default", which is also what `*_init` writes into bytes the library does not know.
//! Fields are integers, floats and pointers only (booleans are `int32_t`, enums are `int32_t`
//! with named constants), so any bytes a caller passes are valid values.

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;

use super::status::null_argument;
use crate::error::{Error, Result};

/// A `#[repr(C)]` parameter struct whose first field is `struct_size: usize`.
///
/// # Safety
/// The implementor is `#[repr(C)]`, starts with a `usize` size field, and every field accepts
/// any bit pattern (integers, floats, raw pointers, optional function pointers).
pub(crate) unsafe trait Versioned: Copy + Default {
    /// The C name, for messages.
    const NAME: &'static str;
    /// The size of the struct's first version, the smallest `struct_size` accepted. Written as
    /// the end of the first version's last field, so appending fields does not change it.
    const MIN_SIZE: usize;
}

/// Copies the caller's struct at `ptr` (named `arg` in messages) into a full-size value,
/// following the `struct_size` scheme of this module.
///
/// # Safety
/// `ptr` is NULL or points to at least `struct_size` readable bytes, aligned for `T`.
pub(crate) unsafe fn read<T: Versioned>(ptr: *const T, arg: &str) -> Result<T> {
    if ptr.is_null() {
        return Err(null_argument(arg));
    }
    let size = ptr.cast::<usize>().read();
    check_size::<T>(size, arg)?;
    let known = size.min(size_of::<T>());
    if size > known {
        let extra = std::slice::from_raw_parts(ptr.cast::<u8>().add(known), size - known);
        if extra.iter().any(|&b| b != 0) {
            return Err(Error::InvalidArgument(format!(
                "{arg} (a {}) is {size} bytes and sets fields this library ({} bytes, version {}) \
                 does not know: the header is newer than the library; upgrade libwanrt",
                T::NAME,
                size_of::<T>(),
                env!("CARGO_PKG_VERSION"),
            )));
        }
    }
    let mut value = T::default();
    std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), (&mut value as *mut T).cast::<u8>(), known);
    Ok(value)
}

/// Fills the caller's `size` bytes at `ptr` with the library defaults (zero for bytes beyond
/// the library's struct) and `struct_size = size`.
///
/// # Safety
/// `ptr` is NULL or points to `size` writable bytes, aligned for `T`.
pub(crate) unsafe fn init<T: Versioned>(ptr: *mut T, size: usize, arg: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(null_argument(arg));
    }
    check_size::<T>(size, arg)?;
    let defaults = T::default();
    let known = size.min(size_of::<T>());
    let dst = ptr.cast::<u8>();
    std::ptr::write_bytes(dst, 0, size);
    std::ptr::copy_nonoverlapping((&defaults as *const T).cast::<u8>(), dst, known);
    ptr.cast::<usize>().write(size);
    Ok(())
}

/// Writes `value` back over the caller's struct at `ptr`, within the caller's `struct_size`.
///
/// # Safety
/// `ptr` was accepted by [`read`] and is writable.
pub(crate) unsafe fn write_back<T: Versioned>(ptr: *mut T, value: &T) {
    let known = ptr.cast::<usize>().read().min(size_of::<T>());
    std::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), ptr.cast::<u8>(), known);
}

/// Fills the caller's result struct at `ptr` (named `arg` in messages), whose `struct_size`
/// the caller set to its `sizeof`, with `value` within that size; `struct_size` is kept.
///
/// # Safety
/// `ptr` is NULL or points to at least `struct_size` writable bytes, aligned for `T`.
pub(crate) unsafe fn fill<T: Versioned>(ptr: *mut T, value: &T, arg: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(null_argument(arg));
    }
    let size = ptr.cast::<usize>().read();
    if size < T::MIN_SIZE {
        return Err(Error::InvalidArgument(format!(
            "{arg}->struct_size is {size}, less than the smallest {} ({} bytes): set it to \
             sizeof({}) before the call",
            T::NAME,
            T::MIN_SIZE,
            T::NAME,
        )));
    }
    let head = size_of::<usize>();
    let known = size.min(size_of::<T>());
    let src = (value as *const T).cast::<u8>();
    std::ptr::copy_nonoverlapping(src.add(head), ptr.cast::<u8>().add(head), known - head);
    Ok(())
}

fn check_size<T: Versioned>(size: usize, arg: &str) -> Result<()> {
    if size < T::MIN_SIZE {
        return Err(Error::InvalidArgument(format!(
            "{arg}->struct_size is {size}, less than the smallest {} ({} bytes): fill the \
             struct with {}_init(&params, sizeof params) before setting fields",
            T::NAME,
            T::MIN_SIZE,
            T::NAME,
        )));
    }
    Ok(())
}

/// `text` as a C string (a NUL inside, which JSON never has, is escaped).
pub(crate) fn c_string(text: String) -> CString {
    CString::new(text.replace('\0', "\\0")).unwrap_or_default()
}

/// The string at `ptr` (named `arg` in messages), `None` for NULL; it must be UTF-8.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn opt_str<'a>(ptr: *const c_char, arg: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(ptr)
        .to_str()
        .map(Some)
        .map_err(|_| Error::InvalidArgument(format!("{arg} is not valid UTF-8")))
}

/// The string at `ptr`, which must not be NULL.
///
/// # Safety
/// As [`opt_str`].
pub(crate) unsafe fn req_str<'a>(ptr: *const c_char, arg: &str) -> Result<&'a str> {
    opt_str(ptr, arg)?.ok_or_else(|| null_argument(arg))
}

/// The path at `ptr`, `None` for NULL. On Unix any bytes are accepted (paths need not be
/// UTF-8); elsewhere the path must be UTF-8.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string.
#[cfg_attr(unix, allow(unused_variables))]
pub(crate) unsafe fn opt_path(ptr: *const c_char, arg: &str) -> Result<Option<PathBuf>> {
    if ptr.is_null() {
        return Ok(None);
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bytes = CStr::from_ptr(ptr).to_bytes();
        Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes))))
    }
    #[cfg(not(unix))]
    {
        Ok(opt_str(ptr, arg)?.map(PathBuf::from))
    }
}

/// The path at `ptr`, which must not be NULL or empty.
///
/// # Safety
/// As [`opt_path`].
pub(crate) unsafe fn req_path(ptr: *const c_char, arg: &str) -> Result<PathBuf> {
    match opt_path(ptr, arg)? {
        None => Err(null_argument(arg)),
        Some(p) if p.as_os_str().is_empty() => {
            Err(Error::InvalidArgument(format!("{arg} is empty")))
        }
        Some(p) => Ok(p),
    }
}

/// The handle at `ptr` as a reference.
///
/// # Safety
/// `ptr` is NULL or a live handle created by the library.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, arg: &str) -> Result<&'a T> {
    ptr.as_ref().ok_or_else(|| null_argument(arg))
}

/// Writes `value` through an out-pointer, which must not be NULL.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, arg: &str, value: T) -> Result<()> {
    if out.is_null() {
        return Err(null_argument(arg));
    }
    out.write(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A struct as a newer header would declare it: version 1 is `a`, `b`; `c` came later.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Params {
        struct_size: usize,
        a: i32,
        b: f32,
        c: u64,
    }

    impl Default for Params {
        fn default() -> Self {
            Params {
                struct_size: size_of::<Params>(),
                a: 7,
                b: 0.5,
                c: 9,
            }
        }
    }

    unsafe impl Versioned for Params {
        const NAME: &'static str = "test_params";
        const MIN_SIZE: usize = std::mem::offset_of!(Params, b) + size_of::<f32>();
    }

    #[test]
    fn init_then_read_gives_the_defaults() {
        let mut p = Params {
            struct_size: 0,
            a: 0,
            b: 0.0,
            c: 0,
        };
        unsafe { init(&mut p, size_of::<Params>(), "p") }.unwrap();
        assert_eq!(p, Params::default());
        assert_eq!(unsafe { read(&p, "p") }.unwrap(), Params::default());
    }

    #[test]
    fn an_older_caller_gets_defaults_for_the_fields_it_lacks() {
        // The first version: 16 bytes (size, a, b); `c` is not there.
        let mut p = Params {
            struct_size: Params::MIN_SIZE,
            a: 1,
            b: 2.0,
            c: 12345,
        };
        let got = unsafe { read(&p, "p") }.unwrap();
        assert_eq!((got.a, got.b, got.c), (1, 2.0, 9));
        // init must not write past the caller's size.
        p.c = 12345;
        unsafe { init(&mut p, Params::MIN_SIZE, "p") }.unwrap();
        assert_eq!(
            (p.struct_size, p.a, p.b, p.c),
            (Params::MIN_SIZE, 7, 0.5, 12345)
        );
    }

    #[test]
    fn a_newer_caller_is_accepted_only_with_zero_unknown_bytes() {
        #[repr(C)]
        struct Newer {
            p: Params,
            d: u64,
        }
        let mut newer = Newer {
            p: Params::default(),
            d: 1,
        };
        unsafe { init(&mut newer.p, size_of::<Newer>(), "p") }.unwrap();
        assert_eq!(newer.d, 0, "init zeroes what it does not know");
        assert_eq!(newer.p.struct_size, size_of::<Newer>());
        assert_eq!(unsafe { read(&newer.p, "p") }.unwrap().a, 7);
        newer.d = 3;
        let err = unsafe { read(&newer.p, "p") }.unwrap_err().to_string();
        assert!(err.contains("does not know"), "{err}");
    }

    #[test]
    fn too_small_or_null_is_refused() {
        let p = Params {
            struct_size: 8,
            ..Params::default()
        };
        let err = unsafe { read(&p, "params") }.unwrap_err().to_string();
        assert!(err.contains("params->struct_size is 8"), "{err}");
        assert!(
            err.contains("test_params_init(&params, sizeof params)"),
            "{err}"
        );
        let err = unsafe { read::<Params>(std::ptr::null(), "params") }.unwrap_err();
        assert_eq!(err.to_string(), "invalid argument: params is NULL");
        let mut q = Params::default();
        assert!(unsafe { init(&mut q, 4, "q") }.is_err());
    }

    #[test]
    fn strings_and_paths() {
        let s = c"héllo";
        assert_eq!(unsafe { opt_str(s.as_ptr(), "s") }.unwrap(), Some("héllo"));
        assert_eq!(unsafe { opt_str(std::ptr::null(), "s") }.unwrap(), None);
        let bad = c"\xff\xfe";
        let err = unsafe { opt_str(bad.as_ptr(), "prompt") }
            .unwrap_err()
            .to_string();
        assert_eq!(err, "invalid argument: prompt is not valid UTF-8");
        assert!(unsafe { req_path(c"".as_ptr(), "path") }.is_err());
        assert!(unsafe { req_path(std::ptr::null(), "path") }.is_err());
        #[cfg(unix)]
        assert!(unsafe { req_path(bad.as_ptr(), "path") }.is_ok());
    }
}
