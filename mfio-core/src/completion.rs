//! Operations that yield a value rather than fill a packet (an opened
//! descriptor, metadata, an accepted connection): the backend holds a
//! [`Completer`], the caller awaits a [`Completion`], and an operation that
//! still has to reach its backend's queue travels in a [`Submission`].
//!
//! The pair keeps the packet rules: dropping the future before the result
//! arrives asks the backend to cancel (through a [`CancelHandler`]), and a
//! result that arrives anyway is dropped on arrival, so an `OwnedFd` in it
//! is closed, never leaked. A completer dropped without a result completes
//! as [`Aborted`](Error::aborted), never as a silent hang.
//!
//! ```
//! use mfio_core::completion::completion;
//! use mfio_core::block_on;
//! use mfio_core::mem::MemBackend;
//!
//! # fn main() -> mfio_core::Result<()> {
//! let (done, fut) = completion::<u32>();
//! std::thread::spawn(move || done.complete(Ok(7)));
//! assert_eq!(block_on(&MemBackend::new()?, fut)?, 7);
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;

use crate::error::{Error, Op, Result};
use crate::packet::CancelHandler;

enum SlotState<T> {
    Waiting,
    Done(Result<T>),
    Taken,
    /// The future was dropped; a late result is dropped on arrival.
    Abandoned,
}

/// Who to tell, under which token, when the future is dropped early.
type CancelHook = Option<(Arc<dyn CancelHandler>, u64)>;

struct Slot<T> {
    state: Mutex<(SlotState<T>, CancelHook)>,
    waker: AtomicWaker,
}

/// The backend's end of an operation that yields a `T`.
pub struct Completer<T> {
    slot: Option<Arc<Slot<T>>>,
}

impl<T> fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer")
            .field("abandoned", &self.is_abandoned())
            .finish()
    }
}

impl<T> Completer<T> {
    /// Delivers the result and wakes the waiter; if the waiter is gone the
    /// result is dropped here (an `OwnedFd` in it closes).
    pub fn complete(mut self, result: Result<T>) {
        if let Some(slot) = self.slot.take() {
            deliver(&slot, result);
        }
    }

    /// True once the caller dropped the future: the result will not be seen.
    pub fn is_abandoned(&self) -> bool {
        self.slot
            .as_ref()
            .is_some_and(|s| matches!(s.state.lock().0, SlotState::Abandoned))
    }

    /// Asks to hear about the caller dropping the future, under `token`;
    /// replaces an earlier registration.
    ///
    /// # Errors
    /// `Interrupted` ([`Error::is_cancelled`]) if the future was dropped
    /// already; the handler is not registered then.
    pub fn set_cancel_handler(&self, handler: Arc<dyn CancelHandler>, token: u64) -> Result<()> {
        let Some(slot) = &self.slot else { return Ok(()) };
        let mut st = slot.state.lock();
        if matches!(st.0, SlotState::Abandoned) {
            return Err(Error::cancelled());
        }
        st.1 = Some((handler, token));
        Ok(())
    }
}

fn deliver<T>(slot: &Slot<T>, result: Result<T>) {
    let mut st = slot.state.lock();
    if matches!(st.0, SlotState::Abandoned) {
        drop(st);
        drop(result);
        return;
    }
    st.0 = SlotState::Done(result);
    st.1 = None;
    drop(st);
    slot.waker.wake();
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        // Dropped without a result (the backend went away): never a silent hang.
        if let Some(slot) = self.slot.take() {
            deliver(&slot, Err(Error::aborted()));
        }
    }
}

/// The caller's end: resolves to the result the [`Completer`] delivers.
///
/// Dropping it before the result arrived tells the registered
/// [`CancelHandler`] (see [`Completer::set_cancel_handler`]); a result that
/// arrives after that is dropped.
#[must_use = "futures do nothing unless polled"]
pub struct Completion<T> {
    slot: Arc<Slot<T>>,
}

impl<T> fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion").finish_non_exhaustive()
    }
}

/// A connected completer/future pair.
pub fn completion<T>() -> (Completer<T>, Completion<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new((SlotState::Waiting, None)),
        waker: AtomicWaker::new(),
    });
    (
        Completer {
            slot: Some(slot.clone()),
        },
        Completion { slot },
    )
}

impl<T> Completion<T> {
    /// A future that is already complete (an error found before submitting).
    pub fn ready(result: Result<T>) -> Self {
        let (done, fut) = completion();
        done.complete(result);
        fut
    }

    fn try_take(&self) -> Option<Result<T>> {
        let mut st = self.slot.state.lock();
        match std::mem::replace(&mut st.0, SlotState::Taken) {
            SlotState::Done(r) => Some(r),
            SlotState::Taken => panic!("{}", polled_after_completion("Completion")),
            other => {
                st.0 = other;
                None
            }
        }
    }
}

/// The message of the one rule for every mfio future polled again after it
/// returned `Ready`: it panics (as `async fn` futures do), naming itself.
pub(crate) fn polled_after_completion(what: &str) -> String {
    format!("{what} polled after it completed")
}

impl<T> Future for Completion<T> {
    type Output = Result<T>;

