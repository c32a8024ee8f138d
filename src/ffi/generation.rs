//! `wanrt_generation`: the result of `wanrt_generate` (frames, latent, parameters), its
//! accessors, and writing it as MP4 or PNG files.

use std::ffi::{c_char, CString};
use std::path::PathBuf;

use super::params::{self, c_string, handle, opt_path, req_path, Versioned};
use super::status::{guard, guard_value, wanrt_status};
use crate::error::{Error, Result};
use crate::pipeline::{Generation, ModelInfo};
use crate::video::{self, Mp4Options};

/// The result of one `wanrt_generate` call: `frame_count` RGB frames of `width` × `height`
/// pixels, the final latent, the seed, and the parameters as JSON. Immutable: every accessor and
/// writer may be called from any thread, also concurrently. Free it with
/// `wanrt_generation_free()`; pointers obtained from its accessors are valid until then.
pub struct wanrt_generation {
    generation: Generation,
    /// What files written from this result record (the request, models, LoRAs).
    metadata: CString,
    /// `metadata` plus the timings.
    json: CString,
}

impl wanrt_generation {
    pub(crate) fn new(generation: Generation, info: &ModelInfo) -> Result<wanrt_generation> {
        // The latent accessor hands out f32 data without copying.
        generation.latent.f32_data()?;
        Ok(wanrt_generation {
            metadata: c_string(generation.metadata(info).to_string()),
            json: c_string(generation.to_json(info).to_string()),
            generation,
        })
    }

    fn metadata(&self) -> Option<&str> {
        self.metadata.to_str().ok()
    }
}

/// Options of `wanrt_generation_write_mp4`. Fill with `wanrt_mp4_params_init(&p, sizeof p)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct wanrt_mp4_params {
    /// `sizeof(wanrt_mp4_params)` as the caller compiled it; set by `wanrt_mp4_params_init`.
    pub struct_size: usize,
    /// Frames per second, in (0, 1000]. Default 16 (Wan2.1's rate).
    pub fps: f64,
    /// H.264 quantiser, 0..=51; lower is better quality and a larger file. Default 20.
    pub qp: i32,
    /// Path of Cisco's prebuilt OpenH264 library to encode with (builds with the
    /// `openh264-dylib` feature only); NULL (default) uses the encoder built into wanrt.
    pub openh264_library: *const c_char,
}

impl Default for wanrt_mp4_params {
    fn default() -> Self {
        let options = Mp4Options::default();
        wanrt_mp4_params {
            struct_size: size_of::<Self>(),
            fps: options.fps,
            qp: i32::from(options.qp),
            openh264_library: std::ptr::null(),
        }
    }
}

// SAFETY: `#[repr(C)]`, starts with `struct_size`, fields are a float, an integer and a pointer.
unsafe impl Versioned for wanrt_mp4_params {
    const NAME: &'static str = "wanrt_mp4_params";
    const MIN_SIZE: usize =
        std::mem::offset_of!(wanrt_mp4_params, openh264_library) + size_of::<*const c_char>();
}

/// Fills the `struct_size` bytes at `params` with the defaults (16 fps, qp 20, the built-in
/// encoder) and sets `params->struct_size`. Pass `sizeof *params` as `struct_size`.
///
/// Returns `WANRT_STATUS_OK`, or `WANRT_STATUS_INVALID_ARGUMENT` when `params` is NULL or
/// `struct_size` is smaller than the first version of the struct.
///
/// # Safety
/// `params` is NULL or points to `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn wanrt_mp4_params_init(
    params: *mut wanrt_mp4_params,
    struct_size: usize,
) -> wanrt_status {
    guard("wanrt_mp4_params_init", || {
        params::init(params, struct_size, "params")
    })
}

/// The number of frames; 0 when `generation` is NULL.
///
/// # Safety
/// `generation` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generation_frame_count(generation: *const wanrt_generation) -> u32 {
    guard_value("wanrt_generation_frame_count", 0, || {
        Ok(handle(generation, "generation")?.generation.frame_count as u32)
    })
}

/// The frame width in pixels; 0 when `generation` is NULL.
///
/// # Safety
/// `generation` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generation_width(generation: *const wanrt_generation) -> u32 {
    guard_value("wanrt_generation_width", 0, || {
        Ok(handle(generation, "generation")?.generation.width as u32)
    })
}

/// The frame height in pixels; 0 when `generation` is NULL.
///
/// # Safety
/// `generation` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generation_height(generation: *const wanrt_generation) -> u32 {
    guard_value("wanrt_generation_height", 0, || {
        Ok(handle(generation, "generation")?.generation.height as u32)
    })
}

/// The frames: `frame_count × height × width × 3` bytes of 8-bit RGB, row-major, frame after
/// frame (pixel (x, y) of frame f starts at byte `((f × height + y) × width + x) × 3`). If `size`
/// is not NULL it receives that byte count. NULL when `generation` is NULL. The bytes belong to
/// the result and stay valid until `wanrt_generation_free`.
///
/// # Safety
/// `generation` is NULL or a live result; `size` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generation_frames(
    generation: *const wanrt_generation,
    size: *mut usize,
) -> *const u8 {
    guard_value("wanrt_generation_frames", std::ptr::null(), || {
        let g = &handle(generation, "generation")?.generation;
        if !size.is_null() {
            size.write(g.frames.len());
        }
        Ok(g.frames.as_ptr())
    })
}

