//! The only module that names UCX's C symbols: each call wrapped once, with
//! its return convention turned into a `Result` or a [`Posted`], its
//! parameter struct zeroed and its field mask set, and the callbacks UCX
//! invokes during progress.
//!
//! Everything above this module works with the handle aliases and the
//! functions here; none of it sees a `ucp_*` name.

use std::ffi::{c_int, c_uint, c_void, CStr, CString};
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ptr;

use mfio_core::{Error, Result};
use mfio_ucx_sys as ffi;
use parking_lot::Mutex;

/// A UCP context handle.
pub(crate) type ContextH = ffi::ucp_context_h;
/// A UCP worker handle.
pub(crate) type WorkerH = ffi::ucp_worker_h;
/// A UCP endpoint handle.
pub(crate) type EpH = ffi::ucp_ep_h;
/// A UCP listener handle.
pub(crate) type ListenerH = ffi::ucp_listener_h;
/// A connection request handed to a listener's callback.
pub(crate) type ConnRequestH = ffi::ucp_conn_request_h;
/// A registered memory handle.
pub(crate) type MemH = ffi::ucp_mem_h;
/// An unpacked remote key.
pub(crate) type RkeyH = ffi::ucp_rkey_h;
/// A UCX request in flight (the pointer `_nbx` calls return).
pub(crate) type Request = *mut c_void;
/// A UCX status code.
pub(crate) type Status = ffi::ucs_status_t;

pub(crate) const OK: Status = ffi::UCS_OK;
pub(crate) const ERR_BUSY: Status = ffi::UCS_ERR_BUSY;
pub(crate) const ERR_CANCELED: Status = ffi::UCS_ERR_CANCELED;
pub(crate) const ERR_TRUNCATED: Status = ffi::UCS_ERR_MESSAGE_TRUNCATED;
pub(crate) const ERR_CONNECTION_RESET: Status = ffi::UCS_ERR_CONNECTION_RESET;
pub(crate) const ERR_NOT_CONNECTED: Status = ffi::UCS_ERR_NOT_CONNECTED;

/// The text UCX gives for `status`.
pub(crate) fn status_text(status: Status) -> String {
    // SAFETY: ucs_status_string returns a static NUL-terminated string for
    // every value, known or not.
    let text = unsafe { CStr::from_ptr(ffi::ucs_status_string(status)) };
    text.to_string_lossy().into_owned()
}

/// The `io::ErrorKind` that best matches a UCX status.
pub(crate) fn status_kind(status: Status) -> ErrorKind {
    match status {
        ffi::UCS_ERR_NO_MEMORY => ErrorKind::OutOfMemory,
        ffi::UCS_ERR_INVALID_PARAM | ffi::UCS_ERR_INVALID_ADDR => ErrorKind::InvalidInput,
        ffi::UCS_ERR_UNSUPPORTED | ffi::UCS_ERR_NOT_IMPLEMENTED => ErrorKind::Unsupported,
        ffi::UCS_ERR_MESSAGE_TRUNCATED => ErrorKind::InvalidData,
        ffi::UCS_ERR_TIMED_OUT | ffi::UCS_ERR_ENDPOINT_TIMEOUT => ErrorKind::TimedOut,
        ffi::UCS_ERR_CANCELED => ErrorKind::Interrupted,
        ffi::UCS_ERR_CONNECTION_RESET => ErrorKind::ConnectionReset,
        ffi::UCS_ERR_NOT_CONNECTED => ErrorKind::NotConnected,
        ffi::UCS_ERR_REJECTED => ErrorKind::ConnectionRefused,
        ffi::UCS_ERR_UNREACHABLE => ErrorKind::HostUnreachable,
        ffi::UCS_ERR_BUSY => ErrorKind::AddrInUse,
        ffi::UCS_ERR_OUT_OF_RANGE | ffi::UCS_ERR_EXCEEDS_LIMIT => ErrorKind::InvalidInput,
        ffi::UCS_ERR_NO_ELEM => ErrorKind::NotFound,
        ffi::UCS_ERR_IO_ERROR | ffi::UCS_ERR_NO_DEVICE | ffi::UCS_ERR_NO_RESOURCE => ErrorKind::Other,
        _ => ErrorKind::Other,
    }
}

/// An error for a UCX status, naming what failed.
pub(crate) fn status_error(status: Status, what: &str) -> Error {
    Error::new(status_kind(status), format!("UCX {what}: {}", status_text(status)))
}

fn check(status: Status, what: &str) -> Result<()> {
    if status == OK {
        Ok(())
    } else {
        Err(status_error(status, what))
    }
}

/// What an `_nbx` call did with an operation.
pub(crate) enum Posted {
    /// Completed inside the call; no callback will come.
    Done,
    /// Failed inside the call; no callback will come.
    Failed(Status),
    /// In flight: the callback reports it (it may have, inside the call
    /// already), then the request is freed.
    InFlight(Request),
}

fn posted(ptr: ffi::ucs_status_ptr_t) -> Posted {
    if ptr.is_null() {
        Posted::Done
    } else if ffi::ucs_ptr_is_err(ptr) {
        Posted::Failed(ffi::ucs_ptr_status(ptr))
    } else {
        Posted::InFlight(ptr)
    }
}

/// One operation UCX reported finished from a callback: the address of its
/// request (0 for one that finished in the posting call, without a
/// request), its status, and what its kind reports.
///
/// The callback does not read the operation's key out of the request: UCX
/// may call it before the posting call returns the request (a receive of
/// an eager message whose fragments were all in already completes inside
/// `ucp_tag_recv_nbx`/`ucp_tag_msg_recv_nbx` and still returns the
/// request), when the key is not written yet. It is read when the report
/// is collected, by the thread that posted and keyed it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished {
    pub request: usize,
    pub status: Status,
    /// Bytes received (receives), 0 otherwise.
    pub length: usize,
    /// The sender's tag (tag receives), 0 otherwise.
    pub tag: u64,
}

