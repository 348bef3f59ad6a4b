//! Collectives over MPI: mfio's MPI backend (async under `block_on`, and
//! its blocking form) beside the same MPI calls made directly (the blocking
//! call, and the non-blocking call with an `MPI_Test` loop), and mfio's own
//! algorithms over transports (TCP, UCX, MPI point-to-point): the adaptive
//! communicator and each algorithm on its own; for allreduce, bcast and
//! allgather, with 2 and 3 ranks. `--tune FILE` writes the tuning table
//! the measured medians make (the fastest algorithm per collective, rank
//! count and size, over `--tune-transport`), which `MFIO_COLL_TUNING` hands
//! to the adaptive communicator.
//!
//! `mfio-bench coll` launches itself under `mpiexec` once per rank count
//! (the hidden `coll-rank` subcommand). Every rank runs every contender in
//! interleaved repetitions; a repetition's time is the slowest rank's, and
//! rank 0 writes the series to a file the parent reports from.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mfio_backends::Runtime;
use mfio_coll::algo::tuning::{Algorithm, Collective, Rule};
use mfio_coll::algo::{TransportComm, Tuning};
use mfio_coll::mpi::{tcp_transport, ucx_transport, Mpi, MpiComm, MpiTransport, Progress, ThreadLevel};
use mfio_coll::transport::tcp::Liveness;
use mfio_coll::{Communicator, ReduceOp};
use mfio_net::ucx::Worker;

use crate::contenders::mpi_direct::Direct;
use crate::measure::Sample;
use crate::report::Series;

/// The collectives measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// Sum of `f64` vectors, result on every rank.
    Allreduce,
    /// Bytes from rank 0 to every rank.
    Bcast,
    /// Every rank's bytes to every rank.
    Allgather,
}

impl Op {
    /// The collective a tuning table knows it as.
    fn collective(self) -> Collective {
        match self {
            Op::Allreduce => Collective::Allreduce,
            Op::Bcast => Collective::Bcast,
            Op::Allgather => Collective::Allgather,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Allreduce => "allreduce",
            Op::Bcast => "bcast",
            Op::Allgather => "allgather",
        }
    }
}

/// Settings of `coll`.
#[derive(Debug, Clone, clap::Args)]
pub struct CollArgs {
    /// Rank counts, one `mpiexec` job each.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    pub ranks: Vec<usize>,
    /// Collectives.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "allreduce,bcast,allgather")]
    pub ops: Vec<Op>,
    /// Bytes per rank (allreduce: the vector; bcast: the message;
    /// allgather: each rank's part).
    #[arg(long, value_delimiter = ',', default_value = "8,1024,65536,1048576,16777216")]
    pub sizes: Vec<usize>,
    /// Repetitions per contender (interleaved): the least; see `--row-ms`.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// The least a workload lasts, in ms: after `--reps` repetitions, more
    /// run (at most `--max-reps`) until it has, on the slowest rank. A short
    /// collective's repetitions scatter by ±40 % pair to pair (its calls
    /// last under a microsecond, and which rank runs ahead of which is
    /// chaotic), so 15 of them do not pin a 5 % difference; they are cheap,
    /// and more of them do.
    #[arg(long, default_value_t = 10_000)]
    pub row_ms: u64,
    /// The most repetitions `--row-ms` adds up to.
    #[arg(long, default_value_t = 61)]
    pub max_reps: usize,
    /// Bytes moved per rank per repetition and contender (bounds the
    /// calls per repetition: at least 3, at most 2000, and more where
    /// `--rep-ms` asks for them).
    #[arg(long, default_value_t = 64 << 20)]
    pub rep_bytes: usize,
    /// The least a repetition lasts, in ms: a contender whose calls of
    /// `--rep-bytes` take less (as its first warm-up shows on the slowest
    /// rank) makes more, at most 100 000. 2000 calls of an 8-byte
    /// collective last ~1.5 ms, within which one time slice taken by
    /// another process moves a repetition by 10 % or more.
    #[arg(long, default_value_t = 20)]
    pub rep_ms: u64,
    /// The thread level mfio asks MPI for.
    #[arg(long, value_enum, default_value = "multiple")]
    pub thread_level: Level,
    /// How long mfio's MPI backend and UCX worker spin on pending
    /// operations before they sleep, in µs.
    #[arg(long, default_value_t = 10_000)]
    pub spin_us: u64,
    /// Let a progress thread of the backend test and spin (the caller
    /// sleeps until woken); needs the Multiple thread level.
    #[arg(long)]
    pub progress_thread: bool,
    /// The launcher.
    #[arg(long, default_value = "mpiexec")]
    pub mpiexec: String,
    /// Transports mfio's own algorithms run over.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tcp,ucx,mpi")]
    pub transports: Vec<Kind>,
    /// Only the adaptive communicator over each transport, not each
    /// algorithm on its own.
    #[arg(long)]
    pub only_adaptive: bool,
    /// A control: MPI's non-blocking call + test loop a second time, as a
    /// contender of its own. Its ratio to the first is 1 but for the
    /// machine, so it shows how far a run's ratios move by chance.
    #[arg(long)]
    pub control: bool,
    /// Writes the tuning table the medians make to this file.
    #[arg(long)]
    pub tune: Option<PathBuf>,
    /// The transport whose algorithms' medians make the table.
    #[arg(long, value_enum, default_value = "ucx")]
    pub tune_transport: Kind,
}

