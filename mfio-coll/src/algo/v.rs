//! The `v` variants, linear: every block travels straight from its owner
//! to its destination, all at once (one message per pair of ranks that
//! have elements for each other; a block of 0 elements still goes, so
//! each receive knows its message). Blocks may differ in length from rank
//! to rank; a message of another length than the layout says is
//! `InvalidData`.

use futures_util::future::{join, join_all};
use mfio_core::Result;

use super::{recv, recv_into, send};
use crate::check::{self, Overlap};
use crate::comm::{Counts, Rank};
use crate::element::Element;
use crate::transport::{CollId, Transport};

/// The elements of `layout`'s region `r`.
fn region(layout: &Counts, r: Rank) -> std::ops::Range<usize> {
    layout.displs[r]..layout.displs[r] + layout.counts[r]
}

/// A gathering side's layout fits its `recv` without overlaps, and its own
/// region holds exactly its `send`.
fn check_gathering(layout: &Counts, n: usize, recv_len: usize, (me, send_len): (Rank, usize)) -> Result<()> {
    check::layout("recv", &layout.counts, &layout.displs, n, recv_len, Overlap::Refused)?;
    check::len("send", send_len, layout.counts[me])
}

/// Puts this rank's own block and the blocks received from `froms` (in
/// that order) into their regions of `recv_buf`.
fn place<T: Element>(
    recv_buf: &mut [T],
    layout: &Counts,
    (me, own): (Rank, &[T]),
    froms: &[Rank],
    got: Vec<Result<super::Received<'_, T>>>,
) -> Result<()> {
    recv_buf[region(layout, me)].copy_from_slice(own);
    for (&r, block) in froms.iter().zip(got) {
        recv_buf[region(layout, r)].copy_from_slice(&block?);
    }
    Ok(())
}

/// Sends region `r` of the root's `send` (laid out by `layout`, significant
/// at the root only) to rank `r`, whose `recv` holds exactly that many.
///
/// # Errors
/// `InvalidInput` for a root outside the group, or (at the root) a layout
/// that overruns `send` or disagrees with the root's own `recv`;
/// `InvalidData` if a rank's `recv` length differs from its region's; what
/// the transport reports.
pub async fn scatterv_linear<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send_buf: &[T],
    layout: &Counts,
    recv_buf: &mut [T],
    root: Rank,
) -> Result<()> {
    let (me, n) = (t.rank(), t.size());
    check::rank("root", root, n)?;
    let key = id.key(0, 0);
    if me != root {
        return recv_into(t, root, key, recv_buf).await;
    }
    check::layout(
        "send",
        &layout.counts,
        &layout.displs,
        n,
        send_buf.len(),
        Overlap::Allowed,
    )?;
    check::len("recv", recv_buf.len(), layout.counts[me])?;
    let sends = (0..n)
        .filter(|&r| r != me)
        .map(|r| send(t, r, key, &send_buf[region(layout, r)]));
    let sent = join_all(sends).await;
    recv_buf.copy_from_slice(&send_buf[region(layout, me)]);
    sent.into_iter().collect()
}

/// Gathers every rank's `send` into region `r` of the root's `recv` (laid
/// out by `layout`, significant at the root only).
///
/// # Errors
/// As [`scatterv_linear`], the other way round.
pub async fn gatherv_linear<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send_buf: &[T],
    recv_buf: &mut [T],
    layout: &Counts,
    root: Rank,
) -> Result<()> {
    let (me, n) = (t.rank(), t.size());
    check::rank("root", root, n)?;
    let key = id.key(0, 0);
    if me != root {
        return send(t, root, key, send_buf).await;
    }
    check_gathering(layout, n, recv_buf.len(), (me, send_buf.len()))?;
    let froms: Vec<Rank> = (0..n).filter(|&r| r != me).collect();
    let got = join_all(froms.iter().map(|&r| recv::<T>(t, r, key, layout.counts[r]))).await;
    place(recv_buf, layout, (me, send_buf), &froms, got)
}

/// Gathers every rank's `send` into region `r` of every rank's `recv` (the
/// same `layout` on every rank).
///
/// # Errors
/// `InvalidInput` for a layout that overruns `recv` or disagrees with this
/// rank's `send`; `InvalidData` for a block of another length; what the
/// transport reports.
pub async fn allgatherv_linear<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send_buf: &[T],
    recv_buf: &mut [T],
    layout: &Counts,
) -> Result<()> {
    let (me, n) = (t.rank(), t.size());
    check_gathering(layout, n, recv_buf.len(), (me, send_buf.len()))?;
    let key = id.key(0, 0);
    let others: Vec<Rank> = (0..n).filter(|&r| r != me).collect();
    let sends = join_all(others.iter().map(|&r| send(t, r, key, send_buf)));
    let recvs = join_all(others.iter().map(|&r| recv::<T>(t, r, key, layout.counts[r])));
    let (sent, got) = join(sends, recvs).await;
    place(recv_buf, layout, (me, send_buf), &others, got)?;
    sent.into_iter().collect()
}

/// Sends region `q` of every rank's `send` (`send_layout`) to rank `q`,
/// into region `p` of its `recv` (`recv_layout`) for sender `p`: every pair
/// exchanges at once.
///
/// # Errors
/// `InvalidInput` for a layout that overruns its buffer, or a block to
/// itself whose lengths disagree; `InvalidData` for a block of another
/// length than the receiver's layout says; what the transport reports.
pub async fn alltoallv_pairwise<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send_buf: &[T],
    send_layout: &Counts,
    recv_buf: &mut [T],
    recv_layout: &Counts,
) -> Result<()> {
    let (me, n) = (t.rank(), t.size());
    let (sl, rl) = (send_layout, recv_layout);
    check::layout("send", &sl.counts, &sl.displs, n, send_buf.len(), Overlap::Allowed)?;
    check::layout("recv", &rl.counts, &rl.displs, n, recv_buf.len(), Overlap::Refused)?;
    check::len("recv block from this rank", rl.counts[me], sl.counts[me])?;
    let key = id.key(0, 0);
    let others: Vec<Rank> = (0..n).filter(|&r| r != me).collect();
    let sends = join_all(others.iter().map(|&q| send(t, q, key, &send_buf[region(sl, q)])));
    let recvs = join_all(others.iter().map(|&p| recv::<T>(t, p, key, rl.counts[p])));
    let (sent, got) = join(sends, recvs).await;
    place(recv_buf, rl, (me, &send_buf[region(sl, me)]), &others, got)?;
    sent.into_iter().collect()
}
