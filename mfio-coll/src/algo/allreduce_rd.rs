//! Recursive-doubling allreduce: in step `k` each rank exchanges its whole
//! buffer with the rank whose number differs in bit `k`, and both combine
//! the two in rank order; log₂ n steps, the latency-optimal choice for
//! short messages. A rank count that is not a power of two first folds
//! the extra ranks into their neighbours (even rank 2i hands its values to
//! 2i + 1) and hands them the result at the end.
//!
//! Over a lent buffer ([`allreduce_recursive_doubling_lent`]) each rank's
//! values leave from the buffer, and the result lands in it, where the
//! transport can: for long messages.

use mfio_core::Result;

use super::fold::Fold;
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
pub async fn allreduce_recursive_doubling<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, None)?;
    if size_of_val(buf) >= super::POST_AHEAD_BYTES {
        return super::on_copy(buf, async |lent| {
            allreduce_recursive_doubling_lent(t, id, None, lent, op).await
        })
        .await;
    }
    let (n, r) = (t.size(), t.rank());
    let fold = Fold::of(n);
    // (Only a paired rank folds: the others make no fold futures at all,
    // a tenth of an 8-byte allreduce's own work on 2 ranks.)
    let paired = fold.paired(r);
    if paired {
        fold.fold_in(t, id.key(0, 0), buf, op).await?;
    }
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
    if paired {
        fold.hand_out(t, id.key(u32::MAX, 0), buf).await?;
    }
    Ok(())
}

/// [`allreduce_recursive_doubling`] over a lent buffer: in place, or with
/// this rank's operand in `own` (same length; read only) and the result in
/// `buf`, whose old values are then not read.
///
/// With `own`, this rank's values leave from `own` until it first combines
/// (into `buf`): a peer never reads `buf` before this rank writes it. A
/// write to memory another core has just read waits for that core to give
/// its copy up: a 64 KiB combine took ~9 µs after a peer's read against
/// ~2.3 µs without one (BENCHMARKS.md), and sending from `buf` put that
/// wait, or the copy of `own` into `buf` before it, on most ranks' steps.
pub(crate) async fn allreduce_recursive_doubling_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    mut own: Option<&Lent<T>>,
    buf: &Lent<T>,
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, None)?;
    let (n, r) = (t.size(), t.rank());
    let fold = Fold::of(n);
    if let Some(from) = own.filter(|_| n == 1) {
        // SAFETY: nothing of either buffer is lent yet.
        unsafe { buf.slice_mut(0..buf.len()).copy_from_slice(from.slice(0..from.len())) };
        own = None;
    }
    fold.fold_in_lent(t, id.key(0, 0), own, buf, op).await?;
    if fold.paired(r) {
        // The odd rank of a pair combined its operand into `buf`; the even
        // one gets the result there.
        own = None;
    }
    if let Some(v) = fold.virt(r) {
        let all = 0..buf.len();
        let mut mask = 1;
        let mut step = 1;
        while mask < fold.pow {
            let partner = v ^ mask;
            let (peer, key) = (fold.real(partner), id.key(step, 0));
            let (sent, got) = futures_util::future::join(
                t.send_block(peer, key, own.unwrap_or(buf).block(all.clone())),
                super::recv::<T>(t, peer, key, buf.len()),
            )
            .await;
            sent?;
            let theirs = got?;
            // SAFETY: the send is done: no block of `buf` (or `own`) is
            // lent now.
            let mine = unsafe { buf.slice_mut(all.clone()) };
            match own.take() {
                // The first step from `own`: `buf` gets `theirs ∘ own` or
                // `own ∘ theirs`, rank order kept.
                Some(own) => {
                    // SAFETY: as above; `own` is never written.
                    let own = unsafe { own.slice(all.clone()) };
                    if partner < v {
                        op.apply_into(&theirs, own, mine);
                    } else {
                        op.apply_into(own, &theirs, mine);
                    }
                }
                None if partner < v => op.apply(&theirs, mine),
                None => super::combine_from_higher(op, mine, theirs),
            }
            mask <<= 1;
            step += 1;
        }
    }
    fold.hand_out_lent(t, id.key(u32::MAX, 0), buf).await
}
