//! The only module that names MPI's C symbols (through `mpi-sys` and the
//! shim compiled by `build.rs`). Each call is wrapped once here: return
//! codes become `Result<_, Code>`, and every collective is declared once, as
//! a [`Call`], with its non-blocking and its blocking form side by side.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::mem::MaybeUninit;

use mpi_sys as ffi;

use crate::element::Primitive;
use crate::reduce::ReduceOp;

pub(crate) use ffi::{MPI_Comm as Comm, MPI_Datatype as Datatype, MPI_Op as Op, MPI_Request as Request};

/// An MPI status (source, tag, error, and the received length).
pub(crate) type Status = ffi::MPI_Status;

/// An MPI error code as an MPI call returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code(pub(crate) c_int);

unsafe extern "C" {
    static mfio_mpi_in_place: *mut c_void;
    static mfio_mpi_header_impl: [c_char; 0];
    static mfio_mpi_err_in_status: c_int;
    static mfio_mpi_err_pending: c_int;
    static mfio_mpi_err_truncate: c_int;
    static mfio_mpi_err_rank: c_int;
    static mfio_mpi_err_tag: c_int;
    static mfio_mpi_err_count: c_int;
    static mfio_mpi_err_buffer: c_int;
    static mfio_mpi_err_type: c_int;
    static mfio_mpi_err_op: c_int;
    static mfio_mpi_err_comm: c_int;
    static mfio_mpi_err_arg: c_int;
    static mfio_mpi_tag_ub_keyval: c_int;
    static mfio_mpi_keyval_invalid: c_int;
    fn mfio_mpi_type_keyval(keyval: *mut c_int) -> c_int;
    static mfio_mpi_op_null: Op;
}

/// Error classes mfio maps to its own error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Truncate,
    InvalidArgument,
    InStatus,
    Pending,
    Other,
}

/// `MPI_IN_PLACE` of the implementation the shim was compiled against.
pub(crate) fn in_place() -> *mut c_void {
    // SAFETY: a constant defined by the shim.
    unsafe { mfio_mpi_in_place }
}

/// The implementation named by the header the shim was compiled against
/// ("Open MPI", "MPICH", or empty).
pub(crate) fn header_implementation() -> &'static str {
    // SAFETY: the shim defines a NUL-terminated constant string.
    let name = unsafe { CStr::from_ptr(std::ptr::addr_of!(mfio_mpi_header_impl).cast()) };
    name.to_str().unwrap_or("")
}

/// `MPI_SUCCESS`, which the standard fixes at 0 (the shim asserts it at
/// build time): a constant, not a load of the shim's, on every call's path.
const SUCCESS: c_int = 0;

#[inline]
fn check(rc: c_int) -> Result<(), Code> {
    if rc == SUCCESS {
        Ok(())
    } else {
        Err(Code(rc))
    }
}

/// The class of an error code.
pub(crate) fn class(code: Code) -> Class {
    let mut class: c_int = 0;
    // SAFETY: MPI_Error_class may be called at any time, also before init.
    if unsafe { ffi::MPI_Error_class(code.0, &mut class) } != 0 {
        return Class::Other;
    }
    // SAFETY: constants defined by the shim.
    unsafe {
        if class == mfio_mpi_err_truncate {
            Class::Truncate
        } else if class == mfio_mpi_err_in_status {
            Class::InStatus
        } else if class == mfio_mpi_err_pending {
            Class::Pending
        } else if [
            mfio_mpi_err_rank,
            mfio_mpi_err_tag,
            mfio_mpi_err_count,
            mfio_mpi_err_buffer,
            mfio_mpi_err_type,
            mfio_mpi_err_op,
            mfio_mpi_err_comm,
            mfio_mpi_err_arg,
        ]
        .contains(&class)
        {
            Class::InvalidArgument
        } else {
            Class::Other
        }
    }
}

/// MPI's text for an error code.
pub(crate) fn error_string(code: Code) -> String {
    let mut buf = vec![0u8; 1024];
    let mut len: c_int = 0;
    // SAFETY: the buffer holds MPI_MAX_ERROR_STRING (256 in both
    // implementations) and more; MPI_Error_string may be called any time.
    if unsafe { ffi::MPI_Error_string(code.0, buf.as_mut_ptr().cast(), &mut len) } != 0 {
        return format!("MPI error {}", code.0);
    }
    buf.truncate(usize::try_from(len).unwrap_or(0).min(1024));
    String::from_utf8_lossy(&buf).trim_end_matches('\0').to_owned()
}

