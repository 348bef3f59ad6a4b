//! The MPI backend: MPI's non-blocking collectives and point-to-point
//! messages as mfio operations, driven like any mfio backend.
//!
//! - [`Mpi`] initialises MPI (at a [`ThreadLevel`] you choose), is the
//!   [`IoBackend`](mfio_core::IoBackend) that drives every request, and
//!   finalises MPI once the last handle into it is gone.
//! - [`MpiComm`] is a [`Communicator`](crate::Communicator): each one is a
//!   duplicate of its parent with `MPI_ERRORS_RETURN`, so mfio's traffic
//!   never mixes with the application's and MPI errors come back as typed
//!   errors instead of aborting. It also sends and receives tagged
//!   messages as packets ([`PacketIo`](mfio_core::PacketIo) at
//!   `(rank, tag)`).
//!
//! MPI has no file descriptor: progress happens only inside MPI calls. Each
//! driving step calls `MPI_Testsome` once over every pending request; while
//! requests are pending, the step spins a short while and then asks to be
//! driven again after a growing pause ([`Progress`]). With nothing pending
//! the backend sleeps on its eventfd and costs nothing.
//!
//! # Thread levels
//! - [`ThreadLevel::Multiple`]: any thread may submit, drive and drop.
//! - [`ThreadLevel::Serialized`]: as `Multiple`; mfio serialises its own
//!   MPI calls, and the application must not call MPI while mfio drives.
//! - [`ThreadLevel::Funneled`] and [`ThreadLevel::Single`]: MPI is called
//!   only on the thread that initialised it. Operations submitted (or
//!   handles dropped) on other threads are forwarded to it and run at its
//!   next driving step, so that thread must drive the backend.
//!
//! # Large counts
//! Open MPI 4.1 implements MPI 3.1, without the `_c` large-count calls.
//! Element-wise collectives (`bcast`, `reduce`, `allreduce`, `scan`,
//! `exscan`) longer than `i32::MAX` MPI items are split into several
//! requests that complete together. `scatter`, `gather`, `allgather` and
//! `alltoall` send such a per-rank block as one element of a datatype made
//! for the call. The `v` variants, `reduce_scatter_block` and messages
//! refuse such counts with `InvalidInput` (they take per-rank counts or
//! displacements that one made type cannot express, or a predefined
//! reduction that applies to predefined types only).

mod backend;
mod comm;
mod datatype;
mod p2p;
mod sys;
mod user_op;

pub use backend::{Mpi, MpiBuilder, Progress, ThreadLevel};
pub use comm::MpiComm;
pub use p2p::{RecvFrom, RecvInfo, RecvReport, Source, TagMatch};
