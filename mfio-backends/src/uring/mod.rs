//! The io_uring backend: one ring per runtime; everything queued during a
//! driving step goes to the kernel in one `io_uring_enter`.
//!
//! The ring posts completions to the runtime's eventfd (the polling handle).
//! Each operation in flight is kept, with every buffer and path it points
//! at, in a slab entry until its completion is reaped; its `user_data` is the
//! slab key plus a generation, so a late cancellation never hits a reused
//! slot. Opcodes the kernel lacks (per-opcode probe) run on a thread pool.

mod file;
mod net;
mod op;
mod path;
mod submitter;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use io_uring::{opcode, IoUring};
use mfio_core::queue::{Mailbox, SubmitQueue};
use mfio_core::{DriveStatus, Error, MissedDrives, Notifier, PollingHandle, Result};
use parking_lot::Mutex;
use slab::Slab;

use crate::blocking::pool::Pool;
use crate::engine::{BackendKind, Engine, EngineConfig};
use crate::op::{release_syncs, FileFd, FixedSlot, Request, Socket};
use mfio_core::cancel::Cancels;

use op::{FixedBuffers, InFlight, Prepare, Supported};
use submitter::{this_thread_submits_to, SubmitterExit};

/// `user_data` of cancellation requests, whose completions are ignored.
const CANCEL_USER_DATA: u64 = u64::MAX;

/// How long dropping the runtime waits for the kernel to let go of buffers.
const DROP_DEADLINE: Duration = Duration::from_secs(5);

/// Threads of the fallback pool (only used for opcodes the kernel lacks).
const FALLBACK_THREADS: usize = 2;

/// Slots of the registered-file table; files opened beyond it use plain
/// descriptors.
const FIXED_FILES: u32 = 1024;

struct Core {
    ring: IoUring,
    inflight: Slab<InFlight>,
    /// Taken from the queue, waiting for room in the submission queue.
    backlog: VecDeque<Request>,
    /// Waiting for room in the fallback pool.
    fallback_backlog: VecDeque<Request>,
    /// Syncs waiting for earlier writes to their file (see `Request::waits_for_writes`).
    held_syncs: Vec<Request>,
    /// The same, on their way to the fallback pool.
    fallback_held: Vec<Request>,
    /// Receives wait their turn per socket: one in the ring at a time, so
    /// each is prepared after the one before it completed and sees any bytes
    /// that one gave back (see `Socket::kept`). Keyed by socket address.
    recv_queues: HashMap<usize, VecDeque<Request>>,
    /// Slab keys of entries pushed to the submission queue that no
    /// `io_uring_enter` has taken yet, oldest first.
    unsubmitted: VecDeque<usize>,
    /// Registered buffers as (start address, length); the index is the
    /// buffer index for READ_FIXED/WRITE_FIXED.
    fixed: Vec<(usize, usize)>,
    generation: u32,
}

pub(crate) struct UringEngine {
    queue: SubmitQueue<Request>,
    notifier: Arc<Notifier>,
    cancels: Arc<Cancels>,
    core: Mutex<Core>,
    /// Steps that found `core` taken and returned at once.
    missed: MissedDrives,
    supported: Supported,
    fallback: Pool,
    window: usize,
    /// Free slots of the registered-file table (empty if the kernel has none).
    free_slots: Mutex<Vec<u32>>,
    /// Slots whose files are gone, cleared in the ring at the next step.
    released_slots: Arc<Mailbox<u32>>,
    inline_cached_reads: bool,
    /// How long a step with nothing to do watches for completions
    /// ([`RuntimeBuilder::busy_poll`](crate::RuntimeBuilder::busy_poll)).
    busy_poll: Duration,
    /// This engine, as the threads that submit to it know it (see
    /// [`submitter`]); `None` where requests never belong to a caller's
    /// thread (SQPOLL) or only one thread may ever submit (SINGLE_ISSUER).
    me: Option<Weak<dyn SubmitterExit>>,
}

