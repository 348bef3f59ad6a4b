//! The MPI backend across ranks. Run alone (`cargo test`) it is one rank;
//! `scripts/mpi-test` runs the built binary under `mpiexec -n 2, 3, 4`
//! with a timeout. Every rank runs every case in the same order; each case
//! checks its results against a sequential reference that every rank
//! computes for itself, and a watchdog ends a rank that hangs.
//!
//! `MFIO_MPI_PROGRESS=thread` runs them with the backend's progress thread;
//! `MFIO_MPI_LEVEL=funneled` at `MPI_THREAD_FUNNELED`.
//! `MFIO_MPI_CASE=<name>[,<name>...]` runs the cases named; `MFIO_MPI_CASE=early-exit` is the
//! early-exit scenario the script runs on its own (one rank leaves, the
//! others must fail within the timeout).

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[macro_use]
mod communicator;
mod every_algorithm;

use communicator::{alltoallv_of, collectives_of, data, go, ok, reduce_ref, rooted_v, Form, Outcome, Sample, Value};
use every_algorithm::{every_algorithm, Seq};
use mfio_coll::algo::TransportComm;
use mfio_coll::mpi::{Mpi, MpiComm, MpiTransport, Progress, Source, TagMatch, ThreadLevel};
use mfio_coll::{element, CollResult, Communicator, Counts, ReduceOp};
use mfio_core::{BufResult, IoBackend, IoBackendExt, Packet, PacketIo, PacketIoExt, Read};

/// The most MPI items per request, low so that the longer buffers take the
/// split (several requests per collective) path.
const MAX_COUNT: usize = 4096;
/// Lengths every collective is checked at (per rank, in elements).
const LENGTHS: [usize; 4] = [0, 1, 1031, 9001];
/// How long one case may take before the rank gives up.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// A named test case.
type Case = (&'static str, fn(&Ctx) -> Outcome);

struct Ctx {
    mpi: Mpi,
    world: MpiComm,
    progress: Progress,
}

impl Ctx {
    fn rank(&self) -> usize {
        self.world.rank()
    }
    fn size(&self) -> usize {
        self.world.size()
    }
}

fn every_collective(cx: &Ctx) -> Outcome {
    let mut salt = 0;
    for form in [Form::Async, Form::Blocking] {
        for len in LENGTHS {
            salt += 1;
            collectives_of::<_, u8>(&cx.world, len, form, salt)?;
            collectives_of::<_, i16>(&cx.world, len, form, salt)?;
            collectives_of::<_, u32>(&cx.world, len, form, salt)?;
            collectives_of::<_, i64>(&cx.world, len, form, salt)?;
            collectives_of::<_, f32>(&cx.world, len, form, salt)?;
            collectives_of::<_, f64>(&cx.world, len, form, salt)?;
            collectives_of::<_, [u16; 3]>(&cx.world, len, form, salt)?;
            collectives_of::<_, Sample>(&cx.world, len, form, salt)?;
        }
    }
    Ok(())
}

/// The collective algorithms over MPI point-to-point: each algorithm on its
/// own, then every collective of the `Communicator` API through
/// `TransportComm` with the built-in table.
fn over_mpi_transport(cx: &Ctx) -> Outcome {
    let t = MpiTransport::new(&cx.world).map_err(|e| format!("MpiTransport: {e}"))?;
    over_transport(cx.mpi.clone(), t, "MPI point-to-point", 100)
}

/// Over transport `t`, driven by `backend`: each algorithm, the load and
/// drop-mid-flight tests, then every collective through `TransportComm`
/// (`u32`, `f64` and a `#[repr(C)]` struct), after which no
/// message may be left (the dropped collective's included).
fn over_transport<B, T>(backend: B, t: T, name: &str, salt: u64) -> Outcome
where
    B: IoBackend + Clone + Send + Sync + 'static,
    T: mfio_coll::transport::Transport + 'static,
{
    let mut seq = Seq::new(1);
    for len in [0, 1, 1000, 100_003] {
        step(format!("every algorithm over {name}, len {len}"));
        backend
            .block_on(every_algorithm(&t, &mut seq, len))
            .map_err(|e| format!("every algorithm over {name}, len {len}: {e}"))?;
    }
    step(format!("under load over {name}"));
    every_algorithm::under_load(&backend, &t)?;
    step(format!("dropped mid-flight over {name}"));
    every_algorithm::drop_mid_flight(&backend, &t, 9)?;
    let comm = TransportComm::new(backend, t);
    let mut salt = salt;
    for form in [Form::Async, Form::Blocking] {
        for len in [0, 1, 1031, 40_000] {
            step(format!("collectives over {name}, len {len}, {form:?}"));
            salt += 1;
            collectives_of::<_, u32>(&comm, len, form, salt)?;
            collectives_of::<_, f64>(&comm, len, form, salt)?;
            collectives_of::<_, Sample>(&comm, len, form, salt)?;
        }
    }
    step(format!("final barrier over {name}"));
    comm.blocking_barrier().map_err(|e| format!("final barrier: {e}"))?;
    every_algorithm::nothing_kept(&**comm.transport())
}

/// What this rank's case is doing: a hung case's report names it.
static STEP: every_algorithm::Breadcrumb = every_algorithm::Breadcrumb::new();

/// Records the step this rank's case begins.
fn step(what: String) {
    STEP.set(what);
}

/// The TCP transport bootstrapped over MPI (listening addresses exchanged
/// by `MPI_Allgather`): each algorithm, then every collective through
/// `TransportComm`.
fn over_tcp_via_mpi(cx: &Ctx) -> Outcome {
    let rt = mfio_backends::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let live = mfio_coll::transport::tcp::Liveness::default();
    let t = mfio_coll::mpi::tcp_transport(&cx.world, &rt, loopback, live, Duration::from_secs(30))
        .map_err(|e| format!("TCP transport: {e}"))?;
    let mut seq = Seq::new(1);
    for len in [0, 1, 100_003] {
        rt.block_on(every_algorithm(&t, &mut seq, len))
            .map_err(|e| format!("every algorithm over TCP, len {len}: {e}"))?;
    }
    let comm = TransportComm::new(rt, t);
    for form in [Form::Async, Form::Blocking] {
        collectives_of::<_, u32>(&comm, 1031, form, 200)?;
    }
    Ok(())
}

/// The UCX transport bootstrapped over MPI (worker addresses exchanged by
/// `MPI_Allgather`), on the UCX transports `UCX_TLS` names (`scripts/test`
/// runs it over shared memory and over TCP): each algorithm, then every
/// collective through `TransportComm`.
fn over_ucx_via_mpi(cx: &Ctx) -> Outcome {
    let worker = mfio_net::ucx::Context::builder()
        .set("KEEPALIVE_INTERVAL", "1s")
        .build()
        .and_then(|c| c.worker())
        .map_err(|e| format!("UCX worker: {e}"))?;
    let t = mfio_coll::mpi::ucx_transport(&cx.world, &worker).map_err(|e| format!("UCX transport: {e}"))?;
    over_transport(worker, t, "UCX", 300)
}

/// The predefined operations on integers and floats, against the
/// reference.
fn every_operation(cx: &Ctx) -> Outcome {
    let w = &cx.world;
    let ops: Vec<ReduceOp<i32>> = vec![
        ReduceOp::Sum,
        ReduceOp::Prod,
        ReduceOp::Min,
        ReduceOp::Max,
        ReduceOp::BitAnd,
        ReduceOp::BitOr,
        ReduceOp::BitXor,
        ReduceOp::LogicalAnd,
        ReduceOp::LogicalOr,
        ReduceOp::LogicalXor,
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let mine = data::<i32>(cx.rank(), 257, i as u64);
        let got = ok(cx.mpi.block_on(w.allreduce_in_place(mine, op.clone())), op.name())?;
        ensure!(
            got == reduce_ref(&op, 0..cx.size(), 257, i as u64),
            "{}: wrong result",
            op.name()
        );
    }
    for op in [ReduceOp::<f64>::Min, ReduceOp::Max, ReduceOp::Prod] {
        let mine = data::<f64>(cx.rank(), 100, 5);
        let got = ok(w.blocking_allreduce_in_place(mine, op.clone()), op.name())?;
        ensure!(
            got == reduce_ref(&op, 0..cx.size(), 100, 5),
            "{} f64: wrong result",
            op.name()
        );
    }
    Ok(())
}

/// 2×2 integer matrices: a non-commutative product checks that the custom
/// reduction combines ranks in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct Mat([i64; 4]);
element!(Mat { 0 });

impl Value for Mat {
    fn make(x: u64) -> Self {
        let v = (x % 5) as i64;
        Mat([1, v, (x % 3) as i64, 1])
    }
}

fn matmul(inc: &[Mat], acc: &mut [Mat]) {
    for (a, x) in acc.iter_mut().zip(inc) {
        let (p, q) = (x.0, a.0);
        // wrapping: the products overflow over many ranks
        a.0 = [
            p[0].wrapping_mul(q[0]).wrapping_add(p[1].wrapping_mul(q[2])),
            p[0].wrapping_mul(q[1]).wrapping_add(p[1].wrapping_mul(q[3])),
            p[2].wrapping_mul(q[0]).wrapping_add(p[3].wrapping_mul(q[2])),
            p[2].wrapping_mul(q[1]).wrapping_add(p[3].wrapping_mul(q[3])),
        ];
    }
}

fn custom_operations(cx: &Ctx) -> Outcome {
    let w = &cx.world;
    let op = ReduceOp::<Mat>::custom(false, matmul);
    for len in [1, 77, 5000] {
        let mine = data::<Mat>(cx.rank(), len, 3);
        let want = reduce_ref(&op, 0..cx.size(), len, 3);
        let got = ok(
            cx.mpi.block_on(w.allreduce_in_place(mine.clone(), op.clone())),
            "custom allreduce",
        )?;
        ensure!(
            got == want,
            "non-commutative custom allreduce: wrong order or result (len {len})"
        );
        let (_, got) = ok(w.blocking_scan(mine, vec![Mat([0; 4]); len], op.clone()), "custom scan")?;
        ensure!(
            got == reduce_ref(&op, 0..cx.rank() + 1, len, 3),
            "custom scan: wrong result"
        );
    }
    // A panicking closure fails the collective on the ranks where it ran,
    // and nothing aborts. With one rank MPI never calls it.
    if cx.size() > 1 {
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.to_string().contains("deliberate panic") {
                quiet(info);
            }
        }));
        let bad = ReduceOp::<u64>::custom(true, |_, _| panic!("deliberate panic in a reduction"));
        let (res, _) = cx.mpi.block_on(w.allreduce_in_place(vec![1u64; 8], bad)).into_parts();
        // Whether a rank ran the closure depends on MPI's algorithm; those
        // that did report it.
        if let Err(e) = res {
            ensure!(e.to_string().contains("panicked"), "unexpected error {e}");
        }
        w.blocking_barrier().map_err(|e| format!("barrier after panic: {e}"))?;
    }
    Ok(())
}

