//! The in-memory backend: a real backend (bounded queue, driving step,
//! polling handle) over growable byte spaces ([`MemFile`]) and connected
//! stream pairs ([`MemStream`]), with knobs that make it misbehave on purpose
//! for tests: split requests, fail byte ranges, delay or reorder completions.
//!
//! ```
//! use mfio_core::mem::MemBackend;
//! use mfio_core::{IoBackendExt, IoRead};
//!
//! # fn main() -> mfio_core::Result<()> {
//! let backend = MemBackend::new()?;
//! let file = backend.file(b"hello, packets".to_vec());
//! let buf = backend.block_on(async {
//!     let (res, buf) = file.read_at(7, Vec::with_capacity(7)).await.into_parts();
//!     res.map(|_| buf)
//! })?;
//! assert_eq!(buf, b"packets");
//! # Ok(()) }
//! ```

mod file;
mod stream;

use std::collections::VecDeque;
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use file::MemFile;
pub use stream::MemStream;

use crate::backend::{DriveStatus, IoBackend, MissedDrives, Notifier, PollingHandle};
use crate::error::{Error, Result};
use crate::io::QueueFull;
use crate::packet::{CancelHandler, Direction, PacketView, Read, Write};
use crate::queue::{Mailbox, SubmitQueue};

use file::FileData;
use stream::Pipe;

/// Default number of packets the submission queue holds.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default number of packets taken from the queue but not yet completed.
pub const DEFAULT_WINDOW: usize = 1024;
/// Default capacity of each direction of a [`MemStream`] pair.
pub const DEFAULT_PIPE_CAPACITY: usize = 64 * 1024;

/// Configures a [`MemBackend`]; every knob defaults to "behave normally".
#[derive(Debug)]
pub struct MemBuilder {
    queue_capacity: usize,
    window: usize,
    pipe_capacity: usize,
    split_at: Option<usize>,
    failures: Vec<(Range<u64>, Error)>,
    delay: Option<Duration>,
    shuffle_seed: Option<u64>,
    inline: bool,
}

impl Default for MemBuilder {
    fn default() -> Self {
        Self {
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            window: DEFAULT_WINDOW,
            pipe_capacity: DEFAULT_PIPE_CAPACITY,
            split_at: None,
            failures: Vec::new(),
            delay: None,
            shuffle_seed: None,
            inline: true,
        }
    }
}

impl MemBuilder {
    /// Packets the submission queue holds before `try_send_io` refuses
    /// (default [`DEFAULT_QUEUE_CAPACITY`]; at least 1).
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// Packets in flight (taken from the queue, not yet complete) at most
    /// (default [`DEFAULT_WINDOW`]; at least 1).
    pub fn window(&mut self, n: usize) -> &mut Self {
        self.window = n.max(1);
        self
    }

    /// Bytes each direction of a stream pair buffers (default
    /// [`DEFAULT_PIPE_CAPACITY`]; at least 1).
    pub fn pipe_capacity(&mut self, n: usize) -> &mut Self {
        self.pipe_capacity = n.max(1);
        self
    }

    /// Splits every file request into views of at most `n` bytes, and caps
    /// every stream transfer at `n` bytes (default: no splitting).
    pub fn split_at(&mut self, n: usize) -> &mut Self {
        self.split_at = Some(n.max(1));
        self
    }

    /// File requests touching `range` (file offsets) fail there with a copy
    /// of `err`; bytes before the range are still transferred.
    pub fn fail_range(&mut self, range: Range<u64>, err: Error) -> &mut Self {
        self.failures.push((range, err));
        self
    }

    /// Completes file requests this long after they were taken (default: at once).
    pub fn delay(&mut self, d: Duration) -> &mut Self {
        self.delay = Some(d);
        self
    }

    /// Completes the views finished in one driving step in a pseudo-random
    /// order drawn from `seed` (default: in order).
    pub fn out_of_order(&mut self, seed: u64) -> &mut Self {
        self.shuffle_seed = Some(seed | 1);
        self
    }

    /// Serves file requests inline (completed inside `try_send_io`, with no
    /// queueing or wake-up) when nothing queued on the same file could be
    /// overtaken (default: on). Always off while `split_at`, `fail_range`,
    /// `delay` or `out_of_order` is set, since those act in the queue.
    pub fn inline_completion(&mut self, on: bool) -> &mut Self {
        self.inline = on;
        self
    }

