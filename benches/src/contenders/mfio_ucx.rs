//! mfio's UCX worker (`mfio-net`): a client worker on the benchmark's
//! thread and a server worker on a thread of its own, connected by worker
//! address, kept from one repetition to the next (as `ucx_perftest` keeps
//! its connection through its warm-up). Each repetition hands the server
//! worker to a fresh thread that serves the workload's pattern until the
//! client's last message, or until the client gives up.

use std::io;
use std::time::{Duration, Instant};

use futures::future::{join_all, select, Either};
use futures::stream::{FuturesUnordered, StreamExt};
use mfio_backends::{Composite, OpenOptions, Runtime};
use mfio_core::{BufResult, IoBackendExt, IoRead, IoWrite, PacketIoExt};
use mfio_net::ucx::{AmSend, Context, Endpoint, Tag, TagMatch, Worker, WorkerAddress};

use crate::measure::{drive_ops, Contender, Pace, Positions, Sample, LATENCY_EVERY};
use crate::ucx::{check_range, read_lanes, remote_file, touched, Pattern, Transport, UcxJob, REMOTE_FILE_LEN};

/// How the workers wait for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// A spin budget before sleeping on the worker's descriptor (`None`:
    /// mfio's default).
    Spin(Option<Duration>),
    /// No spin: every wait sleeps on the descriptor, so each message is a
    /// wake-up from sleep (only the ping-pong is run this way).
    Sleep,
}

/// Tag of a ping and of a one-way data message.
const DATA: u64 = 1;
/// Tag of the ping-pong's answer.
const PONG: u64 = 2;
/// Tag of the client's last message (its payload: messages sent, LE).
const FIN: u64 = 3;
/// Tag of the server's answer to `FIN` (its payload: messages received).
const ACK: u64 = 4;
/// Tag of a range request: offset (8 bytes LE) and reply tag (8 bytes LE).
const REQUEST: u64 = 5;
/// Reply tags of range requests: one per lane.
const REPLY_BASE: u64 = 1 << 32;
/// The active-message id of the one-way runs; header byte 0: `D` data,
/// `F` last message (then the count, LE).
const AM_ID: u16 = 7;

fn err(e: mfio_core::Error) -> io::Error {
    io::Error::from(e)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn word(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|w| w.try_into().ok())
        .map_or(u64::MAX, u64::from_le_bytes)
}

/// The two connected workers of one transport.
struct Link {
    transport: Transport,
    client: Worker,
    to_server: Endpoint,
    server: Worker,
    to_client: Endpoint,
}

impl Link {
    fn new(transport: Transport, waiting: Waiting) -> mfio_core::Result<Self> {
        let context = context(transport)?;
        let worker = || {
            let b = Worker::builder(&context);
            match waiting {
                Waiting::Spin(None) => b.build(),
                Waiting::Spin(Some(spin)) => b.spin(spin).build(),
                Waiting::Sleep => b.spin(Duration::ZERO).build(),
            }
        };
        let (client, server) = (worker()?, worker()?);
        server.listen_am(AM_ID)?;
        let to_server = client.connect(&server.address())?;
        let to_client = server.connect(&client.address())?;
        Ok(Self {
            transport,
            client,
            to_server,
            server,
            to_client,
        })
    }
}

impl Link {
    /// Closes both endpoints gracefully while both workers are driven,
    /// before either worker goes: a close that reaches a worker already
    /// destroyed makes UCX log a failed attach to the peer's shared memory.
    fn close(self) {
        let both = Composite::new(vec![Box::new(self.client.clone()), Box::new(self.server.clone())]);
        if let Ok(both) = both {
            let closes = [self.to_server, self.to_client].map(Endpoint::close);
            let _ = both.block_on(join_all(closes));
        }
    }
}

impl Drop for MfioUcx {
    fn drop(&mut self) {
        for link in self.links.drain(..) {
            link.close();
        }
    }
}

/// mfio-net's UCX backend, spinning or sleeping while it waits.
pub struct MfioUcx {
    waiting: Waiting,
    links: Vec<Link>,
}