    /// # Panics
    /// If polled again after it returned `Ready`.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if let Some(r) = self.try_take() {
            return Poll::Ready(r);
        }
        self.slot.waker.register(cx.waker());
        match self.try_take() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        let (late, hook) = {
            let mut st = self.slot.state.lock();
            match std::mem::replace(&mut st.0, SlotState::Abandoned) {
                SlotState::Waiting => (None, st.1.take()),
                SlotState::Done(r) => (Some(r), None),
                SlotState::Taken | SlotState::Abandoned => (None, None),
            }
        };
        drop(late);
        if let Some((handler, token)) = hook {
            handler.cancel(token);
        }
    }
}

/// A backend's queue for operations of type `O`, as a [`Submission`] sees it.
pub trait Submit<O> {
    /// Queues `op`, or hands it back when the queue is full.
    ///
    /// # Errors
    /// The operation itself, untouched, when there is no room.
    fn try_submit(&self, op: O) -> std::result::Result<(), O>;

    /// `Ready` when a submission is likely to be taken; otherwise wakes `cx`
    /// once there is room.
    fn poll_submit_ready(&self, cx: &mut Context<'_>) -> Poll<()>;
}

impl<O> Submit<O> for crate::queue::SubmitQueue<O> {
    fn try_submit(&self, op: O) -> std::result::Result<(), O> {
        self.try_push(op)
    }
    fn poll_submit_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_ready(cx)
    }
}

/// Future of an operation `O` that yields a `T`: sent to its backend's queue
/// `S` when first polled (and as soon as the queue has room), then resolved
/// by the operation's [`Completer`]. Errors name the operation ([`Op`]).
#[must_use = "futures do nothing unless polled"]
pub struct Submission<T, S, O> {
    // Declared first: an operation never sent is dropped (its completer
    // aborted) before the completion is.
    unsent: Option<(S, O)>,
    completion: Completion<T>,
    what: Option<Op>,
}

impl<T, S, O> fmt::Debug for Submission<T, S, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submission")
            .field("sent", &self.unsent.is_none())
            .field("op", &self.what)
            .finish_non_exhaustive()
    }
}

impl<T, S: Submit<O>, O> Submission<T, S, O> {
    /// Queues `op` on `to` when first polled, then waits on `completion`
    /// (the other end of the [`Completer`] inside `op`); errors are marked
    /// as failures of `what`.
    pub fn new(to: S, op: O, completion: Completion<T>, what: Op) -> Self {
        Self {
            unsent: Some((to, op)),
            completion,
            what: Some(what),
        }
    }

    /// A submission that is already complete (an error found before sending).
    pub fn ready(result: Result<T>) -> Self {
        Self {
            unsent: None,
            completion: Completion::ready(result),
            what: None,
        }
    }
}

// No field is structurally pinned: the queue and the operation are only
// moved in and out of their `Option`, and `Completion` is an `Arc`.
impl<T, S, O> Unpin for Submission<T, S, O> {}

impl<T, S: Submit<O>, O> Future for Submission<T, S, O> {
    type Output = Result<T>;

    /// # Panics
    /// If polled again after it returned `Ready`.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        while let Some((to, op)) = this.unsent.take() {
            if let Err(op) = to.try_submit(op) {
                let ready = to.poll_submit_ready(cx);
                this.unsent = Some((to, op));
                if ready.is_pending() {
                    return Poll::Pending;
                }
            }
        }
        let what = this.what;
        Pin::new(&mut this.completion).poll(cx).map(|r| match what {
            Some(op) => r.map_err(|e| e.with_op(op)),
            None => r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Count(AtomicU64);
    impl CancelHandler for Count {
        fn cancel(&self, token: u64) {
            self.0.store(token, Ordering::SeqCst);
        }
    }

    #[test]
    fn dropped_future_cancels_and_drops_late_result() {
        let (done, fut) = completion::<Arc<()>>();
        let counter = Arc::new(Count(AtomicU64::new(0)));
        done.set_cancel_handler(counter.clone(), 9).expect("waiting");
        drop(fut);
        assert_eq!(counter.0.load(Ordering::SeqCst), 9);
        assert!(done.is_abandoned());
        let late = Arc::new(());
        done.complete(Ok(late.clone()));
        assert_eq!(Arc::strong_count(&late), 1, "the late result was released");
    }

    #[test]
    fn completer_dropped_without_result_is_aborted() {
        let (done, mut fut) = completion::<u32>();
        drop(done);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut fut).poll(&mut cx) {
            Poll::Ready(Err(e)) => assert!(e.is_aborted()),
            other => panic!("expected an aborted error, got {other:?}"),
        }
    }

    #[test]
    #[should_panic(expected = "Completion polled after it completed")]
    fn polled_after_completion_panics() {
        let mut fut = Completion::ready(Ok(1u8));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(Ok(1))));
        let _ = Pin::new(&mut fut).poll(&mut cx);
    }

    struct Refusing;
    impl Submit<Completer<u8>> for Refusing {
        fn try_submit(&self, op: Completer<u8>) -> std::result::Result<(), Completer<u8>> {
            Err(op)
        }
        fn poll_submit_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    #[test]
    fn unsent_submission_dropped_is_not_a_hang() {
        let (done, completion) = completion();
        let mut fut = Submission::new(Refusing, done, completion, Op::Open);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        drop(fut); // the completer inside the unsent op is dropped first
    }
}
