//! Recursive-halving reduce-scatter: in each step a rank sends the half of
//! its current range that its partner keeps, and adds the half it keeps
//! from the partner; log₂ n steps, each moving half of what the one before
//! moved. The latency-minded reduce-scatter. Any rank count: the extra
//! ranks fold into their neighbours first, and get their block at the end.

use mfio_core::Result;

use super::fold::Fold;
use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{CollId, Transport};

/// Reduces `send` (size × `recv.len()` elements) element-wise over the
/// ranks; rank `r` gets block `r` in `recv`. `send` is used as scratch.
///
/// # Errors
/// `InvalidInput` for a non-commutative operation (partners combine out of
/// rank order), one that does not apply to `T`, or a `send` that is not
/// size × `recv.len()`; `InvalidData` on a length mismatch between ranks;
/// what the transport reports.
pub async fn reduce_scatter_block_halving<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: &mut [T],
    recv: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, Some("recursive-halving reduce-scatter"))?;
    let (n, r, b) = (t.size(), t.rank(), recv.len());
    super::check_gathered("reduce_scatter_block", send.len(), n, b)?;
    let fold = Fold::of(n);
    let key = |step: u32| id.key(step, 0);
    fold.fold_in(t, key(0), send, op).await?;
    if let Some(v) = fold.virt(r) {
        // Elements of virtual ranks [lo, hi): the blocks of the real ranks
        // they stand for.
        let span = |lo: usize, hi: usize| fold.first(lo) * b..fold.first(hi).min(n) * b;
        let (mut lo, mut hi) = (0, fold.pow);
        let mut step = 1;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let (keep, give) = if v < mid {
                ((lo, mid), (mid, hi))
            } else {
                ((mid, hi), (lo, mid))
            };
            let partner = fold.real(v ^ ((hi - lo) / 2));
            let (keep, give) = (span(keep.0, keep.1), span(give.0, give.1));
            let incoming = super::exchange(t, partner, partner, key(step), &send[give], keep.len()).await?;
            op.apply(&incoming, &mut send[keep]);
            (lo, hi) = if v < mid { (lo, mid) } else { (mid, hi) };
            step += 1;
        }
    }
    // Unfold: the odd rank of a pair holds both blocks; the even one gets its own.
    let unfold = id.key(u32::MAX, 0);
    if fold.paired(r) {
        if r % 2 == 0 {
            return super::recv_into(t, r + 1, unfold, recv).await;
        }
        super::send(t, r - 1, unfold, &send[(r - 1) * b..r * b]).await?;
    }
    recv.copy_from_slice(&send[r * b..(r + 1) * b]);
    Ok(())
}
