//! The poll backend: sockets by readiness (an epoll set, edge-triggered;
//! each socket operation in `net.rs`) and file operations on the blocking
//! executor's thread pool, never on the thread that drives the backend.
//!
//! The polling handle is the epoll descriptor; the backend's eventfd is in
//! the set too, so submissions and finished pool jobs wake a sleeping driver.

mod net;

use std::collections::{HashMap, VecDeque};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mfio_core::queue::SubmitQueue;
use mfio_core::{CancelHandler, DriveStatus, Error, MissedDrives, Notifier, PollingHandle, Result};
use parking_lot::Mutex;
use rustix::event::epoll;

use crate::blocking::pool::Pool;
use crate::engine::{BackendKind, Engine, EngineConfig};
use crate::op::{FileFd, Request, Socket};
use mfio_core::cancel::Cancels;
use net::{attempt, socket_token, watch, Attempt, Wait};

/// epoll token of the backend's own eventfd.
const NOTIFIER_TOKEN: u64 = 0;
/// Events read per driving step.
const EVENTS: usize = 256;

struct Parked {
    op: Request,
    token: u64,
}

#[derive(Default)]
struct Waiters {
    readers: VecDeque<Parked>,
    writers: VecDeque<Parked>,
}

struct Core {
    /// File operations taken from the queue, waiting for room in the pool.
    backlog: VecDeque<Request>,
    /// Syncs waiting for earlier writes to their file (see `Request::waits_for_writes`).
    held_syncs: Vec<Request>,
    /// Parked socket operations, by socket token.
    waiting: HashMap<u64, Waiters>,
}

pub(crate) struct PollEngine {
    queue: SubmitQueue<Request>,
    notifier: Arc<Notifier>,
    epoll: Arc<OwnedFd>,
    cancels: Arc<Cancels>,
    core: Mutex<Core>,
    /// Steps that found `core` taken and returned at once.
    missed: MissedDrives,
    pool: Pool,
    next_token: AtomicU64,
    inline_cached_reads: bool,
}

impl PollEngine {
    pub(crate) fn new(b: &EngineConfig) -> Result<Self> {
        let notifier = Notifier::new()?;
        let epoll = Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC)?);
        epoll::add(
            &*epoll,
            notifier.as_fd(),
            epoll::EventData::new_u64(NOTIFIER_TOKEN),
            epoll::EventFlags::IN,
        )?;
        Ok(Self {
            queue: SubmitQueue::new(b.queue_capacity, notifier.clone()),
            pool: Pool::new(b.pool_sizing(b.pool_threads), b.window, notifier.clone())?,
            cancels: Cancels::new(notifier.clone()),
            notifier,
            epoll,
            core: Mutex::new(Core {
                backlog: VecDeque::new(),
                held_syncs: Vec::new(),
                waiting: HashMap::new(),
            }),
            missed: MissedDrives::default(),
            next_token: AtomicU64::new(NOTIFIER_TOKEN + 1),
            inline_cached_reads: b.inline_cached_reads,
        })
    }

    fn token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Tries a socket operation; parks it if it would block. Anything else
    /// goes to the pool's backlog.
    fn try_socket(&self, core: &mut Core, op: Request) -> bool {
        match attempt(op) {
            Err(file_op) => {
                core.backlog.push_back(file_op);
                false
            }
            Ok(Attempt::Done) => true,
            Ok(Attempt::Blocked { op, wait }) => {
                let Some(sock) = socket_token(&op) else { return true };
                let token = self.token();
                let handler: Arc<dyn CancelHandler> = self.cancels.clone();
                if let Some(op) = watch(op, &handler, token) {
                    let w = core.waiting.entry(sock).or_default();
                    let parked = Parked { op, token };
                    match wait {
                        Wait::Readable => w.readers.push_back(parked),
                        Wait::Writable => w.writers.push_back(parked),
                    }
                }
                false
            }
        }
    }

    /// Reads readiness events; returns the parked operations now worth retrying.
    fn ready_ops(&self, core: &mut Core) -> Vec<Parked> {
        let mut retry = Vec::new();
        let mut buf = [MaybeUninit::<epoll::Event>::uninit(); EVENTS];
        let ts = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        let events: Vec<(u64, epoll::EventFlags)> = match epoll::wait(&*self.epoll, &mut buf[..], Some(&ts)) {
            Ok((events, _)) => events.iter().map(|e| (e.data.u64(), e.flags)).collect(),
            Err(_) => Vec::new(),
        };
        use epoll::EventFlags as F;
        for (token, flags) in events {
            if token == NOTIFIER_TOKEN {
                continue;
            }
            let Some(w) = core.waiting.get_mut(&token) else {
                continue;
            };
            if flags.intersects(F::IN | F::HUP | F::ERR | F::RDHUP) {
                retry.extend(w.readers.drain(..));
            }
            if flags.intersects(F::OUT | F::HUP | F::ERR) {
                retry.extend(w.writers.drain(..));
            }
        }
        retry
    }

    /// Fails parked operations whose callers dropped them.
    fn apply_cancels(&self, core: &mut Core) -> bool {
        let tokens = self.cancels.take();
        if tokens.is_empty() {
            return false;
        }
        for w in core.waiting.values_mut() {
            for list in [&mut w.readers, &mut w.writers] {
                let mut kept = VecDeque::with_capacity(list.len());
                for p in list.drain(..) {
                    if tokens.contains(&p.token) {
                        p.op.fail(Error::cancelled());
                    } else {
                        kept.push_back(p);
                    }
                }
                *list = kept;
            }
        }
        true
    }
}

