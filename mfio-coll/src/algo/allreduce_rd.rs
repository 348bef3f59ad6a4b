//! Recursive-doubling allreduce: in step `k` each rank exchanges its whole
//! buffer with the rank whose number differs in bit `k`, and both combine
//! the two in rank order; log₂ n steps, the latency-optimal choice for
//! short messages. A rank count that is not a power of two first folds
//! the extra ranks into their neighbours (even rank 2i hands its values to
//! 2i + 1) and hands them the result at the end.

use mfio_core::Result;

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
    let pow = if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    };
    let extra = n - pow;
    let fold = id.key(0, 0);
    // Fold: ranks below 2·extra pair up; the odd one of each pair goes on.
    let virt = if r < 2 * extra {
        if r % 2 == 0 {
            super::send(t, r + 1, fold, buf).await?;
            None
        } else {
            let lower = super::recv::<T>(t, r - 1, fold, buf.len()).await?;
            op.apply(&lower, buf);
            Some(r / 2)
        }
    } else {
        Some(r - extra)
    };
    let real = |v: usize| if v < extra { 2 * v + 1 } else { v + extra };
    if let Some(v) = virt {
        let mut mask = 1;
        let mut step = 1;
        while mask < pow {
            let partner = v ^ mask;
            let key = id.key(step, 0);
            let theirs = super::exchange(t, real(partner), real(partner), key, buf, buf.len()).await?;
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
    let unfold = id.key(u32::MAX, 0);
    if r < 2 * extra {
        if r % 2 == 0 {
            super::recv_into(t, r + 1, unfold, buf).await?;
        } else {
            super::send(t, r - 1, unfold, buf).await?;
        }
    }
    Ok(())
}
