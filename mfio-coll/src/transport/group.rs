//! [`SubGroup`]: some ranks of a transport as a transport of their own,
//! numbered `0..members`: what a split communicator runs its algorithms on.

use std::sync::Arc;

use mfio_core::BufResult;

use super::{no_such_rank, Block, BlockFuture, BlockMut, CollId, Key, RecvFuture, Transport, TransportFuture};
use crate::comm::Rank;

/// Ranks `members` of `base` (in that order) as ranks `0..members.len()`.
/// Errors name the base transport's ranks.
pub struct SubGroup {
    base: Arc<dyn Transport>,
    members: Arc<[Rank]>,
    me: Rank,
}

impl SubGroup {
    /// The group of `members` (ranks of `base`, which must include this
    /// rank); `None` if this rank is not among them.
    pub fn new(base: Arc<dyn Transport>, members: Arc<[Rank]>) -> Option<Self> {
        let me = members.iter().position(|&r| r == base.rank())?;
        Some(Self { base, members, me })
    }

    /// The base transport's rank of member `r`.
    fn base_rank(&self, r: Rank) -> Option<Rank> {
        self.members.get(r).copied()
    }
}

impl Transport for SubGroup {
    fn rank(&self) -> Rank {
        self.me
    }

    fn size(&self) -> usize {
        self.members.len()
    }

    fn send(&self, to: Rank, key: Key, data: Vec<u8>) -> TransportFuture {
        match self.base_rank(to) {
            Some(r) => self.base.send(r, key, data),
            None => Box::pin(std::future::ready(BufResult(Err(no_such_rank(to, self.size())), data))),
        }
    }

    fn try_send_now(&self, to: Rank, key: Key, data: &[u8]) -> bool {
        self.base_rank(to).is_some_and(|r| self.base.try_send_now(r, key, data))
    }

    fn recv(&self, from: Rank, key: Key, len: usize) -> RecvFuture {
        match self.base_rank(from) {
            Some(r) => self.base.recv(r, key, len),
            None => Box::pin(std::future::ready(Err(no_such_rank(from, self.size())))),
        }
    }

    fn send_block(&self, to: Rank, key: Key, data: Block) -> BlockFuture<'_> {
        match self.base_rank(to) {
            Some(r) => self.base.send_block(r, key, data),
            None => Box::pin(std::future::ready(Err(no_such_rank(to, self.size())))),
        }
    }

    fn recv_block(&self, from: Rank, key: Key, into: BlockMut) -> BlockFuture<'_> {
        match self.base_rank(from) {
            Some(r) => self.base.recv_block(r, key, into),
            None => Box::pin(std::future::ready(Err(no_such_rank(from, self.size())))),
        }
    }

    fn buffer(&self, len: usize) -> mfio_core::Result<Vec<u8>> {
        self.base.buffer(len)
    }

    fn recycle(&self, buf: Vec<u8>) {
        self.base.recycle(buf);
    }

    fn forget(&self, coll: CollId) {
        self.base.forget(coll);
    }

    fn unclaimed(&self) -> usize {
        self.base.unclaimed()
    }
}