/// The transports mfio's algorithms run over here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// TCP over loopback (addresses exchanged by MPI_Allgather).
    Tcp,
    /// MPI point-to-point on the MPI backend.
    Mpi,
    /// UCX tag messages on mfio-net (worker addresses exchanged by
    /// MPI_Allgather; the wire UCX picks, `UCX_TLS`).
    Ucx,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Tcp => "TCP",
            Kind::Mpi => "MPI p2p",
            Kind::Ucx => "UCX",
        }
    }
}

impl Default for CollArgs {
    fn default() -> Self {
        Self {
            ranks: vec![2, 3],
            ops: vec![Op::Allreduce, Op::Bcast, Op::Allgather],
            sizes: vec![8, 1024, 65536, 1 << 20, 16 << 20],
            reps: 5,
            row_ms: 10_000,
            max_reps: 61,
            rep_bytes: 64 << 20,
            rep_ms: 20,
            thread_level: Level::Multiple,
            spin_us: 10_000,
            progress_thread: false,
            mpiexec: "mpiexec".into(),
            transports: vec![Kind::Tcp, Kind::Ucx, Kind::Mpi],
            only_adaptive: false,
            control: false,
            tune: None,
            tune_transport: Kind::Ucx,
        }
    }
}

/// [`ThreadLevel`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    /// `MPI_THREAD_FUNNELED`.
    Funneled,
    /// `MPI_THREAD_MULTIPLE`.
    Multiple,
}

/// Settings of the hidden `coll-rank`: one rank of one `coll` job.
#[derive(Debug, Clone, clap::Args)]
pub struct RankArgs {
    #[command(flatten)]
    coll: CollArgs,
    /// Where rank 0 writes the series (JSON).
    #[arg(long)]
    results: PathBuf,
}

/// Runs `coll`: one `mpiexec` job per rank count; returns the series of
/// each workload, or why a job failed.
pub fn run(args: &CollArgs) -> Result<Vec<Vec<Series>>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    if let Some(path) = &args.tune {
        writable(path)?;
    }
    let mut all = Vec::new();
    for &ranks in &args.ranks {
        let results = std::env::temp_dir().join(format!("mfio-bench-coll-{}-{ranks}.json", std::process::id()));
        let mut cmd = Command::new(&args.mpiexec);
        cmd.arg("-n").arg(ranks.to_string()).arg(&exe).arg("coll-rank");
        cmd.args(rank_args(args)).arg("--results").arg(&results);
        // What scripts/mpirun sets: more ranks than cores, and root.
        cmd.env("OMPI_MCA_rmaps_base_oversubscribe", "1");
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        }
        let status = cmd.status().map_err(|e| format!("{}: {e}", args.mpiexec))?;
        if !status.success() {
            return Err(format!("{} -n {ranks} mfio-bench coll-rank: {status}", args.mpiexec));
        }
        let text = std::fs::read_to_string(&results).map_err(|e| format!("{}: {e}", results.display()))?;
        let _ = std::fs::remove_file(&results);
        let mut series: Vec<Vec<Series>> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", results.display()))?;
        all.append(&mut series);
    }
    if let Some(path) = &args.tune {
        let table = tuning_from(args, &all)?;
        let text = format!(
            "# mfio-coll tuning table, measured by `mfio-bench coll --tune` over {} \
             ({} ranks, {} to {} bytes)\n# the fastest algorithm per collective, rank count and size (median ops/s)\n{table}",
            args.tune_transport.label(),
            args.ranks.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            args.sizes.iter().min().copied().unwrap_or(0),
            args.sizes.iter().max().copied().unwrap_or(0),
        );
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!(
            "tuning table written to {} (set MFIO_COLL_TUNING to use it):\n{table}",
            path.display()
        );
    }
    Ok(all)
}

