//! [`IoBackend`]: a pollable handle plus a way to drive the backend, and
//! [`block_on`], which drives a backend and a future together.

use std::future::Future;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};

use crate::error::Result;

/// Readiness to wait for on a [`PollingHandle`]'s file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Wait until the descriptor is readable (`POLLIN`).
    Readable,
    /// Wait until the descriptor is writable (`POLLOUT`).
    Writable,
}

/// What a host event loop needs to wait for a backend: a file descriptor, the
/// readiness that means "drive me", and the backend's [`Notifier`].
#[derive(Debug, Clone, Copy)]
pub struct PollingHandle<'a> {
    /// The descriptor to wait on.
    pub fd: BorrowedFd<'a>,
    /// The readiness to wait for.
    pub interest: Interest,
    /// Wakes whoever waits on `fd` from any thread.
    pub notifier: &'a Arc<Notifier>,
}

impl<'a> PollingHandle<'a> {
    /// A handle that is ready when `fd` is readable (every backend here: an
    /// eventfd, an epoll set, a ring's registered eventfd).
    pub fn readable(fd: BorrowedFd<'a>, notifier: &'a Arc<Notifier>) -> Self {
        Self {
            fd,
            interest: Interest::Readable,
            notifier,
        }
    }
}

/// What one driving step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriveStatus {
    /// True if the step submitted or completed anything (a waiter may have
    /// been woken), so the caller should poll its futures again.
    pub progress: bool,
    /// If set, the backend wants to be driven again after this long even if
    /// its descriptor stays quiet (delayed completions, timers, spinning).
    pub timeout: Option<Duration>,
}

impl DriveStatus {
    /// A step that did nothing and wants nothing.
    pub const IDLE: Self = Self {
        progress: false,
        timeout: None,
    };

    /// A step that did nothing but wants to be driven again after `after`.
    pub const fn again_after(after: Duration) -> Self {
        Self {
            progress: false,
            timeout: Some(after),
        }
    }
}

/// Lets a driving step that finds another thread driving return at once
/// without losing a wake-up.
///
/// The thread driving tests everyone's operations, and completing one wakes
/// its caller; but it may stop before the other callers' operations finish
/// (its own did) and never drive again. If what is still in flight would
/// not signal the backend's descriptor by itself (MPI has none; a UCX
/// worker signals only once armed), a caller that returned at once and
/// went to sleep would sleep through its completion. So the caller leaves
/// a mark ([`try_lock`](Self::try_lock)) and the driving thread, once it let
/// go for good, notifies if it finds one ([`take`](Self::take)): either
/// the driving thread sees the mark, or the caller's second try finds the
/// lock free. Other holders of the lock (a thread posting) do not look for
/// marks, so such a caller also asks to be driven again soon
/// ([`DriveStatus::timeout`]): the mark makes it prompt, the timeout makes
/// it certain.
///
/// ```
/// use std::sync::Mutex;
/// use mfio_core::MissedDrives;
///
/// let (state, missed) = (Mutex::new(0u32), MissedDrives::default());
/// let held = state.lock().unwrap();
/// // Another thread's step: the state is taken, and still is on its retry.
/// assert!(missed.try_lock(|| state.try_lock().ok()).is_none());
/// drop(held);
/// // The driving thread, having let go: someone returned meanwhile, once.
/// assert!(missed.take());
/// assert!(!missed.take());
/// // A step that finds the lock free drives, and leaves no mark.
/// assert!(missed.try_lock(|| state.try_lock().ok()).is_some());
/// assert!(!missed.take());
/// ```
#[derive(Debug, Default)]
pub struct MissedDrives {
    missed: AtomicBool,
}

impl MissedDrives {
    /// How soon a step that found the lock taken asks to be driven again
    /// where nothing else bounds the wait.
    pub const RECHECK: Duration = Duration::from_millis(1);

    /// A driving step's `try_lock`: if the lock is taken, leaves the mark
    /// and tries once more (the holder may have let go before it could see
    /// the mark). `None`: the caller returns at once, asking to be driven
    /// again soon.
    pub fn try_lock<G>(&self, try_lock: impl Fn() -> Option<G>) -> Option<G> {
        try_lock().or_else(|| {
            self.missed.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            try_lock()
        })
    }

    /// Called by the driving thread after it let go of the lock: whether a
    /// step was missed meanwhile (the mark is consumed); if so, and work is
    /// still in flight, it should [`Notifier::notify`].
    pub fn take(&self) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.missed.load(Ordering::Relaxed) && self.missed.swap(false, Ordering::AcqRel)
    }
}

