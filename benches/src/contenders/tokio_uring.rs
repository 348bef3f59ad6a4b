//! tokio-uring: `read_at`/`write_at` with owned buffers (aligned slices of a
//! `Vec`, so `O_DIRECT` works too) on its runtime.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio_uring::buf::BoundedBuf;

use super::{read_chunks, Built};
use crate::files::{FileJob, Kind};
use crate::measure::{drive_ops, Sample};

/// tokio-uring's runtime on this thread.
pub struct TokioUring {
    rt: Built<tokio_uring::Runtime>,
}

impl TokioUring {
    /// Builds the runtime.
    pub fn new() -> Self {
        Self {
            rt: tokio_uring::Runtime::new(&tokio_uring::builder()).map_err(|e| e.to_string()),
        }
    }
}

async fn ops(job: &FileJob, span: Duration) -> io::Result<Sample> {
    let file = tokio_uring::fs::File::from_std(job.open_std()?);
    let file = &file;
    let bufs: Vec<_> = (0..job.depth)
        .map(|_| {
            let (v, off) = job.aligned_vec();
            v.slice(off..off + job.block)
        })
        .collect();
    let mut pos = job.positions();
    let sync = || file.sync_data();
    let res = if job.kind == Kind::Write {
        let op = |p, b| file.write_at(b, p).submit();
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    } else {
        let op = |p, b| file.read_at(b, p);
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    };
    res
}

async fn load(path: &Path, chunk: usize, len: u64) -> io::Result<u64> {
    let file = tokio_uring::fs::File::open(path).await?;
    let read = read_chunks(len, chunk, |at, b| file.read_exact_at(b, at)).await?;
    file.close().await?;
    Ok(read)
}

file_contender!(TokioUring, "tokio-uring");
