//! [`Background`]: a transport's own work (readers of incoming messages,
//! notices to other ranks), which has no task of its own: whoever polls
//! any of the transport's operations runs it ([`driven`]). When a piece of
//! the work can go on, its waker wakes every task waiting on the
//! transport, so the work never stalls while anyone waits; and only the
//! pieces whose wakers fired are polled, not at every poll of every
//! operation, nor all of them when one was woken (a rank with many peers
//! has a task per peer, most of them idle).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use parking_lot::Mutex;
use slab::Slab;

/// A piece of background work.
pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A waker that wakes the waker of every operation still registered: one
/// slot per pending operation, taken back when the operation goes, so the
/// set never outgrows the operations in flight (however rarely it fires).
#[derive(Default)]
struct WakeAll {
    wakers: Mutex<Slab<Waker>>,
    /// The list the wakers are copied into to be woken outside the lock,
    /// kept so that firing does not allocate.
    firing: Mutex<Vec<Waker>>,
    /// Set by a wake of this waker itself (not a piece's), taken by the
    /// drive that then polls all the work: work nobody woke is not polled
    /// (each poll of a waiting receive costs hundreds of instructions, and
    /// most collectives wake none).
    fired: AtomicBool,
    /// Set by the wake of a piece of work ([`PieceWake`]), taken by the
    /// drive that then polls the pieces that are due.
    piece_fired: AtomicBool,
}

impl WakeAll {
    /// Registers `waker` in `slot` (taking a slot the first time).
    fn register(&self, waker: &Waker, slot: &mut Option<usize>) {
        let mut ws = self.wakers.lock();
        match slot.and_then(|k| ws.get_mut(k)) {
            Some(w) if w.will_wake(waker) => {}
            Some(w) => w.clone_from(waker),
            None => *slot = Some(ws.insert(waker.clone())),
        }
    }

    fn release(&self, slot: Option<usize>) {
        if let Some(k) = slot {
            self.wakers.lock().try_remove(k);
        }
    }

    /// Wakes every operation registered.
    fn wake_waiters(&self) {
        // Woken outside the slots' lock: a waker may register again.
        let mut firing = std::mem::take(&mut *self.firing.lock());
        firing.extend(self.wakers.lock().iter().map(|(_, w)| w.clone()));
        for w in firing.drain(..) {
            w.wake();
        }
        *self.firing.lock() = firing;
    }
}

/// Fired, it makes every piece of work due (whoever holds it cannot say
/// which piece it is for) and wakes the operations.
impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::SeqCst);
        self.wake_waiters();
    }
}

/// The waker of one piece of work: fired, it makes that piece due and
/// wakes the operations, one of which polls it.
struct PieceWake {
    due: AtomicBool,
    all: Arc<WakeAll>,
}

impl Wake for PieceWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Due before the drive is told: a drive that sees `piece_fired`
        // sees this piece due.
        self.due.store(true, Ordering::SeqCst);
        self.all.piece_fired.store(true, Ordering::SeqCst);
        self.all.wake_waiters();
    }
}

/// A piece of background work with its own waker.
struct Piece {
    task: Task,
    wake: Arc<PieceWake>,
    /// `wake` as a waker (made once).
    waker: Waker,
}

impl Piece {
    /// Work new to the drive: due at once.
    fn new(task: Task, all: &Arc<WakeAll>) -> Self {
        let wake = Arc::new(PieceWake {
            due: AtomicBool::new(true),
            all: all.clone(),
        });
        let waker = Waker::from(wake.clone());
        Self { task, wake, waker }
    }
}

/// The background work of one transport.
#[derive(Default)]
pub(crate) struct Background {
    tasks: Mutex<Vec<Piece>>,
    /// Work added while `tasks` is being polled (by a task itself).
    queued: Mutex<Vec<Task>>,
    waiting: Arc<WakeAll>,
    /// `waiting` as a waker (made once).
    #[cfg_attr(not(feature = "ucx"), allow(dead_code))]
    waker: std::sync::OnceLock<Waker>,
    /// Operations being polled: each drives the work queued meanwhile
    /// before its poll ends ([`driven`]).
    polling: AtomicUsize,
    /// Set after work is queued, cleared before a drive takes the queue:
    /// a look without the lock.
    spawned: AtomicBool,
}

