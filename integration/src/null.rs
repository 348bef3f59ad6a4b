//! [`Null`]: no host runtime, plain `block_on`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;

use mfio_core::{block_on, IoBackend, Result};

/// Drives backends without any host runtime: [`run`](Self::run) is
/// [`block_on`], and [`driver`](Self::driver) drives in a background thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Null;

impl Null {
    /// Runs `fut` to completion on this thread, driving `backend`.
    pub fn run<B: IoBackend + ?Sized, F: Future>(backend: &B, fut: F) -> F::Output {
        block_on(backend, fut)
    }

    /// Drives `backend` on a thread of its own until the returned handle is
    /// dropped (which stops the thread and joins it).
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn driver<B: IoBackend + Send + 'static>(backend: B) -> Result<NullDriver> {
        let stop = Arc::new(StopFlag::default());
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mfio-null-driver".into())
            .spawn(move || {
                block_on(&backend, std::future::poll_fn(|cx| flag.poll_stopped(cx)));
            })?;
        Ok(NullDriver {
            stop,
            thread: Some(thread),
        })
    }
}

#[derive(Default)]
struct StopFlag {
    stopped: AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl StopFlag {
    fn poll_stopped(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if let Ok(mut w) = self.waker.lock() {
            *w = Some(cx.waker().clone());
        }
        if self.stopped.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Ok(mut w) = self.waker.lock() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }
}

/// The background thread of [`Null::driver`]; dropping it stops and joins it.
#[derive(Debug)]
pub struct NullDriver {
    stop: Arc<StopFlag>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StopFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopFlag")
            .field("stopped", &self.stopped.load(Ordering::SeqCst))
            .finish()
    }
}

impl Drop for NullDriver {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
