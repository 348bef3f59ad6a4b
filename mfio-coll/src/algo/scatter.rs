//! Scatter: the root's buffer cut into one block per rank, block `r` to
//! rank `r`. [`scatter_linear`] sends every block straight from the root
//! (n - 1 messages from one rank: fine for few ranks or large blocks);
//! [`scatter_binomial`] sends each subtree's blocks down a binomial tree
//! (⌈log₂ n⌉ steps: for many ranks and small blocks).

use mfio_core::Result;

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
    let (n, r, b) = (t.size(), t.rank(), recv.len());
    crate::check::rank("root", root, n)?;
    let key = id.key(0, 0);
    if r != root {
        return super::recv_into(t, root, key, recv).await;
    }
    super::check_gathered("scatter", send.len(), n, b)?;
    let sends = (0..n)
        .filter(|&to| to != root)
        .map(|to| super::send(t, to, key, &send[to * b..(to + 1) * b]));
    for res in futures_util::future::join_all(sends).await {
        res?;
    }
    recv.copy_from_slice(&send[root * b..(root + 1) * b]);
    Ok(())
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
    let (n, r, b) = (t.size(), t.rank(), recv.len());
    crate::check::rank("root", root, n)?;
    let rel = (r + n - root) % n;
    let real = |v: usize| (v + root) % n;
    let key = id.key(0, 0);
    let tree = super::Binomial { n };
    // The blocks of this rank's subtree, in relative order: [rel, rel + span).
    let mut held: Vec<T> = match tree.parent(rel) {
        None => {
            super::check_gathered("scatter", send.len(), n, b)?;
            // Relative order: the root's blocks rotated so relative rank v's comes v-th.
            (0..n)
                .flat_map(|v| send[real(v) * b..(real(v) + 1) * b].iter().copied())
                .collect()
        }
        Some(parent) => super::recv::<T>(t, real(parent), key, tree.span(rel) * b).await?,
    };
    let parts: Vec<(usize, Vec<T>)> = tree
        .children(rel)
        .rev()
        .map(|child| {
            let from = (child - rel) * b;
            (child, held[from..from + tree.span(child) * b].to_vec())
        })
        .collect();
    let sends = parts
        .iter()
        .map(|(child, part)| super::send(t, real(*child), key, part));
    for res in futures_util::future::join_all(sends).await {
        res?;
    }
    held.truncate(b);
    recv.copy_from_slice(&held);
    Ok(())
}