/// Makes `path`'s directory and checks the file can be written, so that a
/// bad `--tune` path fails before the measuring, not after minutes of it.
fn writable(path: &std::path::Path) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The table the medians make: for each collective, rank count (ascending;
/// the largest covers any count) and size (ascending; the largest covers
/// any size), the algorithm over the tuning transport with the most
/// operations per second. Sizes in a row with the same winner share a
/// rule.
fn tuning_from(args: &CollArgs, all: &[Vec<Series>]) -> Result<Tuning, String> {
    let prefix = format!("{}: ", args.tune_transport.label());
    let mut ranks = args.ranks.clone();
    ranks.sort_unstable();
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    // The workloads come in job order: rank counts as given, then each op,
    // then each size as given.
    let at = |r: usize, op: Op, bytes: usize| -> Option<&Vec<Series>> {
        let job = args.ranks.iter().position(|&x| x == r)?;
        let o = args.ops.iter().position(|&x| x == op)?;
        let s = args.sizes.iter().position(|&x| x == bytes)?;
        all.get((job * args.ops.len() + o) * args.sizes.len() + s)
    };
    let mut rules = Vec::new();
    for &op in &args.ops {
        for (ri, &r) in ranks.iter().enumerate() {
            let mut row: Vec<(usize, Algorithm)> = Vec::new();
            for &bytes in &sizes {
                let Some(workload) = at(r, op, bytes) else { continue };
                let best = workload
                    .iter()
                    .filter_map(|s| {
                        Some((
                            s.contender.strip_prefix(&prefix)?.parse::<Algorithm>().ok()?,
                            s.median_ops(),
                        ))
                    })
                    .filter(|(_, ops)| ops.is_finite() && *ops > 0.0)
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                let Some((algo, _)) = best else {
                    return Err(format!(
                        "--tune: no algorithm over {} measured for {} at {bytes} bytes, {r} ranks",
                        args.tune_transport.label(),
                        op.name()
                    ));
                };
                match row.last_mut() {
                    Some(last) if last.1 == algo => last.0 = bytes,
                    _ => row.push((bytes, algo)),
                }
            }
            let last_rank = ri + 1 == ranks.len();
            let n = row.len();
            for (i, (bytes, algo)) in row.into_iter().enumerate() {
                rules.push(Rule {
                    collective: op.collective(),
                    max_ranks: (!last_rank).then_some(r),
                    max_bytes: (i + 1 < n).then_some(bytes as u64),
                    algorithm: algo,
                });
            }
        }
    }
    Tuning::new(rules).map_err(|e| format!("--tune: {e}"))
}

fn rank_args(a: &CollArgs) -> Vec<String> {
    let list = |v: &[usize]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let ops = a.ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(",");
    let level = match a.thread_level {
        Level::Funneled => "funneled",
        Level::Multiple => "multiple",
    };
    let mut out = vec![
        "--ops".into(),
        ops,
        "--sizes".into(),
        list(&a.sizes),
        "--reps".into(),
        a.reps.to_string(),
        "--row-ms".into(),
        a.row_ms.to_string(),
        "--max-reps".into(),
        a.max_reps.to_string(),
        "--rep-bytes".into(),
        a.rep_bytes.to_string(),
        "--rep-ms".into(),
        a.rep_ms.to_string(),
        "--thread-level".into(),
        level.into(),
        "--spin-us".into(),
        a.spin_us.to_string(),
    ];
    if a.progress_thread {
        out.push("--progress-thread".into());
    }
    let kinds: Vec<&str> = a
        .transports
        .iter()
        .map(|k| match k {
            Kind::Tcp => "tcp",
            Kind::Mpi => "mpi",
            Kind::Ucx => "ucx",
        })
        .collect();
    if !kinds.is_empty() {
        out.push("--transports".into());
        out.push(kinds.join(","));
    }
    if a.only_adaptive {
        out.push("--only-adaptive".into());
    }
    if a.control {
        out.push("--control".into());
    }
    out
}

/// Who runs a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// mfio's MPI backend, async under `block_on`.
    MfioAsync,
    /// mfio's MPI backend, blocking form.
    MfioBlocking,
    /// The blocking MPI call, made directly.
    MpiBlocking,
    /// The non-blocking MPI call and an `MPI_Test` loop, made directly.
    MpiNonblocking,
    /// The same again (`--control`).
    MpiNonblockingAgain,
    /// mfio's adaptive communicator over a transport.
    Adaptive(Kind),
    /// One of mfio's algorithms over a transport.
    Fixed(Kind, Algorithm),
}

