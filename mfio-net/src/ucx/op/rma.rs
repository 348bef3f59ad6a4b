//! RMA: put and get against a peer's registered region, through a
//! [`RemoteKey`], at byte offsets into the region.

use std::task::{Context, Poll};

use mfio_core::{Error, Flush, PacketIo, PacketView, QueueFull, Read, Write};

use super::post::{self, fail_read};
use super::{InFlight, Keep};
use crate::ucx::memory::RemoteKey;
use crate::ucx::sys;
use crate::ucx::worker::Start;

/// Writes the packet into the peer's region at the offset (a put); it
/// completes when the buffer may be reused. Follow with a
/// [`Flush`] to know the bytes landed.
impl PacketIo<Write, u64> for RemoteKey {
    fn try_send_io(&self, offset: u64, view: PacketView<Write>) -> Result<(), QueueFull<Write, u64>> {
        let rkey = &self.inner;
        let remote = match rkey.address(offset, view.len()) {
            Ok(remote) => remote,
            Err(err) => {
                view.fail(err.with_op(mfio_core::Op::Write));
                return Ok(());
            }
        };
        post::send(&rkey.ep, view, Keep::Held(rkey.clone()), |shared, _st, bytes, len| {
            // SAFETY: endpoint and key are live, the worker locked, the
            // range checked; the bytes and the key stay valid until UCX
            // reports the put (the record keeps both).
            unsafe { sys::put(rkey.ep.handle, bytes, len, remote, rkey.handle, shared.sink()) }
        });
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// Reads the peer's region at the offset into the packet (a get).
impl PacketIo<Read, u64> for RemoteKey {
    fn try_send_io(&self, offset: u64, mut view: PacketView<Read>) -> Result<(), QueueFull<Read, u64>> {
        let rkey = &self.inner;
        let remote = match rkey.address(offset, view.len()) {
            Ok(remote) => remote,
            Err(err) => {
                view.fail(err.with_op(mfio_core::Op::Read));
                return Ok(());
            }
        };
        rkey.ep.worker.start(|shared, _st, token| {
            if let Err(err) = rkey.ep.usable() {
                return fail_read(view, err);
            }
            if view.set_cancel_handler(shared.cancels.clone(), token).is_err() {
                return fail_read(view, Error::cancelled());
            }
            let (ptr, len) = (view.as_mut_ptr(), view.len());
            // SAFETY: as for put; UCX writes the view's bytes until it
            // reports the get.
            let posted = unsafe { sys::get(rkey.ep.handle, ptr, len, remote, rkey.handle, shared.sink()) };
            Start::OnEndpoint(
                rkey.ep.id,
                posted,
                InFlight::Get {
                    view,
                    keep: Keep::Held(rkey.clone()),
                },
                len,
            )
        });
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// Completes once every put before it landed in the peer's region.
impl PacketIo<Write, Flush> for RemoteKey {
    fn try_send_io(&self, _: Flush, view: PacketView<Write>) -> Result<(), QueueFull<Write, Flush>> {
        super::control::flush(&self.inner.ep, view);
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}
