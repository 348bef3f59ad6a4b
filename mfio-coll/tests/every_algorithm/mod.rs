//! Every collective algorithm once over a given transport, each result
//! checked exactly against a sequential reference the rank computes for
//! itself (every rank's input is a function of its rank). Shared by the
//! transport tests, in-process and under `mpiexec`.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use mfio_coll::algo;
use mfio_coll::transport::{CollId, Transport};
use mfio_coll::ReduceOp;

/// Rank `r`'s input of length `len` (salted by the collective).
pub fn input(r: usize, len: usize, salt: u32) -> Vec<u32> {
    (0..len)
        .map(|i| {
            (r as u32 + 1)
                .wrapping_mul(2_654_435_761)
                .wrapping_add((i as u32).wrapping_mul(40_503))
                .wrapping_add(salt.wrapping_mul(97))
        })
        .collect()
}

/// Affine maps `x -> a·x + b`: composing them is associative but not
/// commutative, so an operand out of rank order shows.
pub fn affine(r: usize, len: usize) -> Vec<[u64; 2]> {
    (0..len)
        .map(|i| [(r as u64) * 2 + 3 + i as u64, (r as u64 + 7) * 1_000_003 + i as u64])
        .collect()
}

/// `acc = incoming ∘ acc`: first `incoming`'s map, then `acc`'s.
pub fn compose() -> ReduceOp<[u64; 2]> {
    ReduceOp::custom(false, |incoming: &[[u64; 2]], acc: &mut [[u64; 2]]| {
        for (a, x) in acc.iter_mut().zip(incoming) {
            *a = [x[0].wrapping_mul(a[0]), a[0].wrapping_mul(x[1]).wrapping_add(a[1])];
        }
    })
}

/// The sequential reference: the reduction of `inputs` in rank order.
pub fn reference<T: mfio_coll::Element>(inputs: &[Vec<T>], op: &ReduceOp<T>) -> Vec<T> {
    let mut acc = inputs.last().cloned().unwrap_or_default();
    for v in inputs.iter().rev().skip(1) {
        op.apply(v, &mut acc);
    }
    acc
}

/// The outputs of `n` rank threads, sent as `(rank, output)` on `rx`, in
/// rank order. A rank that does not answer within 60 s fails the test (a
/// hang is a failure).
pub fn collect_ranks<O>(rx: std::sync::mpsc::Receiver<(usize, O)>, n: usize) -> Vec<O> {
    let mut out: Vec<Option<O>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let (rank, o) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("a rank of {n} hung or panicked"));
        out[rank] = Some(o);
    }
    out.into_iter().map(|o| o.expect("every rank answered")).collect()
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Numbers the collectives of one communicator.
pub struct Seq {
    comm: u32,
    next: u32,
}

impl Seq {
    /// Collectives on communicator `comm`, from sequence number 0.
    pub fn new(comm: u32) -> Self {
        Self { comm, next: 0 }
    }

    /// The next collective's id.
    pub fn next(&mut self) -> CollId {
        let id = CollId {
            comm: self.comm,
            seq: self.next,
        };
        self.next += 1;
        id
    }
}

/// What a rank began last, for the report of a case that hangs (ranks
/// that are threads of one process overwrite each other's).
pub struct Breadcrumb(std::sync::Mutex<String>);

impl Breadcrumb {
    /// Nothing begun yet.
    pub const fn new() -> Self {
        Self(std::sync::Mutex::new(String::new()))
    }

    /// Records what begins now.
    pub fn set(&self, what: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = what.into();
    }

