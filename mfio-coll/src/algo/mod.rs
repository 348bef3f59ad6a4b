//! Collective algorithms over any [`Transport`], one module per algorithm.
//! Each is an async function over a rank's own buffers; it sees only the
//! transport, and every message it sends is keyed by its [`CollId`], its
//! step and its chunk.
//!
//! Written so far:
//! - barrier: [`barrier_dissemination`];
//! - bcast: [`bcast_binomial`] (short messages), [`bcast_scatter_allgather`]
//!   (van de Geijn, long messages), [`bcast_chain`] (pipelined chain);
//! - reduce: [`reduce_binomial`];
//! - allreduce: [`allreduce_ring`] (bandwidth-optimal, any length),
//!   [`allreduce_segmented_ring`] (pipelined segments, long messages),
//!   [`allreduce_recursive_doubling`] (latency-optimal, any rank count),
//!   [`allreduce_rabenseifner`] (recursive halving, then doubling),
//!   [`allreduce_reduce_bcast`] (binomial reduce, then bcast: few ranks),
//!   [`allreduce_direct`] (every rank combines every operand: one step, few
//!   ranks) and [`allreduce_two_shot`] (each rank combines its block of
//!   every operand and sends it to every other: two steps, few ranks);
//! - reduce_scatter_block: [`reduce_scatter_block_ring`],
//!   [`reduce_scatter_block_halving`];
//! - allgather: [`allgather_ring`], [`allgather_bruck`] (any rank count),
//!   [`allgather_recursive_doubling`] (powers of two), [`allgather_direct`]
//!   (every rank sends its block to every other: one step, few ranks);
//! - scatter and gather: [`scatter_linear`], [`scatter_binomial`],
//!   [`gather_linear`], [`gather_binomial`];
//! - alltoall: [`alltoall_pairwise`], [`alltoall_bruck`];
//! - scan and exscan: [`scan_recursive_doubling`],
//!   [`exscan_recursive_doubling`].
//!
//! Every rank's result of an allreduce is bit-identical, floating point
//! included: each element is reduced in one order and that result is what
//! every rank ends with (ring: each block is reduced along the ring once,
//! then passed around; recursive doubling: both partners of a step combine
//! the same two operands, lower ranks' first; reduce then bcast: rank 0's
//! result is the one result; direct: every rank combines the same
//! operands in the same order; two-shot: each block is combined by one
//! rank, whose result every other rank takes).
//!
//! - the `v` variants, linear: [`scatterv_linear`], [`gatherv_linear`],
//!   [`allgatherv_linear`], [`alltoallv_pairwise`].
//!
//! [`TransportComm`] is the [`Communicator`](crate::Communicator) built from
//! them: per call it picks an algorithm from a [`Tuning`] table.
//!
//! [`Transport`]: crate::transport::Transport
//! [`CollId`]: crate::transport::CollId

mod allgather_bruck;
mod allgather_direct;
mod allgather_rd;
mod allgather_ring;
mod allreduce_direct;
mod allreduce_rabenseifner;
mod allreduce_rd;
mod allreduce_reduce_bcast;
mod allreduce_ring;
mod allreduce_two_shot;
mod alltoall_bruck;
mod alltoall_pairwise;
mod barrier;
mod bcast_binomial;
mod bcast_chain;
mod bcast_scatter_allgather;
mod comm;
mod fold;
mod gather;
mod reduce_binomial;
mod reduce_scatter_halving;
mod reduce_scatter_ring;
mod scan;
mod scatter;
pub mod tuning;
mod v;

