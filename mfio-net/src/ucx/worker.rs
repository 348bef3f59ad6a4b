//! [`Worker`]: a UCX worker as an mfio [`IoBackend`]. Its polling handle is
//! an epoll set of the worker's event descriptor and the mfio notifier; its
//! driving step progresses UCX, finishes what UCX reported, and arms the
//! event descriptor before the caller sleeps.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mfio_core::cancel::Cancels;
use mfio_core::completion::Completer;
use mfio_core::{DriveStatus, Error, IoBackend, MissedDrives, Notifier, PacketView, PollingHandle, Read, Result};
use parking_lot::Mutex;
use rustix::event::epoll;
use slab::Slab;

use super::address::WorkerAddress;
use super::context::Context;
use super::op::{self, AmInfo, InFlight};
use super::sys;

/// How long a driving step keeps progressing an idle-looking worker that
/// has operations in flight before it arms the event descriptor and lets
/// the caller sleep. Waking from a sleep costs 12–22 µs on shared memory
/// against well under 1 µs spinning (measured with a C probe on this
/// machine kind), so a short spin pays for itself on a ping-pong and costs
/// nothing when nothing is in flight.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// The largest active-message id a worker takes (UCX keeps a table indexed
/// by id; the bound keeps a stray id from growing it).
pub const MAX_AM_ID: u16 = 1023;

/// The handler id of mfio's end-of-stream notice: a closing endpoint tells
/// its peer how many stream bytes it sent, so the peer's reads end after
/// the last of them (UCX tells the peer of an endpoint connected by worker
/// address nothing when it closes).
pub(crate) const GOODBYE_AM_ID: u16 = MAX_AM_ID + 1;

/// Wakes in a row that find UCX's descriptor readable and nothing to do
/// before it is paused (see `Shared::check_stale`).
const STALE_WAKES: u32 = 3;
/// The first pause of a stale descriptor; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_micros(500);
/// How long a dropped worker waits for its operations to end (and again
/// for those it ended by closing their endpoints by force) before it goes.
const DROP_GRACE: Duration = Duration::from_millis(500);

/// Progress calls of the spin between two reads of the clock.
const SPINS_PER_CLOCK: u32 = 32;
/// A yield of the spin that takes this long ran other work meanwhile: a
/// yield with nothing else to run takes about a microsecond, and now and
/// then (3 in 10 000 here) longer, when the machine took the core.
const YIELD_GAVE_CORE_AWAY: Duration = Duration::from_micros(5);
/// Yields of the spin between two judgements of whether the core is shared.
const YIELDS_PER_JUDGEMENT: u32 = 256;
/// How often a worker with endpoints or operations is progressed while
/// nothing wakes it, so UCX's keepalive can notice a dead peer.
const KEEPALIVE_TICK: Duration = Duration::from_millis(250);

/// The longest pause of a stale descriptor.
const MAX_BACKOFF: Duration = Duration::from_millis(16);

/// Token of a cancellation that has nothing to cancel in UCX (stream
/// receives: their bytes are kept, see [`KeptBytes`](mfio_core::kept::KeptBytes)).
pub(crate) const NO_CANCEL: u64 = u64::MAX;

/// An operation in flight and the UCX request carrying it.
pub(crate) struct Record {
    pub(crate) op: InFlight,
    req: sys::Request,
    seq: u32,
    /// The endpoint it runs on, if it is one whose close waits for it
    /// ([`State::ep_ops`]); 0 if none.
    ep: u64,
}

/// Closes an endpoint whose close waited for its operations
/// ([`State::closing`]): posts the close, by force if told (`true`), with
/// the worker locked.
pub(crate) type Closer = Box<dyn FnOnce(&Shared, bool) -> Start + Send>;

// SAFETY: the request pointer is only used by the thread holding the worker
// state; the rest of the record is Send.
unsafe impl Send for Record {}

/// Receives of one active-message id that wait for a message, and messages
/// that wait for a receive.
#[derive(Default)]
pub(crate) struct AmQueue {
    pub(crate) receives: VecDeque<(PacketView<Read>, Option<Completer<AmInfo>>)>,
    pub(crate) arrivals: VecDeque<sys::AmArrival>,
}

/// The turn-taking of one endpoint's stream receives: one is posted to UCX
/// at a time, so bytes given back by a dropped receive stay in order.
pub(crate) struct StreamTurn {
    pub(crate) ep: sys::EpH,
    pub(crate) status: Arc<super::endpoint::EpStatus>,
    pub(crate) kept: Arc<mfio_core::kept::KeptBytes>,
    pub(crate) busy: bool,
    pub(crate) waiting: VecDeque<PacketView<Read>>,
    /// Stream bytes posted for sending on this endpoint.
    pub(crate) sent: u64,
    /// Stream bytes received on it.
    pub(crate) received: u64,
    /// How many the peer sent in all, once its end-of-stream notice came.
    pub(crate) peer_total: Option<u64>,
}

