//! Each [`Op`] as a blocking system call: what the poll backend's thread pool
//! runs, and io_uring's fallback for opcodes the kernel lacks.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use mfio_core::{Error, Result};
use rustix::event::{PollFd, PollFlags};
use rustix::fs::{AtFlags, FallocateFlags, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use crate::dir::DirEntry;
use crate::fs::Metadata;
use crate::op::{finish_vectored, At, FileFd, Op};

/// The `statx` fields mfio asks for: size, type, times, and the `O_DIRECT`
/// alignment where the kernel reports it.
pub(crate) const STATX_MASK: u32 = libc::STATX_BASIC_STATS | libc::STATX_DIOALIGN;

/// Retries a call interrupted by a signal.
fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            other => return other.map_err(Error::from),
        }
    }
}

/// Runs a libc call returning a count or -1 with errno, retrying `EINTR`.
fn retry_libc(mut f: impl FnMut() -> isize) -> Result<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err.into());
        }
    }
}

/// Runs `op` to completion on the calling thread and completes it.
///
/// Every arm releases the operation's file, socket or directory handles
/// before completing it: a caller who sees the completion (and, say, closes
/// the file) never finds the operation still holding a reference. A write
/// was counted as in flight on its file when it was handed here
/// ([`FileFd::write_started`]) and is counted out before it completes.
pub(crate) fn run_blocking(op: Op) {
    match op {
        Op::Read { fd, pos, mut view } => {
            let res = retry(|| rustix::io::pread(&*fd, view.as_uninit_mut(), pos).map(|(read, _)| read.len()));
            drop(fd);
            view.finish(res);
        }
        Op::ReadV { fd, pos, mut views } => {
            let iov: Vec<libc::iovec> = views
                .iter_mut()
                .map(|v| libc::iovec {
                    iov_base: v.as_mut_ptr().cast(),
                    iov_len: v.len(),
                })
                .collect();
            let res = retry_libc(|| {
                // SAFETY: every iovec points at a view's memory, writable for its
                // length and exclusively ours until the views complete below.
                unsafe { libc::preadv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32, pos as i64) }
            });
            drop(fd);
            finish_vectored(views, res);
        }
        Op::WriteV { fd, pos, views } => {
            let iov: Vec<libc::iovec> = views
                .iter()
                .map(|v| libc::iovec {
                    iov_base: v.as_slice().as_ptr().cast_mut().cast(),
                    iov_len: v.len(),
                })
                .collect();
            let res = retry_libc(|| {
                let (ptr, cnt) = (iov.as_ptr(), iov.len() as i32);
                // SAFETY: every iovec points at a view's initialised bytes, which
                // the kernel only reads; they stay alive until the views complete.
                unsafe {
                    match pos {
                        Some(pos) => libc::pwritev(fd.as_raw_fd(), ptr, cnt, pos as i64),
                        None => libc::writev(fd.as_raw_fd(), ptr, cnt),
                    }
                }
            });
            fd.write_finished();
            drop(fd);
            finish_vectored(views, res);
        }
        Op::Write { fd, pos, view } => {
            let res = retry(|| match pos {
                Some(pos) => rustix::io::pwrite(&*fd, view.as_slice(), pos),
                None => rustix::io::write(&*fd, view.as_slice()),
            });
            fd.write_finished();
            drop(fd);
            view.finish(res);
        }
        Op::Sync { fd, data_only, view } => {
            let res = retry(|| {
                if data_only {
                    rustix::fs::fdatasync(&*fd)
                } else {
                    rustix::fs::fsync(&*fd)
                }
            });
            drop(fd);
            view.finish(res.map(|()| 0));
        }
        Op::Open { at, flags, mode, done } => {
            if done.is_abandoned() {
                drop(at);
                return done.complete(Err(Error::cancelled()));
            }
            let flags = OFlags::from_bits_retain(flags as u32);
            let mode = Mode::from_raw_mode(mode);
            let res = retry(|| rustix::fs::openat(at.dirfd(), at.path.as_c_str(), flags, mode));
            drop(at);
            done.complete(res);
        }
        Op::Stat { at, flags, done } => {
            let res = statx(&at, flags);
            drop(at);
            done.complete(res);
        }
        Op::Mkdir { at, mode, done } => {
            let res = retry(|| rustix::fs::mkdirat(at.dirfd(), at.path.as_c_str(), Mode::from_raw_mode(mode)));
            drop(at);
            done.complete(res);
        }
        Op::Unlink { at, dir, done } => {
            let flags = if dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
            let res = retry(|| rustix::fs::unlinkat(at.dirfd(), at.path.as_c_str(), flags));
            drop(at);
            done.complete(res);
        }
        Op::Rename { from, to, done } => {
            let res =
                retry(|| rustix::fs::renameat(from.dirfd(), from.path.as_c_str(), to.dirfd(), to.path.as_c_str()));
            drop((from, to));
            done.complete(res);
        }
        Op::Truncate { fd, len, done } => {
            let res = retry(|| rustix::fs::ftruncate(&*fd, len));
            drop(fd);
            done.complete(res);
        }
        Op::Allocate { fd, offset, len, done } => {
            let res = retry(|| rustix::fs::fallocate(&*fd, FallocateFlags::empty(), offset, len));
            drop(fd);
            done.complete(res);
        }
        Op::ReadDir { at, done } => {
            let res = read_dir(&at);
            drop(at);
            done.complete(res);
        }
        // Sockets reach the pool only on io_uring without the opcode; they
        // are in blocking mode there.
        Op::Connect {
            sock,
            addr,
            in_progress,
            done,
        } => {
            let res = if in_progress {
                loop {
                    if done.is_abandoned() {
                        break Err(Error::cancelled());
                    }
                    if wait_ready(&sock.fd, PollFlags::OUT) {
                        break connect_outcome(&sock.fd);
                    }
                }
            } else {
                retry(|| rustix::net::connect(&sock.fd, &*addr))
            };
            drop(sock);
            done.complete(res);
        }
        Op::Accept { sock, done } => {
            // Waits in slices so a dropped accept frees its worker; the
            // accept itself may still block if another one takes the
            // connection first (this path only serves kernels without the
            // io_uring opcode).
            let res = loop {
                if done.is_abandoned() {
                    break Err(Error::cancelled());
                }
                if wait_ready(&sock.fd, PollFlags::IN) {
                    break retry(|| rustix::net::accept_with(&sock.fd, SocketFlags::CLOEXEC));
                }
            };
            drop(sock);
            done.complete(res);
        }
        Op::Send { sock, view } => {
            let res = loop {
                if view.is_cancelled() {
                    break Err(Error::cancelled());
                }
                if !wait_ready(&sock.fd, PollFlags::OUT) {
                    continue;
                }
                let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
                match rustix::net::send(&sock.fd, view.as_slice(), flags) {
                    Ok(n) => break Ok(n),
                    Err(Errno::AGAIN | Errno::INTR) => continue,
                    Err(e) => break Err(e.into()),
                }
            };
            drop(sock);
            view.finish(res);
        }
        Op::Recv { sock, view } => {
            // One receive at a time takes bytes from this socket, so a read
            // dropped while it waited gives its bytes back before the next
            // one looks (the ring orders its receives the same way).
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
                let recv = rustix::net::recv(&sock.fd, view.as_uninit_mut(), RecvFlags::DONTWAIT);
                match recv {
                    Ok(((read, _), _)) => break Ok(read.len()),
                    Err(Errno::AGAIN | Errno::INTR) => continue,
                    Err(e) => break Err(e.into()),
                }
            };
            drop(turn);
            drop(sock);
            view.finish(res);
        }
        Op::Shutdown { sock, how, done } => {
            let res = retry(|| rustix::net::shutdown(&sock.fd, how));
            drop(sock);
            done.complete(res);
        }
        Op::Close { file, done } => {
            let FileFd { fd, fixed, .. } = file;
            drop(fixed);
            let raw = fd.into_raw_fd();
            // SAFETY: we owned `raw` (from the OwnedFd just given up) and
            // nothing else refers to it; close releases it even on error.
            let r = unsafe { libc::close(raw) };
            done.complete(if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error().into())
            });
        }
        Op::SendTo { sock, addr, view } => {
            let res = retry(|| rustix::net::sendto(&sock.fd, view.as_slice(), SendFlags::NOSIGNAL, &*addr));
            drop(sock);
            view.finish(res);
        }
        Op::RecvFrom { sock, mut view, from } => {
            let res = retry(|| {
                rustix::net::recvfrom(&sock.fd, view.as_uninit_mut(), RecvFlags::empty())
                    .map(|((read, _), _, addr)| (read.len(), addr))
            });
            drop(sock);
            view.finish(res.map(|(n, addr)| {
                if let Some(a) = addr.and_then(|a| std::net::SocketAddr::try_from(a).ok()) {
                    let _ = from.set(a);
                }
                n
            }));
        }
    }
}

