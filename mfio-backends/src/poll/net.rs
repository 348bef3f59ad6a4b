//! Socket operations on the poll backend: tried without blocking; an
//! operation that would block is parked until its socket's readiness edge.
//! A finished operation drops its socket reference before completing, so a
//! caller who sees the completion never finds the socket still held.

use std::sync::Arc;

use mfio_core::{CancelHandler, Error};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use crate::op::Op;

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
    Blocked { op: Op, wait: Wait },
}

/// True for the operations this module handles (the rest go to the pool).
pub(super) fn is_socket_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Connect { .. }
            | Op::Accept { .. }
            | Op::Send { .. }
            | Op::Recv { .. }
            | Op::Shutdown { .. }
            | Op::SendTo { .. }
            | Op::RecvFrom { .. }
    )
}

/// The socket token an operation refers to.
pub(super) fn socket_token(op: &Op) -> Option<u64> {
    match op {
        Op::Connect { sock, .. }
        | Op::Accept { sock, .. }
        | Op::Send { sock, .. }
        | Op::Recv { sock, .. }
        | Op::Shutdown { sock, .. }
        | Op::SendTo { sock, .. }
        | Op::RecvFrom { sock, .. } => Some(sock.token),
        _ => None,
    }
}

/// Tries `op` once without blocking. A dropped read or accept is failed
/// here without touching the socket, so no bytes or connections are taken
/// for a caller that is gone.
pub(super) fn attempt(op: Op) -> Attempt {
    match op {
        Op::Recv { sock, view } => {
            // Watched before any byte is taken (kept bytes included): a read
            // that completes now and is then dropped unclaimed gives its
            // bytes back to the socket. (Token 0 cancels nothing; a parked
            // read gets its own token in `watch`.)
            let Some(mut view) = sock.kept.start_read(view, 0) else {
                return Attempt::Done;
            };
            let recv =
                || rustix::net::recv(&sock.fd, view.as_uninit_mut(), RecvFlags::empty()).map(|((r, _), _)| r.len());
            match nonblocking(recv) {
                Some(Ok(n)) => {
                    drop(sock);
                    view.complete(n);
                    Attempt::Done
                }
                Some(Err(e)) => {
                    drop(sock);
                    view.fail(e);
                    Attempt::Done
                }
                None => Attempt::Blocked {
                    op: Op::Recv { sock, view },
                    wait: Wait::Readable,
                },
            }
        }
        Op::Send { sock, view } => {
            if view.is_cancelled() {
                drop(sock);
                view.fail(Error::cancelled());
                return Attempt::Done;
            }
            match nonblocking(|| rustix::net::send(&sock.fd, view.as_slice(), SendFlags::NOSIGNAL)) {
                Some(res) => {
                    drop(sock);
                    view.finish(res);
                    Attempt::Done
                }
                None => Attempt::Blocked {
                    op: Op::Send { sock, view },
                    wait: Wait::Writable,
                },
            }
        }
        Op::Accept { sock, done } => {
            if done.is_abandoned() {
                drop(sock);
                done.complete(Err(Error::cancelled()));
                return Attempt::Done;
            }
            match nonblocking(|| rustix::net::accept_with(&sock.fd, SocketFlags::CLOEXEC)) {
                Some(res) => {
                    drop(sock);
                    done.complete(res);
                    Attempt::Done
                }
                None => Attempt::Blocked {
                    op: Op::Accept { sock, done },
                    wait: Wait::Readable,
                },
            }
        }
        Op::Connect {
            sock,
            addr,
            in_progress,
            done,
        } => {
            let res = if in_progress {
                // Writable after EINPROGRESS: the outcome is in SO_ERROR.
                crate::sys::connect_outcome(&sock.fd)
            } else {
                match rustix::net::connect(&sock.fd, &*addr) {
                    Ok(()) => Ok(()),
                    Err(Errno::INPROGRESS | Errno::INTR) => {
                        return Attempt::Blocked {
                            op: Op::Connect {
                                sock,
                                addr,
                                in_progress: true,
                                done,
                            },
                            wait: Wait::Writable,
                        }
                    }
                    Err(e) => Err(Error::from(e)),
                }
            };
            drop(sock);
            done.complete(res);
            Attempt::Done
        }
        Op::Shutdown { sock, how, done } => {
            let res = rustix::net::shutdown(&sock.fd, how).map_err(Error::from);
            drop(sock);
            done.complete(res);
            Attempt::Done
        }
        Op::SendTo { sock, addr, view } => {
            if view.is_cancelled() {
                drop(sock);
                view.fail(Error::cancelled());
                return Attempt::Done;
            }
            match nonblocking(|| rustix::net::sendto(&sock.fd, view.as_slice(), SendFlags::NOSIGNAL, &*addr)) {
                Some(res) => {
                    drop(sock);
                    view.finish(res);
                    Attempt::Done
                }
                None => Attempt::Blocked {
                    op: Op::SendTo { sock, addr, view },
                    wait: Wait::Writable,
                },
            }
        }
        Op::RecvFrom { sock, mut view, from } => {
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
                    op: Op::RecvFrom { sock, view, from },
                    wait: Wait::Readable,
                },
            }
        }
        other => {
            other.fail(Error::new(std::io::ErrorKind::Other, "not a socket operation"));
            Attempt::Done
        }
    }
}

/// Runs a non-blocking call: `None` if it would block, retrying `EINTR`.
fn nonblocking<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> Option<mfio_core::Result<T>> {
    loop {
        match f() {
            Ok(v) => return Some(Ok(v)),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return None,
            Err(e) => return Some(Err(Error::from(e))),
        }
    }
}

/// Registers `handler` to hear when the caller drops a parked operation.
/// Returns the operation, or `None` if it was failed because its caller is
/// already gone.
pub(super) fn watch(op: Op, handler: &Arc<dyn CancelHandler>, token: u64) -> Option<Op> {
    let registered = match &op {
        Op::Recv { sock, view } => sock.kept.watch(view, token),
        Op::Send { sock, view } | Op::SendTo { sock, view, .. } => view.set_cancel_handler(sock.kept.clone(), token),
        Op::RecvFrom { view, .. } => view.set_cancel_handler(handler.clone(), token),
        Op::Accept { done, .. } => done.set_cancel_handler(handler.clone(), token),
        Op::Connect { done, .. } => done.set_cancel_handler(handler.clone(), token),
        _ => Ok(()),
    };
    match registered {
        Ok(()) => Some(op),
        Err(e) => {
            op.fail(e);
            None
        }
    }
}
