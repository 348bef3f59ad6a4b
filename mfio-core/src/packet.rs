//! Packets: an owned buffer on its way to a backend and back.
//!
//! The caller keeps a [`Packet`] (which owns the buffer and waits for the
//! result); the backend receives a [`PacketView`] of the whole buffer, may
//! split it into disjoint views and complete them in any order, from any
//! thread. When the last view is completed (or dropped, which counts as an
//! [`Aborted`](crate::Error::aborted) failure) the packet's waiter is woken
//! once and the caller gets a [`PacketOutcome`] and the buffer back.
//!
//! Dropping the [`Packet`] before completion never frees memory a backend may
//! still touch: the buffer lives in shared state kept alive by every view, and
//! a backend that registered a [`CancelHandler`] is asked to cancel.
//!
//! A finished packet's state is kept by its thread for the next packet of
//! the same buffer type (up to a few hundred per thread), so a steady stream
//! of operations allocates nothing per packet; only a state no view holds
//! any more is reused.

use std::any::{Any, TypeId};
use std::cell::{RefCell, UnsafeCell};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;

use crate::buf::{IoBuf, IoBufMut};
use crate::error::{Error, Result};

mod sealed {
    pub trait Sealed {}

    /// Who may be a [`PacketBuf`](super::PacketBuf) of direction `D`: only
    /// the buffers of the two blanket implementations below it.
    pub trait SealedBuf<D> {}
    impl<B: crate::buf::IoBufMut> SealedBuf<super::Read> for B {}
    impl<B: crate::buf::IoBuf> SealedBuf<super::Write> for B {}
}

/// The direction of a packet: [`Read`] or [`Write`].
pub trait Direction: sealed::Sealed + Send + Sync + 'static {
    /// True for [`Read`]: the backend writes into the packet's memory.
    const IS_READ: bool;
}

/// A packet that receives bytes read from I/O: the backend writes into its buffer.
#[derive(Debug)]
pub enum Read {}

/// A packet that carries bytes to be written: the backend only reads its buffer.
#[derive(Debug)]
pub enum Write {}

impl sealed::Sealed for Read {}
impl sealed::Sealed for Write {}
impl Direction for Read {
    const IS_READ: bool = true;
}
impl Direction for Write {
    const IS_READ: bool = false;
}

/// A buffer usable in a packet of direction `D`: any [`IoBufMut`] for
/// [`Read`], any [`IoBuf`] for [`Write`].
///
/// The trait is sealed: a backend writes through the pointer that
/// [`region`](Self::region) returns, so only the blanket implementations
/// over the `unsafe` buffer traits exist. To bring a buffer type of your
/// own, implement [`IoBuf`] (and [`IoBufMut`]) for it, whose `# Safety`
/// sections say what the backend relies on.
///
/// ```compile_fail,E0277
/// use mfio_core::{IoBuf, PacketBuf, Read};
///
/// struct Mine(Box<[u8; 16]>);
/// // SAFETY: the bytes are on the heap, initialised, and never move.
/// unsafe impl IoBuf for Mine {
///     fn as_buf_ptr(&self) -> *const u8 {
///         self.0.as_ptr()
///     }
///     fn buf_len(&self) -> usize {
///         16
///     }
/// }
/// // Sealed: a type that is only `IoBuf` cannot be the target of a read.
/// impl PacketBuf<Read> for Mine {
///     fn region(&mut self) -> (*mut u8, usize) {
///         (self.0.as_mut_ptr(), 16)
///     }
///     unsafe fn finish(&mut self, _transferred: usize) {}
/// }
/// ```
pub trait PacketBuf<D: Direction>: IoBuf + sealed::SealedBuf<D> {
    /// Pointer and length of the region the backend may access.
    #[doc(hidden)]
    fn region(&mut self) -> (*mut u8, usize);
    /// Called with the bytes transferred once the packet completed.
    ///
    /// # Safety
    /// For reads, the first `transferred` bytes of the region were written.
    #[doc(hidden)]
    unsafe fn finish(&mut self, transferred: usize);
}

impl<B: IoBufMut> PacketBuf<Read> for B {
    fn region(&mut self) -> (*mut u8, usize) {
        (self.as_buf_mut_ptr(), self.buf_capacity())
    }
    unsafe fn finish(&mut self, transferred: usize) {
        // SAFETY: forwarded from the caller: those bytes were written.
        unsafe { self.set_buf_init(transferred) }
    }
}

