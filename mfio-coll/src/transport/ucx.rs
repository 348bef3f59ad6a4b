//! [`UcxTransport`]: the ranks of a job as UCX workers (mfio-net), joined
//! by one endpoint per pair of ranks, made from worker addresses that the
//! ranks exchange through [`Bootstrap`](super::bootstrap::Bootstrap) (no MPI) or an `MPI_Allgather`
//! (`mpi::ucx_transport`). UCX picks the wire: shared memory within a host,
//! TCP, InfiniBand or RoCE between hosts (`UCX_TLS`).
//!
//! A message is a UCX tag message: a frame (its [`Key`] and length, 24
//! bytes, then the message if it is at most 16 KiB) whose tag names the
//! sender. A message of at most 1000 bytes goes without a future or a
//! packet where UCX can send it at once ([`Transport::try_send_now`]), and
//! frames that are in already are taken without a packet too
//! (`Worker::try_tag_recv`): in a loop of 8-byte bcasts on 2 ranks the
//! root's instructions per call halved and the receiver's fell by 30 %.
//! Frames go eagerly ([`EagerTag`]): UCX would send one of more
//! than ~8 KiB by rendezvous, a round trip more for bytes that are copied
//! anyway (a 16 KiB bcast on 2 ranks: 4.8 µs → 2.8 µs; BENCHMARKS.md). A
//! longer message's bytes follow as a second tag message whose
//! tag names the sender and the message's number, which its frame's tag
//! carries too, so the receiver takes exactly that one. One receive of
//! frames from every rank files them in the [`Inbox`](super::Inbox) by
//! sender and key. A long message's bytes stay with UCX (the sender's
//! rendezvous: its send completes when they are taken, as a long MPI send
//! does) until a receive asks for them, and then land in the receive's
//! block of the collective's buffer if it brought one
//! ([`Transport::recv_block`]), without a copy; a message of a forgotten
//! collective has its bytes taken and dropped.
//!
//! Between ranks on one host, a long block
//! ([`Transport::send_block`]) goes as an offer instead: its frame says
//! where the bytes are, the receiver reads them straight out of the
//! sender's memory into its block (`process_vm_readv`, one copy) and
//! replies with a tag message of its own (top 16 bits `0x6D72`); the send
//! is done when the reply comes. UCX's own rendezvous would use `cma` for
//! that, but not on endpoints with peer failure detection, which this
//! transport needs: there it copies twice, through shared memory. A
//! receiver that cannot read the sender's memory (another host, or the
//! kernel refuses) asks for the bytes, which then come as above, and
//! nothing more is offered to it. Offers are made only if the context's
//! transport list allows `cma` ([`Context::allows_transport`](mfio_net::ucx::Context::allows_transport)).
//!
//! Each pair of ranks also shares a stream on its endpoint, which carries
//! nothing but a rank's goodbye. A rank that drops its transport sends a
//! goodbye frame and that byte, then closes its endpoints: receives from
//! it fail with an error naming it, and the rest of the group goes on. A
//! stream that ends without a goodbye, or fails (UCX's keepalive noticed
//! the peer is dead: `UCX_KEEPALIVE_INTERVAL` says how soon), means the
//! rank is lost: the group is broken, every receive with nothing waiting
//! fails naming it, and the other ranks are told, as over TCP.
//!
//! The transport's operations run on its worker: drive the worker
//! (`block_on`, or a host runtime) while they are pending. It takes every
//! tag message whose top 16 bits are `0x6D66`, `0x6D62` or `0x6D72`; other
//! traffic on the same worker must leave those tags alone.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Context;
use std::time::{Duration, Instant};

use mfio_core::{BufResult, Error, IoBackend, IoBuf, IoReadStream, IoWrite, IoWriteStream, Result};
use mfio_net::ucx::{EagerTag, Endpoint, Tag, TagMatch, Worker, WorkerAddress};

use super::driven::{InPlace, Task};
use super::inbox::Announced;
use super::linked::{self, Core, Linked};
use super::single_copy::{Offer, Process, OFFER_LEN};
use super::{
    frame_header, header_bytes, parse_frame_header, Block, BlockFuture, BlockMut, Key, Transport, TransportFuture,
    CONTROL_COMM, FRAME_HEADER,
};
use crate::comm::Rank;

