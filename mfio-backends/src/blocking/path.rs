//! Path operations as blocking calls.

use mfio_core::Error;
use rustix::fs::{AtFlags, Mode, OFlags};

use super::sys::{read_dir, retry, statx};
use super::RunBlocking;
use crate::op::{MkdirAt, OpenAt, ReadDir, RenameAt, Statx, UnlinkAt};

impl RunBlocking for OpenAt {
    fn run(self) {
        let OpenAt { at, flags, mode, done } = self;
        // Nobody would close what this opens: do not open it.
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
}

impl RunBlocking for Statx {
    fn run(self) {
        let Statx { at, flags, done } = self;
        let res = statx(&at, flags);
        drop(at);
        done.complete(res);
    }
}

impl RunBlocking for MkdirAt {
    fn run(self) {
        let MkdirAt { at, mode, done } = self;
        let res = retry(|| rustix::fs::mkdirat(at.dirfd(), at.path.as_c_str(), Mode::from_raw_mode(mode)));
        drop(at);
        done.complete(res);
    }
}

impl RunBlocking for UnlinkAt {
    fn run(self) {
        let UnlinkAt { at, dir, done } = self;
        let flags = if dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
        let res = retry(|| rustix::fs::unlinkat(at.dirfd(), at.path.as_c_str(), flags));
        drop(at);
        done.complete(res);
    }
}

impl RunBlocking for RenameAt {
    fn run(self) {
        let RenameAt { from, to, done } = self;
        let res = retry(|| rustix::fs::renameat(from.dirfd(), from.path.as_c_str(), to.dirfd(), to.path.as_c_str()));
        drop((from, to));
        done.complete(res);
    }
}

impl RunBlocking for ReadDir {
    fn run(self) {
        let ReadDir { at, done } = self;
        let res = read_dir(&at);
        drop(at);
        done.complete(res);
    }
}
