//! The backend's descriptor, borrowed for a host reactor.

#![cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// A descriptor owned by a backend that outlives this value (the drivers
/// hold the backend for as long as they hold this).
pub(crate) struct BackendFd(pub(crate) RawFd);

impl AsRawFd for BackendFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl AsFd for BackendFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the backend owning this descriptor outlives `self` (see the
        // type's docs), so it stays open for the borrow's lifetime.
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }
}
