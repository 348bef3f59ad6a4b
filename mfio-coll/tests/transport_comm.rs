//! The `Communicator` API over transports (`TransportComm`): every
//! collective, element type, length and form — the same checks the MPI
//! backend passes — with every algorithm the tuning tables can name, over
//! the in-process transport (scrambled completion order), over TCP and
//! over UCX;
//! `dup` and `split`; a tuning file; a bad table; the error of a send
//! after the group broke; the async forms run by tokio, smol and a
//! `Composite` beside file reads.

#[macro_use]
mod communicator;
mod driver;
mod every_algorithm;
mod group;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use communicator::{collectives_of, data, ok, reduce_ref, Form, Outcome, Sample};
use driver::Driver;
use every_algorithm::collect_ranks;
use mfio_backends::{BackendKind, Runtime};
use mfio_coll::algo::tuning::{Algorithm, Collective, Rule};
use mfio_coll::algo::{TransportComm, Tuning};
use mfio_coll::transport::bootstrap::Bootstrap;
use mfio_coll::transport::local::LocalTransport;
use mfio_coll::transport::tcp::Liveness;
use mfio_coll::{Communicator, ReduceOp};

/// What joins the ranks of a test group.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// The in-process transport, completions scrambled.
    Local,
    /// TCP on loopback, each rank on its own runtime.
    Tcp,
    /// UCX with these transports (`UCX_TLS`), each rank on its own worker.
    Ucx(&'static str),
}

/// Runs `body` on every rank of a group of `n` (threads, each with its own
/// runtime or worker) joined by `wire`; the outcomes in rank order, each
/// bounded by 60 s.
fn run_group<F>(n: usize, wire: Wire, body: F) -> Vec<Outcome>
where
    F: Fn(TransportComm<Driver>) -> Outcome + Send + Sync + 'static,
{
    static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let body = Arc::new(body);
    let (tx, rx) = std::sync::mpsc::channel();
    let root = SocketAddr::from((
        [127, 0, 0, 1],
        12_000 + (std::process::id() % 200) as u16 * 40 + PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 40,
    ));
    let mut locals: Vec<Option<LocalTransport>> = match wire {
        Wire::Local => LocalTransport::scrambled_group(n, n as u64 * 7919)
            .into_iter()
            .map(Some)
            .collect(),
        _ => (0..n).map(|_| None).collect(),
    };
    for (rank, local) in locals.iter_mut().enumerate() {
        let (tx, body) = (tx.clone(), body.clone());
        let local = local.take();
        std::thread::spawn(move || {
            let out = (|| -> Outcome {
                let boot = || {
                    Bootstrap::new(rank, n, root)
                        .map(|b| b.timeout(Duration::from_secs(30)))
                        .map_err(|e| e.to_string())
                };
                let comm = match (wire, local) {
                    (Wire::Local, Some(t)) => TransportComm::new(Driver::Rt(runtime()?), t),
                    (Wire::Tcp, _) => group::over_tcp(&boot()?, BackendKind::Poll, Liveness::default())?,
                    (Wire::Ucx(tls), _) => group::over_ucx(&boot()?, tls)?,
                    (Wire::Local, None) => return Err("no in-process transport".into()),
                };
                body(comm)
            })();
            let _ = tx.send((rank, out));
        });
    }
    drop(tx);
    collect_ranks(rx, n)
}

fn runtime() -> Result<Runtime, String> {
    Runtime::builder()
        .backend(BackendKind::Poll)
        .build()
        .map_err(|e| e.to_string())
}

fn all_ok(what: &str, outcomes: Vec<Outcome>) {
    for (rank, o) in outcomes.into_iter().enumerate() {
        if let Err(e) = o {
            panic!("{what}, rank {rank}: {e}");
        }
    }
}

/// Every collective, through every form, for several element types.
fn every_collective(w: &TransportComm<Driver>, lengths: &[usize]) -> Outcome {
    let mut salt = 0;
    for form in [Form::Async, Form::Blocking] {
        for &len in lengths {
            salt += 1;
            collectives_of::<_, u8>(w, len, form, salt)?;
            collectives_of::<_, i32>(w, len, form, salt)?;
            collectives_of::<_, f64>(w, len, form, salt)?;
            collectives_of::<_, [u16; 3]>(w, len, form, salt)?;
            collectives_of::<_, Sample>(w, len, form, salt)?;
        }
    }
    Ok(())
}

