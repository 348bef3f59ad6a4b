//! `randread`: 4 KiB random reads over a page-cached file, mfio's backends
//! side by side with a plain `pread` loop, same file, same offsets, one
//! submitting thread, repetitions interleaved.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use mfio_backends::{BackendKind, OpenOptions, Runtime};
use mfio_core::{IoBackendExt, IoRead, SyncIoRead};

use crate::core::Batch;
use crate::report::{ns_per_op, Series};

/// Settings of the `randread` benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct RandreadArgs {
    /// Size of the file read from, in MiB (created once, reused when the size matches).
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Read size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub block: usize,
    /// Measured repetitions per contender (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Length of one repetition in milliseconds.
    #[arg(long, default_value_t = 400)]
    pub rep_ms: u64,
    /// Where the file lives (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl Default for RandreadArgs {
    fn default() -> Self {
        Self {
            size_mib: 1024,
            block: 4096,
            reps: 5,
            rep_ms: 400,
            dir: None,
        }
    }
}

/// The contenders: name and queue depth.
/// `mfio uring` and `mfio poll` serve page-cache hits inline
/// (`preadv2(RWF_NOWAIT)`, the default); the "ring only" / "pool only" rows
/// send every read through the ring or the thread pool.
const CONTENDERS: [(&str, usize); 9] = [
    ("pread loop", 1),
    ("mfio uring", 1),
    ("mfio uring", 64),
    ("mfio uring (ring only)", 1),
    ("mfio uring (ring only)", 64),
    ("mfio poll", 1),
    ("mfio poll", 64),
    ("mfio poll (pool only)", 64),
    ("mfio sync (SyncIoRead)", 1),
];

/// Number of progress steps `run` takes.
pub fn steps(args: &RandreadArgs) -> u64 {
    (CONTENDERS.len() * (args.reps + 1)) as u64 + 1
}

/// Creates (or reuses) the data file and reads it once so it is page-cached.
fn prepare(args: &RandreadArgs, progress: &ProgressBar) -> std::io::Result<PathBuf> {
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("mfio-bench-{}m.dat", args.size_mib));
    let size = args.size_mib << 20;
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(size) {
        progress.set_message(format!("randread: creating {} MiB file", args.size_mib));
        let f = std::fs::File::create(&path)?;
        let chunk: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 131 % 251) as u8).collect();
        for i in 0..args.size_mib {
            f.write_all_at(&chunk, i << 20)?;
        }
        f.sync_all()?;
    }
    progress.set_message("randread: warming the page cache");
    let f = std::fs::File::open(&path)?;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..args.size_mib {
        f.read_exact_at(&mut buf, i << 20)?;
    }
    progress.inc(1);
    Ok(path)
}

/// Runs every contender, interleaved.
pub fn run(args: &RandreadArgs, progress: &ProgressBar) -> std::io::Result<Vec<Series>> {
    let path = prepare(args, progress)?;
    let mut series: Vec<Series> = CONTENDERS
        .iter()
        .map(|(name, depth)| Series {
            workload: format!("randread {} B (cached)", args.block),
            contender: format!("{name} QD{depth}"),
            ns_per_op: Vec::new(),
        })
        .collect();
    let uring = Runtime::builder().backend(BackendKind::Uring).build().ok();
    let ring_only = Runtime::builder()
        .backend(BackendKind::Uring)
        .inline_cached_reads(false)
        .build()
        .ok();
    let poll = Runtime::builder()
        .backend(BackendKind::Poll)
        .build()
        .map_err(std::io::Error::from)?;
    let pool_only = Runtime::builder()
        .backend(BackendKind::Poll)
        .inline_cached_reads(false)
        .build()
        .map_err(std::io::Error::from)?;
    if uring.is_none() {
        eprintln!("randread: io_uring unavailable here; its rows are skipped");
    }
    let span = Duration::from_millis(args.rep_ms);
    for rep in 0..=args.reps {
        for (i, (name, depth)) in CONTENDERS.iter().enumerate() {
            progress.set_message(format!("randread: {name} QD{depth}"));
            let res = match (*name, uring.as_ref()) {
                ("pread loop", _) => Some(pread_loop(&path, args, span)?),
                ("mfio uring", Some(rt)) => Some(mfio_async(rt, &path, args, *depth, span)?),
                ("mfio uring (ring only)", _) => match &ring_only {
                    Some(rt) => Some(mfio_async(rt, &path, args, *depth, span)?),
                    None => None,
                },
                ("mfio poll", _) => Some(mfio_async(&poll, &path, args, *depth, span)?),
                ("mfio poll (pool only)", _) => Some(mfio_async(&pool_only, &path, args, *depth, span)?),
                ("mfio sync (SyncIoRead)", Some(rt)) => Some(mfio_sync(rt, &path, args, span)?),
                _ => None,
            };
            if let (Some((elapsed, ops)), true) = (res, rep > 0) {
                series[i].ns_per_op.push(ns_per_op(elapsed, ops));
            }
            progress.inc(1);
        }
    }
    series.retain(|s| !s.ns_per_op.is_empty());
    Ok(series)
}