pub use allgather_bruck::allgather_bruck;
pub use allgather_direct::allgather_direct;
pub use allgather_rd::allgather_recursive_doubling;
pub use allgather_ring::allgather_ring;
pub use allreduce_direct::allreduce_direct;
pub use allreduce_rabenseifner::allreduce_rabenseifner;
pub use allreduce_rd::allreduce_recursive_doubling;
pub use allreduce_reduce_bcast::allreduce_reduce_bcast;
pub use allreduce_ring::{allreduce_ring, allreduce_segmented_ring};
pub use allreduce_two_shot::allreduce_two_shot;
pub use alltoall_bruck::alltoall_bruck;
pub use alltoall_pairwise::alltoall_pairwise;
pub use barrier::barrier_dissemination;
pub use bcast_binomial::bcast_binomial;
pub use bcast_chain::bcast_chain;
pub use bcast_scatter_allgather::bcast_scatter_allgather;
pub use comm::TransportComm;
pub use gather::{gather_binomial, gather_linear};
pub use reduce_binomial::reduce_binomial;
pub use reduce_scatter_halving::reduce_scatter_block_halving;
pub use reduce_scatter_ring::reduce_scatter_block_ring;
pub use scan::{exscan_recursive_doubling, scan_recursive_doubling};
pub use scatter::{scatter_binomial, scatter_linear};
pub use tuning::Tuning;
pub use v::{allgatherv_linear, alltoallv_pairwise, gatherv_linear, scatterv_linear};

use mfio_core::Result;

use crate::comm::Rank;
use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{Key, Lent, Transport};

/// Sends `data` to `to` under `key`: at once if the transport can (a short
/// message), else from a buffer the transport may have kept (and gets
/// back).
async fn send<T: Element>(t: &dyn Transport, to: Rank, key: Key, data: &[T]) -> Result<()> {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    if t.try_send_now(to, key, bytes) {
        return Ok(());
    }
    let mut buf = t.buffer(bytes.len())?;
    buf.extend_from_slice(bytes);
    let (res, buf) = t.send(to, key, buf).await.into_parts();
    t.recycle(buf);
    res
}

/// Receives the bytes of `n` elements from `from` under `key`.
async fn recv_bytes<T: Element>(t: &dyn Transport, from: Rank, key: Key, n: usize) -> Result<Vec<u8>> {
    let bytes = n.checked_mul(size_of::<T>()).ok_or_else(|| too_long(n))?;
    t.recv(from, key, bytes).await
}

/// Elements received: the message's own bytes seen as `T` (given back to
/// the transport when dropped), or an aligned copy of them where the
/// message's buffer is not aligned for `T`.
enum Received<'t, T> {
    Bytes(Vec<u8>, &'t dyn Transport),
    Copied(Vec<T>),
}

impl<T: Element> std::ops::Deref for Received<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            // Alignment and length were checked when it was made.
            Received::Bytes(b, _) => bytemuck::cast_slice(b),
            Received::Copied(v) => v,
        }
    }
}

impl<'t, T: Element> Received<'t, T> {
    fn new(buf: Vec<u8>, t: &'t dyn Transport) -> Self {
        if bytemuck::try_cast_slice::<u8, T>(&buf).is_ok() {
            return Received::Bytes(buf, t);
        }
        let mut out = vec![T::zeroed(); buf.len() / size_of::<T>().max(1)];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&buf);
        t.recycle(buf);
        Received::Copied(out)
    }

    /// The elements, to change in place (the message's own bytes, or the
    /// aligned copy).
    fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            Received::Bytes(b, _) => bytemuck::cast_slice_mut(b),
            Received::Copied(v) => v,
        }
    }

    /// The elements as a vector of their own.
    fn into_vec(mut self) -> Vec<T> {
        match &mut self {
            Received::Bytes(b, _) => bytemuck::cast_slice(b).to_vec(),
            Received::Copied(v) => std::mem::take(v),
        }
    }
}

impl<T> Drop for Received<'_, T> {
    fn drop(&mut self) {
        if let Received::Bytes(b, t) = self {
            t.recycle(std::mem::take(b));
        }
    }
}

/// Receives `n` elements from `from` under `key`, without copying them
/// where the message's buffer is aligned for `T` (the allocator's usual
/// alignment is enough for every element type).
async fn recv<T: Element>(t: &dyn Transport, from: Rank, key: Key, n: usize) -> Result<Received<'_, T>> {
    recv_bytes::<T>(t, from, key, n).await.map(|b| Received::new(b, t))
}