/// `MPI_Initialized` and `MPI_Finalized`.
pub(crate) fn init_state() -> (bool, bool) {
    let (mut init, mut fini) = (0, 0);
    // SAFETY: both may be called at any time.
    unsafe {
        ffi::MPI_Initialized(&mut init);
        ffi::MPI_Finalized(&mut fini);
    }
    (init != 0, fini != 0)
}

/// The thread levels, as MPI numbers them.
pub(crate) fn thread_levels() -> [c_int; 4] {
    // SAFETY: constants defined by mpi-sys's shim.
    unsafe {
        [
            ffi::RSMPI_THREAD_SINGLE,
            ffi::RSMPI_THREAD_FUNNELED,
            ffi::RSMPI_THREAD_SERIALIZED,
            ffi::RSMPI_THREAD_MULTIPLE,
        ]
    }
}

/// `MPI_Init_thread`; returns the level provided.
///
/// # Safety
/// MPI is neither initialised nor finalised, and no other thread calls it.
pub(crate) unsafe fn init_thread(required: c_int) -> Result<c_int, Code> {
    let mut provided = 0;
    // SAFETY: null argc/argv are allowed; the caller upholds the rest.
    check(unsafe { ffi::MPI_Init_thread(std::ptr::null_mut(), std::ptr::null_mut(), required, &mut provided) })?;
    Ok(provided)
}

/// `MPI_Query_thread`.
pub(crate) fn query_thread() -> Result<c_int, Code> {
    let mut provided = 0;
    // SAFETY: may be called from any thread once MPI is initialised (the
    // caller checked).
    check(unsafe { ffi::MPI_Query_thread(&mut provided) })?;
    Ok(provided)
}

/// `MPI_Finalize`.
///
/// # Safety
/// Called once, on a thread allowed to call MPI, after every mfio handle
/// into MPI is gone.
pub(crate) unsafe fn finalize() -> Result<(), Code> {
    // SAFETY: upheld by the caller.
    check(unsafe { ffi::MPI_Finalize() })
}

/// `MPI_Get_library_version`.
pub(crate) fn library_version() -> String {
    let mut buf = vec![0u8; 8192];
    let mut len: c_int = 0;
    // SAFETY: the buffer is larger than MPI_MAX_LIBRARY_VERSION_STRING in
    // both implementations (256 in Open MPI, 8192 in MPICH); the call may
    // be made before init.
    if unsafe { ffi::MPI_Get_library_version(buf.as_mut_ptr().cast(), &mut len) } != 0 {
        return String::new();
    }
    buf.truncate(usize::try_from(len).unwrap_or(0).min(8192));
    String::from_utf8_lossy(&buf).trim_end_matches('\0').to_owned()
}

/// The world communicator.
pub(crate) fn comm_world() -> Comm {
    // SAFETY: a constant of mpi-sys's shim.
    unsafe { ffi::RSMPI_COMM_WORLD }
}

/// `MPI_ANY_SOURCE`, `MPI_ANY_TAG` and `MPI_UNDEFINED`.
pub(crate) fn wildcards() -> (c_int, c_int, c_int) {
    // SAFETY: constants of mpi-sys's shim.
    unsafe { (ffi::RSMPI_ANY_SOURCE, ffi::RSMPI_ANY_TAG, ffi::RSMPI_UNDEFINED) }
}

/// `MPI_Comm_dup`, then `MPI_ERRORS_RETURN` on the copy.
///
/// # Safety
/// `comm` is live; the thread may call MPI.
pub(crate) unsafe fn comm_dup(comm: Comm) -> Result<Comm, Code> {
    let mut out = MaybeUninit::uninit();
    // SAFETY: upheld by the caller.
    check(unsafe { ffi::MPI_Comm_dup(comm, out.as_mut_ptr()) })?;
    // SAFETY: written by the successful call.
    let out = unsafe { out.assume_init() };
    // SAFETY: `out` is a live communicator.
    unsafe { errors_return(out) }?;
    Ok(out)
}

/// `MPI_Comm_split` with `MPI_ERRORS_RETURN` on the result; `None` for a
/// rank that passed `MPI_UNDEFINED`.
///
/// # Safety
/// `comm` is live; the thread may call MPI.
pub(crate) unsafe fn comm_split(comm: Comm, color: c_int, key: c_int) -> Result<Option<Comm>, Code> {
    let mut out = MaybeUninit::uninit();
    // SAFETY: upheld by the caller.
    check(unsafe { ffi::MPI_Comm_split(comm, color, key, out.as_mut_ptr()) })?;
    // SAFETY: written by the successful call.
    let out = unsafe { out.assume_init() };
    // SAFETY: a constant of mpi-sys's shim.
    if out == unsafe { ffi::RSMPI_COMM_NULL } {
        return Ok(None);
    }
    // SAFETY: `out` is a live communicator.
    unsafe { errors_return(out) }?;
    Ok(Some(out))
}

