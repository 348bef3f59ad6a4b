//! UCX: tag ping-pong latency, tag and active-message bandwidth, and the
//! remote-read pattern, over shared memory and over TCP on loopback. mfio's
//! UCX worker runs beside `ucx_perftest` (UCX's own benchmark, two processes
//! on the same transport) and beside mfio's io_uring TCP doing the same
//! exchange. Every pair of peers here is two threads (or two processes), one
//! per core, as a real pair of ranks would be.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::contenders::{mfio, mfio_ucx, ucx_perftest};
use crate::measure::{join_lanes, keep_only, Contender, JoinStyle, Positions, Sample, Titled, LATENCY_EVERY};

/// How the two peers of a workload reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Shared memory (`UCX_TLS=sm,self`).
    Sm,
    /// TCP on loopback (`UCX_TLS=tcp`, `UCX_NET_DEVICES=lo`).
    Tcp,
}

impl Transport {
    /// Name in titles.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sm => "sm",
            Self::Tcp => "tcp",
        }
    }

    /// The UCX settings of the transport (without the `UCX_` prefix).
    pub fn settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Sm => &[("TLS", "sm,self")],
            Self::Tcp => &[("TLS", "tcp"), ("NET_DEVICES", "lo")],
        }
    }
}

/// What the two peers exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// A message, then the same message back; one at a time.
    PingPong,
    /// Tagged messages one way, `window` sends in flight.
    TagStream,
    /// Active messages one way, `window` sends in flight.
    AmStream,
    /// Range requests answered from a file read with io_uring, `window`
    /// requests in flight.
    RemoteRead,
}

impl Pattern {
    /// Name on the command line (`ucx-serve --pattern`).
    pub fn name(self) -> &'static str {
        match self {
            Self::PingPong => "ping-pong",
            Self::TagStream => "tag-stream",
            Self::AmStream => "am-stream",
            Self::RemoteRead => "remote-read",
        }
    }
}

/// Settings of the hidden `ucx-serve`: the server process of the
/// "2 processes" contender, one repetition.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The transport.
    #[arg(long, value_enum)]
    transport: Transport,
    /// The exchange.
    #[arg(long, value_enum)]
    pattern: Pattern,
    /// Bytes per message.
    #[arg(long)]
    size: usize,
    /// Operations in flight.
    #[arg(long)]
    window: usize,
    /// Receives posted in the one-way runs.
    #[arg(long)]
    recv_window: usize,
}

impl ServeArgs {
    /// The workload it serves.
    pub fn job(&self) -> UcxJob {
        UcxJob {
            title: String::new(),
            transport: self.transport,
            pattern: self.pattern,
            size: self.size,
            window: self.window,
            recv_window: self.recv_window,
            join: JoinStyle::Window,
        }
    }
}

/// One UCX workload.
#[derive(Debug, Clone)]
pub struct UcxJob {
    /// Name in tables and file names.
    pub title: String,
    /// Which transport the peers use.
    pub transport: Transport,
    /// What they exchange.
    pub pattern: Pattern,
    /// Bytes per message (per range for remote reads).
    pub size: usize,
    /// Operations in flight on the sending side (1 for ping-pong).
    pub window: usize,
    /// Receives the server keeps posted in the one-way runs, each with a
    /// buffer of its own.
    pub recv_window: usize,
    /// How the client awaits the operations (or lanes) it keeps in flight.
    pub join: JoinStyle,
}

impl UcxJob {
    /// Payload bytes one operation moves one way.
    pub fn bytes(&self) -> u64 {
        self.size as u64
    }
}

/// Settings of `ucx`.
#[derive(Debug, Clone, clap::Args)]
pub struct UcxArgs {
    /// Transports to run over.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sm,tcp")]
    pub transports: Vec<Transport>,
    /// Message sizes of the ping-pong, in bytes.
    #[arg(long, value_delimiter = ',', default_value = "8,4096,65536,1048576")]
    pub lat_sizes: Vec<usize>,
    /// Message sizes of the tag and active-message bandwidth runs, in bytes
    /// (0 leaves them out).
    #[arg(long, value_delimiter = ',', default_value = "65536,1048576,16777216")]
    pub bw_sizes: Vec<usize>,
    /// Range size of the remote-read pattern, in bytes (0 leaves it out).
    #[arg(long, default_value_t = 1 << 20)]
    pub range: usize,
    /// Sends (or range requests) in flight in the one-way runs.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Receives posted by mfio's server in the one-way runs (default: the
    /// window). Each has a buffer of its own, where `ucx_perftest` lands
    /// every message in one buffer; fewer receives keep fewer bytes in cache.
    #[arg(long)]
    pub recv_window: Option<usize>,
    /// Measured repetitions per contender (after a warm-up), interleaved.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Length of one repetition in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub rep_ms: u64,
    /// Also run mfio's UCX worker with these spin budgets, in µs
    /// (comma-separated), beside its default.
    #[arg(long, value_delimiter = ',')]
    pub spin_us: Vec<u64>,
    /// Run only contenders whose name contains one of these, or is exactly one
    /// written `=name` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// How mfio's client awaits the sends or ranges it keeps in flight in the
    /// one-way and remote-read runs, each style a workload of its own
    /// (`join-set` is for file workloads only).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "window,unordered,buffered")]
    pub joins: Vec<JoinStyle>,
}