impl UringEngine {
    /// One driving step; with `spin`, the busy-polling budget is spent
    /// waiting for a completion when the step found nothing.
    fn step(&self, spin: bool) -> DriveStatus {
        // A step that finds another driving returns at once: that thread
        // notifies once it lets go, and the other holders (`in_flight`,
        // buffer registration), which do not, hold the lock only a
        // moment, which the timeout bounds.
        let Some(mut core) = self.missed.try_lock(|| self.core.try_lock()) else {
            return DriveStatus::again_after(MissedDrives::RECHECK);
        };
        let room = self
            .window
            .saturating_sub(core.inflight.len() + core.backlog.len() + self.fallback.in_flight());
        self.release_slots(&mut core);
        let took = self.queue.take_into(&mut core.backlog, room);
        let cancels = self.push_cancels(&mut core);
        let pushed = self.fill(&mut core);
        // Enter the kernel if there is anything to submit, or completions
        // waiting as task work (COOP/DEFER_TASKRUN) or in an overflowed queue:
        // `submit` then asks for them (GETEVENTS).
        // Entries an earlier enter did not take (EBUSY, EAGAIN) go now.
        let pending_kernel_work = {
            let sq = core.ring.submission();
            sq.taskrun() || sq.cq_overflow() || !sq.is_empty()
        };
        if pushed + cancels > 0 || pending_kernel_work {
            // One io_uring_enter for everything queued in this step. EBUSY
            // (completion queue overflowing) clears once we reap below.
            match core.ring.submit() {
                Ok(_) => self.note_submitter(&mut core),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => tracing::warn!(error = %e, "io_uring_enter failed"),
            }
        }
        let mut reaped = Self::reap(&mut core);
        if spin && reaped + took + pushed == 0 && !self.busy_poll.is_zero() && !core.inflight.is_empty() {
            reaped = self.watch_completions(&mut core);
        }
        let open = core.inflight.len() < self.window;
        let leftover = !core.backlog.is_empty();
        drop(core);
        if (open && (leftover || !self.queue.is_empty())) | self.missed.take() {
            self.notifier.notify();
        }
        DriveStatus {
            progress: took + pushed + reaped > 0,
            timeout: None,
        }
    }

    pub(crate) fn new(b: &EngineConfig) -> Result<Arc<Self>> {
        let ring = setup(b)?;
        let notifier = Notifier::new()?;
        ring.submitter().register_eventfd(notifier.as_fd().as_raw_fd())?;
        let supported = if b.uring_without_opcodes {
            Supported::default()
        } else {
            Supported::probe(&ring)
        };
        tracing::debug!(?supported, "io_uring opcodes");
        // Registered files are an optimisation: without the table (old kernel,
        // limits) every file simply uses its descriptor.
        let free_slots = match ring.submitter().register_files_sparse(FIXED_FILES) {
            Ok(()) => (0..FIXED_FILES).rev().collect(),
            Err(e) => {
                tracing::debug!(error = %e, "no registered-file table; using plain descriptors");
                Vec::new()
            }
        };
        let fallback = Pool::new(b.pool_sizing(FALLBACK_THREADS), b.window, notifier.clone())?;
        let track_submitters = b.sqpoll_idle.is_none() && !b.single_issuer && !b.defer_taskrun;
        Ok(Arc::new_cyclic(|me: &Weak<Self>| Self {
            queue: SubmitQueue::new(b.queue_capacity, notifier.clone()),
            cancels: Cancels::new(notifier.clone()),
            fallback,
            notifier,
            core: Mutex::new(Core {
                ring,
                inflight: Slab::new(),
                backlog: VecDeque::new(),
                fallback_backlog: VecDeque::new(),
                held_syncs: Vec::new(),
                fallback_held: Vec::new(),
                recv_queues: HashMap::new(),
                unsubmitted: VecDeque::new(),
                fixed: Vec::new(),
                generation: 0,
            }),
            missed: MissedDrives::default(),
            supported,
            window: b.window,
            free_slots: Mutex::new(free_slots),
            released_slots: Arc::new(Mailbox::default()),
            inline_cached_reads: b.inline_cached_reads,
            busy_poll: b.busy_poll,
            me: track_submitters.then(|| me.clone() as Weak<dyn SubmitterExit>),
        }))
    }

    /// Clears the slots of files that are gone and makes them free again.
    fn release_slots(&self, core: &mut Core) {
        let released = self.released_slots.take();
        if released.is_empty() {
            return;
        }
        let mut free = self.free_slots.lock();
        for slot in released {
            // No operation uses the slot any more (each holds the file's
            // descriptor, which owns the slot); -1 empties it.
            if core.ring.submitter().register_files_update(slot, &[-1]).is_ok() {
                free.push(slot);
            }
        }
    }

    /// Pushes cancellation requests for live operations.
    fn push_cancels(&self, core: &mut Core) -> usize {
        let mut pushed = 0;
        for token in self.cancels.take() {
            if !is_live(&core.inflight, token) {
                continue;
            }
            let entry = opcode::AsyncCancel::new(token).build().user_data(CANCEL_USER_DATA);
            // SAFETY: a cancellation refers to no memory of ours.
            if unsafe { core.ring.submission().push(&entry) }.is_err() {
                // Full: try again on the next step.
                self.cancels.retry(token);
                break;
            }
            pushed += 1;
        }
        pushed
    }

