//! Owned buffers that can be handed to a backend: [`IoBuf`] (bytes to write),
//! [`IoBufMut`] (room to read into), [`AlignedBuf`] (alignment chosen at run
//! time, for `O_DIRECT`), [`Slice`] (a sub-range of a buffer) and
//! [`BufResult`] (a result with the buffer handed back).

use std::alloc::{self, Layout};
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// A result that hands the buffer back to the caller.
#[must_use]
#[derive(Debug)]
pub struct BufResult<T, B>(pub Result<T>, pub B);

impl<T, B> BufResult<T, B> {
    /// Splits into the result and the buffer.
    pub fn into_parts(self) -> (Result<T>, B) {
        (self.0, self.1)
    }

    /// Maps the success value, keeping the buffer.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> BufResult<U, B> {
        BufResult(self.0.map(f), self.1)
    }
}

/// An owned buffer whose initialised bytes a backend may read (the source of a write).
///
/// # Safety
/// Implementors promise that, while the value is not mutated or dropped:
/// - `as_buf_ptr()..as_buf_ptr()+buf_len()` is readable, initialised memory;
/// - that memory does not move when the value itself is moved (it lives on the
///   heap or in static memory), so a backend may keep using the pointer after
///   the packet holding the value has been moved around.
pub unsafe trait IoBuf: Send + 'static {
    /// Start of the initialised bytes.
    fn as_buf_ptr(&self) -> *const u8;
    /// Number of initialised bytes.
    fn buf_len(&self) -> usize;
}

/// An owned buffer a backend may write into (the target of a read).
///
/// A read fills the buffer from its start, up to [`IoBufMut::buf_capacity`]
/// bytes; the capacity need not be initialised, so reading into
/// `Vec::with_capacity(n)` costs no zero-filling.
///
/// # Safety
/// Besides the [`IoBuf`] promises, while the value is not otherwise mutated or
/// dropped, `as_buf_mut_ptr()..as_buf_mut_ptr()+buf_capacity()` must be
/// writable memory owned by the value that does not move with the value, and
/// `set_buf_init(n)` for `n <= buf_capacity()` must only mark bytes initialised.
pub unsafe trait IoBufMut: IoBuf {
    /// Start of the writable region (the same address as [`IoBuf::as_buf_ptr`]).
    fn as_buf_mut_ptr(&mut self) -> *mut u8;
    /// Number of bytes that may be written from the start.
    fn buf_capacity(&self) -> usize;
    /// Marks the first `len` bytes initialised; never shrinks the initialised part.
    ///
    /// # Safety
    /// `len <= buf_capacity()` and the first `len` bytes were written.
    unsafe fn set_buf_init(&mut self, len: usize);
}

