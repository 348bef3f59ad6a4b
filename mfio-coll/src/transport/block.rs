//! A collective's buffer lent to the transport in blocks, so that a long
//! message leaves from the caller's memory and lands in it, without a copy
//! through a message buffer of its own.
//!
//! [`Lent`] owns the buffer (the caller's vector, moved in) behind an
//! `Arc`. It hands out [`Block`]s (bytes to send) and [`BlockMut`]s (bytes
//! to receive into), each holding the `Arc`: an operation still in flight
//! when its collective is dropped keeps the memory alive until the
//! transport lets go, so it never writes into freed memory.
//!
//! What is left to the algorithm: it never reads or writes a block of the
//! buffer while a transport operation on an overlapping block is in flight
//! (the `unsafe` accessors of [`Lent`] say so). What is left to the
//! transport: it touches a block only while the operation it was given to
//! is in flight (the `unsafe` accessors of [`Block`] and [`BlockMut`]).

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

#[cfg(feature = "ucx")]
use mfio_core::{IoBuf, IoBufMut};

use crate::element::Element;

/// The buffer's memory, its type forgotten (a transport sees bytes).
struct Region {
    ptr: *mut u8,
    /// Gives the memory back to the allocator as the vector it was.
    free: unsafe fn(*mut u8, usize, usize),
    /// Elements of the vector (length and capacity).
    elems: (usize, usize),
}

// SAFETY: the region owns a vector of `Element`s (`Send + Sync` plain
// data); who may touch which bytes when is the contract of the accessors.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `elems` are the parts of the vector `free` was
        // made for, taken apart once in `Lent::new` and not rebuilt since
        // (`Lent::into_vec` rebuilds it only from a region it then forgets).
        unsafe { (self.free)(self.ptr, self.elems.0, self.elems.1) }
    }
}

/// Rebuilds and drops the `Vec<T>` whose parts these are.
///
/// # Safety
/// The parts of a `Vec<T>` taken apart and not rebuilt elsewhere.
unsafe fn free_vec<T>(ptr: *mut u8, len: usize, cap: usize) {
    // SAFETY: the caller's promise.
    drop(unsafe { Vec::from_raw_parts(ptr.cast::<T>(), len, cap) });
}

/// A collective's buffer of `T`, lent to transport operations in blocks.
pub(crate) struct Lent<T> {
    region: Arc<Region>,
    _elems: PhantomData<T>,
}

impl<T> std::fmt::Debug for Lent<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent")
            .field("elems", &self.region.elems.0)
            .finish_non_exhaustive()
    }
}

