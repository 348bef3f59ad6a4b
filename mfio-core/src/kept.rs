//! [`KeptBytes`]: bytes a stream read received but its caller never took,
//! read again first, so that dropping a read never loses data.
//!
//! A read can complete inside the backend and then be dropped by its caller
//! (a `select!` or a timeout that fired first). Its bytes came off the
//! stream and must not vanish. The packet hands them to its
//! [`CancelHandler`]'s [`unclaimed`](CancelHandler::unclaimed); a
//! `KeptBytes` registered as that handler puts them back at the front, and
//! the next read is served from them before the stream is read again.
//!
//! The rule that makes this hold for every read, including one served from
//! kept bytes and then dropped unclaimed too: **register before taking
//! bytes**. [`KeptBytes::start_read`] does both in that order; a backend that
//! reads the stream itself calls [`watch`](KeptBytes::watch) first.
//!
//! ```
//! use std::sync::Arc;
//! use mfio_core::kept::KeptBytes;
//! use mfio_core::{CancelHandler, Packet, Read};
//!
//! struct NoCancel;
//! impl CancelHandler for NoCancel {
//!     fn cancel(&self, _token: u64) {}
//! }
//!
//! let kept = KeptBytes::new(Arc::new(NoCancel));
//! kept.unclaimed(0, b"abc");
//! // A read served from the kept bytes, then dropped before it was taken:
//! let mut dropped: Packet<Read, Vec<u8>> = Packet::new(Vec::with_capacity(8));
//! let view = dropped.take_view().expect("view");
//! assert!(kept.start_read(view, 0).is_none(), "served from kept bytes");
//! drop(dropped);
//! // ... gives them back: the next read sees them.
//! let mut next: Packet<Read, Vec<u8>> = Packet::new(Vec::with_capacity(8));
//! assert!(kept.start_read(next.take_view().expect("view"), 0).is_none());
//! assert_eq!(next.try_take().expect("done").1, b"abc");
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Error;
use crate::packet::{CancelHandler, PacketView, Read};

/// Bytes given back by dropped stream reads, in stream order, plus where the
/// cancellations of reads on the stream go.
pub struct KeptBytes {
    bytes: Mutex<VecDeque<u8>>,
    forward: Arc<dyn CancelHandler>,
}

impl fmt::Debug for KeptBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeptBytes")
            .field("len", &self.bytes.lock().len())
            .finish_non_exhaustive()
    }
}

impl KeptBytes {
    /// None kept yet; cancellations of reads registered here go to `forward`
    /// (the backend's [`Cancels`](crate::cancel::Cancels), say).
    pub fn new(forward: Arc<dyn CancelHandler>) -> Arc<Self> {
        Arc::new(Self {
            bytes: Mutex::new(VecDeque::new()),
            forward,
        })
    }

    /// True if no bytes are kept.
    pub fn is_empty(&self) -> bool {
        self.bytes.lock().is_empty()
    }

    /// Registers this as `view`'s cancel handler under `token` (replacing an
    /// earlier one): if the read completes and its caller drops it, its bytes
    /// come back here; if the caller drops it in flight, `token` goes to the
    /// forward handler. Call it before the read can take any byte.
    ///
    /// # Errors
    /// `Interrupted` ([`Error::is_cancelled`]) if the caller already dropped
    /// the read; it must then be failed without taking bytes.
    pub fn watch(self: &Arc<Self>, view: &PacketView<Read>, token: u64) -> crate::Result<()> {
        view.set_cancel_handler(self.clone(), token)
    }

    /// Copies kept bytes into `view` (without completing it) and returns how
    /// many, or `None` if none are kept. Only for a view already
    /// [`watch`](Self::watch)ed: otherwise a drop would lose them.
    pub fn serve(&self, view: &mut PacketView<Read>) -> Option<usize> {
        let mut kept = self.bytes.lock();
        if kept.is_empty() {
            return None;
        }
        let n = kept.len().min(view.len());
        let (front, back) = kept.as_slices();
        let head = view.fill_from(&front[..front.len().min(n)]);
        view.fill_from_at(head, &back[..n - head]);
        kept.drain(..n);
        Some(n)
    }

