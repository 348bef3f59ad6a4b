//! What posting every operation shares: failing a packet before UCX sees
//! it, and the one way a send is posted (the endpoint checked, the
//! cancellation handler set, the view and what it needs kept in the
//! record until UCX reports it).

use mfio_core::{Error, PacketView, Read, Write};

use super::{InFlight, Keep};
use crate::ucx::endpoint::EpShared;
use crate::ucx::sys;
use crate::ucx::worker::{Shared, Start, State};

/// Fails a send before it reaches UCX.
pub(crate) fn fail_write(view: PacketView<Write>, err: Error) -> Start {
    view.fail(err);
    Start::Nothing
}

/// Fails a receive or get before it reaches UCX.
pub(crate) fn fail_read(view: PacketView<Read>, err: Error) -> Start {
    view.fail(err);
    Start::Nothing
}

/// Posts a send of `view` on `ep` with the worker locked: fails it if the
/// endpoint cannot take operations or the caller already left; otherwise
/// `post(shared, state, bytes, len)` makes the UCX call, and `keep`
/// stays with the view in the record until UCX reports the send.
///
/// `post` is handed the view's bytes, which stay valid and unchanged until
/// UCX reports the send (the record owns the view).
pub(crate) fn send(
    ep: &EpShared,
    view: PacketView<Write>,
    keep: Keep,
    post: impl FnOnce(&Shared, &mut State, *const u8, usize) -> sys::Posted,
) {
    ep.worker.start(|shared, st, token| {
        if let Err(err) = ep.usable() {
            return fail_write(view, err);
        }
        if view.set_cancel_handler(shared.cancels.clone(), token).is_err() {
            return fail_write(view, Error::cancelled());
        }
        let (bytes, len) = (view.as_slice().as_ptr(), view.len());
        let posted = post(shared, st, bytes, len);
        Start::OnEndpoint(ep.id, posted, InFlight::Send { view, keep }, len)
    });
}
