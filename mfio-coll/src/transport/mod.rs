//! [`Transport`]: tagged point-to-point messages between the ranks of a
//! group, the one thing the collective algorithms ([`crate::algo`]) use.
//!
//! Every message carries a [`Key`]: the communicator, the collective's
//! sequence number on it, the algorithm's step and the chunk. A receive
//! names the key (and the sender) it wants; a message that arrives before
//! its receive waits in the receiver's [`Inbox`] under its key, so an early
//! message is never dropped and back-to-back collectives never take each
//! other's messages. A receive states the exact length it expects, and a
//! message of any other length is an `InvalidData` error naming the sender,
//! the key and both lengths.
//!
//! Implementations:
//! - [`local::LocalTransport`]: ranks as threads of one process, with an
//!   optional scrambled completion order for property tests;
//! - [`tcp::TcpTransport`] (feature `tcp`): ranks as processes joined by
//!   TCP on an mfio-backends runtime, connected by [`bootstrap::Bootstrap`]
//!   from the launcher's environment;
//! - [`ucx::UcxTransport`] (feature `ucx`): ranks as UCX workers (mfio-net),
//!   over shared memory, TCP, InfiniBand or whatever UCX finds, their
//!   addresses exchanged by [`bootstrap`] or an `MPI_Allgather`.
//!
//! [`group::SubGroup`] numbers some ranks of a transport as a group of their
//! own (a split communicator's). The MPI backend's point-to-point messages
//! are a transport too (`mpi::MpiTransport`).

mod block;
#[cfg(any(feature = "tcp", feature = "ucx"))]
pub mod bootstrap;
#[cfg(any(feature = "tcp", feature = "mpi", feature = "ucx"))]
pub(crate) mod driven;
pub mod group;
mod inbox;
#[cfg(any(feature = "tcp", feature = "mpi", feature = "ucx"))]
pub(crate) mod linked;
pub mod local;
pub mod pool;
#[cfg(feature = "ucx")]
mod single_copy;
#[cfg(feature = "tcp")]
pub mod tcp;
#[cfg(feature = "ucx")]
pub mod ucx;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use mfio_core::{BufResult, Error};

use crate::comm::Rank;

pub(crate) use block::Lent;
pub use block::{Block, BlockMut};
pub use inbox::Inbox;

/// What identifies a message: the communicator, the collective's sequence
/// number on it, the algorithm step and the chunk within the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The communicator (every rank numbers its communicators alike).
    pub comm: u32,
    /// The collective's sequence number on the communicator.
    pub seq: u32,
    /// The algorithm's step.
    pub step: u32,
    /// The chunk within the step (pipelined and segmented algorithms).
    pub chunk: u32,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "comm {} collective {} step {} chunk {}",
            self.comm, self.seq, self.step, self.chunk
        )
    }
}

/// One collective on one communicator: the part of its messages' keys that
/// every step shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CollId {
    /// The communicator.
    pub comm: u32,
    /// The collective's sequence number on it.
    pub seq: u32,
}

impl CollId {
    /// The key of `chunk` of `step` of this collective.
    pub fn key(self, step: u32, chunk: u32) -> Key {
        Key {
            comm: self.comm,
            seq: self.seq,
            step,
            chunk,
        }
    }
}

/// The communicator id a transport keeps for its own messages (a peer's
/// goodbye, news of a lost rank); a send under it is refused.
pub const CONTROL_COMM: u32 = u32::MAX;

/// A send in flight: resolves to its result and the buffer it took.
pub type TransportFuture = Pin<Box<dyn Future<Output = BufResult<(), Vec<u8>>> + Send>>;

/// A receive in flight: resolves to the message.
pub type RecvFuture = Pin<Box<dyn Future<Output = mfio_core::Result<Vec<u8>>> + Send>>;

/// A send or receive of a [`Block`] in flight: resolves once the
/// transport is done with the block.
pub type BlockFuture<'a> = Pin<Box<dyn Future<Output = mfio_core::Result<()>> + Send + 'a>>;