impl Default for UcxArgs {
    /// The short defaults of a full `mfio-bench` run.
    fn default() -> Self {
        Self {
            transports: vec![Transport::Sm, Transport::Tcp],
            lat_sizes: vec![8, 65536, 1 << 20],
            bw_sizes: vec![65536, 1 << 20, 16 << 20],
            range: 1 << 20,
            window: 16,
            recv_window: None,
            reps: 5,
            rep_ms: 150,
            spin_us: Vec::new(),
            only: Vec::new(),
            joins: vec![JoinStyle::Window, JoinStyle::Unordered, JoinStyle::Buffered],
        }
    }
}

impl UcxArgs {
    /// Length of one repetition.
    pub fn span(&self) -> Duration {
        Duration::from_millis(self.rep_ms)
    }
}

/// The workloads of `args`, transport by transport.
pub fn jobs(args: &UcxArgs) -> Vec<UcxJob> {
    let mut out = Vec::new();
    for &transport in &args.transports {
        let t = transport.name();
        let job = |title: String, pattern, size, window| UcxJob {
            title,
            transport,
            pattern,
            size,
            window,
            recv_window: args.recv_window.unwrap_or(window).max(1),
            join: JoinStyle::Window,
        };
        // A run with operations in flight, once per join style.
        let joins: Vec<JoinStyle> = args
            .joins
            .iter()
            .copied()
            .filter(|&j| j != JoinStyle::JoinSet)
            .collect();
        let styled = |job: UcxJob| -> Vec<UcxJob> {
            if job.window <= 1 || joins.is_empty() {
                return vec![job];
            }
            joins
                .iter()
                .map(|&join| UcxJob {
                    title: format!("{}, {}", job.title, join.name()),
                    join,
                    ..job.clone()
                })
                .collect()
        };
        for &size in &args.lat_sizes {
            let title = format!("ucx {t} tag ping-pong {}", crate::size_label(size));
            out.push(job(title, Pattern::PingPong, size, 1));
        }
        for &size in args.bw_sizes.iter().filter(|&&s| s > 0) {
            let w = args.window;
            let posted = args
                .recv_window
                .map_or(String::new(), |r| format!(", {r} receives posted"));
            let s = crate::size_label(size);
            let title = format!("ucx {t} tag bandwidth {s}, {w} in flight{posted}");
            out.extend(styled(job(title, Pattern::TagStream, size, w)));
            let title = format!("ucx {t} am bandwidth {s}, {w} in flight{posted}");
            out.extend(styled(job(title, Pattern::AmStream, size, w)));
        }
        if args.range > 0 {
            let (size, w) = (args.range, args.window);
            let title = format!("ucx {t} remote read {} ranges, {w} in flight", crate::size_label(size));
            out.extend(styled(job(title, Pattern::RemoteRead, size, w)));
        }
    }
    out
}

/// Every UCX contender.
pub fn contenders(args: &UcxArgs) -> Vec<Box<dyn Contender<UcxJob>>> {
    let mut all: Vec<Box<dyn Contender<UcxJob>>> = vec![
        Box::new(ucx_perftest::UcxPerftest::new(ucx_perftest::Setup::Plain)),
        Box::new(ucx_perftest::UcxPerftest::new(ucx_perftest::Setup::AsMfio)),
        Box::new(mfio_ucx::MfioUcx::new(mfio_ucx::Waiting::Spin(None))),
        Box::new(mfio_ucx::MfioUcxProcesses),
        Box::new(ucx_perftest::UcxPerftest::new(ucx_perftest::Setup::Asleep)),
        Box::new(mfio_ucx::MfioUcx::new(mfio_ucx::Waiting::Sleep)),
        Box::new(mfio::Mfio::new(mfio_backends::BackendKind::Uring)),
    ];
    for &us in &args.spin_us {
        let spin = Some(Duration::from_micros(us));
        all.push(Box::new(mfio_ucx::MfioUcx::new(mfio_ucx::Waiting::Spin(spin))));
    }
    keep_only(all, &args.only)
}

