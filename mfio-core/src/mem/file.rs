//! [`MemFile`]: a growable, positional byte space on the mem backend.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::RwLock;

use super::{Request, Shared};
use crate::backend::{DriveStatus, IoBackend, PollingHandle};
use crate::error::{Error, Result};
use crate::io::{Flush, IoLen, PacketIo, QueueFull};
use crate::packet::{PacketView, Read, Write};

/// The bytes of a mem file and its count of writes not yet completed.
#[derive(Debug)]
pub(super) struct FileData {
    bytes: RwLock<Vec<u8>>,
    writes: AtomicUsize,
}

impl FileData {
    pub(super) fn new(bytes: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            bytes: RwLock::new(bytes),
            writes: AtomicUsize::new(0),
        })
    }

    /// Copies the bytes at `pos` into `view`; returns the count (short at the end).
    pub(super) fn copy_out(&self, pos: u64, view: &mut PacketView<Read>) -> usize {
        let bytes = self.bytes.read();
        let Ok(start) = usize::try_from(pos) else { return 0 };
        let Some(src) = bytes.get(start..) else { return 0 };
        let dst = view.as_uninit_mut();
        let n = src.len().min(dst.len());
        for (d, s) in dst[..n].iter_mut().zip(src) {
            d.write(*s);
        }
        n
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

    pub(super) fn write_started(&self) {
        self.writes.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn write_done(&self) {
        self.writes.fetch_sub(1, Ordering::AcqRel);
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
    /// `OutOfMemory` if the bytes cannot be allocated, `FileTooLarge` past `isize::MAX`.
    pub fn set_len(&self, len: u64) -> Result<()> {
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
    fn try_send_io(&self, pos: u64, view: PacketView<Read>) -> Result<(), QueueFull<Read, u64>> {
        self.shared
            .submit(pos, view, |v| Request::FileRead(self.data.clone(), pos, v))
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(cx)
    }
}

impl PacketIo<Write, u64> for MemFile {
    fn try_send_io(&self, pos: u64, view: PacketView<Write>) -> Result<(), QueueFull<Write, u64>> {
        self.shared
            .submit(pos, view, |v| Request::FileWrite(self.data.clone(), pos, v))
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
