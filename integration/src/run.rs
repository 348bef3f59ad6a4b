//! The shared shape of `Tokio::run` and `Smol::run`: a caller's future
//! polled together with a driver future.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use mfio_core::Result;

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
