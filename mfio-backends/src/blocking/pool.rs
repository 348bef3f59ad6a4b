//! A bounded, elastic pool of threads that run file operations as blocking
//! system calls, so the thread that drives the backend never blocks on the
//! disk.
//!
//! `min` workers start with the pool and stay. When a job is queued and no
//! idle worker is left to take it, another worker starts, up to `max`: a
//! blocking call (a device read, an `open` of a FIFO) only ever holds its
//! own thread, and deep queues of uncached reads reach the device as deep
//! queues. Workers beyond `min` leave after `idle_exit` without work.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mfio_core::{Error, Notifier, Result};
use parking_lot::{Condvar, Mutex};

use super::run_blocking;
use crate::op::{release_syncs, Request};

struct Jobs {
    queue: VecDeque<Request>,
    /// Workers waiting for a job.
    idle: usize,
    /// Workers started and not yet left.
    live: usize,
}

struct Shared {
    jobs: Mutex<Jobs>,
    ready: Condvar,
    shutdown: AtomicBool,
    /// Jobs queued or running.
    in_flight: AtomicUsize,
    capacity: usize,
    min: usize,
    max: usize,
    /// How long a worker beyond the minimum waits for work before it leaves.
    idle_exit: Duration,
    /// Told after every job, so the driver can hand over more work.
    notifier: Arc<Notifier>,
}

/// The file thread pool.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// Starts `min` workers (growing to `max` on demand, each extra one
    /// leaving after `idle_exit` without work) that hold at most `capacity`
    /// jobs in all.
    pub(crate) fn new(
        (min, max, idle_exit): (usize, usize, Duration),
        capacity: usize,
        notifier: Arc<Notifier>,
    ) -> Result<Self> {
        let min = min.max(1);
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Jobs {
                queue: VecDeque::new(),
                idle: 0,
                live: min,
            }),
            ready: Condvar::new(),
            shutdown: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            capacity: capacity.max(1),
            min,
            max: max.max(min),
            idle_exit,
            notifier,
        });
        let pool = Pool {
            shared,
            threads: Mutex::new(Vec::with_capacity(min)),
        };
        for _ in 0..min {
            pool.start_worker().map_err(Error::from)?;
        }
        Ok(pool)
    }

    fn start_worker(&self) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let mut threads = self.threads.lock();
        // Workers beyond the minimum leave on their own; collect them here.
        threads.retain(|t| !t.is_finished());
        let handle = std::thread::Builder::new()
            .name(format!("mfio-pool-{}", threads.len()))
            .spawn(move || worker(&shared))?;
        threads.push(handle);
        Ok(())
    }

    /// Hands `op` to a worker, or gives it back when the pool is full.
    pub(crate) fn try_spawn(&self, op: Request) -> std::result::Result<(), Request> {
        if self.shared.in_flight.load(Ordering::Acquire) >= self.shared.capacity {
            return Err(op);
        }
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if let Some(file) = op.written_file() {
            file.write_started();
        }
        let grow = {
            let mut jobs = self.shared.jobs.lock();
            jobs.queue.push_back(op);
            // More queued jobs than idle workers to take them: one more worker.
            let grow = jobs.queue.len() > jobs.idle && jobs.live < self.shared.max;
            if grow {
                jobs.live += 1;
            }
            grow
        };
        if !grow {
            self.shared.ready.notify_one();
        } else if self.start_worker().is_err() {
            // Out of threads: the job waits for a running worker instead.
            self.shared.jobs.lock().live -= 1;
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Moves work from `backlog` to `pool` in order. A sync whose file still
    /// has earlier writes in flight waits in `held` (and only it: nothing else
    /// waits for it, nor it for anything else), so a flush never overtakes an
    /// earlier write to its file.
    pub(crate) fn dispatch(&self, backlog: &mut VecDeque<Request>, held: &mut Vec<Request>) -> usize {
        let mut started = 0;
        release_syncs(held, backlog);
        while let Some(op) = backlog.pop_front() {
            if op.waits_for_writes() {
                held.push(op);
                continue;
            }
            match self.try_spawn(op) {
                Ok(()) => started += 1,
                Err(op) => {
                    backlog.push_front(op);
                    break;
                }
            }
        }
        started
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
    let mut jobs = shared.jobs.lock();
    loop {
        if let Some(op) = jobs.queue.pop_front() {
            drop(jobs);
            // A write's count drops inside `run_blocking`, before its
            // completion and before the notification below, so the driver
            // it wakes sees the write finished and lets a sync waiting for
            // it go.
            if shared.shutdown.load(Ordering::Acquire) {
                op.fail(Error::aborted());
            } else {
                run_blocking(op);
            }
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            shared.notifier.notify();
            jobs = shared.jobs.lock();
            continue;
        }
        if shared.shutdown.load(Ordering::Acquire) {
            jobs.live -= 1;
            return;
        }
        jobs.idle += 1;
        let timed_out = if jobs.live > shared.min {
            shared.ready.wait_for(&mut jobs, shared.idle_exit).timed_out()
        } else {
            shared.ready.wait(&mut jobs);
            false
        };
        jobs.idle -= 1;
        if timed_out && jobs.queue.is_empty() && jobs.live > shared.min {
            jobs.live -= 1;
            return;
        }
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
        for t in self.threads.get_mut().drain(..) {
            let _ = t.join();
        }
    }
}