/// Block-aligned pseudo-random offsets inside the file.
fn offsets(args: &RandreadArgs) -> impl Iterator<Item = u64> {
    let blocks = ((args.size_mib << 20) / args.block as u64).max(1);
    let block = args.block as u64;
    let mut s = 0x2545_f491_4f6c_dd1du64;
    std::iter::repeat_with(move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % blocks) * block
    })
}

/// Reads per timing check.
const CHUNK: usize = 1024;

fn pread_loop(path: &Path, args: &RandreadArgs, span: Duration) -> std::io::Result<(Duration, u64)> {
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; args.block];
    timed_blocking(args, span, |pos| f.read_exact_at(&mut buf, pos))
}

/// Runs `read(offset)` at the benchmark's offsets for `span`; returns the
/// elapsed time and the number of reads (checking the clock per chunk).
fn timed_blocking(
    args: &RandreadArgs,
    span: Duration,
    mut read: impl FnMut(u64) -> std::io::Result<()>,
) -> std::io::Result<(Duration, u64)> {
    let mut offs = offsets(args);
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < span {
        for _ in 0..CHUNK {
            read(offs.next().unwrap_or(0))?;
        }
        ops += CHUNK as u64;
    }
    Ok((start.elapsed(), ops))
}

fn mfio_async(
    rt: &Runtime,
    path: &Path,
    args: &RandreadArgs,
    depth: usize,
    span: Duration,
) -> std::io::Result<(Duration, u64)> {
    let file = rt.block_on(rt.open(path, OpenOptions::new().read(true)))?;
    let mut offs = offsets(args);
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|_| Vec::with_capacity(args.block)).collect();
    let res = rt.block_on(async {
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < span {
            for _ in 0..(CHUNK / depth).max(1) {
                if depth == 1 {
                    let buf = bufs.pop().unwrap_or_default();
                    let (n, b) = file.read_at(offs.next().unwrap_or(0), buf).await.into_parts();
                    check(n, args.block)?;
                    bufs.push(b);
                } else {
                    let futs: Vec<_> = bufs
                        .drain(..)
                        .map(|b| file.read_at(offs.next().unwrap_or(0), b))
                        .collect();
                    for r in Batch::new(futs).await {
                        let (n, b) = r.into_parts();
                        check(n, args.block)?;
                        bufs.push(b);
                    }
                }
                ops += depth as u64;
            }
        }
        Ok::<_, mfio_core::Error>((start.elapsed(), ops))
    })?;
    Ok(res)
}

fn mfio_sync(rt: &Runtime, path: &Path, args: &RandreadArgs, span: Duration) -> std::io::Result<(Duration, u64)> {
    let file = rt.block_on(rt.open(path, OpenOptions::new().read(true)))?;
    let mut buf = vec![0u8; args.block];
    timed_blocking(args, span, |pos| Ok(file.blocking_read_exact_at(pos, &mut buf)?))
}

fn check(n: mfio_core::Result<usize>, want: usize) -> mfio_core::Result<()> {
    match n {
        Ok(k) if k == want => Ok(()),
        Ok(k) => Err(mfio_core::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("short read: {k} of {want}"),
        )),
        Err(e) => Err(e),
    }
}
