//! Prefix reductions by recursive doubling: in step `k` rank `r` sends the
//! reduction of the `2^k` ranks ending at it to rank `r + 2^k`, and folds
//! what rank `r - 2^k` sends in front of its own. ⌈log₂ n⌉ steps; operands
//! stay in rank order, so non-commutative operations are reduced
//! correctly.

use mfio_core::Result;

use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{CollId, Transport};

/// The prefix reduction both scans share: `Some(exclusive)` holds the
/// reduction of the ranks below `r` (`None` on rank 0); `buf` ends holding
/// the inclusive one.
async fn prefix<T: Element>(t: &dyn Transport, id: CollId, buf: &mut [T], op: &ReduceOp<T>) -> Result<Option<Vec<T>>> {
    super::check_op(op, None)?;
    let (n, r) = (t.size(), t.rank());
    // `partial`: the reduction of ranks [r - 2^k + 1, r] (what goes on).
    let mut partial = buf.to_vec();
    let mut below: Option<Vec<T>> = None;
    let (mut dist, mut step) = (1, 0);
    while dist < n {
        let key = id.key(step, 0);
        let out = partial.clone();
        let sending = async {
            if r + dist < n {
                super::send(t, r + dist, key, &out).await
            } else {
                Ok(())
            }
        };
        let receiving = async {
            if r >= dist {
                super::recv::<T>(t, r - dist, key, out.len()).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let (sent, got) = futures_util::future::join(sending, receiving).await;
        sent?;
        if let Some(lower) = got? {
            op.apply(&lower, &mut partial);
            below = Some(match below.take() {
                Some(mut acc) => {
                    op.apply(&lower, &mut acc);
                    acc
                }
                None => lower.into_vec(),
            });
        }
        dist *= 2;
        step += 1;
    }
    buf.copy_from_slice(&partial);
    Ok(below)
}

/// Inclusive scan: rank `r`'s `buf` becomes the reduction of every rank's
/// `buf` from 0 to `r`, in rank order.
///
/// # Errors
/// `InvalidInput` for an operation that does not apply to `T`;
/// `InvalidData` on a length mismatch; what the transport reports.
pub async fn scan_recursive_doubling<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    prefix(t, id, buf, op).await.map(drop)
}

/// Exclusive scan: rank `r`'s `buf` becomes the reduction of the ranks
/// below it, in rank order; rank 0's `buf` is left as it was.
///
/// # Errors
/// As [`scan_recursive_doubling`].
pub async fn exscan_recursive_doubling<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    let own = buf.to_vec();
    match prefix(t, id, buf, op).await? {
        Some(below) => buf.copy_from_slice(&below),
        None => buf.copy_from_slice(&own),
    }
    Ok(())
}