impl Who {
    fn name(self) -> String {
        match self {
            Who::MfioAsync => "mfio MPI async (block_on)".into(),
            Who::MfioBlocking => "mfio MPI blocking".into(),
            Who::MpiBlocking => "MPI blocking call".into(),
            Who::MpiNonblocking => "MPI non-blocking + test loop".into(),
            Who::MpiNonblockingAgain => "MPI non-blocking + test loop (again)".into(),
            Who::Adaptive(k) => format!("mfio adaptive over {}", k.label()),
            Who::Fixed(k, a) => format!("{}: {}", k.label(), a.name()),
        }
    }
}

/// The contenders of `op` over `size` ranks, in the order they run within
/// a repetition (the same on every rank).
fn contenders(a: &CollArgs, op: Op, size: usize) -> Vec<Who> {
    let mut out = vec![Who::MfioAsync, Who::MfioBlocking, Who::MpiBlocking, Who::MpiNonblocking];
    if a.control {
        out.push(Who::MpiNonblockingAgain);
    }
    for &k in &a.transports {
        out.push(Who::Adaptive(k));
        if a.only_adaptive {
            continue;
        }
        for algo in Algorithm::for_collective(op.collective()) {
            // Recursive-doubling allgather needs a power of two.
            if op == Op::Allgather && algo == Algorithm::RecursiveDoubling && !size.is_power_of_two() {
                continue;
            }
            out.push(Who::Fixed(k, algo));
        }
    }
    out
}

/// mfio's communicators over one transport: the adaptive one and one per
/// algorithm (each a duplicate told to use only it).
struct OverTransport<B> {
    adaptive: TransportComm<B>,
    fixed: Vec<((Collective, Algorithm), TransportComm<B>)>,
}

impl<B: mfio_core::IoBackend + Clone + Send + Sync + 'static> OverTransport<B> {
    fn new(base: TransportComm<B>, a: &CollArgs, adaptive: &Tuning) -> Result<Self, String> {
        let dup = |c: &TransportComm<B>| c.dup().map_err(|e| format!("dup: {e}"));
        let mut fixed = Vec::new();
        if !a.only_adaptive {
            for op in &a.ops {
                let c = op.collective();
                for algo in Algorithm::for_collective(c) {
                    let only = Tuning::new(vec![Rule {
                        collective: c,
                        max_ranks: None,
                        max_bytes: None,
                        algorithm: algo,
                    }])
                    .map_err(|e| e.to_string())?;
                    fixed.push(((c, algo), dup(&base)?.with_tuning(only)));
                }
            }
        }
        Ok(Self {
            adaptive: dup(&base)?.with_tuning(adaptive.clone()),
            fixed,
        })
    }

    fn get(&self, who: Who, op: Op) -> Option<&TransportComm<B>> {
        match who {
            Who::Adaptive(_) => Some(&self.adaptive),
            Who::Fixed(_, algo) => self
                .fixed
                .iter()
                .find(|((c, a), _)| *c == op.collective() && *a == algo)
                .map(|(_, comm)| comm),
            _ => None,
        }
    }
}

/// Everything a rank runs its calls with. Dropped in field order: the
/// direct calls' communicator is freed while mfio still holds MPI open.
struct Ctx {
    direct: Direct,
    tcp: Option<OverTransport<Runtime>>,
    ucx: Option<OverTransport<Worker>>,
    p2p: Option<OverTransport<Mpi>>,
    world: MpiComm,
    mpi: Mpi,
}

/// How long a UCX worker's spin waits before it yields where each rank has
/// a core (`WorkerBuilder::yield_after`).
const YIELD_AFTER_WITH_A_CORE_EACH: Duration = Duration::from_micros(20);

/// Whether this host runs more ranks of the job (`size` in all) than it
/// has cores: Open MPI says how many ranks share the host
/// (`OMPI_COMM_WORLD_LOCAL_SIZE`); else all of them are taken to. The
/// host's cores, not this process's: `mpiexec` binds each of 2 ranks to a
/// core of its own, where this process may use only one.
fn ranks_share_cores(size: usize) -> bool {
    let local = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(size);
    // SAFETY: a query with no pointers.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cores = usize::try_from(online)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    local > cores
}

