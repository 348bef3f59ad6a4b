//! The collective algorithms over the in-process transport, against a
//! sequential reference: every algorithm × ranks 1..=9 × lengths up to
//! 10 000 (uneven blocks included), with operations completing in a
//! scrambled order; bit-identical floating-point results on every rank;
//! back-to-back collectives; wrong lengths and ranks that leave.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod every_algorithm;

use every_algorithm::{affine, collect_ranks, compose, reference};
use futures::executor::block_on;
use mfio_coll::algo;
use mfio_coll::transport::local::LocalTransport;
use mfio_coll::transport::{CollId, Transport};
use mfio_coll::ReduceOp;
use proptest::prelude::*;

/// The collective every test runs under.
const ID: CollId = CollId { comm: 1, seq: 0 };

/// Runs `body` on every rank of a scrambled group of `n`, each on a thread
/// of its own; the outputs in rank order. A rank that does not finish in
/// 60 s fails the test (a hang is a failure).
fn run_group<O, F>(n: usize, seed: u64, body: F) -> Vec<O>
where
    O: Send + 'static,
    F: Fn(LocalTransport) -> O + Send + Sync + 'static,
{
    let body = Arc::new(body);
    let (tx, rx) = std::sync::mpsc::channel();
    for t in LocalTransport::scrambled_group(n, seed) {
        let (tx, body) = (tx.clone(), body.clone());
        std::thread::spawn(move || {
            let rank = t.rank();
            let _ = tx.send((rank, body(t)));
        });
    }
    drop(tx);
    collect_ranks(rx, n)
}

/// Rank `r`'s input of length `len`: values that differ by rank and index.
fn input(r: usize, len: usize) -> Vec<u32> {
    every_algorithm::input(r, len, 0)
}

#[derive(Debug, Clone, Copy)]
enum Allreduce {
    Ring,
    RecursiveDoubling,
    Rabenseifner,
    ReduceBcast,
    SegmentedRing(usize),
    Direct,
    TwoShot,
}

fn allreduce_kind(pick: u8) -> Allreduce {
    match pick % 7 {
        0 => Allreduce::Ring,
        1 => Allreduce::RecursiveDoubling,
        2 => Allreduce::Rabenseifner,
        3 => Allreduce::ReduceBcast,
        4 => Allreduce::Direct,
        5 => Allreduce::TwoShot,
        _ => Allreduce::SegmentedRing(1 + usize::from(pick) * 37),
    }
}

