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
//! frames are taken without a packet too (`Worker::poll_tag_recv`, woken
//! by the worker's progress): in a loop of 8-byte bcasts on 2 ranks the
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
//! A long offered message (32 KiB or more) may be copied by both ranks at
//! once ([`SplitCopy`]): the receiver replies with where the second half
//! goes in its memory and reads the first half while the sender writes
//! the second there (`process_vm_writev`, into a process that proved it is
//! the receiver's), then says so with a tag message of its own (top 16
//! bits `0x6D77`). A sender that cannot or will not write says that, and
//! the receiver reads the rest too; one that would not (it only sends,
//! and its core ran other work lately: [`Worker::core_shared_lately`])
//! says so in its offer, and is not asked. A 1 MiB bcast on 2 ranks takes
//! about 60 % of the time it took (BENCHMARKS.md).
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
//! tag message whose top 16 bits are `0x6D66`, `0x6D62`, `0x6D72` or
//! `0x6D77`; other traffic on the same worker must leave those tags alone.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Context;
use std::time::{Duration, Instant};

use mfio_core::{BufResult, Error, IoBackend, IoBuf, IoReadStream, IoWrite, IoWriteStream, Result};
use mfio_net::ucx::{EagerTag, Endpoint, Tag, TagMatch, Worker, WorkerAddress};

use super::block::InFlight;
use super::driven::{InPlace, Task};
use super::inbox::Announced;
use super::linked::{self, Core, Linked};
use super::single_copy::{Offer, Process, Target, OFFER_LEN, TARGET_LEN};
use super::{
    frame_header, header_bytes, parse_frame_header, Block, BlockFuture, BlockMut, Key, Transport, TransportFuture,
    CONTROL_COMM, FRAME_HEADER,
};
use crate::comm::Rank;
use crate::in_box::in_box;

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
/// The longest message whose frame [`Transport::try_send_now`] builds in a
/// smaller buffer.
const TINY: usize = 64;

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
/// The receiver asks the sender to write the message's second part into
/// its memory (a [`Target`], then the part's first offset, 8 bytes) while
/// it reads the first part.
const HELP: u8 = b'H';
/// The receiver read the first part (after [`HELP`]).
const PART_TAKEN: u8 = b'P';
/// The longest reply.
const REPLY_MAX: usize = 1 + TARGET_LEN + 8;
/// An offer's bytes in its frame: the [`Offer`], then one byte saying
/// whether the sender will write half the message if asked ([`HELP`]):
/// [`WILL_HELP`] or not (it only sends while its core ran other work
/// lately, or it was told never to), so a receiver asks only where asking
/// can pay.
const OFFERED_LEN: usize = OFFER_LEN + 1;
const WILL_HELP: u8 = 1;

/// An offer as its frame carries it ([`OFFERED_LEN`] bytes).
#[derive(Clone, Copy)]
struct Offered {
    offer: Offer,
    /// The sender will write half the message if asked.
    helps: bool,
}

impl Offered {
    fn to_bytes(self) -> [u8; OFFERED_LEN] {
        let mut out = [0; OFFERED_LEN];
        out[..OFFER_LEN].copy_from_slice(&self.offer.to_bytes());
        out[OFFER_LEN] = if self.helps { WILL_HELP } else { 0 };
        out
    }

    /// The offer `bytes` encode, if they are [`OFFERED_LEN`] long.
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != OFFERED_LEN {
            return None;
        }
        let (&flag, offer) = bytes.split_last()?;
        Some(Self {
            offer: Offer::decode(offer)?,
            helps: flag == WILL_HELP,
        })
    }
}

/// An offered message at least this long is copied by both sides at once
/// (after the receiver has read one of the sender's offers whole, so it
/// knows it can): the receiver reads the first half while the sender
/// writes the second into the receiver's memory. A 64 KiB bcast on 2
/// ranks, mostly the copy, took ~60 % of its time (BENCHMARKS.md).
const HALVES: usize = 32 << 10;
/// The sender's word on the part it was asked to write ("mw"): 16 bits of
/// the sender, then the message's number; one byte, [`WROTE`] or
/// [`NOT_WRITTEN`] (then the receiver reads that part too, and replies
/// [`TAKEN`]).
const WRITTEN: u64 = 0x6D77;
const WROTE: u8 = b'W';
const NOT_WRITTEN: u8 = b'N';

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

