//! [`MpiComm`]: an MPI communicator as a [`Communicator`]. Each collective
//! is checked locally, planned (datatype, operation, MPI calls) with the
//! backend locked, and started at once; the async form waits for the
//! backend to see its requests finish, the blocking form calls MPI's
//! blocking collective directly where the thread level allows. A
//! collective of one MPI call over a predefined datatype and operation
//! (the common short one) needs no plan: under `Multiple` it starts
//! without the lock, which is most of its cost in mfio.

use std::ffi::{c_int, c_void};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use mfio_core::completion::{completion, Completer};
use mfio_core::{BufResult, Error, Result};

use super::backend::{mpi_error, Done, Finish, Handle, Mpi, Owner, Shared, State, ThreadLevel};
use super::datatype::{self, with_layout};
use super::self_test::SelfTested;
use super::sys::{self, Call, Comm, Datatype, Op};
use super::user_op;
use crate::check::{self, invalid, Overlap};
use crate::comm::{CollFuture, CollResult, Communicator, Counts, Pair, Rank};
use crate::element::Element;
use crate::reduce::ReduceOp;

/// An MPI communicator handle that may cross threads (it is used only
/// under the backend's lock, on a thread allowed to call MPI).
#[derive(Clone, Copy)]
pub(crate) struct CommHandle(pub(crate) Comm);

// SAFETY: see the type's doc.
unsafe impl Send for CommHandle {}
// SAFETY: as above.
unsafe impl Sync for CommHandle {}

impl CommHandle {
    /// The MPI handle (a method, so closures capture the whole wrapper).
    pub(crate) fn raw(self) -> Comm {
        self.0
    }
}

/// A communicator's MPI handles, its own and its bulk twin, freed once
/// nothing uses them: the [`MpiComm`] and every operation posted on it hold
/// them. MPI lets a communicator be freed with operations pending (they
/// complete normally), but Open MPI 4.1's libnbc goes on sending on the
/// freed one: a barrier left running when its communicator was dropped, on
/// 3 ranks, crashed in `mca_pml_ob1_isend`.
pub(crate) struct CommHandles {
    pub(crate) comm: CommHandle,
    pub(crate) bulk: CommHandle,
    shared: Weak<Shared>,
}

impl Drop for CommHandles {
    fn drop(&mut self) {
        let comms = [self.comm, self.bulk];
        // Gone: MPI was shut down (its last handle waited for every
        // operation that held these).
        let Some(shared) = self.shared.upgrade() else { return };
        // The last operation may finish under the backend's lock, so the
        // free waits for the next step.
        shared.defer(move |_, _, _| {
            for comm in comms {
                // SAFETY: the communicator is ours and unused from now
                // on; the state is held on an allowed thread.
                if let Err(code) = unsafe { sys::comm_free(comm.raw()) } {
                    tracing::warn!(error = %sys::error_string(code), "MPI_Comm_free failed");
                }
            }
        });
    }
}

/// A communicator: a group of MPI processes, their collectives and their
/// tagged messages. Made by [`Mpi::world`], [`Communicator::dup`] and
/// [`Communicator::split`]; each is a duplicate of its parent with
/// `MPI_ERRORS_RETURN`, freed once it is dropped and every operation
/// started on it has finished.
pub struct MpiComm {
    pub(crate) mpi: Mpi,
    /// Its MPI handles; `bulk` is a private duplicate carrying the blocks
    /// of `v` variants too long for one MPI count, as messages that can
    /// never meet the user's.
    pub(crate) handles: Arc<CommHandles>,
    rank: Rank,
    size: usize,
    pub(crate) tag_ub: u32,
}

impl fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpiComm")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

fn not_here(what: &str) -> Error {
    Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!("{what}: MPI provides Funneled; call it on the thread that initialised MPI"),
    )
}

/// A communicator just made: its handles and what it is.
struct Fresh {
    comm: Comm,
    bulk: Comm,
    rank: Rank,
    size: usize,
    tag_ub: u32,
}

impl MpiComm {
    /// A duplicate of `parent` (which stays the caller's).
    pub(crate) fn dup_of(shared: &Arc<Owner>, parent: Comm) -> Result<Self> {
        let made = shared
            .with_state(|_| {
                // SAFETY: `parent` is live; this thread may call MPI and
                // holds the state.
                let comm = unsafe { sys::comm_dup(parent) }.map_err(|c| mpi_error(c, "MPI_Comm_dup"))?;
                Self::describe(comm)
            })
            .ok_or_else(|| not_here("MPI_Comm_dup"))??;
        Ok(Self::wrap(shared, made))
    }

    /// Rank, size, tag bound and bulk twin of a fresh communicator (freed
    /// on failure).
    fn describe(comm: Comm) -> Result<Fresh> {
        // SAFETY: `comm` is live; the caller holds the state on an
        // allowed thread.
        let described = unsafe { sys::comm_rank_size(comm).and_then(|rs| sys::tag_ub(comm).map(|ub| (rs, ub))) };
        let described = described
            .map_err(|code| mpi_error(code, "MPI_Comm_rank"))
            .and_then(|d| {
                // SAFETY: as above.
                let bulk = unsafe { sys::comm_dup(comm) }.map_err(|c| mpi_error(c, "MPI_Comm_dup"))?;
                Ok((d, bulk))
            });
        match described {
            Ok((((rank, size), ub), bulk)) => Ok(Fresh {
                comm,
                bulk,
                rank: usize::try_from(rank).unwrap_or(0),
                size: usize::try_from(size).unwrap_or(0),
                tag_ub: u32::try_from(ub).unwrap_or(0),
            }),
            Err(err) => {
                // SAFETY: made by the caller and not handed out.
                let _ = unsafe { sys::comm_free(comm) };
                Err(err)
            }
        }
    }

    fn wrap(shared: &Arc<Owner>, f: Fresh) -> Self {
        Self {
            mpi: Mpi { shared: shared.clone() },
            handles: Arc::new(CommHandles {
                comm: CommHandle(f.comm),
                bulk: CommHandle(f.bulk),
                shared: Arc::downgrade(shared),
            }),
            rank: f.rank,
            size: f.size,
            tag_ub: f.tag_ub,
        }
    }

    /// The backend that drives this communicator.
    pub fn mpi(&self) -> &Mpi {
        &self.mpi
    }

    /// The largest tag a message on this communicator may carry.
    pub fn max_tag(&self) -> u32 {
        self.tag_ub
    }

