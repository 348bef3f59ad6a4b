//! The future of a receive that learns more than a length: the packet
//! brings the data, and a report (a [`Completer`] inside the address)
//! brings what came with it (a tag receive's sender tag, an active
//! message's header).
//!
//! [`Completer`]: mfio_core::completion::Completer

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use mfio_core::completion::Completion;
use mfio_core::{BufResult, Error, PacketBuf, PacketIo, PendingIo, Read};

use crate::ucx::worker::Worker;

/// A receive posted on a worker at address `A`, whose report resolves to
/// `I`; resolves to the report and the buffer.
#[must_use = "futures do nothing unless polled"]
pub struct ReportedRecv<'a, A, I, B: PacketBuf<Read>> {
    worker: &'a Worker,
    io: PendingIo<Read, A, B>,
    info: Completion<I>,
}

impl<'a, A, I, B: PacketBuf<Read>> ReportedRecv<'a, A, I, B> {
    /// A receive of `buf` at `to`, whose report `info` resolves.
    pub(crate) fn new(worker: &'a Worker, to: A, buf: B, info: Completion<I>) -> Self {
        Self {
            worker,
            io: PendingIo::new(to, buf),
            info,
        }
    }
}

impl<A, I, B: PacketBuf<Read>> std::fmt::Debug for ReportedRecv<'_, A, I, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportedRecv").finish_non_exhaustive()
    }
}

impl<A, I, B: PacketBuf<Read>> Unpin for ReportedRecv<'_, A, I, B> {}

impl<A, I, B> Future for ReportedRecv<'_, A, I, B>
where
    Worker: PacketIo<Read, A>,
    B: PacketBuf<Read>,
{
    type Output = BufResult<I, B>;

    /// # Panics
    /// If polled again after it returned `Ready`.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Poll::Ready(out) = this.io.poll_io(this.worker, cx) else {
            return Poll::Pending;
        };
        let (outcome, buf) = out.unwrap_or_else(|| panic!("a receive polled after completion"));
        // The report completes before the packet does.
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
