//! Collective algorithms over any [`Transport`], one module per algorithm.
//! Each is an async function over a rank's own buffer; it sees only the
//! transport, and every message it sends is keyed by its [`CollId`], its
//! step and its chunk.
//!
//! Written so far:
//! - barrier: [`barrier_dissemination`];
//! - bcast: [`bcast_binomial`];
//! - reduce: [`reduce_binomial`];
//! - allreduce: [`allreduce_ring`] (bandwidth-optimal, any length) and
//!   [`allreduce_recursive_doubling`] (latency-optimal, any rank count);
//! - allgather: [`allgather_ring`].
//!
//! Every rank's result of an allreduce is bit-identical, floating point
//! included: each element is reduced in one order and that result is what
//! every rank ends with (ring: each block is reduced along the ring once,
//! then passed around; recursive doubling: both partners of a step combine
//! the same two operands, lower ranks' first).
//!
//! Not written yet: Rabenseifner and the segmented ring (allreduce), van de
//! Geijn and the pipelined chain (bcast), Bruck and recursive doubling
//! (allgather), reduce_scatter_block, scatter(v)/gather(v), alltoall(v),
//! and the `Communicator` built from them with an adaptive choice.
//!
//! [`Transport`]: crate::transport::Transport
//! [`CollId`]: crate::transport::CollId

mod allgather_ring;
mod allreduce_rd;
mod allreduce_ring;
mod barrier;
mod bcast_binomial;
mod reduce_binomial;

pub use allgather_ring::allgather_ring;
pub use allreduce_rd::allreduce_recursive_doubling;
pub use allreduce_ring::allreduce_ring;
pub use barrier::barrier_dissemination;
pub use bcast_binomial::bcast_binomial;
pub use reduce_binomial::reduce_binomial;

use mfio_core::Result;

use crate::comm::Rank;
use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{Key, Transport};

/// Sends `data` to `to` under `key`.
async fn send<T: Element>(t: &dyn Transport, to: Rank, key: Key, data: &[T]) -> Result<()> {
    t.send(to, key, bytemuck::cast_slice(data).to_vec()).await.0
}

/// Receives `n` elements from `from` under `key`.
async fn recv<T: Element>(t: &dyn Transport, from: Rank, key: Key, n: usize) -> Result<Vec<T>> {
    let bytes = n.checked_mul(size_of::<T>()).ok_or_else(|| too_long(n))?;
    let (res, buf) = t.recv(from, key, vec![0u8; bytes]).await.into_parts();
    res?;
    // A byte vector need not be aligned for `T`: copied into one that is.
    let mut out = vec![T::zeroed(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&buf);
    Ok(out)
}

/// Receives `into.len()` elements from `from` under `key` into `into`.
async fn recv_into<T: Element>(t: &dyn Transport, from: Rank, key: Key, into: &mut [T]) -> Result<()> {
    let got = recv::<T>(t, from, key, into.len()).await?;
    into.copy_from_slice(&got);
    Ok(())
}

/// Sends `data` to `to` and receives `n` elements from `from`, both under
/// `key`, at the same time (a ring or pairwise step).
async fn exchange<T: Element>(
    t: &dyn Transport,
    to: Rank,
    from: Rank,
    key: Key,
    data: &[T],
    n: usize,
) -> Result<Vec<T>> {
    let (sent, got) = futures_util::future::join(send(t, to, key, data), recv::<T>(t, from, key, n)).await;
    sent?;
    got
}

/// `acc = acc ∘ higher`, where `higher` holds the values of higher ranks
/// (the order a non-commutative operation needs).
fn combine_from_higher<T: Element>(op: &ReduceOp<T>, acc: &mut [T], mut higher: Vec<T>) {
    op.apply(acc, &mut higher);
    acc.copy_from_slice(&higher);
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

/// The bounds of block `b` of `len` elements cut into `n` blocks whose
/// sizes differ by at most one (any length, any `n`).
fn block(len: usize, n: usize, b: usize) -> std::ops::Range<usize> {
    let (base, extra) = (len / n, len % n);
    let start = b * base + b.min(extra);
    start..start + base + usize::from(b < extra)
}