/// Many collectives in a row, several at once on one communicator, and two
/// communicators interleaved.
fn concurrency(cx: &Ctx) -> Outcome {
    let (w, size) = (&cx.world, cx.size() as u64);
    for i in 0..300u64 {
        let got = ok(
            w.blocking_allreduce_in_place(vec![i, 1], ReduceOp::Sum),
            "back-to-back allreduce",
        )?;
        ensure!(got == [i * size, size], "back-to-back allreduce {i}: {got:?}");
        let b = ok(
            cx.mpi.block_on(w.bcast(vec![i; 3], (i % size) as usize)),
            "back-to-back bcast",
        )?;
        ensure!(b == [i; 3], "back-to-back bcast {i}");
    }
    // Eight at once, started in order, awaited in reverse.
    let futs: Vec<_> = (0..8u64)
        .map(|k| w.allreduce_in_place(vec![k; 100 + k as usize * 1000], ReduceOp::Sum))
        .collect();
    for (k, f) in futs.into_iter().enumerate().rev() {
        let got = ok(cx.mpi.block_on(f), "concurrent allreduce")?;
        ensure!(
            got.iter().all(|&x| x == k as u64 * size) && got.len() == 100 + k * 1000,
            "concurrent allreduce {k}"
        );
    }
    // Two communicators, interleaved and awaited together.
    let other = w.dup().map_err(|e| format!("dup: {e}"))?;
    let a = w.allreduce_in_place(vec![1u32; 5000], ReduceOp::Sum);
    let b = other.allreduce_in_place(vec![2u32; 5000], ReduceOp::Sum);
    let c = w.allgather(vec![cx.rank() as u16], vec![0; cx.size()]);
    let d = other.bcast(vec![7u8; 10], 0);
    let (a, b, c, d) = cx.mpi.block_on(async { futures::join!(a, b, c, d) });
    let (a, b, (_, c), d) = (
        ok(a, "comm A")?,
        ok(b, "comm B")?,
        ok(c, "comm A allgather")?,
        ok(d, "comm B bcast")?,
    );
    ensure!(
        a.iter().all(|&x| x == size as u32) && b.iter().all(|&x| x == 2 * size as u32),
        "interleaved communicators mixed up"
    );
    ensure!(
        c == (0..cx.size() as u16).collect::<Vec<_>>() && d == [7u8; 10],
        "interleaved communicators mixed up"
    );
    Ok(())
}

