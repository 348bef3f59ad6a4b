//! What every operation needs to travel through the ring: the per-opcode
//! probe ([`Supported`]), the record that keeps an entry's memory in place
//! while the kernel has it ([`InFlight`], [`Scratch`]), and [`UringOp`],
//! which each operation implements in `file.rs`, `path.rs` and `net.rs`.

use std::mem::MaybeUninit;
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring, Probe};
use mfio_core::cancel::Cancels;
use mfio_core::{Error, Result};

use crate::op::{on_op, At, Request, Socket};

/// Largest single read or write the kernel performs (`MAX_RW_COUNT`);
/// longer views are split.
pub(super) const MAX_RW: usize = 0x7fff_f000;

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

pub(super) use on_file;

/// Which operations the running kernel's io_uring supports.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Supported {
    pub(super) read: bool,
    pub(super) write: bool,
    pub(super) fsync: bool,
    pub(super) openat: bool,
    pub(super) statx: bool,
    pub(super) mkdirat: bool,
    pub(super) unlinkat: bool,
    pub(super) renameat: bool,
    pub(super) ftruncate: bool,
    pub(super) fallocate: bool,
    pub(super) connect: bool,
    pub(super) accept: bool,
    pub(super) send: bool,
    pub(super) recv: bool,
    pub(super) shutdown: bool,
    pub(super) sendmsg: bool,
    pub(super) recvmsg: bool,
    pub(super) read_fixed: bool,
    pub(super) write_fixed: bool,
    pub(super) readv: bool,
    pub(super) writev: bool,
    pub(super) close: bool,
    pub(super) poll_add: bool,
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
}

/// One operation as the ring carries it out.
pub(super) trait UringOp: Sized {
    /// True if the running kernel has the opcode(s) it needs; otherwise it
    /// runs on the fallback pool.
    fn supported(&self, s: &Supported) -> bool;

    /// Its submission entry, the operation again (to keep until the
    /// completion is reaped) and what the entry points at besides; `None`
    /// if it was completed here instead (its caller already gave up).
    fn prepare(self, cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)>;

    /// Completes it with the completion's result, releasing its file,
    /// socket or path handles first (a caller who sees the completion never
    /// finds them still held). Returns an operation to send again instead,
    /// where the result says so.
    fn complete(self, res: i32, scratch: Scratch) -> Option<Request>;
}

/// What preparing an entry may need.
pub(super) struct Prepare<'a> {
    pub(super) user_data: u64,
    pub(super) cancels: &'a Arc<Cancels>,
    pub(super) fixed: FixedBuffers<'a>,
}

/// Memory an entry points at besides the packet and the path, boxed so it
/// stays put until the completion is reaped.
pub(super) enum Scratch {
    None,
    Statx(Box<MaybeUninit<libc::statx>>),
    Msg(Box<Msg>),
    /// Not read again: kept so the kernel's pointers stay valid.
    IoVecs(#[allow(dead_code)] IoVecs),
}

/// True if the ring can carry `op` out here.
pub(super) fn handles(supported: &Supported, op: &Request) -> bool {
    on_op!(op, o => o.supported(supported))
}

/// The submission entry for `op` and the in-flight record that keeps what
/// it points at alive; `None` if the operation was completed here instead.
pub(super) fn prepare(op: Request, generation: u32, cx: &Prepare<'_>) -> Option<(squeue::Entry, InFlight)> {
    let (entry, op, scratch) = on_op!(op, o => o.prepare(cx))?;
    let inflight = InFlight {
        generation,
        submitter: 0,
        orphaned: false,
        op,
        scratch,
    };
    Some((entry.user_data(cx.user_data), inflight))
}

/// Splits a read or write longer than the kernel does in one go.
pub(super) fn split_large(op: Request) -> (Request, Option<Request>) {
    match op {
        Request::ReadAt(mut head) if head.view.len() > MAX_RW => {
            let (first, tail) = head.view.split_at(MAX_RW);
            head.view = first;
            let rest = crate::op::ReadAt {
                fd: head.fd.clone(),
                pos: head.pos + MAX_RW as u64,
                view: tail,
            };
            (head.into(), Some(rest.into()))
        }
        Request::WriteAt(mut head) if head.view.len() > MAX_RW => {
            let (first, tail) = head.view.split_at(MAX_RW);
            head.view = first;
            let rest = crate::op::WriteAt {
                fd: head.fd.clone(),
                pos: head.pos.map(|p| p + MAX_RW as u64),
                view: tail,
            };
            (head.into(), Some(rest.into()))
        }
        other => (other, None),
    }
}

/// An operation in the kernel's hands, with everything its entry points at.
pub(super) struct InFlight {
    generation: u32,
    /// The thread that entered the kernel with it (0: not yet, or untracked).
    submitter: u64,
    /// Its submitter exited: an `ECANCELED` now means "send it again".
    orphaned: bool,
    op: Request,
    scratch: Scratch,
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

