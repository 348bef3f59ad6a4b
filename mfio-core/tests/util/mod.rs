//! Helpers shared by the mfio-core integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mfio_core::{IoBuf, IoBufMut};

/// A read buffer that records when it is dropped.
pub struct TrackedBuf {
    bytes: Vec<u8>,
    freed: Arc<AtomicBool>,
}

impl TrackedBuf {
    pub fn new(capacity: usize) -> (Self, Arc<AtomicBool>) {
        let freed = Arc::new(AtomicBool::new(false));
        (
            Self {
                bytes: Vec::with_capacity(capacity),
                freed: freed.clone(),
            },
            freed,
        )
    }
}

impl Drop for TrackedBuf {
    fn drop(&mut self) {
        self.freed.store(true, Ordering::SeqCst);
    }
}

// SAFETY: delegates to the inner Vec's heap memory.
unsafe impl IoBuf for TrackedBuf {
    fn as_buf_ptr(&self) -> *const u8 {
        self.bytes.as_ptr()
    }
    fn buf_len(&self) -> usize {
        self.bytes.len()
    }
}

// SAFETY: delegates to the inner Vec's capacity.
unsafe impl IoBufMut for TrackedBuf {
    fn as_buf_mut_ptr(&mut self) -> *mut u8 {
        self.bytes.as_mut_ptr()
    }
    fn buf_capacity(&self) -> usize {
        self.bytes.capacity()
    }
    unsafe fn set_buf_init(&mut self, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.bytes.set_buf_init(len) }
    }
}

/// Polls `fut` once with a waker that does nothing.
pub fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    std::pin::Pin::new(fut).poll(&mut cx)
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Runs `f` on a thread and fails the test if it does not finish in `limit`
/// (a hang guard, not a timing assertion).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("did not finish within {limit:?} (hang)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("worker ended without a result"),
        },
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}