/// Tables that pick, for every collective, its `k`-th algorithm (wrapping),
/// so that between them every algorithm runs.
fn table_picking(k: usize) -> Tuning {
    let rules = Collective::all()
        .map(|c| {
            let algos: Vec<Algorithm> = Algorithm::for_collective(c).collect();
            Rule {
                collective: c,
                max_ranks: None,
                max_bytes: None,
                algorithm: algos[k % algos.len()],
            }
        })
        .collect();
    Tuning::new(rules).expect("every rule applies")
}

#[test]
fn every_collective_with_every_algorithm_in_process() {
    // As many tables as the collective with the most algorithms has.
    let tables = Collective::all()
        .map(|c| Algorithm::for_collective(c).count())
        .max()
        .unwrap_or(1);
    assert!(tables >= 6, "allreduce alone has 6 algorithms");
    for n in 1..=5 {
        for k in 0..tables {
            all_ok(
                &format!("{n} ranks, table {k}"),
                run_group(n, Wire::Local, move |w| {
                    let w = w.with_tuning(table_picking(k));
                    every_collective(&w, &[0, 1, 1031])
                }),
            );
        }
    }
}

/// The allgather a row of [`collectives_that_send_from_the_input_write_every_element`]
/// runs beside its allreduce `algorithm`: the one of the same name, or the
/// ring.
fn gathering(algorithm: Algorithm) -> Algorithm {
    if algorithm.applies_to(Collective::Allgather) {
        algorithm
    } else {
        Algorithm::Ring
    }
}

/// Allreduce with separate buffers through the rings and (long messages)
/// recursive doubling, which read this rank's operand from `send` instead
/// of copying it into `recv` first: for 1–7 ranks in process and 2–3 over
/// TCP and UCX (where long blocks leave from `send` by a single copy),
/// lengths from 0 to 2.5 pipeline segments, `send` comes back unchanged,
/// integer sums are exact, floating-point sums (in the algorithm's order)
/// are the same bits on every rank and the same bits as the same algorithm
/// in place, and a non-commutative operation keeps rank order. The
/// allgather of the same name (the ring where there is none), which sends
/// this rank's block from `send` too: `send` unchanged, every block in
/// rank order. `recv` starts as garbage, which must not show.
#[test]
fn collectives_that_send_from_the_input_write_every_element() {
    // 2.5 segments of the segmented ring (256 KiB of f64 each).
    let long = 5 * (256 << 10) / 8 / 2;
    let groups = (1..=7)
        .map(|n| (n, Wire::Local))
        .chain((2..=3).flat_map(|n| [(n, Wire::Tcp), (n, Wire::Ucx("sm,self"))]));
    for (n, wire) in groups {
        for algorithm in [
            Algorithm::Ring,
            Algorithm::SegmentedRing,
            Algorithm::RecursiveDoubling,
            Algorithm::ReduceBcast,
            Algorithm::Direct,
            Algorithm::TwoShot,
        ] {
            let rule = |collective, algorithm| Rule {
                collective,
                max_ranks: None,
                max_bytes: None,
                algorithm,
            };
            let table = Tuning::new(vec![
                rule(Collective::Allreduce, algorithm),
                rule(Collective::Allgather, gathering(algorithm)),
            ])
            .expect("rules for allreduce and allgather");
            let outcomes = run_group(n, wire, move |w| {
                let w = w.with_tuning(table.clone());
                let r = w.rank();
                for len in [0, 1, n.saturating_sub(1), 1031, 2049, long] {
                    let what = |s: &str| format!("{} {len} elements: {s}", algorithm.name());
                    let ints: Vec<i64> = (0..len as i64).map(|i| i * 7 + r as i64 * 1_000_003).collect();
                    let (res, (send, sum)) = w
                        .wait(w.allreduce(ints.clone(), vec![-1; len], ReduceOp::Sum))
                        .into_parts();
                    res.map_err(|e| what(&e.to_string()))?;
                    if send != ints {
                        return Err(what("send changed"));
                    }
                    let exact = (0..len as i64).map(|i| (0..n as i64).map(|q| i * 7 + q * 1_000_003).sum::<i64>());
                    if !sum.iter().copied().eq(exact) {
                        return Err(what("wrong integer sum"));
                    }
                    let floats: Vec<f64> = (0..len).map(|i| (i as f64 + 0.1) / (r as f64 + 3.0)).collect();
                    let (res, (send, apart)) = w
                        .wait(w.allreduce(floats.clone(), vec![f64::NAN; len], ReduceOp::Sum))
                        .into_parts();
                    res.map_err(|e| what(&e.to_string()))?;
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>();
                    if bits(&send) != bits(&floats) {
                        return Err(what("float send changed"));
                    }
                    let (res, in_place) = w.wait(w.allreduce_in_place(floats.clone(), ReduceOp::Sum)).into_parts();
                    res.map_err(|e| what(&e.to_string()))?;
                    if bits(&apart) != bits(&in_place) {
                        return Err(what("separate buffers and in place differ"));
                    }
                    // Every rank's bits, gathered, must be one vector.
                    let mine: Vec<u64> = bits(&apart);
                    let (res, (_, all)) = w.wait(w.allgather(mine.clone(), vec![0; len * n])).into_parts();
                    res.map_err(|e| what(&e.to_string()))?;
                    if all
                        .chunks(len.max(1))
                        .take(if len == 0 { 0 } else { n })
                        .any(|c| c != mine.as_slice())
                    {
                        return Err(what("ranks differ"));
                    }
                    // Rank order (the rings refuse a non-commutative
                    // operation; the communicator then takes recursive
                    // doubling).
                    let maps = every_algorithm::affine(r, len);
                    let (res, (send, composed)) = w
                        .wait(w.allreduce(maps.clone(), vec![[7, 7]; len], every_algorithm::compose()))
                        .into_parts();
                    res.map_err(|e| what(&e.to_string()))?;
                    let inputs: Vec<_> = (0..n).map(|q| every_algorithm::affine(q, len)).collect();
                    if send != maps || composed != every_algorithm::reference(&inputs, &every_algorithm::compose()) {
                        return Err(what("a non-commutative operation out of rank order, or send changed"));
                    }
                    let block = every_algorithm::input(r, len, 5);
                    let (res, (send, gathered)) =
                        w.wait(w.allgather(block.clone(), vec![u32::MAX; len * n])).into_parts();
                    res.map_err(|e| what(&format!("allgather: {e}")))?;
                    let whole: Vec<u32> = (0..n).flat_map(|q| every_algorithm::input(q, len, 5)).collect();
                    if send != block || gathered != whole {
                        return Err(what("allgather: wrong blocks, or send changed"));
                    }
                }
                Ok(())
            });
            all_ok(&format!("{} on {n} ranks ({wire:?})", algorithm.name()), outcomes);
        }
    }
}