impl<B: IoBuf> PacketBuf<Write> for B {
    fn region(&mut self) -> (*mut u8, usize) {
        (self.as_buf_ptr().cast_mut(), self.buf_len())
    }
    unsafe fn finish(&mut self, _transferred: usize) {}
}

/// Lets a backend react when the caller drops a [`Packet`].
pub trait CancelHandler: Send + Sync {
    /// The packet registered under `token` was dropped before completing.
    /// Called at most once per registration, possibly from any thread.
    fn cancel(&self, token: u64);

    /// The read packet registered under `token` completed with `data` (its
    /// transferred prefix) but the caller dropped it without taking the
    /// result. Stream backends put the bytes back so nothing is lost;
    /// message backends put the message back. `data` is empty for a read
    /// that completed without error and without bytes (a zero-length
    /// message is still a message); a read that failed is not handed back.
    fn unclaimed(&self, token: u64, data: &[u8]) {
        let _ = (token, data);
    }
}

const CANCELLED: u8 = 1;
const HAS_HOOK: u8 = 2;
/// Set once an error was recorded, so the common path never takes the lock.
const HAS_ERROR: u8 = 4;
/// Set once a waiter registered a waker; completion skips the wake otherwise.
const WAITING: u8 = 8;
/// Set when the packet is awaited by a thread that blocks until it
/// completes (the blocking API); see [`PacketView::caller_blocks`].
const CALLER_BLOCKS: u8 = 16;

struct Hook {
    handler: Arc<dyn CancelHandler>,
    token: u64,
}

/// State shared by the packet and its views.
struct Header {
    ptr: *mut u8,
    len: usize,
    /// Views not yet finished; the packet completes when this reaches zero.
    pending: AtomicUsize,
    /// Lowest offset at which a view stopped short or failed (`len` if none).
    short_at: AtomicUsize,
    /// Lowest failed offset and its error.
    error: Mutex<Option<(usize, Error)>>,
    waker: AtomicWaker,
    flags: AtomicU8,
    hook: Mutex<Option<Hook>>,
    /// True for [`Read`] packets, whose completed bytes can be given back.
    is_read: bool,
}

/// `#[repr(C)]` with the header first: a view finds the header at the
/// address of whatever state it holds, without a virtual call.
#[repr(C)]
struct State<B> {
    header: Header,
    buf: UnsafeCell<Option<B>>,
}

impl Header {
    fn new(ptr: *mut u8, len: usize, is_read: bool) -> Self {
        Self {
            ptr,
            len,
            pending: AtomicUsize::new(1),
            short_at: AtomicUsize::new(len),
            error: Mutex::new(None),
            waker: AtomicWaker::new(),
            flags: AtomicU8::new(0),
            hook: Mutex::new(None),
            is_read,
        }
    }
}

/// Most packet states a thread keeps for reuse.
const SPARE_STATES: usize = 256;
/// How many of the most recent spares a new packet looks through for one
/// of its own buffer type (a program alternating a few types finds its own).
const SPARE_SEARCH: usize = 8;

thread_local! {
    /// Packet states of finished packets, for the next packets of this
    /// thread: an operation then costs no allocation. Kept only while no
    /// view holds them (so nothing else can see the reuse). States of other
    /// buffer types are left alone; with none of its type near the top, a
    /// packet allocates its own.
    static SPARE: RefCell<Vec<Spare>> = const { RefCell::new(Vec::new()) };
}

/// A spare state and its type, compared without a virtual call.
struct Spare {
    ty: TypeId,
    state: Arc<dyn Any + Send + Sync>,
}

