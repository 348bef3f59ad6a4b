//! [`Cancels`]: the cancellation requests of dropped operations, collected
//! for the backend's next driving step.
//!
//! A backend registers its `Arc<Cancels>` (as a [`CancelHandler`]) on the
//! packets and [`Completer`](crate::completion::Completer)s it has in flight,
//! each under a token of its own choosing. When a caller drops such an
//! operation, the token lands here and the backend is woken; the driving
//! step then [`take`](Cancels::take)s the tokens and cancels what is still
//! in flight (io_uring `ASYNC_CANCEL`, unparking a socket operation, …).

use std::sync::Arc;

use crate::backend::Notifier;
use crate::packet::CancelHandler;
use crate::queue::Mailbox;

/// Tokens of operations whose callers gave up, for the driving step to apply.
pub struct Cancels {
    tokens: Mailbox<u64>,
    notifier: Arc<Notifier>,
}

impl Cancels {
    /// An empty set that wakes the backend through `notifier` on every request.
    pub fn new(notifier: Arc<Notifier>) -> Arc<Self> {
        Arc::new(Self {
            tokens: Mailbox::default(),
            notifier,
        })
    }

    /// Whether no cancellation waits to be applied (one atomic load).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens requested since the last call, oldest first.
    pub fn take(&self) -> Vec<u64> {
        self.tokens.take()
    }

    /// Puts a token back to be applied at a later step (the backend had no
    /// room to apply it now).
    pub fn retry(&self, token: u64) {
        self.tokens.push(token);
    }
}

impl std::fmt::Debug for Cancels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancels").finish_non_exhaustive()
    }
}

impl CancelHandler for Cancels {
    fn cancel(&self, token: u64) {
        self.tokens.push(token);
        self.notifier.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_taken_once_in_order() {
        let cancels = Cancels::new(Notifier::new().expect("eventfd"));
        cancels.cancel(3);
        cancels.cancel(1);
        assert_eq!(cancels.take(), [3, 1]);
        assert!(cancels.take().is_empty());
        cancels.retry(1);
        assert_eq!(cancels.take(), [1]);
    }
}
