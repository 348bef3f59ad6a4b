//! [`Mpi`]: MPI initialised at a chosen thread level, and the backend that
//! drives every MPI request mfio posts — the request table, one
//! `MPI_Testsome` per driving step, spinning then pausing while requests
//! are pending, and finalising once the last handle is gone.

use std::collections::HashMap;
use std::ffi::c_int;
use std::fmt;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use mfio_core::cancel::Cancels;
use mfio_core::queue::Mailbox;
use mfio_core::returned::{KeyedMessage, Returned};
use mfio_core::{DriveStatus, Error, IoBackend, MissedDrives, Notifier, PollingHandle, Result};
use parking_lot::Mutex;
use slab::Slab;

use super::comm::{CommHandles, MpiComm};
use super::sys::{self, Code};

/// A pause lasts this fraction of the time waited so far.
const PAUSE_SHARE: u32 = 8;

/// How often a backend with a timeout looks for expired operations.
const EXPIRY_CHECK: Duration = Duration::from_millis(20);

/// How much concurrency MPI allows (`MPI_THREAD_*`); see the module docs
/// for what each level lets mfio do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadLevel {
    /// One thread only.
    Single,
    /// Only the initialising thread calls MPI.
    Funneled,
    /// Any thread, one at a time.
    Serialized,
    /// Any thread, concurrently.
    Multiple,
}

impl ThreadLevel {
    fn to_mpi(self) -> c_int {
        sys::thread_levels()[self as usize]
    }

    fn from_mpi(level: c_int) -> Self {
        let levels = sys::thread_levels();
        match levels.iter().position(|&l| l == level) {
            Some(1) => Self::Funneled,
            Some(2) => Self::Serialized,
            Some(3) => Self::Multiple,
            _ => Self::Single,
        }
    }
}

/// How the backend waits for MPI, which has no file descriptor to sleep on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// How long driving steps keep testing, without letting the caller
    /// sleep, once pending requests stop completing (10 ms); also how long
    /// a collective's future tests its own request (under
    /// [`ThreadLevel::Multiple`]) before the backend takes it over. MPI moves a
    /// collective's data only inside MPI calls, so a pause stalls every
    /// rank waiting on this one: measured here, a 100 µs spin made a 1 MiB
    /// allreduce 2× slower than MPI's own test loop, 2 ms made it even, and
    /// a 16 MiB one needed more (BENCHMARKS.md, "MPI collectives").
    pub spin: Duration,
    /// The longest pause between two tests after that (1 ms). Pauses grow
    /// with the time spent waiting (an eighth of it), so a pause adds at
    /// most an eighth to a wait, and a rank that waits long for others
    /// costs little CPU. Under a progress thread, also how long no caller
    /// may have driven before the thread tests.
    pub max_pause: Duration,
    /// Whether a thread of the backend's own tests pending requests while
    /// no caller does, so that collectives move while the program computes
    /// (MPI moves data only inside its calls). A caller waiting on the
    /// backend still tests and spins itself, the thread standing aside:
    /// the thread starts once no caller has driven for `max_pause`, or at
    /// once when a caller's spin is spent (the caller then sleeps until a
    /// completion wakes it), and spins and pauses as a caller would.
    /// Collectives do not test their own requests then (the thread could
    /// not see them). Needs [`ThreadLevel::Multiple`]. Off by default: a
    /// thread that spins competes with the ranks on a machine with fewer
    /// cores than threads, and a short collective costs more through the
    /// backend's records (BENCHMARKS.md, "MPI collectives").
    pub thread: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            spin: Duration::from_millis(10),
            max_pause: Duration::from_millis(1),
            thread: false,
        }
    }
}

/// Options of [`Mpi`].
#[derive(Debug, Clone)]
pub struct MpiBuilder {
    level: ThreadLevel,
    progress: Progress,
    max_count: usize,
    timeout: Option<Duration>,
}

