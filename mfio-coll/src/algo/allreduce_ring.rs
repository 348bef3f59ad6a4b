//! Ring allreduce: the buffer is cut into one block per rank (sizes differ
//! by at most one element, so any length works); a reduce-scatter passes
//! blocks around the ring, each rank adding its values, until every block
//! is complete on one rank; an allgather then passes the complete blocks
//! around. Each rank sends and receives 2·(n-1)/n of the buffer: the
//! bandwidth-optimal choice for long messages. Blocks leave from the
//! buffer, and the allgather's land in it, where the transport can.

use std::ops::Range;

use mfio_core::Result;

use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{CollId, Lent, Transport};

/// Reduces every rank's `buf` element-wise; every rank ends with the same
/// result, bit for bit.
///
/// # Errors
/// `InvalidInput` for a non-commutative operation (the ring adds operands
/// in ring order) or one that does not apply to `T`; `InvalidData` on a
/// length mismatch; what the transport reports.
pub async fn allreduce_ring<T: Element>(t: &dyn Transport, id: CollId, buf: &mut [T], op: &ReduceOp<T>) -> Result<()> {
    super::on_copy(buf, async |lent| allreduce_ring_lent(t, id, None, lent, op).await).await
}

/// [`allreduce_ring`] over a lent buffer: in place, or with this rank's
/// operand in `own` (same length; read only) and the result in `buf`,
/// whose old values are then not read.
pub(crate) async fn allreduce_ring_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    own: Option<&Lent<T>>,
    buf: &Lent<T>,
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, Some("ring allreduce"))?;
    ring(t, id, 0, own, buf, 0..buf.len(), op).await
}

/// The segmented (pipelined) ring: `buf` cut into segments of `segment`
/// elements (at least 1), each reduced by its own ring, all at once. The
/// steps of one segment overlap those of the others, so a rank adds one
/// segment while the next is still arriving: for long messages. Every rank
/// ends with the same result, bit for bit.
///
/// # Errors
/// As [`allreduce_ring`].
pub async fn allreduce_segmented_ring<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    op: &ReduceOp<T>,
    segment: usize,
) -> Result<()> {
    super::on_copy(buf, async |lent| {
        allreduce_segmented_ring_lent(t, id, None, lent, op, segment).await
    })
    .await
}

/// [`allreduce_segmented_ring`] over a lent buffer, in place or from
/// `own` (as [`allreduce_ring_lent`]).
pub(crate) async fn allreduce_segmented_ring_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    own: Option<&Lent<T>>,
    buf: &Lent<T>,
    op: &ReduceOp<T>,
    segment: usize,
) -> Result<()> {
    super::check_op(op, Some("segmented ring allreduce"))?;
    let (len, segment) = (buf.len(), segment.max(1));
    let rings = (0..len.div_ceil(segment)).map(|i| {
        let part = i * segment..((i + 1) * segment).min(len);
        ring(t, id, i as u32, own, buf, part, op)
    });
    for res in futures_util::future::join_all(rings).await {
        res?;
    }
    Ok(())
}

/// One ring over elements `part` of `buf`, its messages keyed with chunk
/// `chunk` (the rings of other parts may run meanwhile). With `own`, this
/// rank's operand is there, not in `buf`: every element of `buf`'s part is
/// written before it is read (a block this rank adds to is `incoming ∘
/// own`; the allgather fills in the others), and only the first send (this
/// rank's own block, not yet added to) leaves from `own`.
async fn ring<T: Element>(
    t: &dyn Transport,
    id: CollId,
    chunk: u32,
    own: Option<&Lent<T>>,
    buf: &Lent<T>,
    part: Range<usize>,
    op: &ReduceOp<T>,
) -> Result<()> {
    let (n, r) = (t.size(), t.rank());
    if n == 1 {
        if let Some(own) = own {
            // SAFETY: nothing is in flight on either buffer (no peer), and
            // the rings of other parts touch other elements.
            unsafe { buf.slice_mut(part.clone()).copy_from_slice(own.slice(part)) };
        }
        return Ok(());
    }
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let len = part.len();
    let at = |b: usize| {
        let r = super::block(len, n, b);
        part.start + r.start..part.start + r.end
    };
    // Reduce-scatter: in step s, send block r - s, add the left neighbour's
    // block r - s - 1 into ours. After n - 1 steps block r + 1 is complete.
    // A step's send goes once the block it sends has the previous step's
    // values added (with long blocks every step's receive is posted at
    // once).
    let (out, into) = (|s: usize| at((r + n - s) % n), |s: usize| at((r + 2 * n - s - 1) % n));
    let key = |s: usize| id.key(s as u32, chunk);
    let pipeline = super::Pipeline {
        receives: n - 1,
        receive: |s: usize| super::recv::<T>(t, left, key(s), into(s).len()),
        sends: n - 1,
        ahead: 1,
        send: |s: usize| match own {
            Some(own) if s == 0 => t.send_block(right, key(s), own.block(out(s))),
            _ => t.send_block(right, key(s), buf.block(out(s))),
        },
        all_at_once: len / n * size_of::<T>() >= super::POST_AHEAD_BYTES,
    };
    pipeline
        .run(|s, incoming| {
            // SAFETY: block r - s - 1 is sent by step s + 1 only, which
            // starts after this; the sends in flight read other blocks
            // (r - s and before), and the rings of other parts lend none of
            // this part.
            let acc = unsafe { buf.slice_mut(into(s)) };
            match own {
                // SAFETY: `own` is never written; the only send from it is
                // of block r, never r - s - 1.
                Some(own) => op.apply_into(&incoming, unsafe { own.slice(into(s)) }, acc),
                None => op.apply(&incoming, acc),
            }
        })
        .await?;
    // Allgather: block r + 1 is complete here; pass the blocks around.
    let around = (right, left);
    super::ring_pass_blocks(t, buf, part.clone(), n, ((r + 1) % n, None), around, |s| {
        id.key((n - 1 + s) as u32, chunk)
    })
    .await
}
