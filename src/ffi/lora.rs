//! `wanrt_lora_list`: the LoRA files, with their strengths, that a pipeline merges at load.

use std::ffi::c_char;
use std::path::PathBuf;

use super::params::{handle, req_path, write_out};
use super::status::{guard, guard_value, null_argument, wanrt_status};
use crate::error::Error;

/// An ordered list of LoRA files with strengths, passed to `wanrt_pipeline_load` through
/// `wanrt_pipeline_params.loras`. Create it with `wanrt_lora_list_new()`, fill it with
/// `wanrt_lora_list_add()`, free it with `wanrt_lora_list_free()`. The pipeline copies what it
/// needs: the list may be freed right after `wanrt_pipeline_load` returns.
///
/// Not safe for concurrent use: one thread at a time may add to a list.
pub struct wanrt_lora_list {
    pub(crate) entries: Vec<(PathBuf, f32)>,
}

/// Creates an empty LoRA list in `*out`.
///
/// Returns `WANRT_STATUS_OK`, or `WANRT_STATUS_INVALID_ARGUMENT` when `out` is NULL.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn wanrt_lora_list_new(out: *mut *mut wanrt_lora_list) -> wanrt_status {
    guard("wanrt_lora_list_new", || {
        if out.is_null() {
            return Err(null_argument("out"));
        }
        let list = Box::new(wanrt_lora_list {
            entries: Vec::new(),
        });
        write_out(out, "out", Box::into_raw(list))
    })
}

/// Appends the LoRA file at `path` (UTF-8 or, on Unix, any bytes) with `strength` (its
/// multiplier: 1.0 applies it as trained, 0.0 not at all, negative values subtract it; any
/// finite value is accepted). LoRAs are merged in the order they were added. The same file may
/// appear twice.
///
/// Returns `WANRT_STATUS_OK`; `WANRT_STATUS_INVALID_ARGUMENT` when `list` or `path` is NULL,
/// `path` is empty or `strength` is not finite; `WANRT_STATUS_NOT_FOUND` when `path` is not an
/// existing file. The file's contents are read by `wanrt_pipeline_load`.
///
/// # Safety
/// `list` is NULL or a live list; `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn wanrt_lora_list_add(
    list: *mut wanrt_lora_list,
    path: *const c_char,
    strength: f32,
) -> wanrt_status {
    guard("wanrt_lora_list_add", || {
        let list = list.as_mut().ok_or_else(|| null_argument("list"))?;
        let path = req_path(path, "path")?;
        if !strength.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "strength {strength} for {} is not finite",
                path.display()
            )));
        }
        if !path.is_file() {
            return Err(Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such LoRA file"),
            ));
        }
        list.entries.push((path, strength));
        Ok(())
    })
}

/// The number of LoRAs in `list`; 0 when `list` is NULL (`wanrt_last_error()` then says so).
///
/// # Safety
/// `list` is NULL or a live list.
#[no_mangle]
pub unsafe extern "C" fn wanrt_lora_list_count(list: *const wanrt_lora_list) -> usize {
    guard_value("wanrt_lora_list_count", 0, || {
        Ok(handle(list, "list")?.entries.len())
    })
}

/// Frees `list`. NULL is a no-op. Any thread may free it; freeing it twice is undefined.
///
/// # Safety
/// `list` is NULL or a live list that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn wanrt_lora_list_free(list: *mut wanrt_lora_list) {
    guard_value("wanrt_lora_list_free", (), || {
        if !list.is_null() {
            drop(Box::from_raw(list));
        }
        Ok(())
    })
}
