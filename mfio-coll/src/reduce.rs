//! [`ReduceOp`]: how a reduction combines values — the predefined
//! operations, or a Rust closure.

use std::fmt;
use std::sync::Arc;

use crate::element::{Element, Layout};

/// The closure of a [`ReduceOp::Custom`]: `acc[i] = incoming[i] ∘ acc[i]`,
/// where `incoming` comes from lower ranks than `acc` when the operation
/// is not commutative.
pub type CombineFn<T> = dyn Fn(&[T], &mut [T]) + Send + Sync;

/// How a reduction combines the values of the ranks.
pub enum ReduceOp<T> {
    /// Sum (integers wrap, as in C; 8- and 16-bit sums run in Rust on the
    /// MPI backend, because Open MPI 4.1's vectorised ones saturate).
    Sum,
    /// Product.
    Prod,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Bitwise and (integers only).
    BitAnd,
    /// Bitwise or (integers only).
    BitOr,
    /// Bitwise exclusive or (integers only).
    BitXor,
    /// Logical and: non-zero is true, the result is 0 or 1 (integers only).
    LogicalAnd,
    /// Logical or (integers only).
    LogicalOr,
    /// Logical exclusive or (integers only).
    LogicalXor,
    /// A Rust closure; see [`ReduceOp::custom`].
    Custom {
        /// The combining function.
        combine: Arc<CombineFn<T>>,
        /// Whether the order of the operands may change.
        commutative: bool,
    },
}

impl<T> Clone for ReduceOp<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Sum => Self::Sum,
            Self::Prod => Self::Prod,
            Self::Min => Self::Min,
            Self::Max => Self::Max,
            Self::BitAnd => Self::BitAnd,
            Self::BitOr => Self::BitOr,
            Self::BitXor => Self::BitXor,
            Self::LogicalAnd => Self::LogicalAnd,
            Self::LogicalOr => Self::LogicalOr,
            Self::LogicalXor => Self::LogicalXor,
            Self::Custom { combine, commutative } => Self::Custom {
                combine: combine.clone(),
                commutative: *commutative,
            },
        }
    }
}

impl<T> fmt::Debug for ReduceOp<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Custom { commutative, .. } => f
                .debug_struct("Custom")
                .field("commutative", commutative)
                .finish_non_exhaustive(),
            other => f.write_str(other.name()),
        }
    }
}

impl<T: Element> ReduceOp<T> {
    /// A reduction by `combine`, which sets `acc[i] = incoming[i] ∘ acc[i]`
    /// for every `i`. A non-commutative operation must be associative;
    /// `incoming` then holds the values of the lower ranks.
    ///
    /// ```
    /// use mfio_coll::ReduceOp;
    /// // keep the larger magnitude, sign included
    /// let op = ReduceOp::<f64>::custom(true, |incoming, acc| {
    ///     for (a, x) in acc.iter_mut().zip(incoming) {
    ///         if x.abs() > a.abs() {
    ///             *a = *x;
    ///         }
    ///     }
    /// });
    /// let mut acc = [1.0, -4.0];
    /// op.apply(&[-3.0, 2.0], &mut acc);
    /// assert_eq!(acc, [-3.0, -4.0]);
    /// ```
    pub fn custom(commutative: bool, combine: impl Fn(&[T], &mut [T]) + Send + Sync + 'static) -> Self {
        Self::Custom {
            combine: Arc::new(combine),
            commutative,
        }
    }
}

impl<T> ReduceOp<T> {
    /// The operation's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Prod => "prod",
            Self::Min => "min",
            Self::Max => "max",
            Self::BitAnd => "bitwise and",
            Self::BitOr => "bitwise or",
            Self::BitXor => "bitwise xor",
            Self::LogicalAnd => "logical and",
            Self::LogicalOr => "logical or",
            Self::LogicalXor => "logical xor",
            Self::Custom { .. } => "custom",
        }
    }

    /// Whether the order of the operands may change.
    pub fn is_commutative(&self) -> bool {
        match self {
            Self::Custom { commutative, .. } => *commutative,
            _ => true,
        }
    }

    /// Whether the operation applies to elements of layout `layout`:
    /// custom operations to anything; arithmetic ones to primitives (and
    /// arrays of one primitive); bitwise and logical ones to integers.
    pub fn applies_to(&self, layout: &Layout) -> bool {
        match (self, layout.homogeneous()) {
            (Self::Custom { .. }, _) => true,
            (_, None) => false,
            (Self::Sum | Self::Prod | Self::Min | Self::Max, Some(_)) => true,
            (_, Some((p, _))) => !p.is_float(),
        }
    }
}