impl Titled for UcxJob {
    fn title(&self) -> &str {
        &self.title
    }

    fn latency(&self) -> &'static str {
        match self.pattern {
            Pattern::PingPong => "ops: one-way messages; latency: one way (half a round trip)",
            Pattern::TagStream | Pattern::AmStream => "latency: one send, posted to completed",
            Pattern::RemoteRead => "latency: one range, request sent to bytes received",
        }
    }
}

/// Length of the file the remote-read pattern reads ranges of.
pub const REMOTE_FILE_LEN: u64 = 64 << 20;

/// The 8 bytes at `offset` (a multiple of 8) of the remote-read file.
fn word_at(offset: u64) -> u64 {
    (offset / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The remote-read file under the temporary directory, written once
/// (and then page-cached: the pattern measures the network, not the disk).
///
/// # Errors
/// Creating or writing the file.
pub fn remote_file() -> io::Result<PathBuf> {
    static FILE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let made = FILE.get_or_init(|| {
        let path = std::env::temp_dir().join("mfio-bench-remote-read.dat");
        let fresh = std::fs::metadata(&path).is_ok_and(|m| m.len() == REMOTE_FILE_LEN);
        if !fresh {
            let data: Vec<u8> = (0..REMOTE_FILE_LEN / 8)
                .flat_map(|i| word_at(i * 8).to_le_bytes())
                .collect();
            std::fs::write(&path, data).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(path)
    });
    made.clone().map_err(io::Error::other)
}

/// Checks the first and last word of a range read at `offset`.
///
/// # Errors
/// `InvalidData` naming the offset when a word differs.
pub fn check_range(offset: u64, buf: &[u8]) -> io::Result<()> {
    let at = |i: usize| {
        buf.get(i..i + 8)
            .and_then(|w| w.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let last = buf.len().saturating_sub(8) & !7;
    for i in [0, last] {
        if at(i) != Some(word_at(offset + i as u64)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("range at {offset}: wrong bytes at +{i}"),
            ));
        }
    }
    Ok(())
}

/// The client of the remote-read pattern: `job.window` lanes, each
/// fetching one range at a time (`fetch(lane, offset, buffer)`, checked by
/// the caller) until `span` is over; offsets are random ranges of the file.
///
/// # Errors
/// The first failed fetch.
pub async fn read_lanes<F, Fut>(job: &UcxJob, span: Duration, fetch: F) -> io::Result<Sample>
where
    F: Fn(usize, u64, Vec<u8>) -> Fut,
    Fut: Future<Output = (io::Result<()>, Vec<u8>)>,
{
    let positions = RefCell::new(Positions::new(REMOTE_FILE_LEN, job.size, true));
    let bufs: Vec<Vec<u8>> = (0..job.window.max(1)).map(|_| touched(job.size)).collect();
    let start = Instant::now();
    let deadline = start + span;
    let lane = |(lane, mut buf): (usize, Vec<u8>)| {
        let (fetch, positions) = (&fetch, &positions);
        async move {
            let (mut n, mut lat) = (0u64, Vec::new());
            while Instant::now() < deadline {
                let offset = positions.borrow_mut().next_pos();
                let t0 = Instant::now();
                let (res, b) = fetch(lane, offset, buf).await;
                res?;
                if n % LATENCY_EVERY == 0 {
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                (buf, n) = (b, n + 1);
            }
            Ok::<_, io::Error>((n, lat))
        }
    };
    let lanes = join_lanes(job.join, bufs.into_iter().enumerate().map(lane).collect()).await?;
    let mut out = Sample {
        elapsed: start.elapsed(),
        ..Sample::default()
    };
    for res in lanes {
        let (n, lat) = res?;
        out.ops += n;
        out.lat_ns.extend(lat);
    }
    out.bytes = out.ops * job.bytes();
    Ok(out)
}

/// An empty buffer of `len` bytes' capacity whose pages are already in
/// memory, as a long-running peer's buffers would be: the timed loops do
/// not pay for first touches (a 16 MiB receive window is 256 MiB).
pub fn touched(len: usize) -> Vec<u8> {
    let mut buf = vec![1u8; len];
    buf.clear();
    buf
}