/// One rank of a `coll` job.
pub fn rank(args: &RankArgs) -> Result<(), String> {
    let a = &args.coll;
    let level = match a.thread_level {
        Level::Funneled => ThreadLevel::Funneled,
        Level::Multiple => ThreadLevel::Multiple,
    };
    let progress = Progress {
        spin: Duration::from_micros(a.spin_us),
        thread: a.progress_thread,
        ..Progress::default()
    };
    let mpi = Mpi::builder()
        .thread_level(level)
        .progress(progress)
        .build()
        .map_err(|e| format!("MPI: {e}"))?;
    let world = mpi.world().map_err(|e| format!("world: {e}"))?;
    let direct = Direct::new().map_err(|e| format!("direct MPI: {e}"))?;
    let (rank, size) = (world.rank(), world.size());
    let adaptive = Tuning::from_env().map_err(|e| e.to_string())?;
    let tcp = if a.transports.contains(&Kind::Tcp) {
        let rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let t = tcp_transport(&world, &rt, loopback, Liveness::default(), Duration::from_secs(60))
            .map_err(|e| format!("TCP transport: {e}"))?;
        Some(OverTransport::new(TransportComm::new(rt, t), a, &adaptive)?)
    } else {
        None
    };
    let ucx = if a.transports.contains(&Kind::Ucx) {
        // The same bounded spin before sleeping as the MPI backend's. It
        // gives the core away at once where ranks share cores, and only
        // after a while where each has one: then only a peer kept off its
        // core by other work makes a wait that long.
        let yield_after = if ranks_share_cores(size) {
            Duration::ZERO
        } else {
            YIELD_AFTER_WITH_A_CORE_EACH
        };
        let worker = mfio_net::ucx::Context::new()
            .and_then(|c| {
                mfio_net::ucx::Worker::builder(&c)
                    .spin(Duration::from_micros(a.spin_us))
                    .yield_after(yield_after)
                    .build()
            })
            .map_err(|e| format!("UCX worker: {e}"))?;
        let t = ucx_transport(&world, &worker).map_err(|e| format!("UCX transport: {e}"))?;
        Some(OverTransport::new(TransportComm::new(worker, t), a, &adaptive)?)
    } else {
        None
    };
    let p2p = if a.transports.contains(&Kind::Mpi) {
        let t = MpiTransport::new(&world).map_err(|e| format!("MPI transport: {e}"))?;
        Some(OverTransport::new(TransportComm::new(mpi.clone(), t), a, &adaptive)?)
    } else {
        None
    };
    let cx = Ctx {
        mpi,
        world,
        direct,
        tcp,
        ucx,
        p2p,
    };
    let mut workloads = Vec::new();
    for &op in &a.ops {
        let who = contenders(a, op, size);
        for &bytes in &a.sizes {
            let title = format!(
                "coll {} {}, {size} ranks (Open MPI, {:?}{})",
                op.name(),
                crate::size_label(bytes),
                cx.mpi.thread_level(),
                if a.progress_thread { ", progress thread" } else { "" }
            );
            let mut calls = vec![(a.rep_bytes / bytes.max(1)).clamp(3, 2000); who.len()];
            let mut rows: Vec<Series> = who.iter().map(|w| Series::new(&title, &w.name())).collect();
            let mut bufs = Bufs::new(op, bytes, size);
            // An unmeasured repetition just before each contender's
            // measured one: on this machine kind, the first ~25 ms of
            // copying after other work (another transport's calls, or a
            // pause) run up to twice as slow (the hypervisor's and DAMON's
            // memory management; MPI's own calls too), and the contender
            // that followed the TCP ones paid for it in every repetition.
            // And each repetition runs the contenders in an order of its
            // own (the same on every rank), so none always follows the same
            // one.
            let placed = placement(&cx.direct, size);
            let row = Instant::now();
            let mut rep = 0;
            while more_reps(a, rep, || cx.direct.max(row.elapsed().as_secs_f64())) {
                for i in shuffled(who.len(), rep as u64) {
                    let w = who[i];
                    let warm = Instant::now();
                    for _ in 0..calls[i] {
                        bufs.call(w, &cx)?;
                    }
                    if rep == 0 {
                        // The slowest rank's first warm-up sets the calls
                        // of every repetition, alike on every rank.
                        let took = cx.direct.max(warm.elapsed().as_secs_f64());
                        calls[i] = calls_filling(calls[i], took, a.rep_ms);
                    }
                    let n = calls[i];
                    cx.direct.barrier();
                    let start = Instant::now();
                    for _ in 0..n {
                        bufs.call(w, &cx)?;
                    }
                    let mine = start.elapsed().as_secs_f64();
                    let slowest = cx.direct.max(mine);
                    rows[i].push(Sample {
                        elapsed: Duration::from_secs_f64(slowest),
                        ops: n as u64,
                        bytes: (n * bytes) as u64,
                        lat_ns: Vec::new(),
                        percentiles: Some(((slowest / n as f64 * 1e9) as u64, None)),
                    });
                }
                rep += 1;
            }
            bufs.check(rank, size)?;
            let placed = match (placed, placement(&cx.direct, size)) {
                (Some(at_start), Some(at_end)) if at_start == at_end => Some(format!("ranks by core: {at_start}")),
                (Some(at_start), Some(at_end)) => {
                    Some(format!("ranks by core: {at_start} at the start, {at_end} at the end"))
                }
                _ => None,
            };
            for r in &mut rows {
                r.placement.clone_from(&placed);
            }
            workloads.push(rows);
        }
    }
    if rank == 0 {
        let text = serde_json::to_string(&workloads).map_err(|e| e.to_string())?;
        std::fs::write(&args.results, text).map_err(|e| format!("{}: {e}", args.results.display()))?;
    }
    Ok(())
}