/// The worker's mutable state; whoever holds it may call into UCX.
pub(crate) struct State {
    ops: Slab<Record>,
    seq: u32,
    pub(crate) am: HashMap<u16, AmQueue>,
    /// Ids whose messages are kept until a receive takes them.
    pub(crate) am_listening: std::collections::HashSet<u16>,
    am_handlers: HashMap<u16, Box<sys::AmHandlerArg>>,
    pub(crate) streams: HashMap<u64, StreamTurn>,
    /// Operations in flight per endpoint id that end on their own (sends,
    /// gets, flushes; not stream receives, which its close ends).
    pub(crate) ep_ops: HashMap<u64, u32>,
    /// Endpoints closed by their owner while such operations were in
    /// flight, still open in UCX: each is closed once its last operation
    /// ends, or by force when the worker goes first. (UCX cannot stop a
    /// send under way, a rendezvous its peer never takes, say, and aborts
    /// the process when a worker goes with one; it can end it by closing
    /// its endpoint by force, but not once a close is under way.)
    pub(crate) closing: HashMap<u64, Closer>,
    next_ep: u64,
    /// Sleeps in a row that ended at once with nothing to do.
    stale_wakes: u32,
    /// The current pause of a stale descriptor.
    backoff: Duration,
    /// The UCX descriptor is out of the polling set.
    muted: bool,
    /// Tag messages still arriving into buffers [`Worker::try_tag_recv`]
    /// let go ([`InFlight::TagLanding`](op::InFlight)): until they are in
    /// (and in `returned`, first in line), nothing else takes a tag message.
    pub(crate) tag_landing: usize,
    /// Tag receives posted meanwhile, started when the last lands.
    pub(crate) tag_waiting: Vec<op::tag::WaitingRecv>,
    /// An empty list with room, swapped with the callbacks' sink.
    spare_finished: Vec<sys::Finished>,
    /// An empty list with room for a driving step's finished operations.
    spare_done: Vec<(InFlight, sys::Finished)>,
    /// Wakers of packet-free tag receives waiting for a message
    /// ([`Worker::poll_tag_recv`]): woken by the next driving step whose
    /// progress did anything. The driving step spins for them as for
    /// operations in flight.
    pub(crate) tag_pollers: Vec<std::task::Waker>,
    /// An empty list with room for the wakers a driving step wakes.
    spare_woken: Vec<std::task::Waker>,
    /// The spin's yields since the core was last judged, and how many of
    /// them gave the core away ([`Shared::judge_yield`]).
    yields: u32,
    long_yields: u32,
}

impl State {
    /// The cancellation token the next operation posted will have: it
    /// lands in the slab's vacant slot, under the next sequence number
    /// (both hold while the state stays locked).
    pub(crate) fn next_token(&self) -> u64 {
        (u64::from(self.seq.wrapping_add(1)) << 32) | self.ops.vacant_key() as u64
    }

    /// A fresh endpoint id.
    pub(crate) fn next_ep_id(&mut self) -> u64 {
        self.next_ep += 1;
        self.next_ep
    }
}

/// What an operation's posting code did, for [`Shared::start`].
pub(crate) enum Start {
    /// Called UCX: what it did, the record, and the count of an immediate completion.
    Posted(sys::Posted, InFlight, usize),
    /// As `Posted`, for an operation on the endpoint of this id that its
    /// close waits for ([`State::ep_ops`]).
    OnEndpoint(u64, sys::Posted, InFlight, usize),
    /// Finished without UCX (bad input, a closed endpoint, kept bytes).
    Finished(InFlight, sys::Finished),
    /// Finished several without UCX.
    Many(Vec<(InFlight, sys::Finished)>),
    /// Queued behind another operation, or completed already.
    Nothing,
}

/// What became of a posted operation.
pub(crate) enum Settled {
    /// Finished inside the call: complete it once the state is unlocked.
    Now(InFlight, sys::Finished),
    /// In flight: its callback will report it.
    Later,
}

pub(crate) struct Shared {
    pub(crate) handle: sys::WorkerH,
    state: Mutex<State>,
    /// Where request callbacks report (shared, so that a worker kept for
    /// good can keep it too).
    sink: Arc<sys::Sink>,
    am_sink: Arc<sys::AmSink>,
    pub(crate) cancels: Arc<Cancels>,
    /// Tag messages whose receive's caller left without them.
    pub(crate) returned: Arc<op::ReturnedTags>,
    /// Active messages whose receive's caller left without them.
    pub(crate) returned_ams: Arc<op::ReturnedAms>,
    pub(crate) notifier: Arc<Notifier>,
    /// Endpoints UCX reported failed, to be closed by the driving step.
    pub(crate) failed_eps: Arc<Mutex<Vec<u64>>>,
    epoll: OwnedFd,
    /// UCX's event descriptor (owned by UCX).
    efd: std::os::fd::RawFd,
    spin: Duration,
    /// How long the spin goes on before it gives the core away now and
    /// then (`None`: never; [`WorkerBuilder::yield_when_idle`],
    /// [`WorkerBuilder::yield_after`]).
    yield_after: Option<Duration>,
    /// Driving steps that found the worker locked and returned at once.
    missed: MissedDrives,
    /// Whether the spin's yields lately gave the core to other work
    /// ([`Worker::core_shared_lately`]).
    core_shared: AtomicBool,
    pub(crate) max_am_header: usize,
    address: WorkerAddress,
    // Last: the context outlives the worker.
    pub(crate) context: Context,
}

