//! glommio: `BufferedFile` for page-cached workloads, `DmaFile` (its native
//! `O_DIRECT` file) for direct reads, on a `LocalExecutor` of this thread.
//! Its read calls hand back their own buffers; writes take a fresh `Vec`.

use std::io;
use std::path::Path;
use std::time::Duration;

use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};

use super::{ready, unbuilt, Built};
use crate::files::{FileJob, Kind};
use crate::measure::{drive_files, drive_ops, Contender, Sample};

/// A glommio executor on this thread.
pub struct Glommio {
    ex: Built<LocalExecutor>,
}

impl Glommio {
    /// Builds the executor (unpinned).
    pub fn new() -> Self {
        let ex = LocalExecutorBuilder::new(Placement::Unbound)
            .make()
            .map_err(|e| e.to_string());
        Self { ex }
    }
}

fn err<T>(e: glommio::GlommioError<T>) -> io::Error {
    io::Error::other(e.to_string())
}

async fn buffered(job: &FileJob, span: Duration) -> io::Result<Sample> {
    let file = OpenOptions::new()
        .read(true)
        .write(job.kind == Kind::Write)
        .buffered_open(&job.path)
        .await
        .map_err(err)?;
    let file = &file;
    let bufs = vec![(); job.depth];
    let mut pos = job.positions();
    let sync = || async { file.fdatasync().await.map_err(err) };
    let block = job.block;
    if job.kind == Kind::Write {
        let op = |p, ()| async move { (file.write_at(vec![0x5a; block], p).await.map_err(err), ()) };
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    } else {
        let op = |p, ()| async move { (file.read_at(p, block).await.map(|r| r.len()).map_err(err), ()) };
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    }
}

async fn direct(job: &FileJob, span: Duration) -> io::Result<Sample> {
    let file = DmaFile::open(&job.path).await.map_err(err)?;
    let file = &file;
    let bufs = vec![(); job.depth];
    let block = job.block;
    let op = |p, ()| async move { (file.read_at_aligned(p, block).await.map(|r| r.len()).map_err(err), ()) };
    let sync = || std::future::ready(Ok(()));
    drive_ops(&mut job.positions(), job.pace(span), bufs, op, sync).await
}

async fn load(path: &Path, chunk: usize, len: u64) -> io::Result<u64> {
    let file = BufferedFile::open(path).await.map_err(err)?;
    let mut at = 0u64;
    while at < len {
        let r = file.read_at(at, chunk).await.map_err(err)?;
        at += r.len() as u64;
        if r.is_empty() {
            break;
        }
    }
    file.close().await.map_err(err)?;
    Ok(at)
}

impl Contender<FileJob> for Glommio {
    fn name(&self) -> String {
        "glommio".into()
    }

    fn skip_reason(&self, job: &FileJob) -> Option<String> {
        if let Some(why) = unbuilt(&self.ex).or_else(|| job.join.unspawnable()) {
            return Some(why);
        }
        (job.direct && job.kind != Kind::Read).then(|| "skipped: direct writes not benchmarked".into())
    }

    fn run(&mut self, job: &FileJob, span: Duration) -> io::Result<Sample> {
        let ex = ready(&mut self.ex)?;
        match job.kind {
            Kind::ManyFiles => ex.run(drive_files(&job.files, job.depth, job.block, span, |p| {
                load(p, job.block, job.len)
            })),
            _ if job.direct => ex.run(direct(job, span)),
            _ => ex.run(buffered(job, span)),
        }
    }
}