// SAFETY: a Vec's bytes live on the heap and do not move with the Vec; `len`
// bytes are initialised.
unsafe impl IoBuf for Vec<u8> {
    fn as_buf_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn buf_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: the capacity is heap memory owned by the Vec; `set_len` only grows
// over bytes the caller says were written.
unsafe impl IoBufMut for Vec<u8> {
    fn as_buf_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn buf_capacity(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_buf_init(&mut self, len: usize) {
        if len > self.len() {
            // SAFETY: the caller guarantees len <= capacity and that the bytes were written.
            unsafe { self.set_len(len) };
        }
    }
}

// SAFETY: a boxed slice is heap memory (or a dangling pointer for length 0), fully initialised.
unsafe impl IoBuf for Box<[u8]> {
    fn as_buf_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn buf_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: all `len` bytes are writable heap memory; it is always fully initialised.
unsafe impl IoBufMut for Box<[u8]> {
    fn as_buf_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn buf_capacity(&self) -> usize {
        self.len()
    }
    unsafe fn set_buf_init(&mut self, _len: usize) {}
}

// SAFETY: `Bytes` points at immutable shared heap or static memory that does not move.
unsafe impl IoBuf for bytes::Bytes {
    fn as_buf_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn buf_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: `BytesMut` owns a unique heap region; `len` bytes are initialised.
unsafe impl IoBuf for bytes::BytesMut {
    fn as_buf_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn buf_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: the spare capacity of a `BytesMut` is uniquely owned heap memory
// that stays put while the value is not mutated.
unsafe impl IoBufMut for bytes::BytesMut {
    fn as_buf_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn buf_capacity(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_buf_init(&mut self, len: usize) {
        if len > self.len() {
            // SAFETY: the caller guarantees len <= capacity and that the bytes were written.
            unsafe { self.set_len(len) };
        }
    }
}

// SAFETY: static bytes never move and are initialised.
unsafe impl IoBuf for &'static [u8] {
    fn as_buf_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn buf_len(&self) -> usize {
        self.len()
    }
}

/// A heap buffer whose start is aligned to a power of two chosen at run time
/// (for `O_DIRECT`, whose alignment depends on the device).
///
/// Like `Vec<u8>` it has a length (initialised bytes) and a capacity; both the
/// capacity and the alignment are fixed at creation.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
    /// The allocation's layout; its size is at least 1 even for capacity 0.
    layout: Layout,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads the initialised bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer with room for `capacity` bytes, starting at a multiple of `align`.
    ///
    /// # Errors
    /// `InvalidInput` if `align` is not a power of two or the size overflows;
    /// `OutOfMemory` if the allocation fails.
    pub fn with_capacity(capacity: usize, align: usize) -> Result<Self> {
        let layout = Layout::from_size_align(capacity.max(1), align).map_err(|_| {
            Error::new(
                io::ErrorKind::InvalidInput,
                "alignment must be a power of two and the size must fit",
            )
        })?;
        // SAFETY: the layout has a non-zero size (at least 1).
        let raw = unsafe { alloc::alloc(layout) };
        let ptr =
            NonNull::new(raw).ok_or_else(|| Error::new(io::ErrorKind::OutOfMemory, "aligned allocation failed"))?;
        Ok(Self {
            ptr,
            len: 0,
            capacity,
            layout,
        })
    }

    /// A buffer of `len` zero bytes, starting at a multiple of `align`.
    ///
    /// # Errors
    /// As [`AlignedBuf::with_capacity`].
    pub fn zeroed(len: usize, align: usize) -> Result<Self> {
        let mut buf = Self::with_capacity(len, align)?;
        // SAFETY: the allocation has room for `len` bytes.
        unsafe { buf.ptr.as_ptr().write_bytes(0, len) };
        buf.len = len;
        Ok(buf)
    }

    /// The alignment of the start of the buffer.
    pub fn alignment(&self) -> usize {
        self.layout.align()
    }

    /// Number of bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends as many bytes of `data` as fit; returns how many were taken.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity() - self.len);
        // SAFETY: `n` bytes fit after `len`, and `data` cannot overlap memory we own uniquely.
        unsafe {
            self.ptr
                .as_ptr()
                .add(self.len)
                .copy_from_nonoverlapping(data.as_ptr(), n)
        };
        self.len += n;
        n
    }

    /// Shortens the buffer to `len` bytes (no effect if it is already shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_capacity` with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised and owned by us.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: the first `len` bytes are initialised and uniquely owned by us.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("alignment", &self.alignment())
            .finish()
    }
}

// SAFETY: heap allocation owned by the value; `len` bytes initialised.
unsafe impl IoBuf for AlignedBuf {
    fn as_buf_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn buf_len(&self) -> usize {
        self.len
    }
}

// SAFETY: the whole capacity is writable memory owned by the value.
unsafe impl IoBufMut for AlignedBuf {
    fn as_buf_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn buf_capacity(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_buf_init(&mut self, len: usize) {
        self.len = self.len.max(len);
    }
}

/// A sub-range `begin..end` of an owned buffer, itself an owned buffer.
///
/// For writes the range is clamped to the initialised bytes; for reads to the
/// capacity. Reading `n` bytes into a `Slice` marks `begin + n` bytes of the
/// inner buffer initialised, so reading into the spare capacity of a `Vec`
/// grows it.
#[derive(Debug)]
pub struct Slice<B> {
    buf: B,
    begin: usize,
    end: usize,
}

impl<B> Slice<B> {
    /// The sub-range `begin..end` of `buf` (clamped when used).
    pub fn new(buf: B, begin: usize, end: usize) -> Self {
        Self { buf, begin, end }
    }

    /// Gives the whole buffer back.
    pub fn into_inner(self) -> B {
        self.buf
    }