impl<B: Send + 'static> State<B> {
    /// A state for `buf`, whose region is `len` bytes at `ptr`: one of the
    /// thread's recent spares of this type, else a new allocation.
    fn for_buf(buf: B, ptr: *mut u8, len: usize, is_read: bool) -> Arc<Self> {
        let spare = SPARE
            .try_with(|s| {
                let mut s = s.try_borrow_mut().ok()?;
                let ty = TypeId::of::<Self>();
                let from_top = s.iter().rev().take(SPARE_SEARCH).position(|a| a.ty == ty)?;
                let at = s.len() - 1 - from_top;
                let raw = Arc::into_raw(s.swap_remove(at).state);
                // SAFETY: the spare was pushed as an `Arc<Self>` (its type id
                // says so); this gives the same allocation its concrete type
                // back, as `Arc::downcast` does after the same check.
                Some(unsafe { Arc::from_raw(raw.cast::<Self>()) })
            })
            .ok()
            .flatten();
        if let Some(mut state) = spare {
            if let Some(fresh) = Arc::get_mut(&mut state) {
                // `recycle` emptied what can hold anything (waker, hook,
                // error, buffer); the rest is set here.
                let h = &mut fresh.header;
                h.ptr = ptr;
                h.len = len;
                *h.pending.get_mut() = 1;
                *h.short_at.get_mut() = len;
                *h.flags.get_mut() = 0;
                h.is_read = is_read;
                *fresh.buf.get_mut() = Some(buf);
                return state;
            }
        }
        Arc::new(State {
            header: Header::new(ptr, len, is_read),
            buf: UnsafeCell::new(Some(buf)),
        })
    }

    /// Keeps a finished state for reuse if nothing else refers to it any
    /// more (no view: the backend is done with it).
    fn recycle(mut state: Arc<Self>) {
        let Some(unique) = Arc::get_mut(&mut state) else { return };
        // Nothing of the finished operation stays reachable from the pool:
        // not its buffer, nor a waker, a cancel handler or an error.
        *unique.buf.get_mut() = None;
        let h = &mut unique.header;
        h.waker = AtomicWaker::new();
        *h.hook.get_mut() = None;
        *h.error.get_mut() = None;
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.len() < SPARE_STATES {
                    s.push(Spare {
                        ty: TypeId::of::<Self>(),
                        state,
                    });
                }
            }
        });
    }
}

// SAFETY: `buf` is only touched by the owning `Packet` once `pending` is zero
// (no view exists any more), and the raw region is only written by views,
// each over a disjoint range; `B: Send` so it may be dropped on any thread.
unsafe impl<B: Send> Sync for State<B> {}
// SAFETY: as above; the raw pointer in the header points into `buf`.
unsafe impl<B: Send> Send for State<B> {}

/// What a view keeps alive: the state of any buffer type. Only
/// [`State`] implements it, which is what [`PacketView::header`] relies on.
trait Body: Send + Sync {}

impl<B: Send> Body for State<B> {}

impl Header {
    fn record(&self, start: usize, n: usize, len: usize, err: Option<Error>) {
        if n < len {
            self.short_at.fetch_min(start + n, Ordering::AcqRel);
        }
        if let Some(err) = err {
            let mut slot = self.error.lock();
            if slot.as_ref().is_none_or(|(at, _)| start < *at) {
                *slot = Some((start, err));
            }
            self.flags.fetch_or(HAS_ERROR, Ordering::AcqRel);
        }
    }

    fn finish_view(&self) {
        if self.pending.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        // SeqCst pairs with `poll_complete` (either this load sees WAITING or
        // the waiter's re-check sees `pending == 0`) and with `Packet::drop`
        // (either this load sees CANCELLED or the drop sees `pending == 0`).
        let flags = self.flags.load(Ordering::SeqCst);
        if flags & CANCELLED != 0 {
            // The caller is gone and the operation completed anyway (its
            // cancellation lost the race): hand the bytes back.
            self.give_back_unclaimed();
        } else if flags & WAITING != 0 {
            self.waker.wake();
        }
    }

    /// Gives a completed read's bytes to the backend's hook, exactly once
    /// (whoever takes the hook first, of the last view and the packet's drop).
    fn give_back_unclaimed(&self) {
        let Some(hook) = self.hook.lock().take() else { return };
        if !self.is_read {
            return;
        }
        let transferred = self.short_at.load(Ordering::Acquire).min(self.len);
        let failed = self.flags.load(Ordering::Acquire) & HAS_ERROR != 0;
        if transferred > 0 || !failed {
            // SAFETY: the packet is complete (no view can write any more) and its
            // buffer is alive (the caller holds a reference to the shared state);
            // the first `transferred` bytes were written by the backend.
            let data = unsafe { std::slice::from_raw_parts(self.ptr, transferred) };
            hook.handler.unclaimed(hook.token, data);
        }
    }

    fn is_complete(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }
}

/// The caller's side of an I/O operation: owns the buffer until the backend
/// completes every view, then yields a [`PacketOutcome`] and the buffer.
pub struct Packet<D: Direction, B: PacketBuf<D>> {
    /// Taken only in `drop`, to be recycled.
    state: ManuallyDrop<Arc<State<B>>>,
    view: Option<PacketView<D>>,
    claimed: bool,
}

