//! [`TransportComm`]: the [`Communicator`] API over any [`Transport`],
//! each collective run by an algorithm of this module's parent, chosen per
//! call from a [`Tuning`] table by collective, rank count and message size
//! (the choice is logged at `debug` level through `tracing`).
//!
//! A collective's messages flow while its future is polled (or while its
//! blocking form runs): a future dropped before it completes leaves the
//! other ranks waiting for this rank's part, until it leaves the group.
//! Every rank must use the same tuning table, so that all choose alike.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use mfio_core::{block_on, BufResult, Error, IoBackend, Result};

use super::tuning::{Algorithm, Collective, Tuning};
use crate::check::{self, invalid};
use crate::comm::{CollFuture, Communicator, Counts, Pair, Rank};
use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::group::SubGroup;
use crate::transport::{CollId, Lent, Transport, CONTROL_COMM};

/// Bytes a pipelined algorithm moves per message (segments of the
/// segmented ring, chunks of the chain).
const PIPELINE_BYTES: usize = 256 << 10;

/// A communicator whose collectives are algorithms over a transport,
/// driven by `backend` in their blocking forms (the runtime the transport
/// runs on, for TCP).
pub struct TransportComm<B> {
    backend: B,
    /// This communicator's ranks, numbered from 0.
    transport: Arc<dyn Transport>,
    /// The transport every communicator made from this one shares, and the
    /// ranks of it this one has (index = this communicator's rank).
    base: Arc<dyn Transport>,
    members: Arc<[Rank]>,
    id: u32,
    seq: AtomicU32,
    /// The lowest communicator id no communicator of this rank has (on the
    /// base transport).
    next_free: Arc<AtomicU32>,
    tuning: Arc<Tuning>,
}

impl<B> std::fmt::Debug for TransportComm<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportComm")
            .field("rank", &self.transport.rank())
            .field("size", &self.transport.size())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn elems_per<T>(bytes: usize) -> usize {
    (bytes / size_of::<T>().max(1)).max(1)
}

fn bytes_of<T>(elems: usize) -> u64 {
    (elems as u64).saturating_mul(size_of::<T>() as u64)
}