#[test]
fn every_collective_over_tcp_with_the_builtin_table() {
    for n in [2, 3] {
        all_ok(
            &format!("TCP, {n} ranks"),
            run_group(n, Wire::Tcp, |w| every_collective(&w, &[0, 1, 1031, 100_000])),
        );
    }
}

#[test]
fn every_collective_over_ucx_with_the_builtin_table() {
    for (n, tls) in [(2, "sm,self"), (3, "tcp")] {
        all_ok(
            &format!("UCX {tls}, {n} ranks"),
            run_group(n, Wire::Ucx(tls), |w| every_collective(&w, &[0, 1, 1031, 100_000])),
        );
    }
}

/// Short messages that leave at once (`try_send_now`, no future) and
/// those that cannot (the way is full, or too long) and go as futures
/// arrive alike, exact, under their keys; nothing is sent at once to this
/// rank, a rank outside the group or under the transport's own id.
#[test]
fn short_messages_sent_at_once_or_not_arrive_alike() {
    const COUNT: u32 = 20_000;
    let size_of = |i: u32| [0usize, 8, 1000, 3, 20_000][i as usize % 5];
    let bytes = move |i: u32| -> Vec<u8> { (0..size_of(i)).map(|j| (i as usize * 31 + j) as u8).collect() };
    for tls in ["sm,self", "tcp"] {
        let outcomes = run_group(2, Wire::Ucx(tls), move |w| {
            let t = w.transport().clone();
            let key = |i: u32| mfio_coll::transport::Key {
                comm: 77,
                seq: i,
                step: 0,
                chunk: 0,
            };
            let me = t.rank();
            // Wired up first (over TCP a new endpoint sends nothing at
            // once until UCX has connected it).
            w.wait(w.barrier()).0.map_err(|e| e.to_string())?;
            if t.try_send_now(me, key(0), b"self")
                || t.try_send_now(2, key(0), b"outside")
                || t.try_send_now(
                    1 - me,
                    mfio_coll::transport::Key {
                        comm: u32::MAX,
                        ..key(0)
                    },
                    b"own id",
                )
            {
                return Err("sent at once where it must not be".into());
            }
            if me == 0 {
                let (mut now, mut later) = (0, 0);
                let mut pending = Vec::new();
                for i in 0..COUNT {
                    let msg = bytes(i);
                    if t.try_send_now(1, key(i), &msg) {
                        now += 1;
                    } else {
                        later += 1;
                        pending.push(t.send(1, key(i), msg));
                    }
                }
                for p in pending {
                    mfio_core::block_on(w.backend(), p).0.map_err(|e| e.to_string())?;
                }
                // Both ways taken (a message of 20 000 bytes never goes at
                // once; the others do while there is room).
                if now == 0 || later < COUNT / 5 {
                    return Err(format!("{now} sent at once, {later} as futures"));
                }
            } else {
                for i in 0..COUNT {
                    let got =
                        mfio_core::block_on(w.backend(), t.recv(0, key(i), size_of(i))).map_err(|e| e.to_string())?;
                    if got != bytes(i) {
                        return Err(format!("message {i} differs"));
                    }
                }
            }
            // Nothing left over for anyone.
            w.wait(w.barrier()).0.map_err(|e| e.to_string())?;
            match t.unclaimed() {
                0 => Ok(()),
                n => Err(format!("{n} messages nobody took")),
            }
        });
        all_ok(&format!("UCX {tls}"), outcomes);
    }
}

