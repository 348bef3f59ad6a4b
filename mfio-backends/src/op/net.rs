//! Operations on sockets: connect, accept, send, receive, shut down, and
//! datagrams to and from an address.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};

use mfio_core::completion::Completer;
use mfio_core::{PacketView, Read, Write};
use rustix::net::SocketAddrAny;

use super::{Done, Socket};

/// `connect(addr)` on a new socket; `in_progress` once a connect was started
/// and its outcome is awaited (the socket turns writable, then `SO_ERROR`
/// tells).
pub(crate) struct Connect {
    pub(crate) sock: Arc<Socket>,
    pub(crate) addr: Box<SocketAddrAny>,
    pub(crate) in_progress: bool,
    pub(crate) done: Completer<()>,
}

/// `accept4(SOCK_CLOEXEC)`.
pub(crate) struct Accept {
    pub(crate) sock: Arc<Socket>,
    pub(crate) done: Completer<OwnedFd>,
}

/// `send(MSG_NOSIGNAL)`: a closed peer is `EPIPE`, never a signal.
pub(crate) struct Send {
    pub(crate) sock: Arc<Socket>,
    pub(crate) view: PacketView<Write>,
}

/// `recv`: what is available, at least 1 byte, or 0 at end of stream. Bytes
/// kept back from dropped reads come first (see [`Socket::kept`]).
pub(crate) struct Recv {
    pub(crate) sock: Arc<Socket>,
    pub(crate) view: PacketView<Read>,
}

/// `shutdown(how)`.
pub(crate) struct Shutdown {
    pub(crate) sock: Arc<Socket>,
    pub(crate) how: rustix::net::Shutdown,
    pub(crate) done: Done,
}

/// `sendto(addr)`: one datagram.
pub(crate) struct SendTo {
    pub(crate) sock: Arc<Socket>,
    pub(crate) addr: Box<SocketAddrAny>,
    pub(crate) view: PacketView<Write>,
}

/// `recvfrom`: one datagram; the sender's address is stored in `from`
/// before the view completes.
pub(crate) struct RecvFrom {
    pub(crate) sock: Arc<Socket>,
    pub(crate) view: PacketView<Read>,
    pub(crate) from: Arc<OnceLock<SocketAddr>>,
}

operation! {
    Connect => Connect, fails through done;
    Accept => Accept, fails through done;
    Send => Write, fails through view;
    Recv => Read, fails through view;
    Shutdown => Shutdown, fails through done;
    SendTo => Write, fails through view;
    RecvFrom => Read, fails through view;
}
