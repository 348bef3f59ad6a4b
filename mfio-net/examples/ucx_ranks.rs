//! UCX between the ranks of an `mpiexec` launch, without MPI: each rank
//! learns its rank and the rank count from the launcher's environment,
//! publishes its worker address in a shared directory, connects to every
//! other rank, then passes 1 MiB around the ring, sends 8 bytes to every
//! rank and checks everything it received. Every wait is bounded.
//!
//! ```text
//! mpiexec -n 3 target/debug/examples/ucx_ranks --dir /tmp/ranks          # shared memory
//! mpiexec -n 3 target/debug/examples/ucx_ranks --dir /tmp/ranks --tcp    # TCP on loopback
//! ```
//!
//! The directory must be empty (or new) and visible to every rank. Without
//! a launcher (no rank variables) it runs as a single rank.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::join_all;
use mfio_core::{Error, Flush, IoBackendExt, IoRead, IoWrite, PacketIoExt, Result};
use mfio_net::ucx::{Context, Endpoint, Tag, TagMatch, Worker, WorkerAddress};

/// How long a rank waits for the others' addresses and messages.
const LIMIT: Duration = Duration::from_secs(60);
/// Tag bases: the ring's message, the all-to-all message, the last word.
const RING: u64 = 1 << 40;
const ALL: u64 = 2 << 40;
const DONE: u64 = 3 << 40;
const RING_LEN: usize = 1 << 20;

fn invalid(msg: String) -> Error {
    Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// This rank and the rank count, from Open MPI's, MPICH's (PMI) or PMIx's
/// variables; (0, 1) without a launcher.
fn rank_and_size() -> Result<(usize, usize)> {
    let var = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok());
    let rank = var(&["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]);
    let size = var(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]);
    match (rank, size) {
        (None, None) => Ok((0, 1)),
        (Some(r), Some(s)) => {
            let parse = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| invalid(format!("bad rank variable {v:?}")))
            };
            let (rank, size) = (parse(&r)?, parse(&s)?);
            if rank >= size {
                return Err(invalid(format!("rank {rank} of {size}")));
            }
            Ok((rank, size))
        }
        _ => Err(invalid(
            "the launcher set a rank without a size (or the reverse)".into(),
        )),
    }
}

/// The pattern rank `from` sends in the ring.
fn ring_bytes(from: usize) -> Vec<u8> {
    (0..RING_LEN).map(|i| (i as u64 * 31 + from as u64 * 7) as u8).collect()
}

/// Writes this rank's address where the others look for it (written aside,
/// then renamed: a reader never sees half a file).
fn publish(dir: &Path, rank: usize, address: &WorkerAddress) -> Result<()> {
    let aside = dir.join(format!(".{rank}.addr"));
    std::fs::write(&aside, address.as_bytes())?;
    std::fs::rename(&aside, dir.join(format!("{rank}.addr")))?;
    Ok(())
}

/// Waits for every rank's address, bounded.
fn addresses(dir: &Path, size: usize) -> Result<Vec<WorkerAddress>> {
    let deadline = Instant::now() + LIMIT;
    (0..size)
        .map(|r| {
            let path = dir.join(format!("{r}.addr"));
            loop {
                match std::fs::read(&path) {
                    Ok(bytes) => return WorkerAddress::from_bytes(&bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(Error::new(e.kind(), format!("address of rank {r}: {e}"))),
                }
            }
        })
        .collect()
}

/// Fails with `TimedOut` if `fut` is not done by `deadline`. A timer
/// thread wakes the task at the deadline, so waiting costs no CPU.
async fn bounded<T>(deadline: Instant, what: &str, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let mut fut = std::pin::pin!(fut);
    let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
    let mut timer = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if Instant::now() >= deadline {
            return Poll::Ready(Err(Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{what} took longer than {LIMIT:?}"),
            )));
        }
        *waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        timer.get_or_insert_with(|| {
            let waker = waker.clone();
            std::thread::spawn(move || {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                if let Some(w) = waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    w.wake();
                }
            })
        });
        Poll::Pending
    })
    .await
}

