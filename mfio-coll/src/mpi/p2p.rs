//! Tagged point-to-point messages on an [`MpiComm`] as packets: a
//! `Packet<Write>` sent at `(rank, tag)` is an `MPI_Isend`; a
//! `Packet<Read>` sent at `(rank, tag)`, or at a [`Source`] and a
//! [`TagMatch`] (either may be a wildcard), is an `MPI_Irecv`.
//! [`MpiComm::recv`] also reports the sender, tag and length.
//!
//! Dropping a pending receive cancels it (`MPI_Cancel`); if MPI had matched
//! a message already, the message is kept and the next matching receive
//! takes it, as it is when a receive completes and its caller drops it
//! unclaimed. Nothing is lost.
//!
//! A message or receive buffer beyond MPI's count limit is one element of
//! a datatype made for it, so lengths are not limited.
//!
//! Open MPI 4.1's loopback transport writes a message a rank sends itself
//! past a shorter receive buffer when the message exceeds 1 KiB. When mfio
//! initialises MPI it turns that transport's RDMA off
//! (`OMPI_MCA_btl_self_flags=send,inplace`, unless set already); a program
//! that initialises MPI itself should set it too.

use std::ffi::c_int;
use std::sync::Arc;
use std::task::{Context, Poll};

use mfio_core::completion::{completion, Completer};
use mfio_core::returned::{KeyedMessage, Returned};
use mfio_core::{
    Error, IoFuture, PacketBuf, PacketIo, PacketIoExt, PacketView, QueueFull, Read, ReportedIo, Result, Write,
};

use super::backend::{mpi_error, Done, Finish};
use super::comm::MpiComm;
use super::{datatype, sys};
use crate::check::{self, invalid};
use crate::comm::{Rank, Tag};

/// Whose messages a receive takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Only this rank's.
    Rank(Rank),
    /// Any rank's (`MPI_ANY_SOURCE`).
    Any,
}

/// Which tags a receive takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagMatch {
    /// Only this tag.
    Tag(Tag),
    /// Any tag (`MPI_ANY_TAG`).
    Any,
}

/// What a receive took: who sent it, with which tag, and how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecvInfo {
    /// The sender's rank.
    pub source: Rank,
    /// The message's tag.
    pub tag: Tag,
    /// Its length in bytes (all of it landed in the buffer).
    pub len: usize,
}

/// The address of a receive that reports what it took: where to take from,
/// and where to report. [`MpiComm::recv`] builds one.
#[derive(Debug)]
pub struct RecvReport {
    /// Whose messages to take.
    pub source: Source,
    /// Which tags to take.
    pub tag: TagMatch,
    /// Receives the sender, tag and length (or the error).
    pub report: Completer<RecvInfo>,
}

/// The address of a plain receive from a [`Source`] with a [`TagMatch`].
pub type RecvFrom = (Source, TagMatch);

/// The key a returned message is kept under: its source and tag.
fn key(source: Rank, tag: Tag) -> u64 {
    ((source as u64) << 32) | u64::from(tag)
}

fn matches(source: Source, tag: TagMatch, key: u64) -> bool {
    let (s, t) = ((key >> 32) as Rank, (key & 0xffff_ffff) as Tag);
    (source == Source::Any || source == Source::Rank(s)) && (tag == TagMatch::Any || tag == TagMatch::Tag(t))
}

impl MpiComm {
    fn check_peer(&self, what: &str, rank: Rank) -> Result<c_int> {
        check::rank(what, rank, self.size())?;
        c_int::try_from(rank).map_err(|_| invalid(format!("{what} {rank} too large for MPI")))
    }

    fn check_tag(&self, tag: Tag) -> Result<c_int> {
        if tag > self.tag_ub {
            return Err(invalid(format!(
                "tag {tag} exceeds this communicator's largest tag ({})",
                self.tag_ub
            )));
        }
        c_int::try_from(tag).map_err(|_| invalid("tag too large for MPI"))
    }

    fn size(&self) -> usize {
        crate::Communicator::size(self)
    }

