//! [`MemStream`]: one end of a connected in-memory stream pair.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use parking_lot::Mutex;

use super::{Done, Request, Shared};
use crate::backend::{DriveStatus, IoBackend, PollingHandle};
use crate::error::{Error, Result};
use crate::io::{CloseWrite, Flush, NoPos, PacketIo, QueueFull};
use crate::packet::{CancelHandler, PacketView, Read, Write};

#[derive(Debug, Default)]
struct PipeState {
    bytes: VecDeque<u8>,
    writer_closed: bool,
    reader_closed: bool,
}

/// One direction of a stream pair: a bounded byte queue.
#[derive(Debug)]
pub(super) struct Pipe {
    state: Mutex<PipeState>,
    capacity: usize,
    writes: AtomicUsize,
    backend: Weak<Shared>,
}

impl Pipe {
    pub(super) fn new(backend: Weak<Shared>, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(PipeState::default()),
            capacity,
            writes: AtomicUsize::new(0),
            backend,
        })
    }

    /// Serves a read from buffered bytes (at most `max`), EOF, or hands the view back to wait.
    pub(super) fn try_read(&self, mut view: PacketView<Read>, max: usize) -> Result<Done, PacketView<Read>> {
        let mut st = self.state.lock();
        if view.is_empty() {
            return Ok(Done::Read(view, Ok(0), None));
        }
        if st.bytes.is_empty() {
            return if st.writer_closed {
                Ok(Done::Read(view, Ok(0), None))
            } else {
                Err(view)
            };
        }
        let n = st.bytes.len().min(view.len()).min(max);
        let (front, back) = st.bytes.as_slices();
        let head = view.fill_from(&front[..front.len().min(n)]);
        view.fill_from_at(head, &back[..n - head]);
        st.bytes.drain(..n);
        Ok(Done::Read(view, Ok(n), None))
    }

    /// Takes as many bytes as fit (at most `max`), fails on a closed pipe, or
    /// hands the view back to wait for room.
    pub(super) fn try_write(&self, view: PacketView<Write>, max: usize) -> Result<Done, PacketView<Write>> {
        let mut st = self.state.lock();
        let outcome = if st.reader_closed || st.writer_closed {
            Err(Error::new(ErrorKind::BrokenPipe, "stream closed"))
        } else if view.is_empty() {
            Ok(0)
        } else {
            let room = self.capacity.saturating_sub(st.bytes.len());
            if room == 0 {
                return Err(view);
            }
            let n = room.min(view.len()).min(max);
            st.bytes.extend(&view.as_slice()[..n]);
            Ok(n)
        };
        drop(st);
        self.write_done();
        Ok(Done::Write(view, outcome, None))
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

    pub(super) fn close(&self, writer: bool) {
        {
            let mut st = self.state.lock();
            if writer {
                st.writer_closed = true;
            } else {
                st.reader_closed = true;
                st.bytes.clear();
            }
        }
        if let Some(shared) = self.backend.upgrade() {
            // Parked readers must see EOF, parked writers a broken pipe.
            shared.notifier.notify();
        }
    }
}

impl CancelHandler for Pipe {
    fn cancel(&self, token: u64) {
        if let Some(shared) = self.backend.upgrade() {
            shared.cancelled.push(token);
            shared.notifier.notify();
        }
    }

    /// A completed read nobody took: its bytes go back to the front of the
    /// pipe so they are read again, not lost.
    fn unclaimed(&self, _token: u64, data: &[u8]) {
        let mut st = self.state.lock();
        if st.reader_closed {
            return;
        }
        for b in data.iter().rev() {
            st.bytes.push_front(*b);
        }
    }
}

/// One end of an in-memory stream pair from
/// [`MemBackend::stream_pair`](super::MemBackend::stream_pair): reads return
/// what is available (at least 1 byte) or 0 once the peer closed its write
/// side; writes take what fits in the pipe. Dropping an end closes both of
/// its directions.
#[derive(Debug)]
pub struct MemStream {
    shared: Arc<Shared>,
    rx: Arc<Pipe>,
    tx: Arc<Pipe>,
}

impl MemStream {
    pub(super) fn new(shared: Arc<Shared>, rx: Arc<Pipe>, tx: Arc<Pipe>) -> Self {
        Self { shared, rx, tx }
    }

    /// Closes the write direction (half-close): the peer reads EOF after the
    /// bytes already written; later writes here fail with `BrokenPipe`.
    pub fn shutdown_write(&self) {
        self.tx.close(true);
    }
}

impl Drop for MemStream {
    fn drop(&mut self) {
        self.tx.close(true);
        self.rx.close(false);
    }
}

impl PacketIo<Read, NoPos> for MemStream {
    fn try_send_io(&self, param: NoPos, view: PacketView<Read>) -> Result<(), QueueFull<Read, NoPos>> {
        self.shared
            .submit(param, view, |v| Request::StreamRead(self.rx.clone(), v))
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(cx)
    }
}

impl PacketIo<Write, NoPos> for MemStream {
    fn try_send_io(&self, param: NoPos, view: PacketView<Write>) -> Result<(), QueueFull<Write, NoPos>> {
        self.shared
            .submit(param, view, |v| Request::StreamWrite(self.tx.clone(), v))
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(cx)
    }
}

impl PacketIo<Write, Flush> for MemStream {
    fn try_send_io(&self, param: Flush, view: PacketView<Write>) -> Result<(), QueueFull<Write, Flush>> {
        self.shared
            .submit(param, view, |v| Request::StreamFlush(self.tx.clone(), v, false))
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(cx)
    }
}

impl PacketIo<Write, CloseWrite> for MemStream {
    /// Closes the write direction once the writes sent before it are in the
    /// pipe, like [`shutdown_write`](Self::shutdown_write).
    fn try_send_io(&self, param: CloseWrite, view: PacketView<Write>) -> Result<(), QueueFull<Write, CloseWrite>> {
        self.shared
            .submit(param, view, |v| Request::StreamFlush(self.tx.clone(), v, true))
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(cx)
    }
}

impl IoBackend for MemStream {
    fn polling_handle(&self) -> PollingHandle<'_> {
        self.shared.polling_handle()
    }
    fn drive(&self) -> DriveStatus {
        self.shared.drive()
    }
}