/// Bytes of a message that travel in its frame (eagerly). Above this a
/// message's bytes wait for its receiver (an offer, or UCX's rendezvous),
/// so that a sender does not run far ahead into the receiver's memory:
/// with 64 KiB frames, a loop of 64 KiB bcasts on 2 ranks fell into a mode
/// 3–4× slower in 2 of 8 runs (BENCHMARKS.md).
const INLINE: usize = 16 << 10;

/// The longest message [`Transport::try_send_now`] sends: its frame is
/// built on the stack and handed to UCX, which sends it at once by its
/// short protocol if the message fits that (about 8 KiB on shared memory,
/// `ucx_info -e`) and the way to the peer has room.
const SHORT: usize = 1024 - FRAME_HEADER;

/// The top 16 bits of a frame's tag ("mf") and of a long message's rest
/// ("mb"); then 16 bits of sender, then 32 of the message's number.
const FRAME: u64 = 0x6D66;
const BULK: u64 = 0x6D62;
/// A receiver's reply to an offer ("mr"): 16 bits of the receiver, then
/// the message's number; one byte, [`TAKEN`] or [`SEND_IT`].
const REPLY: u64 = 0x6D72;
const KIND_MASK: u64 = 0xFFFF << 48;

/// The receiver read an offered message's bytes (or dropped the message):
/// the sender's send is done.
const TAKEN: u8 = b'T';
/// The receiver cannot read the sender's memory: the bytes are to follow
/// as a message of their own, as when nothing was offered.
const SEND_IT: u8 = b'S';

/// The most ranks a group may have (the sender's bits of a tag).
pub const MAX_RANKS: usize = 1 << 16;

/// Control frames (key.comm = [`CONTROL_COMM`]): key.seq says which.
const GOODBYE: u32 = 0;
/// key.step is the lost rank; the payload says why.
const LOST: u32 = 1;

/// The stream byte of a rank that leaves on purpose.
const LEAVING: u8 = b'G';

/// How long dropping a transport waits for its goodbyes to leave and for
/// the peers' to come.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

fn tag(kind: u64, sender: Rank, number: u32) -> u64 {
    (kind << 48) | ((sender as u64) << 32) | u64::from(number)
}

/// One rank's end of a group joined by UCX.
pub struct UcxTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for UcxTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UcxTransport")
            .field("rank", &self.shared.core.rank)
            .field("size", &self.shared.core.size)
            .finish_non_exhaustive()
    }
}

struct Shared {
    /// Rank, size, inbox, and the background work: the receive of frames,
    /// long messages' rest, the streams' watchers, notices to other ranks.
    core: Core,
    worker: Worker,
    /// Per rank: the endpoint to it (`None` at this rank).
    eps: Vec<Option<Arc<Endpoint>>>,
    /// Per rank: the number of the next long message to it.
    next_long: Vec<AtomicU32>,
    /// This process, if it knows its host (else it neither offers nor
    /// reads offers).
    process: Option<Process>,
    /// Whether long blocks are offered to be read in place (the context
    /// lets UCX use `cma`, and this process knows its host).
    single_copy: bool,
    /// Per rank: it could not read an offer (another host, or the kernel
    /// refused), so nothing more is offered to it.
    refuses_offers: Vec<AtomicBool>,
    /// Messages this rank read in place ([`UcxTransport::messages_read_in_place`]).
    read_in_place: AtomicU64,
}

impl Shared {
    /// This process, if it offers long blocks to `to`.
    fn offers_to(&self, to: Rank) -> Option<&Process> {
        self.process
            .as_ref()
            .filter(|_| self.single_copy && !self.refuses_offers[to].load(Ordering::Relaxed))
    }
}