impl MpiBuilder {
    /// How long an operation may stay pending before its caller gets a
    /// `TimedOut` error (none by default: MPI waits forever, as it would
    /// for a rank that computes for an hour before joining). MPI offers no
    /// way to abandon a collective, so its buffers stay with the backend
    /// until MPI finishes it (or the process ends); a receive is cancelled.
    /// This is how a rank learns that another left or stopped progressing.
    #[must_use]
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The thread level to ask MPI for ([`ThreadLevel::Multiple`] by
    /// default); MPI may provide less ([`Mpi::thread_level`]).
    #[must_use]
    pub fn thread_level(mut self, level: ThreadLevel) -> Self {
        self.level = level;
        self
    }

    /// How the backend waits for pending requests.
    #[must_use]
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// The most MPI elements one request carries (`i32::MAX`, MPI's
    /// limit, by default). Longer operations are split or described by
    /// datatypes made for them (see "Large counts" in the module docs); a
    /// smaller value exercises those paths.
    #[must_use]
    pub fn max_count(mut self, max_count: usize) -> Self {
        self.max_count = max_count.clamp(1, i32::MAX as usize);
        self
    }

    /// Initialises MPI (or joins the live [`Mpi`] of this process).
    ///
    /// - If mfio already initialised MPI and a handle is alive, this
    ///   returns another handle to it (with the level it was given).
    /// - If someone else initialised MPI, mfio uses it as it is and never
    ///   finalises it.
    ///
    /// # Errors
    /// - `Unsupported` if the MPI library loaded is not the one the crate
    ///   was built against (a build directory reused after switching MPI):
    ///   the constants compiled in would be wrong.
    /// - `Other` if MPI was finalised already (it cannot start again in
    ///   this process), or with MPI's message if initialisation failed.
    pub fn build(self) -> Result<Mpi> {
        let mut live = LIVE.lock();
        loop {
            if let Some(shared) = live.upgrade() {
                return Ok(Mpi { shared });
            }
            if live.ptr_eq(&Weak::new()) {
                break;
            }
            // The last handle is going and MPI is being shut down on
            // another thread; it resets `LIVE` when done (with MPI
            // finalised, or still usable if the process initialised it).
            drop(live);
            std::thread::sleep(Duration::from_millis(1));
            live = LIVE.lock();
        }
        check_implementation()?;
        let (initialised, finalised) = sys::init_state();
        if finalised {
            return Err(Error::new(
                std::io::ErrorKind::Other,
                "MPI was finalised already; it cannot be initialised again in this process",
            ));
        }
        let provided = if initialised {
            sys::query_thread().map_err(|c| mpi_error(c, "MPI_Query_thread"))?
        } else {
            keep_self_messages_in_bounds();
            // SAFETY: MPI is neither initialised nor finalised, and the
            // LIVE lock keeps other mfio threads out.
            let provided =
                unsafe { sys::init_thread(self.level.to_mpi()) }.map_err(|c| mpi_error(c, "MPI_Init_thread"))?;
            // Errors of datatypes and operations are raised on the world
            // communicator, whose default handler aborts; the process is
            // mfio's to set up, so they come back as errors instead.
            // SAFETY: MPI was just initialised, on this thread.
            unsafe { sys::errors_return_predefined() }.map_err(|c| mpi_error(c, "MPI_Comm_set_errhandler"))?;
            provided
        };
        let notifier = Notifier::new()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                timeout: self.timeout,
                ..State::default()
            }),
            deferred: Mailbox::default(),
            cancels: Cancels::new(notifier.clone()),
            returned: Arc::default(),
            notifier,
            foreign: Notifier::new()?,
            level: ThreadLevel::from_mpi(provided),
            main: std::thread::current().id(),
            progress: self.progress,
            max_count: self.max_count,
            timeout: self.timeout,
            finalize: !initialised,
            signal: Arc::default(),
            progress_thread: Mutex::new(None),
            stop: std::sync::atomic::AtomicBool::new(false),
            self_tested: AtomicUsize::new(0),
            missed: MissedDrives::default(),
            callers: Callers::default(),
        });
        if self.progress.thread {
            if shared.level < ThreadLevel::Multiple {
                return Err(Error::new(
                    std::io::ErrorKind::Unsupported,
                    format!(
                        "a progress thread needs MPI_THREAD_MULTIPLE; MPI provides {:?}",
                        shared.level
                    ),
                ));
            }
            let state = shared.clone();
            // A name of at most 15 bytes: what `ps` and /proc show whole.
            let handle = std::thread::Builder::new()
                .name("mfio-mpi-progr".into())
                .spawn(move || progress_thread(&state))?;
            *shared.progress_thread.lock() = Some(handle);
        }
        let shared = Arc::new(Owner(shared));
        *live = Arc::downgrade(&shared);
        tracing::debug!(level = ?shared.level, owned = !initialised, "MPI initialised");
        Ok(Mpi { shared })
    }
}

/// The handle of this process's MPI, if one is alive: MPI can be
/// initialised only once per process, so every `Mpi::init` while it lives
/// shares it.
/// While the last handle shuts MPI down, it points at nothing alive but is
/// not yet reset.
static LIVE: Mutex<Weak<Owner>> = Mutex::new(Weak::new());

/// Refuses to run against an MPI library other than the one whose header
/// the shim (and `mpi-sys`) were compiled with.
/// Open MPI 4.1's loopback transport (`btl self`) copies a message a rank
/// sends itself with its RDMA put or get whole, beyond a shorter receive
/// buffer: a truncated receive of more than its eager limit (1 KiB)
/// corrupts the heap (valgrind shows the write past the buffer). Without
/// put and get it sends such messages in fragments, which honour the
/// buffer and report the truncation. Set before `MPI_Init` unless the user
/// chose the flags; a process that initialised MPI itself keeps its own.
fn keep_self_messages_in_bounds() {
    const FLAGS: &str = "OMPI_MCA_btl_self_flags";
    if sys::header_implementation() == "Open MPI" && std::env::var_os(FLAGS).is_none() {
        // MPI is not initialised yet, so no thread of MPI's reads the
        // environment; a process starts MPI before its own threads, as MPI
        // asks of it.
        std::env::set_var(FLAGS, "send,inplace");
    }
}

fn check_implementation() -> Result<()> {
    let header = sys::header_implementation();
    let library = sys::library_version();
    let matches = match header {
        "Open MPI" => library.starts_with("Open MPI"),
        "MPICH" => library.starts_with("MPICH") || library.contains("MPICH Version"),
        _ => true,
    };
    if matches {
        Ok(())
    } else {
        let first_line = library.lines().next().unwrap_or("").trim().to_owned();
        Err(Error::new(
            std::io::ErrorKind::Unsupported,
            format!(
                "mfio-coll was built against {header}'s mpi.h but runs with \"{first_line}\": \
                 rebuild in a target directory of its own for this MPI (mpi-sys does not \
                 rebuild when MPI changes)"
            ),
        ))
    }
}

