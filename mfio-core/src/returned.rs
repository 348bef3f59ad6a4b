//! [`Returned`]: messages a receive took but its caller never did.
//!
//! A message receive (a UCX tag or active message, an MPI receive) can
//! complete — the lower layer matched the message and wrote it into the
//! buffer — after, or just before, its caller dropped it. The message is
//! not lost: it comes back here, and the next receive posted that matches
//! it takes it first, as a dropped stream read's bytes are read again
//! ([`KeptBytes`](crate::kept::KeptBytes)). A receive already waiting when
//! a message comes back does not see it; the next one posted does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::packet::CancelHandler;

/// Messages that came back, in the order they came.
#[derive(Debug)]
pub struct Returned<M> {
    messages: Mutex<VecDeque<M>>,
    /// How many there are, so the common case (none) takes no lock.
    count: AtomicUsize,
}

impl<M> Default for Returned<M> {
    fn default() -> Self {
        Self {
            messages: Mutex::new(VecDeque::new()),
            count: AtomicUsize::new(0),
        }
    }
}

impl<M> Returned<M> {
    /// Takes the first message `wanted` accepts.
    pub fn take(&self, wanted: impl Fn(&M) -> bool) -> Option<M> {
        self.take_first_if(wanted, |_| true).flatten()
    }

    /// The first message `wanted` accepts, taken if `fits` accepts it too:
    /// `Some(Some(message))`; `Some(None)` if it does not fit (it stays
    /// first); `None` if no message is wanted.
    pub fn take_first_if(&self, wanted: impl Fn(&M) -> bool, fits: impl Fn(&M) -> bool) -> Option<Option<M>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut messages = self.messages.lock();
        let at = messages.iter().position(wanted)?;
        if !fits(&messages[at]) {
            return Some(None);
        }
        self.count.fetch_sub(1, Ordering::AcqRel);
        Some(messages.remove(at))
    }

    /// Puts a message back in front: it was taken from here, and its
    /// receive's caller left before the receive completed.
    pub fn put_back(&self, message: M) {
        self.messages.lock().push_front(message);
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// Adds a message whose receive's caller dropped it unclaimed.
    pub fn push(&self, message: M) {
        self.messages.lock().push_back(message);
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// True if none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A message known by a 64-bit key (a tag; a source and a tag) and its bytes.
pub type KeyedMessage = (u64, Vec<u8>);

/// Registered on a completed receive under the message's key: a caller
/// that drops the receive without taking it gives the message back.
impl CancelHandler for Returned<KeyedMessage> {
    /// Nothing to cancel: registered only once the receive completed.
    fn cancel(&self, _key: u64) {}

    /// The caller dropped the completed receive without taking it.
    fn unclaimed(&self, key: u64, data: &[u8]) {
        self.push((key, data.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unclaimed_messages_come_back_in_order_and_put_back_goes_first() {
        let returned = Returned::<KeyedMessage>::default();
        assert!(returned.take(|_| true).is_none());
        returned.unclaimed(1, b"one");
        returned.unclaimed(2, b"two");
        returned.put_back((3, b"three".to_vec()));
        assert_eq!(returned.len(), 3);
        assert_eq!(returned.take(|m| m.0 != 3), Some((1, b"one".to_vec())));
        assert_eq!(returned.take(|_| true), Some((3, b"three".to_vec())));
        assert_eq!(returned.take(|_| true), Some((2, b"two".to_vec())));
        assert!(returned.is_empty());
    }
}