// SAFETY: UCX is called only by the thread holding `state` (the worker is
// single-threaded in UCX's sense), except `ucp_worker_signal`, which is
// thread-safe; the raw handle is just a pointer.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    pub(crate) fn sink(&self) -> *const sys::Sink {
        Arc::as_ptr(&self.sink)
    }

    /// Locks the worker for calls into UCX.
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The report of `req`, taken out of the sink, if its callback ran
    /// inside the posting call that returned it (UCX does for a receive of
    /// a long eager message whose pieces were all in); the request is then
    /// freed. `None` (and the request untouched) for one still in flight.
    pub(crate) fn finished_in_call(&self, req: sys::Request) -> Option<sys::Finished> {
        let mut sink = self.sink.lock();
        let at = sink.iter().position(|f| f.request == req as usize)?;
        // In order: the other reports' order is the order they finished.
        let f = sink.remove(at);
        drop(sink);
        // SAFETY: its callback has run; nothing refers to it any more.
        unsafe { sys::request_free(req) };
        Some(f)
    }

    /// Records what an `_nbx` call did with `op`.
    pub(crate) fn settle(&self, st: &mut State, posted: sys::Posted, op: InFlight, immediate_len: usize) -> Settled {
        self.settle_on(st, 0, posted, op, immediate_len)
    }

    /// [`settle`](Self::settle) for an operation on endpoint `ep` (0: none)
    /// that the endpoint's close waits for.
    pub(crate) fn settle_on(
        &self,
        st: &mut State,
        ep: u64,
        posted: sys::Posted,
        op: InFlight,
        immediate_len: usize,
    ) -> Settled {
        let finished = |status| sys::Finished {
            request: 0,
            status,
            length: immediate_len,
            tag: 0,
        };
        match posted {
            sys::Posted::Done => Settled::Now(op, finished(sys::OK)),
            sys::Posted::Failed(status) => Settled::Now(op, finished(status)),
            sys::Posted::InFlight(req) => {
                st.seq = st.seq.wrapping_add(1);
                let seq = st.seq;
                let key = st.ops.insert(Record { op, req, seq, ep });
                if ep != 0 {
                    *st.ep_ops.entry(ep).or_insert(0) += 1;
                }
                // SAFETY: req was just returned by an _nbx call of this
                // worker's context and is not freed before its report is
                // collected, under this lock, which reads the key. (Its
                // callback may have run inside the call already: the report
                // waits in the sink until then.)
                unsafe { sys::set_request_key(req, key) };
                // Wake a sleeping driver: the request needs progress.
                self.notifier.notify();
                Settled::Later
            }
        }
    }

    /// Runs an operation's posting code with the worker locked and the
    /// cancellation token it will have, records the outcome, and completes
    /// it (outside the lock) if it finished at once.
    pub(crate) fn start(&self, post: impl FnOnce(&Self, &mut State, u64) -> Start) {
        let mut st = self.state.lock();
        let token = st.next_token();
        // One finished operation is the common case (an eager send): no
        // allocation for it.
        let (one, many) = match post(self, &mut st, token) {
            Start::Posted(posted, op, len) => match self.settle(&mut st, posted, op, len) {
                Settled::Now(op, f) => (Some((op, f)), Vec::new()),
                Settled::Later => (None, Vec::new()),
            },
            Start::OnEndpoint(ep, posted, op, len) => match self.settle_on(&mut st, ep, posted, op, len) {
                Settled::Now(op, f) => (Some((op, f)), Vec::new()),
                Settled::Later => (None, Vec::new()),
            },
            Start::Finished(op, f) => (Some((op, f)), Vec::new()),
            Start::Many(done) => (None, done),
            Start::Nothing => (None, Vec::new()),
        };
        drop(st);
        for (op, f) in one.into_iter().chain(many) {
            op::finish(op, f);
        }
    }

    /// Records what an operation's posting code did (as [`start`](Self::start)
    /// does), leaving what finished in `out`: for posting with the worker
    /// locked already.
    pub(crate) fn apply(&self, st: &mut State, start: Start, out: &mut Vec<(InFlight, sys::Finished)>) {
        match start {
            Start::Posted(posted, op, len) => {
                if let Settled::Now(op, f) = self.settle(st, posted, op, len) {
                    out.push((op, f));
                }
            }
            Start::OnEndpoint(ep, posted, op, len) => {
                if let Settled::Now(op, f) = self.settle_on(st, ep, posted, op, len) {
                    out.push((op, f));
                }
            }
            Start::Finished(op, f) => out.push((op, f)),
            Start::Many(done) => out.extend(done),
            Start::Nothing => {}
        }
    }

    /// Cancels the UCX request behind `token` if it is still in flight
    /// (its callback then reports it as cancelled).
    fn cancel(&self, st: &mut State, token: u64) {
        if token == NO_CANCEL {
            return;
        }
        let key = (token & 0xffff_ffff) as usize;
        let seq = (token >> 32) as u32;
        if let Some(rec) = st.ops.get(key) {
            if rec.seq == seq {
                // SAFETY: the request is in flight on this worker, whose
                // state we hold.
                unsafe { sys::request_cancel(self.handle, rec.req) };
            }
        }
    }

    /// Registers the active-message handler of `id` once.
    pub(crate) fn am_handler(&self, st: &mut State, id: u16) -> Result<()> {
        if st.am_handlers.contains_key(&id) {
            return Ok(());
        }
        let arg = Box::new(sys::AmHandlerArg {
            id,
            sink: self.am_sink.clone(),
        });
        // SAFETY: the worker is live and held; the box stays in the map
        // (at a stable address) until the worker is destroyed.
        unsafe { sys::am_set_handler(self.handle, id, &*arg)? };
        st.am_handlers.insert(id, arg);
        Ok(())
    }

    /// Takes what callbacks reported and pairs it with its operation;
    /// matches active messages with receives; starts the next stream
    /// receive of endpoints whose receive finished.
    fn collect(&self, st: &mut State, out: &mut Vec<(InFlight, sys::Finished)>) {
        loop {
            // The sink keeps an empty list with room (the last one taken),
            // so that the callbacks' pushes do not allocate.
            let mut finished = std::mem::take(&mut st.spare_finished);
            std::mem::swap(&mut *self.sink.lock(), &mut finished);
            let arrivals = std::mem::take(&mut *self.am_sink.lock());
            let failed = std::mem::take(&mut *self.failed_eps.lock());
            if finished.is_empty() && arrivals.is_empty() && failed.is_empty() {
                st.spare_finished = finished;
                return;
            }
            for ep_id in failed {
                self.close_failed(st, ep_id, out);
            }
            for f in finished.drain(..) {
                let Some(rec) = take_record(&mut st.ops, f) else {
                    tracing::warn!(request = f.request, "UCX reported an operation that is not in flight");
                    continue;
                };
                if rec.ep != 0 {
                    self.ep_op_ended(st, rec.ep, out);
                }
                if let InFlight::TagLanding { .. } = &rec.op {
                    // Filed before anything else can take a tag message.
                    op::finish(rec.op, f);
                    st.tag_landing -= 1;
                    if st.tag_landing == 0 {
                        for waiting in std::mem::take(&mut st.tag_waiting) {
                            let token = st.next_token();
                            let start = op::tag::start_recv(self, st, token, waiting);
                            self.apply(st, start, out);
                        }
                    }
                    continue;
                }
                if let InFlight::StreamRecv { ep_id, .. } = &rec.op {
                    let ep_id = *ep_id;
                    if let Some(turn) = st.streams.get_mut(&ep_id) {
                        turn.busy = false;
                        if f.status == sys::OK {
                            turn.received += f.length as u64;
                        }
                    }
                    // Finished before the next turn starts: if its caller
                    // left, its bytes go back to the front of the stream
                    // first, so the next receive takes them in order.
                    op::finish(rec.op, f);
                    op::stream::next_turn(self, st, ep_id, out);
                    continue;
                }
                out.push((rec.op, f));
            }
            st.spare_finished = finished;
            for arrival in arrivals {
                op::am::arrived(self, st, arrival, out);
            }
        }
    }

    /// One of endpoint `ep`'s operations its close waits for ended: if it
    /// was the last and the endpoint's owner closed it, the close is posted.
    fn ep_op_ended(&self, st: &mut State, ep: u64, out: &mut Vec<(InFlight, sys::Finished)>) {
        let Some(count) = st.ep_ops.get_mut(&ep) else { return };
        *count -= 1;
        if *count > 0 {
            return;
        }
        st.ep_ops.remove(&ep);
        if let Some(close) = st.closing.remove(&ep) {
            let start = close(self, false);
            self.apply(st, start, out);
        }
    }

    /// Closes an endpoint UCX reported failed (by force: UCX wants it
    /// closed, and that ends the stream receive it still holds); receives
    /// waiting their turn end or fail with it.
    pub(crate) fn close_failed(&self, st: &mut State, ep_id: u64, out: &mut Vec<(InFlight, sys::Finished)>) {
        let Some(turn) = st.streams.remove(&ep_id) else { return };
        let Some(status) = turn.status.close_failed() else {
            return;
        };
        for view in turn.waiting {
            let f = sys::Finished {
                request: 0,
                status,
                length: 0,
                tag: 0,
            };
            out.push((InFlight::StreamRecv { view, ep_id }, f));
        }
        // SAFETY: the endpoint is live (its turn existed) and now closed
        // once; the worker is locked; the status (the error callback's
        // argument) stays in the record until the close completes.
        let posted = unsafe { sys::ep_close(turn.ep, true, self.sink()) };
        let op = InFlight::Control {
            done: op::Notify::Nobody,
            keep: op::Keep::Held(turn.status.clone()),
            what: "close",
        };
        if let Settled::Now(op, f) = self.settle(st, posted, op, 0) {
            out.push((op, f));
        }
    }

    /// One driving step (the worker's lock is taken by the caller). The
    /// wakers of tag polls to wake once the worker is let go go to `woken`.
    fn step(
        &self,
        st: &mut parking_lot::MutexGuard<'_, State>,
        spin: bool,
        woken: &mut Vec<std::task::Waker>,
    ) -> (bool, Vec<(InFlight, sys::Finished)>, Option<Duration>) {
        let mut progress = false;
        let mut timeout = None;
        self.unmute(st);
        for token in self.cancels.take() {
            self.cancel(st, token);
        }
        let mut done = std::mem::take(&mut st.spare_done);
        loop {
            // SAFETY: the worker is live and we hold its state.
            if unsafe { sys::progress(self.handle) } == 0 {
                break;
            }
            progress = true;
        }
        self.collect(st, &mut done);
        if progress {
            // A message may have come (or landed): the polls look again.
            woken.append(&mut st.tag_pollers);
        }
        let waiting = !st.ops.is_empty() || !st.tag_pollers.is_empty();
        if spin && done.is_empty() && woken.is_empty() && waiting && !self.spin.is_zero() {
            let deadline = mfio_core::deadline_after(self.spin);
            let yield_from = self.yield_after.map(mfio_core::deadline_after);
            // An idle progress over shared memory costs tens of
            // nanoseconds, a clock read about as much: read it every
            // `SPINS_PER_CLOCK` rounds.
            let mut round = 0u32;
            loop {
                // SAFETY: as above.
                if unsafe { sys::progress(self.handle) } != 0 {
                    progress = true;
                    self.collect(st, &mut done);
                    woken.append(&mut st.tag_pollers);
                    if !done.is_empty() || !woken.is_empty() {
                        break;
                    }
                }
                round = round.wrapping_add(1);
                if round % SPINS_PER_CLOCK == 0 {
                    // The caller's task was woken (from another thread):
                    // it goes first.
                    let now = Instant::now();
                    if now >= deadline || mfio_core::task_woken() {
                        break;
                    }
                    // The peer this waits for may share the core (more
                    // ranks than cores, or other work on the machine): let
                    // it run rather than spin its time away. Costs a system
                    // call where nobody waits.
                    if yield_from.is_some_and(|from| now >= from) {
                        std::thread::yield_now();
                        self.judge_yield(st, now.elapsed());
                    }
                }
                // Let a thread waiting to post go first.
                parking_lot::MutexGuard::bump(st);
            }
        }
        if !progress && done.is_empty() {
            // About to report "nothing to do": arm the descriptor so the
            // caller's sleep ends on the next event. Busy means events came
            // in after the last progress: report progress so it drives again.
            // SAFETY: as above.
            match unsafe { sys::arm(self.handle) } {
                Ok(true) => timeout = self.check_stale(st),
                Ok(false) => progress = true,
                Err(err) => {
                    tracing::warn!(%err, "arming the UCX worker failed; the caller will poll");
                    progress = true;
                }
            }
        }
        if progress || !done.is_empty() {
            st.stale_wakes = 0;
            st.backoff = Duration::ZERO;
        }
        // UCX notices a dead peer (keepalive) only while it is progressed:
        // with operations waiting, come back now and then even if nothing
        // wakes the descriptor.
        if !st.ops.is_empty() || !st.streams.is_empty() {
            timeout = Some(timeout.map_or(KEEPALIVE_TICK, |t: Duration| t.min(KEEPALIVE_TICK)));
        }
        (progress || !done.is_empty(), done, timeout)
    }

    /// Counts a yield of the spin that took `took`. Every
    /// [`YIELDS_PER_JUDGEMENT`] yields, the core is judged shared if one
    /// in eight of them gave it away: a lone long yield is the machine's,
    /// one in eight is another process spinning or working on this core.
    fn judge_yield(&self, st: &mut State, took: Duration) {
        st.yields += 1;
        st.long_yields += u32::from(took >= YIELD_GAVE_CORE_AWAY);
        if st.yields >= YIELDS_PER_JUDGEMENT {
            self.core_shared
                .store(st.long_yields * 8 >= st.yields, std::sync::atomic::Ordering::Relaxed);
            st.yields = 0;
            st.long_yields = 0;
        }
    }

    /// Called with the worker armed and nothing to do. Over TCP, UCX 1.13
    /// can leave its descriptor readable while arming succeeds and progress
    /// finds nothing (a peer that stopped progressing mid-handshake), which
    /// would turn every sleep into a spin. After a few such wakes in a row
    /// the descriptor is left out of the polling set for a short, doubling
    /// while (the caller is told to come back then); work posted here still
    /// wakes the caller through the notifier.
    fn check_stale(&self, st: &mut State) -> Option<Duration> {
        // SAFETY: UCX keeps the descriptor open while the worker lives.
        let efd = unsafe { BorrowedFd::borrow_raw(self.efd) };
        let mut fds = [rustix::event::PollFd::new(&efd, rustix::event::PollFlags::IN)];
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        let readable = rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0);
        if !readable {
            st.stale_wakes = 0;
            st.backoff = Duration::ZERO;
            return None;
        }
        st.stale_wakes += 1;
        if st.stale_wakes < STALE_WAKES {
            return None;
        }
        st.backoff = (st.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
        if epoll::modify(
            &self.epoll,
            efd,
            epoll::EventData::new_u64(0),
            epoll::EventFlags::empty(),
        )
        .is_ok()
        {
            st.muted = true;
        }
        Some(st.backoff)
    }

    /// Puts the UCX descriptor back into the polling set after a
    /// [`check_stale`](Self::check_stale) pause.
    fn unmute(&self, st: &mut State) {
        if st.muted {
            // SAFETY: as in check_stale.
            let efd = unsafe { BorrowedFd::borrow_raw(self.efd) };
            if epoll::modify(&self.epoll, efd, epoll::EventData::new_u64(0), epoll::EventFlags::IN).is_ok() {
                st.muted = false;
            }
        }
    }

    /// One driving step; with `spin`, it spins for a completion (the
    /// worker's budget) when nothing finished.
    fn drive_step(&self, spin: bool) -> DriveStatus {
        // The thread driving may leave the worker unarmed (its step made
        // progress) and never drive again: a caller that returned at once
        // would sleep on a descriptor nothing signals. It leaves a mark
        // the driving thread answers with a notify (`MissedDrives`), and
        // comes back after a short while in any case (threads posting hold
        // the lock too, and they do not look for marks).
        let Some(mut st) = self.missed.try_lock(|| self.state.try_lock()) else {
            return DriveStatus::again_after(MissedDrives::RECHECK);
        };
        let mut woken = std::mem::take(&mut st.spare_woken);
        let (progress, mut done, timeout) = self.step(&mut st, spin, &mut woken);
        drop(st);
        for (op, finished) in done.drain(..) {
            op::finish(op, finished);
        }
        for waker in woken.drain(..) {
            waker.wake();
        }
        // The lists go back for the next step, unless someone holds the
        // worker now (then they are freed).
        if let Some(mut st) = self.state.try_lock() {
            st.spare_done = done;
            st.spare_woken = woken;
        }
        // Last, with the worker let go for good.
        if self.missed.take() {
            self.notifier.notify();
        }
        DriveStatus { progress, timeout }
    }
}