impl MfioUcx {
    /// Links are made on first use, per transport.
    pub fn new(waiting: Waiting) -> Self {
        Self {
            waiting,
            links: Vec::new(),
        }
    }
}

impl Contender<UcxJob> for MfioUcx {
    fn name(&self) -> String {
        match self.waiting {
            Waiting::Spin(None) => "mfio ucx".into(),
            Waiting::Spin(Some(spin)) => format!("mfio ucx, spin {spin:?}"),
            Waiting::Sleep => "mfio ucx, asleep".into(),
        }
    }

    fn skip_reason(&self, job: &UcxJob) -> Option<String> {
        (self.waiting == Waiting::Sleep && job.pattern != Pattern::PingPong)
            .then(|| "wake-up latency is measured by the ping-pong only".into())
    }

    fn run(&mut self, job: &UcxJob, span: Duration) -> io::Result<Sample> {
        let link = match self.links.iter().position(|l| l.transport == job.transport) {
            Some(i) => self.links.swap_remove(i),
            None => Link::new(job.transport, self.waiting)?,
        };
        let Link {
            transport,
            client,
            to_server,
            server,
            to_client,
        } = link;
        let (stop, stopped) = futures::channel::oneshot::channel::<()>();
        let (ready, server_ready) = std::sync::mpsc::channel();
        let served = {
            let job = job.clone();
            std::thread::Builder::new().name("ucx-server".into()).spawn(move || {
                let ready = move || {
                    let _ = ready.send(());
                };
                let res = serve(&server, &to_client, &job, ready, stopped);
                (res, server, to_client)
            })?
        };
        // The clock starts once the server has its buffers.
        let res = match server_ready.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => client.block_on(drive(&client, &to_server, job, span)),
            Err(_) => Err(io::Error::other("the server did not get ready")),
        };
        if res.is_ok() {
            // The server takes the client's last message(s) and ends.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !served.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        // Ends the server's loop if it is still waiting (the client gave up,
        // or its last message went missing).
        drop(stop);
        let (served, server, to_client) = served
            .join()
            .map_err(|_| io::Error::other("the server thread panicked"))?;
        let sample = res?;
        served?;
        self.links.push(Link {
            transport,
            client,
            to_server,
            server,
            to_client,
        });
        Ok(sample)
    }
}

/// The client's side of one repetition.
async fn drive(worker: &Worker, ep: &Endpoint, job: &UcxJob, span: Duration) -> io::Result<Sample> {
    match job.pattern {
        Pattern::PingPong => ping_pong(worker, ep, job.size, span).await,
        Pattern::TagStream | Pattern::AmStream => one_way(worker, ep, job, span).await,
        Pattern::RemoteRead => {
            let sample = read_lanes(job, span, |lane, offset, buf| fetch(worker, ep, lane, offset, buf)).await;
            // A request at offset `u64::MAX` ends one of the server's lanes.
            for _ in 0..job.window {
                let stop = [u64::MAX.to_le_bytes(), 0u64.to_le_bytes()].concat();
                let (sent, _) = ep.write_at(Tag(REQUEST), stop).await.into_parts();
                sent.map_err(err)?;
            }
            sample
        }
    }
}

async fn ping_pong(worker: &Worker, ep: &Endpoint, size: usize, span: Duration) -> io::Result<Sample> {
    let (mut ping, mut pong) = (vec![0x5a; size], touched(size));
    let mut out = Sample::default();
    let start = Instant::now();
    let mut round = 0u64;
    while round % 64 != 0 || start.elapsed() < span {
        let t0 = (round % LATENCY_EVERY == 0).then(Instant::now);
        // The receive is posted before the ping leaves.
        let back = worker.read_at(TagMatch::exact(PONG), pong);
        let sent = ep.write_at(Tag(DATA), ping);
        let (BufResult(got, b), BufResult(sent, p)) = futures::join!(back, sent);
        (pong, ping) = (b, p);
        sent.map_err(err)?;
        if got.map_err(err)? != size {
            return Err(bad(format!("pong of {} bytes, sent {size}", pong.len())));
        }
        if let Some(t0) = t0 {
            out.lat_ns.push(t0.elapsed().as_nanos() as u64 / 2);
        }
        round += 1;
    }
    out.elapsed = start.elapsed();
    out.ops = 2 * round;
    out.bytes = out.ops * size as u64;
    let (sent, _) = ep.write_at(Tag(FIN), round.to_le_bytes().to_vec()).await.into_parts();
    sent.map_err(err)?;
    Ok(out)
}

