//! A checksum of one file computed by every rank of an MPI job, each over
//! its own slice: file reads (io_uring), UCX messages and MPI collectives
//! all driven by one `block_on` on one descriptor (a `Composite` of the
//! three backends).
//!
//! ```text
//! cargo build -p mfio-coll --example distributed_checksum
//! scripts/mpirun -n 3 target/debug/examples/distributed_checksum            # makes a 48 MiB file
//! scripts/mpirun -n 3 target/debug/examples/distributed_checksum -- PATH    # any file all ranks see
//! ```
//!
//! 1. Rank 0 writes a test file (unless given one) and broadcasts its path.
//! 2. The ranks trade UCX worker addresses with `MPI_Allgather(v)` and
//!    connect to rank 0.
//! 3. Each rank reads its slice with 8 reads in flight and sums it.
//! 4. An MPI allreduce adds the slices' sums; every rank also sends its
//!    own to rank 0 over UCX, which checks that they add up to the same.
//! 5. Rank 0 checks the result against a checksum of the whole file made
//!    in one process with `std::fs`, and says so; any mismatch exits 1.
//!
//! The checksum is a pair of position-weighted sums, so slices add up:
//! `a = Σ b[i]`, `b = Σ (i + 1)·b[i]` (wrapping, mod 2^64).

use std::path::PathBuf;

use futures::stream::{FuturesOrdered, StreamExt};
use mfio_backends::{Composite, OpenOptions, Runtime};
use mfio_coll::mpi::Mpi;
use mfio_coll::{Communicator, Counts, ReduceOp};
use mfio_core::{Error, IoBackendExt, IoRead, IoWrite, Result};
use mfio_net::ucx::{Context, Tag, TagMatch};

const FILE_LEN: u64 = 48 << 20;
const CHUNK: u64 = 1 << 20;
const IN_FLIGHT: usize = 8;
/// Tag of the partial sums sent to rank 0.
const PARTIAL: u64 = 7;

/// The checksum of `data`, which starts at byte `offset` of the file.
fn checksum(offset: u64, data: &[u8]) -> [u64; 2] {
    let mut sum = [0u64; 2];
    for (i, &b) in data.iter().enumerate() {
        sum[0] = sum[0].wrapping_add(u64::from(b));
        sum[1] = sum[1].wrapping_add((offset + i as u64 + 1).wrapping_mul(u64::from(b)));
    }
    sum
}

fn add(a: [u64; 2], b: [u64; 2]) -> [u64; 2] {
    [a[0].wrapping_add(b[0]), a[1].wrapping_add(b[1])]
}

fn failed(what: impl Into<String>) -> Error {
    Error::new(std::io::ErrorKind::Other, what.into())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("distributed_checksum: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mpi = Mpi::init()?;
    let world = mpi.world()?;
    let (rank, size) = (world.rank(), world.size());
    let runtime = Runtime::new()?;
    let worker = Context::builder().set("TLS", "sm,self,tcp").build()?.worker()?;
    let all = Composite::new(vec![
        Box::new(runtime.clone()),
        Box::new(worker.clone()),
        Box::new(mpi.clone()),
    ])?;
    let made = std::env::args().nth(1).is_none();

    all.block_on(async {
        // 1. The file, and its path on every rank.
        let path = if rank == 0 {
            match std::env::args().nth(1) {
                Some(p) => PathBuf::from(p),
                None => write_test_file(&runtime).await?,
            }
        } else {
            PathBuf::new()
        };
        let path_bytes = path.to_string_lossy().into_owned().into_bytes();
        let (r, len) = world.bcast(vec![path_bytes.len() as u64], 0).await.into_parts();
        r?;
        let mut buf = path_bytes;
        buf.resize(len[0] as usize, 0);
        let (r, buf) = world.bcast(buf, 0).await.into_parts();
        r?;
        let path = PathBuf::from(String::from_utf8(buf).map_err(|_| failed("path is not UTF-8"))?);

        // 2. UCX addresses, traded over MPI.
        let mine = worker.address().as_bytes().to_vec();
        let (r, (_, lens)) = world.allgather(vec![mine.len() as u64], vec![0; size]).await.into_parts();
        r?;
        let layout = Counts::packed(lens.iter().map(|&l| l as usize).collect());
        let (r, (_, addresses)) = world.allgatherv(mine, vec![0u8; layout.total()], &layout).await.into_parts();
        r?;
        let of = |q: usize| &addresses[layout.displs[q]..layout.displs[q] + layout.counts[q]];
        let to_root = worker.connect(&mfio_net::ucx::WorkerAddress::from_bytes(of(0))?)?;

        // 3. This rank's slice, read with io_uring.
        let file = runtime.open(&path, OpenOptions::new().read(true)).await?;
        let file_len = file.metadata().await?.len();
        let (start, end) = (file_len * rank as u64 / size as u64, file_len * (rank as u64 + 1) / size as u64);
        let mut reads = FuturesOrdered::new();
        let mut next = start;
        let mut partial = [0u64; 2];
        loop {
            while reads.len() < IN_FLIGHT && next < end {
                let n = CHUNK.min(end - next);
                let at = next;
                let file = &file;
                reads.push_back(async move {
                    let (r, buf) = file.read_exact_at(at, Vec::with_capacity(n as usize)).await.into_parts();
                    r.map(|()| checksum(at, &buf))
                });
                next += n;
            }
            match reads.next().await {
                Some(sum) => partial = add(partial, sum?),
                None => break,
            }
        }

        // 4. The sums: by MPI allreduce, and by UCX to rank 0.
        let (r, total) = world.allreduce_in_place(partial.to_vec(), ReduceOp::Sum).await.into_parts();
        r?;
        let total = [total[0], total[1]];
        let bytes: Vec<u8> = partial.iter().flat_map(|x| x.to_le_bytes()).collect();
        let (sent, _) = to_root.write_at(Tag(PARTIAL), bytes).await.into_parts();
        sent?;
        if rank == 0 {
            let mut by_ucx = [0u64; 2];
            for _ in 0..size {
                let (got, msg) = worker.read_at(TagMatch::exact(PARTIAL), Vec::with_capacity(16)).await.into_parts();
                if got? != 16 {
                    return Err(failed("short partial sum"));
                }
                let word = |i: usize| u64::from_le_bytes(msg[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
                by_ucx = add(by_ucx, [word(0), word(1)]);
            }
            if by_ucx != total {
                return Err(failed(format!("UCX sums {by_ucx:?} differ from the allreduce {total:?}")));
            }
        }
        // Everyone has what it needs before the endpoints close.
        world.barrier().await.0?;
        to_root.close_force().await?;

        // 5. The check against one process reading it all.
        if rank == 0 {
            let whole = std::fs::read(&path)?;
            let expected = checksum(0, &whole);
            if expected != total {
                return Err(failed(format!("{size} ranks computed {total:?}; one process computes {expected:?}")));
            }
            println!(
                "distributed_checksum: {size} ranks, {} MiB, checksum {:016x}{:016x}: matches one process, and the UCX sums",
                file_len >> 20,
                total[0],
                total[1]
            );
            if made {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    })
}

/// Writes the test file with the io_uring runtime (rank 0 only).
async fn write_test_file(runtime: &Runtime) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("mfio-distributed-checksum-{}", std::process::id()));
    let file = runtime
        .open(&path, OpenOptions::new().write(true).create(true).truncate(true))
        .await?;
    let mut at = 0;
    while at < FILE_LEN {
        let chunk: Vec<u8> = (at..at + CHUNK)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        file.write_all_at(at, chunk).await.0?;
        at += CHUNK;
    }
    Ok(path)
}