impl UcxTransport {
    /// This rank's transport on `worker`, connected to every other rank of
    /// `addresses` (every rank's worker address, in rank order; this
    /// rank's own entry is not used). Every rank makes its transport with
    /// the same table.
    ///
    /// Set `UCX_KEEPALIVE_INTERVAL` (or the context's `KEEPALIVE_INTERVAL`)
    /// to how soon a dead peer must be noticed.
    ///
    /// # Errors
    /// `InvalidInput` for a rank outside the table or a table of more than
    /// [`MAX_RANKS`]; what UCX reports connecting.
    pub fn new(worker: &Worker, rank: Rank, addresses: &[WorkerAddress]) -> Result<Self> {
        let size = addresses.len();
        if rank >= size || size > MAX_RANKS {
            return Err(Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("rank {rank} of a table of {size} worker addresses (at most {MAX_RANKS} ranks)"),
            ));
        }
        let mut eps = Vec::with_capacity(size);
        for (peer, address) in addresses.iter().enumerate() {
            if peer == rank {
                eps.push(None);
                continue;
            }
            let ep = worker
                .connect(address)
                .map_err(|e| Error::new(e.kind(), format!("connecting to rank {peer}: {e}")))?;
            eps.push(Some(Arc::new(ep)));
        }
        let shared = Arc::new(Shared {
            core: Core::new(rank, size),
            worker: worker.clone(),
            eps,
            next_long: (0..size).map(|_| AtomicU32::new(0)).collect(),
            process: Process::this(),
            single_copy: worker.context().allows_transport("cma"),
            refuses_offers: (0..size).map(|_| AtomicBool::new(false)).collect(),
            read_in_place: AtomicU64::new(0),
        });
        // Held weakly: dropping the transport drops them.
        let weak = Arc::downgrade(&shared);
        shared
            .core
            .background
            .spawn(receive_frames(worker.clone(), weak.clone()));
        for (peer, ep) in shared.eps.iter().enumerate() {
            if let Some(ep) = ep {
                shared.core.background.spawn(watch(peer, ep.clone(), weak.clone()));
            }
        }
        Ok(Self { shared })
    }

    /// This rank's transport on `worker`, the ranks' worker addresses
    /// exchanged over the connections `boot` makes (which are closed
    /// afterwards). Every rank of the job calls it.
    ///
    /// # Errors
    /// As [`Bootstrap::connect`](super::bootstrap::Bootstrap::connect) and
    /// [`exchange`](super::bootstrap::exchange); a malformed address from
    /// a peer; as [`new`](Self::new).
    pub fn bootstrap(worker: &Worker, boot: &super::bootstrap::Bootstrap) -> Result<Self> {
        let mut links = boot.connect()?;
        let blobs = super::bootstrap::exchange(&mut links, boot.rank(), worker.address().as_bytes(), boot.deadline())?;
        let addresses = addresses_of(blobs)?;
        Self::new(worker, boot.rank(), &addresses)
    }

    /// The worker the transport's operations run on.
    pub fn worker(&self) -> &Worker {
        &self.shared.worker
    }

    /// How many messages this rank has read straight out of their senders'
    /// memory (single copy within a host, see the module docs). None when
    /// the context's transport list leaves out `cma`, between hosts, or
    /// where the kernel does not let this process read its peers' memory.
    pub fn messages_read_in_place(&self) -> u64 {
        self.shared.read_in_place.load(Ordering::Relaxed)
    }
}

