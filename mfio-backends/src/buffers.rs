//! Registered buffers: aligned buffers (for `O_DIRECT`) that io_uring knows
//! in advance, so reads and writes into them skip per-operation page pinning
//! (`READ_FIXED`/`WRITE_FIXED`).
//!
//! Registration is an optimisation only: where the ring refuses it (memory
//! lock limits, `EPERM`, a pool already registered) or on the poll backend,
//! the pool hands out the same aligned buffers, used as plain ones.

use std::sync::Arc;

use mfio_core::{AlignedBuf, IoBuf, IoBufMut, Result};
use parking_lot::Mutex;

use crate::runtime::Runtime;

struct PoolInner {
    rt: Runtime,
    free: Mutex<Vec<AlignedBuf>>,
    registered: bool,
}

impl Drop for PoolInner {
    /// Every buffer is back (each `RegisteredBuf` holds the pool), so no
    /// operation uses them: unregister, then the memory is freed.
    fn drop(&mut self) {
        if self.registered {
            self.rt.unregister_buffers();
        }
    }
}

/// A fixed set of aligned buffers, registered with io_uring where possible.
/// Cheap to clone; buffers return to the pool when dropped.
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("registered", &self.inner.registered)
            .field("free", &self.inner.free.lock().len())
            .finish()
    }
}

impl BufferPool {
    pub(crate) fn new(rt: &Runtime, count: usize, size: usize, align: usize) -> Result<Self> {
        let mut bufs = (0..count)
            .map(|_| AlignedBuf::with_capacity(size, align))
            .collect::<Result<Vec<_>>>()?;
        let regions: Vec<(*mut u8, usize)> = bufs
            .iter_mut()
            .map(|b| (b.as_buf_mut_ptr(), b.buf_capacity()))
            .collect();
        let registered = rt.register_buffers(&regions);
        Ok(Self {
            inner: Arc::new(PoolInner {
                rt: rt.clone(),
                free: Mutex::new(bufs),
                registered,
            }),
        })
    }

    /// True if the ring accepted the buffers (reads and writes into them
    /// use the fixed-buffer opcodes).
    pub fn is_registered(&self) -> bool {
        self.inner.registered
    }

    /// A free buffer (empty, with the pool's capacity and alignment), or
    /// `None` if all are in use.
    pub fn take(&self) -> Option<RegisteredBuf> {
        let mut buf = self.inner.free.lock().pop()?;
        buf.truncate(0);
        Some(RegisteredBuf {
            buf: Some(buf),
            pool: self.inner.clone(),
        })
    }
}

/// A buffer from a [`BufferPool`]: an [`AlignedBuf`] that returns to its
/// pool when dropped.
pub struct RegisteredBuf {
    buf: Option<AlignedBuf>,
    pool: Arc<PoolInner>,
}

impl std::fmt::Debug for RegisteredBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredBuf").field("buf", &self.buf).finish()
    }
}

impl RegisteredBuf {
    fn inner(&self) -> &AlignedBuf {
        match &self.buf {
            Some(b) => b,
            None => unreachable!("the buffer is only taken out in Drop"),
        }
    }

    fn inner_mut(&mut self) -> &mut AlignedBuf {
        match &mut self.buf {
            Some(b) => b,
            None => unreachable!("the buffer is only taken out in Drop"),
        }
    }
}

impl std::ops::Deref for RegisteredBuf {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        self.inner()
    }
}

impl std::ops::DerefMut for RegisteredBuf {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        self.inner_mut()
    }
}

impl Drop for RegisteredBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.free.lock().push(buf);
        }
    }
}

// SAFETY: delegates to the AlignedBuf, whose heap memory stays put and stays
// allocated (it goes back to the pool, never freed while registered).
unsafe impl IoBuf for RegisteredBuf {
    fn as_buf_ptr(&self) -> *const u8 {
        self.inner().as_buf_ptr()
    }
    fn buf_len(&self) -> usize {
        self.inner().buf_len()
    }
}

// SAFETY: as above; the writable capacity is the AlignedBuf's.
unsafe impl IoBufMut for RegisteredBuf {
    fn as_buf_mut_ptr(&mut self) -> *mut u8 {
        self.inner_mut().as_buf_mut_ptr()
    }
    fn buf_capacity(&self) -> usize {
        self.inner().buf_capacity()
    }
    unsafe fn set_buf_init(&mut self, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner_mut().set_buf_init(len) }
    }
}
