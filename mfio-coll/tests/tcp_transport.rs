//! The TCP transport with ranks as threads of this process, each with its
//! own mfio runtime (io_uring and poll), bootstrapped over loopback: every
//! algorithm at several lengths, back-to-back broadcasts from a fast root,
//! concurrent collectives on one transport, a wrong length, and a rank
//! that leaves. `env_ranks` runs the same algorithms as processes under
//! `mpiexec`.

mod every_algorithm;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use every_algorithm::{collect_ranks, every_algorithm, input, Seq};
use futures::future::join_all;
use mfio_backends::{BackendKind, Runtime};
use mfio_coll::algo;
use mfio_coll::transport::bootstrap::Bootstrap;
use mfio_coll::transport::tcp::{Liveness, TcpTransport};
use mfio_coll::transport::{CollId, Key, Transport};
use mfio_coll::ReduceOp;
use mfio_core::{BufResult, IoBackendExt};

/// A loopback address for rank 0, below the kernel's ephemeral ports
/// (32768 and up) so that no connection's own end takes it meanwhile, and
/// distinct for each group this process makes.
fn free_root() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 200) as u16 * 50;
    SocketAddr::from(([127, 0, 0, 1], base + NEXT.fetch_add(1, Ordering::Relaxed) % 50))
}

/// Runs `body` on every rank of a group of `n` joined by TCP, each rank a
/// thread with its own runtime of `kind`; the outputs in rank order. A
/// rank that does not finish within 60 s fails the test.
fn run_group<O, F>(n: usize, kind: BackendKind, body: F) -> Vec<O>
where
    O: Send + 'static,
    F: Fn(&Runtime, TcpTransport) -> O + Send + Sync + 'static,
{
    let root = free_root();
    let body = Arc::new(body);
    let (tx, rx) = std::sync::mpsc::channel();
    for rank in 0..n {
        let (tx, body) = (tx.clone(), body.clone());
        std::thread::spawn(move || {
            let rt = Runtime::builder().backend(kind).build().expect("runtime");
            let links = Bootstrap::new(rank, n, root)
                .expect("bootstrap")
                .timeout(Duration::from_secs(30))
                .connect()
                .expect("connect");
            let t = TcpTransport::new(&rt, rank, links, Liveness::default()).expect("transport");
            let _ = tx.send((rank, body(&rt, t)));
        });
    }
    drop(tx);
    collect_ranks(rx, n)
}

const KINDS: [BackendKind; 2] = [BackendKind::Uring, BackendKind::Poll];

#[test]
fn every_algorithm_over_tcp() {
    for kind in KINDS {
        for n in 1..=4 {
            let results = run_group(n, kind, |rt, t| {
                let mut seq = Seq::new(1);
                for len in [0, 1, 1000, 100_003] {
                    rt.block_on(every_algorithm(&t, &mut seq, len))
                        .map_err(|e| format!("len {len}: {e}"))?;
                }
                Ok::<(), String>(())
            });
            for (rank, r) in results.into_iter().enumerate() {
                if let Err(e) = r {
                    panic!("{kind:?}, {n} ranks, rank {rank}: {e}");
                }
            }
        }
    }
}

