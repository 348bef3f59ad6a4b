//! A Rust closure as an MPI reduction operation.
//!
//! MPI calls a user function with the two buffers, a length and the
//! datatype — nothing else. So each call of a custom reduction gets a
//! copy of its element datatype carrying the closure as an attribute, and
//! one generic trampoline finds the closure through it. A panic in the
//! closure is caught (unwinding into MPI would abort) and fails the
//! collective.

use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use mfio_core::{Error, Result};

use super::backend::{mpi_error, Handle, State};
use super::sys::{self, Datatype, Op};
use crate::element::Element;
use crate::reduce::CombineFn;

/// The type keyval the closures hang on, made on first use (`-1`: none).
static KEYVAL: AtomicI32 = AtomicI32::new(-1);

fn keyval() -> Result<c_int> {
    let k = KEYVAL.load(Ordering::Acquire);
    if k >= 0 {
        return Ok(k);
    }
    // SAFETY: called with the backend state held, on a thread that may
    // call MPI.
    let k = unsafe { sys::type_keyval() }.map_err(|c| mpi_error(c, "MPI_Type_create_keyval"))?;
    KEYVAL.store(k, Ordering::Release);
    Ok(k)
}

/// Frees the keyval (at finalisation; no custom reduction runs any more).
pub(crate) fn release_keyval() {
    let k = KEYVAL.swap(-1, Ordering::AcqRel);
    if k >= 0 {
        // SAFETY: made by `keyval`; nothing uses it now.
        unsafe { sys::type_free_keyval(k) };
    }
}

struct Closure<T> {
    combine: Arc<CombineFn<T>>,
    panicked: Arc<AtomicBool>,
}

/// MPI's entry into a custom reduction of `T`.
unsafe extern "C" fn trampoline<T: Element>(
    incoming: *mut c_void,
    acc: *mut c_void,
    len: *mut c_int,
    ty: *mut Datatype,
) {
    let k = KEYVAL.load(Ordering::Acquire);
    // SAFETY: MPI passes the datatype of the call, a live copy carrying
    // the closure (made in `custom`).
    let Some(attr) = (unsafe { sys::type_attr(*ty, k) }) else {
        return;
    };
    // SAFETY: the attribute is the `Closure<T>` boxed in `custom`, alive
    // until the operation's requests finish.
    let closure = unsafe { &*attr.cast::<Closure<T>>() };
    // SAFETY: MPI passes a valid length.
    let n = usize::try_from(unsafe { *len }).unwrap_or(0);
    let bytes = n * std::mem::size_of::<T>();
    // SAFETY: MPI passes two buffers of `n` elements of the datatype, one
    // `T` each; they do not overlap.
    let (inc, out) = unsafe {
        (
            std::slice::from_raw_parts(incoming.cast::<u8>(), bytes),
            std::slice::from_raw_parts_mut(acc.cast::<u8>(), bytes),
        )
    };
    let run = || match (
        bytemuck::try_cast_slice::<u8, T>(inc),
        bytemuck::try_cast_slice_mut::<u8, T>(out),
    ) {
        (Ok(inc), Ok(out)) => (closure.combine)(inc, out),
        // MPI's temporary buffers need not be aligned for T: work on
        // aligned copies.
        _ => {
            let mut inc_copy = vec![T::zeroed(); n];
            bytemuck::cast_slice_mut::<T, u8>(&mut inc_copy).copy_from_slice(inc);
            let mut acc = vec![T::zeroed(); n];
            bytemuck::cast_slice_mut::<T, u8>(&mut acc).copy_from_slice(out);
            let inc = inc_copy;
            (closure.combine)(&inc, &mut acc);
            out.copy_from_slice(bytemuck::cast_slice(&acc));
        }
    };
    if catch_unwind(AssertUnwindSafe(run)).is_err() {
        closure.panicked.store(true, Ordering::Release);
    }
}

/// What a call needs for a custom reduction: the datatype to pass (a copy
/// of `T`'s, carrying the closure), the operation, the handles to free when
/// the call finishes, and the flag a panic sets.
pub(crate) struct Custom {
    pub(crate) ty: Datatype,
    pub(crate) op: Op,
    pub(crate) handles: Vec<Handle>,
    pub(crate) panicked: Arc<AtomicBool>,
}

/// Prepares a custom reduction of `T` by `combine`.
pub(crate) fn custom<T: Element>(st: &mut State, combine: &Arc<CombineFn<T>>, commutative: bool) -> Result<Custom> {
    let base = super::datatype::whole::<T>(st)?;
    let keyval = keyval()?;
    let panicked = Arc::new(AtomicBool::new(false));
    let closure = Box::new(Closure {
        combine: combine.clone(),
        panicked: panicked.clone(),
    });
    let attr = std::ptr::addr_of!(*closure).cast_mut().cast::<c_void>();
    // SAFETY: `base` and the keyval are live; the closure stays boxed in
    // the handles until both results are freed; the state is held.
    let (ty, op) = unsafe { sys::user_op(base, keyval, attr, trampoline::<T>, commutative) }
        .map_err(|c| mpi_error(c, "MPI_Op_create"))?;
    Ok(Custom {
        ty,
        op,
        // Freed in this order: the operation, the type, then the closure.
        handles: vec![Handle::Op(op), Handle::Type(ty), Handle::Held(closure)],
        panicked,
    })
}

/// The error of a collective whose custom reduction panicked.
pub(crate) fn panicked() -> Error {
    Error::new(std::io::ErrorKind::Other, "the custom reduction panicked")
}
