//! [`Runtime`]: the native backend (io_uring, else poll + thread pool),
//! chosen once at start-up and queryable afterwards.

use std::future::Future;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mfio_core::completion::{completion, Completer, Submission};
use mfio_core::{DriveStatus, Error, IoBackend, PollingHandle, Result};

pub use crate::engine::BackendKind;
use crate::engine::{Engine, EngineConfig};
use crate::op::{FileFd, Request, Socket};
use crate::{poll, uring};

/// Environment variable that picks the backend: `uring`, `poll` or `auto`.
pub const BACKEND_ENV: &str = "MFIO_BACKEND";

/// The native runtime: a handle on one backend instance. Cheap to clone;
/// `Send + Sync`; driven by [`IoBackend::drive`] (through `block_on` or a host
/// runtime integration).
#[derive(Clone)]
pub struct Runtime {
    engine: Arc<dyn Engine>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("kind", &self.kind()).finish()
    }
}

impl Runtime {
    /// A runtime with default settings: `Runtime::builder().build()`.
    ///
    /// # Errors
    /// As [`RuntimeBuilder::build`].
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// A builder with every option at its default.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The backend in use.
    pub fn kind(&self) -> BackendKind {
        self.engine.kind()
    }

    /// Operations the backend has taken from its queue and not completed
    /// yet: in the kernel (io_uring), on the thread pool, or waiting for a
    /// socket to become ready. For diagnostics and tests; it changes as soon
    /// as a driving step runs.
    pub fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    /// Queues `make(value)`, or hands `value` back when the queue is full.
    pub(crate) fn try_submit<V, O: Into<Request>>(
        &self,
        value: V,
        make: impl FnOnce(V) -> O,
    ) -> std::result::Result<(), V> {
        self.engine.queue().try_push_with(value, |v| make(v).into())
    }

    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.engine.queue().poll_ready(cx)
    }

    pub(crate) fn register_socket(&self, fd: OwnedFd) -> Result<Arc<Socket>> {
        self.engine.register_socket(fd)
    }

    pub(crate) fn file_fd(&self, fd: OwnedFd) -> FileFd {
        self.engine.file_fd(fd)
    }

    pub(crate) fn inline_cached_reads(&self) -> bool {
        self.engine.inline_cached_reads()
    }

    pub(crate) fn register_buffers(&self, regions: &[(*mut u8, usize)]) -> bool {
        self.engine.register_buffers(regions)
    }

    pub(crate) fn unregister_buffers(&self) {
        self.engine.unregister_buffers()
    }

    /// `count` buffers of `size` bytes starting at multiples of `align`
    /// (for `O_DIRECT`), registered with io_uring where it accepts them; see
    /// [`BufferPool`](crate::BufferPool).
    ///
    /// # Errors
    /// `InvalidInput` for an alignment that is not a power of two;
    /// `OutOfMemory` if the buffers cannot be allocated. A refused
    /// registration is not an error (the pool reports it).
    pub fn buffer_pool(&self, count: usize, size: usize, align: usize) -> Result<crate::BufferPool> {
        crate::BufferPool::new(self, count, size, align)
    }
}

impl mfio_core::completion::Submit<Request> for Runtime {
    fn try_submit(&self, op: Request) -> std::result::Result<(), Request> {
        self.engine.queue().try_push(op)
    }
    fn poll_submit_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_ready(cx)
    }
}

impl IoBackend for Runtime {
    fn polling_handle(&self) -> PollingHandle<'_> {
        self.engine.polling_handle()
    }
    fn drive(&self) -> DriveStatus {
        self.engine.drive()
    }
    fn drive_now(&self) -> DriveStatus {
        self.engine.drive_now()
    }
    fn spin_budget(&self) -> Duration {
        self.engine.spin_budget()
    }
}

/// Future of an operation that yields a `T` (an opened file, metadata).
///
/// Dropping it before completion asks the backend to cancel; if the
/// operation completes anyway, its result is released (an fd is closed).
///
/// # Panics
/// Polling it again after it returned `Ready` panics, as with every mfio
/// future.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct OpFuture<T>(Submission<T, Runtime, Request>);

