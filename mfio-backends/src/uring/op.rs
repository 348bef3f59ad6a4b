//! Each [`Op`] as an io_uring submission entry, and its completion.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring, Probe};
use mfio_core::{CancelHandler, Error, Result};

use crate::fs::Metadata;
use crate::op::{At, Op, Socket};
use crate::sys::STATX_MASK;
use mfio_core::cancel::Cancels;

/// Largest single read or write the kernel performs (`MAX_RW_COUNT`);
/// longer views are split.
const MAX_RW: usize = 0x7fff_f000;

/// Builds an entry against a file's registered slot if it has one, else its
/// descriptor (the opcode builders take either).
macro_rules! on_file {
    ($file:expr, |$target:ident| $build:expr) => {
        match &$file.fixed {
            Some(slot) => {
                let $target = types::Fixed(slot.index);
                $build
            }
            None => {
                let $target = types::Fd($file.fd.as_raw_fd());
                $build
            }
        }
    };
}

/// Which operations the running kernel's io_uring supports.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Supported {
    read: bool,
    write: bool,
    fsync: bool,
    openat: bool,
    statx: bool,
    mkdirat: bool,
    unlinkat: bool,
    renameat: bool,
    ftruncate: bool,
    fallocate: bool,
    connect: bool,
    accept: bool,
    send: bool,
    recv: bool,
    shutdown: bool,
    sendmsg: bool,
    recvmsg: bool,
    read_fixed: bool,
    write_fixed: bool,
    readv: bool,
    writev: bool,
    close: bool,
    poll_add: bool,
}

impl Supported {
    /// Asks the kernel; a kernel without the probe supports nothing here.
    pub(super) fn probe(ring: &IoUring) -> Self {
        let mut probe = Probe::new();
        if ring.submitter().register_probe(&mut probe).is_err() {
            return Self::default();
        }
        Self {
            read: probe.is_supported(opcode::Read::CODE),
            write: probe.is_supported(opcode::Write::CODE),
            fsync: probe.is_supported(opcode::Fsync::CODE),
            openat: probe.is_supported(opcode::OpenAt::CODE),
            statx: probe.is_supported(opcode::Statx::CODE),
            mkdirat: probe.is_supported(opcode::MkDirAt::CODE),
            unlinkat: probe.is_supported(opcode::UnlinkAt::CODE),
            renameat: probe.is_supported(opcode::RenameAt::CODE),
            ftruncate: probe.is_supported(opcode::Ftruncate::CODE),
            fallocate: probe.is_supported(opcode::Fallocate::CODE),
            connect: probe.is_supported(opcode::Connect::CODE),
            accept: probe.is_supported(opcode::Accept::CODE),
            send: probe.is_supported(opcode::Send::CODE),
            recv: probe.is_supported(opcode::Recv::CODE),
            shutdown: probe.is_supported(opcode::Shutdown::CODE),
            sendmsg: probe.is_supported(opcode::SendMsg::CODE),
            recvmsg: probe.is_supported(opcode::RecvMsg::CODE),
            read_fixed: probe.is_supported(opcode::ReadFixed::CODE),
            write_fixed: probe.is_supported(opcode::WriteFixed::CODE),
            readv: probe.is_supported(opcode::Readv::CODE),
            writev: probe.is_supported(opcode::Writev::CODE),
            close: probe.is_supported(opcode::Close::CODE),
            poll_add: probe.is_supported(opcode::PollAdd::CODE),
        }
    }

    /// True if both fixed-buffer opcodes are there.
    pub(super) fn fixed(&self) -> bool {
        self.read_fixed && self.write_fixed
    }

