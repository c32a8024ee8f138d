//! The CUDA devices wanrt can run on, for a C caller to pick `wanrt_device` and its index.

use std::ffi::c_char;

use super::status::{guard, wanrt_status};
use crate::backend::{cuda_devices, DeviceInfo};
use crate::error::Error;

/// Bytes of [`wanrt_device_info`]'s `name`, its terminating NUL included.
pub const WANRT_DEVICE_NAME_SIZE: usize = 128;

/// One CUDA device as the driver reports it. A fixed-size struct (no `struct_size`): a later
/// version adds a new function rather than fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct wanrt_device_info {
    /// The index to pass as the device index (the driver's ordinal).
    pub index: u32,
    /// Compute capability, major part (9 for an H100).
    pub compute_major: i32,
    /// Compute capability, minor part.
    pub compute_minor: i32,
    /// Total device memory in bytes.
    pub total_memory: u64,
    /// The product name, NUL-terminated (cut to fit).
    pub name: [c_char; WANRT_DEVICE_NAME_SIZE],
}

impl From<&DeviceInfo> for wanrt_device_info {
    fn from(d: &DeviceInfo) -> wanrt_device_info {
        let mut name = [0 as c_char; WANRT_DEVICE_NAME_SIZE];
        let bytes = d.name.as_bytes();
        let n = bytes.len().min(WANRT_DEVICE_NAME_SIZE - 1);
        for (dst, &src) in name.iter_mut().zip(&bytes[..n]) {
            *dst = src as c_char;
        }
        wanrt_device_info {
            index: u32::try_from(d.ordinal).unwrap_or(u32::MAX),
            compute_major: d.compute_capability.0,
            compute_minor: d.compute_capability.1,
            total_memory: d.total_memory as u64,
            name,
        }
    }
}

/// Lists the CUDA devices: writes their number to `*count` and the first `min(capacity,
/// *count)` of them to `out` (which may be NULL when `capacity` is 0, to ask for the count
/// first). A library built without CUDA, or a machine without the NVIDIA driver, has no devices:
/// `WANRT_STATUS_OK` with `*count` 0. A driver that fails to answer gives its error status.
/// Fails with `WANRT_STATUS_INVALID_ARGUMENT` for a NULL `count`, or a NULL `out` with a
/// non-zero `capacity`.
///
/// # Safety
/// `count` is NULL or writable; `out` is NULL or points to `capacity` writable structs.
#[no_mangle]
pub unsafe extern "C" fn wanrt_list_devices(
    out: *mut wanrt_device_info,
    capacity: usize,
    count: *mut usize,
) -> wanrt_status {
    guard("wanrt_list_devices", || {
        if count.is_null() || (out.is_null() && capacity > 0) {
            return Err(Error::InvalidArgument(
                "count must not be NULL, nor out when capacity is above 0".into(),
            ));
        }
        let devices = cuda_devices()?;
        for (i, d) in devices.iter().take(capacity).enumerate() {
            // SAFETY: the caller's contract: `out` holds `capacity` structs and `i < capacity`.
            unsafe { out.add(i).write(d.into()) };
        }
        // SAFETY: checked non-NULL above; writable by the caller's contract.
        unsafe { count.write(devices.len()) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_and_terminated() {
        let d = DeviceInfo {
            ordinal: 3,
            name: "N".repeat(300),
            compute_capability: (9, 0),
            total_memory: 1 << 40,
        };
        let c = wanrt_device_info::from(&d);
        assert_eq!(c.index, 3);
        assert_eq!((c.compute_major, c.compute_minor), (9, 0));
        assert_eq!(c.total_memory, 1 << 40);
        assert_eq!(c.name[WANRT_DEVICE_NAME_SIZE - 1], 0);
        assert_eq!(c.name[WANRT_DEVICE_NAME_SIZE - 2], b'N' as c_char);
    }

    #[test]
    fn bad_arguments_and_an_empty_machine() {
        let mut n = usize::MAX;
        // SAFETY: NULL out with capacity 0 is allowed; `n` is writable.
        let st = unsafe { wanrt_list_devices(std::ptr::null_mut(), 0, &mut n) };
        match cuda_devices() {
            Ok(list) => assert_eq!((st, n), (wanrt_status::Ok, list.len())),
            Err(_) => assert_ne!(st, wanrt_status::Ok),
        }
        // SAFETY: NULL pointers are refused before any access.
        let st = unsafe { wanrt_list_devices(std::ptr::null_mut(), 2, &mut n) };
        assert_eq!(st, wanrt_status::InvalidArgument);
        let st = unsafe { wanrt_list_devices(std::ptr::null_mut(), 0, std::ptr::null_mut()) };
        assert_eq!(st, wanrt_status::InvalidArgument);
    }
}