/// A backend that can be polled through one file descriptor and driven in steps.
///
/// Contract for implementors:
/// - [`drive`](Self::drive) submits what was queued, reaps completions and
///   wakes their waiters, without blocking. One thread drives at a time: a
///   call made while another thread drives returns at once, and the driving
///   thread calls [`Notifier::notify`] on its way out if it left queued
///   work, or work in flight whose completion does not signal the
///   descriptor by itself while a call returned at once ([`MissedDrives`]).
/// - Work queued from any thread calls [`Notifier::notify`], which costs a
///   syscall only if someone sleeps on the handle.
pub trait IoBackend {
    /// The handle to wait on between driving steps.
    fn polling_handle(&self) -> PollingHandle<'_>;

    /// Runs one non-blocking driving step.
    fn drive(&self) -> DriveStatus;

    /// A driving step for a caller with work of its own ready to run (a
    /// task that woke itself): as [`drive`](Self::drive), but a backend
    /// that spins a bounded budget for completions while work is pending
    /// (UCX, MPI, a busy-polling ring) does not spin, so the caller goes
    /// on at once. Backends without such a spin need not implement it.
    fn drive_now(&self) -> DriveStatus {
        self.drive()
    }

    /// How long a [`drive`](Self::drive) step called now would spin for a
    /// completion if it found none (zero for a backend that never spins,
    /// or has nothing pending). A driver of several backends
    /// (`mfio_backends::Composite`) steps them all with
    /// [`drive_now`](Self::drive_now) for that long instead of letting one
    /// member's spin hold up the others. Backends without such a spin need
    /// not implement it.
    fn spin_budget(&self) -> Duration {
        Duration::ZERO
    }
}

/// Provided methods on every [`IoBackend`].
pub trait IoBackendExt: IoBackend {
    /// Runs `fut` to completion on this thread while driving the backend.
    /// See [`block_on`].
    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        block_on(self, fut)
    }

    /// As [`block_on`](Self::block_on), for a future that waits for a
    /// peer. See [`block_on_waiting`].
    fn block_on_waiting<F: Future>(&self, fut: F) -> F::Output {
        block_on_waiting(self, fut)
    }
}

impl<T: IoBackend + ?Sized> IoBackendExt for T {}

impl<T: IoBackend + ?Sized> IoBackend for &T {
    fn polling_handle(&self) -> PollingHandle<'_> {
        (**self).polling_handle()
    }
    fn drive(&self) -> DriveStatus {
        (**self).drive()
    }
    fn drive_now(&self) -> DriveStatus {
        (**self).drive_now()
    }
    fn spin_budget(&self) -> Duration {
        (**self).spin_budget()
    }
}

impl<T: IoBackend + ?Sized> IoBackend for Arc<T> {
    fn polling_handle(&self) -> PollingHandle<'_> {
        (**self).polling_handle()
    }
    fn drive(&self) -> DriveStatus {
        (**self).drive()
    }
    fn drive_now(&self) -> DriveStatus {
        (**self).drive_now()
    }
    fn spin_budget(&self) -> Duration {
        (**self).spin_budget()
    }
}

/// An eventfd that wakes whoever sleeps on a backend, costing a syscall only
/// when someone actually sleeps and has not been notified yet.
#[derive(Debug)]
pub struct Notifier {
    efd: OwnedFd,
    sleepers: AtomicUsize,
    notified: AtomicBool,
}