/// An MPI error as an mfio error: the kind from MPI's error class, MPI's
/// own message, and the call that failed.
#[cold]
pub(crate) fn mpi_error(code: Code, call: &str) -> Error {
    let kind = match sys::class(code) {
        // The receive that sees it knows its buffer's length and says so.
        sys::Class::Truncate => return Error::truncated(None, 0),
        sys::Class::InvalidArgument => std::io::ErrorKind::InvalidInput,
        _ => std::io::ErrorKind::Other,
    };
    Error::new(kind, format!("{call}: {}", sys::error_string(code)))
}

/// Work that had to wait for a thread allowed to call MPI, run by the next
/// driving step there.
pub(crate) type Deferred = Box<dyn FnOnce(&Shared, &mut State, &mut Vec<Done>) + Send>;

/// What a finished request record completes (outside the lock).
pub(crate) trait Finish: Send {
    /// Completes the operation with `result`; `status` is the status of
    /// its last request (for receives).
    fn finish(self: Box<Self>, result: Result<()>, status: &sys::Status);

    /// The operation outlived the backend's timeout: tell its caller now
    /// with `err`, while MPI keeps whatever memory it still uses until it
    /// finishes. Returns false if it has nobody to tell (nothing happens).
    fn expire(&mut self, err: Error) -> bool {
        let _ = err;
        false
    }

    /// What the operation is, for messages.
    fn name(&self) -> &'static str;
}

/// A finished operation, completed once the state is unlocked.
pub(crate) struct Done {
    work: Box<dyn Finish>,
    result: Result<()>,
    status: sys::Status,
}

impl Done {
    /// An operation that finished without MPI (refused, served locally).
    pub(crate) fn now(work: Box<dyn Finish>, result: Result<()>) -> Self {
        Self {
            work,
            result,
            status: sys::empty_status(),
        }
    }

    pub(crate) fn complete(self) {
        self.work.finish(self.result, &self.status);
    }
}

/// MPI objects an operation made for itself (a custom reduction), freed
/// under the lock once its requests finish.
pub(crate) enum Handle {
    Type(sys::Datatype),
    Op(sys::Op),
    /// Kept alive until then (the closure MPI calls).
    Held(#[allow(dead_code)] Box<dyn Send>),
}

struct Record {
    seq: u32,
    /// Requests still in flight.
    pending: usize,
    /// The first failure among its requests.
    error: Option<Error>,
    /// Whether `MPI_Cancel` applies (receives).
    cancellable: bool,
    work: Box<dyn Finish>,
    handles: Vec<Handle>,
    /// The communicator its requests run on, kept until they finish.
    _comm: Arc<CommHandles>,
    /// When its caller hears it timed out (with a timeout configured).
    deadline: Option<Instant>,
}

// SAFETY: the MPI handles in a record are used only by the thread holding
// the state; the rest is Send.
unsafe impl Send for Record {}

/// The backend's mutable state; whoever holds it may call MPI.
#[derive(Default)]
pub(crate) struct State {
    /// Requests in flight, and the record each belongs to (same index).
    reqs: Vec<sys::Request>,
    owners: Vec<usize>,
    records: Slab<Record>,
    seq: u32,
    indices: Vec<c_int>,
    statuses: Vec<sys::Status>,
    /// `(request index, status index)` of what a test found finished.
    finished: Vec<(usize, usize)>,
    /// An empty list of finished operations, kept for the next step.
    spare_done: Vec<Done>,
    /// Derived datatypes of element types, made once.
    pub(crate) types: HashMap<std::any::TypeId, sys::Datatype>,
    /// When pending requests last stopped completing.
    idle_since: Option<Instant>,
    /// How long an operation may stay pending ([`MpiBuilder::timeout`]).
    timeout: Option<Duration>,
    /// When records are next looked at for expired deadlines.
    next_expiry_check: Option<Instant>,
}

// SAFETY: as for Record: MPI handles are used under the lock only.
unsafe impl Send for State {}

impl State {
    /// Starts an operation: `start` posts its requests one by one (several
    /// for a split collective) until it returns `None`. The operation
    /// finishes once all of them do; if one fails to start, the ones
    /// started run to completion and the operation reports the failure.
    /// Returns the cancellation token.
    pub(crate) fn post(
        &mut self,
        work: Box<dyn Finish>,
        handles: Vec<Handle>,
        comm: Arc<CommHandles>,
        cancellable: bool,
        mut start: impl FnMut(usize) -> Option<std::result::Result<sys::Request, Error>>,
        done: &mut Vec<Done>,
    ) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        let deadline = self.timeout.map(mfio_core::deadline_after);
        let key = self.records.insert(Record {
            seq: self.seq,
            pending: 0,
            error: None,
            cancellable,
            work,
            handles,
            _comm: comm,
            deadline,
        });
        let token = (u64::from(self.seq) << 32) | key as u64;
        let mut part = 0;
        while let Some(started) = start(part) {
            part += 1;
            match started {
                Ok(req) => {
                    self.reqs.push(req);
                    self.owners.push(key);
                    self.records[key].pending += 1;
                }
                Err(err) => {
                    self.records[key].error = Some(err);
                    break;
                }
            }
        }
        if self.records[key].pending == 0 {
            let rec = self.records.remove(key);
            free_handles(rec.handles);
            let result = rec.error.map_or(Ok(()), Err);
            done.push(Done::now(rec.work, result));
        }
        token
    }

