//! Messages (tagged, active) a receive took but its caller never did: the
//! receive completed (UCX matched the message and wrote it into the
//! buffer) after, or just before, its caller dropped it. The message is not
//! lost: it comes back here and the next receive posted that matches it
//! takes it first, as a dropped stream read's bytes are read again
//! (`KeptBytes`). A receive already waiting when a message comes back
//! does not see it; the next one posted does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mfio_core::CancelHandler;
use parking_lot::Mutex;

/// Messages that came back, in the order they came.
pub(crate) struct Returned<M> {
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
    pub(crate) fn take(&self, wanted: impl Fn(&M) -> bool) -> Option<M> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut messages = self.messages.lock();
        let at = messages.iter().position(wanted)?;
        self.count.fetch_sub(1, Ordering::AcqRel);
        messages.remove(at)
    }

    /// Puts a message back in front (it was taken and its receive's caller
    /// left before it completed).
    pub(crate) fn put_back(&self, message: M) {
        self.messages.lock().push_front(message);
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// A message whose receive's caller dropped it unclaimed.
    fn push(&self, message: M) {
        self.messages.lock().push_back(message);
        self.count.fetch_add(1, Ordering::AcqRel);
    }
}

/// A tag message: the sender's tag and the bytes.
pub(crate) type TagMessage = (u64, Vec<u8>);

/// An active message sent to `id`: its header and data.
pub(crate) type AmMessage = (u16, Vec<u8>, Vec<u8>);

/// The worker's returned tag messages.
pub(crate) type ReturnedTags = Returned<TagMessage>;

/// The worker's returned active messages.
pub(crate) type ReturnedAms = Returned<AmMessage>;

/// Registered (under the message's tag) on a tag receive as it completes.
impl CancelHandler for ReturnedTags {
    /// Nothing to cancel: registered only once the receive completed.
    fn cancel(&self, _tag: u64) {}

    /// The caller dropped the completed receive without taking it.
    fn unclaimed(&self, tag: u64, data: &[u8]) {
        self.push((tag, data.to_vec()));
    }
}

/// Registered on an active-message receive as it completes: what the
/// message was, should its caller leave without it.
pub(crate) struct AmClaim {
    pub(crate) id: u16,
    pub(crate) header: Vec<u8>,
    pub(crate) returned: Arc<ReturnedAms>,
}

impl CancelHandler for AmClaim {
    /// Nothing to cancel: registered only once the receive completed.
    fn cancel(&self, _token: u64) {}

    /// The caller dropped the completed receive without taking it.
    fn unclaimed(&self, _token: u64, data: &[u8]) {
        self.returned.push((self.id, self.header.clone(), data.to_vec()));
    }
}
