//! mfio's contenders: the async API on the io_uring and poll backends, and
//! the blocking `SyncIoRead`/`SyncIoWrite` API over io_uring.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use mfio_backends::{BackendKind, File, OpenOptions, Runtime, TcpListener, TcpStream};
use mfio_core::{AlignedBuf, IoBackendExt, IoRead, IoReadStream, IoWrite, IoWriteStream, SyncIoRead, SyncIoWrite};

use super::{read_chunks, ready, unbuilt, Built};
use crate::files::{FileJob, Kind, DIRECT_ALIGN};
use crate::measure::LATENCY_EVERY;
use crate::measure::{
    drive_blocking, drive_files, drive_files_blocking, drive_join_set, drive_ops, Contender, JoinStyle, Sample,
};
use crate::tcp::{loopback, ping_pong_spawned, session, TcpJob};
use crate::ucx::{check_range, read_lanes, remote_file, touched, Pattern, UcxJob, REMOTE_FILE_LEN};

fn options(job: &FileJob) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(job.kind == Kind::Write).direct(job.direct);
    o
}

fn buffers(job: &FileJob, n: usize) -> io::Result<Vec<AlignedBuf>> {
    (0..n)
        .map(|_| {
            let mut b = AlignedBuf::with_capacity(job.block, DIRECT_ALIGN)?;
            if job.kind == Kind::Write {
                b.extend_from_slice(&vec![0x5a; job.block]);
            }
            Ok(b)
        })
        .collect()
}

/// mfio's async API on one backend.
pub struct Mfio {
    kind: BackendKind,
    inline_reads: bool,
    busy_poll: Duration,
    rt: Built<Runtime>,
}

impl Mfio {
    /// Builds the runtime of `kind` (its error is reported in the rows).
    pub fn new(kind: BackendKind) -> Self {
        Self::with_inline_reads(kind, true)
    }

    /// Builds the runtime of `kind` with inline cached reads on or off (off:
    /// every read goes through the engine, the ring on io_uring).
    pub fn with_inline_reads(kind: BackendKind, on: bool) -> Self {
        Self::configured(kind, on, Duration::ZERO)
    }

    /// Builds the io_uring runtime with a busy-poll budget
    /// (`RuntimeBuilder::busy_poll`).
    pub fn busy_polling(budget: Duration) -> Self {
        Self::configured(BackendKind::Uring, true, budget)
    }

    fn configured(kind: BackendKind, inline_reads: bool, busy_poll: Duration) -> Self {
        let rt = Runtime::builder()
            .backend(kind)
            .inline_cached_reads(inline_reads)
            .busy_poll(busy_poll)
            .build()
            .map_err(|e| e.to_string());
        Self {
            kind,
            inline_reads,
            busy_poll,
            rt,
        }
    }
}

async fn load(rt: &Runtime, path: &Path, chunk: usize, len: u64) -> io::Result<u64> {
    let file = rt.open(path, OpenOptions::new().read(true)).await?;
    let read = read_chunks(len, chunk, |at, b| {
        let file = &file;
        async move {
            let (r, b) = file.read_exact_at(at, b).await.into_parts();
            (r.map_err(io::Error::from), b)
        }
    })
    .await?;
    file.close().await?;
    Ok(read)
}

async fn ops(file: &File, job: &FileJob, span: Duration) -> io::Result<Sample> {
    let bufs = buffers(job, job.depth)?;
    let mut pos = job.positions();
    let sync = || async { Ok(file.sync_data().await?) };
    if job.kind == Kind::Write {
        let op = |p, b| async move {
            let (n, b) = file.write_at(p, b).await.into_parts();
            (n.map_err(io::Error::from), b)
        };
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    } else {
        let op = |p, b| async move {
            let (n, b) = file.read_at(p, b).await.into_parts();
            (n.map_err(io::Error::from), b)
        };
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    }
}

impl Contender<FileJob> for Mfio {
    fn name(&self) -> String {
        if !self.busy_poll.is_zero() {
            format!("mfio {}, busy poll {} µs", self.kind.name(), self.busy_poll.as_micros())
        } else if self.inline_reads {
            format!("mfio {}", self.kind.name())
        } else {
            format!("mfio {}, ring only", self.kind.name())
        }
    }

