//! The native mfio runtime: io_uring, or epoll readiness with a file thread
//! pool where io_uring is unavailable, behind one [`Runtime`] handle.
//!
//! [`Runtime::new`] picks io_uring when a ring can be set up and probed, else
//! the poll backend; `MFIO_BACKEND=uring|poll` or
//! [`RuntimeBuilder::backend`] override it and [`Runtime::kind`] reports it.
//! A [`File`] is a positional `PacketIo` handle, so every mfio-core layer
//! (async `IoRead`/`IoWrite`, blocking `SyncIoRead`/`SyncIoWrite`, the
//! `std::io` cursor) works on it.
//!
//! ```
//! use mfio_backends::{OpenOptions, Runtime};
//! use mfio_core::{IoBackendExt, IoRead, IoWrite};
//!
//! # fn main() -> mfio_core::Result<()> {
//! let dir = std::env::temp_dir().join(format!("mfio-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("hello.txt");
//! let rt = Runtime::new()?;
//! let text = rt.block_on(async {
//!     let file = rt.open(&path, OpenOptions::new().read(true).write(true).create(true)).await?;
//!     file.write_all_at(0, b"hello from the ring".to_vec()).await.0?;
//!     file.sync_all().await?;
//!     let (res, buf) = file.read_to_end_at(0, Vec::new()).await.into_parts();
//!     res.map(|_| buf)
//! })?;
//! assert_eq!(text, b"hello from the ring");
//! std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! What is here, on both backends: files (open, close, read, write,
//! readv/writev, `fsync`/`fdatasync`, `statx`, `ftruncate`, `fallocate`,
//! `O_DIRECT` with [`BufferPool`] buffers registered with io_uring), paths
//! (`mkdir`, `unlink`, `rename`, directory listings, [`Dir`]-relative paths)
//! and sockets ([`TcpListener`]/[`TcpStream`], [`UnixListener`]/[`UnixStream`],
//! [`UdpSocket`]). On io_uring, files also get a slot in the registered-file
//! table while one is free; operations the kernel lacks run on a thread pool.
//! [`Composite`] puts several backends behind one descriptor.
//!
//! Inside, each operation is declared once, as a struct in `op/`, and each
//! engine (`uring/`, `poll/`, and the blocking executor in `blocking/`)
//! carries it out in files of its own; `ARCHITECTURE.md` in the repository
//! draws the layers and follows one read through them.

// The layers, lowest first; each imports only from those above it in this
// list (`scripts/check-layers` checks it).
mod blocking;
mod buffers;
mod composite;
mod dir;
mod engine;
mod fs;
mod net;
mod op;
mod poll;
mod runtime;
mod uring;

pub use buffers::{BufferPool, RegisteredBuf};
pub use composite::Composite;
pub use dir::{Dir, DirFuture};
pub use fs::{File, OpenFuture, OpenOptions, SyncData};
pub use net::{
    TcpAccept, TcpConnect, TcpListener, TcpStream, UdpSocket, UnixAccept, UnixConnect, UnixListener, UnixStream,
};
pub use op::{DirEntry, FileType, Metadata};
pub use runtime::{BackendKind, OpFuture, Runtime, RuntimeBuilder, BACKEND_ENV};

// Every public handle can be shared with and moved to other threads: a
// submission from a foreign thread goes through the backend's queue.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Runtime>();
    send_sync::<RuntimeBuilder>();
    send_sync::<File>();
    send_sync::<Dir>();
    send_sync::<OpenOptions>();
    send_sync::<Metadata>();
    send_sync::<DirEntry>();
    send_sync::<BufferPool>();
    send_sync::<Composite>();
    send_sync::<TcpListener>();
    send_sync::<TcpStream>();
    send_sync::<UnixListener>();
    send_sync::<UnixStream>();
    send_sync::<UdpSocket>();
    send_sync::<OpFuture<()>>();
    send_sync::<OpenFuture>();
    send_sync::<DirFuture>();
    send_sync::<TcpAccept>();
    send_sync::<TcpConnect>();
    send_sync::<UnixAccept>();
    send_sync::<UnixConnect>();
};
