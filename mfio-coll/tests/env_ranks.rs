//! The transports across processes, bootstrapped from the environment:
//! each process is one rank, its rank and size from the launcher
//! (`mpiexec` sets `OMPI_COMM_WORLD_RANK`/`SIZE`; no MPI is used), rank
//! 0's address from `MFIO_COLL_ROOT`. `MFIO_COLL_TRANSPORT` picks the
//! transport: `tcp` (the default; on io_uring or poll, `MFIO_BACKEND`) or
//! `ucx` (on the UCX transports `UCX_TLS` names, worker addresses
//! exchanged over the bootstrap's connections). `scripts/test` runs it
//! under `scripts/mpirun` with 2, 3 and 4 ranks.
//!
//! Every algorithm at several lengths is checked exactly; then 1 000
//! back-to-back broadcasts from a fast root, 8 concurrent allreduces, two
//! communicators interleaved, and a collective dropped midway (nothing of
//! it may be kept). `MFIO_RANKS_CASE=early-exit`: the last
//! rank leaves right after connecting, and every other rank must fail with
//! an error naming it within the bound (exit status 0 only then).
//! `MFIO_RANKS_CASE=killed`: the last rank is killed (`SIGKILL`, no
//! goodbye) mid-collective, and every other rank must fail with an error
//! naming it within the bound. `MFIO_RANKS_CASE=until-cut`: allreduces
//! until the network fails (`scripts/netns-test` cuts rank
//! `MFIO_RANKS_LOST`'s link); the others must name the lost rank. With
//! `MFIO_RANKS_LOOPING=P`, each rank creates `P.<rank>` once its first
//! allreduce has finished, so the cutter knows the loop has begun.
//! `MFIO_TCP_TIMEOUT_MS` sets the TCP transport's liveness timeout;
//! `UCX_KEEPALIVE_INTERVAL` UCX's (1 s unless set). Over UCX, long
//! messages must have been read in place where `UCX_TLS` allows `cma`,
//! unless `MFIO_RANKS_APART` says the ranks are on hosts of their own,
//! and some copied in halves (every rank asks and helps always), but none
//! on 2 ranks with `MFIO_RANKS_SPLIT=decline` (rank 0 neither asks nor
//! helps, so rank 1 reads what it asked for itself).
//!
//! Run alone (no launcher variables) it is one rank.

mod driver;
mod every_algorithm;

use std::time::{Duration, Instant};

use driver::Driver;
use every_algorithm::{
    drop_mid_flight, every_algorithm, input, nothing_kept, receivers_rest_after_a_collective, under_load, Seq,
};
use mfio_backends::Runtime;
use mfio_coll::algo;
use mfio_coll::transport::bootstrap::{Bootstrap, ROOT_VAR};
use mfio_coll::transport::tcp::{Liveness, TcpTransport};
use mfio_coll::transport::ucx::{SplitCopy, UcxTransport};
use mfio_coll::transport::{CollId, Transport};
use mfio_coll::ReduceOp;
use mfio_core::IoBackendExt;

/// How long the whole run may take before the rank gives up.
const LIMIT: Duration = Duration::from_secs(120);

impl Driver {
    fn name(&self) -> String {
        match self {
            Driver::Rt(rt) => format!("TCP on {:?}", rt.kind()),
            Driver::Ucx(_) => format!(
                "UCX ({})",
                std::env::var("UCX_TLS").unwrap_or_else(|_| "UCX_TLS unset".into())
            ),
        }
    }
}

fn run(rt: &Driver, t: &dyn Transport) -> Result<(), String> {
    let mut seq = Seq::new(1);
    // 4 096 and 4 097 elements: messages of 16 KiB, the most a UCX frame
    // carries, and 4 bytes more.
    for len in [0, 1, 1000, 4_096, 4_097, 100_003] {
        rt.block_on(every_algorithm(t, &mut seq, len))
            .map_err(|e| format!("every algorithm, len {len}: {e}"))?;
    }
    under_load(rt, t)?;
    drop_mid_flight(rt, t, 6)?;
    receivers_rest_after_a_collective(rt, t, 7)?;
    rt.block_on(algo::barrier_dissemination(t, CollId { comm: 5, seq: 1 }))
        .map_err(|e| format!("final barrier: {e}"))?;
    nothing_kept(t)
}