    /// Moves backlog operations into the submission queue (or the fallback pool).
    fn fill(&self, core: &mut Core) -> usize {
        let mut pushed = 0;
        let Core {
            ring,
            inflight,
            backlog,
            fallback_backlog,
            held_syncs,
            fallback_held,
            recv_queues,
            unsubmitted,
            fixed,
            generation,
        } = core;
        release_syncs(held_syncs, backlog);
        // One view of the submission queue for the whole step: the kernel's
        // head is read once and the new tail published once, when it drops.
        let mut sq = ring.submission();
        while let Some(op) = backlog.pop_front() {
            if !op::handles(&self.supported, &op) {
                fallback_backlog.push_back(op);
                continue;
            }
            if op.waits_for_writes() {
                held_syncs.push(op);
                continue;
            }
            if sq.is_full() {
                backlog.push_front(op);
                break;
            }
            if let Request::Recv(recv) = &op {
                if let Some(waiting) = recv_queues.get_mut(&(Arc::as_ptr(&recv.sock) as usize)) {
                    // Another receive on this socket is in the ring: queue behind it.
                    waiting.push_back(op);
                    continue;
                }
            }
            let op = match op::split_large(op) {
                (op, Some(rest)) => {
                    backlog.push_front(rest);
                    op
                }
                (op, None) => op,
            };
            let key = inflight.vacant_key();
            *generation = generation.wrapping_add(1);
            let user_data = (u64::from(*generation) << 32) | key as u64;
            let cx = Prepare {
                user_data,
                cancels: &self.cancels,
                fixed: FixedBuffers {
                    ranges: fixed,
                    supported: self.supported.fixed(),
                },
            };
            let Some((entry, prepared)) = op::prepare(op, *generation, &cx) else {
                continue; // completed already (e.g. cancelled before it was sent)
            };
            // SAFETY: every buffer, path and statx struct the entry points at is
            // owned by `prepared`, which stays in the slab until this entry's
            // completion is reaped (or is leaked if the kernel never lets go).
            if unsafe { sq.push(&entry) }.is_err() {
                // Checked `is_full` above; keep the operation and retry later.
                backlog.push_front(prepared.into_op());
                break;
            }
            if let Some(file) = prepared.written_file() {
                file.write_started();
            }
            if let Some(sock) = prepared.recv_socket() {
                // Only now, with its entry in the ring, does the socket have a
                // receive in flight (one served from kept bytes never got here).
                recv_queues.insert(sock, VecDeque::new());
            }
            unsubmitted.push_back(inflight.insert(prepared));
            pushed += 1;
        }
        drop(sq);
        pushed + self.fallback.dispatch(fallback_backlog, fallback_held)
    }

    /// Records the calling thread as the submitter of the entries the last
    /// enter took (the kernel takes them oldest first; what it left is
    /// still in the submission queue).
    fn note_submitter(&self, core: &mut Core) {
        let left = core.ring.submission().len();
        let taken = core.unsubmitted.len().saturating_sub(left);
        if taken == 0 {
            return;
        }
        let id = match &self.me {
            Some(me) => this_thread_submits_to(me),
            None => 0,
        };
        for key in core.unsubmitted.drain(..taken) {
            if let Some(entry) = core.inflight.get_mut(key) {
                entry.set_submitter(id);
            }
        }
    }

    /// Watches the completion queue (shared memory: no system call until
    /// something lands) for up to the busy-poll budget; reaps what lands.
    /// Stops early when new operations are queued.
    fn watch_completions(&self, core: &mut Core) -> usize {
        let until = mfio_core::deadline_after(self.busy_poll);
        let mut round = 0u32;
        loop {
            // Completions waiting as task work need an enter to be posted.
            if core.ring.submission().taskrun() {
                if let Err(e) = core.ring.submit() {
                    tracing::debug!(error = %e, "io_uring_enter for task work failed");
                }
            }
            if !core.ring.completion().is_empty() {
                return Self::reap(core);
            }
            round = round.wrapping_add(1);
            // New work queued, the budget spent, or the caller's task woken
            // (from another thread): stop watching.
            if round % 32 == 0 && (!self.queue.is_empty() || Instant::now() >= until || mfio_core::task_woken()) {
                return 0;
            }
            std::hint::spin_loop();
        }
    }