/// Where callbacks put what finished; the driving step takes it after
/// progress returns. Callbacks run inside `ucp_worker_progress`, on the
/// thread that holds the worker, so this lock is never contended.
pub(crate) type Sink = Mutex<Vec<Finished>>;

/// Bytes UCX reserves in front of each request for us: the operation's key.
const REQUEST_SIZE: usize = std::mem::size_of::<usize>();

/// Writes `key` into a request's reserved space, right after posting and
/// before the worker's reports are next collected.
///
/// # Safety
/// `req` is a request just returned by an `_nbx` call of a context created
/// by [`init`] (which reserves [`REQUEST_SIZE`] bytes in each).
pub(crate) unsafe fn set_request_key(req: Request, key: usize) {
    // SAFETY: the reserved area starts at the pointer UCX returned and holds
    // a usize (the caller's contract); it may be unaligned in theory.
    unsafe { (req as *mut usize).write_unaligned(key) };
}

/// The key [`set_request_key`] wrote into the request at address
/// `request` (a [`Finished::request`]).
///
/// # Safety
/// `request` is a request of a context created by [`init`] whose key was
/// set, and not yet freed.
pub(crate) unsafe fn request_key(request: usize) -> usize {
    let req = request as *mut c_void;
    // SAFETY: see set_request_key.
    unsafe { (req as *const usize).read_unaligned() }
}

/// # Safety
/// `user_data` is the `&Sink` a request was posted with, still alive.
unsafe fn push(user_data: *mut c_void, finished: Finished) {
    // SAFETY: the worker keeps its sink alive until every request it posted
    // has called back (it drains requests before destroying the worker).
    let sink = unsafe { &*(user_data as *const Sink) };
    sink.lock().push(finished);
}

unsafe extern "C" fn send_done(request: *mut c_void, status: Status, user_data: *mut c_void) {
    // SAFETY: UCX passes back the request and user data we posted with.
    unsafe {
        push(
            user_data,
            Finished {
                request: request as usize,
                status,
                length: 0,
                tag: 0,
            },
        );
    }
}

unsafe extern "C" fn tag_recv_done(
    request: *mut c_void,
    status: Status,
    info: *const ffi::ucp_tag_recv_info_t,
    user_data: *mut c_void,
) {
    // SAFETY: UCX passes back the request and user data we posted with, and
    // an info that is valid for the call (or null on some errors).
    unsafe {
        let (length, tag) = match info.as_ref() {
            Some(info) => (info.length, info.sender_tag),
            None => (0, 0),
        };
        push(
            user_data,
            Finished {
                request: request as usize,
                status,
                length,
                tag,
            },
        );
    }
}

unsafe extern "C" fn length_done(request: *mut c_void, status: Status, length: usize, user_data: *mut c_void) {
    // SAFETY: UCX passes back the request and user data we posted with.
    unsafe {
        push(
            user_data,
            Finished {
                request: request as usize,
                status,
                length,
                tag: 0,
            },
        );
    }
}

/// The parameters every `_nbx` call of ours shares: a callback and user
/// data, plus the operation's own `flags` (`UCP_AM_SEND_FLAG_*`,
/// `UCP_EP_CLOSE_FLAG_*`) when nonzero. The request's attributes
/// (`UCP_OP_ATTR_FLAG_*`) go in `op_attr_mask` instead.
fn request_param(user_data: *const Sink, flags: u32) -> ffi::ucp_request_param_t {
    let mut param = ffi::ucp_request_param_t {
        op_attr_mask: ffi::UCP_OP_ATTR_FIELD_CALLBACK | ffi::UCP_OP_ATTR_FIELD_USER_DATA,
        user_data: user_data as *mut c_void,
        ..Default::default()
    };
    if flags != 0 {
        param.op_attr_mask |= ffi::UCP_OP_ATTR_FIELD_FLAGS;
        param.flags = flags;
    }
    param
}

// --- context -------------------------------------------------------------

/// A UCX configuration being assembled (read from the environment, then
/// modified); released on drop.
pub(crate) struct Config(*mut ffi::ucp_config_t);

impl Config {
    /// The configuration from `UCX_*` environment variables.
    pub(crate) fn from_env() -> Result<Self> {
        let mut config = ptr::null_mut();
        // SAFETY: null prefix and file name mean the defaults; config is a
        // valid out pointer.
        let status = unsafe { ffi::ucp_config_read(ptr::null(), ptr::null(), &mut config) };
        check(status, "reading the configuration")?;
        Ok(Self(config))
    }

    /// Sets `name` (without the `UCX_` prefix) to `value`; transport
    /// settings are accepted too.
    pub(crate) fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let bad = |_| Error::new(ErrorKind::InvalidInput, "UCX setting with a NUL byte");
        let (name_c, value_c) = (CString::new(name).map_err(bad)?, CString::new(value).map_err(bad)?);
        // SAFETY: the config is live; both strings are NUL-terminated and
        // outlive the call (UCX copies them).
        let status = unsafe { ffi::ucp_config_modify(self.0, name_c.as_ptr(), value_c.as_ptr()) };
        check(status, &format!("setting {name}={value}"))
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: read by ucp_config_read and released once.
        unsafe { ffi::ucp_config_release(self.0) };
    }
}

/// Which UCP features a context enables (all of ours: tag, stream, AM, RMA,
/// wake-up).
const FEATURES: u64 = (ffi::UCP_FEATURE_TAG
    | ffi::UCP_FEATURE_RMA
    | ffi::UCP_FEATURE_STREAM
    | ffi::UCP_FEATURE_AM
    | ffi::UCP_FEATURE_WAKEUP) as u64;

