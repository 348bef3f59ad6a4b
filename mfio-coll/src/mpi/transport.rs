//! [`MpiTransport`]: MPI point-to-point messages as a [`Transport`], so the
//! collective algorithms (and [`TransportComm`](crate::algo::TransportComm))
//! run over MPI, driven by the MPI backend like any other operation.
//!
//! The transport talks on a private duplicate of the communicator it is
//! made from. A message is a frame (its [`Key`] and length, 24 bytes, then
//! up to 16 KiB of it) under one tag, and the rest of a longer message as a
//! second message under another; MPI keeps each sender's messages of one
//! tag in order, so the rest always follows its frame. One receive of any
//! source takes frames and files them in the [`Inbox`](crate::transport::Inbox) by sender and key.

use std::sync::{Arc, Weak};

use mfio_core::{BufResult, Error, Result};

use super::comm::MpiComm;
use super::p2p::{Source, TagMatch};
use crate::comm::{Communicator, Rank, Tag};
use crate::transport::linked::{self, Core, Linked};
use crate::transport::{frame_header, parse_frame_header, Key, Transport, TransportFuture, FRAME_HEADER};

/// Tag of frames (header and the start of the message).
const FRAME: Tag = 1;
/// Tag of the rest of a message longer than [`INLINE`].
const BULK: Tag = 2;
/// Bytes of a message that travel in its frame.
const INLINE: usize = 16 << 10;

/// The TCP transport among the ranks of `comm`, bootstrapped over MPI:
/// each rank listens on `ip` (port chosen by the system), the listening
/// addresses go round by one `MPI_Allgather`, then every pair of ranks
/// connects ([`connect_pairs`](crate::transport::bootstrap::connect_pairs)).
/// Collective.
///
/// # Errors
/// The OS error of listening; what the allgather reports; as
/// `connect_pairs` and [`TcpTransport::new`](crate::transport::tcp::TcpTransport::new).
#[cfg(feature = "tcp")]
pub fn tcp_transport(
    comm: &MpiComm,
    rt: &mfio_backends::Runtime,
    ip: std::net::IpAddr,
    live: crate::transport::tcp::Liveness,
    timeout: std::time::Duration,
) -> Result<crate::transport::tcp::TcpTransport> {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    const ENTRY: usize = 18;
    let listener = std::net::TcpListener::bind((ip, 0))?;
    let addr = listener.local_addr()?;
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut mine = v6.octets().to_vec();
    mine.extend_from_slice(&addr.port().to_le_bytes());
    let (res, (_, all)) = comm
        .blocking_allgather(mine, vec![0u8; ENTRY * comm.size()])
        .into_parts();
    res?;
    let table: Vec<SocketAddr> = all
        .chunks(ENTRY)
        .map(|c| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&c[..16]);
            let ip = Ipv6Addr::from(octets);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            SocketAddr::new(ip, u16::from_le_bytes([c[16], c[17]]))
        })
        .collect();
    let links = crate::transport::bootstrap::connect_pairs(comm.rank(), &listener, &table, timeout)?;
    crate::transport::tcp::TcpTransport::new(rt, comm.rank(), links, live)
}

/// The UCX transport among the ranks of `comm`, on `worker`: the worker
/// addresses go round by two `MPI_Allgather`s (their lengths, then the
/// addresses padded to the longest), then every rank connects to every
/// other. Collective.
///
/// # Errors
/// What the allgathers report; as [`UcxTransport::new`](crate::transport::ucx::UcxTransport::new).
#[cfg(feature = "ucx")]
pub fn ucx_transport(comm: &MpiComm, worker: &mfio_net::ucx::Worker) -> Result<crate::transport::ucx::UcxTransport> {
    let mine = worker.address();
    let mine = mine.as_bytes();
    let size = comm.size();
    let (res, (_, lens)) = comm
        .blocking_allgather(vec![mine.len() as u64], vec![0u64; size])
        .into_parts();
    res?;
    let longest = lens.iter().copied().max().unwrap_or(0);
    let longest = usize::try_from(longest)
        .ok()
        .filter(|&n| n <= crate::transport::bootstrap::MAX_EXCHANGE)
        .ok_or_else(|| {
            Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a worker address of {longest} bytes"),
            )
        })?;
    let mut padded = mine.to_vec();
    padded.resize(longest, 0);
    let (res, (_, all)) = comm.blocking_allgather(padded, vec![0u8; longest * size]).into_parts();
    res?;
    let blobs = all
        .chunks(longest.max(1))
        .zip(&lens)
        .map(|(c, &n)| c[..(n as usize).min(c.len())].to_vec())
        .collect();
    let addresses = crate::transport::ucx::addresses_of(blobs)?;
    crate::transport::ucx::UcxTransport::new(worker, comm.rank(), &addresses)
}

