//! The shared shape of `Tokio::run` and `Smol::run`: a caller's future
//! polled together with a driver future.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Instant;

use mfio_core::{IoBackend, Result};

/// Polls `fut` and `driver` together until `fut` completes.
///
/// # Panics
/// If the driver fails (its descriptor could not be registered with the host
/// reactor): `fut` could then never make progress, so this reports it instead
/// of hanging silently.
pub(crate) async fn with_driver<F: Future>(host: &str, fut: F, driver: impl Future<Output = Result<()>>) -> F::Output {
    let mut fut = pin!(fut);
    let mut driver = pin!(driver);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if let Poll::Ready(Err(e)) = driver.as_mut().poll(cx) {
            panic!("mfio {host} driver failed: {e}");
        }
        Poll::Pending
    })
    .await
}

/// A host driver's spin. A backend that spins for completions inside its
/// driving step ([`IoBackend::spin_budget`]: UCX, MPI, a busy-polling
/// ring) would hold the executor's thread for its whole budget, from every
/// other task on it (a current-thread runtime's, smol's `block_on`'s), and
/// nothing on that thread would see a wake meanwhile. A host driver
/// instead steps it without a spin ([`IoBackend::drive_now`]) and yields
/// to the executor between steps, for as long as that budget.
#[derive(Debug, Default)]
pub(crate) struct Spin {
    /// When the spin of the current idle stretch ends.
    until: Option<Instant>,
}

impl Spin {
    /// After a step that made progress: the next idle step starts a new
    /// spin.
    pub(crate) fn reset(&mut self) {
        self.until = None;
    }

    /// After a step that made no progress: whether to yield and step again
    /// (the budget is not spent) rather than wait on the descriptor.
    pub(crate) fn goes_on<B: IoBackend + ?Sized>(&mut self, backend: &B) -> bool {
        let until = match self.until {
            Some(until) => until,
            None => {
                let budget = backend.spin_budget();
                if budget.is_zero() {
                    return false;
                }
                *self.until.insert(Instant::now() + budget)
            }
        };
        if Instant::now() < until {
            return true;
        }
        self.until = None;
        false
    }
}