    /// Starts a prepared collective. Where any thread may call MPI, a
    /// collective of one MPI call gets a future that tests its own request
    /// ([`SelfTested`]); otherwise its future resolves once the backend
    /// sees every request finish.
    ///
    /// The one-call case is inlined into each collective's method, where
    /// the call's variant is known: its arguments go straight to MPI
    /// (nothing of the prepared collective is moved, no variant matched),
    /// which is most of what a short collective costs on mfio's side.
    #[inline(always)]
    fn start<B: Send + Default + 'static>(&self, prepared: Prepared<B, impl PlanOnce<B>>) -> CollFuture<B> {
        match prepared {
            Prepared::Checked {
                bufs,
                direct: Some(call),
                plan: _,
            } if self.mpi.shared.tests_own_requests() => {
                // Any thread may call MPI at any time, and the call needs
                // nothing from the state: the lock would only order it
                // against other threads' collectives on this communicator,
                // which MPI leaves to the caller.
                // SAFETY: the buffers the call points into move into the
                // future, which hands them to the records if it is dropped
                // before the request finishes; the communicator lives in
                // `handles`, which the future holds.
                match unsafe { call.start(self.handles.comm.raw()) } {
                    Ok(req) => SelfTested::start(&self.mpi.shared, &self.handles, req, bufs, Vec::new, call.name()),
                    Err(c) => CollFuture::ready(BufResult(Err(mpi_error(c, "MPI non-blocking collective")), bufs)),
                }
            }
            other => self.start_planned(other),
        }
    }

    /// [`start`](Self::start) of the rest, out of line: a collective that
    /// needs its plan, one whose requests the backend tests (below
    /// `Multiple`, or with a progress thread), or one refused.
    #[inline(never)]
    fn start_planned<B: Send + Default + 'static>(&self, prepared: Prepared<B, impl PlanOnce<B>>) -> CollFuture<B> {
        let (bufs, plan) = match prepared {
            Prepared::Checked { bufs, plan, .. } => (bufs, plan),
            Prepared::Refused(err, bufs) => return CollFuture::ready(BufResult(Err(err), bufs)),
        };
        let comm = self.handles.comm;
        let shared = &self.mpi.shared;
        if shared.tests_own_requests() {
            let mut finished = Vec::new();
            let mut bufs = Some(bufs);
            let started = shared.with_state(|st| {
                let mut bufs = bufs.take()?;
                let p = match plan(st, &mut bufs) {
                    Ok(p) => p,
                    Err(err) => return Some(CollFuture::ready(BufResult(Err(err), bufs))),
                };
                if p.is_one_call() {
                    // SAFETY: the buffers and count lists the call points
                    // into move into the future, which hands them to the
                    // records if it is dropped before the request
                    // finishes; the state is held; any thread may call MPI.
                    let started = unsafe { p.first.start(comm.raw()) };
                    return Some(match started {
                        Ok(req) => SelfTested::start(shared, &self.handles, req, bufs, move || p.keep, p.first.name()),
                        Err(c) => CollFuture::ready(BufResult(Err(mpi_error(c, "MPI non-blocking collective")), bufs)),
                    });
                }
                let (done, fut) = completion::<CollResult<B>>();
                post_plan(st, p, bufs, done, self.handles.clone(), &mut finished);
                Some(CollFuture::waiting(fut))
            });
            for d in finished {
                d.complete();
            }
            return match started.flatten() {
                Some(fut) => {
                    // A record may have been posted: a sleeping driver
                    // must start testing.
                    shared.notifier.notify();
                    fut
                }
                // `tests_own_requests` means any thread may call MPI, so
                // this is not reached.
                None => CollFuture::ready(BufResult(Err(not_here("collective")), bufs.unwrap_or_default())),
            };
        }
        self.start_posted(bufs, plan)
    }

    /// Starts a collective whose requests the backend tests; its future
    /// resolves once they all finish.
    fn start_posted<B: Send + Default + 'static>(&self, bufs: B, plan: impl PlanOnce<B>) -> CollFuture<B> {
        let (done, fut) = completion::<CollResult<B>>();
        let handles = self.handles.clone();
        self.mpi.shared.submit(move |_shared, st, finished| {
            let mut bufs = bufs;
            match plan(st, &mut bufs) {
                Ok(p) => post_plan(st, p, bufs, done, handles, finished),
                Err(err) => done.complete(Ok(BufResult(Err(err), bufs))),
            }
        });
        CollFuture::waiting(fut)
    }

    /// Runs a prepared collective with MPI's blocking calls on this thread
    /// if it may call MPI; otherwise, or with a timeout (which a blocking
    /// MPI call cannot honour), waits for the async form.
    ///
    /// The one-call case under `Multiple` is inlined, as in
    /// [`start`](Self::start).
    #[inline(always)]
    fn run_now<B: Send + Default + 'static>(&self, prepared: Prepared<B, impl PlanOnce<B>>) -> CollResult<B> {
        let shared = &self.mpi.shared;
        match prepared {
            Prepared::Checked {
                bufs,
                direct: Some(call),
                plan: _,
            } if shared.level == ThreadLevel::Multiple && shared.timeout.is_none() => {
                // SAFETY: the buffers the call points into are held here
                // until it returns; any thread may call MPI at any time.
                let result = unsafe { call.run(self.handles.comm.raw()) };
                BufResult(result.map_err(|c| mpi_error(c, "MPI collective")), bufs)
            }
            other => self.run_planned(other),
        }
    }

    /// [`run_now`](Self::run_now) of the rest; out of line.
    #[inline(never)]
    fn run_planned<B: Send + Default + 'static>(&self, prepared: Prepared<B, impl PlanOnce<B>>) -> CollResult<B> {
        let shared = &self.mpi.shared;
        if !shared.may_call_here() || shared.timeout.is_some() {
            return self.wait(self.start(prepared));
        }
        let (mut bufs, direct, plan) = match prepared {
            Prepared::Checked { bufs, direct, plan } => (bufs, direct, plan),
            Prepared::Refused(err, bufs) => return BufResult(Err(err), bufs),
        };
        let (comm, bulk) = (self.handles.comm, self.handles.bulk);
        let multiple = shared.level == ThreadLevel::Multiple;
        if let Some(call) = direct {
            // Below Multiple (under it, `run_now` made the call itself),
            // MPI calls must not overlap: the lock orders them.
            // SAFETY: the buffers the call points into are held here until
            // it returns; this thread may call MPI (checked above).
            let result = shared.with_state(|_| unsafe { call.run(comm.raw()) });
            let result = result.map(|r| r.map_err(|c| mpi_error(c, "MPI collective")));
            return BufResult(result.unwrap_or_else(|| Err(not_here("collective"))), bufs);
        }
        let result = shared.with_state(|st| -> Result<()> {
            let p = plan(st, &mut bufs)?;
            let run = || run_plan(&p, comm, bulk);
            // Under Multiple, other threads post and drive meanwhile;
            // below it, MPI calls must not overlap, so the lock stays held.
            let result = if multiple {
                parking_lot::MutexGuard::unlocked(st, run)
            } else {
                run()
            };
            let panicked = p.panicked.as_ref().is_some_and(|f| f.load(Ordering::Acquire));
            if let (Ok(()), Some(unpack)) = (&result, &p.unpack) {
                unpack.run();
            }
            free_now(p.handles);
            result.and(if panicked { Err(user_op::panicked()) } else { Ok(()) })
        });
        match result {
            Some(r) => BufResult(r, bufs),
            None => BufResult(Err(not_here("collective")), bufs),
        }
    }
}

/// Starts a plan's requests as one record of the backend, which completes
/// `done` once they all finish.
fn post_plan<B: Send + Default + 'static>(
    st: &mut State,
    p: Plan,
    bufs: B,
    done: Completer<CollResult<B>>,
    handles: Arc<CommHandles>,
    finished: &mut Vec<Done>,
) {
    let (comm, bulk) = (handles.comm, handles.bulk);
    let name = p.first.name();
    let work = CollWork {
        bufs,
        done: Some(done),
        panicked: p.panicked,
        _keep: p.keep,
        unpack: p.unpack,
        name,
    };
    let mut calls = std::iter::once(p.first).chain(p.more);
    let mut messages = p.messages.into_iter();
    st.post(
        Box::new(work),
        p.handles,
        handles,
        false,
        |_| {
            if let Some(call) = calls.next() {
                // SAFETY: the buffers and count lists the call points into
                // live in the record (`CollWork`) until the request
                // finishes; the types and ops are live; the state is held
                // on an allowed thread.
                let started = unsafe { call.start(comm.raw()) };
                return Some(started.map_err(|c| mpi_error(c, "MPI non-blocking collective")));
            }
            // SAFETY: as above, for the message's block.
            messages.next().map(|m| unsafe { m.start(bulk.raw()) })
        },
        finished,
    );
}

/// Runs a plan to completion with MPI's blocking calls. A plan with
/// messages starts them first, makes the calls, then waits for the
/// messages: a blocking collective never matches a non-blocking one (and a
/// rank with no message of its own makes the blocking calls), and no rank
/// waits for a message before it has entered every call, so none can wait
/// on another that is still outside one.
fn run_plan(p: &Plan, comm: CommHandle, bulk: CommHandle) -> Result<()> {
    let mut reqs = Vec::with_capacity(p.messages.len());
    let mut result = Ok(());
    for m in &p.messages {
        // SAFETY: the blocks live until every request is waited for below;
        // this thread may call MPI.
        match unsafe { m.start(bulk.raw()) } {
            Ok(req) => reqs.push(req),
            Err(err) => {
                result = Err(err);
                break;
            }
        }
    }
    if result.is_ok() {
        for call in std::iter::once(&p.first).chain(&p.more) {
            // SAFETY: the buffers and lists the call points into live
            // until it returns; this thread may call MPI.
            if let Err(c) = unsafe { call.run(comm.raw()) } {
                result = Err(mpi_error(c, "MPI collective"));
                break;
            }
        }
    }
    if reqs.is_empty() {
        return result;
    }
    // What started must finish before the buffers go back, even after a
    // failure.
    // SAFETY: every request is active; this thread may call MPI.
    let waited = unsafe { sys::wait_all(&mut reqs) }.map_err(|c| mpi_error(c, "MPI_Waitall"));
    result.and(waited)
}

