//! Async reads and writes over packets: positional ([`IoRead`]/[`IoWrite`]
//! at a `u64`) and streams ([`IoReadStream`]/[`IoWriteStream`] at [`NoPos`]).
//!
//! Every call is one or more packets on the same [`PacketIo`]; nothing here
//! has an I/O path of its own.

use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytemuck::{AnyBitPattern, NoUninit};

use crate::buf::{BufResult, IoBuf, IoBufMut, Slice};
use crate::error::{Error, Op, Result};
use crate::ext::packet::PendingIo;
use crate::io::{Flush, NoPos, PacketIo, Position};
use crate::packet::{Direction, PacketBuf, PacketOutcome, Read, Write};

/// Smallest chunk `read_to_end` reads at a time.
const READ_TO_END_CHUNK: usize = 8 * 1024;

fn with_context<P: Position>(err: Error, op: Op, pos: P, at: usize) -> Error {
    let err = err.with_op(op);
    match pos.advance(at).as_offset() {
        Some(off) => err.with_offset(off),
        None => err,
    }
}

fn outcome_to_count<P: Position>(outcome: PacketOutcome, op: Op, pos: P) -> Result<usize> {
    outcome.result().map_err(|e| with_context(e, op, pos, 0))
}

/// Future of a single read or write: the byte count and the buffer.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Transfer<'a, T: ?Sized, D: Direction, P, B: PacketBuf<D>> {
    io: &'a T,
    pos: P,
    op: PendingIo<D, P, B>,
}

// No field is structurally pinned.
impl<T: ?Sized, D: Direction, P, B: PacketBuf<D>> Unpin for Transfer<'_, T, D, P, B> {}

impl<T, D, P, B> Future for Transfer<'_, T, D, P, B>
where
    T: PacketIo<D, P> + ?Sized,
    D: Direction,
    P: Position,
    B: PacketBuf<D>,
{
    type Output = BufResult<usize, B>;

    /// # Panics
    /// If polled again after it returned `Ready`.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let op = if D::IS_READ { Op::Read } else { Op::Write };
        this.op.poll_io(this.io, cx).map(|out| {
            let (outcome, buf) = out.expect("Transfer polled after completion");
            BufResult(outcome_to_count(outcome, op, this.pos), buf)
        })
    }
}

/// Async reads at a position (`u64` for files, [`NoPos`] for streams).
pub trait IoRead<P: Position>: PacketIo<Read, P> {
    /// Reads into `buf` (from its start, up to its capacity) at `pos`.
    /// Returns fewer bytes than asked at the end of the data, and 0 past it.
    /// On a stream, returns what is available: at least 1 byte, or 0 at EOF.
    ///
    /// # Errors
    /// The backend's error for the first byte, with [`Op::Read`] and the offset.
    fn read_at<B: IoBufMut>(&self, pos: P, buf: B) -> Transfer<'_, Self, Read, P, B> {
        Transfer {
            io: self,
            pos,
            op: PendingIo::new(pos, buf),
        }
    }

    /// Fills the whole capacity of `buf` from `pos`, issuing more reads after
    /// short ones.
    ///
    /// # Errors
    /// `UnexpectedEof` if the data ends first; otherwise the backend's error.
    /// The buffer comes back either way, holding what was read.
    fn read_exact_at<B: IoBufMut>(&self, pos: P, buf: B) -> impl Future<Output = BufResult<(), B>> + '_ {
        async move {
            let want = buf.buf_capacity();
            let mut buf = buf;
            let mut done = 0;
            while done < want {
                let BufResult(res, slice) = self.read_at(pos.advance(done), Slice::new(buf, done, want)).await;
                buf = slice.into_inner();
                match res {
                    Ok(0) => return BufResult(Err(with_context(Error::unexpected_eof(), Op::Read, pos, done)), buf),
                    Ok(n) => done += n,
                    Err(e) => return BufResult(Err(e), buf),
                }
            }
            BufResult(Ok(()), buf)
        }
    }

    /// Appends everything from `pos` to the end of the data to `buf`;
    /// returns the number of bytes appended.
    ///
    /// # Errors
    /// The backend's error; the bytes read before it stay in `buf`.
    fn read_to_end_at(&self, pos: P, buf: Vec<u8>) -> impl Future<Output = BufResult<usize, Vec<u8>>> + '_ {
        async move {
            let mut buf = buf;
            let start = buf.len();
            loop {
                if buf.capacity() - buf.len() < READ_TO_END_CHUNK / 2 {
                    buf.reserve(buf.len().max(READ_TO_END_CHUNK));
                }
                let (len, cap) = (buf.len(), buf.capacity());
                let BufResult(res, slice) = self.read_at(pos.advance(len - start), Slice::new(buf, len, cap)).await;
                buf = slice.into_inner();
                match res {
                    Ok(0) => return BufResult(Ok(buf.len() - start), buf),
                    Ok(_) => {}
                    Err(e) => {
                        let n = buf.len() - start;
                        return BufResult(Err(e), buf).map(|()| n);
                    }
                }
            }
        }
    }

    /// Reads into a borrowed slice through an owned staging buffer, so that
    /// dropping the future never leaves a backend writing into `dst`.
    ///
    /// # Errors
    /// As [`read_at`](Self::read_at).
    fn read_into_at<'a>(&'a self, pos: P, dst: &'a mut [u8]) -> impl Future<Output = Result<usize>> + 'a {
        async move {
            let BufResult(res, staged) = self.read_at(pos, Vec::with_capacity(dst.len())).await;
            let n = res?;
            dst[..n].copy_from_slice(&staged[..n]);
            Ok(n)
        }
    }

    /// Reads a plain-old-data value (any bit pattern valid) at `pos`.
    ///
    /// # Errors
    /// `UnexpectedEof` if fewer than `size_of::<T>()` bytes are there.
    fn read_pod_at<T: AnyBitPattern>(&self, pos: P) -> impl Future<Output = Result<T>> + '_ {
        async move {
            let BufResult(res, bytes) = self.read_exact_at(pos, Vec::with_capacity(size_of::<T>())).await;
            res?;
            Ok(bytemuck::pod_read_unaligned(&bytes[..size_of::<T>()]))
        }
    }
}

