//! [`MemFile`]: a growable, positional byte space on the mem backend.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::RwLock;

use super::{Request, Shared};
use crate::backend::{DriveStatus, IoBackend, PollingHandle};
use crate::error::{Error, Op, Result};
use crate::io::{check_offset, CloseWrite, Flush, IoLen, PacketIo, QueueFull};
use crate::packet::{PacketView, Read, Write};

/// The bytes of a mem file and its counts of operations not yet completed.
#[derive(Debug)]
pub(super) struct FileData {
    bytes: RwLock<Vec<u8>>,
    /// Reads and writes queued or in flight.
    ops: AtomicUsize,
    /// Writes queued or in flight.
    writes: AtomicUsize,
}

impl FileData {
    pub(super) fn new(bytes: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            bytes: RwLock::new(bytes),
            ops: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
        })
    }

    /// Copies the bytes at `pos` into `view`; returns the count (short at the end).
    pub(super) fn copy_out(&self, pos: u64, view: &mut PacketView<Read>) -> usize {
        let bytes = self.bytes.read();
        let Ok(start) = usize::try_from(pos) else { return 0 };
        let Some(src) = bytes.get(start..) else { return 0 };
        view.fill_from(src)
    }

    /// Writes `src` at `pos`, growing (zero-filling any gap) as needed.
    pub(super) fn copy_in(&self, pos: u64, src: &[u8]) -> Result<usize> {
        let too_large = || {
            Error::new(
                ErrorKind::FileTooLarge,
                "write beyond the addressable size of a mem file",
            )
        };
        let start = usize::try_from(pos).map_err(|_| too_large())?;
        let end = start
            .checked_add(src.len())
            .filter(|e| *e <= isize::MAX as usize)
            .ok_or_else(too_large)?;
        let mut bytes = self.bytes.write();
        if end > bytes.len() {
            let grow = end - bytes.len();
            bytes
                .try_reserve(grow)
                .map_err(|_| Error::new(ErrorKind::OutOfMemory, "cannot grow mem file"))?;
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(src);
        Ok(src.len())
    }

    /// Counts `n` more operations (reads, or writes if `write`) as pending.
    pub(super) fn begin(&self, write: bool, n: usize) {
        self.ops.fetch_add(n, Ordering::AcqRel);
        if write {
            self.writes.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Counts one operation as finished.
    pub(super) fn end(&self, write: bool) {
        self.ops.fetch_sub(1, Ordering::AcqRel);
        if write {
            self.writes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// True when a read may be served inline without overtaking a write.
    fn read_may_skip_queue(&self) -> bool {
        self.writes.load(Ordering::Acquire) == 0
    }

    /// True when a write may be applied inline without overtaking anything.
    fn write_may_skip_queue(&self) -> bool {
        self.ops.load(Ordering::Acquire) == 0
    }

    pub(super) fn writes_in_flight(&self) -> usize {
        self.writes.load(Ordering::Acquire)
    }
}

/// A positional byte space on a [`MemBackend`](super::MemBackend), like a
/// file: `PacketIo` at `u64` offsets, reads short at the end, writes grow it.
/// Clones share the same bytes.
#[derive(Debug, Clone)]
pub struct MemFile {
    shared: Arc<Shared>,
    data: Arc<FileData>,
}

impl MemFile {
    pub(super) fn new(shared: Arc<Shared>, data: Arc<FileData>) -> Self {
        Self { shared, data }
    }

    /// A copy of the current bytes.
    pub fn contents(&self) -> Vec<u8> {
        self.data.bytes.read().clone()
    }

    /// Truncates or zero-extends to `len` bytes.
    ///
    /// # Errors
    /// `InvalidInput` past [`MAX_OFFSET`](crate::MAX_OFFSET), `OutOfMemory`
    /// if the bytes cannot be allocated, `FileTooLarge` past `isize::MAX`.
    pub fn set_len(&self, len: u64) -> Result<()> {
        check_offset(len, Op::SetLen)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= isize::MAX as usize)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::FileTooLarge,
                    "length beyond the addressable size of a mem file",
                )
            })?;
        let mut bytes = self.data.bytes.write();
        if len > bytes.len() {
            let grow = len - bytes.len();
            bytes
                .try_reserve(grow)
                .map_err(|_| Error::new(ErrorKind::OutOfMemory, "cannot grow mem file"))?;
        }
        bytes.resize(len, 0);
        Ok(())
    }
}

impl PacketIo<Read, u64> for MemFile {
    /// Served inline (copied and completed before returning) when the backend
    /// allows it and no write to this file is queued; otherwise queued.
    fn try_send_io(&self, pos: u64, mut view: PacketView<Read>) -> Result<(), QueueFull<Read, u64>> {
        if let Err(e) = check_offset(pos, Op::Read) {
            view.fail(e);
            return Ok(());
        }
        if self.shared.config.inline && self.data.read_may_skip_queue() {
            let n = self.data.copy_out(pos, &mut view);
            view.complete(n);
            return Ok(());
        }
        self.data.begin(false, 1);
        self.shared
            .submit(pos, view, |v| Request::FileRead(self.data.clone(), pos, v))
            .inspect_err(|_| self.data.end(false))
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(cx)
    }
}

impl PacketIo<Write, u64> for MemFile {
    /// Applied inline when the backend allows it and nothing else is queued
    /// on this file; otherwise queued.
    fn try_send_io(&self, pos: u64, view: PacketView<Write>) -> Result<(), QueueFull<Write, u64>> {
        if let Err(e) = check_offset(pos, Op::Write) {
            view.fail(e);
            return Ok(());
        }
        if self.shared.config.inline && self.data.write_may_skip_queue() {
            let res = self.data.copy_in(pos, view.as_slice());
            view.finish(res);
            return Ok(());
        }
        self.data.begin(true, 1);
        self.shared
            .submit(pos, view, |v| Request::FileWrite(self.data.clone(), pos, v))
            .inspect_err(|_| self.data.end(true))
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(cx)
    }
}

impl PacketIo<Write, Flush> for MemFile {
    fn try_send_io(&self, param: Flush, view: PacketView<Write>) -> Result<(), QueueFull<Write, Flush>> {
        self.shared
            .submit(param, view, |v| Request::FileFlush(self.data.clone(), v))
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(cx)
    }
}

impl PacketIo<Write, CloseWrite> for MemFile {
    /// A file has no direction to close: this is a flush.
    fn try_send_io(&self, _param: CloseWrite, view: PacketView<Write>) -> Result<(), QueueFull<Write, CloseWrite>> {
        self.shared
            .submit(CloseWrite, view, |v| Request::FileFlush(self.data.clone(), v))
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(cx)
    }
}

impl IoLen for MemFile {
    fn io_len(&self) -> Result<u64> {
        Ok(self.data.bytes.read().len() as u64)
    }
}

impl IoBackend for MemFile {
    fn polling_handle(&self) -> PollingHandle<'_> {
        self.shared.polling_handle()
    }
    fn drive(&self) -> DriveStatus {
        self.shared.drive()
    }
}