/// The final latent (before VAE decoding), float32, row-major, of shape
/// `[1, 16, (frame_count - 1) / 4 + 1, height / 8, width / 8]`. If `shape` is not NULL it
/// receives the 5 dimensions (`shape` must have room for 5). NULL when `generation` is NULL.
/// Valid until `wanrt_generation_free`.
///
/// # Safety
/// `generation` is NULL or a live result; `shape` is NULL or valid for 5 writes.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generation_latent(
    generation: *const wanrt_generation,
    shape: *mut usize,
) -> *const f32 {
    guard_value("wanrt_generation_latent", std::ptr::null(), || {
        let latent = &handle(generation, "generation")?.generation.latent;
        let dims: [usize; 5] = latent.dims().try_into().map_err(|_| {
            Error::InvalidArgument(format!(
                "the latent has shape {:?}, not 5 dims",
                latent.dims()
            ))
        })?;
        if !shape.is_null() {
            std::ptr::copy_nonoverlapping(dims.as_ptr(), shape, 5);
        }
        Ok(latent.f32_data()?.as_ptr())
    })
}

/// The seed the noise was drawn from (the one drawn at random when the request asked for it);
/// -1 when `generation` is NULL.
///
/// # Safety
/// `generation` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generation_seed(generation: *const wanrt_generation) -> i64 {
    guard_value("wanrt_generation_seed", -1, || {
        let seed = handle(generation, "generation")?.generation.params.seed;
        Ok(seed.map_or(-1, |s| s as i64))
    })
}

/// The generation as a JSON object: the request as run (prompt with any LoRA trigger phrases,
/// negative prompt, size, sampler settings, seed), the models and LoRAs with their
/// fingerprints, the library version, and the seconds each stage took (`timings`). Files
/// written from this result record the same object without `timings`. NULL when `generation`
/// is NULL. Valid until `wanrt_generation_free`.
///
/// # Safety
/// `generation` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generation_json(
    generation: *const wanrt_generation,
) -> *const c_char {
    guard_value("wanrt_generation_json", std::ptr::null(), || {
        Ok(handle(generation, "generation")?.json.as_ptr())
    })
}

/// Writes the frames as an H.264 MP4 file at `path`, with the generation's JSON (without
/// timings) as the movie's comment, which `wanrt inspect` prints. `params` may be NULL for the defaults (16 fps, qp 20). The file appears complete or
/// not at all (written to a temporary file, then renamed); an existing file is replaced.
///
/// Returns `WANRT_STATUS_OK`; `WANRT_STATUS_INVALID_ARGUMENT` for a NULL `generation` or `path`,
/// an invalid `params` (see the struct) or odd frame sizes; `WANRT_STATUS_NOT_FOUND` when the
/// folder does not exist; `WANRT_STATUS_BAD_FILE` when the file cannot be written.
///
/// # Safety
/// `generation` is NULL or a live result; `path` is NULL or a NUL-terminated string; `params` is
/// NULL or an initialised `wanrt_mp4_params`.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generation_write_mp4(
    generation: *const wanrt_generation,
    path: *const c_char,
    params: *const wanrt_mp4_params,
) -> wanrt_status {
    guard("wanrt_generation_write_mp4", || {
        let result = handle(generation, "generation")?;
        let path = req_path(path, "path")?;
        let options = mp4_options(params)?;
        let g = &result.generation;
        video::write_mp4(
            &path,
            &g.frames,
            g.width,
            g.height,
            &options,
            result.metadata(),
        )
    })
}

unsafe fn mp4_options(params: *const wanrt_mp4_params) -> Result<Mp4Options> {
    let p = if params.is_null() {
        wanrt_mp4_params::default()
    } else {
        params::read(params, "params")?
    };
    let qp = u8::try_from(p.qp)
        .ok()
        .filter(|&qp| qp <= 51)
        .ok_or_else(|| Error::InvalidArgument(format!("params->qp {} is not in 0..=51", p.qp)))?;
    Ok(Mp4Options {
        fps: p.fps,
        qp,
        openh264_library: opt_path(p.openh264_library, "params->openh264_library")?,
    })
}

/// Writes every frame as a PNG file `frame_00000.png`, `frame_00001.png`, ... in the folder
/// `dir` (created if missing), each with the generation's JSON (without timings) in an `iTXt`
/// chunk (keyword "wanrt"). Files of the same names are replaced, other files are left alone; on an error the
/// frames already written by this call are removed.
///
/// Returns `WANRT_STATUS_OK`; `WANRT_STATUS_INVALID_ARGUMENT` for a NULL `generation` or
/// `dir`; `WANRT_STATUS_BAD_FILE` (or `NOT_FOUND`) when a file cannot be written.
///
/// # Safety
/// `generation` is NULL or a live result; `dir` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generation_write_png_frames(
    generation: *const wanrt_generation,
    dir: *const c_char,
) -> wanrt_status {
    guard("wanrt_generation_write_png_frames", || {
        let result = handle(generation, "generation")?;
        let dir: PathBuf = req_path(dir, "dir")?;
        let g = &result.generation;
        video::write_png_frames(&dir, &g.frames, g.width, g.height, result.metadata()).map(drop)
    })
}

/// Frees `generation` and everything its accessors returned. NULL is a no-op. Any thread may
/// free it; freeing it twice is undefined.
///
/// # Safety
/// `generation` is NULL or a live result that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn wanrt_generation_free(generation: *mut wanrt_generation) {
    guard_value("wanrt_generation_free", (), || {
        if !generation.is_null() {
            drop(Box::from_raw(generation));
        }
        Ok(())
    })
}
