//! Running mfio backends inside other runtimes.
//!
//! A backend is one pollable descriptor plus a driving step
//! ([`IoBackend`](mfio_core::IoBackend)), so any event loop can drive it:
//!
//! - [`Tokio`] (feature `tokio`): registers the descriptor with tokio
//!   (`AsyncFd`); works on current-thread and multi-thread runtimes;
//! - [`Smol`] (feature `smol`): the same through async-io (`Async`);
//! - [`Null`]: no host runtime, plain [`block_on`](mfio_core::block_on).
//!
//! All three have the same shape: `X::run(&backend, future)` drives the
//! backend for as long as the future runs (async for tokio and smol, blocking
//! for `Null`), and `X::driver(backend)` drives it in the background (a
//! future to spawn; a thread for `Null`) so that handles can be moved into
//! other tasks and used there. No extra thread is used by tokio or smol, and
//! an idle backend costs no CPU: the driver sleeps on the descriptor.
//!
//! A backend that spins for completions while work is pending (UCX, MPI, a
//! busy-polling io_uring ring) spins inside its own driving step under
//! [`block_on`](mfio_core::block_on). Under tokio and smol that spin would
//! hold the executor's thread from its other tasks, so their drivers step
//! such a backend without the spin and yield to the executor between
//! steps, for as long as the spin would have lasted.
//!
//! ```
//! use mfio_core::mem::MemBackend;
//! use mfio_core::IoRead;
//! use mfio_integration::Null;
//!
//! # fn main() -> mfio_core::Result<()> {
//! let backend = MemBackend::new()?;
//! let file = backend.file(b"null driver".to_vec());
//! let (res, buf) = Null::run(&backend, file.read_at(5, Vec::with_capacity(6))).into_parts();
//! assert_eq!((res?, buf.as_slice()), (6, &b"driver"[..]));
//! # Ok(()) }
//! ```
//!
//! # Features
//! - `tokio`: the [`Tokio`] integration.
//! - `smol`: the [`Smol`] integration.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod fd;
mod null;
#[cfg(any(feature = "tokio", feature = "smol"))]
mod run;
#[cfg(feature = "smol")]
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
mod smol;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
mod tokio;

pub use null::{Null, NullDriver};
#[cfg(feature = "smol")]
pub use smol::Smol;
#[cfg(feature = "tokio")]
pub use tokio::Tokio;

// Drivers and their handles move between threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Null>();
    send_sync::<NullDriver>();
};
