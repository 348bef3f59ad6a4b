//! [`AsyncIo`]: a packet handle plus a position, implementing
//! `futures_io::{AsyncRead, AsyncWrite, AsyncSeek}` (feature `futures-io`) and
//! `tokio::io::{AsyncRead, AsyncWrite, AsyncSeek}` (feature `tokio`).
//!
//! The adapter does not drive the backend: run it inside [`block_on`] or a
//! host runtime integration that does.
//!
//! Closing (`futures-io` `close`, tokio `shutdown`) flushes, then sends a
//! [`CloseWrite`] packet: a stream's peer then reads end of stream (a TCP or
//! Unix socket is half-closed with `shutdown(SHUT_WR)`, and reading goes
//! on); a file is only flushed.
//!
//! Writes are write-behind (like `tokio::fs::File`): `poll_write` returns once
//! the bytes are copied into a packet that has been handed to the backend, and
//! a failure is reported by the next write, flush or close. One write is in
//! flight at a time; a short write is resubmitted for the rest before new
//! bytes are taken, so no accepted byte is dropped.
//!
//! [`block_on`]: crate::block_on

use std::io::ErrorKind;
use std::task::{ready, Context, Poll};

use crate::error::{Error, Op, Result};
use crate::ext::packet::PendingIo;
use crate::io::{check_offset, CloseWrite, Flush, IoLen, PacketIo, Position};
use crate::packet::{Read, Write};

/// Largest single read the adapter issues when the caller asks for more.
const MAX_READ: usize = 1 << 20;

type WriteOp<P> = PendingIo<Write, P, Vec<u8>>;

/// `AsyncRead`/`AsyncWrite`/`AsyncSeek` over a packet handle.
#[derive(Debug)]
pub struct AsyncIo<T, P: Position = u64> {
    io: T,
    pos: P,
    read: Option<PendingIo<Read, P, Vec<u8>>>,
    ready: Vec<u8>,
    ready_at: usize,
    write: Option<(P, WriteOp<P>)>,
    flush: Option<PendingIo<Write, Flush, &'static [u8]>>,
    /// The half-close sent by `close`/`shutdown` once the flush completed.
    close: Option<PendingIo<Write, CloseWrite, &'static [u8]>>,
    /// Target of a tokio `start_seek` awaiting `poll_complete`.
    #[cfg(feature = "tokio")]
    seek_to: Option<u64>,
    spare: Vec<u8>,
}

impl<T, P: Position> AsyncIo<T, P> {
    /// An adapter over `io` starting at `pos` (`0` for files, `NoPos` for streams).
    pub fn new(io: T, pos: P) -> Self {
        Self {
            io,
            pos,
            read: None,
            ready: Vec::new(),
            ready_at: 0,
            write: None,
            flush: None,
            close: None,
            #[cfg(feature = "tokio")]
            seek_to: None,
            spare: Vec::new(),
        }
    }

    /// The position of the next byte read or written.
    pub fn position(&self) -> P {
        self.pos
    }

    /// The handle.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn is_positional(&self) -> bool {
        self.pos.as_offset().is_some()
    }

    /// Forgets read-ahead state; positional data stays in the file, so an
    /// in-flight read can simply be cancelled.
    fn discard_reads(&mut self) {
        self.read = None;
        self.ready.clear();
        self.ready_at = 0;
    }

    fn consume(&mut self, n: usize) {
        self.ready_at += n;
        self.pos = self.pos.advance(n);
    }
}

