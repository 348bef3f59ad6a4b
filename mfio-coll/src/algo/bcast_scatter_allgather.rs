//! Scatter-allgather broadcast (van de Geijn): the root's buffer is cut into
//! one block per rank (sizes differ by at most one element), scattered down
//! a binomial tree, then gathered by every rank around a ring. Each rank
//! moves about twice the buffer instead of log₂ n times it: the choice for
//! long messages.

use mfio_core::Result;

use crate::comm::Rank;
use crate::element::Element;
use crate::transport::{CollId, Lent, Transport};

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
    crate::check::rank("root", root, t.size())?;
    super::on_copy(buf, async |lent| bcast_scatter_allgather_lent(t, id, lent, root).await).await
}

/// [`bcast_scatter_allgather`] of a lent buffer.
pub(crate) async fn bcast_scatter_allgather_lent<T: Element>(
    t: &dyn Transport,
    id: CollId,
    buf: &Lent<T>,
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
    let tree = super::Tree {
        n,
        shape: super::Shape::Binomial,
    };
    // Scatter: receive this subtree's blocks, hand each child its part
    // (the children's parts are only read meanwhile).
    let scatter = id.key(0, 0);
    if let Some(parent) = tree.parent(rel) {
        let mine = buf.block_mut(range(rel, tree.span(rel)));
        t.recv_block(real(parent), scatter, mine).await?;
    }
    let sends: Vec<_> = tree
        .children(rel)
        .into_iter()
        .map(|child| t.send_block(real(child), scatter, buf.block(range(child, tree.span(child)))))
        .collect();
    for res in futures_util::future::join_all(sends).await {
        res?;
    }
    // Ring allgather of the blocks, in relative ranks.
    let around = (real((rel + 1) % n), real((rel + n - 1) % n));
    super::ring_pass_blocks(t, buf, 0..len, n, (rel, None), around, |s| id.key(1 + s as u32, 0)).await
}
