//! The UCX backend: [`Context`] → [`Worker`] (the [`IoBackend`](mfio_core::IoBackend))
//! → [`Endpoint`]s (by [`WorkerAddress`] or through a [`Listener`]),
//! [`MemoryRegion`]s and [`RemoteKey`]s. Every data operation is an mfio
//! packet:
//!
//! | operation | handle | address |
//! |---|---|---|
//! | tag send | `Endpoint` | `PacketIo<Write, Tag>`, `PacketIo<Write, EagerTag>` (copied out eagerly) |
//! | tag receive | `Worker` | `PacketIo<Read, TagMatch>`, [`Worker::tag_recv`] |
//! | stream send / receive | `Endpoint` | `PacketIo<Write/Read, NoPos>` |
//! | active message send | `Endpoint` | `PacketIo<Write, AmSend>` |
//! | active message receive | `Worker` | `PacketIo<Read, AmId>`, [`Worker::am_recv`] |
//! | put / get | `RemoteKey` | `PacketIo<Write/Read, u64>` (offset in the region) |
//! | flush | `Endpoint`, `RemoteKey` | `PacketIo<Write, Flush>` |
//! | close | `Endpoint` | `PacketIo<Write, CloseWrite>`, [`Endpoint::close`] |
//!
//! Layers, lowest first: `sys` (the only module naming UCX symbols) →
//! `address` (checked envelopes for blobs from peers) → `context` →
//! `op` (the record of an operation in flight) → `worker` (the driving
//! step) → `endpoint`, `listener`, `memory` → `op/*` (each operation's
//! posting code and completion).

mod address;
mod context;
mod endpoint;
mod listener;
mod memory;
mod op;
mod sys;
mod worker;

pub use address::WorkerAddress;
pub use context::{Context, ContextBuilder};
pub use endpoint::Endpoint;
pub use listener::{Accept, Listener};
pub use memory::{MemoryRegion, RemoteKey};
pub use op::am::{AmProtocol, AmRecv, AmRecvReport};
pub use op::tag::{TagRecv, TagRecvReport};
pub use op::ReportedRecv;
pub use op::{AmId, AmInfo, AmSend, EagerTag, Tag, TagInfo, TagMatch};
pub use worker::{Worker, WorkerBuilder, DEFAULT_SPIN, MAX_AM_ID};
