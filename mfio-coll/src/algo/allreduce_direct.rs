//! Direct ("one-shot") allreduce: every rank sends its operand to every
//! other rank and combines all n operands itself, in rank order. One step
//! whatever the rank count, each rank taking in n − 1 whole buffers: for a
//! few ranks and messages of moderate length, where the steps of recursive
//! doubling cost more than the extra bytes (on 3 ranks recursive doubling
//! takes three steps one after the other: a fold, an exchange, a hand-out).
//! Each rank holds n − 1 received buffers at once, and moves (n − 1) times
//! the buffer each way: not for many ranks.
//!
//! Nothing a peer reads is written: the operand leaves from the caller's
//! send buffer (or a copy of the buffer, in place), and the result is
//! combined into the buffer no peer reads. A write to memory that another
//! core has just read waits for that core to give its copy up (a 64 KiB
//! combine took ~9 µs after a peer's read against ~2.3 µs without one,
//! BENCHMARKS.md).
//!
//! Every rank combines the same operands in the same order with the same
//! operation, so every rank ends with the same result, bit for bit.

use mfio_core::Result;

use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{CollId, Lent, Transport};

/// Reduces every rank's `buf` element-wise, in rank order (non-commutative
/// operations included); every rank ends with the same result, bit for
/// bit.
///
/// # Errors
/// `InvalidInput` for an operation that does not apply to `T`;
/// `InvalidData` on a length mismatch; what the transport reports.
pub async fn allreduce_direct<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, None)?;
    let own = Lent::new(buf.to_vec());
    let res = combine_everyone(t, id, &own, buf, op).await;
    drop(own.finish_unwritten());
    res
}

/// [`allreduce_direct`] over a lent buffer: in place (this rank's operand
/// is copied out of `buf` first), or with this rank's operand in `own`
/// (same length; read only) and the result in `buf`, whose old values are
/// then not read.
pub(crate) async fn allreduce_direct_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    own: Option<&Lent<T>>,
    buf: &Lent<T>,
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, None)?;
    // SAFETY: nothing of `buf` is lent yet.
    let own = unsafe { super::Operand::of(own, buf)? };
    // SAFETY: `buf` is never lent to an operation here (every block sent
    // leaves from `own`), so this is the only view of it.
    let out = unsafe { buf.slice_mut(0..buf.len()) };
    combine_everyone(t, id, &own, out, op).await
}

/// Sends `own` to every other rank, takes every other rank's operand, and
/// combines all of them in rank order into `out`.
async fn combine_everyone<T: Element>(
    t: &dyn Transport,
    id: CollId,
    own: &Lent<T>,
    out: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    let (n, r) = (t.size(), t.rank());
    let len = own.len();
    crate::check::len("buf", out.len(), len)?;
    let key = id.key(0, 0);
    let peers = || (0..n).filter(move |&q| q != r);
    // Every receive is posted at once, and every send leaves at once: the
    // operands come in side by side.
    let sends = super::try_all(peers().map(|q| t.send_block(q, key, own.block(0..len))));
    let receives = futures_util::future::join_all(peers().map(|q| super::recv::<T>(t, q, key, len)));
    let (sent, got) = futures_util::future::join(sends, receives).await;
    sent?;
    let theirs = got.into_iter().collect::<Result<Vec<_>>>()?;
    // SAFETY: every send is done, and no block of `own` is lent to write.
    let mine = unsafe { own.slice(0..len) };
    super::combine_in_rank_order(op, &theirs, mine, r, out);
    Ok(())
}