/// Creates a context (`ucp_init`, which is `static inline` in the header).
pub(crate) fn init(config: &Config) -> Result<ContextH> {
    let params = ffi::ucp_params_t {
        field_mask: (ffi::UCP_PARAM_FIELD_FEATURES
            | ffi::UCP_PARAM_FIELD_REQUEST_SIZE
            | ffi::UCP_PARAM_FIELD_MT_WORKERS_SHARED) as u64,
        features: FEATURES,
        request_size: REQUEST_SIZE,
        // Workers of one context may live on different threads.
        mt_workers_shared: 1,
        ..Default::default()
    };
    let mut context = ptr::null_mut();
    // SAFETY: params and config are valid for the call; context is an out pointer.
    let status = unsafe { ffi::ucp_init_version(ffi::API_MAJOR, ffi::API_MINOR, &params, config.0, &mut context) };
    check(status, "init")?;
    Ok(context)
}

/// # Safety
/// `context` came from [`init`], and every worker and memory handle of it
/// is gone.
pub(crate) unsafe fn cleanup(context: ContextH) {
    // SAFETY: the caller's contract.
    unsafe { ffi::ucp_cleanup(context) };
}

// --- worker --------------------------------------------------------------

/// Creates a worker used by one thread at a time (the caller serialises).
///
/// # Safety
/// `context` is live.
pub(crate) unsafe fn worker_create(context: ContextH) -> Result<WorkerH> {
    let params = ffi::ucp_worker_params_t {
        field_mask: ffi::UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64,
        thread_mode: ffi::UCS_THREAD_MODE_SINGLE,
        ..Default::default()
    };
    let mut worker = ptr::null_mut();
    // SAFETY: the caller's contract; params valid; out pointer valid.
    let status = unsafe { ffi::ucp_worker_create(context, &params, &mut worker) };
    check(status, "creating a worker")?;
    Ok(worker)
}

/// # Safety
/// `worker` is live, has no endpoints, listeners or requests left, and is
/// destroyed once.
pub(crate) unsafe fn worker_destroy(worker: WorkerH) {
    // SAFETY: the caller's contract.
    unsafe { ffi::ucp_worker_destroy(worker) };
}

/// The worker's event descriptor (owned by UCX).
///
/// # Safety
/// `worker` is live.
pub(crate) unsafe fn worker_efd(worker: WorkerH) -> Result<c_int> {
    let mut fd: c_int = -1;
    // SAFETY: the caller's contract; fd is an out pointer.
    let status = unsafe { ffi::ucp_worker_get_efd(worker, &mut fd) };
    check(status, "getting the event fd")?;
    Ok(fd)
}

/// One progress pass; the number of events it handled.
///
/// # Safety
/// `worker` is live and no other thread calls into it now.
#[inline]
pub(crate) unsafe fn progress(worker: WorkerH) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { ffi::ucp_worker_progress(worker) }
}

/// Arms the event descriptor; `false` if events are pending (`UCS_ERR_BUSY`:
/// progress again before sleeping).
///
/// # Safety
/// `worker` is live and no other thread calls into it now.
pub(crate) unsafe fn arm(worker: WorkerH) -> Result<bool> {
    // SAFETY: the caller's contract.
    match unsafe { ffi::ucp_worker_arm(worker) } {
        OK => Ok(true),
        ERR_BUSY => Ok(false),
        status => Err(status_error(status, "arming the worker")),
    }
}

/// Wakes a thread sleeping on the worker's descriptor; thread-safe.
///
/// # Safety
/// `worker` is live.
pub(crate) unsafe fn signal(worker: WorkerH) {
    // SAFETY: the caller's contract; ucp_worker_signal is thread-safe.
    let _ = unsafe { ffi::ucp_worker_signal(worker) };
}

/// The worker's address blob and the largest AM header it takes.
///
/// # Safety
/// `worker` is live and no other thread calls into it now.
pub(crate) unsafe fn worker_query(worker: WorkerH) -> Result<(Vec<u8>, usize)> {
    let mut attr = ffi::ucp_worker_attr_t {
        field_mask: (ffi::UCP_WORKER_ATTR_FIELD_ADDRESS | ffi::UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER) as u64,
        ..Default::default()
    };
    // SAFETY: the caller's contract; attr is valid.
    let status = unsafe { ffi::ucp_worker_query(worker, &mut attr) };
    check(status, "querying the worker")?;
    // SAFETY: UCX returned an address of address_length bytes, released below.
    let bytes = unsafe { std::slice::from_raw_parts(attr.address as *const u8, attr.address_length) }.to_vec();
    // SAFETY: the address came from ucp_worker_query on this worker.
    unsafe { ffi::ucp_worker_release_address(worker, attr.address) };
    Ok((bytes, attr.max_am_header))
}

/// Cancels a request (receives; a no-op for kinds UCX cannot cancel). Its
/// callback still reports it.
///
/// # Safety
/// `req` is in flight on `worker`, which no other thread calls into now.
pub(crate) unsafe fn request_cancel(worker: WorkerH, req: Request) {
    // SAFETY: the caller's contract.
    unsafe { ffi::ucp_request_cancel(worker, req) };
}

/// # Safety
/// `req` was returned by an `_nbx` call and is freed once (after its
/// callback, or to let UCX finish it on its own).
pub(crate) unsafe fn request_free(req: Request) {
    // SAFETY: the caller's contract.
    unsafe { ffi::ucp_request_free(req) };
}

// --- endpoints -----------------------------------------------------------

