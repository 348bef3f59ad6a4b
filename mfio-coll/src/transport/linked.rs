//! What the transports over a wire (TCP, UCX, MPI point-to-point) share:
//! an [`Inbox`] filled by background work ([`Background`]), the checks
//! every send makes before its wire, the receive that takes from the inbox,
//! and how a send to a rank that is gone is reported.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use mfio_core::{BufResult, Error};

use super::driven::{self, Background};
use super::inbox::Claimed;
use super::pool::BufPool;
use super::{exact, no_such_rank, BlockFuture, BlockMut, Inbox, Key, RecvFuture, TransportFuture, CONTROL_COMM};
use crate::comm::Rank;
use crate::in_box::in_box;

/// What every wire transport keeps: where this rank is, what it received,
/// and the work that receives it.
pub(crate) struct Core {
    /// This rank.
    pub(crate) rank: Rank,
    /// The number of ranks.
    pub(crate) size: usize,
    /// The messages received and not yet taken.
    pub(crate) inbox: Inbox,
    /// The readers and notices of the wire.
    pub(crate) background: Arc<Background>,
    /// Long messages' buffers, for reuse.
    pub(crate) pool: BufPool,
}

impl Core {
    /// Rank `rank` of `size`, nothing received yet.
    pub(crate) fn new(rank: Rank, size: usize) -> Self {
        Self {
            rank,
            size,
            inbox: Inbox::new(),
            background: Arc::default(),
            pool: BufPool::default(),
        }
    }
}

/// A rank's side of a group joined by a wire.
pub(crate) trait Linked: Send + Sync + 'static {
    /// The state every wire transport keeps.
    fn core(&self) -> &Core;
    /// Rank `peer` is lost because of `why`: the group is broken (and the
    /// other ranks told, where the wire can).
    fn lost(&self, peer: Rank, why: &str);
}

/// A future that is ready at once.
pub(crate) fn ready(res: mfio_core::Result<()>, buf: Vec<u8>) -> TransportFuture {
    Box::pin(std::future::ready(BufResult(res, buf)))
}

/// The send checks before the wire: a rank outside the group and the
/// transport's own communicator id are refused, and a message to this rank
/// goes straight to its inbox. `Ok(data)` if the message is for the wire.
pub(crate) fn check_send<L: Linked + ?Sized>(
    link: &L,
    to: Rank,
    key: Key,
    data: Vec<u8>,
) -> std::result::Result<Vec<u8>, TransportFuture> {
    let core = link.core();
    if to >= core.size {
        return Err(ready(Err(no_such_rank(to, core.size)), data));
    }
    if key.comm == CONTROL_COMM {
        let err = Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("communicator id {CONTROL_COMM} is the transport's own"),
        );
        return Err(ready(Err(err), data));
    }
    if to == core.rank {
        core.inbox.deliver(to, key, data.clone());
        return Err(ready(Ok(()), data));
    }
    Ok(data)
}

/// The error of a send to `to` that failed with `e`; `why` is the group's
/// reason if it broke (a lost rank), which says more than the wire.
#[cfg(any(feature = "tcp", feature = "ucx"))]
pub(crate) fn send_failed(to: Rank, key: Key, why: Option<String>, e: Error) -> Error {
    match why {
        Some(why) => Error::new(
            std::io::ErrorKind::ConnectionAborted,
            format!("{why}; sending to rank {to} ({key}) failed: {e}"),
        ),
        None => Error::new(e.kind(), format!("sending to rank {to} ({key}): {e}")),
    }
}

/// The receive of every wire transport: takes the message `from` sent under
/// `key` from the inbox into `buf` (its length expected). Waiting for a
/// message its sender left without sending means the collective cannot
/// finish anywhere: that sender is lost.
pub(crate) fn recv<L: Linked>(link: Arc<L>, from: Rank, key: Key, len: usize) -> RecvFuture {
    let core = link.core();
    if from >= core.size {
        return Box::pin(std::future::ready(Err(no_such_rank(from, core.size))));
    }
    let background = core.background.clone();
    // Made in its box (in_box): the async block is made there too.
    Box::into_pin(in_box(move || {
        driven::driven(background, async move {
            let inbox = &link.core().inbox;
            let taken = std::future::poll_fn(|cx| inbox.poll_take(from, key, cx)).await;
            if let Err(e) = &taken {
                if inbox.is_gone(from) {
                    link.lost(from, &e.to_string());
                }
            }
            exact(from, key, taken, len)
        })
    }))
}

