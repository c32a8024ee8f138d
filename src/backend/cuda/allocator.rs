//! The caching allocator's bookkeeping, independent of the driver so that it is tested on any
//! machine: freed buffers are kept by size class and reused, and a memory limit bounds the bytes
//! in use plus cached. Requests past the limit first release the cache, then fail with a typed
//! [`Error::OutOfMemory`].

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Requests up to this size are rounded up to a multiple of [`SMALL_STEP`]; larger ones to a
/// multiple of [`LARGE_STEP`], so that a freed activation fits the next step's request of the
/// same shape while few distinct classes exist.
const SMALL_LIMIT: usize = 1 << 20;
const SMALL_STEP: usize = 512;
const LARGE_STEP: usize = 2 << 20;

/// The size class (bytes actually allocated) of a request of `bytes`.
pub fn size_class(bytes: usize) -> Option<usize> {
    let step = if bytes <= SMALL_LIMIT {
        SMALL_STEP
    } else {
        LARGE_STEP
    };
    bytes.max(1).checked_next_multiple_of(step)
}

/// Buffers kept for reuse plus the byte counts the limit applies to. `B` is a device buffer
/// (`CudaSlice<u8>` in the backend).
pub struct Pool<B> {
    cached: BTreeMap<usize, Vec<B>>,
    in_use: usize,
    cached_bytes: usize,
    limit: usize,
}

impl<B> Pool<B> {
    /// An empty pool that lets at most `limit` bytes be in use and cached.
    pub fn new(limit: usize) -> Pool<B> {
        Pool {
            cached: BTreeMap::new(),
            in_use: 0,
            cached_bytes: 0,
            limit,
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Changes the limit; cached buffers past it are returned for freeing.
    pub fn set_limit(&mut self, limit: usize) -> Vec<B> {
        self.limit = limit;
        if self.in_use + self.cached_bytes > limit {
            self.release_cache()
        } else {
            Vec::new()
        }
    }

    /// Bytes handed out and not yet given back.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Bytes held in the cache.
    pub fn cached(&self) -> usize {
        self.cached_bytes
    }

    /// A buffer for `bytes`: `Ok(Reuse(b))` from the cache, or `Ok(Allocate { class, free })`
    /// when the caller must allocate `class` bytes after freeing the buffers in `free` (the cache,
    /// released to make room under the limit). `OutOfMemory` when even an empty cache leaves too
    /// little room. Either way the bytes count as in use until [`Pool::give_back`].
    pub fn take(&mut self, bytes: usize) -> Result<Take<B>> {
        let class = size_class(bytes).ok_or_else(|| self.oom(bytes))?;
        if let Some(b) = self.cached.get_mut(&class).and_then(Vec::pop) {
            self.cached_bytes -= class;
            self.in_use += class;
            return Ok(Take::Reuse(b));
        }
        if self.in_use.saturating_add(class) > self.limit {
            return Err(self.oom(bytes));
        }
        let free = if self.in_use + self.cached_bytes + class > self.limit {
            self.release_cache()
        } else {
            Vec::new()
        };
        self.in_use += class;
        Ok(Take::Allocate { class, free })
    }

    /// Undoes a [`Take::Allocate`] whose allocation failed.
    pub fn allocation_failed(&mut self, class: usize) {
        self.in_use -= class;
    }

    /// Returns a buffer of `class` bytes (from [`Pool::take`]) to the cache.
    pub fn give_back(&mut self, class: usize, buf: B) {
        self.in_use -= class;
        self.cached_bytes += class;
        self.cached.entry(class).or_default().push(buf);
    }

    /// Empties the cache, returning its buffers for freeing.
    pub fn release_cache(&mut self) -> Vec<B> {
        self.cached_bytes = 0;
        std::mem::take(&mut self.cached)
            .into_values()
            .flatten()
            .collect()
    }

    fn oom(&self, bytes: usize) -> Error {
        Error::OutOfMemory(format!(
            "CUDA allocation of {bytes} bytes: {} bytes in use, limit {} bytes",
            self.in_use, self.limit
        ))
    }
}

/// What [`Pool::take`] decided.
pub enum Take<B> {
    /// A cached buffer of the request's size class.
    Reuse(B),
    /// Allocate `class` bytes after freeing `free`.
    Allocate {
        /// The bytes to allocate.
        class: usize,
        /// Cached buffers released to stay under the limit.
        free: Vec<B>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up() {
        assert_eq!(size_class(0), Some(512));
        assert_eq!(size_class(513), Some(1024));
        assert_eq!(size_class(1 << 20), Some(1 << 20));
        assert_eq!(size_class((1 << 20) + 1), Some(2 << 20));
        assert_eq!(size_class(5 << 20), Some(6 << 20));
        assert_eq!(size_class(usize::MAX), None);
    }

    #[test]
    fn buffers_are_reused_and_the_limit_holds() {
        let mut p: Pool<u32> = Pool::new(4 << 20);
        let Ok(Take::Allocate { class, free }) = p.take(3 << 20) else {
            panic!("first request allocates")
        };
        assert_eq!((class, free.len(), p.in_use()), (4 << 20, 0, 4 << 20));
        // A second buffer does not fit: typed OOM, nothing counted.
        assert!(matches!(p.take(1), Err(Error::OutOfMemory(_))));
        assert_eq!(p.in_use(), 4 << 20);
        p.give_back(class, 7);
        assert_eq!((p.in_use(), p.cached()), (0, 4 << 20));
        // Same class: the cached buffer comes back.
        assert!(matches!(p.take((3 << 20) + 5), Ok(Take::Reuse(7))));
        p.give_back(class, 7);
        // Another class: the cache is released to make room.
        let Ok(Take::Allocate { class: c2, free }) = p.take(1000) else {
            panic!("allocates")
        };
        assert_eq!((c2, free, p.cached(), p.in_use()), (1024, vec![7], 0, 1024));
        p.allocation_failed(c2);
        assert_eq!(p.in_use(), 0);
        assert!(matches!(p.take(usize::MAX), Err(Error::OutOfMemory(_))));
    }

    #[test]
    fn lowering_the_limit_releases_the_cache() {
        let mut p: Pool<u8> = Pool::new(8 << 20);
        let Ok(Take::Allocate { class, .. }) = p.take(2 << 20) else {
            panic!()
        };
        p.give_back(class, 9);
        assert!(p.set_limit(4 << 20).is_empty());
        assert_eq!(p.set_limit(1 << 20), vec![9]);
        assert_eq!((p.cached(), p.limit()), (0, 1 << 20));
    }
}
