//! [`Flush`] and [`CloseWrite`] on an endpoint.

use std::task::{Context, Poll};

use mfio_core::{CloseWrite, Flush, PacketIo, PacketView, QueueFull, Write};

use super::post::fail_write;
use super::{InFlight, Keep, Notify};
use crate::ucx::endpoint::Endpoint;
use crate::ucx::sys;
use crate::ucx::worker::Start;

/// Completes once every operation started on the endpoint before it has
/// completed at the peer (puts landed, messages delivered).
impl PacketIo<Write, Flush> for Endpoint {
    fn try_send_io(&self, _: Flush, view: PacketView<Write>) -> Result<(), QueueFull<Write, Flush>> {
        flush(&self.inner, view);
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

pub(crate) fn flush(ep: &crate::ucx::endpoint::EpShared, view: PacketView<Write>) {
    ep.worker.start(|shared, _st, _token| {
        if let Err(err) = ep.usable() {
            return fail_write(view, err);
        }
        // SAFETY: the endpoint is live and the worker locked.
        let posted = unsafe { sys::ep_flush(ep.handle, shared.sink()) };
        Start::OnEndpoint(
            ep.id,
            posted,
            InFlight::Send {
                view,
                keep: Keep::Nothing,
            },
            0,
        )
    });
}

/// Closes the endpoint after flushing: UCX has no half-close, so this ends
/// both directions; the peer reads end of stream, and reads here return 0.
/// The packet completes when the close does.
impl PacketIo<Write, CloseWrite> for Endpoint {
    fn try_send_io(&self, _: CloseWrite, view: PacketView<Write>) -> Result<(), QueueFull<Write, CloseWrite>> {
        self.inner.begin_close(false, Notify::View(view));
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}
