//! Scatter-allgather broadcast (van de Geijn): the root's buffer is cut into
//! one block per rank (sizes differ by at most one element), scattered down
//! a binomial tree, then gathered by every rank around a ring. Each rank
//! moves about twice the buffer instead of log₂ n times it: the choice for
//! long messages.

use mfio_core::Result;

use crate::comm::Rank;
use crate::element::Element;
use crate::transport::{CollId, Transport};

/// Copies the root's `buf` into every rank's `buf` (same length on all).
///
/// # Errors
/// `InvalidInput` for a root outside the group; `InvalidData` if this
/// rank's length differs from the root's; what the transport reports.
pub async fn bcast_scatter_allgather<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &mut [T],
    root: Rank,
) -> Result<()> {
    let n = t.size();
    crate::check::rank("root", root, n)?;
    let len = buf.len();
    let rel = (t.rank() + n - root) % n;
    let real = |v: usize| (v + root) % n;
    // Elements of blocks [first, first + count) (relative block numbers).
    let range =
        |first: usize, count: usize| super::block(len, n, first).start..super::block(len, n, first + count - 1).end;
    let tree = super::Binomial { n };
    // Scatter: receive this subtree's blocks, hand each child its part.
    let scatter = id.key(0, 0);
    if let Some(parent) = tree.parent(rel) {
        super::recv_into(t, real(parent), scatter, &mut buf[range(rel, tree.span(rel))]).await?;
    }
    let sends: Vec<_> = tree
        .children(rel)
        .rev()
        .map(|child| super::send(t, real(child), scatter, &buf[range(child, tree.span(child))]))
        .collect();
    for res in futures_util::future::join_all(sends).await {
        res?;
    }
    // Ring allgather of the blocks, in relative ranks.
    let (right, left) = (real((rel + 1) % n), real((rel + n - 1) % n));
    for s in 0..n.saturating_sub(1) {
        let out = super::block(len, n, (rel + n - s) % n);
        let into = super::block(len, n, (rel + 2 * n - s - 1) % n);
        let key = id.key(1 + s as u32, 0);
        let incoming = super::exchange(t, right, left, key, &buf[out], into.len()).await?;
        buf[into].copy_from_slice(&incoming);
    }
    Ok(())
}