    pub(super) fn handles(&self, op: &Op) -> bool {
        match op {
            Op::Read { .. } => self.read,
            Op::ReadV { .. } => self.readv,
            Op::Close { .. } => self.close,
            Op::WriteV { .. } => self.writev,
            Op::Write { .. } => self.write,
            Op::Sync { .. } => self.fsync,
            Op::Open { .. } => self.openat,
            Op::Stat { .. } => self.statx,
            Op::Mkdir { .. } => self.mkdirat,
            Op::Unlink { .. } => self.unlinkat,
            Op::Rename { .. } => self.renameat,
            Op::Truncate { .. } => self.ftruncate,
            Op::Allocate { .. } => self.fallocate,
            // No opcode lists a directory.
            Op::ReadDir { .. } => false,
            Op::Connect { in_progress, .. } => {
                if *in_progress {
                    self.poll_add
                } else {
                    self.connect
                }
            }
            Op::Accept { .. } => self.accept,
            Op::Send { .. } => self.send,
            Op::Recv { .. } => self.recv,
            Op::Shutdown { .. } => self.shutdown,
            Op::SendTo { .. } => self.sendmsg,
            Op::RecvFrom { .. } => self.recvmsg,
        }
    }
}

/// An operation in the kernel's hands, with everything its entry points at.
pub(super) struct InFlight {
    generation: u32,
    /// The thread that entered the kernel with it (0: not yet, or untracked).
    submitter: u64,
    /// Its submitter exited: an `ECANCELED` now means "send it again".
    orphaned: bool,
    op: Op,
    statx: Option<Box<MaybeUninit<libc::statx>>>,
    msg: Option<Box<Msg>>,
    /// Not read again: kept so the kernel's pointers stay valid.
    _iovecs: Option<IoVecs>,
}

/// The `iovec` array of a vectored transfer, kept in place while in flight.
pub(super) struct IoVecs(Box<[libc::iovec]>);

// SAFETY: the pointers inside point at packet memory owned by the same
// operation; the array moves between threads together with it.
unsafe impl Send for IoVecs {}

/// A `msghdr` with its one `iovec` and its address, in one heap block that
/// stays put while the entry is in flight (the header points into itself).
pub(super) struct Msg {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: libc::sockaddr_storage,
}

impl Msg {
    fn new(buf: *mut u8, len: usize) -> Box<Self> {
        // SAFETY: all three are plain C structs for which all-zero is valid.
        let mut msg: Box<Msg> = Box::new(unsafe { std::mem::zeroed() });
        msg.iov = libc::iovec {
            iov_base: buf.cast(),
            iov_len: len,
        };
        msg.hdr.msg_iov = std::ptr::addr_of_mut!(msg.iov);
        msg.hdr.msg_iovlen = 1;
        msg.hdr.msg_name = std::ptr::addr_of_mut!(msg.name).cast();
        msg.hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        msg
    }

    /// The sender's address after a receive.
    fn source(&self) -> Option<std::net::SocketAddr> {
        sockaddr_to_std(&self.name, self.hdr.msg_namelen)
    }
}

// SAFETY: the raw pointers inside point at the same heap block or at packet
// memory owned by the operation; the block moves between threads as a whole.
unsafe impl Send for Msg {}

/// Reads an internet socket address written by the kernel.
fn sockaddr_to_std(name: &libc::sockaddr_storage, len: u32) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    match i32::from(name.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which
            // fits in (and is less aligned than) sockaddr_storage.
            let a = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id).into())
        }
        _ => None,
    }
}

impl InFlight {
    pub(super) fn generation(&self) -> u32 {
        self.generation
    }

    pub(super) fn submitter(&self) -> u64 {
        self.submitter
    }

    pub(super) fn set_submitter(&mut self, id: u64) {
        self.submitter = id;
    }

    pub(super) fn is_orphaned(&self) -> bool {
        self.orphaned
    }

    pub(super) fn set_orphaned(&mut self) {
        self.orphaned = true;
    }

    pub(super) fn user_data(&self, key: usize) -> u64 {
        (u64::from(self.generation) << 32) | key as u64
    }

    /// For a write: its file, whose count of writes in flight it is in.
    pub(super) fn written_file(&self) -> Option<&Arc<crate::op::FileFd>> {
        self.op.written_file()
    }

    pub(super) fn into_op(self) -> Op {
        self.op
    }

    /// For a receive: the key of its socket's queue (the socket's address).
    pub(super) fn recv_socket(&self) -> Option<usize> {
        match &self.op {
            Op::Recv { sock, .. } => Some(Arc::as_ptr(sock) as usize),
            _ => None,
        }
    }