    /// Sends `buf` as one message to `rank` with `tag`; resolves once the
    /// buffer may be reused, to the outcome (the length sent) and the buffer.
    pub fn send<B: PacketBuf<Write>>(&self, rank: Rank, tag: Tag, buf: B) -> IoFuture<'_, Self, Write, (Rank, Tag), B> {
        self.io((rank, tag), buf)
    }

    /// Receives one message from `source` with a tag `tag` accepts into
    /// `buf`, reporting who sent it, its tag and its length. A message
    /// longer than `buf` fails with [`Error::is_truncated`].
    pub fn recv<B: PacketBuf<Read>>(&self, source: Source, tag: TagMatch, buf: B) -> MpiRecv<'_, B> {
        let (report, info) = completion();
        ReportedIo::new(self, RecvReport { source, tag, report }, buf, info)
    }

    fn post_recv(
        &self,
        source: Source,
        tag: TagMatch,
        mut view: PacketView<Read>,
        report: Option<Completer<RecvInfo>>,
    ) {
        let (any_source, any_tag, _) = sys::wildcards();
        let checked = (|| -> Result<(c_int, c_int)> {
            let s = match source {
                Source::Rank(r) => self.check_peer("source", r)?,
                Source::Any => any_source,
            };
            let t = match tag {
                TagMatch::Tag(t) => self.check_tag(t)?,
                TagMatch::Any => any_tag,
            };
            Ok((s, t))
        })();
        let (s, t) = match checked {
            Ok(v) => v,
            Err(err) => return fail_recv(view, report, err),
        };
        let shared = &self.mpi.shared;
        let returned = shared.returned.clone();
        // A message a dropped receive took comes first: it arrived before
        // anything MPI still holds.
        if let Some((k, data)) = returned.take(|(k, _)| matches(source, tag, *k)) {
            let info = RecvInfo {
                source: (k >> 32) as Rank,
                tag: (k & 0xffff_ffff) as Tag,
                len: data.len(),
            };
            let result = if data.len() > view.len() {
                Err(Error::truncated(Some(data.len() as u64), view.len() as u64))
            } else {
                view.fill_from(&data);
                Ok(info)
            };
            return RecvWork { view, report, returned }.complete(result);
        }
        let handles = self.handles.clone();
        let comm = handles.comm;
        let cancels = shared.cancels.clone();
        let max = shared.max_count;
        shared.submit(move |_, st, done| {
            // A buffer beyond one count is one element of a type made for
            // it; MPI matches it with a message of any shorter length.
            let block = match datatype::block::<u8>(st, "receive buffer", view.len(), max) {
                Ok(b) => b,
                Err(err) => return fail_recv(view, report, err),
            };
            let token = st.next_token();
            if view.set_cancel_handler(cancels, token).is_err() {
                done.push(Done::now(
                    Box::new(RecvWork { view, report, returned }),
                    Err(Error::cancelled()),
                ));
                return;
            }
            let ptr = sys::buffer_mut(view.as_mut_ptr().cast(), view.len());
            let work = Box::new(RecvWork { view, report, returned });
            let mut once = true;
            st.post(
                work,
                block.made.into_iter().collect(),
                handles,
                true,
                |_| {
                    std::mem::take(&mut once).then(|| {
                        // SAFETY: the view (in the record) owns the
                        // writable bytes at `ptr` the block describes until
                        // the request finishes; the type lives as long (a
                        // handle of the record); the state is held on an
                        // allowed thread.
                        unsafe { sys::irecv(ptr, (block.count, block.ty), s, t, comm.raw()) }
                            .map_err(|c| mpi_error(c, "MPI_Irecv"))
                    })
                },
                done,
            );
        });
    }
}

/// The future of [`MpiComm::recv`].
pub type MpiRecv<'a, B> = ReportedIo<'a, MpiComm, RecvReport, RecvInfo, B>;

fn fail_recv(view: PacketView<Read>, report: Option<Completer<RecvInfo>>, err: Error) {
    if let Some(report) = report {
        report.complete(Err(err.duplicate()));
    }
    view.fail(err);
}

/// A receive in flight.
struct RecvWork {
    view: PacketView<Read>,
    report: Option<Completer<RecvInfo>>,
    returned: Arc<Returned<KeyedMessage>>,
}

impl RecvWork {
    fn complete(self, result: Result<RecvInfo>) {
        let RecvWork {
            mut view,
            report,
            returned,
        } = self;
        let info = match result {
            Ok(info) => info,
            Err(err) => return fail_recv(view, report, err),
        };
        // From now on a caller that leaves without the message gives it
        // back (under its source and tag); one that left already does so
        // here.
        let k = key(info.source, info.tag);
        if view.set_cancel_handler(returned.clone(), k).is_err() {
            let len = info.len.min(view.len());
            // SAFETY: MPI (or a returned message) wrote the first `len`
            // bytes of the view, which nothing writes now.
            let data = unsafe { std::slice::from_raw_parts(view.as_mut_ptr(), len) };
            returned.put_back((k, data.to_vec()));
            return fail_recv(view, report, Error::cancelled());
        }
        if let Some(report) = report {
            report.complete(Ok(info));
        }
        view.complete(info.len);
    }
}