impl<T: PacketIo<Read, P> + ?Sized, P: Position> IoRead<P> for T {}

/// Async writes at a position (`u64` for files, [`NoPos`] for streams).
pub trait IoWrite<P: Position>: PacketIo<Write, P> {
    /// Writes the bytes of `buf` at `pos`; may write fewer (a full pipe).
    ///
    /// # Errors
    /// The backend's error for the first byte, with [`Op::Write`] and the offset.
    fn write_at<B: IoBuf>(&self, pos: P, buf: B) -> Transfer<'_, Self, Write, P, B> {
        Transfer {
            io: self,
            pos,
            op: PendingIo::new(pos, buf),
        }
    }

    /// Writes every byte of `buf`, issuing more writes after short ones.
    ///
    /// # Errors
    /// The backend's error, or `WriteZero` if the backend stops taking bytes.
    fn write_all_at<B: IoBuf>(&self, pos: P, buf: B) -> impl Future<Output = BufResult<(), B>> + '_ {
        async move {
            let want = buf.buf_len();
            let mut buf = buf;
            let mut done = 0;
            loop {
                let BufResult(res, slice) = self.write_at(pos.advance(done), Slice::new(buf, done, want)).await;
                buf = slice.into_inner();
                match res {
                    Ok(n) => done += n,
                    Err(e) => return BufResult(Err(e), buf),
                }
                if done >= want {
                    return BufResult(Ok(()), buf);
                }
                if matches!(res, Ok(0)) {
                    let err = Error::new(ErrorKind::WriteZero, "backend accepted no bytes");
                    return BufResult(Err(with_context(err, Op::Write, pos, done)), buf);
                }
            }
        }
    }

    /// Writes all of a borrowed slice through an owned staging copy.
    ///
    /// # Errors
    /// As [`write_all_at`](Self::write_all_at).
    fn write_from_at<'a>(&'a self, pos: P, src: &[u8]) -> impl Future<Output = Result<()>> + 'a {
        let staged = src.to_vec();
        async move { self.write_all_at(pos, staged).await.0 }
    }

    /// Writes the bytes of a plain-old-data value. `NoUninit` types have no
    /// padding, so no uninitialised byte is ever written.
    ///
    /// # Errors
    /// As [`write_all_at`](Self::write_all_at).
    fn write_pod_at<T: NoUninit>(&self, pos: P, value: &T) -> impl Future<Output = Result<()>> + '_ {
        let staged = bytemuck::bytes_of(value).to_vec();
        async move { self.write_all_at(pos, staged).await.0 }
    }
}

impl<T: PacketIo<Write, P> + ?Sized, P: Position> IoWrite<P> for T {}

/// Async flush: waits until every earlier write on the handle reached the
/// backing store.
pub trait IoFlush: PacketIo<Write, Flush> {
    /// Sends an empty [`Write`] packet at [`Flush`] and waits for it.
    ///
    /// # Errors
    /// The backend's error (e.g. a failed `fsync`), with [`Op::Flush`].
    fn flush(&self) -> impl Future<Output = Result<()>> + '_ {
        async move {
            let (outcome, _) = crate::ext::packet::PacketIoExt::io(self, Flush, &[][..]).await;
            outcome.exact().map_err(|e| e.with_op(Op::Flush))
        }
    }
}

impl<T: PacketIo<Write, Flush> + ?Sized> IoFlush for T {}

/// Stream reads: [`IoRead`] at [`NoPos`] without the position argument.
pub trait IoReadStream: IoRead<NoPos> {
    /// Reads what is available: at least 1 byte, or 0 at end of stream.
    ///
    /// # Errors
    /// As [`IoRead::read_at`].
    fn read<B: IoBufMut>(&self, buf: B) -> Transfer<'_, Self, Read, NoPos, B> {
        self.read_at(NoPos, buf)
    }

    /// Fills the whole capacity of `buf`.
    ///
    /// # Errors
    /// As [`IoRead::read_exact_at`].
    fn read_exact<B: IoBufMut>(&self, buf: B) -> impl Future<Output = BufResult<(), B>> + '_ {
        self.read_exact_at(NoPos, buf)
    }

    /// Appends everything until end of stream.
    ///
    /// # Errors
    /// As [`IoRead::read_to_end_at`].
    fn read_to_end(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<usize, Vec<u8>>> + '_ {
        self.read_to_end_at(NoPos, buf)
    }
}

impl<T: IoRead<NoPos> + ?Sized> IoReadStream for T {}

/// Stream writes: [`IoWrite`] at [`NoPos`] without the position argument.
pub trait IoWriteStream: IoWrite<NoPos> {
    /// Writes some of `buf` (at least 1 byte unless it is empty).
    ///
    /// # Errors
    /// As [`IoWrite::write_at`].
    fn write<B: IoBuf>(&self, buf: B) -> Transfer<'_, Self, Write, NoPos, B> {
        self.write_at(NoPos, buf)
    }

    /// Writes all of `buf`.
    ///
    /// # Errors
    /// As [`IoWrite::write_all_at`].
    fn write_all<B: IoBuf>(&self, buf: B) -> impl Future<Output = BufResult<(), B>> + '_ {
        self.write_all_at(NoPos, buf)
    }
}

impl<T: IoWrite<NoPos> + ?Sized> IoWriteStream for T {}