/// The last rank leaves; the others must hear of it, by name, in time.
fn early_exit(rt: &Driver, t: Box<dyn Transport>) -> Result<(), String> {
    let (rank, size) = (t.rank(), t.size());
    if size < 2 {
        return Ok(());
    }
    if rank == size - 1 {
        drop(t);
        std::process::exit(0);
    }
    let start = Instant::now();
    let lost = size - 1;
    // A receive from the rank that left names it.
    let key = CollId { comm: 9, seq: 0 }.key(0, 0);
    match rt.block_on(t.recv(lost, key, 8)) {
        Err(e) if e.to_string().contains(&format!("rank {lost}")) => {}
        other => return Err(format!("a receive from the departed rank {lost} gave {other:?}")),
    }
    // A collective with it fails too, naming it on every rank (a rank that
    // gives up because of it tells the others why). Rank 0 comes to it
    // late, when the others have given up and left: what fails first
    // there, the send to a rank that left, still names the lost rank.
    if rank == 0 {
        std::thread::sleep(Duration::from_millis(1500));
    }
    let mut buf = vec![1u32; 1000];
    let res = rt.block_on(algo::allreduce_ring(
        &*t,
        CollId { comm: 9, seq: 1 },
        &mut buf,
        &ReduceOp::Sum,
    ));
    match res {
        Err(e) if e.to_string().contains(&format!("rank {lost}")) => {
            eprintln!("rank {rank}: as expected after {:?}: {e}", start.elapsed());
        }
        other => return Err(format!("an allreduce without rank {lost} gave {other:?}")),
    }
    if start.elapsed() > Duration::from_secs(30) {
        return Err(format!("noticed only after {:?}", start.elapsed()));
    }
    Ok(())
}