/// Receives `into.len()` elements from `from` under `key` into `into`.
async fn recv_into<T: Element>(t: &dyn Transport, from: Rank, key: Key, into: &mut [T]) -> Result<()> {
    let buf = recv_bytes::<T>(t, from, key, into.len()).await?;
    bytemuck::cast_slice_mut::<T, u8>(into).copy_from_slice(&buf);
    t.recycle(buf);
    Ok(())
}

/// Sends `data` to `to` and receives `n` elements from `from`, both under
/// `key`, at the same time (a ring or pairwise step).
async fn exchange<'t, T: Element>(
    t: &'t dyn Transport,
    to: Rank,
    from: Rank,
    key: Key,
    data: &[T],
    n: usize,
) -> Result<Received<'t, T>> {
    let (sent, got) = futures_util::future::join(send(t, to, key, data), recv::<T>(t, from, key, n)).await;
    sent?;
    got
}

/// The allgather half of a ring over elements `part` of `buf`: every rank
/// starts with block `held` complete (blocks as [`block`] cuts `part` in
/// `n`) and, in n - 1 steps, passes on the block it got last while taking
/// the next from `left`; step `s` is keyed `key(s)`. Afterwards every
/// block is complete on every rank.
///
/// Each step receives into its own block of `buf` (where the transport
/// can, the block lands there without a copy). With long blocks every
/// step's receive is posted at once, and a block goes on as soon as it is
/// in: the ranks do not wait for each other step by step. With
/// `held_from`, the first step's block (`held`) leaves from all of that
/// buffer instead, which holds the same elements (the caller's send
/// buffer, which nothing writes: a peer that reads it in place reads
/// memory nobody just wrote, several times cheaper between cores here;
/// BENCHMARKS.md).
async fn ring_pass_blocks<T: Element>(
    t: &dyn Transport,
    buf: &Lent<T>,
    part: std::ops::Range<usize>,
    n: usize,
    (held, held_from): (usize, Option<&Lent<T>>),
    (right, left): (Rank, Rank),
    key: impl Fn(usize) -> Key,
) -> Result<()> {
    let len = part.len();
    let at = |b: usize| {
        let r = block(len, n, b);
        part.start + r.start..part.start + r.end
    };
    let steps = n.saturating_sub(1);
    // Step s sends block held - s and receives block held - s - 1: every
    // step receives a block of its own, sent on by the next step once it
    // is in (so never read while it is being written).
    Pipeline {
        receives: steps,
        receive: |s: usize| t.recv_block(left, key(s), buf.block_mut(at((held + 2 * n - s - 1) % n))),
        sends: steps,
        ahead: 1,
        send: |s: usize| match held_from {
            Some(from) if s == 0 => t.send_block(right, key(s), from.block(0..from.len())),
            _ => t.send_block(right, key(s), buf.block(at((held + n - s) % n))),
        },
        all_at_once: len / n.max(1) * size_of::<T>() >= POST_AHEAD_BYTES,
    }
    .run(|_, ()| {})
    .await
}

/// Bytes per message from which a pipeline posts every receive at once
/// ([`Pipeline::all_at_once`]): each long message waits for its receive
/// (a rendezvous), so receives posted early save a round trip each; short
/// ones arrive in their frames anyway, and posting them early costs more
/// than it saves.
const POST_AHEAD_BYTES: usize = 16 << 10;

/// Steps that each receive one message and send one: receive `c` is
/// `receive(c)`, send `c` is `send(c)`; the first `ahead` sends (0 or 1)
/// go at once, then send `c + ahead` once receive `c` is in and
/// `arrived(c, its value)` is done with it.
struct Pipeline<Rx, Tx> {
    receives: usize,
    receive: Rx,
    sends: usize,
    ahead: usize,
    send: Tx,
    /// Every receive posted at once (long messages), or each with its step.
    all_at_once: bool,
}