    /// Creates the backend.
    ///
    /// # Errors
    /// The OS error if its eventfd cannot be created.
    pub fn build(&mut self) -> Result<MemBackend> {
        let notifier = Notifier::new()?;
        let knobs = self.split_at.is_some() || !self.failures.is_empty() || self.delay.is_some();
        let config = Config {
            inline: self.inline && !knobs && self.shuffle_seed.is_none(),
            queue_capacity: self.queue_capacity,
            window: self.window,
            pipe_capacity: self.pipe_capacity,
            split_at: self.split_at,
            failures: std::mem::take(&mut self.failures),
            delay: self.delay,
        };
        let seed = self.shuffle_seed;
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| Shared {
            notifier: notifier.clone(),
            canceller: Arc::new(Canceller { shared: weak.clone() }),
            queue: SubmitQueue::new(config.queue_capacity, notifier.clone()),
            core: Mutex::new(Core {
                rng: seed,
                ..Core::default()
            }),
            cancelled: Mailbox::default(),
            next_token: AtomicU64::new(1),
            max_in_flight: AtomicUsize::new(0),
            missed: MissedDrives::default(),
            config,
        });
        Ok(MemBackend { shared })
    }
}

#[derive(Debug)]
struct Config {
    inline: bool,
    queue_capacity: usize,
    window: usize,
    pipe_capacity: usize,
    split_at: Option<usize>,
    failures: Vec<(Range<u64>, Error)>,
    delay: Option<Duration>,
}

/// Counters of the backend's queues, for tests and monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemStats {
    /// Packets waiting in the submission queue now.
    pub queued: usize,
    /// Packets taken from the queue and not yet completed now.
    pub in_flight: usize,
    /// Highest `queued` seen.
    pub max_queued: usize,
    /// Highest `in_flight` seen.
    pub max_in_flight: usize,
}

/// The in-memory backend. Cheap to clone (a shared handle); `Send + Sync`.
#[derive(Debug, Clone)]
pub struct MemBackend {
    shared: Arc<Shared>,
}

impl MemBackend {
    /// A backend with default settings; `MemBackend::builder().build()`.
    ///
    /// # Errors
    /// As [`MemBuilder::build`].
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// A builder for a backend with test knobs.
    pub fn builder() -> MemBuilder {
        MemBuilder::default()
    }

    /// A new byte space holding `data`, positional like a file.
    pub fn file(&self, data: impl Into<Vec<u8>>) -> MemFile {
        MemFile::new(self.shared.clone(), FileData::new(data.into()))
    }

    /// Two connected stream ends: what one writes the other reads.
    pub fn stream_pair(&self) -> (MemStream, MemStream) {
        let cap = self.shared.config.pipe_capacity;
        let a_to_b = Pipe::new(Arc::downgrade(&self.shared), cap);
        let b_to_a = Pipe::new(Arc::downgrade(&self.shared), cap);
        (
            MemStream::new(self.shared.clone(), b_to_a.clone(), a_to_b.clone()),
            MemStream::new(self.shared.clone(), a_to_b, b_to_a),
        )
    }

    /// Current and peak queue occupancy.
    pub fn stats(&self) -> MemStats {
        self.shared.stats()
    }
}

impl IoBackend for MemBackend {
    fn polling_handle(&self) -> PollingHandle<'_> {
        self.shared.polling_handle()
    }
    fn drive(&self) -> DriveStatus {
        self.shared.drive()
    }
}

/// A request waiting in the submission queue.
enum Request {
    FileRead(Arc<FileData>, u64, PacketView<Read>),
    FileWrite(Arc<FileData>, u64, PacketView<Write>),
    FileFlush(Arc<FileData>, PacketView<Write>),
    StreamRead(Arc<Pipe>, PacketView<Read>),
    StreamWrite(Arc<Pipe>, PacketView<Write>),
    /// A flush; `true` also closes the write direction once it completes.
    StreamFlush(Arc<Pipe>, PacketView<Write>, bool),
}

/// A view with its result decided, waiting to be finished.
enum Done {
    Read(PacketView<Read>, Result<usize>, Option<Arc<FileData>>),
    Write(PacketView<Write>, Result<usize>, Option<Arc<FileData>>),
}

