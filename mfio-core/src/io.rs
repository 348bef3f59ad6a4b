//! [`PacketIo`]: submitting packets at an address, with backpressure.

use std::fmt;
use std::task::{Context, Poll};

use crate::error::Error;
use crate::packet::{Direction, PacketView};

/// Submits packets of direction `Perms` at addresses of type `Param`
/// (a file offset `u64`, [`NoPos`] for streams, [`Flush`], …).
///
/// Backpressure is explicit: a backend holds a bounded number of packets. When
/// it is full, [`try_send_io`](Self::try_send_io) hands the packet back and
/// [`poll_send_ready`](Self::poll_send_ready) wakes the caller once there is
/// room. Nothing panics and nothing grows without bound.
pub trait PacketIo<Perms: Direction, Param> {
    /// Queues `view` at `param`, or hands it back if the queue is full.
    ///
    /// # Errors
    /// [`QueueFull`] with the untouched packet view and address.
    fn try_send_io(&self, param: Param, view: PacketView<Perms>) -> Result<(), QueueFull<Perms, Param>>;

    /// `Ready` when a submission is likely to be accepted; otherwise the waker
    /// is woken when room frees up. Another submitter may take the room first,
    /// so callers retry [`try_send_io`](Self::try_send_io) in a loop.
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()>;

    /// Queues `view`, failing it with a queue-full error
    /// ([`Error::is_queue_full`]) if there is no room.
    fn send_io(&self, param: Param, view: PacketView<Perms>) {
        if let Err(full) = self.try_send_io(param, view) {
            full.view.fail(Error::queue_full());
        }
    }
}

/// A packet refused because the backend's queue was full; gives it back.
pub struct QueueFull<Perms: Direction, Param> {
    /// The address it was sent to.
    pub param: Param,
    /// The packet view, untouched.
    pub view: PacketView<Perms>,
}

impl<Perms: Direction, Param> fmt::Debug for QueueFull<Perms, Param> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueFull")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

/// The address of stream I/O: bytes come and go in order, without a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NoPos;

/// The address of a flush: a [`Write`](crate::Write) packet (usually empty)
/// sent at `Flush` completes once every write submitted before it on the same
/// handle has reached the backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flush;

/// The address of a half-close: a [`Write`](crate::Write) packet (empty)
/// sent at `CloseWrite` ends the sending direction of a stream once the
/// writes that completed before it was sent are on their way: the peer
/// reads end of stream after the last of their bytes (TCP and Unix sockets:
/// `shutdown(SHUT_WR)`). Reading stays possible. On a file it is a flush:
/// a file has no direction to close.
///
/// The `futures-io` `close` and tokio `shutdown` of
/// [`AsyncIo`](crate::AsyncIo) flush, then send this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CloseWrite;

/// The largest file position the OS takes: `off_t` is signed, and io_uring
/// reads an offset of `-1` (`u64::MAX`) as "the current file position".
pub const MAX_OFFSET: u64 = i64::MAX as u64;

/// Checks a file position before it reaches a backend.
///
/// # Errors
/// `InvalidInput` (with [`Op`](crate::Op) `op` and the offset) for a
/// position above [`MAX_OFFSET`]; nothing is queued for such a position.
pub fn check_offset(pos: u64, op: crate::Op) -> crate::Result<u64> {
    if pos <= MAX_OFFSET {
        return Ok(pos);
    }
    Err(Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("file position {pos} is beyond the largest the OS takes ({MAX_OFFSET})"),
    )
    .with_op(op)
    .with_offset(pos))
}

/// An address that moves forward as bytes are transferred (a file offset), or
/// stays put (a stream).
pub trait Position: Copy + Send + Sync + fmt::Debug + 'static {
    /// The address `n` bytes further on.
    fn advance(self, n: usize) -> Self;
    /// The address as a byte offset, for error reports (`None` for streams).
    fn as_offset(self) -> Option<u64>;
}

impl Position for u64 {
    fn advance(self, n: usize) -> Self {
        self.saturating_add(n as u64)
    }
    fn as_offset(self) -> Option<u64> {
        Some(self)
    }
}

impl Position for NoPos {
    fn advance(self, _n: usize) -> Self {
        NoPos
    }
    fn as_offset(self) -> Option<u64> {
        None
    }
}

/// The length of a positional resource (file size), for `SeekFrom::End` and
/// `read_to_end`.
pub trait IoLen {
    /// The current length in bytes.
    ///
    /// # Errors
    /// What the backend reports (e.g. the OS error of `fstat`).
    fn io_len(&self) -> crate::Result<u64>;
}

impl<T: PacketIo<Perms, Param> + ?Sized, Perms: Direction, Param> PacketIo<Perms, Param> for &T {
    fn try_send_io(&self, param: Param, view: PacketView<Perms>) -> Result<(), QueueFull<Perms, Param>> {
        (**self).try_send_io(param, view)
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        (**self).poll_send_ready(cx)
    }
}

impl<T: PacketIo<Perms, Param> + ?Sized, Perms: Direction, Param> PacketIo<Perms, Param> for std::sync::Arc<T> {
    fn try_send_io(&self, param: Param, view: PacketView<Perms>) -> Result<(), QueueFull<Perms, Param>> {
        (**self).try_send_io(param, view)
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        (**self).poll_send_ready(cx)
    }
}

impl<T: IoLen + ?Sized> IoLen for &T {
    fn io_len(&self) -> crate::Result<u64> {
        (**self).io_len()
    }
}
