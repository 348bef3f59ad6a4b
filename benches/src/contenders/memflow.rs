//! The original memflow mfio: `mfio-rt` 0.1 `NativeRt` with its io_uring or
//! mio backend, `read_all`/`write_all` on borrowed buffers.

use std::io;
use std::time::Duration;

use mfio::backend::IoBackendExt as _;
use mfio::traits::{IoRead as _, IoWrite as _};
use mfio_rt::{Fs as _, NativeRt, OpenOptions};

use super::{ready, Built};
use crate::files::{unsupported, FileJob, Kind};
use crate::measure::{drive_files, drive_ops, Contender, Sample};

/// Which of memflow's native backends.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// `io_uring`.
    IoUring,
    /// `mio` (epoll, files on a thread pool).
    Mio,
}

/// memflow `mfio-rt` 0.1 on one backend.
pub struct Memflow {
    backend: Backend,
    rt: Built<NativeRt>,
}

impl Memflow {
    /// Builds the runtime with only `backend` enabled.
    pub fn new(backend: Backend) -> Self {
        let builder = NativeRt::builder();
        let builder = match backend {
            Backend::IoUring => builder.io_uring(true),
            Backend::Mio => builder.mio(true),
        };
        let rt = builder.build().map_err(|e| format!("{e:?}"));
        Self { backend, rt }
    }
}

fn err(e: mfio::error::Error) -> io::Error {
    io::Error::other(format!("memflow mfio: {e:?}"))
}

async fn ops(rt: &NativeRt, job: &FileJob, span: Duration) -> io::Result<Sample> {
    let opts = OpenOptions::new().read(true).write(job.kind == Kind::Write);
    let file = rt.open(&job.path, opts).await.map_err(err)?;
    let file = &file;
    let mut store: Vec<Vec<u8>> = (0..job.depth).map(|_| vec![0x5a; job.block]).collect();
    let bufs: Vec<&mut [u8]> = store.iter_mut().map(|v| &mut v[..]).collect();
    let mut pos = job.positions();
    let sync = || std::future::ready(Ok(()));
    // The closures are written inline so that `B` is the buffers' one
    // lifetime, not any lifetime.
    if job.kind == Kind::Write {
        drive_ops(
            &mut pos,
            job.pace(span),
            bufs,
            |p, b| async move {
                let n = b.len();
                (file.write_all(p, &*b).await.map(|_| n).map_err(err), b)
            },
            sync,
        )
        .await
    } else {
        drive_ops(
            &mut pos,
            job.pace(span),
            bufs,
            |p, b| async move {
                let n = b.len();
                (file.read_all(p, &mut *b).await.map(|_| n).map_err(err), b)
            },
            sync,
        )
        .await
    }
}

async fn load(rt: &NativeRt, path: &std::path::Path, chunk: usize, len: u64) -> io::Result<u64> {
    let file = rt.open(path, OpenOptions::new().read(true)).await.map_err(err)?;
    let mut buf = vec![0u8; chunk];
    let mut at = 0u64;
    while at < len {
        file.read_all(at, &mut buf[..]).await.map_err(err)?;
        at += chunk as u64;
    }
    Ok(at)
}

impl Contender<FileJob> for Memflow {
    fn name(&self) -> String {
        match self.backend {
            Backend::IoUring => "memflow mfio-rt uring".into(),
            Backend::Mio => "memflow mfio-rt mio".into(),
        }
    }

    fn skip_reason(&self, job: &FileJob) -> Option<String> {
        if let Err(e) = &self.rt {
            return Some(format!("runtime failed to build: {e}"));
        }
        if let Some(why) = job.join.unspawnable() {
            return Some(why);
        }
        if job.direct {
            return unsupported("mfio-rt 0.1 has no O_DIRECT open option");
        }
        if job.sync_every.is_some() {
            return unsupported("mfio-rt 0.1 files have no fsync");
        }
        None
    }

    fn run(&mut self, job: &FileJob, span: Duration) -> io::Result<Sample> {
        let rt = ready(&mut self.rt)?;
        if job.kind == Kind::ManyFiles {
            return rt.block_on(drive_files(&job.files, job.depth, job.block, span, |p| {
                load(rt, p, job.block, job.len)
            }));
        }
        rt.block_on(ops(rt, job, span))
    }
}
