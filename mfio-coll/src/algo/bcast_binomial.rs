//! Binomial-tree broadcast: ranks numbered relative to the root; a rank
//! receives from the rank that differs in its lowest set bit, then sends to
//! the ranks below that bit. ⌈log₂ n⌉ steps; the latency-optimal choice for
//! short messages.

use mfio_core::Result;

use crate::comm::Rank;
use crate::element::Element;
use crate::transport::{CollId, Transport};

/// Copies the root's `buf` into every rank's `buf` (same length on all).
///
/// # Errors
/// `InvalidInput` for a root outside the group; `InvalidData` if this
/// rank's length differs from the root's; what the transport reports.
pub async fn bcast_binomial<T: Element>(t: &dyn Transport, id: CollId, buf: &mut [T], root: Rank) -> Result<()> {
    let n = t.size();
    crate::check::rank("root", root, n)?;
    let rel = (t.rank() + n - root) % n;
    let real = |v: usize| (v + root) % n;
    let key = id.key(0, 0);
    let mut mask = 1;
    // The message as it came, passed on to one child without a copy.
    let mut received = None;
    while mask < n {
        if rel & mask != 0 {
            received = Some(super::recv_kept(t, real(rel - mask), key, buf).await?);
            break;
        }
        mask <<= 1;
    }
    // Children: rel + m for each m below the bit this rank received on.
    mask >>= 1;
    let mut sends = Vec::new();
    while mask > 0 {
        if rel + mask < n {
            sends.push(super::send_reusing(t, real(rel + mask), key, buf, received.take()));
        }
        mask >>= 1;
    }
    if let Some(bytes) = received {
        t.recycle(bytes);
    }
    for res in futures_util::future::join_all(sends).await {
        res?;
    }
    Ok(())
}
