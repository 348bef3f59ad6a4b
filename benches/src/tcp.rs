//! TCP over loopback: ping-pong of fixed-size messages over 1 or many
//! connections, and one-way bulk throughput. Both ends of every connection
//! run on the contender's runtime, on one thread, so the figure is the cost
//! of the whole round trip through that runtime.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use crate::contenders::{compio, mfio, monoio, tokio};
use crate::measure::{join_lanes, keep_only, Contender, JoinStyle, Sample, Titled, LATENCY_EVERY};

/// Settings of `tcp`.
#[derive(Debug, Clone, clap::Args)]
pub struct TcpArgs {
    /// Message sizes of the ping-pong, in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,16384")]
    pub sizes: Vec<usize>,
    /// Connection counts of the ping-pong.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub conns: Vec<usize>,
    /// Write size of the bulk run, in bytes.
    #[arg(long, default_value_t = 256 << 10)]
    pub bulk_chunk: usize,
    /// Measured repetitions per contender (after a warm-up), interleaved.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Length of one repetition in milliseconds.
    #[arg(long, default_value_t = 150)]
    pub rep_ms: u64,
    /// Run only contenders whose name contains one of these, or is exactly one
    /// written `=name` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// How the many-connection ping-pongs await their connections, each
    /// style a workload of its own (`join-set`: each connection's two ends
    /// are tokio tasks; tokio-driven contenders only).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "window,unordered,buffered,join-set"
    )]
    pub joins: Vec<JoinStyle>,
}

impl Default for TcpArgs {
    fn default() -> Self {
        Self {
            sizes: vec![64, 16384],
            conns: vec![1, 64],
            bulk_chunk: 256 << 10,
            reps: 5,
            rep_ms: 150,
            only: Vec::new(),
            joins: vec![
                JoinStyle::Window,
                JoinStyle::Unordered,
                JoinStyle::Buffered,
                JoinStyle::JoinSet,
            ],
        }
    }
}

/// One TCP workload.
#[derive(Debug, Clone)]
pub struct TcpJob {
    /// Name in tables and file names.
    pub title: String,
    /// Ping-pong message size, or bulk write size.
    pub size: usize,
    /// Connections (1 for bulk).
    pub conns: usize,
    /// One-way bulk transfer instead of ping-pong.
    pub bulk: bool,
    /// How the connections' loops are awaited together.
    pub join: JoinStyle,
}

/// The workloads of `args`.
pub fn jobs(args: &TcpArgs) -> Vec<TcpJob> {
    let mut out = Vec::new();
    for &size in &args.sizes {
        for &conns in &args.conns {
            let title = format!("tcp ping-pong {size} B × {conns} conn");
            let job = |title, join| TcpJob {
                title,
                size,
                conns,
                bulk: false,
                join,
            };
            // One connection is one loop: no join to vary.
            if conns <= 1 || args.joins.is_empty() {
                out.push(job(title, JoinStyle::Window));
            } else {
                out.extend(args.joins.iter().map(|&j| job(format!("{title}, {}", j.name()), j)));
            }
        }
    }
    out.push(TcpJob {
        title: format!("tcp bulk {} KiB writes, 1 conn", args.bulk_chunk >> 10),
        size: args.bulk_chunk,
        conns: 1,
        bulk: true,
        join: JoinStyle::Window,
    });
    out
}

/// Every TCP contender.
pub fn contenders(args: &TcpArgs) -> Vec<Box<dyn Contender<TcpJob>>> {
    let all: Vec<Box<dyn Contender<TcpJob>>> = vec![
        Box::new(mfio::Mfio::new(mfio_backends::BackendKind::Uring)),
        Box::new(mfio::Mfio::busy_polling(Duration::from_micros(50))),
        Box::new(mfio::MfioOnTokio::new()),
        Box::new(mfio::Mfio::new(mfio_backends::BackendKind::Poll)),
        Box::new(tokio::Tokio::new()),
        Box::new(compio::Compio::new()),
        Box::new(monoio::Monoio::new()),
    ];
    keep_only(all, &args.only)
}

