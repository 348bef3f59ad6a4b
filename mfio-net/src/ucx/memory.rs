//! [`MemoryRegion`] (local memory registered for remote access) and
//! [`RemoteKey`] (a peer's region, unpacked on an endpoint), whose
//! positions are byte offsets into the region.

use std::alloc::{self, Layout};
use std::fmt;
use std::io::ErrorKind;
use std::sync::Arc;

use mfio_core::{DriveStatus, Error, IoBackend, IoLen, PollingHandle, Result};

use super::address::{open, seal, Kind};
use super::context::Context;
use super::endpoint::{Endpoint, EpShared};
use super::sys;

const PAGE: usize = 4096;

/// Local memory registered with UCX so that peers can put into it and get
/// from it. The memory is owned by the region (page-aligned, zeroed at
/// creation) and stays registered until the region is dropped.
///
/// Peers may write it at any time, so it is read and written here by copy
/// ([`read`](Self::read), [`write`](Self::write)), never lent out as a slice.
pub struct MemoryRegion {
    context: Context,
    memh: sys::MemH,
    ptr: *mut u8,
    len: usize,
    packed: Vec<u8>,
}

// SAFETY: the memory is owned by the region and only copied in and out
// through raw pointers; UCX registration handles may move between threads.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above; `read`/`write` take `&self` and copy, like a peer's
// put/get would.
unsafe impl Sync for MemoryRegion {}

impl fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegion").field("len", &self.len).finish()
    }
}

fn layout(len: usize) -> Result<Layout> {
    Layout::from_size_align(len.max(1), PAGE)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("a region of {len} bytes is too large")))
}

fn out_of_range(offset: u64, len: usize, size: u64) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "bytes {offset}..{} are outside the region of {size} bytes",
            offset.saturating_add(len as u64)
        ),
    )
    .with_offset(offset)
}

fn check_range(offset: u64, len: usize, size: u64) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(out_of_range(offset, len, size)),
    }
}

impl MemoryRegion {
    /// Allocates `len` zeroed bytes and registers them on `context`.
    ///
    /// # Errors
    /// `OutOfMemory` if the allocation fails; what UCX reports registering.
    pub fn new(context: &Context, len: usize) -> Result<Self> {
        let layout = layout(len)?;
        // SAFETY: the layout has a nonzero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::new(
                ErrorKind::OutOfMemory,
                format!("cannot allocate a region of {len} bytes"),
            ));
        }
        // SAFETY: the context is live; the memory stays allocated until
        // after the unmap in Drop (or below on failure).
        let memh = match unsafe { sys::mem_map(context.inner.handle, ptr, len.max(1)) } {
            Ok(memh) => memh,
            Err(err) => {
                // SAFETY: allocated above with this layout.
                unsafe { alloc::dealloc(ptr, layout) };
                return Err(err);
            }
        };
        // SAFETY: memh is live on the context.
        let rkey = match unsafe { sys::rkey_pack(context.inner.handle, memh) } {
            Ok(rkey) => rkey,
            Err(err) => {
                // SAFETY: mapped above; the memory is freed after.
                unsafe {
                    sys::mem_unmap(context.inner.handle, memh);
                    alloc::dealloc(ptr, layout);
                }
                return Err(err);
            }
        };
        let mut payload = Vec::with_capacity(16 + rkey.len());
        payload.extend_from_slice(&(ptr as u64).to_le_bytes());
        payload.extend_from_slice(&(len as u64).to_le_bytes());
        payload.extend_from_slice(&rkey);
        Ok(Self {
            context: context.clone(),
            memh,
            ptr,
            len,
            packed: seal(Kind::RemoteKey, &payload),
        })
    }

    /// The region's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a region of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes a peer needs to reach this region
    /// ([`Endpoint::remote_key`]); carry them over any channel.
    pub fn remote_key(&self) -> &[u8] {
        &self.packed
    }

    /// Copies `dst.len()` bytes at `offset` out of the region.
    ///
    /// # Errors
    /// `InvalidInput` if the range is outside the region.
    pub fn read(&self, offset: u64, dst: &mut [u8]) -> Result<()> {
        check_range(offset, dst.len(), self.len as u64)?;
        // SAFETY: the range is inside the allocation (checked); a peer may
        // write it concurrently, which a byte copy tolerates.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset as usize), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the region at `offset`.
    ///
    /// # Errors
    /// `InvalidInput` if the range is outside the region.
    pub fn write(&self, offset: u64, src: &[u8]) -> Result<()> {
        check_range(offset, src.len(), self.len as u64)?;
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(offset as usize), src.len()) };
        Ok(())
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` on this (live) context, unmapped once;
        // the memory is freed after UCX stopped using it.
        unsafe {
            sys::mem_unmap(self.context.inner.handle, self.memh);
            if let Ok(layout) = layout(self.len) {
                alloc::dealloc(self.ptr, layout);
            }
        }
    }
}

pub(crate) struct RkeyInner {
    pub(crate) ep: Arc<EpShared>,
    pub(crate) handle: sys::RkeyH,
    pub(crate) base: u64,
    pub(crate) len: u64,
}

// SAFETY: the rkey handle is used only with the worker locked.
unsafe impl Send for RkeyInner {}
// SAFETY: as above.
unsafe impl Sync for RkeyInner {}

impl RkeyInner {
    /// The remote address of `offset..offset+len`, checked against the region.
    pub(crate) fn address(&self, offset: u64, len: usize) -> Result<u64> {
        check_range(offset, len, self.len)?;
        Ok(self.base + offset)
    }
}

impl Drop for RkeyInner {
    fn drop(&mut self) {
        let _st = self.ep.worker.lock();
        // SAFETY: unpacked on this endpoint's worker (locked); operations
        // using it hold this value, so none is in flight.
        unsafe { sys::rkey_destroy(self.handle) };
    }
}

/// A peer's [`MemoryRegion`], reached through an endpoint: read it with
/// get (`PacketIo<Read, u64>`) and write it with put (`PacketIo<Write,
/// u64>`) at byte offsets, like a file; [`Flush`](mfio_core::Flush) waits
/// until the puts before it landed. Offsets outside the region fail with
/// `InvalidInput` before anything reaches UCX.
#[derive(Clone)]
pub struct RemoteKey {
    pub(crate) inner: Arc<RkeyInner>,
}