    /// The cancellation token the next operation posted will have (it
    /// lands in the slab's vacant slot under the next sequence number; both
    /// hold while the state stays locked).
    pub(crate) fn next_token(&self) -> u64 {
        (u64::from(self.seq.wrapping_add(1)) << 32) | self.records.vacant_key() as u64
    }

    /// Requests in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.reqs.len()
    }
}

fn free_handles(handles: Vec<Handle>) {
    for h in handles {
        match h {
            // SAFETY: made by the operation for itself, whose requests
            // have all finished; the caller holds the state.
            Handle::Type(ty) => unsafe { sys::type_free(ty) },
            // SAFETY: as above.
            Handle::Op(op) => unsafe { sys::op_free(op) },
            Handle::Held(_) => {}
        }
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    deferred: Mailbox<Deferred>,
    pub(crate) cancels: Arc<Cancels>,
    /// Messages of receives dropped after they completed (keyed by source
    /// and tag).
    pub(crate) returned: Arc<Returned<KeyedMessage>>,
    pub(crate) notifier: Arc<Notifier>,
    /// The descriptor threads that may not call MPI wait on: never signalled.
    foreign: Arc<Notifier>,
    pub(crate) level: ThreadLevel,
    main: ThreadId,
    progress: Progress,
    pub(crate) max_count: usize,
    /// How long an operation may stay pending ([`MpiBuilder::timeout`]).
    pub(crate) timeout: Option<Duration>,
    /// Whether mfio initialised MPI (and so finalises it).
    finalize: bool,
    /// Signalled when requests are posted (the progress thread waits on it).
    signal: Arc<Signal>,
    /// The progress thread, if [`Progress::thread`].
    progress_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Tells the progress thread to end.
    stop: std::sync::atomic::AtomicBool,
    /// Collectives whose futures test their own requests
    /// ([`SelfTested`](super::self_test::SelfTested)), not yet handed to
    /// the records.
    pub(crate) self_tested: AtomicUsize,
    /// Driving steps that found the state held by another thread and
    /// returned without testing.
    missed: MissedDrives,
    /// What the progress thread knows of the callers' driving steps.
    callers: Callers,
}

/// The callers' driving steps as the progress thread sees them. A caller
/// waiting in its own step answers a completion sooner than a wake-up from
/// another thread, so the thread stands aside while callers drive, and
/// takes the testing over when one goes to sleep with requests pending, or
/// none has driven for a grace period ([`Progress::max_pause`]). Left to
/// the thread alone (callers only slept until woken), every short
/// collective cost wake-ups across threads, and with two ranks' callers
/// and threads on two cores each waited for a time slice: an 8-byte
/// allreduce took 124 µs against 0.74 inline (BENCHMARKS.md, "MPI
/// collectives").
#[derive(Default)]
struct Callers {
    /// Callers inside a driving step; the thread's spin ends when one
    /// comes.
    driving: AtomicUsize,
    /// Driving steps begun so far: the thread compares it across its grace
    /// period.
    steps: AtomicUsize,
    /// A caller went to sleep with requests pending: the thread takes over
    /// now, without a grace period.
    handed_over: std::sync::atomic::AtomicBool,
    /// The thread waits with nothing pending: a post must wake it.
    thread_idle: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Whether a collective's future may test its own request while its
    /// caller spins: any thread may call MPI at any time (`Multiple`), and
    /// no progress thread tests instead.
    pub(crate) fn tests_own_requests(&self) -> bool {
        self.level == ThreadLevel::Multiple && !self.progress.thread
    }

    /// How long pending requests are tested before the caller may sleep.
    pub(crate) fn spin(&self) -> Duration {
        self.progress.spin
    }

    /// Whether this thread may call MPI at the level provided.
    pub(crate) fn may_call_here(&self) -> bool {
        self.level >= ThreadLevel::Serialized || std::thread::current().id() == self.main
    }

    /// Runs `work` with the state locked, now if this thread may call MPI,
    /// else at the next driving step of one that may. Work forwarded
    /// earlier runs first, so one thread's operations start in the order
    /// it submitted them.
    pub(crate) fn submit(&self, work: impl FnOnce(&Shared, &mut State, &mut Vec<Done>) + Send + 'static) {
        if !self.may_call_here() {
            self.defer(work);
            return;
        }
        let mut done = Vec::new();
        {
            let mut st = self.state.lock();
            self.run_deferred(&mut st, &mut done);
            work(self, &mut st, &mut done);
        }
        // Requests were posted: a sleeping driver must start testing.
        self.notifier.notify();
        if self.progress.thread && self.callers.thread_idle.load(Ordering::SeqCst) {
            self.signal.raise();
        }
        for d in done {
            d.complete();
        }
    }

    /// Runs `work` at the next driving step of a thread that may call MPI
    /// (or at shutdown), never now: the caller may hold the state.
    pub(crate) fn defer(&self, work: impl FnOnce(&Shared, &mut State, &mut Vec<Done>) + Send + 'static) {
        self.deferred.push(Box::new(work));
        self.notifier.notify();
        if self.progress.thread {
            self.signal.raise();
        }
    }

    /// Runs `f` with the state locked if this thread may call MPI (work
    /// forwarded from other threads runs first). `f` gets the guard, so it
    /// can let go of the lock around a long MPI call.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut parking_lot::MutexGuard<'_, State>) -> R) -> Option<R> {
        if !self.may_call_here() {
            return None;
        }
        let mut st = self.state.lock();
        let mut done = Vec::new();
        self.run_deferred(&mut st, &mut done);
        let out = f(&mut st);
        drop(st);
        for d in done {
            d.complete();
        }
        Some(out)
    }

    fn deferred_empty(&self) -> bool {
        self.deferred.is_empty()
    }

    fn run_deferred(&self, st: &mut State, done: &mut Vec<Done>) -> bool {
        if self.deferred.is_empty() {
            return false;
        }
        let work = self.deferred.take();
        let any = !work.is_empty();
        for w in work {
            w(self, st, done);
        }
        any
    }

    fn apply_cancels(&self, st: &mut State) {
        for token in self.cancels.take() {
            let key = (token & 0xffff_ffff) as usize;
            let seq = (token >> 32) as u32;
            let Some(rec) = st.records.get(key) else { continue };
            if rec.seq != seq || !rec.cancellable {
                continue;
            }
            for (req, _) in st.reqs.iter_mut().zip(&st.owners).filter(|(_, &o)| o == key) {
                // SAFETY: an active request of this backend, state held.
                unsafe { sys::cancel(req) };
            }
        }
    }

    /// One `MPI_Testsome` over every pending request; finished records go
    /// to `done`. Returns whether any request finished.
    fn test(&self, st: &mut State, done: &mut Vec<Done>) -> bool {
        if st.reqs.is_empty() {
            return false;
        }
        let State {
            reqs,
            owners,
            records,
            indices,
            statuses,
            finished: scratch,
            ..
        } = st;
        // SAFETY: every request is active or null; the state is held.
        let errors_in_status = match unsafe { sys::testsome(reqs, indices, statuses) } {
            Ok(flag) => flag,
            Err(code) => {
                tracing::warn!(error = %sys::error_string(code), "MPI_Testsome failed");
                return false;
            }
        };
        if indices.is_empty() {
            return false;
        }
        let finished = &mut *scratch;
        finished.clear();
        finished.extend(
            indices
                .iter()
                .zip(0..)
                .filter_map(|(&i, s)| usize::try_from(i).ok().map(|i| (i, s))),
        );
        for &(i, s) in finished.iter() {
            let key = owners[i];
            let status = &statuses[s];
            let rec = &mut records[key];
            rec.pending -= 1;
            if errors_in_status {
                let (_, _, err) = sys::status_fields(status);
                if err != 0 && rec.error.is_none() {
                    rec.error = Some(mpi_error(Code(err), "MPI request"));
                }
            }
            if rec.pending == 0 {
                let rec = records.remove(key);
                free_handles(rec.handles);
                done.push(Done {
                    work: rec.work,
                    result: rec.error.map_or(Ok(()), Err),
                    status: *status,
                });
            }
        }
        // Drop the finished (now null) requests, highest index first so
        // the lower ones stay where they are.
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        for &(i, _) in finished.iter() {
            reqs.swap_remove(i);
            owners.swap_remove(i);
        }
        true
    }

    /// Tells the callers of operations pending past their deadline, and
    /// cancels such receives. Looked at every [`EXPIRY_CHECK`] at most.
    fn expire(&self, st: &mut State, now: Instant) {
        let Some(timeout) = st.timeout else { return };
        if st.next_expiry_check.is_some_and(|t| now < t) {
            return;
        }
        st.next_expiry_check = Some(now + EXPIRY_CHECK);
        let mut expired = Vec::new();
        for (key, rec) in st.records.iter_mut() {
            if rec.deadline.is_some_and(|d| now >= d) {
                rec.deadline = None;
                let err = Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "MPI {} did not finish within {timeout:?}: a rank may have left or stopped \
                         progressing (its buffers stay with MPI until it does finish)",
                        rec.work.name()
                    ),
                );
                if rec.cancellable {
                    expired.push(key);
                } else {
                    rec.work.expire(err);
                }
            }
        }
        for (req, _) in st.reqs.iter_mut().zip(&st.owners).filter(|(_, o)| expired.contains(o)) {
            // SAFETY: an active request of this backend, state held.
            unsafe { sys::cancel(req) };
        }
    }

    /// One test of every pending request, then, with `spin`, tests on
    /// for the rest of the spin while nothing finishes. On the progress
    /// thread (`thread`), the spin also ends when a caller starts driving:
    /// it gets the state and the thread stands aside ([`Callers`]).
    fn step(
        &self,
        st: &mut parking_lot::MutexGuard<'_, State>,
        done: &mut Vec<Done>,
        spin: bool,
        thread: bool,
    ) -> DriveStatus {
        let mut progress = self.run_deferred(st, done);
        self.apply_cancels(st);
        if st.timeout.is_some() && !st.records.is_empty() {
            self.expire(st, Instant::now());
        }
        progress |= self.test(st, done);
        if progress || !done.is_empty() {
            st.idle_since = None;
        }
        if st.reqs.is_empty() {
            st.idle_since = None;
            return DriveStatus {
                progress: progress || !done.is_empty(),
                timeout: None,
            };
        }
        let now = Instant::now();
        let since = *st.idle_since.get_or_insert(now);
        let spin_until = self
            .spin_until(since)
            .filter(|&until| spin && done.is_empty() && now < until);
        if let Some(spin_until) = spin_until {
            // Keep testing for the rest of the spin: a request about to
            // finish costs a wake-up from sleep otherwise.
            let mut round = 0u32;
            loop {
                if self.test(st, done) {
                    st.idle_since = None;
                    return DriveStatus {
                        progress: true,
                        timeout: None,
                    };
                }
                round = round.wrapping_add(1);
                if round.is_multiple_of(16) {
                    // The caller's task was woken (from another thread):
                    // it goes first.
                    if Instant::now() >= spin_until || mfio_core::task_woken() {
                        break;
                    }
                    if thread && self.callers.driving.load(Ordering::SeqCst) > 0 {
                        return DriveStatus {
                            progress: !done.is_empty(),
                            timeout: None,
                        };
                    }
                    // Let a thread waiting to post go first.
                    parking_lot::MutexGuard::bump(st);
                    if self.run_deferred(st, done) {
                        return DriveStatus {
                            progress: true,
                            timeout: Some(Duration::ZERO),
                        };
                    }
                }
            }
        }
        let waited = Instant::now().saturating_duration_since(since);
        let pause = (waited / PAUSE_SHARE).min(self.progress.max_pause);
        DriveStatus {
            progress: progress || !done.is_empty(),
            timeout: Some(pause),
        }
    }

    /// How long a spinning step would spin now: the rest of the spin
    /// since the backend went idle, while requests are pending (none on a
    /// thread that may not call MPI, while another thread holds the state,
    /// or while collectives test their own requests, as in
    /// [`step`](Self::step)).
    fn spin_left(&self) -> Duration {
        if !self.may_call_here() {
            return Duration::ZERO;
        }
        let Some(st) = self.state.try_lock() else {
            return Duration::ZERO;
        };
        if st.reqs.is_empty() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        self.spin_until(st.idle_since.unwrap_or(now))
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    /// Until when a step spins when the backend went idle at `since`; none
    /// while collectives test their own requests: they keep their callers
    /// polling, and a spin here would hold them up until one of the records
    /// finishes.
    fn spin_until(&self, since: Instant) -> Option<Instant> {
        (self.self_tested.load(Ordering::Acquire) == 0).then(|| since + self.progress.spin)
    }

    /// One driving step of the caller's; with `spin`, it tests on for the
    /// rest of the spin when nothing finished.
    fn drive_step(&self, spin: bool) -> DriveStatus {
        if !self.may_call_here() {
            return DriveStatus::IDLE;
        }
        if self.progress.thread {
            return self.drive_beside_thread(spin);
        }
        let Some(st) = self.missed.try_lock(|| self.state.try_lock()) else {
            // Another thread holds the state (twice, see `MissedDrives`): it
            // tests this caller's requests too and notifies on its way out
            // if they are still pending; a pause bounds the wait all the
            // same, as MPI has no descriptor to signal a completion.
            // Reporting idle here, with no mark, let threads on one backend
            // sleep forever with finished requests nobody tested (found
            // under AddressSanitizer by `threads_on_their_own_communicators`).
            return DriveStatus::again_after(self.progress.max_pause);
        };
        self.drive_locked(st, spin).0
    }

    /// A caller's driving step under a progress thread: the caller tests
    /// and spins as without one, the thread standing aside ([`Callers`]);
    /// once the spin is spent the caller sleeps until a completion wakes
    /// it, and the thread tests meanwhile.
    fn drive_beside_thread(&self, spin: bool) -> DriveStatus {
        let callers = &self.callers;
        callers.driving.fetch_add(1, Ordering::SeqCst);
        callers.steps.fetch_add(1, Ordering::SeqCst);
        // The thread lets go within 16 tests of seeing a caller come; a
        // caller spinning lets a waiting one in as often. The caller waits
        // for the state however long the holder takes: giving up after a
        // bound (1 ms) and sleeping until woken left the testing to the
        // thread whenever it was preempted holding the state, which on a
        // loaded machine was most of the time (`the_thread_stands_aside`
        // under two busy loops: the thread ran as long as the caller).
        let (status, pending) = self.drive_locked(self.state.lock(), spin);
        callers.driving.fetch_sub(1, Ordering::SeqCst);
        let pausing = status.timeout.is_some_and(|t| !t.is_zero()) && !status.progress;
        if !(spin && pending && pausing) {
            // Done, or back at once (a step without spin is one of many in a
            // row, or its task has work of its own first): the thread takes
            // over only if no step comes within its grace period.
            return status;
        }
        // The spin is spent: the thread tests from now on, and wakes this
        // caller through the completions instead of the pauses.
        callers.handed_over.store(true, Ordering::SeqCst);
        self.signal.raise();
        DriveStatus::IDLE
    }

    /// A driving step with the state held: the step, then the completions
    /// with the state let go; also whether requests are still pending.
    fn drive_locked(&self, mut st: parking_lot::MutexGuard<'_, State>, spin: bool) -> (DriveStatus, bool) {
        if st.reqs.is_empty() && self.deferred_empty() && self.cancels.is_empty() {
            // Nothing to test or run (collectives that test their own
            // requests keep their callers polling).
            st.idle_since = None;
            return (DriveStatus::IDLE, false);
        }
        // The list of finished operations is reused from step to step: one
        // allocation fewer per collective.
        let mut done = std::mem::take(&mut st.spare_done);
        let status = self.step(&mut st, &mut done, spin, false);
        let pending = !st.reqs.is_empty();
        drop(st);
        for d in done.drain(..) {
            d.complete();
        }
        if let Some(mut st) = self.state.try_lock() {
            st.spare_done = done;
        }
        // Last, with the state let go for good: a thread found it taken
        // meanwhile and may sleep now, but its requests need testing and
        // this caller may not drive again.
        if pending && self.missed.take() {
            self.notifier.notify();
        }
        (status, pending)
    }
}

