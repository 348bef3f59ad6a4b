//! MPI's life in one process, which can see it only once: handles taken
//! while it lives share it, the level asked for is the level reported,
//! it is finalised once the last handle and communicator are gone, and
//! starting it again then is a clear error. A program without the test
//! harness (one MPI per process); `cargo test` runs it as one rank.
//! `MFIO_MPI_PROGRESS=thread` runs it with the backend's progress thread,
//! busy with a collective when the last handle goes: MPI must still be
//! finalised by the dropping thread, before the drop returns (the thread
//! once held the last handle for its round and finalised MPI itself, while
//! `main` went on and exited).

use std::time::{Duration, Instant};

use mfio_coll::mpi::{Mpi, Progress, ThreadLevel};
use mfio_coll::{Communicator, ReduceOp};
use mfio_core::IoBackendExt;

fn check(ok: bool, what: &str) {
    if !ok {
        eprintln!("mpi_lifecycle: FAILED: {what}");
        std::process::exit(1);
    }
}

fn main() {
    let thread = std::env::var("MFIO_MPI_PROGRESS").is_ok_and(|v| v == "thread");
    // A progress thread needs Multiple; the second init below asks for the
    // other level.
    let (level, other) = if thread {
        (ThreadLevel::Multiple, ThreadLevel::Funneled)
    } else {
        (ThreadLevel::Funneled, ThreadLevel::Multiple)
    };
    let progress = Progress {
        thread,
        ..Progress::default()
    };
    // A timeout of `Duration::MAX` is "no limit" like any other long one
    // (each operation's deadline was `Instant + Duration`, which panicked
    // past what an `Instant` holds: at the first collective below).
    let mpi = match Mpi::builder()
        .thread_level(level)
        .progress(progress)
        .timeout(Some(Duration::MAX))
        .build()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("mpi_lifecycle: MPI init failed: {e}");
            std::process::exit(2);
        }
    };
    check(mpi.thread_level() == level, "the level asked for is reported");
    check(
        mpi.library_version().starts_with("Open MPI") || mpi.library_version().contains("MPICH"),
        "library version",
    );

    // A second init while MPI lives joins it, whatever it asks for.
    let again = Mpi::builder().thread_level(other).build();
    check(
        again.as_ref().is_ok_and(|m| m.thread_level() == level),
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
    // Work left running at the end: a collective nobody awaits, which the
    // last rank joins late, so it is still pending (and a progress thread
    // busy testing it) when the others drop their last handle. That waits
    // (bounded) for MPI to finish it before finalising.
    if world.size() > 1 && world.rank() == world.size() - 1 {
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(world.barrier());
    drop(world);
    let start = Instant::now();
    drop(backend);
    check(start.elapsed() < Duration::from_secs(5), "finalising waited too long");

    // Finalised, by this thread, before the drop returned: MPI cannot
    // start again in this process, and says so.
    match Mpi::init() {
        Err(e) => check(e.to_string().contains("finalised"), "the error says MPI was finalised"),
        Ok(_) => check(false, "MPI started again after it was finalised"),
    }
    println!("mpi_lifecycle: shared while alive, finalised once, refused after");
}
