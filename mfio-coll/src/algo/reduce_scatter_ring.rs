//! Ring reduce-scatter: the reduce-scatter half of the ring allreduce,
//! scheduled so that rank `r` ends with block `r` complete. Each block is
//! reduced once, along the ring; n - 1 steps of one block each.

use mfio_core::Result;

use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{CollId, Transport};

/// Reduces `send` (size × `recv.len()` elements) element-wise over the
/// ranks; rank `r` gets block `r` in `recv`. `send` is used as scratch: its
/// contents afterwards are unspecified.
///
/// # Errors
/// `InvalidInput` for a non-commutative operation (the ring adds operands
/// in ring order), one that does not apply to `T`, or a `send` that is not
/// size × `recv.len()`; `InvalidData` on a length mismatch between ranks;
/// what the transport reports.
pub async fn reduce_scatter_block_ring<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: &mut [T],
    recv: &mut [T],
    op: &ReduceOp<T>,
) -> Result<()> {
    super::check_op(op, Some("ring reduce-scatter"))?;
    let (n, r, b) = (t.size(), t.rank(), recv.len());
    super::check_gathered("reduce_scatter_block", send.len(), n, b)?;
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    for s in 0..n.saturating_sub(1) {
        let out = (r + 2 * n - s - 1) % n;
        let into = (r + 2 * n - s - 2) % n;
        let key = id.key(s as u32, 0);
        let incoming = super::exchange(t, right, left, key, &send[out * b..(out + 1) * b], b).await?;
        op.apply(&incoming, &mut send[into * b..(into + 1) * b]);
    }
    recv.copy_from_slice(&send[r * b..(r + 1) * b]);
    Ok(())
}