impl fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKey").field("len", &self.inner.len).finish()
    }
}

impl RemoteKey {
    /// The size of the peer's region.
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    /// True for a region of no bytes.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }
}

impl Endpoint {
    /// Unpacks a peer's [`MemoryRegion::remote_key`] for use on this
    /// endpoint.
    ///
    /// # Errors
    /// `InvalidData` if `packed` is not an intact remote key (it never
    /// reaches UCX then); what UCX reports unpacking it.
    pub fn remote_key(&self, packed: &[u8]) -> Result<RemoteKey> {
        let payload = open(Kind::RemoteKey, packed)?;
        if payload.len() < 16 {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "malformed UCX remote key: no region bounds",
            ));
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&payload[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let (base, len) = (word(0), word(8));
        if base.checked_add(len).is_none() {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "malformed UCX remote key: region wraps around",
            ));
        }
        // A copy UCX may read to its end, whatever it believes the length is.
        let ucx_key = payload[16..].to_vec();
        let _st = self.inner.worker.lock();
        self.inner.usable()?;
        // SAFETY: the endpoint is live and the worker locked; the key's
        // envelope was verified.
        let handle = unsafe { sys::rkey_unpack(self.inner.handle, &ucx_key)? };
        Ok(RemoteKey {
            inner: Arc::new(RkeyInner {
                ep: self.inner.clone(),
                handle,
                base,
                len,
            }),
        })
    }
}

impl IoBackend for RemoteKey {
    fn polling_handle(&self) -> PollingHandle<'_> {
        self.inner.ep.worker.polling_handle()
    }

    fn drive(&self) -> DriveStatus {
        self.inner.ep.worker.drive()
    }
    fn drive_now(&self) -> DriveStatus {
        self.inner.ep.worker.drive_now()
    }
    fn spin_budget(&self) -> std::time::Duration {
        self.inner.ep.worker.spin_budget()
    }
}

impl IoLen for RemoteKey {
    fn io_len(&self) -> Result<u64> {
        Ok(self.inner.len)
    }
}