/// Wakes the progress thread (a post, or the backend going away).
#[derive(Default)]
struct Signal {
    raised: Mutex<bool>,
    cond: parking_lot::Condvar,
}

impl Signal {
    fn raise(&self) {
        *self.raised.lock() = true;
        self.cond.notify_one();
    }

    /// Waits until raised or `limit` passed; lowers it.
    fn wait(&self, limit: Duration) {
        let mut raised = self.raised.lock();
        if !*raised {
            self.cond.wait_for(&mut raised, limit);
        }
        *raised = false;
    }
}

/// The body of the progress thread: while requests are pending and no
/// caller drives ([`Callers`]), the same test-spin-pause schedule a
/// caller's driving step follows, completing what finishes (which wakes
/// the callers through their wakers); with nothing pending it waits for a
/// post. It holds the state, never an
/// [`Owner`]: the last owner is dropped on a user thread, which stops and
/// joins this thread before it shuts MPI down there. (When this thread
/// held the last handle for a round, it finalised MPI itself while the
/// main thread returned from `main`: ranks exited without `MPI_Finalize`.)
fn progress_thread(shared: &Shared) {
    let callers = &shared.callers;
    let grace = shared.progress.max_pause;
    let mut seen = callers.steps.load(Ordering::SeqCst);
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let steps = callers.steps.load(Ordering::SeqCst);
        let handed_over = callers.handed_over.swap(false, Ordering::SeqCst);
        let caller_drove = steps != seen || callers.driving.load(Ordering::SeqCst) > 0;
        seen = steps;
        if caller_drove && !handed_over {
            // A caller drives, or did within the grace period: it answers
            // sooner. A caller going to sleep raises the signal.
            shared.signal.wait(grace);
            continue;
        }
        // Marked before the state is looked at: a post made after the look
        // sees the mark and raises the signal.
        callers.thread_idle.store(true, Ordering::SeqCst);
        let mut st = shared.state.lock();
        if st.reqs.is_empty() && shared.deferred_empty() {
            drop(st);
            // The limit bounds a missed raise.
            shared.signal.wait(Duration::from_millis(50));
            callers.thread_idle.store(false, Ordering::SeqCst);
            // Whoever posted drives at once, mostly: a grace period first.
            seen = callers.steps.load(Ordering::SeqCst).wrapping_sub(1);
            continue;
        }
        callers.thread_idle.store(false, Ordering::SeqCst);
        let mut done = Vec::new();
        let status = shared.step(&mut st, &mut done, true, true);
        drop(st);
        for d in done {
            d.complete();
        }
        if let Some(pause) = status.timeout.filter(|p| !p.is_zero() && !status.progress) {
            shared.signal.wait(pause);
        }
    }
}