impl Notifier {
    /// A new notifier with its own non-blocking, close-on-exec eventfd.
    ///
    /// # Errors
    /// The OS error of `eventfd(2)` (e.g. `EMFILE`).
    pub fn new() -> Result<Arc<Self>> {
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Arc::new(Self {
            efd,
            sleepers: AtomicUsize::new(0),
            notified: AtomicBool::new(false),
        }))
    }

    /// Wakes sleepers on this notifier's descriptor. Free (two atomic loads)
    /// when nobody sleeps or a notification is already pending.
    pub fn notify(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 && !self.notified.swap(true, Ordering::SeqCst) {
            let _ = rustix::io::write(&self.efd, &1u64.to_ne_bytes());
        }
    }

    /// A notification is pending: written to the eventfd and not yet
    /// consumed ([`clear`](Self::clear), [`drain`](Self::drain)). Only a
    /// notifier with a sleeper is ever notified. A driver that spins over
    /// backends it sleeps on watches this to stop when one of them signals.
    pub fn is_notified(&self) -> bool {
        self.notified.load(Ordering::SeqCst)
    }

    /// Declares the caller a sleeper until the guard drops: from now on
    /// [`notify`](Self::notify) writes the eventfd. Host event loops that
    /// keep the descriptor registered hold one guard for as long as they do.
    pub fn sleeper(&self) -> SleeperGuard<'_> {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        SleeperGuard { notifier: self }
    }

    /// Like [`sleeper`](Self::sleeper), but owning a reference to the
    /// notifier, for host event loops that stay registered across awaits.
    pub fn sleeper_owned(self: &Arc<Self>) -> OwnedSleeperGuard {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        OwnedSleeperGuard { notifier: self.clone() }
    }

    /// Consumes a pending notification (drains the eventfd) if there is one.
    ///
    /// Reads before resetting the flag: a `notify` that lands in between
    /// finds the flag still set and skips its write, which is fine because
    /// the caller is awake; resetting first could let our read swallow that
    /// write and leave the flag set with nothing to read, losing every later
    /// notification.
    pub fn clear(&self) {
        if self.notified.load(Ordering::Acquire) {
            self.drain();
        }
    }

    /// Drains the eventfd whether or not [`notify`](Self::notify) wrote it:
    /// for descriptors other writers signal too (an io_uring ring registers
    /// it for completions). Called by a driver after it woke up.
    ///
    /// The flag is reset only when a count was read: a `notify` that set it
    /// and has not written yet (its write lands after this read) must find
    /// it still set once it writes, so that the next [`clear`](Self::clear)
    /// reads that write. Reset regardless, the descriptor would stay
    /// readable with the flag down, which nothing clears: every sleep on it
    /// would return at once, spinning until the next notification.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        if matches!(rustix::io::read(&self.efd, &mut buf), Ok(8)) {
            self.notified.store(false, Ordering::SeqCst);
        }
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }
}

/// Returned by [`Notifier::sleeper`]; stops counting the caller as a sleeper
/// and consumes any pending notification when dropped.
#[derive(Debug)]
pub struct SleeperGuard<'a> {
    notifier: &'a Notifier,
}

impl Drop for SleeperGuard<'_> {
    fn drop(&mut self) {
        self.notifier.sleepers.fetch_sub(1, Ordering::SeqCst);
        self.notifier.clear();
    }
}

/// Returned by [`Notifier::sleeper_owned`]; like [`SleeperGuard`].
#[derive(Debug)]
pub struct OwnedSleeperGuard {
    notifier: Arc<Notifier>,
}

impl Drop for OwnedSleeperGuard {
    fn drop(&mut self) {
        self.notifier.sleepers.fetch_sub(1, Ordering::SeqCst);
        self.notifier.clear();
    }
}

/// The per-thread wake-up descriptor of `block_on`.
///
/// Each thread gets its own so that two threads blocking on one backend never
/// steal each other's wake-ups; it lives as long as the thread.
struct ThreadWake {
    notifier: Arc<Notifier>,
}

thread_local! {
    static THREAD_WAKE: std::cell::OnceCell<Option<Arc<Notifier>>> = const { std::cell::OnceCell::new() };
}

fn thread_notifier() -> Option<Arc<Notifier>> {
    THREAD_WAKE.with(|cell| cell.get_or_init(|| Notifier::new().ok()).clone())
}

struct BlockOnWake {
    woken: AtomicBool,
    thread: Option<ThreadWake>,
}

impl Wake for BlockOnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        // Many completions in one driving step wake the same task: only the
        // first pays for the store. SeqCst pairs with the driver's swap, so a
        // `true` seen here is one the driver has not consumed yet.
        if !self.woken.load(Ordering::SeqCst) {
            self.woken.store(true, Ordering::SeqCst);
        }
        if let Some(thread) = &self.thread {
            thread.notifier.notify();
        }
    }
}

/// Runs `fut` to completion on the current thread, driving `backend` between
/// polls and sleeping in `poll(2)` on its descriptor (and a per-thread wake
/// descriptor) when neither can make progress.
///
/// A wake from the thread itself costs no syscall; a wake from another thread
/// costs one `write` only while this thread sleeps. If the per-thread eventfd
/// cannot be created (descriptor limit), it falls back to short timed sleeps.
pub fn block_on<B: IoBackend + ?Sized, F: Future>(backend: &B, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    // A future ready at its first poll (a short collective, a read served
    // from memory) needs no wake state: polled with a waker that does
    // nothing, it costs no thread-local lookup. One that is not is polled
    // again at once with the real waker, the one it must then wake (a
    // future wakes the waker of its latest poll).
    if let Poll::Ready(out) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return out;
    }
    let state = ReusedWake::take();
    let out = run_to_completion(backend, fut.as_mut(), &state);
    state.give_back();
    out
}