/// Whether an error is the peer closing the connection.
fn is_eof(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// The client side of a connection: `call` with a `size`-byte message (a
/// round trip, or a one-way send for bulk) until `deadline`, one call in
/// `LATENCY_EVERY` timed; then drops the stream. Returns the calls made and
/// the sampled latencies.
async fn client<S, F, Fut>(mut stream: S, size: usize, deadline: Instant, call: &F) -> io::Result<(u64, Vec<u64>)>
where
    F: Fn(S, Vec<u8>) -> Fut,
    Fut: Future<Output = (io::Result<()>, S, Vec<u8>)>,
{
    let mut buf = vec![0x5a; size];
    let mut n = 0u64;
    let mut lat = Vec::new();
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let (res, s, b) = call(stream, buf).await;
        res?;
        if n % LATENCY_EVERY == 0 {
            lat.push(t0.elapsed().as_nanos() as u64);
        }
        n += 1;
        stream = s;
        buf = b;
    }
    Ok((n, lat))
}

/// The server side: echoes messages (`echo` reads one and writes it back)
/// until the client closes.
async fn server<S, F, Fut>(mut stream: S, size: usize, echo: &F) -> io::Result<()>
where
    F: Fn(S, Vec<u8>) -> Fut,
    Fut: Future<Output = (io::Result<()>, S, Vec<u8>)>,
{
    let mut buf = vec![0u8; size];
    loop {
        let (res, s, b) = echo(stream, buf).await;
        match res {
            Ok(()) => {}
            Err(e) if is_eof(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        stream = s;
        buf = b;
    }
}

/// Runs a ping-pong over connected `(client, server)` pairs for `span`, the
/// clients (and the servers) joined in the `join` style.
pub async fn ping_pong<C, S, RF, RFut, EF, EFut>(
    pairs: Vec<(C, S)>,
    size: usize,
    span: Duration,
    join: JoinStyle,
    rtt: RF,
    echo: EF,
) -> io::Result<Sample>
where
    RF: Fn(C, Vec<u8>) -> RFut,
    RFut: Future<Output = (io::Result<()>, C, Vec<u8>)>,
    EF: Fn(S, Vec<u8>) -> EFut,
    EFut: Future<Output = (io::Result<()>, S, Vec<u8>)>,
{
    let start = Instant::now();
    let deadline = start + span;
    let (clients, servers): (Vec<_>, Vec<_>) = pairs
        .into_iter()
        .map(|(c, s)| (client(c, size, deadline, &rtt), server(s, size, &echo)))
        .unzip();
    let (done, served) = futures::future::join(join_lanes(join, clients), join_lanes(join, servers)).await;
    ping_pong_sample(start, size, done?, served?)
}

/// The sample of a ping-pong that started at `start`: every client's
/// `(round trips, sampled latencies)`, every server's end.
///
/// # Errors
/// The first failed client, then the first failed server.
fn ping_pong_sample(
    start: Instant,
    size: usize,
    done: Vec<io::Result<(u64, Vec<u64>)>>,
    served: Vec<io::Result<()>>,
) -> io::Result<Sample> {
    let mut out = Sample {
        elapsed: start.elapsed(),
        ..Sample::default()
    };
    for r in done {
        let (n, lat) = r?;
        out.ops += n;
        out.lat_ns.extend(lat);
    }
    for r in served {
        r?;
    }
    out.bytes = out.ops * 2 * size as u64;
    Ok(out)
}

/// [`ping_pong`] in the [`JoinStyle::JoinSet`] style: every client and
/// every server is a task on the current tokio runtime.
///
/// # Errors
/// The first failed connection, or a task that panicked.
pub async fn ping_pong_spawned<C, S, RF, RFut, EF, EFut>(
    pairs: Vec<(C, S)>,
    size: usize,
    span: Duration,
    rtt: RF,
    echo: EF,
) -> io::Result<Sample>
where
    C: Send + 'static,
    S: Send + 'static,
    RF: Fn(C, Vec<u8>) -> RFut + Copy + Send + Sync + 'static,
    RFut: Future<Output = (io::Result<()>, C, Vec<u8>)> + Send,
    EF: Fn(S, Vec<u8>) -> EFut + Copy + Send + Sync + 'static,
    EFut: Future<Output = (io::Result<()>, S, Vec<u8>)> + Send,
{
    let start = Instant::now();
    let deadline = start + span;
    let mut clients = ::tokio::task::JoinSet::new();
    let mut servers = ::tokio::task::JoinSet::new();
    for (c, s) in pairs {
        clients.spawn(async move { client(c, size, deadline, &rtt).await });
        servers.spawn(async move { server(s, size, &echo).await });
    }
    let done = outputs(clients).await;
    let served = outputs(servers).await;
    ping_pong_sample(start, size, done, served)
}

/// The outputs of a set's tasks as they end; a task that panicked is its
/// connection's error.
async fn outputs<T: 'static>(mut set: ::tokio::task::JoinSet<io::Result<T>>) -> Vec<io::Result<T>> {
    let mut out = Vec::with_capacity(set.len());
    while let Some(joined) = set.join_next().await {
        out.push(joined.map_err(io::Error::other).and_then(|r| r));
    }
    out
}

/// One-way bulk transfer: `send` writes one chunk, until `span` is over,
/// then the sender is dropped; `recv` reads until the end and counts bytes.
pub async fn bulk<C, S, WF, WFut, RF, RFut>(
    sender: C,
    receiver: S,
    chunk: usize,
    span: Duration,
    send: WF,
    recv: RF,
) -> io::Result<Sample>
where
    WF: Fn(C, Vec<u8>) -> WFut,
    WFut: Future<Output = (io::Result<()>, C, Vec<u8>)>,
    RF: Fn(S, Vec<u8>) -> RFut,
    RFut: Future<Output = (io::Result<usize>, S, Vec<u8>)>,
{
    let start = Instant::now();
    let deadline = start + span;
    let writer = client(sender, chunk, deadline, &send);
    let reader = async move {
        let (mut s, mut buf, mut total) = (receiver, vec![0u8; chunk], 0u64);
        loop {
            let (res, s2, b) = recv(s, buf).await;
            match res {
                Ok(0) => return Ok::<_, io::Error>(total),
                Ok(k) => total += k as u64,
                Err(e) if is_eof(&e) => return Ok(total),
                Err(e) => return Err(e),
            }
            (s, buf) = (s2, b);
        }
    };
    let (w, r) = futures::future::join(writer, reader).await;
    let (n, lat) = w?;
    let bytes = r?;
    if bytes != n * chunk as u64 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("bulk: sent {} bytes, received {bytes}", n * chunk as u64),
        ));
    }
    Ok(Sample {
        elapsed: start.elapsed(),
        ops: n,
        bytes,
        lat_ns: lat,
        percentiles: None,
    })
}