fn free_now(handles: Vec<Handle>) {
    for h in handles {
        match h {
            // SAFETY: made for a call that returned; the state is held.
            Handle::Type(ty) => unsafe { sys::type_free(ty) },
            // SAFETY: as above.
            Handle::Op(op) => unsafe { sys::op_free(op) },
            Handle::Held(_) => {}
        }
    }
}

/// A collective of one call whose every rank's block is `elems` elements
/// of `T` (`what` names the buffer), made by `call` from the datatype and
/// count: direct where they are predefined and one count, else planned
/// (long blocks as one element of a datatype made for the call).
fn prepared_blocks<T: Element>(
    mut bufs: Pair<T>,
    what: &'static str,
    elems: usize,
    max: usize,
    call: impl Fn(&mut Pair<T>, Datatype, c_int) -> Call + Send + 'static,
) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
    let direct = datatype::predefined::<T>(elems, max).map(|(ty, n)| call(&mut bufs, ty, n));
    prepared_direct(bufs, direct, move |st, bufs| {
        let b = datatype::block::<T>(st, what, elems, max)?;
        Ok(single(call(bufs, b.ty, b.count), Vec::new()).holding(b.made))
    })
}

/// A plan, made under the lock from the buffers.
pub(crate) trait PlanOnce<B>: FnOnce(&mut State, &mut B) -> Result<Plan> + Send + 'static {}

impl<B, F: FnOnce(&mut State, &mut B) -> Result<Plan> + Send + 'static> PlanOnce<B> for F {}

/// A collective checked locally: its buffers and its plan, or the error
/// and the buffers back.
enum Prepared<B, F> {
    /// Refused: the error, and the buffers back.
    Refused(Error, B),
    /// Checked: the buffers and the plan to make under the lock; `direct`
    /// is the one MPI call the plan would make when it needs nothing from
    /// the backend's state (predefined datatype and operation, one
    /// count), which then starts without the plan or the lock.
    Checked { bufs: B, direct: Option<Call>, plan: F },
}

fn prepared<B, F: PlanOnce<B>>(bufs: B, plan: F) -> Prepared<B, F> {
    prepared_direct(bufs, None, plan)
}

/// As [`prepared`], with the one call the plan would make if known
/// without the state.
fn prepared_direct<B, F: PlanOnce<B>>(bufs: B, direct: Option<Call>, plan: F) -> Prepared<B, F> {
    Prepared::Checked { bufs, direct, plan }
}

/// A collective ready to start: its MPI calls (several when split), what
/// they use that must outlive them, and the panic flag of a custom
/// reduction.
pub(crate) struct Plan {
    /// The first call, and those after it (a split collective).
    first: Call,
    more: Vec<Call>,
    /// Blocks too long for one count, as messages on the bulk twin.
    messages: Vec<Message>,
    /// Blocks received into a packed copy, moved into place once done.
    unpack: Option<Unpack>,
    handles: Vec<Handle>,
    keep: Vec<Vec<c_int>>,
    panicked: Option<Arc<AtomicBool>>,
}

/// Which way a message goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Send,
    Recv,
}

/// One block of a `v` variant sent or received as a message: one element
/// of a datatype made for it (so any length fits), to or from `peer`.
struct Message {
    dir: Dir,
    buf: *mut c_void,
    ty: Datatype,
    count: c_int,
    peer: c_int,
}

impl Message {
    /// Starts it on `comm` (the bulk twin).
    ///
    /// # Safety
    /// As for [`Call::start`], for the block at `buf`.
    unsafe fn start(&self, comm: Comm) -> Result<sys::Request> {
        // Every block of one collective travels with this tag; the bulk
        // twin carries nothing else, and MPI keeps the messages of one
        // pair in order, as the collectives are.
        const TAG: c_int = 0;
        // SAFETY: upheld by the caller.
        unsafe {
            match self.dir {
                Dir::Send => sys::isend(self.buf, (self.count, self.ty), self.peer, TAG, comm)
                    .map_err(|c| mpi_error(c, "MPI_Isend")),
                Dir::Recv => sys::irecv(self.buf, (self.count, self.ty), self.peer, TAG, comm)
                    .map_err(|c| mpi_error(c, "MPI_Irecv")),
            }
        }
    }
}

/// Handles made while planning, freed unless the plan takes them (a plan
/// that fails halfway leaks nothing).
struct Made(Vec<Handle>);

impl Drop for Made {
    fn drop(&mut self) {
        free_now(std::mem::take(&mut self.0));
    }
}

/// One side of a `v`-variant call as MPI sees it: the buffer the call
/// points at (the caller's, or a packed copy), a datatype, and the counts
/// and displacements.
struct List {
    buf: *mut c_void,
    ty: Datatype,
    counts: Vec<c_int>,
    displs: Vec<c_int>,
}

impl List {
    /// The side of a rank for which the list is not significant.
    fn unused(ty: Datatype) -> Self {
        List {
            buf: sys::buffer_mut(std::ptr::null_mut(), 0),
            ty,
            counts: Vec::new(),
            displs: Vec::new(),
        }
    }
}

/// Blocks received into a packed copy, to be moved to their places in the
/// caller's buffer once the collective is done.
struct Unpack {
    packed: Vec<u8>,
    /// `(offset in packed, destination, bytes)` per block.
    moves: Vec<(usize, *mut u8, usize)>,
}

// SAFETY: the destinations point into the collective's own buffers, which
// the record holds, and are written only by `run`, once MPI is done.
unsafe impl Send for Unpack {}

impl Unpack {
    fn run(&self) {
        for &(from, to, len) in &self.moves {
            // SAFETY: `to` holds `len` bytes of the caller's buffer (the
            // layout was checked against it), `packed` holds the block at
            // `from`, and MPI has finished writing both.
            unsafe { std::ptr::copy_nonoverlapping(self.packed.as_ptr().add(from), to, len) };
        }
    }
}

/// The `v`-variant blocks too long for the MPI call, sent as messages.
///
/// A block of more than `max / size` items leaves the call (count 0 there)
/// and travels as one message on the bulk twin: its length is known to both
/// of its ends, so both decide alike, and the blocks left in the call then
/// fit one count even packed together. Where their displacements do not fit
/// a count, that side packs them into a copy.
struct Blocks<'a> {
    max: usize,
    limit: usize,
    messages: Vec<Message>,
    unpack: Option<Unpack>,
    made: &'a mut Made,
}

