//! Completion I/O over owned-buffer packets.
//!
//! A caller hands a buffer to a backend inside a [`Packet`]; the backend owns
//! it (through [`PacketView`]s, which it may split and complete in any order)
//! until the operation completes, then the caller gets the buffer back with a
//! [`PacketOutcome`]. Two traits carry everything:
//!
//! - [`PacketIo`]: submit a packet at an address (`u64` file offset,
//!   [`NoPos`] for streams, [`Flush`]), with bounded queues and explicit
//!   backpressure;
//! - [`IoBackend`]: a pollable file descriptor ([`PollingHandle`]) and a
//!   non-blocking driving step; [`block_on`] drives a backend and a future
//!   together.
//!
//! The same packets serve every layer: [`IoRead`]/[`IoWrite`] (async,
//! positional or stream), [`SyncIoRead`]/[`SyncIoWrite`] (blocking),
//! [`IoCursor`] (`std::io::{Read, Write, Seek}`) and `AsyncIo`
//! (`futures-io` and `tokio` traits, behind the features of those names).
//! [`mem`] is a complete in-memory backend with fault-injection knobs.
//!
//! What every backend needs lives here too, so no backend writes it again:
//! [`queue`] (the bounded submission queue), [`completion`] (operations that
//! yield a value: `Completer` and its future), [`cancel`] (cancellation
//! requests of dropped operations), [`kept`] (stream bytes given back by
//! dropped reads) and [`returned`] (messages given back by dropped
//! receives).
//!
//! ```
//! use std::io::{Read, Seek, SeekFrom};
//! use mfio_core::mem::MemBackend;
//! use mfio_core::{IoBackendExt, IoCursor, IoRead, IoWrite, SyncIoRead};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = MemBackend::new()?;
//! let file = backend.file(Vec::new());
//!
//! // async, driven by block_on
//! backend.block_on(async {
//!     let (res, _buf) = file.write_all_at(0, b"hello world".to_vec()).await.into_parts();
//!     res
//! })?;
//!
//! // blocking, staged through an owned buffer
//! let mut word = [0u8; 5];
//! file.blocking_read_exact_at(6, &mut word)?;
//! assert_eq!(&word, b"world");
//!
//! // std::io
//! let mut cursor = IoCursor::new(file.clone(), 0);
//! cursor.seek(SeekFrom::End(-5))?;
//! let mut tail = String::new();
//! cursor.read_to_string(&mut tail)?;
//! assert_eq!(tail, "world");
//! # Ok(()) }
//! ```
//!
//! # Futures
//! Every future mfio returns follows one rule when polled again after it
//! returned `Ready`: it panics, naming itself, as `async fn` futures do. It
//! never hands out a second result or hangs.
//!
//! # Features
//! - `futures-io`: `AsyncIo`, with `futures_io::{AsyncRead, AsyncWrite, AsyncSeek}`.
//! - `tokio`: `AsyncIo`, with `tokio::io::{AsyncRead, AsyncWrite, AsyncSeek}`.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod buf;
pub mod cancel;
pub mod completion;
pub mod error;
pub mod ext;
pub mod io;
pub mod kept;
pub mod mem;
pub mod packet;
pub mod queue;
pub mod returned;

pub use backend::{
    block_on, block_on_waiting, deadline_after, task_woken, DriveStatus, Interest, IoBackend, IoBackendExt,
    MissedDrives, Notifier, OwnedSleeperGuard, PollingHandle, SleeperGuard,
};
pub use buf::{AlignedBuf, BufResult, IoBuf, IoBufMut, Slice};
pub use error::{Error, Op, Result};
#[cfg(any(feature = "futures-io", feature = "tokio"))]
pub use ext::adapter::AsyncIo;
pub use ext::packet::{IoFuture, PacketIoExt, PendingIo};
pub use ext::r#async::{IoFlush, IoRead, IoReadStream, IoWrite, IoWriteStream, Transfer};
pub use ext::reported::ReportedIo;
pub use ext::std_io::IoCursor;
pub use ext::sync::{SyncIoFlush, SyncIoRead, SyncIoWrite};
pub use io::{check_offset, CloseWrite, Flush, IoLen, NoPos, PacketIo, Position, QueueFull, MAX_OFFSET};
pub use packet::{CancelHandler, Direction, Packet, PacketBuf, PacketOutcome, PacketView, Read, Write};

// The handles a backend or a caller may share with other threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<mem::MemBackend>();
    send_sync::<mem::MemFile>();
    send_sync::<mem::MemStream>();
    send_sync::<Notifier>();
    send_sync::<Error>();
    send_sync::<AlignedBuf>();
    send_sync::<queue::SubmitQueue<u64>>();
    send_sync::<cancel::Cancels>();
    send_sync::<kept::KeptBytes>();
    send_sync::<completion::Completer<std::os::fd::OwnedFd>>();
    send_sync::<completion::Completion<std::os::fd::OwnedFd>>();
    send::<Packet<Read, Vec<u8>>>();
    send::<PacketOutcome>();
};
