//! Measuring one repetition: the timed loops every contender runs (blocking
//! or async, on whatever runtime), the batch join they share, sampled
//! latencies, and the interleaved schedule of repetitions.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use crate::report::Series;

/// What one measured repetition of one contender produced.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Wall time of the timed loop.
    pub elapsed: Duration,
    /// Operations completed (reads, writes, round trips).
    pub ops: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Latencies of a sample of the operations, in ns.
    pub lat_ns: Vec<u64>,
    /// p50 and p99 (if known) in ns as reported by an external tool (fio,
    /// `ucx_perftest`), when
    /// `lat_ns` is empty.
    pub percentiles: Option<(u64, Option<u64>)>,
}

/// One batch (or operation, or call) in `LATENCY_EVERY` has its latency
/// taken; the others run without a clock read per operation.
pub const LATENCY_EVERY: u64 = 8;

/// Operations between two clock checks of the loop deadline.
const OPS_PER_CHECK: usize = 64;

/// Pseudo-random or sequential block-aligned offsets, the same sequence for
/// every contender.
#[derive(Debug, Clone)]
pub struct Positions {
    state: u64,
    next_seq: u64,
    blocks: u64,
    block: u64,
    random: bool,
}

impl Positions {
    /// Offsets of `block`-sized blocks inside `len` bytes.
    pub fn new(len: u64, block: usize, random: bool) -> Self {
        Self {
            state: 0x2545_f491_4f6c_dd1d,
            next_seq: 0,
            blocks: (len / block as u64).max(1),
            block: block as u64,
            random,
        }
    }

    /// The next offset.
    pub fn next_pos(&mut self) -> u64 {
        let idx = if self.random {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            self.state % self.blocks
        } else {
            let i = self.next_seq % self.blocks;
            self.next_seq += 1;
            i
        };
        idx * self.block
    }
}

/// How the async loop awaits the operations it keeps in flight: the ways
/// users write it. Every async contender runs each style with the same code
/// around its own operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JoinStyle {
    /// One future polling a fixed array of slots with the task's single
    /// waker (what a hand-written runtime loop does).
    Window,
    /// `futures::stream::FuturesUnordered`, topped up as each operation
    /// completes: every operation has its own waker.
    Unordered,
    /// `futures::stream::iter(..).buffer_unordered(depth)`.
    Buffered,
    /// A tokio `JoinSet` of spawned tasks (tokio-driven contenders only).
    JoinSet,
}

impl JoinStyle {
    /// Why a contender that cannot spawn tokio tasks skips a workload in
    /// this style.
    pub fn unspawnable(self) -> Option<String> {
        (self == JoinStyle::JoinSet).then(|| "skipped: JoinSet spawns tokio tasks".into())
    }

    /// Why a contender whose figure does not depend on the join style (a
    /// blocking loop, a tool with its own queue) skips a workload in this
    /// style: it runs only in the window table.
    pub fn style_independent(self) -> Option<String> {
        (self != JoinStyle::Window).then(|| "skipped: no join style (see the window table)".into())
    }

    /// Name in workload titles.
    pub fn name(self) -> &'static str {
        match self {
            JoinStyle::Window => "window",
            JoinStyle::Unordered => "FuturesUnordered",
            JoinStyle::Buffered => "buffer_unordered",
            JoinStyle::JoinSet => "JoinSet",
        }
    }
}

/// How an operation-level loop is run: its length, the operation size,
/// whether a sync follows every `sync_every` operations, and the join style.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Length of the timed loop.
    pub span: Duration,
    /// Bytes each operation must move (anything else is an error).
    pub block: usize,
    /// Sync (fdatasync) after this many operations.
    pub sync_every: Option<usize>,
    /// How the operations in flight are awaited.
    pub join: JoinStyle,
}

fn short(what: &str, got: usize, want: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("short {what}: {got} of {want} bytes"),
    )
}

/// Checks that an operation moved exactly `want` bytes.
pub fn expect_len(res: io::Result<usize>, want: usize) -> io::Result<()> {
    match res {
        Ok(n) if n == want => Ok(()),
        Ok(n) => Err(short("transfer", n, want)),
        Err(e) => Err(e),
    }
}