/// Collectives until the network fails: every rank runs allreduces until
/// one fails (the test cuts rank `MFIO_RANKS_LOST`'s link meanwhile, or,
/// with `kill_after`, that rank kills itself after so many). The others
/// must name the lost rank; then each keeps its connections open a moment,
/// so that no rank's error is about another's exit.
fn until_cut(rt: &Driver, t: &dyn Transport, kill_after: Option<u32>) -> Result<(), String> {
    let rank = t.rank();
    let lost: usize = std::env::var("MFIO_RANKS_LOST")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("MFIO_RANKS_LOST names no rank")?;
    let start = Instant::now();
    let mut seq = 0u32;
    let err = loop {
        if rank == lost && kill_after == Some(seq) {
            // SAFETY: kill(2) on this process; nothing runs after it.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        let mut buf = input(rank, 1000, seq);
        let res = rt.block_on(algo::allreduce_ring(
            t,
            CollId { comm: 10, seq },
            &mut buf,
            &ReduceOp::Sum,
        ));
        if let Err(e) = res {
            break e;
        }
        if seq == 0 {
            announce_looping(rank)?;
        }
        seq += 1;
    };
    eprintln!("rank {rank}: after {seq} allreduces and {:?}: {err}", start.elapsed());
    std::thread::sleep(Duration::from_secs(3));
    if rank == lost || err.to_string().contains(&format!("rank {lost}")) {
        Ok(())
    } else {
        Err(format!("the error does not name the lost rank {lost}: {err}"))
    }
}

/// Says, by creating the file `$MFIO_RANKS_LOOPING.<rank>` (when that
/// variable is set), that this rank has finished a collective with every
/// other: whoever cuts the network waits for every rank's file, so the cut
/// falls in the loop and never in the bootstrap, however slow that is.
fn announce_looping(rank: usize) -> Result<(), String> {
    let Some(prefix) = std::env::var_os("MFIO_RANKS_LOOPING") else {
        return Ok(());
    };
    let mut path = prefix;
    path.push(format!(".{rank}"));
    std::fs::write(&path, b"").map_err(|e| format!("announcing the loop in {path:?}: {e}"))
}

/// The TCP transport on a runtime (`MFIO_BACKEND`); `MFIO_TCP_TIMEOUT_MS`
/// says how soon a vanished peer is noticed.
fn tcp(boot: &Bootstrap) -> Result<(Driver, TcpTransport), String> {
    let rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let live = match std::env::var("MFIO_TCP_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()) {
        Some(ms) => Liveness {
            timeout: Duration::from_millis(ms),
        },
        None => Liveness::default(),
    };
    let links = boot.connect().map_err(|e| e.to_string())?;
    let t = TcpTransport::new(&rt, boot.rank(), links, live).map_err(|e| e.to_string())?;
    Ok((Driver::Rt(rt), t))
}

/// The UCX transport on a worker of a context configured from `UCX_*`
/// (keepalive every second unless `UCX_KEEPALIVE_INTERVAL` says).
fn ucx(boot: &Bootstrap) -> Result<(Driver, UcxTransport), String> {
    let mut context = mfio_net::ucx::Context::builder();
    if std::env::var_os("UCX_KEEPALIVE_INTERVAL").is_none() {
        context = context.set("KEEPALIVE_INTERVAL", "1s");
    }
    let worker = context
        .build()
        .and_then(|c| c.worker())
        .map_err(|e| format!("UCX worker: {e}"))?;
    let t = UcxTransport::bootstrap(&worker, boot).map_err(|e| e.to_string())?;
    t.set_split_copy(split_copy(boot.rank()));
    Ok((Driver::Ucx(worker), t))
}

/// Whether `MFIO_RANKS_SPLIT=decline` has rank 0 decline to copy half of
/// the messages it sends (and not ask): then its peers read what they
/// asked it for themselves.
fn declining() -> bool {
    std::env::var("MFIO_RANKS_SPLIT").as_deref() == Ok("decline")
}

/// Every rank copies long messages in halves where it can (so that the
/// run is sure to), but rank 0 under [`declining`].
fn split_copy(rank: usize) -> SplitCopy {
    if declining() && rank == 0 {
        SplitCopy::Never
    } else {
        SplitCopy::Always
    }
}

/// The transport a run is over.
enum Made {
    Tcp(TcpTransport),
    Ucx(UcxTransport),
}

impl Made {
    fn as_dyn(&self) -> &dyn Transport {
        match self {
            Made::Tcp(t) => t,
            Made::Ucx(t) => t,
        }
    }

    fn boxed(self) -> Box<dyn Transport> {
        match self {
            Made::Tcp(t) => Box::new(t),
            Made::Ucx(t) => Box::new(t),
        }
    }

    /// Over UCX, with more than one rank: long messages were read in place
    /// exactly when the transport list lets UCX use `cma` and the ranks
    /// share a host (not when `MFIO_RANKS_APART` says each has its own),
    /// and then some were copied in halves (the sender writing one), but
    /// none under [`declining`] by rank 0 (it does not ask), nor on 2 ranks
    /// (rank 0 declines). The run sends blocks of up to 400 kB, many from each peer.
    /// No rank declined to write a half it was asked for: every rank
    /// helps when asked, but rank 0 under [`declining`], which says so in
    /// its offers and is not asked.
    fn check_single_copy(&self) -> Result<(), String> {
        let Made::Ucx(t) = self else { return Ok(()) };
        if t.size() < 2 {
            return Ok(());
        }
        if t.halves_declined() > 0 {
            return Err(format!(
                "rank {} declined to write {} halves it was asked for",
                t.rank(),
                t.halves_declined()
            ));
        }
        let apart = std::env::var_os("MFIO_RANKS_APART").is_some();
        let allowed = t.worker().context().allows_transport("cma") && !apart;
        match (allowed, t.messages_read_in_place()) {
            (true, 0) => Err("no message was read in place, though UCX_TLS allows cma".into()),
            (true, _) if declining() && (t.rank() == 0 || t.size() == 2) => match t.messages_copied_in_halves() {
                0 => Ok(()),
                n => Err(format!("{n} messages were copied in halves, though rank 0 declines")),
            },
            (true, _) if t.messages_copied_in_halves() == 0 => {
                Err("no message was copied in halves, though messages were read in place".into())
            }
            (false, _) if t.messages_copied_in_halves() > 0 => {
                Err("messages were copied in halves, though UCX_TLS leaves out cma or the ranks are apart".into())
            }
            (false, n @ 1..) => Err(format!(
                "{n} messages were read in place, though UCX_TLS leaves out cma or the ranks are apart"
            )),
            _ => Ok(()),
        }
    }
}

fn main() {
    let watchdog = std::thread::spawn(|| {
        std::thread::sleep(LIMIT);
        eprintln!("env_ranks: no result within {LIMIT:?}");
        std::process::exit(4);
    });
    drop(watchdog);
    let boot = match Bootstrap::from_env() {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os(ROOT_VAR).is_none() => {
            // Alone: one rank, nobody to meet.
            let root = "127.0.0.1:0".parse().expect("loopback");
            Bootstrap::new(0, 1, root).expect("one rank")
        }
        Err(e) => {
            eprintln!("env_ranks: {e}");
            std::process::exit(2);
        }
    };
    let (rank, size) = (boot.rank(), boot.size());
    let made = match std::env::var("MFIO_COLL_TRANSPORT").as_deref() {
        Ok("ucx") => ucx(&boot).map(|(rt, t)| (rt, Made::Ucx(t))),
        Ok("tcp") | Err(_) => tcp(&boot).map(|(rt, t)| (rt, Made::Tcp(t))),
        Ok(other) => Err(format!("MFIO_COLL_TRANSPORT={other}: tcp or ucx")),
    };
    let (rt, t) = match made {
        Ok(made) => made,
        Err(e) => {
            eprintln!("rank {rank}/{size}: bootstrap: {e}");
            std::process::exit(1);
        }
    };
    let case = std::env::var("MFIO_RANKS_CASE").unwrap_or_default();
    let result = match case.as_str() {
        "early-exit" => early_exit(&rt, t.boxed()),
        "until-cut" => until_cut(&rt, t.as_dyn(), None),
        // The victim dies after a few collectives.
        "killed" => until_cut(&rt, t.as_dyn(), Some(20)),
        _ => {
            let start = Instant::now();
            let r = run(&rt, t.as_dyn()).and_then(|()| t.check_single_copy());
            if r.is_ok() && rank == 0 {
                println!(
                    "env_ranks: {size} ranks, {}: every algorithm, 1000 broadcasts, concurrent and interleaved \
                     collectives ... ok in {:.2?}",
                    rt.name(),
                    start.elapsed()
                );
            }
            r
        }
    };
    if let Err(e) = result {
        eprintln!("rank {rank}/{size}: FAILED: {e}");
        std::process::exit(1);
    }
}
