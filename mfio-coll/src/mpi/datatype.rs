//! Element types as MPI datatypes: a primitive (or an array of one) is its
//! predefined type, counted per primitive; anything else is a derived
//! struct type, made once per Rust type and kept until the backend goes.

use std::any::TypeId;
use std::ffi::c_int;

use mfio_core::Result;

use super::backend::{mpi_error, Handle, State};
use super::sys::{self, Datatype};
use crate::check::invalid;
use crate::element::{Element, Layout, Primitive};

/// The datatype of a primitive.
#[inline]
pub(crate) fn primitive(p: Primitive) -> Datatype {
    sys::builtin(p)
}

/// Runs `f` on `T`'s layout. A primitive's (the common case) is then
/// forgotten rather than dropped: it owns nothing, and the drop glue of
/// `Layout` is an out-of-line call (the type is recursive), which a short
/// collective would pay at every check.
#[inline]
pub(crate) fn with_layout<T: Element, R>(f: impl FnOnce(&Layout) -> R) -> R {
    let layout = T::layout();
    let out = f(&layout);
    if matches!(layout, Layout::Primitive(_)) {
        std::mem::forget(layout);
    }
    out
}

/// How MPI sees elements of `T`: a datatype and how many of it make one
/// element. Homogeneous elements use their primitive (so the predefined
/// reductions apply); others a derived type (one per element).
pub(crate) fn flat<T: Element>(st: &mut State) -> Result<(Datatype, usize)> {
    match with_layout::<T, _>(Layout::homogeneous) {
        Some((p, n)) if n > 0 => Ok((primitive(p), n)),
        _ => Ok((whole::<T>(st)?, 1)),
    }
}

/// `elems` elements of `T` as a count of a predefined type, where they are
/// one (homogeneous elements of at most `max` items): what a collective of
/// one MPI call needs, found without the backend's state.
#[inline]
pub(crate) fn predefined<T: Element>(elems: usize, max: usize) -> Option<(Datatype, c_int)> {
    let (p, per) = with_layout::<T, _>(Layout::homogeneous)?;
    let items = elems.checked_mul(per).filter(|&n| per > 0 && n <= max)?;
    Some((primitive(p), c_int::try_from(items).ok()?))
}

/// A datatype of exactly one `T` (a custom reduction sees whole elements).
pub(crate) fn whole<T: Element>(st: &mut State) -> Result<Datatype> {
    let layout = T::layout();
    if let Layout::Primitive(p) = layout {
        return Ok(primitive(p));
    }
    if let Some(&ty) = st.types.get(&TypeId::of::<T>()) {
        return Ok(ty);
    }
    layout.validate()?;
    if layout.size() != std::mem::size_of::<T>() {
        return Err(invalid(format!(
            "element layout of {} describes {} bytes, but the type has {}",
            std::any::type_name::<T>(),
            layout.size(),
            std::mem::size_of::<T>()
        )));
    }
    let (ty, _) = derive(&layout)?;
    st.types.insert(TypeId::of::<T>(), ty);
    Ok(ty)
}

/// A datatype for `layout`, and whether it was derived here (and must be
/// freed) rather than predefined.
fn derive(layout: &Layout) -> Result<(Datatype, bool)> {
    let parts: Vec<(usize, usize, &Layout)> = match layout {
        Layout::Primitive(p) => return Ok((primitive(*p), false)),
        Layout::Array(inner, n) => vec![(0, *n, &**inner)],
        Layout::Struct { fields, .. } => fields.iter().map(|(off, l)| (*off, 1, l)).collect(),
    };
    let mut fields = Vec::with_capacity(parts.len());
    let mut made = Vec::new();
    let mut result = Ok(());
    for (offset, n, inner) in parts {
        match derive(inner) {
            Ok((ty, derived)) => {
                if derived {
                    made.push(ty);
                }
                match c_int::try_from(n) {
                    Ok(n) => fields.push((offset, n, ty)),
                    Err(_) => {
                        result = Err(invalid("element layout too large for MPI"));
                        break;
                    }
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let out = result.and_then(|()| {
        // SAFETY: the field types are live (made above or predefined); the
        // caller holds the backend state.
        unsafe { sys::type_struct(&fields, layout.size()) }.map_err(|c| mpi_error(c, "MPI_Type_create_struct"))
    });
    for ty in made {
        // SAFETY: made above; the struct type keeps what it needs.
        unsafe { sys::type_free(ty) };
    }
    out.map(|ty| (ty, true))
}

/// `elems` elements of `T` as MPI sees them in one call: a datatype and a
/// count, and the handle to free afterwards if the datatype was made for
/// the call.
pub(crate) struct Block {
    pub(crate) ty: Datatype,
    pub(crate) count: c_int,
    pub(crate) made: Option<Handle>,
}

/// `elems` elements of `T` as one MPI block. Beyond `max` items (MPI's
/// `i32` count, or a smaller test limit) they become one element of a type
/// made for the call — `max`-item chunks and the rest — so counts of any
/// size fit where a collective takes one count per rank.
pub(crate) fn block<T: Element>(st: &mut State, what: &str, elems: usize, max: usize) -> Result<Block> {
    let (base, per) = flat::<T>(st)?;
    let items = elems
        .checked_mul(per)
        .ok_or_else(|| invalid(format!("{what}: {elems} elements overflow")))?;
    if items <= max {
        return Ok(Block {
            ty: base,
            count: c_int::try_from(items).map_err(|_| invalid(format!("{what}: too many elements")))?,
            made: None,
        });
    }
    let item_bytes = std::mem::size_of::<T>() / per.max(1);
    let (chunks, rest) = (items / max, items % max);
    let as_int = |n: usize| c_int::try_from(n).map_err(|_| invalid(format!("{what}: too many elements")));
    let max_c = as_int(max)?;
    // SAFETY: `base` is live; the caller holds the backend state.
    let chunk = unsafe { sys::type_contiguous(max_c, base) }.map_err(|c| mpi_error(c, "MPI_Type_contiguous"))?;
    let mut fields = vec![(0usize, as_int(chunks), chunk)];
    if rest > 0 {
        fields.push((chunks * max * item_bytes, as_int(rest), base));
    }
    let fields: Result<Vec<_>> = fields.into_iter().map(|(o, n, t)| n.map(|n| (o, n, t))).collect();
    let big = fields.and_then(|f| {
        // SAFETY: the field types are live; the state is held.
        unsafe { sys::type_struct(&f, items * item_bytes) }.map_err(|c| mpi_error(c, "MPI_Type_create_struct"))
    });
    // SAFETY: made above; the struct type keeps what it needs.
    unsafe { sys::type_free(chunk) };
    let big = big?;
    Ok(Block {
        ty: big,
        count: 1,
        made: Some(Handle::Type(big)),
    })
}