/// [`block_on`] for a future that is seldom ready at its first poll (one
/// that waits for a peer, such as a collective over a network): polled at
/// once with the waker it must wake. `block_on` first polls with a waker
/// that does nothing, which saves a ready future the thread's wake state
/// but costs a future that waits a whole poll more (an 8-byte allgather
/// over UCX on 2 ranks: about 1 000 instructions of some 11 000).
pub fn block_on_waiting<B: IoBackend + ?Sized, F: Future>(backend: &B, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let state = ReusedWake::take();
    let out = run_to_completion(backend, fut.as_mut(), &state);
    state.give_back();
    out
}

/// The loop of [`block_on`] and [`block_on_waiting`], with the wake state:
/// the first poll is at once.
#[inline]
fn run_to_completion<B: IoBackend + ?Sized, F: Future>(
    backend: &B,
    mut fut: Pin<&mut F>,
    state: &ReusedWake,
) -> F::Output {
    let wake = &state.wake;
    // Set once the backend is first driven (a future ready at its first
    // poll, as a short collective often is, pays for neither this nor the
    // polling handle).
    let mut running: Option<Running> = None;
    let mut cx = Context::from_waker(&state.waker);
    // Polled at once: with `block_on`, its first poll had a waker that does
    // nothing; with `block_on_waiting`, this is its first.
    let mut first = true;
    loop {
        let poll_now = if first {
            first = false;
            true
        } else {
            wake.woken.swap(false, Ordering::SeqCst)
        };
        if poll_now {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
        }
        // A step may spin for completions; the spin ends when this task
        // is woken (`task_woken`), which looks at the thread's running
        // `block_on`.
        if running.is_none() {
            running = Some(Running::enter(wake));
        }
        // A future that woke itself goes on at once: the step does not
        // spin for completions (it still runs, so a future that keeps
        // waking itself cannot starve the backend).
        let status = if wake.woken.load(Ordering::Acquire) {
            backend.drive_now()
        } else {
            backend.drive()
        };
        if status.progress || wake.woken.load(Ordering::Acquire) {
            continue;
        }
        // About to sleep: announce it, then look once more so nothing queued
        // between the last step and the announcement is missed.
        let handle = backend.polling_handle();
        let _backend_sleeper = handle.notifier.sleeper();
        let _thread_sleeper = wake.thread.as_ref().map(|t| t.notifier.sleeper());
        let status = backend.drive();
        if status.progress || wake.woken.load(Ordering::SeqCst) {
            continue;
        }
        sleep_on(handle, wake.thread.as_ref(), status.timeout);
        // Completions may have been signalled by someone other than `notify`
        // (the kernel, for a ring); left unread they would keep the
        // descriptor readable and turn every later sleep into a spin.
        handle.notifier.drain();
    }
}