/// The backend as the user's handles hold it ([`Mpi`], communicators, the
/// futures of collectives): dropping the last one shuts the backend down
/// and finalises MPI, on the thread that dropped it.
pub(crate) struct Owner(Arc<Shared>);

impl std::ops::Deref for Owner {
    type Target = Arc<Shared>;

    fn deref(&self) -> &Arc<Shared> {
        &self.0
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let shared = &self.0;
        shared.stop.store(true, std::sync::atomic::Ordering::Release);
        shared.signal.raise();
        let thread = shared.progress_thread.lock().take();
        if let Some(thread) = thread {
            // A completion run by the progress thread can drop the last
            // handle (a task dropped elsewhere, held by its waker only);
            // that thread then shuts down here and ends after its round.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
        shared.shut_down();
    }
}

impl Shared {
    /// Cancels what can be, waits (bounded) for the rest, frees mfio's MPI
    /// objects and finalises MPI if mfio initialised it; then a new
    /// [`Mpi::init`] may start.
    fn shut_down(&self) {
        let mut live = LIVE.lock();
        let mut st = std::mem::take(&mut *self.state.lock());
        if !self.may_call_here() {
            // MPI may not be called here; its memory is left to the
            // process's end rather than freed under MPI's feet.
            tracing::error!(
                "the last handle of a Funneled MPI backend was dropped off its thread: \
                 MPI is neither cleaned up nor finalised"
            );
            std::mem::forget(st);
            *live = Weak::new();
            return;
        }
        let mut done = Vec::new();
        // Work forwarded from other threads (a communicator freed there)
        // still runs.
        self.run_deferred(&mut st, &mut done);
        // Receives nobody waits for any more: cancel them; collectives
        // cannot be cancelled, so wait (bounded) for them to finish.
        for (req, &owner) in st.reqs.iter_mut().zip(&st.owners) {
            if st.records.get(owner).is_some_and(|r| r.cancellable) {
                // SAFETY: an active request; we own the state.
                unsafe { sys::cancel(req) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !st.reqs.is_empty() && Instant::now() < deadline {
            self.test(&mut st, &mut done);
        }
        // The finished ones complete now: finishing reads their statuses
        // through MPI (a receive asks whether it was cancelled), which
        // must happen before MPI_Finalize.
        for d in done.drain(..) {
            d.complete();
        }
        // The communicators whose last operations just finished are freed
        // now (those of operations still pending stay with them).
        self.run_deferred(&mut st, &mut done);
        let leftover = !st.reqs.is_empty();
        if leftover {
            // MPI may still write their buffers: never free them.
            tracing::error!(
                requests = st.reqs.len(),
                "MPI requests still pending at shutdown; their buffers are leaked and MPI is not finalised"
            );
            std::mem::forget(std::mem::take(&mut st.records));
        }
        for (_, ty) in st.types.drain() {
            // SAFETY: derived types made by this backend; no request uses
            // them any more (or we do not finalise).
            unsafe { sys::type_free(ty) };
        }
        super::user_op::release_keyval();
        if self.finalize && !leftover {
            // SAFETY: the last handle into MPI is going; this thread may
            // call MPI; every communicator was freed just above (each
            // `MpiComm` holds an `Owner`, and no request holds one any
            // more).
            if let Err(code) = unsafe { sys::finalize() } {
                tracing::error!(error = %sys::error_string(code), "MPI_Finalize failed");
            }
        }
        *live = Weak::new();
    }
}

/// MPI, initialised, and the [`IoBackend`] that drives every MPI request
/// mfio makes. Cloning shares it; MPI is finalised when the last clone and
/// the last communicator are gone.
///
/// ```
/// use mfio_coll::mpi::Mpi;
/// use mfio_coll::{Communicator, ReduceOp};
/// use mfio_core::IoBackendExt;
///
/// # fn main() -> mfio_core::Result<()> {
/// let mpi = Mpi::init()?;
/// let world = mpi.world()?;
/// let mine = vec![world.rank() as u64 + 1];
/// let (result, (_mine, total)) = mpi.block_on(world.allreduce(mine, vec![0], ReduceOp::Sum)).into_parts();
/// result?;
/// assert_eq!(total[0], (1..=world.size() as u64).sum::<u64>());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Mpi {
    pub(crate) shared: Arc<Owner>,
}

impl fmt::Debug for Mpi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mpi")
            .field("thread_level", &self.shared.level)
            .finish_non_exhaustive()
    }
}

impl Mpi {
    /// Initialises MPI asking for [`ThreadLevel::Multiple`], with the
    /// default [`Progress`]; see [`MpiBuilder::build`].
    ///
    /// # Errors
    /// As [`MpiBuilder::build`].
    pub fn init() -> Result<Self> {
        Self::builder().build()
    }

