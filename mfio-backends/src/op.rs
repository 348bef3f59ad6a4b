//! Operations, declared once. Each backend carries them out its own way:
//! `uring/` as submission-queue entries, `poll/` as blocking system calls on
//! its thread pool.
//!
//! Byte transfers travel as mfio-core packet views; everything else (open,
//! stat) completes through a [`Completer`] / [`OpFuture`] pair.

use std::collections::VecDeque;
use std::ffi::CString;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use mfio_core::queue::Mailbox;
use mfio_core::{CancelHandler, Error, Notifier, PacketView, Read, Result, Write};
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

/// Cancellation requests from dropped futures, by token, for the driving
/// step to apply; pushing wakes the backend.
pub(crate) struct Cancels {
    pub(crate) tokens: Mailbox<u64>,
    pub(crate) notifier: Arc<Notifier>,
}

impl Cancels {
    pub(crate) fn new(notifier: Arc<Notifier>) -> Arc<Self> {
        Arc::new(Self {
            tokens: Mailbox::default(),
            notifier,
        })
    }
}

impl CancelHandler for Cancels {
    fn cancel(&self, token: u64) {
        self.tokens.push(token);
        self.notifier.notify();
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
    /// Bytes of completed reads whose caller dropped them; read again first.
    pub(crate) pushback: Mutex<VecDeque<u8>>,
    /// The poll backend's epoll set, if registered there.
    pub(crate) epoll: Option<Arc<OwnedFd>>,
    /// Identifies the socket in the epoll set and in cancellation tokens.
    pub(crate) token: u64,
    /// Where cancellations of operations on this socket go.
    pub(crate) canceller: Arc<dyn CancelHandler>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        f.debug_struct("Socket")
            .field("fd", &self.fd.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl Socket {
    /// Serves a read from bytes given back by a dropped read, if any.
    pub(crate) fn take_pushback(&self, view: &mut PacketView<Read>) -> Option<usize> {
        let mut pushed = self.pushback.lock();
        if pushed.is_empty() {
            return None;
        }
        let n = pushed.len().min(view.len());
        let (front, back) = pushed.as_slices();
        let head = view.fill_from(&front[..front.len().min(n)]);
        view.fill_from_at(head, &back[..n - head]);
        pushed.drain(..n);
        Some(n)
    }
}

impl CancelHandler for Socket {
    fn cancel(&self, token: u64) {
        self.canceller.cancel(token);
    }

    /// A read that completed after its caller gave up: keep its bytes.
    fn unclaimed(&self, _token: u64, data: &[u8]) {
        let mut pushed = self.pushback.lock();
        for b in data.iter().rev() {
            pushed.push_front(*b);
        }
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
    /// `connect(addr)` on a new socket.
    Connect {
        sock: Arc<Socket>,
        addr: Box<SocketAddrAny>,
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
        done: Completer<()>,
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
            Op::Connect { .. } | Op::Accept { .. } => E::Open,
            Op::Send { .. } | Op::SendTo { .. } => E::Write,
            Op::Recv { .. } | Op::RecvFrom { .. } => E::Read,
            Op::Shutdown { .. } => E::Flush,
        }
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
            Op::Connect { done, .. } | Op::Shutdown { done, .. } | Op::Close { done, .. } => done.complete(Err(err)),
            Op::Mkdir { done, .. }
            | Op::Unlink { done, .. }
            | Op::Rename { done, .. }
            | Op::Truncate { done, .. }
            | Op::Allocate { done, .. } => done.complete(Err(err)),
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

enum SlotState<T> {
    Waiting,
    Done(Result<T>),
    Taken,
    /// The future was dropped; a late result is dropped on arrival (an fd closes).
    Abandoned,
}

/// Who to tell, under which token, when the future is dropped early.
type CancelHook = Option<(Arc<dyn CancelHandler>, u64)>;

struct Slot<T> {
    state: Mutex<(SlotState<T>, CancelHook)>,
    waker: AtomicWaker,
}

/// The backend's end of an operation that yields a `T`.
pub(crate) struct Completer<T> {
    slot: Option<Arc<Slot<T>>>,
}

impl<T> Completer<T> {
    /// Delivers the result and wakes the waiter; if the waiter is gone the
    /// result is dropped here (an `OwnedFd` closes).
    pub(crate) fn complete(mut self, result: Result<T>) {
        if let Some(slot) = self.slot.take() {
            deliver(&slot, result);
        }
    }

    /// True once the caller dropped the future.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.slot
            .as_ref()
            .is_some_and(|s| matches!(s.state.lock().0, SlotState::Abandoned))
    }

    /// Asks to hear about the caller dropping the future.
    ///
    /// # Errors
    /// `Interrupted` (cancelled) if it was dropped already.
    pub(crate) fn set_cancel_handler(&self, handler: Arc<dyn CancelHandler>, token: u64) -> Result<()> {
        let Some(slot) = &self.slot else { return Ok(()) };
        let mut st = slot.state.lock();
        if matches!(st.0, SlotState::Abandoned) {
            return Err(Error::cancelled());
        }
        st.1 = Some((handler, token));
        Ok(())
    }
}

fn deliver<T>(slot: &Slot<T>, result: Result<T>) {
    let mut st = slot.state.lock();
    if matches!(st.0, SlotState::Abandoned) {
        drop(st);
        drop(result);
        return;
    }
    st.0 = SlotState::Done(result);
    st.1 = None;
    drop(st);
    slot.waker.wake();
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        // Dropped without a result (the backend went away): never a silent hang.
        if let Some(slot) = self.slot.take() {
            deliver(&slot, Err(Error::aborted()));
        }
    }
}

/// Future of an operation that yields a `T` (an opened file, metadata).
///
/// Dropping it before completion asks the backend to cancel; if the
/// operation completes anyway, its result is released (an fd is closed).
#[must_use = "futures do nothing unless polled"]
pub struct OpFuture<T> {
    slot: Arc<Slot<T>>,
    /// The operation, until the backend's queue accepts it.
    unsent: Option<(Runtime, Op)>,
    /// Recorded in errors, to say which operation failed.
    what: Option<mfio_core::Op>,
}

impl<T> std::fmt::Debug for OpFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpFuture").finish_non_exhaustive()
    }
}

/// A connected completer/future pair.
pub(crate) fn completion<T>() -> (Completer<T>, OpFuture<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new((SlotState::Waiting, None)),
        waker: AtomicWaker::new(),
    });
    (
        Completer {
            slot: Some(slot.clone()),
        },
        OpFuture {
            slot,
            unsent: None,
            what: None,
        },
    )
}