impl<B: IoBackend + Clone + Send + Sync + 'static> TransportComm<B> {
    /// The communicator of every rank of `transport` (communicator id 0),
    /// with the built-in tuning table.
    pub fn new(backend: B, transport: impl Transport + 'static) -> Self {
        let base: Arc<dyn Transport> = Arc::new(transport);
        let members: Arc<[Rank]> = (0..base.size()).collect();
        Self {
            backend,
            transport: base.clone(),
            base,
            members,
            id: 0,
            seq: AtomicU32::new(0),
            next_free: Arc::new(AtomicU32::new(1)),
            tuning: Arc::new(Tuning::builtin()),
        }
    }

    /// This communicator with `tuning` (communicators made from it inherit
    /// it). Every rank must use the same table.
    #[must_use]
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = Arc::new(tuning);
        self
    }

    /// The table the algorithms are chosen from.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// The transport this communicator's ranks talk over.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// The id of the next collective.
    fn next(&self) -> CollId {
        CollId {
            comm: self.id,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The algorithm for a call, from the table (logged).
    fn choose(&self, collective: Collective, bytes: u64) -> Algorithm {
        let ranks = self.transport.size();
        let algorithm = self.tuning.choose(collective, ranks, bytes);
        tracing::debug!(
            collective = collective.name(),
            ranks,
            bytes,
            algorithm = algorithm.name(),
            "mfio-coll: algorithm chosen"
        );
        algorithm
    }

    /// Runs the future `body` makes over this communicator's transport,
    /// a fresh id and the buffers, which it gives back with its outcome.
    /// One allocation per collective: the body's future lives inside the
    /// collective's (a boxed body within a boxed collective cost an 8-byte
    /// allgather two allocations and a copy of the body's state).
    fn run<Bufs, Fut>(
        &self,
        bufs: Bufs,
        body: impl FnOnce(Arc<dyn Transport>, CollId, Bufs) -> Fut + Send + 'static,
    ) -> CollFuture<Bufs>
    where
        Bufs: Default + Send + 'static,
        Fut: std::future::Future<Output = BufResult<(), Bufs>> + Send + 'static,
    {
        let (t, id) = (self.transport.clone(), self.next());
        // Made here, so that a future dropped before its first poll forgets
        // the collective too.
        let abandon = Abandon {
            t: t.clone(),
            id,
            finished: false,
        };
        // The body's future is made at the first poll, inside the
        // collective's, and that is made in its box (`in_box`): made here,
        // either would be copied whole into the box (hundreds of bytes).
        CollFuture::boxed_with(move || async move {
            let out = body(t, id, bufs).await;
            abandon.finished();
            out
        })
    }

    /// The allreduce of `buf` in place, by the algorithm the table names
    /// (for an operation that is not commutative, recursive doubling unless
    /// the table names the direct or two-shot one: all three keep rank
    /// order).
    fn allreduce_algorithm<T: Element>(&self, len: usize, op: &ReduceOp<T>) -> Algorithm {
        let chosen = self.choose(Collective::Allreduce, bytes_of::<T>(len));
        if op.is_commutative() || matches!(chosen, Algorithm::Direct | Algorithm::TwoShot) {
            chosen
        } else {
            Algorithm::RecursiveDoubling
        }
    }
}

/// Tells the transport that a collective was dropped before it finished,
/// so that its messages are not kept for ever ([`Transport::forget`]).
struct Abandon {
    t: Arc<dyn Transport>,
    id: CollId,
    finished: bool,
}

impl Abandon {
    /// The collective finished: nothing to forget.
    fn finished(mut self) {
        self.finished = true;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.finished {
            self.t.forget(self.id);
        }
    }
}

async fn allreduce_with<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut Vec<T>,
    op: &ReduceOp<T>,
    algorithm: Algorithm,
) -> Result<()> {
    match algorithm {
        Algorithm::Ring => {
            lending(buf, async |buf| {
                super::allreduce_ring::allreduce_ring_lent(t, id, None, buf, op).await
            })
            .await
        }
        Algorithm::SegmentedRing => {
            let segment = elems_per::<T>(PIPELINE_BYTES);
            lending(buf, async |buf| {
                super::allreduce_ring::allreduce_segmented_ring_lent(t, id, None, buf, op, segment).await
            })
            .await
        }
        Algorithm::Rabenseifner => super::allreduce_rabenseifner(t, id, buf, op).await,
        Algorithm::ReduceBcast => {
            lending(buf, async |buf| {
                super::allreduce_reduce_bcast::allreduce_reduce_bcast_lent(t, id, None, buf, op).await
            })
            .await
        }
        Algorithm::Direct => {
            lending(buf, async |buf| {
                super::allreduce_direct::allreduce_direct_lent(t, id, None, buf, op).await
            })
            .await
        }
        Algorithm::TwoShot => {
            lending(buf, async |buf| {
                super::allreduce_two_shot::allreduce_two_shot_lent(t, id, None, buf, op).await
            })
            .await
        }
        // Lending costs short messages more than the copies it saves (the
        // slice form lends long ones a copy).
        _ if size_of_val(buf.as_slice()) >= super::POST_AHEAD_BYTES => {
            lending(buf, async |buf| {
                super::allreduce_rd::allreduce_recursive_doubling_lent(t, id, None, buf, op).await
            })
            .await
        }
        _ => super::allreduce_recursive_doubling(t, id, buf, op).await,
    }
}

/// Runs `algo` over `send`, lent to the transport to send from only (never
/// to receive into), and `recv`, lent as [`lending`] lends it; then puts
/// both back (`send`'s elements after a failure too).
async fn lending_send_and_recv<T: Element>(
    send: &mut Vec<T>,
    recv: &mut Vec<T>,
    algo: impl AsyncFnOnce(&Lent<T>, &Lent<T>) -> Result<()>,
) -> Result<()> {
    let own = Lent::new(std::mem::take(send));
    let res = lending(recv, async |buf| algo(&own, buf).await).await;
    *send = own.finish_unwritten();
    res
}

/// Runs an allreduce `algo` that reads this rank's operand from `send` and
/// writes every element of `recv`, both lent as [`lending_send_and_recv`]
/// lends them, once `recv` is known to be as long as `send`.
async fn lending_operand_and_result<T: Element>(
    send: &mut Vec<T>,
    recv: &mut Vec<T>,
    algo: impl AsyncFnOnce(&Lent<T>, &Lent<T>) -> Result<()>,
) -> Result<()> {
    check::len("recv", recv.len(), send.len())?;
    lending_send_and_recv(send, recv, algo).await
}

