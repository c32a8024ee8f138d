//! How host bytes travel to a CUDA device: through a small, fixed set of pinned (page-locked)
//! host buffers that each device keeps and reuses, one chunk at a time. The plan is here,
//! independent of the driver, so that it is tested on any machine; the copies are in
//! `backend::cuda::staging`.
//!
//! Chunk `i` is copied into buffer `i % buffers` and queued as an asynchronous copy to the
//! device; before a buffer is refilled, the copy out of it is waited for (an event per buffer).
//! With two buffers, filling one overlaps the DMA of the other. The host memory this takes is
//! bounded by `buffers × buffer_bytes` whatever the tensor's size, and a memory-mapped tensor is
//! read (paged in) chunk by chunk straight from its map: a checkpoint streams to the device
//! block by block without a full host copy.

use std::ops::Range;

/// Bytes of one pinned staging buffer.
pub const STAGING_BUFFER_BYTES: usize = 8 << 20;
/// Pinned staging buffers per device.
pub const STAGING_BUFFERS: usize = 2;

/// One step of an upload: the bytes `range` of the source go through staging buffer `buffer`
/// to the same range of the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Byte range in the source and the destination.
    pub range: Range<usize>,
    /// Index of the staging buffer used.
    pub buffer: usize,
}

/// The chunks of an upload of `total` bytes through `buffers` staging buffers of
/// `buffer_bytes` each (both at least 1; 0 is treated as 1), in source order.
pub fn upload_chunks(
    total: usize,
    buffer_bytes: usize,
    buffers: usize,
) -> impl Iterator<Item = Chunk> {
    let (step, buffers) = (buffer_bytes.max(1), buffers.max(1));
    (0..total.div_ceil(step)).map(move |i| Chunk {
        range: i * step..((i + 1) * step).min(total),
        buffer: i % buffers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_byte_once_in_order() {
        for total in [0, 1, 7, 8, 9, 64, 1000] {
            for (bytes, buffers) in [(8, 2), (3, 1), (1000, 2), (1, 3)] {
                let chunks: Vec<Chunk> = upload_chunks(total, bytes, buffers).collect();
                let mut next = 0;
                for (i, c) in chunks.iter().enumerate() {
                    assert_eq!(c.range.start, next, "{total} {bytes} {buffers}");
                    assert!(!c.range.is_empty() && c.range.len() <= bytes);
                    assert_eq!(c.buffer, i % buffers);
                    next = c.range.end;
                }
                assert_eq!(next, total);
                assert_eq!(chunks.len(), total.div_ceil(bytes));
            }
        }
    }

    #[test]
    fn staging_memory_is_bounded() {
        // A 14B checkpoint's largest tensors pass through the same two buffers.
        let total = 5120 * 13824 * 2;
        let max_buffer = upload_chunks(total, STAGING_BUFFER_BYTES, STAGING_BUFFERS)
            .map(|c| c.buffer)
            .max();
        assert_eq!(max_buffer, Some(STAGING_BUFFERS - 1));
        assert!(upload_chunks(total, STAGING_BUFFER_BYTES, STAGING_BUFFERS)
            .all(|c| c.range.len() <= STAGING_BUFFER_BYTES));
        assert_eq!(upload_chunks(5, 0, 0).count(), 5);
    }
}