impl Drop for UcxTransport {
    /// Says goodbye to every peer (a frame, then the stream byte, so the
    /// frames sent before it are all in when the stream ends), and takes
    /// the peers' goodbyes while they come, for at most a second:
    /// a frame that arrives after the worker stopped taking frames stays
    /// in UCX, which warns of it when the worker goes. The endpoints then
    /// close after flushing (operations still in flight keep them
    /// open until they finish).
    fn drop(&mut self) {
        let this = &*self.shared;
        let frame = frame_header(control_key(GOODBYE, 0), 0, 0);
        let mut pending: Vec<TransportFuture> = Vec::new();
        for ep in this.eps.iter().flatten() {
            let (ep, frame, sender) = (ep.clone(), frame.clone(), this.core.rank);
            pending.push(Box::pin(async move {
                let (sent, frame) = ep.write_at(Tag(tag(FRAME, sender, 0)), frame).await.into_parts();
                if sent.is_ok() {
                    let _ = ep.write_all(vec![LEAVING]).await;
                }
                BufResult(sent.map(drop), frame)
            }));
        }
        let deadline = Instant::now() + GOODBYE_WAIT;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut slot = None;
        let peers_left = |inbox: &super::Inbox| (0..this.eps.len()).all(|r| r == this.core.rank || inbox.is_gone(r));
        while Instant::now() < deadline {
            pending.retain_mut(|f| f.as_mut().poll(&mut cx).is_pending());
            this.core.background.drive_all(&mut cx, &mut slot);
            if pending.is_empty() && (peers_left(&this.core.inbox) || this.core.inbox.is_broken()) {
                break;
            }
            if !this.worker.drive().progress {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        this.core.background.release(slot);
    }
}

/// The worker addresses in `blobs` (one per rank, as peers sent them).
///
/// # Errors
/// `InvalidData` naming the rank whose blob is not a worker address.
pub(crate) fn addresses_of(blobs: Vec<Vec<u8>>) -> Result<Vec<WorkerAddress>> {
    blobs
        .iter()
        .enumerate()
        .map(|(r, b)| {
            WorkerAddress::from_bytes(b).map_err(|e| {
                Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("rank {r} sent no worker address: {e}"),
                )
            })
        })
        .collect()
}

fn control_key(what: u32, step: u32) -> Key {
    Key {
        comm: CONTROL_COMM,
        seq: what,
        step,
        chunk: 0,
    }
}

fn malformed(from: Rank, what: &str) -> Error {
    Error::new(
        std::io::ErrorKind::InvalidData,
        format!("a malformed message from rank {from} ({what})"),
    )
}

/// Takes frames from every rank and files them in the inbox (a long
/// message's frame starts the receive of its rest), until UCX fails the
/// receive or a frame is malformed: then the group is broken.
fn receive_frames(worker: Worker, shared: Weak<Shared>) -> Task {
    Box::pin(async move {
        let frames = TagMatch {
            tag: FRAME << 48,
            mask: KIND_MASK,
        };
        let mut frame = Vec::with_capacity(FRAME_HEADER + INLINE);
        let reason = loop {
            // Frames in already are taken without a packet (a probe and a
            // copy each); then a receive waits for the next.
            let taken = match worker.try_tag_recv(frames, &mut frame) {
                Ok(Some(info)) => Ok(info),
                Ok(None) => {
                    // (Its memory went with a frame still arriving.)
                    if frame.capacity() < FRAME_HEADER + INLINE {
                        frame = Vec::with_capacity(FRAME_HEADER + INLINE);
                    }
                    frame.clear();
                    let BufResult(res, buf) = worker.tag_recv(frames, frame).await;
                    frame = buf;
                    res
                }
                Err(e) => Err(e),
            };
            let info = match taken {
                Ok(info) => info,
                Err(e) => break e,
            };
            let from = ((info.tag >> 32) & 0xFFFF) as Rank;
            let number = info.tag as u32;
            let Some(shared) = shared.upgrade() else { return };
            if from >= shared.eps.len() || from == shared.core.rank {
                break malformed(from, "a sender outside the group");
            }
            let Some((key, len)) = parse_frame_header(&frame) else {
                break malformed(from, "a frame shorter than its header, or longer than memory");
            };
            if key.comm == CONTROL_COMM {
                match key.seq {
                    GOODBYE => {
                        tracing::debug!(from, "mfio-coll UCX: rank said goodbye");
                        shared.core.inbox.close(from);
                    }
                    LOST => {
                        let why = String::from_utf8_lossy(&frame[FRAME_HEADER..]);
                        shared
                            .core
                            .inbox
                            .poison(format!("rank {} is gone (rank {from} lost it: {why})", key.step));
                    }
                    _ => {}
                }
                continue;
            }
            if len > INLINE {
                let offer = match frame.len() - FRAME_HEADER {
                    0 => None,
                    OFFER_LEN => match Offer::decode(&frame[FRAME_HEADER..]) {
                        Some(offer) => Some(offer),
                        None => break malformed(from, "an offer that does not decode"),
                    },
                    _ => break malformed(from, "a long message's frame carrying bytes"),
                };
                // Its bytes wait with the sender (offered to be read in
                // place) or with UCX (the sender's rendezvous) until a
                // receive asks for them: then they land in the receive's
                // block if it has one, where the collective wants them.
                let (worker, weak) = (worker.clone(), Arc::downgrade(&shared));
                let fetch = move |into| {
                    let Some(shared) = weak.upgrade() else { return };
                    let into = match offer {
                        Some(offer) => match shared.take_offered(from, key, len, number, offer, into) {
                            Ok(()) => return,
                            Err(into) => into,
                        },
                        None => into,
                    };
                    let rest = receive_rest(worker, weak, from, key, len, number, into);
                    shared.core.background.spawn(rest);
                };
                shared.core.inbox.announce(from, key, Announced::new(len, fetch));
                continue;
            }
            if frame.len() != FRAME_HEADER + len {
                break malformed(from, "a frame of another length than it says");
            }
            shared.core.inbox.deliver_bytes(from, key, &frame[FRAME_HEADER..]);
        };
        tracing::debug!(error = %reason, "mfio-coll UCX: the receive of frames failed");
        if let Some(shared) = shared.upgrade() {
            shared.core.inbox.poison(format!("the UCX transport failed: {reason}"));
        }
    })
}

/// Receives the rest of a long message (message `number` from `from`):
/// into `into` (a waiting receive's block) if given, then wakes that
/// receive; else into a buffer filed under `key`.
fn receive_rest(
    worker: Worker,
    shared: Weak<Shared>,
    from: Rank,
    key: Key,
    len: usize,
    number: u32,
    into: Option<BlockMut>,
) -> Task {
    Box::pin(async move {
        let matching = TagMatch::exact(tag(BULK, from, number));
        let failure = if let Some(into) = into {
            let BufResult(res, into) = worker.tag_recv(matching, into.into_io()).await;
            // The block goes back before the receive hears of it.
            drop(into);
            match res {
                Ok(info) if info.len == len => {
                    if let Some(shared) = shared.upgrade() {
                        shared.core.inbox.land(from, key);
                    }
                    return;
                }
                Ok(_) => malformed(from, "a message of another length than its frame says"),
                Err(e) => e,
            }
        } else {
            let taken = match shared.upgrade() {
                Some(shared) => shared.core.pool.take(len),
                None => return,
            };
            match taken {
                Err(e) => Error::new(e.kind(), format!("{e} from rank {from} ({key})")),
                Ok(rest) => {
                    let BufResult(res, rest) = worker.tag_recv(matching, rest).await;
                    match res {
                        Ok(info) if info.len == len => {
                            if let Some(shared) = shared.upgrade() {
                                shared.core.inbox.deliver(from, key, rest);
                            }
                            return;
                        }
                        Ok(_) => malformed(from, "a message of another length than its frame says"),
                        Err(e) => e,
                    }
                }
            }
        };
        if let Some(shared) = shared.upgrade() {
            shared.lost(from, &failure.to_string());
        }
    })
}

/// Watches the stream to `peer`: a goodbye byte then its end is a rank that
/// left on purpose (its goodbye frame closes it in the inbox); an end
/// without one, or a failure, is a rank lost.
fn watch(peer: Rank, ep: Arc<Endpoint>, shared: Weak<Shared>) -> Task {
    Box::pin(async move {
        let mut leaving = false;
        let why = loop {
            let BufResult(res, got) = ep.read(Vec::with_capacity(16)).await;
            match res {
                Ok(0) if leaving => return,
                Ok(0) => break "its connection ended without a goodbye".to_string(),
                Ok(_) => leaving |= got.contains(&LEAVING),
                Err(e) => break e.to_string(),
            }
        };
        tracing::debug!(peer, %why, "mfio-coll UCX: rank lost");
        if let Some(shared) = shared.upgrade() {
            shared.lost(peer, &why);
        }
    })
}

/// What becomes of an offered message once its reply has left.
enum Then {
    /// Nothing (the bytes are still to come).
    Nothing,
    /// It landed in its receive's block: wake the receive.
    Landed(Key),
    /// It is in a buffer of ours: file it.
    Bytes(Key, Vec<u8>),
}

impl Shared {
    /// Reads the bytes of message `number` from `from` (filed under `key`,
    /// `len` bytes) where its sender offered them: into `into` if given
    /// (then wakes its receive), else into a buffer filed under `key`; and
    /// tells the sender. If they cannot be read here, asks the sender for
    /// them as a message of their own and gives the block back, for the
    /// receive of that message.
    fn take_offered(
        self: &Arc<Self>,
        from: Rank,
        key: Key,
        len: usize,
        number: u32,
        offer: Offer,
        into: Option<BlockMut>,
    ) -> std::result::Result<(), Option<BlockMut>> {
        let Some(me) = self.process.as_ref() else {
            tracing::debug!(
                from,
                "mfio-coll UCX: an offered message is read the ordinary way (no host known)"
            );
            self.reply(from, number, SEND_IT, Then::Nothing);
            return Err(into);
        };
        // Read into the receive's block (which goes back before the
        // receive hears of it) or into a buffer to file.
        let (read, landed, block) = match into {
            Some(block) => {
                let mut io = block.into_io();
                let read = offer.read_into(me, &mut io, len);
                (read, Then::Landed(key), Some(io.into_inner()))
            }
            None => {
                let mut buf = match self.core.pool.take(len) {
                    Ok(buf) => buf,
                    Err(e) => {
                        self.lost(from, &format!("{e} ({key})"));
                        return Ok(());
                    }
                };
                buf.clear();
                let read = offer.read_into(me, &mut buf, len);
                (read, Then::Bytes(key, buf), None)
            }
        };
        match read {
            Ok(()) => {
                drop(block);
                self.read_in_place.fetch_add(1, Ordering::Relaxed);
                self.reply(from, number, TAKEN, landed);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(from, error = %e, "mfio-coll UCX: an offered message is read the ordinary way");
                self.reply(from, number, SEND_IT, Then::Nothing);
                Err(block)
            }
        }
    }

