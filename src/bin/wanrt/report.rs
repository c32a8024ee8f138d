//! How every subcommand ends in failure: one `error:` line on stderr, never a panic report.

use std::fmt::Display;
use std::panic::{catch_unwind, UnwindSafe};

/// Runs `job`, returning its value; on an error prints `error: {subject}{error}`, on a panic
/// (a bug in wanrt) `error: {subject}internal error (please report): {message}`, and returns
/// `None`. `subject` is empty or ends in `": "`.
pub fn reported<T, E: Display>(
    subject: &str,
    job: impl FnOnce() -> Result<T, E> + UnwindSafe,
) -> Option<T> {
    match catch_unwind(job) {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            eprintln!("error: {subject}{e}");
            None
        }
        Err(panic) => {
            let msg = wanrt::error::panic_message(panic.as_ref()).unwrap_or("unknown");
            eprintln!("error: {subject}internal error (please report): {msg}");
            None
        }
    }
}