/// The endpoint error callback: `arg` is the endpoint's error slot.
pub(crate) type EpErrorFn = unsafe extern "C" fn(arg: *mut c_void, ep: EpH, status: Status);

/// Where to connect an endpoint.
pub(crate) enum EpTarget<'a> {
    /// A worker address blob (checked by the caller).
    Address(&'a [u8]),
    /// A socket address of a listener.
    Sockaddr(SocketAddr),
    /// A connection request a listener received.
    ConnRequest(ConnRequestH),
}

/// A `sockaddr_storage` holding `addr`, and its length.
fn sockaddr(addr: SocketAddr) -> (libc_sockaddr::Storage, u32) {
    libc_sockaddr::from(addr)
}

/// Creates an endpoint with peer error handling (so a dead peer fails the
/// operations waiting on it, and a force close is possible).
///
/// # Safety
/// `worker` is live and serialised; `err_arg` stays valid until the
/// endpoint is closed; a conn request is used once.
pub(crate) unsafe fn ep_create(
    worker: WorkerH,
    target: EpTarget<'_>,
    on_error: EpErrorFn,
    err_arg: *mut c_void,
) -> Result<EpH> {
    let mut params = ffi::ucp_ep_params_t {
        field_mask: (ffi::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | ffi::UCP_EP_PARAM_FIELD_ERR_HANDLER) as u64,
        err_mode: ffi::UCP_ERR_HANDLING_MODE_PEER,
        err_handler: ffi::ucp_err_handler_t {
            cb: Some(on_error),
            arg: err_arg,
        },
        ..Default::default()
    };
    // Kept alive until ucp_ep_create returns (UCX copies it).
    let storage;
    match target {
        EpTarget::Address(bytes) => {
            params.field_mask |= ffi::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS as u64;
            params.address = bytes.as_ptr() as *const ffi::ucp_address_t;
        }
        EpTarget::Sockaddr(addr) => {
            storage = sockaddr(addr);
            params.field_mask |= (ffi::UCP_EP_PARAM_FIELD_SOCK_ADDR | ffi::UCP_EP_PARAM_FIELD_FLAGS) as u64;
            params.flags = ffi::UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
            params.sockaddr = ffi::ucs_sock_addr_t {
                addr: &storage.0 as *const libc_sockaddr::Storage as *const ffi::sockaddr,
                addrlen: storage.1,
            };
        }
        EpTarget::ConnRequest(request) => {
            params.field_mask |= ffi::UCP_EP_PARAM_FIELD_CONN_REQUEST as u64;
            params.conn_request = request;
        }
    }
    let mut ep = ptr::null_mut();
    // SAFETY: the caller's contract; params (and what it points to) live
    // through the call.
    let status = unsafe { ffi::ucp_ep_create(worker, &params, &mut ep) };
    check(status, "creating an endpoint")?;
    Ok(ep)
}

/// Starts closing an endpoint: flushing it first, or at once (`force`).
///
/// # Safety
/// `ep` is live on a serialised worker and closed once; `sink` outlives the
/// request.
pub(crate) unsafe fn ep_close(ep: EpH, force: bool, sink: *const Sink) -> Posted {
    let mut param = request_param(sink, if force { ffi::UCP_EP_CLOSE_FLAG_FORCE } else { 0 });
    param.cb.send = Some(send_done);
    // SAFETY: the caller's contract.
    posted(unsafe { ffi::ucp_ep_close_nbx(ep, &param) })
}

/// Starts flushing an endpoint: completes when every operation started on
/// it before has completed at the peer.
///
/// # Safety
/// `ep` is live on a serialised worker; `sink` outlives the request.
pub(crate) unsafe fn ep_flush(ep: EpH, sink: *const Sink) -> Posted {
    let mut param = request_param(sink, 0);
    param.cb.send = Some(send_done);
    // SAFETY: the caller's contract.
    posted(unsafe { ffi::ucp_ep_flush_nbx(ep, &param) })
}

// --- listeners -----------------------------------------------------------

/// The listener callback: `arg` is the listener's queue.
pub(crate) type ConnFn = unsafe extern "C" fn(request: ConnRequestH, arg: *mut c_void);

/// Listens on `addr` (port 0: any free port).
///
/// # Safety
/// `worker` is live and serialised; `arg` stays valid until the listener is
/// destroyed.
pub(crate) unsafe fn listener_create(
    worker: WorkerH,
    addr: SocketAddr,
    on_conn: ConnFn,
    arg: *mut c_void,
) -> Result<ListenerH> {
    let storage = sockaddr(addr);
    let params = ffi::ucp_listener_params_t {
        field_mask: (ffi::UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | ffi::UCP_LISTENER_PARAM_FIELD_CONN_HANDLER) as u64,
        sockaddr: ffi::ucs_sock_addr_t {
            addr: &storage.0 as *const libc_sockaddr::Storage as *const ffi::sockaddr,
            addrlen: storage.1,
        },
        conn_handler: ffi::ucp_listener_conn_handler_t { cb: Some(on_conn), arg },
        ..Default::default()
    };
    let mut listener = ptr::null_mut();
    // SAFETY: the caller's contract; params live through the call.
    let status = unsafe { ffi::ucp_listener_create(worker, &params, &mut listener) };
    check(status, "creating a listener")?;
    Ok(listener)
}

/// The address a listener is bound to (with the port UCX chose).
///
/// # Safety
/// `listener` is live.
pub(crate) unsafe fn listener_addr(listener: ListenerH) -> Result<SocketAddr> {
    let mut attr = ffi::ucp_listener_attr_t {
        field_mask: ffi::UCP_LISTENER_ATTR_FIELD_SOCKADDR as u64,
        ..Default::default()
    };
    // SAFETY: the caller's contract; attr is valid.
    let status = unsafe { ffi::ucp_listener_query(listener, &mut attr) };
    check(status, "querying a listener")?;
    // SAFETY: UCX filled a sockaddr_storage of a family it reports.
    unsafe { libc_sockaddr::to(&attr.sockaddr as *const ffi::sockaddr_storage as *const u8) }
}

