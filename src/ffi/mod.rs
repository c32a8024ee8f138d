//! The C ABI: `extern "C"` functions over opaque handles, from which cbindgen generates
//! `include/wanrt.h`.
//!
//! This module adds no logic: it checks arguments, converts them, calls the safe API
//! ([`crate::pipeline`], [`crate::video`]) and turns results into status codes. The rules a C
//! caller relies on (ownership, threads, errors, the `struct_size` scheme) are written in the
//! header's preamble (`cbindgen.toml`) and on each function; the Rust names are the C names.
//!
//! - [`status`](wanrt_status): every fallible function returns a [`wanrt_status`] and leaves a
//!   message for [`wanrt_last_error`]; every export runs inside a panic boundary that reports a
//!   panic as `WANRT_STATUS_INTERNAL`.
//! - [`wanrt_set_log_callback`] forwards the library's diagnostics (the `log` crate's records)
//!   to a C function.
//! - Parameter structs begin with their size (see the `params` submodule).
//!
//! Regenerate the header after changing this module with
//! `WANRT_UPDATE_HEADER=1 cargo test --test ffi_header`.
#![allow(non_camel_case_types)]

// Declared in the order the header presents them (cbindgen follows this order).
mod status;

mod log;

mod params;

mod lora;

mod pipeline;

mod query;

mod generation;

mod devices;
mod train;

use std::ffi::c_char;

pub use devices::{wanrt_device_info, wanrt_list_devices, WANRT_DEVICE_NAME_SIZE};
pub use generation::{
    wanrt_generation, wanrt_generation_frame_count, wanrt_generation_frames, wanrt_generation_free,
    wanrt_generation_height, wanrt_generation_json, wanrt_generation_latent, wanrt_generation_seed,
    wanrt_generation_width, wanrt_generation_write_mp4, wanrt_generation_write_png_frames,
    wanrt_mp4_params, wanrt_mp4_params_init,
};
pub use log::{wanrt_log_fn, wanrt_log_level, wanrt_set_log_callback};
pub use lora::{
    wanrt_lora_list, wanrt_lora_list_add, wanrt_lora_list_count, wanrt_lora_list_free,
    wanrt_lora_list_new,
};
pub use pipeline::{
    wanrt_device, wanrt_frame_fn, wanrt_generate, wanrt_generate_params,
    wanrt_generate_params_init, wanrt_generate_params_preset, wanrt_lora_mode, wanrt_pipeline,
    wanrt_pipeline_free, wanrt_pipeline_load, wanrt_pipeline_params, wanrt_pipeline_params_init,
    wanrt_pipeline_set_lora_strength, wanrt_progress_fn, wanrt_solver, wanrt_stage, wanrt_stage_fn,
    wanrt_vae_tiling,
};
pub use query::{
    wanrt_memory_estimate, wanrt_model_info, wanrt_pipeline_estimate, wanrt_pipeline_info,
};
pub use status::{wanrt_last_error, wanrt_status, wanrt_status_str};
pub use train::{
    wanrt_train_progress_fn, wanrt_trainer, wanrt_trainer_free, wanrt_trainer_new,
    wanrt_trainer_run, wanrt_trainer_steps_taken, wanrt_trainer_total_steps,
};

/// The ABI version of this header. `wanrt_abi_version()` returns the version of the library
/// actually loaded; a program should refuse to run when the two differ. It changes only when a
/// function, type or constant changes incompatibly; appending fields to a parameter struct or
/// adding functions does not change it.
pub const WANRT_ABI_VERSION: u32 = 1;

/// The ABI version of the loaded library; compare it with `WANRT_ABI_VERSION`.
#[no_mangle]
pub extern "C" fn wanrt_abi_version() -> u32 {
    WANRT_ABI_VERSION
}

/// The version of the loaded library, for example "0.1.0" (semantic versioning). The string is
/// static: never free it.
#[no_mangle]
pub extern "C" fn wanrt_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

// The header promises that every handle may be used and freed from any thread.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<wanrt_pipeline>();
    send_sync::<wanrt_generation>();
    send_sync::<wanrt_lora_list>();
    send_sync::<wanrt_trainer>();
};