impl<'t, V, R, Rx, Tx> Pipeline<Rx, Tx>
where
    R: std::future::Future<Output = Result<V>> + 't,
    Rx: Fn(usize) -> R,
    Tx: Fn(usize) -> crate::transport::BlockFuture<'t>,
{
    /// Runs the steps. Returns at the first error (the operations still in
    /// flight keep their blocks until the transport lets go of them).
    async fn run(self, arrived: impl FnMut(usize, V)) -> Result<()> {
        debug_assert!(self.ahead <= 1);
        if self.all_at_once {
            self.run_all_at_once(arrived).await
        } else {
            self.run_in_lockstep(arrived).await
        }
    }

    async fn run_in_lockstep(self, mut arrived: impl FnMut(usize, V)) -> Result<()> {
        let mut started = 0;
        for c in 0..self.receives {
            let sending = (started < (c + self.ahead).min(self.sends)).then(|| (self.send)(started));
            started += usize::from(sending.is_some());
            let sent = async {
                match sending {
                    Some(s) => s.await,
                    None => Ok(()),
                }
            };
            let (sent, got) = futures_util::future::join(sent, (self.receive)(c)).await;
            sent?;
            arrived(c, got?);
        }
        try_all((started..self.sends).map(&self.send)).await
    }

    async fn run_all_at_once(self, mut arrived: impl FnMut(usize, V)) -> Result<()> {
        use futures_util::StreamExt;
        use std::task::Poll;
        let mut receives: futures_util::stream::FuturesOrdered<R> = (0..self.receives).map(&self.receive).collect();
        let first = self.ahead.min(self.sends);
        let mut sending: futures_util::stream::FuturesUnordered<_> = (0..first).map(&self.send).collect();
        let (mut started, mut received) = (first, 0);
        std::future::poll_fn(|cx| loop {
            while let Poll::Ready(Some(sent)) = sending.poll_next_unpin(cx) {
                sent?;
            }
            match receives.poll_next_unpin(cx) {
                Poll::Ready(Some(got)) => {
                    arrived(received, got?);
                    received += 1;
                    if started < self.sends {
                        sending.push((self.send)(started));
                        started += 1;
                    }
                }
                Poll::Ready(None) if started < self.sends => {
                    sending.push((self.send)(started));
                    started += 1;
                }
                Poll::Ready(None) if sending.is_empty() => return Poll::Ready(Ok(())),
                _ => return Poll::Pending,
            }
        })
        .await
    }
}

/// Awaits every future of `futs` together, until the first error. One
/// future (a tree's parent of one child, the last send of a pipeline) is
/// awaited as it is, and two (a rank's peers among three, a root of three)
/// are joined as a pair, without the two allocations of `try_join_all`'s
/// list.
async fn try_all<V, F: std::future::Future<Output = Result<V>>>(mut futs: impl Iterator<Item = F>) -> Result<()> {
    let Some(first) = futs.next() else {
        return Ok(());
    };
    let Some(second) = futs.next() else {
        return first.await.map(drop);
    };
    match futs.next() {
        None => futures_util::future::try_join(first, second).await.map(drop),
        Some(third) => futures_util::future::try_join_all([first, second, third].into_iter().chain(futs))
            .await
            .map(drop),
    }
}

