//! Binomial-tree broadcast: ranks numbered relative to the root; a rank
//! receives from the rank that differs in its lowest set bit, then sends to
//! the ranks below that bit. ⌈log₂ n⌉ steps; the latency-optimal choice for
//! short messages. The message leaves from the buffer and lands in it,
//! where the transport can.

use mfio_core::Result;

use crate::comm::Rank;
use crate::element::Element;
use crate::transport::{CollId, Key, Lent, Transport};

/// Copies the root's `buf` into every rank's `buf` (same length on all).
///
/// # Errors
/// `InvalidInput` for a root outside the group; `InvalidData` if this
/// rank's length differs from the root's; what the transport reports.
pub async fn bcast_binomial<T: Element>(t: &dyn Transport, id: CollId, buf: &mut [T], root: Rank) -> Result<()> {
    crate::check::rank("root", root, t.size())?;
    super::on_copy(buf, async |lent| bcast_binomial_lent(t, id.key(0, 0), lent, root).await).await
}

/// [`bcast_binomial`] of a lent buffer, every message under `key`.
pub(crate) async fn bcast_binomial_lent<T: Element>(
    t: &dyn Transport,
    key: Key,
    buf: &Lent<T>,
    root: Rank,
) -> Result<()> {
    let n = t.size();
    crate::check::rank("root", root, n)?;
    let rel = (t.rank() + n - root) % n;
    let real = |v: usize| (v + root) % n;
    let all = 0..buf.len();
    let mut mask = 1;
    while mask < n {
        if rel & mask != 0 {
            t.recv_block(real(rel - mask), key, buf.block_mut(all.clone())).await?;
            break;
        }
        mask <<= 1;
    }
    // Children: rel + m for each m below the bit this rank received on
    // (the buffer is only read meanwhile).
    let children = (0..mask.trailing_zeros())
        .rev()
        .map(|k| rel + (1 << k))
        .filter(|&c| c < n);
    let sends = children.map(|c| t.send_block(real(c), key, buf.block(all.clone())));
    super::try_all(sends).await
}
