//! Tagged messages: send on an endpoint at a [`Tag`], receive on the worker
//! by [`TagMatch`] (tag and mask), learning the sender's tag and length.

use std::task::{Context, Poll};

use mfio_core::completion::{completion, Completer};
use mfio_core::{Error, PacketBuf, PacketIo, PacketView, QueueFull, Read, Write};

use super::post::{self, fail_read};
use super::{InFlight, Keep};
use super::{ReportedRecv, ReturnedTags};
use crate::ucx::endpoint::Endpoint;
use crate::ucx::sys;
use crate::ucx::worker::{Settled, Shared, Start, State, Worker};

/// The address of a tag send: the message's tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(pub u64);

/// The address of a tag send that asks UCX to complete it locally as soon
/// as it can (`UCP_OP_ATTR_FLAG_FAST_CMPL`): the message is copied out
/// eagerly up to the transport's limit for such sends (`ucx_info -e`, the
/// `tag_send_nbr` line: 256 KiB on shared memory in UCX 1.13, where an
/// ordinary send goes eagerly only up to about 8 KiB), so the send does
/// not wait for the receiver to ask for the message (measured: except
/// behind an earlier send on the endpoint that still waits for its
/// receiver's rendezvous). The price: the bytes are copied on both sides,
/// and a message that arrives before its receive is posted is held in
/// UCX's memory at the receiver, so a sender that runs far ahead costs the
/// receiver memory and time. Received as any tag message ([`TagMatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EagerTag(pub u64);

/// The address of a tag receive: takes the first message whose tag equals
/// `tag` in the bits set in `mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TagMatch {
    /// The tag bits to match.
    pub tag: u64,
    /// Which bits of the tag must match (`u64::MAX`: all, 0: any tag).
    pub mask: u64,
}

impl TagMatch {
    /// Matches exactly `tag`.
    pub fn exact(tag: u64) -> Self {
        Self { tag, mask: u64::MAX }
    }

    /// Matches any tag.
    pub fn any() -> Self {
        Self { tag: 0, mask: 0 }
    }

    /// Whether a message sent with `tag` is one to take.
    pub fn matches(&self, tag: u64) -> bool {
        (tag ^ self.tag) & self.mask == 0
    }
}

/// What a tag receive took: the sender's tag and the message's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TagInfo {
    /// The tag the message was sent with.
    pub tag: u64,
    /// Its length in bytes (all of it landed in the buffer).
    pub len: usize,
}