/// `MPI_ERRORS_RETURN` on `MPI_COMM_WORLD` and `MPI_COMM_SELF`, where MPI
/// reports errors not tied to a communicator (datatypes, operations,
/// keyvals).
///
/// # Safety
/// MPI is initialised; the thread may call MPI.
pub(crate) unsafe fn errors_return_predefined() -> Result<(), Code> {
    // SAFETY: upheld by the caller; the communicators are predefined.
    unsafe {
        errors_return(ffi::RSMPI_COMM_WORLD)?;
        errors_return(ffi::RSMPI_COMM_SELF)
    }
}

/// `MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN)`.
///
/// # Safety
/// `comm` is live; the thread may call MPI.
pub(crate) unsafe fn errors_return(comm: Comm) -> Result<(), Code> {
    // SAFETY: upheld by the caller; the handler is a constant.
    check(unsafe { ffi::MPI_Comm_set_errhandler(comm, ffi::RSMPI_ERRORS_RETURN) })
}

/// `MPI_Comm_free`.
///
/// # Safety
/// `comm` is live and not used again; the thread may call MPI.
pub(crate) unsafe fn comm_free(mut comm: Comm) -> Result<(), Code> {
    // SAFETY: upheld by the caller.
    check(unsafe { ffi::MPI_Comm_free(&mut comm) })
}

/// `MPI_Comm_rank` and `MPI_Comm_size`.
///
/// # Safety
/// `comm` is live; the thread may call MPI.
pub(crate) unsafe fn comm_rank_size(comm: Comm) -> Result<(c_int, c_int), Code> {
    let (mut rank, mut size) = (0, 0);
    // SAFETY: upheld by the caller.
    unsafe {
        check(ffi::MPI_Comm_rank(comm, &mut rank))?;
        check(ffi::MPI_Comm_size(comm, &mut size))?;
    }
    Ok((rank, size))
}

/// The largest tag `comm` takes (`MPI_TAG_UB`).
///
/// # Safety
/// `comm` is live; the thread may call MPI.
pub(crate) unsafe fn tag_ub(comm: Comm) -> Result<c_int, Code> {
    let mut value: *mut c_int = std::ptr::null_mut();
    let mut flag = 0;
    // SAFETY: upheld by the caller; for a predefined attribute MPI stores
    // a pointer to the int in `value`.
    check(unsafe {
        ffi::MPI_Comm_get_attr(
            comm,
            mfio_mpi_tag_ub_keyval,
            std::ptr::addr_of_mut!(value).cast(),
            &mut flag,
        )
    })?;
    if flag == 0 || value.is_null() {
        // The standard guarantees at least this much.
        return Ok(32767);
    }
    // SAFETY: MPI returned a valid pointer to the attribute's value.
    Ok(unsafe { *value })
}

/// The predefined datatype of a primitive.
#[inline]
pub(crate) fn builtin(p: Primitive) -> Datatype {
    // SAFETY: constants of mpi-sys's shim.
    unsafe {
        match p {
            Primitive::I8 => ffi::RSMPI_INT8_T,
            Primitive::I16 => ffi::RSMPI_INT16_T,
            Primitive::I32 => ffi::RSMPI_INT32_T,
            Primitive::I64 => ffi::RSMPI_INT64_T,
            Primitive::U8 => ffi::RSMPI_UINT8_T,
            Primitive::U16 => ffi::RSMPI_UINT16_T,
            Primitive::U32 => ffi::RSMPI_UINT32_T,
            Primitive::U64 => ffi::RSMPI_UINT64_T,
            Primitive::F32 => ffi::RSMPI_FLOAT,
            Primitive::F64 => ffi::RSMPI_DOUBLE,
        }
    }
}

/// `MPI_OP_NULL`, for plans of calls that take no operation.
pub(crate) fn null_op() -> Op {
    // SAFETY: a constant defined by the shim.
    unsafe { mfio_mpi_op_null }
}

