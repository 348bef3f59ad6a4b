//! Binomial-tree reduce: in step `k`, ranks that are odd multiples of `2^k`
//! send what they hold to the rank `2^k` below and drop out; the receiver
//! combines it after its own (it holds the values of lower ranks). The
//! tree is over the ranks themselves, so operands stay in rank order and
//! non-commutative operations are reduced correctly; a root other than 0
//! gets the result from rank 0 in one more message.

use mfio_core::Result;

use crate::comm::Rank;
use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{CollId, Transport};

/// Reduces every rank's `buf` element-wise into the root's `buf`, in rank
/// order (`r0 ∘ r1 ∘ … ∘ r(n-1)`). Other ranks' `buf` is used as scratch:
/// its contents afterwards are unspecified.
///
/// # Errors
/// `InvalidInput` for a root outside the group or an operation that does
/// not apply to `T`; `InvalidData` on a length mismatch; what the transport
/// reports.
pub async fn reduce_binomial<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    op: &ReduceOp<T>,
    root: Rank,
) -> Result<()> {
    let (n, r) = (t.size(), t.rank());
    crate::check::rank("root", root, n)?;
    super::check_op(op, None)?;
    let mut mask = 1;
    let mut step = 0;
    while mask < n {
        let key = id.key(step, 0);
        if r & mask != 0 {
            super::send(t, r - mask, key, buf).await?;
            break;
        }
        if r + mask < n {
            let higher = super::recv::<T>(t, r + mask, key, buf.len()).await?;
            super::combine_from_higher(op, buf, higher);
        }
        mask <<= 1;
        step += 1;
    }
    if root != 0 {
        let key = id.key(u32::MAX, 0);
        if r == 0 {
            super::send(t, root, key, buf).await?;
        } else if r == root {
            super::recv_into(t, 0, key, buf).await?;
        }
    }
    Ok(())
}