impl Background {
    /// Adds work. A drive under way, or an operation being polled, starts
    /// it before it ends; otherwise the operations waiting are woken for
    /// it. (Not woken from within a poll: a wake there would make the
    /// caller's next driving step spin for nothing.)
    pub(crate) fn spawn(&self, task: Task) {
        self.queued.lock().push(task);
        self.spawned.store(true, Ordering::SeqCst);
        if self.polling.load(Ordering::SeqCst) == 0 {
            if let Some(idle) = self.tasks.try_lock() {
                drop(idle);
                self.waiting.wake_by_ref();
            }
        }
    }

    /// Whether work waits to be started.
    fn has_queued(&self) -> bool {
        self.spawned.load(Ordering::SeqCst)
    }

    /// Runs the work that can make progress; registers `cx` in `slot` (an
    /// operation's own, released by [`release`](Self::release)) to hear
    /// when more can. Whoever holds the work polls it for everyone.
    pub(crate) fn drive(&self, cx: &mut Context<'_>, slot: &mut Option<usize>) {
        self.waiting.register(cx.waker(), slot);
        let Some(mut tasks) = self.tasks.try_lock() else {
            return;
        };
        loop {
            // Taken before the polls: a wake during them is seen by the
            // next drive, which the wake's operations come back for.
            let all = self.waiting.fired.swap(false, Ordering::SeqCst);
            let mut some = self.waiting.piece_fired.swap(false, Ordering::SeqCst);
            if self.spawned.swap(false, Ordering::SeqCst) {
                let mut queued = self.queued.lock();
                tasks.extend(queued.drain(..).map(|task| Piece::new(task, &self.waiting)));
                some = true;
            }
            if all || some {
                tasks.retain_mut(|piece| {
                    // Not due (and not everyone's turn): left alone.
                    if !piece.wake.due.swap(false, Ordering::SeqCst) && !all {
                        return true;
                    }
                    piece
                        .task
                        .as_mut()
                        .poll(&mut Context::from_waker(&piece.waker))
                        .is_pending()
                });
            }
            if !self.spawned.load(Ordering::SeqCst) {
                break;
            }
        }
        drop(tasks);
        // Work added between the last look and the lock's release found
        // the drive under way: wake the operations, one of them starts it.
        if self.spawned.load(Ordering::SeqCst) {
            self.waiting.wake_by_ref();
        }
    }

    /// As [`drive`](Self::drive), but polls all the work, woken or not:
    /// for a loop that drives it with nobody to wake (a transport's drop).
    #[cfg_attr(not(feature = "ucx"), allow(dead_code))]
    pub(crate) fn drive_all(&self, cx: &mut Context<'_>, slot: &mut Option<usize>) {
        self.waiting.fired.store(true, Ordering::SeqCst);
        self.drive(cx, slot);
    }

    /// A waker that wakes every operation waiting on the transport (and
    /// makes all the work due). An operation that registers it where a
    /// waker is kept until something happens (rather than its own, which
    /// differs from call to call) keeps one entry there however often it
    /// polls.
    #[cfg_attr(not(feature = "ucx"), allow(dead_code))]
    pub(crate) fn waker(&self) -> &Waker {
        self.waker.get_or_init(|| Waker::from(self.waiting.clone()))
    }

    /// Gives back a slot [`drive`](Self::drive) took.
    pub(crate) fn release(&self, slot: Option<usize>) {
        self.waiting.release(slot);
    }
}