/// Which ranks run on one core now, where ranks share cores: then which
/// ranks share one decides a row's figures (3 ranks on 2 cores: a bcast's
/// root alone on its core, or beside one of its readers; a loop of calls
/// pinned either way, BENCHMARKS.md), so each row says it at its start and
/// at its end (the kernel moves processes between and during rows).
/// Groups of ranks by core, each group in rank
/// order and the groups by their first rank ("0 | 1 2": rank 0 alone,
/// ranks 1 and 2 on one core); which core is which does not matter. `None`
/// where each rank has a core, or the kernel does not say.
fn placement(direct: &Direct, size: usize) -> Option<String> {
    if !ranks_share_cores(size) {
        return None;
    }
    // SAFETY: no arguments; it reads the calling thread's current core.
    let cpu = unsafe { libc::sched_getcpu() };
    // 255 stands for a core it cannot name (none, or past 254).
    let mine = u8::try_from(cpu).unwrap_or(u8::MAX);
    let mut cores = vec![0u8; size];
    direct.allgather(&[mine], &mut cores, false).ok()?;
    if cores.contains(&u8::MAX) {
        return None;
    }
    Some(ranks_by_core(&cores))
}

/// Ranks grouped by the core each is on (`cores[rank]`), as [`placement`]
/// writes them.
fn ranks_by_core(cores: &[u8]) -> String {
    let mut groups: Vec<(u8, Vec<usize>)> = Vec::new();
    for (rank, &core) in cores.iter().enumerate() {
        match groups.iter_mut().find(|g| g.0 == core) {
            Some(g) => g.1.push(rank),
            None => groups.push((core, vec![rank])),
        }
    }
    let words: Vec<String> = groups
        .iter()
        .map(|g| g.1.iter().map(usize::to_string).collect::<Vec<_>>().join(" "))
        .collect();
    words.join(" | ")
}

/// The calls a repetition makes so that it lasts at least `rep_ms`, where
/// `calls` of them took `took` seconds: never fewer than `calls`, at most
/// 100 000.
fn calls_filling(calls: usize, took: f64, rep_ms: u64) -> usize {
    const MOST: usize = 100_000;
    let want = rep_ms as f64 / 1000.0;
    if took >= want || calls >= MOST {
        return calls;
    }
    if took <= 0.0 {
        return MOST;
    }
    let scaled = (calls as f64 * want / took).ceil();
    if scaled >= MOST as f64 {
        MOST
    } else {
        (scaled as usize).max(calls)
    }
}

/// Whether a workload that made `done` repetitions makes another: up to
/// `--reps`, then while it has lasted less than `--row-ms` (`slowest` gives
/// the seconds so far on the slowest rank; a collective, so it is asked
/// alike on every rank), up to `--max-reps`.
fn more_reps(a: &CollArgs, done: usize, slowest: impl FnOnce() -> f64) -> bool {
    if done < a.reps {
        return true;
    }
    done > 0 && done < a.max_reps && slowest() * 1000.0 < a.row_ms as f64
}

