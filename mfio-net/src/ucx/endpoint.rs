//! [`Endpoint`]: a connection to a peer worker, by worker address or by
//! socket address; RAII close.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use mfio_core::completion::{completion, Completion};
use mfio_core::kept::KeptBytes;
use mfio_core::{DriveStatus, Error, IoBackend, PollingHandle, Result};
use parking_lot::Mutex;

use super::address::WorkerAddress;
use super::op::{InFlight, Keep, Notify};
use super::sys;
use super::worker::{not_connected, Shared, Start, StreamTurn, Worker, GOODBYE_AM_ID};

/// Where an endpoint is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// UCX reported the connection failed (a graceful close by the peer
    /// arrives this way too, as a reset).
    Failed(sys::Status),
    /// Closed: here (`None`), or after UCX reported this failure.
    Closed(Option<sys::Status>),
}

/// The endpoint's phase, written by UCX's error callback; also the
/// callback's argument, so it lives until the endpoint's close completes.
pub(crate) struct EpStatus {
    phase: Mutex<Phase>,
    /// The endpoint's id on its worker.
    id: u64,
    /// The worker's list of endpoints that failed, for its driving step
    /// to close.
    failed: Arc<Mutex<Vec<u64>>>,
    /// UCX reported the endpoint failed after its owner closed it, while
    /// its close waited for its operations: it is then closed by force.
    failed_closing: std::sync::atomic::AtomicBool,
}

impl EpStatus {
    /// Marks an open endpoint failed with `status` (as UCX's error
    /// callback does); false if it was not open.
    pub(crate) fn fail(&self, status: sys::Status) -> bool {
        let mut phase = self.phase.lock();
        if *phase == Phase::Open {
            *phase = Phase::Failed(status);
            true
        } else {
            false
        }
    }

    /// Marks a failed endpoint closed; the failure, if it was one.
    pub(crate) fn close_failed(&self) -> Option<sys::Status> {
        let mut phase = self.phase.lock();
        match *phase {
            Phase::Failed(status) => {
                *phase = Phase::Closed(Some(status));
                Some(status)
            }
            _ => None,
        }
    }
}

unsafe extern "C" fn ep_failed(arg: *mut c_void, _ep: sys::EpH, status: sys::Status) {
    // SAFETY: arg is the EpStatus the endpoint was created with, kept alive
    // until its close completed (after which UCX calls nothing).
    let status_slot = unsafe { &*(arg as *const EpStatus) };
    let mut phase = status_slot.phase.lock();
    match *phase {
        Phase::Open => {
            *phase = Phase::Failed(status);
            status_slot.failed.lock().push(status_slot.id);
        }
        Phase::Closed(_) => status_slot
            .failed_closing
            .store(true, std::sync::atomic::Ordering::Relaxed),
        Phase::Failed(_) => {}
    }
}

/// Whether a stream read may still see bytes.
pub(crate) enum ReadState {
    Open,
    Ended,
    Failed(Error),
}

pub(crate) struct EpShared {
    pub(crate) worker: Arc<Shared>,
    pub(crate) handle: sys::EpH,
    pub(crate) id: u64,
    status: Arc<EpStatus>,
    peer: Option<SocketAddr>,
    /// Stream bytes of dropped reads, read again first.
    pub(crate) kept: Arc<KeptBytes>,
}

// SAFETY: the endpoint handle is only used by the thread holding the
// worker's state; the rest is Send + Sync.
unsafe impl Send for EpShared {}
// SAFETY: as above.
unsafe impl Sync for EpShared {}

fn is_end(status: sys::Status) -> bool {
    matches!(status, sys::ERR_CONNECTION_RESET | sys::ERR_NOT_CONNECTED)
}

impl EpShared {
    /// `Ok` if operations may be posted.
    pub(crate) fn usable(&self) -> Result<()> {
        match *self.status.phase.lock() {
            Phase::Open => Ok(()),
            Phase::Failed(status) | Phase::Closed(Some(status)) => Err(sys::status_error(status, "endpoint")),
            Phase::Closed(None) => Err(not_connected("closed")),
        }
    }

