//! A bounded pool of threads that run file operations as blocking system
//! calls, so the thread that drives the backend never blocks on the disk.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mfio_core::{Error, Notifier, Result};
use parking_lot::{Condvar, Mutex};

use crate::op::Op;
use crate::sys::run_blocking;

struct Shared {
    jobs: Mutex<VecDeque<Op>>,
    ready: Condvar,
    shutdown: AtomicBool,
    /// Jobs queued or running.
    in_flight: AtomicUsize,
    capacity: usize,
    /// Told after every job, so the driver can hand over more work.
    notifier: Arc<Notifier>,
}

/// The file thread pool.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `threads` workers that hold at most `capacity` jobs in all.
    pub(crate) fn new(threads: usize, capacity: usize, notifier: Arc<Notifier>) -> Result<Self> {
        let shared = Arc::new(Shared {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            shutdown: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            capacity: capacity.max(1),
            notifier,
        });
        let mut pool = Pool {
            shared: shared.clone(),
            threads: Vec::with_capacity(threads),
        };
        for i in 0..threads.max(1) {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("mfio-pool-{i}"))
                .spawn(move || worker(&shared))
                .map_err(Error::from)?;
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Hands `op` to a worker, or gives it back when the pool is full.
    pub(crate) fn try_spawn(&self, op: Op) -> std::result::Result<(), Op> {
        if self.shared.in_flight.load(Ordering::Acquire) >= self.shared.capacity {
            return Err(op);
        }
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        self.shared.jobs.lock().push_back(op);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Jobs queued or running.
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Room for more jobs.
    pub(crate) fn room(&self) -> usize {
        self.shared.capacity.saturating_sub(self.in_flight())
    }
}

fn worker(shared: &Shared) {
    loop {
        let op = {
            let mut jobs = shared.jobs.lock();
            loop {
                if let Some(op) = jobs.pop_front() {
                    break op;
                }
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                shared.ready.wait(&mut jobs);
            }
        };
        if shared.shutdown.load(Ordering::Acquire) {
            op.fail(Error::aborted());
        } else {
            run_blocking(op);
        }
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        shared.notifier.notify();
    }
}

impl Drop for Pool {
    /// Jobs not yet started fail as aborted; running ones (one system call
    /// each) finish; then the workers are joined.
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            // Taking the lock orders the flag before any worker's next wait.
            let _jobs = self.shared.jobs.lock();
            self.shared.ready.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