/// `split` by parity, ordered by descending key; collectives in each half
/// and on a `dup` of the parent, interleaved, never mix.
#[test]
fn split_and_dup_make_communicators_that_never_mix() {
    for wire in [Wire::Local, Wire::Tcp, Wire::Ucx("sm,self")] {
        all_ok(
            &format!("split ({wire:?})"),
            run_group(5, wire, |w| {
                let (rank, size) = (w.rank(), w.size());
                let half = w
                    .split(Some((rank % 2) as u32), -(rank as i32))
                    .map_err(|e| e.to_string())?
                    .ok_or("split left this rank out")?;
                let peers: Vec<usize> = (0..size).filter(|r| r % 2 == rank % 2).rev().collect();
                ensure!(half.size() == peers.len(), "half of {} ranks", half.size());
                ensure!(peers[half.rank()] == rank, "rank {} in the half", half.rank());
                let dup = w.dup().map_err(|e| e.to_string())?;
                ensure!(dup.size() == size && dup.rank() == rank, "dup");
                let none = w.split(None, 0).map_err(|e| e.to_string())?;
                ensure!(none.is_none(), "split(None) made a communicator");
                // Interleaved: start both, then wait in the other order.
                let a = half.allreduce_in_place(data::<i64>(rank, 777, 3), ReduceOp::Sum);
                let b = dup.allreduce_in_place(data::<i64>(rank, 555, 4), ReduceOp::Sum);
                let got_b = ok(w.wait(b), "dup allreduce")?;
                let got_a = ok(w.wait(a), "half allreduce")?;
                let mut want_a = data::<i64>(peers[0], 777, 3);
                for &p in &peers[1..] {
                    ReduceOp::Sum.apply(&data::<i64>(p, 777, 3), &mut want_a);
                }
                ensure!(got_a == want_a, "half allreduce: wrong sum");
                ensure!(
                    got_b == reduce_ref(&ReduceOp::Sum, 0..size, 555, 4),
                    "dup allreduce: wrong sum"
                );
                Ok(())
            }),
        );
    }
}

