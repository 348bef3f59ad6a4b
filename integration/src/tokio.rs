//! [`Tokio`]: drive a backend from a tokio runtime.

use std::future::Future;
use std::os::fd::AsRawFd;

use mfio_core::{IoBackend, Result};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::fd::BackendFd;
use crate::run::Spin;

/// Drives mfio backends from tokio (current-thread or multi-thread): the
/// backend's descriptor is registered with tokio's reactor through
/// [`AsyncFd`], so waiting costs no thread and no CPU.
///
/// Backends that ask for timed wake-ups need the runtime's timer
/// (`enable_time`, included in `enable_all`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

impl Tokio {
    /// Runs `fut` while driving `backend`; the backend is driven only as long
    /// as `fut` runs.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `AsyncFd` does).
    pub async fn run<B: IoBackend + ?Sized, F: Future>(backend: &B, fut: F) -> F::Output {
        crate::run::with_driver("tokio", fut, drive(backend)).await
    }

    /// Drives `backend` until this future is dropped; spawn it
    /// (`tokio::spawn(Tokio::driver(rt.clone()))`) and use the backend's
    /// handles from any task.
    ///
    /// # Errors
    /// Only if the descriptor cannot be registered with tokio (no reactor,
    /// or it is registered already by another driver of the same backend).
    pub async fn driver<B: IoBackend>(backend: B) -> Result<()> {
        drive(&backend).await
    }
}

/// The driving loop; returns only on a registration error.
async fn drive<B: IoBackend + ?Sized>(backend: &B) -> Result<()> {
    let handle = backend.polling_handle();
    let notifier = handle.notifier.clone();
    // Always counted as a sleeper: every notification writes the eventfd,
    // which is what tokio's reactor watches.
    let _sleeper = notifier.sleeper_owned();
    // SAFETY: the descriptor belongs to `backend`, which is borrowed for this
    // whole function, so it stays open and unchanged for as long as the
    // `AsyncFd` (a local of this function) exists.
    let fd = unsafe { AsyncFd::register_with_interest(BackendFd(handle.fd.as_raw_fd()), Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut spin = Spin::default();
    loop {
        // Never the spinning step: see `Spin`.
        let status = backend.drive_now();
        if status.progress {
            spin.reset();
            // Let the tasks just woken run, then look again.
            tokio::task::yield_now().await;
            continue;
        }
        if spin.goes_on(backend) {
            tokio::task::yield_now().await;
            continue;
        }
        match status.timeout {
            Some(t) => {
                if let Ok(Ok(mut ready)) = tokio::time::timeout(t, fd.readable()).await {
                    ready.clear_ready();
                }
            }
            None => fd.readable().await?.clear_ready(),
        }
        notifier.drain();
    }
}
