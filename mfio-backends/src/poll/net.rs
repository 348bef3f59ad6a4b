//! Socket operations on the poll backend: tried without blocking; an
//! operation that would block is parked until its socket's readiness edge.
//! A finished operation drops its socket reference before completing, so a
//! caller who sees the completion never finds the socket still held.

use std::sync::Arc;

use mfio_core::{CancelHandler, Error, Result};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use crate::op::{Accept, Connect, Recv, RecvFrom, Request, Send, SendTo, Shutdown, Socket};

/// Which readiness a parked operation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    Readable,
    Writable,
}

/// What trying an operation did.
pub(super) enum Attempt {
    /// Completed (successfully or not); nothing left to do.
    Done,
    /// Would block: park it until the socket is ready in this direction.
    Blocked { op: Request, wait: Wait },
}

/// A socket operation as the poll backend carries it out.
pub(super) trait SocketOp: Into<Request> {
    /// The socket it waits on.
    fn socket(&self) -> &Arc<Socket>;

    /// Tries it once without blocking. A dropped read or accept is failed
    /// without touching the socket, so no bytes or connections are taken
    /// for a caller that is gone.
    fn attempt(self) -> Attempt;

    /// Asks to hear (through `cancels`, under `token`) when the caller drops
    /// it while it is parked.
    ///
    /// # Errors
    /// `Interrupted` if the caller dropped it already.
    fn watch(&self, cancels: &Arc<dyn CancelHandler>, token: u64) -> Result<()>;
}

/// `$body` with `$o` bound to the socket operation inside `$op`; `$other`
/// for the rest (file and path operations, which go to the pool).
macro_rules! on_socket_op {
    ($op:expr, $o:ident => $body:expr, $rest:ident => $other:expr) => {
        match $op {
            Request::Connect($o) => $body,
            Request::Accept($o) => $body,
            Request::Send($o) => $body,
            Request::Recv($o) => $body,
            Request::Shutdown($o) => $body,
            Request::SendTo($o) => $body,
            Request::RecvFrom($o) => $body,
            $rest => $other,
        }
    };
}

/// The socket token of a socket operation; `None` for the others.
pub(super) fn socket_token(op: &Request) -> Option<u64> {
    on_socket_op!(op, o => Some(o.socket().token), _other => None)
}

/// Tries a socket operation once (see [`SocketOp::attempt`]); any other
/// operation comes back as it is, for the pool.
pub(super) fn attempt(op: Request) -> std::result::Result<Attempt, Request> {
    on_socket_op!(op, o => Ok(o.attempt()), other => Err(other))
}

/// Registers a parked operation for cancellation; returns it, or `None` if
/// it was failed because its caller is already gone.
pub(super) fn watch(op: Request, cancels: &Arc<dyn CancelHandler>, token: u64) -> Option<Request> {
    let registered = on_socket_op!(&op, o => o.watch(cancels, token), _other => Ok(()));
    match registered {
        Ok(()) => Some(op),
        Err(e) => {
            op.fail(e);
            None
        }
    }
}

/// Runs a non-blocking call: `None` if it would block, retrying `EINTR`.
fn nonblocking<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> Option<Result<T>> {
    loop {
        match f() {
            Ok(v) => return Some(Ok(v)),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return None,
            Err(e) => return Some(Err(Error::from(e))),
        }
    }
}

impl SocketOp for Recv {
    fn socket(&self) -> &Arc<Socket> {
        &self.sock
    }
    fn attempt(self) -> Attempt {
        let Recv { sock, view } = self;
        // Watched before any byte is taken (kept bytes included): a read
        // that completes now and is then dropped unclaimed gives its bytes
        // back to the socket. (Token 0 cancels nothing; a parked read gets
        // its own token in `watch`.)
        let Some(mut view) = sock.kept.start_read(view, 0) else {
            return Attempt::Done;
        };
        let recv = || rustix::net::recv(&sock.fd, view.as_uninit_mut(), RecvFlags::empty()).map(|((r, _), _)| r.len());
        match nonblocking(recv) {
            Some(res) => {
                drop(sock);
                view.finish(res);
                Attempt::Done
            }
            None => Attempt::Blocked {
                op: Recv { sock, view }.into(),
                wait: Wait::Readable,
            },
        }
    }
    fn watch(&self, _cancels: &Arc<dyn CancelHandler>, token: u64) -> Result<()> {
        self.sock.kept.watch(&self.view, token)
    }
}

impl SocketOp for Send {
    fn socket(&self) -> &Arc<Socket> {
        &self.sock
    }
    fn attempt(self) -> Attempt {
        if self.view.is_cancelled() {
            self.view.fail(Error::cancelled());
            return Attempt::Done;
        }
        match nonblocking(|| rustix::net::send(&self.sock.fd, self.view.as_slice(), SendFlags::NOSIGNAL)) {
            Some(res) => {
                let Send { sock, view } = self;
                drop(sock);
                view.finish(res);
                Attempt::Done
            }
            None => Attempt::Blocked {
                op: self.into(),
                wait: Wait::Writable,
            },
        }
    }
    fn watch(&self, _cancels: &Arc<dyn CancelHandler>, token: u64) -> Result<()> {
        self.view.set_cancel_handler(self.sock.kept.clone(), token)
    }
}