    /// Answers `to`'s offer of message `number` with `answer`; once the
    /// answer has left, does `then`. A receive finishes only after its
    /// answer left: a rank that then stops driving this transport (it goes
    /// on with other work) must not leave the sender waiting.
    fn reply(self: &Arc<Self>, to: Rank, number: u32, answer: u8, then: Then) {
        let Some(ep) = self.eps.get(to).cloned().flatten() else {
            return;
        };
        let me = self.core.rank;
        let reply_tag = Tag(tag(REPLY, me, number));
        // At once if UCX can: no packet, no trip through the background.
        if ep.try_tag_send(reply_tag, &[answer]).unwrap_or(false) {
            return self.replied(to, Ok(1), then);
        }
        let mut sent = Box::pin(async move { ep.write_at(reply_tag, vec![answer]).await.0 });
        // Posted now; a message this short has usually left at once, and
        // then `then` is done without a trip through the background.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(res) = std::future::Future::poll(sent.as_mut(), &mut cx) {
            return self.replied(to, res, then);
        }
        let shared = Arc::downgrade(self);
        self.core.background.spawn(Box::pin(async move {
            let res = sent.await;
            if let Some(shared) = shared.upgrade() {
                shared.replied(to, res, then);
            }
        }));
    }

    /// `to` was answered (or could not be): does what waited for it.
    fn replied(&self, to: Rank, res: Result<usize>, then: Then) {
        if let Err(e) = res {
            tracing::debug!(to, error = %e, "mfio-coll UCX: could not answer an offer");
        }
        match then {
            Then::Nothing => {}
            Then::Landed(key) => self.core.inbox.land(to, key),
            Then::Bytes(key, buf) => self.core.inbox.deliver(to, key, buf),
        }
    }
}