/// Runs `algo` over `buf` lent to the transport (its blocks leave from it
/// and land in it without a copy, where the transport can), then puts the
/// buffer back.
async fn lending<T: Element>(buf: &mut Vec<T>, algo: impl AsyncFnOnce(&Lent<T>) -> Result<()>) -> Result<()> {
    let lent = Lent::new(std::mem::take(buf));
    let res = algo(&lent).await;
    *buf = lent.finish(&res);
    res
}

impl<B: IoBackend + Clone + Send + Sync + 'static> Communicator for TransportComm<B> {
    type Backend = B;

    fn backend(&self) -> &B {
        &self.backend
    }

    fn rank(&self) -> Rank {
        self.transport.rank()
    }

    fn size(&self) -> usize {
        self.transport.size()
    }

    fn dup(&self) -> Result<Self> {
        self.split(Some(0), 0)?
            .ok_or_else(|| Error::new(std::io::ErrorKind::Other, "a duplicate left this rank out"))
    }

    /// One allgather of every rank's color, key and lowest free
    /// communicator id: the new communicators take the highest of those
    /// ids, which no member uses for another communicator.
    fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Self>> {
        if let Some(c) = color.filter(|&c| c > i32::MAX as u32) {
            return Err(invalid(format!("color {c} exceeds i32::MAX")));
        }
        let n = self.size();
        let mine = [
            color.map_or(0, |c| u64::from(c) + 1),
            u64::from(key as u32),
            u64::from(self.next_free.load(Ordering::Relaxed)),
        ];
        let mut all = vec![[0u64; 3]; n];
        let (t, id) = (self.transport.clone(), self.next());
        block_on(&self.backend, super::allgather_bruck(&*t, id, &[mine], &mut all))?;
        let agreed = all.iter().map(|e| e[2]).max().unwrap_or(0);
        let new_id = u32::try_from(agreed)
            .ok()
            .filter(|&i| i < CONTROL_COMM)
            .ok_or_else(|| Error::new(std::io::ErrorKind::Other, "no communicator ids left"))?;
        self.next_free.fetch_max(new_id + 1, Ordering::Relaxed);
        if color.is_none() {
            return Ok(None);
        }
        let mut group: Vec<(i32, Rank)> = (0..n)
            .filter(|&r| all[r][0] == mine[0])
            .map(|r| (all[r][1] as u32 as i32, r))
            .collect();
        group.sort_unstable();
        let members: Arc<[Rank]> = group.iter().map(|&(_, r)| self.members[r]).collect();
        let sub = SubGroup::new(self.base.clone(), members.clone())
            .ok_or_else(|| Error::new(std::io::ErrorKind::Other, "split: this rank is not in its own group"))?;
        Ok(Some(Self {
            backend: self.backend.clone(),
            transport: Arc::new(sub),
            base: self.base.clone(),
            members,
            id: new_id,
            seq: AtomicU32::new(0),
            next_free: self.next_free.clone(),
            tuning: self.tuning.clone(),
        }))
    }

    fn barrier(&self) -> CollFuture<()> {
        self.run((), |t, id, ()| async move {
            BufResult(super::barrier_dissemination(&*t, id).await, ())
        })
    }

    fn bcast<T: Element>(&self, buf: Vec<T>, root: Rank) -> CollFuture<Vec<T>> {
        let algorithm = self.choose(Collective::Bcast, bytes_of::<T>(buf.len()));
        // Each algorithm's collective boxed alone, at its own size: one
        // box for all would be the largest's (over 1 KiB, which glibc
        // serves more slowly than smaller blocks).
        match algorithm {
            Algorithm::ScatterAllgather => self.run(buf, move |t, id, mut buf| async move {
                let res = lending(&mut buf, async |buf| {
                    super::bcast_scatter_allgather::bcast_scatter_allgather_lent(&*t, id, buf, root).await
                })
                .await;
                BufResult(res, buf)
            }),
            Algorithm::Chain => {
                let chunk = elems_per::<T>(PIPELINE_BYTES);
                self.run(buf, move |t, id, mut buf| async move {
                    let res = lending(&mut buf, async |buf| {
                        super::bcast_chain::bcast_chain_lent(&*t, id, buf, root, chunk).await
                    })
                    .await;
                    BufResult(res, buf)
                })
            }
            _ => self.run(buf, move |t, id, mut buf| async move {
                let res = lending(&mut buf, async |buf| {
                    super::bcast_binomial::bcast_binomial_lent(&*t, id.key(0, 0), buf, root).await
                })
                .await;
                BufResult(res, buf)
            }),
        }
    }

    fn reduce<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>, root: Rank) -> CollFuture<Pair<T>> {
        let _ = self.choose(Collective::Reduce, bytes_of::<T>(send.len()));
        let is_root = root == self.rank();
        self.run((send, recv), move |t, id, (mut send, mut recv)| async move {
            let res = async {
                let (t, send, recv) = (&*t, &mut send, &mut recv);
                if is_root {
                    check::len("recv", recv.len(), send.len())?;
                }
                let mut acc = send.clone();
                super::reduce_binomial(t, id, &mut acc, &op, root).await?;
                if is_root {
                    recv.copy_from_slice(&acc);
                }
                Ok(())
            }
            .await;
            BufResult(res, (send, recv))
        })
    }

    fn reduce_in_place<T: Element>(&self, buf: Vec<T>, op: ReduceOp<T>, root: Rank) -> CollFuture<Vec<T>> {
        let _ = self.choose(Collective::Reduce, bytes_of::<T>(buf.len()));
        let is_root = root == self.rank();
        self.run(buf, move |t, id, mut buf| async move {
            let res = async {
                let (t, buf) = (&*t, &mut buf);
                let mut acc = buf.clone();
                super::reduce_binomial(t, id, &mut acc, &op, root).await?;
                if is_root {
                    buf.copy_from_slice(&acc);
                }
                Ok(())
            }
            .await;
            BufResult(res, buf)
        })
    }

    fn allreduce<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollFuture<Pair<T>> {
        let algorithm = self.allreduce_algorithm(send.len(), &op);
        let long = size_of_val(send.as_slice()) >= super::POST_AHEAD_BYTES;
        // The rings, the direct and two-shot allreduces, and recursive doubling and
        // reduce-then-bcast of long messages, read this rank's operand
        // from `send` and write every element of `recv`: no
        // copy of the input first (a fifth of a 16 MiB ring allreduce's
        // time on 2 ranks). They share one box, as copying it is nothing
        // beside their messages; short recursive doubling is boxed at its
        // own size (it paid for copying the largest's).
        let lent = matches!(
            algorithm,
            Algorithm::Ring | Algorithm::SegmentedRing | Algorithm::Direct | Algorithm::TwoShot
        ) || (long && matches!(algorithm, Algorithm::RecursiveDoubling | Algorithm::ReduceBcast));
        use super::{allreduce_direct, allreduce_rd, allreduce_reduce_bcast, allreduce_ring, allreduce_two_shot};
        match algorithm {
            _ if lent => {
                let segment = elems_per::<T>(PIPELINE_BYTES);
                self.run((send, recv), move |t, id, (mut send, mut recv)| async move {
                    let res = lending_operand_and_result(&mut send, &mut recv, async |own, buf| match algorithm {
                        Algorithm::Ring => allreduce_ring::allreduce_ring_lent(&*t, id, Some(own), buf, &op).await,
                        Algorithm::SegmentedRing => {
                            allreduce_ring::allreduce_segmented_ring_lent(&*t, id, Some(own), buf, &op, segment).await
                        }
                        Algorithm::Direct => {
                            allreduce_direct::allreduce_direct_lent(&*t, id, Some(own), buf, &op).await
                        }
                        Algorithm::TwoShot => {
                            allreduce_two_shot::allreduce_two_shot_lent(&*t, id, Some(own), buf, &op).await
                        }
                        Algorithm::ReduceBcast => {
                            allreduce_reduce_bcast::allreduce_reduce_bcast_lent(&*t, id, Some(own), buf, &op).await
                        }
                        _ => allreduce_rd::allreduce_recursive_doubling_lent(&*t, id, Some(own), buf, &op).await,
                    })
                    .await;
                    BufResult(res, (send, recv))
                })
            }
            Algorithm::RecursiveDoubling => self.run((send, recv), move |t, id, (send, mut recv)| async move {
                let res = async {
                    check::len("recv", recv.len(), send.len())?;
                    recv.copy_from_slice(&send);
                    super::allreduce_recursive_doubling(&*t, id, &mut recv, &op).await
                }
                .await;
                BufResult(res, (send, recv))
            }),
            _ => self.run((send, recv), move |t, id, (send, mut recv)| async move {
                let res = async {
                    check::len("recv", recv.len(), send.len())?;
                    recv.copy_from_slice(&send);
                    allreduce_with(&*t, id, &mut recv, &op, algorithm).await
                }
                .await;
                BufResult(res, (send, recv))
            }),
        }
    }

    fn allreduce_in_place<T: Element>(&self, buf: Vec<T>, op: ReduceOp<T>) -> CollFuture<Vec<T>> {
        let algorithm = self.allreduce_algorithm(buf.len(), &op);
        self.run(buf, move |t, id, mut buf| async move {
            let res = allreduce_with(&*t, id, &mut buf, &op, algorithm).await;
            BufResult(res, buf)
        })
    }

    fn scatter<T: Element>(&self, send: Vec<T>, recv: Vec<T>, root: Rank) -> CollFuture<Pair<T>> {
        let algorithm = self.choose(Collective::Scatter, bytes_of::<T>(recv.len()));
        self.run((send, recv), move |t, id, (mut send, mut recv)| async move {
            let res = async {
                let (t, send, recv) = (&*t, &mut send, &mut recv);
                match algorithm {
                    Algorithm::Linear => super::scatter_linear(t, id, send, recv, root).await,
                    _ => super::scatter_binomial(t, id, send, recv, root).await,
                }
            }
            .await;
            BufResult(res, (send, recv))
        })
    }

    fn scatterv<T: Element>(&self, send: Vec<T>, layout: &Counts, recv: Vec<T>, root: Rank) -> CollFuture<Pair<T>> {
        let layout = layout.clone();
        self.run((send, recv), move |t, id, (send, mut recv)| async move {
            let res = super::scatterv_linear(&*t, id, &send, &layout, &mut recv, root).await;
            BufResult(res, (send, recv))
        })
    }

    fn gather<T: Element>(&self, send: Vec<T>, recv: Vec<T>, root: Rank) -> CollFuture<Pair<T>> {
        let algorithm = self.choose(Collective::Gather, bytes_of::<T>(send.len()));
        self.run((send, recv), move |t, id, (mut send, mut recv)| async move {
            let res = async {
                let (t, send, recv) = (&*t, &mut send, &mut recv);
                match algorithm {
                    Algorithm::Linear => super::gather_linear(t, id, send, recv, root).await,
                    _ => super::gather_binomial(t, id, send, recv, root).await,
                }
            }
            .await;
            BufResult(res, (send, recv))
        })
    }

    fn gatherv<T: Element>(&self, send: Vec<T>, recv: Vec<T>, layout: &Counts, root: Rank) -> CollFuture<Pair<T>> {
        let layout = layout.clone();
        self.run((send, recv), move |t, id, (send, mut recv)| async move {
            let res = super::gatherv_linear(&*t, id, &send, &mut recv, &layout, root).await;
            BufResult(res, (send, recv))
        })
    }

    fn allgather<T: Element>(&self, send: Vec<T>, recv: Vec<T>) -> CollFuture<Pair<T>> {
        let mut algorithm = self.choose(Collective::Allgather, bytes_of::<T>(send.len()));
        if algorithm == Algorithm::RecursiveDoubling && !self.size().is_power_of_two() {
            algorithm = Algorithm::Bruck;
        }
        // Each algorithm's collective boxed at its own size (the ring's
        // is the largest; copied into the box, a larger future costs a
        // short allgather more).
        match algorithm {
            Algorithm::Bruck => self.run((send, recv), move |t, id, (send, mut recv)| async move {
                let res = super::allgather_bruck(&*t, id, &send, &mut recv).await;
                BufResult(res, (send, recv))
            }),
            Algorithm::RecursiveDoubling => self.run((send, recv), move |t, id, (send, mut recv)| async move {
                let res = super::allgather_recursive_doubling(&*t, id, &send, &mut recv).await;
                BufResult(res, (send, recv))
            }),
            // The direct allgather and the ring: this rank's block leaves
            // from `send`, which nothing writes (BENCHMARKS.md: read-only
            // memory crosses cores several times faster here).
            _ => self.run((send, recv), move |t, id, (mut send, mut recv)| async move {
                use super::{
                    allgather_direct::allgather_direct_lent, allgather_ring::allgather_ring_lent, Contribution,
                };
                let res = lending_send_and_recv(&mut send, &mut recv, async |own, recv| {
                    let own = Contribution::Lent(own);
                    if algorithm == Algorithm::Direct {
                        allgather_direct_lent(&*t, id, own, recv).await
                    } else {
                        allgather_ring_lent(&*t, id, own, recv).await
                    }
                })
                .await;
                BufResult(res, (send, recv))
            }),
        }
    }

    fn allgatherv<T: Element>(&self, send: Vec<T>, recv: Vec<T>, layout: &Counts) -> CollFuture<Pair<T>> {
        let layout = layout.clone();
        self.run((send, recv), move |t, id, (send, mut recv)| async move {
            let res = super::allgatherv_linear(&*t, id, &send, &mut recv, &layout).await;
            BufResult(res, (send, recv))
        })
    }

    fn alltoall<T: Element>(&self, send: Vec<T>, recv: Vec<T>) -> CollFuture<Pair<T>> {
        let block = send.len() / self.size().max(1);
        let algorithm = self.choose(Collective::Alltoall, bytes_of::<T>(block));
        self.run((send, recv), move |t, id, (mut send, mut recv)| async move {
            let res = async {
                let (t, send, recv) = (&*t, &mut send, &mut recv);
                match algorithm {
                    Algorithm::Bruck => super::alltoall_bruck(t, id, send, recv).await,
                    _ => super::alltoall_pairwise(t, id, send, recv).await,
                }
            }
            .await;
            BufResult(res, (send, recv))
        })
    }

    fn alltoallv<T: Element>(
        &self,
        send: Vec<T>,
        send_layout: &Counts,
        recv: Vec<T>,
        recv_layout: &Counts,
    ) -> CollFuture<Pair<T>> {
        let (sl, rl) = (send_layout.clone(), recv_layout.clone());
        self.run((send, recv), move |t, id, (send, mut recv)| async move {
            let res = super::alltoallv_pairwise(&*t, id, &send, &sl, &mut recv, &rl).await;
            BufResult(res, (send, recv))
        })
    }

    fn reduce_scatter_block<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollFuture<Pair<T>> {
        let algorithm = self.choose(Collective::ReduceScatterBlock, bytes_of::<T>(recv.len()));
        let (rank, n) = (self.rank(), self.size());
        self.run((send, recv), move |t, id, (mut send, mut recv)| async move {
            let res = async {
                let (t, send, recv) = (&*t, &mut send, &mut recv);
                check::len("send", send.len(), recv.len().saturating_mul(n))?;
                let mut scratch = send.clone();
                if !op.is_commutative() {
                    // In rank order: the whole vector reduced, then this
                    // rank's block taken.
                    super::allreduce_recursive_doubling(t, id, &mut scratch, &op).await?;
                    let b = recv.len();
                    recv.copy_from_slice(&scratch[rank * b..(rank + 1) * b]);
                    return Ok(());
                }
                match algorithm {
                    Algorithm::Halving => super::reduce_scatter_block_halving(t, id, &mut scratch, recv, &op).await,
                    _ => super::reduce_scatter_block_ring(t, id, &mut scratch, recv, &op).await,
                }
            }
            .await;
            BufResult(res, (send, recv))
        })
    }

    fn scan<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollFuture<Pair<T>> {
        self.run((send, recv), move |t, id, (mut send, mut recv)| async move {
            let res = async {
                let (t, send, recv) = (&*t, &mut send, &mut recv);
                check::len("recv", recv.len(), send.len())?;
                recv.copy_from_slice(send);
                super::scan_recursive_doubling(t, id, recv, &op).await
            }
            .await;
            BufResult(res, (send, recv))
        })
    }

    /// Rank 0's `recv` comes back unchanged (MPI leaves it undefined).
    fn exscan<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollFuture<Pair<T>> {
        let rank = self.rank();
        self.run((send, recv), move |t, id, (mut send, mut recv)| async move {
            let res = async {
                let (t, send, recv) = (&*t, &mut send, &mut recv);
                check::len("recv", recv.len(), send.len())?;
                let mut acc = send.clone();
                super::exscan_recursive_doubling(t, id, &mut acc, &op).await?;
                if rank != 0 {
                    recv.copy_from_slice(&acc);
                }
                Ok(())
            }
            .await;
            BufResult(res, (send, recv))
        })
    }
}