impl SocketOp for Accept {
    fn socket(&self) -> &Arc<Socket> {
        &self.sock
    }
    fn attempt(self) -> Attempt {
        if self.done.is_abandoned() {
            self.done.complete(Err(Error::cancelled()));
            return Attempt::Done;
        }
        match nonblocking(|| rustix::net::accept_with(&self.sock.fd, SocketFlags::CLOEXEC)) {
            Some(res) => {
                let Accept { sock, done } = self;
                drop(sock);
                done.complete(res);
                Attempt::Done
            }
            None => Attempt::Blocked {
                op: self.into(),
                wait: Wait::Readable,
            },
        }
    }
    fn watch(&self, cancels: &Arc<dyn CancelHandler>, token: u64) -> Result<()> {
        self.done.set_cancel_handler(cancels.clone(), token)
    }
}

impl SocketOp for Connect {
    fn socket(&self) -> &Arc<Socket> {
        &self.sock
    }
    fn attempt(self) -> Attempt {
        let res = if self.in_progress {
            // Writable after EINPROGRESS: the outcome is in SO_ERROR.
            crate::blocking::sys::connect_outcome(&self.sock.fd)
        } else {
            match rustix::net::connect(&self.sock.fd, &*self.addr) {
                Ok(()) => Ok(()),
                Err(Errno::INPROGRESS | Errno::INTR) => {
                    let op = Connect {
                        in_progress: true,
                        ..self
                    };
                    return Attempt::Blocked {
                        op: op.into(),
                        wait: Wait::Writable,
                    };
                }
                Err(e) => Err(Error::from(e)),
            }
        };
        let Connect { sock, done, .. } = self;
        drop(sock);
        done.complete(res);
        Attempt::Done
    }
    fn watch(&self, cancels: &Arc<dyn CancelHandler>, token: u64) -> Result<()> {
        self.done.set_cancel_handler(cancels.clone(), token)
    }
}

impl SocketOp for Shutdown {
    fn socket(&self) -> &Arc<Socket> {
        &self.sock
    }
    fn attempt(self) -> Attempt {
        let Shutdown { sock, how, done } = self;
        let res = rustix::net::shutdown(&sock.fd, how).map_err(Error::from);
        drop(sock);
        done.complete(res);
        Attempt::Done
    }
    fn watch(&self, _cancels: &Arc<dyn CancelHandler>, _token: u64) -> Result<()> {
        Ok(())
    }
}

impl SocketOp for SendTo {
    fn socket(&self) -> &Arc<Socket> {
        &self.sock
    }
    fn attempt(self) -> Attempt {
        if self.view.is_cancelled() {
            self.view.fail(Error::cancelled());
            return Attempt::Done;
        }
        let sent =
            nonblocking(|| rustix::net::sendto(&self.sock.fd, self.view.as_slice(), SendFlags::NOSIGNAL, &*self.addr));
        match sent {
            Some(res) => {
                let SendTo { sock, view, .. } = self;
                drop(sock);
                view.finish(res);
                Attempt::Done
            }
            None => Attempt::Blocked {
                op: self.into(),
                wait: Wait::Writable,
            },
        }
    }
    fn watch(&self, _cancels: &Arc<dyn CancelHandler>, token: u64) -> Result<()> {
        self.view.set_cancel_handler(self.sock.kept.clone(), token)
    }
}

impl SocketOp for RecvFrom {
    fn socket(&self) -> &Arc<Socket> {
        &self.sock
    }
    fn attempt(self) -> Attempt {
        let RecvFrom { sock, mut view, from } = self;
        if view.is_cancelled() {
            drop(sock);
            view.fail(Error::cancelled());
            return Attempt::Done;
        }
        let recv = || {
            rustix::net::recvfrom(&sock.fd, view.as_uninit_mut(), RecvFlags::empty())
                .map(|((r, _), _, addr)| (r.len(), addr))
        };
        match nonblocking(recv) {
            Some(res) => {
                drop(sock);
                view.finish(res.map(|(n, addr)| {
                    if let Some(a) = addr.and_then(|a| std::net::SocketAddr::try_from(a).ok()) {
                        let _ = from.set(a);
                    }
                    n
                }));
                Attempt::Done
            }
            None => Attempt::Blocked {
                op: RecvFrom { sock, view, from }.into(),
                wait: Wait::Readable,
            },
        }
    }
    fn watch(&self, cancels: &Arc<dyn CancelHandler>, token: u64) -> Result<()> {
        self.view.set_cancel_handler(cancels.clone(), token)
    }
}