/// `0..n` in an order given by `seed` (Fisher–Yates over splitmix64): the
/// same on every rank for the same seed.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The buffers of one workload, reused by every call.
struct Bufs {
    op: Op,
    f_send: Vec<f64>,
    f_recv: Vec<f64>,
    b_send: Vec<u8>,
    b_recv: Vec<u8>,
}

impl Bufs {
    fn new(op: Op, bytes: usize, size: usize) -> Self {
        let n = (bytes / 8).max(1);
        Self {
            op,
            f_send: vec![1.0; if op == Op::Allreduce { n } else { 0 }],
            f_recv: vec![0.0; if op == Op::Allreduce { n } else { 0 }],
            b_send: vec![7; if op == Op::Allreduce { 0 } else { bytes }],
            b_recv: vec![0; if op == Op::Allgather { bytes * size } else { 0 }],
        }
    }

    /// One call of `who`.
    fn call(&mut self, who: Who, cx: &Ctx) -> Result<(), String> {
        let fail = |e: mfio_core::Error| format!("{}: {e}", who.name());
        match who {
            Who::MfioAsync | Who::MfioBlocking => self.on(&cx.world, who == Who::MfioBlocking).map_err(fail),
            Who::MpiBlocking | Who::MpiNonblocking | Who::MpiNonblockingAgain => {
                let nonblocking = who != Who::MpiBlocking;
                let done = match self.op {
                    Op::Allreduce => cx.direct.allreduce_f64(&self.f_send, &mut self.f_recv, nonblocking),
                    Op::Bcast => cx.direct.bcast(&mut self.b_send, nonblocking),
                    Op::Allgather => cx.direct.allgather(&self.b_send, &mut self.b_recv, nonblocking),
                };
                done.map_err(|code| format!("{}: MPI error {code}", who.name()))
            }
            Who::Adaptive(Kind::Tcp) | Who::Fixed(Kind::Tcp, _) => {
                let comm = cx.tcp.as_ref().and_then(|t| t.get(who, self.op));
                let comm = comm.ok_or_else(|| format!("{}: not set up", who.name()))?;
                self.on(comm, false).map_err(fail)
            }
            Who::Adaptive(Kind::Ucx) | Who::Fixed(Kind::Ucx, _) => {
                let comm = cx.ucx.as_ref().and_then(|t| t.get(who, self.op));
                let comm = comm.ok_or_else(|| format!("{}: not set up", who.name()))?;
                self.on(comm, false).map_err(fail)
            }
            Who::Adaptive(Kind::Mpi) | Who::Fixed(Kind::Mpi, _) => {
                let comm = cx.p2p.as_ref().and_then(|t| t.get(who, self.op));
                let comm = comm.ok_or_else(|| format!("{}: not set up", who.name()))?;
                self.on(comm, false).map_err(fail)
            }
        }
    }

    /// One collective on `comm`, async (waited for through its backend) or
    /// in its blocking form.
    fn on<C: Communicator>(&mut self, comm: &C, blocking: bool) -> mfio_core::Result<()> {
        match self.op {
            Op::Allreduce => {
                let (s, r) = (std::mem::take(&mut self.f_send), std::mem::take(&mut self.f_recv));
                let out = if blocking {
                    comm.blocking_allreduce(s, r, ReduceOp::Sum)
                } else {
                    comm.wait(comm.allreduce(s, r, ReduceOp::Sum))
                };
                let (res, (s, r)) = out.into_parts();
                (self.f_send, self.f_recv) = (s, r);
                res
            }
            Op::Bcast => {
                let b = std::mem::take(&mut self.b_send);
                let out = if blocking {
                    comm.blocking_bcast(b, 0)
                } else {
                    comm.wait(comm.bcast(b, 0))
                };
                let (res, b) = out.into_parts();
                self.b_send = b;
                res
            }
            Op::Allgather => {
                let (s, r) = (std::mem::take(&mut self.b_send), std::mem::take(&mut self.b_recv));
                let out = if blocking {
                    comm.blocking_allgather(s, r)
                } else {
                    comm.wait(comm.allgather(s, r))
                };
                let (res, (s, r)) = out.into_parts();
                (self.b_send, self.b_recv) = (s, r);
                res
            }
        }
    }