impl<T: PacketIo<Write, P>, P: Position> AsyncIo<T, P> {
    /// Waits for the in-flight write, resubmitting the rest of a short one.
    fn poll_write_done(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        while let Some((start, op)) = &mut self.write {
            let start = *start;
            let Some((outcome, mut buf)) = ready!(op.poll_io(&self.io, cx)) else {
                self.write = None;
                break;
            };
            self.write = None;
            let n = outcome.transferred();
            if n == buf.len() {
                self.spare = buf;
                continue;
            }
            if let Some((at, _)) = outcome.error() {
                if at == n {
                    let err = outcome.exact().err().unwrap_or_else(Error::unexpected_eof);
                    return Poll::Ready(Err(with_pos(err, Op::Write, start.advance(n))));
                }
            }
            if n == 0 {
                let err = Error::new(ErrorKind::WriteZero, "backend accepted no bytes");
                return Poll::Ready(Err(with_pos(err, Op::Write, start)));
            }
            buf.drain(..n);
            let rest = start.advance(n);
            self.write = Some((rest, PendingIo::new(rest, buf)));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>, src: &[u8]) -> Poll<Result<usize>> {
        ready!(self.poll_write_done(cx))?;
        if src.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.is_positional() {
            self.discard_reads();
        }
        let mut buf = std::mem::take(&mut self.spare);
        buf.clear();
        buf.extend_from_slice(src);
        self.write = Some((self.pos, PendingIo::new(self.pos, buf)));
        // Poll once so the packet is sent now; a failure right away means the
        // bytes were not taken, so report it instead of accepting them.
        if let Poll::Ready(Err(e)) = self.poll_write_done(cx) {
            return Poll::Ready(Err(e));
        }
        self.pos = self.pos.advance(src.len());
        Poll::Ready(Ok(src.len()))
    }
}

impl<T: PacketIo<Read, P> + PacketIo<Write, P>, P: Position> AsyncIo<T, P> {
    /// Returns the bytes available to the caller, issuing a read of up to
    /// `want` bytes if none are buffered. Empty means end of data.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<&[u8]>> {
        if self.is_positional() {
            // A positional read must see every write accepted before it.
            ready!(self.poll_write_done(cx))?;
        }
        if self.ready_at < self.ready.len() {
            return Poll::Ready(Ok(&self.ready[self.ready_at..]));
        }
        let op = match &mut self.read {
            Some(op) => op,
            None => {
                let mut buf = std::mem::take(&mut self.ready);
                buf.clear();
                buf.reserve(want.clamp(1, MAX_READ));
                self.read.insert(PendingIo::new(self.pos, buf))
            }
        };
        let done = ready!(op.poll_io(&self.io, cx));
        self.read = None;
        let Some((outcome, buf)) = done else {
            return Poll::Ready(Ok(&[]));
        };
        let pos = self.pos;
        let n = outcome.result().map_err(|e| with_pos(e, Op::Read, pos))?;
        self.ready = buf;
        self.ready.truncate(n);
        self.ready_at = 0;
        Poll::Ready(Ok(&self.ready[..]))
    }

