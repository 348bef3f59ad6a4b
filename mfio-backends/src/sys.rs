//! Each [`Op`] as a blocking system call: what the poll backend's thread pool
//! runs, and io_uring's fallback for opcodes the kernel lacks.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};

use mfio_core::{Error, Result};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::fs::Metadata;
use crate::op::Op;

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

/// Runs `op` to completion on the calling thread and completes it.
pub(crate) fn run_blocking(op: Op) {
    match op {
        Op::Read { fd, pos, mut view } => {
            let res = retry(|| rustix::io::pread(&*fd, view.as_uninit_mut(), pos).map(|(read, _)| read.len()));
            view.finish(res);
        }
        Op::Write { fd, pos, view } => {
            let res = retry(|| match pos {
                Some(pos) => rustix::io::pwrite(&*fd, view.as_slice(), pos),
                None => rustix::io::write(&*fd, view.as_slice()),
            });
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
            view.finish(res.map(|()| 0));
        }
        Op::Open {
            path,
            flags,
            mode,
            done,
        } => {
            if done.is_abandoned() {
                return done.complete(Err(Error::cancelled()));
            }
            let flags = OFlags::from_bits_retain(flags as u32);
            done.complete(retry(|| {
                rustix::fs::open(path.as_c_str(), flags, Mode::from_raw_mode(mode))
            }));
        }
        Op::Stat { fd, done } => done.complete(statx(&fd)),
    }
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_MASK)`.
fn statx(fd: &OwnedFd) -> Result<Metadata> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    loop {
        // SAFETY: the path is a valid empty C string, `buf` is writable and
        // large enough for `struct statx`, and `fd` is an open descriptor.
        let r = unsafe {
            libc::statx(
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                STATX_MASK,
                buf.as_mut_ptr(),
            )
        };
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
