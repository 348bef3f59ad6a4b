//! Building blocks for backends: [`SubmitQueue`] (the bounded inbox that
//! `PacketIo::try_send_io` feeds and a driving step drains) and [`Mailbox`]
//! (a list other threads add to, cheap to check when empty).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::backend::Notifier;

/// A bounded multi-producer queue of requests for one backend.
///
/// Pushing never blocks and never grows past the capacity: a full queue hands
/// the item back, and [`poll_ready`](Self::poll_ready) wakes the caller when a
/// driving step has made room. Every push notifies the backend's
/// [`Notifier`], which costs a syscall only if a driver sleeps.
#[derive(Debug)]
pub struct SubmitQueue<T> {
    items: Mutex<VecDeque<T>>,
    /// Mirror of `items.len()`, read without the lock. SeqCst: the driver's
    /// last look before sleeping must see any push whose notification it
    /// could have missed.
    len: AtomicUsize,
    max_len: AtomicUsize,
    capacity: usize,
    slot_waiters: Mailbox<Waker>,
    notifier: Arc<Notifier>,
}

impl<T> SubmitQueue<T> {
    /// An empty queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize, notifier: Arc<Notifier>) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            max_len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            slot_waiters: Mailbox::default(),
            notifier,
        }
    }

    /// Queues `item` and notifies the backend.
    ///
    /// # Errors
    /// The item itself, untouched, when the queue is full.
    pub fn try_push(&self, item: T) -> Result<(), T> {
        self.try_push_with(item, |item| item)
    }

    /// Queues `make(value)` if there is room, building the item only then.
    ///
    /// # Errors
    /// `value` itself, untouched, when the queue is full.
    pub fn try_push_with<V>(&self, value: V, make: impl FnOnce(V) -> T) -> Result<(), V> {
        {
            let mut items = self.items.lock();
            if items.len() >= self.capacity {
                return Err(value);
            }
            items.push_back(make(value));
            self.len.store(items.len(), Ordering::SeqCst);
            if items.len() > self.max_len.load(Ordering::Relaxed) {
                // Only written under the lock, so a plain store is enough.
                self.max_len.store(items.len(), Ordering::Relaxed);
            }
        }
        self.notifier.notify();
        Ok(())
    }

    /// `Ready` when there is room; otherwise wakes `cx` once a driving step
    /// takes items out.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.len.load(Ordering::Acquire) < self.capacity {
            return Poll::Ready(());
        }
        self.slot_waiters.push(cx.waker().clone());
        // Re-check after registering so room made in between is not missed.
        if self.len.load(Ordering::SeqCst) < self.capacity {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Moves up to `max` items to the back of `out`, oldest first, and wakes
    /// submitters waiting for room. Returns how many were moved.
    ///
    /// Wakes as many waiting submitters as items were moved, oldest first
    /// (each was refused for want of one slot), not all of them: thousands
    /// of waiters (a `buffer_unordered` far wider than the queue) woken at
    /// every step, to find the room taken again, made each operation cost
    /// as much as there were waiters. Once the queue is empty every waiter
    /// is woken, so one that was woken and then dropped without taking its
    /// slot never strands the others.
    pub fn take_into(&self, out: &mut VecDeque<T>, max: usize) -> usize {
        if max == 0 || self.len.load(Ordering::SeqCst) == 0 {
            if self.len.load(Ordering::SeqCst) == 0 {
                for waker in self.slot_waiters.take() {
                    waker.wake();
                }
            }
            return 0;
        }
        let (moved, left) = {
            let mut items = self.items.lock();
            let moved = items.len().min(max);
            if moved == items.len() && out.is_empty() {
                std::mem::swap(&mut *items, out);
            } else {
                out.extend(items.drain(..moved));
            }
            self.len.store(items.len(), Ordering::SeqCst);
            (moved, items.len())
        };
        let wake = if left == 0 { usize::MAX } else { moved };
        for waker in self.slot_waiters.take_up_to(wake) {
            waker.wake();
        }
        moved
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// True if nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items ever waiting at once.
    pub fn max_len(&self) -> usize {
        self.max_len.load(Ordering::Relaxed)
    }

    /// The capacity given at creation.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The notifier pushes wake.
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }
}

/// A list other threads add to (cancellation tokens, wakers), with a flag so
/// that checking an empty mailbox takes no lock.
///
/// The flag is SeqCst so it pairs with a caller's own re-check after a push
/// (as [`SubmitQueue::poll_ready`] does).
#[derive(Debug)]
pub struct Mailbox<T> {
    any: AtomicBool,
    items: Mutex<Vec<T>>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self {
            any: AtomicBool::new(false),
            items: Mutex::new(Vec::new()),
        }
    }
}

impl<T> Mailbox<T> {
    /// Adds an item.
    pub fn push(&self, item: T) {
        self.items.lock().push(item);
        self.any.store(true, Ordering::SeqCst);
    }

    /// True if nothing was added since the last [`take`](Self::take).
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::SeqCst)
    }

    /// Takes the `n` oldest items (all, if fewer), leaving the rest.
    pub fn take_up_to(&self, n: usize) -> Vec<T> {
        if n == 0 || !self.any.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let mut items = self.items.lock();
        let taken = if n >= items.len() {
            std::mem::take(&mut *items)
        } else {
            items.drain(..n).collect()
        };
        if items.is_empty() {
            self.any.store(false, Ordering::SeqCst);
        }
        taken
    }

    /// Takes every item added so far (none, without locking, if it is empty).
    pub fn take(&self) -> Vec<T> {
        if !self.any.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let mut items = self.items.lock();
        self.any.store(false, Ordering::SeqCst);
        std::mem::take(&mut *items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_hands_items_back_and_take_makes_room() {
        let q = SubmitQueue::new(2, Notifier::new().expect("eventfd"));
        assert!(q.try_push(1).is_ok() && q.try_push(2).is_ok());
        assert_eq!(q.try_push(3), Err(3));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(q.poll_ready(&mut cx).is_pending());
        let mut out = VecDeque::new();
        assert_eq!(q.take_into(&mut out, 1), 1);
        assert_eq!(out, [1]);
        assert!(q.poll_ready(&mut cx).is_ready());
        assert_eq!((q.len(), q.max_len()), (1, 2));
    }

    /// Counts its wake-ups.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn room_wakes_as_many_waiters_as_it_makes_and_an_empty_queue_wakes_all() {
        let q = SubmitQueue::new(2, Notifier::new().expect("eventfd"));
        assert!(q.try_push(1).is_ok() && q.try_push(2).is_ok());
        let counters: Vec<Arc<Counter>> = (0..5).map(|_| Arc::new(Counter(0.into()))).collect();
        for c in &counters {
            let waker = Waker::from(c.clone());
            assert!(q.poll_ready(&mut Context::from_waker(&waker)).is_pending());
        }
        let woken = || counters.iter().map(|c| c.0.load(Ordering::SeqCst)).collect::<Vec<_>>();
        let mut out = VecDeque::new();
        assert_eq!(q.take_into(&mut out, 1), 1);
        assert_eq!(woken(), [1, 0, 0, 0, 0], "one slot: the oldest waiter");
        assert_eq!(q.take_into(&mut out, 1), 1);
        assert_eq!(woken(), [1, 1, 1, 1, 1], "the queue emptied: every waiter");
    }
}