impl<T: Element> Lent<T> {
    /// Takes `buf` over (no copy).
    pub fn new(buf: Vec<T>) -> Self {
        let mut buf = std::mem::ManuallyDrop::new(buf);
        let (ptr, len, cap) = (buf.as_mut_ptr(), buf.len(), buf.capacity());
        Self {
            region: Arc::new(Region {
                ptr: ptr.cast(),
                free: free_vec::<T>,
                elems: (len, cap),
            }),
            _elems: PhantomData,
        }
    }

    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        self.region.elems.0
    }

    /// The buffer back as the caller's vector, after a collective with
    /// outcome `res`. If a transport operation still holds a block of it:
    /// after a success (every operation finished, so the transport only
    /// kept a block it no longer uses) a copy of the elements; after a
    /// failure, when an operation may still be writing, a zeroed vector of
    /// the same length. The old memory then goes when the transport lets go
    /// of it.
    pub fn finish<R>(self, res: &mfio_core::Result<R>) -> Vec<T> {
        match self.into_vec() {
            Ok(vec) => vec,
            // SAFETY: every operation of the collective finished.
            Err(lent) if res.is_ok() => unsafe { lent.slice(0..lent.len()) }.to_vec(),
            Err(lent) => vec![T::zeroed(); lent.len()],
        }
    }

    /// The caller's vector, if no block of it is held any more; else the
    /// buffer, still lent.
    fn into_vec(self) -> Result<Vec<T>, Self> {
        match Arc::try_unwrap(self.region) {
            Ok(region) => {
                let region = std::mem::ManuallyDrop::new(region);
                // SAFETY: the parts `new` took apart; the region that owned
                // them is forgotten, so they are rebuilt once.
                Ok(unsafe { Vec::from_raw_parts(region.ptr.cast::<T>(), region.elems.0, region.elems.1) })
            }
            Err(region) => Err(Lent {
                region,
                _elems: PhantomData,
            }),
        }
    }

    /// The buffer back as the caller's vector, for a buffer this
    /// collective lent only in [`Block`]s (to send from; never
    /// [`block_mut`](Self::block_mut)): as [`finish`](Self::finish), but a
    /// block still held after a failure gives a copy of the elements, not
    /// zeroes: nothing writes them, so an operation still reading them
    /// changes nothing, and the caller's operand is not lost.
    pub fn finish_unwritten(self) -> Vec<T> {
        // SAFETY: nothing writes the buffer (the caller's promise: it made
        // no `BlockMut` of it); the operations still holding blocks only
        // read.
        self.into_vec()
            .unwrap_or_else(|lent| unsafe { lent.slice(0..lent.len()) }.to_vec())
    }

    /// The elements `r`, to read.
    ///
    /// # Safety
    /// No transport operation on a block overlapping `r` is in flight, and
    /// no slice from [`slice_mut`](Self::slice_mut) overlapping it lives.
    ///
    /// # Panics
    /// If `r` is out of bounds (an algorithm's bug).
    pub unsafe fn slice(&self, r: Range<usize>) -> &[T] {
        assert!(r.start <= r.end && r.end <= self.len(), "block {r:?} of {}", self.len());
        // SAFETY: in bounds (checked); nothing writes it (the caller's promise).
        unsafe { std::slice::from_raw_parts(self.region.ptr.cast::<T>().add(r.start), r.len()) }
    }

    /// The elements `r`, to change.
    ///
    /// # Safety
    /// No transport operation on a block overlapping `r` is in flight, and
    /// no other slice overlapping it lives.
    ///
    /// # Panics
    /// If `r` is out of bounds (an algorithm's bug).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, r: Range<usize>) -> &mut [T] {
        assert!(r.start <= r.end && r.end <= self.len(), "block {r:?} of {}", self.len());
        // SAFETY: in bounds (checked); nothing else touches it (the caller's
        // promise).
        unsafe { std::slice::from_raw_parts_mut(self.region.ptr.cast::<T>().add(r.start), r.len()) }
    }

    fn bytes(&self, r: &Range<usize>) -> Range<usize> {
        assert!(r.start <= r.end && r.end <= self.len(), "block {r:?} of {}", self.len());
        r.start * size_of::<T>()..r.end * size_of::<T>()
    }

    /// The elements `r` as bytes to send.
    ///
    /// # Panics
    /// If `r` is out of bounds (an algorithm's bug).
    pub fn block(&self, r: Range<usize>) -> Block {
        Block {
            region: self.region.clone(),
            bytes: self.bytes(&r),
        }
    }

    /// The elements `r` as bytes to receive into.
    ///
    /// # Panics
    /// If `r` is out of bounds (an algorithm's bug).
    pub fn block_mut(&self, r: Range<usize>) -> BlockMut {
        BlockMut(self.block(r))
    }
}

/// Bytes of a collective's buffer to send ([`Transport::send_block`](super::Transport::send_block)):
/// the memory stays alive while the block does. Only the algorithms make
/// blocks; a transport reads one through [`as_bytes`](Self::as_bytes)
/// while its send is in flight.
pub struct Block {
    region: Arc<Region>,
    bytes: Range<usize>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// Bytes in the block.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the block holds no byte.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The block's bytes.
    ///
    /// # Safety
    /// Only while the send the block was given for is in flight (the
    /// algorithm does not write them until then).
    pub unsafe fn as_bytes(&self) -> &[u8] {
        // SAFETY: in bounds (`Lent::block`); not written meanwhile (the
        // caller's promise).
        unsafe { std::slice::from_raw_parts(self.region.ptr.add(self.bytes.start), self.len()) }
    }
}

impl Block {
    /// Where the block's bytes start.
    pub(crate) fn ptr(&self) -> *const u8 {
        // SAFETY: `bytes` lies within the region (`Lent::bytes`).
        unsafe { self.region.ptr.add(self.bytes.start) }
    }

    /// The block as the buffer of an I/O operation (for a transport of
    /// this crate, which holds it only while the operation is in flight).
    #[cfg(feature = "ucx")]
    pub(crate) fn into_io(self) -> InFlight<Block> {
        InFlight(self)
    }
}

/// A block handed to an I/O operation: only this crate's transports make
/// one, and only for an operation the block was given to. (A [`Block`]
/// itself is no `IoBuf`, so that a transport outside the crate reaches its
/// bytes only through `unsafe`, under that method's promise.)
#[cfg(feature = "ucx")]
pub(crate) struct InFlight<B>(B);

#[cfg(feature = "ucx")]
impl<B> InFlight<B> {
    /// The block back, once no operation holds it.
    pub(crate) fn into_inner(self) -> B {
        self.0
    }
}

#[cfg(feature = "ucx")]
// SAFETY: the bytes are the region's (initialised elements of plain data),
// which the `Arc` keeps in place while the block lives.
unsafe impl IoBuf for InFlight<Block> {
    fn as_buf_ptr(&self) -> *const u8 {
        self.0.ptr()
    }