impl Engine for PollEngine {
    fn queue(&self) -> &SubmitQueue<Request> {
        &self.queue
    }

    fn polling_handle(&self) -> PollingHandle<'_> {
        PollingHandle::readable(self.epoll.as_fd(), &self.notifier)
    }

    fn drive(&self) -> DriveStatus {
        // A step that finds another driving returns at once: that thread
        // notifies once it lets go, and `in_flight` (which does not) holds
        // the lock only a moment, which the timeout bounds.
        let Some(mut guard) = self.missed.try_lock(|| self.core.try_lock()) else {
            return DriveStatus::again_after(MissedDrives::RECHECK);
        };
        let core = &mut *guard;
        let retry = self.ready_ops(core);
        let mut progress = self.apply_cancels(core);
        for p in retry {
            progress |= self.try_socket(core, p.op);
        }
        let mut new_ops = VecDeque::new();
        let room = self.pool.room().saturating_sub(core.backlog.len());
        let took = self.queue.take_into(&mut new_ops, room.max(1));
        for op in new_ops {
            progress |= self.try_socket(core, op);
        }
        let started = self.pool.dispatch(&mut core.backlog, &mut core.held_syncs);
        core.waiting
            .retain(|_, w| !w.readers.is_empty() || !w.writers.is_empty());
        drop(guard);
        // Looked at after letting go: work queued by a caller whose step
        // found the lock taken is seen here, or that caller's retry found
        // it free.
        let pool_has_room = self.pool.room() > 0;
        if (pool_has_room && !self.queue.is_empty()) | self.missed.take() {
            self.notifier.notify();
        }
        DriveStatus {
            progress: progress || took > 0 || started > 0,
            timeout: None,
        }
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Poll
    }

    fn in_flight(&self) -> usize {
        let core = self.core.lock();
        let parked: usize = core.waiting.values().map(|w| w.readers.len() + w.writers.len()).sum();
        parked + core.held_syncs.len() + self.pool.in_flight()
    }

    /// Page-cache hits are read on the caller's thread, sparing the pool
    /// round trip (two thread wake-ups) for data that needs no I/O.
    fn inline_cached_reads(&self) -> bool {
        self.inline_cached_reads
    }

    /// Nothing to register without a ring: buffers are used as plain ones.
    fn register_buffers(&self, _regions: &[(*mut u8, usize)]) -> bool {
        false
    }

    fn unregister_buffers(&self) {}

    fn file_fd(&self, fd: OwnedFd) -> FileFd {
        FileFd::new(fd, None)
    }

    fn register_socket(&self, fd: OwnedFd) -> Result<Arc<Socket>> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        let token = self.token();
        use epoll::EventFlags as F;
        epoll::add(
            &*self.epoll,
            &fd,
            epoll::EventData::new_u64(token),
            F::IN | F::OUT | F::RDHUP | F::ET,
        )?;
        Ok(Socket::new(fd, self.cancels.clone(), Some(self.epoll.clone()), token))
    }
}