    pub(super) fn into_op(self) -> Request {
        self.op
    }

    /// For a receive: the key of its socket's queue (the socket's address).
    pub(super) fn recv_socket(&self) -> Option<usize> {
        match &self.op {
            Request::Recv(op) => Some(Arc::as_ptr(&op.sock) as usize),
            _ => None,
        }
    }

    /// Completes the operation with the completion's result (see
    /// [`UringOp::complete`]).
    pub(super) fn complete(self, res: i32) -> Option<Request> {
        let InFlight { op, scratch, .. } = self;
        on_op!(op, o => o.complete(res, scratch))
    }
}

/// The `iovec` array of a vectored transfer, kept in place while in flight.
pub(super) struct IoVecs(Box<[libc::iovec]>);

impl IoVecs {
    pub(super) fn new(iovecs: impl Iterator<Item = libc::iovec>) -> Self {
        Self(iovecs.collect())
    }

    /// The array and its length, for a `readv`/`writev` entry.
    pub(super) fn raw(&self) -> (*const libc::iovec, u32) {
        (self.0.as_ptr(), self.0.len() as u32)
    }
}

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
    pub(super) fn new(buf: *mut u8, len: usize) -> Box<Self> {
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
    /// Sets the destination of a send to `addr`.
    pub(super) fn set_destination(&mut self, addr: &rustix::net::SocketAddrAny) {
        let len = (addr.addr_len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `len` bytes of the address fit in the storage, and the two
        // do not overlap (one is in the operation, the other in this box).
        unsafe {
            std::ptr::copy_nonoverlapping(
                addr.as_ptr().cast::<u8>(),
                std::ptr::addr_of_mut!(self.name).cast(),
                len,
            )
        };
        self.hdr.msg_namelen = len as u32;
    }

    /// The header, for a `sendmsg` entry.
    pub(super) fn header(&self) -> *const libc::msghdr {
        std::ptr::addr_of!(self.hdr)
    }

    /// The header, for a `recvmsg` entry (the kernel writes the address).
    pub(super) fn header_mut(&mut self) -> *mut libc::msghdr {
        std::ptr::addr_of_mut!(self.hdr)
    }

    pub(super) fn source(&self) -> Option<std::net::SocketAddr> {
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

pub(super) fn sock_fd(sock: &Socket) -> types::Fd {
    types::Fd(std::os::fd::AsRawFd::as_raw_fd(&sock.fd))
}

/// A length for an entry; stream transfers are capped (a short transfer is fine).
pub(super) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

pub(super) fn dirfd(at: &At) -> types::Fd {
    types::Fd(std::os::fd::AsRawFd::as_raw_fd(&at.dirfd()))
}

/// A completion's result: a count, or `-errno` (the kernel's convention,
/// turned into an error here and nowhere else).
pub(super) fn cqe_result(res: i32) -> Result<usize> {
    usize::try_from(res).map_err(|_| Error::from_raw_os_error(-res))
}

/// The registered buffers, for finding whether a transfer's memory is one.
#[derive(Clone, Copy)]
pub(super) struct FixedBuffers<'a> {
    pub(super) ranges: &'a [(usize, usize)],
    pub(super) supported: bool,
}

impl FixedBuffers<'_> {
    /// The index of the registered buffer holding all of `ptr..ptr+len`.
    pub(super) fn index_of(&self, ptr: *const u8, len: usize) -> Option<u16> {
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