/// Arithmetic on primitive values, for [`ReduceOp::apply`].
trait Arith: Copy + PartialOrd {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn bits(self, o: Self, f: fn(u64, u64) -> u64) -> Self;
    fn truth(self) -> bool;
    fn from_truth(b: bool) -> Self;
}

macro_rules! arith_int {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]
            fn bits(self, o: Self, f: fn(u64, u64) -> u64) -> Self { f(self as u64, o as u64) as $t }
            fn truth(self) -> bool { self != 0 }
            fn from_truth(b: bool) -> Self { <$t>::from(b) }
        }
    )*};
}
arith_int!(i8, i16, i32, i64, u8, u16, u32, u64);

macro_rules! arith_float {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            fn add(self, o: Self) -> Self { self + o }
            fn mul(self, o: Self) -> Self { self * o }
            fn bits(self, _o: Self, _f: fn(u64, u64) -> u64) -> Self { self }
            fn truth(self) -> bool { self != 0.0 }
            fn from_truth(b: bool) -> Self { if b { 1.0 } else { 0.0 } }
        }
    )*};
}
arith_float!(f32, f64);

/// Where the operands of a predefined combination are.
#[derive(Clone, Copy)]
enum Operands<'a, P> {
    /// `acc[i] = other[i] ∘ acc[i]`.
    OtherFirst,
    /// `acc[i] = acc[i] ∘ other[i]`.
    AccFirst,
    /// `acc[i] = other[i] ∘ own[i]` (`acc`'s old values unread).
    OtherThen(&'a [P]),
}

impl<'a, T: bytemuck::NoUninit> Operands<'a, T> {
    /// The same placement over the elements' primitive `Q` (`own` recast).
    fn cast<Q: bytemuck::AnyBitPattern>(self) -> Operands<'a, Q> {
        match self {
            Self::OtherFirst => Operands::OtherFirst,
            Self::AccFirst => Operands::AccFirst,
            Self::OtherThen(own) => Operands::OtherThen(bytemuck::cast_slice(own)),
        }
    }
}

/// `acc[i]` from `other[i]` and the operand `how` says, for a predefined
/// operation. Each operation is one expression of the lower-ranked and the
/// higher-ranked operand, used by every placement, so a result does not
/// depend on where the operands were (floating point bit for bit, NaN
/// payloads included); and each gets a loop of its own, which the compiler
/// vectorizes.
fn combine_all<P: Arith>(op: &ReduceOp<impl Sized>, other: &[P], acc: &mut [P], how: Operands<'_, P>) {
    #[inline(always)]
    fn each<P: Copy>(other: &[P], acc: &mut [P], how: Operands<'_, P>, lower_higher: impl Fn(P, P) -> P) {
        match how {
            Operands::AccFirst => {
                for (a, &x) in acc.iter_mut().zip(other) {
                    *a = lower_higher(*a, x);
                }
            }
            Operands::OtherFirst => {
                for (a, &x) in acc.iter_mut().zip(other) {
                    *a = lower_higher(x, *a);
                }
            }
            Operands::OtherThen(own) => {
                for ((a, &x), &o) in acc.iter_mut().zip(other).zip(own) {
                    *a = lower_higher(x, o);
                }
            }
        }
    }
    match op {
        ReduceOp::Sum => each(other, acc, how, |l, h| l.add(h)),
        ReduceOp::Prod => each(other, acc, how, |l, h| l.mul(h)),
        // MPI's choice on ties and NaN: keep the lower-ranked value unless
        // the higher-ranked one is strictly smaller/larger.
        ReduceOp::Min => each(other, acc, how, |l, h| if h < l { h } else { l }),
        ReduceOp::Max => each(other, acc, how, |l, h| if h > l { h } else { l }),
        ReduceOp::BitAnd => each(other, acc, how, |l, h| l.bits(h, |p, q| p & q)),
        ReduceOp::BitOr => each(other, acc, how, |l, h| l.bits(h, |p, q| p | q)),
        ReduceOp::BitXor => each(other, acc, how, |l, h| l.bits(h, |p, q| p ^ q)),
        ReduceOp::LogicalAnd => each(other, acc, how, |l, h| P::from_truth(l.truth() && h.truth())),
        ReduceOp::LogicalOr => each(other, acc, how, |l, h| P::from_truth(l.truth() || h.truth())),
        ReduceOp::LogicalXor => each(other, acc, how, |l, h| P::from_truth(l.truth() != h.truth())),
        ReduceOp::Custom { .. } => {}
    }
}