impl Blocks<'_> {
    /// The plan of `first`, these messages, and what was made for them.
    fn into_plan(self, first: Call, keep: Vec<Vec<c_int>>) -> Plan {
        Plan {
            first,
            more: Vec::new(),
            messages: self.messages,
            unpack: self.unpack,
            handles: std::mem::take(&mut self.made.0),
            keep,
            panicked: None,
        }
    }

    fn new(max: usize, size: usize, made: &mut Made) -> Blocks<'_> {
        Blocks {
            max,
            limit: (max / size.max(1)).max(1),
            messages: Vec::new(),
            unpack: None,
            made,
        }
    }

    /// A block of `len` elements at `buf`, one side's single count in the
    /// call, exchanged with every rank of `peers`: its MPI count and type.
    fn single<T: Element>(
        &mut self,
        st: &mut State,
        what: &str,
        (buf, len): (*mut c_void, usize),
        dir: Dir,
        peers: std::ops::Range<usize>,
    ) -> Result<(c_int, Datatype)> {
        let (base, per) = datatype::flat::<T>(st)?;
        if let Some(items) = len.checked_mul(per).filter(|&n| n <= self.limit) {
            let count = c_int::try_from(items).map_err(|_| invalid(format!("{what}: too many elements")))?;
            return Ok((count, base));
        }
        let b = datatype::block::<T>(st, what, len, self.limit)?;
        self.made.0.extend(b.made);
        for peer in peers {
            let peer = c_int::try_from(peer).map_err(|_| invalid("rank too large for MPI"))?;
            self.messages.push(Message {
                dir,
                buf,
                ty: b.ty,
                count: b.count,
                peer,
            });
        }
        Ok((0, base))
    }

    /// One side's list (a block per rank in `buf`, laid out by `layout`,
    /// checked against it): the long blocks as messages, the rest as the
    /// call's counts.
    fn list<T: Element>(
        &mut self,
        st: &mut State,
        what: &str,
        buf: *mut c_void,
        layout: &Counts,
        dir: Dir,
    ) -> Result<List> {
        let (ty, per) = datatype::flat::<T>(st)?;
        let elem = std::mem::size_of::<T>();
        let mut kept = Vec::with_capacity(layout.counts.len());
        for (peer, (&count, &displ)) in layout.counts.iter().zip(&layout.displs).enumerate() {
            // SAFETY (pointer arithmetic): the layout was checked against
            // the buffer, so the block lies inside it.
            let at = buf.cast::<u8>().wrapping_add(displ * elem);
            if count.checked_mul(per).is_some_and(|n| n <= self.limit) {
                kept.push((count, displ, at));
            } else {
                self.single::<T>(st, what, (at.cast(), count), dir, peer..peer + 1)?;
                kept.push((0, 0, at));
            }
        }
        let as_int = |n: usize| c_int::try_from(n).map_err(|_| invalid(format!("{what}: too many elements")));
        let fits = kept
            .iter()
            .all(|&(c, d, _)| c == 0 || d.checked_mul(per).is_some_and(|n| n <= self.max));
        if fits {
            return Ok(List {
                buf,
                ty,
                counts: kept.iter().map(|k| as_int(k.0 * per)).collect::<Result<_>>()?,
                displs: kept
                    .iter()
                    .map(|k| as_int(if k.0 == 0 { 0 } else { k.1 * per }))
                    .collect::<Result<_>>()?,
            });
        }
        // Far apart: the kept blocks (at most `limit` items each) packed
        // back to back in a copy, which then fits one count.
        let total: usize = kept.iter().map(|k| k.0).sum();
        let mut packed = vec![0u8; total * elem];
        let (mut counts, mut displs, mut moves) = (Vec::new(), Vec::new(), Vec::new());
        let mut at = 0;
        for &(c, _, from) in &kept {
            counts.push(as_int(c * per)?);
            displs.push(as_int(at * per)?);
            if c > 0 {
                moves.push((at * elem, from, c * elem));
            }
            at += c;
        }
        let packed_ptr = packed.as_mut_ptr().cast::<c_void>();
        match dir {
            Dir::Send => {
                for &(off, from, len) in &moves {
                    // SAFETY: `from` holds `len` bytes of the caller's
                    // send buffer; `packed` was sized for every block.
                    unsafe { std::ptr::copy_nonoverlapping(from, packed.as_mut_ptr().add(off), len) };
                }
                self.made.0.push(Handle::Held(Box::new(packed)));
            }
            Dir::Recv => self.unpack = Some(Unpack { packed, moves }),
        }
        Ok(List {
            buf: sys::buffer_mut(packed_ptr, total),
            ty,
            counts,
            displs,
        })
    }
}

/// A collective in flight: its buffers and what its calls point into.
pub(super) struct CollWork<B> {
    bufs: B,
    /// `None` once the caller was told the collective timed out.
    done: Option<Completer<CollResult<B>>>,
    panicked: Option<Arc<AtomicBool>>,
    _keep: Vec<Vec<c_int>>,
    unpack: Option<Unpack>,
    name: &'static str,
}

impl<B> CollWork<B> {
    /// The record of a one-call collective whose future stops testing it
    /// ([`SelfTested`]); `done` is `None` if that future is gone.
    pub(super) fn one_call(
        bufs: B,
        done: Option<Completer<CollResult<B>>>,
        keep: Vec<Vec<c_int>>,
        name: &'static str,
    ) -> Self {
        Self {
            bufs,
            done,
            panicked: None,
            _keep: keep,
            unpack: None,
            name,
        }
    }
}

impl<B: Send + Default> Finish for CollWork<B> {
    fn finish(self: Box<Self>, result: Result<()>, _status: &sys::Status) {
        let panicked = self.panicked.as_ref().is_some_and(|p| p.load(Ordering::Acquire));
        let result = result.and(if panicked { Err(user_op::panicked()) } else { Ok(()) });
        if let (Ok(()), Some(unpack)) = (&result, &self.unpack) {
            unpack.run();
        }
        if let Some(done) = self.done {
            done.complete(Ok(BufResult(result, self.bufs)));
        }
    }

