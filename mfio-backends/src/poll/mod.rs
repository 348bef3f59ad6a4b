//! The poll backend: readiness-based, with file operations on a bounded
//! thread pool ([`pool`]), never on the thread that drives the backend.
//!
//! The polling handle is the backend's eventfd: submissions and finished
//! pool jobs notify it.

mod pool;

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;

use mfio_core::queue::SubmitQueue;
use mfio_core::{DriveStatus, Interest, Notifier, PollingHandle, Result};
use parking_lot::Mutex;

pub(crate) use pool::Pool;

use crate::op::Op;
use crate::runtime::{BackendKind, Engine, RuntimeBuilder};

pub(crate) struct PollEngine {
    queue: SubmitQueue<Op>,
    notifier: Arc<Notifier>,
    /// Taken from the queue, waiting for room in the pool (or for a barrier).
    backlog: Mutex<VecDeque<Op>>,
    pool: Pool,
}

impl PollEngine {
    pub(crate) fn new(b: &RuntimeBuilder) -> Result<Self> {
        let notifier = Notifier::new()?;
        Ok(Self {
            queue: SubmitQueue::new(b.queue_capacity, notifier.clone()),
            pool: Pool::new(b.pool_threads, b.window, notifier.clone())?,
            notifier,
            backlog: Mutex::new(VecDeque::new()),
        })
    }
}

/// Moves work from `backlog` to `pool` in order. A sync is a barrier: it
/// starts only once everything before it finished, like io_uring's
/// `IO_DRAIN`, so a flush never overtakes an earlier write.
pub(crate) fn dispatch(backlog: &mut VecDeque<Op>, pool: &Pool) -> usize {
    let mut started = 0;
    while let Some(op) = backlog.pop_front() {
        if matches!(op, Op::Sync { .. }) && pool.in_flight() > 0 {
            backlog.push_front(op);
            break;
        }
        match pool.try_spawn(op) {
            Ok(()) => started += 1,
            Err(op) => {
                backlog.push_front(op);
                break;
            }
        }
    }
    started
}

impl Engine for PollEngine {
    fn queue(&self) -> &SubmitQueue<Op> {
        &self.queue
    }

    fn polling_handle(&self) -> PollingHandle<'_> {
        PollingHandle {
            fd: self.notifier.as_fd(),
            interest: Interest::Readable,
            notifier: &self.notifier,
        }
    }

    fn drive(&self) -> DriveStatus {
        let Some(mut backlog) = self.backlog.try_lock() else {
            return DriveStatus::IDLE;
        };
        let room = self.pool.room().saturating_sub(backlog.len());
        let took = self.queue.take_into(&mut backlog, room);
        let started = dispatch(&mut backlog, &self.pool);
        let pool_has_room = self.pool.room() > 0;
        drop(backlog);
        if pool_has_room && !self.queue.is_empty() {
            self.notifier.notify();
        }
        DriveStatus {
            progress: took > 0 || started > 0,
            timeout: None,
        }
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Poll
    }
}
