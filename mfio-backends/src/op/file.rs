//! Operations on an open file: positional reads and writes (plain and
//! vectored), syncs, length changes, and close.

use std::sync::Arc;

use mfio_core::completion::Completer;
use mfio_core::{PacketView, Read, Write};

use super::FileFd;

/// `pread` of `view.len()` bytes at `pos`.
pub(crate) struct ReadAt {
    pub(crate) fd: Arc<FileFd>,
    pub(crate) pos: u64,
    pub(crate) view: PacketView<Read>,
}

/// `preadv` into several views, filled in order from `pos`.
pub(crate) struct ReadVectoredAt {
    pub(crate) fd: Arc<FileFd>,
    pub(crate) pos: u64,
    pub(crate) views: Vec<PacketView<Read>>,
}

/// `pwrite` at `pos`; `None` writes at the file position (append mode).
pub(crate) struct WriteAt {
    pub(crate) fd: Arc<FileFd>,
    pub(crate) pos: Option<u64>,
    pub(crate) view: PacketView<Write>,
}

/// `pwritev` from several views, in order from `pos` (`None`: append).
pub(crate) struct WriteVectoredAt {
    pub(crate) fd: Arc<FileFd>,
    pub(crate) pos: Option<u64>,
    pub(crate) views: Vec<PacketView<Write>>,
}

/// `fsync` (or `fdatasync`) once the writes to this file handed out before
/// it finished (see [`Request::waits_for_writes`](super::Request::waits_for_writes));
/// completes the (empty) view.
pub(crate) struct Sync {
    pub(crate) fd: Arc<FileFd>,
    pub(crate) data_only: bool,
    pub(crate) view: PacketView<Write>,
}

/// `ftruncate(fd, len)`.
pub(crate) struct SetLen {
    pub(crate) fd: Arc<FileFd>,
    pub(crate) len: u64,
    pub(crate) done: Completer<()>,
}

/// `fallocate(fd, 0, offset, len)`.
pub(crate) struct Allocate {
    pub(crate) fd: Arc<FileFd>,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) done: Completer<()>,
}

/// `close` of a file's last reference; the descriptor is given up once the
/// close ran (Linux releases it even when close reports an error).
pub(crate) struct CloseFile {
    pub(crate) file: FileFd,
    pub(crate) done: Completer<()>,
}

operation! {
    ReadAt => Read, fails through view;
    ReadVectoredAt => Read, fails through views;
    WriteAt => Write, fails through view;
    WriteVectoredAt => Write, fails through views;
    Sync => Flush, fails through view;
    SetLen => SetLen, fails through done;
    Allocate => SetLen, fails through done;
    CloseFile => Close, fails through done;
}