/// The blocking loop: one operation at a time on the calling thread.
pub fn drive_blocking(
    pos: &mut Positions,
    pace: Pace,
    mut op: impl FnMut(u64) -> io::Result<usize>,
    mut sync: impl FnMut() -> io::Result<()>,
) -> io::Result<Sample> {
    let mut out = Sample::default();
    let start = Instant::now();
    while start.elapsed() < pace.span {
        let timed = (out.ops / OPS_PER_CHECK as u64) % LATENCY_EVERY == 0;
        for _ in 0..OPS_PER_CHECK {
            let t0 = timed.then(Instant::now);
            expect_len(op(pos.next_pos()), pace.block)?;
            out.ops += 1;
            if pace.sync_every.is_some_and(|n| out.ops % n as u64 == 0) {
                sync()?;
            }
            if let Some(t0) = t0 {
                out.lat_ns.push(t0.elapsed().as_nanos() as u64);
            }
        }
    }
    out.elapsed = start.elapsed();
    out.bytes = out.ops * pace.block as u64;
    Ok(out)
}

/// The async loop: batches of `bufs.len()` operations joined together (one
/// buffer each), then a sync if the pace asks for one, repeated until the
/// span is over. Runs inside any runtime's `block_on`.
pub async fn drive_batches<B, F, Fut, S, SFut>(
    pos: &mut Positions,
    pace: Pace,
    mut bufs: Vec<B>,
    mut op: F,
    mut sync: S,
) -> io::Result<Sample>
where
    F: FnMut(u64, B) -> Fut,
    Fut: Future<Output = (io::Result<usize>, B)>,
    S: FnMut() -> SFut,
    SFut: Future<Output = io::Result<()>>,
{
    let depth = bufs.len().max(1);
    let batches_per_check = OPS_PER_CHECK.div_ceil(depth);
    let mut out = Sample::default();
    let mut batch_no = 0u64;
    let start = Instant::now();
    while start.elapsed() < pace.span {
        for _ in 0..batches_per_check {
            let timed = batch_no % LATENCY_EVERY == 0;
            batch_no += 1;
            let t0 = Instant::now();
            if depth == 1 {
                // Depth 1: the operation is awaited directly, no join around it.
                let Some(buf) = bufs.pop() else { break };
                let (res, buf) = op(pos.next_pos(), buf).await;
                bufs.push(buf);
                expect_len(res, pace.block)?;
                if timed {
                    out.lat_ns.push(t0.elapsed().as_nanos() as u64);
                }
            } else {
                let futs: Vec<_> = bufs
                    .drain(..)
                    .map(|b| {
                        let fut = op(pos.next_pos(), b);
                        async move {
                            let (res, b) = fut.await;
                            (res, b, timed.then(Instant::now))
                        }
                    })
                    .collect();
                let mut first_err = None;
                for (res, b, done) in Batch::new(futs).await {
                    bufs.push(b);
                    if let Err(e) = expect_len(res, pace.block) {
                        first_err.get_or_insert(e);
                    }
                    if let Some(done) = done {
                        out.lat_ns.push(done.duration_since(t0).as_nanos() as u64);
                    }
                }
                if let Some(e) = first_err {
                    return Err(e);
                }
            }
            out.ops += depth as u64;
            if pace.sync_every.is_some() {
                sync().await?;
            }
        }
    }
    out.elapsed = start.elapsed();
    out.bytes = out.ops * pace.block as u64;
    Ok(out)
}