impl<D: Direction, B: PacketBuf<D>> Packet<D, B> {
    /// Wraps `buf` in a packet. Reads fill `buf` from its start up to its
    /// capacity; writes send its initialised bytes.
    pub fn new(mut buf: B) -> Self {
        // The region does not move with `buf` (the `IoBuf` contract).
        let (ptr, len) = buf.region();
        let state = State::for_buf(buf, ptr, len, D::IS_READ);
        let view = PacketView {
            body: Arc::clone(&state) as Arc<dyn Body>,
            start: 0,
            len,
            done: false,
            _dir: PhantomData,
        };
        Self {
            state: ManuallyDrop::new(state),
            view: Some(view),
            claimed: false,
        }
    }

    /// Length of the packet's region in bytes.
    pub fn len(&self) -> usize {
        self.state.header.len
    }

    /// True if the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the view covering the whole buffer, to hand to a backend. Returns
    /// `None` after the first call.
    pub fn take_view(&mut self) -> Option<PacketView<D>> {
        self.view.take()
    }

    /// Puts back the view [`take_view`](Self::take_view) gave, when the
    /// backend handed it back unsent (its queue was full).
    pub(crate) fn restore_view(&mut self, view: PacketView<D>) {
        self.view = Some(view);
    }

    /// True once every view has been completed or dropped.
    pub fn is_complete(&self) -> bool {
        self.state.header.is_complete()
    }

    /// Waits for completion; wakes `cx` once when the last view finishes.
    pub fn poll_complete(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let header = &self.state.header;
        if header.is_complete() {
            return Poll::Ready(());
        }
        header.waker.register(cx.waker());
        header.flags.fetch_or(WAITING, Ordering::SeqCst);
        if header.pending.load(Ordering::SeqCst) == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The outcome and the buffer, once complete; `None` while views are
    /// outstanding or after the buffer was taken.
    pub fn try_take(&mut self) -> Option<(PacketOutcome, B)> {
        if self.claimed || !self.is_complete() {
            return None;
        }
        let header = &self.state.header;
        let transferred = header.short_at.load(Ordering::Acquire);
        let error = if header.flags.load(Ordering::Acquire) & HAS_ERROR != 0 {
            header.error.lock().take()
        } else {
            None
        };
        // SAFETY: `pending` is zero, so no view exists and nothing else touches `buf`;
        // we are its only user.
        let mut buf = unsafe { (*self.state.buf.get()).take() }?;
        // SAFETY: every view below `transferred` completed in full, so those bytes were written.
        unsafe { buf.finish(transferred) };
        self.claimed = true;
        Some((
            PacketOutcome {
                len: header.len,
                transferred,
                error,
            },
            buf,
        ))
    }
}

impl<D: Direction, B: PacketBuf<D>> Drop for Packet<D, B> {
    fn drop(&mut self) {
        self.release();
        // SAFETY: `state` is not used after this; `drop` runs once.
        let state = unsafe { ManuallyDrop::take(&mut self.state) };
        State::recycle(state);
    }
}

impl<D: Direction, B: PacketBuf<D>> Packet<D, B> {
    /// The caller lets go: an unsent view counts as aborted, and an
    /// operation still in flight is asked to cancel (a completed, unclaimed
    /// read hands its bytes back).
    fn release(&mut self) {
        // The unsent view (if any) is dropped first and counts as aborted.
        drop(self.view.take());
        if self.claimed {
            return;
        }
        let header = &self.state.header;
        if header.flags.load(Ordering::Acquire) & HAS_HOOK == 0 && header.is_complete() {
            return;
        }
        // SeqCst: see `Header::finish_view`.
        header.flags.fetch_or(CANCELLED, Ordering::SeqCst);
        if header.pending.load(Ordering::SeqCst) == 0 {
            header.give_back_unclaimed();
            return;
        }
        // Still in flight: ask the backend to cancel, keeping the hook so
        // that if the operation completes anyway its bytes are given back.
        let cancel = header.hook.lock().as_ref().map(|h| (h.handler.clone(), h.token));
        if let Some((handler, token)) = cancel {
            handler.cancel(token);
        }
    }
}

impl<D: Direction, B: PacketBuf<D>> fmt::Debug for Packet<D, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("read", &D::IS_READ)
            .field("len", &self.len())
            .field("complete", &self.is_complete())
            .finish()
    }
}

