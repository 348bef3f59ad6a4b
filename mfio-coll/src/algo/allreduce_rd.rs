//! Recursive-doubling allreduce: in step `k` each rank exchanges its whole
//! buffer with the rank whose number differs in bit `k`, and both combine
//! the two in rank order; log₂ n steps, the latency-optimal choice for
//! short messages. A rank count that is not a power of two first folds
//! the extra ranks into their neighbours (even rank 2i hands its values to
//! 2i + 1) and hands them the result at the end.

use mfio_core::Result;

use super::fold::Fold;
use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{CollId, Transport};

/// Reduces every rank's `buf` element-wise, in rank order (non-commutative
/// operations included); every rank ends with the same result, bit for
/// bit.
///
/// # Errors
/// `InvalidInput` for an operation that does not apply to `T`;
/// `InvalidData` on a length mismatch; what the transport reports.
pub async fn allreduce_recursive_doubling<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, None)?;
    let (n, r) = (t.size(), t.rank());
    let fold = Fold::of(n);
    fold.fold_in(t, id.key(0, 0), buf, op).await?;
    if let Some(v) = fold.virt(r) {
        let mut mask = 1;
        let mut step = 1;
        while mask < fold.pow {
            let partner = v ^ mask;
            let key = id.key(step, 0);
            let theirs = super::exchange(t, fold.real(partner), fold.real(partner), key, buf, buf.len()).await?;
            if partner < v {
                op.apply(&theirs, buf);
            } else {
                super::combine_from_higher(op, buf, theirs);
            }
            mask <<= 1;
            step += 1;
        }
    }
    // Unfold: the folded ranks get the result from their partner.
    fold.hand_out(t, id.key(u32::MAX, 0), buf).await?;
    Ok(())
}
