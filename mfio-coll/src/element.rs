//! [`Element`]: the types collectives carry — every integer width, `f32`,
//! `f64`, arrays of them, and `#[repr(C)]` structs described with
//! [`element!`](crate::element!).

/// The primitive types a collective can reduce with the predefined
/// operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Primitive {
    /// `i8`
    I8,
    /// `i16`
    I16,
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `u8`
    U8,
    /// `u16`
    U16,
    /// `u32`
    U32,
    /// `u64`
    U64,
    /// `f32`
    F32,
    /// `f64`
    F64,
}

impl Primitive {
    /// Its size in bytes.
    pub fn size(self) -> usize {
        match self {
            Primitive::I8 | Primitive::U8 => 1,
            Primitive::I16 | Primitive::U16 => 2,
            Primitive::I32 | Primitive::U32 | Primitive::F32 => 4,
            Primitive::I64 | Primitive::U64 | Primitive::F64 => 8,
        }
    }

    /// True for `f32` and `f64`.
    pub fn is_float(self) -> bool {
        matches!(self, Primitive::F32 | Primitive::F64)
    }
}

/// How an [`Element`] is laid out in memory, so a backend can describe it
/// (MPI: a derived datatype) and check operations against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One primitive value.
    Primitive(Primitive),
    /// `len` values of the inner layout, back to back.
    Array(Box<Layout>, usize),
    /// A `#[repr(C)]` struct of `size` bytes: each field's offset and layout.
    Struct {
        /// `size_of` the struct.
        size: usize,
        /// `(offset, layout)` of each field.
        fields: Vec<(usize, Layout)>,
    },
}

impl Layout {
    /// The size in bytes of one value.
    pub fn size(&self) -> usize {
        match self {
            Layout::Primitive(p) => p.size(),
            Layout::Array(inner, len) => inner.size().saturating_mul(*len),
            Layout::Struct { size, .. } => *size,
        }
    }

    /// `Some((p, n))` if a value is exactly `n` primitives `p` back to
    /// back (a primitive, or arrays of one): the predefined reduction
    /// operations apply to it element-wise.
    #[inline]
    pub fn homogeneous(&self) -> Option<(Primitive, usize)> {
        // The primitive case inlines, so a collective of a primitive type
        // pays nothing for its layout.
        match self {
            Layout::Primitive(p) => Some((*p, 1)),
            _ => self.homogeneous_compound(),
        }
    }

    fn homogeneous_compound(&self) -> Option<(Primitive, usize)> {
        match self {
            Layout::Primitive(p) => Some((*p, 1)),
            Layout::Array(inner, len) => inner.homogeneous().map(|(p, n)| (p, n.saturating_mul(*len))),
            Layout::Struct { .. } => None,
        }
    }

    /// Checks that every field lies inside its struct, so a backend that
    /// follows the layout never reads or writes outside a value.
    ///
    /// # Errors
    /// `InvalidInput` naming the field that does not fit.
    pub fn validate(&self) -> mfio_core::Result<()> {
        if let Layout::Struct { size, fields } = self {
            for (i, (offset, layout)) in fields.iter().enumerate() {
                layout.validate()?;
                if offset.checked_add(layout.size()).is_none_or(|end| end > *size) {
                    return Err(crate::check::invalid(format!(
                        "element layout: field {i} (offset {offset}, {} bytes) lies outside the {size}-byte struct",
                        layout.size()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A type a collective can carry: plain old data (`bytemuck::Pod`) with a
/// [`Layout`] a backend can describe.
///
/// Implemented for every integer width, `f32`, `f64` and arrays of
/// elements; describe a `#[repr(C)]` struct with [`element!`](crate::element!).
/// A backend checks the layout ([`Layout::validate`]) before using it, so a
/// wrong layout is an error, never an access outside a value.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// The layout of one value.
    fn layout() -> Layout;
}

macro_rules! primitive {
    ($($t:ty => $p:ident),* $(,)?) => {$(
        impl Element for $t {
            #[inline]
            fn layout() -> Layout {
                Layout::Primitive(Primitive::$p)
            }
        }
    )*};
}

primitive!(
    i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    u8 => U8, u16 => U16, u32 => U32, u64 => U64,
    f32 => F32, f64 => F64,
);

impl<T: Element, const N: usize> Element for [T; N]
where
    [T; N]: bytemuck::Pod,
{
    fn layout() -> Layout {
        Layout::Array(Box::new(T::layout()), N)
    }
}

/// The layout of a field, found from an accessor (used by
/// [`element!`](crate::element!) to learn the field's type).
#[doc(hidden)]
pub fn field_layout<S, F: Element>(_access: fn(&S) -> &F) -> Layout {
    F::layout()
}

/// Makes a `#[repr(C)]`, `bytemuck::Pod` struct an [`Element`] by naming
/// its fields (or tuple indices); offsets and field types are taken from
/// the struct itself.
///
/// ```
/// use mfio_coll::{element, Element, Layout};
///
/// #[repr(C)]
/// #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
/// struct Particle {
///     position: [f64; 3],
///     id: u64,
/// }
/// element!(Particle { position, id });
///
/// assert_eq!(Particle::layout().size(), 32);
/// assert!(Particle::layout().homogeneous().is_none());
/// ```
#[macro_export]
macro_rules! element {
    ($ty:ty { $($field:tt),+ $(,)? }) => {
        impl $crate::Element for $ty {
            fn layout() -> $crate::Layout {
                $crate::Layout::Struct {
                    size: ::core::mem::size_of::<$ty>(),
                    fields: ::std::vec![$(
                        (
                            ::core::mem::offset_of!($ty, $field),
                            $crate::element::field_layout::<$ty, _>(|v| &v.$field),
                        )
                    ),+],
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Pair {
        a: f64,
        b: [u32; 2],
    }
    crate::element!(Pair { a, b });

    #[test]
    fn layouts_of_primitives_arrays_and_structs() {
        assert_eq!(u16::layout(), Layout::Primitive(Primitive::U16));
        assert_eq!(<[f32; 4]>::layout().homogeneous(), Some((Primitive::F32, 4)));
        let pair = Pair::layout();
        assert_eq!(pair.size(), 16);
        assert_eq!(pair.homogeneous(), None);
        assert!(pair.validate().is_ok());
        let Layout::Struct { fields, .. } = pair else {
            panic!("a struct layout")
        };
        assert_eq!(fields[1].0, 8);
        assert_eq!(fields[1].1.homogeneous(), Some((Primitive::U32, 2)));
    }

    #[test]
    fn a_field_outside_its_struct_is_refused() {
        let bad = Layout::Struct {
            size: 8,
            fields: vec![(4, Layout::Primitive(Primitive::U64))],
        };
        let err = bad.validate().expect_err("outside");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("field 0"), "{err}");
    }
}