    fn skip_reason(&self, job: &FileJob) -> Option<String> {
        unbuilt(&self.rt).or_else(|| job.join.unspawnable())
    }

    fn run(&mut self, job: &FileJob, span: Duration) -> io::Result<Sample> {
        let rt = ready(&mut self.rt)?;
        if job.kind == Kind::ManyFiles {
            return rt.block_on(drive_files(&job.files, job.depth, job.block, span, |p| {
                load(rt, p, job.block, job.len)
            }));
        }
        rt.block_on(async {
            let file = rt.open(&job.path, &options(job)).await?;
            let res = ops(&file, job, span).await;
            file.close().await?;
            res
        })
    }
}

/// mfio's async API on io_uring inside a current-thread tokio runtime, which
/// drives the ring through its descriptor (`mfio-integration`); the one mfio
/// contender that runs the `JoinSet` style, its operations being tokio tasks.
pub struct MfioOnTokio {
    rt: Built<(tokio::runtime::Runtime, Runtime)>,
}

impl MfioOnTokio {
    /// Builds both runtimes.
    pub fn new() -> Self {
        let host = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string());
        let rt = host.and_then(|host| {
            let io = Runtime::builder()
                .backend(BackendKind::Uring)
                .build()
                .map_err(|e| e.to_string())?;
            Ok((host, io))
        });
        Self { rt }
    }
}

/// The operations of `job` on a shared file, as tasks tokio can spawn.
async fn spawnable_ops(file: std::sync::Arc<File>, job: &FileJob, span: Duration) -> io::Result<Sample> {
    let bufs = buffers(job, job.depth)?;
    let mut pos = job.positions();
    let write = job.kind == Kind::Write;
    let op = |p, b| {
        let file = file.clone();
        async move {
            let (n, b) = if write {
                file.write_at(p, b).await.into_parts()
            } else {
                file.read_at(p, b).await.into_parts()
            };
            (n.map_err(io::Error::from), b)
        }
    };
    if job.join == JoinStyle::JoinSet && job.sync_every.is_none() {
        return drive_join_set(&mut pos, job.pace(span), bufs, op).await;
    }
    let sync = || async { Ok(file.sync_data().await?) };
    drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
}

impl Contender<FileJob> for MfioOnTokio {
    fn name(&self) -> String {
        "mfio uring on tokio".into()
    }

    fn skip_reason(&self, _job: &FileJob) -> Option<String> {
        unbuilt(&self.rt)
    }

    fn run(&mut self, job: &FileJob, span: Duration) -> io::Result<Sample> {
        use mfio_integration::Tokio;
        let (host, rt) = ready(&mut self.rt)?;
        let rt = &*rt;
        host.block_on(Tokio::run(rt, async {
            if job.kind == Kind::ManyFiles {
                return drive_files(&job.files, job.depth, job.block, span, |p| {
                    load(rt, p, job.block, job.len)
                })
                .await;
            }
            let file = std::sync::Arc::new(rt.open(&job.path, &options(job)).await?);
            let res = spawnable_ops(file.clone(), job, span).await;
            if let Some(file) = std::sync::Arc::into_inner(file) {
                file.close().await?;
            }
            res
        }))
    }
}

/// mfio's blocking API (`SyncIoRead`/`SyncIoWrite` on an io_uring file).
pub struct MfioSync {
    rt: Built<Runtime>,
}

impl MfioSync {
    /// Builds the io_uring runtime.
    pub fn new() -> Self {
        let rt = Runtime::builder()
            .backend(BackendKind::Uring)
            .build()
            .map_err(|e| e.to_string());
        Self { rt }
    }
}

impl Contender<FileJob> for MfioSync {
    fn name(&self) -> String {
        "mfio sync (QD1)".into()
    }

    fn skip_reason(&self, job: &FileJob) -> Option<String> {
        unbuilt(&self.rt).or_else(|| job.join.style_independent())
    }