/// A non-commutative custom operation is reduced in rank order whatever
/// the table says (the commutative-only algorithms are not used for it).
#[test]
fn non_commutative_operations_keep_rank_order() {
    all_ok(
        "non-commutative",
        run_group(4, Wire::Local, |w| {
            let w = w.with_tuning(table_picking(0));
            let rank = w.rank();
            // Affine maps x -> a·x + b; composition is not commutative.
            let compose = ReduceOp::custom(false, |inc: &[[u64; 2]], acc: &mut [[u64; 2]]| {
                for (a, x) in acc.iter_mut().zip(inc) {
                    *a = [x[0].wrapping_mul(a[0]), a[0].wrapping_mul(x[1]).wrapping_add(a[1])];
                }
            });
            let map = |r: usize| vec![[r as u64 * 2 + 3, r as u64 + 7]; 9];
            let want = {
                let mut acc = map(3);
                for r in (0..3).rev() {
                    compose.apply(&map(r), &mut acc);
                }
                acc
            };
            let got = ok(w.wait(w.allreduce_in_place(map(rank), compose.clone())), "allreduce")?;
            ensure!(got == want, "allreduce: not in rank order");
            let big: Vec<[u64; 2]> = (0..4).flat_map(|_| map(rank)).collect();
            let (_, block) = ok(
                w.wait(w.reduce_scatter_block(big, vec![[0, 0]; 9], compose.clone())),
                "reduce_scatter_block",
            )?;
            ensure!(block == want, "reduce_scatter_block: not in rank order");
            Ok(())
        }),
    );
}

/// A tuning file written, read back and used; a broken one refused with
/// its path and line.
#[test]
fn tuning_files_round_trip_and_errors_name_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tuning.txt");
    let table = table_picking(1);
    std::fs::write(&path, table.to_string()).expect("write");
    assert_eq!(Tuning::load(&path).expect("load"), table);
    std::fs::write(&path, "allreduce * * ring\nbcast 4 nope binomial\n").expect("write");
    let err = Tuning::load(&path).expect_err("a broken table");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let text = err.to_string();
    assert!(text.contains("tuning.txt") && text.contains("line 2"), "{text}");
    let missing = Tuning::load(&dir.path().join("none.txt")).expect_err("no file");
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
}

/// A collective every rank drops midway (each after a different amount of
/// progress) leaves the communicator usable: its late messages never meet a
/// later collective's, and none is kept.
#[test]
fn a_collective_dropped_midway_leaves_later_ones_intact() {
    for wire in [Wire::Local, Wire::Tcp, Wire::Ucx("tcp")] {
        all_ok(
            &format!("drop mid-flight ({wire:?})"),
            run_group(4, wire, |w| {
                let rank = w.rank();
                let mut fut = w.allreduce_in_place(data::<u64>(rank, 300_000, 5), ReduceOp::Sum);
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                for _ in 0..rank * 3 {
                    if std::pin::Pin::new(&mut fut).poll(&mut cx).is_ready() {
                        break;
                    }
                }
                drop(fut);
                ok(w.wait(w.barrier()), "barrier after the drop")?;
                for salt in 0..3 {
                    let got = ok(
                        w.wait(w.allreduce_in_place(data::<u64>(rank, 1000, salt), ReduceOp::Sum)),
                        "allreduce after the drop",
                    )?;
                    ensure!(
                        got == reduce_ref(&ReduceOp::Sum, 0..4, 1000, salt),
                        "allreduce {salt} after the drop: wrong sum"
                    );
                }
                // Every later collective is done here, so nothing is early:
                // the dropped one's messages were let go, not kept.
                let left = w.transport().unclaimed();
                ensure!(left == 0, "{left} messages kept after every collective finished");
                Ok(())
            }),
        );
    }
}

/// A rank whose group broke (a peer left before sending what a receive
/// waited for) and which then sends to a rank that has since given up and
/// left too: the send fails, and its error names the rank the group lost,
/// not only the connection the departed rank reset.
#[test]
fn sends_after_the_group_broke_name_the_lost_rank() {
    for wire in [Wire::Tcp, Wire::Ucx("tcp")] {
        sends_after_the_group_broke(wire);
    }
}

fn sends_after_the_group_broke(wire: Wire) {
    let outcomes = run_group(3, wire, |w| {
        let t = w.transport().clone();
        let rank = t.rank();
        ok(w.wait(w.barrier()), "barrier")?;
        if rank == 2 {
            return Ok(());
        }
        let key = |seq: u32| mfio_coll::transport::Key {
            comm: 31,
            seq,
            step: 0,
            chunk: 0,
        };
        let lost = mfio_core::block_on(w.backend(), t.recv(2, key(0), 8));
        match lost {
            Err(e) if e.to_string().contains("rank 2") => {}
            other => return Err(format!("a receive from the rank that left gave {other:?}")),
        }
        if rank == 1 {
            return Ok(());
        }
        // Rank 1 leaves now; its connections end under these sends. The
        // worker is driven between them: a send UCX completes inside its
        // posting call needs no progress, and without progress nothing
        // notices the peer is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for seq in 1.. {
            ensure!(
                std::time::Instant::now() < deadline,
                "every send to the rank that left succeeded"
            );
            let sent = mfio_core::block_on(w.backend(), t.send(1, key(seq), vec![7u8; 1333])).0;
            if let Err(e) = sent {
                ensure!(e.to_string().contains("rank 2"), "the failed send says only: {e}");
                return Ok(());
            }
            mfio_core::IoBackend::drive_now(w.backend());
        }
        Ok(())
    });
    all_ok(&format!("sends after the group broke ({wire:?})"), outcomes);
}

