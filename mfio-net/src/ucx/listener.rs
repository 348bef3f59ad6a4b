//! [`Listener`]: accepts connections by socket address.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use mfio_core::{DriveStatus, IoBackend, PollingHandle, Result};
use parking_lot::Mutex;

use super::endpoint::Endpoint;
use super::sys;
use super::worker::{Shared, Worker};

/// Connection requests UCX handed to the listener's callback.
struct Requests {
    queue: Mutex<VecDeque<sys::ConnRequestH>>,
    waker: AtomicWaker,
}

// SAFETY: the requests are plain handles, used with the worker locked.
unsafe impl Send for Requests {}
// SAFETY: as above.
unsafe impl Sync for Requests {}

unsafe extern "C" fn connection_requested(request: sys::ConnRequestH, arg: *mut c_void) {
    // SAFETY: arg is the listener's Requests, alive until the listener is
    // destroyed (after which UCX calls nothing).
    let requests = unsafe { &*(arg as *const Requests) };
    requests.queue.lock().push_back(request);
    requests.waker.wake();
}

/// Listens on a socket address; each [`accept`](Self::accept) yields an
/// [`Endpoint`] for one connecting peer.
///
/// Needs a UCX transport on the address's interface (`tcp` in `UCX_TLS`
/// for loopback); the data may then still move over shared memory.
pub struct Listener {
    worker: Arc<Shared>,
    handle: sys::ListenerH,
    requests: Arc<Requests>,
    addr: SocketAddr,
}

// SAFETY: the listener handle is used only with the worker locked.
unsafe impl Send for Listener {}
// SAFETY: as above.
unsafe impl Sync for Listener {}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").field("addr", &self.addr).finish()
    }
}

impl Worker {
    /// Listens on `addr` (port 0: a free port, see
    /// [`Listener::local_addr`]).
    ///
    /// # Errors
    /// What UCX reports (`AddrInUse`, no transport on the interface).
    pub fn listen(&self, addr: SocketAddr) -> Result<Listener> {
        let requests = Arc::new(Requests {
            queue: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
        });
        let _st = self.shared.lock();
        // SAFETY: the worker is live and locked; requests outlive the
        // listener (held by it).
        let handle = unsafe {
            sys::listener_create(
                self.shared.handle,
                addr,
                connection_requested,
                Arc::as_ptr(&requests) as *mut c_void,
            )?
        };
        // SAFETY: the listener is live.
        let addr = match unsafe { sys::listener_addr(handle) } {
            Ok(addr) => addr,
            Err(err) => {
                // SAFETY: created above, destroyed once.
                unsafe { sys::listener_destroy(handle) };
                return Err(err);
            }
        };
        Ok(Listener {
            worker: self.shared.clone(),
            handle,
            requests,
            addr,
        })
    }
}

impl Listener {
    /// The address it listens on, with the port UCX chose.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the next peer and connects to it.
    pub fn accept(&self) -> Accept<'_> {
        Accept { listener: self }
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<Endpoint>> {
        let next = self.requests.queue.lock().pop_front();
        let request = match next {
            Some(request) => request,
            None => {
                self.requests.waker.register(cx.waker());
                match self.requests.queue.lock().pop_front() {
                    Some(request) => request,
                    None => return Poll::Pending,
                }
            }
        };
        // SAFETY: a live request of this listener.
        let peer = unsafe { sys::conn_request_peer(request) }.ok();
        Poll::Ready(Endpoint::create(
            &self.worker,
            sys::EpTarget::ConnRequest(request),
            peer,
        ))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _st = self.worker.lock();
        for request in self.requests.queue.lock().drain(..) {
            // SAFETY: requests of this live listener, each used once.
            unsafe { sys::listener_reject(self.handle, request) };
        }
        // SAFETY: live, destroyed once, with the worker locked.
        unsafe { sys::listener_destroy(self.handle) };
    }
}

impl IoBackend for Listener {
    fn polling_handle(&self) -> PollingHandle<'_> {
        self.worker.polling_handle()
    }

    fn drive(&self) -> DriveStatus {
        self.worker.drive()
    }
    fn drive_now(&self) -> DriveStatus {
        self.worker.drive_now()
    }
    fn spin_budget(&self) -> std::time::Duration {
        self.worker.spin_budget()
    }
}

/// Future of [`Listener::accept`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Accept<'a> {
    listener: &'a Listener,
}

impl Future for Accept<'_> {
    type Output = Result<Endpoint>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Endpoint>> {
        self.listener.poll_accept(cx)
    }
}