impl Done {
    fn finish(self) {
        match self {
            Done::Read(v, r, file) => {
                v.finish(r);
                if let Some(file) = file {
                    file.end(false);
                }
            }
            Done::Write(v, r, file) => {
                v.finish(r);
                if let Some(file) = file {
                    file.end(true);
                }
            }
        }
    }

    fn cancel(self) {
        match self {
            Done::Read(v, _, file) => {
                v.fail(Error::cancelled());
                if let Some(file) = file {
                    file.end(false);
                }
            }
            Done::Write(v, _, file) => {
                v.fail(Error::cancelled());
                if let Some(file) = file {
                    file.end(true);
                }
            }
        }
    }
}

/// Something parked in the backend: counted against the window.
enum Parked {
    /// A file completion waiting for its deadline.
    Delayed(Instant, u64, Done),
    /// A stream read waiting for bytes or EOF.
    Read(u64, Arc<Pipe>, PacketView<Read>),
    /// A stream write waiting for room.
    Write(u64, Arc<Pipe>, PacketView<Write>),
    /// A flush waiting for earlier writes of its file.
    FileFlush(Arc<FileData>, PacketView<Write>),
    /// A flush (or, `true`, a half-close) waiting for earlier writes of its stream.
    StreamFlush(Arc<Pipe>, PacketView<Write>, bool),
}

#[derive(Default)]
struct Core {
    /// Reused for swapping out the whole inbox without allocating.
    batch: VecDeque<Request>,
    parked: Vec<Parked>,
    ready: Vec<Done>,
    /// xorshift state for out-of-order completion; `None` completes in order.
    rng: Option<u64>,
}

struct Shared {
    notifier: Arc<Notifier>,
    canceller: Arc<Canceller>,
    queue: SubmitQueue<Request>,
    core: Mutex<Core>,
    cancelled: Mailbox<u64>,
    next_token: AtomicU64,
    max_in_flight: AtomicUsize,
    /// Driving steps that found `core` taken and returned at once.
    missed: MissedDrives,
    config: Config,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBackend").field("stats", &self.stats()).finish()
    }
}

/// Hears about dropped packets that are parked in the backend.
struct Canceller {
    shared: Weak<Shared>,
}

impl CancelHandler for Canceller {
    fn cancel(&self, token: u64) {
        if let Some(shared) = self.shared.upgrade() {
            shared.cancelled.push(token);
            shared.notifier.notify();
        }
    }
}