    fn run(&mut self, job: &FileJob, span: Duration) -> io::Result<Sample> {
        let rt = ready(&mut self.rt)?;
        if job.kind == Kind::ManyFiles {
            let mut buf = vec![0u8; job.block];
            return drive_files_blocking(&job.files, job.block, span, |p| {
                let file = rt.block_on(rt.open(p, OpenOptions::new().read(true)))?;
                let mut at = 0u64;
                while at < job.len {
                    file.blocking_read_exact_at(at, &mut buf)?;
                    at += buf.len() as u64;
                }
                rt.block_on(file.close())?;
                Ok(at)
            });
        }
        let file = rt.block_on(rt.open(&job.path, &options(job)))?;
        // The owned-buffer calls: an aligned buffer goes to the backend as is
        // (no staging copy), which `O_DIRECT` needs.
        let mut slot = buffers(job, 1)?.pop();
        let mut pos = job.positions();
        let block = job.block;
        let res = if job.kind == Kind::Write {
            drive_blocking(
                &mut pos,
                job.pace(span),
                |p| {
                    let b = slot.take().ok_or_else(|| io::Error::other("buffer lost"))?;
                    let (r, b) = file.blocking_write_all_owned_at(p, b).into_parts();
                    slot = Some(b);
                    r.map(|()| block).map_err(io::Error::from)
                },
                || Ok(rt.block_on(file.sync_data())?),
            )
        } else {
            drive_blocking(
                &mut pos,
                job.pace(span),
                |p| {
                    let b = slot.take().ok_or_else(|| io::Error::other("buffer lost"))?;
                    let (r, b) = file.blocking_read_owned_at(p, b).into_parts();
                    slot = Some(b);
                    r.map_err(io::Error::from)
                },
                || Ok(()),
            )
        };
        rt.block_on(file.close())?;
        res
    }
}

// TCP: both ends of every connection on this runtime.

async fn pairs(rt: &Runtime, n: usize) -> io::Result<Vec<(TcpStream, TcpStream)>> {
    let listener = TcpListener::bind(rt, loopback())?;
    let addr = listener.local_addr()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(rt, addr).await?;
        let (s, _) = listener.accept().await?;
        c.set_nodelay(true)?;
        s.set_nodelay(true)?;
        out.push((c, s));
    }
    Ok(out)
}

async fn round_trip(c: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let (r, b) = c.write_all(b).await.into_parts();
    if let Err(e) = r {
        return (Err(e.into()), c, b);
    }
    let (r, b) = c.read_exact(b).await.into_parts();
    (r.map_err(io::Error::from), c, b)
}

async fn echo(s: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let (r, b) = s.read_exact(b).await.into_parts();
    if let Err(e) = r {
        return (Err(e.into()), s, b);
    }
    let (r, b) = s.write_all(b).await.into_parts();
    (r.map_err(io::Error::from), s, b)
}

async fn send(c: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let (r, b) = c.write_all(b).await.into_parts();
    (r.map_err(io::Error::from), c, b)
}

async fn recv(s: TcpStream, b: Vec<u8>) -> (io::Result<usize>, TcpStream, Vec<u8>) {
    let (r, b) = s.read(b).await.into_parts();
    (r.map_err(io::Error::from), s, b)
}

impl Contender<TcpJob> for Mfio {
    fn name(&self) -> String {
        <Self as Contender<FileJob>>::name(self)
    }

    fn skip_reason(&self, job: &TcpJob) -> Option<String> {
        unbuilt(&self.rt).or_else(|| job.join.unspawnable())
    }

    fn run(&mut self, job: &TcpJob, span: Duration) -> io::Result<Sample> {
        let rt = ready(&mut self.rt)?;
        rt.block_on(async {
            let p = pairs(rt, job.conns).await?;
            session(p, job, span, round_trip, echo, send, recv).await
        })
    }
}

impl Contender<TcpJob> for MfioOnTokio {
    fn name(&self) -> String {
        "mfio uring on tokio".into()
    }

    fn skip_reason(&self, _job: &TcpJob) -> Option<String> {
        unbuilt(&self.rt)
    }

