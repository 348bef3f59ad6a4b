//! Scatter: the root's buffer cut into one block per rank, block `r` to
//! rank `r`. [`scatter_linear`] sends every block straight from the root
//! (n - 1 messages from one rank: fine for few ranks or large blocks);
//! [`scatter_binomial`] sends each subtree's blocks down a binomial tree
//! (⌈log₂ n⌉ steps: for many ranks and small blocks).

use mfio_core::Result;

use super::{Shape, Tree};
use crate::comm::Rank;
use crate::element::Element;
use crate::transport::{CollId, Transport};

/// Sends block `r` of the root's `send` (size × `recv.len()` elements; other
/// ranks' `send` is not read) to rank `r`'s `recv`, each from the root.
///
/// # Errors
/// `InvalidInput` for a root outside the group or a root `send` of
/// another length; `InvalidData` on a length mismatch; what the transport
/// reports.
pub async fn scatter_linear<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: &[T],
    recv: &mut [T],
    root: Rank,
) -> Result<()> {
    scatter(t, id, send, recv, root, Shape::Flat).await
}

/// [`scatter_linear`]'s result through a binomial tree: a rank receives its
/// subtree's blocks from its parent and passes each child its part.
///
/// # Errors
/// As [`scatter_linear`].
pub async fn scatter_binomial<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: &[T],
    recv: &mut [T],
    root: Rank,
) -> Result<()> {
    scatter(t, id, send, recv, root, Shape::Binomial).await
}

/// Scatter down a tree of `shape`: a rank gets its subtree's blocks from
/// its parent (the root has them all) and sends each child its part.
async fn scatter<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: &[T],
    recv: &mut [T],
    root: Rank,
    shape: Shape,
) -> Result<()> {
    let (n, r, b) = (t.size(), t.rank(), recv.len());
    crate::check::rank("root", root, n)?;
    let rel = (r + n - root) % n;
    let real = |v: usize| (v + root) % n;
    let key = id.key(0, 0);
    let tree = Tree { n, shape };
    // The blocks of this rank's subtree, in relative order: [rel, rel + span).
    let held: Vec<T> = match tree.parent(rel) {
        None => {
            super::check_gathered("scatter", send.len(), n, b)?;
            // Relative order: the root's blocks rotated so relative rank v's comes v-th.
            (0..n)
                .flat_map(|v| send[real(v) * b..(real(v) + 1) * b].iter().copied())
                .collect()
        }
        Some(parent) => super::recv::<T>(t, real(parent), key, tree.span(rel) * b)
            .await?
            .into_vec(),
    };
    let sends = tree.children(rel).into_iter().map(|child| {
        let from = (child - rel) * b;
        super::send(t, real(child), key, &held[from..from + tree.span(child) * b])
    });
    for res in futures_util::future::join_all(sends).await {
        res?;
    }
    recv.copy_from_slice(&held[..b]);
    Ok(())
}
