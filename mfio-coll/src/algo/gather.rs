//! Gather: every rank's block into the root's buffer, in rank order.
//! [`gather_linear`] receives every block straight at the root;
//! [`gather_binomial`] collects each subtree's blocks up a binomial tree.

use mfio_core::Result;

use super::{Shape, Tree};
use crate::comm::Rank;
use crate::element::Element;
use crate::transport::{CollId, Transport};

/// Gathers every rank's `send` (equal lengths) into the root's `recv`
/// (size × `send.len()`; other ranks' `recv` is not touched), each block
/// sent straight to the root.
///
/// # Errors
/// `InvalidInput` for a root outside the group or a root `recv` of another
/// length; `InvalidData` on a length mismatch; what the transport reports.
pub async fn gather_linear<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: &[T],
    recv: &mut [T],
    root: Rank,
) -> Result<()> {
    gather(t, id, send, recv, root, Shape::Flat).await
}

/// [`gather_linear`]'s result through a binomial tree: a rank collects its
/// children's subtrees after its own block and passes the lot to its
/// parent.
///
/// # Errors
/// As [`gather_linear`].
pub async fn gather_binomial<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: &[T],
    recv: &mut [T],
    root: Rank,
) -> Result<()> {
    gather(t, id, send, recv, root, Shape::Binomial).await
}

/// Gather up a tree of `shape`: a rank receives its children's subtrees
/// (all at once), puts them after its own block, and sends the lot to its
/// parent; the root puts the blocks in rank order.
async fn gather<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: &[T],
    recv: &mut [T],
    root: Rank,
    shape: Shape,
) -> Result<()> {
    let (n, r, b) = (t.size(), t.rank(), send.len());
    crate::check::rank("root", root, n)?;
    if r == root {
        super::check_gathered("gather", recv.len(), n, b)?;
    }
    let rel = (r + n - root) % n;
    let real = |v: usize| (v + root) % n;
    let key = id.key(0, 0);
    let tree = Tree { n, shape };
    let parts = tree
        .children(rel)
        .into_iter()
        .map(|child| super::recv::<T>(t, real(child), key, tree.span(child) * b));
    // The blocks of relative ranks [rel, rel + span), in order: this rank's,
    // then each child's subtree, nearest child first.
    let mut held = Vec::with_capacity(tree.span(rel) * b);
    held.extend_from_slice(send);
    for part in futures_util::future::join_all(parts).await {
        held.extend_from_slice(&part?);
    }
    if let Some(parent) = tree.parent(rel) {
        return super::send(t, real(parent), key, &held).await;
    }
    for (v, block) in held.chunks(b.max(1)).enumerate().take(n) {
        let at = real(v);
        recv[at * b..(at + 1) * b].copy_from_slice(block);
    }
    Ok(())
}
