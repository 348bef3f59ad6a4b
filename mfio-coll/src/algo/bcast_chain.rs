//! Pipelined chain broadcast: the ranks form a chain from the root, the
//! buffer travels in chunks, and each rank passes chunk `c` on as soon as
//! it is in, while the following chunks arrive. With many chunks every
//! link is busy at once: for long messages on few ranks. Chunks leave from
//! the buffer and land in it, where the transport can.

use mfio_core::Result;

use crate::comm::Rank;
use crate::element::Element;
use crate::transport::{CollId, Lent, Transport};

/// Copies the root's `buf` into every rank's `buf` (same length on all), in
/// chunks of `chunk` elements (at least 1).
///
/// # Errors
/// `InvalidInput` for a root outside the group; `InvalidData` if this
/// rank's length differs from the root's; what the transport reports.
pub async fn bcast_chain<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    root: Rank,
    chunk: usize,
) -> Result<()> {
    crate::check::rank("root", root, t.size())?;
    super::on_copy(buf, async |lent| bcast_chain_lent(t, id, lent, root, chunk).await).await
}

/// [`bcast_chain`] of a lent buffer.
pub(crate) async fn bcast_chain_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &Lent<T>,
    root: Rank,
    chunk: usize,
) -> Result<()> {
    let n = t.size();
    crate::check::rank("root", root, n)?;
    let rel = (t.rank() + n - root) % n;
    let (prev, next) = ((t.rank() + n - 1) % n, (t.rank() + 1) % n);
    let has_next = rel + 1 < n;
    let chunk = chunk.max(1);
    let len = buf.len();
    let chunks = len.div_ceil(chunk).max(1);
    let bounds = |c: usize| (c * chunk).min(len)..((c + 1) * chunk).min(len);
    let key = |c: usize| id.key(0, c as u32);
    // A chunk goes on as soon as it is in (so it is never read while it is
    // being written); with long chunks every receive is posted at once, and
    // the root sends them all at once.
    let send = |c: usize| t.send_block(next, key(c), buf.block(bounds(c)));
    if rel == 0 {
        return match has_next {
            true => super::try_all((0..chunks).map(send)).await,
            false => Ok(()),
        };
    }
    super::Pipeline {
        receives: chunks,
        receive: |c: usize| t.recv_block(prev, key(c), buf.block_mut(bounds(c))),
        sends: if has_next { chunks } else { 0 },
        ahead: 0,
        send,
        all_at_once: chunk * size_of::<T>() >= super::POST_AHEAD_BYTES,
    }
    .run(|_, ()| {})
    .await
}