/// Tag or active-message sends, `job.window` in flight, then the count
/// and the server's acknowledgement: the time includes the last byte's
/// arrival.
async fn one_way(worker: &Worker, ep: &Endpoint, job: &UcxJob, span: Duration) -> io::Result<Sample> {
    // One message buffer shared by every send in flight, as `ucx_perftest`
    // sends from one buffer: the same bytes in cache.
    let message = bytes::Bytes::from(vec![0x5a; job.size]);
    let bufs = vec![message; job.window.max(1)];
    let mut pos = Positions::new(1, 1, false);
    let pace = Pace {
        span,
        block: job.size,
        sync_every: None,
        join: job.join,
    };
    let start = Instant::now();
    let nothing = || async { Ok(()) };
    let mut out = if job.pattern == Pattern::AmStream {
        let op = |_, b| async move {
            let (sent, b) = ep.io(AmSend::new(AM_ID, *b"D"), b).await;
            (sent.result().map_err(err), b)
        };
        drive_ops(&mut pos, pace, bufs, op, nothing).await?
    } else {
        let op = |_, b| async move {
            let (sent, b) = ep.write_at(Tag(DATA), b).await.into_parts();
            (sent.map_err(err), b)
        };
        drive_ops(&mut pos, pace, bufs, op, nothing).await?
    };
    let ack = worker.read_at(TagMatch::exact(ACK), Vec::with_capacity(8));
    let count = out.ops.to_le_bytes();
    let fin = async {
        if job.pattern == Pattern::AmStream {
            let (sent, _) = ep
                .io(AmSend::new(AM_ID, [&b"F"[..], &count].concat()), Vec::new())
                .await;
            sent.result().map(drop)
        } else {
            ep.write_at(Tag(FIN), count.to_vec()).await.0.map(drop)
        }
    };
    let (BufResult(got, ack), sent) = futures::join!(ack, fin);
    sent.map_err(err)?;
    got.map_err(err)?;
    if word(&ack, 0) != out.ops {
        return Err(bad(format!(
            "server received {} of {} messages",
            word(&ack, 0),
            out.ops
        )));
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// One range of the remote-read pattern: the reply's receive, then the request.
async fn fetch(worker: &Worker, ep: &Endpoint, lane: usize, offset: u64, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let reply = REPLY_BASE + lane as u64;
    let request = [offset.to_le_bytes(), reply.to_le_bytes()].concat();
    let want = buf.capacity();
    let got = worker.read_at(TagMatch::exact(reply), buf);
    let sent = ep.write_at(Tag(REQUEST), request);
    let (BufResult(got, buf), BufResult(sent, _)) = futures::join!(got, sent);
    let res = match (sent, got) {
        (Err(e), _) | (_, Err(e)) => Err(err(e)),
        (Ok(_), Ok(n)) if n != want => Err(bad(format!("range of {n} bytes, asked {want}"))),
        (Ok(_), Ok(_)) => check_range(offset, &buf),
    };
    (res, buf)
}

/// The server's side of one repetition; ends early when `stopped` resolves
/// (the client gave up).
fn serve(
    worker: &Worker,
    ep: &Endpoint,
    job: &UcxJob,
    ready: impl FnOnce(),
    stopped: futures::channel::oneshot::Receiver<()>,
) -> io::Result<()> {
    let posted = match job.pattern {
        Pattern::TagStream | Pattern::AmStream => job.recv_window,
        _ => job.window.max(1),
    };
    let bufs: Vec<Vec<u8>> = (0..posted).map(|_| touched(job.size.max(16))).collect();
    let rt = match job.pattern {
        Pattern::RemoteRead => Some(Runtime::new()?),
        _ => None,
    };
    ready();
    if let Some(rt) = rt {
        let both = Composite::new(vec![Box::new(rt.clone()), Box::new(worker.clone())])?;
        let work = Box::pin(serve_ranges(&rt, worker, ep, job, bufs));
        return match both.block_on(select(work, stopped)) {
            Either::Left((res, _)) => res,
            Either::Right(_) => Err(io::Error::other("the client stopped early")),
        };
    }
    let work: std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>>>> = match job.pattern {
        Pattern::PingPong => Box::pin(echo(worker, ep, bufs)),
        _ => Box::pin(sink(worker, ep, job, bufs)),
    };
    match worker.block_on(select(work, stopped)) {
        Either::Left((res, _)) => res,
        Either::Right(_) => Err(io::Error::other("the client stopped early")),
    }
}

async fn echo(worker: &Worker, ep: &Endpoint, mut bufs: Vec<Vec<u8>>) -> io::Result<()> {
    let mut buf = bufs.pop().unwrap_or_default();
    loop {
        let BufResult(got, b) = worker.tag_recv(TagMatch::any(), buf).await;
        if got.map_err(err)?.tag == FIN {
            return Ok(());
        }
        let BufResult(sent, b) = ep.write_at(Tag(PONG), b).await;
        sent.map_err(err)?;
        buf = b;
    }
}

/// Receives one-way messages, `job.window` receives posted, until the
/// client's last message; then acknowledges the count.
async fn sink(worker: &Worker, ep: &Endpoint, job: &UcxJob, bufs: Vec<Vec<u8>>) -> io::Result<()> {
    let am = job.pattern == Pattern::AmStream;
    // Each receive says whether it took the last message, and its count.
    let recv = |buf: Vec<u8>| async move {
        if am {
            let BufResult(got, buf) = worker.am_recv(AM_ID, buf).await;
            let got = got.map_err(err)?;
            let last = got.header.first() == Some(&b'F');
            Ok((last.then(|| word(&got.header, 1)), got.len, buf))
        } else {
            let BufResult(got, buf) = worker.tag_recv(TagMatch::any(), buf).await;
            let got = got.map_err(err)?;
            Ok::<_, io::Error>(((got.tag == FIN).then(|| word(&buf, 0)), got.len, buf))
        }
    };
    let mut pending: FuturesUnordered<_> = bufs.into_iter().map(recv).collect();
    let (mut received, mut expected) = (0u64, None);
    while let Some(res) = pending.next().await {
        let (last, len, buf) = res?;
        match last {
            Some(count) => expected = Some(count),
            None if len == job.size => received += 1,
            None => return Err(bad(format!("message of {len} bytes, sent {}", job.size))),
        }
        // Messages arrive in order: every one before the last is already
        // matched by a posted receive.
        if expected.is_some_and(|n| received >= n) {
            break;
        }
        if expected.is_none() {
            pending.push(recv(buf));
        }
    }
    drop(pending);
    let (sent, _) = ep
        .write_at(Tag(ACK), received.to_le_bytes().to_vec())
        .await
        .into_parts();
    sent.map_err(err)?;
    Ok(())
}

/// Serves range requests, `job.window` lanes, each reading its range with
/// io_uring and sending that same buffer with UCX, until each lane took a
/// stop request.
async fn serve_ranges(
    rt: &Runtime,
    worker: &Worker,
    ep: &Endpoint,
    job: &UcxJob,
    bufs: Vec<Vec<u8>>,
) -> io::Result<()> {
    let path = remote_file()?;
    let file = rt.open(&path, OpenOptions::new().read(true)).await?;
    let lane = |mut buf: Vec<u8>| async {
        loop {
            let BufResult(got, request) = worker.read_at(TagMatch::exact(REQUEST), Vec::with_capacity(16)).await;
            if got.map_err(err)? != 16 {
                return Err(bad("short range request".into()));
            }
            let (offset, reply) = (word(&request, 0), word(&request, 8));
            if offset == u64::MAX {
                return Ok(());
            }
            if offset.saturating_add(job.size as u64) > REMOTE_FILE_LEN {
                return Err(bad(format!("range at {offset} is past the file")));
            }
            buf.clear();
            let (read, b) = file.read_exact_at(offset, buf).await.into_parts();
            read?;
            let (sent, b) = ep.write_at(Tag(reply), b).await.into_parts();
            sent.map_err(err)?;
            buf = b;
        }
    };
    let lanes = join_all(bufs.into_iter().map(lane)).await;
    let res = lanes.into_iter().collect::<io::Result<Vec<()>>>().map(drop);
    file.close().await?;
    res
}

/// mfio-net's UCX backend with its server in a process of its own (this
/// binary again, `mfio-bench ucx-serve`), as `ucx_perftest` runs: two
/// address spaces instead of two threads of one.
pub struct MfioUcxProcesses;

fn context(transport: Transport) -> mfio_core::Result<Context> {
    transport
        .settings()
        .iter()
        .fold(Context::builder(), |b, (k, v)| b.set(*k, *v))
        .build()
}

/// The next line of `lines` that holds `prefix` (UCX may print its own
/// lines), from after the prefix.
fn line_after(lines: &mut impl Iterator<Item = io::Result<String>>, prefix: &str) -> io::Result<String> {
    for line in lines {
        if let Some((_, rest)) = line?.split_once(prefix) {
            return Ok(rest.trim().to_string());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the server process ended before {prefix:?}"),
    ))
}

impl Contender<UcxJob> for MfioUcxProcesses {
    fn name(&self) -> String {
        "mfio ucx, 2 processes".into()
    }

    fn skip_reason(&self, _job: &UcxJob) -> Option<String> {
        None
    }

    fn run(&mut self, job: &UcxJob, span: Duration) -> io::Result<Sample> {
        use std::io::{BufRead, Write};
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("ucx-serve")
            .args(["--transport", job.transport.name(), "--pattern", job.pattern.name()])
            .args(["--size", &job.size.to_string(), "--window", &job.window.to_string()])
            .args(["--recv-window", &job.recv_window.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let res = (|| {
            let (Some(mut to_child), Some(from_child)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(io::Error::other("no pipes to the server process"));
            };
            let mut lines = std::io::BufReader::new(from_child).lines();
            let address = WorkerAddress::from_hex(&line_after(&mut lines, "ADDR ")?)?;
            let worker = context(job.transport)?.worker()?;
            writeln!(to_child, "{}", worker.address().to_hex())?;
            to_child.flush()?;
            let ep = worker.connect(&address)?;
            // The clock starts once the server has its buffers.
            line_after(&mut lines, "READY")?;
            let sample = worker.block_on(drive(&worker, &ep, job, span));
            // Drained, so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            sample
        })();
        // Bounded: the server ends after the client's last message.
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let sample = res?;
        match status {
            Some(s) if s.success() => Ok(sample),
            Some(s) => Err(io::Error::other(format!("the server process failed: {s}"))),
            None => Err(io::Error::other("the server process did not end")),
        }
    }
}

/// The server process of [`MfioUcxProcesses`]: prints its worker address,
/// reads the client's from stdin, serves one repetition of `job`.
///
/// # Errors
/// UCX's, or the pattern's.
pub fn serve_process(job: &UcxJob) -> io::Result<()> {
    use std::io::{BufRead, Write};
    let worker = context(job.transport)?.worker()?;
    worker.listen_am(AM_ID)?;
    println!("ADDR {}", worker.address().to_hex());
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let ep = worker.connect(&WorkerAddress::from_hex(&line)?)?;
    let ready = || {
        println!("READY");
        let _ = std::io::stdout().flush();
    };
    // Never fired: the client's last message ends the loop.
    let (_keep, never) = futures::channel::oneshot::channel::<()>();
    let res = serve(&worker, &ep, job, ready, never);
    // Our last replies leave before the process does.
    let _ = worker.block_on(ep.io(mfio_core::Flush, Vec::new()));
    res
}
