//! Socket operations as blocking calls. They run here only on io_uring
//! without the opcode, where sockets are in blocking mode: each waits for
//! readiness in slices ([`wait_ready`]) and then calls without blocking, so
//! a caller that drops the operation frees its worker within a slice.

use mfio_core::Error;
use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use super::sys::{connect_outcome, retry, wait_ready};
use super::RunBlocking;
use crate::op::{Accept, Connect, Recv, RecvFrom, Send, SendTo, Shutdown};

/// Calls `f(of)` (without blocking) each time `fd` is ready for `events`,
/// until it does not report `EAGAIN`; fails as cancelled once `gone(of)`
/// says the caller dropped the operation `of` belongs to.
fn when_ready<S, T>(
    fd: &std::os::fd::OwnedFd,
    events: PollFlags,
    of: &mut S,
    gone: impl Fn(&S) -> bool,
    mut f: impl FnMut(&mut S) -> rustix::io::Result<T>,
) -> mfio_core::Result<T> {
    loop {
        if gone(of) {
            return Err(Error::cancelled());
        }
        if !wait_ready(fd, events) {
            continue;
        }
        match f(of) {
            Ok(v) => return Ok(v),
            Err(Errno::AGAIN | Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl RunBlocking for Connect {
    fn run(self) {
        let Connect {
            sock,
            addr,
            in_progress,
            done,
        } = self;
        let res = if in_progress {
            let mut waiting = &done;
            when_ready(&sock.fd, PollFlags::OUT, &mut waiting, |d| d.is_abandoned(), |_| Ok(()))
                .and_then(|()| connect_outcome(&sock.fd))
        } else {
            retry(|| rustix::net::connect(&sock.fd, &*addr))
        };
        drop(sock);
        done.complete(res);
    }
}

impl RunBlocking for Accept {
    /// The accept itself may still block if another one takes the
    /// connection between readiness and the call.
    fn run(self) {
        let Accept { sock, done } = self;
        let mut waiting = &done;
        let res = when_ready(
            &sock.fd,
            PollFlags::IN,
            &mut waiting,
            |d| d.is_abandoned(),
            |_| rustix::net::accept_with(&sock.fd, SocketFlags::CLOEXEC),
        );
        drop(sock);
        done.complete(res);
    }
}

impl RunBlocking for Send {
    fn run(self) {
        let Send { sock, mut view } = self;
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        let res = when_ready(
            &sock.fd,
            PollFlags::OUT,
            &mut view,
            |v| v.is_cancelled(),
            |v| rustix::net::send(&sock.fd, v.as_slice(), flags),
        );
        drop(sock);
        view.finish(res);
    }
}

impl RunBlocking for Recv {
    fn run(self) {
        let Recv { sock, view } = self;
        // One receive at a time takes bytes from this socket, so a read
        // dropped while it waited gives its bytes back before the next one
        // looks (the ring orders its receives the same way).
        let turn = sock.read_turn.lock();
        let Some(mut view) = sock.kept.start_read(view, 0) else {
            return;
        };
        let res = loop {
            if view.is_cancelled() {
                break Err(Error::cancelled());
            }
            if let Some(n) = sock.kept.serve(&mut view) {
                break Ok(n);
            }
            if !wait_ready(&sock.fd, PollFlags::IN) {
                continue;
            }
            match rustix::net::recv(&sock.fd, view.as_uninit_mut(), RecvFlags::DONTWAIT) {
                Ok(((read, _), _)) => break Ok(read.len()),
                Err(Errno::AGAIN | Errno::INTR) => continue,
                Err(e) => break Err(e.into()),
            }
        };
        drop(turn);
        drop(sock);
        view.finish(res);
    }
}

impl RunBlocking for Shutdown {
    fn run(self) {
        let Shutdown { sock, how, done } = self;
        let res = retry(|| rustix::net::shutdown(&sock.fd, how));
        drop(sock);
        done.complete(res);
    }
}

impl RunBlocking for SendTo {
    fn run(self) {
        let SendTo { sock, addr, mut view } = self;
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        let res = when_ready(
            &sock.fd,
            PollFlags::OUT,
            &mut view,
            |v| v.is_cancelled(),
            |v| rustix::net::sendto(&sock.fd, v.as_slice(), flags, &*addr),
        );
        drop(sock);
        view.finish(res);
    }
}

impl RunBlocking for RecvFrom {
    fn run(self) {
        let RecvFrom { sock, mut view, from } = self;
        let res = when_ready(
            &sock.fd,
            PollFlags::IN,
            &mut view,
            |v| v.is_cancelled(),
            |v| {
                rustix::net::recvfrom(&sock.fd, v.as_uninit_mut(), RecvFlags::DONTWAIT)
                    .map(|((read, _), _, addr)| (read.len(), addr))
            },
        );
        drop(sock);
        view.finish(res.map(|(n, addr)| {
            if let Some(a) = addr.and_then(|a| std::net::SocketAddr::try_from(a).ok()) {
                let _ = from.set(a);
            }
            n
        }));
    }
}