    fn expire(&mut self, err: Error) -> bool {
        // The buffers stay here: MPI may still write them.
        match self.done.take() {
            Some(done) => {
                done.complete(Ok(BufResult(Err(err), B::default())));
                true
            }
            None => false,
        }
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

/// The datatype, items per element and operation of a reduction.
struct Reduction {
    ty: Datatype,
    per: usize,
    op: Op,
    custom: Option<user_op::Custom>,
}

fn reduction<T: Element>(st: &mut State, op: &ReduceOp<T>) -> Result<Reduction> {
    // Open MPI 4.1's AVX reductions saturate 8- and 16-bit sums
    // (open-mpi/ompi#8045) where C, and mfio, wrap: those sums run in Rust,
    // as a custom reduction.
    if !matches!(op, ReduceOp::Custom { .. }) && runs_in_rust(op) {
        let combine: Arc<crate::reduce::CombineFn<T>> =
            Arc::new(|inc: &[T], acc: &mut [T]| ReduceOp::Sum.apply(inc, acc));
        return reduction(
            st,
            &ReduceOp::Custom {
                combine,
                commutative: true,
            },
        );
    }
    let builtin = match (op, sys::builtin_op(op)) {
        (ReduceOp::Custom { combine, commutative }, _) => {
            let custom = user_op::custom::<T>(st, combine, *commutative)?;
            return Ok(Reduction {
                ty: custom.ty,
                per: 1,
                op: custom.op,
                custom: Some(custom),
            });
        }
        (_, Some(builtin)) => builtin,
        (_, None) => return Err(invalid("op: no MPI operation for it")),
    };
    let (ty, per) = datatype::flat::<T>(st)?;
    Ok(Reduction {
        ty,
        per,
        op: builtin,
        custom: None,
    })
}

/// The predefined operation MPI runs itself for `op` on `T`: none for a
/// custom one, or one that runs in Rust.
fn mpi_runs<T: Element>(op: &ReduceOp<T>) -> Option<Op> {
    if runs_in_rust(op) {
        return None;
    }
    sys::builtin_op(op)
}

/// Whether MPI calls Rust to reduce with `op` on `T` (a user function).
fn runs_in_rust<T: Element>(op: &ReduceOp<T>) -> bool {
    matches!(op, ReduceOp::Custom { .. }) || (matches!(op, ReduceOp::Sum) && narrow_integer::<T>())
}

/// Whether `T` is made of 8- or 16-bit integers.
fn narrow_integer<T: Element>() -> bool {
    use crate::element::Primitive as P;
    with_layout::<T, _>(|l| matches!(l.homogeneous(), Some((P::I8 | P::U8 | P::I16 | P::U16, _))))
}

/// The operation applies to `T` (checked before anything is sent).
fn check_op<T: Element>(op: &ReduceOp<T>) -> Result<()> {
    if with_layout::<T, _>(|l| op.applies_to(l)) {
        Ok(())
    } else {
        Err(invalid(format!(
            "op: {} does not apply to {} (bitwise and logical operations take integers; \
             structs need a custom operation)",
            op.name(),
            std::any::type_name::<T>()
        )))
    }
}

/// The element-wise collectives, which split into several calls when
/// longer than MPI's count limit.
#[derive(Clone, Copy)]
enum Elementwise {
    Bcast(c_int),
    Reduce(c_int),
    Allreduce,
    Scan,
    Exscan,
}

/// Plans an element-wise collective over `len` elements of `T` at `send`
/// (`None`: in place) and `recv`.
fn plan_elementwise<T: Element>(
    st: &mut State,
    max_count: usize,
    kind: Elementwise,
    op: Option<&ReduceOp<T>>,
    send: Option<*const c_void>,
    recv: *mut c_void,
    len: usize,
) -> Result<Plan> {
    let r = match op {
        Some(op) => reduction(st, op)?,
        None => {
            let (ty, per) = datatype::flat::<T>(st)?;
            Reduction {
                ty,
                per,
                op: sys::null_op(),
                custom: None,
            }
        }
    };
    let mut calls = Calls::default();
    elementwise_calls::<T>(&r, max_count, kind, send, recv, len, &mut calls)?;
    Ok(calls.plan(r.custom))
}

/// The calls of a collective, in the order every rank starts them.
#[derive(Default)]
struct Calls {
    first: Option<Call>,
    more: Vec<Call>,
}

impl Calls {
    fn push(&mut self, call: Call) {
        if self.first.is_none() {
            self.first = Some(call);
        } else {
            self.more.push(call);
        }
    }

    /// The plan of these calls (at least one), with a custom reduction's
    /// handles and panic flag.
    fn plan(self, custom: Option<user_op::Custom>) -> Plan {
        let (handles, panicked) = match custom {
            Some(c) => (c.handles, Some(c.panicked)),
            None => (Vec::new(), None),
        };
        Plan {
            first: self.first.unwrap_or(Call::Barrier {}),
            more: self.more,
            messages: Vec::new(),
            unpack: None,
            handles,
            keep: Vec::new(),
            panicked,
        }
    }
}

/// The calls of an element-wise collective over `len` elements: one, or
/// several of at most `max_count` MPI items each.
fn elementwise_calls<T: Element>(
    r: &Reduction,
    max_count: usize,
    kind: Elementwise,
    send: Option<*const c_void>,
    recv: *mut c_void,
    len: usize,
    calls: &mut Calls,
) -> Result<()> {
    let (ty, per, mpi_op) = (r.ty, r.per, r.op);
    let items = len
        .checked_mul(per)
        .ok_or_else(|| invalid("buffer too large for MPI"))?;
    let item_bytes = std::mem::size_of::<T>() / per.max(1);
    let mut at = 0usize;
    loop {
        let n = (items - at).min(max_count);
        let count = c_int::try_from(n).map_err(|_| invalid("count exceeds i32::MAX"))?;
        let off = at * item_bytes;
        // SAFETY (pointer arithmetic): `off` stays within the buffers,
        // which hold `items` items each.
        let s = send.map(|p| p.cast::<u8>().wrapping_add(off).cast::<c_void>());
        let s = sys::send_or_in_place(s);
        let r = recv.cast::<u8>().wrapping_add(off).cast::<c_void>();
        calls.push(kind.call(s, r, count, ty, mpi_op));
        at += n;
        if at >= items {
            return Ok(());
        }
    }
}

impl Elementwise {
    /// The call over `count` items of `ty` from `send` (or `MPI_IN_PLACE`)
    /// into `recv`, reduced by `op` where it reduces.
    fn call(self, send: *const c_void, recv: *mut c_void, count: c_int, ty: Datatype, op: Op) -> Call {
        match self {
            Elementwise::Bcast(root) => Call::Bcast {
                buf: recv,
                count,
                ty,
                root,
            },
            Elementwise::Reduce(root) => Call::Reduce {
                send,
                recv,
                count,
                ty,
                op,
                root,
            },
            Elementwise::Allreduce => Call::Allreduce {
                send,
                recv,
                count,
                ty,
                op,
            },
            Elementwise::Scan => Call::Scan {
                send,
                recv,
                count,
                ty,
                op,
            },
            Elementwise::Exscan => Call::Exscan {
                send,
                recv,
                count,
                ty,
                op,
            },
        }
    }
}

/// Where an element-wise collective goes: `send` (`None`: in place) and
/// `recv`, `len` elements of `T` each.
#[derive(Clone, Copy)]
struct Operands {
    send: Option<*const c_void>,
    recv: *mut c_void,
    len: usize,
}

fn operands(send: Option<*const c_void>, recv: *mut c_void, len: usize) -> Operands {
    Operands { send, recv, len }
}

/// The one call of an element-wise collective, where it needs nothing from
/// the state: a predefined datatype within one count and a predefined
/// operation MPI runs itself (see [`plan_elementwise`] for the rest).
fn direct_elementwise<T: Element>(
    max_count: usize,
    kind: Elementwise,
    op: Option<&ReduceOp<T>>,
    at: Operands,
) -> Option<Call> {
    let (ty, count) = datatype::predefined::<T>(at.len, max_count)?;
    let op = match op {
        None => sys::null_op(),
        Some(op) => mpi_runs(op)?,
    };
    Some(kind.call(sys::send_or_in_place(at.send), at.recv, count, ty, op))
}

#[inline]
fn root_arg(root: Rank, size: usize) -> Result<c_int> {
    check::rank("root", root, size)?;
    c_int::try_from(root).map_err(|_| invalid("root too large for MPI"))
}

fn ptr<T>(v: &[T]) -> *const c_void {
    sys::buffer(v.as_ptr().cast(), v.len())
}

fn mut_ptr<T>(v: &mut [T]) -> *mut c_void {
    sys::buffer_mut(v.as_mut_ptr().cast(), v.len())
}

/// Runs the checks (each a `Result<()>`, evaluated while the buffers are
/// still borrowable), then hands back the buffers: with the first error, as
/// a refused [`Prepared`], or as the value of the macro.
macro_rules! checked {
    ($bufs:expr, $($check:expr),+ $(,)?) => {{
        let mut failed: Option<Error> = None;
        $(
            if failed.is_none() {
                if let Err(err) = $check {
                    failed = Some(err);
                }
            }
        )+
        match failed {
            Some(err) => return Prepared::Refused(err, $bufs),
            None => $bufs,
        }
    }};
}

impl Plan {
    /// Whether the plan is one MPI call and nothing else to run or free
    /// when it finishes (no split, messages, packed copy, or custom
    /// reduction).
    fn is_one_call(&self) -> bool {
        self.more.is_empty()
            && self.messages.is_empty()
            && self.unpack.is_none()
            && self.handles.is_empty()
            && self.panicked.is_none()
    }

    /// The plan, also freeing `made` (a datatype made for it) once done.
    fn holding(mut self, made: Option<Handle>) -> Self {
        self.handles.extend(made);
        self
    }
}

/// A plan of one call.
fn single(call: Call, keep: Vec<Vec<c_int>>) -> Plan {
    Plan {
        first: call,
        more: Vec::new(),
        messages: Vec::new(),
        unpack: None,
        handles: Vec::new(),
        keep,
        panicked: None,
    }
}

/// Each collective, checked and planned once; the async and blocking forms
/// of the [`Communicator`] impl start or run what these prepare.
impl MpiComm {
    fn max_count(&self) -> usize {
        self.mpi.shared.max_count
    }

    fn prep_barrier(&self) -> Prepared<(), impl PlanOnce<()>> {
        prepared_direct((), Some(Call::Barrier {}), |_, _| {
            Ok(single(Call::Barrier {}, Vec::new()))
        })
    }

    fn prep_bcast<T: Element>(&self, buf: Vec<T>, root: Rank) -> Prepared<Vec<T>, impl PlanOnce<Vec<T>>> {
        let root = match root_arg(root, self.size) {
            Ok(root) => root,
            Err(e) => return Prepared::Refused(e, buf),
        };
        let max = self.max_count();
        let mut buf = buf;
        let len = buf.len();
        let direct = direct_elementwise::<T>(
            max,
            Elementwise::Bcast(root),
            None,
            operands(None, mut_ptr(&mut buf), len),
        );
        prepared_direct(buf, direct, move |st, buf| {
            let len = buf.len();
            plan_elementwise::<T>(st, max, Elementwise::Bcast(root), None, None, mut_ptr(buf), len)
        })
    }

    fn prep_reduce<T: Element>(
        &self,
        send: Vec<T>,
        recv: Vec<T>,
        op: ReduceOp<T>,
        root: Rank,
    ) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
        let is_root = root == self.rank;
        let bufs = checked!((send, recv), check::rank("root", root, self.size), check_op(&op),);
        let bufs = checked!(
            bufs,
            if is_root {
                check::len("recv", bufs.1.len(), bufs.0.len())
            } else {
                Ok(())
            }
        );
        let root = root_arg(root, self.size).unwrap_or(0);
        let max = self.max_count();
        let mut bufs = bufs;
        let direct = {
            let (send, recv) = &mut bufs;
            let recv_ptr = if is_root { mut_ptr(recv) } else { mut_ptr::<T>(&mut []) };
            let kind = Elementwise::Reduce(root);
            direct_elementwise(max, kind, Some(&op), operands(Some(ptr(send)), recv_ptr, send.len()))
        };
        prepared_direct(bufs, direct, move |st, (send, recv)| {
            // Not significant off the root, but never null: MPICH offsets it.
            let recv_ptr = if is_root { mut_ptr(recv) } else { mut_ptr::<T>(&mut []) };
            let send_ptr = ptr(send);
            plan_elementwise(
                st,
                max,
                Elementwise::Reduce(root),
                Some(&op),
                Some(send_ptr),
                recv_ptr,
                send.len(),
            )
        })
    }

    fn prep_reduce_in_place<T: Element>(
        &self,
        buf: Vec<T>,
        op: ReduceOp<T>,
        root: Rank,
    ) -> Prepared<Vec<T>, impl PlanOnce<Vec<T>>> {
        let is_root = root == self.rank;
        let buf = checked!(buf, check::rank("root", root, self.size), check_op(&op));
        let root = root_arg(root, self.size).unwrap_or(0);
        let max = self.max_count();
        let mut buf = buf;
        // The MPICH root's copy (below) is part of the plan.
        let direct = (!is_root || sys::header_implementation() != "MPICH")
            .then(|| {
                let len = buf.len();
                let (send, recv) = if is_root {
                    (None, mut_ptr(&mut buf))
                } else {
                    (Some(ptr(&buf)), mut_ptr::<T>(&mut []))
                };
                direct_elementwise(max, Elementwise::Reduce(root), Some(&op), operands(send, recv, len))
            })
            .flatten();
        prepared_direct(buf, direct, move |st, buf| {
            let len = buf.len();
            // MPI_IN_PLACE is the root's send buffer; other ranks send
            // theirs as usual. MPICH 4.0.2's blocking reduce reads from
            // MPI_IN_PLACE as if it were a buffer (a crash) once the
            // message is long and the root is not rank 0: there the root
            // sends from a copy.
            let copy = is_root && sys::header_implementation() == "MPICH";
            if copy {
                let send = buf.clone();
                let mut plan = plan_elementwise(
                    st,
                    max,
                    Elementwise::Reduce(root),
                    Some(&op),
                    Some(ptr(&send)),
                    mut_ptr(buf),
                    len,
                )?;
                plan.handles.push(Handle::Held(Box::new(send)));
                return Ok(plan);
            }
            let (send, recv) = if is_root {
                (None, mut_ptr(buf))
            } else {
                (Some(ptr(buf)), mut_ptr::<T>(&mut []))
            };
            plan_elementwise(st, max, Elementwise::Reduce(root), Some(&op), send, recv, len)
        })
    }

    fn prep_allreduce<T: Element>(
        &self,
        send: Vec<T>,
        recv: Vec<T>,
        op: ReduceOp<T>,
    ) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
        let bufs = checked!((send, recv), check_op(&op));
        let bufs = checked!(bufs, check::len("recv", bufs.1.len(), bufs.0.len()));
        let max = self.max_count();
        let mut bufs = bufs;
        let direct = {
            let (send, recv) = &mut bufs;
            direct_elementwise(
                max,
                Elementwise::Allreduce,
                Some(&op),
                operands(Some(ptr(send)), mut_ptr(recv), send.len()),
            )
        };
        prepared_direct(bufs, direct, move |st, (send, recv)| {
            let len = send.len();
            plan_elementwise(
                st,
                max,
                Elementwise::Allreduce,
                Some(&op),
                Some(ptr(send)),
                mut_ptr(recv),
                len,
            )
        })
    }

