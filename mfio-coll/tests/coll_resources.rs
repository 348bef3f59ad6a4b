//! What a group of ranks leaves behind once dropped: every descriptor its
//! transports, runtimes and workers opened is closed again — after
//! collectives that finished, after one dropped mid-flight, after a rank
//! left and the others' collective failed, and after the others went while
//! one stalled (in bounded time). Its own test binary, every
//! test serialised: the counts are of the whole process.

mod driver;
mod group;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use driver::Driver;
use mfio_backends::{BackendKind, Runtime};
use mfio_coll::algo::TransportComm;
use mfio_coll::transport::bootstrap::Bootstrap;
use mfio_coll::transport::tcp::Liveness;
use mfio_coll::{Communicator, ReduceOp};

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// What each open descriptor is, for failure messages.
fn fd_table() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = std::fs::read_link(e.path()).map(|t| t.display().to_string());
                    format!("{} -> {}", e.file_name().to_string_lossy(), target.unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The descriptor count once it is back to `before`, or after `limit`:
/// UCX closes some sockets from its own thread a moment after a worker
/// is gone, and the kernel lets go of a closed TCP socket's descriptor
/// at once but of nothing else we count.
fn fds_settled(before: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let now = open_fds();
        if now == before || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Clone, Copy)]
enum Wire {
    Tcp(BackendKind),
    Ucx(&'static str),
}

type Outcome = Result<(), String>;

/// Runs `body` on every rank of a group of `n` threads joined by `wire`
/// (the rank's communicator, and everything under it, dropped when the
/// body returns); the outcomes in rank order, each bounded by 60 s.
fn run_group(n: usize, wire: Wire, body: fn(TransportComm<Driver>) -> Outcome) -> Vec<Outcome> {
    static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let root = SocketAddr::from((
        [127, 0, 0, 1],
        20_000 + (std::process::id() % 200) as u16 * 40 + PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 40,
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    let threads: Vec<_> = (0..n)
        .map(|rank| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let out = (|| -> Outcome {
                    let boot = Bootstrap::new(rank, n, root)
                        .map(|b| b.timeout(Duration::from_secs(30)))
                        .map_err(|e| e.to_string())?;
                    let comm = match wire {
                        Wire::Tcp(kind) => group::over_tcp(
                            &boot,
                            kind,
                            Liveness {
                                timeout: Duration::from_secs(5),
                            },
                        )?,
                        Wire::Ucx(tls) => group::over_ucx(&boot, tls)?,
                    };
                    body(comm)
                })();
                let _ = tx.send((rank, out));
            })
        })
        .collect();
    drop(tx);
    let mut out: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let (rank, o) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("a rank of {n} over {wire:?} hung or panicked"));
        out[rank] = Some(o);
    }
    // Every rank's thread has let go of its group before counting.
    for t in threads {
        t.join().expect("a rank's thread");
    }
    out.into_iter().map(|o| o.expect("every rank reported")).collect()
}

fn check(what: &str, got: bool) -> Outcome {
    if got {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

/// Collectives that finish, one of them long enough to be read in place
/// over UCX, and one dropped after its first poll.
fn collectives(w: TransportComm<Driver>) -> Outcome {
    let size = w.size() as u64;
    let (r, sum) = w
        .blocking_allreduce_in_place(vec![1u64; 3000], ReduceOp::Sum)
        .into_parts();
    r.map_err(|e| e.to_string())?;
    check("allreduce sum", sum == vec![size; 3000])?;
    let (r, got) = w.wait(w.bcast(vec![w.rank() as u8; 300_000], 0)).into_parts();
    r.map_err(|e| e.to_string())?;
    check("bcast bytes", got.iter().all(|&b| b == 0))?;
    // Started and dropped midway: its messages and buffers go with the
    // group, not with the process.
    let mut dropped = Box::pin(w.allreduce_in_place(vec![2u64; 100_000], ReduceOp::Sum));
    let waker = futures::task::noop_waker();
    let _ = dropped.as_mut().poll(&mut std::task::Context::from_waker(&waker));
    drop(dropped);
    w.blocking_barrier().map_err(|e| e.to_string())
}

/// Rank 2 leaves at once; the others' collective fails naming it.
fn one_rank_leaves(w: TransportComm<Driver>) -> Outcome {
    if w.rank() == 2 {
        return Ok(());
    }
    let (r, _) = w
        .blocking_allreduce_in_place(vec![1u64; 50_000], ReduceOp::Sum)
        .into_parts();
    match r {
        Err(e) if e.to_string().contains("rank 2") => Ok(()),
        other => Err(format!("an allreduce without rank 2 gave {other:?}")),
    }
}

fn releases_everything(wire: Wire, body: fn(TransportComm<Driver>) -> Outcome, what: &str) {
    let _serial = serial();
    // A first group opens what stays for the process's life (UCX's
    // shared state, the runtime's first probes), then the count is taken.
    for o in run_group(3, wire, body) {
        o.unwrap_or_else(|e| panic!("{what} over {wire:?}: {e}"));
    }
    let before = open_fds();
    let table = fd_table();
    for round in 0..3 {
        for (rank, o) in run_group(3, wire, body).into_iter().enumerate() {
            o.unwrap_or_else(|e| panic!("{what} over {wire:?}, round {round}, rank {rank}: {e}"));
        }
    }
    let after = fds_settled(before, Duration::from_secs(10));
    assert_eq!(
        after,
        before,
        "{what} over {wire:?}: descriptors before {before}, after 3 groups {after}\nbefore: {table:?}\nafter: {:?}",
        fd_table()
    );
}

#[test]
fn groups_over_tcp_release_every_descriptor() {
    for kind in [BackendKind::Uring, BackendKind::Poll] {
        if Runtime::builder().backend(kind).build().is_err() {
            eprintln!("skipped {kind:?}: it cannot start here");
            continue;
        }
        releases_everything(Wire::Tcp(kind), collectives, "collectives");
        releases_everything(Wire::Tcp(kind), one_rank_leaves, "a rank that left");
    }
}

#[test]
fn groups_over_ucx_release_every_descriptor() {
    for tls in ["sm,self", "tcp"] {
        releases_everything(Wire::Ucx(tls), collectives, "collectives");
        releases_everything(Wire::Ucx(tls), one_rank_leaves, "a rank that left");
    }
}

/// Rank 2 stalls (its thread sleeps, driving nothing) while the others
/// start a 1 MiB bcast, drop it unfinished and go: their going is bounded
/// (the transports' goodbyes wait for a second at most, a UCX worker half a
/// second more for what a stalled peer never takes), and once rank 2 goes
/// too nothing is left.
fn one_rank_stalls(w: TransportComm<Driver>) -> Outcome {
    if w.rank() == 2 {
        std::thread::sleep(Duration::from_secs(2));
        return Ok(());
    }
    let mut bcast = Box::pin(w.bcast(vec![w.rank() as u8; 1 << 20], 0));
    let waker = futures::task::noop_waker();
    for _ in 0..100 {
        if bcast
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
            .is_ready()
        {
            break;
        }
        mfio_core::IoBackend::drive_now(w.backend());
    }
    drop(bcast);
    let started = Instant::now();
    drop(w);
    let took = started.elapsed();
    check(
        &format!("the group went in {took:?} beside a stalled rank"),
        took < Duration::from_secs(5),
    )
}

#[test]
fn groups_beside_a_stalled_rank_go_in_bounded_time() {
    for wire in [Wire::Tcp(BackendKind::Poll), Wire::Ucx("sm,self")] {
        releases_everything(wire, one_rank_stalls, "a stalled rank");
    }
}
