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

/// The worker's returned tag messages, in the order they came back.
#[derive(Default)]
pub(crate) struct Returned {
    messages: Mutex<VecDeque<(u64, Vec<u8>)>>,
    /// How many there are, so the common case (none) takes no lock.
    count: AtomicUsize,
}

impl Returned {
    /// Takes the first returned message whose tag matches `tag` in the bits
    /// of `mask`: its tag and bytes.
    pub(crate) fn take(&self, tag: u64, mask: u64) -> Option<(u64, Vec<u8>)> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut messages = self.messages.lock();
        let at = messages.iter().position(|(t, _)| (t ^ tag) & mask == 0)?;
        self.count.fetch_sub(1, Ordering::AcqRel);
        messages.remove(at)
    }

    /// Puts a message back in front (it was taken and its receive's caller
    /// left before it completed).
    pub(crate) fn put_back(&self, tag: u64, data: Vec<u8>) {
        self.messages.lock().push_front((tag, data));
        self.count.fetch_add(1, Ordering::AcqRel);
    }
}

/// Registered (under the message's tag) on a tag receive as it completes.
impl CancelHandler for Returned {
    /// Nothing to cancel: registered only once the receive completed.
    fn cancel(&self, _tag: u64) {}

    /// The caller dropped the completed receive without taking it.
    fn unclaimed(&self, tag: u64, data: &[u8]) {
        self.messages.lock().push_back((tag, data.to_vec()));
        self.count.fetch_add(1, Ordering::AcqRel);
    }
}

/// An active message sent to `id`: its header and data.
type AmMessage = (u16, Vec<u8>, Vec<u8>);

/// The worker's returned active messages, in the order they came back.
#[derive(Default)]
pub(crate) struct ReturnedAms {
    messages: Mutex<VecDeque<AmMessage>>,
    /// How many there are, so the common case (none) takes no lock.
    count: AtomicUsize,
}

impl ReturnedAms {
    /// Takes the first returned message sent to `id`: its header and data.
    pub(crate) fn take(&self, id: u16) -> Option<(Vec<u8>, Vec<u8>)> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut messages = self.messages.lock();
        let at = messages.iter().position(|(i, _, _)| *i == id)?;
        self.count.fetch_sub(1, Ordering::AcqRel);
        messages.remove(at).map(|(_, header, data)| (header, data))
    }

    /// Puts a message back in front (its receive's caller left before it
    /// completed).
    pub(crate) fn put_back(&self, id: u16, header: Vec<u8>, data: Vec<u8>) {
        self.messages.lock().push_front((id, header, data));
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn push(&self, id: u16, header: Vec<u8>, data: Vec<u8>) {
        self.messages.lock().push_back((id, header, data));
        self.count.fetch_add(1, Ordering::AcqRel);
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
        self.returned.push(self.id, self.header.clone(), data.to_vec());
    }
}