/// The async loop at a queue depth: `bufs.len()` operations kept in flight
/// continuously (a new one is issued as soon as one completes) until the
/// span is over, then the rest drained, joined in the pace's [`JoinStyle`]
/// style. With a sync cadence it runs as [`drive_batches`] (a sync needs a
/// quiet queue), and so does the window style at depth 1 (the operation is
/// awaited directly). Latency is submission to completion.
///
/// # Errors
/// The first failed or short operation; `Unsupported` for the `JoinSet`
/// style, which needs spawnable operations ([`drive_join_set`]).
pub async fn drive_ops<B, F, Fut, S, SFut>(
    pos: &mut Positions,
    pace: Pace,
    bufs: Vec<B>,
    op: F,
    sync: S,
) -> io::Result<Sample>
where
    F: FnMut(u64, B) -> Fut,
    Fut: Future<Output = (io::Result<usize>, B)>,
    S: FnMut() -> SFut,
    SFut: Future<Output = io::Result<()>>,
{
    if pace.sync_every.is_some() || (pace.join == JoinStyle::Window && bufs.len() <= 1) {
        return drive_batches(pos, pace, bufs, op, sync).await;
    }
    match pace.join {
        JoinStyle::Window => {}
        JoinStyle::Unordered => return drive_unordered(pos, pace, bufs, op).await,
        JoinStyle::Buffered => return drive_buffered(pos, pace, bufs, op).await,
        JoinStyle::JoinSet => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the JoinSet style needs operations tokio can spawn",
            ))
        }
    }
    Window {
        slots: Box::into_pin((0..bufs.len()).map(|_| None).collect()),
        started: vec![None; bufs.len()],
        free: bufs,
        op,
        pos,
        tally: Tally::new(pace),
    }
    .await
}

/// The sliding window of [`drive_ops`].
struct Window<'p, B, F, Fut> {
    slots: Pin<Box<[Option<Fut>]>>,
    started: Vec<Option<Instant>>,
    free: Vec<B>,
    op: F,
    pos: &'p mut Positions,
    tally: Tally,
}