impl Linked for Shared {
    fn core(&self) -> &Core {
        &self.core
    }

    /// Rank `peer` is lost: the group is broken, every receive with nothing
    /// waiting fails naming it, and the other ranks hear of it. Once per
    /// group.
    fn lost(&self, peer: Rank, why: &str) {
        if !self.core.inbox.poison(format!("rank {peer} is gone: {why}")) {
            return;
        }
        let mut frame = frame_header(control_key(LOST, peer as u32), why.len(), why.len());
        frame.extend_from_slice(why.as_bytes());
        for (to, ep) in self.eps.iter().enumerate() {
            let Some(ep) = ep.clone().filter(|_| to != peer) else {
                continue;
            };
            let (frame, sender) = (frame.clone(), self.core.rank);
            // Started by the drive that runs this, so it is posted at once.
            self.core.background.spawn(Box::pin(async move {
                if let Err(e) = ep.write_at(Tag(tag(FRAME, sender, 0)), frame).await.0 {
                    tracing::debug!(to, error = %e, "mfio-coll UCX: could not tell a rank of a loss");
                }
            }));
        }
    }
}

/// Sends `data` to `to` under `key` on `ep`: in its frame if short, else
/// the frame and then the bytes as a message of their own (`len` bytes:
/// `data`'s, read only through the endpoint). A failure says why the
/// endpoint failed, once that is known.
async fn send_on<B: IoBuf>(shared: &Shared, ep: &Endpoint, to: Rank, key: Key, data: B) -> BufResult<(), B> {
    let me = shared.core.rank;
    let len = data.buf_len();
    let (res, data) = if len <= INLINE {
        let mut frame = frame_header(key, len, len);
        // SAFETY: `data`'s promise as an `IoBuf`: `len` initialised bytes,
        // which the caller does not change while the send is in flight.
        frame.extend_from_slice(unsafe { std::slice::from_raw_parts(data.as_buf_ptr(), len) });
        // Eagerly (see the module's docs).
        (ep.write_at(EagerTag(tag(FRAME, me, 0)), frame).await.0.map(drop), data)
    } else {
        let number = shared.next_long[to].fetch_add(1, Ordering::Relaxed);
        let frame = frame_header(key, len, 0);
        let (framed, BufResult(rest, data)) = futures_util::future::join(
            ep.write_at(Tag(tag(FRAME, me, number)), frame),
            ep.write_at(Tag(tag(BULK, me, number)), data),
        )
        .await;
        (framed.0.and(rest).map(drop), data)
    };
    match res {
        Ok(()) => BufResult(Ok(()), data),
        Err(e) => BufResult(send_failure(shared, ep, to, key, e).await, data),
    }
}

