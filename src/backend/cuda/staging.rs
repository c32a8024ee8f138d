//! Uploads through pinned host buffers ([`crate::backend::staging`] plans the chunks): each
//! device keeps [`STAGING_BUFFERS`] page-locked buffers of [`STAGING_BUFFER_BYTES`], allocated
//! on its first upload and reused for every later one. Pinned memory lets the driver copy
//! asynchronously by DMA; the copy out of a buffer is waited for (its event) before the buffer
//! is refilled.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaStream, CudaViewMut, DevicePtrMut, PinnedHostSlice,
};

use super::driver;
use crate::backend::staging::{upload_chunks, STAGING_BUFFERS, STAGING_BUFFER_BYTES};
use crate::error::Result;

/// One pinned buffer and the event of the last copy out of it.
struct Buffer {
    host: PinnedHostSlice<u8>,
    copied: Option<CudaEvent>,
}

/// A device's pinned staging buffers.
pub(crate) struct Staging {
    buffers: Vec<Buffer>,
}

impl Staging {
    /// Allocates the pinned buffers in `ctx`.
    pub(crate) fn new(ctx: &Arc<CudaContext>) -> Result<Staging> {
        let buffers = (0..STAGING_BUFFERS)
            .map(|_| {
                // SAFETY: the bytes are written (`upload`) before any copy reads them.
                let host = driver("allocating pinned staging memory", || unsafe {
                    ctx.alloc_pinned::<u8>(STAGING_BUFFER_BYTES)
                })?;
                Ok(Buffer { host, copied: None })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Staging { buffers })
    }

    /// Queues the copy of `src` into `dst` (the same length) on `stream`, chunk by chunk. The
    /// copies may still be in flight when this returns; work queued later on `stream` sees them.
    pub(crate) fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        src: &[u8],
        dst: &mut CudaViewMut<'_, u8>,
    ) -> Result<()> {
        const WHAT: &str = "copy to the CUDA device";
        for chunk in upload_chunks(src.len(), STAGING_BUFFER_BYTES, STAGING_BUFFERS) {
            let buf = &mut self.buffers[chunk.buffer];
            if let Some(done) = buf.copied.take() {
                driver(WHAT, || done.synchronize())?;
            }
            let host = driver(WHAT, || buf.host.as_mut_slice())?;
            let staged = &mut host[..chunk.range.len()];
            staged.copy_from_slice(&src[chunk.range.clone()]);
            let mut part = dst.slice_mut(chunk.range);
            let (ptr, _sync) = part.device_ptr_mut(stream);
            // SAFETY: `staged` is pinned memory that stays untouched until the event recorded
            // below has completed; `part` holds exactly `staged.len()` bytes on `stream`.
            driver(WHAT, || unsafe {
                cudarc::driver::result::memcpy_htod_async(ptr, staged, stream.cu_stream())
            })?;
            buf.copied = Some(driver(WHAT, || stream.record_event(None))?);
        }
        Ok(())
    }
}
