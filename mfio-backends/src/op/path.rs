//! Operations on paths (each relative to a directory, see [`At`]): open,
//! metadata, create and remove directories, remove files, rename, list.

use std::os::fd::OwnedFd;

use mfio_core::completion::Completer;
use mfio_core::Error;

use super::{At, DirEntry, Metadata, Operation};

/// `openat(at, flags, mode)`.
pub(crate) struct OpenAt {
    pub(crate) at: At,
    pub(crate) flags: i32,
    pub(crate) mode: u32,
    pub(crate) done: Completer<OwnedFd>,
}

/// `statx(at, flags)`; an open file is `At { dir: fd, path: "" }` with
/// `AT_EMPTY_PATH`.
pub(crate) struct Statx {
    pub(crate) at: At,
    pub(crate) flags: i32,
    pub(crate) done: Completer<Metadata>,
}

/// `mkdirat(at, mode)`.
pub(crate) struct MkdirAt {
    pub(crate) at: At,
    pub(crate) mode: u32,
    pub(crate) done: Completer<()>,
}

/// `unlinkat(at)`, with `AT_REMOVEDIR` for a directory.
pub(crate) struct UnlinkAt {
    pub(crate) at: At,
    pub(crate) dir: bool,
    pub(crate) done: Completer<()>,
}

/// `renameat(from, to)`.
pub(crate) struct RenameAt {
    pub(crate) from: At,
    pub(crate) to: At,
    pub(crate) done: Completer<()>,
}

/// Lists a directory (no io_uring opcode does: always a blocking call).
pub(crate) struct ReadDir {
    pub(crate) at: At,
    pub(crate) done: Completer<Vec<DirEntry>>,
}

/// `Operation` for path operations, which all fail through their completer.
macro_rules! path_operation {
    ($($name:ident => $what:ident),* $(,)?) => {$(
        impl Operation for $name {
            const NAME: mfio_core::Op = mfio_core::Op::$what;
            fn fail(self, err: Error) {
                self.done.complete(Err(err));
            }
        }
    )*};
}

path_operation!(
    OpenAt => Open,
    Statx => Metadata,
    MkdirAt => CreateDir,
    UnlinkAt => Remove,
    RenameAt => Rename,
    ReadDir => ReadDir,
);