/// Tagged point-to-point messages between the ranks `0..size` of a group.
///
/// Both operations take an owned buffer and give it back, on success and on
/// failure alike. Messages between one pair of ranks under different keys
/// may arrive in any order; the [`Key`] says which is which.
pub trait Transport: Send + Sync {
    /// This rank.
    fn rank(&self) -> Rank;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// Sends `data` to rank `to` under `key`; resolves once the buffer may
    /// be reused (the bytes are with the transport or the peer).
    ///
    /// # Errors
    /// `InvalidInput` for a rank outside the group; the transport's error
    /// if the peer is gone.
    fn send(&self, to: Rank, key: Key, data: Vec<u8>) -> TransportFuture;

    /// Sends the short message `data` to rank `to` under `key` at once, if
    /// the transport can without keeping it: `true` when it left (as
    /// [`send`](Self::send) would have sent it); `false` when nothing was
    /// sent (the transport cannot, would have to wait, or the send would
    /// fail): then send it with [`send`](Self::send), which waits or says
    /// why. No future and no buffer, for the short messages of a hot path
    /// (an 8-byte collective). By default never.
    fn try_send_now(&self, to: Rank, key: Key, data: &[u8]) -> bool {
        let _ = (to, key, data);
        false
    }

    /// Receives the message rank `from` sent under `key`, which must be
    /// `len` bytes long: the buffer it arrived in, handed over (no copy).
    ///
    /// # Errors
    /// - `InvalidInput` for a rank outside the group.
    /// - `InvalidData` if the message has another length (see
    ///   [`wrong_length`]); the message is consumed.
    /// - The transport's error if the sender is gone before it sent.
    fn recv(&self, from: Rank, key: Key, len: usize) -> RecvFuture;

    /// Sends the bytes of `data` (a block of a collective's buffer) to rank
    /// `to` under `key`, as [`send`](Self::send) would; resolves once the
    /// transport is done with the block. The receiver cannot tell it from
    /// a [`send`](Self::send).
    ///
    /// What a transport does not do itself is a copy into a [`buffer`](Self::buffer),
    /// sent with [`send`](Self::send).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    fn send_block(&self, to: Rank, key: Key, data: Block) -> BlockFuture<'_> {
        send_block_copied(self, to, key, data)
    }

    /// Receives the message rank `from` sent under `key` into `into`
    /// (a block of a collective's buffer), whose length it must have;
    /// resolves once the transport is done with the block.
    ///
    /// What a transport does not do itself is a [`recv`](Self::recv),
    /// copied into the block.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    fn recv_block(&self, from: Rank, key: Key, into: BlockMut) -> BlockFuture<'_> {
        recv_block_copied(self, from, key, into)
    }

    /// An empty buffer with room for `len` bytes, for a message to send:
    /// one the transport kept ([`recycle`](Self::recycle)) where it can.
    ///
    /// # Errors
    /// `OutOfMemory` if there is no room.
    fn buffer(&self, len: usize) -> mfio_core::Result<Vec<u8>> {
        pool::BufPool::default().take(len)
    }

    /// Gives back a buffer a message came in or went out in, for
    /// [`buffer`](Self::buffer) and the transport's receives to reuse.
    fn recycle(&self, buf: Vec<u8>) {
        drop(buf);
    }

    /// This rank abandoned collective `coll` (its future was dropped): its
    /// messages, waiting or still to come, are dropped rather than kept
    /// for a receive that will never come.
    fn forget(&self, coll: CollId);

    /// Messages received and not yet taken (early ones, and any nobody
    /// will take: a leak shows here).
    fn unclaimed(&self) -> usize;
}

/// [`Transport::send_block`] by a copy of the block into a buffer, sent
/// with [`Transport::send`].
pub fn send_block_copied<T: Transport + ?Sized>(t: &T, to: Rank, key: Key, data: Block) -> BlockFuture<'_> {
    // SAFETY: the send of `data` is in flight until this returns.
    if t.try_send_now(to, key, unsafe { data.as_bytes() }) {
        return sent();
    }
    let buf = t.buffer(data.len()).map(|mut buf| {
        // SAFETY: the send of `data` is in flight until this returns.
        buf.extend_from_slice(unsafe { data.as_bytes() });
        buf
    });
    drop(data);
    Box::pin(async move {
        let (res, buf) = t.send(to, key, buf?).await.into_parts();
        t.recycle(buf);
        res
    })
}

