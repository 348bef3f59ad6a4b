//! Ring allgather: every rank's block travels once around the ring; in
//! step `s` each rank passes on the block it received in step `s - 1`.
//! n - 1 steps, each moving one block: bandwidth-optimal. Blocks leave
//! from the gathered buffer and land in it, where the transport can.

use mfio_core::Result;

use super::Contribution;
use crate::element::Element;
use crate::transport::{CollId, Lent, Transport};

/// Gathers every rank's `send` into every rank's `recv`, in rank order:
/// `recv` holds size × `send.len()` elements.
///
/// # Errors
/// `InvalidInput` if `recv` has another length; `InvalidData` if ranks'
/// blocks differ in length; what the transport reports.
pub async fn allgather_ring<T: Element>(t: &dyn Transport, id: CollId, send: &[T], recv: &mut [T]) -> Result<()> {
    super::check_gathered("allgather", recv.len(), t.size(), send.len())?;
    super::on_copy(recv, async |lent| {
        allgather_ring_lent(t, id, Contribution::Slice(send), lent).await
    })
    .await
}

/// [`allgather_ring`] into a lent buffer.
pub(crate) async fn allgather_ring_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: Contribution<'_, T>,
    recv: &Lent<T>,
) -> Result<()> {
    let (from, _) = send.place(t, recv)?;
    let (n, r) = (t.size(), t.rank());
    // Every block has the same length, so the ring's even cut is the rank
    // order.
    let around = ((r + 1) % n, (r + n - 1) % n);
    super::ring_pass_blocks(t, recv, 0..recv.len(), n, (r, from), around, |s| id.key(s as u32, 0)).await
}
