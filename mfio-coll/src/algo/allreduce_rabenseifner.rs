//! Rabenseifner's allreduce: a recursive-halving reduce-scatter leaves each
//! (virtual) rank with one block of the result, and a recursive-doubling
//! allgather hands every block to every rank. About twice the buffer moves
//! per rank in 2·log₂ n steps: for long messages where the ring's n steps
//! cost too much latency. Any length (blocks differ by at most one element)
//! and any rank count (extra ranks fold in first and get the result last).

use mfio_core::Result;

use super::fold::Fold;
use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{CollId, Transport};

/// Reduces every rank's `buf` element-wise; every rank ends with the same
/// result, bit for bit.
///
/// # Errors
/// `InvalidInput` for a non-commutative operation (partners combine out of
/// rank order) or one that does not apply to `T`; `InvalidData` on a length
/// mismatch; what the transport reports.
pub async fn allreduce_rabenseifner<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, Some("Rabenseifner's allreduce"))?;
    let (n, r, len) = (t.size(), t.rank(), buf.len());
    let fold = Fold::of(n);
    let key = |step: u32| id.key(step, 0);
    fold.fold_in(t, key(0), buf, op).await?;
    if let Some(v) = fold.virt(r) {
        let pow = fold.pow;
        // Elements of virtual blocks [lo, hi).
        let span = |lo: usize, hi: usize| {
            if lo == hi {
                0..0
            } else {
                super::block(len, pow, lo).start..super::block(len, pow, hi - 1).end
            }
        };
        // Reduce-scatter by recursive halving; remember each step's ranges.
        let (mut lo, mut hi) = (0, pow);
        let mut steps = Vec::new();
        let mut step = 1;
        while hi - lo > 1 {
            let half = (hi - lo) / 2;
            let mid = lo + half;
            let partner = fold.real(v ^ half);
            let (keep, give) = if v < mid {
                ((lo, mid), (mid, hi))
            } else {
                ((mid, hi), (lo, mid))
            };
            let (k, g) = (span(keep.0, keep.1), span(give.0, give.1));
            let incoming = super::exchange(t, partner, partner, key(step), &buf[g], k.len()).await?;
            op.apply(&incoming, &mut buf[k]);
            steps.push((partner, keep, give));
            (lo, hi) = keep;
            step += 1;
        }
        // Allgather by recursive doubling: the same partners in reverse,
        // each handing over the range the other gave away.
        for (partner, keep, give) in steps.into_iter().rev() {
            let (k, g) = (span(keep.0, keep.1), span(give.0, give.1));
            let incoming = super::exchange(t, partner, partner, key(step), &buf[k], g.len()).await?;
            buf[g].copy_from_slice(&incoming);
            step += 1;
        }
    }
    fold.hand_out(t, id.key(u32::MAX, 0), buf).await?;
    Ok(())
}