/// How long a blocking socket operation waits for readiness before it
/// looks again whether its caller dropped it.
const READY_SLICE_MS: i32 = 20;

/// Waits up to [`READY_SLICE_MS`] for `events` on `fd`; true if it came (or
/// the socket has an error or hung up, which the next call reports).
fn wait_ready(fd: &OwnedFd, events: PollFlags) -> bool {
    let mut fds = [PollFd::new(fd, events)];
    let timeout = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(READY_SLICE_MS) * 1_000_000,
    };
    matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
}

/// How a connect that was in progress ended, once its socket is writable
/// (`SO_ERROR`).
pub(crate) fn connect_outcome(fd: &OwnedFd) -> Result<()> {
    match rustix::net::sockopt::socket_error(fd) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(errno)) => Err(Error::from(errno)),
        Err(e) => Err(Error::from(e)),
    }
}

/// The `O_DIRECT` alignment of an open file as (memory, offset and length),
/// from `statx`'s DIO fields; `None` where the kernel or file system does
/// not report it.
pub(crate) fn dio_alignment(fd: &OwnedFd) -> Option<(u32, u32)> {
    let at = At {
        dir: None,
        path: std::ffi::CString::default(),
    };
    let meta = statx_fd(fd.as_raw_fd(), &at, libc::AT_EMPTY_PATH).ok()?;
    meta.dio_mem_align().zip(meta.dio_offset_align())
}

