//! Direct allgather: every rank sends its block to every other rank at
//! once and takes every other rank's block straight into its place. One
//! step whatever the rank count; each rank sends and receives n − 1
//! blocks, as many bytes as the ring moves, but side by side instead of
//! one after the other: for a few ranks, where the ring's n − 1 steps
//! each wait for the one before (on 3 ranks, two steps against one).
//! Open MPI's non-blocking allgather is this one (libnbc's linear). Every
//! peer's block is in flight at once, so for many ranks the messages
//! queue at each receiver: not for many ranks.

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
pub async fn allgather_direct<T: Element>(t: &dyn Transport, id: CollId, send: &[T], recv: &mut [T]) -> Result<()> {
    super::check_gathered("allgather", recv.len(), t.size(), send.len())?;
    super::on_copy(recv, async |lent| {
        allgather_direct_lent(t, id, Contribution::Slice(send), lent).await
    })
    .await
}

/// [`allgather_direct`] into a lent buffer: every block lands in its place
/// in `recv`, and this rank's leaves from the send buffer when it is lent
/// (from its copy in `recv` otherwise, which nothing writes while it is
/// sent: no peer's block lands there).
pub(crate) async fn allgather_direct_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: Contribution<'_, T>,
    recv: &Lent<T>,
) -> Result<()> {
    let (from, b) = send.place(t, recv)?;
    let (n, r) = (t.size(), t.rank());
    let key = id.key(0, 0);
    let peers = || (0..n).filter(move |&q| q != r);
    let own = || match from {
        Some(l) => l.block(0..l.len()),
        None => recv.block(r * b..(r + 1) * b),
    };
    // Every receive is posted and every send leaves at once; each block
    // lent to land is a different part of `recv`, and none is the part
    // sent from.
    let sends = super::try_all(peers().map(|q| t.send_block(q, key, own())));
    let receives = super::try_all(peers().map(|q| t.recv_block(q, key, recv.block_mut(q * b..(q + 1) * b))));
    let (sent, got) = futures_util::future::join(sends, receives).await;
    sent.and(got)
}
