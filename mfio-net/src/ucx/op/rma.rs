//! RMA: put and get against a peer's registered region, through a
//! [`RemoteKey`], at byte offsets into the region.

use std::task::{Context, Poll};

use mfio_core::{Error, Flush, PacketIo, PacketView, QueueFull, Read, Write};

use super::tag::{fail_read, fail_write};
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
        rkey.ep.worker.start(|shared, _st, token| {
            let remote = match rkey.address(offset, view.len()) {
                Ok(remote) => remote,
                Err(err) => return fail_write(view, err.with_op(mfio_core::Op::Write)),
            };
            if let Err(err) = rkey.ep.usable() {
                return fail_write(view, err);
            }
            if view.set_cancel_handler(shared.cancels.clone(), token).is_err() {
                return fail_write(view, Error::cancelled());
            }
            // SAFETY: endpoint and key are live, the worker locked, the
            // range checked; the view and key stay in the record until UCX
            // reports the put.
            let posted = unsafe {
                sys::put(
                    rkey.ep.handle,
                    view.as_slice().as_ptr(),
                    view.len(),
                    remote,
                    rkey.handle,
                    shared.sink(),
                )
            };
            let len = view.len();
            Start::Posted(
                posted,
                InFlight::Send {
                    view,
                    keep: Keep::Rkey(rkey.clone()),
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

/// Reads the peer's region at the offset into the packet (a get).
impl PacketIo<Read, u64> for RemoteKey {
    fn try_send_io(&self, offset: u64, mut view: PacketView<Read>) -> Result<(), QueueFull<Read, u64>> {
        let rkey = &self.inner;
        rkey.ep.worker.start(|shared, _st, token| {
            let remote = match rkey.address(offset, view.len()) {
                Ok(remote) => remote,
                Err(err) => return fail_read(view, err.with_op(mfio_core::Op::Read)),
            };
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
            Start::Posted(
                posted,
                InFlight::Get {
                    view,
                    keep: Keep::Rkey(rkey.clone()),
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
