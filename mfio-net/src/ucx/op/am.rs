//! Active messages: a header and data sent to an id on the peer's worker.
//! Receives are packets posted on the worker for an id; the data lands in
//! the caller's buffer (rendezvous data straight from the sender, fetched
//! outside UCX's callback) and the header comes back beside it.

use std::sync::Arc;
use std::task::{Context, Poll};

use mfio_core::completion::{completion, Completer};
use mfio_core::{Error, PacketBuf, PacketIo, PacketView, QueueFull, Read, Write};

use super::post::{self, fail_read};
use super::{InFlight, Keep};
use super::{ReportedRecv, ReturnedAms};
use crate::ucx::endpoint::Endpoint;
use crate::ucx::sys::{self, AmArrival, AmData};
use crate::ucx::worker::{Settled, Shared, Start, State, Worker, GOODBYE_AM_ID, MAX_AM_ID};

/// How an active message's data travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AmProtocol {
    /// UCX chooses by size.
    #[default]
    Auto,
    /// Copied through eager buffers.
    Eager,
    /// Announced, then fetched by the receiver straight into its buffer.
    Rendezvous,
}

/// The address of an active-message send: the receiver's handler id, the
/// header (kept until the send completes), and how the data travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmSend {
    /// The id the receiver listens on (at most [`MAX_AM_ID`]).
    pub id: u16,
    /// Bytes delivered beside the data (at most
    /// [`Worker::max_am_header`]).
    pub header: Vec<u8>,
    /// Eager, rendezvous, or UCX's choice by size.
    pub protocol: AmProtocol,
}

impl AmSend {
    /// A message to `id` with `header`; UCX chooses the protocol.
    pub fn new(id: u16, header: impl Into<Vec<u8>>) -> Self {
        Self {
            id,
            header: header.into(),
            protocol: AmProtocol::Auto,
        }
    }
}

/// The address of an active-message receive: the id to take messages of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AmId(pub u16);

/// What an active-message receive took besides the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmInfo {
    /// The header the sender attached.
    pub header: Vec<u8>,
    /// The data's length (all of it landed in the buffer).
    pub len: usize,
}

