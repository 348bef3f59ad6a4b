//! Operations, declared once: one struct per operation ([`file`], [`path`],
//! [`net`]), each with what it needs and where its result goes, and [`Request`],
//! the enum a backend's queue carries (nothing is boxed).
//!
//! This is the bottom layer of the crate: it names no engine and no
//! runtime. Each engine carries every operation out in files of its own:
//! `blocking/` as a system call (on the calling thread or the pool),
//! `uring/` as a submission entry and its completion, `poll/` by readiness
//! (sockets). A new operation is a struct here, a name in
//! [`operations!`]'s list, and one implementation per engine.

use std::collections::VecDeque;

pub(crate) use file::{Allocate, CloseFile, ReadAt, ReadVectoredAt, SetLen, Sync, WriteAt, WriteVectoredAt};
pub(crate) use handle::{At, FileFd, FixedSlot, Socket};
pub(crate) use net::{Accept, Connect, Recv, RecvFrom, Send, SendTo, Shutdown};
pub(crate) use path::{MkdirAt, OpenAt, ReadDir, RenameAt, Statx, UnlinkAt};
pub use types::{DirEntry, FileType, Metadata};

use mfio_core::completion::Completer;
use mfio_core::{Direction, Error, PacketView, Result, Write};

/// What every operation provides, whichever engine carries it out.
pub(crate) trait Operation: Sized {
    /// Its name in error reports.
    const NAME: mfio_core::Op;

    /// Fails it without running it (its backend is shutting down, say).
    fn fail(self, err: Error);
}

/// `Operation` for operations that fail through one of their fields: the
/// packet view (`view`), several views (`views`) or the completer (`done`).
macro_rules! operation {
    ($($name:ident => $what:ident, fails through $how:ident;)*) => {$(
        operation!(@one $name, $what, $how);
    )*};
    (@one $name:ident, $what:ident, view) => {
        impl crate::op::Operation for $name {
            const NAME: mfio_core::Op = mfio_core::Op::$what;
            fn fail(self, err: mfio_core::Error) {
                self.view.fail(err);
            }
        }
    };
    (@one $name:ident, $what:ident, views) => {
        impl crate::op::Operation for $name {
            const NAME: mfio_core::Op = mfio_core::Op::$what;
            fn fail(self, err: mfio_core::Error) {
                crate::op::fail_all(self.views, &err);
            }
        }
    };
    (@one $name:ident, $what:ident, done) => {
        impl crate::op::Operation for $name {
            const NAME: mfio_core::Op = mfio_core::Op::$what;
            fn fail(self, err: mfio_core::Error) {
                self.done.complete(Err(err));
            }
        }
    };
}

mod file;
mod handle;
mod net;
mod path;
mod types;

/// Declares [`Request`] over the listed operation structs, and `on_op!`, which
/// runs an expression on whichever operation a `Request` holds. `$d` is a `$`,
/// passed in so the inner macro can have parameters of its own.
macro_rules! operations {
    ($d:tt; $($name:ident),* $(,)?) => {
        /// One operation, as a backend's queue carries it.
        pub(crate) enum Request {
            $(
                #[doc = concat!("[`", stringify!($name), "`]")]
                $name($name),
            )*
        }

        $(
            impl From<$name> for Request {
                fn from(op: $name) -> Self {
                    Request::$name(op)
                }
            }
        )*

        impl Request {
            /// The operation's name in error reports.
            pub(crate) fn name(&self) -> mfio_core::Op {
                match self {
                    $(Request::$name(_) => <$name as Operation>::NAME,)*
                }
            }

            /// Fails the operation without running it.
            pub(crate) fn fail(self, err: Error) {
                match self {
                    $(Request::$name(op) => op.fail(err),)*
                }
            }
        }

        /// `on_op!(op, o => expr)`: `expr` with `o` bound to the operation
        /// inside `op`, whatever its type (each engine's trait method).
        macro_rules! on_op {
            ($d op:expr, $d o:ident => $d body:expr) => {
                match $d op {
                    $(crate::op::Request::$name($d o) => $d body,)*
                }
            };
        }
        pub(crate) use on_op;
    };
}

operations!($;
    ReadAt,
    ReadVectoredAt,
    WriteAt,
    WriteVectoredAt,
    Sync,
    SetLen,
    Allocate,
    CloseFile,
    OpenAt,
    Statx,
    MkdirAt,
    UnlinkAt,
    RenameAt,
    ReadDir,
    Connect,
    Accept,
    Send,
    Recv,
    Shutdown,
    SendTo,
    RecvFrom,
);

impl Request {
    /// The file a write goes to: a sync of that file waits for it.
    pub(crate) fn written_file(&self) -> Option<&std::sync::Arc<FileFd>> {
        match self {
            Request::WriteAt(op) => Some(&op.fd),
            Request::WriteVectoredAt(op) => Some(&op.fd),
            _ => None,
        }
    }

    /// For a sync: true while a write to its file handed out before it has
    /// not finished. The sync then waits, and only for that file: other
    /// operations (a receive that never completes, a blocked FIFO open) never
    /// hold it up, nor does it hold them up.
    pub(crate) fn waits_for_writes(&self) -> bool {
        matches!(self, Request::Sync(op) if op.fd.has_writes_in_flight())
    }
}

/// Moves the syncs in `held` whose file has no write in flight any more to
/// the front of `backlog`, in the order they came.
pub(crate) fn release_syncs(held: &mut Vec<Request>, backlog: &mut VecDeque<Request>) {
    let mut i = held.len();
    while i > 0 {
        i -= 1;
        if !held[i].waits_for_writes() {
            backlog.push_front(held.remove(i));
        }
    }
}

/// Where an operation that reports only success or failure delivers it: the
/// future of a method call, or a packet sent at an address (a half-close
/// sent at [`CloseWrite`](mfio_core::CloseWrite)).
pub(crate) enum Done {
    Future(Completer<()>),
    Packet(PacketView<Write>),
}

impl From<Completer<()>> for Done {
    fn from(done: Completer<()>) -> Self {
        Done::Future(done)
    }
}

impl Done {
    pub(crate) fn complete(self, result: Result<()>) {
        match self {
            Done::Future(done) => done.complete(result),
            Done::Packet(view) => view.finish(result.map(|()| 0)),
        }
    }
}

/// Fails every view with a copy of `err`.
pub(crate) fn fail_all<D: Direction>(views: Vec<PacketView<D>>, err: &Error) {
    for v in views {
        v.fail(err.duplicate());
    }
}

/// Completes vectored views with `result`: `n` bytes fill them in order.
pub(crate) fn finish_vectored<D: Direction>(views: Vec<PacketView<D>>, result: Result<usize>) {
    match result {
        Ok(mut left) => {
            for v in views {
                let n = left.min(v.len());
                left -= n;
                v.complete(n);
            }
        }
        Err(e) => fail_all(views, &e),
    }
}