/// The client's address of a connection request.
///
/// # Safety
/// `request` is a live connection request.
pub(crate) unsafe fn conn_request_peer(request: ConnRequestH) -> Result<SocketAddr> {
    let mut attr = ffi::ucp_conn_request_attr_t {
        field_mask: ffi::UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR as u64,
        ..Default::default()
    };
    // SAFETY: the caller's contract; attr is valid.
    let status = unsafe { ffi::ucp_conn_request_query(request, &mut attr) };
    check(status, "querying a connection request")?;
    // SAFETY: UCX filled a sockaddr_storage.
    unsafe { libc_sockaddr::to(&attr.client_address as *const ffi::sockaddr_storage as *const u8) }
}

/// Refuses a connection request (it is consumed).
///
/// # Safety
/// `listener` is live and serialised; `request` is one of its requests, used once.
pub(crate) unsafe fn listener_reject(listener: ListenerH, request: ConnRequestH) {
    // SAFETY: the caller's contract.
    let _ = unsafe { ffi::ucp_listener_reject(listener, request) };
}

/// # Safety
/// `listener` is live, serialised and destroyed once.
pub(crate) unsafe fn listener_destroy(listener: ListenerH) {
    // SAFETY: the caller's contract.
    unsafe { ffi::ucp_listener_destroy(listener) };
}

// --- memory --------------------------------------------------------------

/// Registers `len` bytes at `addr` for remote access.
///
/// # Safety
/// `context` is live; the memory stays valid until [`mem_unmap`].
pub(crate) unsafe fn mem_map(context: ContextH, addr: *mut u8, len: usize) -> Result<MemH> {
    let params = ffi::ucp_mem_map_params_t {
        field_mask: (ffi::UCP_MEM_MAP_PARAM_FIELD_ADDRESS | ffi::UCP_MEM_MAP_PARAM_FIELD_LENGTH) as u64,
        address: addr as *mut c_void,
        length: len,
        ..Default::default()
    };
    let mut memh = ptr::null_mut();
    // SAFETY: the caller's contract; params valid.
    let status = unsafe { ffi::ucp_mem_map(context, &params, &mut memh) };
    check(status, "registering memory")?;
    Ok(memh)
}

/// # Safety
/// `memh` came from [`mem_map`] on `context` and is unmapped once.
pub(crate) unsafe fn mem_unmap(context: ContextH, memh: MemH) {
    // SAFETY: the caller's contract.
    let _ = unsafe { ffi::ucp_mem_unmap(context, memh) };
}

/// The packed remote key of a registration.
///
/// # Safety
/// `memh` is live on `context`.
pub(crate) unsafe fn rkey_pack(context: ContextH, memh: MemH) -> Result<Vec<u8>> {
    let (mut buf, mut len) = (ptr::null_mut(), 0usize);
    // SAFETY: the caller's contract; out pointers valid.
    let status = unsafe { ffi::ucp_rkey_pack(context, memh, &mut buf, &mut len) };
    check(status, "packing a remote key")?;
    // SAFETY: UCX returned len bytes at buf, released below.
    let bytes = unsafe { std::slice::from_raw_parts(buf as *const u8, len) }.to_vec();
    // SAFETY: buf came from ucp_rkey_pack.
    unsafe { ffi::ucp_rkey_buffer_release(buf) };
    Ok(bytes)
}

/// Unpacks a remote key for use on `ep`.
///
/// # Safety
/// `ep` is live on a serialised worker; `packed` is a key UCX packed (the
/// caller verified its envelope: UCX reads it without a length).
pub(crate) unsafe fn rkey_unpack(ep: EpH, packed: &[u8]) -> Result<RkeyH> {
    let mut rkey = ptr::null_mut();
    // SAFETY: the caller's contract.
    let status = unsafe { ffi::ucp_ep_rkey_unpack(ep, packed.as_ptr() as *const c_void, &mut rkey) };
    check(status, "unpacking a remote key")?;
    Ok(rkey)
}

/// # Safety
/// `rkey` came from [`rkey_unpack`], no operation uses it any more, and it
/// is destroyed once (before its endpoint).
pub(crate) unsafe fn rkey_destroy(rkey: RkeyH) {
    // SAFETY: the caller's contract.
    unsafe { ffi::ucp_rkey_destroy(rkey) };
}

// --- data operations ------------------------------------------------------

/// # Safety (every posting function below)
/// The handles are live on a worker the caller serialises; the buffer stays
/// valid (and, for receives, unaliased) until the operation is reported
/// done; `sink` outlives the request.
pub(crate) unsafe fn tag_send(ep: EpH, buf: *const u8, len: usize, tag: u64, eager: bool, sink: *const Sink) -> Posted {
    let mut param = request_param(sink, 0);
    if eager {
        // Raises the protocol's threshold to the transport's limit for
        // sends that ask to complete locally (`ucx_info -e`: the
        // `tag_send_nbr` line), so the message is copied out eagerly.
        param.op_attr_mask |= ffi::UCP_OP_ATTR_FLAG_FAST_CMPL;
    }
    param.cb.send = Some(send_done);
    // SAFETY: the caller's contract.
    posted(unsafe { ffi::ucp_tag_send_nbx(ep, buf as *const c_void, len, tag, &param) })
}