    pub(crate) fn read_state(&self) -> ReadState {
        match *self.status.phase.lock() {
            Phase::Open => ReadState::Open,
            // Posting still drains what arrived before the reset.
            Phase::Failed(status) if is_end(status) => ReadState::Open,
            Phase::Closed(None) => ReadState::Ended,
            Phase::Closed(Some(status)) if is_end(status) => ReadState::Ended,
            Phase::Failed(status) | Phase::Closed(Some(status)) => {
                ReadState::Failed(sys::status_error(status, "endpoint"))
            }
        }
    }

    /// Closes the endpoint now: by force if asked or if it failed, else
    /// after flushing; `done` hears when UCX finished.
    pub(crate) fn begin_close(&self, force: bool, done: Notify) {
        let status = self.status.clone();
        self.worker.start(|shared, st, _token| {
            let force = {
                let mut phase = status.phase.lock();
                let was = *phase;
                match was {
                    // Closed before (by `CloseWrite`, or by the worker after
                    // the peer left): the connection is closed, as asked. A
                    // failure that closed it is reported.
                    Phase::Closed(before) => {
                        drop(phase);
                        done.tell(match before {
                            Some(status) if !is_end(status) => Err(sys::status_error(status, "endpoint")),
                            _ => Ok(()),
                        });
                        return Start::Nothing;
                    }
                    Phase::Open => *phase = Phase::Closed(None),
                    Phase::Failed(status) => *phase = Phase::Closed(Some(status)),
                }
                force || was != Phase::Open
            };
            // Waiting receives end; the one in flight is ended by UCX.
            if let Some(turn) = st.streams.remove(&self.id) {
                for view in turn.waiting {
                    view.complete(0);
                }
                if !force {
                    goodbye(shared, st, self.id, self.handle, turn.sent);
                }
            }
            let handle = ClosingEp(self.handle);
            let status = status.clone();
            let close = move |shared: &Shared, force: bool| {
                // UCX wants a failed endpoint closed by force.
                let force = force || status.failed_closing.load(std::sync::atomic::Ordering::Relaxed);
                // SAFETY: the endpoint is live and closed once (its phase
                // says closed, and this runs once), with the worker locked
                // (by every caller of a `Closer`); the status (the error
                // callback's argument) stays in the record until the close
                // completes.
                let posted = unsafe { sys::ep_close(handle.get(), force, shared.sink()) };
                let op = InFlight::Control {
                    done,
                    keep: Keep::Held(status),
                    what: "close",
                };
                Start::Posted(posted, op, 0)
            };
            if !force && st.ep_ops.contains_key(&self.id) {
                // Its sends (or gets, flushes) are still under way: closed
                // once the last ends, or by force if the worker goes first
                // (`State::closing`).
                st.closing.insert(self.id, Box::new(close));
                return Start::Nothing;
            }
            close(shared, force)
        });
    }
}

/// An endpoint handle a close waiting for its operations holds
/// ([`Closer`](super::worker::Closer)).
struct ClosingEp(sys::EpH);

// SAFETY: the handle is used only by the thread holding the worker's state
// (the close runs with the worker locked).
unsafe impl Send for ClosingEp {}

impl ClosingEp {
    /// The handle (a method, so that a closure captures the whole `Send`
    /// wrapper, not the raw pointer inside).
    fn get(&self) -> sys::EpH {
        self.0
    }
}

impl Drop for EpShared {
    fn drop(&mut self) {
        // Closing is idempotent: a handle closed by `close` stays closed.
        if !matches!(*self.status.phase.lock(), Phase::Closed(_)) {
            self.begin_close(false, Notify::Nobody);
        }
    }
}