/// A root that broadcasts 1 000 times without waiting: the messages of
/// later broadcasts arrive early and wait under their own keys.
#[test]
fn back_to_back_broadcasts_from_a_fast_root() {
    for kind in KINDS {
        let results = run_group(3, kind, |rt, t| {
            for seq in 0..1000u32 {
                let want = input(0, 17, seq);
                let mut buf = if t.rank() == 0 { want.clone() } else { vec![0; 17] };
                rt.block_on(algo::bcast_binomial(&t, CollId { comm: 2, seq }, &mut buf, 0))
                    .map_err(|e| format!("bcast {seq}: {e}"))?;
                if buf != want {
                    return Err(format!("bcast {seq}: wrong data"));
                }
            }
            Ok::<(), String>(())
        });
        for r in results {
            r.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }
}

/// Eight allreduces in flight at once on one transport.
#[test]
fn concurrent_collectives_on_one_transport() {
    for kind in KINDS {
        let results = run_group(3, kind, |rt, t| {
            let mut bufs: Vec<Vec<u32>> = (0..8).map(|c| input(t.rank(), 5000 + c, c as u32)).collect();
            let sum = ReduceOp::Sum;
            let t = &t;
            let outcomes = rt.block_on(join_all(bufs.iter_mut().enumerate().map(|(c, buf)| {
                let sum = sum.clone();
                async move { algo::allreduce_ring(t, CollId { comm: 3, seq: c as u32 }, buf, &sum).await }
            })));
            for (c, o) in outcomes.into_iter().enumerate() {
                o.map_err(|e| format!("allreduce {c}: {e}"))?;
                let mut want = input(0, 5000 + c, c as u32);
                for r in 1..3 {
                    ReduceOp::Sum.apply(&input(r, 5000 + c, c as u32), &mut want);
                }
                if bufs[c] != want {
                    return Err(format!("allreduce {c}: wrong sum"));
                }
            }
            Ok::<(), String>(())
        });
        for r in results {
            r.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }
}

/// A message of another length than the receive expects is `InvalidData`
/// naming the sender; one to a rank outside the group is `InvalidInput`.
#[test]
fn wrong_lengths_and_ranks_are_errors() {
    let results = run_group(2, BackendKind::Poll, |rt, t| {
        let key = Key {
            comm: 4,
            seq: 0,
            step: 0,
            chunk: 0,
        };
        if t.rank() == 1 {
            let BufResult(res, _) = rt.block_on(t.send(0, key, vec![1, 2, 3, 4, 5]));
            res.map_err(|e| e.to_string())?;
            let BufResult(res, _) = rt.block_on(t.send(2, key, vec![1]));
            return match res {
                Err(e) if e.kind() == ErrorKind::InvalidInput => Ok(()),
                other => Err(format!("a send to rank 2 of 2 gave {other:?}")),
            };
        }
        match rt.block_on(t.recv(1, key, 4)) {
            Err(e) if e.kind() == ErrorKind::InvalidData && e.to_string().contains("rank 1") => {}
            other => return Err(format!("a 5-byte message taken as 4 gave {other:?}")),
        }
        Ok(())
    });
    for r in results {
        r.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A rank that leaves mid-collective: the others' receives from it fail
/// with an error naming it, promptly.
#[test]
fn a_rank_that_leaves_is_named() {
    for kind in KINDS {
        let results = run_group(3, kind, |rt, t| {
            if t.rank() == 2 {
                drop(t);
                return Ok(());
            }
            let start = Instant::now();
            let mut buf = vec![0u32; 10];
            let res = rt.block_on(algo::allreduce_ring(
                &t,
                CollId { comm: 5, seq: 0 },
                &mut buf,
                &ReduceOp::Sum,
            ));
            match res {
                Err(e) if e.to_string().contains("rank 2") => {}
                other => {
                    return Err(format!(
                        "rank {}: a collective with rank 2 gone gave {other:?}",
                        t.rank()
                    ))
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("rank {} took {:?} to notice", t.rank(), start.elapsed()));
            }
            Ok::<(), String>(())
        });
        for r in results {
            r.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }
}

/// A rank lost without a goodbye (its connection to rank 0 just ends; the
/// one to rank 1 stays open and silent): rank 0 sees it, breaks the group
/// and tells rank 1, whose receive from rank 0 — which will never send —
/// fails naming the lost rank.
#[test]
fn a_lost_rank_is_named_by_ranks_that_never_talked_to_it() {
    for kind in KINDS {
        let root = free_root();
        let key = Key {
            comm: 6,
            seq: 0,
            step: 0,
            chunk: 0,
        };
        let (heard, wait_heard) = std::sync::mpsc::channel::<()>();
        let lost = std::thread::spawn(move || {
            let mut links = Bootstrap::new(2, 3, root)
                .expect("bootstrap")
                .connect()
                .expect("connect");
            drop(links[0].take());
            // Silent towards rank 1 until it has heard.
            let _ = wait_heard.recv_timeout(Duration::from_secs(30));
        });
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                std::thread::spawn(move || -> Result<(), String> {
                    let rt = Runtime::builder().backend(kind).build().map_err(|e| e.to_string())?;
                    let links = Bootstrap::new(rank, 3, root)
                        .and_then(|b| b.connect())
                        .map_err(|e| e.to_string())?;
                    let t = TcpTransport::new(&rt, rank, links, Liveness::default()).map_err(|e| e.to_string())?;
                    let start = Instant::now();
                    // Rank 0 waits on the lost rank, rank 1 on rank 0.
                    let from = if rank == 0 { 2 } else { 0 };
                    match rt.block_on(t.recv(from, key, 4)) {
                        Err(e)
                            if e.kind() == ErrorKind::ConnectionAborted && e.to_string().contains("rank 2 is gone") => {
                        }
                        other => return Err(format!("rank {rank}: {other:?}")),
                    }
                    if start.elapsed() > Duration::from_secs(4) {
                        return Err(format!("rank {rank} took {:?}", start.elapsed()));
                    }
                    Ok(())
                })
            })
            .collect();
        let outcomes: Vec<_> = ranks.into_iter().map(|r| r.join()).collect();
        drop(heard);
        lost.join().expect("lost rank");
        for (rank, r) in outcomes.into_iter().enumerate() {
            r.unwrap_or_else(|_| panic!("rank {rank} panicked"))
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }
}

/// A send dropped once its frame is on the wire (a long message, the
/// receiver not reading, so the socket takes only part of it) still sends
/// the rest of the frame: the connection stays in step, and the message
/// arrives whole. A send dropped before it was polled sends nothing. The
/// receiver then takes both messages exactly and nothing else is kept.
#[test]
fn a_send_dropped_midway_keeps_the_connection_in_step() {
    const LONG: usize = 32 << 20;
    let key = |seq| Key {
        comm: 8,
        seq,
        step: 0,
        chunk: 0,
    };
    let long: Arc<Vec<u8>> = Arc::new((0..LONG).map(|i| (i % 251) as u8).collect());
    for kind in KINDS {
        let both_ready = Arc::new(std::sync::Barrier::new(2));
        let long = long.clone();
        let results = run_group(2, kind, move |rt, t| {
            use mfio_core::IoBackend;
            let short = b"after the dropped one".to_vec();
            if t.rank() == 1 {
                // Not driven until rank 0 dropped its send: the socket fills.
                both_ready.wait();
                let got = rt
                    .block_on(t.recv(0, key(0), LONG))
                    .map_err(|e| format!("the long message: {e}"))?;
                if got != *long {
                    return Err("the long message arrived changed".into());
                }
                let got = rt
                    .block_on(t.recv(0, key(2), short.len()))
                    .map_err(|e| format!("the short one: {e}"))?;
                if got != short {
                    return Err(format!("the short message arrived as {got:?}"));
                }
                return match t.unclaimed() {
                    0 => Ok(()),
                    n => Err(format!("{n} messages kept: the send dropped unpolled went out")),
                };
            }
            {
                let mut send = t.send(1, key(0), long.to_vec());
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                for _ in 0..20 {
                    if send.as_mut().poll(&mut cx).is_ready() {
                        return Err("a 32 MiB send to a rank that does not read finished".into());
                    }
                    rt.drive();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            drop(t.send(1, key(1), vec![7; 100]));
            both_ready.wait();
            let BufResult(res, _) = rt.block_on(t.send(1, key(2), short));
            res.map_err(|e| format!("the short send: {e}"))
        });
        for (rank, r) in results.into_iter().enumerate() {
            r.unwrap_or_else(|e| panic!("{kind:?}, rank {rank}: {e}"));
        }
    }
}