impl<T: Element> ReduceOp<T> {
    /// Combines `incoming` into `acc` (`acc[i] = incoming[i] ∘ acc[i]`), the
    /// way a backend does: the sequential reference for tests, and the
    /// step of algorithms that reduce in Rust.
    ///
    /// # Panics
    /// If the slices differ in length, or the operation does not apply to
    /// `T` ([`applies_to`](Self::applies_to)); backends check both before
    /// they call it.
    pub fn apply(&self, incoming: &[T], acc: &mut [T]) {
        assert_eq!(incoming.len(), acc.len(), "reduction operands differ in length");
        if let Self::Custom { combine, .. } = self {
            combine(incoming, acc);
            return;
        }
        self.predefined(incoming, acc, Operands::OtherFirst);
    }

    /// Combines `incoming` with `own` into `out` (`out[i] = incoming[i] ∘
    /// own[i]`), each element computed exactly as [`apply`](Self::apply)
    /// computes it with `own` in the accumulator: the step of an algorithm
    /// whose own operand is still in the caller's send buffer, which saves
    /// copying it into `out` first.
    ///
    /// # Panics
    /// As [`apply`](Self::apply).
    pub(crate) fn apply_into(&self, incoming: &[T], own: &[T], out: &mut [T]) {
        assert!(
            incoming.len() == out.len() && own.len() == out.len(),
            "reduction operands differ in length"
        );
        if let Self::Custom { combine, .. } = self {
            out.copy_from_slice(own);
            combine(incoming, out);
            return;
        }
        self.predefined(incoming, out, Operands::OtherThen(own));
    }

    /// Combines `higher` into `acc` from the right (`acc[i] = acc[i] ∘
    /// higher[i]`), each element computed exactly as [`apply`](Self::apply)
    /// computes it with the operands' places swapped, so the result is the
    /// same bit for bit. This saves a copy where the accumulator holds the
    /// lower-ranked operand. `false`, and `acc` untouched, for a custom
    /// operation (its closure combines from the left only).
    ///
    /// # Panics
    /// As [`apply`](Self::apply).
    pub(crate) fn apply_from_right(&self, higher: &[T], acc: &mut [T]) -> bool {
        assert_eq!(higher.len(), acc.len(), "reduction operands differ in length");
        if let Self::Custom { .. } = self {
            return false;
        }
        self.predefined(higher, acc, Operands::AccFirst);
        true
    }

