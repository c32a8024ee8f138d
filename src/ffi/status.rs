//! The status codes, the thread-local last-error message and the panic boundary that every
//! exported function goes through.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{panic_message, Error, Result, Status};

/// What a wanrt function returns: `WANRT_STATUS_OK` (0) on success, otherwise the kind of
/// failure. `wanrt_last_error()` then describes the failure in words.
///
/// The numeric values are stable: codes are only ever added, never renumbered.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum wanrt_status {
    /// Success.
    Ok = 0,
    /// An argument is NULL, out of range, inconsistent with another, or a handle is in a state
    /// that does not allow the call (a pipeline that is busy on another thread).
    InvalidArgument = 1,
    /// A file, folder or tensor was not found.
    NotFound = 2,
    /// A file is malformed, of an unsupported kind, or could not be read or written.
    BadFile = 3,
    /// There is not enough memory for the request. (An allocation that fails inside the
    /// library aborts the process, as Rust does; requests are checked against the available
    /// memory beforehand where the library can estimate it.)
    OutOfMemory = 4,
    /// The device failed, or this build does not support the requested device.
    DeviceError = 5,
    /// The progress callback asked to stop.
    Cancelled = 6,
    /// A bug in wanrt (a Rust panic caught at the boundary). The message says where; please
    /// report it. The handles passed to the failing call should not be used again.
    Internal = 7,
}

impl From<Status> for wanrt_status {
    fn from(status: Status) -> Self {
        match status {
            Status::Ok => wanrt_status::Ok,
            Status::InvalidArgument => wanrt_status::InvalidArgument,
            Status::NotFound => wanrt_status::NotFound,
            Status::BadFile => wanrt_status::BadFile,
            Status::OutOfMemory => wanrt_status::OutOfMemory,
            Status::DeviceError => wanrt_status::DeviceError,
            Status::Cancelled => wanrt_status::Cancelled,
            Status::Internal => wanrt_status::Internal,
        }
    }
}

/// A short English name for a status code ("ok", "invalid argument", ...), or "unknown status"
/// for a value that is not a `wanrt_status`. The string is static: never free it.
///
/// Takes an `int` rather than a `wanrt_status` so that any value is safe to pass.
#[no_mangle]
pub extern "C" fn wanrt_status_str(status: i32) -> *const c_char {
    let name: &'static CStr = match status {
        0 => c"ok",
        1 => c"invalid argument",
        2 => c"not found",
        3 => c"bad file",
        4 => c"out of memory",
        5 => c"device error",
        6 => c"cancelled",
        7 => c"internal error",
        _ => c"unknown status",
    };
    name.as_ptr()
}

thread_local! {
    /// The message of the last failed call on this thread; empty after a successful call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    let message = super::params::c_string(message);
    LAST_ERROR.with(|slot| *slot.borrow_mut() = message);
}

/// The message describing why the last failed wanrt call on this thread failed, or "" when
/// the last status-returning call succeeded. It starts with the function's name, for example
/// `wanrt_generate: invalid argument: params is NULL`.
///
/// Functions that return a `wanrt_status` clear the message when they succeed. Accessors and
/// free functions set it only when they fail (0 or NULL for a NULL handle) and otherwise leave
/// it alone, so results can be read and handles freed before the message is.
///
/// The string belongs to the library and stays valid until the next wanrt call on the same
/// thread; copy it to keep it. Never NULL. Each thread has its own message.
#[no_mangle]
pub extern "C" fn wanrt_last_error() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

/// Runs the body of an exported function that returns a status: catches panics, turns an
/// error or a panic into a status code plus the last-error message, and clears the message on
/// success (after the body, which may have called other wanrt functions, from a callback for
/// example). `func` is the exported name, which starts every message.
pub(crate) fn guard(func: &'static str, body: impl FnOnce() -> Result<()>) -> wanrt_status {
    match run(func, body) {
        Ok(()) => {
            set_last_error(String::new());
            wanrt_status::Ok
        }
        Err(status) => status,
    }
}

