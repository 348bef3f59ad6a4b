//! [`LocalTransport`]: the ranks of a group as threads (or tasks) of one
//! process, exchanging messages through each other's [`Inbox`]. Made for
//! testing algorithms: with a seed, every send and receive yields a
//! pseudo-random number of times first, so the order in which operations
//! complete changes from run to run of the same program.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mfio_core::BufResult;
use parking_lot::Mutex;

use super::{exact, no_such_rank, CollId, Inbox, Key, RecvFuture, Transport, TransportFuture};
use crate::comm::Rank;

/// One rank of a group made by [`LocalTransport::group`]. Dropping it
/// tells the others it left: their receives from it fail instead of
/// waiting forever.
pub struct LocalTransport {
    rank: Rank,
    inboxes: Arc<[Inbox]>,
    jitter: Option<Arc<Mutex<u64>>>,
}

impl LocalTransport {
    /// A group of `size` ranks, one transport per rank (index = rank).
    pub fn group(size: usize) -> Vec<Self> {
        Self::make(size, None)
    }

    /// [`group`](Self::group) whose operations complete in a scrambled
    /// order, drawn from `seed`.
    pub fn scrambled_group(size: usize, seed: u64) -> Vec<Self> {
        Self::make(size, Some(seed))
    }

    fn make(size: usize, seed: Option<u64>) -> Vec<Self> {
        let inboxes: Arc<[Inbox]> = (0..size).map(|_| Inbox::new()).collect();
        (0..size)
            .map(|rank| Self {
                rank,
                inboxes: inboxes.clone(),
                // A distinct, never-zero stream per rank.
                jitter: seed.map(|s| {
                    Arc::new(Mutex::new(
                        (s ^ (rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
                    ))
                }),
            })
            .collect()
    }

    /// How many times the next operation yields before it acts (0–3).
    fn yields(&self) -> u32 {
        let Some(state) = &self.jitter else { return 0 };
        let mut s = state.lock();
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s % 4) as u32
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        for inbox in self.inboxes.iter() {
            inbox.close(self.rank);
        }
    }
}

/// Returns `Pending` (waking itself at once) `left` times, then `Ready`.
struct Yield {
    left: u32,
}

impl Future for Yield {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.left == 0 {
            return Poll::Ready(());
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Transport for LocalTransport {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn size(&self) -> usize {
        self.inboxes.len()
    }

    /// The bytes are copied into the receiver's inbox; the buffer comes
    /// back at once.
    fn send(&self, to: Rank, key: Key, data: Vec<u8>) -> TransportFuture {
        let yields = Yield { left: self.yields() };
        let (from, inboxes) = (self.rank, self.inboxes.clone());
        Box::pin(async move {
            yields.await;
            match inboxes.get(to) {
                Some(inbox) => {
                    inbox.deliver(from, key, data.clone());
                    BufResult(Ok(()), data)
                }
                None => BufResult(Err(no_such_rank(to, inboxes.len())), data),
            }
        })
    }

    fn forget(&self, coll: CollId) {
        self.inboxes[self.rank].forget(coll.comm, coll.seq);
    }

    fn unclaimed(&self) -> usize {
        self.inboxes[self.rank].waiting()
    }

    fn recv(&self, from: Rank, key: Key, len: usize) -> RecvFuture {
        let yields = Yield { left: self.yields() };
        let (me, inboxes) = (self.rank, self.inboxes.clone());
        Box::pin(async move {
            yields.await;
            let size = inboxes.len();
            if from >= size {
                return Err(no_such_rank(from, size));
            }
            let taken = std::future::poll_fn(|cx| inboxes[me].poll_take(from, key, cx)).await;
            exact(from, key, taken, len)
        })
    }
}