impl<B, F, Fut> Future for Window<'_, B, F, Fut>
where
    F: FnMut(u64, B) -> Fut,
    Fut: Future<Output = (io::Result<usize>, B)>,
{
    type Output = io::Result<Sample>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: nothing is moved out of `Window`; the futures live in the
        // separately pinned `slots` box, every other field is only used by
        // reference or replaced whole.
        let this = unsafe { self.get_unchecked_mut() };
        loop {
            let mut progressed = false;
            // SAFETY: the boxed slice never moves; a slot's future is only
            // polled in place and dropped in place (the slot set to `None`).
            let slots = unsafe { this.slots.as_mut().get_unchecked_mut() };
            for (i, slot) in slots.iter_mut().enumerate() {
                if slot.is_none() && !this.tally.stopping {
                    let Some(buf) = this.free.pop() else { continue };
                    this.started[i] = this.tally.issue();
                    *slot = Some((this.op)(this.pos.next_pos(), buf));
                }
                let Some(fut) = slot.as_mut() else { continue };
                // SAFETY: see above: the future is pinned in its slot.
                let fut = unsafe { Pin::new_unchecked(fut) };
                let Poll::Ready((res, buf)) = fut.poll(cx) else {
                    continue;
                };
                *slot = None;
                progressed = true;
                this.free.push(buf);
                this.tally.finish(res, this.started[i].take());
            }
            if this.tally.stopping && slots.iter().all(Option::is_none) {
                return Poll::Ready(this.tally.end());
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

/// What the async loops count as they go: operations, sampled latencies,
/// the first error, and whether to stop issuing.
struct Tally {
    out: Sample,
    block: usize,
    deadline: Instant,
    start: Instant,
    issued: u64,
    error: Option<io::Error>,
    stopping: bool,
}

impl Tally {
    fn new(pace: Pace) -> Self {
        let start = Instant::now();
        Self {
            out: Sample::default(),
            block: pace.block,
            deadline: start + pace.span,
            start,
            issued: 0,
            error: None,
            stopping: false,
        }
    }

    /// The start time of the next operation if its latency is sampled.
    fn issue(&mut self) -> Option<Instant> {
        let timed = self.issued % LATENCY_EVERY == 0;
        self.issued += 1;
        timed.then(Instant::now)
    }

    /// Counts one finished operation; true while more should be issued.
    fn finish(&mut self, res: io::Result<usize>, started: Option<Instant>) -> bool {
        if let Some(t0) = started {
            self.out.lat_ns.push(t0.elapsed().as_nanos() as u64);
        }
        match expect_len(res, self.block) {
            Ok(()) => self.out.ops += 1,
            Err(e) => {
                self.error.get_or_insert(e);
                self.stopping = true;
            }
        }
        if self.out.ops % OPS_PER_CHECK as u64 == 0 && Instant::now() >= self.deadline {
            self.stopping = true;
        }
        !self.stopping
    }

    /// The sample (or the first error) once everything issued finished.
    fn end(&mut self) -> io::Result<Sample> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut out = std::mem::take(&mut self.out);
        out.elapsed = self.start.elapsed();
        out.bytes = out.ops * self.block as u64;
        Ok(out)
    }
}

/// The [`JoinStyle::Unordered`] loop: a `FuturesUnordered` holding one future
/// per buffer, a new one pushed as each completes.
async fn drive_unordered<B, F, Fut>(pos: &mut Positions, pace: Pace, bufs: Vec<B>, mut op: F) -> io::Result<Sample>
where
    F: FnMut(u64, B) -> Fut,
    Fut: Future<Output = (io::Result<usize>, B)>,
{
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut tally = Tally::new(pace);
    let mut set = FuturesUnordered::new();
    let mut issue = |tally: &mut Tally, set: &mut FuturesUnordered<_>, buf| {
        let started = tally.issue();
        let fut = op(pos.next_pos(), buf);
        set.push(async move {
            let (res, buf) = fut.await;
            (res, buf, started)
        });
    };
    for buf in bufs {
        issue(&mut tally, &mut set, buf);
    }
    while let Some((res, buf, started)) = set.next().await {
        if tally.finish(res, started) {
            issue(&mut tally, &mut set, buf);
        }
    }
    tally.end()
}

/// The [`JoinStyle::Buffered`] loop: an endless stream of operations, each taking
/// a free buffer, run `bufs.len()` at a time by `buffer_unordered`; the
/// stream ends when the span is over.
async fn drive_buffered<B, F, Fut>(pos: &mut Positions, pace: Pace, bufs: Vec<B>, mut op: F) -> io::Result<Sample>
where
    F: FnMut(u64, B) -> Fut,
    Fut: Future<Output = (io::Result<usize>, B)>,
{
    use futures::stream::{self, StreamExt};
    use std::cell::{Cell, RefCell};
    let depth = bufs.len();
    let free = RefCell::new(bufs);
    let stop = Cell::new(false);
    let tally = RefCell::new(Tally::new(pace));
    let ops = stream::iter(std::iter::from_fn(|| {
        if stop.get() {
            return None;
        }
        // `buffer_unordered` asks for the next operation only with a slot
        // free, and every finished operation hands its buffer back first.
        let buf = free.borrow_mut().pop()?;
        let started = tally.borrow_mut().issue();
        let fut = op(pos.next_pos(), buf);
        Some(async move {
            let (res, buf) = fut.await;
            (res, buf, started)
        })
    }));
    let mut done = ops.buffer_unordered(depth);
    while let Some((res, buf, started)) = done.next().await {
        free.borrow_mut().push(buf);
        if !tally.borrow_mut().finish(res, started) {
            stop.set(true);
        }
    }
    drop(done);
    tally.into_inner().end()
}

/// The [`JoinStyle::JoinSet`] loop, for operations tokio can spawn: one task per
/// operation in a `JoinSet` on the current tokio runtime, a new one spawned
/// as each completes.
///
/// # Errors
/// The first failed or short operation, or a task that panicked.
pub async fn drive_join_set<B, F, Fut>(pos: &mut Positions, pace: Pace, bufs: Vec<B>, mut op: F) -> io::Result<Sample>
where
    B: Send + 'static,
    F: FnMut(u64, B) -> Fut,
    Fut: Future<Output = (io::Result<usize>, B)> + Send + 'static,
{
    let mut tally = Tally::new(pace);
    let mut set = tokio::task::JoinSet::new();
    let mut issue = |tally: &mut Tally, set: &mut tokio::task::JoinSet<_>, buf| {
        let started = tally.issue();
        let fut = op(pos.next_pos(), buf);
        set.spawn(async move {
            let (res, buf) = fut.await;
            (res, buf, started)
        });
    };
    for buf in bufs {
        issue(&mut tally, &mut set, buf);
    }
    while let Some(joined) = set.join_next().await {
        let (res, buf, started) = joined.map_err(io::Error::other)?;
        if tally.finish(res, started) {
            issue(&mut tally, &mut set, buf);
        }
    }
    tally.end()
}

/// Joins long-running futures (connections, lanes) in `style`: each loops
/// over its own operations, and the style decides how their wake-ups reach
/// them. Outputs come back in the order of `lanes`.
///
/// # Errors
/// `Unsupported` for [`JoinStyle::JoinSet`]: lanes borrow the workload and
/// cannot be spawned.
pub async fn join_lanes<F: Future>(style: JoinStyle, lanes: Vec<F>) -> io::Result<Vec<F::Output>> {
    use futures::stream::{self, FuturesUnordered, StreamExt};
    let n = lanes.len().max(1);
    let numbered = lanes
        .into_iter()
        .enumerate()
        .map(|(i, lane)| async move { (i, lane.await) });
    let mut done: Vec<(usize, F::Output)> = match style {
        JoinStyle::Window => Batch::new(numbered.collect()).await,
        JoinStyle::Unordered => numbered.collect::<FuturesUnordered<_>>().collect().await,
        JoinStyle::Buffered => stream::iter(numbered).buffer_unordered(n).collect().await,
        JoinStyle::JoinSet => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the JoinSet style spawns its operations; lanes borrow the workload",
            ))
        }
    };
    done.sort_unstable_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, out)| out).collect())
}