fn split(cx: &Ctx) -> Outcome {
    let (rank, size) = (cx.rank(), cx.size());
    let half = cx
        .world
        .split(Some((rank % 2) as u32), -(rank as i32))
        .map_err(|e| format!("split: {e}"))?;
    let half = half.ok_or("split gave no communicator to a rank with a color")?;
    let members: Vec<usize> = (0..size).filter(|q| q % 2 == rank % 2).collect();
    ensure!(
        half.size() == members.len(),
        "split: size {} instead of {}",
        half.size(),
        members.len()
    );
    // key = -rank: reversed order
    let pos = members.iter().rev().position(|&q| q == rank).ok_or("not a member")?;
    ensure!(half.rank() == pos, "split: rank {} instead of {pos}", half.rank());
    let got = ok(
        half.blocking_allreduce_in_place(vec![rank as u64], ReduceOp::Sum),
        "allreduce in split",
    )?;
    ensure!(
        got == [members.iter().map(|&q| q as u64).sum::<u64>()],
        "split allreduce"
    );
    // A rank passing no color joins nothing.
    let none = cx
        .world
        .split(if rank == 0 { None } else { Some(0) }, 0)
        .map_err(|e| format!("split: {e}"))?;
    ensure!((rank == 0) == none.is_none(), "split with no color");
    if let Some(rest) = none {
        ensure!(
            rest.size() == size - 1,
            "split without rank 0 has {} ranks",
            rest.size()
        );
    }
    Ok(())
}

/// `drive_now` is a step without the backend's spin: with a receive
/// pending that nothing matches yet, it returns even when the spin budget
/// is an hour (`scripts/test` runs this case alone with `MFIO_MPI_SPIN_US`
/// set so; a `drive_now` that spun would hang it until the watchdog ends
/// it). Then the receive gets its bytes.
fn drive_now_with_a_receive_pending(cx: &Ctx) -> Outcome {
    let (w, rank, size) = (&cx.world, cx.rank(), cx.size());
    if size < 2 {
        return Ok(());
    }
    match rank {
        0 => {
            let mut recv = std::pin::pin!(w.recv(Source::Rank(1), TagMatch::Tag(31), Vec::with_capacity(8)));
            let mut task = std::task::Context::from_waker(std::task::Waker::noop());
            ensure!(
                recv.as_mut().poll(&mut task).is_pending(),
                "rank 1 sent before it was told to"
            );
            for _ in 0..3 {
                cx.mpi.drive_now();
            }
            let (sent, _) = cx.mpi.block_on(w.send(1, 30, b"go".to_vec()));
            sent.result().map_err(|e| format!("send go: {e}"))?;
            let (res, got) = cx.mpi.block_on(recv).into_parts();
            let info = res.map_err(|e| format!("receive ping: {e}"))?;
            ensure!(info.len == 4 && got == b"ping", "received {got:?}");
        }
        1 => {
            let (res, got) = cx
                .mpi
                .block_on(w.recv(Source::Rank(0), TagMatch::Tag(30), Vec::with_capacity(8)))
                .into_parts();
            res.map_err(|e| format!("receive go: {e}"))?;
            ensure!(got == b"go", "received {got:?}");
            let (sent, _) = cx.mpi.block_on(w.send(0, 31, b"ping".to_vec()));
            sent.result().map_err(|e| format!("send ping: {e}"))?;
        }
        _ => {}
    }
    ok(cx.mpi.block_on(w.barrier()), "barrier after drive_now")
}

/// A wake from another thread ends the backend's spin: with a receive
/// pending and an hour's spin (`scripts/test` runs this case with
/// `MFIO_MPI_SPIN_US` set so), a `block_on` whose task another thread
/// wakes returns when it is woken, not when the spin ends (the watchdog
/// would end it). Then the receive gets its message.
fn a_wake_from_another_thread_ends_the_spin(cx: &Ctx) -> Outcome {
    let (w, rank) = (&cx.world, cx.rank());
    let mut recv = std::pin::pin!(w.recv(Source::Rank(rank), TagMatch::Tag(41), Vec::with_capacity(8)));
    let mut task = std::task::Context::from_waker(std::task::Waker::noop());
    ensure!(
        recv.as_mut().poll(&mut task).is_pending(),
        "a receive with no sender finished"
    );
    let (done, woken) = mfio_core::completion::completion::<u8>();
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        done.complete(Ok(7));
    });
    let got = cx.mpi.block_on(woken).map_err(|e| format!("woken: {e}"))?;
    waker.join().map_err(|_| "the waking thread panicked")?;
    ensure!(got == 7, "woken with {got}");
    let (sent, _) = cx.mpi.block_on(w.send(rank, 41, b"ping".to_vec()));
    sent.result().map_err(|e| format!("self send: {e}"))?;
    let (res, got) = cx.mpi.block_on(recv).into_parts();
    let info = res.map_err(|e| format!("receive ping: {e}"))?;
    ensure!(info.len == 4 && got == b"ping", "received {got:?}");
    ok(cx.mpi.block_on(w.barrier()), "barrier after the wake")
}

fn point_to_point(cx: &Ctx) -> Outcome {
    let (w, rank, size) = (&cx.world, cx.rank(), cx.size());
    // Everyone sends to rank 0 with tag 100 + rank; rank 0 takes them from
    // any source with any tag, in whatever order they come.
    let msg = |r: usize| format!("hello from {r}").into_bytes();
    let send = if rank == 0 {
        None
    } else {
        Some(w.send(0, 100 + rank as u32, msg(rank)))
    };
    if rank == 0 {
        let mut seen = vec![false; size];
        for _ in 1..size {
            let (res, buf) = cx
                .mpi
                .block_on(w.recv(Source::Any, TagMatch::Any, Vec::with_capacity(64)))
                .into_parts();
            let info = res.map_err(|e| format!("any-source receive: {e}"))?;
            ensure!(
                info.tag == 100 + info.source as u32,
                "tag {} from {}",
                info.tag,
                info.source
            );
            ensure!(
                buf == msg(info.source) && info.len == buf.len(),
                "wrong message from {}",
                info.source
            );
            ensure!(
                !std::mem::replace(&mut seen[info.source], true),
                "two messages from {}",
                info.source
            );
        }
    }
    if let Some(send) = send {
        let (outcome, _) = cx.mpi.block_on(send);
        ensure!(
            outcome.result().map_err(|e| e.to_string())? == msg(rank).len(),
            "short send"
        );
    }
    // Nothing else may be in flight while rank 0 takes any tag from anyone.
    ok(cx.mpi.block_on(w.barrier()), "barrier after any-source")?;
    // A ring with exact addresses, and a receive too small for its message.
    let next = (rank + 1) % size;
    let prev = (rank + size - 1) % size;
    let payload = data::<u8>(rank, 70_000, 9);
    let s = w.send(next, 7, payload.clone());
    let r = PacketIoExt::<Read, (usize, u32)>::io(w, (prev, 7), Vec::<u8>::with_capacity(70_000));
    let ((sent, _), (recvd, got)) = cx.mpi.block_on(async { futures::join!(s, r) });
    sent.result().map_err(|e| format!("ring send: {e}"))?;
    ensure!(
        recvd.result().map_err(|e| format!("ring recv: {e}"))? == 70_000 && got == data::<u8>(prev, 70_000, 9),
        "ring data"
    );
    let s = w.send(next, 8, vec![1u8; 100]);
    let r = w.recv(Source::Rank(prev), TagMatch::Tag(8), Vec::with_capacity(10));
    let ((sent, _), BufResult(rres, _)) = cx.mpi.block_on(async { futures::join!(s, r) });
    sent.result().map_err(|e| format!("truncating send: {e}"))?;
    match rres {
        Err(e) if e.is_truncated() => {}
        other => return Err(format!("a 100-byte message into 10 bytes gave {other:?}")),
    }
    // Beyond MAX_COUNT bytes a message, and a receive buffer, is one
    // element of a made type: shorter messages still land with their
    // length, longer ones are truncations.
    for (tag, sent_len, capacity) in [(20, 5_000, 9_000), (21, 100, 9_000), (22, 9_000, 5_000)] {
        let payload = data::<u8>(rank, sent_len, tag);
        let s = w.send(next, tag as u32, payload);
        let r = w.recv(Source::Rank(prev), TagMatch::Any, Vec::with_capacity(capacity));
        let ((sent, _), BufResult(rres, got)) = cx.mpi.block_on(async { futures::join!(s, r) });
        sent.result().map_err(|e| format!("{sent_len}-byte send: {e}"))?;
        match rres {
            Ok(info) if sent_len <= capacity => ensure!(
                info.len == sent_len && info.tag == tag as u32 && got == data::<u8>(prev, sent_len, tag),
                "{sent_len} bytes into {capacity}: got {info:?}, {} bytes",
                got.len()
            ),
            Err(e) if sent_len > capacity && e.is_truncated() => {}
            other => return Err(format!("{sent_len} bytes into {capacity} gave {other:?}")),
        }
    }
    ok(cx.mpi.block_on(w.barrier()), "barrier")?;
    Ok(())
}