/// Sends `len` bytes at `buf` at `tag` only if UCX can do it inside this
/// call without keeping the buffer (`UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL`: a
/// short message with room on the way): `Ok(true)`; `Ok(false)` if it
/// would have had to wait (nothing was sent).
///
/// # Safety
/// `ep` is live on a worker the caller serialises; `buf` is valid for
/// `len` bytes for the call.
pub(crate) unsafe fn tag_send_now(ep: EpH, buf: *const u8, len: usize, tag: u64) -> Result<bool> {
    let param = ffi::ucp_request_param_t {
        op_attr_mask: ffi::UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL,
        ..Default::default()
    };
    // SAFETY: the caller's contract; nothing of the call outlives it.
    match posted(unsafe { ffi::ucp_tag_send_nbx(ep, buf as *const c_void, len, tag, &param) }) {
        Posted::Done => Ok(true),
        Posted::Failed(ffi::UCS_ERR_NO_RESOURCE) => Ok(false),
        Posted::Failed(status) => Err(status_error(status, "tag send")),
        // Not with this flag; were it ever, its completion would be
        // unreported, so it must not happen silently.
        Posted::InFlight(_) => Err(Error::new(
            ErrorKind::Other,
            "UCX kept a send it was told to finish at once",
        )),
    }
}

/// Posts a tag receive. A message already waiting is taken with its tag
/// and length read by probing (UCX 1.13 does not report them for a
/// message that was unexpected, not even through the callback); otherwise
/// the receive waits and its callback reports them.
///
/// # Safety
/// As [`tag_send`].
pub(crate) unsafe fn tag_recv(
    worker: WorkerH,
    buf: *mut u8,
    len: usize,
    tag: u64,
    mask: u64,
    sink: *const Sink,
) -> (Posted, Option<(u64, usize)>) {
    let mut info = ffi::ucp_tag_recv_info_t::default();
    // SAFETY: the caller's contract; info is an out pointer.
    let message = unsafe { ffi::ucp_tag_probe_nb(worker, tag, mask, 1, &mut info) };
    if !message.is_null() {
        let mut param = request_param(sink, 0);
        param.cb.recv = Some(tag_recv_done);
        // SAFETY: the caller's contract; the message was removed by the
        // probe and is received once.
        let p = posted(unsafe { ffi::ucp_tag_msg_recv_nbx(worker, buf as *mut c_void, len, message, &param) });
        return (p, Some((info.sender_tag, info.length)));
    }
    let mut param = request_param(sink, 0);
    // An attribute of the request, not one of the operation's flags.
    param.op_attr_mask |= ffi::UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    param.cb.recv = Some(tag_recv_done);
    // SAFETY: the caller's contract.
    (
        posted(unsafe { ffi::ucp_tag_recv_nbx(worker, buf as *mut c_void, len, tag, mask, &param) }),
        None,
    )
}

/// What [`tag_take`] found.
pub(crate) enum Take {
    /// No matching message has arrived.
    Nothing,
    /// The first is this long, more than the buffer holds: it stays with
    /// UCX.
    TooLong(usize),
    /// Taken: what the receive did (done at once for a message that came
    /// whole in one piece; in flight, reported to the sink, for one still
    /// arriving), its tag and its length.
    Taken(Posted, u64, usize),
}

/// Takes the first message matching `tag`/`mask` that has arrived (in
/// part, at least), into `cap` bytes at `buf`.
///
/// # Safety
/// As [`tag_send`].
pub(crate) unsafe fn tag_take(
    worker: WorkerH,
    buf: *mut u8,
    cap: usize,
    tag: u64,
    mask: u64,
    sink: *const Sink,
) -> Take {
    let mut info = ffi::ucp_tag_recv_info_t::default();
    // SAFETY: the caller's contract; info is an out pointer. Only looked
    // at: a message too long for `buf` is left for a receive that reports
    // it.
    let first = unsafe { ffi::ucp_tag_probe_nb(worker, tag, mask, 0, &mut info) };
    if first.is_null() {
        return Take::Nothing;
    }
    if info.length > cap {
        return Take::TooLong(info.length);
    }
    // SAFETY: as above; the worker is serialised, so this finds the same
    // message, now removed to be received once.
    let message = unsafe { ffi::ucp_tag_probe_nb(worker, tag, mask, 1, &mut info) };
    if message.is_null() {
        return Take::Nothing;
    }
    let mut param = request_param(sink, 0);
    param.cb.recv = Some(tag_recv_done);
    // SAFETY: the caller's contract; the message was removed by the probe.
    let posted = posted(unsafe { ffi::ucp_tag_msg_recv_nbx(worker, buf as *mut c_void, cap, message, &param) });
    Take::Taken(posted, info.sender_tag, info.length)
}

/// Takes the first tag message that has arrived (in part, at least) and
/// that no receive asked for, into no bytes at all: UCX copies nothing,
/// reports the receive truncated, and tells a rendezvous sender its message
/// was taken. `None`: no such message is waiting.
///
/// # Safety
/// As [`tag_send`].
pub(crate) unsafe fn tag_discard(worker: WorkerH, sink: *const Sink) -> Option<Posted> {
    let mut info = ffi::ucp_tag_recv_info_t::default();
    // SAFETY: the caller's contract; info is an out pointer. Any tag
    // matches a zero mask.
    let message = unsafe { ffi::ucp_tag_probe_nb(worker, 0, 0, 1, &mut info) };
    if message.is_null() {
        return None;
    }
    let mut param = request_param(sink, 0);
    param.cb.recv = Some(tag_recv_done);
    // A buffer of no bytes: UCX writes nothing through the pointer, which
    // only has to be non-null.
    let nowhere = std::ptr::NonNull::<u8>::dangling().as_ptr();
    // SAFETY: the caller's contract; the message was removed by the probe
    // and is received once, into zero bytes.
    Some(posted(unsafe {
        ffi::ucp_tag_msg_recv_nbx(worker, nowhere as *mut c_void, 0, message, &param)
    }))
}