/// `inner` (an operation of a transport) made to run the transport's
/// background work whenever it is polled.
pub(crate) async fn driven<F: Future>(background: Arc<Background>, inner: F) -> F::Output {
    let mut waiter = Waiter { background, slot: None };
    let mut inner = std::pin::pin!(inner);
    std::future::poll_fn(|cx| {
        let background = &*waiter.background;
        background.drive(cx, &mut waiter.slot);
        background.polling.fetch_add(1, Ordering::SeqCst);
        let out = inner.as_mut().poll(cx);
        background.polling.fetch_sub(1, Ordering::SeqCst);
        // Work the operation started (the fetch of a long message's bytes)
        // starts now, not at the next wake.
        if out.is_pending() && background.has_queued() {
            background.drive(cx, &mut waiter.slot);
        }
        out
    })
    .await
    // The slot goes back with `waiter`: when the operation finishes, or
    // when it is dropped unfinished.
}

/// Work an operation does as part of its own poll, woken straight by
/// what it waits for. If the operation is dropped before the work is
/// done, the rest of it goes on in the background: the work holds what
/// must outlive the operation (an offered block its reader may still be
/// reading, the rest of a TCP frame begun). The work is a future that can
/// move once polled (a box, or a hand-written state machine such as an
/// offer's exchange), so the background takes it as it stands.
#[cfg_attr(not(any(feature = "ucx", feature = "tcp")), allow(dead_code))]
pub(crate) struct InPlace<F: Future + Unpin + Send + 'static> {
    work: Option<F>,
    background: Arc<Background>,
}

#[cfg_attr(not(any(feature = "ucx", feature = "tcp")), allow(dead_code))]
impl<F: Future + Unpin + Send + 'static> InPlace<F> {
    /// `work`, done by whoever polls the result, or by `background` once
    /// the result is dropped unfinished.
    pub(crate) fn new(background: Arc<Background>, work: F) -> Self {
        Self {
            work: Some(work),
            background,
        }
    }
}

impl<F: Future + Unpin + Send + 'static> Future for InPlace<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> std::task::Poll<F::Output> {
        // Done work is not polled again ([`driven`] stops at its result).
        let Some(work) = self.work.as_mut() else {
            return std::task::Poll::Pending;
        };
        let out = std::task::ready!(Pin::new(work).poll(cx));
        self.work = None;
        std::task::Poll::Ready(out)
    }
}

impl<F: Future + Unpin + Send + 'static> Drop for InPlace<F> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            self.background.spawn(Box::pin(async move {
                work.await;
            }));
        }
    }
}

/// An operation's slot among the background work's waiters, given back
/// when dropped.
struct Waiter {
    background: Arc<Background>,
    slot: Option<usize>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.background.release(self.slot.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::task::Poll;

    /// A waker of its own (distinct from every other) that counts wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn waiters_never_outnumber_the_operations_in_flight() {
        let background = Arc::new(Background::default());
        // Background work that never progresses: the waiters' set is
        // never emptied by a wake.
        background.spawn(Box::pin(std::future::pending()));
        let mut pending = Vec::new();
        for i in 0..1000 {
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(count);
            let mut cx = Context::from_waker(&waker);
            let mut op = Box::pin(driven(background.clone(), std::future::ready(i)));
            assert_eq!(op.as_mut().poll(&mut cx), Poll::Ready(i));
            // Half of them pending for a while, then dropped unfinished.
            let mut waiting = Box::pin(driven(background.clone(), std::future::pending::<()>()));
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            if i % 2 == 0 {
                pending.push(waiting);
            }
        }
        assert_eq!(background.waiting.wakers.lock().len(), 500, "one per pending operation");
        drop(pending);
        assert_eq!(background.waiting.wakers.lock().len(), 0);
    }

    /// Work that waits until `go` is set, then sets `done`.
    fn gated(go: Arc<AtomicBool>, done: Arc<AtomicBool>) -> Pin<Box<dyn Future<Output = u32> + Send>> {
        Box::pin(std::future::poll_fn(move |_| {
            if go.load(Ordering::SeqCst) {
                done.store(true, Ordering::SeqCst);
                Poll::Ready(7)
            } else {
                Poll::Pending
            }
        }))
    }

