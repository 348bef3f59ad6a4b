//! [`BufPool`]: message buffers kept for reuse. Large ones, so that a
//! steady stream of long messages does not map fresh memory (and take a
//! page fault per page) for every message; short ones, so that a burst of
//! short messages waiting for their receives (a bcast's root runs ahead of
//! its receivers) does not go to the allocator's slow paths for each.

use parking_lot::Mutex;

/// Buffers shorter than this are not worth keeping: the allocator serves
/// them from memory it already has.
const MIN_KEPT: usize = 64 << 10;
/// At most this many buffers are kept…
const MAX_BUFS: usize = 16;
/// …holding at most this many bytes between them.
const MAX_BYTES: usize = 256 << 20;
/// Short buffers (of at most this capacity: a frame's inline bytes)…
const SMALL_MAX: usize = 16 << 10;
/// …are kept up to this many: the allocator's own per-thread cache keeps
/// 7 of a size, and a burst of short messages outgrows that (8-byte bcasts
/// on 2 ranks: a fifth of the receiver's instructions went to `malloc` and
/// `free`, BENCHMARKS.md).
const MAX_SMALL: usize = 128;

/// Empty buffers for reuse: of at least 64 KiB capacity (at most 16 of
/// them, 256 MiB together), and of at most 16 KiB (at most 128).
#[derive(Default)]
pub struct BufPool {
    bufs: Mutex<Vec<Vec<u8>>>,
    small: Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    /// An empty buffer with room for `len` bytes: a kept one (the smallest
    /// that fits) or a new one.
    ///
    /// # Errors
    /// `OutOfMemory` if no buffer fits and the allocator has no room.
    pub fn take(&self, len: usize) -> mfio_core::Result<Vec<u8>> {
        if len <= SMALL_MAX {
            // The last one kept: each holds a frame's worth or what a
            // receive asked for, which is what comes next in a steady loop.
            let mut small = self.small.lock();
            if small.last().is_some_and(|b| b.capacity() >= len) {
                return Ok(small.pop().unwrap_or_default());
            }
        }
        if len >= MIN_KEPT {
            let mut bufs = self.bufs.lock();
            let best = (bufs.iter().enumerate())
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Ok(bufs.swap_remove(i));
            }
        }
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).map_err(|_| {
            mfio_core::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("no memory for a {len}-byte message"),
            )
        })?;
        Ok(buf)
    }

    /// A buffer holding a copy of `bytes`.
    pub fn copy_of(&self, bytes: &[u8]) -> Vec<u8> {
        let mut buf = match self.take(bytes.len()) {
            Ok(buf) => buf,
            // As `to_vec` would, which is what this replaces.
            Err(_) => Vec::with_capacity(bytes.len()),
        };
        buf.extend_from_slice(bytes);
        buf
    }

    /// Keeps `buf` for a later [`take`](Self::take) if it is large or
    /// short and the pool has room for it; drops it otherwise.
    pub fn put(&self, mut buf: Vec<u8>) {
        if (1..=SMALL_MAX).contains(&buf.capacity()) {
            buf.clear();
            let mut small = self.small.lock();
            if small.len() < MAX_SMALL {
                small.push(buf);
            }
            return;
        }
        if buf.capacity() < MIN_KEPT {
            return;
        }
        buf.clear();
        let mut bufs = self.bufs.lock();
        let held: usize = bufs.iter().map(Vec::capacity).sum();
        if bufs.len() < MAX_BUFS && held + buf.capacity() <= MAX_BYTES {
            bufs.push(buf);
        }
    }

    /// Large buffers kept.
    pub fn kept(&self) -> usize {
        self.bufs.lock().len()
    }

    /// Short buffers kept.
    pub fn kept_small(&self) -> usize {
        self.small.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_come_back_and_middling_ones_do_not() {
        let pool = BufPool::default();
        let big = pool.take(1 << 20).expect("memory");
        assert!(big.capacity() >= 1 << 20 && big.is_empty());
        let ptr = big.as_ptr();
        pool.put(big);
        pool.put(vec![0; 32 << 10]);
        assert_eq!((pool.kept(), pool.kept_small()), (1, 0), "the middling one is not kept");
        let again = pool.take(300 << 10).expect("memory");
        assert_eq!(again.as_ptr(), ptr, "the kept buffer is reused");
        assert!(again.is_empty(), "handed out empty");
        assert_eq!(pool.kept(), 0);
        let fresh = pool.take(1 << 20).expect("memory");
        assert_ne!(fresh.as_ptr(), ptr);
    }

    #[test]
    fn short_buffers_come_back_as_copies() {
        let pool = BufPool::default();
        let a = pool.copy_of(&[1, 2, 3]);
        assert_eq!(a, [1, 2, 3]);
        let ptr = a.as_ptr();
        pool.put(a);
        assert_eq!(pool.kept_small(), 1);
        // Too long for the one kept: a new one, and the kept one stays.
        let long = pool.copy_of(&[7; 100]);
        assert_eq!((long.len(), pool.kept_small()), (100, 1));
        let b = pool.copy_of(&[9, 8]);
        assert_eq!(
            (b.as_ptr(), &b[..]),
            (ptr, &[9u8, 8][..]),
            "the kept one, its old bytes gone"
        );
        assert_eq!(pool.kept_small(), 0);
        // No memory at all is nothing to keep.
        pool.put(Vec::new());
        assert_eq!(pool.kept_small(), 0);
        drop((long, b));
    }

    #[test]
    fn the_pool_stays_bounded() {
        let pool = BufPool::default();
        for _ in 0..100 {
            pool.put(Vec::with_capacity(1 << 20));
        }
        for _ in 0..1000 {
            pool.put(Vec::with_capacity(64));
        }
        assert_eq!(pool.kept_small(), MAX_SMALL);
        assert_eq!(pool.kept(), MAX_BUFS);
        let absurd = pool.take(usize::MAX).expect_err("no such memory");
        assert_eq!(absurd.kind(), std::io::ErrorKind::OutOfMemory);
    }
}
