//! MPI's life in one process, which can see it only once: handles taken
//! while it lives share it, the level asked for is the level reported,
//! it is finalised once the last handle and communicator are gone, and
//! starting it again then is a clear error. A program without the test
//! harness (one MPI per process); `cargo test` runs it as one rank.

use std::time::{Duration, Instant};

use mfio_coll::mpi::{Mpi, ThreadLevel};
use mfio_coll::{Communicator, ReduceOp};
use mfio_core::IoBackendExt;

fn check(ok: bool, what: &str) {
    if !ok {
        eprintln!("mpi_lifecycle: FAILED: {what}");
        std::process::exit(1);
    }
}

fn main() {
    let mpi = match Mpi::builder().thread_level(ThreadLevel::Funneled).build() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("mpi_lifecycle: MPI init failed: {e}");
            std::process::exit(2);
        }
    };
    check(
        mpi.thread_level() == ThreadLevel::Funneled,
        "the level asked for is reported",
    );
    check(
        mpi.library_version().starts_with("Open MPI") || mpi.library_version().contains("MPICH"),
        "library version",
    );

    // A second init while MPI lives joins it, whatever it asks for.
    let again = Mpi::builder().thread_level(ThreadLevel::Multiple).build();
    check(
        again.as_ref().is_ok_and(|m| m.thread_level() == ThreadLevel::Funneled),
        "a second init shares the first",
    );
    drop(again);

    // A communicator keeps MPI alive after the last Mpi handle is gone.
    let world = match mpi.world() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("mpi_lifecycle: world: {e}");
            std::process::exit(2);
        }
    };
    drop(mpi);
    let backend = world.mpi().clone();
    let (res, sum) = backend
        .block_on(world.allreduce_in_place(vec![1u32], ReduceOp::Sum))
        .into_parts();
    check(
        res.is_ok() && sum == [world.size() as u32],
        "a communicator outlives the Mpi handle it came from",
    );
    // Work left running at the end: a collective nobody awaits. The last
    // handle waits (bounded) for MPI to finish it before finalising.
    drop(world.barrier());
    drop(world);
    let start = Instant::now();
    drop(backend);
    check(start.elapsed() < Duration::from_secs(5), "finalising waited too long");

    // Finalised: MPI cannot start again in this process, and says so.
    match Mpi::init() {
        Err(e) => check(e.to_string().contains("finalised"), "the error says MPI was finalised"),
        Ok(_) => check(false, "MPI started again after it was finalised"),
    }
    println!("mpi_lifecycle: shared while alive, finalised once, refused after");
}
