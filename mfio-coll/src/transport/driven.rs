//! [`Background`]: a transport's own work (readers of incoming messages,
//! notices to other ranks), which has no task of its own: whoever polls
//! any of the transport's operations runs it ([`Driven`]). A waker shared
//! by that work wakes every task waiting on the transport when it can go
//! on, so the work never stalls while anyone waits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;

/// A piece of background work.
pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A waker that wakes every waker registered since it last fired.
#[derive(Default)]
struct WakeAll {
    wakers: Mutex<Vec<Waker>>,
}

impl WakeAll {
    fn register(&self, waker: &Waker) {
        let mut ws = self.wakers.lock();
        if !ws.iter().any(|w| w.will_wake(waker)) {
            ws.push(waker.clone());
        }
    }
}

impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let ws = std::mem::take(&mut *self.wakers.lock());
        for w in ws {
            w.wake();
        }
    }
}

/// The background work of one transport.
#[derive(Default)]
pub(crate) struct Background {
    tasks: Mutex<Vec<Task>>,
    /// Work added while `tasks` is being polled (by a task itself).
    queued: Mutex<Vec<Task>>,
    waiting: Arc<WakeAll>,
}

impl Background {
    /// Adds work; it starts at the next poll of any operation.
    pub(crate) fn spawn(&self, task: Task) {
        self.queued.lock().push(task);
    }

    /// Runs the work that can make progress; registers `cx` to hear when
    /// more can. Whoever holds the work polls it for everyone.
    pub(crate) fn drive(&self, cx: &mut Context<'_>) {
        self.waiting.register(cx.waker());
        let Some(mut tasks) = self.tasks.try_lock() else {
            return;
        };
        let waker = Waker::from(self.waiting.clone());
        let mut tcx = Context::from_waker(&waker);
        loop {
            let queued = std::mem::take(&mut *self.queued.lock());
            tasks.extend(queued);
            tasks.retain_mut(|task| task.as_mut().poll(&mut tcx).is_pending());
            if self.queued.lock().is_empty() {
                break;
            }
        }
    }
}

/// An operation of a transport that runs the transport's background work
/// whenever it is polled.
pub(crate) struct Driven<F> {
    pub(crate) background: Arc<Background>,
    pub(crate) inner: Pin<Box<F>>,
}

impl<F: Future> Future for Driven<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.background.drive(cx);
        self.inner.as_mut().poll(cx)
    }
}