/// [`guard`] for an accessor or a free function, which returns a value (or nothing) rather than
/// a status: `fallback` (0 or NULL, as the header documents) on failure. It sets the last error
/// only when it fails, so that reading a result or freeing a handle after a failed call keeps
/// that call's message.
pub(crate) fn guard_value<T>(
    func: &'static str,
    fallback: T,
    body: impl FnOnce() -> Result<T>,
) -> T {
    run(func, body).unwrap_or(fallback)
}

fn run<T>(func: &'static str, body: impl FnOnce() -> Result<T>) -> Result<T, wanrt_status> {
    // Unwind safety: after a panic the handles involved are documented as unusable
    // (`WANRT_STATUS_INTERNAL`), so no broken invariant is observed through them.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            set_last_error(format!("{func}: {error}"));
            Err(error.status().into())
        }
        Err(payload) => {
            let what = panic_message(payload.as_ref()).unwrap_or("(no message)");
            set_last_error(format!(
                "{func}: internal error: panic: {what} (this is a bug in wanrt; please report it)"
            ));
            Err(wanrt_status::Internal)
        }
    }
}

/// An [`Error::InvalidArgument`] naming a NULL argument.
pub(crate) fn null_argument(name: &str) -> Error {
    Error::InvalidArgument(format!("{name} is NULL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: wanrt_last_error never returns NULL and the string is NUL-terminated.
        unsafe { CStr::from_ptr(wanrt_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn status_codes_match_the_crate_status() {
        for (status, code) in [
            (Status::Ok, 0),
            (Status::InvalidArgument, 1),
            (Status::NotFound, 2),
            (Status::BadFile, 3),
            (Status::OutOfMemory, 4),
            (Status::DeviceError, 5),
            (Status::Cancelled, 6),
            (Status::Internal, 7),
        ] {
            assert_eq!(status as i32, code);
            assert_eq!(wanrt_status::from(status) as i32, code);
        }
    }

    #[test]
    fn status_str_names_every_code_and_survives_any_value() {
        let name = |code| {
            unsafe { CStr::from_ptr(wanrt_status_str(code)) }
                .to_str()
                .unwrap()
        };
        assert_eq!(name(0), "ok");
        assert_eq!(name(7), "internal error");
        assert_eq!(name(-1), "unknown status");
        assert_eq!(name(i32::MAX), "unknown status");
    }

    #[test]
    fn errors_set_the_message_and_success_clears_it() {
        let status = guard("wanrt_test", || Err(null_argument("params")));
        assert_eq!(status, wanrt_status::InvalidArgument);
        assert_eq!(last_error(), "wanrt_test: invalid argument: params is NULL");
        assert_eq!(guard_value("wanrt_get", 0, || Ok(3)), 3);
        assert_eq!(
            last_error(),
            "wanrt_test: invalid argument: params is NULL",
            "a successful accessor keeps the message"
        );
        assert_eq!(guard("wanrt_test", || Ok(())), wanrt_status::Ok);
        assert_eq!(last_error(), "");
        // A call that succeeds clears a message set while it ran (by a call from a callback).
        let status = guard("wanrt_outer", || {
            guard_value("wanrt_inner", 0, || Err::<i32, _>(null_argument("x")));
            Ok(())
        });
        assert_eq!(status, wanrt_status::Ok);
        assert_eq!(last_error(), "", "a successful call leaves no message");
    }

    #[test]
    fn a_panic_becomes_internal_and_the_fallback() {
        let status = guard("wanrt_test", || panic!("boom {}", 42));
        assert_eq!(status, wanrt_status::Internal);
        assert!(last_error().starts_with("wanrt_test: internal error: panic: boom 42"));
        let value = guard_value("wanrt_test", 7usize, || -> Result<usize> {
            panic!("static")
        });
        assert_eq!(value, 7);
        assert!(last_error().contains("panic: static"));
    }

    #[test]
    fn the_message_is_per_thread() {
        guard("wanrt_test", || Err(Error::Cancelled));
        std::thread::spawn(|| assert_eq!(last_error(), ""))
            .join()
            .unwrap();
        assert_eq!(last_error(), "wanrt_test: cancelled");
    }
}