/// The record of the operation a callback reported finished, taken out of
/// the operations in flight; its request is freed (UCX is done with it).
fn take_record(ops: &mut slab::Slab<Record>, f: sys::Finished) -> Option<Record> {
    // SAFETY: every request a callback reports was returned by a posting
    // call of this worker, which keyed it before it let go of the worker's
    // lock (held by the caller), and is freed only after its report is
    // taken here.
    let key = unsafe { sys::request_key(f.request) };
    // The request's address confirms the key.
    let rec = match ops.get(key) {
        Some(rec) if rec.req as usize == f.request => ops.try_remove(key)?,
        _ => return None,
    };
    // SAFETY: the callback has run: UCX is done with the request, which
    // nothing else frees.
    unsafe { sys::request_free(rec.req) };
    Some(rec)
}

/// What a worker kept for good holds that UCX may still use (see `Drop
/// for Shared`): kept reachable, so that nothing reads it as leaked.
#[allow(dead_code)] // held, never read
struct KeptForGood {
    worker: usize,
    ops: Vec<Record>,
    am_handlers: HashMap<u16, Box<sys::AmHandlerArg>>,
    sink: Arc<sys::Sink>,
    am_sink: Arc<sys::AmSink>,
    context: Context,
}

/// Workers kept for good, for the life of the process.
static KEPT_FOR_GOOD: std::sync::Mutex<Vec<KeptForGood>> = std::sync::Mutex::new(Vec::new());

