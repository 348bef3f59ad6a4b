//! Operations, declared once. Each backend carries them out its own way:
//! `uring/` as submission-queue entries, `poll/` as blocking system calls on
//! its thread pool.
//!
//! Byte transfers travel as mfio-core packet views; everything else (open,
//! stat) completes through a [`Completer`] / [`OpFuture`] pair.

use std::ffi::CString;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use mfio_core::completion::{completion, Completer, Submission};
use mfio_core::kept::KeptBytes;
use mfio_core::queue::Mailbox;
use mfio_core::{Error, Notifier, PacketView, Read, Result, Write};
use parking_lot::Mutex;
use rustix::net::SocketAddrAny;

use crate::dir::DirEntry;
use crate::fs::Metadata;
use crate::runtime::Runtime;

/// An open file's (or directory's) descriptor and, on io_uring, its slot in
/// the ring's file table. Shared by the handle and every operation on it, so
/// the slot is released only once no operation can still use it.
pub(crate) struct FileFd {
    pub(crate) fd: OwnedFd,
    pub(crate) fixed: Option<FixedSlot>,
    /// Writes handed to the kernel or the pool and not yet finished; a sync
    /// of this file waits for them (and only for them).
    writes_in_flight: AtomicUsize,
}

impl FileFd {
    /// `fd`, with its registered-file slot if it has one.
    pub(crate) fn new(fd: OwnedFd, fixed: Option<FixedSlot>) -> Self {
        Self {
            fd,
            fixed,
            writes_in_flight: AtomicUsize::new(0),
        }
    }

    /// True while a write handed out before now has not finished.
    pub(crate) fn has_writes_in_flight(&self) -> bool {
        self.writes_in_flight.load(Ordering::Acquire) != 0
    }

    /// Counts a write handed to the kernel or the pool.
    pub(crate) fn write_started(&self) {
        self.writes_in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a write that finished (its completion was reaped or its
    /// system call returned).
    pub(crate) fn write_finished(&self) {
        self.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for FileFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileFd")
            .field("fd", &self.fd.as_raw_fd())
            .field("slot", &self.fixed.as_ref().map(|s| s.index))
            .finish()
    }
}

impl AsFd for FileFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for FileFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A slot in io_uring's registered-file table, given back when dropped.
pub(crate) struct FixedSlot {
    pub(crate) index: u32,
    /// Where released slots go; the ring is updated at its next driving step.
    pub(crate) release: Arc<Mailbox<u32>>,
    pub(crate) notifier: Arc<Notifier>,
}

impl Drop for FixedSlot {
    fn drop(&mut self) {
        self.release.push(self.index);
        self.notifier.notify();
    }
}

/// A path, relative to a directory descriptor (`None`: the current directory).
pub(crate) struct At {
    pub(crate) dir: Option<Arc<FileFd>>,
    pub(crate) path: CString,
}

impl At {
    /// The directory descriptor for `*at(2)` calls (`AT_FDCWD` for none).
    pub(crate) fn dirfd(&self) -> BorrowedFd<'_> {
        match &self.dir {
            Some(fd) => fd.as_fd(),
            None => rustix::fs::CWD,
        }
    }
}

/// An open socket, shared by its handle and every operation on it.
///
/// On the poll backend it is registered (edge-triggered) in the backend's
/// epoll set under `token`, and deregistered when the last user is gone,
/// before the descriptor closes, so a reused descriptor number can never
/// inherit a stale registration.
pub(crate) struct Socket {
    pub(crate) fd: OwnedFd,
    /// Bytes of completed reads whose caller dropped them, read again first;
    /// also the cancel handler of every operation on the socket (it
    /// forwards cancellations to the backend).
    pub(crate) kept: Arc<KeptBytes>,
    /// Held by a receive that runs as a blocking call (thread pool), so
    /// receives on one socket take their bytes one after the other.
    pub(crate) read_turn: Mutex<()>,
    /// The poll backend's epoll set, if registered there.
    pub(crate) epoll: Option<Arc<OwnedFd>>,
    /// Identifies the socket in the epoll set and in cancellation tokens.
    pub(crate) token: u64,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.fd.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl Socket {
    /// A socket whose operations' cancellations go to `cancels`.
    pub(crate) fn new(
        fd: OwnedFd,
        cancels: Arc<dyn mfio_core::CancelHandler>,
        epoll: Option<Arc<OwnedFd>>,
        token: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            fd,
            kept: KeptBytes::new(cancels),
            read_turn: Mutex::new(()),
            epoll,
            token,
        })
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(epoll) = &self.epoll {
            let _ = rustix::event::epoll::delete(&**epoll, &self.fd);
        }
    }
}

