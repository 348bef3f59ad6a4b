//! The io_uring backend: one ring per runtime; everything queued during a
//! driving step goes to the kernel in one `io_uring_enter`.
//!
//! The ring posts completions to the runtime's eventfd (the polling handle).
//! Each operation in flight is kept, with every buffer and path it points
//! at, in a slab entry until its completion is reaped; its `user_data` is the
//! slab key plus a generation, so a late cancellation never hits a reused
//! slot. Opcodes the kernel lacks (per-opcode probe) run on a thread pool.

mod op;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, IoUring};
use mfio_core::queue::{Mailbox, SubmitQueue};
use mfio_core::{DriveStatus, Error, Notifier, PollingHandle, Result};
use parking_lot::Mutex;
use slab::Slab;

use crate::op::{Cancels, FileFd, FixedSlot, Op, Socket};
use crate::poll::{pool_dispatch, Pool};
use crate::runtime::{BackendKind, Engine, RuntimeBuilder};

use op::{FixedBuffers, InFlight, Supported};

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
    backlog: VecDeque<Op>,
    /// Waiting for room in the fallback pool.
    fallback_backlog: VecDeque<Op>,
    /// Receives wait their turn per socket: one in the ring at a time, so
    /// each is prepared after the one before it completed and sees any bytes
    /// that one gave back (see `Socket::pushback`). Keyed by socket address.
    recv_queues: HashMap<usize, VecDeque<Op>>,
    /// Registered buffers as (start address, length); the index is the
    /// buffer index for READ_FIXED/WRITE_FIXED.
    fixed: Vec<(usize, usize)>,
    generation: u32,
}

pub(crate) struct UringEngine {
    queue: SubmitQueue<Op>,
    notifier: Arc<Notifier>,
    cancels: Arc<Cancels>,
    core: Mutex<Core>,
    supported: Supported,
    fallback: Pool,
    window: usize,
    /// Free slots of the registered-file table (empty if the kernel has none).
    free_slots: Mutex<Vec<u32>>,
    /// Slots whose files are gone, cleared in the ring at the next step.
    released_slots: Arc<Mailbox<u32>>,
    inline_cached_reads: bool,
}

impl UringEngine {
    pub(crate) fn new(b: &RuntimeBuilder) -> Result<Self> {
        let ring = setup(b)?;
        let notifier = Notifier::new()?;
        ring.submitter().register_eventfd(notifier.as_fd().as_raw_fd())?;
        let supported = Supported::probe(&ring);
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
        Ok(Self {
            queue: SubmitQueue::new(b.queue_capacity, notifier.clone()),
            cancels: Cancels::new(notifier.clone()),
            fallback: Pool::new(b.pool_sizing(FALLBACK_THREADS), b.window, notifier.clone())?,
            notifier,
            core: Mutex::new(Core {
                ring,
                inflight: Slab::new(),
                backlog: VecDeque::new(),
                fallback_backlog: VecDeque::new(),
                recv_queues: HashMap::new(),
                fixed: Vec::new(),
                generation: 0,
            }),
            supported,
            window: b.window,
            free_slots: Mutex::new(free_slots),
            released_slots: Arc::new(Mailbox::default()),
            inline_cached_reads: b.inline_cached_reads,
        })
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
        for token in self.cancels.tokens.take() {
            if !is_live(&core.inflight, token) {
                continue;
            }
            let entry = opcode::AsyncCancel::new(token).build().user_data(CANCEL_USER_DATA);
            // SAFETY: a cancellation refers to no memory of ours.
            if unsafe { core.ring.submission().push(&entry) }.is_err() {
                // Full: try again on the next step.
                self.cancels.tokens.push(token);
                break;
            }
            pushed += 1;
        }
        pushed
    }

