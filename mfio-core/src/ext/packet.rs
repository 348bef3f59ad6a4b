//! [`PacketIoExt`]: send a packet and await its outcome.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::io::PacketIo;
use crate::packet::{Direction, Packet, PacketBuf, PacketOutcome};

/// An operation in progress, without the handle it runs on: sends its packet
/// (waiting for room if the backend is full), then waits for the outcome.
///
/// Dropping it before completion cancels the packet (see [`Packet`]).
#[derive(Debug)]
pub struct PendingIo<D: Direction, P, B: PacketBuf<D>> {
    /// Where to send the packet, until a backend accepted it. The unsent
    /// view stays in the packet (which drops it, as aborted, first).
    unsent: Option<P>,
    packet: Packet<D, B>,
}

impl<D: Direction, P, B: PacketBuf<D>> PendingIo<D, P, B> {
    /// An operation that will send `buf` at `param`.
    pub fn new(param: P, buf: B) -> Self {
        Self {
            unsent: Some(param),
            packet: Packet::new(buf),
        }
    }

    /// True once the packet has been accepted by the backend.
    pub fn is_sent(&self) -> bool {
        self.unsent.is_none()
    }

    /// Drives the operation on `io`: sends if not yet sent, then polls for
    /// completion. Returns `None` if called again after it returned `Ready`.
    pub fn poll_io<T>(&mut self, io: &T, cx: &mut Context<'_>) -> Poll<Option<(PacketOutcome, B)>>
    where
        T: PacketIo<D, P> + ?Sized,
    {
        while let Some(param) = self.unsent.take() {
            let Some(view) = self.packet.take_view() else { break };
            match io.try_send_io(param, view) {
                Ok(()) => {}
                Err(full) => {
                    self.unsent = Some(full.param);
                    self.packet.restore_view(full.view);
                    if io.poll_send_ready(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
        match self.packet.poll_complete(cx) {
            Poll::Ready(()) => Poll::Ready(self.packet.try_take()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Future of one packet sent on a handle: resolves to the outcome and the buffer.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct IoFuture<'a, T: ?Sized, D: Direction, P, B: PacketBuf<D>> {
    io: &'a T,
    op: PendingIo<D, P, B>,
}

// No field is structurally pinned.
impl<T: ?Sized, D: Direction, P, B: PacketBuf<D>> Unpin for IoFuture<'_, T, D, P, B> {}

impl<T, D, P, B> Future for IoFuture<'_, T, D, P, B>
where
    T: PacketIo<D, P> + ?Sized,
    D: Direction,
    B: PacketBuf<D>,
{
    type Output = (PacketOutcome, B);

    /// # Panics
    /// If polled again after it returned `Ready`.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.op
            .poll_io(this.io, cx)
            .map(|out| out.unwrap_or_else(|| panic!("{}", crate::completion::polled_after_completion("IoFuture"))))
    }
}

/// Sends packets and returns futures of their outcome.
pub trait PacketIoExt<D: Direction, P>: PacketIo<D, P> {
    /// Sends `buf` in a packet at `param`; resolves to the raw
    /// [`PacketOutcome`] and the buffer.
    fn io<B: PacketBuf<D>>(&self, param: P, buf: B) -> IoFuture<'_, Self, D, P, B> {
        IoFuture {
            io: self,
            op: PendingIo::new(param, buf),
        }
    }
}

impl<T: PacketIo<D, P> + ?Sized, D: Direction, P> PacketIoExt<D, P> for T {}