/// Counts beyond one MPI count (MAX_COUNT here): `v` variants whose
/// blocks are long for some ranks and short for others, displacements
/// beyond one count (the blocks packed into a copy), reduce-scatter blocks
/// reduced rank by rank.
fn large_counts(cx: &Ctx) -> Outcome {
    let (w, rank, size) = (&cx.world, cx.rank(), cx.size());
    let root = size / 2;
    let gapped = |counts: Vec<usize>, gap: usize| {
        let displs = counts
            .iter()
            .scan(0, |at, &c| {
                let d = *at;
                *at += c + gap;
                Some(d)
            })
            .collect();
        Counts { counts, displs }
    };
    for form in [Form::Async, Form::Blocking] {
        let what = |op: &str| format!("{op} {form:?}");
        // Long blocks for even ranks, short ones for odd ranks, each
        // followed by a gap.
        let mixed = gapped(
            (0..size)
                .map(|q| if q % 2 == 0 { MAX_COUNT + 904 } else { 3 })
                .collect(),
            5,
        );
        rooted_v::<_, u32>(&cx.world, form, &mixed, 40, root, &what("mixed"))?;
        // alltoallv: long between ranks of equal parity, short otherwise.
        let n = |p: usize, q: usize| if (p + q).is_multiple_of(2) { MAX_COUNT + 17 } else { 2 };
        alltoallv_of::<_, u16>(&cx.world, form, n, 41, &what("mixed alltoallv"))?;
        // Short blocks far apart: displacements beyond MAX_COUNT, so the
        // blocks that stay in the call are packed into a copy.
        let far = gapped(vec![1_000; size], 5_000);
        rooted_v::<_, u64>(&cx.world, form, &far, 42, root, &what("far"))?;
        // Lengths sharing no factor, far apart.
        let odd = gapped((0..size).map(|q| 900 + q).collect(), 4_099);
        rooted_v::<_, i8>(&cx.world, form, &odd, 44, root, &what("odd"))?;

        // reduce_scatter_block with blocks beyond one count.
        let len = MAX_COUNT + 3;
        let (_, got) = ok(
            go(
                &cx.world,
                form,
                || w.reduce_scatter_block(data::<i64>(rank, len * size, 43), vec![0; len], ReduceOp::Sum),
                || w.blocking_reduce_scatter_block(data::<i64>(rank, len * size, 43), vec![0; len], ReduceOp::Sum),
            ),
            &what("long reduce_scatter_block"),
        )?;
        let full = reduce_ref(&ReduceOp::Sum, 0..size, len * size, 43);
        ensure!(
            got[..] == full[rank * len..(rank + 1) * len],
            "{}: wrong block",
            what("long reduce_scatter_block")
        );
    }
    ok(cx.mpi.block_on(w.barrier()), "barrier")?;
    Ok(())
}