/// One repetition of `job` over connected `(client, server)` pairs: a
/// ping-pong with `rtt`/`echo`, or for bulk a transfer with `send`/`recv` over
/// the first pair. Each runtime supplies its stream calls.
#[allow(clippy::too_many_arguments)]
pub async fn session<C, S, RF, RFut, EF, EFut, WF, WFut, VF, VFut>(
    pairs: Vec<(C, S)>,
    job: &TcpJob,
    span: Duration,
    rtt: RF,
    echo: EF,
    send: WF,
    recv: VF,
) -> io::Result<Sample>
where
    RF: Fn(C, Vec<u8>) -> RFut,
    RFut: Future<Output = (io::Result<()>, C, Vec<u8>)>,
    EF: Fn(S, Vec<u8>) -> EFut,
    EFut: Future<Output = (io::Result<()>, S, Vec<u8>)>,
    WF: Fn(C, Vec<u8>) -> WFut,
    WFut: Future<Output = (io::Result<()>, C, Vec<u8>)>,
    VF: Fn(S, Vec<u8>) -> VFut,
    VFut: Future<Output = (io::Result<usize>, S, Vec<u8>)>,
{
    if job.bulk {
        let (c, s) = pairs
            .into_iter()
            .next()
            .ok_or_else(|| io::Error::other("no connection"))?;
        return bulk(c, s, job.size, span, send, recv).await;
    }
    ping_pong(pairs, job.size, span, job.join, rtt, echo).await
}

/// Loopback on an ephemeral port.
pub fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Titled for TcpJob {
    fn title(&self) -> &str {
        &self.title
    }

    fn latency(&self) -> &'static str {
        if self.bulk {
            "latency: one write of the sender"
        } else {
            "latency: one round trip (write, then read of the echo)"
        }
    }
}