fn bad_input(msg: String) -> Error {
    Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// Sends the packet as the data of one active message.
impl PacketIo<Write, AmSend> for Endpoint {
    fn try_send_io(&self, to: AmSend, view: PacketView<Write>) -> Result<(), QueueFull<Write, AmSend>> {
        let ep = &self.inner;
        if to.id > MAX_AM_ID {
            view.fail(bad_input(format!("active-message id {} is above {MAX_AM_ID}", to.id)));
            return Ok(());
        }
        if to.header.len() > ep.worker.max_am_header {
            view.fail(bad_input(format!(
                "active-message header of {} bytes is above the worker's limit of {}",
                to.header.len(),
                ep.worker.max_am_header
            )));
            return Ok(());
        }
        // The header moves into the record; UCX reads it from there (the
        // heap bytes do not move with the Vec).
        let (header, len) = (to.header.as_ptr(), to.header.len());
        post::send(ep, view, Keep::Header(to.header), |shared, _st, bytes, n| {
            // SAFETY: the endpoint is live and the worker locked; the bytes
            // and the header stay valid until UCX reports the send (the
            // record keeps both).
            unsafe {
                sys::am_send(
                    ep.handle,
                    to.id,
                    std::slice::from_raw_parts(header, len),
                    bytes,
                    n,
                    to.protocol == AmProtocol::Eager,
                    to.protocol == AmProtocol::Rendezvous,
                    false,
                    shared.sink(),
                )
            }
        });
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

fn post_recv(shared: &Shared, id: u16, view: PacketView<Read>, report: Option<Completer<AmInfo>>) {
    shared.start(|shared, st, _token| {
        if id > MAX_AM_ID {
            let err = bad_input(format!("active-message id {id} is above {MAX_AM_ID}"));
            if let Some(report) = report {
                report.complete(Err(err.duplicate()));
            }
            return fail_read(view, err);
        }
        st.am_listening.insert(id);
        if let Err(err) = shared.am_handler(st, id) {
            if let Some(report) = report {
                report.complete(Err(err.duplicate()));
            }
            return fail_read(view, err);
        }
        // A message a dropped receive took comes first.
        let returned = shared
            .returned_ams
            .take(|m| m.0 == id)
            .map(|(_, header, data)| AmArrival {
                id,
                header,
                data: AmData::Copied(data),
                reply_ep: std::ptr::null_mut(),
            });
        let next = returned.or_else(|| st.am.entry(id).or_default().arrivals.pop_front());
        match next {
            Some(arrival) => {
                let mut out = Vec::new();
                deliver(shared, st, view, report, arrival, &mut out);
                match out.pop() {
                    Some((op, f)) => Start::Finished(op, f),
                    None => Start::Nothing,
                }
            }
            None => {
                st.am.entry(id).or_default().receives.push_back((view, report));
                Start::Nothing
            }
        }
    });
}

/// What a receive of a message to `id` holds while (or once) its data lands.
fn landing(
    shared: &Shared,
    id: u16,
    view: PacketView<Read>,
    report: Option<Completer<AmInfo>>,
    header: Vec<u8>,
) -> InFlight {
    InFlight::AmData {
        view,
        report,
        header,
        id,
        returned: shared.returned_ams.clone(),
    }
}

fn finished(op: InFlight, status: sys::Status, length: usize) -> (InFlight, sys::Finished) {
    (
        op,
        sys::Finished {
            request: 0,
            status,
            length,
            tag: 0,
        },
    )
}

/// Hands `arrival` to a receive: copies what is here, fetches what is not.
fn deliver(
    shared: &Shared,
    st: &mut State,
    mut view: PacketView<Read>,
    report: Option<Completer<AmInfo>>,
    arrival: AmArrival,
    out: &mut Vec<(InFlight, sys::Finished)>,
) {
    let (id, header) = (arrival.id, arrival.header);
    let len = match &arrival.data {
        AmData::Copied(data) => data.len(),
        AmData::Held { len, .. } | AmData::Rendezvous { len, .. } => *len,
    };
    if len > view.len() {
        release(shared.handle, arrival.data);
        out.push(finished(
            landing(shared, id, view, report, header),
            sys::ERR_TRUNCATED,
            len,
        ));
        return;
    }
    match arrival.data {
        AmData::Copied(data) => {
            view.fill_from(&data);
            out.push(finished(landing(shared, id, view, report, header), sys::OK, len));
        }
        AmData::Held { desc, len } => {
            // SAFETY: UCX keeps len bytes at desc until we release it.
            let data = unsafe { std::slice::from_raw_parts(desc as *const u8, len) };
            view.fill_from(data);
            // SAFETY: kept from the callback, released once.
            unsafe { sys::am_data_release(shared.handle, desc) };
            out.push(finished(landing(shared, id, view, report, header), sys::OK, len));
        }
        AmData::Rendezvous { desc, len: 0 } => {
            // Nothing to fetch: UCX 1.13 leaks the descriptor of a
            // zero-byte fetch, so it is released (the sender completes).
            // SAFETY: kept from the callback, released once.
            unsafe { sys::am_data_release(shared.handle, desc) };
            out.push(finished(landing(shared, id, view, report, header), sys::OK, 0));
        }
        AmData::Rendezvous { desc, len } => {
            let ptr = view.as_mut_ptr();
            // SAFETY: outside any callback, with the worker locked; the
            // view stays in the record until UCX reports the fetch.
            let (posted, n) = unsafe { sys::am_recv_data(shared.handle, desc, ptr, len, shared.sink()) };
            match shared.settle(st, posted, landing(shared, id, view, report, header), n) {
                Settled::Now(op, f) => out.push((op, f)),
                Settled::Later => {}
            }
        }
    }
}

/// A message came in: to the first receive still wanted, else queued.
pub(crate) fn arrived(shared: &Shared, st: &mut State, arrival: AmArrival, out: &mut Vec<(InFlight, sys::Finished)>) {
    if arrival.id == GOODBYE_AM_ID {
        super::stream::goodbye(shared, st, arrival, out);
        return;
    }
    if arrival.id > MAX_AM_ID || !st.am_listening.contains(&arrival.id) {
        tracing::debug!(id = arrival.id, "dropping an active message to an id nobody listens on");
        release(shared.handle, arrival.data);
        return;
    }
    while let Some((view, report)) = st.am.entry(arrival.id).or_default().receives.pop_front() {
        if view.is_cancelled() {
            continue;
        }
        deliver(shared, st, view, report, arrival, out);
        return;
    }
    st.am.entry(arrival.id).or_default().arrivals.push_back(arrival);
}

/// Lets UCX free what an arrival holds.
pub(crate) fn release(worker: sys::WorkerH, data: AmData) {
    match data {
        AmData::Copied(_) => {}
        // SAFETY: kept from the callback on this worker, released once
        // (for rendezvous this declines the data).
        AmData::Held { desc, .. } | AmData::Rendezvous { desc, .. } => unsafe { sys::am_data_release(worker, desc) },
    }
}

pub(crate) fn finish(
    mut view: PacketView<Read>,
    report: Option<Completer<AmInfo>>,
    header: Vec<u8>,
    id: u16,
    returned: Arc<ReturnedAms>,
    f: sys::Finished,
) {
    if f.status == sys::OK {
        // From now on a caller that leaves without the message gives it
        // back. One that left already does so here.
        let claim = AmClaim {
            id,
            header: header.clone(),
            returned: returned.clone(),
        };
        if view.set_cancel_handler(Arc::new(claim), 0).is_err() {
            // SAFETY: the first `f.length` bytes of the view were written
            // (copied or fetched), and nothing writes it now.
            let data = unsafe { std::slice::from_raw_parts(view.as_mut_ptr(), f.length) };
            returned.put_back((id, header, data.to_vec()));
            if let Some(report) = report {
                report.complete(Err(Error::cancelled()));
            }
            view.fail(Error::cancelled());
            return;
        }
    }
    let result = match f.status {
        sys::OK => Ok(AmInfo { header, len: f.length }),
        sys::ERR_TRUNCATED => Err(Error::truncated(Some(f.length as u64), view.len() as u64)),
        sys::ERR_CANCELED => Err(Error::cancelled()),
        status => Err(sys::status_error(status, "active-message receive")),
    };
    match result {
        Ok(info) => {
            let len = info.len;
            if let Some(report) = report {
                report.complete(Ok(info));
            }
            view.complete(len);
        }
        Err(err) => {
            if let Some(report) = report {
                report.complete(Err(err.duplicate()));
            }
            view.fail(err);
        }
    }
}

/// Receives the data of the next message sent to the id; completes with its
/// length. Longer than the buffer: [`Error::is_truncated`] (the message is
/// dropped). Use [`Worker::am_recv`] to get the header too.
impl PacketIo<Read, AmId> for Worker {
    fn try_send_io(&self, id: AmId, view: PacketView<Read>) -> Result<(), QueueFull<Read, AmId>> {
        post_recv(&self.shared, id.0, view, None);
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// The address [`Worker::am_recv`] uses: an id and where to report the header.
#[derive(Debug)]
pub struct AmRecvReport {
    /// The id to take messages of.
    pub id: u16,
    /// Receives the header and length (or the error).
    pub report: Completer<AmInfo>,
}

impl PacketIo<Read, AmRecvReport> for Worker {
    fn try_send_io(&self, to: AmRecvReport, view: PacketView<Read>) -> Result<(), QueueFull<Read, AmRecvReport>> {
        post_recv(&self.shared, to.id, view, Some(to.report));
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// Future of [`Worker::am_recv`]: the header and length, and the buffer.
pub type AmRecv<'a, B> = ReportedRecv<'a, AmRecvReport, AmInfo, B>;

impl Worker {
    /// Receives the next active message sent to `id`: its data into `buf`,
    /// its header in the result.
    ///
    /// Messages that arrive before a receive is posted wait (their data
    /// held by UCX or copied); messages to an id nobody listens on are
    /// dropped by UCX. Call [`listen_am`](Self::listen_am) to start
    /// keeping an id's messages before the first receive. Dropping the
    /// future after it took a message gives the message to the next
    /// receive posted for `id`.
    pub fn am_recv<B: PacketBuf<Read>>(&self, id: u16, buf: B) -> AmRecv<'_, B> {
        let (report, info) = completion();
        ReportedRecv::new(self, AmRecvReport { id, report }, buf, info)
    }

    /// Starts keeping messages sent to `id` until a receive takes them.
    ///
    /// # Errors
    /// `InvalidInput` for an id above [`MAX_AM_ID`]; what UCX reports.
    pub fn listen_am(&self, id: u16) -> mfio_core::Result<()> {
        if id > MAX_AM_ID {
            return Err(bad_input(format!("active-message id {id} is above {MAX_AM_ID}")));
        }
        let mut st = self.shared.lock();
        st.am_listening.insert(id);
        self.shared.am_handler(&mut st, id)
    }
}

/// A message address does not move (see [`Tag`](super::Tag)'s `Position`).
impl mfio_core::Position for AmId {
    fn advance(self, _n: usize) -> Self {
        self
    }
    fn as_offset(self) -> Option<u64> {
        None
    }
}

/// Registered on an active-message receive as it completes: what the
/// message was, should its caller leave without it.
pub(crate) struct AmClaim {
    pub(crate) id: u16,
    pub(crate) header: Vec<u8>,
    pub(crate) returned: Arc<ReturnedAms>,
}

impl mfio_core::CancelHandler for AmClaim {
    /// Nothing to cancel: registered only once the receive completed.
    fn cancel(&self, _token: u64) {}

    /// The caller dropped the completed receive without taking it.
    fn unclaimed(&self, _token: u64, data: &[u8]) {
        self.returned.push((self.id, self.header.clone(), data.to_vec()));
    }
}
