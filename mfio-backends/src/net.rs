//! Stream sockets: [`TcpListener`]/[`TcpStream`] and
//! [`UnixListener`]/[`UnixStream`], shaped like `std::net` /
//! `std::os::unix::net`.
//!
//! A stream is a `PacketIo` handle at [`NoPos`]: every mfio-core stream layer
//! works on it (`IoReadStream::read` returns what is available, at least one
//! byte or 0 at end of stream). Dropping a read in flight never loses bytes:
//! the read is cancelled, or, if it already completed, its bytes are read
//! again by the next read.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mfio_core::{
    BufResult, CloseWrite, DriveStatus, Error, Flush, IoBackend, IoBuf, IoBufMut, NoPos, PacketIo, PacketIoExt,
    PacketView, PendingIo, PollingHandle, QueueFull, Read, Result, Write,
};
use rustix::net::{AddressFamily, SocketAddrAny, SocketAddrUnix, SocketFlags, SocketType};

use crate::op::{self, Done, Socket};
use crate::runtime::OpFuture;
use crate::runtime::Runtime;

/// A stream from a polling closure.
fn futures_core_stream<T>(
    f: impl FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin,
) -> impl futures_core::Stream<Item = T> {
    struct PollStream<F>(F);
    impl<T, F: FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin> futures_core::Stream for PollStream<F> {
        type Item = T;
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            (self.get_mut().0)(cx)
        }
    }
    PollStream(f)
}

/// Backlog of listening sockets.
const LISTEN_BACKLOG: i32 = 1024;

fn new_socket(family: AddressFamily) -> Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn family_of(addr: &SocketAddr) -> AddressFamily {
    match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    }
}

fn unix_addr(path: &Path) -> Result<SocketAddrUnix> {
    Ok(SocketAddrUnix::new(path)?)
}

/// Converts a socket address reported by the kernel.
trait FromAny: Sized {
    fn from_any(addr: Option<SocketAddrAny>) -> Result<Self>;
}

impl FromAny for SocketAddr {
    fn from_any(addr: Option<SocketAddrAny>) -> Result<Self> {
        addr.and_then(|a| SocketAddr::try_from(a).ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidData, "not an internet socket address"))
    }
}

impl FromAny for Option<PathBuf> {
    /// Unnamed and abstract Unix sockets have no path.
    fn from_any(addr: Option<SocketAddrAny>) -> Result<Self> {
        Ok(addr.and_then(|a| SocketAddrUnix::try_from(a).ok()).and_then(|u| {
            u.path()
                .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p.to_bytes())))
        }))
    }
}

use std::os::unix::ffi::OsStrExt;

fn peer_of<A: FromAny>(sock: &Socket) -> Result<A> {
    A::from_any(rustix::net::getpeername(&sock.fd)?)
}

fn local_of<A: FromAny>(sock: &Socket) -> Result<A> {
    A::from_any(Some(rustix::net::getsockname(&sock.fd)?))
}

fn listen_on(rt: &Runtime, fd: OwnedFd, addr: &impl rustix::net::addr::SocketAddrArg) -> Result<Arc<Socket>> {
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, addr)?;
    rustix::net::listen(&fd, LISTEN_BACKLOG)?;
    rt.register_socket(fd)
}

/// `PacketIo` at `NoPos` (receive and send), `IoBackend` and `AsFd` for a
/// socket type with `rt: Runtime` and `sock: Arc<Socket>` fields: stream
/// sockets and connected UDP sockets take the same path.
macro_rules! socket_io {
    ($ty:ty) => {
        impl PacketIo<Read, NoPos> for $ty {
            fn try_send_io(&self, p: NoPos, view: PacketView<Read>) -> std::result::Result<(), QueueFull<Read, NoPos>> {
                let sock = self.sock.clone();
                self.rt
                    .try_submit(view, |view| op::Recv { sock, view })
                    .map_err(|view| QueueFull { param: p, view })
            }
            fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
                self.rt.poll_ready(cx)
            }
        }

        impl PacketIo<Write, NoPos> for $ty {
            fn try_send_io(
                &self,
                p: NoPos,
                view: PacketView<Write>,
            ) -> std::result::Result<(), QueueFull<Write, NoPos>> {
                let sock = self.sock.clone();
                self.rt
                    .try_submit(view, |view| op::Send { sock, view })
                    .map_err(|view| QueueFull { param: p, view })
            }
            fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
                self.rt.poll_ready(cx)
            }
        }

        impl IoBackend for $ty {
            fn polling_handle(&self) -> PollingHandle<'_> {
                self.rt.polling_handle()
            }
            fn drive(&self) -> DriveStatus {
                self.rt.drive()
            }
            fn drive_now(&self) -> DriveStatus {
                self.rt.drive_now()
            }
            fn spin_budget(&self) -> std::time::Duration {
                self.rt.spin_budget()
            }
        }

        impl AsFd for $ty {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.sock.fd.as_fd()
            }
        }
    };
}

