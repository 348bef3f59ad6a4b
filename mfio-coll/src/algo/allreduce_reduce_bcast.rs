//! Reduce, then broadcast: a binomial-tree reduce to rank 0, then a
//! binomial broadcast of its result. Each of the 2·⌈log₂ n⌉ steps moves the
//! whole buffer, but a rank waits for at most one message per step and the
//! ranks outside a step rest: for few ranks, where the number of steps on
//! the critical path costs more than the bytes (Open MPI's libnbc takes it
//! below four ranks; with three ranks on two cores, a rank that rests
//! leaves its core to one that works). Operands are reduced in rank order,
//! so any operation applies, and every rank ends with rank 0's result, bit
//! for bit.

use mfio_core::Result;

use super::bcast_binomial::bcast_binomial_lent;
use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{CollId, Lent, Transport};

/// The step of the broadcast's messages (the reduce's are 0, 1, …).
const BCAST_STEP: u32 = u32::MAX;

/// Reduces every rank's `buf` element-wise; every rank ends with the same
/// result, bit for bit.
///
/// # Errors
/// `InvalidInput` for an operation that does not apply to `T`;
/// `InvalidData` on a length mismatch; what the transport reports.
pub async fn allreduce_reduce_bcast<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, None)?;
    super::on_copy(buf, async |lent| {
        allreduce_reduce_bcast_lent(t, id, None, lent, op).await
    })
    .await
}

/// [`allreduce_reduce_bcast`] over a lent buffer: in place, or with this
/// rank's operand in `own` (same length; read only) and the result in
/// `buf`, whose old values are then not read. The reduce's operands leave
/// from where they are (`own` until this rank combines, then `buf`), and
/// the result lands in `buf`.
///
/// With `own`, a rank that only sends (every rank but 0 on 2 and 3 ranks)
/// never lets a peer read `buf`, so the broadcast's write into it does not
/// wait for another core to give up its copy (see
/// [`allreduce_direct`](super::allreduce_direct)).
pub(crate) async fn allreduce_reduce_bcast_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    mut own: Option<&Lent<T>>,
    buf: &Lent<T>,
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, None)?;
    let (n, r) = (t.size(), t.rank());
    let all = 0..buf.len();
    if let Some(from) = own.filter(|_| n == 1) {
        // SAFETY: nothing of either buffer is lent yet.
        unsafe { buf.slice_mut(all.clone()).copy_from_slice(from.slice(all.clone())) };
        own = None;
    }
    // In step k, the ranks that are odd multiples of 2^k send what they
    // hold (their own and higher ranks' values) 2^k down, and drop out.
    let mut mask = 1;
    let mut step = 0;
    while mask < n {
        let key = id.key(step, 0);
        if r & mask != 0 {
            t.send_block(r - mask, key, own.unwrap_or(buf).block(all.clone()))
                .await?;
            break;
        }
        if r + mask < n {
            let higher = super::recv::<T>(t, r + mask, key, buf.len()).await?;
            // SAFETY: no block of `buf` is lent now (this rank sends only
            // after its last receive, and waits for the send).
            let mine = unsafe { buf.slice_mut(all.clone()) };
            match own.take() {
                // SAFETY: as above; `own` is never written.
                Some(own) => op.apply_into(unsafe { own.slice(all.clone()) }, &higher, mine),
                None => super::combine_from_higher(op, mine, higher),
            }
        }
        mask <<= 1;
        step += 1;
    }
    bcast_binomial_lent(t, id.key(BCAST_STEP, 0), buf, 0).await
}
