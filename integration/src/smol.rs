//! [`Smol`]: drive a backend from smol / async-io.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::task::Poll;

use async_io::{Async, Timer};
use mfio_core::{IoBackend, Result};

use crate::fd::BackendFd;
use crate::run::Spin;

/// Drives mfio backends from smol (any executor on async-io): the backend's
/// descriptor is registered with async-io's reactor through [`Async`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

impl Smol {
    /// Runs `fut` while driving `backend`; the backend is driven only as long
    /// as `fut` runs.
    ///
    /// # Panics
    /// If the descriptor cannot be registered with async-io.
    pub async fn run<B: IoBackend + ?Sized, F: Future>(backend: &B, fut: F) -> F::Output {
        crate::run::with_driver("smol", fut, drive(backend)).await
    }

    /// Drives `backend` until this future is dropped; spawn it
    /// (`smol::spawn(Smol::driver(rt.clone())).detach()`).
    ///
    /// # Errors
    /// Only if the descriptor cannot be registered with async-io.
    pub async fn driver<B: IoBackend>(backend: B) -> Result<()> {
        drive(&backend).await
    }
}

async fn drive<B: IoBackend + ?Sized>(backend: &B) -> Result<()> {
    let handle = backend.polling_handle();
    let notifier = handle.notifier.clone();
    let _sleeper = notifier.sleeper_owned();
    let fd = Async::new(BackendFd(handle.fd.as_raw_fd()))?;
    let mut spin = Spin::default();
    loop {
        // Never the spinning step: see `Spin`.
        let status = backend.drive_now();
        if status.progress {
            spin.reset();
            futures_yield().await;
            continue;
        }
        if spin.goes_on(backend) {
            futures_yield().await;
            continue;
        }
        match status.timeout {
            Some(t) => {
                let readable = fd.readable();
                let timer = async {
                    Timer::after(t).await;
                    Ok(())
                };
                let mut readable = pin!(readable);
                let mut timer = pin!(timer);
                let _ = std::future::poll_fn(|cx| match readable.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(r),
                    Poll::Pending => timer.as_mut().poll(cx),
                })
                .await;
            }
            None => fd.readable().await?,
        }
        notifier.drain();
    }
}

/// Yields once to the executor.
async fn futures_yield() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
