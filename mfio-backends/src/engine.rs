//! What an engine (io_uring, poll) provides to the runtime that selects one,
//! and the settings it is built with. Between the blocking executor below
//! and the engines above: engines implement [`Engine`], the runtime holds
//! one behind `Arc<dyn Engine>`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use mfio_core::queue::SubmitQueue;
use mfio_core::{DriveStatus, PollingHandle, Result};

use crate::op::{FileFd, Request, Socket};

/// Which backend a runtime runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Linux io_uring: one ring per runtime.
    Uring,
    /// epoll readiness, with file I/O on a bounded thread pool.
    Poll,
}

impl BackendKind {
    /// True for [`BackendKind::Uring`].
    pub fn is_uring(self) -> bool {
        self == BackendKind::Uring
    }

    /// The name used by the `MFIO_BACKEND` environment variable.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Uring => "uring",
            BackendKind::Poll => "poll",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The settings an engine is built with (the runtime builder's, validated).
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub(crate) entries: u32,
    pub(crate) sqpoll_idle: Option<Duration>,
    pub(crate) coop_taskrun: bool,
    pub(crate) single_issuer: bool,
    pub(crate) defer_taskrun: bool,
    pub(crate) pool_threads: usize,
    pub(crate) pool_max_threads: usize,
    pub(crate) pool_idle_exit: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) window: usize,
    pub(crate) inline_cached_reads: bool,
    pub(crate) busy_poll: Duration,
    pub(crate) uring_without_opcodes: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            entries: 256,
            sqpoll_idle: None,
            coop_taskrun: true,
            single_issuer: false,
            defer_taskrun: false,
            pool_threads: std::thread::available_parallelism().map_or(4, |n| n.get().clamp(2, 8)),
            pool_max_threads: 64,
            pool_idle_exit: Duration::from_secs(10),
            queue_capacity: 4096,
            window: 4096,
            inline_cached_reads: true,
            busy_poll: Duration::ZERO,
            uring_without_opcodes: false,
        }
    }
}

impl EngineConfig {
    /// A pool's sizing: (threads kept, threads at most, idle exit).
    pub(crate) fn pool_sizing(&self, keep: usize) -> (usize, usize, Duration) {
        (keep, self.pool_max_threads, self.pool_idle_exit)
    }
}

/// What a backend engine provides to the runtime.
pub(crate) trait Engine: Send + Sync {
    fn queue(&self) -> &SubmitQueue<Request>;
    fn polling_handle(&self) -> PollingHandle<'_>;
    fn drive(&self) -> DriveStatus;
    /// As `drive`, without a busy-polling spin ([`IoBackend::drive_now`](mfio_core::IoBackend::drive_now)).
    fn drive_now(&self) -> DriveStatus {
        self.drive()
    }
    /// [`IoBackend::spin_budget`](mfio_core::IoBackend::spin_budget).
    fn spin_budget(&self) -> Duration {
        Duration::ZERO
    }
    fn kind(&self) -> BackendKind;
    /// Prepares a new socket for this backend (non-blocking and registered
    /// for readiness on poll; as it is on io_uring).
    fn register_socket(&self, fd: OwnedFd) -> Result<Arc<Socket>>;
    /// Registers buffers for fixed-buffer I/O; false if not done (an
    /// optimisation only).
    fn register_buffers(&self, regions: &[(*mut u8, usize)]) -> bool;
    /// Undoes `register_buffers`.
    fn unregister_buffers(&self);
    /// True if file reads should first be tried inline from the page cache.
    fn inline_cached_reads(&self) -> bool {
        false
    }
    /// Wraps a newly opened descriptor, giving it a registered-file slot
    /// where the backend has one free.
    fn file_fd(&self, fd: OwnedFd) -> FileFd;
    /// Operations handed to the kernel, the pool or parked on a socket.
    fn in_flight(&self) -> usize;
}
