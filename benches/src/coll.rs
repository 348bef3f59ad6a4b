//! Collectives over MPI: mfio's MPI backend (async under `block_on`, and
//! its blocking form) beside the same MPI calls made directly (the blocking
//! call, and the non-blocking call with an `MPI_Test` loop), for allreduce,
//! bcast and allgather, with 2 and 3 ranks.
//!
//! `mfio-bench coll` launches itself under `mpiexec` once per rank count
//! (the hidden `coll-rank` subcommand). Every rank runs every contender in
//! interleaved repetitions; a repetition's time is the slowest rank's, and
//! rank 0 writes the series to a file the parent reports from.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mfio_coll::mpi::{Mpi, MpiComm, Progress, ThreadLevel};
use mfio_coll::{Communicator, ReduceOp};
use mfio_core::IoBackendExt;

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
    /// Repetitions per contender (interleaved).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Bytes moved per rank per repetition and contender (bounds the
    /// calls per repetition: at least 3, at most 2000).
    #[arg(long, default_value_t = 64 << 20)]
    pub rep_bytes: usize,
    /// The thread level mfio asks MPI for.
    #[arg(long, value_enum, default_value = "multiple")]
    pub thread_level: Level,
    /// How long mfio's backend spins on pending requests, in µs.
    #[arg(long, default_value_t = 10_000)]
    pub spin_us: u64,
    /// Let a progress thread of the backend test and spin (the caller
    /// sleeps until woken); needs the Multiple thread level.
    #[arg(long)]
    pub progress_thread: bool,
    /// The launcher.
    #[arg(long, default_value = "mpiexec")]
    pub mpiexec: String,
}

impl Default for CollArgs {
    fn default() -> Self {
        Self {
            ranks: vec![2, 3],
            ops: vec![Op::Allreduce, Op::Bcast, Op::Allgather],
            sizes: vec![8, 1024, 65536, 1 << 20, 16 << 20],
            reps: 5,
            rep_bytes: 64 << 20,
            thread_level: Level::Multiple,
            spin_us: 10_000,
            progress_thread: false,
            mpiexec: "mpiexec".into(),
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
    Ok(all)
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
        "--rep-bytes".into(),
        a.rep_bytes.to_string(),
        "--thread-level".into(),
        level.into(),
        "--spin-us".into(),
        a.spin_us.to_string(),
    ];
    if a.progress_thread {
        out.push("--progress-thread".into());
    }
    out
}

/// The contenders, in the order they run within a repetition.
const CONTENDERS: [&str; 4] = [
    "mfio MPI async (block_on)",
    "mfio MPI blocking",
    "MPI blocking call",
    "MPI non-blocking + test loop",
];

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
    let mut workloads = Vec::new();
    for &op in &a.ops {
        for &bytes in &a.sizes {
            let title = format!(
                "coll {} {}, {size} ranks (Open MPI, {:?}{})",
                op.name(),
                crate::size_label(bytes),
                mpi.thread_level(),
                if a.progress_thread { ", progress thread" } else { "" }
            );
            let calls = (a.rep_bytes / bytes.max(1)).clamp(3, 2000);
            let mut rows: Vec<Series> = CONTENDERS.iter().map(|c| Series::new(&title, c)).collect();
            let mut bufs = Bufs::new(op, bytes, size);
            // One unmeasured round warms every path (and MPI's connections).
            for (i, _) in CONTENDERS.iter().enumerate() {
                bufs.call(i, &mpi, &world, &direct)?;
            }
            for _ in 0..a.reps {
                for (i, row) in rows.iter_mut().enumerate() {
                    direct.barrier();
                    let start = Instant::now();
                    for _ in 0..calls {
                        bufs.call(i, &mpi, &world, &direct)?;
                    }
                    let mine = start.elapsed().as_secs_f64();
                    let slowest = direct.max(mine);
                    row.push(Sample {
                        elapsed: Duration::from_secs_f64(slowest),
                        ops: calls as u64,
                        bytes: (calls * bytes) as u64,
                        lat_ns: Vec::new(),
                        percentiles: Some(((slowest / calls as f64 * 1e9) as u64, None)),
                    });
                }
            }
            bufs.check(rank, size)?;
            workloads.push(rows);
        }
    }
    if rank == 0 {
        let text = serde_json::to_string(&workloads).map_err(|e| e.to_string())?;
        std::fs::write(&args.results, text).map_err(|e| format!("{}: {e}", args.results.display()))?;
    }
    Ok(())
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

    /// One call of contender `i`.
    fn call(&mut self, i: usize, mpi: &Mpi, world: &MpiComm, direct: &Direct) -> Result<(), String> {
        let fail = |e: mfio_core::Error| format!("{}: {e}", CONTENDERS[i]);
        match (self.op, i) {
            (Op::Allreduce, 0 | 1) => {
                let (s, r) = (std::mem::take(&mut self.f_send), std::mem::take(&mut self.f_recv));
                let out = if i == 0 {
                    mpi.block_on(world.allreduce(s, r, ReduceOp::Sum))
                } else {
                    world.blocking_allreduce(s, r, ReduceOp::Sum)
                };
                let (res, (s, r)) = out.into_parts();
                (self.f_send, self.f_recv) = (s, r);
                res.map_err(fail)
            }
            (Op::Bcast, 0 | 1) => {
                let b = std::mem::take(&mut self.b_send);
                let out = if i == 0 {
                    mpi.block_on(world.bcast(b, 0))
                } else {
                    world.blocking_bcast(b, 0)
                };
                let (res, b) = out.into_parts();
                self.b_send = b;
                res.map_err(fail)
            }
            (Op::Allgather, 0 | 1) => {
                let (s, r) = (std::mem::take(&mut self.b_send), std::mem::take(&mut self.b_recv));
                let out = if i == 0 {
                    mpi.block_on(world.allgather(s, r))
                } else {
                    world.blocking_allgather(s, r)
                };
                let (res, (s, r)) = out.into_parts();
                (self.b_send, self.b_recv) = (s, r);
                res.map_err(fail)
            }
            (op, _) => {
                let nonblocking = i == 3;
                let done = match op {
                    Op::Allreduce => direct.allreduce_f64(&self.f_send, &mut self.f_recv, nonblocking),
                    Op::Bcast => direct.bcast(&mut self.b_send, nonblocking),
                    Op::Allgather => direct.allgather(&self.b_send, &mut self.b_recv, nonblocking),
                };
                done.map_err(|code| format!("{}: MPI error {code}", CONTENDERS[i]))
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