macro_rules! stream_socket {
    ($listener:ident, $stream:ident, $accept:ident, $connect:ident, $addr:ty, $what:literal) => {
        #[doc = concat!("A listening ", $what, " socket; [`accept`](Self::accept) yields connections.")]
        #[derive(Debug, Clone)]
        pub struct $listener {
            rt: Runtime,
            sock: Arc<Socket>,
        }

        impl $listener {
            /// The local address it listens on.
            ///
            /// # Errors
            /// The OS error of `getsockname`.
            pub fn local_addr(&self) -> Result<$addr> {
                local_of(&self.sock)
            }

            /// The connections, as a stream (one accept in flight at a time).
            pub fn incoming(&self) -> impl futures_core::Stream<Item = Result<($stream, $addr)>> + '_ {
                let mut pending: Option<$accept> = None;
                futures_core_stream(move |cx| {
                    let fut = pending.get_or_insert_with(|| self.accept());
                    let res = std::task::ready!(Pin::new(fut).poll(cx));
                    pending = None;
                    Poll::Ready(Some(res))
                })
            }

            /// Waits for the next connection; dropping the future cancels the
            /// accept (a connection accepted anyway is closed, not leaked).
            pub fn accept(&self) -> $accept {
                let sock = self.sock.clone();
                $accept {
                    rt: self.rt.clone(),
                    inner: OpFuture::submit(&self.rt, |done| op::Accept { sock, done }),
                }
            }
        }

        impl AsFd for $listener {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.sock.fd.as_fd()
            }
        }

        #[doc = concat!("Future of [`", stringify!($listener), "::accept`]: the stream and its peer's address.")]
        #[must_use = "futures do nothing unless polled"]
        #[derive(Debug)]
        pub struct $accept {
            rt: Runtime,
            inner: OpFuture<OwnedFd>,
        }

        impl Future for $accept {
            type Output = Result<($stream, $addr)>;
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                let fd = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
                Poll::Ready(fd.and_then(|fd| {
                    let stream = $stream {
                        rt: self.rt.clone(),
                        sock: self.rt.register_socket(fd)?,
                    };
                    let peer = stream.peer_addr()?;
                    Ok((stream, peer))
                }))
            }
        }

        #[doc = concat!("A connected ", $what, " stream: `PacketIo` at `NoPos` for reads (what is available) and writes.")]
        #[derive(Debug, Clone)]
        pub struct $stream {
            rt: Runtime,
            sock: Arc<Socket>,
        }

        impl $stream {
            /// The peer's address.
            ///
            /// # Errors
            /// The OS error of `getpeername` (e.g. `NotConnected`).
            pub fn peer_addr(&self) -> Result<$addr> {
                peer_of(&self.sock)
            }

            /// The local address.
            ///
            /// # Errors
            /// The OS error of `getsockname`.
            pub fn local_addr(&self) -> Result<$addr> {
                local_of(&self.sock)
            }

            /// Shuts down one or both directions; after `Write` the peer reads
            /// end of stream once it has every byte sent before.
            pub fn shutdown(&self, how: std::net::Shutdown) -> OpFuture<()> {
                let how = match how {
                    std::net::Shutdown::Read => rustix::net::Shutdown::Read,
                    std::net::Shutdown::Write => rustix::net::Shutdown::Write,
                    std::net::Shutdown::Both => rustix::net::Shutdown::Both,
                };
                let sock = self.sock.clone();
                OpFuture::submit(&self.rt, |done| op::Shutdown { sock, how, done: done.into() })
            }

            /// The runtime the stream belongs to.
            pub fn runtime(&self) -> &Runtime {
                &self.rt
            }
        }

        socket_io!($stream);

        impl PacketIo<Write, Flush> for $stream {
            /// Sends complete once the kernel has the bytes; there is nothing
            /// buffered in mfio to flush, so this completes at once.
            fn try_send_io(&self, _p: Flush, view: PacketView<Write>) -> std::result::Result<(), QueueFull<Write, Flush>> {
                view.complete(0);
                Ok(())
            }
            fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
                Poll::Ready(())
            }
        }

        impl PacketIo<Write, CloseWrite> for $stream {
            /// Half-closes: `shutdown(SHUT_WR)`. The peer reads end of stream
            /// after the bytes of the sends that completed before; reading
            /// here goes on. This is what the adapters' `close`/`shutdown`
            /// send after their flush.
            fn try_send_io(
                &self,
                param: CloseWrite,
                view: PacketView<Write>,
            ) -> std::result::Result<(), QueueFull<Write, CloseWrite>> {
                let sock = self.sock.clone();
                let how = rustix::net::Shutdown::Write;
                self.rt
                    .try_submit(view, |view| op::Shutdown { sock, how, done: Done::Packet(view) })
                    .map_err(|view| QueueFull { param, view })
            }
            fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
                self.rt.poll_ready(cx)
            }
        }

        #[doc = concat!("Future of [`", stringify!($stream), "::connect`].")]
        #[must_use = "futures do nothing unless polled"]
        #[derive(Debug)]
        pub struct $connect {
            rt: Runtime,
            sock: Option<Arc<Socket>>,
            inner: OpFuture<()>,
        }

        impl Future for $connect {
            type Output = Result<$stream>;
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                let res = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
                Poll::Ready(res.and_then(|()| match self.sock.take() {
                    Some(sock) => Ok($stream { rt: self.rt.clone(), sock }),
                    None => Err(Error::aborted()),
                }))
            }
        }

        impl $connect {
            fn start(rt: &Runtime, fd: Result<OwnedFd>, addr: Result<SocketAddrAny>) -> Self {
                let prepared = fd.and_then(|fd| Ok((rt.register_socket(fd)?, addr?)));
                match prepared {
                    Ok((sock, addr)) => {
                        let op = |done| op::Connect { sock: sock.clone(), addr: Box::new(addr), in_progress: false, done };
                        $connect { rt: rt.clone(), inner: OpFuture::submit(rt, op), sock: Some(sock) }
                    }
                    Err(e) => $connect { rt: rt.clone(), sock: None, inner: OpFuture::ready(Err(e)) },
                }
            }
        }
    };
}

