//! The system calls the blocking executor makes, each C return convention
//! turned into a `Result` in one place: [`cvt`] for `-1` and `errno`,
//! [`retry`] for rustix calls (both retry `EINTR`), plus the calls several
//! operations share (`statx`, `preadv2(RWF_NOWAIT)`, readiness waits).

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use mfio_core::{Error, Result};
use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::op::{At, DirEntry, FileFd, Metadata};

/// The `statx` fields mfio asks for: size, type, times, and the `O_DIRECT`
/// alignment where the kernel reports it.
pub(crate) const STATX_MASK: u32 = libc::STATX_BASIC_STATS | libc::STATX_DIOALIGN;

/// A C call's count, or the `errno` it reported with `-1`.
pub(crate) fn cvt(r: isize) -> Result<usize> {
    usize::try_from(r).map_err(|_| Error::from(std::io::Error::last_os_error()))
}

/// Runs a C call that returns a count or `-1` with `errno`, again while it
/// is interrupted by a signal.
pub(crate) fn retry_c(mut f: impl FnMut() -> isize) -> Result<usize> {
    loop {
        match cvt(f()) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => return other,
        }
    }
}

/// Runs a rustix call again while it is interrupted by a signal.
pub(crate) fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            other => return other.map_err(Error::from),
        }
    }
}

/// How long a blocking socket operation waits for readiness before it
/// looks again whether its caller dropped it.
const READY_SLICE_MS: i32 = 20;

/// Waits up to [`READY_SLICE_MS`] for `events` on `fd`; true if it came (or
/// the socket has an error or hung up, which the next call reports).
pub(crate) fn wait_ready(fd: &OwnedFd, events: PollFlags) -> bool {
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
pub(crate) fn statx(at: &At, flags: i32) -> Result<Metadata> {
    statx_fd(at.dirfd().as_raw_fd(), at, flags)
}

/// `statx(dirfd, at.path, flags, STATX_MASK)`.
fn statx_fd(dirfd: i32, at: &At, flags: i32) -> Result<Metadata> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    retry_c(|| {
        // SAFETY: the path is a valid C string, `buf` is writable and large
        // enough for `struct statx`, and the directory descriptor is open
        // (or AT_FDCWD).
        unsafe { libc::statx(dirfd, at.path.as_ptr(), flags, STATX_MASK, buf.as_mut_ptr()) as isize }
    })?;
    // SAFETY: statx returned 0, so it filled the structure (and it was zeroed before).
    let st = unsafe { buf.assume_init() };
    Ok(Metadata::from_statx(&st))
}

/// The entries of a directory, without `.` and `..`.
pub(crate) fn read_dir(at: &At) -> Result<Vec<DirEntry>> {
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