    #[cfg(feature = "futures-io")]
    fn poll_read_into(&mut self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<Result<usize>> {
        if dst.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let avail = ready!(self.poll_fill(cx, dst.len()))?;
        let n = avail.len().min(dst.len());
        dst[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Poll::Ready(Ok(n))
    }
}

impl<T: PacketIo<Write, P> + PacketIo<Write, Flush>, P: Position> AsyncIo<T, P> {
    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        ready!(self.poll_write_done(cx))?;
        let op = self.flush.get_or_insert_with(|| PendingIo::new(Flush, &[][..]));
        let done = ready!(op.poll_io(&self.io, cx));
        self.flush = None;
        match done {
            Some((outcome, _)) => Poll::Ready(outcome.exact().map_err(|e| e.with_op(Op::Flush))),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<T: PacketIo<Write, P> + PacketIo<Write, Flush> + PacketIo<Write, CloseWrite>, P: Position> AsyncIo<T, P> {
    /// Flushes, then half-closes (see [`CloseWrite`]).
    fn poll_close_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.close.is_none() {
            ready!(self.poll_flush_inner(cx))?;
        }
        let op = self.close.get_or_insert_with(|| PendingIo::new(CloseWrite, &[][..]));
        let done = ready!(op.poll_io(&self.io, cx));
        self.close = None;
        match done {
            Some((outcome, _)) => Poll::Ready(outcome.exact().map_err(|e| e.with_op(Op::Shutdown))),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<T: PacketIo<Write, u64> + IoLen> AsyncIo<T, u64> {
    fn poll_seek_inner(&mut self, cx: &mut Context<'_>, to: std::io::SeekFrom) -> Poll<Result<u64>> {
        ready!(self.poll_write_done(cx))?;
        let (base, delta) = match to {
            std::io::SeekFrom::Start(n) => (n, 0),
            std::io::SeekFrom::Current(d) => (self.pos, d),
            std::io::SeekFrom::End(d) => (self.io.io_len()?, d),
        };
        let target = base.checked_add_signed(delta).ok_or_else(|| {
            Error::new(ErrorKind::InvalidInput, "seek to a negative or overflowing position").with_op(Op::Seek)
        })?;
        let target = check_offset(target, Op::Seek)?;
        self.discard_reads();
        self.pos = target;
        Poll::Ready(Ok(target))
    }
}

fn with_pos<P: Position>(err: Error, op: Op, pos: P) -> Error {
    let err = err.with_op(op);
    match pos.as_offset() {
        Some(off) => err.with_offset(off),
        None => err,
    }
}

#[cfg(feature = "futures-io")]
mod futures_impls {
    use super::*;
    use std::io;
    use std::pin::Pin;

    impl<T, P> futures_io::AsyncRead for AsyncIo<T, P>
    where
        T: PacketIo<Read, P> + PacketIo<Write, P> + Unpin,
        P: Position + Unpin,
    {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            self.get_mut().poll_read_into(cx, buf).map_err(Into::into)
        }
    }

    impl<T, P> futures_io::AsyncWrite for AsyncIo<T, P>
    where
        T: PacketIo<Write, P> + PacketIo<Write, Flush> + PacketIo<Write, CloseWrite> + Unpin,
        P: Position + Unpin,
    {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.get_mut().poll_write_inner(cx, buf).map_err(Into::into)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().poll_flush_inner(cx).map_err(Into::into)
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().poll_close_inner(cx).map_err(Into::into)
        }
    }

    impl<T> futures_io::AsyncSeek for AsyncIo<T, u64>
    where
        T: PacketIo<Write, u64> + IoLen + Unpin,
    {
        fn poll_seek(self: Pin<&mut Self>, cx: &mut Context<'_>, pos: io::SeekFrom) -> Poll<io::Result<u64>> {
            self.get_mut().poll_seek_inner(cx, pos).map_err(Into::into)
        }
    }
}

#[cfg(feature = "tokio")]
mod tokio_impls {
    use super::*;
    use std::io;
    use std::pin::Pin;
    use tokio::io::ReadBuf;

    impl<T, P> tokio::io::AsyncRead for AsyncIo<T, P>
    where
        T: PacketIo<Read, P> + PacketIo<Write, P> + Unpin,
        P: Position + Unpin,
    {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let avail = ready!(this.poll_fill(cx, buf.remaining()))?;
            let n = avail.len().min(buf.remaining());
            buf.put_slice(&avail[..n]);
            this.consume(n);
            Poll::Ready(Ok(()))
        }
    }

    impl<T, P> tokio::io::AsyncWrite for AsyncIo<T, P>
    where
        T: PacketIo<Write, P> + PacketIo<Write, Flush> + PacketIo<Write, CloseWrite> + Unpin,
        P: Position + Unpin,
    {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.get_mut().poll_write_inner(cx, buf).map_err(Into::into)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().poll_flush_inner(cx).map_err(Into::into)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().poll_close_inner(cx).map_err(Into::into)
        }
    }

    impl<T> tokio::io::AsyncSeek for AsyncIo<T, u64>
    where
        T: PacketIo<Write, u64> + IoLen + Unpin,
    {
        fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
            let this = self.get_mut();
            let target = match position {
                io::SeekFrom::Start(n) => Some(n),
                io::SeekFrom::Current(d) => this.pos.checked_add_signed(d),
                io::SeekFrom::End(d) => this.io.io_len()?.checked_add_signed(d),
            };
            let target = target.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "seek to a negative or overflowing position",
                )
            })?;
            this.seek_to = Some(check_offset(target, Op::Seek)?);
            Ok(())
        }
        fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
            let this = self.get_mut();
            match this.seek_to.take() {
                Some(target) => match this.poll_seek_inner(cx, io::SeekFrom::Start(target)) {
                    Poll::Pending => {
                        this.seek_to = Some(target);
                        Poll::Pending
                    }
                    Poll::Ready(r) => Poll::Ready(r.map_err(Into::into)),
                },
                None => Poll::Ready(Ok(this.pos)),
            }
        }
    }
}