fn allreduce<T: mfio_coll::Element>(
    which: Allreduce,
    t: &LocalTransport,
    buf: &mut [T],
    op: &ReduceOp<T>,
) -> mfio_core::Result<()> {
    block_on(async {
        match which {
            Allreduce::Ring => algo::allreduce_ring(t, ID, buf, op).await,
            Allreduce::RecursiveDoubling => algo::allreduce_recursive_doubling(t, ID, buf, op).await,
            Allreduce::Rabenseifner => algo::allreduce_rabenseifner(t, ID, buf, op).await,
            Allreduce::ReduceBcast => algo::allreduce_reduce_bcast(t, ID, buf, op).await,
            Allreduce::SegmentedRing(segment) => algo::allreduce_segmented_ring(t, ID, buf, op, segment).await,
            Allreduce::Direct => algo::allreduce_direct(t, ID, buf, op).await,
            Allreduce::TwoShot => algo::allreduce_two_shot(t, ID, buf, op).await,
        }
    })
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 40,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn allreduce_matches_the_sequential_reduction(
        n in 1usize..=9, len in 0usize..=10_000, seed: u64, pick: u8,
    ) {
        let which = allreduce_kind(pick);
        let inputs: Vec<Vec<u32>> = (0..n).map(|r| input(r, len)).collect();
        let want = reference(&inputs, &ReduceOp::Sum);
        let got = run_group(n, seed, move |t| {
            let mut buf = input(t.rank(), len);
            allreduce(which, &t, &mut buf, &ReduceOp::Sum).map(|()| buf)
        });
        for (r, res) in got.into_iter().enumerate() {
            let buf = res.unwrap_or_else(|e| panic!("{which:?} rank {r}: {e}"));
            prop_assert!(buf == want, "{:?}: rank {} of {} differs at length {}", which, r, n, len);
        }
    }

    #[test]
    fn recursive_doubling_reduce_bcast_direct_and_two_shot_keep_rank_order_for_non_commutative_operations(
        n in 1usize..=9, len in 0usize..=2_000, seed: u64, pick in 0u8..4,
    ) {
        let which = [Allreduce::RecursiveDoubling, Allreduce::ReduceBcast, Allreduce::Direct, Allreduce::TwoShot]
            [usize::from(pick)];
        let inputs: Vec<Vec<[u64; 2]>> = (0..n).map(|r| affine(r, len)).collect();
        let want = reference(&inputs, &compose());
        let got = run_group(n, seed, move |t| {
            let mut buf = affine(t.rank(), len);
            allreduce(which, &t, &mut buf, &compose()).map(|()| buf)
        });
        for (r, res) in got.into_iter().enumerate() {
            prop_assert!(res.expect("allreduce") == want, "{:?}: rank {} of {}", which, r, n);
        }
    }

    #[test]
    fn floating_point_results_are_bit_identical_on_every_rank(
        n in 2usize..=9, len in 1usize..=3_000, seed: u64, pick: u8,
    ) {
        let which = allreduce_kind(pick);
        let got = run_group(n, seed, move |t| {
            // Magnitudes far apart: the sum depends on the order of additions.
            let mut buf: Vec<f64> = (0..len)
                .map(|i| ((t.rank() * 7919 + i * 104_729) % 1000) as f64 * 10f64.powi((t.rank() % 5) as i32 * 4 - 8))
                .collect();
            allreduce(which, &t, &mut buf, &ReduceOp::Sum).map(|()| buf.iter().map(|x| x.to_bits()).collect::<Vec<u64>>())
        });
        let first = got[0].as_ref().expect("rank 0").clone();
        for (r, res) in got.into_iter().enumerate() {
            prop_assert!(res.expect("allreduce") == first, "{:?}: rank {} of {} has other bits", which, r, n);
        }
    }

    #[test]
    fn bcast_copies_the_roots_buffer_everywhere(
        n in 1usize..=9, len in 0usize..=10_000, root_pick: usize, seed: u64,
    ) {
        let root = root_pick % n;
        let want = input(root, len);
        let got = run_group(n, seed, move |t| {
            let mut buf = if t.rank() == root { input(root, len) } else { vec![0; len] };
            block_on(algo::bcast_binomial(&t, ID, &mut buf, root)).map(|()| buf)
        });
        for (r, res) in got.into_iter().enumerate() {
            prop_assert!(res.expect("bcast") == want, "rank {} of {} (root {})", r, n, root);
        }
    }

    #[test]
    fn reduce_gives_the_root_the_rank_ordered_reduction(
        n in 1usize..=9, len in 0usize..=2_000, root_pick: usize, seed: u64,
    ) {
        let root = root_pick % n;
        let inputs: Vec<Vec<[u64; 2]>> = (0..n).map(|r| affine(r, len)).collect();
        let want = reference(&inputs, &compose());
        let got = run_group(n, seed, move |t| {
            let mut buf = affine(t.rank(), len);
            block_on(algo::reduce_binomial(&t, ID, &mut buf, &compose(), root)).map(|()| buf)
        });
        for (r, res) in got.into_iter().enumerate() {
            let buf = res.expect("reduce");
            if r == root {
                prop_assert!(buf == want, "root {} of {}", root, n);
            }
        }
    }

    #[test]
    fn allgather_collects_every_block_in_rank_order(
        n in 1usize..=9, len in 0usize..=1_200, seed: u64,
    ) {
        let want: Vec<u32> = (0..n).flat_map(|r| input(r, len)).collect();
        let got = run_group(n, seed, move |t| {
            let mut recv = vec![0u32; len * n];
            block_on(algo::allgather_ring(&t, ID, &input(t.rank(), len), &mut recv)).map(|()| recv)
        });
        for (r, res) in got.into_iter().enumerate() {
            prop_assert!(res.expect("allgather") == want, "rank {} of {}", r, n);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Bcast {
    Binomial,
    ScatterAllgather,
    Chain(usize),
}

#[derive(Debug, Clone, Copy)]
enum Allgather {
    Ring,
    Bruck,
    RecursiveDoubling,
    Direct,
}

fn allgather(which: Allgather, t: &LocalTransport, send: &[u32], recv: &mut [u32]) -> mfio_core::Result<()> {
    block_on(async {
        match which {
            Allgather::Ring => algo::allgather_ring(t, ID, send, recv).await,
            Allgather::Bruck => algo::allgather_bruck(t, ID, send, recv).await,
            Allgather::RecursiveDoubling => algo::allgather_recursive_doubling(t, ID, send, recv).await,
            Allgather::Direct => algo::allgather_direct(t, ID, send, recv).await,
        }
    })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn every_bcast_copies_the_roots_buffer(
        n in 1usize..=9, len in 0usize..=10_000, root_pick: usize, seed: u64, which in 0u8..3, chunk in 1usize..=4_000,
    ) {
        let root = root_pick % n;
        let which = match which { 0 => Bcast::Binomial, 1 => Bcast::ScatterAllgather, _ => Bcast::Chain(chunk) };
        let want = input(root, len);
        let got = run_group(n, seed, move |t| {
            let mut buf = if t.rank() == root { input(root, len) } else { vec![0; len] };
            let res = block_on(async {
                match which {
                    Bcast::Binomial => algo::bcast_binomial(&t, ID, &mut buf, root).await,
                    Bcast::ScatterAllgather => algo::bcast_scatter_allgather(&t, ID, &mut buf, root).await,
                    Bcast::Chain(c) => algo::bcast_chain(&t, ID, &mut buf, root, c).await,
                }
            });
            res.map(|()| buf)
        });
        for (r, res) in got.into_iter().enumerate() {
            prop_assert!(res.expect("bcast") == want, "{:?}: rank {} of {} (root {})", which, r, n, root);
        }
    }

    #[test]
    fn every_allgather_collects_the_blocks_in_rank_order(
        n in 1usize..=9, len in 0usize..=1_200, seed: u64, which in 0u8..4,
    ) {
        let which = match which {
            0 => Allgather::Ring,
            1 => Allgather::Bruck,
            2 => Allgather::Direct,
            _ => Allgather::RecursiveDoubling,
        };
        // Recursive doubling takes powers of two only (others: below).
        let n = if matches!(which, Allgather::RecursiveDoubling) { 1 << (n % 4) } else { n };
        let want: Vec<u32> = (0..n).flat_map(|r| input(r, len)).collect();
        let got = run_group(n, seed, move |t| {
            let mut recv = vec![0u32; len * n];
            let send = input(t.rank(), len);
            allgather(which, &t, &send, &mut recv).map(|()| recv)
        });
        for (r, res) in got.into_iter().enumerate() {
            prop_assert!(res.expect("allgather") == want, "{:?}: rank {} of {}", which, r, n);
        }
    }

    #[test]
    fn scatter_and_gather_move_each_block_to_and_from_its_rank(
        n in 1usize..=9, len in 0usize..=1_200, root_pick: usize, seed: u64, binomial: bool,
    ) {
        let root = root_pick % n;
        let whole: Vec<u32> = (0..n).flat_map(|r| input(r, len)).collect();
        let got = run_group(n, seed, move |t| {
            let r = t.rank();
            let whole: Vec<u32> = (0..n).flat_map(|r| input(r, len)).collect();
            let send = if r == root { whole } else { Vec::new() };
            let mut mine = vec![0u32; len];
            let mut back = if r == root { vec![0u32; len * n] } else { Vec::new() };
            let res = block_on(async {
                if binomial {
                    algo::scatter_binomial(&t, ID, &send, &mut mine, root).await?;
                    algo::gather_binomial(&t, CollId { comm: 1, seq: 1 }, &mine, &mut back, root).await
                } else {
                    algo::scatter_linear(&t, ID, &send, &mut mine, root).await?;
                    algo::gather_linear(&t, CollId { comm: 1, seq: 1 }, &mine, &mut back, root).await
                }
            });
            res.map(|()| (mine, back))
        });
        for (r, res) in got.into_iter().enumerate() {
            let (mine, back) = res.expect("scatter and gather");
            prop_assert!(mine == input(r, len), "rank {} of {} got another block (root {})", r, n, root);
            if r == root {
                prop_assert!(back == whole, "the root gathered other blocks");
            }
        }
    }

    #[test]
    fn alltoall_transposes_the_blocks(n in 1usize..=9, len in 0usize..=600, seed: u64, bruck: bool) {
        let got = run_group(n, seed, move |t| {
            let r = t.rank();
            // Block d of rank r: input(r * n + d).
            let send: Vec<u32> = (0..n).flat_map(|d| input(r * n + d, len)).collect();
            let mut recv = vec![0u32; send.len()];
            let res = if bruck {
                block_on(algo::alltoall_bruck(&t, ID, &send, &mut recv))
            } else {
                block_on(algo::alltoall_pairwise(&t, ID, &send, &mut recv))
            };
            res.map(|()| recv)
        });
        for (r, res) in got.into_iter().enumerate() {
            let want: Vec<u32> = (0..n).flat_map(|s| input(s * n + r, len)).collect();
            prop_assert!(res.expect("alltoall") == want, "rank {} of {}", r, n);
        }
    }

    #[test]
    fn reduce_scatter_gives_each_rank_its_reduced_block(
        n in 1usize..=9, len in 0usize..=1_200, seed: u64, halving: bool,
    ) {
        let inputs: Vec<Vec<u32>> = (0..n).map(|r| input(r, len * n)).collect();
        let whole = reference(&inputs, &ReduceOp::Sum);
        let got = run_group(n, seed, move |t| {
            let mut send = input(t.rank(), len * n);
            let mut recv = vec![0u32; len];
            let res = if halving {
                block_on(algo::reduce_scatter_block_halving(&t, ID, &mut send, &mut recv, &ReduceOp::Sum))
            } else {
                block_on(algo::reduce_scatter_block_ring(&t, ID, &mut send, &mut recv, &ReduceOp::Sum))
            };
            res.map(|()| recv)
        });
        for (r, res) in got.into_iter().enumerate() {
            prop_assert!(res.expect("reduce_scatter_block") == whole[r * len..(r + 1) * len], "rank {} of {}", r, n);
        }
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn scans_give_each_rank_its_rank_ordered_prefix(
        n in 1usize..=9, len in 0usize..=2_000, seed: u64, exclusive: bool,
    ) {
        let inputs: Vec<Vec<[u64; 2]>> = (0..n).map(|r| affine(r, len)).collect();
        let got = run_group(n, seed, move |t| {
            let mut buf = affine(t.rank(), len);
            let res = if exclusive {
                block_on(algo::exscan_recursive_doubling(&t, ID, &mut buf, &compose()))
            } else {
                block_on(algo::scan_recursive_doubling(&t, ID, &mut buf, &compose()))
            };
            res.map(|()| buf)
        });
        for (r, res) in got.into_iter().enumerate() {
            let buf = res.expect("scan");
            let want = match (exclusive, r) {
                (true, 0) => affine(0, len),
                (true, _) => reference(&inputs[..r], &compose()),
                (false, _) => reference(&inputs[..=r], &compose()),
            };
            prop_assert!(buf == want, "exclusive {}: rank {} of {}", exclusive, r, n);
        }
    }
}

/// Recursive-doubling allgather refuses a rank count that is not a power of
/// two before sending anything.
#[test]
fn recursive_doubling_allgather_needs_a_power_of_two() {
    let got = run_group(3, 1, |t| {
        let mut recv = vec![0u8; 3];
        block_on(algo::allgather_recursive_doubling(&t, ID, &[1], &mut recv))
    });
    for res in got {
        let err = res.expect_err("3 ranks");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("power-of-two"), "{err}");
    }
}

/// No rank leaves the barrier before every rank entered it.
#[test]
fn nobody_leaves_the_barrier_early() {
    for n in 1..=9 {
        let arrived = Arc::new(AtomicUsize::new(0));
        let seen = run_group(n, n as u64, {
            let arrived = arrived.clone();
            move |t| {
                // The last rank is late.
                if t.rank() + 1 == t.size() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                arrived.fetch_add(1, Ordering::SeqCst);
                block_on(algo::barrier_dissemination(&t, ID)).map(|()| arrived.load(Ordering::SeqCst))
            }
        });
        for (r, s) in seen.into_iter().enumerate() {
            assert_eq!(s.expect("barrier"), n, "rank {r} of {n} left early");
        }
    }
}

/// A thousand broadcasts in a row from a root that never waits: each
/// keeps its own messages (identity by sequence number).
#[test]
fn back_to_back_broadcasts_keep_their_messages_apart() {
    let got = run_group(4, 9, |t| {
        block_on(async {
            let mut seen = Vec::new();
            for seq in 0..1000u32 {
                let id = CollId { comm: 1, seq };
                let mut buf = if t.rank() == 2 { vec![seq; 3] } else { vec![0; 3] };
                algo::bcast_binomial(&t, id, &mut buf, 2).await?;
                seen.push(buf[0] + buf[2]);
            }
            Ok::<_, mfio_core::Error>(seen)
        })
    });
    let want: Vec<u32> = (0..1000).map(|s| 2 * s).collect();
    for (r, res) in got.into_iter().enumerate() {
        assert_eq!(res.expect("broadcasts"), want, "rank {r}");
    }
}

/// Every allgather, one rank's block one element short (its own buffers
/// consistent with it): a rank that receives a block of the wrong length
/// says so with `InvalidData`, and no rank hangs or panics.
#[test]
fn every_allgather_names_a_block_of_the_wrong_length() {
    for which in [
        Allgather::Ring,
        Allgather::Bruck,
        Allgather::RecursiveDoubling,
        Allgather::Direct,
    ] {
        let n = 4;
        let got = run_group(n, 11, move |t| {
            let b = if t.rank() == 1 { 9 } else { 10 };
            let send = vec![7u32; b];
            let mut recv = vec![0u32; b * n];
            allgather(which, &t, &send, &mut recv)
        });
        let mismatch = got
            .iter()
            .filter_map(|r| r.as_ref().err())
            .find(|e| e.kind() == std::io::ErrorKind::InvalidData)
            .unwrap_or_else(|| panic!("{which:?}: no rank saw the length mismatch: {got:?}"));
        assert!(mismatch.to_string().contains("expected"), "{which:?}: {mismatch}");
    }
}

/// A receive whose message has another length fails with `InvalidData`
/// naming the sender; a rank that leaves makes the others' receives from
/// it fail, not hang; an operation that needs commutativity refuses one
/// that lacks it.
#[test]
fn mismatches_and_departures_are_errors() {
    let got = run_group(3, 5, |t| {
        // Rank 1 brings one element fewer.
        let mut buf = vec![1u32; if t.rank() == 1 { 9 } else { 10 }];
        block_on(algo::allreduce_ring(&t, ID, &mut buf, &ReduceOp::Sum))
    });
    // The rank that gets the short block says so; the others fail or
    // finish, none hangs.
    let mismatch = got
        .iter()
        .filter_map(|r| r.as_ref().err())
        .find(|e| e.kind() == std::io::ErrorKind::InvalidData)
        .unwrap_or_else(|| panic!("no rank saw the length mismatch: {got:?}"));
    assert!(mismatch.to_string().contains("expected"), "{mismatch}");

    let mut group = LocalTransport::group(2);
    let stays = group.remove(0);
    drop(group);
    let mut buf = vec![0u8; 4];
    let err = block_on(algo::bcast_binomial(&stays, ID, &mut buf, 1)).expect_err("rank 1 left");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
    assert!(err.to_string().contains("rank 1"), "{err}");

    let err = block_on(algo::allreduce_ring(&stays, ID, &mut [[1u64, 2]], &compose())).expect_err("needs commutative");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let err = block_on(algo::bcast_binomial(&stays, ID, &mut buf, 2)).expect_err("no rank 2");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