    fn prep_allreduce_in_place<T: Element>(
        &self,
        buf: Vec<T>,
        op: ReduceOp<T>,
    ) -> Prepared<Vec<T>, impl PlanOnce<Vec<T>>> {
        let mut buf = checked!(buf, check_op(&op));
        let max = self.max_count();
        let len = buf.len();
        let direct = direct_elementwise(
            max,
            Elementwise::Allreduce,
            Some(&op),
            operands(None, mut_ptr(&mut buf), len),
        );
        prepared_direct(buf, direct, move |st, buf| {
            let len = buf.len();
            plan_elementwise(st, max, Elementwise::Allreduce, Some(&op), None, mut_ptr(buf), len)
        })
    }

    fn prep_scan<T: Element>(
        &self,
        send: Vec<T>,
        recv: Vec<T>,
        op: ReduceOp<T>,
        exclusive: bool,
    ) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
        let bufs = checked!((send, recv), check_op(&op));
        let bufs = checked!(bufs, check::len("recv", bufs.1.len(), bufs.0.len()));
        let max = self.max_count();
        // MPI leaves rank 0's exclusive-scan result undefined: it lands in
        // a scratch buffer, and the caller's comes back unchanged.
        let scratch = exclusive && self.rank == 0;
        let kind = if exclusive {
            Elementwise::Exscan
        } else {
            Elementwise::Scan
        };
        let mut bufs = bufs;
        // The scratch buffer is part of the plan.
        let direct = (!scratch)
            .then(|| {
                let (send, recv) = &mut bufs;
                direct_elementwise(
                    max,
                    kind,
                    Some(&op),
                    operands(Some(ptr(send)), mut_ptr(recv), send.len()),
                )
            })
            .flatten();
        prepared_direct(bufs, direct, move |st, (send, recv)| {
            let len = send.len();
            if scratch {
                let mut tmp: Vec<T> = vec![T::zeroed(); len];
                let mut plan = plan_elementwise(st, max, kind, Some(&op), Some(ptr(send)), mut_ptr(&mut tmp), len)?;
                plan.handles.push(Handle::Held(Box::new(tmp)));
                return Ok(plan);
            }
            plan_elementwise(st, max, kind, Some(&op), Some(ptr(send)), mut_ptr(recv), len)
        })
    }

    fn prep_scatter<T: Element>(
        &self,
        send: Vec<T>,
        recv: Vec<T>,
        root: Rank,
    ) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
        let is_root = root == self.rank;
        let size = self.size;
        let bufs = checked!((send, recv), check::rank("root", root, size));
        let bufs = checked!(
            bufs,
            if is_root {
                check::len("send", bufs.0.len(), bufs.1.len().saturating_mul(size))
            } else {
                Ok(())
            }
        );
        let root = root_arg(root, size).unwrap_or(0);
        let max = self.max_count();
        let call = move |(send, recv): &mut Pair<T>, ty, count| Call::Scatter {
            send: ptr(send),
            send_count: if is_root { count } else { 0 },
            recv: mut_ptr(recv),
            recv_count: count,
            ty,
            root,
        };
        let elems = bufs.1.len();
        prepared_blocks(bufs, "recv", elems, max, call)
    }

    fn prep_scatterv<T: Element>(
        &self,
        send: Vec<T>,
        layout: &Counts,
        recv: Vec<T>,
        root: Rank,
    ) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
        let is_root = root == self.rank;
        let size = self.size;
        let bufs = checked!((send, recv), check::rank("root", root, size));
        let bufs = checked!(
            bufs,
            if is_root {
                check::layout(
                    "send",
                    &layout.counts,
                    &layout.displs,
                    size,
                    bufs.0.len(),
                    Overlap::Allowed,
                )
                .and_then(|()| check::len("recv", bufs.1.len(), layout.counts[self.rank]))
            } else {
                Ok(())
            }
        );
        let root_rank = root;
        let root = root_arg(root, size).unwrap_or(0);
        let layout = if is_root { layout.clone() } else { Counts::default() };
        let max = self.max_count();
        prepared(bufs, move |st, (send, recv)| {
            let mut made = Made(Vec::new());
            let mut blocks = Blocks::new(max, size, &mut made);
            let (recv_count, recv_ty) = blocks.single::<T>(
                st,
                "recv",
                (mut_ptr(recv), recv.len()),
                Dir::Recv,
                root_rank..root_rank + 1,
            )?;
            let list = if is_root {
                let base = ptr(send).cast_mut();
                blocks.list::<T>(st, "send", base, &layout, Dir::Send)?
            } else {
                List::unused(recv_ty)
            };
            let call = Call::Scatterv {
                send: list.buf,
                counts: list.counts.as_ptr(),
                displs: list.displs.as_ptr(),
                send_ty: list.ty,
                recv: mut_ptr(recv),
                recv_count,
                recv_ty,
                root,
            };
            Ok(blocks.into_plan(call, vec![list.counts, list.displs]))
        })
    }

    fn prep_gather<T: Element>(
        &self,
        send: Vec<T>,
        recv: Vec<T>,
        root: Rank,
        all: bool,
    ) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
        let size = self.size;
        let is_root = all || root == self.rank;
        let bufs = checked!((send, recv), if all { Ok(()) } else { check::rank("root", root, size) });
        let bufs = checked!(
            bufs,
            if is_root {
                check::len("recv", bufs.1.len(), bufs.0.len().saturating_mul(size))
            } else {
                Ok(())
            }
        );
        let root = if all { 0 } else { root_arg(root, size).unwrap_or(0) };
        let max = self.max_count();
        let call = move |(send, recv): &mut Pair<T>, ty, n| {
            let recv_count = if is_root { n } else { 0 };
            if all {
                Call::Allgather {
                    send: ptr(send),
                    send_count: n,
                    recv: mut_ptr(recv),
                    recv_count,
                    ty,
                }
            } else {
                Call::Gather {
                    send: ptr(send),
                    send_count: n,
                    recv: mut_ptr(recv),
                    recv_count,
                    ty,
                    root,
                }
            }
        };
        let elems = bufs.0.len();
        prepared_blocks(bufs, "send", elems, max, call)
    }

    fn prep_gatherv<T: Element>(
        &self,
        send: Vec<T>,
        recv: Vec<T>,
        layout: &Counts,
        root: Rank,
        all: bool,
    ) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
        let size = self.size;
        let is_root = all || root == self.rank;
        let bufs = checked!((send, recv), if all { Ok(()) } else { check::rank("root", root, size) });
        let bufs = checked!(
            bufs,
            if is_root {
                check::layout(
                    "recv",
                    &layout.counts,
                    &layout.displs,
                    size,
                    bufs.1.len(),
                    Overlap::Refused,
                )
                .and_then(|()| check::len("send", bufs.0.len(), layout.counts[self.rank]))
            } else {
                Ok(())
            }
        );
        let root_rank = root;
        let root = if all { 0 } else { root_arg(root, size).unwrap_or(0) };
        let layout = if is_root { layout.clone() } else { Counts::default() };
        let max = self.max_count();
        prepared(bufs, move |st, (send, recv)| {
            let mut made = Made(Vec::new());
            let mut blocks = Blocks::new(max, size, &mut made);
            let to = if all { 0..size } else { root_rank..root_rank + 1 };
            let (send_count, send_ty) =
                blocks.single::<T>(st, "send", (ptr(send).cast_mut(), send.len()), Dir::Send, to)?;
            let list = if is_root {
                blocks.list::<T>(st, "recv", mut_ptr(recv), &layout, Dir::Recv)?
            } else {
                List::unused(send_ty)
            };
            let (recv, counts, displs, recv_ty) = (list.buf, list.counts.as_ptr(), list.displs.as_ptr(), list.ty);
            let call = if all {
                Call::Allgatherv {
                    send: ptr(send),
                    send_count,
                    send_ty,
                    recv,
                    counts,
                    displs,
                    recv_ty,
                }
            } else {
                Call::Gatherv {
                    send: ptr(send),
                    send_count,
                    send_ty,
                    recv,
                    counts,
                    displs,
                    recv_ty,
                    root,
                }
            };
            Ok(blocks.into_plan(call, vec![list.counts, list.displs]))
        })
    }

    fn prep_alltoall<T: Element>(&self, send: Vec<T>, recv: Vec<T>) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
        let size = self.size;
        let bufs = checked!((send, recv), Ok::<(), Error>(()));
        let bufs = checked!(
            bufs,
            check::divisible("send", bufs.0.len(), size),
            check::len("recv", bufs.1.len(), bufs.0.len()),
        );
        let max = self.max_count();
        let call = |(send, recv): &mut Pair<T>, ty, count| Call::Alltoall {
            send: ptr(send),
            send_count: count,
            recv: mut_ptr(recv),
            recv_count: count,
            ty,
        };
        let part = bufs.0.len() / size.max(1);
        prepared_blocks(bufs, "send", part, max, call)
    }

    fn prep_alltoallv<T: Element>(
        &self,
        send: Vec<T>,
        send_layout: &Counts,
        recv: Vec<T>,
        recv_layout: &Counts,
    ) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
        let size = self.size;
        let bufs = checked!((send, recv), Ok::<(), Error>(()));
        let bufs = checked!(
            bufs,
            check::layout(
                "send",
                &send_layout.counts,
                &send_layout.displs,
                size,
                bufs.0.len(),
                Overlap::Allowed
            ),
            check::layout(
                "recv",
                &recv_layout.counts,
                &recv_layout.displs,
                size,
                bufs.1.len(),
                Overlap::Refused
            ),
        );
        let (sl, rl) = (send_layout.clone(), recv_layout.clone());
        let max = self.max_count();
        prepared(bufs, move |st, (send, recv)| {
            let mut made = Made(Vec::new());
            let mut blocks = Blocks::new(max, size, &mut made);
            let s = blocks.list::<T>(st, "send", ptr(send).cast_mut(), &sl, Dir::Send)?;
            let r = blocks.list::<T>(st, "recv", mut_ptr(recv), &rl, Dir::Recv)?;
            let call = Call::Alltoallv {
                send: s.buf,
                send_counts: s.counts.as_ptr(),
                send_displs: s.displs.as_ptr(),
                send_ty: s.ty,
                recv: r.buf,
                recv_counts: r.counts.as_ptr(),
                recv_displs: r.displs.as_ptr(),
                recv_ty: r.ty,
            };
            Ok(blocks.into_plan(call, vec![s.counts, s.displs, r.counts, r.displs]))
        })
    }

    fn prep_reduce_scatter_block<T: Element>(
        &self,
        send: Vec<T>,
        recv: Vec<T>,
        op: ReduceOp<T>,
    ) -> Prepared<Pair<T>, impl PlanOnce<Pair<T>>> {
        let size = self.size;
        let bufs = checked!((send, recv), check_op(&op));
        let bufs = checked!(
            bufs,
            check::len("send", bufs.0.len(), bufs.1.len().saturating_mul(size))
        );
        let (max, rank) = (self.max_count(), self.rank);
        let mut bufs = bufs;
        let direct = match (datatype::predefined::<T>(bufs.1.len(), max), mpi_runs(&op)) {
            (Some((ty, count)), Some(mpi_op)) => Some(Call::ReduceScatterBlock {
                send: ptr(&bufs.0),
                recv: mut_ptr(&mut bufs.1),
                count,
                ty,
                op: mpi_op,
            }),
            _ => None,
        };
        prepared_direct(bufs, direct, move |st, (send, recv)| {
            let r = reduction(st, &op)?;
            let len = recv.len();
            let mut calls = Calls::default();
            match len.checked_mul(r.per).filter(|&n| n <= max) {
                Some(items) => calls.push(Call::ReduceScatterBlock {
                    send: ptr(send),
                    recv: mut_ptr(recv),
                    count: c_int::try_from(items).map_err(|_| invalid("recv: too many elements"))?,
                    ty: r.ty,
                    op: r.op,
                }),
                // Longer than one count: each rank's block is reduced to
                // it, one split reduce per rank (the blocks of a split
                // reduce-scatter would not be contiguous).
                None => {
                    for to in 0..size {
                        // SAFETY (pointer arithmetic): the send buffer
                        // holds `size` blocks of `len`.
                        let block = ptr(send)
                            .cast::<u8>()
                            .wrapping_add(to * len * std::mem::size_of::<T>())
                            .cast();
                        let into = if to == rank {
                            mut_ptr(recv)
                        } else {
                            mut_ptr::<T>(&mut [])
                        };
                        let root = c_int::try_from(to).map_err(|_| invalid("rank too large for MPI"))?;
                        elementwise_calls::<T>(&r, max, Elementwise::Reduce(root), Some(block), into, len, &mut calls)?;
                    }
                }
            }
            Ok(calls.plan(r.custom))
        })
    }

    fn split_or_dup(&self, split: Option<(Option<u32>, i32)>) -> Result<Option<Self>> {
        let (color, key) = match split {
            None => (None, 0),
            Some((color, key)) => {
                let (_, _, undefined) = sys::wildcards();
                let color = match color {
                    Some(c) => c_int::try_from(c).map_err(|_| invalid(format!("color {c} exceeds i32::MAX")))?,
                    None => undefined,
                };
                (Some(color), key)
            }
        };
        let parent = self.handles.comm.raw();
        let made = self
            .mpi
            .shared
            .with_state(|_| -> Result<Option<Fresh>> {
                let comm = match color {
                    // SAFETY: `parent` is live (we hold it); this thread
                    // may call MPI and holds the state.
                    None => Some(unsafe { sys::comm_dup(parent) }.map_err(|c| mpi_error(c, "MPI_Comm_dup"))?),
                    Some(color) => {
                        // SAFETY: as above.
                        unsafe { sys::comm_split(parent, color, key) }.map_err(|c| mpi_error(c, "MPI_Comm_split"))?
                    }
                };
                comm.map(Self::describe).transpose()
            })
            .ok_or_else(|| not_here("MPI_Comm_split"))??;
        Ok(made.map(|m| Self::wrap(&self.mpi.shared, m)))
    }
}