/// The error of a send to `to` on `ep` that failed with `e`: if the
/// endpoint failed, once its end is understood (a goodbye, or news of a
/// lost rank), it says why.
async fn send_failure(shared: &Shared, ep: &Endpoint, to: Rank, key: Key, e: Error) -> Result<()> {
    let why = if ep.is_failed() {
        std::future::poll_fn(|cx| shared.core.inbox.poll_ended(to, cx)).await
    } else {
        None
    };
    Err(linked::send_failed(to, key, why, e))
}

/// The block an offer is about, kept until its reader is done with it. If
/// the offer ends without hearing that (the group broke, or the transport
/// went first), the block is never freed: the reader may be alive still.
struct Offered(Option<Block>);

impl Offered {
    fn release(&mut self) -> Option<Block> {
        self.0.take()
    }
}

impl Drop for Offered {
    fn drop(&mut self) {
        if let Some(block) = self.0.take() {
            tracing::debug!(len = block.len(), "mfio-coll UCX: an offered block is kept for good");
            std::mem::forget(block);
        }
    }
}

/// Sends the long block `data` to `to` under `key` as `offer` (where the
/// block is): its frame says where the bytes are, for `to` to read them in
/// place. Done when `to` says it read them, or it sent for them and they
/// went; if the reply asks for them, they go as a message of their own.
///
/// Run in place by the send ([`InPlace`]): a send dropped before the reply
/// leaves the rest to the background, which keeps the bytes for the reader.
fn offered(shared: Weak<Shared>, ep: Arc<Endpoint>, to: Rank, key: Key, data: Block, offer: Offer) -> InPlaceWork {
    Box::pin(async move {
        let Some(strong) = shared.upgrade() else {
            return Err(transport_gone(to, key));
        };
        let (me, worker) = (strong.core.rank, strong.worker.clone());
        let number = strong.next_long[to].fetch_add(1, Ordering::Relaxed);
        let len = data.len();
        let mut frame = frame_header(key, len, 0);
        let mut kept = Offered(Some(data));
        offer.encode(&mut frame);
        // The end of the group is heard of through the background's waker,
        // which wakes this offer with every other operation: the inbox
        // keeps each waker it is polled with until the end, and the
        // operation's own differs from call to call.
        let everyone = strong.core.background.waker().clone();
        drop(strong);
        let reply = worker.tag_recv(TagMatch::exact(tag(REPLY, to, number)), Vec::with_capacity(1));
        let ended = std::future::poll_fn(|_| match shared.upgrade() {
            Some(shared) => shared
                .core
                .inbox
                .poll_ended(to, &mut Context::from_waker(&everyone))
                .map(Some),
            None => std::task::Poll::Ready(None),
        });
        let (reply, ended) = (std::pin::pin!(reply), std::pin::pin!(ended));
        // The frame at once if UCX can (no packet), else as a packet.
        let frame_tag = Tag(tag(FRAME, me, number));
        let framed = if ep.try_tag_send(frame_tag, &frame).unwrap_or(false) {
            futures_util::future::Either::Left(std::future::ready(BufResult(Ok(frame.len()), frame)))
        } else {
            futures_util::future::Either::Right(ep.write_at(frame_tag, frame))
        };
        let (framed, answer) = futures_util::future::join(framed, futures_util::future::select(reply, ended)).await;
        match (framed.0, answer) {
            (Err(e), _) => {
                // The offer never went: nobody reads the bytes.
                drop(kept.release());
                match shared.upgrade() {
                    Some(shared) => send_failure(&shared, &ep, to, key, e).await,
                    None => Err(linked::send_failed(to, key, None, e)),
                }
            }
            (Ok(_), futures_util::future::Either::Left((BufResult(Ok(_), answer), _))) if answer == [TAKEN] => {
                drop(kept.release());
                Ok(())
            }
            (Ok(_), futures_util::future::Either::Left((BufResult(Ok(_), answer), _))) if answer == [SEND_IT] => {
                if let Some(shared) = shared.upgrade() {
                    shared.refuses_offers[to].store(true, Ordering::Relaxed);
                }
                match kept.release() {
                    Some(data) => {
                        let rest = ep.write_at(Tag(tag(BULK, me, number)), data.into_io()).await.0;
                        rest.map(drop).map_err(|e| linked::send_failed(to, key, None, e))
                    }
                    None => Ok(()),
                }
            }
            (Ok(_), futures_util::future::Either::Left((BufResult(Ok(_), _), _))) => {
                Err(malformed(to, "a reply to an offer that says neither taken nor send"))
            }
            (Ok(_), futures_util::future::Either::Left((BufResult(Err(e), _), _))) => {
                Err(linked::send_failed(to, key, None, e))
            }
            (Ok(_), futures_util::future::Either::Right((Some(None), _))) => {
                // It left on purpose: it reads nothing more.
                drop(kept.release());
                Err(Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("rank {to} left before it took the message ({key})"),
                ))
            }
            (Ok(_), futures_util::future::Either::Right((Some(Some(why)), _))) => {
                // The bytes stay offered: the reader may be alive still.
                Err(Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("{why}; sending to rank {to} ({key}) failed"),
                ))
            }
            (Ok(_), futures_util::future::Either::Right((None, _))) => Err(transport_gone(to, key)),
        }
    })
}

