//! The values operations produce, below everything that produces them:
//! [`Metadata`] and [`FileType`] (from `statx`) and [`DirEntry`] (from a
//! directory listing).

use std::ffi::OsString;
use std::time::{Duration, SystemTime};

/// The kind of a file system object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, socket, FIFO).
    Other,
}

/// What `statx(2)` reports about an open file.
#[derive(Debug, Clone)]
pub struct Metadata {
    len: u64,
    mode: u32,
    kind: FileType,
    modified: Option<SystemTime>,
    block_size: u32,
    dio_mem_align: Option<u32>,
    dio_offset_align: Option<u32>,
}

impl Metadata {
    pub(crate) fn from_statx(st: &libc::statx) -> Self {
        let kind = match u32::from(st.stx_mode) & libc::S_IFMT {
            libc::S_IFREG => FileType::File,
            libc::S_IFDIR => FileType::Dir,
            libc::S_IFLNK => FileType::Symlink,
            _ => FileType::Other,
        };
        let modified = (st.stx_mask & libc::STATX_MTIME != 0)
            .then(|| {
                let t = st.stx_mtime;
                let secs = u64::try_from(t.tv_sec).ok()?;
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, t.tv_nsec))
            })
            .flatten();
        let dio = st.stx_mask & libc::STATX_DIOALIGN != 0 && st.stx_dio_offset_align != 0;
        Self {
            len: st.stx_size,
            mode: u32::from(st.stx_mode) & 0o7777,
            kind,
            modified,
            block_size: st.stx_blksize,
            dio_mem_align: dio.then_some(st.stx_dio_mem_align),
            dio_offset_align: dio.then_some(st.stx_dio_offset_align),
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if the size is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The kind of object.
    pub fn file_type(&self) -> FileType {
        self.kind
    }

    /// Permission bits (`0o7777` part of the mode).
    pub fn permissions(&self) -> u32 {
        self.mode
    }

    /// Last modification time, if reported.
    pub fn modified(&self) -> Option<SystemTime> {
        self.modified
    }

    /// Preferred I/O block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Required alignment of buffers for `O_DIRECT` (`statx` DIO fields,
    /// Linux 6.1+); `None` where the kernel or file system does not say.
    pub fn dio_mem_align(&self) -> Option<u32> {
        self.dio_mem_align
    }

    /// Required alignment of offsets and lengths for `O_DIRECT`; `None` where
    /// the kernel or file system does not say.
    pub fn dio_offset_align(&self) -> Option<u32> {
        self.dio_offset_align
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    name: OsString,
    kind: Option<FileType>,
}

impl DirEntry {
    pub(crate) fn new(name: OsString, kind: rustix::fs::FileType) -> Self {
        let kind = match kind {
            rustix::fs::FileType::RegularFile => Some(FileType::File),
            rustix::fs::FileType::Directory => Some(FileType::Dir),
            rustix::fs::FileType::Symlink => Some(FileType::Symlink),
            rustix::fs::FileType::Unknown => None,
            _ => Some(FileType::Other),
        };
        Self { name, kind }
    }

    /// The entry's name (no directory part).
    pub fn file_name(&self) -> &std::ffi::OsStr {
        &self.name
    }

    /// The entry's kind, if the file system reported it in the listing
    /// (some do not; ask [`Dir::metadata`](crate::Dir::metadata) then).
    pub fn file_type(&self) -> Option<FileType> {
        self.kind
    }
}
