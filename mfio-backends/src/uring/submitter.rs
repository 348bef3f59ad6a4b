//! Which thread submitted an io_uring request, and what happens when that
//! thread exits.
//!
//! The kernel ties every request to the task that submitted it: when that
//! thread exits, its requests still waiting for a socket to become ready,
//! or queued for a kernel worker, end with `ECANCELED` although nobody
//! cancelled them. Any thread that drives a runtime submits everyone's
//! queued operations (a `block_on` caller, a host runtime's worker, a
//! driver thread), and such threads come and go. So each thread that
//! submitted to a ring tells the ring when it exits (a thread-local
//! destructor, which runs before the kernel sees the exit): the ring then
//! cancels that thread's requests itself and sends them again from a thread
//! that is still there. Callers never see a cancellation they did not ask
//! for.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;

/// A ring that wants to hear when a thread that submitted to it exits.
pub(super) trait SubmitterExit: Send + Sync {
    /// The thread `id` is exiting: take over its requests.
    fn submitter_exited(&self, id: u64);
}

/// Ids start at 1, so 0 means "not submitted yet".
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct ThisThread {
    id: u64,
    rings: RefCell<Vec<Weak<dyn SubmitterExit>>>,
}

impl Drop for ThisThread {
    fn drop(&mut self) {
        for ring in self.rings.get_mut().drain(..) {
            if let Some(ring) = ring.upgrade() {
                ring.submitter_exited(self.id);
            }
        }
    }
}

thread_local! {
    static THIS_THREAD: ThisThread = ThisThread {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        rings: RefCell::new(Vec::new()),
    };
}

/// The calling thread's id, having noted that it submits to `ring` (once
/// per ring); 0 while the thread is already exiting (its thread-locals are
/// gone), when nothing will tell the ring about it.
pub(super) fn this_thread_submits_to(ring: &Weak<dyn SubmitterExit>) -> u64 {
    THIS_THREAD
        .try_with(|t| {
            let mut rings = t.rings.borrow_mut();
            if !rings.iter().any(|w| w.ptr_eq(ring)) {
                rings.retain(|w| w.strong_count() > 0);
                rings.push(ring.clone());
            }
            t.id
        })
        .unwrap_or(0)
}