/// The work of an offer ([`offered`]).
type InPlaceWork = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// The error of a send whose transport was dropped before it finished
/// (only a send left to the background can see it).
fn transport_gone(to: Rank, key: Key) -> Error {
    Error::new(
        std::io::ErrorKind::ConnectionAborted,
        format!("sending to rank {to} ({key}): the transport was dropped"),
    )
}

impl Transport for UcxTransport {
    fn send(&self, to: Rank, key: Key, data: Vec<u8>) -> TransportFuture {
        let data = match linked::check_send(&*self.shared, to, key, data) {
            Ok(data) => data,
            Err(done) => return done,
        };
        if self.try_send_now(to, key, &data) {
            return Box::pin(std::future::ready(BufResult(Ok(()), data)));
        }
        let shared = self.shared.clone();
        linked::driven(&*self.shared, async move {
            match shared.eps[to].clone() {
                Some(ep) => send_on(&shared, &ep, to, key, data).await,
                None => BufResult(Err(super::no_such_rank(to, shared.eps.len())), data),
            }
        })
    }

    /// The message in its frame, without a packet: UCX copies it out
    /// before this returns, or nothing is sent.
    fn try_send_now(&self, to: Rank, key: Key, data: &[u8]) -> bool {
        let len = data.len();
        let ep = self.shared.eps.get(to).and_then(Option::as_ref);
        let (Some(ep), true, false) = (ep, len <= SHORT, key.comm == CONTROL_COMM) else {
            return false;
        };
        let mut frame = [0u8; FRAME_HEADER + SHORT];
        frame[..FRAME_HEADER].copy_from_slice(&header_bytes(key, len));
        frame[FRAME_HEADER..FRAME_HEADER + len].copy_from_slice(data);
        let sent = ep.try_tag_send(Tag(tag(FRAME, self.shared.core.rank, 0)), &frame[..FRAME_HEADER + len]);
        // An error is the packet's to report, with why the endpoint failed.
        sent.unwrap_or(false)
    }

    /// A long block leaves from the collective's buffer, without a copy; a
    /// short one is copied into its frame straight from it.
    fn send_block(&self, to: Rank, key: Key, data: Block) -> BlockFuture<'_> {
        let ep = self.shared.eps.get(to).cloned().flatten();
        let (Some(ep), false) = (ep, key.comm == CONTROL_COMM) else {
            return super::send_block_copied(self, to, key, data);
        };
        // SAFETY: the send of `data` is in flight until this returns.
        if self.try_send_now(to, key, unsafe { data.as_bytes() }) {
            return super::sent();
        }
        let background = self.shared.core.background.clone();
        let offerer = self.shared.offers_to(to).filter(|_| data.len() > INLINE);
        if let Some(offer) = offerer.map(|me| me.offer(data.ptr())) {
            let work = offered(Arc::downgrade(&self.shared), ep, to, key, data, offer);
            let in_place = InPlace::new(background.clone(), work);
            return Box::pin(super::driven::driven(background, in_place));
        }
        let shared = self.shared.clone();
        Box::pin(super::driven::driven(background, async move {
            send_on(&shared, &ep, to, key, data.into_io()).await.0
        }))
    }

    crate::transport::linked::core_methods!();
}