impl Drop for Shared {
    fn drop(&mut self) {
        // Ours alone now: the lock is taken for the calls that want it held.
        let mut st = self.state.lock();
        // Receives the caller can no longer see: cancel them and let UCX
        // report them, so their buffers are released by the callbacks.
        for (_, rec) in st.ops.iter() {
            // SAFETY: in flight on this live worker; we own the state.
            unsafe { sys::request_cancel(self.handle, rec.req) };
        }
        let mut deadline = Instant::now() + DROP_GRACE;
        let mut forced = false;
        let mut done = Vec::new();
        // Tag messages that came and that nobody received (a peer's last
        // word to a rank that had stopped listening, say): UCX would name
        // each in a warning on stderr as the worker goes. Their bytes can
        // go nowhere now; take them into nothing, while the cancelled
        // receives are reported.
        let mut discarded = 0usize;
        let mut discarding: Vec<usize> = Vec::new();
        loop {
            // SAFETY: the worker is live; we own the state.
            while let Some(posted) = unsafe { sys::tag_discard(self.handle, self.sink()) } {
                discarded += 1;
                if let sys::Posted::InFlight(req) = posted {
                    discarding.push(req as usize);
                }
            }
            if st.ops.is_empty() && discarding.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                if forced || st.closing.is_empty() {
                    break;
                }
                // Operations that did not end within the grace period, on
                // endpoints their owners closed: a peer that lives on but
                // takes nothing (a rendezvous it never receives, a worker
                // it dropped in this process). Closing those endpoints by
                // force ends them (cancelled), so that none is left on them
                // when the worker goes: UCX aborts the process if one is.
                forced = true;
                let closing: Vec<Closer> = st.closing.drain().map(|(_, close)| close).collect();
                for close in closing {
                    let start = close(self, true);
                    self.apply(&mut st, start, &mut done);
                }
                deadline = Instant::now() + DROP_GRACE;
            }
            // SAFETY: as above.
            unsafe { sys::progress(self.handle) };
            // Taken first: a close posted below may report at once, into
            // the sink.
            let finished = std::mem::take(&mut *self.sink.lock());
            for f in finished {
                if let Some(at) = discarding.iter().position(|&req| req == f.request) {
                    // SAFETY: reported finished, and freed once here.
                    unsafe { sys::request_free(discarding.swap_remove(at) as sys::Request) };
                } else if let Some(rec) = take_record(&mut st.ops, f) {
                    if rec.ep != 0 {
                        self.ep_op_ended(&mut st, rec.ep, &mut done);
                    }
                    done.push((rec.op, f));
                }
            }
        }
        // A close still under way (its peer gone without a word) ends with
        // the worker, as does a stream receive, which it ends.
        let stuck = !discarding.is_empty()
            || st
                .ops
                .iter()
                .any(|(_, rec)| !matches!(rec.op, InFlight::Control { .. } | InFlight::StreamRecv { .. }));
        if stuck {
            // Still under way after the grace periods, on endpoints closed
            // already: a receive whose sender stopped in the middle of its
            // rendezvous but lives on, say. UCX aborts the process if the
            // worker goes with such a request, and could still write into
            // its buffer: the worker, its context and those buffers are
            // left alive for good instead.
            tracing::warn!(
                in_flight = st.ops.len() + discarding.len(),
                "UCX worker dropped with operations UCX cannot end; it is kept, never destroyed"
            );
            // What UCX may still call or write: the requests' buffers and
            // reports' sink, the active-message handlers' arguments, and
            // the context under the worker.
            let kept = KeptForGood {
                worker: self.handle as usize,
                ops: st.ops.drain().collect(),
                am_handlers: std::mem::take(&mut st.am_handlers),
                sink: self.sink.clone(),
                am_sink: self.am_sink.clone(),
                context: self.context.clone(),
            };
            KEPT_FOR_GOOD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(kept);
            drop(st);
            for (op, finished) in done {
                op::finish(op, finished);
            }
            return;
        }
        for req in discarding {
            // SAFETY: UCX finishes or drops it with the worker; it writes
            // into no bytes of ours.
            unsafe { sys::request_free(req as sys::Request) };
        }
        if discarded > 0 {
            tracing::debug!(discarded, "UCX worker dropped tag messages nobody received");
        }
        // Rendezvous and held AM data nobody took: let UCX free them.
        for arrival in std::mem::take(&mut *self.am_sink.lock())
            .into_iter()
            .chain(st.am.drain().flat_map(|(_, q)| q.arrivals))
        {
            op::am::release(self.handle, arrival.data);
        }
        let leftover: Vec<Record> = st.ops.drain().collect();
        for rec in &leftover {
            // SAFETY: UCX finishes or drops these with the worker; we
            // stop caring about their completion.
            unsafe { sys::request_free(rec.req) };
        }
        // SAFETY: every endpoint and listener holds an Arc of this, so none
        // is left; requests were drained or freed above.
        unsafe { sys::worker_destroy(self.handle) };
        // UCX no longer touches their buffers: release them now.
        for rec in leftover {
            op::abandon(rec.op);
        }
        for (op, finished) in done {
            op::finish(op, finished);
        }
    }
}

