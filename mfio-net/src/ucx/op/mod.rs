//! The data operations, one file each: how each is posted to UCX and what
//! its completion reports. [`InFlight`] is the record the worker keeps of
//! each until UCX reports it.

pub(crate) mod am;
pub(crate) mod control;
pub(crate) mod post;
pub(crate) mod rma;
pub(crate) mod stream;
pub(crate) mod tag;

use std::sync::Arc;

use mfio_core::completion::Completer;
use mfio_core::{Error, PacketView, Read, Write};

pub use am::{AmId, AmInfo, AmSend};
pub use tag::{EagerTag, Tag, TagInfo, TagMatch};

use super::sys;

/// The worker's returned tag messages (keyed by tag).
pub(crate) type ReturnedTags = mfio_core::returned::Returned<mfio_core::returned::KeyedMessage>;

/// An active message sent to `id`: its header and data.
pub(crate) type AmMessage = (u16, Vec<u8>, Vec<u8>);

/// The worker's returned active messages.
pub(crate) type ReturnedAms = mfio_core::returned::Returned<AmMessage>;

/// A receive posted on a worker at address `A`, whose report resolves to
/// `I`; resolves to the report and the buffer.
pub type ReportedRecv<'a, A, I, B> = mfio_core::ReportedIo<'a, super::worker::Worker, A, I, B>;

/// What an operation keeps alive until UCX is done with it (beside its
/// buffer, which its view holds).
pub(crate) enum Keep {
    Nothing,
    /// An active message's header (UCX 1.13 cannot copy it).
    Header(#[allow(dead_code)] Vec<u8>),
    /// Something else UCX refers to until then: the remote key of a put or
    /// get, the error slot of an endpoint being closed. Held, never read,
    /// so the record needs to know nothing of the layers above it.
    Held(#[allow(dead_code)] Arc<dyn Send + Sync>),
}

/// Who hears that a close finished.
pub(crate) enum Notify {
    /// Nobody (a close started by a drop).
    Nobody,
    /// The future of `Endpoint::close`.
    Completer(Completer<()>),
    /// A `CloseWrite` packet.
    View(PacketView<Write>),
}

impl Notify {
    pub(crate) fn tell(self, result: mfio_core::Result<()>) {
        match (self, result) {
            (Notify::Nobody, _) => {}
            (Notify::Completer(done), result) => done.complete(result),
            (Notify::View(view), Ok(())) => view.complete(0),
            (Notify::View(view), Err(err)) => view.fail(err),
        }
    }
}

/// An operation UCX holds, with what completes it.
pub(crate) enum InFlight {
    /// A send (tag, stream, active message, put): UCX reads the view.
    Send { view: PacketView<Write>, keep: Keep },
    /// A get: UCX writes the view.
    Get { view: PacketView<Read>, keep: Keep },
    /// A tag receive, with the sender's tag for whoever asked.
    TagRecv {
        view: PacketView<Read>,
        report: Option<Completer<TagInfo>>,
        /// The sender's tag and the length, when known from a probe.
        known: Option<(u64, usize)>,
        /// Where the message goes if the caller leaves without it.
        returned: Arc<ReturnedTags>,
    },
    /// A tag message still arriving when [`Worker::try_tag_recv`](crate::ucx::Worker::try_tag_recv)
    /// took it (into a buffer its caller let go): it goes to `returned`
    /// once whole, ahead of every later message (tag receives wait till
    /// then, [`State::tag_landing`](crate::ucx::worker::State)).
    TagLanding {
        view: PacketView<Read>,
        tag: u64,
        len: usize,
        returned: Arc<ReturnedTags>,
    },
    /// A stream receive on endpoint `ep_id`: ends its turn when done.
    StreamRecv { view: PacketView<Read>, ep_id: u64 },
    /// The data of an active message landing in a receive.
    AmData {
        view: PacketView<Read>,
        report: Option<Completer<AmInfo>>,
        header: Vec<u8>,
        /// The id it was sent to, and where it goes if the caller leaves
        /// without it.
        id: u16,
        returned: Arc<ReturnedAms>,
    },
    /// A close, and who to tell.
    Control {
        done: Notify,
        keep: Keep,
        what: &'static str,
    },
}

/// Completes `op` with what UCX reported.
pub(crate) fn finish(op: InFlight, f: sys::Finished) {
    let failed = |what: &str| -> Error {
        match f.status {
            sys::ERR_CANCELED => Error::cancelled(),
            status => sys::status_error(status, what),
        }
    };
    match op {
        InFlight::Send { view, keep } => {
            drop(keep);
            if f.status == sys::OK {
                let n = view.len();
                view.complete(n);
            } else {
                view.fail(failed("send"));
            }
        }
        InFlight::Get { view, keep } => {
            drop(keep);
            if f.status == sys::OK {
                let n = view.len();
                view.complete(n);
            } else {
                view.fail(failed("get"));
            }
        }
        InFlight::TagRecv {
            view,
            report,
            known,
            returned,
        } => tag::finish(view, report, known, &returned, f),
        InFlight::TagLanding {
            view,
            tag,
            len,
            returned,
        } => tag::landed(view, tag, len, &returned, f),
        InFlight::StreamRecv { view, .. } => stream::finish(view, f),
        InFlight::AmData {
            view,
            report,
            header,
            id,
            returned,
        } => am::finish(view, report, header, id, returned, f),
        InFlight::Control { done, keep, what } => {
            drop(keep);
            done.tell(if f.status == sys::OK { Ok(()) } else { Err(failed(what)) });
        }
    }
}

/// Fails an operation UCX dropped with its worker.
pub(crate) fn abandon(op: InFlight) {
    finish(
        op,
        sys::Finished {
            request: 0,
            status: sys::ERR_NOT_CONNECTED,
            length: 0,
            tag: 0,
        },
    );
}