    /// Completes every operation whose completion is in the queue.
    fn reap(core: &mut Core) -> usize {
        let Core {
            ring,
            inflight,
            recv_queues,
            backlog,
            ..
        } = core;
        let mut done = 0;
        for cqe in ring.completion() {
            let user_data = cqe.user_data();
            if user_data == CANCEL_USER_DATA {
                continue;
            }
            if !is_live(inflight, user_data) {
                continue;
            }
            let entry = inflight.remove((user_data & 0xffff_ffff) as usize);
            if let Some(file) = entry.written_file() {
                file.write_finished();
            }
            if let Some(sock) = entry.recv_socket() {
                // This socket's turn passes to its next queued receive, in order.
                if let Some(waiting) = recv_queues.remove(&sock) {
                    for op in waiting.into_iter().rev() {
                        backlog.push_front(op);
                    }
                }
            }
            // Ended only because the thread that submitted it exited (see
            // `submitter`): sent again, ahead of what came after it.
            let result = cqe.result();
            if entry.is_orphaned() && (result == -libc::ECANCELED || result == -libc::EINTR) {
                backlog.push_front(entry.into_op());
                continue;
            }
            if let Some(again) = entry.complete(result) {
                backlog.push_front(again);
                continue;
            }
            done += 1;
        }
        done
    }
}

/// True if `user_data` names an operation still in flight (same slot and generation).
fn is_live(inflight: &Slab<InFlight>, user_data: u64) -> bool {
    let key = (user_data & 0xffff_ffff) as usize;
    inflight
        .get(key)
        .is_some_and(|e| e.generation() == (user_data >> 32) as u32)
}

impl Engine for UringEngine {
    fn queue(&self) -> &SubmitQueue<Request> {
        &self.queue
    }

    fn polling_handle(&self) -> PollingHandle<'_> {
        PollingHandle::readable(self.notifier.as_fd(), &self.notifier)
    }

    fn drive(&self) -> DriveStatus {
        self.step(true)
    }

    fn drive_now(&self) -> DriveStatus {
        self.step(false)
    }

    /// The busy-polling budget, while operations are in flight.
    fn spin_budget(&self) -> Duration {
        if self.busy_poll.is_zero() {
            return Duration::ZERO;
        }
        match self.core.try_lock() {
            Some(core) if !core.inflight.is_empty() => self.busy_poll,
            _ => Duration::ZERO,
        }
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }

    fn in_flight(&self) -> usize {
        let core = self.core.lock();
        core.inflight.len() + core.held_syncs.len() + core.fallback_held.len() + self.fallback.in_flight()
    }

    fn register_buffers(&self, regions: &[(*mut u8, usize)]) -> bool {
        let mut core = self.core.lock();
        if !core.fixed.is_empty() {
            tracing::info!("io_uring already has registered buffers; this pool uses plain buffers");
            return false;
        }
        if regions.len() > usize::from(u16::MAX) {
            tracing::info!("too many buffers to register; this pool uses plain buffers");
            return false;
        }
        let iovecs: Vec<libc::iovec> = regions
            .iter()
            .map(|&(ptr, len)| libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            })
            .collect();
        // SAFETY: the buffers stay allocated and in place until
        // `unregister_buffers`, which their pool calls before freeing them.
        match unsafe { core.ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => {
                core.fixed = regions.iter().map(|&(p, l)| (p as usize, l)).collect();
                true
            }
            Err(e) => {
                tracing::info!(error = %e, "io_uring refused to register buffers; using plain buffers");
                false
            }
        }
    }

    fn unregister_buffers(&self) {
        let mut core = self.core.lock();
        if !core.fixed.is_empty() {
            let _ = core.ring.submitter().unregister_buffers();
            core.fixed.clear();
        }
    }

    fn inline_cached_reads(&self) -> bool {
        self.inline_cached_reads
    }

    fn file_fd(&self, fd: OwnedFd) -> FileFd {
        let Some(slot) = self.free_slots.lock().pop() else {
            return FileFd::new(fd, None); // table full (or absent): plain descriptor
        };
        let updated = self
            .core
            .lock()
            .ring
            .submitter()
            .register_files_update(slot, &[fd.as_raw_fd()]);
        match updated {
            Ok(1) => FileFd::new(
                fd,
                Some(FixedSlot {
                    index: slot,
                    release: self.released_slots.clone(),
                    notifier: self.notifier.clone(),
                }),
            ),
            _ => {
                self.free_slots.lock().push(slot);
                FileFd::new(fd, None)
            }
        }
    }

    /// Sockets stay in blocking mode: the ring waits for readiness itself.
    fn register_socket(&self, fd: OwnedFd) -> Result<Arc<Socket>> {
        Ok(Socket::new(fd, self.cancels.clone(), None, 0))
    }
}