/// Sends the packet as one tagged message; completes once the buffer may be
/// reused (the message may still be on its way).
impl PacketIo<Write, Tag> for Endpoint {
    fn try_send_io(&self, tag: Tag, view: PacketView<Write>) -> std::result::Result<(), QueueFull<Write, Tag>> {
        send(self, tag.0, false, view);
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// Sends the packet as one tagged message, eagerly where UCX can (see
/// [`EagerTag`]); completes once the buffer may be reused.
impl PacketIo<Write, EagerTag> for Endpoint {
    fn try_send_io(
        &self,
        tag: EagerTag,
        view: PacketView<Write>,
    ) -> std::result::Result<(), QueueFull<Write, EagerTag>> {
        send(self, tag.0, true, view);
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl Endpoint {
    /// Sends `msg` at `tag` now, if UCX can without keeping `msg`: a short
    /// message, with room on the way to the peer, is copied out before this
    /// returns (`Ok(true)`). `Ok(false)`: it would have had to wait, or
    /// the endpoint cannot send (closed, failed); nothing was sent: send
    /// it as a packet ([`Tag`]), which waits or reports why. No packet, no
    /// allocation: for short messages on a hot path. Ordered with the
    /// endpoint's other sends, as any send (UCX keeps the order).
    ///
    /// # Errors
    /// What UCX reports for the send, other than that it would wait.
    pub fn try_tag_send(&self, tag: Tag, msg: &[u8]) -> std::result::Result<bool, Error> {
        let ep = &self.inner;
        let _worker = ep.worker.lock();
        if ep.usable().is_err() {
            return Ok(false);
        }
        // SAFETY: the endpoint is usable (live) and the worker is locked
        // for the call; `msg` outlives the call, and UCX keeps nothing.
        unsafe { sys::tag_send_now(ep.handle, msg.as_ptr(), msg.len(), tag.0) }
    }
}

fn send(endpoint: &Endpoint, tag: u64, eager: bool, view: PacketView<Write>) {
    let ep = &endpoint.inner;
    post::send(ep, view, Keep::Nothing, |shared, _st, bytes, len| {
        // SAFETY: the endpoint is live and the worker locked; the bytes
        // stay valid until UCX reports the send (`post::send`).
        unsafe { sys::tag_send(ep.handle, bytes, len, tag, eager, shared.sink()) }
    });
}

fn post_recv(shared: &Shared, matching: TagMatch, view: PacketView<Read>, report: Option<Completer<TagInfo>>) {
    shared.start(|shared, st, token| start_recv(shared, st, token, (matching, view, report)));
}

/// A tag receive waiting for a message [`Worker::try_tag_recv`] left
/// arriving to land first.
pub(crate) type WaitingRecv = (TagMatch, PacketView<Read>, Option<Completer<TagInfo>>);

/// Posts a tag receive (the worker locked, `token` its cancellation token).
pub(crate) fn start_recv(shared: &Shared, st: &mut State, token: u64, recv: WaitingRecv) -> Start {
    let (matching, mut view, report) = recv;
    if st.tag_landing > 0 {
        // An earlier message is still landing: it is taken first.
        st.tag_waiting.push((matching, view, report));
        return Start::Nothing;
    }
    let returned = shared.returned.clone();
    // A message a dropped receive took comes first: it arrived before
    // anything UCX still holds.
    if let Some((tag, data)) = returned.take(|(t, _)| matching.matches(*t)) {
        return serve_returned(view, report, tag, data, returned);
    }
    if view.set_cancel_handler(shared.cancels.clone(), token).is_err() {
        return fail_read(view, Error::cancelled());
    }
    let (ptr, len) = (view.as_mut_ptr(), view.len());
    // SAFETY: the worker is locked; the view stays in the record until
    // UCX reports the receive, and nothing else writes it meanwhile.
    let (posted, known) = unsafe { sys::tag_recv(shared.handle, ptr, len, matching.tag, matching.mask, shared.sink()) };
    let immediate = known.map_or(0, |(_, n)| n.min(len));
    let op = InFlight::TagRecv {
        view,
        report,
        known,
        returned,
    };
    Start::Posted(posted, op, immediate)
}

/// Files a message that was still arriving when [`Worker::try_tag_recv`]
/// took it: the next matching receive gets it (its view's packet is gone).
pub(crate) fn landed(mut view: PacketView<Read>, tag: u64, len: usize, returned: &ReturnedTags, f: sys::Finished) {
    if f.status == sys::OK && len <= view.len() {
        // SAFETY: UCX wrote the message's `len` bytes at the view's start
        // (it reported the receive done), and nothing writes them now.
        let data = unsafe { std::slice::from_raw_parts(view.as_mut_ptr(), len) };
        returned.push((tag, data.to_vec()));
    } else {
        tracing::debug!(tag, status = %sys::status_text(f.status), "UCX: a tag message taken while it arrived failed");
    }
    view.fail(Error::cancelled());
}

/// Receives a returned message: copied into the view, then finished as a
/// message from UCX is (so it comes back again if this caller leaves too).
/// A message longer than the buffer is discarded with a typed error, as UCX
/// does.
fn serve_returned(
    mut view: PacketView<Read>,
    report: Option<Completer<TagInfo>>,
    tag: u64,
    data: Vec<u8>,
    returned: std::sync::Arc<ReturnedTags>,
) -> Start {
    let len = data.len();
    let status = if len > view.len() {
        sys::ERR_TRUNCATED
    } else {
        view.fill_from(&data);
        sys::OK
    };
    let op = InFlight::TagRecv {
        view,
        report,
        known: Some((tag, len)),
        returned,
    };
    let finished = sys::Finished {
        request: 0,
        status,
        length: len,
        tag,
    };
    Start::Finished(op, finished)
}

/// Receives the first message matching the address; completes with its
/// length. A message longer than the buffer fails the receive with
/// [`Error::is_truncated`] (UCX discards it). Use [`Worker::tag_recv`] to
/// learn the sender's tag too.
impl PacketIo<Read, TagMatch> for Worker {
    fn try_send_io(
        &self,
        matching: TagMatch,
        view: PacketView<Read>,
    ) -> std::result::Result<(), QueueFull<Read, TagMatch>> {
        post_recv(&self.shared, matching, view, None);
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

pub(crate) fn finish(
    mut view: PacketView<Read>,
    report: Option<Completer<TagInfo>>,
    known: Option<(u64, usize)>,
    returned: &std::sync::Arc<ReturnedTags>,
    f: sys::Finished,
) {
    let (tag, len) = known.unwrap_or((f.tag, f.length));
    let result = match f.status {
        sys::OK => Ok(TagInfo { tag, len }),
        sys::ERR_TRUNCATED => Err(Error::truncated(known.map(|(_, n)| n as u64), view.len() as u64)),
        sys::ERR_CANCELED => Err(Error::cancelled()),
        status => Err(sys::status_error(status, "tag receive")),
    };
    match result {
        Ok(info) => {
            // From now on a caller that leaves without the message gives it
            // back (under its tag). One that left already does so here.
            if view.set_cancel_handler(returned.clone(), info.tag).is_err() {
                // SAFETY: UCX (or `serve_returned`) wrote the first
                // `info.len` bytes of the view, which nothing writes now.
                let data = unsafe { std::slice::from_raw_parts(view.as_mut_ptr(), info.len) };
                returned.put_back((info.tag, data.to_vec()));
                if let Some(report) = report {
                    report.complete(Err(Error::cancelled()));
                }
                view.fail(Error::cancelled());
                return;
            }
            if let Some(report) = report {
                report.complete(Ok(info));
            }
            view.complete(info.len);
        }
        Err(err) => {
            if let Some(report) = report {
                report.complete(Err(err.duplicate()));
            }
            view.fail(err);
        }
    }
}

/// The address [`Worker::tag_recv`] uses: a [`TagMatch`] and where to report
/// the sender's tag. Send it with [`PacketIo`] to build your own future.
#[derive(Debug)]
pub struct TagRecvReport {
    /// Which messages to take.
    pub matching: TagMatch,
    /// Receives the sender's tag and length (or the error).
    pub report: Completer<TagInfo>,
}

impl PacketIo<Read, TagRecvReport> for Worker {
    fn try_send_io(
        &self,
        to: TagRecvReport,
        view: PacketView<Read>,
    ) -> std::result::Result<(), QueueFull<Read, TagRecvReport>> {
        post_recv(&self.shared, to.matching, view, Some(to.report));
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl Worker {
    /// Takes a message matching `matching` that has arrived, into `buf`
    /// (its bytes replaced, up to its capacity), without a packet:
    /// `Ok(Some(info))` with the sender's tag and the length. A message a
    /// dropped receive took and gave back comes first, as it does to
    /// [`tag_recv`](Self::tag_recv). `Ok(None)` when there is nothing to
    /// take now: no such message has arrived, or the first is longer than
    /// `buf`'s capacity (it is left for [`tag_recv`](Self::tag_recv), which
    /// reports it).
    ///
    /// A message still arriving in pieces (a long eager message, or one
    /// sent by rendezvous) is taken with `buf`'s memory, which goes with it
    /// (`buf` is left empty, without capacity): the next matching receive
    /// of either kind gets the message once it is in, and no later message
    /// is taken before it. So the order of messages is UCX's, as with
    /// [`tag_recv`](Self::tag_recv) alone.
    ///
    /// For a loop that takes many short messages: each costs a probe and a
    /// copy, where a packet receive costs its future and its completion.
    ///
    /// # Errors
    /// What UCX reports receiving the message.
    pub fn try_tag_recv(&self, matching: TagMatch, buf: &mut Vec<u8>) -> std::result::Result<Option<TagInfo>, Error> {
        let shared = &*self.shared;
        let mut st = shared.lock();
        let (found, finish) = take(shared, &mut st, matching, buf);
        drop(st);
        if let Some((op, f)) = finish {
            super::finish(op, f);
        }
        match found {
            Found::Taken(info) => Ok(Some(info)),
            Found::Nothing | Found::TooLong(_) | Found::Landing => Ok(None),
            Found::Failed(err) => Err(err),
        }
    }

    /// Receives a message matching `matching` into `buf` (its bytes
    /// replaced, up to its capacity) without a packet, as a poll: ready
    /// with the sender's tag and the length once one has arrived; pending
    /// until then, and `cx` is woken by the next driving step of the
    /// worker whose progress did anything (a message may have come). For a
    /// loop that receives many short messages: no future, completion or
    /// allocation per message, where a packet receive has all three.
    ///
    /// The order of messages is UCX's, with [`tag_recv`](Self::tag_recv)
    /// and [`try_tag_recv`](Self::try_tag_recv) beside it: a message still
    /// arriving in pieces when it is taken lands first (in memory of its
    /// own; `buf` keeps its capacity). While a poll waits, the worker's
    /// driving step spins for it as for an operation in flight
    /// ([`WorkerBuilder::spin`](crate::ucx::WorkerBuilder::spin)).
    ///
    /// # Errors
    /// [`Error::is_truncated`] if the first matching message is longer than
    /// `buf`'s capacity: it is not lost, a longer buffer takes it. What UCX
    /// reports receiving the message.
    pub fn poll_tag_recv(
        &self,
        matching: TagMatch,
        buf: &mut Vec<u8>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<TagInfo, Error>> {
        let shared = &*self.shared;
        let cap = buf.capacity();
        let mut st = shared.lock();
        let (found, finish) = take(shared, &mut st, matching, buf);
        if matches!(found, Found::Nothing | Found::Landing) {
            // Registered before the worker is let go: a message that comes
            // after the look above is seen by a progress after this.
            if !st.tag_pollers.iter().any(|w| w.will_wake(cx.waker())) {
                st.tag_pollers.push(cx.waker().clone());
            }
        }
        drop(st);
        if let Some((op, f)) = finish {
            super::finish(op, f);
        }
        match found {
            Found::Taken(info) => Poll::Ready(Ok(info)),
            Found::Nothing => Poll::Pending,
            Found::Landing => {
                // Its memory went with the message that is landing.
                *buf = Vec::with_capacity(cap);
                Poll::Pending
            }
            Found::TooLong(len) => Poll::Ready(Err(Error::truncated(len.map(|n| n as u64), cap as u64))),
            Found::Failed(err) => Poll::Ready(Err(err)),
        }
    }
}

/// What [`take`] found.
enum Found {
    /// A message, whole in `buf`.
    Taken(TagInfo),
    /// No matching message.
    Nothing,
    /// The first matching message is longer than `buf`'s capacity (its
    /// length, where known); it stays.
    TooLong(Option<usize>),
    /// One still arriving took `buf`'s memory; it lands first.
    Landing,
    /// What UCX reported.
    Failed(Error),
}

/// Takes a message matching `matching` that has arrived into `buf` (the
/// worker locked): see [`Worker::try_tag_recv`]. An operation to finish
/// once the worker is let go comes with it.
fn take(
    shared: &Shared,
    st: &mut State,
    matching: TagMatch,
    buf: &mut Vec<u8>,
) -> (Found, Option<(InFlight, sys::Finished)>) {
    if st.tag_landing > 0 {
        return (Found::Landing, None);
    }
    buf.clear();
    // A message a dropped receive took comes first: it arrived before
    // anything UCX still holds.
    let cap = buf.capacity();
    let taken = shared
        .returned
        .take_first_if(|(tag, _)| matching.matches(*tag), |(_, data)| data.len() <= cap);
    match taken {
        Some(Some((tag, data))) => {
            buf.extend_from_slice(&data);
            return (Found::Taken(TagInfo { tag, len: data.len() }), None);
        }
        // Longer than `buf`: it stays, for a longer one.
        Some(None) => return (Found::TooLong(None), None),
        None => {}
    }
    let (ptr, cap) = (buf.as_mut_ptr(), buf.capacity());
    // SAFETY: the worker is locked; `buf`'s capacity is `cap` bytes, which
    // UCX writes only during the call unless the receive stays in flight:
    // then the memory goes into the record below, alive and written by
    // nothing else until UCX reports the receive.
    let (posted, tag, len) =
        match unsafe { sys::tag_take(shared.handle, ptr, cap, matching.tag, matching.mask, shared.sink()) } {
            sys::Take::Nothing => return (Found::Nothing, None),
            sys::Take::TooLong(len) => return (Found::TooLong(Some(len)), None),
            sys::Take::Taken(posted, tag, len) => (posted, tag, len),
        };
    match posted {
        sys::Posted::Done => {
            // SAFETY: UCX wrote the message's `len` bytes (at most `cap`).
            unsafe { buf.set_len(len) };
            (Found::Taken(TagInfo { tag, len }), None)
        }
        sys::Posted::Failed(status) => (Found::Failed(sys::status_error(status, "tag receive")), None),
        sys::Posted::InFlight(req) => {
            if let Some(f) = shared.finished_in_call(req) {
                // Every piece was in: whole already, as if done at once.
                if f.status != sys::OK {
                    return (Found::Failed(sys::status_error(f.status, "tag receive")), None);
                }
                // SAFETY: UCX wrote the message's `len` bytes (at most `cap`).
                unsafe { buf.set_len(len) };
                return (Found::Taken(TagInfo { tag, len }), None);
            }
            // The receive keeps the memory; its packet has no caller.
            let mut packet = mfio_core::Packet::<Read, Vec<u8>>::new(std::mem::take(buf));
            let Some(view) = packet.take_view() else {
                // (A new packet has its view.) Kept for good rather than
                // freed under UCX.
                std::mem::forget(packet);
                return (
                    Found::Failed(Error::new(std::io::ErrorKind::Other, "a packet without its view")),
                    None,
                );
            };
            drop(packet);
            let op = InFlight::TagLanding {
                view,
                tag,
                len,
                returned: shared.returned.clone(),
            };
            st.tag_landing += 1;
            let finish = match shared.settle(st, posted, op, 0) {
                Settled::Now(op, f) => Some((op, f)),
                Settled::Later => None,
            };
            (Found::Landing, finish)
        }
    }
}

/// Future of [`Worker::tag_recv`]: the sender's tag and length, and the buffer.
pub type TagRecv<'a, B> = ReportedRecv<'a, TagRecvReport, TagInfo, B>;

impl Worker {
    /// Receives the first message matching `matching` into `buf`, with the
    /// sender's tag and the length.
    ///
    /// Dropping the future before it resolves cancels the receive. If it
    /// had taken a message already, the message is not lost: the next
    /// matching receive posted gets it first.
    ///
    /// # Errors
    /// (in the output) [`Error::is_truncated`] if the message is longer
    /// than `buf`'s capacity; cancellation if the worker goes away.
    pub fn tag_recv<B: PacketBuf<Read>>(&self, matching: TagMatch, buf: B) -> TagRecv<'_, B> {
        let (report, info) = completion();
        ReportedRecv::new(self, TagRecvReport { matching, report }, buf, info)
    }
}

/// A message address does not move: a short send or receive is a message,
/// not a prefix of a longer one.
impl mfio_core::Position for Tag {
    fn advance(self, _n: usize) -> Self {
        self
    }
    fn as_offset(self) -> Option<u64> {
        None
    }
}

/// See [`Tag`]'s `Position`.
impl mfio_core::Position for EagerTag {
    fn advance(self, _n: usize) -> Self {
        self
    }
    fn as_offset(self) -> Option<u64> {
        None
    }
}

/// See [`Tag`]'s `Position`.
impl mfio_core::Position for TagMatch {
    fn advance(self, _n: usize) -> Self {
        self
    }
    fn as_offset(self) -> Option<u64> {
        None
    }
}