    /// Starts a stream read under `token`: [`watch`](Self::watch)es it, then
    /// serves it from kept bytes if there are any. Returns the view if it
    /// still has to be read from the stream, `None` if it was completed here
    /// (served, or failed as cancelled because its caller is gone).
    pub fn start_read(self: &Arc<Self>, view: PacketView<Read>, token: u64) -> Option<PacketView<Read>> {
        if view.is_empty() {
            return Some(view);
        }
        if self.watch(&view, token).is_err() {
            view.fail(Error::cancelled());
            return None;
        }
        let mut view = view;
        match self.serve(&mut view) {
            Some(n) => {
                view.complete(n);
                None
            }
            None => Some(view),
        }
    }
}

impl CancelHandler for KeptBytes {
    fn cancel(&self, token: u64) {
        self.forward.cancel(token);
    }

    /// A read that completed after its caller gave up: its bytes go back to
    /// the front, ahead of anything kept later in the stream.
    fn unclaimed(&self, _token: u64, data: &[u8]) {
        let mut kept = self.bytes.lock();
        for b in data.iter().rev() {
            kept.push_front(*b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Packet;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Last(AtomicU64);
    impl CancelHandler for Last {
        fn cancel(&self, token: u64) {
            self.0.store(token, Ordering::SeqCst);
        }
    }

    /// Exactly `n` bytes of room (a `Vec` rounds small capacities up).
    fn read(n: usize) -> Packet<Read, Box<[u8]>> {
        Packet::new(vec![0; n].into_boxed_slice())
    }

    fn taken(p: &mut Packet<Read, Box<[u8]>>) -> Vec<u8> {
        let (outcome, buf) = p.try_take().expect("complete");
        buf[..outcome.transferred()].to_vec()
    }

    #[test]
    fn a_read_served_from_kept_bytes_and_dropped_gives_them_back_again() {
        let kept = KeptBytes::new(Arc::new(Last(AtomicU64::new(0))));
        kept.unclaimed(1, b"abc");
        for _ in 0..3 {
            let mut p = read(2);
            assert!(kept.start_read(p.take_view().expect("view"), 5).is_none());
            drop(p); // completed with "ab", never taken
        }
        let mut p = read(2);
        assert!(kept.start_read(p.take_view().expect("view"), 5).is_none());
        assert_eq!(taken(&mut p), b"ab");
        let mut p = read(8);
        assert!(kept.start_read(p.take_view().expect("view"), 5).is_none());
        assert_eq!(taken(&mut p), b"c");
        assert!(kept.is_empty());
    }

    #[test]
    fn a_read_dropped_before_it_starts_takes_nothing() {
        let kept = KeptBytes::new(Arc::new(Last(AtomicU64::new(0))));
        kept.unclaimed(1, b"xyz");
        let mut p = read(8);
        let view = p.take_view().expect("view");
        drop(p);
        assert!(kept.start_read(view, 5).is_none());
        let mut p = read(8);
        assert!(kept.start_read(p.take_view().expect("view"), 5).is_none());
        assert_eq!(taken(&mut p), b"xyz");
    }

    #[test]
    fn a_read_dropped_in_flight_forwards_its_token() {
        let last = Arc::new(Last(AtomicU64::new(0)));
        let kept = KeptBytes::new(last.clone());
        let mut p = read(8);
        let view = kept.start_read(p.take_view().expect("view"), 42).expect("nothing kept");
        drop(p);
        assert_eq!(last.0.load(Ordering::SeqCst), 42);
        view.complete_from(b"late");
        let mut p = read(8);
        assert!(kept.start_read(p.take_view().expect("view"), 1).is_none());
        assert_eq!(taken(&mut p), b"late");
    }
}