    /// What began last.
    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// The algorithm [`every_algorithm`] began last: where a hung rank is.
pub static BEGAN: Breadcrumb = Breadcrumb::new();

fn began(name: &'static str) {
    BEGAN.set(name);
}

fn fail(what: &str) -> impl Fn(mfio_core::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Runs every algorithm with `len` elements per rank (per block for the
/// block-wise ones), checking each result.
pub async fn every_algorithm(t: &dyn Transport, seq: &mut Seq, len: usize) -> Result<(), String> {
    let (rank, n) = (t.rank(), t.size());
    let sum = ReduceOp::<u32>::Sum;
    let all: Vec<Vec<u32>> = (0..n).map(|r| input(r, len, len as u32)).collect();
    let total = reference(&all, &sum);
    let root = n / 2;

    for which in 0..7 {
        let mut buf = all[rank].clone();
        let id = seq.next();
        let name = [
            "allreduce ring",
            "allreduce segmented ring",
            "allreduce recursive doubling",
            "allreduce Rabenseifner",
            "allreduce reduce then bcast",
            "allreduce direct",
            "allreduce two-shot",
        ][which];
        began(name);
        match which {
            0 => algo::allreduce_ring(t, id, &mut buf, &sum).await,
            1 => algo::allreduce_segmented_ring(t, id, &mut buf, &sum, 777).await,
            2 => algo::allreduce_recursive_doubling(t, id, &mut buf, &sum).await,
            3 => algo::allreduce_rabenseifner(t, id, &mut buf, &sum).await,
            4 => algo::allreduce_reduce_bcast(t, id, &mut buf, &sum).await,
            5 => algo::allreduce_direct(t, id, &mut buf, &sum).await,
            _ => algo::allreduce_two_shot(t, id, &mut buf, &sum).await,
        }
        .map_err(fail(name))?;
        ensure!(buf == total, "{name}: wrong sum on rank {rank}");
    }

    // reduce to a root
    began("reduce binomial");
    let mut buf = all[rank].clone();
    algo::reduce_binomial(t, seq.next(), &mut buf, &sum, root)
        .await
        .map_err(fail("reduce binomial"))?;
    ensure!(rank != root || buf == total, "reduce binomial: wrong sum at the root");

    // bcast from a root
    let from_root = input(root, len, 7);
    for which in 0..3 {
        let mut buf = if rank == root { from_root.clone() } else { vec![0; len] };
        let id = seq.next();
        let name = ["bcast binomial", "bcast scatter-allgather", "bcast chain"][which];
        began(name);
        match which {
            0 => algo::bcast_binomial(t, id, &mut buf, root).await,
            1 => algo::bcast_scatter_allgather(t, id, &mut buf, root).await,
            _ => algo::bcast_chain(t, id, &mut buf, root, 1000).await,
        }
        .map_err(fail(name))?;
        ensure!(buf == from_root, "{name}: wrong data on rank {rank}");
    }

    // reduce_scatter_block: blocks of len
    let wide: Vec<Vec<u32>> = (0..n).map(|r| input(r, len * n, 11)).collect();
    let wide_total = reference(&wide, &sum);
    for which in 0..2 {
        let mut send = wide[rank].clone();
        let mut recv = vec![0; len];
        let id = seq.next();
        let name = ["reduce_scatter_block ring", "reduce_scatter_block halving"][which];
        began(name);
        match which {
            0 => algo::reduce_scatter_block_ring(t, id, &mut send, &mut recv, &sum).await,
            _ => algo::reduce_scatter_block_halving(t, id, &mut send, &mut recv, &sum).await,
        }
        .map_err(fail(name))?;
        ensure!(
            recv[..] == wide_total[rank * len..(rank + 1) * len],
            "{name}: wrong block on rank {rank}"
        );
    }

    // allgather
    let gathered: Vec<u32> = all.concat();
    for which in 0..4 {
        if which == 2 && !n.is_power_of_two() {
            continue;
        }
        let mut recv = vec![0; len * n];
        let id = seq.next();
        let name = [
            "allgather ring",
            "allgather Bruck",
            "allgather recursive doubling",
            "allgather direct",
        ][which];
        began(name);
        match which {
            0 => algo::allgather_ring(t, id, &all[rank], &mut recv).await,
            1 => algo::allgather_bruck(t, id, &all[rank], &mut recv).await,
            2 => algo::allgather_recursive_doubling(t, id, &all[rank], &mut recv).await,
            _ => algo::allgather_direct(t, id, &all[rank], &mut recv).await,
        }
        .map_err(fail(name))?;
        ensure!(recv == gathered, "{name}: wrong result on rank {rank}");
    }

    // scatter and gather, linear and binomial
    let spread = input(root, len * n, 13);
    for which in 0..2 {
        let mut recv = vec![0; len];
        let send = if rank == root { spread.clone() } else { Vec::new() };
        let id = seq.next();
        let name = ["scatter linear", "scatter binomial"][which];
        began(name);
        match which {
            0 => algo::scatter_linear(t, id, &send, &mut recv, root).await,
            _ => algo::scatter_binomial(t, id, &send, &mut recv, root).await,
        }
        .map_err(fail(name))?;
        ensure!(
            recv[..] == spread[rank * len..(rank + 1) * len],
            "{name}: wrong part on rank {rank}"
        );
    }
    for which in 0..2 {
        let mut recv = if rank == root { vec![0; len * n] } else { Vec::new() };
        let id = seq.next();
        let name = ["gather linear", "gather binomial"][which];
        began(name);
        match which {
            0 => algo::gather_linear(t, id, &all[rank], &mut recv, root).await,
            _ => algo::gather_binomial(t, id, &all[rank], &mut recv, root).await,
        }
        .map_err(fail(name))?;
        ensure!(rank != root || recv == gathered, "{name}: wrong result at the root");
    }

    // alltoall: block q of rank p's send goes to rank q
    let outgoing: Vec<Vec<u32>> = (0..n).map(|r| input(r, len * n, 17)).collect();
    let want: Vec<u32> = (0..n)
        .flat_map(|p| outgoing[p][rank * len..(rank + 1) * len].to_vec())
        .collect();
    for which in 0..2 {
        let mut recv = vec![0; len * n];
        let id = seq.next();
        let name = ["alltoall pairwise", "alltoall Bruck"][which];
        began(name);
        match which {
            0 => algo::alltoall_pairwise(t, id, &outgoing[rank], &mut recv).await,
            _ => algo::alltoall_bruck(t, id, &outgoing[rank], &mut recv).await,
        }
        .map_err(fail(name))?;
        ensure!(recv == want, "{name}: wrong result on rank {rank}");
    }

    // scan and exscan, with a non-commutative operation
    let maps: Vec<Vec<[u64; 2]>> = (0..n).map(|r| affine(r, len)).collect();
    began("scan");
    let mut buf = maps[rank].clone();
    algo::scan_recursive_doubling(t, seq.next(), &mut buf, &compose())
        .await
        .map_err(fail("scan"))?;
    ensure!(
        buf == reference(&maps[..=rank], &compose()),
        "scan: wrong prefix on rank {rank}"
    );
    began("exscan");
    let mut buf = maps[rank].clone();
    algo::exscan_recursive_doubling(t, seq.next(), &mut buf, &compose())
        .await
        .map_err(fail("exscan"))?;
    let want = if rank == 0 {
        maps[0].clone()
    } else {
        reference(&maps[..rank], &compose())
    };
    ensure!(buf == want, "exscan: wrong prefix on rank {rank}");

    began("barrier");
    algo::barrier_dissemination(t, seq.next())
        .await
        .map_err(fail("barrier"))?;
    Ok(())
}

/// A collective every rank drops midway, each after a different amount of
/// progress (rank r polls it 3·r times), on communicator `comm`: the
/// transport is told to forget it, as `TransportComm` does. Then a long
/// broadcast from rank 0 that every other rank forgets unpolled: rank 0's
/// must still finish. Later collectives must be right; [`nothing_kept`] at the end of the run then
/// shows that none of the dropped one's messages stayed.
pub fn drop_mid_flight<B: mfio_core::IoBackend>(driver: &B, t: &dyn Transport, comm: u32) -> Result<(), String> {
    use mfio_core::IoBackendExt;
    let (rank, size) = (t.rank(), t.size());
    let dropped = CollId { comm, seq: 0 };
    {
        let mut buf = input(rank, 300_000, 5);
        let mut fut = std::pin::pin!(algo::allreduce_ring(t, dropped, &mut buf, &ReduceOp::Sum));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..rank * 3 {
            if std::future::Future::poll(fut.as_mut(), &mut cx).is_ready() {
                break;
            }
            driver.drive();
        }
    }
    t.forget(dropped);
    // A long broadcast that only the root runs: the other ranks forget it
    // without taking part, and the root's sends must still complete (a
    // forgotten message's bytes are taken and dropped, not left waiting).
    let unwanted = CollId { comm, seq: 4 };
    if rank == 0 {
        let mut long = input(0, 200_000, 4);
        driver
            .block_on(algo::bcast_binomial(t, unwanted, &mut long, 0))
            .map_err(|e| format!("a broadcast the others forgot: {e}"))?;
    } else {
        t.forget(unwanted);
    }
    for s in 1..4u32 {
        let mut buf = input(rank, 1000, s);
        driver
            .block_on(algo::allreduce_recursive_doubling(
                t,
                CollId { comm, seq: s },
                &mut buf,
                &ReduceOp::Sum,
            ))
            .map_err(|e| format!("allreduce {s} after the drop: {e}"))?;
        let mut want = input(0, 1000, s);
        for r in 1..size {
            ReduceOp::Sum.apply(&input(r, 1000, s), &mut want);
        }
        if buf != want {
            return Err(format!("allreduce {s} after the drop: wrong sum"));
        }
    }
    Ok(())
}

/// A long broadcast after which every other rank stops driving the
/// transport for 3 s (as a program does that goes on with other
/// work): a rank's part is done only when nothing of it waits for its
/// transport to be driven again, so rank 0's broadcast must finish while
/// they rest. Then a barrier, on communicator `comm`.
pub fn receivers_rest_after_a_collective<B: mfio_core::IoBackend>(
    driver: &B,
    t: &dyn Transport,
    comm: u32,
) -> Result<(), String> {
    use mfio_core::IoBackendExt;
    let rank = t.rank();
    let want = input(0, 300_000, 9);
    let mut buf = if rank == 0 { want.clone() } else { vec![0; want.len()] };
    let rest = std::time::Duration::from_secs(3);
    let start = std::time::Instant::now();
    driver
        .block_on(algo::bcast_binomial(t, CollId { comm, seq: 0 }, &mut buf, 0))
        .map_err(|e| format!("a broadcast before a rest: {e}"))?;
    if buf != want {
        return Err("a broadcast before a rest: wrong data".into());
    }
    if rank == 0 {
        if start.elapsed() >= rest && t.size() > 1 {
            return Err(format!(
                "rank 0's broadcast took {:?}: it waited for the others' rest",
                start.elapsed()
            ));
        }
    } else {
        std::thread::sleep(rest);
    }
    driver
        .block_on(algo::barrier_dissemination(t, CollId { comm, seq: 1 }))
        .map_err(|e| format!("the barrier after a rest: {e}"))
}

/// No message left in the transport. Call it after the run's last
/// collective on `t` (a barrier: once it is done here, every message for
/// this rank has been taken), so that nothing can be early.
pub fn nothing_kept(t: &dyn Transport) -> Result<(), String> {
    match t.unclaimed() {
        0 => Ok(()),
        left => Err(format!(
            "{left} messages kept after the last collective (a dropped one's?)"
        )),
    }
}

/// Collectives under load, on communicators 2, 3 and 4: 1 000 broadcasts
/// back to back from a fast root (later broadcasts' messages arrive early),
/// then eight allreduces at once with a second communicator's interleaved.
pub fn under_load<B: mfio_core::IoBackend>(driver: &B, t: &dyn Transport) -> Result<(), String> {
    use futures::future::join_all;
    use mfio_core::IoBackendExt;
    let (rank, size) = (t.rank(), t.size());
    // A fast root: later broadcasts' messages arrive early.
    for s in 0..1000u32 {
        let want = input(0, 17, s);
        let mut buf = if rank == 0 { want.clone() } else { vec![0; 17] };
        driver
            .block_on(algo::bcast_binomial(t, CollId { comm: 2, seq: s }, &mut buf, 0))
            .map_err(|e| format!("bcast {s}: {e}"))?;
        if buf != want {
            return Err(format!("bcast {s}: wrong data"));
        }
    }
    // Eight collectives at once, and a second communicator interleaved.
    let mut bufs: Vec<Vec<u32>> = (0..8).map(|c| input(rank, 3000 + c, c as u32)).collect();
    let mut other = input(rank, 999, 77);
    let outcomes = driver.block_on(async {
        let concurrent = join_all(bufs.iter_mut().enumerate().map(|(c, buf)| async move {
            algo::allreduce_recursive_doubling(t, CollId { comm: 3, seq: c as u32 }, buf, &ReduceOp::Sum).await
        }));
        let interleaved = algo::allreduce_ring(t, CollId { comm: 4, seq: 0 }, &mut other, &ReduceOp::Sum);
        futures::join!(concurrent, interleaved)
    });
    let (concurrent, interleaved) = outcomes;
    for (c, o) in concurrent.into_iter().enumerate() {
        o.map_err(|e| format!("concurrent allreduce {c}: {e}"))?;
        let mut want = input(0, 3000 + c, c as u32);
        for r in 1..size {
            ReduceOp::Sum.apply(&input(r, 3000 + c, c as u32), &mut want);
        }
        if bufs[c] != want {
            return Err(format!("concurrent allreduce {c}: wrong sum"));
        }
    }
    interleaved.map_err(|e| format!("second communicator: {e}"))?;
    let mut want = input(0, 999, 77);
    for r in 1..size {
        ReduceOp::Sum.apply(&input(r, 999, 77), &mut want);
    }
    if other != want {
        return Err("second communicator: wrong sum".into());
    }
    Ok(())
}
