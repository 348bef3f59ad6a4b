//! Paths and directories, shaped like `std::fs`: the file-system calls of a
//! [`Runtime`] (relative to the current directory) and of a [`Dir`]
//! (relative to an open directory), plus [`DirEntry`].

use std::ffi::CString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use mfio_core::{Error, Result};

use crate::fs::{OpenFuture, OpenOptions};
use crate::op::{self, At, FileFd};
use crate::op::{DirEntry, Metadata};
use crate::runtime::OpFuture;
use crate::runtime::Runtime;
use mfio_core::completion::Completer;

/// An open directory: every path given to its methods is relative to it
/// (an absolute path ignores it, as with the `*at(2)` calls).
#[derive(Debug, Clone)]
pub struct Dir {
    rt: Runtime,
    fd: Arc<FileFd>,
}

/// Where relative paths start: the current directory, or an open one.
#[derive(Clone, Copy)]
struct Base<'a> {
    rt: &'a Runtime,
    dir: Option<&'a Arc<FileFd>>,
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "path contains a NUL byte"))
}

impl Base<'_> {
    fn at(&self, path: &Path) -> Result<At> {
        Ok(At {
            dir: self.dir.cloned(),
            path: c_path(path)?,
        })
    }

    /// Submits `make(at(path), completer)`, or resolves to the path error.
    fn path_op<T, O: Into<op::Request>>(&self, path: &Path, make: impl FnOnce(At, Completer<T>) -> O) -> OpFuture<T> {
        match self.at(path) {
            Ok(at) => OpFuture::submit(self.rt, |done| make(at, done)),
            Err(e) => OpFuture::ready(Err(e)),
        }
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> OpenFuture {
        crate::fs::open(self.rt, self.at(path), options)
    }

    fn open_dir(&self, path: &Path) -> DirFuture {
        let mut options = OpenOptions::new();
        options.read(true).custom_flags(libc::O_DIRECTORY);
        DirFuture {
            inner: self.open(path, &options),
        }
    }

    fn metadata(&self, path: &Path, follow: bool) -> OpFuture<Metadata> {
        let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
        self.path_op(path, |at, done| op::Statx { at, flags, done })
    }

    fn create_dir(&self, path: &Path) -> OpFuture<()> {
        self.path_op(path, |at, done| op::MkdirAt { at, mode: 0o777, done })
    }

    fn remove(&self, path: &Path, dir: bool) -> OpFuture<()> {
        self.path_op(path, |at, done| op::UnlinkAt { at, dir, done })
    }

    fn rename(&self, from: &Path, to: &Path) -> OpFuture<()> {
        match self.at(to) {
            Ok(to) => self.path_op(from, |from, done| op::RenameAt { from, to, done }),
            Err(e) => OpFuture::ready(Err(e)),
        }
    }

    fn read_dir(&self, path: &Path) -> OpFuture<Vec<DirEntry>> {
        self.path_op(path, |at, done| op::ReadDir { at, done })
    }
}

macro_rules! path_api {
    ($ty:ty, $base:ident) => {
        impl $ty {
            /// Opens a file (see [`OpenOptions`]).
            pub fn open(&self, path: impl AsRef<Path>, options: &OpenOptions) -> OpenFuture {
                $base(self).open(path.as_ref(), options)
            }

            /// Opens a directory, for paths relative to it.
            pub fn open_dir(&self, path: impl AsRef<Path>) -> DirFuture {
                $base(self).open_dir(path.as_ref())
            }

            /// Metadata of a path, following symbolic links.
            pub fn metadata(&self, path: impl AsRef<Path>) -> OpFuture<Metadata> {
                $base(self).metadata(path.as_ref(), true)
            }

            /// Metadata of a path itself (a symbolic link is not followed).
            pub fn symlink_metadata(&self, path: impl AsRef<Path>) -> OpFuture<Metadata> {
                $base(self).metadata(path.as_ref(), false)
            }

            /// Creates a directory (mode `0o777` before the umask).
            pub fn create_dir(&self, path: impl AsRef<Path>) -> OpFuture<()> {
                $base(self).create_dir(path.as_ref())
            }

            /// Removes a file (or symbolic link).
            pub fn remove_file(&self, path: impl AsRef<Path>) -> OpFuture<()> {
                $base(self).remove(path.as_ref(), false)
            }

            /// Removes an empty directory.
            pub fn remove_dir(&self, path: impl AsRef<Path>) -> OpFuture<()> {
                $base(self).remove(path.as_ref(), true)
            }

            /// Renames `from` to `to`, replacing `to` if it exists.
            pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> OpFuture<()> {
                $base(self).rename(from.as_ref(), to.as_ref())
            }

            /// Lists a directory (without `.` and `..`), in the order the file
            /// system gives. Runs on the thread pool: there is no io_uring opcode.
            pub fn read_dir(&self, path: impl AsRef<Path>) -> OpFuture<Vec<DirEntry>> {
                $base(self).read_dir(path.as_ref())
            }
        }
    };
}

fn runtime_base(rt: &Runtime) -> Base<'_> {
    Base { rt, dir: None }
}

fn dir_base(dir: &Dir) -> Base<'_> {
    Base {
        rt: &dir.rt,
        dir: Some(&dir.fd),
    }
}

path_api!(Runtime, runtime_base);
path_api!(Dir, dir_base);

impl Dir {
    /// Lists this directory itself.
    pub fn entries(&self) -> OpFuture<Vec<DirEntry>> {
        dir_base(self).read_dir(Path::new("."))
    }
}

/// Future of [`Runtime::open_dir`] / [`Dir::open_dir`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct DirFuture {
    inner: OpenFuture,
}

impl std::future::Future for DirFuture {
    type Output = Result<Dir>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<Dir>> {
        std::pin::Pin::new(&mut self.inner).poll(cx).map(|res| {
            res.map(|file| {
                let (rt, fd) = file.into_parts();
                Dir { rt, fd }
            })
        })
    }
}
