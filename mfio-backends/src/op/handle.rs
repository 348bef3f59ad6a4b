//! What operations act on: an open file's descriptor ([`FileFd`], with its
//! io_uring registered-file slot and its count of writes in flight), a path
//! relative to a directory ([`At`]), and an open socket ([`Socket`], with
//! its kept-back bytes).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mfio_core::kept::KeptBytes;
use mfio_core::queue::Mailbox;
use mfio_core::Notifier;
use parking_lot::Mutex;

/// An open file's (or directory's) descriptor and, on io_uring, its slot in
/// the ring's file table. Shared by the handle and every operation on it, so
/// the slot is released only once no operation can still use it.
pub(crate) struct FileFd {
    pub(crate) fd: OwnedFd,
    pub(crate) fixed: Option<FixedSlot>,
    /// Writes handed to the kernel or the pool and not yet finished; a sync
    /// of this file waits for them (and only for them).
    writes_in_flight: AtomicUsize,
}

impl FileFd {
    /// `fd`, with its registered-file slot if it has one.
    pub(crate) fn new(fd: OwnedFd, fixed: Option<FixedSlot>) -> Self {
        Self {
            fd,
            fixed,
            writes_in_flight: AtomicUsize::new(0),
        }
    }

    /// True while a write handed out before now has not finished.
    pub(crate) fn has_writes_in_flight(&self) -> bool {
        self.writes_in_flight.load(Ordering::Acquire) != 0
    }

    /// Counts a write handed to the kernel or the pool.
    pub(crate) fn write_started(&self) {
        self.writes_in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a write that finished (its completion was reaped or its
    /// system call returned).
    pub(crate) fn write_finished(&self) {
        self.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for FileFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileFd")
            .field("fd", &self.fd.as_raw_fd())
            .field("slot", &self.fixed.as_ref().map(|s| s.index))
            .finish()
    }
}

impl AsFd for FileFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for FileFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A slot in io_uring's registered-file table, given back when dropped.
pub(crate) struct FixedSlot {
    pub(crate) index: u32,
    /// Where released slots go; the ring is updated at its next driving step.
    pub(crate) release: Arc<Mailbox<u32>>,
    pub(crate) notifier: Arc<Notifier>,
}

impl Drop for FixedSlot {
    fn drop(&mut self) {
        self.release.push(self.index);
        self.notifier.notify();
    }
}

/// A path, relative to a directory descriptor (`None`: the current directory).
pub(crate) struct At {
    pub(crate) dir: Option<Arc<FileFd>>,
    pub(crate) path: CString,
}

impl At {
    /// The directory descriptor for `*at(2)` calls (`AT_FDCWD` for none).
    pub(crate) fn dirfd(&self) -> BorrowedFd<'_> {
        match &self.dir {
            Some(fd) => fd.as_fd(),
            None => rustix::fs::CWD,
        }
    }
}

/// An open socket, shared by its handle and every operation on it.
///
/// On the poll backend it is registered (edge-triggered) in the backend's
/// epoll set under `token`, and deregistered when the last user is gone,
/// before the descriptor closes, so a reused descriptor number can never
/// inherit a stale registration.
pub(crate) struct Socket {
    pub(crate) fd: OwnedFd,
    /// Bytes of completed reads whose caller dropped them, read again first;
    /// also the cancel handler of every operation on the socket (it
    /// forwards cancellations to the backend).
    pub(crate) kept: Arc<KeptBytes>,
    /// Held by a receive that runs as a blocking call (thread pool), so
    /// receives on one socket take their bytes one after the other.
    pub(crate) read_turn: Mutex<()>,
    /// The poll backend's epoll set, if registered there.
    pub(crate) epoll: Option<Arc<OwnedFd>>,
    /// Identifies the socket in the epoll set and in cancellation tokens.
    pub(crate) token: u64,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.fd.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl Socket {
    /// A socket whose operations' cancellations go to `cancels`.
    pub(crate) fn new(
        fd: OwnedFd,
        cancels: Arc<dyn mfio_core::CancelHandler>,
        epoll: Option<Arc<OwnedFd>>,
        token: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            fd,
            kept: KeptBytes::new(cancels),
            read_turn: Mutex::new(()),
            epoll,
            token,
        })
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(epoll) = &self.epoll {
            let _ = rustix::event::epoll::delete(&**epoll, &self.fd);
        }
    }
}