/// A connection to a peer worker. Every data operation is a packet:
/// tag sends ([`Tag`](super::Tag)), stream sends and receives
/// ([`NoPos`](mfio_core::NoPos)), active messages
/// ([`AmSend`](super::AmSend)), [`Flush`](mfio_core::Flush), and
/// [`CloseWrite`](mfio_core::CloseWrite) (which closes the endpoint: UCX
/// has no half-close). It drives its worker as an [`IoBackend`], so the
/// blocking and `std::io` layers work on it directly.
///
/// Dropping it closes it once what was sent has gone (the peer sees end
/// of stream; the sends, gets and flushes under way end first, or, if the
/// worker goes before they do, end as it closes the endpoint by force);
/// [`close`](Self::close) does the same and reports when it is done;
/// [`close_force`](Self::close_force) discards what is in flight.
/// Endpoints use UCX's peer error handling: a peer that dies fails the
/// operations waiting on it, and both ends of a connection must use it
/// (every endpoint mfio creates does).
pub struct Endpoint {
    pub(crate) inner: Arc<EpShared>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .field("phase", &*self.inner.status.phase.lock())
            .finish()
    }
}

impl Endpoint {
    /// Creates an endpoint to `target` on `worker`.
    pub(crate) fn create(worker: &Arc<Shared>, target: sys::EpTarget<'_>, peer: Option<SocketAddr>) -> Result<Self> {
        let mut st = worker.lock();
        let id = st.next_ep_id();
        let status = Arc::new(EpStatus {
            phase: Mutex::new(Phase::Open),
            id,
            failed: worker.failed_eps.clone(),
            failed_closing: std::sync::atomic::AtomicBool::new(false),
        });
        // SAFETY: the worker is live and locked; the status outlives the
        // endpoint (held by it, then by its close record).
        let handle = unsafe { sys::ep_create(worker.handle, target, ep_failed, Arc::as_ptr(&status) as *mut c_void)? };
        let kept = KeptBytes::new(worker.cancels.clone());
        st.streams.insert(
            id,
            StreamTurn {
                ep: handle,
                status: status.clone(),
                kept: kept.clone(),
                busy: false,
                waiting: VecDeque::new(),
                sent: 0,
                received: 0,
                peer_total: None,
            },
        );
        drop(st);
        Ok(Self {
            inner: Arc::new(EpShared {
                worker: worker.clone(),
                handle,
                id,
                status,
                peer,
                kept,
            }),
        })
    }

    /// The peer's socket address, for endpoints made by socket address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.peer
    }

    /// True once UCX reported the connection failed or the peer closed it.
    pub fn is_failed(&self) -> bool {
        matches!(*self.inner.status.phase.lock(), Phase::Failed(_))
    }

    /// Closes once what was sent has gone (the sends, gets and flushes
    /// still under way end first, then UCX flushes and closes); resolves
    /// when UCX is done, which needs the peer to keep progressing its
    /// worker and to take what was sent. If the worker goes first, they
    /// end as the endpoint is closed by force.
    ///
    /// # Errors
    /// (in the output) What UCX reports; a failed endpoint is closed by force.
    pub fn close(self) -> Completion<()> {
        let (done, fut) = completion();
        self.inner.begin_close(false, Notify::Completer(done));
        fut
    }

    /// Closes at once, discarding operations in flight (they fail); the
    /// peer sees the connection reset.
    pub fn close_force(self) -> Completion<()> {
        let (done, fut) = completion();
        self.inner.begin_close(true, Notify::Completer(done));
        fut
    }
}

impl IoBackend for Endpoint {
    fn polling_handle(&self) -> PollingHandle<'_> {
        self.inner.worker.polling_handle()
    }

    fn drive(&self) -> DriveStatus {
        self.inner.worker.drive()
    }
    fn drive_now(&self) -> DriveStatus {
        self.inner.worker.drive_now()
    }
    fn spin_budget(&self) -> std::time::Duration {
        self.inner.worker.spin_budget()
    }
}

impl Worker {
    /// Connects to the worker at `address` (from [`Worker::address`] of a
    /// peer, carried over any channel). UCX finishes the connection in the
    /// background; operations posted meanwhile wait for it.
    ///
    /// # Errors
    /// What UCX reports (no transport reaches the peer).
    pub fn connect(&self, address: &WorkerAddress) -> Result<Endpoint> {
        Endpoint::create(&self.shared, sys::EpTarget::Address(address.raw()), None)
    }