/// One I/O operation, as a backend receives it.
pub(crate) enum Op {
    /// `pread` of `view.len()` bytes at `pos`.
    Read {
        fd: Arc<FileFd>,
        pos: u64,
        view: PacketView<Read>,
    },
    /// `preadv` into several views, filled in order from `pos`.
    ReadV {
        fd: Arc<FileFd>,
        pos: u64,
        views: Vec<PacketView<Read>>,
    },
    /// `pwritev` from several views, in order from `pos` (`None`: append).
    WriteV {
        fd: Arc<FileFd>,
        pos: Option<u64>,
        views: Vec<PacketView<Write>>,
    },
    /// `pwrite` at `pos`; `None` writes at the file position (append mode).
    Write {
        fd: Arc<FileFd>,
        pos: Option<u64>,
        view: PacketView<Write>,
    },
    /// `fsync` (or `fdatasync`); completes the (empty) view.
    Sync {
        fd: Arc<FileFd>,
        data_only: bool,
        view: PacketView<Write>,
    },
    /// `openat(at, flags, mode)`.
    Open {
        at: At,
        flags: i32,
        mode: u32,
        done: Completer<OwnedFd>,
    },
    /// `statx(at, flags)`; an open file is `At { dir: fd, path: "" }` with `AT_EMPTY_PATH`.
    Stat {
        at: At,
        flags: i32,
        done: Completer<Metadata>,
    },
    /// `mkdirat(at, mode)`.
    Mkdir { at: At, mode: u32, done: Completer<()> },
    /// `unlinkat(at)`, with `AT_REMOVEDIR` for a directory.
    Unlink { at: At, dir: bool, done: Completer<()> },
    /// `renameat(from, to)`.
    Rename { from: At, to: At, done: Completer<()> },
    /// `ftruncate(fd, len)`.
    Truncate {
        fd: Arc<FileFd>,
        len: u64,
        done: Completer<()>,
    },
    /// `fallocate(fd, 0, offset, len)`.
    Allocate {
        fd: Arc<FileFd>,
        offset: u64,
        len: u64,
        done: Completer<()>,
    },
    /// Lists a directory (no io_uring opcode: always on the thread pool).
    ReadDir { at: At, done: Completer<Vec<DirEntry>> },
    /// `connect(addr)` on a new socket; `in_progress` once a connect was
    /// started and its outcome is awaited (the socket turns writable, then
    /// `SO_ERROR` tells).
    Connect {
        sock: Arc<Socket>,
        addr: Box<SocketAddrAny>,
        in_progress: bool,
        done: Completer<()>,
    },
    /// `accept4(SOCK_CLOEXEC)`.
    Accept {
        sock: Arc<Socket>,
        done: Completer<OwnedFd>,
    },
    /// `send(MSG_NOSIGNAL)`: a closed peer is `EPIPE`, never a signal.
    Send { sock: Arc<Socket>, view: PacketView<Write> },
    /// `recv`: what is available, at least 1 byte, or 0 at end of stream.
    Recv { sock: Arc<Socket>, view: PacketView<Read> },
    /// `shutdown(how)`.
    Shutdown {
        sock: Arc<Socket>,
        how: rustix::net::Shutdown,
        done: Done,
    },
    /// `sendto(addr)`: one datagram.
    SendTo {
        sock: Arc<Socket>,
        addr: Box<SocketAddrAny>,
        view: PacketView<Write>,
    },
    /// `close` of a file's last reference; the descriptor is given up once
    /// the close ran (Linux releases it even when close reports an error).
    Close { file: FileFd, done: Completer<()> },
    /// `recvfrom`: one datagram; the sender's address is stored in `from`
    /// before the view completes.
    RecvFrom {
        sock: Arc<Socket>,
        view: PacketView<Read>,
        from: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    },
}

impl Op {
    /// The operation's name in error reports.
    pub(crate) fn name(&self) -> mfio_core::Op {
        use mfio_core::Op as E;
        match self {
            Op::Read { .. } | Op::ReadV { .. } => E::Read,
            Op::Write { .. } | Op::WriteV { .. } => E::Write,
            Op::Sync { .. } => E::Flush,
            Op::Open { .. } => E::Open,
            Op::Stat { .. } => E::Metadata,
            Op::Mkdir { .. } => E::CreateDir,
            Op::Unlink { .. } => E::Remove,
            Op::Rename { .. } => E::Rename,
            Op::Truncate { .. } | Op::Allocate { .. } => E::SetLen,
            Op::Close { .. } => E::Close,
            Op::ReadDir { .. } => E::ReadDir,
            Op::Connect { .. } => E::Connect,
            Op::Accept { .. } => E::Accept,
            Op::Send { .. } | Op::SendTo { .. } => E::Write,
            Op::Recv { .. } | Op::RecvFrom { .. } => E::Read,
            Op::Shutdown { .. } => E::Shutdown,
        }
    }