impl<T> OpFuture<T> {
    /// A future for the operation `make` builds around its completer, sent
    /// to `rt` when first polled and as soon as its queue has room.
    pub(crate) fn submit<O: Into<Request>>(rt: &Runtime, make: impl FnOnce(Completer<T>) -> O) -> Self {
        let (done, completion) = completion();
        let op = make(done).into();
        let what = op.name();
        Self(Submission::new(rt.clone(), op, completion, what))
    }

    /// A future that is already complete (for errors found before submitting).
    pub(crate) fn ready(result: Result<T>) -> Self {
        Self(Submission::ready(result))
    }
}

impl<T> Future for OpFuture<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Configures a [`Runtime`]. Setters document their defaults; `build` reads
/// [`BACKEND_ENV`] once.
#[derive(Debug, Clone, Default)]
pub struct RuntimeBuilder {
    kind: Option<BackendKind>,
    config: EngineConfig,
}

impl RuntimeBuilder {
    /// Forces a backend (default: [`BACKEND_ENV`], else io_uring if it can be
    /// set up, else poll). Forcing io_uring where it is unavailable is an error.
    pub fn backend(&mut self, kind: BackendKind) -> &mut Self {
        self.kind = Some(kind);
        self
    }

    /// io_uring submission-queue entries (default 256; rounded up to a power of two).
    pub fn entries(&mut self, n: u32) -> &mut Self {
        self.config.entries = n.clamp(1, 32768);
        self
    }

    /// Kernel-side submission polling with this idle time (default off).
    pub fn sqpoll(&mut self, idle: Duration) -> &mut Self {
        self.config.sqpoll_idle = Some(idle);
        self
    }

    /// `IORING_SETUP_COOP_TASKRUN` (default on where the kernel has it, 5.19+).
    pub fn setup_coop_taskrun(&mut self, on: bool) -> &mut Self {
        self.config.coop_taskrun = on;
        self
    }

    /// `IORING_SETUP_SINGLE_ISSUER` (default off; 6.0+). Only correct if one
    /// thread, the one that builds the runtime, ever drives it.
    pub fn setup_single_issuer(&mut self, on: bool) -> &mut Self {
        self.config.single_issuer = on;
        self
    }

    /// `IORING_SETUP_DEFER_TASKRUN` (default off; 6.1+; implies single issuer).
    pub fn setup_defer_taskrun(&mut self, on: bool) -> &mut Self {
        self.config.defer_taskrun = on;
        self
    }

    /// Threads the file thread pool (poll backend) keeps running; default:
    /// cores, between 2 and 8.
    pub fn pool_threads(&mut self, n: usize) -> &mut Self {
        self.config.pool_threads = n.max(1);
        self
    }

    /// Threads the file thread pools (poll backend, and io_uring's fallback
    /// for operations the kernel lacks) may grow to while jobs wait for a
    /// free worker (default 64). A blocking call holds only its own thread,
    /// so deep queues of uncached reads reach the device as deep queues;
    /// workers beyond [`pool_threads`](Self::pool_threads) leave after
    /// [`pool_idle_exit`](Self::pool_idle_exit) without work.
    pub fn pool_max_threads(&mut self, n: usize) -> &mut Self {
        self.config.pool_max_threads = n.max(1);
        self
    }

    /// How long a pool worker beyond [`pool_threads`](Self::pool_threads)
    /// waits for work before it leaves (default 10 s).
    pub fn pool_idle_exit(&mut self, after: Duration) -> &mut Self {
        self.config.pool_idle_exit = after;
        self
    }

    /// First try each file read with `preadv2(RWF_NOWAIT)`: data already in
    /// the page cache is copied at once on the caller's thread (one system
    /// call, no ring or thread-pool round trip); anything else goes to the
    /// ring or the pool (default on, both backends; never for `O_DIRECT`
    /// files). See BENCHMARKS.md for the measurements.
    pub fn inline_cached_reads(&mut self, on: bool) -> &mut Self {
        self.config.inline_cached_reads = on;
        self
    }