    /// A predefined operation over `other` and `acc` (and `own`), placed as
    /// `how` says.
    fn predefined(&self, other: &[T], acc: &mut [T], how: Operands<'_, T>) {
        let layout = T::layout();
        let Some((prim, _)) = layout.homogeneous().filter(|_| self.applies_to(&layout)) else {
            panic!("{} does not apply to {}", self.name(), std::any::type_name::<T>());
        };
        let inc: &[u8] = bytemuck::cast_slice(other);
        let acc: &mut [u8] = bytemuck::cast_slice_mut(acc);
        macro_rules! go {
            ($t:ty) => {{
                // Element types are Pod and their primitives aligned at
                // least as strictly as the primitive, so these casts hold.
                let inc: &[$t] = bytemuck::cast_slice(inc);
                let acc: &mut [$t] = bytemuck::cast_slice_mut(acc);
                combine_all(self, inc, acc, how.cast::<$t>())
            }};
        }
        use crate::element::Primitive as P;
        match prim {
            P::I8 => go!(i8),
            P::I16 => go!(i16),
            P::I32 => go!(i32),
            P::I64 => go!(i64),
            P::U8 => go!(u8),
            P::U16 => go!(u16),
            P::U32 => go!(u32),
            P::U64 => go!(u64),
            P::F32 => go!(f32),
            P::F64 => go!(f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predefined_operations_combine_elementwise() {
        let mut acc = [5u8, 0, 200];
        ReduceOp::Sum.apply(&[1, 2, 100], &mut acc);
        assert_eq!(acc, [6, 2, 44], "u8 sums wrap");
        let mut acc = [1.5f64, -2.0];
        ReduceOp::Max.apply(&[1.0, 3.0], &mut acc);
        assert_eq!(acc, [1.5, 3.0]);
        let mut acc = [0b1100u32, 7];
        ReduceOp::BitXor.apply(&[0b1010, 7], &mut acc);
        assert_eq!(acc, [0b0110, 0]);
        let mut acc = [[0i16, 3], [2, 0]];
        ReduceOp::LogicalOr.apply(&[[0, 0], [0, 9]], &mut acc);
        assert_eq!(acc, [[0, 1], [1, 1]]);
    }

    #[test]
    fn combining_into_another_buffer_is_bit_for_bit_combining_in_place() {
        let nan_a = f64::from_bits(0x7ff8_0000_0000_0001);
        let nan_b = f64::from_bits(0xfff8_0000_0000_0002);
        let incoming = [nan_b, -0.0, 0.0, nan_b, 2.0, 3.5, f64::NEG_INFINITY, 1e308];
        let own = [nan_a, 0.0, -0.0, 1.0, nan_a, 3.5, f64::INFINITY, 1e308];
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for op in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max] {
            let mut in_place = own;
            op.apply(&incoming, &mut in_place);
            let mut out = [7.0; 8];
            op.apply_into(&incoming, &own, &mut out);
            assert_eq!(bits(&out), bits(&in_place), "{}", op.name());
        }
        let (incoming, own) = ([3u16, 0, 0x0FF0, 0, 7], [0u16, 5, 0xF0F0, 0, 9]);
        for op in [
            ReduceOp::Sum,
            ReduceOp::BitAnd,
            ReduceOp::BitXor,
            ReduceOp::LogicalAnd,
            ReduceOp::LogicalXor,
            ReduceOp::Min,
        ] {
            let mut in_place = own;
            op.apply(&incoming, &mut in_place);
            let mut out = [0xAAAA; 5];
            op.apply_into(&incoming, &own, &mut out);
            assert_eq!(out, in_place, "{}", op.name());
        }
        // A custom operation, not commutative: `incoming` goes first.
        let compose = ReduceOp::custom(false, |incoming: &[[u64; 2]], acc: &mut [[u64; 2]]| {
            for (a, x) in acc.iter_mut().zip(incoming) {
                *a = [x[0].wrapping_mul(a[0]), a[0].wrapping_mul(x[1]).wrapping_add(a[1])];
            }
        });
        let (incoming, own) = ([[2u64, 3], [5, 7]], [[11u64, 13], [17, 19]]);
        let mut in_place = own;
        compose.apply(&incoming, &mut in_place);
        let mut out = [[0u64; 2]; 2];
        compose.apply_into(&incoming, &own, &mut out);
        assert_eq!(out, in_place);
        assert_eq!(out, [[22, 46], [85, 138]]);
    }

    #[test]
    fn combining_from_the_right_is_bit_for_bit_combining_from_the_left_swapped() {
        // Payload-carrying NaNs, signed zeros and ties: where the operands'
        // order could show.
        let nan_a = f64::from_bits(0x7ff8_0000_0000_0001);
        let nan_b = f64::from_bits(0xfff8_0000_0000_0002);
        let lower = [nan_a, 0.0, -0.0, 1.0, nan_a, 3.5, f64::INFINITY, 1e308];
        let higher = [nan_b, -0.0, 0.0, nan_b, 2.0, 3.5, f64::NEG_INFINITY, 1e308];
        let ops = [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max];
        for op in &ops {
            let mut from_left = higher;
            op.apply(&lower, &mut from_left);
            let mut from_right = lower;
            assert!(op.apply_from_right(&higher, &mut from_right));
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&from_right), bits(&from_left), "{}", op.name());
        }
        let lower = [0u16, 5, 0xF0F0, 0, 7];
        let higher = [3u16, 0, 0x0FF0, 0, 7];
        let ops = [
            ReduceOp::Sum,
            ReduceOp::Prod,
            ReduceOp::Min,
            ReduceOp::Max,
            ReduceOp::BitAnd,
            ReduceOp::BitOr,
            ReduceOp::BitXor,
            ReduceOp::LogicalAnd,
            ReduceOp::LogicalOr,
            ReduceOp::LogicalXor,
        ];
        for op in &ops {
            let mut from_left = higher;
            op.apply(&lower, &mut from_left);
            let mut from_right = lower;
            assert!(op.apply_from_right(&higher, &mut from_right));
            assert_eq!(from_right, from_left, "{}", op.name());
        }
        // Min keeps the lower-ranked operand on a tie: -0.0 and 0.0 compare
        // equal.
        let mut acc = [-0.0f64];
        assert!(ReduceOp::Min.apply_from_right(&[0.0], &mut acc));
        assert_eq!(acc[0].to_bits(), (-0.0f64).to_bits());
        let concat = ReduceOp::<u32>::custom(false, |inc, acc| {
            for (a, x) in acc.iter_mut().zip(inc) {
                *a += *x * 10;
            }
        });
        let mut acc = [1u32];
        assert!(
            !concat.apply_from_right(&[2], &mut acc),
            "a closure combines from the left only"
        );
        assert_eq!(acc, [1], "untouched");
    }

    #[test]
    fn bitwise_operations_do_not_apply_to_floats() {
        assert!(!ReduceOp::<f32>::BitAnd.applies_to(&f32::layout()));
        assert!(ReduceOp::<f32>::Min.applies_to(&f32::layout()));
        assert!(ReduceOp::<u8>::LogicalAnd.applies_to(&u8::layout()));
    }
}
