//! [`Communicator`]: a group of ranks and the collectives among them, each
//! with an async and a blocking form. The MPI backend (`mpi::MpiComm`) and
//! the algorithms over any point-to-point transport
//! ([`TransportComm`](crate::algo::TransportComm)) implement it.
//!
//! Buffers are owned `Vec`s: they go in by value and come back in the
//! [`CollResult`], on success and on failure alike. A backend may keep a
//! buffer after its future is dropped, until the lower layer lets go of it
//! (MPI collectives cannot be cancelled), so dropping a future never frees
//! memory that is still written.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use mfio_core::completion::Completion;
use mfio_core::{block_on, block_on_waiting, BufResult, IoBackend, Result};

use crate::element::Element;
use crate::reduce::ReduceOp;

/// A rank: a process's index inside a communicator, `0..size`.
pub type Rank = usize;

/// The tag of a point-to-point message.
pub type Tag = u32;

/// What a collective gives back: its result and the buffers it took.
pub type CollResult<B> = BufResult<(), B>;

/// Two buffers a collective took: `(send, recv)`.
pub type Pair<T> = (Vec<T>, Vec<T>);

/// The layout of a `v`-variant buffer: how many elements each rank has
/// (`counts`) and where its region starts (`displs`), both in elements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    /// Elements per rank.
    pub counts: Vec<usize>,
    /// Offset of each rank's region, in elements.
    pub displs: Vec<usize>,
}

impl Counts {
    /// Regions laid out back to back, in rank order.
    pub fn packed(counts: Vec<usize>) -> Self {
        let displs = crate::check::packed_displs(&counts);
        Self { counts, displs }
    }

    /// The elements a packed layout covers (the sum of the counts).
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }
}

/// The future of a collective: resolves to its [`CollResult`].
///
/// A collective's order is fixed when it is called, not when first polled:
/// the ranks of a communicator must call its collectives in the same order,
/// and that order is the order of the calls even if the futures are polled
/// in another. The MPI backend also starts the collective at the call (it
/// runs even if the future is dropped); a
/// [`TransportComm`](crate::algo::TransportComm)'s moves its messages
/// while its future is polled, so a future dropped before it completes
/// leaves the other ranks waiting for this rank's part.
#[must_use = "the collective's result and buffers come back only through this future"]
pub struct CollFuture<B> {
    inner: Inner<B>,
}

enum Inner<B> {
    Ready(CollResult<B>),
    /// Its result was handed out by a poll.
    Taken,
    Waiting(Completion<CollResult<B>>),
    Boxed(Pin<Box<dyn Future<Output = CollResult<B>> + Send>>),
}

impl<B> fmt::Debug for CollFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.inner {
            Inner::Ready(_) => "ready",
            Inner::Taken => "taken",
            Inner::Waiting(_) => "waiting",
            Inner::Boxed(_) => "running",
        };
        f.debug_struct("CollFuture").field("state", &state).finish()
    }
}

impl<B> CollFuture<B> {
    /// A collective that already finished (an argument refused locally).
    pub fn ready(result: CollResult<B>) -> Self {
        Self {
            inner: Inner::Ready(result),
        }
    }

    /// A collective a backend completes through `completion`.
    pub fn waiting(completion: Completion<CollResult<B>>) -> Self {
        Self {
            inner: Inner::Waiting(completion),
        }
    }

    /// Its result if the collective already finished when it was made
    /// (refused locally, or done in the call that started it), else the
    /// future itself: a blocking wait then needs no driver at all.
    ///
    /// Inlined: for a short collective this is most of the wait, and the
    /// rest ([`wait_running`]) is out of line.
    #[inline(always)]
    fn into_ready(self) -> Result<CollResult<B>, Self> {
        match self.inner {
            Inner::Ready(out) => Ok(out),
            inner => Err(Self { inner }),
        }
    }

    /// Whether an algorithm's future runs it ([`boxed`](Self::boxed)).
    fn is_boxed(&self) -> bool {
        matches!(self.inner, Inner::Boxed(_))
    }

    /// A collective run by a future (an algorithm over a transport).
    pub fn boxed(fut: impl Future<Output = CollResult<B>> + Send + 'static) -> Self {
        Self {
            inner: Inner::Boxed(Box::pin(fut)),
        }
    }

    /// A collective run by the future `make` makes, made in its box
    /// ([`in_box`](crate::in_box::in_box): no copy of the future).
    pub(crate) fn boxed_with<F>(make: impl FnOnce() -> F) -> Self
    where
        F: Future<Output = CollResult<B>> + Send + 'static,
    {
        Self {
            inner: Inner::Boxed(Box::into_pin(crate::in_box::in_box(make))),
        }
    }
}

