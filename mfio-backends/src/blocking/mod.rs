//! The blocking executor: every operation as a blocking system call, run on
//! the calling thread (a blocking caller's file I/O) or on the [`pool`] (the
//! poll backend's file I/O, and io_uring's fallback for opcodes the kernel
//! lacks). It sits below both engines and names neither.
//!
//! Every implementation releases the operation's file, socket or directory
//! handles before completing it: a caller who sees the completion (and, say,
//! closes the file) never finds the operation still holding a reference. A
//! write was counted in flight on its file when it was handed here
//! ([`FileFd::write_started`](crate::op::FileFd::write_started)) and is
//! counted out before it completes.

mod file;
mod net;
mod path;
pub(crate) mod pool;
pub(crate) mod sys;

use crate::op::{on_op, Request};

/// One operation, carried out as a blocking call on the calling thread.
pub(crate) trait RunBlocking {
    /// Runs the operation to the end and completes it.
    fn run(self);
}

/// Runs `op` to completion on the calling thread and completes it.
pub(crate) fn run_blocking(op: Request) {
    on_op!(op, o => o.run())
}