/// The many-files loop: `depth` whole-file loads in flight, each returning
/// the bytes it read; an operation is one chunk of `chunk` bytes; latencies
/// are per file.
pub async fn drive_files<'a, F, Fut>(
    paths: &'a [std::path::PathBuf],
    depth: usize,
    chunk: usize,
    span: Duration,
    mut load: F,
) -> io::Result<Sample>
where
    F: FnMut(&'a std::path::Path) -> Fut,
    Fut: Future<Output = io::Result<u64>>,
{
    let mut out = Sample::default();
    let mut next = 0usize;
    let start = Instant::now();
    while start.elapsed() < span && !paths.is_empty() {
        let t0 = Instant::now();
        let futs: Vec<_> = (0..depth.max(1))
            .map(|_| {
                let path = &paths[next % paths.len()];
                next += 1;
                let fut = load(path);
                async move { (fut.await, Instant::now()) }
            })
            .collect();
        for (res, done) in Batch::new(futs).await {
            out.bytes += res?;
            out.lat_ns.push(done.duration_since(t0).as_nanos() as u64);
        }
    }
    out.elapsed = start.elapsed();
    out.ops = out.bytes / chunk.max(1) as u64;
    Ok(out)
}

/// The blocking many-files loop: one file at a time.
pub fn drive_files_blocking(
    paths: &[std::path::PathBuf],
    chunk: usize,
    span: Duration,
    mut load: impl FnMut(&std::path::Path) -> io::Result<u64>,
) -> io::Result<Sample> {
    let mut out = Sample::default();
    let start = Instant::now();
    for path in paths.iter().cycle() {
        if start.elapsed() >= span {
            break;
        }
        let t0 = Instant::now();
        out.bytes += load(path)?;
        out.lat_ns.push(t0.elapsed().as_nanos() as u64);
    }
    out.elapsed = start.elapsed();
    out.ops = out.bytes / chunk.max(1) as u64;
    Ok(out)
}

/// A contender of one benchmark: something that runs one repetition of a
/// workload `W`, or says why it cannot.
pub trait Contender<W> {
    /// Name in tables, JSON and plots.
    fn name(&self) -> String;
    /// Why this contender does not run `workload`, if it does not.
    fn skip_reason(&self, workload: &W) -> Option<String>;
    /// One timed repetition.
    ///
    /// # Errors
    /// The contender's I/O error; the contender is dropped from the workload.
    fn run(&mut self, workload: &W, span: Duration) -> io::Result<Sample>;
}

/// A workload with a name.
pub trait Titled {
    /// Name in tables and file names.
    fn title(&self) -> &str;
    /// What its latency figures time.
    fn latency(&self) -> &'static str;
}

/// Keeps the contenders whose name contains one of `only`, or is exactly
/// one written `=name` (all if `only` is empty).
pub fn keep_only<W>(all: Vec<Box<dyn Contender<W>>>, only: &[String]) -> Vec<Box<dyn Contender<W>>> {
    let picked = |name: &str| {
        only.iter().any(|o| match o.strip_prefix('=') {
            Some(exact) => name == exact,
            None => name.contains(o.as_str()),
        })
    };
    all.into_iter()
        .filter(|c| only.is_empty() || picked(&c.name()))
        .collect()
}

/// Progress steps of `run_jobs`.
pub fn steps(jobs: usize, contenders: usize, reps: usize) -> u64 {
    (jobs * contenders * (reps + 1)) as u64
}

/// Runs each job with every contender, interleaved; a result table each.
pub fn run_jobs<W: Titled>(
    jobs: &[W],
    contenders: &mut [Box<dyn Contender<W>>],
    reps: usize,
    span: Duration,
    progress: &ProgressBar,
) -> Vec<Vec<Series>> {
    jobs.iter()
        .map(|job| interleave(job.title(), job, contenders, reps, span, progress))
        .collect()
}

/// Runs one workload: a warm-up, then `reps` measured repetitions, each
/// repetition going through every contender in turn (A B C A B C …) so that
/// drift of the machine hits all of them alike.
pub fn interleave<W>(
    title: &str,
    workload: &W,
    contenders: &mut [Box<dyn Contender<W> + '_>],
    reps: usize,
    span: Duration,
    progress: &ProgressBar,
) -> Vec<Series> {
    let mut series: Vec<Series> = contenders
        .iter()
        .map(|c| {
            let mut s = Series::new(title, &c.name());
            s.note = c.skip_reason(workload);
            s
        })
        .collect();
    for rep in 0..=reps {
        // The warm-up is shorter: it only has to fault in and fill caches.
        let this_span = if rep == 0 { span / 3 } else { span };
        for (c, s) in contenders.iter_mut().zip(series.iter_mut()) {
            progress.inc(1);
            if s.note.is_some() {
                continue;
            }
            progress.set_message(format!("{title}: {}", s.contender));
            // A peer runtime that panics loses its row, not the whole run.
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.run(workload, this_span)));
            match res {
                Ok(Ok(sample)) if rep > 0 => s.push(sample),
                Ok(Ok(warm_up)) => s.ops_with_warmup += warm_up.ops,
                Ok(Err(e)) => s.note = Some(format!("failed: {e}")),
                Err(_) => s.note = Some("failed: panicked (message above)".into()),
            }
        }
    }
    series
}