/// # Safety
/// As [`tag_send`].
pub(crate) unsafe fn stream_send(ep: EpH, buf: *const u8, len: usize, sink: *const Sink) -> Posted {
    let mut param = request_param(sink, 0);
    param.cb.send = Some(send_done);
    // SAFETY: the caller's contract.
    posted(unsafe { ffi::ucp_stream_send_nbx(ep, buf as *const c_void, len, &param) })
}

/// Posts a stream receive that completes with whatever has arrived (at
/// least one byte). On an immediate completion the count is returned.
///
/// # Safety
/// As [`tag_send`].
pub(crate) unsafe fn stream_recv(ep: EpH, buf: *mut u8, len: usize, sink: *const Sink) -> (Posted, usize) {
    let mut param = request_param(sink, 0);
    param.cb.recv_stream = Some(length_done);
    let mut length = 0usize;
    // SAFETY: the caller's contract; length is an out pointer valid for the call.
    let p = posted(unsafe { ffi::ucp_stream_recv_nbx(ep, buf as *mut c_void, len, &mut length, &param) });
    (p, length)
}

/// # Safety
/// As [`tag_send`]; `header` also stays valid until done (UCX 1.13 has no
/// flag to copy it).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn am_send(
    ep: EpH,
    id: u16,
    header: &[u8],
    buf: *const u8,
    len: usize,
    eager: bool,
    rendezvous: bool,
    reply: bool,
    sink: *const Sink,
) -> Posted {
    // `reply` names the sender's endpoint at the receiver (mfio's
    // end-of-stream notice needs it). Only for ids every mfio worker
    // handles: UCX 1.13 crashes on a reply-carrying message to an id
    // without a handler.
    let mut flags = if reply { ffi::UCP_AM_SEND_FLAG_REPLY } else { 0 };
    if eager {
        flags |= ffi::UCP_AM_SEND_FLAG_EAGER;
    }
    if rendezvous {
        flags |= ffi::UCP_AM_SEND_FLAG_RNDV;
    }
    let mut param = request_param(sink, flags);
    param.cb.send = Some(send_done);
    let header_ptr = if header.is_empty() {
        ptr::null()
    } else {
        header.as_ptr() as *const c_void
    };
    // SAFETY: the caller's contract.
    posted(unsafe {
        ffi::ucp_am_send_nbx(
            ep,
            c_uint::from(id),
            header_ptr,
            header.len(),
            buf as *const c_void,
            len,
            &param,
        )
    })
}

/// Fetches a rendezvous message's data into `buf`.
///
/// # Safety
/// As [`tag_send`]; `desc` is a rendezvous descriptor kept from the AM
/// callback, used once, and this is not called from inside a callback.
pub(crate) unsafe fn am_recv_data(
    worker: WorkerH,
    desc: *mut c_void,
    buf: *mut u8,
    len: usize,
    sink: *const Sink,
) -> (Posted, usize) {
    let mut param = request_param(sink, 0);
    param.cb.recv_am = Some(length_done);
    param.op_attr_mask |= ffi::UCP_OP_ATTR_FIELD_RECV_INFO;
    let mut length = 0usize;
    param.recv_info.length = &mut length;
    // SAFETY: the caller's contract; length lives through the call.
    let p = posted(unsafe { ffi::ucp_am_recv_data_nbx(worker, desc, buf as *mut c_void, len, &param) });
    (p, length)
}

/// Lets UCX free an AM data descriptor kept from the callback.
///
/// # Safety
/// `desc` was kept from an AM callback on `worker` and is released once.
pub(crate) unsafe fn am_data_release(worker: WorkerH, desc: *mut c_void) {
    // SAFETY: the caller's contract.
    unsafe { ffi::ucp_am_data_release(worker, desc) };
}

/// What the AM callback saw, for the driving step to match.
pub(crate) struct AmArrival {
    pub id: u16,
    pub header: Vec<u8>,
    pub data: AmData,
    /// The receiver's endpoint to the sender (null if the sender did not say).
    pub reply_ep: EpH,
}

// SAFETY: the endpoint handle is only compared, and used by the thread
// holding the worker.
unsafe impl Send for AmArrival {}

/// Where an active message's data is.
pub(crate) enum AmData {
    /// Copied in the callback (UCX would reuse its buffer).
    Copied(Vec<u8>),
    /// Kept by UCX until released ([`am_data_release`]): `len` bytes at `ptr`.
    Held { desc: *mut c_void, len: usize },
    /// Not here yet: fetch with [`am_recv_data`].
    Rendezvous { desc: *mut c_void, len: usize },
}

// SAFETY: the descriptors are plain pointers into UCX memory that only the
// thread holding the worker touches; moving the record between threads is fine.
unsafe impl Send for AmData {}

/// Where the AM callback puts arrivals.
pub(crate) type AmSink = Mutex<Vec<AmArrival>>;

/// The argument of one AM id's handler: the id, and the worker's sink.
pub(crate) struct AmHandlerArg {
    pub id: u16,
    pub sink: std::sync::Arc<AmSink>,
}