impl<B> Unpin for CollFuture<B> {}

impl<B: Default> Future for CollFuture<B> {
    type Output = CollResult<B>;

    /// # Panics
    /// If polled again after it returned `Ready`.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CollResult<B>> {
        let inner = &mut self.get_mut().inner;
        match inner {
            Inner::Ready(_) | Inner::Taken => match std::mem::replace(inner, Inner::Taken) {
                Inner::Ready(out) => Poll::Ready(out),
                _ => panic!("CollFuture polled after it completed"),
            },
            // A backend that went away with the buffers inside: they are
            // gone with it, and empty ones come back with the error.
            Inner::Waiting(c) => Pin::new(c)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|e| BufResult(Err(e), B::default()))),
            Inner::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

/// Drives a collective that had not finished when it was made until it
/// finishes. Out of line: [`Communicator::wait`] of one that had stays short.
#[inline(never)]
fn wait_running<Be: IoBackend + ?Sized, B: Default>(backend: &Be, fut: CollFuture<B>) -> CollResult<B> {
    if fut.is_boxed() {
        // An algorithm's future waits for its peers: polled first with the
        // waker it must wake (mfio_core::block_on_waiting).
        block_on_waiting(backend, fut)
    } else {
        block_on(backend, fut)
    }
}

/// A group of ranks and the collectives among them.
///
/// Every rank of the communicator calls the same collectives in the same
/// order with matching arguments (same root, same operation, lengths that
/// agree); what one rank can check alone it checks before anything is
/// sent, and reports as `InvalidInput` naming the argument.
///
/// Buffer conventions: `send` is read, `recv` is written, and each comes
/// back in the result. Where a buffer matters only at the root (`reduce`'s
/// `recv`, `scatter`'s `send`, `gather`'s `recv`), other ranks may pass an
/// empty `Vec`; it comes back untouched. Lengths are in elements.
pub trait Communicator: Sized {
    /// The backend that drives this communicator's operations.
    type Backend: IoBackend + ?Sized;

    /// The backend the blocking forms drive.
    fn backend(&self) -> &Self::Backend;

    /// This process's rank.
    fn rank(&self) -> Rank;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// A new communicator over the same ranks whose traffic never mixes
    /// with this one's. Collective: every rank calls it.
    ///
    /// # Errors
    /// What the backend reports.
    fn dup(&self) -> Result<Self>;

    /// Splits the ranks by `color`: ranks passing the same color form a
    /// communicator, ordered by `key` (then by rank); a rank passing `None`
    /// joins none and gets `None`. Collective.
    ///
    /// # Errors
    /// `InvalidInput` for a color above `i32::MAX`; what the backend reports.
    fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Self>>;

    /// Waits until every rank called it.
    fn barrier(&self) -> CollFuture<()>;

    /// Sends `buf` from `root` to every rank; the others receive into their
    /// `buf`, which holds as many elements as the root's.
    fn bcast<T: Element>(&self, buf: Vec<T>, root: Rank) -> CollFuture<Vec<T>>;