impl Shared {
    fn polling_handle(&self) -> PollingHandle<'_> {
        PollingHandle::readable(self.notifier.as_fd(), &self.notifier)
    }

    fn stats(&self) -> MemStats {
        let in_flight = self.core.try_lock().map_or(0, |c| c.parked.len());
        MemStats {
            queued: self.queue.len(),
            in_flight,
            max_queued: self.queue.max_len(),
            max_in_flight: self.max_in_flight.load(Ordering::Acquire),
        }
    }

    fn token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues the request `make(view)`, or hands the view back when the queue is full.
    fn submit<D: Direction, P>(
        &self,
        param: P,
        view: PacketView<D>,
        make: impl FnOnce(PacketView<D>) -> Request,
    ) -> std::result::Result<(), QueueFull<D, P>> {
        self.queue
            .try_push_with(view, make)
            .map_err(|view| QueueFull { param, view })
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.queue.poll_ready(cx)
    }

    fn drive(&self) -> DriveStatus {
        // One driver at a time; a concurrent caller returns at once and the
        // driver notifies on its way out if it leaves queued work behind,
        // or if that caller left a mark: the driver may stop before the
        // caller's delayed completions are due, and nothing signals a
        // deadline. The caller comes back soon in any case (`stats` takes
        // the lock too, and does not look for marks).
        let Some(mut core) = self.missed.try_lock(|| self.core.try_lock()) else {
            return DriveStatus::again_after(MissedDrives::RECHECK);
        };
        let mut progress = self.apply_cancellations(&mut core);
        progress |= self.take_inbox(&mut core);
        progress |= self.retry_parked(&mut core);
        progress |= !core.ready.is_empty();
        self.finish_ready(&mut core);
        if core.parked.len() > self.max_in_flight.load(Ordering::Relaxed) {
            // Only written by the driver, which holds `core`.
            self.max_in_flight.store(core.parked.len(), Ordering::Relaxed);
        }
        let timeout = next_deadline(&core.parked).map(|at| at.saturating_duration_since(Instant::now()));
        let window_open = core.parked.len() < self.config.window;
        drop(core);
        if (window_open && !self.queue.is_empty()) | self.missed.take() {
            self.notifier.notify();
        }
        DriveStatus { progress, timeout }
    }

    fn apply_cancellations(&self, core: &mut Core) -> bool {
        let tokens = self.cancelled.take();
        if tokens.is_empty() {
            return false;
        }
        let mut kept = Vec::with_capacity(core.parked.len());
        for p in core.parked.drain(..) {
            let token = match &p {
                Parked::Delayed(_, t, _) | Parked::Read(t, _, _) | Parked::Write(t, _, _) => Some(*t),
                Parked::FileFlush(..) | Parked::StreamFlush(..) => None,
            };
            if token.is_some_and(|t| tokens.contains(&t)) {
                match p {
                    Parked::Delayed(_, _, done) => done.cancel(),
                    Parked::Read(_, _, v) => v.fail(Error::cancelled()),
                    Parked::Write(_, pipe, v) => {
                        v.fail(Error::cancelled());
                        pipe.write_done();
                    }
                    other => kept.push(other),
                }
            } else {
                kept.push(p);
            }
        }
        core.parked = kept;
        true
    }

    fn take_inbox(&self, core: &mut Core) -> bool {
        let room = self.config.window.saturating_sub(core.parked.len());
        if self.queue.take_into(&mut core.batch, room) == 0 {
            return false;
        }
        let mut batch = std::mem::take(&mut core.batch);
        for req in batch.drain(..) {
            self.process(core, req);
        }
        core.batch = batch;
        true
    }

    fn process(&self, core: &mut Core, req: Request) {
        match req {
            Request::FileRead(file, pos, view) => self.file_read(core, file, pos, view),
            Request::FileWrite(file, pos, view) => self.file_write(core, file, pos, view),
            Request::FileFlush(file, view) => core.parked.push(Parked::FileFlush(file, view)),
            Request::StreamRead(pipe, view) => {
                let token = self.token();
                // Registered on every stream read: bytes of a completed read
                // the caller dropped go back to the pipe.
                if view.set_cancel_handler(pipe.clone(), token).is_err() {
                    return view.fail(Error::cancelled());
                }
                core.parked.push(Parked::Read(token, pipe, view));
            }
            Request::StreamWrite(pipe, view) => {
                let token = self.token();
                pipe.write_started();
                if view.set_cancel_handler(self.canceller.clone(), token).is_err() {
                    pipe.write_done();
                    return view.fail(Error::cancelled());
                }
                core.parked.push(Parked::Write(token, pipe, view));
            }
            Request::StreamFlush(pipe, view, close) => core.parked.push(Parked::StreamFlush(pipe, view, close)),
        }
    }

    /// Views of `[pos, pos+len)` cut at the split size and at failure-range
    /// edges, each with the failure that applies to it.
    fn pieces<D: Direction>(&self, pos: u64, view: PacketView<D>, out: &mut Vec<(u64, PacketView<D>, Option<Error>)>) {
        let mut rest = Some(view);
        while let Some(v) = rest.take() {
            let at = pos + v.offset() as u64;
            let mut cut = self.config.split_at.unwrap_or(usize::MAX).min(v.len());
            let mut err = None;
            for (range, e) in &self.config.failures {
                if range.contains(&at) {
                    let inside = usize::try_from(range.end - at).unwrap_or(usize::MAX);
                    cut = cut.min(inside);
                    err.get_or_insert_with(|| e.duplicate());
                } else if range.start > at {
                    let before = usize::try_from(range.start - at).unwrap_or(usize::MAX);
                    cut = cut.min(before);
                }
            }
            if cut < v.len() && cut > 0 {
                let (head, tail) = v.split_at(cut);
                out.push((at, head, err));
                rest = Some(tail);
            } else {
                out.push((at, v, err));
            }
        }
    }

    /// Serves a queued read; the submission counted it once, each piece is
    /// counted on its own from here on.
    fn file_read(&self, core: &mut Core, file: Arc<FileData>, pos: u64, mut view: PacketView<Read>) {
        if self.config.split_at.is_none() && self.config.failures.is_empty() {
            // No knob cuts the request: one piece, already counted at submission.
            let n = file.copy_out(pos, &mut view);
            return self.complete(core, Done::Read(view, Ok(n), Some(file)));
        }
        let mut pieces = Vec::new();
        self.pieces(pos, view, &mut pieces);
        file.begin(false, pieces.len());
        file.end(false);
        for (at, mut v, err) in pieces {
            let res = match err {
                Some(e) => Err(e),
                None => Ok(file.copy_out(at, &mut v)),
            };
            self.complete(core, Done::Read(v, res, Some(file.clone())));
        }
    }

    /// Applies a queued write, piece by piece (see `file_read` for the counts).
    fn file_write(&self, core: &mut Core, file: Arc<FileData>, pos: u64, view: PacketView<Write>) {
        if self.config.split_at.is_none() && self.config.failures.is_empty() {
            let res = file.copy_in(pos, view.as_slice());
            return self.complete(core, Done::Write(view, res, Some(file)));
        }
        let mut pieces = Vec::new();
        self.pieces(pos, view, &mut pieces);
        file.begin(true, pieces.len());
        file.end(true);
        for (at, v, err) in pieces {
            let res = match err {
                Some(e) => Err(e),
                None => file.copy_in(at, v.as_slice()),
            };
            self.complete(core, Done::Write(v, res, Some(file.clone())));
        }
    }

    /// Completes now, or parks until the configured delay has passed.
    fn complete(&self, core: &mut Core, done: Done) {
        let Some(delay) = self.config.delay else {
            if core.rng.is_some() {
                // Collected and finished in shuffled order at the end of the step.
                return core.ready.push(done);
            }
            return done.finish();
        };
        let token = self.token();
        let registered = match &done {
            Done::Read(v, _, _) => v.set_cancel_handler(self.canceller.clone(), token),
            Done::Write(v, _, _) => v.set_cancel_handler(self.canceller.clone(), token),
        };
        match registered {
            Ok(()) => core
                .parked
                .push(Parked::Delayed(crate::backend::deadline_after(delay), token, done)),
            Err(_) => done.cancel(),
        }
    }

    /// Moves parked work that can finish now to `ready`.
    fn retry_parked(&self, core: &mut Core) -> bool {
        if core.parked.is_empty() {
            return false;
        }
        let now = Instant::now();
        let split = self.config.split_at.unwrap_or(usize::MAX);
        let before = core.parked.len();
        let mut kept = Vec::with_capacity(before);
        let mut ready = std::mem::take(&mut core.ready);
        for p in core.parked.drain(..) {
            match p {
                Parked::Delayed(at, _, done) if at <= now => ready.push(done),
                Parked::Read(token, pipe, view) => match pipe.try_read(view, split) {
                    Ok(done) => ready.push(done),
                    Err(view) => kept.push(Parked::Read(token, pipe, view)),
                },
                Parked::Write(token, pipe, view) => match pipe.try_write(view, split) {
                    Ok(done) => ready.push(done),
                    Err(view) => kept.push(Parked::Write(token, pipe, view)),
                },
                Parked::FileFlush(file, view) if file.writes_in_flight() == 0 => {
                    ready.push(Done::Write(view, Ok(0), None))
                }
                Parked::StreamFlush(pipe, view, close) if pipe.writes_in_flight() == 0 => {
                    if close {
                        pipe.close(true);
                    }
                    ready.push(Done::Write(view, Ok(0), None))
                }
                other => kept.push(other),
            }
        }
        let moved = kept.len() != before;
        core.parked = kept;
        core.ready = ready;
        moved
    }

    fn finish_ready(&self, core: &mut Core) {
        let mut ready = std::mem::take(&mut core.ready);
        if let Some(state) = core.rng.as_mut() {
            shuffle(&mut ready, state);
        }
        for done in ready.drain(..) {
            done.finish();
        }
        core.ready = ready;
    }
}

fn next_deadline(parked: &[Parked]) -> Option<Instant> {
    parked
        .iter()
        .filter_map(|p| match p {
            Parked::Delayed(at, _, _) => Some(*at),
            _ => None,
        })
        .min()
}

/// Fisher–Yates with xorshift64: reproducible from the seed, no dependency.
fn shuffle<T>(items: &mut [T], state: &mut u64) {
    for i in (1..items.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let j = (*state % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