    fn buf_len(&self) -> usize {
        self.0.len()
    }
}

/// Bytes of a collective's buffer to receive into
/// ([`Transport::recv_block`](super::Transport::recv_block)): the memory
/// stays alive while the block does. Only the algorithms make blocks; a
/// transport writes one through [`fill`](Self::fill) while its receive is
/// in flight.
#[derive(Debug)]
pub struct BlockMut(Block);

impl BlockMut {
    /// Bytes in the block.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the block holds no byte.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Copies `data` (the block's length) into the block.
    ///
    /// # Safety
    /// Only while the receive the block was given for is in flight (the
    /// algorithm does not touch the block until then).
    ///
    /// # Panics
    /// If `data` has another length (the transport checks it first).
    pub unsafe fn fill(&mut self, data: &[u8]) {
        assert_eq!(data.len(), self.len(), "a message of the block's length");
        // SAFETY: in bounds (`Lent::block`, and the length checked); only
        // this receive touches the bytes meanwhile (the caller's promise).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.0.ptr().cast_mut(), data.len()) }
    }
}

#[cfg(feature = "ucx")]
impl BlockMut {
    /// The block as the buffer of an I/O operation (for a transport of
    /// this crate, which holds it only while the operation is in flight).
    pub(crate) fn into_io(self) -> InFlight<BlockMut> {
        InFlight(self)
    }
}

#[cfg(feature = "ucx")]
// SAFETY: as `InFlight<Block>`'s; the bytes are initialised already (plain
// data).
unsafe impl IoBuf for InFlight<BlockMut> {
    fn as_buf_ptr(&self) -> *const u8 {
        self.0 .0.ptr()
    }

    fn buf_len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(feature = "ucx")]
// SAFETY: the block's bytes lie within the region, which the `Arc` keeps
// in place; elements of plain data are valid at any bytes, so a partial
// write leaves them valid, and they are initialised from the start.
unsafe impl IoBufMut for InFlight<BlockMut> {
    fn as_buf_mut_ptr(&mut self) -> *mut u8 {
        self.as_buf_ptr().cast_mut()
    }

    fn buf_capacity(&self) -> usize {
        self.0.len()
    }

    unsafe fn set_buf_init(&mut self, _len: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_comes_back_unless_a_block_is_still_lent() {
        let v: Vec<u32> = (0..10).collect();
        let ptr = v.as_ptr();
        let lent = Lent::new(v);
        let b = lent.block(2..5);
        assert_eq!(b.len(), 12);
        // SAFETY: no operation writes the buffer.
        assert_eq!(unsafe { b.as_bytes() }, bytemuck::cast_slice::<u32, u8>(&[2, 3, 4]));
        let mut m = lent.block_mut(7..8);
        // SAFETY: nothing else touches element 7.
        unsafe { m.fill(&99u32.to_ne_bytes()) };
        drop((b, m));
        let back = lent.finish(&Ok(()));
        assert_eq!(back.as_ptr(), ptr, "the caller's own memory, no copy");
        assert_eq!(back, [0, 1, 2, 3, 4, 5, 6, 99, 8, 9]);

        let lent = Lent::new(vec![7u64; 4]);
        let held = lent.block_mut(0..4);
        let failed: mfio_core::Result<()> = Err(mfio_core::Error::cancelled());
        assert_eq!(lent.finish(&failed), [0; 4], "still lent after a failure: zeroed");
        assert_eq!(held.len(), 32, "the lent block's memory lives on");
        let lent = Lent::new(vec![7u64; 4]);
        let kept = lent.block(1..2);
        assert_eq!(lent.finish(&Ok(())), [7; 4], "kept after a success: a copy");
        drop(kept);

        // A buffer only sent from: its elements, copied if a block is held.
        let v = vec![1u32, 2, 3];
        let ptr = v.as_ptr();
        let lent = Lent::new(v);
        drop(lent.block(0..3));
        let back = lent.finish_unwritten();
        assert_eq!(
            (back.as_ptr(), back.as_slice()),
            (ptr, &[1, 2, 3][..]),
            "not held: the caller's own memory"
        );
        let lent = Lent::new(vec![4u32, 5]);
        let held = lent.block(1..2);
        assert_eq!(
            lent.finish_unwritten(),
            [4, 5],
            "held (after a failure, too): a copy, not zeroes"
        );
        // SAFETY: nothing writes the buffer.
        let bytes = unsafe { held.as_bytes() };
        assert_eq!(bytes, 5u32.to_ne_bytes(), "the held block's memory lives on");
    }
}