    /// Reduces every rank's `send` into the root's `recv` (same length).
    fn reduce<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>, root: Rank) -> CollFuture<Pair<T>>;

    /// [`reduce`](Self::reduce) with the root's result in its own `buf`;
    /// other ranks' `buf` comes back unchanged.
    fn reduce_in_place<T: Element>(&self, buf: Vec<T>, op: ReduceOp<T>, root: Rank) -> CollFuture<Vec<T>>;

    /// Reduces every rank's `send` into every rank's `recv` (same length).
    fn allreduce<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollFuture<Pair<T>>;

    /// [`allreduce`](Self::allreduce) with the result in `buf`.
    fn allreduce_in_place<T: Element>(&self, buf: Vec<T>, op: ReduceOp<T>) -> CollFuture<Vec<T>>;

    /// Splits the root's `send` (size × `recv.len()` elements) into equal
    /// parts, part `r` to rank `r`'s `recv`.
    fn scatter<T: Element>(&self, send: Vec<T>, recv: Vec<T>, root: Rank) -> CollFuture<Pair<T>>;

    /// Sends region `r` of the root's `send` (`layout`, significant at the
    /// root only) to rank `r`, whose `recv` holds exactly that many.
    fn scatterv<T: Element>(&self, send: Vec<T>, layout: &Counts, recv: Vec<T>, root: Rank) -> CollFuture<Pair<T>>;

    /// Gathers every rank's `send` (equal lengths) into the root's `recv`
    /// (size × `send.len()`), in rank order.
    fn gather<T: Element>(&self, send: Vec<T>, recv: Vec<T>, root: Rank) -> CollFuture<Pair<T>>;

    /// Gathers rank `r`'s `send` into region `r` of the root's `recv`
    /// (`layout`, significant at the root only; regions must not overlap).
    fn gatherv<T: Element>(&self, send: Vec<T>, recv: Vec<T>, layout: &Counts, root: Rank) -> CollFuture<Pair<T>>;

    /// [`gather`](Self::gather) to every rank.
    fn allgather<T: Element>(&self, send: Vec<T>, recv: Vec<T>) -> CollFuture<Pair<T>>;

    /// [`gatherv`](Self::gatherv) to every rank (`layout` the same on all).
    fn allgatherv<T: Element>(&self, send: Vec<T>, recv: Vec<T>, layout: &Counts) -> CollFuture<Pair<T>>;

    /// Part `r` of every rank's `send` goes to rank `r`; `recv` receives
    /// one part from each rank, in rank order. Both hold size × part.
    fn alltoall<T: Element>(&self, send: Vec<T>, recv: Vec<T>) -> CollFuture<Pair<T>>;

    /// Region `r` of `send` (`send_layout`) goes to rank `r`, which
    /// receives it into its region of `recv` for this rank (`recv_layout`,
    /// regions must not overlap).
    fn alltoallv<T: Element>(
        &self,
        send: Vec<T>,
        send_layout: &Counts,
        recv: Vec<T>,
        recv_layout: &Counts,
    ) -> CollFuture<Pair<T>>;

    /// Reduces `send` (size × `recv.len()`) element-wise over the ranks
    /// and scatters the result: rank `r` gets block `r` in `recv`.
    fn reduce_scatter_block<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollFuture<Pair<T>>;

    /// Inclusive prefix reduction: rank `r`'s `recv` is the reduction of
    /// the `send`s of ranks `0..=r`.
    fn scan<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollFuture<Pair<T>>;

    /// Exclusive prefix reduction: rank `r`'s `recv` is the reduction of
    /// the `send`s of ranks `0..r`; rank 0's `recv` comes back unchanged.
    fn exscan<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollFuture<Pair<T>>;

    /// Drives the backend until `fut` finishes: the blocking form of any
    /// collective.
    fn wait<B: Default>(&self, fut: CollFuture<B>) -> CollResult<B> {
        match fut.into_ready() {
            Ok(out) => out,
            Err(fut) => wait_running(self.backend(), fut),
        }
    }

    /// Blocking [`barrier`](Self::barrier).
    ///
    /// # Errors
    /// What the collective reports.
    fn blocking_barrier(&self) -> Result<()> {
        self.wait(self.barrier()).0
    }

    /// Blocking [`bcast`](Self::bcast).
    fn blocking_bcast<T: Element>(&self, buf: Vec<T>, root: Rank) -> CollResult<Vec<T>> {
        self.wait(self.bcast(buf, root))
    }

    /// Blocking [`reduce`](Self::reduce).
    fn blocking_reduce<T: Element>(
        &self,
        send: Vec<T>,
        recv: Vec<T>,
        op: ReduceOp<T>,
        root: Rank,
    ) -> CollResult<Pair<T>> {
        self.wait(self.reduce(send, recv, op, root))
    }

    /// Blocking [`reduce_in_place`](Self::reduce_in_place).
    fn blocking_reduce_in_place<T: Element>(&self, buf: Vec<T>, op: ReduceOp<T>, root: Rank) -> CollResult<Vec<T>> {
        self.wait(self.reduce_in_place(buf, op, root))
    }

    /// Blocking [`allreduce`](Self::allreduce).
    fn blocking_allreduce<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollResult<Pair<T>> {
        self.wait(self.allreduce(send, recv, op))
    }

    /// Blocking [`allreduce_in_place`](Self::allreduce_in_place).
    fn blocking_allreduce_in_place<T: Element>(&self, buf: Vec<T>, op: ReduceOp<T>) -> CollResult<Vec<T>> {
        self.wait(self.allreduce_in_place(buf, op))
    }

    /// Blocking [`scatter`](Self::scatter).
    fn blocking_scatter<T: Element>(&self, send: Vec<T>, recv: Vec<T>, root: Rank) -> CollResult<Pair<T>> {
        self.wait(self.scatter(send, recv, root))
    }

    /// Blocking [`scatterv`](Self::scatterv).
    fn blocking_scatterv<T: Element>(
        &self,
        send: Vec<T>,
        layout: &Counts,
        recv: Vec<T>,
        root: Rank,
    ) -> CollResult<Pair<T>> {
        self.wait(self.scatterv(send, layout, recv, root))
    }

    /// Blocking [`gather`](Self::gather).
    fn blocking_gather<T: Element>(&self, send: Vec<T>, recv: Vec<T>, root: Rank) -> CollResult<Pair<T>> {
        self.wait(self.gather(send, recv, root))
    }

    /// Blocking [`gatherv`](Self::gatherv).
    fn blocking_gatherv<T: Element>(
        &self,
        send: Vec<T>,
        recv: Vec<T>,
        layout: &Counts,
        root: Rank,
    ) -> CollResult<Pair<T>> {
        self.wait(self.gatherv(send, recv, layout, root))
    }

    /// Blocking [`allgather`](Self::allgather).
    fn blocking_allgather<T: Element>(&self, send: Vec<T>, recv: Vec<T>) -> CollResult<Pair<T>> {
        self.wait(self.allgather(send, recv))
    }

    /// Blocking [`allgatherv`](Self::allgatherv).
    fn blocking_allgatherv<T: Element>(&self, send: Vec<T>, recv: Vec<T>, layout: &Counts) -> CollResult<Pair<T>> {
        self.wait(self.allgatherv(send, recv, layout))
    }

    /// Blocking [`alltoall`](Self::alltoall).
    fn blocking_alltoall<T: Element>(&self, send: Vec<T>, recv: Vec<T>) -> CollResult<Pair<T>> {
        self.wait(self.alltoall(send, recv))
    }

    /// Blocking [`alltoallv`](Self::alltoallv).
    fn blocking_alltoallv<T: Element>(
        &self,
        send: Vec<T>,
        send_layout: &Counts,
        recv: Vec<T>,
        recv_layout: &Counts,
    ) -> CollResult<Pair<T>> {
        self.wait(self.alltoallv(send, send_layout, recv, recv_layout))
    }

    /// Blocking [`reduce_scatter_block`](Self::reduce_scatter_block).
    fn blocking_reduce_scatter_block<T: Element>(
        &self,
        send: Vec<T>,
        recv: Vec<T>,
        op: ReduceOp<T>,
    ) -> CollResult<Pair<T>> {
        self.wait(self.reduce_scatter_block(send, recv, op))
    }

    /// Blocking [`scan`](Self::scan).
    fn blocking_scan<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollResult<Pair<T>> {
        self.wait(self.scan(send, recv, op))
    }

    /// Blocking [`exscan`](Self::exscan).
    fn blocking_exscan<T: Element>(&self, send: Vec<T>, recv: Vec<T>, op: ReduceOp<T>) -> CollResult<Pair<T>> {
        self.wait(self.exscan(send, recv, op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn a_ready_future_hands_its_result_out_once() {
        let mut fut = CollFuture::ready(BufResult(Ok(()), vec![1u8, 2, 3]));
        assert_eq!(format!("{fut:?}"), "CollFuture { state: \"ready\" }");
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut fut).poll(&mut cx) {
            Poll::Ready(BufResult(Ok(()), buf)) => assert_eq!(buf, [1, 2, 3]),
            other => panic!("expected the result, got {:?}", other.map(|r| r.0)),
        }
        assert_eq!(format!("{fut:?}"), "CollFuture { state: \"taken\" }");
    }

    #[test]
    #[should_panic(expected = "CollFuture polled after it completed")]
    fn a_ready_future_polled_again_panics() {
        let mut fut = CollFuture::ready(BufResult(Ok(()), vec![0u8]));
        let mut cx = Context::from_waker(Waker::noop());
        let _ = Pin::new(&mut fut).poll(&mut cx);
        let _ = Pin::new(&mut fut).poll(&mut cx);
    }

    #[test]
    fn a_refused_future_keeps_its_error_and_buffers() {
        let err = mfio_core::Error::new(std::io::ErrorKind::InvalidInput, "root");
        let fut = CollFuture::ready(BufResult(Err(err), vec![9u8; 4]));
        let BufResult(res, buf) = match fut.into_ready() {
            Ok(out) => out,
            Err(_) => panic!("a ready future is ready"),
        };
        assert_eq!(res.map_err(|e| e.kind()), Err(std::io::ErrorKind::InvalidInput));
        assert_eq!(buf, [9; 4]);
    }
}