impl<T> OpFuture<T> {
    /// A future for `op` (built around this future's completer), sent to
    /// `rt` when first polled and as soon as its queue has room.
    pub(crate) fn submit(mut self, rt: &Runtime, op: Op) -> Self {
        self.what = Some(op.name());
        self.unsent = Some((rt.clone(), op));
        self
    }

    /// A future that is already complete (for errors found before submitting).
    pub(crate) fn ready(result: Result<T>) -> Self {
        let (done, fut) = completion();
        done.complete(result);
        fut
    }

    fn try_take(&self) -> Option<Result<T>> {
        let mut st = self.slot.state.lock();
        match std::mem::replace(&mut st.0, SlotState::Taken) {
            SlotState::Done(r) => Some(r),
            other => {
                st.0 = other;
                None
            }
        }
    }
}

impl<T> Future for OpFuture<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        while let Some((rt, op)) = self.unsent.take() {
            if let Err(op) = rt.try_submit(op, |op| op) {
                let ready = rt.poll_ready(cx);
                self.unsent = Some((rt, op));
                if ready.is_pending() {
                    return Poll::Pending;
                }
            }
        }
        let what = self.what;
        let annotate = |r: Result<T>| match what {
            Some(op) => r.map_err(|e| e.with_op(op)),
            None => r,
        };
        if let Some(r) = self.try_take() {
            return Poll::Ready(annotate(r));
        }
        self.slot.waker.register(cx.waker());
        match self.try_take() {
            Some(r) => Poll::Ready(annotate(r)),
            None if matches!(self.slot.state.lock().0, SlotState::Taken) => Poll::Ready(Err(Error::new(
                std::io::ErrorKind::Other,
                "OpFuture polled after completion",
            ))),
            None => Poll::Pending,
        }
    }
}

impl<T> Drop for OpFuture<T> {
    fn drop(&mut self) {
        // An op never sent fails here, dropping its completer with it.
        drop(self.unsent.take());
        let (late, hook) = {
            let mut st = self.slot.state.lock();
            match std::mem::replace(&mut st.0, SlotState::Abandoned) {
                SlotState::Waiting => (None, st.1.take()),
                SlotState::Done(r) => (Some(r), None),
                SlotState::Taken | SlotState::Abandoned => (None, None),
            }
        };
        drop(late);
        if let Some((handler, token)) = hook {
            handler.cancel(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Count(AtomicU64);
    impl CancelHandler for Count {
        fn cancel(&self, token: u64) {
            self.0.store(token, Ordering::SeqCst);
        }
    }

    #[test]
    fn dropped_future_cancels_and_drops_late_result() {
        let (done, fut) = completion::<Arc<()>>();
        let counter = Arc::new(Count(AtomicU64::new(0)));
        done.set_cancel_handler(counter.clone(), 9).expect("waiting");
        drop(fut);
        assert_eq!(counter.0.load(Ordering::SeqCst), 9);
        assert!(done.is_abandoned());
        let late = Arc::new(());
        done.complete(Ok(late.clone()));
        assert_eq!(Arc::strong_count(&late), 1, "the late result was released");
    }

    #[test]
    fn completer_dropped_without_result_is_aborted() {
        let (done, mut fut) = completion::<u32>();
        drop(done);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut fut).poll(&mut cx) {
            Poll::Ready(Err(e)) => assert!(e.is_aborted()),
            other => panic!("expected an aborted error, got {other:?}"),
        }
    }
}