/// This rank's block of an allgather.
pub(crate) enum Contribution<'a, T> {
    /// Elements to copy into the gathered buffer, which they then leave from.
    Slice(&'a [T]),
    /// The caller's send buffer lent for sending only: this rank's block
    /// leaves from it (it is also copied into the gathered buffer).
    Lent(&'a Lent<T>),
}

impl<'a, T: Element> Contribution<'a, T> {
    /// Checks that `recv` holds one block per rank and copies this rank's
    /// block into its place there (`recv` not yet lent). Returns the lent
    /// send buffer, if that is what it is, and the block's length.
    fn place(self, t: &dyn Transport, recv: &Lent<T>) -> Result<(Option<&'a Lent<T>>, usize)> {
        let (from, mine) = match self {
            Contribution::Slice(s) => (None, s),
            // SAFETY: nothing writes the send buffer, and nothing of it is
            // lent yet.
            Contribution::Lent(l) => (Some(l), unsafe { l.slice(0..l.len()) }),
        };
        let (r, b) = (t.rank(), mine.len());
        check_gathered("allgather", recv.len(), t.size(), b)?;
        // SAFETY: nothing of `recv` is lent yet.
        unsafe { recv.slice_mut(r * b..(r + 1) * b) }.copy_from_slice(mine);
        Ok((from, b))
    }
}

/// Runs `algo` over a [`Lent`] copy of `buf` and copies the result back
/// if it succeeded (the slice forms of the algorithms that lend their
/// buffer).
async fn on_copy<T: Element>(buf: &mut [T], algo: impl AsyncFnOnce(&Lent<T>) -> Result<()>) -> Result<()> {
    let lent = Lent::new(buf.to_vec());
    let res = algo(&lent).await;
    let back = lent.finish(&res);
    if res.is_ok() {
        buf.copy_from_slice(&back);
    }
    res
}

/// This rank's operand of an allreduce over lent buffers whose blocks
/// leave from the operand while results land in `buf`: the caller's `own`,
/// or, in place, a copy of `buf`.
enum Operand<'a, T: Element> {
    Own(&'a Lent<T>),
    Copied(Lent<T>),
}

impl<'a, T: Element> Operand<'a, T> {
    /// `own`, which must be as long as `buf` (`InvalidData` if not), or a
    /// copy of `buf`.
    ///
    /// # Safety
    /// Nothing of `buf` is lent to an operation yet, and no slice of it
    /// from [`Lent::slice_mut`] lives.
    unsafe fn of(own: Option<&'a Lent<T>>, buf: &Lent<T>) -> Result<Self> {
        match own {
            Some(own) => {
                crate::check::len("buf", buf.len(), own.len())?;
                Ok(Self::Own(own))
            }
            // SAFETY: the caller's promise.
            None => Ok(Self::Copied(Lent::new(unsafe { buf.slice(0..buf.len()) }.to_vec()))),
        }
    }
}

impl<T: Element> std::ops::Deref for Operand<'_, T> {
    type Target = Lent<T>;

    fn deref(&self) -> &Lent<T> {
        match self {
            Self::Own(own) => own,
            Self::Copied(copied) => copied,
        }
    }
}

/// Combines the operands of every rank into `out`, in rank order: this
/// rank's (rank `r`) is `mine`, every other rank's is in `theirs` (in rank
/// order). x0 ∘ (x1 ∘ (… ∘ (x(n-2) ∘ x(n-1)))): from the highest rank down,
/// so every step combines from the left, as every operation can; every
/// rank that combines the same operands gets the same bits.
fn combine_in_rank_order<T: Element>(
    op: &ReduceOp<T>,
    theirs: &[Received<'_, T>],
    mine: &[T],
    r: usize,
    out: &mut [T],
) {
    let n = theirs.len() + 1;
    let operand = |q: usize| -> &[T] {
        match q.cmp(&r) {
            std::cmp::Ordering::Less => &theirs[q],
            std::cmp::Ordering::Equal => mine,
            std::cmp::Ordering::Greater => &theirs[q - 1],
        }
    };
    if n == 1 {
        out.copy_from_slice(mine);
        return;
    }
    op.apply_into(operand(n - 2), operand(n - 1), out);
    for q in (0..n - 2).rev() {
        op.apply(operand(q), out);
    }
}

/// `acc = acc ∘ higher`, where `higher` holds the values of higher ranks
/// (the order a non-commutative operation needs).
fn combine_from_higher<T: Element>(op: &ReduceOp<T>, acc: &mut [T], mut higher: Received<'_, T>) {
    if op.apply_from_right(&higher, acc) {
        return;
    }
    // A custom operation combines from the left only: combined in the
    // message's own buffer (`higher = acc ∘ higher`), then copied back.
    let higher = higher.as_mut_slice();
    op.apply(acc, higher);
    acc.copy_from_slice(higher);
}

fn too_long(n: usize) -> mfio_core::Error {
    mfio_core::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{n} elements do not fit in memory as bytes"),
    )
}