/// The predefined operation of `op` (`None` for a custom one).
pub(crate) fn builtin_op<T>(op: &ReduceOp<T>) -> Option<Op> {
    // SAFETY: constants of mpi-sys's shim.
    unsafe {
        Some(match op {
            ReduceOp::Sum => ffi::RSMPI_SUM,
            ReduceOp::Prod => ffi::RSMPI_PROD,
            ReduceOp::Min => ffi::RSMPI_MIN,
            ReduceOp::Max => ffi::RSMPI_MAX,
            ReduceOp::BitAnd => ffi::RSMPI_BAND,
            ReduceOp::BitOr => ffi::RSMPI_BOR,
            ReduceOp::BitXor => ffi::RSMPI_BXOR,
            ReduceOp::LogicalAnd => ffi::RSMPI_LAND,
            ReduceOp::LogicalOr => ffi::RSMPI_LOR,
            ReduceOp::LogicalXor => ffi::RSMPI_LXOR,
            ReduceOp::Custom { .. } => return None,
        })
    }
}

/// A struct datatype: `(displacement, count, type)` per field, resized to
/// `extent` and committed.
///
/// # Safety
/// The field types are live; the thread may call MPI.
pub(crate) unsafe fn type_struct(fields: &[(usize, c_int, Datatype)], extent: usize) -> Result<Datatype, Code> {
    // MPI_Aint is isize in Open MPI and i64 in MPICH.
    let aint = |v: usize| ffi::MPI_Aint::try_from(v).map_err(|_| Code(-1));
    let lens: Vec<c_int> = fields.iter().map(|f| f.1).collect();
    let displs = fields
        .iter()
        .map(|f| aint(f.0))
        .collect::<Result<Vec<ffi::MPI_Aint>, Code>>()?;
    let extent = aint(extent)?;
    let types: Vec<Datatype> = fields.iter().map(|f| f.2).collect();
    let count = c_int::try_from(fields.len()).map_err(|_| Code(-1))?;
    let mut raw = MaybeUninit::uninit();
    // SAFETY: the three arrays hold `count` entries; upheld by the caller.
    check(unsafe {
        ffi::MPI_Type_create_struct(count, lens.as_ptr(), displs.as_ptr(), types.as_ptr(), raw.as_mut_ptr())
    })?;
    // SAFETY: written by the successful call.
    let mut raw = unsafe { raw.assume_init() };
    let mut sized = MaybeUninit::uninit();
    // SAFETY: `raw` is live.
    let resized = check(unsafe { ffi::MPI_Type_create_resized(raw, 0, extent, sized.as_mut_ptr()) });
    // SAFETY: `raw` is live and no longer needed (the resized type keeps
    // what it needs).
    unsafe { ffi::MPI_Type_free(&mut raw) };
    resized?;
    // SAFETY: written by the successful call.
    let mut sized = unsafe { sized.assume_init() };
    // SAFETY: `sized` is live.
    if let Err(code) = check(unsafe { ffi::MPI_Type_commit(&mut sized) }) {
        // SAFETY: as above.
        unsafe { ffi::MPI_Type_free(&mut sized) };
        return Err(code);
    }
    Ok(sized)
}

/// `count` copies of `base` back to back (not committed: a part of a
/// larger type).
///
/// # Safety
/// `base` is live; the thread may call MPI.
pub(crate) unsafe fn type_contiguous(count: c_int, base: Datatype) -> Result<Datatype, Code> {
    let mut out = MaybeUninit::uninit();
    // SAFETY: upheld by the caller.
    check(unsafe { ffi::MPI_Type_contiguous(count, base, out.as_mut_ptr()) })?;
    // SAFETY: written by the successful call.
    Ok(unsafe { out.assume_init() })
}

/// `MPI_Type_free`.
///
/// # Safety
/// `ty` is a derived type made here, not used again; the thread may call MPI.
pub(crate) unsafe fn type_free(mut ty: Datatype) {
    // SAFETY: upheld by the caller.
    unsafe { ffi::MPI_Type_free(&mut ty) };
}

/// The reduction function MPI calls for a user operation.
pub(crate) type UserFunction = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_int, *mut Datatype);

/// A type keyval whose attribute is deleted without a callback (the
/// attribute's owner frees it).
///
/// # Safety
/// The thread may call MPI.
pub(crate) unsafe fn type_keyval() -> Result<c_int, Code> {
    let mut keyval = 0;
    // SAFETY: the shim passes MPI's null copy and delete callbacks; the
    // thread may call MPI.
    check(unsafe { mfio_mpi_type_keyval(&mut keyval) })?;
    Ok(keyval)
}

/// `MPI_Type_free_keyval`.
///
/// # Safety
/// `keyval` was made by [`type_keyval`] and is not used again.
pub(crate) unsafe fn type_free_keyval(mut keyval: c_int) {
    // SAFETY: a constant of the shim.
    if keyval != unsafe { mfio_mpi_keyval_invalid } {
        // SAFETY: upheld by the caller.
        unsafe { ffi::MPI_Type_free_keyval(&mut keyval) };
    }
}