/// What happened to a packet.
///
/// `transferred` is the length of the prefix that completed in full: every
/// byte below it was transferred, and the first shortfall or failure is at
/// `transferred` (or the packet was transferred whole).
#[derive(Debug)]
pub struct PacketOutcome {
    len: usize,
    transferred: usize,
    error: Option<(usize, Error)>,
}

impl PacketOutcome {
    /// Length of the packet.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the packet had no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes transferred from the start without a gap.
    pub fn transferred(&self) -> usize {
        self.transferred
    }

    /// The lowest failed offset (relative to the packet start) and its error.
    pub fn error(&self) -> Option<(usize, &Error)> {
        self.error.as_ref().map(|(at, e)| (*at, e))
    }

    /// `Ok(bytes)` like `std::io::Read::read`: a partial transfer is a success
    /// (the error shows up on the next call); an error at offset 0 is `Err`.
    ///
    /// # Errors
    /// The failure at offset 0, if nothing was transferred because of it.
    pub fn result(self) -> Result<usize> {
        match self.error {
            Some((0, e)) if self.transferred == 0 => Err(e),
            _ => Ok(self.transferred),
        }
    }

    /// `Ok(())` only if every byte was transferred.
    ///
    /// # Errors
    /// The error at the first shortfall, or `UnexpectedEof` if the backend
    /// simply ran out of data there.
    pub fn exact(self) -> Result<()> {
        match self.error {
            Some((at, e)) if at == self.transferred => Err(e),
            _ if self.transferred == self.len => Ok(()),
            _ => Err(Error::unexpected_eof()),
        }
    }
}

/// A backend's handle on a sub-range of a packet's buffer.
///
/// Every view must end in [`complete`](Self::complete),
/// [`fail`](Self::fail) or drop; a dropped view is recorded as an
/// [`Aborted`](Error::aborted) failure, never as success. Offsets
/// ([`offset`](Self::offset)) are relative to the start of the packet, so a
/// backend adds them to the packet's address (file position, …).
pub struct PacketView<D: Direction> {
    body: Arc<dyn Body>,
    start: usize,
    len: usize,
    done: bool,
    _dir: PhantomData<D>,
}

impl<D: Direction> PacketView<D> {
    fn header(&self) -> &Header {
        // SAFETY: every body is a `State<_>` (the only `Body`), which is
        // `#[repr(C)]` with its header first, so the trait object's data
        // pointer is the header's address; `body` keeps it alive as long
        // as `self`.
        unsafe { &*Arc::as_ptr(&self.body).cast::<Header>() }
    }

    /// Offset of this view from the start of its packet.
    pub fn offset(&self) -> usize {
        self.start
    }

    /// Length of this view in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the view covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Splits into `[0, at)` and `[at, len)` (`at` is clamped to the length);
    /// each half must be completed on its own.
    pub fn split_at(mut self, at: usize) -> (Self, Self) {
        let at = at.min(self.len);
        self.header().pending.fetch_add(1, Ordering::Relaxed);
        let tail = PacketView {
            body: self.body.clone(),
            start: self.start + at,
            len: self.len - at,
            done: false,
            _dir: PhantomData,
        };
        self.len = at;
        (self, tail)
    }

    /// Completes the view with `n` bytes transferred from its start; `n < len`
    /// is a short transfer (end of data), and `n` is clamped to the length.
    pub fn complete(mut self, n: usize) {
        self.header().record(self.start, n.min(self.len), self.len, None);
        self.done = true;
    }

    /// Fails the whole view with `err`.
    pub fn fail(mut self, err: Error) {
        self.header().record(self.start, 0, self.len, Some(err));
        self.done = true;
    }

    /// Completes with `result` (`Ok(n)` as [`complete`](Self::complete)).
    pub fn finish(self, result: Result<usize>) {
        match result {
            Ok(n) => self.complete(n),
            Err(e) => self.fail(e),
        }
    }

    /// True if the thread waiting for this packet does nothing else until it
    /// completes (it came through the blocking API, `SyncIoRead` and
    /// friends). A backend may then run the operation synchronously on the
    /// calling thread instead of handing it to another thread and waking the
    /// caller back: same result, one thread hop less.
    pub fn caller_blocks(&self) -> bool {
        self.header().flags.load(Ordering::Relaxed) & CALLER_BLOCKS != 0
    }

