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

fn combine_all<P: Arith>(op: &ReduceOp<impl Sized>, incoming: &[P], acc: &mut [P]) {
    for (a, &x) in acc.iter_mut().zip(incoming) {
        *a = match op {
            ReduceOp::Sum => x.add(*a),
            ReduceOp::Prod => x.mul(*a),
            // MPI's choice on ties and NaN: keep the incoming value unless
            // the accumulated one is strictly smaller/larger.
            ReduceOp::Min => {
                if *a < x {
                    *a
                } else {
                    x
                }
            }
            ReduceOp::Max => {
                if *a > x {
                    *a
                } else {
                    x
                }
            }
            ReduceOp::BitAnd => x.bits(*a, |p, q| p & q),
            ReduceOp::BitOr => x.bits(*a, |p, q| p | q),
            ReduceOp::BitXor => x.bits(*a, |p, q| p ^ q),
            ReduceOp::LogicalAnd => P::from_truth(x.truth() && a.truth()),
            ReduceOp::LogicalOr => P::from_truth(x.truth() || a.truth()),
            ReduceOp::LogicalXor => P::from_truth(x.truth() != a.truth()),
            ReduceOp::Custom { .. } => *a,
        };
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
        let layout = T::layout();
        let Some((prim, _)) = layout.homogeneous().filter(|_| self.applies_to(&layout)) else {
            panic!("{} does not apply to {}", self.name(), std::any::type_name::<T>());
        };
        let inc: &[u8] = bytemuck::cast_slice(incoming);
        let acc: &mut [u8] = bytemuck::cast_slice_mut(acc);
        macro_rules! go {
            ($t:ty) => {{
                // Element types are Pod and their primitives aligned at
                // least as strictly as the primitive, so these casts hold.
                let inc: &[$t] = bytemuck::cast_slice(inc);
                let acc: &mut [$t] = bytemuck::cast_slice_mut(acc);
                combine_all(self, inc, acc)
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
    fn bitwise_operations_do_not_apply_to_floats() {
        assert!(!ReduceOp::<f32>::BitAnd.applies_to(&f32::layout()));
        assert!(ReduceOp::<f32>::Min.applies_to(&f32::layout()));
        assert!(ReduceOp::<u8>::LogicalAnd.applies_to(&u8::layout()));
    }
}
