//! Ring allgather: every rank's block travels once around the ring; in
//! step `s` each rank passes on the block it received in step `s - 1`.
//! n - 1 steps, each moving one block: bandwidth-optimal. Blocks leave
//! from the gathered buffer and land in it, where the transport can.

use mfio_core::Result;

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

/// This rank's block of an allgather.
pub(crate) enum Contribution<'a, T> {
    /// Elements to copy into the gathered buffer, which they then leave from.
    Slice(&'a [T]),
    /// The caller's send buffer lent for sending only: this rank's block
    /// leaves from it (it is also copied into the gathered buffer).
    Lent(&'a Lent<T>),
}

/// [`allgather_ring`] into a lent buffer.
pub(crate) async fn allgather_ring_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: Contribution<'_, T>,
    recv: &Lent<T>,
) -> Result<()> {
    let (from, mine) = match send {
        Contribution::Slice(s) => (None, s),
        // SAFETY: nothing writes the send buffer, and nothing of it is
        // lent yet.
        Contribution::Lent(l) => (Some(l), unsafe { l.slice(0..l.len()) }),
    };
    let (n, r, b) = (t.size(), t.rank(), mine.len());
    super::check_gathered("allgather", recv.len(), n, b)?;
    // SAFETY: nothing of `recv` is lent yet.
    unsafe { recv.slice_mut(r * b..(r + 1) * b) }.copy_from_slice(mine);
    // Every block has b elements, so the ring's even cut is the rank order.
    let around = ((r + 1) % n, (r + n - 1) % n);
    super::ring_pass_blocks(t, recv, 0..recv.len(), n, (r, from), around, |s| id.key(s as u32, 0)).await
}
