//! Gather: every rank's block into the root's buffer, in rank order.
//! [`gather_linear`] receives every block straight at the root;
//! [`gather_binomial`] collects each subtree's blocks up a binomial tree.

use mfio_core::Result;

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
    let (n, r, b) = (t.size(), t.rank(), send.len());
    crate::check::rank("root", root, n)?;
    let key = id.key(0, 0);
    if r != root {
        return super::send(t, root, key, send).await;
    }
    super::check_gathered("gather", recv.len(), n, b)?;
    let recvs = (0..n)
        .filter(|&from| from != root)
        .map(|from| async move { super::recv::<T>(t, from, key, b).await.map(|block| (from, block)) });
    for res in futures_util::future::join_all(recvs).await {
        let (from, block) = res?;
        recv[from * b..(from + 1) * b].copy_from_slice(&block);
    }
    recv[root * b..(root + 1) * b].copy_from_slice(send);
    Ok(())
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
    let (n, r, b) = (t.size(), t.rank(), send.len());
    crate::check::rank("root", root, n)?;
    if r == root {
        super::check_gathered("gather", recv.len(), n, b)?;
    }
    let rel = (r + n - root) % n;
    let real = |v: usize| (v + root) % n;
    let key = id.key(0, 0);
    let tree = super::Binomial { n };
    // The blocks of relative ranks [rel, rel + span), in order: this rank's,
    // then each child's subtree, nearest child first.
    let mut held = Vec::with_capacity(tree.span(rel) * b);
    held.extend_from_slice(send);
    for child in tree.children(rel) {
        let part = super::recv::<T>(t, real(child), key, tree.span(child) * b).await?;
        held.extend_from_slice(&part);
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