/// Futures dropped mid-flight: a collective keeps its buffers until MPI
/// finishes; a receive is cancelled; a message a dropped receive took comes
/// back to the next receive.
fn drop_mid_flight(cx: &Ctx) -> Outcome {
    let (w, rank, size) = (&cx.world, cx.rank(), cx.size());
    // A collective dropped at once still runs (it cannot be cancelled) and
    // the next one pairs up correctly.
    drop(w.allreduce_in_place(vec![rank as u64; 50_000], ReduceOp::Sum));
    drop(w.bcast(vec![0u8; 100_000], 0));
    let got = ok(
        w.blocking_allreduce_in_place(vec![1u64; 3], ReduceOp::Sum),
        "allreduce after drops",
    )?;
    ensure!(got == [size as u64; 3], "allreduce after dropped collectives: {got:?}");
    // A collective polled while the others are late, then dropped: the
    // backend takes its request over (it stays in flight, its buffers
    // alive, until the others join), and the next collective pairs up.
    let settle = |what: &str| -> Outcome {
        let deadline = Instant::now() + Duration::from_secs(10);
        while cx.mpi.in_flight() > 0 {
            cx.mpi.drive();
            ensure!(
                Instant::now() < deadline,
                "{what}: {} requests stay in flight",
                cx.mpi.in_flight()
            );
        }
        Ok(())
    };
    settle("dropped collectives")?;
    if rank == 0 && size > 1 {
        // One MPI call (the tests' count limit splits longer ones).
        let mut pending = w.allreduce_in_place(vec![1u64; 8], ReduceOp::Sum);
        let mut ctx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..100 {
            ensure!(
                Pin::new(&mut pending).poll(&mut ctx).is_pending(),
                "an allreduce finished before the other ranks joined"
            );
        }
        ensure!(
            cx.mpi.in_flight() == 1,
            "{} requests in flight, not 1",
            cx.mpi.in_flight()
        );
        drop(pending);
        ensure!(
            cx.mpi.in_flight() == 1,
            "a dropped collective left the backend ({} requests in flight)",
            cx.mpi.in_flight()
        );
    } else if size > 1 {
        std::thread::sleep(Duration::from_millis(100));
        let got = ok(
            cx.mpi.block_on(w.allreduce_in_place(vec![1u64; 8], ReduceOp::Sum)),
            "allreduce with a dropped one",
        )?;
        ensure!(got.iter().all(|&x| x == size as u64), "allreduce with a dropped one");
    }
    let got = ok(
        cx.mpi.block_on(w.allreduce_in_place(vec![2u64; 3], ReduceOp::Sum)),
        "allreduce after a dropped one",
    )?;
    ensure!(got == [2 * size as u64; 3], "allreduce after a dropped one: {got:?}");
    settle("a collective dropped while polled")?;
    // A pending receive dropped: cancelled, nothing left in flight for it.
    {
        let mut pending = Box::pin(PacketIoExt::<Read, (usize, u32)>::io(
            w,
            (rank, 31),
            Vec::<u8>::with_capacity(16),
        ));
        let waker = std::task::Waker::noop();
        let mut ctx = std::task::Context::from_waker(waker);
        ensure!(
            pending.as_mut().poll(&mut ctx).is_pending(),
            "a receive with no sender finished"
        );
    }
    settle("a cancelled receive")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    // A receive that completes after its caller dropped the packet: the
    // message comes back for the next receive.
    let mut packet = Packet::<Read, _>::new(Vec::<u8>::with_capacity(32));
    let view = packet.take_view().ok_or("no view")?;
    PacketIo::<Read, (usize, u32)>::send_io(w, (rank, 32), view);
    let (sent, _) = cx.mpi.block_on(w.send(rank, 32, b"kept for the next receive".to_vec()));
    sent.result().map_err(|e| format!("self send: {e}"))?;
    while !packet.is_complete() {
        cx.mpi.drive();
        ensure!(Instant::now() < deadline, "the self message never arrived");
    }
    drop(packet);
    let (res, buf) = cx
        .mpi
        .block_on(w.recv(Source::Rank(rank), TagMatch::Tag(32), Vec::with_capacity(32)))
        .into_parts();
    let info = res.map_err(|e| format!("receive of the returned message: {e}"))?;
    ensure!(
        buf == b"kept for the next receive" && info.source == rank && info.tag == 32,
        "returned message: {buf:?}"
    );
    // A communicator dropped with a collective still running on it (the
    // last rank joins late): it is freed only once that finishes, while
    // the world goes on. Freeing it at once crashed Open MPI's libnbc on
    // 3 ranks, in the barrier's next round.
    let dup = w.dup().map_err(|e| format!("dup: {e}"))?;
    if size > 1 && rank == size - 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(dup.barrier());
    drop(dup);
    for round in 0..20u64 {
        let got = ok(
            cx.mpi.block_on(w.allreduce_in_place(vec![round; 2], ReduceOp::Sum)),
            "allreduce after a communicator dropped mid-collective",
        )?;
        ensure!(
            got == [round * size as u64; 2],
            "allreduce after a dropped communicator: {got:?}"
        );
    }
    settle("a barrier on a dropped communicator")?;
    ok(cx.mpi.block_on(w.barrier()), "barrier")?;
    Ok(())
}

/// Bad input: refused locally with `InvalidInput` naming the argument, the
/// buffers handed back untouched, and the communicator still usable.
fn bad_input(cx: &Ctx) -> Outcome {
    let (w, size) = (&cx.world, cx.size());
    let expect = |r: CollResult<mfio_coll::Pair<u32>>, needle: &str, send_len: usize| -> Outcome {
        let (res, (s, _)) = r.into_parts();
        match res {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput && e.to_string().contains(needle) => {}
            other => return Err(format!("expected InvalidInput naming {needle:?}, got {other:?}")),
        }
        ensure!(
            s.len() == send_len && s.iter().all(|&x| x == 5),
            "the send buffer did not come back intact"
        );
        Ok(())
    };
    expect(
        cx.mpi.block_on(w.reduce(vec![5; 4], vec![0; 4], ReduceOp::Sum, size)),
        "root",
        4,
    )?;
    expect(w.blocking_allreduce(vec![5; 4], vec![0; 3], ReduceOp::Sum), "recv", 4)?;
    if size > 1 {
        expect(
            cx.mpi
                .block_on(w.alltoall(vec![5; size * 2 + 1], vec![0; size * 2 + 1])),
            "send",
            size * 2 + 1,
        )?;
    }
    let overlap = Counts {
        counts: vec![2; size],
        displs: vec![0; size],
    };
    if size > 1 {
        expect(
            cx.mpi.block_on(w.allgatherv(vec![5; 2], vec![0; 2 * size], &overlap)),
            "overlap",
            2,
        )?;
    }
    let overrun = Counts {
        counts: vec![3; size],
        displs: (0..size).map(|q| q * 3).collect(),
    };
    expect(
        w.blocking_allgatherv(vec![5; 3], vec![0; 3 * size - 1], &overrun),
        "runs past",
        3,
    )?;
    let (res, _) = w
        .blocking_allreduce_in_place(vec![1.0f32], ReduceOp::BitAnd)
        .into_parts();
    ensure!(
        res.is_err_and(|e| e.kind() == std::io::ErrorKind::InvalidInput && e.to_string().contains("op")),
        "bitwise and on f32 accepted"
    );
    let (out, buf) = cx.mpi.block_on(w.send(size, 1, vec![1u8]));
    ensure!(
        out.result().is_err_and(|e| e.to_string().contains("destination")) && buf == [1],
        "send to a rank outside accepted"
    );
    let (out, _) = cx.mpi.block_on(w.send(0, w.max_tag().saturating_add(1), vec![1u8]));
    ensure!(
        w.max_tag() == u32::MAX || out.result().is_err_and(|e| e.to_string().contains("tag")),
        "tag above MPI_TAG_UB accepted"
    );
    let (res, _) = cx
        .mpi
        .block_on(w.recv(Source::Rank(size + 3), TagMatch::Any, Vec::with_capacity(1)))
        .into_parts();
    ensure!(
        res.is_err_and(|e| e.to_string().contains("source")),
        "receive from a rank outside accepted"
    );
    ensure!(w.split(Some(u32::MAX), 0).is_err(), "a color above i32::MAX accepted");
    let got = ok(
        w.blocking_allreduce_in_place(vec![1u8], ReduceOp::Sum),
        "allreduce after bad input",
    )?;
    ensure!(got == [size as u8], "communicator unusable after bad input");
    Ok(())
}

/// The same collectives from tokio and smol, through mfio-integration.
fn host_runtimes(cx: &Ctx) -> Outcome {
    let w = &cx.world;
    let size = cx.size() as u64;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let got = rt.block_on(mfio_integration::Tokio::run(
        &cx.mpi,
        w.allreduce_in_place(vec![3u64; 1000], ReduceOp::Sum),
    ));
    ensure!(ok(got, "tokio allreduce")? == vec![3 * size; 1000], "tokio allreduce");
    let got = smol::block_on(mfio_integration::Smol::run(
        &cx.mpi,
        w.allreduce_in_place(vec![4u64; 10], ReduceOp::Sum),
    ));
    ensure!(ok(got, "smol allreduce")? == vec![4 * size; 10], "smol allreduce");
    Ok(())
}