    /// Every style, the `JoinSet` one with each connection's two ends
    /// spawned as tokio tasks.
    fn run(&mut self, job: &TcpJob, span: Duration) -> io::Result<Sample> {
        use mfio_integration::Tokio;
        let (host, rt) = ready(&mut self.rt)?;
        let rt = &*rt;
        host.block_on(Tokio::run(rt, async {
            let p = pairs(rt, job.conns).await?;
            if job.join == JoinStyle::JoinSet {
                ping_pong_spawned(p, job.size, span, round_trip, echo).await
            } else {
                session(p, job, span, round_trip, echo, send, recv).await
            }
        }))
    }
}

// The UCX benchmark's patterns over TCP: the server on a thread (and a
// runtime) of its own, as the UCX server worker is.

impl Contender<UcxJob> for Mfio {
    fn name(&self) -> String {
        format!("mfio {} tcp", self.kind.name())
    }

    fn skip_reason(&self, job: &UcxJob) -> Option<String> {
        // One stream written one message at a time: nothing to join.
        let one_stream = matches!(job.pattern, Pattern::TagStream | Pattern::AmStream);
        unbuilt(&self.rt).or_else(|| job.join.style_independent().filter(|_| one_stream))
    }

    fn run(&mut self, job: &UcxJob, span: Duration) -> io::Result<Sample> {
        let kind = self.kind;
        let rt = ready(&mut self.rt)?;
        let conns = if job.pattern == Pattern::RemoteRead {
            job.window.max(1)
        } else {
            1
        };
        let (tell, addr) = std::sync::mpsc::channel();
        let server = {
            let job = job.clone();
            std::thread::spawn(move || -> io::Result<()> {
                let rt = Runtime::builder().backend(kind).build()?;
                let listener = TcpListener::bind(&rt, loopback())?;
                // Buffers first: the client's clock starts once it has the address.
                let bufs: Vec<Vec<u8>> = (0..conns).map(|_| touched(job.size)).collect();
                let _ = tell.send(listener.local_addr()?);
                rt.block_on(serve_pattern(&rt, &listener, &job, bufs))
            })
        };
        let addr = addr
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| io::Error::other("the TCP server did not start"))?;
        let res = rt.block_on(async {
            let mut streams = Vec::with_capacity(conns);
            for _ in 0..conns {
                let s = TcpStream::connect(rt, addr).await?;
                s.set_nodelay(true)?;
                streams.push(s);
            }
            drive_pattern(&streams, job, span).await
        });
        if res.is_err() {
            // A server still waiting for connections gets them, and their end.
            for _ in 0..conns {
                drop(std::net::TcpStream::connect(addr));
            }
        }
        let served = server
            .join()
            .map_err(|_| io::Error::other("the TCP server thread panicked"))?;
        let sample = res?;
        served?;
        Ok(sample)
    }
}