    /// The file a write goes to: a sync of that file waits for it.
    pub(crate) fn written_file(&self) -> Option<&Arc<FileFd>> {
        match self {
            Op::Write { fd, .. } | Op::WriteV { fd, .. } => Some(fd),
            _ => None,
        }
    }

    /// For a sync: true while a write to its file handed out before it has
    /// not finished. The sync then waits, and only for that file: other
    /// operations (a receive that never completes, a blocked FIFO open) never
    /// hold it up, nor does it hold them up.
    pub(crate) fn waits_for_writes(&self) -> bool {
        matches!(self, Op::Sync { fd, .. } if fd.has_writes_in_flight())
    }

    /// Fails the operation without running it (backend shutting down, …).
    pub(crate) fn fail(self, err: Error) {
        match self {
            Op::Read { view, .. } => view.fail(err),
            Op::Write { view, .. } | Op::Sync { view, .. } => view.fail(err),
            Op::ReadV { views, .. } => fail_all(views, &err),
            Op::WriteV { views, .. } => fail_all(views, &err),
            Op::Open { done, .. } => done.complete(Err(err)),
            Op::Stat { done, .. } => done.complete(Err(err)),
            Op::ReadDir { done, .. } => done.complete(Err(err)),
            Op::Accept { done, .. } => done.complete(Err(err)),
            Op::Send { view, .. } | Op::SendTo { view, .. } => view.fail(err),
            Op::Recv { view, .. } | Op::RecvFrom { view, .. } => view.fail(err),
            Op::Shutdown { done, .. } => done.complete(Err(err)),
            Op::Connect { done, .. } | Op::Close { done, .. } => done.complete(Err(err)),
            Op::Mkdir { done, .. }
            | Op::Unlink { done, .. }
            | Op::Rename { done, .. }
            | Op::Truncate { done, .. }
            | Op::Allocate { done, .. } => done.complete(Err(err)),
        }
    }
}

/// Moves the syncs in `held` whose file has no write in flight any more to
/// the front of `backlog`, in the order they came.
pub(crate) fn release_syncs(held: &mut Vec<Op>, backlog: &mut std::collections::VecDeque<Op>) {
    if held.is_empty() {
        return;
    }
    let mut i = held.len();
    while i > 0 {
        i -= 1;
        if !held[i].waits_for_writes() {
            backlog.push_front(held.remove(i));
        }
    }
}

fn fail_all<D: mfio_core::Direction>(views: Vec<PacketView<D>>, err: &Error) {
    for v in views {
        v.fail(err.duplicate());
    }
}

/// Completes vectored views with `result`: `n` bytes fill them in order.
pub(crate) fn finish_vectored<D: mfio_core::Direction>(views: Vec<PacketView<D>>, result: Result<usize>) {
    match result {
        Ok(mut left) => {
            for v in views {
                let n = left.min(v.len());
                left -= n;
                v.complete(n);
            }
        }
        Err(e) => fail_all(views, &e),
    }
}

/// Future of an operation that yields a `T` (an opened file, metadata).
///
/// Dropping it before completion asks the backend to cancel; if the
/// operation completes anyway, its result is released (an fd is closed).
///
/// # Panics
/// Polling it again after it returned `Ready` panics, as with every mfio
/// future.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct OpFuture<T>(Submission<T, Runtime, Op>);

impl<T> OpFuture<T> {
    /// A future for the operation `make` builds around its completer, sent
    /// to `rt` when first polled and as soon as its queue has room.
    pub(crate) fn submit(rt: &Runtime, make: impl FnOnce(Completer<T>) -> Op) -> Self {
        let (done, completion) = completion();
        let op = make(done);
        let what = op.name();
        Self(Submission::new(rt.clone(), op, completion, what))
    }

    /// A future that is already complete (for errors found before submitting).
    pub(crate) fn ready(result: Result<T>) -> Self {
        Self(Submission::ready(result))
    }
}

impl<T> Future for OpFuture<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Where an operation that reports only success or failure delivers it: the
/// future of a method call, or a packet sent at an address (a half-close
/// sent at [`CloseWrite`](mfio_core::CloseWrite)).
pub(crate) enum Done {
    Future(Completer<()>),
    Packet(PacketView<Write>),
}

impl From<Completer<()>> for Done {
    fn from(done: Completer<()>) -> Self {
        Done::Future(done)
    }
}

impl Done {
    pub(crate) fn complete(self, result: Result<()>) {
        match self {
            Done::Future(done) => done.complete(result),
            Done::Packet(view) => view.finish(result.map(|()| 0)),
        }
    }
}