    /// Connects to a [`Listener`](super::Listener) at `addr` (needs a
    /// transport on the socket's interface, e.g. `tcp` in `UCX_TLS`);
    /// resolves once the connection is established.
    ///
    /// (UCX 1.13 crashes replaying operations posted while such a
    /// connection is still being set up over several transports, so the
    /// endpoint is handed out only once it is.)
    ///
    /// # Errors
    /// (in the output) What UCX reports (`HostUnreachable` when no enabled
    /// transport runs on that interface, `ConnectionRefused`, …).
    pub fn connect_addr(&self, addr: SocketAddr) -> Connecting {
        Connecting::new(Endpoint::create(
            &self.shared,
            sys::EpTarget::Sockaddr(addr),
            Some(addr),
        ))
    }
}

/// Tells the peer how many stream bytes this endpoint sent, before a
/// graceful close (which flushes it out first).
fn goodbye(shared: &Shared, st: &mut super::worker::State, ep_id: u64, ep: sys::EpH, sent: u64) {
    let header = sent.to_le_bytes().to_vec();
    // SAFETY: the endpoint is live and the worker locked; the header stays
    // in the record until UCX reports the send.
    let posted = unsafe {
        sys::am_send(
            ep,
            GOODBYE_AM_ID,
            &header,
            std::ptr::null(),
            0,
            false,
            false,
            true,
            shared.sink(),
        )
    };
    let op = InFlight::Control {
        done: Notify::Nobody,
        keep: Keep::Header(header),
        what: "end-of-stream notice",
    };
    // A notice that fails (the peer is gone) needs no report. The close
    // waits for it.
    let _ = shared.settle_on(st, ep_id, posted, op, 0);
}

/// Future of an endpoint whose connection is being established
/// ([`Worker::connect_addr`], [`Listener::accept`](super::Listener::accept)):
/// resolves once UCX finished setting it up (an endpoint flush completed).
#[must_use = "futures do nothing unless polled"]
pub struct Connecting {
    ep: Option<Endpoint>,
    established: Option<Completion<()>>,
    failed: Option<Error>,
}

impl fmt::Debug for Connecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connecting")
            .field("ep", &self.ep)
            .finish_non_exhaustive()
    }
}

impl Connecting {
    pub(crate) fn new(ep: Result<Endpoint>) -> Self {
        match ep {
            Ok(ep) => {
                let (done, established) = completion();
                let inner = ep.inner.clone();
                inner.worker.start(|shared, _st, _token| {
                    // SAFETY: the endpoint is live and the worker locked.
                    let posted = unsafe { sys::ep_flush(inner.handle, shared.sink()) };
                    let op = InFlight::Control {
                        done: Notify::Completer(done),
                        keep: Keep::Nothing,
                        what: "connect",
                    };
                    Start::OnEndpoint(inner.id, posted, op, 0)
                });
                Self {
                    ep: Some(ep),
                    established: Some(established),
                    failed: None,
                }
            }
            Err(err) => Self {
                ep: None,
                established: None,
                failed: Some(err),
            },
        }
    }
}

impl std::future::Future for Connecting {
    type Output = Result<Endpoint>;

    /// # Panics
    /// If polled again after it returned `Ready`.
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<Endpoint>> {
        if let Some(err) = self.failed.take() {
            return std::task::Poll::Ready(Err(err.with_op(mfio_core::Op::Connect)));
        }
        let established = self.established.as_mut().expect("Connecting polled after completion");
        let result = std::task::ready!(std::pin::Pin::new(established).poll(cx));
        self.established = None;
        let ep = self.ep.take().expect("Connecting polled after completion");
        std::task::Poll::Ready(match result {
            Ok(()) => Ok(ep),
            Err(err) => Err(err.with_op(mfio_core::Op::Connect)),
        })
    }
}