/// The client's side: the streams are dropped at the end, which ends the
/// server's side.
async fn drive_pattern(streams: &[TcpStream], job: &UcxJob, span: Duration) -> io::Result<Sample> {
    let first = streams.first().ok_or_else(|| io::Error::other("no connection"))?;
    let start = Instant::now();
    match job.pattern {
        Pattern::PingPong => {
            let (mut buf, mut round, mut out) = (vec![0x5a; job.size], 0u64, Sample::default());
            while round % 64 != 0 || start.elapsed() < span {
                let t0 = (round % LATENCY_EVERY == 0).then(Instant::now);
                let (sent, b) = first.write_all(buf).await.into_parts();
                sent?;
                let (got, b) = first.read_exact(b).await.into_parts();
                got?;
                if let Some(t0) = t0 {
                    out.lat_ns.push(t0.elapsed().as_nanos() as u64 / 2);
                }
                (buf, round) = (b, round + 1);
            }
            out.elapsed = start.elapsed();
            out.ops = 2 * round;
            out.bytes = out.ops * job.bytes();
            Ok(out)
        }
        Pattern::TagStream | Pattern::AmStream => {
            let (mut buf, mut out) = (vec![0x5a; job.size], Sample::default());
            while out.ops % 64 != 0 || start.elapsed() < span {
                let t0 = (out.ops % LATENCY_EVERY == 0).then(Instant::now);
                let (sent, b) = first.write_all(buf).await.into_parts();
                sent?;
                if let Some(t0) = t0 {
                    out.lat_ns.push(t0.elapsed().as_nanos() as u64);
                }
                (buf, out.ops) = (b, out.ops + 1);
            }
            first.shutdown(std::net::Shutdown::Write).await?;
            let (got, ack) = first.read_exact(Vec::with_capacity(8)).await.into_parts();
            got?;
            let received = ack.get(..8).and_then(|w| w.try_into().ok()).map(u64::from_le_bytes);
            if received != Some(out.ops * job.bytes()) {
                return Err(io::Error::other(format!(
                    "server received {received:?} of {} bytes",
                    out.ops * job.bytes()
                )));
            }
            out.elapsed = start.elapsed();
            out.bytes = out.ops * job.bytes();
            Ok(out)
        }
        Pattern::RemoteRead => {
            read_lanes(job, span, |lane, offset, buf| async move {
                let Some(s) = streams.get(lane) else {
                    return (Err(io::Error::other("no such lane")), buf);
                };
                let (sent, _) = s.write_all(offset.to_le_bytes().to_vec()).await.into_parts();
                if let Err(e) = sent {
                    return (Err(e.into()), buf);
                }
                let (got, buf) = s.read_exact(buf).await.into_parts();
                let res = got.map_err(io::Error::from).and_then(|()| check_range(offset, &buf));
                (res, buf)
            })
            .await
        }
    }
}

/// The server's side: echo, count, or answer ranges from the file, until
/// the client's streams end.
async fn serve_pattern(rt: &Runtime, listener: &TcpListener, job: &UcxJob, mut bufs: Vec<Vec<u8>>) -> io::Result<()> {
    let mut streams = Vec::with_capacity(bufs.len());
    for _ in 0..bufs.len() {
        let (s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        streams.push(s);
    }
    let ended =
        |e: &mfio_core::Error| matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset);
    let first = streams.first().ok_or_else(|| io::Error::other("no connection"))?;
    match job.pattern {
        Pattern::PingPong => {
            let mut buf = bufs.pop().unwrap_or_default();
            loop {
                let (got, b) = first.read_exact(buf).await.into_parts();
                match got {
                    Ok(()) => {}
                    Err(e) if ended(&e) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
                let (sent, b) = first.write_all(b).await.into_parts();
                sent?;
                buf = b;
                buf.clear();
            }
        }
        Pattern::TagStream | Pattern::AmStream => {
            let (mut buf, mut total) = (bufs.pop().unwrap_or_default(), 0u64);
            loop {
                buf.clear();
                let (got, b) = first.read(buf).await.into_parts();
                buf = b;
                match got? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            let (sent, _) = first.write_all(total.to_le_bytes().to_vec()).await.into_parts();
            Ok(sent?)
        }
        Pattern::RemoteRead => {
            let file = rt.open(&remote_file()?, OpenOptions::new().read(true)).await?;
            let lane = |(s, mut buf): (&TcpStream, Vec<u8>)| {
                let file = &file;
                let s = s.clone();
                async move {
                    loop {
                        let (got, request) = s.read_exact(Vec::with_capacity(8)).await.into_parts();
                        match got {
                            Ok(()) => {}
                            Err(e) if ended(&e) => return Ok::<_, io::Error>(()),
                            Err(e) => return Err(e.into()),
                        }
                        let offset = request.get(..8).and_then(|w| w.try_into().ok()).map(u64::from_le_bytes);
                        let offset = offset.filter(|o| o.saturating_add(job.bytes()) <= REMOTE_FILE_LEN);
                        let Some(offset) = offset else {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, "range past the file"));
                        };
                        buf.clear();
                        let (read, b) = file.read_exact_at(offset, buf).await.into_parts();
                        read?;
                        let (sent, b) = s.write_all(b).await.into_parts();
                        sent?;
                        buf = b;
                    }
                }
            };
            let lanes = futures::future::join_all(streams.iter().zip(bufs).map(lane)).await;
            file.close().await?;
            lanes.into_iter().collect::<io::Result<Vec<()>>>().map(drop)
        }
    }
}
