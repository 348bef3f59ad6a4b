//! Collective communication over mfio packets.
//!
//! [`Communicator`] is a group of ranks and the collectives among them —
//! barrier, bcast, (all)reduce, scatter(v), (all)gather(v), alltoall(v),
//! reduce_scatter_block, scan and exscan — each with an async form (a
//! [`CollFuture`] that any mfio driver runs: `block_on`, tokio, smol, a
//! `Composite` beside io_uring and UCX) and a blocking form. Buffers are
//! owned `Vec`s of an [`Element`] type that go in and come back;
//! reductions take a [`ReduceOp`], a Rust closure included.
//!
//! With the `mpi` feature (on by default), [`mpi::Mpi`] is the backend over
//! the system MPI, and [`mpi::MpiComm`] the communicator; it also sends and
//! receives tagged messages as packets.
//!
//! [`algo`] holds mfio's own collective algorithms, written over any
//! point-to-point [`transport::Transport`]: threads of one process
//! ([`transport::local`]), TCP ([`transport::tcp`], feature `tcp`), UCX
//! ([`transport::ucx`], feature `ucx`) or MPI's point-to-point messages.
//! [`algo::TransportComm`] is the same [`Communicator`] over them, picking an
//! algorithm per call from a tuning table ([`algo::Tuning`]).
//!
//! Over the system MPI:
//!
//! ```
//! # #[cfg(feature = "mpi")]
//! # fn main() -> mfio_core::Result<()> {
//! use mfio_coll::mpi::Mpi;
//! use mfio_coll::{Communicator, ReduceOp};
//! use mfio_core::IoBackendExt;
//!
//! // Under `mpiexec -n N` every process runs this; alone it is one rank.
//! let mpi = Mpi::init()?;
//! let world = mpi.world()?;
//! let mine = vec![world.rank() as f64, 1.0];
//! let (result, sum) = mpi.block_on(world.allreduce_in_place(mine, ReduceOp::Sum)).into_parts();
//! result?;
//! assert_eq!(sum[1], world.size() as f64);
//! // The blocking form of the same:
//! let (result, max) = world.blocking_allreduce_in_place(vec![world.rank() as u32], ReduceOp::Max).into_parts();
//! result?;
//! assert_eq!(max, [world.size() as u32 - 1]);
//! # Ok(()) }
//! # #[cfg(not(feature = "mpi"))]
//! # fn main() {}
//! ```
//!
//! Over a transport: here three ranks as threads of this process; over
//! TCP or UCX only the transport differs (`transport::bootstrap` connects
//! ranks started by a launcher):
//!
//! ```
//! # fn main() -> mfio_core::Result<()> {
//! use mfio_coll::algo::TransportComm;
//! use mfio_coll::transport::local::LocalTransport;
//! use mfio_coll::{Communicator, ReduceOp};
//! use mfio_core::mem::MemBackend;
//!
//! let ranks: Vec<_> = LocalTransport::group(3)
//!     .into_iter()
//!     .map(|t| {
//!         std::thread::spawn(move || -> mfio_core::Result<Vec<u64>> {
//!             let world = TransportComm::new(MemBackend::new()?, t);
//!             let mine = vec![world.rank() as u64 + 1; 4];
//!             let (result, sum) = world.blocking_allreduce_in_place(mine, ReduceOp::Sum).into_parts();
//!             result?;
//!             Ok(sum)
//!         })
//!     })
//!     .collect();
//! for rank in ranks {
//!     assert_eq!(rank.join().expect("a rank's thread")?, [6, 6, 6, 6]);
//! }
//! # Ok(()) }
//! ```
//!
//! # Features
//! - `mpi`: the MPI backend, bound to the system MPI through `mpi-sys`
//!   (Debian: `libopenmpi-dev openmpi-bin`), and MPI's point-to-point
//!   messages as a transport.
//! - `tcp`: the TCP transport on mfio-backends, and the bootstrap from the
//!   launcher's environment.
//! - `ucx`: the UCX transport on mfio-net (Debian: `libucx-dev`).

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod algo;
pub mod check;
pub mod comm;
pub mod element;
mod in_box;
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub mod mpi;
pub mod reduce;
pub mod transport;

/// The README's examples (mfio-core's, mfio-coll's), compiled and run as
/// doctests here, the crate that depends on both, so they cannot rot.
#[cfg(all(doctest, feature = "mpi"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub use comm::{CollFuture, CollResult, Communicator, Counts, Pair, Rank, Tag};
pub use element::{Element, Layout, Primitive};
pub use reduce::{CombineFn, ReduceOp};
