//! Raw bindings to the system UCX (`libucp`, found with pkg-config and
//! generated with bindgen at build time). This is the only crate that
//! declares UCX's C symbols; `mfio-net` wraps them.
//!
//! Beside the generated items it provides what UCX defines as macros or
//! `static inline` functions, which bindgen cannot see: [`ucs_ptr_is_err`],
//! [`ucs_ptr_status`], [`ucs_ptr_is_ptr`] and the version numbers for
//! `ucp_init_version`.
//!
//! ```
//! let (mut major, mut minor) = (0, 0);
//! // SAFETY: both pointers are valid for writes.
//! unsafe { mfio_ucx_sys::ucp_get_version(&mut major, &mut minor, &mut 0) };
//! assert!(major >= 1);
//! ```
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, missing_docs)]
#![allow(clippy::all, clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// `UCS_PTR_IS_ERR`: a request pointer that encodes an error status
/// (the top 256 addresses hold the negative `ucs_status_t` values).
#[inline]
pub fn ucs_ptr_is_err(ptr: ucs_status_ptr_t) -> bool {
    (ptr as usize) >= (UCS_ERR_LAST as isize as usize)
}

/// `UCS_PTR_IS_PTR`: a real request (neither null, i.e. completed in place,
/// nor an error).
#[inline]
pub fn ucs_ptr_is_ptr(ptr: ucs_status_ptr_t) -> bool {
    (ptr as usize).wrapping_sub(1) < (UCS_ERR_LAST as isize as usize).wrapping_sub(1)
}

/// `UCS_PTR_STATUS`: the status a request pointer encodes (`UCS_OK` for
/// null, `UCS_INPROGRESS` for a real request).
#[inline]
pub fn ucs_ptr_status(ptr: ucs_status_ptr_t) -> ucs_status_t {
    if ptr.is_null() {
        UCS_OK as ucs_status_t
    } else if ucs_ptr_is_err(ptr) {
        ptr as isize as ucs_status_t
    } else {
        UCS_INPROGRESS as ucs_status_t
    }
}

/// The API version these bindings were generated against, for
/// `ucp_init_version` (which `ucp_init`, a `static inline`, calls).
pub const API_MAJOR: u32 = UCP_API_MAJOR;
/// See [`API_MAJOR`].
pub const API_MINOR: u32 = UCP_API_MINOR;
