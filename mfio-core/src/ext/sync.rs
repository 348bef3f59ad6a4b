//! Blocking reads and writes: the async calls run under [`block_on`] on the
//! handle's own backend. For any `T: PacketIo + IoBackend`.
//!
//! Their packets carry the caller-blocks mark
//! ([`PacketView::caller_blocks`]), so a backend may run them on the calling
//! thread instead of another one.

use std::task::{Context, Poll};

use crate::backend::{block_on, IoBackend};
use crate::buf::{BufResult, IoBuf, IoBufMut};
use crate::error::Result;
use crate::ext::r#async::{IoFlush, IoRead, IoWrite};
use crate::io::{Flush, PacketIo, Position, QueueFull};
use crate::packet::{Direction, PacketView, Read, Write};

/// The handle as the blocking calls see it: every packet sent through it is
/// marked as awaited by a blocking caller, then goes to the handle as is.
struct Blocking<'a, T: ?Sized>(&'a T);

impl<D: Direction, P, T: PacketIo<D, P> + ?Sized> PacketIo<D, P> for Blocking<'_, T> {
    fn try_send_io(&self, param: P, view: PacketView<D>) -> std::result::Result<(), QueueFull<D, P>> {
        view.mark_caller_blocks();
        self.0.try_send_io(param, view)
    }

    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_send_ready(cx)
    }
}

/// Blocking reads on a handle that is also its own backend driver.
pub trait SyncIoRead<P: Position>: PacketIo<Read, P> + IoBackend {
    /// Reads into `dst` at `pos` (staged through an owned buffer); returns
    /// the count, short only at the end of the data.
    ///
    /// # Errors
    /// As [`IoRead::read_at`].
    fn blocking_read_at(&self, pos: P, dst: &mut [u8]) -> Result<usize> {
        block_on(self, Blocking(self).read_into_at(pos, dst))
    }

    /// Fills `dst` from `pos`.
    ///
    /// # Errors
    /// `UnexpectedEof` if the data ends first; otherwise the backend's error.
    fn blocking_read_exact_at(&self, pos: P, dst: &mut [u8]) -> Result<()> {
        let BufResult(res, staged) = block_on(self, Blocking(self).read_exact_at(pos, Vec::with_capacity(dst.len())));
        res?;
        dst.copy_from_slice(&staged);
        Ok(())
    }

    /// Appends everything from `pos` to the end to `buf`; returns the count.
    ///
    /// # Errors
    /// As [`IoRead::read_to_end_at`]; bytes read before the error stay in `buf`.
    fn blocking_read_to_end_at(&self, pos: P, buf: &mut Vec<u8>) -> Result<usize> {
        let BufResult(res, filled) = block_on(self, Blocking(self).read_to_end_at(pos, std::mem::take(buf)));
        *buf = filled;
        res
    }

    /// Reads into an owned buffer without staging, handing it back.
    ///
    /// # Errors
    /// As [`IoRead::read_at`].
    fn blocking_read_owned_at<B: IoBufMut>(&self, pos: P, buf: B) -> BufResult<usize, B> {
        block_on(self, Blocking(self).read_at(pos, buf))
    }
}

impl<T: PacketIo<Read, P> + IoBackend + ?Sized, P: Position> SyncIoRead<P> for T {}

/// Blocking writes on a handle that is also its own backend driver.
pub trait SyncIoWrite<P: Position>: PacketIo<Write, P> + IoBackend {
    /// Writes some of `src` at `pos`; returns the count.
    ///
    /// # Errors
    /// As [`IoWrite::write_at`].
    fn blocking_write_at(&self, pos: P, src: &[u8]) -> Result<usize> {
        block_on(self, Blocking(self).write_at(pos, src.to_vec())).0
    }

    /// Writes all of `src` at `pos`.
    ///
    /// # Errors
    /// As [`IoWrite::write_all_at`].
    fn blocking_write_all_at(&self, pos: P, src: &[u8]) -> Result<()> {
        block_on(self, Blocking(self).write_from_at(pos, src))
    }

    /// Writes an owned buffer without staging, handing it back.
    ///
    /// # Errors
    /// As [`IoWrite::write_all_at`].
    fn blocking_write_all_owned_at<B: IoBuf>(&self, pos: P, buf: B) -> BufResult<(), B> {
        block_on(self, Blocking(self).write_all_at(pos, buf))
    }
}

impl<T: PacketIo<Write, P> + IoBackend + ?Sized, P: Position> SyncIoWrite<P> for T {}

/// Blocking flush on a handle that is also its own backend driver.
pub trait SyncIoFlush: PacketIo<Write, Flush> + IoBackend {
    /// Waits until every earlier write reached the backing store.
    ///
    /// # Errors
    /// As [`IoFlush::flush`].
    fn blocking_flush(&self) -> Result<()> {
        block_on(self, IoFlush::flush(self))
    }
}

impl<T: PacketIo<Write, Flush> + IoBackend + ?Sized> SyncIoFlush for T {}
