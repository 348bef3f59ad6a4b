//! Path operations as io_uring entries.

use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd};

use io_uring::{opcode, squeue, types};
use mfio_core::{CancelHandler, Error};

use super::op::{cqe_result, dirfd, Prepare, Scratch, Supported, UringOp};
use crate::blocking::sys::STATX_MASK;
use crate::op::{Metadata, MkdirAt, OpenAt, Operation, ReadDir, RenameAt, Request, Statx, UnlinkAt};

impl UringOp for OpenAt {
    fn supported(&self, s: &Supported) -> bool {
        s.openat
    }
    fn prepare(self, cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let handler: std::sync::Arc<dyn CancelHandler> = cx.cancels.clone();
        if self.done.set_cancel_handler(handler, cx.user_data).is_err() {
            // Nobody would close what this opens: do not open it.
            self.done.complete(Err(Error::cancelled()));
            return None;
        }
        let entry = opcode::OpenAt::new(dirfd(&self.at), self.at.path.as_ptr())
            .flags(self.flags)
            .mode(self.mode)
            .build();
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let OpenAt { at, done, .. } = self;
        drop(at);
        done.complete(cqe_result(res).and_then(|fd| {
            let fd = i32::try_from(fd).map_err(|_| Error::new(std::io::ErrorKind::Other, "bad fd from openat"))?;
            // SAFETY: a successful openat completion returns a new descriptor
            // that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }));
        None
    }
}

impl UringOp for Statx {
    fn supported(&self, s: &Supported) -> bool {
        s.statx
    }
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let mut buf = Box::new(MaybeUninit::<libc::statx>::zeroed());
        let entry = opcode::Statx::new(
            dirfd(&self.at),
            self.at.path.as_ptr(),
            buf.as_mut_ptr().cast::<types::statx>(),
        )
        .flags(self.flags)
        .mask(STATX_MASK)
        .build();
        Some((entry, self.into(), Scratch::Statx(buf)))
    }
    fn complete(self, res: i32, scratch: Scratch) -> Option<Request> {
        let Statx { at, done, .. } = self;
        drop(at);
        done.complete(cqe_result(res).and_then(|_| match scratch {
            // SAFETY: statx completed successfully, so the kernel filled the
            // buffer (which was zeroed before).
            Scratch::Statx(buf) => Ok(Metadata::from_statx(unsafe { buf.assume_init_ref() })),
            _ => Err(Error::aborted()),
        }));
        None
    }
}

impl UringOp for MkdirAt {
    fn supported(&self, s: &Supported) -> bool {
        s.mkdirat
    }
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let entry = opcode::MkDirAt::new(dirfd(&self.at), self.at.path.as_ptr())
            .mode(self.mode)
            .build();
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let MkdirAt { at, done, .. } = self;
        drop(at);
        done.complete(cqe_result(res).map(|_| ()));
        None
    }
}

impl UringOp for UnlinkAt {
    fn supported(&self, s: &Supported) -> bool {
        s.unlinkat
    }
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let flags = if self.dir { libc::AT_REMOVEDIR } else { 0 };
        let entry = opcode::UnlinkAt::new(dirfd(&self.at), self.at.path.as_ptr())
            .flags(flags)
            .build();
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let UnlinkAt { at, done, .. } = self;
        drop(at);
        done.complete(cqe_result(res).map(|_| ()));
        None
    }
}

impl UringOp for RenameAt {
    fn supported(&self, s: &Supported) -> bool {
        s.renameat
    }
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        let (from, to) = (&self.from, &self.to);
        let entry = opcode::RenameAt::new(dirfd(from), from.path.as_ptr(), dirfd(to), to.path.as_ptr()).build();
        Some((entry, self.into(), Scratch::None))
    }
    fn complete(self, res: i32, _: Scratch) -> Option<Request> {
        let RenameAt { from, to, done } = self;
        drop((from, to));
        done.complete(cqe_result(res).map(|_| ()));
        None
    }
}

impl UringOp for ReadDir {
    /// No opcode lists a directory: always the fallback pool.
    fn supported(&self, _s: &Supported) -> bool {
        false
    }
    fn prepare(self, _cx: &Prepare<'_>) -> Option<(squeue::Entry, Request, Scratch)> {
        self.fail(Error::aborted());
        None
    }
    fn complete(self, _res: i32, _: Scratch) -> Option<Request> {
        self.fail(Error::aborted());
        None
    }
}