/// Both forms of each collective from its `prep_` function: the async one
/// starts what it prepares, the blocking one runs it.
macro_rules! both_forms {
    ($(
        $async_name:ident / $blocking_name:ident ($($arg:ident: $ty:ty),*) -> $out:ty = $prep:ident($($call:expr),*);
    )*) => {$(
        fn $async_name<T: Element>(&self, $($arg: $ty),*) -> CollFuture<$out> {
            self.start(self.$prep($($call),*))
        }

        fn $blocking_name<T: Element>(&self, $($arg: $ty),*) -> CollResult<$out> {
            self.run_now(self.$prep($($call),*))
        }
    )*};
}

impl Communicator for MpiComm {
    type Backend = Mpi;

    fn backend(&self) -> &Mpi {
        &self.mpi
    }

    fn rank(&self) -> Rank {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn dup(&self) -> Result<Self> {
        self.split_or_dup(None)?
            .ok_or_else(|| Error::new(std::io::ErrorKind::Other, "MPI_Comm_dup returned no communicator"))
    }

    fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Self>> {
        self.split_or_dup(Some((color, key)))
    }

    fn blocking_barrier(&self) -> Result<()> {
        self.run_now(self.prep_barrier()).0
    }

    fn barrier(&self) -> CollFuture<()> {
        self.start(self.prep_barrier())
    }

    both_forms! {
        bcast / blocking_bcast (buf: Vec<T>, root: Rank) -> Vec<T> = prep_bcast(buf, root);
        reduce / blocking_reduce (send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>, root: Rank) -> Pair<T>
            = prep_reduce(send, recv, op, root);
        reduce_in_place / blocking_reduce_in_place (buf: Vec<T>, op: ReduceOp<T>, root: Rank) -> Vec<T>
            = prep_reduce_in_place(buf, op, root);
        allreduce / blocking_allreduce (send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> Pair<T>
            = prep_allreduce(send, recv, op);
        allreduce_in_place / blocking_allreduce_in_place (buf: Vec<T>, op: ReduceOp<T>) -> Vec<T>
            = prep_allreduce_in_place(buf, op);
        scatter / blocking_scatter (send: Vec<T>, recv: Vec<T>, root: Rank) -> Pair<T> = prep_scatter(send, recv, root);
        scatterv / blocking_scatterv (send: Vec<T>, layout: &Counts, recv: Vec<T>, root: Rank) -> Pair<T>
            = prep_scatterv(send, layout, recv, root);
        gather / blocking_gather (send: Vec<T>, recv: Vec<T>, root: Rank) -> Pair<T>
            = prep_gather(send, recv, root, false);
        gatherv / blocking_gatherv (send: Vec<T>, recv: Vec<T>, layout: &Counts, root: Rank) -> Pair<T>
            = prep_gatherv(send, recv, layout, root, false);
        allgather / blocking_allgather (send: Vec<T>, recv: Vec<T>) -> Pair<T> = prep_gather(send, recv, 0, true);
        allgatherv / blocking_allgatherv (send: Vec<T>, recv: Vec<T>, layout: &Counts) -> Pair<T>
            = prep_gatherv(send, recv, layout, 0, true);
        alltoall / blocking_alltoall (send: Vec<T>, recv: Vec<T>) -> Pair<T> = prep_alltoall(send, recv);
        alltoallv / blocking_alltoallv (send: Vec<T>, send_layout: &Counts, recv: Vec<T>, recv_layout: &Counts) -> Pair<T>
            = prep_alltoallv(send, send_layout, recv, recv_layout);
        reduce_scatter_block / blocking_reduce_scatter_block (send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> Pair<T>
            = prep_reduce_scatter_block(send, recv, op);
        scan / blocking_scan (send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> Pair<T> = prep_scan(send, recv, op, false);
        exscan / blocking_exscan (send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> Pair<T> = prep_scan(send, recv, op, true);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Pair2 {
        a: f64,
        b: u64,
    }
    crate::element!(Pair2 { a, b });

    /// The count and datatype of a direct call, if there is one.
    fn direct<T: Element>(max: usize, op: ReduceOp<T>, len: usize) -> Option<(c_int, Datatype)> {
        let (send, mut recv) = (vec![T::zeroed(); len], vec![T::zeroed(); len]);
        let call = direct_elementwise(
            max,
            Elementwise::Allreduce,
            Some(&op),
            operands(Some(ptr(&send)), mut_ptr(&mut recv), len),
        );
        call.map(|c| match c {
            Call::Allreduce { count, ty, .. } => (count, ty),
            other => panic!("an allreduce planned as {}", other.name()),
        })
    }

    #[test]
    fn only_one_call_of_predefined_types_and_operations_skips_the_plan() {
        let f64_ty = datatype::primitive(crate::element::Primitive::F64);
        // Counted per primitive, within one count.
        assert_eq!(direct::<f64>(100, ReduceOp::Sum, 4).map(|d| d.0), Some(4));
        assert_eq!(direct::<[f64; 3]>(100, ReduceOp::Max, 4).map(|d| d.0), Some(12));
        assert!(direct::<[f64; 3]>(100, ReduceOp::Max, 4).is_some_and(|d| d.1 == f64_ty));
        // Beyond one count: split by the plan.
        assert!(direct::<f64>(3, ReduceOp::Sum, 4).is_none());
        assert!(direct::<[f64; 3]>(11, ReduceOp::Sum, 4).is_none());
        // Sums Open MPI would saturate run in Rust; other operations on
        // the same type stay MPI's.
        assert!(direct::<u8>(100, ReduceOp::Sum, 4).is_none());
        assert!(direct::<i16>(100, ReduceOp::Sum, 4).is_none());
        assert!(direct::<u8>(100, ReduceOp::Max, 4).is_some());
        // A closure, and a struct (a derived datatype), need the state.
        let combine: Arc<crate::reduce::CombineFn<f64>> = Arc::new(|inc: &[f64], acc: &mut [f64]| {
            for (a, i) in acc.iter_mut().zip(inc) {
                *a += i;
            }
        });
        let custom = ReduceOp::Custom {
            combine,
            commutative: true,
        };
        assert!(direct::<f64>(100, custom, 4).is_none());
        let mut structs = vec![Pair2 { a: 0.0, b: 0 }; 2];
        let bcast = direct_elementwise::<Pair2>(
            100,
            Elementwise::Bcast(0),
            None,
            operands(None, mut_ptr(&mut structs), 2),
        );
        assert!(bcast.is_none());
        // Empty buffers are one call too (of count 0).
        assert_eq!(direct::<f64>(100, ReduceOp::Min, 0).map(|d| d.0), Some(0));
    }
}
