//! Folding a rank count that is not a power of two onto one that is: the
//! ranks below `2 · extra` pair up (2i with 2i + 1), and the odd one of each
//! pair goes on as virtual rank i; the others go on as `r - extra`. Used by
//! the recursive-halving and recursive-doubling algorithms.

use mfio_core::Result;

use crate::comm::Rank;
use crate::element::Element;
use crate::reduce::ReduceOp;
use crate::transport::{Key, Lent, Transport};

/// The fold of `n` ranks onto the largest power of two not above it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fold {
    /// The virtual ranks, a power of two.
    pub(super) pow: usize,
    /// Ranks beyond `pow`: the pairs `(2i, 2i + 1)` for `i < extra`.
    pub(super) extra: usize,
}

impl Fold {
    pub(super) fn of(n: usize) -> Self {
        let pow = if n.is_power_of_two() {
            n
        } else {
            n.next_power_of_two() / 2
        };
        Self { pow, extra: n - pow }
    }

    /// The virtual rank of `r`, or `None` for the even rank of a pair
    /// (which hands its values to its partner `r + 1`).
    pub(super) fn virt(self, r: Rank) -> Option<usize> {
        if r < 2 * self.extra {
            (r % 2 == 1).then_some(r / 2)
        } else {
            Some(r - self.extra)
        }
    }

    /// The real rank that acts for virtual rank `v`.
    pub(super) fn real(self, v: usize) -> Rank {
        if v < self.extra {
            2 * v + 1
        } else {
            v + self.extra
        }
    }

    /// The first real rank virtual rank `v` stands for (its range of real
    /// ranks is `first(v)..first(v + 1)`).
    pub(super) fn first(self, v: usize) -> Rank {
        if v < self.extra {
            2 * v
        } else {
            v + self.extra
        }
    }

    /// Whether `r` is in a pair (it folds or is folded into).
    pub(super) fn paired(self, r: Rank) -> bool {
        r < 2 * self.extra
    }

    /// The fold itself: the even rank of a pair sends `buf` to its partner,
    /// which combines it in front of its own (rank order).
    pub(super) async fn fold_in<T: Element>(
        self,
        t: &dyn Transport,
        key: Key,
        buf: &mut [T],
        op: &ReduceOp<T>,
    ) -> Result<()> {
        let r = t.rank();
        if !self.paired(r) {
            return Ok(());
        }
        if r.is_multiple_of(2) {
            super::send(t, r + 1, key, buf).await
        } else {
            let lower = super::recv::<T>(t, r - 1, key, buf.len()).await?;
            op.apply(&lower, buf);
            Ok(())
        }
    }

    /// The unfold of an allreduce: the odd rank of a pair hands the whole
    /// result to its partner.
    pub(super) async fn hand_out<T: Element>(self, t: &dyn Transport, key: Key, buf: &mut [T]) -> Result<()> {
        let r = t.rank();
        if !self.paired(r) {
            return Ok(());
        }
        if r.is_multiple_of(2) {
            super::recv_into(t, r + 1, key, buf).await
        } else {
            super::send(t, r - 1, key, buf).await
        }
    }

    /// [`fold_in`](Self::fold_in) over a lent buffer, with this rank's
    /// operand in `own` if given (else in `buf`): the even rank's values
    /// leave from where the operand is; the odd rank combines its partner's
    /// with its operand into `buf`.
    pub(super) async fn fold_in_lent<T: Element>(
        self,
        t: &dyn Transport,
        key: Key,
        own: Option<&Lent<T>>,
        buf: &Lent<T>,
        op: &ReduceOp<T>,
    ) -> Result<()> {
        let r = t.rank();
        if !self.paired(r) {
            return Ok(());
        }
        let all = 0..buf.len();
        if r.is_multiple_of(2) {
            t.send_block(r + 1, key, own.unwrap_or(buf).block(all)).await
        } else {
            let lower = super::recv::<T>(t, r - 1, key, buf.len()).await?;
            // SAFETY: no block of `buf` is lent to an operation here.
            let mine = unsafe { buf.slice_mut(all.clone()) };
            match own {
                // SAFETY: as above; `own` is never written.
                Some(own) => op.apply_into(&lower, unsafe { own.slice(all) }, mine),
                None => op.apply(&lower, mine),
            }
            Ok(())
        }
    }

    /// [`hand_out`](Self::hand_out) over a lent buffer: the result leaves
    /// from it and lands in it.
    pub(super) async fn hand_out_lent<T: Element>(self, t: &dyn Transport, key: Key, buf: &Lent<T>) -> Result<()> {
        let r = t.rank();
        if !self.paired(r) {
            return Ok(());
        }
        let all = 0..buf.len();
        if r.is_multiple_of(2) {
            t.recv_block(r + 1, key, buf.block_mut(all)).await
        } else {
            t.send_block(r - 1, key, buf.block(all)).await
        }
    }
}
