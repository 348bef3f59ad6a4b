//! [`BufPool`]: large message buffers kept for reuse, so that a steady
//! stream of long messages does not map fresh memory (and take a page
//! fault per page) for every message.

use parking_lot::Mutex;

/// Buffers shorter than this are not worth keeping: the allocator serves
/// them from memory it already has.
const MIN_KEPT: usize = 64 << 10;
/// At most this many buffers are kept…
const MAX_BUFS: usize = 16;
/// …holding at most this many bytes between them.
const MAX_BYTES: usize = 256 << 20;

/// Empty buffers of at least 64 KiB capacity, for reuse (at most 16 of
/// them, 256 MiB together).
#[derive(Default)]
pub struct BufPool {
    bufs: Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    /// An empty buffer with room for `len` bytes: a kept one (the smallest
    /// that fits) or a new one.
    ///
    /// # Errors
    /// `OutOfMemory` if no buffer fits and the allocator has no room.
    pub fn take(&self, len: usize) -> mfio_core::Result<Vec<u8>> {
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

    /// Keeps `buf` for a later [`take`](Self::take) if it is large and the
    /// pool has room; drops it otherwise.
    pub fn put(&self, mut buf: Vec<u8>) {
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

    /// Buffers kept.
    pub fn kept(&self) -> usize {
        self.bufs.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_come_back_and_small_ones_do_not() {
        let pool = BufPool::default();
        let big = pool.take(1 << 20).expect("memory");
        assert!(big.capacity() >= 1 << 20 && big.is_empty());
        let ptr = big.as_ptr();
        pool.put(big);
        pool.put(vec![0; 100]);
        assert_eq!(pool.kept(), 1, "the small one is not kept");
        let again = pool.take(300 << 10).expect("memory");
        assert_eq!(again.as_ptr(), ptr, "the kept buffer is reused");
        assert!(again.is_empty(), "handed out empty");
        assert_eq!(pool.kept(), 0);
        let fresh = pool.take(1 << 20).expect("memory");
        assert_ne!(fresh.as_ptr(), ptr);
    }

    #[test]
    fn the_pool_stays_bounded() {
        let pool = BufPool::default();
        for _ in 0..100 {
            pool.put(Vec::with_capacity(1 << 20));
        }
        assert_eq!(pool.kept(), MAX_BUFS);
        let absurd = pool.take(usize::MAX).expect_err("no such memory");
        assert_eq!(absurd.kind(), std::io::ErrorKind::OutOfMemory);
    }
}