/// [`Transport::recv_block`] by a [`Transport::recv`], copied into the
/// block.
pub fn recv_block_copied<T: Transport + ?Sized>(t: &T, from: Rank, key: Key, mut into: BlockMut) -> BlockFuture<'_> {
    let message = t.recv(from, key, into.len());
    Box::pin(async move {
        let bytes = message.await?;
        // SAFETY: the receive into `into` is in flight until this returns;
        // `recv` checked the message's length.
        unsafe { into.fill(&bytes) };
        t.recycle(bytes);
        Ok(())
    })
}

/// A send that is done already (it left through
/// [`Transport::try_send_now`]): a future of no size, so no allocation.
pub(crate) fn sent() -> BlockFuture<'static> {
    struct Sent;
    impl Future for Sent {
        type Output = mfio_core::Result<()>;
        fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
            std::task::Poll::Ready(Ok(()))
        }
    }
    Box::pin(Sent)
}

/// The error of a receive whose message has `got` bytes where `want` were
/// expected.
pub fn wrong_length(from: Rank, key: Key, got: usize, want: usize) -> Error {
    Error::new(
        std::io::ErrorKind::InvalidData,
        format!("message from rank {from} ({key}) has {got} bytes, {want} expected"),
    )
}

/// Bytes of a frame header on a byte transport: comm, seq, step, chunk
/// (u32 each, little-endian), then the message's length (u64).
#[cfg(any(feature = "tcp", feature = "mpi", feature = "ucx"))]
pub(crate) const FRAME_HEADER: usize = 24;

/// A frame header for a message of `len` bytes under `key`, with room for
/// `room` more bytes after it.
#[cfg(any(feature = "tcp", feature = "mpi", feature = "ucx"))]
pub(crate) fn frame_header(key: Key, len: usize, room: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(FRAME_HEADER + room);
    h.extend_from_slice(&header_bytes(key, len));
    h
}

/// A frame's header as bytes ([`frame_header`]).
#[cfg(any(feature = "tcp", feature = "mpi", feature = "ucx"))]
pub(crate) fn header_bytes(key: Key, len: usize) -> [u8; FRAME_HEADER] {
    let mut h = [0; FRAME_HEADER];
    for (i, w) in [key.comm, key.seq, key.step, key.chunk].into_iter().enumerate() {
        h[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    h[16..].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

/// The key and length a frame header (the first [`FRAME_HEADER`] bytes of
/// `bytes`) holds; `None` if `bytes` is shorter or the length does not fit
/// in memory.
#[cfg(any(feature = "tcp", feature = "mpi", feature = "ucx"))]
pub(crate) fn parse_frame_header(bytes: &[u8]) -> Option<(Key, usize)> {
    let word = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
    let key = Key {
        comm: word(0)?,
        seq: word(4)?,
        step: word(8)?,
        chunk: word(12)?,
    };
    let len = u64::from_le_bytes(bytes.get(16..FRAME_HEADER)?.try_into().ok()?);
    Some((key, usize::try_from(len).ok()?))
}

/// The message `from` sent under `key` if it is `len` bytes long, else
/// [`wrong_length`].
pub(crate) fn exact(from: Rank, key: Key, taken: mfio_core::Result<Vec<u8>>, len: usize) -> mfio_core::Result<Vec<u8>> {
    match taken {
        Ok(data) if data.len() == len => Ok(data),
        Ok(data) => Err(wrong_length(from, key, data.len(), len)),
        Err(e) => Err(e),
    }
}

/// The error of an operation naming a rank outside a group of `size`.
pub fn no_such_rank(rank: Rank, size: usize) -> Error {
    Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("rank {rank} is outside the group of {size}"),
    )
}

/// The error of a receive from a rank that left the group.
pub fn rank_gone(rank: Rank, key: Key) -> Error {
    Error::new(
        std::io::ErrorKind::ConnectionAborted,
        format!("rank {rank} left before it sent its message ({key})"),
    )
}