/// Collectives started, awaited and dropped on other threads while this
/// one drives: under Funneled they are forwarded to it.
fn other_threads(cx: &Ctx) -> Outcome {
    let (w, size) = (&cx.world, cx.size() as u64);
    let spare = w.dup().map_err(|e| format!("dup: {e}"))?;
    let (tx, rx) = futures::channel::oneshot::channel();
    let got = std::thread::scope(|scope| {
        scope.spawn(move || {
            // Started here, finished by whoever drives.
            let started = w.allreduce_in_place(vec![2u64; 1000], ReduceOp::Sum);
            let blocking = w.blocking_allreduce_in_place(vec![3u32; 10], ReduceOp::Sum);
            drop(spare);
            let _ = tx.send((started, blocking));
        });
        // This thread drives until the other is done.
        cx.mpi.block_on(rx)
    });
    let (started, blocking) = got.map_err(|_| "the other thread left without an answer")?;
    let blocking = ok(blocking, "blocking allreduce on another thread")?;
    ensure!(
        blocking == vec![3 * size as u32; 10],
        "blocking allreduce on another thread: {blocking:?}"
    );
    let started = ok(cx.mpi.block_on(started), "allreduce started on another thread")?;
    ensure!(started == vec![2 * size; 1000], "allreduce started on another thread");
    Ok(())
}