    /// Completes the operation with the completion's result. The
    /// operation's file, socket or path handles are released first, so a
    /// caller who sees the completion never finds them still held.
    ///
    /// Returns an operation to send again instead: a connect whose earlier
    /// try had started the handshake before it was cancelled (see
    /// `submitter`) now waits for that handshake.
    pub(super) fn complete(self, res: i32) -> Option<Op> {
        let result = cqe_result(res);
        let InFlight { op, statx, msg, .. } = self;
        match op {
            Op::Read { view, fd, .. } => {
                drop(fd);
                view.finish(result);
            }
            Op::ReadV { views, fd, .. } => {
                drop(fd);
                crate::op::finish_vectored(views, result);
            }
            Op::WriteV { views, fd, .. } => {
                drop(fd);
                crate::op::finish_vectored(views, result);
            }
            Op::Write { view, fd, .. } => {
                drop(fd);
                view.finish(result);
            }
            Op::Sync { view, fd, .. } => {
                drop(fd);
                view.finish(result.map(|_| 0));
            }
            Op::Close { file, done } => {
                // The kernel ran close(2): the descriptor is gone either way.
                std::mem::forget(file.fd);
                drop(file.fixed);
                done.complete(result.map(|_| ()));
            }
            Op::Open { done, at, .. } => {
                drop(at);
                done.complete(result.and_then(|fd| {
                    let fd =
                        i32::try_from(fd).map_err(|_| Error::new(std::io::ErrorKind::Other, "bad fd from openat"))?;
                    // SAFETY: a successful openat completion returns a new descriptor
                    // that nothing else owns.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }));
            }
            Op::Stat { done, at, .. } => {
                drop(at);
                done.complete(result.and_then(|_| match statx {
                    // SAFETY: statx completed successfully, so the kernel filled the
                    // buffer (which was zeroed before).
                    Some(buf) => Ok(Metadata::from_statx(unsafe { buf.assume_init_ref() })),
                    None => Err(Error::aborted()),
                }));
            }
            Op::Mkdir { done, at, .. } => {
                drop(at);
                done.complete(result.map(|_| ()));
            }
            Op::Unlink { done, at, .. } => {
                drop(at);
                done.complete(result.map(|_| ()));
            }
            Op::Rename { done, from, to } => {
                drop((from, to));
                done.complete(result.map(|_| ()));
            }
            Op::Truncate { done, fd, .. } | Op::Allocate { done, fd, .. } => {
                drop(fd);
                done.complete(result.map(|_| ()));
            }
            // Never sent to the ring (see `Supported::handles`).
            Op::ReadDir { done, at } => {
                drop(at);
                done.complete(Err(Error::aborted()));
            }
            Op::Connect {
                done,
                sock,
                addr,
                in_progress,
            } => {
                let outcome = match result {
                    // Writable: the handshake ended, and SO_ERROR says how.
                    Ok(_) if in_progress => crate::sys::connect_outcome(&sock.fd),
                    Ok(_) => Ok(()),
                    Err(e) if !in_progress && e.raw_os_error() == Some(libc::EALREADY) => {
                        return Some(Op::Connect {
                            sock,
                            addr,
                            in_progress: true,
                            done,
                        });
                    }
                    Err(e) if !in_progress && e.raw_os_error() == Some(libc::EISCONN) => Ok(()),
                    Err(e) => Err(e),
                };
                drop((sock, addr));
                done.complete(outcome);
            }
            Op::Shutdown { done, sock, .. } => {
                drop(sock);
                done.complete(result.map(|_| ()));
            }
            Op::Accept { done, sock } => {
                drop(sock);
                done.complete(result.and_then(|fd| {
                    let fd =
                        i32::try_from(fd).map_err(|_| Error::new(std::io::ErrorKind::Other, "bad fd from accept"))?;
                    // SAFETY: a successful accept completion returns a new descriptor
                    // that nothing else owns.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }));
            }
            Op::Send { view, sock } => {
                drop(sock);
                view.finish(result);
            }
            Op::SendTo { view, sock, addr } => {
                drop((sock, addr));
                view.finish(result);
            }
            Op::Recv { view, sock } => {
                drop(sock);
                view.finish(result);
            }
            Op::RecvFrom { view, from, sock } => {
                drop(sock);
                if result.is_ok() {
                    if let Some(addr) = msg.as_ref().and_then(|m| m.source()) {
                        let _ = from.set(addr);
                    }
                }
                view.finish(result);
            }
        }
        None
    }
}

fn sock_fd(sock: &Socket) -> types::Fd {
    types::Fd(sock.fd.as_raw_fd())
}

/// A length for an entry; stream transfers are capped (a short transfer is fine).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn dirfd(at: &At) -> types::Fd {
    types::Fd(at.dirfd().as_raw_fd())
}

fn cqe_result(res: i32) -> Result<usize> {
    usize::try_from(res).map_err(|_| Error::from_raw_os_error(-res))
}

/// Splits a read or write longer than the kernel does in one go.
pub(super) fn split_large(op: Op) -> (Op, Option<Op>) {
    match op {
        Op::Read { fd, pos, view } if view.len() > MAX_RW => {
            let (head, tail) = view.split_at(MAX_RW);
            let rest = Op::Read {
                fd: fd.clone(),
                pos: pos + MAX_RW as u64,
                view: tail,
            };
            (Op::Read { fd, pos, view: head }, Some(rest))
        }
        Op::Write { fd, pos, view } if view.len() > MAX_RW => {
            let (head, tail) = view.split_at(MAX_RW);
            let rest = Op::Write {
                fd: fd.clone(),
                pos: pos.map(|p| p + MAX_RW as u64),
                view: tail,
            };
            (Op::Write { fd, pos, view: head }, Some(rest))
        }
        other => (other, None),
    }
}

/// The submission entry for `op`, and the in-flight record that keeps what
/// it points at alive. `None` if the operation was completed here instead
/// (its caller already gave up on it).
/// The registered buffers, for finding whether a transfer's memory is one.
#[derive(Clone, Copy)]
pub(super) struct FixedBuffers<'a> {
    pub(super) ranges: &'a [(usize, usize)],
    pub(super) supported: bool,
}

impl FixedBuffers<'_> {
    /// The index of the registered buffer holding all of `ptr..ptr+len`.
    fn index_of(&self, ptr: *const u8, len: usize) -> Option<u16> {
        if !self.supported {
            return None;
        }
        let start = ptr as usize;
        let i = self
            .ranges
            .iter()
            .position(|&(s, l)| start >= s && start.checked_add(len).is_some_and(|end| end <= s + l))?;
        u16::try_from(i).ok()
    }
}

pub(super) fn prepare(
    op: Op,
    user_data: u64,
    generation: u32,
    cancels: &Arc<Cancels>,
    fixed: FixedBuffers<'_>,
) -> Option<(squeue::Entry, InFlight)> {
    let mut statx = None;
    let mut msg: Option<Box<Msg>> = None;
    let mut iovecs: Option<IoVecs> = None;
    // Moving a view or a CString moves only the handle: the memory the entry
    // points at (packet buffer, path bytes, boxed statx) stays where it is.
    let (entry, op) = match op {
        Op::Read { fd, pos, mut view } => {
            let len = view.len() as u32;
            let ptr = view.as_mut_ptr();
            let entry = match fixed.index_of(ptr, view.len()) {
                Some(index) => on_file!(fd, |t| opcode::ReadFixed::new(t, ptr, len, index).offset(pos).build()),
                None => on_file!(fd, |t| opcode::Read::new(t, ptr, len).offset(pos).build()),
            };
            (entry, Op::Read { fd, pos, view })
        }
        Op::Write { fd, pos, view } => {
            let slice = view.as_slice();
            let (ptr, len) = (slice.as_ptr(), slice.len() as u32);
            // u64::MAX is -1: write at (and advance) the file position, i.e. append.
            let offset = pos.unwrap_or(u64::MAX);
            let entry = match fixed.index_of(ptr, slice.len()) {
                Some(index) => on_file!(fd, |t| opcode::WriteFixed::new(t, ptr, len, index)
                    .offset(offset)
                    .build()),
                None => on_file!(fd, |t| opcode::Write::new(t, ptr, len).offset(offset).build()),
            };
            (entry, Op::Write { fd, pos, view })
        }
        Op::ReadV { fd, pos, mut views } => {
            let iov = &iovecs
                .insert(IoVecs(
                    views
                        .iter_mut()
                        .map(|v| libc::iovec {
                            iov_base: v.as_mut_ptr().cast(),
                            iov_len: v.len(),
                        })
                        .collect(),
                ))
                .0;
            let entry = on_file!(fd, |t| opcode::Readv::new(t, iov.as_ptr(), iov.len() as u32)
                .offset(pos)
                .build());
            (entry, Op::ReadV { fd, pos, views })
        }
        Op::WriteV { fd, pos, views } => {
            let iov = &iovecs
                .insert(IoVecs(
                    views
                        .iter()
                        .map(|v| libc::iovec {
                            iov_base: v.as_slice().as_ptr().cast_mut().cast(),
                            iov_len: v.len(),
                        })
                        .collect(),
                ))
                .0;
            let offset = pos.unwrap_or(u64::MAX);
            let entry = on_file!(fd, |t| opcode::Writev::new(t, iov.as_ptr(), iov.len() as u32)
                .offset(offset)
                .build());
            (entry, Op::WriteV { fd, pos, views })
        }
        Op::Sync { fd, data_only, view } => {
            let flags = if data_only {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            // No IO_DRAIN: it would wait for every earlier entry in the ring
            // (a receive that never completes included) and hold back every
            // later one, cancellations too. The engine sends a sync only once
            // the earlier writes to its own file finished.
            let entry = on_file!(fd, |t| opcode::Fsync::new(t).flags(flags).build());
            (entry, Op::Sync { fd, data_only, view })
        }
        Op::Open { at, flags, mode, done } => {
            let handler: Arc<dyn CancelHandler> = cancels.clone();
            if done.set_cancel_handler(handler, user_data).is_err() {
                done.complete(Err(Error::cancelled()));
                return None;
            }
            let entry = opcode::OpenAt::new(dirfd(&at), at.path.as_ptr())
                .flags(flags)
                .mode(mode)
                .build();
            (entry, Op::Open { at, flags, mode, done })
        }
        Op::Stat { at, flags, done } => {
            let buf = statx.insert(Box::new(MaybeUninit::<libc::statx>::zeroed()));
            let entry = opcode::Statx::new(dirfd(&at), at.path.as_ptr(), buf.as_mut_ptr().cast::<types::statx>())
                .flags(flags)
                .mask(STATX_MASK)
                .build();
            (entry, Op::Stat { at, flags, done })
        }
        Op::Mkdir { at, mode, done } => {
            let entry = opcode::MkDirAt::new(dirfd(&at), at.path.as_ptr()).mode(mode).build();
            (entry, Op::Mkdir { at, mode, done })
        }
        Op::Unlink { at, dir, done } => {
            let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
            let entry = opcode::UnlinkAt::new(dirfd(&at), at.path.as_ptr()).flags(flags).build();
            (entry, Op::Unlink { at, dir, done })
        }
        Op::Rename { from, to, done } => {
            let entry = opcode::RenameAt::new(dirfd(&from), from.path.as_ptr(), dirfd(&to), to.path.as_ptr()).build();
            (entry, Op::Rename { from, to, done })
        }
        Op::Close { file, done } => {
            // By descriptor, not slot: the slot is released separately.
            let entry = opcode::Close::new(types::Fd(file.fd.as_raw_fd())).build();
            (entry, Op::Close { file, done })
        }
        Op::Truncate { fd, len, done } => {
            let entry = on_file!(fd, |t| opcode::Ftruncate::new(t, len).build());
            (entry, Op::Truncate { fd, len, done })
        }
        Op::Allocate { fd, offset, len, done } => {
            let entry = on_file!(fd, |t| opcode::Fallocate::new(t, len).offset(offset).build());
            (entry, Op::Allocate { fd, offset, len, done })
        }
        // Routed to the thread pool before it gets here.
        op @ Op::ReadDir { .. } => {
            op.fail(Error::aborted());
            return None;
        }
        Op::Connect {
            sock,
            addr,
            in_progress,
            done,
        } => {
            if done.set_cancel_handler(cancels.clone(), user_data).is_err() {
                done.complete(Err(Error::cancelled()));
                return None;
            }
            let entry = if in_progress {
                let writable = (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) as u32;
                opcode::PollAdd::new(sock_fd(&sock), writable).build()
            } else {
                opcode::Connect::new(sock_fd(&sock), addr.as_ptr().cast(), addr.addr_len()).build()
            };
            let op = Op::Connect {
                sock,
                addr,
                in_progress,
                done,
            };
            (entry, op)
        }
        Op::Accept { sock, done } => {
            if done.set_cancel_handler(cancels.clone(), user_data).is_err() {
                done.complete(Err(Error::cancelled()));
                return None;
            }
            let entry = opcode::Accept::new(sock_fd(&sock), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build();
            (entry, Op::Accept { sock, done })
        }
        Op::Send { sock, view } => {
            if view.set_cancel_handler(sock.kept.clone(), user_data).is_err() {
                view.fail(Error::cancelled());
                return None;
            }
            let slice = view.as_slice();
            let entry = opcode::Send::new(sock_fd(&sock), slice.as_ptr(), len_u32(slice.len()))
                .flags(libc::MSG_NOSIGNAL)
                .build();
            (entry, Op::Send { sock, view })
        }
        Op::Recv { sock, view } => {
            // Watched before any byte is taken (kept bytes included): the
            // socket hears about a dropped read (to cancel it) and keeps the
            // bytes of one that completed after its caller gave up.
            let mut view = sock.kept.start_read(view, user_data)?;
            let len = len_u32(view.len());
            let entry = opcode::Recv::new(sock_fd(&sock), view.as_mut_ptr(), len).build();
            (entry, Op::Recv { sock, view })
        }
        Op::Shutdown { sock, how, done } => {
            let how_raw = match how {
                rustix::net::Shutdown::Read => libc::SHUT_RD,
                rustix::net::Shutdown::Write => libc::SHUT_WR,
                rustix::net::Shutdown::Both => libc::SHUT_RDWR,
            };
            let entry = opcode::Shutdown::new(sock_fd(&sock), how_raw).build();
            (entry, Op::Shutdown { sock, how, done })
        }
        Op::SendTo { sock, addr, view } => {
            if view.set_cancel_handler(sock.kept.clone(), user_data).is_err() {
                view.fail(Error::cancelled());
                return None;
            }
            let slice = view.as_slice();
            let m = msg.insert(Msg::new(slice.as_ptr().cast_mut(), slice.len()));
            let len = (addr.addr_len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
            // SAFETY: `len` bytes of the address fit in the storage, and the two
            // do not overlap (one is in the op, the other in the fresh box).
            unsafe {
                std::ptr::copy_nonoverlapping(addr.as_ptr().cast::<u8>(), std::ptr::addr_of_mut!(m.name).cast(), len)
            };
            m.hdr.msg_namelen = len as u32;
            let entry = opcode::SendMsg::new(sock_fd(&sock), std::ptr::addr_of!(m.hdr))
                .flags(libc::MSG_NOSIGNAL as u32)
                .build();
            (entry, Op::SendTo { sock, addr, view })
        }
        Op::RecvFrom { sock, mut view, from } => {
            if view.is_cancelled() {
                view.fail(Error::cancelled());
                return None;
            }
            let handler: Arc<dyn CancelHandler> = cancels.clone();
            if view.set_cancel_handler(handler, user_data).is_err() {
                view.fail(Error::cancelled());
                return None;
            }
            let len = view.len();
            let m = msg.insert(Msg::new(view.as_mut_ptr(), len));
            let entry = opcode::RecvMsg::new(sock_fd(&sock), std::ptr::addr_of_mut!(m.hdr)).build();
            (entry, Op::RecvFrom { sock, view, from })
        }
    };
    Some((
        entry.user_data(user_data),
        InFlight {
            generation,
            submitter: 0,
            orphaned: false,
            op,
            statx,
            msg,
            _iovecs: iovecs,
        },
    ))
}