/// A copy of `ty` carrying `attr` under `keyval`, and an operation that
/// calls `function` (which finds `attr` through [`type_attr`]).
///
/// # Safety
/// `ty` and `keyval` are live; `attr` stays valid until both results are
/// freed ([`type_free`], [`op_free`]); the thread may call MPI.
pub(crate) unsafe fn user_op(
    ty: Datatype,
    keyval: c_int,
    attr: *mut c_void,
    function: UserFunction,
    commutative: bool,
) -> Result<(Datatype, Op), Code> {
    let mut copy = MaybeUninit::uninit();
    // SAFETY: upheld by the caller.
    check(unsafe { ffi::MPI_Type_dup(ty, copy.as_mut_ptr()) })?;
    // SAFETY: written by the successful call.
    let copy = unsafe { copy.assume_init() };
    // SAFETY: `copy` and `keyval` are live.
    if let Err(code) = check(unsafe { ffi::MPI_Type_set_attr(copy, keyval, attr) }) {
        // SAFETY: made above, not used again.
        unsafe { type_free(copy) };
        return Err(code);
    }
    let mut op = MaybeUninit::uninit();
    // SAFETY: `function` has the signature of MPI_User_function.
    if let Err(code) = check(unsafe { ffi::MPI_Op_create(Some(function), c_int::from(commutative), op.as_mut_ptr()) }) {
        // SAFETY: made above, not used again.
        unsafe { type_free(copy) };
        return Err(code);
    }
    // SAFETY: written by the successful call.
    Ok((copy, unsafe { op.assume_init() }))
}

/// The attribute stored on `ty` under `keyval`, if any.
///
/// # Safety
/// `ty` is live (MPI hands it to a user function).
pub(crate) unsafe fn type_attr(ty: Datatype, keyval: c_int) -> Option<*mut c_void> {
    let mut value: *mut c_void = std::ptr::null_mut();
    let mut flag = 0;
    // SAFETY: upheld by the caller; MPI stores the attribute pointer.
    let rc = unsafe { ffi::MPI_Type_get_attr(ty, keyval, std::ptr::addr_of_mut!(value).cast(), &mut flag) };
    (check(rc).is_ok() && flag != 0).then_some(value)
}

/// `MPI_Op_free`.
///
/// # Safety
/// `op` was made by [`user_op`] and is not used again; the thread may call MPI.
pub(crate) unsafe fn op_free(mut op: Op) {
    // SAFETY: upheld by the caller.
    unsafe { ffi::MPI_Op_free(&mut op) };
}

/// Where an empty buffer points. An empty `Vec`'s pointer is a dangling
/// address equal to its alignment — 1 for bytes, which is Open MPI's
/// `MPI_IN_PLACE` — so empty buffers point here instead. MPI reads and
/// writes nothing through a pointer with a count of zero.
static EMPTY: [u64; 1] = [0];

/// `ptr`, or a harmless address if the buffer is empty.
pub(crate) fn buffer(ptr: *const c_void, len: usize) -> *const c_void {
    if len == 0 {
        EMPTY.as_ptr().cast()
    } else {
        ptr
    }
}

/// As [`buffer`], for buffers MPI writes.
pub(crate) fn buffer_mut(ptr: *mut c_void, len: usize) -> *mut c_void {
    buffer(ptr, len).cast_mut()
}

/// A send buffer, or `MPI_IN_PLACE`.
pub(crate) fn send_or_in_place(ptr: Option<*const c_void>) -> *const c_void {
    ptr.unwrap_or_else(|| in_place().cast_const())
}