/// A UCX worker: the [`IoBackend`] that drives every operation of its
/// endpoints, listeners and remote keys.
///
/// Drive it like any mfio backend: `block_on`, a host runtime through
/// `mfio-integration`, or inside a `Composite` beside an io_uring runtime.
/// Packets may be sent from any thread; UCX is only ever called by the
/// thread holding the worker.
///
/// Dropping the last handle cancels the receives still waiting, and takes
/// every tag message that came and that nobody received into nothing (its
/// sender, if it waits for a rendezvous, is told the message was taken)
/// rather than leave UCX to warn of each on stderr. Sends still under way
/// on closed endpoints get half a second to end; those that do not (a
/// peer that lives on but never takes its rendezvous) end as their
/// endpoints are closed by force, and the worker goes half a second later
/// at most. A receive UCX cannot end (a live sender stopped in the middle
/// of its rendezvous) leaves the worker, its context and the receive's
/// buffer alive for good, with a warning through `tracing`: UCX would
/// abort the process if the worker went with it.
///
/// ```
/// use mfio_core::{IoBackendExt, IoRead, IoWrite};
/// use mfio_net::ucx::{Context, Tag, TagMatch};
/// # fn main() -> mfio_core::Result<()> {
/// let context = Context::builder().set("TLS", "sm,self").build()?;
/// let worker = context.worker()?;
/// let ep = worker.connect(&worker.address())?;
/// let (sent, _) = worker.block_on(ep.write_at(Tag(7), b"ping".to_vec())).into_parts();
/// assert_eq!(sent?, 4);
/// let (got, buf) = worker.block_on(worker.read_at(TagMatch::exact(7), Vec::with_capacity(16))).into_parts();
/// assert_eq!((got?, &buf[..]), (4, &b"ping"[..]));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Worker {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// Options of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    context: Context,
    spin: Duration,
    yield_when_idle: bool,
    yield_after: Duration,
}

