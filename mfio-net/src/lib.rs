//! Networking over mfio packets.
//!
//! With the `ucx` feature (on by default): a UCX backend on the system
//! libucx ([`ucx`]). A worker is an mfio [`IoBackend`](mfio_core::IoBackend)
//! whose descriptor wakes on UCX events, so it runs under `block_on`,
//! tokio, smol, or beside an io_uring runtime in one `Composite`.
//!
//! ```
//! # #[cfg(feature = "ucx")]
//! # fn main() -> mfio_core::Result<()> {
//! use mfio_core::{IoBackendExt, IoReadStream, IoWriteStream};
//! use mfio_net::ucx::Context;
//!
//! // Shared memory within this process (and loopback within this host).
//! let context = Context::builder().set("TLS", "sm,self").build()?;
//! let worker = context.worker()?;
//! let ep = worker.connect(&worker.address())?;
//! worker.block_on(async {
//!     let (sent, _) = ep.write_all(b"hello".to_vec()).await.into_parts();
//!     sent?;
//!     let (got, buf) = ep.read_exact(Vec::with_capacity(5)).await.into_parts();
//!     got?;
//!     assert_eq!(&buf[..], b"hello");
//!     Ok(())
//! })
//! # }
//! # #[cfg(not(feature = "ucx"))]
//! # fn main() {}
//! ```

#[cfg(feature = "ucx")]
pub mod ucx;