/// `InvalidInput` for an operation that does not apply to `T`, or a
/// non-commutative one where the algorithm needs to reorder operands.
fn check_op<T: Element>(op: &ReduceOp<T>, needs_commutative: Option<&str>) -> Result<()> {
    if !op.applies_to(&T::layout()) {
        return Err(crate::check::invalid(format!(
            "{} does not apply to {}",
            op.name(),
            std::any::type_name::<T>()
        )));
    }
    match needs_commutative {
        Some(algo) if !op.is_commutative() => Err(crate::check::invalid(format!(
            "{algo} reorders operands: it needs a commutative operation"
        ))),
        _ => Ok(()),
    }
}

/// `InvalidInput` unless a gathered buffer of `len` elements holds `n`
/// blocks of `b`.
fn check_gathered(what: &str, len: usize, n: usize, b: usize) -> Result<()> {
    if Some(len) == b.checked_mul(n) {
        Ok(())
    } else {
        Err(crate::check::invalid(format!(
            "{what}: the buffer holds {len} elements, {n} ranks × {b} expected"
        )))
    }
}

/// The block of an alltoall whose `send` and `recv` hold `send_len` and
/// `recv_len` elements over `n` ranks.
///
/// # Errors
/// `InvalidInput` unless both hold the same number, a multiple of `n`.
fn alltoall_block(send_len: usize, recv_len: usize, n: usize) -> Result<usize> {
    if send_len != recv_len || !send_len.is_multiple_of(n) {
        return Err(crate::check::invalid(format!(
            "alltoall: send ({send_len}) and recv ({recv_len}) must hold the same number of elements, a multiple of {n} ranks"
        )));
    }
    Ok(send_len / n)
}

/// A tree over relative ranks `0..n`, rooted at 0, whose subtrees are
/// contiguous: the subtree of `v` is the ranks `v..v + span(v)`.
#[derive(Debug, Clone, Copy)]
struct Tree {
    n: usize,
    shape: Shape,
}

/// How a [`Tree`] branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Every rank is a child of the root (linear algorithms).
    Flat,
    /// The parent of `v` is `v` without its lowest set bit.
    Binomial,
}

impl Tree {
    /// The parent of relative rank `v` (`None` for the root).
    fn parent(self, v: usize) -> Option<usize> {
        match self.shape {
            _ if v == 0 => None,
            Shape::Flat => Some(0),
            Shape::Binomial => Some(v - (1 << v.trailing_zeros())),
        }
    }

    /// How many ranks the subtree of `v` holds.
    fn span(self, v: usize) -> usize {
        match self.shape {
            _ if v == 0 => self.n,
            Shape::Flat => 1,
            Shape::Binomial => (1 << v.trailing_zeros()).min(self.n - v),
        }
    }

    /// The children of `v`, nearest first: their subtrees follow `v`'s own
    /// rank back to back.
    fn children(self, v: usize) -> Vec<usize> {
        match self.shape {
            Shape::Flat if v == 0 => (1..self.n).collect(),
            Shape::Flat => Vec::new(),
            Shape::Binomial => {
                let top = if v == 0 {
                    self.n.next_power_of_two()
                } else {
                    1 << v.trailing_zeros()
                };
                (0..top.trailing_zeros())
                    .map(|k| v + (1 << k))
                    .filter(|&c| c < self.n)
                    .collect()
            }
        }
    }
}

/// The bounds of block `b` of `len` elements cut into `n` blocks whose
/// sizes differ by at most one (any length, any `n`).
fn block(len: usize, n: usize, b: usize) -> std::ops::Range<usize> {
    let (base, extra) = (len / n, len % n);
    let start = b * base + b.min(extra);
    start..start + base + usize::from(b < extra)
}