impl WorkerBuilder {
    /// How long a driving step keeps progressing, while operations are in
    /// flight, before it lets the caller sleep on the descriptor
    /// ([`DEFAULT_SPIN`]; zero never spins).
    #[must_use]
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Whether the spin gives the core away (`sched_yield`) every few
    /// dozen progress calls (yes by default), once it has lasted
    /// [`yield_after`](Self::yield_after). Yielding is what lets a peer
    /// that shares this core run while this one waits for it: with 3 ranks
    /// on 2 cores, an 8 B bcast loop takes ~1.7 µs per call yielding and
    /// ~90 µs not. Off, a spin keeps its core for as long as it lasts,
    /// which only pays where nothing else ever wants the core: with other
    /// work on the machine, a rank whose peer was descheduled spins out
    /// its time slice on every call (BENCHMARKS.md).
    #[must_use]
    pub fn yield_when_idle(mut self, yield_when_idle: bool) -> Self {
        self.yield_when_idle = yield_when_idle;
        self
    }

    /// How long a spin goes on before it starts to yield (with
    /// [`yield_when_idle`](Self::yield_when_idle); zero by default).
    ///
    /// Where every process that drives a worker has a core of its own,
    /// a few tens of microseconds keep the yields' system calls off the
    /// common waits (a peer on its own core answers within microseconds)
    /// and still give the core away when the peer does not run: an
    /// allreduce loop of mfio-coll over UCX on 2 ranks and 2 cores with
    /// two busy loops beside it took ~10 µs per 8 B call never yielding and
    /// ~3–4.5 µs yielding after 20 µs (BENCHMARKS.md). Where ranks share
    /// cores, keep it zero.
    #[must_use]
    pub fn yield_after(mut self, after: Duration) -> Self {
        self.yield_after = after;
        self
    }