unsafe extern "C" fn am_arrived(
    arg: *mut c_void,
    header: *const c_void,
    header_length: usize,
    data: *mut c_void,
    length: usize,
    param: *const ffi::ucp_am_recv_param_t,
) -> Status {
    // SAFETY: arg is the worker's AmSink (alive while the handler is set);
    // header and (non-rendezvous) data are valid for the call; param is valid.
    unsafe {
        let arg = &*(arg as *const AmHandlerArg);
        let attr = (*param).recv_attr;
        let header = if header_length == 0 || header.is_null() {
            Vec::new()
        } else {
            std::slice::from_raw_parts(header as *const u8, header_length).to_vec()
        };
        let (data, keep) = if attr & u64::from(ffi::UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 {
            (
                AmData::Rendezvous {
                    desc: data,
                    len: length,
                },
                true,
            )
        } else if attr & u64::from(ffi::UCP_AM_RECV_ATTR_FLAG_DATA) != 0 {
            (
                AmData::Held {
                    desc: data,
                    len: length,
                },
                true,
            )
        } else if length == 0 || data.is_null() {
            (AmData::Copied(Vec::new()), false)
        } else {
            (
                AmData::Copied(std::slice::from_raw_parts(data as *const u8, length).to_vec()),
                false,
            )
        };
        let reply_ep = if attr & u64::from(ffi::UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 {
            (*param).reply_ep
        } else {
            ptr::null_mut()
        };
        arg.sink.lock().push(AmArrival {
            id: arg.id,
            header,
            data,
            reply_ep,
        });
        if keep {
            ffi::UCS_INPROGRESS as Status
        } else {
            OK
        }
    }
}

/// Registers the AM handler of `id`; `arg` is its [`AmHandlerArg`].
///
/// # Safety
/// `worker` is live and serialised; `arg` stays valid until the handler is
/// replaced or the worker destroyed.
pub(crate) unsafe fn am_set_handler(worker: WorkerH, id: u16, arg: *const AmHandlerArg) -> Result<()> {
    let params = ffi::ucp_am_handler_param_t {
        field_mask: (ffi::UCP_AM_HANDLER_PARAM_FIELD_ID
            | ffi::UCP_AM_HANDLER_PARAM_FIELD_CB
            | ffi::UCP_AM_HANDLER_PARAM_FIELD_ARG
            | ffi::UCP_AM_HANDLER_PARAM_FIELD_FLAGS) as u64,
        id: c_uint::from(id),
        flags: ffi::UCP_AM_FLAG_WHOLE_MSG,
        cb: Some(am_arrived),
        arg: arg as *mut c_void,
    };
    // SAFETY: the caller's contract.
    let status = unsafe { ffi::ucp_worker_set_am_recv_handler(worker, &params) };
    check(status, "setting an AM handler")
}

/// Writes `len` bytes at `buf` to `remote` in a peer's region.
///
/// # Safety
/// As [`tag_send`]; `rkey` is live for `ep` and `remote..remote+len` was
/// checked against the region.
pub(crate) unsafe fn put(ep: EpH, buf: *const u8, len: usize, remote: u64, rkey: RkeyH, sink: *const Sink) -> Posted {
    let mut param = request_param(sink, 0);
    param.cb.send = Some(send_done);
    // SAFETY: the caller's contract.
    posted(unsafe { ffi::ucp_put_nbx(ep, buf as *const c_void, len, remote, rkey, &param) })
}

/// Reads `len` bytes at `remote` in a peer's region into `buf`.
///
/// # Safety
/// As [`put`].
pub(crate) unsafe fn get(ep: EpH, buf: *mut u8, len: usize, remote: u64, rkey: RkeyH, sink: *const Sink) -> Posted {
    let mut param = request_param(sink, 0);
    param.cb.send = Some(send_done);
    // SAFETY: the caller's contract.
    posted(unsafe { ffi::ucp_get_nbx(ep, buf as *mut c_void, len, remote, rkey, &param) })
}

// --- socket addresses ----------------------------------------------------

/// `sockaddr_storage` conversions (UCX takes and returns them).
mod libc_sockaddr {
    use super::*;

    /// A `sockaddr_storage`-sized, aligned buffer.
    #[repr(C, align(8))]
    pub(crate) struct Storage(pub [u8; 128]);

    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;

    pub(crate) fn from(addr: SocketAddr) -> (Storage, u32) {
        let mut s = Storage([0; 128]);
        match addr {
            SocketAddr::V4(v4) => {
                s.0[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
                s.0[2..4].copy_from_slice(&v4.port().to_be_bytes());
                s.0[4..8].copy_from_slice(&v4.ip().octets());
                (s, 16)
            }
            SocketAddr::V6(v6) => {
                s.0[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
                s.0[2..4].copy_from_slice(&v6.port().to_be_bytes());
                s.0[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
                s.0[8..24].copy_from_slice(&v6.ip().octets());
                s.0[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
                (s, 28)
            }
        }
    }

    /// # Safety
    /// `p` points at 128 readable bytes of a `sockaddr_storage`.
    pub(crate) unsafe fn to(p: *const u8) -> Result<SocketAddr> {
        let mut raw = MaybeUninit::<[u8; 128]>::uninit();
        // SAFETY: the caller's contract; raw has room for 128 bytes.
        let raw = unsafe {
            ptr::copy_nonoverlapping(p, raw.as_mut_ptr() as *mut u8, 128);
            raw.assume_init()
        };
        let family = u16::from_ne_bytes([raw[0], raw[1]]);
        let port = u16::from_be_bytes([raw[2], raw[3]]);
        match family {
            AF_INET => {
                let ip = std::net::Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
                Ok(SocketAddr::from((ip, port)))
            }
            AF_INET6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&raw[8..24]);
                let scope = u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]]);
                let flow = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
                Ok(SocketAddr::V6(std::net::SocketAddrV6::new(
                    octets.into(),
                    port,
                    flow,
                    scope,
                )))
            }
            other => Err(Error::new(
                ErrorKind::InvalidData,
                format!("UCX reported a socket address of unknown family {other}"),
            )),
        }
    }
}