    /// Marks the packet as awaited by a blocking caller.
    pub(crate) fn mark_caller_blocks(&self) {
        self.header().flags.fetch_or(CALLER_BLOCKS, Ordering::Relaxed);
    }

    /// True once the caller dropped the packet; the result will not be seen.
    pub fn is_cancelled(&self) -> bool {
        self.header().flags.load(Ordering::Acquire) & CANCELLED != 0
    }

    /// Registers `handler` to hear about the caller dropping the packet
    /// (see [`CancelHandler`]); replaces an earlier registration.
    ///
    /// # Errors
    /// `Interrupted` ([`Error::is_cancelled`]) if the packet was already
    /// dropped; the handler is not registered then.
    pub fn set_cancel_handler(&self, handler: Arc<dyn CancelHandler>, token: u64) -> Result<()> {
        let header = self.header();
        let mut slot = header.hook.lock();
        if header.flags.load(Ordering::Acquire) & CANCELLED != 0 {
            return Err(Error::cancelled());
        }
        *slot = Some(Hook { handler, token });
        header.flags.fetch_or(HAS_HOOK, Ordering::AcqRel);
        Ok(())
    }

    fn region_ptr(&self) -> *mut u8 {
        // `start` is within the packet's region (views only ever shrink it), so
        // this is in bounds or one past the end for an empty view.
        self.header().ptr.wrapping_add(self.start)
    }
}

impl PacketView<Read> {
    /// The view's memory, to be filled by the backend (may be uninitialised).
    pub fn as_uninit_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: the range belongs to this view alone (views are disjoint and
        // the packet's owner does not touch the buffer until all views are
        // finished); the buffer is kept alive by `body`.
        unsafe { std::slice::from_raw_parts_mut(self.region_ptr().cast(), self.len) }
    }

    /// Raw pointer to the view's memory, for handing to the kernel or a C
    /// library; valid for `len()` bytes of writes until the view is finished.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.region_ptr()
    }

    /// Copies as much of `src` as fits to the start of the view; returns the
    /// count. Does not complete the view.
    pub fn fill_from(&mut self, src: &[u8]) -> usize {
        self.fill_from_at(0, src)
    }

    /// Copies as much of `src` as fits at `at` bytes into the view; returns
    /// the count (0 if `at` is past the end). Does not complete the view.
    pub fn fill_from_at(&mut self, at: usize, src: &[u8]) -> usize {
        let n = src.len().min(self.len.saturating_sub(at));
        if n == 0 {
            return 0;
        }
        // SAFETY: `at + n <= len`, so the destination lies inside this view's
        // range, which is writable memory reserved for this view alone (see
        // `as_uninit_mut`); `src` cannot overlap it for the same reason.
        unsafe { self.region_ptr().add(at).copy_from_nonoverlapping(src.as_ptr(), n) };
        n
    }

    /// Copies as much of `src` as fits and completes with that count.
    pub fn complete_from(mut self, src: &[u8]) {
        let n = self.fill_from(src);
        self.complete(n);
    }
}

impl PacketView<Write> {
    /// The bytes to be written.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the region holds initialised bytes (IoBuf contract) that nobody
        // mutates while the packet is in flight; the buffer is kept alive by `body`.
        unsafe { std::slice::from_raw_parts(self.region_ptr(), self.len) }
    }
}

impl<D: Direction> Drop for PacketView<D> {
    fn drop(&mut self) {
        if !self.done {
            self.header().record(self.start, 0, self.len, Some(Error::aborted()));
        }
        self.header().finish_view();
    }
}

