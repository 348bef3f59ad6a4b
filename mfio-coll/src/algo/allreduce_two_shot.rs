//! Two-shot allreduce: a one-step reduce-scatter, then a one-step
//! allgather. The vector is cut into one block per rank; every rank sends
//! each peer that peer's block of its operand, combines the n operands of
//! its own block, and sends the combined block to every peer. Two steps
//! whatever the rank count; each rank takes in 2 (n − 1) / n of the
//! vector and combines n operands of 1 / n of it. The direct ("one-shot")
//! allreduce takes in n − 1 whole vectors and combines n operands of all
//! of it: on 3 ranks the two-shot one copies two thirds as much and
//! combines a third as much, for one step more; on 4 ranks half and a
//! quarter. The ring moves the same bytes as this in 2 (n − 1) steps.
//! Every peer's block is in flight at once, so for many ranks the
//! messages queue at each receiver: for a few ranks.
//!
//! Each block is combined once, by its rank, in rank order (so any
//! operation applies), and that result is what every rank gets: every
//! rank ends with the same result, bit for bit.

use mfio_core::Result;

use super::block;
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
pub async fn allreduce_two_shot<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, None)?;
    super::on_copy(buf, async |lent| allreduce_two_shot_lent(t, id, None, lent, op).await).await
}

/// [`allreduce_two_shot`] over a lent buffer: in place (this rank's
/// operand is copied out of `buf` first), or with this rank's operand in
/// `own` (same length; read only) and the result in `buf`, whose old
/// values are then not read.
///
/// The first step's blocks leave from `own`, which nothing writes; the
/// second's from this rank's block of `buf`, which it has just combined
/// there, and the peers' combined blocks land in their places in `buf`.
pub(crate) async fn allreduce_two_shot_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    own: Option<&Lent<T>>,
    buf: &Lent<T>,
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, None)?;
    let (n, r) = (t.size(), t.rank());
    let len = buf.len();
    // SAFETY: nothing of `buf` is lent yet.
    let own = unsafe { super::Operand::of(own, buf)? };
    let at = |b: usize| block(len, n, b);
    let peers = || (0..n).filter(move |&q| q != r);
    let scatter = id.key(0, 0);
    let gather = id.key(1, 0);
    // Peer q's block of the operand goes to q at once; it leaves from
    // `own`, which nothing writes, while this rank goes on.
    let scattered = super::try_all(peers().map(|q| t.send_block(q, scatter, own.block(at(q)))));
    let combined_and_gathered = async {
        let mine = at(r);
        let got = futures_util::future::join_all(peers().map(|q| super::recv::<T>(t, q, scatter, mine.len()))).await;
        let theirs = got.into_iter().collect::<Result<Vec<_>>>()?;
        {
            // SAFETY: nothing of `buf` is lent yet (the first step sends
            // from `own`); `own` is only read.
            let (out, mine) = unsafe { (buf.slice_mut(mine.clone()), own.slice(mine.clone())) };
            super::combine_in_rank_order(op, &theirs, mine, r, out);
        }
        drop(theirs);
        // Each block lent here is a different part of `buf`: this rank's
        // is only read, the others' land.
        let sends = super::try_all(peers().map(|q| t.send_block(q, gather, buf.block(mine.clone()))));
        let receives = super::try_all(peers().map(|q| t.recv_block(q, gather, buf.block_mut(at(q)))));
        let (sent, got) = futures_util::future::join(sends, receives).await;
        sent.and(got)
    };
    let (scattered, rest) = futures_util::future::join(scattered, combined_and_gathered).await;
    scattered.and(rest)
}
