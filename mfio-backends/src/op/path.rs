//! Operations on paths (each relative to a directory, see [`At`]): open,
//! metadata, create and remove directories, remove files, rename, list.

use std::os::fd::OwnedFd;

use mfio_core::completion::Completer;

use super::{At, DirEntry, Metadata};

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

operation! {
    OpenAt => Open, fails through done;
    Statx => Metadata, fails through done;
    MkdirAt => CreateDir, fails through done;
    UnlinkAt => Remove, fails through done;
    RenameAt => Rename, fails through done;
    ReadDir => ReadDir, fails through done;
}