/// One rank's end of MPI point-to-point as a [`Transport`].
pub struct MpiTransport {
    comm: Arc<MpiComm>,
    shared: Arc<Shared>,
}

struct Shared {
    core: Core,
}

impl std::fmt::Debug for MpiTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiTransport")
            .field("rank", &self.shared.core.rank)
            .field("size", &self.shared.core.size)
            .finish_non_exhaustive()
    }
}

impl MpiTransport {
    /// A transport over the ranks of `comm`, on a duplicate of it (so its
    /// messages never meet `comm`'s). Collective: every rank of `comm`
    /// calls it.
    ///
    /// # Errors
    /// What `MPI_Comm_dup` reports.
    pub fn new(comm: &MpiComm) -> Result<Self> {
        let comm = Arc::new(comm.dup()?);
        let shared = Arc::new(Shared {
            core: Core::new(comm.rank(), comm.size()),
        });
        shared
            .core
            .background
            .spawn(Box::pin(read_frames(comm.clone(), Arc::downgrade(&shared))));
        Ok(Self { comm, shared })
    }
}

fn malformed(from: Rank, what: &str) -> Error {
    Error::new(
        std::io::ErrorKind::InvalidData,
        format!("a malformed message from rank {from} ({what})"),
    )
}

/// Takes frames from any rank (and the rest of each long message from its
/// sender) and files them in the inbox, until MPI fails a receive: then
/// the group is broken, and every receive waiting fails with the reason.
async fn read_frames(comm: Arc<MpiComm>, shared: Weak<Shared>) {
    let reason = loop {
        let BufResult(res, frame) = comm
            .recv(
                Source::Any,
                TagMatch::Tag(FRAME),
                Vec::with_capacity(FRAME_HEADER + INLINE),
            )
            .await;
        let info = match res {
            Ok(info) => info,
            Err(e) => break e,
        };
        let from = info.source;
        let Some((key, len)) = parse_frame_header(&frame) else {
            break malformed(from, "a frame shorter than its header, or longer than memory");
        };
        let data = if len <= INLINE {
            if frame.len() != FRAME_HEADER + len {
                break malformed(from, "a frame of another length than it says");
            }
            frame[FRAME_HEADER..].to_vec()
        } else {
            let rest = match shared.upgrade().map(|s| s.core.pool.take(len)) {
                Some(Ok(rest)) => rest,
                Some(Err(e)) => break Error::new(e.kind(), format!("{e} from rank {from} ({key})")),
                None => return,
            };
            let BufResult(res, rest) = comm.recv(Source::Rank(from), TagMatch::Tag(BULK), rest).await;
            match res {
                Ok(i) if i.len == len => rest,
                Ok(_) => break malformed(from, "a message of another length than its frame says"),
                Err(e) => break e,
            }
        };
        let Some(shared) = shared.upgrade() else { return };
        shared.core.inbox.deliver(from, key, data);
    };
    tracing::debug!(error = %reason, "mfio-coll MPI transport: a receive failed");
    if let Some(shared) = shared.upgrade() {
        shared.core.inbox.poison(format!("the MPI transport failed: {reason}"));
    }
}

impl Linked for Shared {
    fn core(&self) -> &Core {
        &self.core
    }

    /// MPI has no goodbye: a rank is lost only when MPI fails, which the
    /// reader reports for the whole group.
    fn lost(&self, peer: Rank, why: &str) {
        self.core.inbox.poison(format!("rank {peer} is gone: {why}"));
    }
}

impl Transport for MpiTransport {
    fn send(&self, to: Rank, key: Key, data: Vec<u8>) -> TransportFuture {
        let data = match linked::check_send(&*self.shared, to, key, data) {
            Ok(data) => data,
            Err(done) => return done,
        };
        let comm = self.comm.clone();
        linked::driven(&*self.shared, async move {
            let mut frame = frame_header(key, data.len(), data.len().min(INLINE));
            if data.len() <= INLINE {
                frame.extend_from_slice(&data);
                let (outcome, _) = comm.send(to, FRAME, frame).await;
                return BufResult(outcome.result().map(drop), data);
            }
            // Both posted in one poll, so the rest follows its frame.
            let ((framed, _), (rest, data)) =
                futures_util::future::join(comm.send(to, FRAME, frame), comm.send(to, BULK, data)).await;
            BufResult(framed.result().and(rest.result()).map(drop), data)
        })
    }

    crate::transport::linked::core_methods!();
}
