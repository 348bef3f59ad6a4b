//! Pipelined chain broadcast: the ranks form a chain from the root, the
//! buffer travels in chunks, and each rank passes chunk `c` on while it
//! receives chunk `c + 1`. With many chunks every link is busy at once:
//! for long messages on few ranks.

use mfio_core::Result;

use crate::comm::Rank;
use crate::element::Element;
use crate::transport::{CollId, Transport};

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
    // Each chunk's message goes on to the next rank as it came.
    let mut held: Option<Vec<u8>> = None;
    if rel != 0 {
        let first = bounds(0);
        held = Some(super::recv_kept(t, prev, key(0), &mut buf[first]).await?);
    }
    for c in 0..chunks {
        let (this, following) = (bounds(c), bounds(c + 1));
        let receive_next = rel != 0 && c + 1 < chunks;
        let (done, rest) = buf.split_at_mut(this.end);
        let bytes = held.take();
        let forward = async {
            if has_next {
                super::send_reusing(t, next, key(c), &done[this.clone()], bytes).await
            } else {
                if let Some(bytes) = bytes {
                    t.recycle(bytes);
                }
                Ok(())
            }
        };
        let take = async {
            if receive_next {
                let at = following.start - this.end..following.end - this.end;
                super::recv_kept(t, prev, key(c + 1), &mut rest[at]).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let (sent, got) = futures_util::future::join(forward, take).await;
        sent?;
        held = got?;
    }
    Ok(())
}
