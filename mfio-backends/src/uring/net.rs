//! Socket operations as io_uring entries. Sockets stay in blocking mode:
//! the ring waits for readiness itself.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{opcode, squeue};
use mfio_core::{CancelHandler, Error, PacketView, Write};

use super::op::{cqe_result, len_u32, sock_fd, Msg, Prepare, Scratch, Supported, UringOp};
use crate::op::{Accept, Connect, Recv, RecvFrom, Request, Send, SendTo, Shutdown, Socket};

/// A send's view, with the socket registered to hear (under `token`) when
/// its caller drops it; `None`, the view failed as cancelled, if the caller
/// is already gone.
fn watched(sock: &Socket, view: PacketView<Write>, token: u64) -> Option<PacketView<Write>> {
    match view.set_cancel_handler(sock.kept.clone(), token) {
        Ok(()) => Some(view),
        Err(e) => {
            view.fail(e);
            None
        }
    }
}

impl UringOp for Connect {
    fn supported(&self, s: &Supported) -> bool {
        if self.in_progress {
            s.poll_add
        } else {
            s.connect
        }
    }
    fn prepare(self, cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let handler: Arc<dyn CancelHandler> = cx.cancels.clone();
        if self.done.set_cancel_handler(handler, cx.user_data).is_err() {
            self.done.complete(Err(Error::cancelled()));
            return None;
        }
        let entry = if self.in_progress {
            let writable = (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) as u32;
            opcode::PollAdd::new(sock_fd(&self.sock), writable).build()
        } else {
            opcode::Connect::new(sock_fd(&self.sock), self.addr.as_ptr().cast(), self.addr.addr_len()).build()
        };
        Some((entry, self.into(), Scratch::None))
    }
    /// A connect sent again after its first try started the handshake (see
    /// `submitter`) reports `EALREADY`: it then waits for that handshake.
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let Connect {
            sock,
            addr,
            in_progress,
            done,
        } = self;
        let outcome = match cqe_result(res) {
            // Writable: the handshake ended, and SO_ERROR says how.
            Ok(_) if in_progress => crate::blocking::sys::connect_outcome(&sock.fd),
            Ok(_) => Ok(()),
            Err(e) if !in_progress && e.raw_os_error() == Some(libc::EALREADY) => {
                let again = Connect {
                    sock,
                    addr,
                    in_progress: true,
                    done,
                };
                return Some(again.into());
            }
            Err(e) if !in_progress && e.raw_os_error() == Some(libc::EISCONN) => Ok(()),
            Err(e) => Err(e),
        };
        drop((sock, addr));
        done.complete(outcome);
        None
    }
}

impl UringOp for Accept {
    fn supported(&self, s: &Supported) -> bool {
        s.accept
    }
    fn prepare(self, cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let handler: Arc<dyn CancelHandler> = cx.cancels.clone();
        if self.done.set_cancel_handler(handler, cx.user_data).is_err() {
            self.done.complete(Err(Error::cancelled()));
            return None;
        }
        let entry = opcode::Accept::new(sock_fd(&self.sock), std::ptr::null_mut(), std::ptr::null_mut())
            .flags(libc::SOCK_CLOEXEC)
            .build();
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let Accept { sock, done } = self;
        drop(sock);
        done.complete(cqe_result(res).and_then(|fd| {
            let fd = i32::try_from(fd).map_err(|_| Error::new(std::io::ErrorKind::Other, "bad fd from accept"))?;
            // SAFETY: a successful accept completion returns a new descriptor
            // that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }));
        None
    }
}

impl UringOp for Send {
    fn supported(&self, s: &Supported) -> bool {
        s.send
    }
    fn prepare(self, cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let Send { sock, view } = self;
        let view = watched(&sock, view, cx.user_data)?;
        let slice = view.as_slice();
        let entry = opcode::Send::new(sock_fd(&sock), slice.as_ptr(), len_u32(slice.len()))
            .flags(libc::MSG_NOSIGNAL)
            .build();
        Some((entry, Send { sock, view }.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let Send { sock, view } = self;
        drop(sock);
        view.finish(cqe_result(res));
        None
    }
}

impl UringOp for Recv {
    fn supported(&self, s: &Supported) -> bool {
        s.recv
    }
    /// Watched before any byte is taken (kept bytes included): the socket
    /// hears about a dropped read (to cancel it) and keeps the bytes of one
    /// that completed after its caller gave up.
    fn prepare(self, cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let Recv { sock, view } = self;
        let mut view = sock.kept.start_read(view, cx.user_data)?;
        let len = len_u32(view.len());
        let entry = opcode::Recv::new(sock_fd(&sock), view.as_mut_ptr(), len).build();
        Some((entry, Recv { sock, view }.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let Recv { sock, view } = self;
        drop(sock);
        view.finish(cqe_result(res));
        None
    }
}

impl UringOp for Shutdown {
    fn supported(&self, s: &Supported) -> bool {
        s.shutdown
    }
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let how = match self.how {
            rustix::net::Shutdown::Read => libc::SHUT_RD,
            rustix::net::Shutdown::Write => libc::SHUT_WR,
            rustix::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        let entry = opcode::Shutdown::new(sock_fd(&self.sock), how).build();
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let Shutdown { sock, done, .. } = self;
        drop(sock);
        done.complete(cqe_result(res).map(|_| ()));
        None
    }
}

impl UringOp for SendTo {
    fn supported(&self, s: &Supported) -> bool {
        s.sendmsg
    }
    fn prepare(self, cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let SendTo { sock, addr, view } = self;
        let view = watched(&sock, view, cx.user_data)?;
        let slice = view.as_slice();
        let mut msg = Msg::new(slice.as_ptr().cast_mut(), slice.len());
        msg.set_destination(&addr);
        let entry = opcode::SendMsg::new(sock_fd(&sock), msg.header())
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        Some((entry, SendTo { sock, addr, view }.into(), Scratch::Msg(msg)))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let SendTo { sock, addr, view } = self;
        drop((sock, addr));
        view.finish(cqe_result(res));
        None
    }
}

impl UringOp for RecvFrom {
    fn supported(&self, s: &Supported) -> bool {
        s.recvmsg
    }
    fn prepare(mut self, cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let handler: Arc<dyn CancelHandler> = cx.cancels.clone();
        if self.view.set_cancel_handler(handler, cx.user_data).is_err() {
            self.view.fail(Error::cancelled());
            return None;
        }
        let len = self.view.len();
        let mut msg = Msg::new(self.view.as_mut_ptr(), len);
        let entry = opcode::RecvMsg::new(sock_fd(&self.sock), msg.header_mut()).build();
        Some((entry, self.into(), Scratch::Msg(msg)))
    }
    fn complete(self, res: i32, scratch: Scratch) -> Option<Request> {
        let RecvFrom { sock, view, from } = self;
        drop(sock);
        let result = cqe_result(res);
        if result.is_ok() {
            if let Scratch::Msg(msg) = &scratch {
                if let Some(addr) = msg.source() {
                    let _ = from.set(addr);
                }
            }
        }
        view.finish(result);
        None
    }
}
