//! File operations as blocking calls.

use std::os::fd::{AsRawFd, IntoRawFd};

use rustix::fs::FallocateFlags;

use super::sys::{retry, retry_c};
use super::RunBlocking;
use crate::op::{
    finish_vectored, Allocate, CloseFile, FileFd, ReadAt, ReadVectoredAt, SetLen, Sync, WriteAt, WriteVectoredAt,
};

impl RunBlocking for ReadAt {
    fn run(self) {
        let ReadAt { fd, pos, mut view } = self;
        let res = retry(|| rustix::io::pread(&*fd, view.as_uninit_mut(), pos).map(|(read, _)| read.len()));
        drop(fd);
        view.finish(res);
    }
}

impl RunBlocking for ReadVectoredAt {
    fn run(self) {
        let ReadVectoredAt { fd, pos, mut views } = self;
        let iov: Vec<libc::iovec> = views
            .iter_mut()
            .map(|v| libc::iovec {
                iov_base: v.as_mut_ptr().cast(),
                iov_len: v.len(),
            })
            .collect();
        let res = retry_c(|| {
            // SAFETY: every iovec points at a view's memory, writable for its
            // length and exclusively ours until the views complete below.
            unsafe { libc::preadv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32, pos as i64) }
        });
        drop(fd);
        finish_vectored(views, res);
    }
}

impl RunBlocking for WriteAt {
    fn run(self) {
        let WriteAt { fd, pos, view } = self;
        let res = retry(|| match pos {
            Some(pos) => rustix::io::pwrite(&*fd, view.as_slice(), pos),
            None => rustix::io::write(&*fd, view.as_slice()),
        });
        fd.write_finished();
        drop(fd);
        view.finish(res);
    }
}

impl RunBlocking for WriteVectoredAt {
    fn run(self) {
        let WriteVectoredAt { fd, pos, views } = self;
        let iov: Vec<libc::iovec> = views
            .iter()
            .map(|v| libc::iovec {
                iov_base: v.as_slice().as_ptr().cast_mut().cast(),
                iov_len: v.len(),
            })
            .collect();
        let res = retry_c(|| {
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
}

impl RunBlocking for Sync {
    fn run(self) {
        let Sync { fd, data_only, view } = self;
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
}

impl RunBlocking for SetLen {
    fn run(self) {
        let SetLen { fd, len, done } = self;
        let res = retry(|| rustix::fs::ftruncate(&*fd, len));
        drop(fd);
        done.complete(res);
    }
}

impl RunBlocking for Allocate {
    fn run(self) {
        let Allocate { fd, offset, len, done } = self;
        let res = retry(|| rustix::fs::fallocate(&*fd, FallocateFlags::empty(), offset, len));
        drop(fd);
        done.complete(res);
    }
}

impl RunBlocking for CloseFile {
    fn run(self) {
        let CloseFile { file, done } = self;
        let FileFd { fd, fixed, .. } = file;
        drop(fixed);
        let raw = fd.into_raw_fd();
        // SAFETY: we owned `raw` (from the OwnedFd just given up) and nothing
        // else refers to it; close releases it even on error.
        let r = unsafe { libc::close(raw) };
        done.complete(super::sys::cvt(r as isize).map(|_| ()));
    }
}