    /// Creates the worker.
    ///
    /// # Errors
    /// What UCX reports creating the worker or its event descriptor, or the
    /// OS error of the epoll set or eventfd.
    pub fn build(self) -> Result<Worker> {
        // SAFETY: the context is live (we hold it).
        let handle = unsafe { sys::worker_create(self.context.inner.handle)? };
        let guard = WorkerGuard(handle);
        // SAFETY: the worker is live and ours alone.
        let efd = unsafe { sys::worker_efd(handle)? };
        // SAFETY: as above.
        let (address, max_am_header) = unsafe { sys::worker_query(handle)? };
        let notifier = Notifier::new()?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let efd_raw = efd;
        // SAFETY: UCX owns efd and keeps it open until the worker is
        // destroyed; the epoll set only refers to it (a closed descriptor
        // leaves an epoll set by itself).
        let efd = unsafe { BorrowedFd::borrow_raw(efd) };
        epoll::add(&epoll, efd, epoll::EventData::new_u64(0), epoll::EventFlags::IN)?;
        epoll::add(
            &epoll,
            notifier.as_fd(),
            epoll::EventData::new_u64(1),
            epoll::EventFlags::IN,
        )?;
        std::mem::forget(guard);
        let worker = Worker {
            shared: Arc::new(Shared {
                handle,
                state: Mutex::new(State {
                    ops: Slab::new(),
                    seq: 0,
                    am: HashMap::new(),
                    am_listening: std::collections::HashSet::new(),
                    am_handlers: HashMap::new(),
                    streams: HashMap::new(),
                    ep_ops: HashMap::new(),
                    closing: HashMap::new(),
                    next_ep: 0,
                    stale_wakes: 0,
                    backoff: Duration::ZERO,
                    muted: false,
                    tag_landing: 0,
                    tag_waiting: Vec::new(),
                    spare_finished: Vec::new(),
                    spare_done: Vec::new(),
                    tag_pollers: Vec::new(),
                    spare_woken: Vec::new(),
                    yields: 0,
                    long_yields: 0,
                }),
                sink: Arc::new(Mutex::new(Vec::new())),
                am_sink: Arc::new(Mutex::new(Vec::new())),
                cancels: Cancels::new(notifier.clone()),
                returned: Arc::default(),
                returned_ams: Arc::default(),
                failed_eps: Arc::new(Mutex::new(Vec::new())),
                notifier,
                epoll,
                efd: efd_raw,
                spin: self.spin,
                yield_after: self.yield_when_idle.then_some(self.yield_after),
                missed: MissedDrives::default(),
                core_shared: AtomicBool::new(false),
                max_am_header,
                address: WorkerAddress::wrap(&address),
                context: self.context,
            }),
        };
        // UCX 1.13 crashes on an active message to an id without a handler
        // (on a worker with none at all, and at times over TCP with others
        // registered), so every id mfio takes has one from the start;
        // messages to ids nobody listens on are dropped here. The id past
        // the last discards what comes.
        {
            let mut st = worker.shared.state.lock();
            for id in 0..=GOODBYE_AM_ID {
                worker.shared.am_handler(&mut st, id)?;
            }
        }
        Ok(worker)
    }
}

/// Destroys a worker whose set-up failed half way.
struct WorkerGuard(sys::WorkerH);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        // SAFETY: the worker was created here, has nothing on it, and is
        // forgotten (not dropped) once set-up succeeds.
        unsafe { sys::worker_destroy(self.0) };
    }
}

impl Worker {
    /// A builder for a worker on `context`.
    pub fn builder(context: &Context) -> WorkerBuilder {
        WorkerBuilder {
            context: context.clone(),
            spin: DEFAULT_SPIN,
            yield_when_idle: true,
            yield_after: Duration::ZERO,
        }
    }

    /// This worker's address, to give to a peer that connects with
    /// [`Worker::connect`].
    pub fn address(&self) -> WorkerAddress {
        self.shared.address.clone()
    }

    /// The largest active-message header this worker sends.
    pub fn max_am_header(&self) -> usize {
        self.shared.max_am_header
    }

    /// Operations posted to UCX and not finished yet.
    pub fn in_flight(&self) -> usize {
        self.shared.state.lock().ops.len()
    }

    /// Wakes a thread sleeping on this worker, from any thread
    /// (`ucp_worker_signal`).
    pub fn signal(&self) {
        // SAFETY: the worker is live; ucp_worker_signal is thread-safe.
        unsafe { sys::signal(self.shared.handle) };
    }

    /// The context this worker belongs to.
    pub fn context(&self) -> &Context {
        &self.shared.context
    }

    /// Whether this worker's core ran other work lately: of the last few
    /// hundred yields of its spin (it yields only where
    /// [`WorkerBuilder::yield_when_idle`] lets it), at least one in eight
    /// came back after other work ran. Work done on this thread then
    /// delays that other work (another rank, say, sharing the core);
    /// `false` where the spin does not yield.
    pub fn core_shared_lately(&self) -> bool {
        self.shared.core_shared.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl IoBackend for Shared {
    fn polling_handle(&self) -> PollingHandle<'_> {
        PollingHandle::readable(self.epoll.as_fd(), &self.notifier)
    }

    fn drive(&self) -> DriveStatus {
        self.drive_step(true)
    }

    fn drive_now(&self) -> DriveStatus {
        self.drive_step(false)
    }

    /// The worker's spin, while operations (or tag polls) are pending.
    fn spin_budget(&self) -> Duration {
        match self.state.try_lock() {
            Some(st) if !st.ops.is_empty() || !st.tag_pollers.is_empty() => self.spin,
            _ => Duration::ZERO,
        }
    }
}

impl IoBackend for Worker {
    fn polling_handle(&self) -> PollingHandle<'_> {
        self.shared.polling_handle()
    }

    fn drive(&self) -> DriveStatus {
        self.shared.drive()
    }

    fn drive_now(&self) -> DriveStatus {
        self.shared.drive_now()
    }

    fn spin_budget(&self) -> Duration {
        self.shared.spin_budget()
    }
}

/// The error of an operation on a closed handle.
pub(crate) fn not_connected(what: &str) -> Error {
    Error::new(std::io::ErrorKind::NotConnected, format!("UCX endpoint is {what}"))
}