/// Joins a batch of futures with one allocation per batch; polls the ones
/// still pending on every wake. Used for every async contender alike.
pub struct Batch<F: Future> {
    futs: Pin<Box<[Option<F>]>>,
    outs: Vec<Option<F::Output>>,
    left: usize,
}

impl<F: Future> Batch<F> {
    /// A join of `futs`; resolves to their outputs in order.
    pub fn new(futs: Vec<F>) -> Self {
        let n = futs.len();
        // Built at its exact size: collecting `Option<F>` in place into the
        // `Vec<F>`'s allocation would reallocate it on every batch.
        let mut slots = Vec::with_capacity(n);
        slots.extend(futs.into_iter().map(Some));
        Self {
            futs: Box::into_pin(slots.into_boxed_slice()),
            outs: (0..n).map(|_| None).collect(),
            left: n,
        }
    }
}

impl<F: Future> Future for Batch<F> {
    type Output = Vec<F::Output>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `Batch` is never moved out of; we only project to `futs`
        // (itself pinned on the heap) and to the `Unpin` fields.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: the boxed slice never moves; each slot is pinned in place and
        // only ever dropped in place (set to `None`).
        let slots = unsafe { this.futs.as_mut().get_unchecked_mut() };
        for (slot, out) in slots.iter_mut().zip(this.outs.iter_mut()) {
            if let Some(fut) = slot {
                // SAFETY: see above: the future lives in place inside the pinned box.
                let fut = unsafe { Pin::new_unchecked(fut) };
                if let Poll::Ready(v) = fut.poll(cx) {
                    *out = Some(v);
                    *slot = None;
                    this.left -= 1;
                }
            }
        }
        if this.left == 0 {
            Poll::Ready(this.outs.iter_mut().filter_map(Option::take).collect())
        } else {
            Poll::Pending
        }
    }
}
