//! The log callback: the library's diagnostics, written with the `log` crate, forwarded to a
//! C function that the host sets once for the whole process.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{OnceLock, PoisonError, RwLock};

use log::{Level, LevelFilter, Metadata, Record};

use super::params::c_string;
use super::status::{guard, wanrt_status};
use crate::error::Error;

/// How important a log message is (the `level` argument of `wanrt_log_fn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum wanrt_log_level {
    /// A failure (also reported by the failing call's status).
    Error = 1,
    /// Something the host should know: a LoRA's keys that match no module and were ignored.
    Warn = 2,
    /// What a generation does: the plan chosen (memory estimate, VAE tiling, batched CFG) and
    /// the time spent in each stage.
    Info = 3,
    /// Details: the time of every denoising step.
    Debug = 4,
}

/// The log callback: `level` is a `wanrt_log_level`, `message` one line of UTF-8 without a
/// trailing newline, valid only during the call. It is called from whichever thread logs, the
/// library's worker threads included, possibly from several threads at once: it must be
/// thread-safe, must return quickly, and must not unwind (throw a C++ exception or longjmp)
/// through the library. It may call wanrt functions, `wanrt_set_log_callback` included.
pub type wanrt_log_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, level: i32, message: *const c_char)>;

/// Where log records go: the C function and its user data (an address, so that it is `Send`).
#[derive(Clone, Copy)]
struct Sink {
    callback: unsafe extern "C" fn(*mut c_void, i32, *const c_char),
    user_data: usize,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Whether [`LOGGER`] is the process's `log` logger (set by the first callback).
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// The `log` logger of a process that uses the C API: it forwards every record to [`SINK`].
struct CallbackLogger;

static LOGGER: CallbackLogger = CallbackLogger;

impl log::Log for CallbackLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        // Copied out, so that the callback may set another callback without a deadlock.
        let sink = *SINK.read().unwrap_or_else(PoisonError::into_inner);
        let Some(sink) = sink else { return };
        let level = match record.level() {
            Level::Error => wanrt_log_level::Error,
            Level::Warn => wanrt_log_level::Warn,
            Level::Info => wanrt_log_level::Info,
            Level::Debug | Level::Trace => wanrt_log_level::Debug,
        };
        // A panic while formatting the message drops the message; it never reaches the caller
        // (which may be a worker thread with no panic boundary of its own).
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let message = c_string(record.args().to_string());
            // SAFETY: the host promised a callback valid until it sets another one, and the
            // message outlives the call.
            unsafe {
                (sink.callback)(
                    sink.user_data as *mut c_void,
                    level as i32,
                    message.as_ptr(),
                )
            }
        }));
    }

    fn flush(&self) {}
}

/// Sets the process-wide log callback, which receives the library's diagnostics of every
/// level (see `wanrt_log_level`; filter in the callback), with `user_data` passed back
/// unchanged. NULL (the default) makes the library silent: it never writes to stdout or
/// stderr. A new callback replaces the previous one; a message being delivered on another
/// thread at that moment may still reach the previous callback, so keep its `user_data`
/// valid for a while (or for the life of the process).
///
/// Fails with `WANRT_STATUS_INVALID_ARGUMENT` only in a Rust program that installed its own
/// `log` logger before: the library's messages already go to it.
#[no_mangle]
pub extern "C" fn wanrt_set_log_callback(
    callback: wanrt_log_fn,
    user_data: *mut c_void,
) -> wanrt_status {
    guard("wanrt_set_log_callback", || {
        if !*INSTALLED.get_or_init(|| log::set_logger(&LOGGER).is_ok()) {
            return Err(Error::InvalidArgument(
                "this process already has a `log` logger (a Rust program's); wanrt's messages \
                 go to it"
                    .into(),
            ));
        }
        let sink = callback.map(|callback| Sink {
            callback,
            user_data: user_data as usize,
        });
        *SINK.write().unwrap_or_else(PoisonError::into_inner) = sink;
        log::set_max_level(match sink {
            Some(_) => LevelFilter::Debug,
            None => LevelFilter::Off,
        });
        Ok(())
    })
}