    /// io_uring only: while operations are in the kernel and nothing else
    /// is to be done, a driving step watches the completion queue for up
    /// to this long before it lets the caller sleep (default zero: no
    /// spin). A completion is then reaped, and its operation's successor
    /// submitted, as soon as it lands, instead of after the thread is woken
    /// and scheduled: what keeps a fast device's queue full (fio reaps this
    /// way). It costs a core while waiting, and a waker fired by something
    /// other than this runtime is heard only when the spin ends, so keep
    /// it to tens of microseconds. See BENCHMARKS.md for the measurements.
    pub fn busy_poll(&mut self, budget: Duration) -> &mut Self {
        self.config.busy_poll = budget;
        self
    }

    /// io_uring only: treat every opcode as missing, so every operation runs
    /// on the thread pool that serves kernels without it (default off). This
    /// exists to test that fallback on a kernel that has everything.
    #[doc(hidden)]
    pub fn uring_without_opcodes(&mut self, on: bool) -> &mut Self {
        self.config.uring_without_opcodes = on;
        self
    }

    /// Operations the submission queue holds before callers wait (default 4096).
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.config.queue_capacity = n.max(1);
        self
    }

    /// Operations in flight in the kernel or the pool at most (default 4096).
    pub fn window(&mut self, n: usize) -> &mut Self {
        self.config.window = n.max(1);
        self
    }

    /// Creates the runtime, picking the backend.
    ///
    /// # Errors
    /// `InvalidInput` for an unknown [`BACKEND_ENV`] value; the setup error of
    /// a backend that was explicitly asked for; an OS error (descriptor or
    /// thread limits) if even the poll backend cannot start.
    pub fn build(&self) -> Result<Runtime> {
        let wanted = match self.kind {
            Some(kind) => Some(kind),
            None => kind_from_env()?,
        };
        let engine: Arc<dyn Engine> = match wanted {
            Some(BackendKind::Poll) => Arc::new(poll::PollEngine::new(&self.config)?),
            Some(BackendKind::Uring) => uring::UringEngine::new(&self.config)?,
            None => match uring::UringEngine::new(&self.config) {
                Ok(engine) => engine,
                Err(e) => {
                    tracing::info!(error = %e, "io_uring unavailable, using the poll backend");
                    Arc::new(poll::PollEngine::new(&self.config)?)
                }
            },
        };
        tracing::debug!(backend = %engine.kind(), "mfio runtime started");
        Ok(Runtime { engine })
    }
}

fn kind_from_env() -> Result<Option<BackendKind>> {
    parse_kind(std::env::var(BACKEND_ENV).ok().as_deref())
}

/// Parses a [`BACKEND_ENV`] value; unset, empty or `auto` means "choose".
fn parse_kind(value: Option<&str>) -> Result<Option<BackendKind>> {
    match value.map(str::trim) {
        None | Some("" | "auto") => Ok(None),
        Some("uring" | "io_uring") => Ok(Some(BackendKind::Uring)),
        Some("poll" | "epoll") => Ok(Some(BackendKind::Poll)),
        Some(other) => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{BACKEND_ENV}={other:?}: expected uring, poll or auto"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_env_values() {
        assert_eq!(parse_kind(None).expect("unset"), None);
        assert_eq!(parse_kind(Some(" auto ")).expect("auto"), None);
        assert_eq!(parse_kind(Some("uring")).expect("uring"), Some(BackendKind::Uring));
        assert_eq!(parse_kind(Some("poll")).expect("poll"), Some(BackendKind::Poll));
        let err = parse_kind(Some("kqueue")).expect_err("unknown backend");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn forced_backends_report_their_kind() {
        let poll = Runtime::builder()
            .backend(BackendKind::Poll)
            .build()
            .expect("poll always starts");
        assert_eq!(poll.kind(), BackendKind::Poll);
        match Runtime::builder().backend(BackendKind::Uring).build() {
            Ok(rt) => assert!(rt.kind().is_uring()),
            Err(e) => eprintln!("skip: io_uring unavailable here ({e})"),
        }
    }
}