stream_socket!(TcpListener, TcpStream, TcpAccept, TcpConnect, SocketAddr, "TCP");
stream_socket!(
    UnixListener,
    UnixStream,
    UnixAccept,
    UnixConnect,
    Option<PathBuf>,
    "Unix-domain"
);

impl TcpListener {
    /// Binds and listens on `addr` (`SO_REUSEADDR` set; port 0 picks one).
    ///
    /// # Errors
    /// The OS error of `socket`, `bind` or `listen` (`AddrInUse`, …).
    pub fn bind(rt: &Runtime, addr: SocketAddr) -> Result<Self> {
        let fd = new_socket(family_of(&addr))?;
        Ok(Self {
            rt: rt.clone(),
            sock: listen_on(rt, fd, &addr)?,
        })
    }
}

impl TcpStream {
    /// Takes over a connected `std::net::TcpStream` (one made with blocking
    /// calls, say with a connect timeout), driven by `rt` from now on.
    ///
    /// # Errors
    /// The OS error of registering it with the backend (`epoll_ctl`).
    pub fn from_std(rt: &Runtime, stream: std::net::TcpStream) -> Result<Self> {
        Ok(Self {
            rt: rt.clone(),
            sock: rt.register_socket(OwnedFd::from(stream))?,
        })
    }

    /// Connects to `addr`.
    pub fn connect(rt: &Runtime, addr: SocketAddr) -> TcpConnect {
        TcpConnect::start(rt, new_socket(family_of(&addr)), Ok(SocketAddrAny::from(addr)))
    }

    /// Sets `TCP_NODELAY` (no Nagle delay for small writes).
    ///
    /// # Errors
    /// The OS error of `setsockopt`.
    pub fn set_nodelay(&self, on: bool) -> Result<()> {
        Ok(rustix::net::sockopt::set_tcp_nodelay(&self.sock.fd, on)?)
    }

    /// Whether `TCP_NODELAY` is set.
    ///
    /// # Errors
    /// The OS error of `getsockopt`.
    pub fn nodelay(&self) -> Result<bool> {
        Ok(rustix::net::sockopt::tcp_nodelay(&self.sock.fd)?)
    }
}

impl UnixListener {
    /// Binds and listens on the socket file `path`.
    ///
    /// # Errors
    /// The OS error of `socket`, `bind` or `listen` (`AddrInUse` if the file exists).
    pub fn bind(rt: &Runtime, path: impl AsRef<Path>) -> Result<Self> {
        let fd = new_socket(AddressFamily::UNIX)?;
        let addr = unix_addr(path.as_ref())?;
        Ok(Self {
            rt: rt.clone(),
            sock: {
                rustix::net::bind(&fd, &addr)?;
                rustix::net::listen(&fd, LISTEN_BACKLOG)?;
                rt.register_socket(fd)?
            },
        })
    }
}

impl UnixStream {
    /// Connects to the socket file `path`.
    pub fn connect(rt: &Runtime, path: impl AsRef<Path>) -> UnixConnect {
        UnixConnect::start(
            rt,
            new_socket(AddressFamily::UNIX),
            unix_addr(path.as_ref()).map(SocketAddrAny::from),
        )
    }
}