    /// Moves backlog operations into the submission queue (or the fallback pool).
    fn fill(&self, core: &mut Core) -> usize {
        let mut pushed = 0;
        while let Some(op) = core.backlog.pop_front() {
            if !self.supported.handles(&op) {
                core.fallback_backlog.push_back(op);
                continue;
            }
            if core.ring.submission().is_full() {
                core.backlog.push_front(op);
                break;
            }
            if let Op::Recv { sock, .. } = &op {
                if let Some(waiting) = core.recv_queues.get_mut(&(Arc::as_ptr(sock) as usize)) {
                    // Another receive on this socket is in the ring: queue behind it.
                    waiting.push_back(op);
                    continue;
                }
            }
            let op = match op::split_large(op) {
                (op, Some(rest)) => {
                    core.backlog.push_front(rest);
                    op
                }
                (op, None) => op,
            };
            let key = core.inflight.vacant_key();
            core.generation = core.generation.wrapping_add(1);
            let user_data = (u64::from(core.generation) << 32) | key as u64;
            let fixed = FixedBuffers {
                ranges: &core.fixed,
                supported: self.supported.fixed(),
            };
            let Some((entry, inflight)) = op::prepare(op, user_data, core.generation, &self.cancels, fixed) else {
                continue; // completed already (e.g. cancelled before it was sent)
            };
            // SAFETY: every buffer, path and statx struct the entry points at is
            // owned by `inflight`, which stays in the slab until this entry's
            // completion is reaped (or is leaked if the kernel never lets go).
            if unsafe { core.ring.submission().push(&entry) }.is_err() {
                // Checked `is_full` above; keep the operation and retry later.
                core.backlog.push_front(inflight.into_op());
                break;
            }
            if let Some(sock) = inflight.recv_socket() {
                // Only now, with its entry in the ring, does the socket have a
                // receive in flight (one served from pushback never got here).
                core.recv_queues.insert(sock, VecDeque::new());
            }
            core.inflight.insert(inflight);
            pushed += 1;
        }
        pushed + pool_dispatch(&mut core.fallback_backlog, &self.fallback)
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
            if let Some(sock) = entry.recv_socket() {
                // This socket's turn passes to its next queued receive, in order.
                if let Some(waiting) = recv_queues.remove(&sock) {
                    for op in waiting.into_iter().rev() {
                        backlog.push_front(op);
                    }
                }
            }
            entry.complete(cqe.result());
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
    fn queue(&self) -> &SubmitQueue<Op> {
        &self.queue
    }

    fn polling_handle(&self) -> PollingHandle<'_> {
        PollingHandle::readable(self.notifier.as_fd(), &self.notifier)
    }

    fn drive(&self) -> DriveStatus {
        let Some(mut core) = self.core.try_lock() else {
            return DriveStatus::IDLE;
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
        let pending_kernel_work = {
            let sq = core.ring.submission();
            sq.taskrun() || sq.cq_overflow()
        };
        if pushed + cancels > 0 || pending_kernel_work {
            // One io_uring_enter for everything queued in this step. EBUSY
            // (completion queue overflowing) clears once we reap below.
            if let Err(e) = core.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::warn!(error = %e, "io_uring_enter failed");
                }
            }
        }
        let reaped = Self::reap(&mut core);
        let open = core.inflight.len() < self.window;
        let leftover = !core.backlog.is_empty();
        drop(core);
        if open && (leftover || !self.queue.is_empty()) {
            self.notifier.notify();
        }
        DriveStatus {
            progress: took + pushed + reaped > 0,
            timeout: None,
        }
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Uring
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
            return FileFd { fd, fixed: None }; // table full (or absent): plain descriptor
        };
        let updated = self
            .core
            .lock()
            .ring
            .submitter()
            .register_files_update(slot, &[fd.as_raw_fd()]);
        match updated {
            Ok(1) => FileFd {
                fd,
                fixed: Some(FixedSlot {
                    index: slot,
                    release: self.released_slots.clone(),
                    notifier: self.notifier.clone(),
                }),
            },
            _ => {
                self.free_slots.lock().push(slot);
                FileFd { fd, fixed: None }
            }
        }
    }

    /// Sockets stay in blocking mode: the ring waits for readiness itself.
    fn register_socket(&self, fd: OwnedFd) -> Result<Arc<Socket>> {
        Ok(Arc::new(Socket {
            fd,
            pushback: Mutex::new(VecDeque::new()),
            epoll: None,
            token: 0,
            canceller: self.cancels.clone(),
        }))
    }
}

impl Drop for UringEngine {
    /// Cancels everything in flight and waits (up to [`DROP_DEADLINE`]) for
    /// the kernel to complete it; whatever is still in flight after that is
    /// leaked rather than freed, since the kernel may still write into it.
    fn drop(&mut self) {
        let core = self.core.get_mut();
        for op in core.backlog.drain(..).chain(core.fallback_backlog.drain(..)) {
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
fn setup(b: &RuntimeBuilder) -> Result<IoUring> {
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