/// When a long message between ranks on one host is copied by both sides
/// at once, the receiver reading the first half while the sender writes
/// the second into the receiver's memory ([`UcxTransport::set_split_copy`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SplitCopy {
    /// Where it pays: a receiver asks a sender it is not itself sending
    /// to, whose help paid lately (its half was in before the receiver
    /// read its own) and whose offer said it would; a sender helps unless a
    /// receive of its own waits. A sender that only sends while its core
    /// ran other work lately ([`Worker::core_shared_lately`]) offers no
    /// help. Pays for a rank that only sends (a bcast's root: 64 KiB bcasts
    /// on 2 ranks 10 → 8.5 µs, 1 MiB 92 → 57 µs); not where every rank
    /// sends and receives, nor for a root beside its readers on a core.
    #[default]
    Adaptive,
    /// Every message of at least 32 KiB from a sender whose offer was read
    /// before: the receiver asks, the sender helps.
    Always,
    /// Never: the receiver reads the whole message; the sender declines
    /// when asked.
    Never,
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
    /// Per rank: this rank read an offer of its whole, so it may ask it to
    /// write half of a long one ([`HALVES`]).
    reads_from: Vec<AtomicBool>,
    /// Per rank: its process number, once it proved it asks from that
    /// process ([`Target::prove`]); 0 before.
    proven: Vec<AtomicU32>,
    /// Messages whose second half a sender wrote into this rank
    /// ([`UcxTransport::messages_copied_in_halves`]).
    copied_in_halves: AtomicU64,
    /// ([`UcxTransport::halves_declined`]).
    halves_declined: AtomicU64,
    /// Per rank: offers to it not yet answered. A rank that waits on this
    /// one's offer is busy reading it, so this one does not ask it to
    /// write half of its own.
    offers_out: Vec<AtomicU32>,
    /// Per rank: how well its help paid lately ([`Shared::judge_halves`]):
    /// while below 0, halves are asked of it only now and then.
    halves_score: Vec<AtomicI32>,
    /// Per rank: long messages it sent while its score was below 0.
    halves_skipped: Vec<AtomicU32>,
    /// [`SplitCopy`], as a number (its discriminant).
    split_copy: AtomicU32,
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
            reads_from: (0..size).map(|_| AtomicBool::new(false)).collect(),
            proven: (0..size).map(|_| AtomicU32::new(0)).collect(),
            copied_in_halves: AtomicU64::new(0),
            halves_declined: AtomicU64::new(0),
            offers_out: (0..size).map(|_| AtomicU32::new(0)).collect(),
            halves_score: (0..size).map(|_| AtomicI32::new(0)).collect(),
            halves_skipped: (0..size).map(|_| AtomicU32::new(0)).collect(),
            split_copy: AtomicU32::new(SplitCopy::Adaptive as u32),
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

    /// When long messages are copied by both sides at once (default:
    /// [`SplitCopy::Adaptive`]). Each rank decides for the messages it
    /// receives (whether it asks) and sends (whether it helps).
    pub fn set_split_copy(&self, how: SplitCopy) {
        self.shared.split_copy.store(how as u32, Ordering::Relaxed);
    }

    /// How many of the messages [read in place](Self::messages_read_in_place)
    /// were copied by both sides at once: this rank read the first half,
    /// the sender wrote the second into this rank's memory (messages of at
    /// least 32 KiB, from a sender one of whose offers this rank has read
    /// whole before).
    pub fn messages_copied_in_halves(&self) -> u64 {
        self.shared.copied_in_halves.load(Ordering::Relaxed)
    }

    /// How many times a receiver asked this rank to write half of a
    /// message it sent, and it did not (a receive of its own waited, or
    /// the receiver's memory was not its own): each cost that receiver a
    /// round trip. A rank that would not help says so in its offers, and
    /// is not asked: a rank told [`SplitCopy::Never`] declines none.
    pub fn halves_declined(&self) -> u64 {
        self.shared.halves_declined.load(Ordering::Relaxed)
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
            // Without a packet: a probe and a copy per frame, woken by the
            // worker's progress. (A packet receive costs its future, its
            // completion and allocations: an 8-byte allreduce on 2 ranks
            // took 7 800 instructions a call with one, 6 700 without, and
            // 1.4–1.7× as long as without, BENCHMARKS.md.)
            let taken = std::future::poll_fn(|cx| worker.poll_tag_recv(frames, &mut frame, cx)).await;
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
                    OFFERED_LEN => match Offered::decode(&frame[FRAME_HEADER..]) {
                        Some(offered) => Some(offered),
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
                        Some(offered) => match shared.take_offered(from, key, len, number, offered, into) {
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
            shared
                .core
                .inbox
                .deliver_bytes(from, key, &frame[FRAME_HEADER..], &shared.core.pool);
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

/// The first half of an offered message, read.
struct Read {
    /// Where the second half starts.
    half: usize,
    /// How long reading the first half took.
    took: Duration,
    /// When it was done.
    done: Instant,
}

/// The rest of message `number` from `from` (`len` bytes under `key`,
/// read into `landing` up to `half`): waits for its sender's word that it
/// wrote the rest there, or reads the rest itself if the sender could not
/// (then replies [`TAKEN`]); then the message is in.
#[allow(clippy::too_many_arguments)]
fn rest_written(
    shared: Weak<Shared>,
    from: Rank,
    key: Key,
    len: usize,
    number: u32,
    offer: Offer,
    read: Read,
    landing: Landing,
) -> Task {
    Box::pin(async move {
        let mut landing = KeptForPeer(Some(landing));
        let Some(worker) = shared.upgrade().map(|s| s.worker.clone()) else {
            return;
        };
        let matching = TagMatch::exact(tag(WRITTEN, from, number));
        let mut word = Vec::with_capacity(1);
        let res = std::future::poll_fn(|cx| worker.poll_tag_recv(matching, &mut word, cx)).await;
        let Some(shared) = shared.upgrade() else { return };
        match res {
            Ok(_) if word == [WROTE] => {
                // It paid if the rest was in before this could have read it.
                shared.judge_halves(from, read.done.elapsed() <= read.took);
                if let Some(landing) = landing.release() {
                    shared.copied_in_halves.fetch_add(1, Ordering::Relaxed);
                    shared.message_in(from, landing.landed(key, len));
                }
            }
            Ok(_) if word == [NOT_WRITTEN] => {
                shared.judge_halves(from, false);
                // Nobody writes into it now.
                let Some(mut landing) = landing.release() else { return };
                let Some(me) = shared.process.as_ref() else { return };
                let at = landing.ptr();
                // SAFETY: `at` is valid for `len` bytes; the rest is
                // touched by this read alone (the sender wrote none of it).
                match unsafe { offer.read_part(me, at, read.half..len) } {
                    Ok(()) => shared.reply(from, number, &[TAKEN], landing.landed(key, len)),
                    Err(e) => shared.lost(from, &format!("reading the second half of a message ({key}): {e}")),
                }
            }
            Ok(_) => shared.lost(
                from,
                &malformed(from, "a word on a written half that says neither").to_string(),
            ),
            Err(e) => shared.lost(from, &e.to_string()),
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

/// Where an offered message is read to: its receive's block, or a buffer
/// of ours to file.
enum Landing {
    Block(InFlight<BlockMut>),
    Buf(Vec<u8>),
}

impl Landing {
    /// Where the message's bytes go: valid for writes of its length (the
    /// block is as long; the buffer was taken with room for it).
    fn ptr(&mut self) -> *mut u8 {
        match self {
            Landing::Block(io) => mfio_core::IoBufMut::as_buf_mut_ptr(io),
            Landing::Buf(buf) => buf.as_mut_ptr(),
        }
    }

    /// The message (`len` bytes under `key`) is in: what to do once its
    /// reply has left. The block goes back before its receive hears.
    fn landed(self, key: Key, len: usize) -> Then {
        match self {
            Landing::Block(io) => {
                drop(io);
                Then::Landed(key)
            }
            Landing::Buf(mut buf) => {
                // SAFETY: the first `len` bytes were written, and the buffer
                // has room for them.
                unsafe { buf.set_len(len) };
                Then::Bytes(key, buf)
            }
        }
    }

    /// The receive's block, if it brought one.
    fn into_block(self) -> Option<BlockMut> {
        match self {
            Landing::Block(io) => Some(io.into_inner()),
            Landing::Buf(_) => None,
        }
    }
}

impl Shared {
    /// Reads the bytes of message `number` from `from` (filed under `key`,
    /// `len` bytes) where its sender offered them: into `into` if given
    /// (then wakes its receive), else into a buffer filed under `key`; and
    /// tells the sender. A long message from a sender read before is
    /// copied in halves if the sender said it helps: it writes the second
    /// while this reads the first ([`HALVES`]). If the bytes cannot be
    /// read here, asks the sender for them as a message of their own and
    /// gives the block back, for the receive of that message.
    fn take_offered(
        self: &Arc<Self>,
        from: Rank,
        key: Key,
        len: usize,
        number: u32,
        offered: Offered,
        into: Option<BlockMut>,
    ) -> std::result::Result<(), Option<BlockMut>> {
        let Offered { offer, helps } = offered;
        let Some(me) = self.process.as_ref() else {
            tracing::debug!(
                from,
                "mfio-coll UCX: an offered message is read the ordinary way (no host known)"
            );
            self.reply(from, number, &[SEND_IT], Then::Nothing);
            return Err(into);
        };
        let mut landing = match into {
            Some(block) => Landing::Block(block.into_io()),
            None => match self.core.pool.take(len) {
                Ok(mut buf) => {
                    buf.clear();
                    Landing::Buf(buf)
                }
                Err(e) => {
                    self.lost(from, &format!("{e} ({key})"));
                    return Ok(());
                }
            },
        };
        let at = landing.ptr();
        let half = (len / 2) & !63;
        let halves = len >= HALVES
            && helps
            && self.reads_from[from].load(Ordering::Relaxed)
            && match self.split_copy() {
                SplitCopy::Always => true,
                SplitCopy::Never => false,
                SplitCopy::Adaptive => self.offers_out[from].load(Ordering::Relaxed) == 0 && self.worth_halves(from),
            };
        if halves {
            // SAFETY: `half` < `len`, and `at` is valid for `len` bytes.
            if let Some(target) = me.target(unsafe { at.add(half) }) {
                let mut help = Vec::with_capacity(REPLY_MAX);
                help.push(HELP);
                target.encode(&mut help);
                help.extend_from_slice(&(half as u64).to_le_bytes());
                self.reply(from, number, &help, Then::Nothing);
                let started = Instant::now();
                // SAFETY: `at` is valid for `len` bytes, which only this
                // read and the sender's write (of the rest) touch until the
                // message is in.
                if let Err(e) = unsafe { offer.read_part(me, at, 0..half) } {
                    // The sender may be writing the rest: the memory stays.
                    drop(KeptForPeer(Some(landing)));
                    self.lost(from, &format!("reading the first half of a message ({key}): {e}"));
                    return Ok(());
                }
                self.read_in_place.fetch_add(1, Ordering::Relaxed);
                self.reply(from, number, &[PART_TAKEN], Then::Nothing);
                let read = Read {
                    half,
                    took: started.elapsed(),
                    done: Instant::now(),
                };
                let rest = rest_written(Arc::downgrade(self), from, key, len, number, offer, read, landing);
                self.core.background.spawn(rest);
                return Ok(());
            }
        }
        // SAFETY: `at` is valid for `len` bytes, which only this read
        // touches until the message is in.
        match unsafe { offer.read_part(me, at, 0..len) } {
            Ok(()) => {
                self.read_in_place.fetch_add(1, Ordering::Relaxed);
                self.reads_from[from].store(true, Ordering::Relaxed);
                let then = landing.landed(key, len);
                self.reply(from, number, &[TAKEN], then);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(from, error = %e, "mfio-coll UCX: an offered message is read the ordinary way");
                self.reply(from, number, &[SEND_IT], Then::Nothing);
                Err(landing.into_block())
            }
        }
    }

    /// Whether this rank would write half a message it offers now, if
    /// asked: not if told never to; nor while other work shares its core
    /// and it waits for no message of its own (a bcast's root beside one
    /// of its readers): the work beside it is likely a reader, whose turn
    /// the copy would take, and a receiver that asked would wait for this
    /// rank's turn. A rank that also receives is asked as before, and
    /// helps if its receives are in by then (the direct allreduce on 3
    /// ranks sharing 2 cores lost 4–12 % without that help).
    fn will_help(&self) -> bool {
        match self.split_copy() {
            SplitCopy::Always => true,
            SplitCopy::Never => false,
            SplitCopy::Adaptive => !self.worker.core_shared_lately() || self.core.inbox.receiving(),
        }
    }

    fn split_copy(&self) -> SplitCopy {
        match self.split_copy.load(Ordering::Relaxed) {
            x if x == SplitCopy::Always as u32 => SplitCopy::Always,
            x if x == SplitCopy::Never as u32 => SplitCopy::Never,
            _ => SplitCopy::Adaptive,
        }
    }

    /// Whether to ask `from` to write half of its next long message: yes
    /// while its help paid lately; else one message in 16, to see if it
    /// pays again (a sender busy with other work, or ranks sharing cores,
    /// answer late, and then reading the rest oneself is sooner).
    fn worth_halves(&self, from: Rank) -> bool {
        self.halves_score[from].load(Ordering::Relaxed) >= 0
            || self.halves_skipped[from].fetch_add(1, Ordering::Relaxed) % 16 == 15
    }

    /// `from`'s help with a message paid (its half was in before this rank
    /// read its own), or did not.
    fn judge_halves(&self, from: Rank, paid: bool) {
        let score = &self.halves_score[from];
        let now = score.load(Ordering::Relaxed);
        let next = if paid { now.max(0) + 1 } else { now - 2 };
        score.store(next.clamp(-8, 4), Ordering::Relaxed);
    }

    /// Writes the part of `data` that `to` asked for (`help`: a [`Target`]
    /// and the part's first offset) into `to`'s memory; whether it did
    /// (if not, `to` reads it itself). The target's process must prove,
    /// once, that it is `to`'s.
    fn write_part(&self, to: Rank, help: &[u8], data: &Block) -> bool {
        let Some(me) = self.process.as_ref() else {
            return false;
        };
        let busy = match self.split_copy() {
            SplitCopy::Always => false,
            SplitCopy::Never => true,
            // This rank waits for a message of its own, likely reading
            // one: `to` reads the rest sooner itself.
            SplitCopy::Adaptive => self.core.inbox.receiving(),
        };
        if busy {
            return false;
        }
        let target = help.get(..TARGET_LEN).and_then(Target::decode);
        let start = (help.get(TARGET_LEN..).and_then(|b| <[u8; 8]>::try_from(b).ok()))
            .and_then(|b| usize::try_from(u64::from_le_bytes(b)).ok())
            .filter(|start| *start <= data.len());
        let (Some(target), Some(start)) = (target, start) else {
            tracing::debug!(to, "mfio-coll UCX: a malformed request to write half a message");
            return false;
        };
        if self.proven[to].load(Ordering::Relaxed) != target.pid() {
            if let Err(e) = target.prove(me) {
                tracing::debug!(to, error = %e, "mfio-coll UCX: not writing into a process that did not prove itself");
                return false;
            }
            self.proven[to].store(target.pid(), Ordering::Relaxed);
        }
        // SAFETY: the block's bytes from `start` (at most its length) are
        // readable while the offer is in flight, which it is until `to`
        // replies.
        match unsafe { target.write(data.ptr().add(start), data.len() - start) } {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(to, error = %e, "mfio-coll UCX: could not write half a message");
                false
            }
        }
    }

    /// Answers `to`'s offer of message `number` with `answer`; once the
    /// answer has left, does `then`. A receive finishes only after its
    /// answer left: a rank that then stops driving this transport (it goes
    /// on with other work) must not leave the sender waiting.
    fn reply(self: &Arc<Self>, to: Rank, number: u32, answer: &[u8], then: Then) {
        let Some(ep) = self.eps.get(to).cloned().flatten() else {
            return;
        };
        let me = self.core.rank;
        let reply_tag = Tag(tag(REPLY, me, number));
        // At once if UCX can: no packet, no trip through the background.
        if ep.try_tag_send(reply_tag, answer).unwrap_or(false) {
            return self.replied(to, Ok(answer.len()), then);
        }
        let answer = answer.to_vec();
        let mut sent = Box::pin(async move { ep.write_at(reply_tag, answer).await.0 });
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
        self.message_in(to, then);
    }

    /// A message from `from` is in (or nothing, `Then::Nothing`): its
    /// receive hears of it.
    fn message_in(&self, from: Rank, then: Then) {
        match then {
            Then::Nothing => {}
            Then::Landed(key) => self.core.inbox.land(from, key),
            Then::Bytes(key, buf) => self.core.inbox.deliver(from, key, buf),
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
/// lost rank), it says why; else, if the group broke, it says why that
/// (a rank that gave up on the group may have left: the loss is the
/// cause, not the reset endpoint).
async fn send_failure(shared: &Shared, ep: &Endpoint, to: Rank, key: Key, e: Error) -> Result<()> {
    let why = if ep.is_failed() {
        std::future::poll_fn(|cx| shared.core.inbox.poll_ended(to, cx)).await
    } else {
        shared.core.inbox.broken_because()
    };
    Err(linked::send_failed(to, key, why, e))
}

/// The error of an offer's exchange with `to` that failed with `e`, with
/// the group's reason if it broke.
fn offer_failed(shared: &Weak<Shared>, to: Rank, key: Key, e: Error) -> Error {
    let why = shared.upgrade().and_then(|s| s.core.inbox.broken_because());
    linked::send_failed(to, key, why, e)
}

/// Memory another process may still be reading or writing (an offered
/// block, or a landing the sender writes half of), kept until it is done
/// with it. If that is never heard (the group broke, or the transport went
/// first), the memory is never freed: the other process may be alive still.
struct KeptForPeer<T>(Option<T>);

impl<T> KeptForPeer<T> {
    fn release(&mut self) -> Option<T> {
        self.0.take()
    }
}

impl<T> Drop for KeptForPeer<T> {
    fn drop(&mut self) {
        if let Some(kept) = self.0.take() {
            tracing::debug!("mfio-coll UCX: memory a peer may still use is kept for good");
            std::mem::forget(kept);
        }
    }
}

/// The send of the long block `data` to `to` under `key` as an offer (where
/// the block is): its frame says where the bytes are, for `to` to read them
/// in place. Done when `to` says it read them (or its half of them, after
/// this wrote the other half into its memory as it asked), or it sent for
/// them and they went; if the reply asks for them, they go as a message of
/// their own.
///
/// One hand-written future over the exchange's state ([`Exchange`]) rather
/// than nested async blocks and combinators: the usual exchange (the frame
/// taken by UCX at once, one reply) runs little code and allocates nothing
/// beside the send's own box, which matters where ranks share cores and
/// each call's code is fetched again (BENCHMARKS.md). Run in place by the
/// send ([`InPlace`]): a send dropped before the reply moves the exchange
/// to the background, which keeps the bytes for the reader.
fn offered(shared: &Arc<Shared>, ep: Arc<Endpoint>, to: Rank, key: Key, data: Block, offer: Offer) -> Exchange {
    let me = shared.core.rank;
    let number = shared.next_long[to].fetch_add(1, Ordering::Relaxed);
    let mut frame = [0u8; FRAME_HEADER + OFFERED_LEN];
    frame[..FRAME_HEADER].copy_from_slice(&header_bytes(key, data.len()));
    let helps = shared.will_help();
    frame[FRAME_HEADER..].copy_from_slice(&Offered { offer, helps }.to_bytes());
    // Every reply to this offer is taken into the same buffer.
    let mut answer = shared.core.pool.take(REPLY_MAX).unwrap_or_default();
    if answer.capacity() < REPLY_MAX {
        answer = Vec::with_capacity(REPLY_MAX);
    }
    let mut exchange = Exchange {
        shared: Arc::downgrade(shared),
        ep,
        to,
        key,
        number,
        me,
        kept: KeptForPeer(Some(data)),
        _out: OfferOut::new(shared, to),
        // The end of the group is heard of through the background's
        // waker, which wakes this offer with every other operation: the
        // inbox keeps each waker it is polled with until the end, and
        // the operation's own differs from call to call.
        everyone: shared.core.background.waker().clone(),
        answer,
        wrote: None,
        step: None,
    };
    // The frame at once if UCX can (no packet, no allocation), else as a
    // packet awaited by the first poll.
    let frame_tag = Tag(tag(FRAME, me, number));
    if !exchange.ep.try_tag_send(frame_tag, &frame).unwrap_or(false) {
        let (ep, weak) = (exchange.ep.clone(), exchange.shared.clone());
        exchange.step = Some(Box::pin(async move {
            match ep.write_at(frame_tag, frame.to_vec()).await.0 {
                Ok(_) => Step::Wait,
                // The offer never went: nobody reads the bytes.
                Err(e) => Step::Unread(match weak.upgrade() {
                    Some(shared) => send_failure(&shared, &ep, to, key, e).await,
                    None => Err(linked::send_failed(to, key, None, e)),
                }),
            }
        }));
    }
    exchange
}

/// The exchange is polled to its end; its reply buffer then goes back to
/// the pool for the next offer.
impl std::future::Future for Exchange {
    type Output = Result<()>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> std::task::Poll<Result<()>> {
        let out = std::task::ready!(self.poll_end(cx));
        if let Some(shared) = self.shared.upgrade() {
            shared.core.pool.put(std::mem::take(&mut self.answer));
        }
        std::task::Poll::Ready(out)
    }
}

/// Where an offer's exchange with its reader stands.
struct Exchange {
    shared: Weak<Shared>,
    ep: Arc<Endpoint>,
    to: Rank,
    key: Key,
    number: u32,
    me: Rank,
    /// The block, while the reader may read it.
    kept: KeptForPeer<Block>,
    _out: OfferOut,
    /// The background's waker ([`Background::waker`](super::driven::Background::waker)).
    everyone: std::task::Waker,
    /// The reader's replies land here.
    answer: Vec<u8>,
    /// Whether this wrote the half the reader asked for (`None`: not asked).
    wrote: Option<bool>,
    /// A step that needs a packet (the frame, when UCX could not take it at
    /// once; the word on a written half, likewise; the bytes the reader
    /// sent for), awaited before the next reply.
    step: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Step> + Send>>>,
}

/// What a step of an offer's exchange leads to.
enum Step {
    /// The next reply.
    Wait,
    /// The end of the exchange.
    Done(Result<()>),
    /// The end of the exchange, and nobody reads the bytes.
    Unread(Result<()>),
}

/// What came back to an offer.
enum Reply {
    /// The reader's reply, in the exchange's buffer.
    Answer,
    /// The receive of the reply failed.
    Failed(Error),
    /// The reader left on purpose.
    Left,
    /// The group broke (why).
    Lost(String),
    /// The transport was dropped.
    Gone,
}

impl Exchange {
    /// Polls the exchange to its end: the send's result.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> std::task::Poll<Result<()>> {
        loop {
            if let Some(step) = self.step.as_mut() {
                let step = std::task::ready!(step.as_mut().poll(cx));
                self.step = None;
                match step {
                    Step::Wait => {}
                    Step::Done(res) => return std::task::Poll::Ready(res),
                    Step::Unread(res) => {
                        drop(self.kept.release());
                        return std::task::Poll::Ready(res);
                    }
                }
            }
            let reply = std::task::ready!(self.poll_reply(cx));
            if let Some(res) = self.on_reply(reply) {
                return std::task::Poll::Ready(res);
            }
        }
    }

    /// The reader's next reply, or the end of the group.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> std::task::Poll<Reply> {
        let Some(shared) = self.shared.upgrade() else {
            return std::task::Poll::Ready(Reply::Gone);
        };
        let matching = TagMatch::exact(tag(REPLY, self.to, self.number));
        match shared.worker.poll_tag_recv(matching, &mut self.answer, cx) {
            std::task::Poll::Ready(Ok(_)) => return std::task::Poll::Ready(Reply::Answer),
            std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Reply::Failed(e)),
            std::task::Poll::Pending => {}
        }
        let ended = shared
            .core
            .inbox
            .poll_ended(self.to, &mut Context::from_waker(&self.everyone));
        ended.map(|why| match why {
            None => Reply::Left,
            Some(why) => Reply::Lost(why),
        })
    }

    /// Acts on `reply`: the send's result if the exchange is over.
    fn on_reply(&mut self, reply: Reply) -> Option<Result<()>> {
        let (to, key) = (self.to, self.key);
        match reply {
            Reply::Answer => {}
            Reply::Failed(e) => return Some(Err(offer_failed(&self.shared, to, key, e))),
            Reply::Left => {
                // It left on purpose: it reads nothing more.
                drop(self.kept.release());
                return Some(Err(Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("rank {to} left before it took the message ({key})"),
                )));
            }
            Reply::Lost(why) => {
                // The bytes stay offered: the reader may be alive still.
                return Some(Err(Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("{why}; sending to rank {to} ({key}) failed"),
                )));
            }
            Reply::Gone => return Some(Err(transport_gone(to, key))),
        }
        match (self.answer.first().copied(), self.answer.len(), self.wrote) {
            (Some(TAKEN), 1, _) | (Some(PART_TAKEN), 1, Some(true)) => {
                drop(self.kept.release());
                Some(Ok(()))
            }
            // It reads the rest itself, then says it took the message.
            (Some(PART_TAKEN), 1, Some(false)) => None,
            (Some(SEND_IT), 1, None) => {
                if let Some(shared) = self.shared.upgrade() {
                    shared.refuses_offers[to].store(true, Ordering::Relaxed);
                }
                let Some(data) = self.kept.release() else {
                    return Some(Ok(()));
                };
                let (ep, weak, rest_tag) = (
                    self.ep.clone(),
                    self.shared.clone(),
                    Tag(tag(BULK, self.me, self.number)),
                );
                self.step = Some(Box::pin(async move {
                    let rest = ep.write_at(rest_tag, data.into_io()).await.0;
                    Step::Done(rest.map(drop).map_err(|e| offer_failed(&weak, to, key, e)))
                }));
                None
            }
            (Some(HELP), _, None) => {
                let written = match (self.shared.upgrade(), self.kept.0.as_ref()) {
                    (Some(shared), Some(data)) => {
                        let written = shared.write_part(to, &self.answer[1..], data);
                        if !written {
                            shared.halves_declined.fetch_add(1, Ordering::Relaxed);
                        }
                        written
                    }
                    _ => false,
                };
                self.wrote = Some(written);
                let word_tag = Tag(tag(WRITTEN, self.me, self.number));
                let word = [if written { WROTE } else { NOT_WRITTEN }];
                if !self.ep.try_tag_send(word_tag, &word).unwrap_or(false) {
                    let (ep, weak) = (self.ep.clone(), self.shared.clone());
                    self.step = Some(Box::pin(async move {
                        match ep.write_at(word_tag, word.to_vec()).await.0 {
                            Ok(_) => Step::Wait,
                            // The reader may still be reading: the bytes stay.
                            Err(e) => Step::Done(Err(offer_failed(&weak, to, key, e))),
                        }
                    }));
                }
                None
            }
            _ => Some(Err(malformed(
                to,
                "a reply to an offer out of turn, or of no known kind",
            ))),
        }
    }
}

/// Counts an offer to a rank as unanswered while it lives.
struct OfferOut {
    shared: Weak<Shared>,
    to: Rank,
}

impl OfferOut {
    fn new(shared: &Arc<Shared>, to: Rank) -> Self {
        shared.offers_out[to].fetch_add(1, Ordering::Relaxed);
        Self {
            shared: Arc::downgrade(shared),
            to,
        }
    }
}

impl Drop for OfferOut {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.offers_out[self.to].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Sends `data` (at most `N - FRAME_HEADER` bytes) in its frame, built in
/// `N` bytes on the stack, if UCX can at once ([`Endpoint::try_tag_send`]).
fn send_framed<const N: usize>(ep: &Endpoint, tag: Tag, key: Key, data: &[u8]) -> Result<bool> {
    let len = data.len();
    let mut frame = [0u8; N];
    frame[..FRAME_HEADER].copy_from_slice(&header_bytes(key, len));
    frame[FRAME_HEADER..FRAME_HEADER + len].copy_from_slice(data);
    ep.try_tag_send(tag, &frame[..FRAME_HEADER + len])
}

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
        let tag = Tag(tag(FRAME, self.shared.core.rank, 0));
        // (A frame of the message's size class: zeroing all of the longest
        // for 8 bytes was a tenth of the send.)
        let sent = if len <= TINY {
            send_framed::<{ FRAME_HEADER + TINY }>(ep, tag, key, data)
        } else {
            send_framed::<{ FRAME_HEADER + SHORT }>(ep, tag, key, data)
        };
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
            let exchange = offered(&self.shared, ep, to, key, data, offer);
            let in_place = InPlace::new(background.clone(), exchange);
            return Box::into_pin(in_box(|| super::driven::driven(background, in_place)));
        }
        let shared = self.shared.clone();
        Box::into_pin(in_box(|| {
            super::driven::driven(background, async move {
                send_on(&shared, &ep, to, key, data.into_io()).await.0
            })
        }))
    }

    crate::transport::linked::core_methods!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer's frame says whether its sender will write half the
    /// message: the flag survives encoding, anything but [`WILL_HELP`] in
    /// its byte reads as no, and bytes of another length do not decode.
    #[test]
    fn an_offers_frame_says_whether_its_sender_helps() {
        let Some(me) = Process::this() else {
            eprintln!("skip: no host identity in /proc here");
            return;
        };
        let bytes = [7u8; 64];
        for helps in [true, false] {
            let offered = Offered {
                offer: me.offer(bytes.as_ptr()),
                helps,
            };
            let encoded = offered.to_bytes();
            let back = Offered::decode(&encoded).expect("decodes");
            assert_eq!(back.helps, helps);
            assert_eq!(back.offer.to_bytes(), offered.offer.to_bytes());
            assert!(Offered::decode(&encoded[..OFFER_LEN]).is_none());
            let mut longer = encoded.to_vec();
            longer.push(WILL_HELP);
            assert!(Offered::decode(&longer).is_none());
        }
        let mut odd = Offered {
            offer: me.offer(bytes.as_ptr()),
            helps: true,
        }
        .to_bytes();
        odd[OFFER_LEN] = 2;
        assert!(!Offered::decode(&odd).expect("decodes").helps);
    }
}