    /// Start of the range in the inner buffer.
    pub fn begin(&self) -> usize {
        self.begin
    }
}

// SAFETY: delegates to the inner buffer's memory, offset inside its initialised part.
unsafe impl<B: IoBuf> IoBuf for Slice<B> {
    fn as_buf_ptr(&self) -> *const u8 {
        let begin = self.begin.min(self.buf.buf_len());
        // SAFETY: begin <= buf_len, so the result stays inside (or one past) the allocation.
        unsafe { self.buf.as_buf_ptr().add(begin) }
    }
    fn buf_len(&self) -> usize {
        self.end.min(self.buf.buf_len()).saturating_sub(self.begin)
    }
}

// SAFETY: delegates to the inner buffer's capacity, offset by `begin` (clamped
// to it); every byte before `begin` is initialised before the pointer is handed
// out, so `set_buf_init(begin + n)` never exposes uninitialised memory.
unsafe impl<B: IoBufMut> IoBufMut for Slice<B> {
    fn as_buf_mut_ptr(&mut self) -> *mut u8 {
        let begin = self.begin.min(self.buf.buf_capacity());
        let init = self.buf.buf_len();
        let base = self.buf.as_buf_mut_ptr();
        if init < begin {
            // A read that starts past the initialised part: zero the gap so the
            // inner buffer can later count the bytes read as initialised.
            // SAFETY: init < begin <= capacity, so the gap is inside the allocation.
            unsafe { base.add(init).write_bytes(0, begin - init) };
            // SAFETY: the first `begin` bytes are now initialised.
            unsafe { self.buf.set_buf_init(begin) };
        }
        // SAFETY: begin <= capacity, so the result stays inside (or one past) the allocation.
        unsafe { base.add(begin) }
    }
    fn buf_capacity(&self) -> usize {
        self.end.min(self.buf.buf_capacity()).saturating_sub(self.begin)
    }
    unsafe fn set_buf_init(&mut self, len: usize) {
        let begin = self.begin.min(self.buf.buf_capacity());
        if len > 0 && self.buf.buf_len() >= begin {
            // SAFETY: the caller wrote `len <= buf_capacity()` bytes from `begin`, and every byte
            // before `begin` is initialised (checked above; `as_buf_mut_ptr` zero-fills any gap).
            unsafe { self.buf.set_buf_init(begin + len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_honours_runtime_alignment() {
        for align in [1, 512, 4096, 65536] {
            let mut buf = AlignedBuf::with_capacity(8192, align).expect("alloc");
            assert_eq!(buf.as_buf_ptr() as usize % align, 0);
            assert_eq!(buf.len(), 0);
            assert_eq!(buf.extend_from_slice(&[7; 10_000]), 8192);
            assert_eq!(&buf[..3], &[7, 7, 7]);
        }
    }

    #[test]
    fn aligned_buf_of_capacity_zero_reports_zero() {
        let buf = AlignedBuf::with_capacity(0, 4096).expect("alloc");
        assert_eq!((buf.capacity(), buf.buf_capacity()), (0, 0));
    }

    #[test]
    fn slice_past_initialised_part_zero_fills_the_gap() {
        let mut s = Slice::new(Vec::with_capacity(8), 4, 8);
        let p = s.as_buf_mut_ptr();
        // SAFETY: the slice has 4 writable bytes.
        unsafe { p.copy_from_nonoverlapping(b"wxyz".as_ptr(), 4) };
        // SAFETY: four bytes were written.
        unsafe { s.set_buf_init(4) };
        assert_eq!(s.into_inner(), b"\0\0\0\0wxyz");
    }

    #[test]
    fn aligned_buf_rejects_bad_alignment() {
        let err = AlignedBuf::with_capacity(4096, 3).expect_err("3 is not a power of two");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn slice_of_vec_spare_capacity_grows_the_vec() {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(b"abc");
        let mut s = Slice::new(v, 3, usize::MAX);
        assert_eq!(s.buf_capacity(), 13);
        // SAFETY: 2 <= 13 bytes fit in the slice.
        unsafe { s.as_buf_mut_ptr().copy_from_nonoverlapping(b"de".as_ptr(), 2) };
        // SAFETY: two bytes were just written.
        unsafe { s.set_buf_init(2) };
        assert_eq!(s.into_inner(), b"abcde");
    }
}
