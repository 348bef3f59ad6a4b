//! Ring allgather: every rank's block travels once around the ring; in
//! step `s` each rank passes on the block it received in step `s - 1`.
//! n - 1 steps, each moving one block: bandwidth-optimal.

use mfio_core::Result;

use crate::element::Element;
use crate::transport::{CollId, Transport};

/// Gathers every rank's `send` into every rank's `recv`, in rank order:
/// `recv` holds size × `send.len()` elements.
///
/// # Errors
/// `InvalidInput` if `recv` has another length; `InvalidData` if ranks'
/// blocks differ in length; what the transport reports.
pub async fn allgather_ring<T: Element>(t: &dyn Transport, id: CollId, send: &[T], recv: &mut [T]) -> Result<()> {
    let (n, r, b) = (t.size(), t.rank(), send.len());
    super::check_gathered("allgather", recv.len(), n, b)?;
    recv[r * b..(r + 1) * b].copy_from_slice(send);
    // Every block has b elements, so the ring's even cut is the rank order.
    let around = ((r + 1) % n, (r + n - 1) % n);
    super::ring_pass_blocks(t, recv, n, r, around, |s| id.key(s as u32, 0)).await?;
    Ok(())
}