/// The async collectives run by a host runtime or beside other I/O, not
/// by the communicator's own `wait`: tokio and smol (through
/// mfio-integration) driving the rank's backend, and one `Composite` of
/// an io_uring-or-poll runtime and the backend whose single `block_on`
/// runs file reads and a collective at once.
#[test]
fn collectives_run_by_host_runtimes_and_beside_file_reads() {
    for wire in [Wire::Tcp, Wire::Ucx("sm,self"), Wire::Ucx("tcp")] {
        let outcomes = run_group(3, wire, |w| {
            let size = w.size() as u64;
            let rank = w.rank() as u64;
            let tokio_rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let got = tokio_rt.block_on(async {
                let run = mfio_integration::Tokio::run(w.backend(), async {
                    let sum = ok(
                        w.allreduce_in_place(vec![rank + 1; 5000], ReduceOp::Sum).await,
                        "tokio allreduce",
                    )?;
                    let root = ok(w.bcast(vec![rank; 70_000], 1).await, "tokio bcast")?;
                    Ok::<_, String>((sum, root))
                });
                tokio::time::timeout(Duration::from_secs(30), run).await
            });
            let (sum, root) = got.map_err(|_| "tokio: no result within 30 s".to_string())??;
            ensure!(
                sum == vec![size * (size + 1) / 2; 5000],
                "tokio allreduce gave {:?}",
                &sum[..3]
            );
            ensure!(root == vec![1; 70_000], "tokio bcast gave another rank's bytes");

            let got = smol::block_on(mfio_integration::Smol::run(
                w.backend(),
                w.allgather(vec![rank as u32; 3], vec![0; 3 * size as usize]),
            ));
            let (_, all) = ok(got, "smol allgather")?;
            let want: Vec<u32> = (0..size as u32).flat_map(|r| [r; 3]).collect();
            ensure!(all == want, "smol allgather gave {all:?}");

            // One loop: file reads on a runtime of its own and the collective,
            // both behind one descriptor.
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let path = dir.path().join("data");
            let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + rank as u32) as u8).collect();
            std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
            let files = Runtime::new().map_err(|e| e.to_string())?;
            let all = mfio_backends::Composite::new(vec![Box::new(files.clone()), Box::new(w.backend().clone())])
                .map_err(|e| e.to_string())?;
            let (read, reduced) = mfio_core::IoBackendExt::block_on(&all, async {
                let file = files
                    .open(&path, mfio_backends::OpenOptions::new().read(true))
                    .await
                    .map_err(|e| e.to_string())?;
                let reads = async {
                    let mut got = Vec::new();
                    for at in (0..bytes.len() as u64).step_by(256 << 10) {
                        let (r, buf) = mfio_core::IoRead::read_exact_at(&file, at, Vec::with_capacity(256 << 10))
                            .await
                            .into_parts();
                        r.map_err(|e| format!("read at {at}: {e}"))?;
                        got.extend_from_slice(&buf);
                    }
                    Ok::<_, String>(got)
                };
                let reduced = async {
                    ok(
                        w.allreduce_in_place(vec![rank; 100_000], ReduceOp::Max).await,
                        "composite allreduce",
                    )
                };
                let (read, reduced) = futures::join!(reads, reduced);
                Ok::<_, String>((read?, reduced?))
            })?;
            ensure!(read == bytes, "the file read beside the collective differs");
            ensure!(
                reduced == vec![size - 1; 100_000],
                "the allreduce beside the reads gave {:?}",
                &reduced[..3]
            );
            Ok(())
        });
        all_ok(&format!("host runtimes and a composite ({wire:?})"), outcomes);
    }
}
