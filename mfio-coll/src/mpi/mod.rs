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
//! the backend sleeps on its eventfd and costs nothing. Under
//! [`ThreadLevel::Multiple`] a collective of one MPI call is tested by its
//! own future instead, at each poll (as a C program's `MPI_Test` loop), and
//! handed to the backend after the spin or if the future is dropped.
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
//! The blocking form of a collective makes MPI's blocking call when its
//! thread may call MPI and no timeout is set; otherwise it waits for the
//! non-blocking call. MPI never matches a blocking collective with a
//! non-blocking one, so every rank of a communicator must choose alike:
//! the same timeout setting everywhere and, under `Funneled`, blocking
//! forms called from the same kind of thread on every rank.
//!
//! # Large counts
//! Open MPI 4.1 implements MPI 3.1, without the `_c` large-count calls, so
//! counts beyond `i32::MAX` MPI items take other shapes, each decided by
//! every rank from what it knows itself (ranks never disagree on the
//! shape):
//! - element-wise collectives (`bcast`, `reduce`, `allreduce`, `scan`,
//!   `exscan`) are split into several requests that complete together;
//! - `reduce_scatter_block` becomes one split `reduce` to each rank (its
//!   chunks would not be contiguous);
//! - `scatter`, `gather`, `allgather` and `alltoall` send each per-rank
//!   block as one element of a datatype made for the call;
//! - in the `v` variants, a block longer than the limit leaves the MPI
//!   call (count 0 there) and travels as one message on a private
//!   duplicate of the communicator; both of its ends know its length.
//!   Displacements beyond the limit are counted in a larger unit (the
//!   greatest common divisor of that side's counts and displacements); a
//!   layout no unit brings under the limit is refused with `InvalidInput`
//!   naming it, by the rank that holds it;
//! - a message is one element of a datatype made for it; a receive buffer
//!   beyond the limit likewise, and it takes any shorter message.
//!
//! [`MpiBuilder::max_count`] lowers the limit, which is how the tests
//! reach every one of these paths.

mod backend;
mod comm;
mod datatype;
mod p2p;
mod self_test;
mod sys;
mod transport;
mod user_op;

pub use backend::{Mpi, MpiBuilder, Progress, ThreadLevel};
pub use comm::MpiComm;
pub use p2p::{RecvFrom, RecvInfo, RecvReport, Source, TagMatch};
#[cfg(feature = "tcp")]
pub use transport::tcp_transport;
#[cfg(feature = "ucx")]
pub use transport::ucx_transport;
pub use transport::MpiTransport;
