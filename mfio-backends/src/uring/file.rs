//! File operations as io_uring entries.

use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types};

use super::op::{cqe_result, on_file, IoVecs, Prepare, Scratch, Supported, UringOp};
use crate::op::{
    finish_vectored, Allocate, CloseFile, ReadAt, ReadVectoredAt, Request, SetLen, Sync, WriteAt, WriteVectoredAt,
};

/// `u64::MAX` is -1 to the kernel: write at (and advance) the file position,
/// i.e. append. Positions the caller gives never reach it (they are checked
/// against `MAX_OFFSET` before they are queued).
const AT_FILE_POSITION: u64 = u64::MAX;

impl UringOp for ReadAt {
    fn supported(&self, s: &Supported) -> bool {
        s.read
    }
    fn prepare(mut self, cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let len = self.view.len() as u32;
        let ptr = self.view.as_mut_ptr();
        let fd = &self.fd;
        let entry = match cx.fixed.index_of(ptr, self.view.len()) {
            Some(index) => on_file!(fd, |t| opcode::ReadFixed::new(t, ptr, len, index)
                .offset(self.pos)
                .build()),
            None => on_file!(fd, |t| opcode::Read::new(t, ptr, len).offset(self.pos).build()),
        };
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let ReadAt { fd, view, .. } = self;
        drop(fd);
        view.finish(cqe_result(res));
        None
    }
}

impl UringOp for WriteAt {
    fn supported(&self, s: &Supported) -> bool {
        s.write
    }
    fn prepare(self, cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let slice = self.view.as_slice();
        let (ptr, len) = (slice.as_ptr(), slice.len() as u32);
        let offset = self.pos.unwrap_or(AT_FILE_POSITION);
        let fd = &self.fd;
        let entry = match cx.fixed.index_of(ptr, slice.len()) {
            Some(index) => on_file!(fd, |t| opcode::WriteFixed::new(t, ptr, len, index)
                .offset(offset)
                .build()),
            None => on_file!(fd, |t| opcode::Write::new(t, ptr, len).offset(offset).build()),
        };
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let WriteAt { fd, view, .. } = self;
        drop(fd);
        view.finish(cqe_result(res));
        None
    }
}

impl UringOp for ReadVectoredAt {
    fn supported(&self, s: &Supported) -> bool {
        s.readv
    }
    fn prepare(mut self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let iov = IoVecs::new(self.views.iter_mut().map(|v| libc::iovec {
            iov_base: v.as_mut_ptr().cast(),
            iov_len: v.len(),
        }));
        let (ptr, n) = iov.raw();
        let fd = &self.fd;
        let entry = on_file!(fd, |t| opcode::Readv::new(t, ptr, n).offset(self.pos).build());
        Some((entry, self.into(), Scratch::IoVecs(iov)))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let ReadVectoredAt { fd, views, .. } = self;
        drop(fd);
        finish_vectored(views, cqe_result(res));
        None
    }
}

impl UringOp for WriteVectoredAt {
    fn supported(&self, s: &Supported) -> bool {
        s.writev
    }
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let iov = IoVecs::new(self.views.iter().map(|v| libc::iovec {
            iov_base: v.as_slice().as_ptr().cast_mut().cast(),
            iov_len: v.len(),
        }));
        let (ptr, n) = iov.raw();
        let offset = self.pos.unwrap_or(AT_FILE_POSITION);
        let fd = &self.fd;
        let entry = on_file!(fd, |t| opcode::Writev::new(t, ptr, n).offset(offset).build());
        Some((entry, self.into(), Scratch::IoVecs(iov)))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let WriteVectoredAt { fd, views, .. } = self;
        drop(fd);
        finish_vectored(views, cqe_result(res));
        None
    }
}

impl UringOp for Sync {
    fn supported(&self, s: &Supported) -> bool {
        s.fsync
    }
    /// No `IO_DRAIN`: it would wait for every earlier entry in the ring (a
    /// receive that never completes included) and hold back every later
    /// one, cancellations too. The engine sends a sync only once the earlier
    /// writes to its own file finished (`Request::waits_for_writes`).
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let flags = if self.data_only {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        let fd = &self.fd;
        let entry = on_file!(fd, |t| opcode::Fsync::new(t).flags(flags).build());
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let Sync { fd, view, .. } = self;
        drop(fd);
        view.finish(cqe_result(res).map(|_| 0));
        None
    }
}

impl UringOp for SetLen {
    fn supported(&self, s: &Supported) -> bool {
        s.ftruncate
    }
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let fd = &self.fd;
        let entry = on_file!(fd, |t| opcode::Ftruncate::new(t, self.len).build());
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let SetLen { fd, done, .. } = self;
        drop(fd);
        done.complete(cqe_result(res).map(|_| ()));
        None
    }
}

impl UringOp for Allocate {
    fn supported(&self, s: &Supported) -> bool {
        s.fallocate
    }
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let fd = &self.fd;
        let entry = on_file!(fd, |t| opcode::Fallocate::new(t, self.len).offset(self.offset).build());
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let Allocate { fd, done, .. } = self;
        drop(fd);
        done.complete(cqe_result(res).map(|_| ()));
        None
    }
}

impl UringOp for CloseFile {
    fn supported(&self, s: &Supported) -> bool {
        s.close
    }
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        // By descriptor, not slot: the slot is released separately.
        let entry = opcode::Close::new(types::Fd(self.file.fd.as_raw_fd())).build();
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let CloseFile { file, done } = self;
        let crate::op::FileFd { fd, fixed, .. } = file;
        // The kernel ran close(2): the descriptor is gone either way.
        std::mem::forget(fd);
        drop(fixed);
        done.complete(cqe_result(res).map(|_| ()));
        None
    }
}