/// The instant `after` from now. Where that is past what [`Instant`] can
/// hold (`Duration::MAX` given as "no limit", say), an instant a century
/// away instead: a spin, a busy poll or a timeout of any length ends its
/// wait there, where `Instant + Duration` would panic.
#[must_use]
pub fn deadline_after(after: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// Whether the task of the [`block_on`] running on this thread (the
/// innermost, if they nest) was woken since it was last polled.
///
/// A driving step that spins for completions looks at this now and then
/// and ends its spin when it turns true: the wake may come from another
/// thread (a pool thread's completion, a channel, a timer thread), and the
/// task should run now, not once the spin is spent. Without it, such a
/// wake waited for the whole spin (a UCX worker's, the MPI backend's, a
/// busy-polling ring's: up to the budget the user set). False where no
/// `block_on` runs (a host runtime drives the backend).
pub fn task_woken() -> bool {
    RUNNING
        .try_with(|r| {
            let running = r.take();
            let woken = running.as_ref().is_some_and(|w| w.woken.load(Ordering::Acquire));
            r.set(running);
            woken
        })
        .unwrap_or(false)
}

/// Marks a `block_on`'s wake state as the thread's running one until
/// dropped (then the one it nested in, if any, again).
struct Running {
    outer: Option<Arc<BlockOnWake>>,
}

impl Running {
    fn enter(wake: &Arc<BlockOnWake>) -> Self {
        let outer = RUNNING.try_with(|r| r.replace(Some(wake.clone()))).ok().flatten();
        Self { outer }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let outer = self.outer.take();
        let _ = RUNNING.try_with(|r| r.set(outer));
    }
}

thread_local! {
    /// The wake state of the `block_on` running on this thread.
    static RUNNING: std::cell::Cell<Option<Arc<BlockOnWake>>> = const { std::cell::Cell::new(None) };
    /// The wake state of the thread's last `block_on` and its waker,
    /// reused by the next one when nothing else holds it (a call that
    /// blocks once per operation otherwise pays an allocation, and the
    /// waker's reference counting, per operation).
    static SPARE_WAKE: std::cell::Cell<Option<ReusedWake>> = const { std::cell::Cell::new(None) };
}

/// A `block_on`'s wake state and the waker made of it.
struct ReusedWake {
    wake: Arc<BlockOnWake>,
    waker: Waker,
}

impl ReusedWake {
    /// The thread's spare if no stale clone of its waker holds it (its own
    /// waker is the second reference), else a new one.
    fn take() -> Self {
        let spare = SPARE_WAKE
            .with(std::cell::Cell::take)
            .filter(|s| Arc::strong_count(&s.wake) == 2);
        match spare {
            Some(spare) => {
                // Unshared: a wake left over from its last use is stale.
                spare.wake.woken.store(false, Ordering::Relaxed);
                spare
            }
            None => {
                let wake = Arc::new(BlockOnWake {
                    woken: AtomicBool::new(false),
                    thread: thread_notifier().map(|notifier| ThreadWake { notifier }),
                });
                let waker = Waker::from(wake.clone());
                Self { wake, waker }
            }
        }
    }

    /// Keeps it as the thread's spare, for the next `block_on`.
    fn give_back(self) {
        // `try_with`: the thread's locals may be gone already (a block_on
        // in another local's destructor).
        let _ = SPARE_WAKE.try_with(|c| c.set(Some(self)));
    }
}

/// Upper bound for one sleep when there is no per-thread wake descriptor.
const FALLBACK_SLEEP: Duration = Duration::from_millis(1);

fn sleep_on(handle: PollingHandle<'_>, thread: Option<&ThreadWake>, timeout: Option<Duration>) {
    let flags = match handle.interest {
        Interest::Readable => PollFlags::IN,
        Interest::Writable => PollFlags::OUT,
    };
    let timeout = match thread {
        Some(_) => timeout,
        None => Some(timeout.map_or(FALLBACK_SLEEP, |t| t.min(FALLBACK_SLEEP))),
    };
    let ts = timeout.map(|t| Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let mut fds = [
        PollFd::from_borrowed_fd(handle.fd, flags),
        PollFd::from_borrowed_fd(thread.map_or(handle.fd, |t| t.notifier.as_fd()), PollFlags::IN),
    ];
    // EINTR or any other poll failure just ends this sleep; the loop re-checks.
    let _ = poll(&mut fds, ts.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline is `after` from now; one too far for an `Instant`
    /// (`Duration::MAX`) is a century away, not a panic.
    #[test]
    fn deadlines_near_and_beyond_what_an_instant_holds() {
        let before = Instant::now();
        let soon = deadline_after(Duration::from_secs(1));
        assert!(soon >= before + Duration::from_secs(1));
        assert!(soon < Instant::now() + Duration::from_secs(2));
        let never = deadline_after(Duration::MAX);
        assert!(never > before + Duration::from_secs(99 * 365 * 24 * 3600));
        assert!(deadline_after(Duration::ZERO) <= Instant::now());
    }

    /// A `notify` whose write lands after a drain read nothing (it had set
    /// the flag already): the flag stays up, so the next clear reads the
    /// write and the descriptor is quiet again.
    #[test]
    fn a_late_notification_is_cleared_by_the_next_clear() {
        let n = Notifier::new().expect("eventfd");
        let _sleeper = n.sleeper();
        // The notify's swap, its write not made yet.
        n.notified.store(true, Ordering::SeqCst);
        n.drain();
        rustix::io::write(&n.efd, &1u64.to_ne_bytes()).expect("the late write");
        assert!(n.is_notified(), "the flag went down before the write it stands for");
        n.clear();
        let mut buf = [0u8; 8];
        assert_eq!(
            rustix::io::read(&n.efd, &mut buf),
            Err(rustix::io::Errno::AGAIN),
            "the descriptor stayed readable after a clear"
        );
        assert!(!n.is_notified());
    }
}