impl SubmitterExit for UringEngine {
    /// Cancels the exiting thread's requests from the thread itself, while it
    /// still exists; each comes back `ECANCELED` (or completed, if it won the
    /// race) and `reap` sends it again from whichever thread drives next.
    fn submitter_exited(&self, id: u64) {
        let mut core = self.core.lock();
        // Entries pushed but not yet entered go in with the cancellations
        // below, from this thread: they are its requests too.
        let unsent: Vec<usize> = core.unsubmitted.drain(..).collect();
        for key in unsent {
            if let Some(entry) = core.inflight.get_mut(key) {
                entry.set_submitter(id);
            }
        }
        let orphans: Vec<u64> = core
            .inflight
            .iter_mut()
            .filter(|(_, e)| e.submitter() == id)
            .map(|(key, e)| {
                e.set_orphaned();
                e.user_data(key)
            })
            .collect();
        if orphans.is_empty() {
            return;
        }
        for token in orphans {
            let entry = opcode::AsyncCancel::new(token).build().user_data(CANCEL_USER_DATA);
            // SAFETY: a cancellation refers to no memory of ours.
            while unsafe { core.ring.submission().push(&entry) }.is_err() {
                // Full: hand what is queued to the kernel, then push again.
                if core.ring.submit().is_err() {
                    break;
                }
            }
        }
        if let Err(e) = core.ring.submit() {
            tracing::warn!(error = %e, "io_uring_enter failed while a submitting thread exited");
        }
        drop(core);
        self.notifier.notify();
    }
}

impl Drop for UringEngine {
    /// Cancels everything in flight and waits (up to [`DROP_DEADLINE`]) for
    /// the kernel to complete it; whatever is still in flight after that is
    /// leaked rather than freed, since the kernel may still write into it.
    fn drop(&mut self) {
        let core = self.core.get_mut();
        let held = core.held_syncs.drain(..).chain(core.fallback_held.drain(..));
        for op in core
            .backlog
            .drain(..)
            .chain(core.fallback_backlog.drain(..))
            .chain(held)
        {
            op.fail(Error::aborted());
        }
        if core.inflight.is_empty() {
            return;
        }
        let keys: Vec<u64> = core.inflight.iter().map(|(k, e)| e.user_data(k)).collect();
        let deadline = Instant::now() + DROP_DEADLINE;
        let mut pending = keys.into_iter().peekable();
        while !core.inflight.is_empty() && Instant::now() < deadline {
            while let Some(&token) = pending.peek() {
                let entry = opcode::AsyncCancel::new(token).build().user_data(CANCEL_USER_DATA);
                // SAFETY: a cancellation refers to no memory of ours.
                if unsafe { core.ring.submission().push(&entry) }.is_err() {
                    break;
                }
                pending.next();
            }
            let _ = core.ring.submit();
            if Self::reap(core) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if !core.inflight.is_empty() {
            tracing::warn!(
                operations = core.inflight.len(),
                "io_uring did not complete cancelled operations in time; leaking their buffers"
            );
            for entry in core.inflight.drain() {
                std::mem::forget(entry);
            }
        }
    }
}

/// Sets up the ring; optional flags the kernel rejects are dropped silently.
fn setup(b: &EngineConfig) -> Result<IoUring> {
    let build = |optional: bool| {
        let mut builder = IoUring::builder();
        if let Some(idle) = b.sqpoll_idle {
            builder.setup_sqpoll(u32::try_from(idle.as_millis()).unwrap_or(u32::MAX));
        }
        if optional {
            if b.coop_taskrun || b.defer_taskrun {
                // Report pending task work in the ring, so a driving step
                // knows to enter the kernel for it.
                builder.setup_taskrun_flag();
            }
            if b.coop_taskrun {
                builder.setup_coop_taskrun();
            }
            if b.single_issuer || b.defer_taskrun {
                builder.setup_single_issuer();
            }
            if b.defer_taskrun {
                builder.setup_defer_taskrun();
            }
        }
        builder.build(b.entries.next_power_of_two())
    };
    match build(true) {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!("io_uring setup flags rejected; retrying without the optional ones");
            Ok(build(false)?)
        }
        Err(e) => Err(e.into()),
    }
}