impl<D: Direction> fmt::Debug for PacketView<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketView")
            .field("read", &D::IS_READ)
            .field("offset", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<PacketView<Read>>();
    send_sync::<PacketView<Write>>();
    send::<Packet<Read, Vec<u8>>>();
    send::<Packet<Write, bytes::Bytes>>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::Waker;

    fn read_packet(n: usize) -> Packet<Read, Vec<u8>> {
        Packet::new(Vec::with_capacity(n))
    }

    #[test]
    fn split_views_complete_out_of_order() {
        let mut p = read_packet(10);
        let v = p.take_view().expect("view");
        let (a, b) = v.split_at(4);
        let (b, c) = b.split_at(3);
        assert_eq!((a.offset(), b.offset(), c.offset()), (0, 4, 7));
        c.complete_from(b"789");
        assert!(!p.is_complete());
        a.complete_from(b"0123");
        b.complete_from(b"456");
        let (out, buf) = p.try_take().expect("complete");
        assert_eq!(out.transferred(), 10);
        assert_eq!(buf, b"0123456789");
        assert_eq!(out.result().expect("ok"), 10);
    }

    #[test]
    fn dropped_view_is_aborted_not_success() {
        let mut p = read_packet(8);
        let (a, b) = p.take_view().expect("view").split_at(4);
        a.complete_from(b"abcd");
        drop(b);
        let (out, buf) = p.try_take().expect("complete");
        assert_eq!(out.transferred(), 4);
        assert_eq!(buf, b"abcd");
        let (at, err) = out.error().expect("error recorded");
        assert_eq!(at, 4);
        assert!(err.is_aborted());
        assert!(out.exact().expect_err("short").is_aborted());
    }

    #[test]
    fn lowest_failure_wins() {
        let mut p = read_packet(9);
        let (a, rest) = p.take_view().expect("view").split_at(3);
        let (b, c) = rest.split_at(3);
        c.fail(Error::from_raw_os_error(5));
        a.complete_from(b"xyz");
        b.fail(Error::from_raw_os_error(28));
        let (out, _) = p.try_take().expect("complete");
        assert_eq!(out.transferred(), 3);
        let (at, e) = out.error().expect("error");
        assert_eq!((at, e.raw_os_error()), (3, Some(28)));
        assert_eq!(out.result().expect("partial success"), 3);
    }

    #[test]
    fn failure_at_zero_is_err() {
        let mut p = read_packet(4);
        p.take_view().expect("view").fail(Error::from_raw_os_error(13));
        let (out, _) = p.try_take().expect("complete");
        assert_eq!(out.result().expect_err("failed").raw_os_error(), Some(13));
    }

    struct Flag(AtomicBool);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn completion_wakes_once_registered_waiter() {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut p = read_packet(2);
        let v = p.take_view().expect("view");
        assert!(p.poll_complete(&mut cx).is_pending());
        std::thread::spawn(move || v.complete_from(b"hi"))
            .join()
            .expect("thread");
        assert!(flag.0.load(Ordering::SeqCst));
        assert!(p.poll_complete(&mut cx).is_ready());
    }

    struct Recorder(Mutex<Vec<(u64, Vec<u8>, bool)>>);
    impl CancelHandler for Recorder {
        fn cancel(&self, token: u64) {
            self.0.lock().push((token, Vec::new(), true));
        }
        fn unclaimed(&self, token: u64, data: &[u8]) {
            self.0.lock().push((token, data.to_vec(), false));
        }
    }

    #[test]
    fn dropping_in_flight_packet_cancels_and_keeps_buffer_alive() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let mut p = read_packet(4);
        let v = p.take_view().expect("view");
        v.set_cancel_handler(rec.clone(), 42).expect("register");
        drop(p);
        assert!(v.is_cancelled());
        // The buffer is still alive: the backend may write and complete.
        v.complete_from(b"late");
        assert_eq!(
            rec.0.lock().as_slice(),
            &[(42, Vec::new(), true), (42, b"late".to_vec(), false)]
        );
    }

    #[test]
    fn unclaimed_completed_read_hands_bytes_back() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let mut p = read_packet(8);
        let v = p.take_view().expect("view");
        v.set_cancel_handler(rec.clone(), 7).expect("register");
        let (a, b) = v.split_at(5);
        a.complete_from(b"hello");
        b.complete(0);
        drop(p);
        assert_eq!(rec.0.lock().as_slice(), &[(7, b"hello".to_vec(), false)]);
    }

    #[test]
    fn unclaimed_empty_read_is_handed_back_and_failed_one_is_not() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let mut empty = read_packet(8);
        let v = empty.take_view().expect("view");
        v.set_cancel_handler(rec.clone(), 3).expect("register");
        v.complete(0);
        drop(empty);
        let mut failed = read_packet(8);
        let v = failed.take_view().expect("view");
        v.set_cancel_handler(rec.clone(), 4).expect("register");
        v.fail(Error::cancelled());
        drop(failed);
        assert_eq!(rec.0.lock().as_slice(), &[(3, Vec::new(), false)]);
    }

    #[test]
    fn read_completing_after_its_packet_was_dropped_gives_bytes_back() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let mut p = read_packet(8);
        let v = p.take_view().expect("view");
        v.set_cancel_handler(rec.clone(), 5).expect("register");
        drop(p); // asks to cancel; the backend's cancellation then loses the race
        v.complete_from(b"late");
        assert_eq!(
            rec.0.lock().as_slice(),
            &[(5, Vec::new(), true), (5, b"late".to_vec(), false)],
            "cancel requested, then the late bytes handed back once"
        );
    }

    #[test]
    fn register_after_cancel_is_refused() {
        let mut p = read_packet(1);
        let v = p.take_view().expect("view");
        drop(p);
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        assert!(v
            .set_cancel_handler(rec.clone(), 1)
            .expect_err("cancelled")
            .is_cancelled());
        drop(v);
        assert!(rec.0.lock().is_empty());
    }

    fn state_addr<D: Direction, B: PacketBuf<D>>(p: &Packet<D, B>) -> usize {
        Arc::as_ptr(&*p.state) as usize
    }

    #[test]
    fn finished_state_is_reused_by_the_next_packet_of_its_type_only() {
        let mut first = read_packet(4);
        first.take_view().expect("view").complete_from(b"abcd");
        let addr = state_addr(&first);
        assert_eq!(first.try_take().expect("done").1, b"abcd");
        drop(first);
        // Another buffer type does not take it (and does not disturb it).
        let other: Packet<Write, bytes::Bytes> = Packet::new(bytes::Bytes::from_static(b"xy"));
        assert_ne!(state_addr(&other), addr);
        drop(other);
        let mut second = read_packet(8);
        assert_eq!(state_addr(&second), addr, "the spare state was reused");
        // Reused, it starts afresh: length, pending view, no error, no bytes.
        assert_eq!(second.len(), 8);
        assert!(!second.is_complete());
        second.take_view().expect("view").complete_from(b"12");
        let (out, buf) = second.try_take().expect("done");
        assert_eq!(
            (out.transferred(), out.error().is_none(), buf.as_slice()),
            (2, true, &b"12"[..])
        );
    }

    #[test]
    fn state_still_held_by_a_view_is_never_reused() {
        let mut p = read_packet(4);
        let v = p.take_view().expect("view");
        let addr = state_addr(&p);
        drop(p); // in flight: the view keeps the state
        let mut q = read_packet(4);
        assert_ne!(state_addr(&q), addr);
        v.complete_from(b"late");
        q.take_view().expect("view").complete_from(b"ok");
        assert_eq!(q.try_take().expect("done").1, b"ok");
    }

    #[test]
    fn a_spare_state_keeps_no_waker_handler_or_buffer_alive() {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let data = Arc::new([7u8; 3]);
        let mut p: Packet<Write, ArcBytes> = Packet::new(ArcBytes(data.clone()));
        let v = p.take_view().expect("view");
        v.set_cancel_handler(rec.clone(), 1).expect("register");
        assert!(p.poll_complete(&mut cx).is_pending());
        v.complete(3);
        drop(waker);
        drop(p); // completed, never claimed: recycled with its buffer inside
        assert_eq!(Arc::strong_count(&flag), 1, "the waker was let go");
        assert_eq!(Arc::strong_count(&rec), 1, "the cancel handler was let go");
        assert_eq!(Arc::strong_count(&data), 1, "the buffer was dropped");
    }

    /// A buffer that shares its bytes, so the test can see when it is dropped.
    struct ArcBytes(Arc<[u8; 3]>);
    // SAFETY: the bytes live in the `Arc`'s allocation, initialised and never moved or mutated.
    unsafe impl IoBuf for ArcBytes {
        fn as_buf_ptr(&self) -> *const u8 {
            self.0.as_ptr()
        }
        fn buf_len(&self) -> usize {
            3
        }
    }

    #[test]
    fn write_view_sees_bytes() {
        let mut p: Packet<Write, _> = Packet::new(b"payload".to_vec());
        let v = p.take_view().expect("view");
        let (a, b) = v.split_at(3);
        assert_eq!((a.as_slice(), b.as_slice()), (&b"pay"[..], &b"load"[..]));
        a.complete(3);
        b.complete(2);
        let (out, buf) = p.try_take().expect("done");
        assert_eq!((out.transferred(), buf.as_slice()), (5, &b"payload"[..]));
        assert_eq!(
            out.exact().expect_err("short").kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }
}
