//! Stream send and receive on an endpoint ([`NoPos`]): bytes in order, a
//! receive returns what has arrived (at least one byte), as TCP does.
//!
//! One receive per endpoint is posted to UCX at a time (the others wait
//! their turn), and every receive is watched by the endpoint's
//! [`KeptBytes`](mfio_core::kept::KeptBytes): UCX cannot cancel a stream
//! receive, so one whose caller gave up completes anyway and its bytes go
//! back to the front of the stream for the next receive.

use std::task::{Context, Poll};

use mfio_core::{NoPos, PacketIo, PacketView, QueueFull, Read, Write};

use super::post;
use super::{InFlight, Keep};
use crate::ucx::endpoint::{Endpoint, ReadState};
use crate::ucx::sys;
use crate::ucx::worker::{Settled, Shared, Start, State, NO_CANCEL};

/// Sends the packet's bytes on the endpoint's stream; completes once the
/// buffer may be reused.
impl PacketIo<Write, NoPos> for Endpoint {
    fn try_send_io(&self, _: NoPos, view: PacketView<Write>) -> Result<(), QueueFull<Write, NoPos>> {
        let ep = &self.inner;
        post::send(ep, view, Keep::Nothing, |shared, st, bytes, len| {
            // The end-of-stream notice carries the count of bytes sent.
            if let Some(turn) = st.streams.get_mut(&ep.id) {
                turn.sent += len as u64;
            }
            // SAFETY: the endpoint is live and the worker locked; the bytes
            // stay valid until UCX reports the send (`post::send`).
            unsafe { sys::stream_send(ep.handle, bytes, len, shared.sink()) }
        });
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// Receives what has arrived on the endpoint's stream (at least one byte);
/// 0 bytes once the peer closed the endpoint.
impl PacketIo<Read, NoPos> for Endpoint {
    fn try_send_io(&self, _: NoPos, view: PacketView<Read>) -> Result<(), QueueFull<Read, NoPos>> {
        let id = self.inner.id;
        self.inner.worker.start(|shared, st, _token| {
            // Kept bytes first: they came before anything still to arrive,
            // and outlive the endpoint's close.
            let Some(view) = self.inner.kept.start_read(view, NO_CANCEL) else {
                return Start::Nothing;
            };
            match self.inner.read_state() {
                ReadState::Open => {}
                ReadState::Ended => return eof(view),
                ReadState::Failed(err) => {
                    view.fail(err);
                    return Start::Nothing;
                }
            }
            let Some(turn) = st.streams.get_mut(&id) else {
                return eof(view);
            };
            turn.waiting.push_back(view);
            let mut out = Vec::new();
            next_turn(shared, st, id, &mut out);
            Start::Many(out)
        });
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

fn eof(view: PacketView<Read>) -> Start {
    view.complete(0);
    Start::Nothing
}

fn done(view: PacketView<Read>, ep_id: u64, status: sys::Status, length: usize) -> (InFlight, sys::Finished) {
    (
        InFlight::StreamRecv { view, ep_id },
        sys::Finished {
            request: 0,
            status,
            length,
            tag: 0,
        },
    )
}

/// Posts `view` as endpoint `ep_id`'s receive; a receive that finishes at
/// once goes to `out`.
fn post(
    shared: &Shared,
    st: &mut State,
    ep_id: u64,
    mut view: PacketView<Read>,
    out: &mut Vec<(InFlight, sys::Finished)>,
) {
    let Some(turn) = st.streams.get_mut(&ep_id) else {
        out.push(done(view, ep_id, sys::ERR_NOT_CONNECTED, 0));
        return;
    };
    let (ptr, len) = (view.as_mut_ptr(), view.len());
    // SAFETY: the endpoint is live (its turn exists) and the worker locked;
    // the view stays in the record until UCX reports the receive.
    let (posted, n) = unsafe { sys::stream_recv(turn.ep, ptr, len, shared.sink()) };
    turn.busy = matches!(posted, sys::Posted::InFlight(_));
    if matches!(posted, sys::Posted::Done) {
        turn.received += n as u64;
    }
    match shared.settle(st, posted, InFlight::StreamRecv { view, ep_id }, n) {
        // Finished here, before any later receive of the stream can start
        // (see `next_turn`).
        Settled::Now(op, f) => super::finish(op, f),
        Settled::Later => {}
    }
    let _ = out;
}

/// Starts the receives waiting on endpoint `ep_id` until one is in flight:
/// those whose caller left are dropped, kept bytes are served first.
pub(crate) fn next_turn(shared: &Shared, st: &mut State, ep_id: u64, out: &mut Vec<(InFlight, sys::Finished)>) {
    loop {
        let Some(turn) = st.streams.get_mut(&ep_id) else { return };
        if turn.peer_total.is_some_and(|total| turn.received >= total) {
            // Everything the peer sent has arrived: the stream ended.
            // Closing ends the receive UCX still holds, if any.
            if turn.status.fail(sys::ERR_CONNECTION_RESET) {
                shared.close_failed(st, ep_id, out);
            }
            return;
        }
        if turn.busy {
            return;
        }
        let Some(mut view) = turn.waiting.pop_front() else {
            return;
        };
        // Receives finish here, under the worker's lock, in stream order: a
        // receive whose caller left gives its bytes back before the next
        // one starts.
        if view.is_cancelled() {
            let (op, f) = done(view, ep_id, sys::ERR_CANCELED, 0);
            super::finish(op, f);
            continue;
        }
        if let Some(n) = turn.kept.serve(&mut view) {
            let (op, f) = done(view, ep_id, sys::OK, n);
            super::finish(op, f);
            continue;
        }
        post(shared, st, ep_id, view, out);
    }
}

pub(crate) fn finish(view: PacketView<Read>, f: sys::Finished) {
    match f.status {
        sys::OK => view.complete(f.length),
        // The peer closed (gracefully: UCX reports it as a reset), or the
        // endpoint was closed here: the stream ended.
        sys::ERR_CONNECTION_RESET | sys::ERR_NOT_CONNECTED | sys::ERR_CANCELED => view.complete(0),
        status => view.fail(sys::status_error(status, "stream receive")),
    }
}

/// A peer's end-of-stream notice: its endpoint sent `total` stream bytes in
/// all; reads end once they have all arrived.
pub(crate) fn goodbye(
    shared: &Shared,
    st: &mut State,
    arrival: sys::AmArrival,
    out: &mut Vec<(InFlight, sys::Finished)>,
) {
    let total = match <[u8; 8]>::try_from(arrival.header.as_slice()) {
        Ok(bytes) => u64::from_le_bytes(bytes),
        Err(_) => {
            tracing::warn!(len = arrival.header.len(), "ignoring a malformed end-of-stream notice");
            super::am::release(shared.handle, arrival.data);
            return;
        }
    };
    super::am::release(shared.handle, arrival.data);
    let found = st
        .streams
        .iter_mut()
        .find(|(_, turn)| !arrival.reply_ep.is_null() && turn.ep == arrival.reply_ep);
    let Some((&ep_id, turn)) = found else { return };
    turn.peer_total = Some(total);
    next_turn(shared, st, ep_id, out);
}