/// Reads the whole view from the page cache without blocking
/// (`preadv2(RWF_NOWAIT)`); `None` unless every byte was there (a partial
/// or refused read is left to the ring, which then overwrites the view).
pub(crate) fn read_cached(fd: &FileFd, pos: u64, view: &mut mfio_core::PacketView<mfio_core::Read>) -> Option<usize> {
    let len = view.len();
    if len == 0 {
        return None;
    }
    let iov = libc::iovec {
        iov_base: view.as_mut_ptr().cast(),
        iov_len: len,
    };
    let offset = i64::try_from(pos).ok()?;
    let r = preadv2_nowait(fd.as_raw_fd(), &iov, offset);
    (r >= 0 && r as usize == len).then_some(len)
}

/// `preadv2(fd, iov, 1, offset, RWF_NOWAIT)`. On 64-bit Linux it is the raw
/// system call: glibc's wrapper is a cancellation point and brackets every
/// call with two extra calls, a measurable share of a page-cache hit.
fn preadv2_nowait(fd: i32, iov: &libc::iovec, offset: i64) -> isize {
    #[cfg(target_pointer_width = "64")]
    {
        // SAFETY: the arguments are those of preadv2(2) on a 64-bit kernel
        // (the high half of the offset is 0); the iovec points at memory the
        // caller owns exclusively and that is writable for its length; the
        // kernel only writes into it.
        unsafe {
            libc::syscall(
                libc::SYS_preadv2,
                fd,
                iov as *const libc::iovec,
                1,
                offset,
                0,
                libc::RWF_NOWAIT,
            ) as isize
        }
    }
    #[cfg(not(target_pointer_width = "64"))]
    {
        // SAFETY: as above, through the C library.
        unsafe { libc::preadv2(fd, iov, 1, offset, libc::RWF_NOWAIT) as isize }
    }
}

/// `statx(at, flags, STATX_MASK)`.
fn statx(at: &At, flags: i32) -> Result<Metadata> {
    statx_fd(at.dirfd().as_raw_fd(), at, flags)
}

/// `statx(dirfd, at.path, flags, STATX_MASK)`.
fn statx_fd(dirfd: i32, at: &At, flags: i32) -> Result<Metadata> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    loop {
        // SAFETY: the path is a valid C string, `buf` is writable and large
        // enough for `struct statx`, and the directory descriptor is open
        // (or AT_FDCWD).
        let r = unsafe { libc::statx(dirfd, at.path.as_ptr(), flags, STATX_MASK, buf.as_mut_ptr()) };
        if r == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err.into());
        }
    }
    // SAFETY: statx returned 0, so it filled the structure (and it was zeroed before).
    let st = unsafe { buf.assume_init() };
    Ok(Metadata::from_statx(&st))
}

/// The entries of a directory, without `.` and `..`.
fn read_dir(at: &At) -> Result<Vec<DirEntry>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = retry(|| rustix::fs::openat(at.dirfd(), at.path.as_c_str(), flags, Mode::empty()))?;
    let mut entries = Vec::new();
    for entry in rustix::fs::Dir::new(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        entries.push(DirEntry::new(
            std::ffi::OsStr::from_bytes(name).to_os_string(),
            entry.file_type(),
        ));
    }
    Ok(entries)
}