/// Threads that each run short collectives on a communicator of their
/// own, all at once, each driving the backend while it waits. Under
/// Multiple these start without the backend's lock, so MPI sees them
/// concurrently with each other and with the other threads' tests: every
/// result must still be exact. (Below Multiple one thread calls MPI, and
/// the other threads' collectives wait for it: `other_threads`.)
fn threads_on_their_own_communicators(cx: &Ctx) -> Outcome {
    const THREADS: u64 = 3;
    const ROUNDS: u64 = 300;
    if cx.mpi.thread_level() != ThreadLevel::Multiple {
        if cx.rank() == 0 {
            println!("threads_on_their_own_communicators: skipped below Multiple");
        }
        return Ok(());
    }
    let (rank, size) = (cx.rank() as u64, cx.size() as u64);
    // Made one after another here: a dup is a collective of the world.
    let comms = (0..THREADS)
        .map(|_| cx.world.dup().map_err(|e| format!("dup: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::scope(|scope| {
        let runs: Vec<_> = comms
            .iter()
            .zip(0u64..)
            .map(|(comm, t)| {
                scope.spawn(move || -> Outcome {
                    for i in 0..ROUNDS {
                        let v = t * 10_000 + i;
                        let sum = ok(
                            comm.wait(comm.allreduce_in_place(vec![v + rank; 2], ReduceOp::Sum)),
                            "allreduce",
                        )?;
                        let want = size * v + size * (size - 1) / 2;
                        ensure!(
                            sum == vec![want; 2],
                            "thread {t}, round {i}: allreduce {sum:?}, not {want}"
                        );
                        let root = (i % size) as usize;
                        let mine = if root as u64 == rank {
                            vec![(t + i) as u8; 8]
                        } else {
                            vec![0; 8]
                        };
                        let got = ok(comm.wait(comm.bcast(mine, root)), "bcast")?;
                        ensure!(got == vec![(t + i) as u8; 8], "thread {t}, round {i}: bcast {got:?}");
                        if i % 50 == 0 {
                            let max = ok(
                                comm.blocking_allreduce_in_place(vec![rank * 7 + i], ReduceOp::Max),
                                "max",
                            )?;
                            ensure!(max == vec![(size - 1) * 7 + i], "thread {t}, round {i}: max {max:?}");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        runs.into_iter()
            .try_for_each(|run| run.join().map_err(|_| "a thread panicked".to_owned())?)
    })
}

/// A thread whose driving step finds another thread driving is not
/// forgotten once that thread stops. Per round: on every rank but the
/// root (each rank in turn), a second thread waits for a broadcast posted
/// early, driving the backend; this thread runs an allreduce whose
/// reduction (called by MPI from within a test, with the backend held)
/// takes 100 ms, so the second
/// thread's steps find the backend busy; then this thread stops driving,
/// and only after that does the root send the broadcast. Nothing but the
/// second thread is left to test it. (A step that found the backend busy
/// once reported idle: the thread slept on a descriptor nothing signals.)
/// The round is exercised when MPI calls the reduction on this thread,
/// which is not always so; the rounds make it likely.
fn a_caller_that_found_the_backend_busy(cx: &Ctx) -> Outcome {
    const ROUNDS: u8 = 4;
    const HOLD: Duration = Duration::from_millis(100);
    if cx.mpi.thread_level() != ThreadLevel::Multiple || cx.size() < 2 {
        if cx.rank() == 0 {
            println!("a_caller_that_found_the_backend_busy: skipped below Multiple or with one rank");
        }
        return Ok(());
    }
    let slow = ReduceOp::<u64>::custom(true, |inc, acc| {
        std::thread::sleep(HOLD);
        for (a, x) in acc.iter_mut().zip(inc) {
            *a += x;
        }
    });
    let late = cx.world.dup().map_err(|e| format!("dup: {e}"))?;
    for round in 0..ROUNDS {
        // Which ranks MPI calls the reduction on depends on its algorithm:
        // each rank is the root in turn.
        let root = usize::from(round) % cx.size();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let outcome = std::thread::scope(|scope| -> Outcome {
            if cx.rank() != root {
                let (mpi, late) = (&cx.mpi, &late);
                scope.spawn(move || {
                    let got = mpi.block_on(late.bcast(vec![0u8; 8], root));
                    let _ = done_tx.send(got);
                });
            }
            // The broadcast's own future gives up testing after the spin,
            // and the backend's records take it over.
            std::thread::sleep(cx.progress.spin + Duration::from_millis(30));
            let sum = ok(
                cx.mpi
                    .block_on(cx.world.allreduce_in_place(vec![1u64; 4], slow.clone())),
                "slow allreduce",
            )?;
            ensure!(sum == vec![cx.size() as u64; 4], "round {round}: allreduce {sum:?}");
            if cx.rank() == root {
                // Well after the other ranks' reductions ended.
                std::thread::sleep(HOLD + HOLD / 2);
                // Non-blocking, as on the other ranks: MPI never matches a
                // blocking collective with a non-blocking one.
                let sent = ok(cx.mpi.block_on(late.bcast(vec![round + 1; 8], root)), "bcast")?;
                ensure!(
                    sent == vec![round + 1; 8],
                    "round {round}: the root's buffer came back as {sent:?}"
                );
                return Ok(());
            }
            // Not driving: the waiting thread must do it.
            let got = match done_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(got) => got,
                Err(_) => {
                    // Drive for it, so the case ends with its message.
                    cx.mpi.block_on(std::future::poll_fn(|c| match done_rx.try_recv() {
                        Ok(_) => std::task::Poll::Ready(()),
                        Err(_) => {
                            c.waker().wake_by_ref();
                            std::task::Poll::Pending
                        }
                    }));
                    return Err(format!(
                        "round {round}: a broadcast finished only once another thread drove the \
                         backend again (its waiter slept through it)"
                    ));
                }
            };
            let got = ok(got, "bcast")?;
            ensure!(got == vec![round + 1; 8], "round {round}: bcast {got:?}");
            Ok(())
        });
        outcome?;
        cx.world.blocking_barrier().map_err(|e| format!("barrier: {e}"))?;
    }
    Ok(())
}

/// A backend with nothing pending sleeps: a thread blocked on it for a
/// while uses almost no CPU.
fn idle_costs_nothing(cx: &Ctx) -> Outcome {
    let mpi = cx.mpi.clone();
    let wake = Arc::new(AtomicBool::new(false));
    let flag = wake.clone();
    let before = thread_cpu();
    let waiter = std::thread::spawn(move || {
        let start = thread_cpu();
        mpi.block_on(std::future::poll_fn(|c| {
            if flag.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                let waker = c.waker().clone();
                let flag = flag.clone();
                std::thread::spawn(move || {
                    while !flag.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    waker.wake();
                });
                std::task::Poll::Pending
            }
        }));
        thread_cpu() - start
    });
    std::thread::sleep(Duration::from_millis(400));
    wake.store(true, Ordering::Release);
    let used = waiter.join().map_err(|_| "the waiter panicked")?;
    let _ = before;
    ensure!(
        used < Duration::from_millis(40),
        "an idle backend used {used:?} of CPU in 400 ms"
    );
    Ok(())
}

/// Under a progress thread, a collective nobody drives still finishes:
/// every rank starts a long allreduce (split into many requests, each
/// needing MPI calls to move), then only looks at its future, never
/// calling MPI, until it is done. Without the thread's tests it would wait
/// forever (the watchdog would end the rank).
fn the_thread_progresses_unattended(cx: &Ctx) -> Outcome {
    if !cx.progress.thread {
        println!("the_thread_progresses_unattended: skipped without a progress thread");
        return Ok(());
    }
    let (w, size) = (&cx.world, cx.size());
    let len = 64 * MAX_COUNT;
    let send: Vec<f64> = (0..len).map(|i| (cx.rank() * len + i) as f64).collect();
    let mut fut = w.allreduce(send, vec![0.0; len], ReduceOp::Sum);
    let mut task = std::task::Context::from_waker(std::task::Waker::noop());
    let (res, (_, got)) = loop {
        if let std::task::Poll::Ready(out) = Pin::new(&mut fut).poll(&mut task) {
            break out.into_parts();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    res.map_err(|e| format!("unattended allreduce: {e}"))?;
    let want = |i: usize| (0..size).map(|r| (r * len + i) as f64).sum::<f64>();
    ensure!(
        got.iter().enumerate().all(|(i, &x)| x == want(i)),
        "unattended allreduce: wrong sums"
    );
    ok(cx.mpi.block_on(w.barrier()), "barrier after the unattended allreduce")
}

/// Under a progress thread, a caller that waits drives the backend itself
/// and the thread stands aside: while this thread runs short collectives
/// back to back, the progress thread runs less than a tenth of the time
/// they take (measured: 1-2 %, idle or under two busy loops). Left to the
/// thread, every collective cost wake-ups across threads, and the thread
/// ran half the time (as long as the caller). The yardstick is the time
/// the loop takes, not the caller's CPU: under oversubscription Open MPI
/// yields the CPU in every idle progress call, and a caller that spun for
/// 300 ms ran 3 ms of them.
fn the_thread_stands_aside(cx: &Ctx) -> Outcome {
    if !cx.progress.thread {
        println!("the_thread_stands_aside: skipped without a progress thread");
        return Ok(());
    }
    if cx.progress.spin < Duration::from_millis(1) {
        // A caller then hands its collectives to the thread at once.
        println!("the_thread_stands_aside: skipped: callers spin less than 1 ms");
        return Ok(());
    }
    let w = &cx.world;
    let progress_cpu = || progress_thread_cpu().ok_or("no thread named mfio-mpi-progr with a schedstat");
    // A thread just spawned may not have run yet (it names itself when it
    // does), on a machine whose cores the ranks keep busy.
    let named_by = Instant::now() + Duration::from_secs(10);
    while progress_thread_cpu().is_none() && Instant::now() < named_by {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (thread_before, mine_before) = (progress_cpu()?, thread_cpu());
    let start = Instant::now();
    let mut rounds = 0usize;
    // Every rank runs as many: rank 0's clock decides, and says so.
    loop {
        let stop = u8::from(cx.rank() == 0 && start.elapsed() > Duration::from_millis(300));
        let (res, (_, got)) = w.wait(w.allreduce(vec![stop], vec![0u8], ReduceOp::Max)).into_parts();
        res.map_err(|e| format!("allreduce {rounds}: {e}"))?;
        rounds += 1;
        if got == [1] {
            break;
        }
    }
    let (thread, mine, took) = (
        progress_cpu()? - thread_before,
        thread_cpu() - mine_before,
        start.elapsed(),
    );
    println!(
        "rank {}: {rounds} allreduces in {took:?}: the progress thread ran {thread:?}, the caller {mine:?}",
        cx.rank()
    );
    ensure!(
        thread * 10 < took,
        "the progress thread ran {thread:?} of the {took:?} the caller took for {rounds} allreduces"
    );
    Ok(())
}

/// How long the backend's progress thread has run on a CPU, from
/// `/proc/self/task/*/schedstat` (nanoseconds).
fn progress_thread_cpu() -> Option<Duration> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    tasks.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim_end() != "mfio-mpi-progr" {
            return None;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        stat.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
    })
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a pointer to a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// One rank leaves without finalising; the others, in a collective with
/// it, must end (with an error or killed by the launcher) rather than hang.
fn early_exit(cx: &Ctx) -> Outcome {
    if cx.rank() == cx.size() - 1 {
        eprintln!("rank {} leaves early on purpose", cx.rank());
        std::process::exit(3);
    }
    let (res, _) = cx
        .mpi
        .block_on(cx.world.allreduce_in_place(vec![1u8], ReduceOp::Sum))
        .into_parts();
    Err(format!(
        "rank {}: a collective with a departed rank ended with {res:?}",
        cx.rank()
    ))
}

/// Allreduces over MPI point-to-point (`MpiTransport`) until the last rank
/// kills itself (`SIGKILL`) in the middle of them. Open MPI 4.1 has no
/// fault tolerance: the launcher ends the job and names the rank, which
/// `scripts/test` checks (in bounded time, no hang).
fn killed_over_transport(cx: &Ctx) -> Outcome {
    let t = MpiTransport::new(&cx.world).map_err(|e| format!("MpiTransport: {e}"))?;
    let (rank, size) = (cx.rank(), cx.size());
    for seq in 0u32.. {
        if rank == size - 1 && seq == 20 {
            eprintln!("rank {rank} kills itself on purpose");
            // SAFETY: kill(2) on this process; nothing runs after it.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        let mut buf = every_algorithm::input(rank, 1000, seq);
        let id = mfio_coll::transport::CollId { comm: 1, seq };
        cx.mpi
            .block_on(mfio_coll::algo::allreduce_ring(&t, id, &mut buf, &ReduceOp::Sum))
            .map_err(|e| format!("rank {rank}: allreduce {seq} over MPI point-to-point: {e}"))?;
    }
    Ok(())
}

/// One rank finalises and leaves; the others, in a collective with it,
/// must get `TimedOut` from the backend's timeout.
fn early_finalize(cx: Ctx) -> Outcome {
    if cx.rank() == cx.size() - 1 {
        eprintln!("rank {} finalises and leaves early on purpose", cx.rank());
        drop(cx);
        std::process::exit(0);
    }
    let start = Instant::now();
    let (res, _) = cx
        .mpi
        .block_on(cx.world.allreduce_in_place(vec![1u8], ReduceOp::Sum))
        .into_parts();
    match res {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut && e.to_string().contains("allreduce") => {
            println!(
                "rank {}: timed out as expected after {:.1?}: {e}",
                cx.rank(),
                start.elapsed()
            );
            Ok(())
        }
        other => Err(format!(
            "rank {}: a collective with a departed rank ended with {other:?}",
            cx.rank()
        )),
    }
}

fn main() {
    let only = std::env::var("MFIO_MPI_CASE").ok();
    let timeout = (only.as_deref() == Some("early-finalize")).then_some(Duration::from_secs(3));
    // MFIO_MPI_PROGRESS=thread runs every case with the progress thread.
    // MFIO_MPI_SPIN_US sets how long collectives are tested before the
    // caller may sleep (0: every collective still running after its first
    // few tests goes to the backend's records).
    let spin = std::env::var("MFIO_MPI_SPIN_US").ok().and_then(|v| v.parse().ok());
    let progress = Progress {
        thread: std::env::var("MFIO_MPI_PROGRESS").is_ok_and(|v| v == "thread"),
        spin: spin.map_or(Progress::default().spin, Duration::from_micros),
        ..Progress::default()
    };
    // MFIO_MPI_LEVEL=funneled runs them with MPI_THREAD_FUNNELED.
    let level = match std::env::var("MFIO_MPI_LEVEL").as_deref() {
        Ok("funneled") => ThreadLevel::Funneled,
        _ => ThreadLevel::Multiple,
    };
    let built = Mpi::builder()
        .thread_level(level)
        .max_count(MAX_COUNT)
        .timeout(timeout)
        .progress(progress)
        .build();
    let mpi = match built {
        Ok(m) => m,
        Err(e) => {
            eprintln!("MPI init failed: {e}");
            std::process::exit(2);
        }
    };
    let world = match mpi.world() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("world: {e}");
            std::process::exit(2);
        }
    };
    let cx = Ctx { mpi, world, progress };
    let cases: [Case; 21] = [
        ("every_collective", every_collective),
        ("over_mpi_transport", over_mpi_transport),
        ("over_tcp_via_mpi", over_tcp_via_mpi),
        ("over_ucx_via_mpi", over_ucx_via_mpi),
        ("large_counts", large_counts),
        ("every_operation", every_operation),
        ("custom_operations", custom_operations),
        ("concurrency", concurrency),
        ("split", split),
        ("point_to_point", point_to_point),
        ("drop_mid_flight", drop_mid_flight),
        ("bad_input", bad_input),
        ("host_runtimes", host_runtimes),
        ("other_threads", other_threads),
        ("threads_on_their_own_communicators", threads_on_their_own_communicators),
        (
            "a_caller_that_found_the_backend_busy",
            a_caller_that_found_the_backend_busy,
        ),
        ("idle_costs_nothing", idle_costs_nothing),
        ("drive_now_with_a_receive_pending", drive_now_with_a_receive_pending),
        (
            "a_wake_from_another_thread_ends_the_spin",
            a_wake_from_another_thread_ends_the_spin,
        ),
        ("the_thread_progresses_unattended", the_thread_progresses_unattended),
        ("the_thread_stands_aside", the_thread_stands_aside),
    ];
    if only.as_deref() == Some("early-finalize") {
        let r = early_finalize(cx);
        eprintln!("{r:?}");
        // The timed-out collective is still pending, so MPI is not
        // finalised: the launcher sees this rank leave too.
        std::process::exit(if r.is_ok() { 0 } else { 1 });
    }
    if only.as_deref() == Some("early-exit") {
        let r = early_exit(&cx);
        eprintln!("{r:?}");
        std::process::exit(1);
    }
    if only.as_deref() == Some("killed-over-transport") {
        let r = killed_over_transport(&cx);
        eprintln!("{r:?}");
        std::process::exit(1);
    }
    let (rank, size) = (cx.rank(), cx.size());
    if rank == 0 {
        println!("mpi_ranks: {size} ranks, {:?}, {progress:?}", cx.mpi.thread_level());
    }
    for (name, case) in cases {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|one| one == name)) {
            continue;
        }
        let done = Arc::new(AtomicBool::new(false));
        let watch = done.clone();
        let case_name = name.to_owned();
        std::thread::spawn(move || {
            // Looks at the flag after the last sleep too: a case that
            // finished within the last pause is not reported hung.
            let end = Instant::now() + CASE_TIMEOUT;
            loop {
                if watch.load(Ordering::Acquire) {
                    return;
                }
                let now = Instant::now();
                if now >= end {
                    break;
                }
                std::thread::sleep((end - now).min(Duration::from_millis(50)));
            }
            eprintln!(
                "rank {rank}/{size}: case {case_name} hung for {CASE_TIMEOUT:?} (last step: {:?}; \
                 last algorithm begun: {:?})",
                STEP.get(),
                every_algorithm::BEGAN.get()
            );
            std::process::exit(4);
        });
        step(String::new());
        let start = Instant::now();
        let result = case(&cx);
        done.store(true, Ordering::Release);
        match result {
            Ok(()) => {
                if rank == 0 {
                    println!("case {name} ({size} ranks) ... ok in {:.2?}", start.elapsed());
                }
            }
            Err(e) => {
                eprintln!("rank {rank}/{size}: case {name} FAILED: {e}");
                std::process::exit(1);
            }
        }
    }
    drop(cx);
}
