//! [`ReportedIo`]: the future of a receive that learns more than a length.
//! The packet brings the data, and a report (a [`Completer`] carried in the
//! address) brings what came with it: a tag receive's sender and tag, an
//! active message's header.
//!
//! [`Completer`]: crate::completion::Completer

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::buf::BufResult;
use crate::completion::Completion;
use crate::error::Error;
use crate::ext::packet::PendingIo;
use crate::io::PacketIo;
use crate::packet::{PacketBuf, Read};

/// A receive sent to `io` at address `A`, whose report resolves to `I`;
/// resolves to the report and the buffer.
#[must_use = "futures do nothing unless polled"]
pub struct ReportedIo<'a, T: ?Sized, A, I, B: PacketBuf<Read>> {
    io: &'a T,
    pending: PendingIo<Read, A, B>,
    info: Completion<I>,
}

impl<'a, T: ?Sized, A, I, B: PacketBuf<Read>> ReportedIo<'a, T, A, I, B> {
    /// A receive of `buf` sent to `io` at `to` when first polled; `info`
    /// is the other end of the completer that `to` carries.
    pub fn new(io: &'a T, to: A, buf: B, info: Completion<I>) -> Self {
        Self {
            io,
            pending: PendingIo::new(to, buf),
            info,
        }
    }
}

impl<T: ?Sized, A, I, B: PacketBuf<Read>> std::fmt::Debug for ReportedIo<'_, T, A, I, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportedIo").finish_non_exhaustive()
    }
}

impl<T: ?Sized, A, I, B: PacketBuf<Read>> Unpin for ReportedIo<'_, T, A, I, B> {}

impl<T, A, I, B> Future for ReportedIo<'_, T, A, I, B>
where
    T: PacketIo<Read, A> + ?Sized,
    B: PacketBuf<Read>,
{
    type Output = BufResult<I, B>;

    /// # Panics
    /// If polled again after it returned `Ready`.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Poll::Ready(out) = this.pending.poll_io(this.io, cx) else {
            return Poll::Pending;
        };
        let (outcome, buf) =
            out.unwrap_or_else(|| panic!("{}", crate::completion::polled_after_completion("ReportedIo")));
        // Backends complete the report before the packet.
        let info = match Pin::new(&mut this.info).poll(cx) {
            Poll::Ready(info) => info,
            Poll::Pending => Err(Error::aborted()),
        };
        let result = match (outcome.result(), info) {
            (Ok(_), Ok(info)) => Ok(info),
            (Err(err), _) | (_, Err(err)) => Err(err),
        };
        Poll::Ready(BufResult(result, buf))
    }
}