    /// The buffers hold what the collectives must have left in them.
    fn check(&self, rank: usize, size: usize) -> Result<(), String> {
        let ok = match self.op {
            Op::Allreduce => self.f_recv.iter().all(|&x| x == size as f64),
            Op::Bcast => self.b_send.iter().all(|&x| x == 7),
            Op::Allgather => self.b_recv.iter().all(|&x| x == 7),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("rank {rank}: {} left wrong results", self.op.name()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{calls_filling, more_reps, rank_args, ranks_by_core, writable, CollArgs};
    use clap::Parser;

    #[derive(Parser)]
    struct Rank {
        #[command(flatten)]
        coll: CollArgs,
    }

    #[test]
    fn a_rank_gets_every_setting_of_the_run() {
        let a = CollArgs {
            reps: 7,
            row_ms: 1234,
            max_reps: 9,
            rep_ms: 3,
            rep_bytes: 4096,
            spin_us: 11,
            only_adaptive: true,
            control: true,
            sizes: vec![8, 16],
            ..CollArgs::default()
        };
        let mut argv = vec!["rank".to_string()];
        argv.extend(rank_args(&a));
        let got = match Rank::try_parse_from(argv) {
            Ok(r) => r.coll,
            Err(e) => panic!("rank arguments do not parse: {e}"),
        };
        assert_eq!(
            (
                got.reps,
                got.row_ms,
                got.max_reps,
                got.rep_ms,
                got.rep_bytes,
                got.spin_us
            ),
            (7, 1234, 9, 3, 4096, 11)
        );
        assert!(got.only_adaptive && got.control);
        assert_eq!(got.sizes, [8, 16]);
        assert_eq!(got.transports, a.transports);
    }

    #[test]
    fn a_tuning_file_s_directory_is_made_before_the_measuring() {
        let root = std::env::temp_dir().join(format!("mfio-bench-tune-{}", std::process::id()));
        let path = root.join("a/b/tuning.txt");
        writable(&path).expect("a new directory");
        assert!(path.is_file(), "the file is there, empty, until the table replaces it");
        std::fs::remove_dir_all(&root).expect("clean up");
        let err = writable(std::path::Path::new("/proc/no/tuning.txt")).expect_err("not writable");
        assert!(err.starts_with("/proc/no"), "names the path: {err}");
    }

    #[test]
    fn ranks_sharing_a_core_are_grouped_whichever_core_it_is() {
        assert_eq!(ranks_by_core(&[0, 1, 1]), "0 | 1 2");
        assert_eq!(
            ranks_by_core(&[1, 0, 0]),
            "0 | 1 2",
            "the same sharing on the other core"
        );
        assert_eq!(ranks_by_core(&[1, 0, 1]), "0 2 | 1");
        assert_eq!(ranks_by_core(&[3, 3, 3, 2]), "0 1 2 | 3");
        assert_eq!(ranks_by_core(&[0]), "0");
    }

    #[test]
    fn a_repetition_fills_its_time_with_calls() {
        // 2000 calls in 1.5 ms: 20 ms needs 26 667 of them.
        assert_eq!(calls_filling(2000, 0.0015, 20), 26_667);
        // Long enough already: unchanged, never fewer.
        assert_eq!(calls_filling(2000, 0.050, 20), 2000);
        assert_eq!(calls_filling(3, 0.020, 20), 3);
        // Bounded, also for a clock that saw no time pass.
        assert_eq!(calls_filling(2000, 0.000_001, 20), 100_000);
        assert_eq!(calls_filling(2000, 0.0, 20), 100_000);
        assert_eq!(calls_filling(150_000, 0.001, 20), 150_000);
    }

    #[test]
    fn a_short_workload_repeats_until_it_has_lasted_its_time() {
        let a = CollArgs {
            reps: 15,
            row_ms: 10_000,
            max_reps: 61,
            ..CollArgs::default()
        };
        let never = || -> f64 { panic!("the time is asked only past --reps") };
        assert!(more_reps(&a, 0, never));
        assert!(more_reps(&a, 14, never));
        // Past --reps: more while under 10 s, none once there.
        assert!(more_reps(&a, 15, || 2.4));
        assert!(!more_reps(&a, 15, || 10.0));
        assert!(more_reps(&a, 60, || 9.9));
        // Never past --max-reps.
        assert!(!more_reps(&a, 61, || 0.5));
        // --row-ms 0 keeps exactly --reps; --reps 0 makes none.
        let exact = CollArgs { row_ms: 0, ..a.clone() };
        assert!(!more_reps(&exact, 15, || 0.0));
        let none = CollArgs { reps: 0, ..a };
        assert!(!more_reps(&none, 0, never));
    }
}