async fn exchange(worker: &Worker, eps: &[Endpoint], rank: usize, size: usize) -> Result<()> {
    let deadline = Instant::now() + LIMIT;
    let (right, left) = ((rank + 1) % size, (rank + size - 1) % size);
    // The ring: receive from the left while sending to the right.
    let recv = worker.tag_recv(TagMatch::exact(RING + left as u64), Vec::with_capacity(RING_LEN));
    let send = eps[right].write_at(Tag(RING + rank as u64), ring_bytes(rank));
    let (got, sent) = bounded(deadline, "the ring", async { Ok(futures::join!(recv, send)) }).await?;
    sent.0?;
    let (info, buf) = got.into_parts();
    if info?.len != RING_LEN || buf != ring_bytes(left) {
        return Err(invalid(format!(
            "rank {rank}: the ring message from rank {left} differs"
        )));
    }
    // All to all: 8 bytes (the sender's rank) to every rank.
    let sends = eps
        .iter()
        .map(|ep| ep.write_at(Tag(ALL + rank as u64), (rank as u64).to_le_bytes().to_vec()));
    let recvs = (0..size).map(|from| worker.read_at(TagMatch::exact(ALL + from as u64), Vec::with_capacity(8)));
    let (sent, got) = bounded(deadline, "the all-to-all", async {
        Ok(futures::join!(join_all(sends), join_all(recvs)))
    })
    .await?;
    for s in sent {
        s.0?;
    }
    for (from, g) in got.into_iter().enumerate() {
        let (n, buf) = g.into_parts();
        if n? != 8 || buf != (from as u64).to_le_bytes() {
            return Err(invalid(format!("rank {rank}: the message from rank {from} differs")));
        }
    }
    // Nobody closes before everyone has received everything.
    let sends = eps.iter().map(|ep| ep.write_at(Tag(DONE), Vec::new()));
    let recvs = (0..size).map(|_| worker.read_at(TagMatch::exact(DONE), Vec::new()));
    let (sent, got) = bounded(deadline, "the last word", async {
        Ok(futures::join!(join_all(sends), join_all(recvs)))
    })
    .await?;
    for s in sent {
        s.0?;
    }
    for g in got {
        g.0?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tcp = args.iter().any(|a| a == "--tcp");
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .ok_or_else(|| invalid("usage: ucx_ranks --dir <shared directory> [--tcp]".into()))?;
    let (rank, size) = rank_and_size()?;
    std::fs::create_dir_all(&dir)?;
    let builder = if tcp {
        Context::builder().set("TLS", "tcp").set("NET_DEVICES", "lo")
    } else {
        Context::builder().set("TLS", "sm,self")
    };
    let worker = builder.build()?.worker()?;
    publish(&dir, rank, &worker.address())?;
    let eps = addresses(&dir, size)?
        .iter()
        .map(|a| worker.connect(a))
        .collect::<Result<Vec<Endpoint>>>()?;
    worker.block_on(exchange(&worker, &eps, rank, size))?;
    // Our last words leave (flush), then the endpoints close without a
    // handshake: a graceful close needs each peer to keep driving until
    // the end, and the first rank done exits. A peer gone already (UCX says
    // reset, timeout or not connected, depending on the moment) is fine: it
    // left only after it had the last word of every rank, ours too.
    let gone = |r: Result<()>| match r {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(())
        }
        r => r,
    };
    let flushes = eps.iter().map(|ep| ep.io(Flush, Vec::new()));
    for (flushed, _) in worker.block_on(bounded(Instant::now() + LIMIT, "the flush", async {
        Ok(join_all(flushes).await)
    }))? {
        gone(flushed.result().map(drop))?;
    }
    for closed in worker.block_on(join_all(eps.into_iter().map(Endpoint::close_force))) {
        gone(closed)?;
    }
    println!(
        "ucx_ranks: rank {rank} of {size}: ring, all-to-all and close over {}",
        if tcp { "tcp" } else { "shared memory" }
    );
    Ok(())
}