/// Declares [`Call`] (one variant per collective, holding its arguments
/// as MPI sees them) and both of its forms from one table. Each entry
/// names the variant, its fields, the blocking and the non-blocking MPI
/// function, and the arguments they share (the non-blocking one takes a
/// request pointer after them).
macro_rules! collectives {
    ($comm:ident; $(
        $(#[$doc:meta])*
        $variant:ident { $($field:ident: $ty:ty),* } => $name:literal, $blocking:ident, $nonblocking:ident ($($arg:expr),+);
    )*) => {
        /// One collective, with its buffers as MPI sees them. Send pointers
        /// may be `MPI_IN_PLACE`; a buffer significant only at the root is
        /// passed with a count of 0 elsewhere.
        #[derive(Debug, Clone, Copy)]
        pub(crate) enum Call {
            $( $(#[$doc])* $variant { $($field: $ty),* }, )*
        }

        impl Call {
            /// The collective's name, for messages.
            #[inline]
            pub(crate) fn name(&self) -> &'static str {
                match self {
                    $( Call::$variant { .. } => $name, )*
                }
            }

            /// Starts the non-blocking form (`MPI_I…`).
            ///
            /// # Safety
            /// Every pointer stays valid, and the memory behind it unused by
            /// anything else, until the request completes; the communicator,
            /// the types and the op are live; the thread may call MPI.
            // Always inlined: where the variant is known (a collective's
            // own method), the match folds away and the arguments go
            // straight to MPI.
            #[inline(always)]
            pub(crate) unsafe fn start(&self, $comm: Comm) -> Result<Request, Code> {
                let mut req = MaybeUninit::uninit();
                let request = req.as_mut_ptr();
                // SAFETY: upheld by the caller.
                let rc = unsafe {
                    match *self {
                        $( Call::$variant { $($field),* } => ffi::$nonblocking($($arg),+, request), )*
                    }
                };
                check(rc)?;
                // SAFETY: written by the successful call.
                Ok(unsafe { req.assume_init() })
            }

            /// Runs the blocking form.
            ///
            /// # Safety
            /// As for [`start`](Self::start), for the duration of the call.
            #[inline(always)]
            pub(crate) unsafe fn run(&self, $comm: Comm) -> Result<(), Code> {
                // SAFETY: upheld by the caller.
                check(unsafe {
                    match *self {
                        $( Call::$variant { $($field),* } => ffi::$blocking($($arg),+), )*
                    }
                })
            }
        }
    };
}

type Send = *const c_void;
type Recv = *mut c_void;
type Counts = *const c_int;

collectives! { comm;
    Barrier {} => "barrier", MPI_Barrier, MPI_Ibarrier (comm);
    Bcast { buf: Recv, count: c_int, ty: Datatype, root: c_int }
        => "bcast", MPI_Bcast, MPI_Ibcast (buf, count, ty, root, comm);
    Reduce { send: Send, recv: Recv, count: c_int, ty: Datatype, op: Op, root: c_int }
        => "reduce", MPI_Reduce, MPI_Ireduce (send, recv, count, ty, op, root, comm);
    Allreduce { send: Send, recv: Recv, count: c_int, ty: Datatype, op: Op }
        => "allreduce", MPI_Allreduce, MPI_Iallreduce (send, recv, count, ty, op, comm);
    Scatter { send: Send, send_count: c_int, recv: Recv, recv_count: c_int, ty: Datatype, root: c_int }
        => "scatter", MPI_Scatter, MPI_Iscatter (send, send_count, ty, recv, recv_count, ty, root, comm);
    Scatterv {
        send: Send, counts: Counts, displs: Counts, send_ty: Datatype, recv: Recv, recv_count: c_int, recv_ty: Datatype,
        root: c_int
    } => "scatterv", MPI_Scatterv, MPI_Iscatterv (send, counts, displs, send_ty, recv, recv_count, recv_ty, root, comm);
    Gather { send: Send, send_count: c_int, recv: Recv, recv_count: c_int, ty: Datatype, root: c_int }
        => "gather", MPI_Gather, MPI_Igather (send, send_count, ty, recv, recv_count, ty, root, comm);
    Gatherv {
        send: Send, send_count: c_int, send_ty: Datatype, recv: Recv, counts: Counts, displs: Counts, recv_ty: Datatype,
        root: c_int
    } => "gatherv", MPI_Gatherv, MPI_Igatherv (send, send_count, send_ty, recv, counts, displs, recv_ty, root, comm);
    Allgather { send: Send, send_count: c_int, recv: Recv, recv_count: c_int, ty: Datatype }
        => "allgather", MPI_Allgather, MPI_Iallgather (send, send_count, ty, recv, recv_count, ty, comm);
    Allgatherv {
        send: Send, send_count: c_int, send_ty: Datatype, recv: Recv, counts: Counts, displs: Counts, recv_ty: Datatype
    } => "allgatherv", MPI_Allgatherv, MPI_Iallgatherv (send, send_count, send_ty, recv, counts, displs, recv_ty, comm);
    Alltoall { send: Send, send_count: c_int, recv: Recv, recv_count: c_int, ty: Datatype }
        => "alltoall", MPI_Alltoall, MPI_Ialltoall (send, send_count, ty, recv, recv_count, ty, comm);
    Alltoallv {
        send: Send, send_counts: Counts, send_displs: Counts, send_ty: Datatype,
        recv: Recv, recv_counts: Counts, recv_displs: Counts, recv_ty: Datatype
    } => "alltoallv", MPI_Alltoallv, MPI_Ialltoallv
        (send, send_counts, send_displs, send_ty, recv, recv_counts, recv_displs, recv_ty, comm);
    ReduceScatterBlock { send: Send, recv: Recv, count: c_int, ty: Datatype, op: Op }
        => "reduce_scatter_block", MPI_Reduce_scatter_block, MPI_Ireduce_scatter_block
        (send, recv, count, ty, op, comm);
    Scan { send: Send, recv: Recv, count: c_int, ty: Datatype, op: Op }
        => "scan", MPI_Scan, MPI_Iscan (send, recv, count, ty, op, comm);
    Exscan { send: Send, recv: Recv, count: c_int, ty: Datatype, op: Op }
        => "exscan", MPI_Exscan, MPI_Iexscan (send, recv, count, ty, op, comm);
}

/// `MPI_Isend` of `count` elements of `ty`.
///
/// # Safety
/// As for [`Call::start`].
pub(crate) unsafe fn isend(
    buf: *const c_void,
    (count, ty): (c_int, Datatype),
    dest: c_int,
    tag: c_int,
    comm: Comm,
) -> Result<Request, Code> {
    let mut req = MaybeUninit::uninit();
    // SAFETY: upheld by the caller.
    check(unsafe { ffi::MPI_Isend(buf, count, ty, dest, tag, comm, req.as_mut_ptr()) })?;
    // SAFETY: written by the successful call.
    Ok(unsafe { req.assume_init() })
}

/// `MPI_Irecv` of up to `count` elements of `ty`.
///
/// # Safety
/// As for [`Call::start`].
pub(crate) unsafe fn irecv(
    buf: *mut c_void,
    (count, ty): (c_int, Datatype),
    source: c_int,
    tag: c_int,
    comm: Comm,
) -> Result<Request, Code> {
    let mut req = MaybeUninit::uninit();
    // SAFETY: upheld by the caller.
    check(unsafe { ffi::MPI_Irecv(buf, count, ty, source, tag, comm, req.as_mut_ptr()) })?;
    // SAFETY: written by the successful call.
    Ok(unsafe { req.assume_init() })
}

/// `MPI_Waitall` over `reqs` (all become null): the first failure, if any.
///
/// # Safety
/// Every request in `reqs` is active or null; the thread may call MPI.
pub(crate) unsafe fn wait_all(reqs: &mut [Request]) -> Result<(), Code> {
    let mut statuses = vec![empty_status(); reqs.len()];
    let count = c_int::try_from(reqs.len()).map_err(|_| Code(-1))?;
    // SAFETY: both arrays hold `count` entries; upheld by the caller.
    let rc = unsafe { ffi::MPI_Waitall(count, reqs.as_mut_ptr(), statuses.as_mut_ptr()) };
    match check(rc) {
        Err(code) if class(code) == Class::InStatus => statuses
            .iter()
            .map(|s| s.MPI_ERROR)
            .find(|&e| e != SUCCESS && class(Code(e)) != Class::Pending)
            .map_or(Ok(()), |e| Err(Code(e))),
        other => other,
    }
}

/// `MPI_Cancel`.
///
/// # Safety
/// `req` is an active request; the thread may call MPI.
pub(crate) unsafe fn cancel(req: &mut Request) {
    // SAFETY: upheld by the caller.
    unsafe { ffi::MPI_Cancel(req) };
}

/// A zeroed status, for MPI to fill.
pub(crate) fn empty_status() -> Status {
    // SAFETY: MPI_Status is a plain C struct of integers.
    unsafe { std::mem::zeroed() }
}

/// The source, tag and error a status holds.
pub(crate) fn status_fields(s: &Status) -> (c_int, c_int, c_int) {
    (s.MPI_SOURCE, s.MPI_TAG, s.MPI_ERROR)
}

/// Whether the request behind `s` was cancelled, and the bytes received
/// (counted in bytes whatever type received them, and in 64 bits: a
/// message may exceed `i32::MAX` bytes).
pub(crate) fn status_cancelled_count(s: &Status) -> (bool, Option<usize>) {
    let mut flag = 0;
    let mut count: ffi::MPI_Count = 0;
    // SAFETY: `s` is a status MPI filled; both calls only read it.
    let rc = unsafe {
        ffi::MPI_Test_cancelled(s, &mut flag);
        ffi::MPI_Get_elements_x(s, builtin(Primitive::U8), &mut count)
    };
    let count = check(rc).ok().and_then(|()| usize::try_from(count).ok());
    (flag != 0, count)
}

/// `MPI_Testsome` over `reqs`: the indices of those that completed, with
/// their statuses. Completed requests become null. Returns whether the
/// statuses' error fields are meaningful (MPI sets them only when some
/// request failed).
///
/// # Safety
/// Every request in `reqs` is active or null; the thread may call MPI.
pub(crate) unsafe fn testsome(
    reqs: &mut [Request],
    indices: &mut Vec<c_int>,
    statuses: &mut Vec<Status>,
) -> Result<bool, Code> {
    let n = reqs.len();
    indices.clear();
    statuses.clear();
    if let [req] = reqs {
        // SAFETY: upheld by the caller.
        return unsafe { test_one(req, indices, statuses) };
    }
    indices.resize(n, 0);
    statuses.resize(n, empty_status());
    let mut out: c_int = 0;
    let count = c_int::try_from(n).map_err(|_| Code(-1))?;
    // SAFETY: the arrays hold `n` entries each; upheld by the caller.
    let rc = unsafe {
        ffi::MPI_Testsome(
            count,
            reqs.as_mut_ptr(),
            &mut out,
            indices.as_mut_ptr(),
            statuses.as_mut_ptr(),
        )
    };
    let (_, _, undefined) = wildcards();
    let done = if out == undefined {
        0
    } else {
        usize::try_from(out).unwrap_or(0)
    };
    indices.truncate(done);
    statuses.truncate(done);
    match check(rc) {
        // Per-request errors are in the statuses.
        Err(code) if class(code) == Class::InStatus => Ok(true),
        Err(code) => Err(code),
        Ok(()) => Ok(false),
    }
}

/// What [`test`] found.
pub(crate) enum Tested {
    /// The request is still running.
    Running,
    /// It finished, with this outcome (an error of the request itself).
    Finished(Result<(), Code>),
    /// The call failed and the request is still MPI's.
    CallFailed(Code),
}

/// One `MPI_Test` of one request; `status` gets the finished request's
/// status.
///
/// # Safety
/// `req` is active or null, and this thread may call MPI.
pub(crate) unsafe fn test(req: &mut Request, status: &mut Status) -> Tested {
    // SAFETY: upheld by the caller; `status` is valid for writes.
    unsafe { test_into(req, status) }
}

/// One `MPI_Test` of a collective's request, whose status says nothing
/// (`MPI_STATUS_IGNORE`: MPI neither fills it nor do we make one).
///
/// # Safety
/// As for [`test`].
#[inline]
pub(crate) unsafe fn test_collective(req: &mut Request) -> Tested {
    // SAFETY: upheld by the caller; MPI_STATUS_IGNORE is a constant
    // mpi-sys exports, which MPI_Test accepts for the status.
    unsafe { test_into(req, ffi::RSMPI_STATUS_IGNORE) }
}

/// # Safety
/// As for [`test`]; `status` is valid for writes or `MPI_STATUS_IGNORE`.
#[inline]
unsafe fn test_into(req: &mut Request, status: *mut Status) -> Tested {
    let mut flag: c_int = 0;
    // SAFETY: upheld by the caller; `flag` is valid for writes.
    let rc = unsafe { ffi::MPI_Test(req, &mut flag, status) };
    match check(rc) {
        Ok(()) if flag == 0 => Tested::Running,
        Ok(()) => Tested::Finished(Ok(())),
        // SAFETY: reading a constant mpi-sys exports.
        Err(code) if *req == unsafe { ffi::RSMPI_REQUEST_NULL } => Tested::Finished(Err(code)),
        Err(code) => Tested::CallFailed(code),
    }
}

/// [`testsome`] over one request, through `MPI_Test`: in Open MPI 4.1 a
/// `MPI_Testsome` of one request costs twice the instructions of a
/// `MPI_Test` (callgrind), and one request pending is the common case. An
/// error `MPI_Test` returns is the request's, so it goes into the status as
/// `MPI_Testsome` would have put it.
///
/// # Safety
/// As for [`testsome`]; `indices` and `statuses` are empty.
unsafe fn test_one(req: &mut Request, indices: &mut Vec<c_int>, statuses: &mut Vec<Status>) -> Result<bool, Code> {
    let mut status = empty_status();
    // SAFETY: upheld by the caller.
    let errors_in_status = match unsafe { test(req, &mut status) } {
        Tested::Running => return Ok(false),
        Tested::CallFailed(code) => return Err(code),
        Tested::Finished(Ok(())) => false,
        Tested::Finished(Err(code)) => {
            status.MPI_ERROR = code.0;
            true
        }
    };
    indices.push(0);
    statuses.push(status);
    Ok(errors_in_status)
}