/// The receive into a block of every wire transport: the block waits with
/// the inbox, and a wire that can ([`Inbox::announce`](super::Inbox::announce)) lands the
/// message in it; one that came as bytes is copied in. As [`recv`] when
/// the message does not come.
pub(crate) fn recv_block<L: Linked>(link: Arc<L>, from: Rank, key: Key, into: BlockMut) -> BlockFuture<'static> {
    let core = link.core();
    if from >= core.size {
        return Box::pin(std::future::ready(Err(no_such_rank(from, core.size))));
    }
    let background = core.background.clone();
    let len = into.len();
    // The block goes to the inbox at once, not at the first poll: a message
    // whose frame the wire takes meanwhile lands in it.
    let mut block = Some(into);
    let early = core
        .inbox
        .poll_claim(from, key, &mut block, &mut Context::from_waker(Waker::noop()));
    // Made before the future, so that one dropped unpolled takes its block
    // back too.
    let mut claim = Unclaim {
        link: link.clone(),
        from,
        key,
        block,
        finished: false,
    };
    // Made in its box (in_box): the async block is made there too.
    Box::into_pin(in_box(move || {
        driven::driven(background, async move {
            let inbox = &link.core().inbox;
            let mut early = Some(early).filter(Poll::is_ready);
            let taken = std::future::poll_fn(|cx| match early.take() {
                Some(found) => found,
                None => inbox.poll_claim(from, key, &mut claim.block, cx),
            })
            .await;
            claim.finish();
            match taken {
                Ok(Claimed::Landed) => Ok(()),
                Ok(Claimed::Bytes(data, mut block)) => {
                    let data = exact(from, key, Ok(data), len)?;
                    // SAFETY: this receive of `block` is in flight until it
                    // returns; the length is checked.
                    unsafe { block.fill(&data) };
                    link.core().pool.put(data);
                    Ok(())
                }
                Err(e) => {
                    if inbox.is_gone(from) {
                        link.lost(from, &e.to_string());
                    }
                    Err(e)
                }
            }
        })
    }))
}

/// Takes a waiting receive's block back from the inbox if the receive goes
/// first.
struct Unclaim<L: Linked> {
    link: Arc<L>,
    from: Rank,
    key: Key,
    /// The block, while the receive has it (not the inbox or the wire).
    block: Option<BlockMut>,
    finished: bool,
}

impl<L: Linked> Unclaim<L> {
    /// The receive finished: the inbox holds nothing of it.
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl<L: Linked> Drop for Unclaim<L> {
    fn drop(&mut self) {
        if !self.finished && self.block.is_none() {
            self.link.core().inbox.unclaim(self.from, self.key);
        }
    }
}

/// `inner` (a send on the wire) as a transport operation, which runs the
/// wire's background work whenever it is polled.
pub(crate) fn driven<L: Linked + ?Sized>(
    link: &L,
    inner: impl std::future::Future<Output = BufResult<(), Vec<u8>>> + Send + 'static,
) -> TransportFuture {
    let background = link.core().background.clone();
    Box::into_pin(in_box(|| driven::driven(background, inner)))
}

/// The [`Transport`](super::Transport) methods every wire transport takes
/// from its [`Core`] (in an impl whose `self.shared` is an `Arc` of its
/// [`Linked`] state): rank and size, receive, buffers, forgetting.
macro_rules! core_methods {
    () => {
        fn rank(&self) -> $crate::comm::Rank {
            self.shared.core.rank
        }

        fn size(&self) -> usize {
            self.shared.core.size
        }

        fn forget(&self, coll: $crate::transport::CollId) {
            self.shared.core.inbox.forget(coll.comm, coll.seq);
        }

        fn unclaimed(&self) -> usize {
            self.shared.core.inbox.waiting()
        }

        fn recv(
            &self,
            from: $crate::comm::Rank,
            key: $crate::transport::Key,
            len: usize,
        ) -> $crate::transport::RecvFuture {
            $crate::transport::linked::recv(self.shared.clone(), from, key, len)
        }

        fn recv_block(
            &self,
            from: $crate::comm::Rank,
            key: $crate::transport::Key,
            into: $crate::transport::BlockMut,
        ) -> $crate::transport::BlockFuture<'_> {
            $crate::transport::linked::recv_block(self.shared.clone(), from, key, into)
        }

        fn buffer(&self, len: usize) -> mfio_core::Result<Vec<u8>> {
            self.shared.core.pool.take(len)
        }

        fn recycle(&self, buf: Vec<u8>) {
            self.shared.core.pool.put(buf);
        }
    };
}
pub(crate) use core_methods;