    #[test]
    fn work_done_in_place_leaves_nothing_behind() {
        let background = Arc::new(Background::default());
        let (go, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let mut op = InPlace::new(background.clone(), gated(go.clone(), done.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut op).poll(&mut cx).is_pending());
        go.store(true, Ordering::SeqCst);
        assert_eq!(Pin::new(&mut op).poll(&mut cx), Poll::Ready(7));
        drop(op);
        assert!(!background.has_queued(), "finished work is not handed on");
    }

    #[test]
    fn work_of_a_dropped_operation_is_finished_in_the_background() {
        let background = Arc::new(Background::default());
        let (go, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let mut op = InPlace::new(background.clone(), gated(go.clone(), done.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut op).poll(&mut cx).is_pending());
        drop(op);
        assert!(background.has_queued(), "the rest of the work goes to the background");
        let mut slot = None;
        background.drive(&mut cx, &mut slot);
        assert!(!done.load(Ordering::SeqCst));
        // Not woken: not polled.
        go.store(true, Ordering::SeqCst);
        background.drive(&mut cx, &mut slot);
        assert!(!done.load(Ordering::SeqCst), "work nobody woke is left alone");
        // Woken (as the work's own waker would be): the next drive polls it.
        background.waker().wake_by_ref();
        background.drive(&mut cx, &mut slot);
        assert!(done.load(Ordering::SeqCst), "a drive finishes it");
        assert!(background.tasks.lock().is_empty());
        background.release(slot);
    }

    #[test]
    fn only_the_work_whose_waker_fired_is_polled() {
        let background = Arc::new(Background::default());
        // Work that counts its polls and keeps the waker it was polled with.
        type Kept = Arc<Mutex<Option<Waker>>>;
        let pieces: Vec<(Arc<AtomicUsize>, Kept)> = (0..3).map(|_| (Arc::default(), Arc::default())).collect();
        for (polls, kept) in &pieces {
            let (polls, kept) = (polls.clone(), kept.clone());
            background.spawn(Box::pin(std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                *kept.lock() = Some(cx.waker().clone());
                Poll::<()>::Pending
            })));
        }
        let polls = || pieces.iter().map(|(p, _)| p.load(Ordering::SeqCst)).collect::<Vec<_>>();
        let operation = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(operation.clone());
        let mut cx = Context::from_waker(&waker);
        let mut slot = None;
        background.drive(&mut cx, &mut slot);
        assert_eq!(polls(), [1, 1, 1], "new work is polled at once");
        background.drive(&mut cx, &mut slot);
        assert_eq!(polls(), [1, 1, 1], "work nobody woke is left alone");
        let woken = pieces[1].1.lock().clone().expect("polled with a waker");
        woken.wake_by_ref();
        assert_eq!(operation.0.load(Ordering::SeqCst), 1, "the operations hear of it");
        background.drive(&mut cx, &mut slot);
        assert_eq!(polls(), [1, 2, 1], "only the piece woken is polled");
        background.waker().wake_by_ref();
        background.drive(&mut cx, &mut slot);
        assert_eq!(polls(), [2, 3, 2], "the transport's own waker makes all of it due");
        background.release(slot);
    }

    #[test]
    fn progress_wakes_every_pending_operation() {
        let background = Arc::new(Background::default());
        let counts: Vec<Arc<Count>> = (0..3).map(|_| Arc::new(Count(AtomicUsize::new(0)))).collect();
        let mut ops: Vec<_> = counts
            .iter()
            .map(|c| {
                let mut op = Box::pin(driven(background.clone(), std::future::pending::<()>()));
                let waker = Waker::from(c.clone());
                assert!(op.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
                op
            })
            .collect();
        Waker::from(background.waiting.clone()).wake();
        for c in &counts {
            assert_eq!(c.0.load(Ordering::Relaxed), 1);
        }
        ops.clear();
    }
}