impl Finish for RecvWork {
    fn finish(self: Box<Self>, result: Result<()>, status: &sys::Status) {
        let (cancelled, count) = sys::status_cancelled_count(status);
        let len = self.view.len();
        let result = match result {
            Err(err) if err.is_truncated() => Err(Error::truncated(None, len as u64)),
            Err(err) => Err(err),
            Ok(()) if cancelled => Err(Error::cancelled()),
            Ok(()) => {
                let (source, tag, _) = sys::status_fields(status);
                match (usize::try_from(source), u32::try_from(tag), count) {
                    (Ok(source), Ok(tag), Some(len)) => Ok(RecvInfo { source, tag, len }),
                    _ => Err(Error::new(
                        std::io::ErrorKind::InvalidData,
                        "MPI reported a malformed receive status",
                    )),
                }
            }
        };
        (*self).complete(result);
    }

    fn name(&self) -> &'static str {
        "receive"
    }
}

/// A send in flight.
struct SendWork {
    view: PacketView<Write>,
}

impl Finish for SendWork {
    fn finish(self: Box<Self>, result: Result<()>, _status: &sys::Status) {
        let len = self.view.len();
        self.view.finish(result.map(|()| len));
    }

    fn name(&self) -> &'static str {
        "send"
    }
}

/// Sends the packet as one message to `rank` with `tag`; completes once
/// the buffer may be reused (the message may still be on its way). A send
/// cannot be cancelled: dropping it lets it finish, buffer kept until then.
impl PacketIo<Write, (Rank, Tag)> for MpiComm {
    fn try_send_io(
        &self,
        (rank, tag): (Rank, Tag),
        view: PacketView<Write>,
    ) -> std::result::Result<(), QueueFull<Write, (Rank, Tag)>> {
        let checked = (|| -> Result<(c_int, c_int)> {
            let dest = self.check_peer("destination", rank)?;
            let tag = self.check_tag(tag)?;
            Ok((dest, tag))
        })();
        let (dest, tag) = match checked {
            Ok(v) => v,
            Err(err) => {
                view.fail(err);
                return Ok(());
            }
        };
        let handles = self.handles.clone();
        let comm = handles.comm;
        let max = self.mpi.shared.max_count;
        self.mpi.shared.submit(move |_, st, done| {
            // A message beyond one count is one element of a type made for
            // it: one message still, whatever its length.
            let block = match datatype::block::<u8>(st, "message", view.len(), max) {
                Ok(b) => b,
                Err(err) => return view.fail(err),
            };
            let ptr = sys::buffer(view.as_slice().as_ptr().cast(), view.len());
            let mut once = true;
            st.post(
                Box::new(SendWork { view }),
                block.made.into_iter().collect(),
                handles,
                false,
                |_| {
                    std::mem::take(&mut once).then(|| {
                        // SAFETY: the view (in the record) keeps the
                        // readable bytes at `ptr` the block describes until
                        // the request finishes; the type lives as long (a
                        // handle of the record); the state is held on an
                        // allowed thread.
                        unsafe { sys::isend(ptr, (block.count, block.ty), dest, tag, comm.raw()) }
                            .map_err(|c| mpi_error(c, "MPI_Isend"))
                    })
                },
                done,
            );
        });
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// Receives one message from `rank` with `tag`; completes with its length.
impl PacketIo<Read, (Rank, Tag)> for MpiComm {
    fn try_send_io(
        &self,
        (rank, tag): (Rank, Tag),
        view: PacketView<Read>,
    ) -> std::result::Result<(), QueueFull<Read, (Rank, Tag)>> {
        self.post_recv(Source::Rank(rank), TagMatch::Tag(tag), view, None);
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// Receives one message from a source and tag that may be wildcards;
/// completes with its length ([`MpiComm::recv`] also reports who sent it).
impl PacketIo<Read, RecvFrom> for MpiComm {
    fn try_send_io(
        &self,
        (source, tag): RecvFrom,
        view: PacketView<Read>,
    ) -> std::result::Result<(), QueueFull<Read, RecvFrom>> {
        self.post_recv(source, tag, view, None);
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// A receive that reports what it took through the address's completer.
impl PacketIo<Read, RecvReport> for MpiComm {
    fn try_send_io(
        &self,
        to: RecvReport,
        view: PacketView<Read>,
    ) -> std::result::Result<(), QueueFull<Read, RecvReport>> {
        self.post_recv(to.source, to.tag, view, Some(to.report));
        Ok(())
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}
