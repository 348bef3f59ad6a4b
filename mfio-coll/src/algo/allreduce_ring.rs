//! Ring allreduce: the buffer is cut into one block per rank (sizes differ
//! by at most one element, so any length works); a reduce-scatter passes
//! blocks around the ring, each rank adding its values, until every block
//! is complete on one rank; an allgather then passes the complete blocks
//! around. Each rank sends and receives 2·(n-1)/n of the buffer: the
//! bandwidth-optimal choice for long messages.

use mfio_core::Result;

use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{CollId, Transport};

/// Reduces every rank's `buf` element-wise; every rank ends with the same
/// result, bit for bit.
///
/// # Errors
/// `InvalidInput` for a non-commutative operation (the ring adds operands
/// in ring order) or one that does not apply to `T`; `InvalidData` on a
/// length mismatch; what the transport reports.
pub async fn allreduce_ring<T: Element>(t: &dyn Transport, id: CollId, buf: &mut [T], op: &ReduceOp<T>) -> Result<()> {
    super::check_op(op, Some("ring allreduce"))?;
    ring(t, id, 0, buf, op).await
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
    super::check_op(op, Some("segmented ring allreduce"))?;
    let rings = buf
        .chunks_mut(segment.max(1))
        .enumerate()
        .map(|(i, part)| ring(t, id, i as u32, part, op));
    for res in futures_util::future::join_all(rings).await {
        res?;
    }
    Ok(())
}

/// One ring over `buf`, its messages keyed with chunk `chunk`.
async fn ring<T: Element>(t: &dyn Transport, id: CollId, chunk: u32, buf: &mut [T], op: &ReduceOp<T>) -> Result<()> {
    let (n, r) = (t.size(), t.rank());
    if n == 1 {
        return Ok(());
    }
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let len = buf.len();
    // Reduce-scatter: in step s, send block r - s, add the left neighbour's
    // block r - s - 1 into ours. After n - 1 steps block r + 1 is complete.
    for s in 0..n - 1 {
        let out = super::block(len, n, (r + n - s) % n);
        let into = super::block(len, n, (r + 2 * n - s - 1) % n);
        let key = id.key(s as u32, chunk);
        let incoming = super::exchange(t, right, left, key, &buf[out], into.len()).await?;
        op.apply(&incoming, &mut buf[into]);
    }
    // Allgather: block r + 1 is complete here; pass the blocks around.
    let around = (right, left);
    super::ring_pass_blocks(t, buf, n, (r + 1) % n, around, |s| id.key((n - 1 + s) as u32, chunk)).await?;
    Ok(())
}