/// A UDP socket. A datagram to any address is a packet at that address
/// (`PacketIo<Write, SocketAddr>`, or [`send_to`](Self::send_to)); once
/// [`connect`](Self::connect)ed, `PacketIo` at `NoPos` sends to and receives
/// from the peer. A datagram larger than the read buffer is truncated, as
/// with `recv(2)`.
#[derive(Debug, Clone)]
pub struct UdpSocket {
    rt: Runtime,
    sock: Arc<Socket>,
}

impl UdpSocket {
    /// Binds to `addr` (port 0 picks one).
    ///
    /// # Errors
    /// The OS error of `socket` or `bind` (`AddrInUse`, …).
    pub fn bind(rt: &Runtime, addr: SocketAddr) -> Result<Self> {
        let fd = rustix::net::socket_with(family_of(&addr), SocketType::DGRAM, SocketFlags::CLOEXEC, None)?;
        rustix::net::bind(&fd, &addr)?;
        Ok(Self {
            rt: rt.clone(),
            sock: rt.register_socket(fd)?,
        })
    }

    /// Sets the default peer (datagrams from others are then filtered out).
    ///
    /// # Errors
    /// The OS error of `connect`.
    pub fn connect(&self, addr: SocketAddr) -> Result<()> {
        Ok(rustix::net::connect(&self.sock.fd, &addr)?)
    }

    /// The local address.
    ///
    /// # Errors
    /// The OS error of `getsockname`.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        local_of(&self.sock)
    }

    /// The peer set by [`connect`](Self::connect).
    ///
    /// # Errors
    /// `NotConnected` before `connect`.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        peer_of(&self.sock)
    }

    /// Sends `buf` as one datagram to `addr`; returns the bytes sent.
    ///
    /// # Errors
    /// The OS error of `sendto`, with [`mfio_core::Op::Write`].
    pub async fn send_to<B: IoBuf>(&self, buf: B, addr: SocketAddr) -> BufResult<usize, B> {
        let (outcome, buf) = PacketIoExt::<Write, SocketAddr>::io(self, addr, buf).await;
        BufResult(outcome.result().map_err(|e| e.with_op(mfio_core::Op::Write)), buf)
    }

    /// Receives one datagram into `buf`; returns its length (truncated to the
    /// buffer) and the sender's address.
    ///
    /// # Errors
    /// The OS error of `recvfrom`, with [`mfio_core::Op::Read`].
    pub async fn recv_from<B: IoBufMut>(&self, buf: B) -> BufResult<(usize, SocketAddr), B> {
        let via = RecvFromIo {
            socket: self,
            from: Arc::new(std::sync::OnceLock::new()),
        };
        let mut op = PendingIo::new(NoPos, buf);
        let done = std::future::poll_fn(|cx| op.poll_io(&via, cx)).await;
        let Some((outcome, buf)) = done else {
            unreachable!("polled to completion exactly once above")
        };
        let res = outcome
            .result()
            .map_err(|e| e.with_op(mfio_core::Op::Read))
            .and_then(|n| {
                via.from
                    .get()
                    .map(|addr| (n, *addr))
                    .ok_or_else(|| Error::new(ErrorKind::InvalidData, "datagram without an internet source address"))
            });
        BufResult(res, buf)
    }
}

/// Sends `RecvFrom` operations that record the source in `from`.
struct RecvFromIo<'a> {
    socket: &'a UdpSocket,
    from: Arc<std::sync::OnceLock<SocketAddr>>,
}

impl PacketIo<Read, NoPos> for RecvFromIo<'_> {
    fn try_send_io(&self, p: NoPos, view: PacketView<Read>) -> std::result::Result<(), QueueFull<Read, NoPos>> {
        let (sock, from) = (self.socket.sock.clone(), self.from.clone());
        self.socket
            .rt
            .try_submit(view, |view| op::RecvFrom { sock, view, from })
            .map_err(|view| QueueFull { param: p, view })
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.socket.rt.poll_ready(cx)
    }
}

impl PacketIo<Write, SocketAddr> for UdpSocket {
    fn try_send_io(
        &self,
        addr: SocketAddr,
        view: PacketView<Write>,
    ) -> std::result::Result<(), QueueFull<Write, SocketAddr>> {
        let sock = self.sock.clone();
        let to = Box::new(SocketAddrAny::from(addr));
        self.rt
            .try_submit(view, |view| op::SendTo { sock, addr: to, view })
            .map_err(|view| QueueFull { param: addr, view })
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.rt.poll_ready(cx)
    }
}

socket_io!(UdpSocket);
