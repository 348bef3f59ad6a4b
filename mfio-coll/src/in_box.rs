//! [`in_box`]: a value made straight into its box.
//!
//! `Box::pin(make())` makes the value on the stack and then copies all of
//! it into the box. For a future that is every byte of its largest state,
//! though it starts with only its captures: a collective's future and its
//! receive's are hundreds of bytes, and their two copies were 8 % of an
//! 8-byte bcast receiver's instructions (BENCHMARKS.md). Allocated first,
//! the future is made in place: only the captures are written.

/// The value `make` makes, in a box allocated before it is made.
#[inline(always)]
pub(crate) fn in_box<T>(make: impl FnOnce() -> T) -> Box<T> {
    Box::write(Box::new_uninit(), make())
}