    /// Options for initialising MPI.
    pub fn builder() -> MpiBuilder {
        MpiBuilder {
            level: ThreadLevel::Multiple,
            progress: Progress::default(),
            max_count: i32::MAX as usize,
            timeout: None,
        }
    }

    /// The thread level MPI provides.
    pub fn thread_level(&self) -> ThreadLevel {
        self.shared.level
    }

    /// The MPI library's own description of itself
    /// (`MPI_Get_library_version`).
    pub fn library_version(&self) -> String {
        sys::library_version()
    }

    /// A communicator over every process (a duplicate of
    /// `MPI_COMM_WORLD` with `MPI_ERRORS_RETURN`).
    ///
    /// # Errors
    /// `PermissionDenied` off the initialising thread under `Funneled`;
    /// what MPI reports.
    pub fn world(&self) -> Result<MpiComm> {
        MpiComm::dup_of(&self.shared, sys::comm_world())
    }

    /// MPI requests in flight (a collective split for large counts counts
    /// each part).
    pub fn in_flight(&self) -> usize {
        let own = self.shared.self_tested.load(Ordering::Acquire);
        self.shared.with_state(|st| st.in_flight()).unwrap_or(0) + own
    }
}

impl IoBackend for Shared {
    /// The backend's eventfd, for a thread that may call MPI. A thread
    /// that may not (under `Funneled`) gets a descriptor nobody signals:
    /// its `block_on` then sleeps until its own future is woken, and never
    /// drains the backend's eventfd. Draining it there stole the wake-up
    /// meant for the initialising thread (operations forwarded to it waited
    /// forever; found under load by `other_threads`).
    fn polling_handle(&self) -> PollingHandle<'_> {
        if self.may_call_here() {
            PollingHandle::readable(self.notifier.as_fd(), &self.notifier)
        } else {
            PollingHandle::readable(self.foreign.as_fd(), &self.foreign)
        }
    }

    fn drive(&self) -> DriveStatus {
        self.drive_step(true)
    }

    fn drive_now(&self) -> DriveStatus {
        self.drive_step(false)
    }

    fn spin_budget(&self) -> Duration {
        self.spin_left()
    }
}

impl IoBackend for Mpi {
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
