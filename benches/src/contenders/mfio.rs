//! mfio's contenders: the async API on the io_uring and poll backends, and
//! the blocking `SyncIoRead`/`SyncIoWrite` API over io_uring.

use std::io;
use std::path::Path;
use std::time::Duration;

use mfio_backends::{BackendKind, File, OpenOptions, Runtime, TcpListener, TcpStream};
use mfio_core::{AlignedBuf, IoBackendExt, IoRead, IoReadStream, IoWrite, IoWriteStream, SyncIoRead, SyncIoWrite};

use super::{read_chunks, ready, unbuilt, Built};
use crate::files::{FileJob, Kind, DIRECT_ALIGN};
use crate::measure::{drive_blocking, drive_files, drive_files_blocking, drive_ops, Contender, Sample};
use crate::tcp::{loopback, session, TcpJob};

fn options(job: &FileJob) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(job.kind == Kind::Write).direct(job.direct);
    o
}

fn buffers(job: &FileJob, n: usize) -> io::Result<Vec<AlignedBuf>> {
    (0..n)
        .map(|_| {
            let mut b = AlignedBuf::with_capacity(job.block, DIRECT_ALIGN)?;
            if job.kind == Kind::Write {
                b.extend_from_slice(&vec![0x5a; job.block]);
            }
            Ok(b)
        })
        .collect()
}

/// mfio's async API on one backend.
pub struct Mfio {
    kind: BackendKind,
    rt: Built<Runtime>,
}

impl Mfio {
    /// Builds the runtime of `kind` (its error is reported in the rows).
    pub fn new(kind: BackendKind) -> Self {
        let rt = Runtime::builder().backend(kind).build().map_err(|e| e.to_string());
        Self { kind, rt }
    }
}

async fn load(rt: &Runtime, path: &Path, chunk: usize, len: u64) -> io::Result<u64> {
    let file = rt.open(path, OpenOptions::new().read(true)).await?;
    let read = read_chunks(len, chunk, |at, b| {
        let file = &file;
        async move {
            let (r, b) = file.read_exact_at(at, b).await.into_parts();
            (r.map_err(io::Error::from), b)
        }
    })
    .await?;
    file.close().await?;
    Ok(read)
}

async fn ops(file: &File, job: &FileJob, span: Duration) -> io::Result<Sample> {
    let bufs = buffers(job, job.depth)?;
    let mut pos = job.positions();
    let sync = || async { Ok(file.sync_data().await?) };
    if job.kind == Kind::Write {
        let op = |p, b| async move {
            let (n, b) = file.write_at(p, b).await.into_parts();
            (n.map_err(io::Error::from), b)
        };
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    } else {
        let op = |p, b| async move {
            let (n, b) = file.read_at(p, b).await.into_parts();
            (n.map_err(io::Error::from), b)
        };
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    }
}

impl Contender<FileJob> for Mfio {
    fn name(&self) -> String {
        format!("mfio {}", self.kind.name())
    }

    fn skip_reason(&self, _job: &FileJob) -> Option<String> {
        unbuilt(&self.rt)
    }

    fn run(&mut self, job: &FileJob, span: Duration) -> io::Result<Sample> {
        let rt = ready(&mut self.rt)?;
        if job.kind == Kind::ManyFiles {
            return rt.block_on(drive_files(&job.files, job.depth, job.block, span, |p| {
                load(rt, p, job.block, job.len)
            }));
        }
        rt.block_on(async {
            let file = rt.open(&job.path, &options(job)).await?;
            let res = ops(&file, job, span).await;
            file.close().await?;
            res
        })
    }
}

/// mfio's blocking API (`SyncIoRead`/`SyncIoWrite` on an io_uring file).
pub struct MfioSync {
    rt: Built<Runtime>,
}

impl MfioSync {
    /// Builds the io_uring runtime.
    pub fn new() -> Self {
        let rt = Runtime::builder()
            .backend(BackendKind::Uring)
            .build()
            .map_err(|e| e.to_string());
        Self { rt }
    }
}

impl Contender<FileJob> for MfioSync {
    fn name(&self) -> String {
        "mfio sync (QD1)".into()
    }

    fn skip_reason(&self, _job: &FileJob) -> Option<String> {
        unbuilt(&self.rt)
    }

    fn run(&mut self, job: &FileJob, span: Duration) -> io::Result<Sample> {
        let rt = ready(&mut self.rt)?;
        if job.kind == Kind::ManyFiles {
            let mut buf = vec![0u8; job.block];
            return drive_files_blocking(&job.files, job.block, span, |p| {
                let file = rt.block_on(rt.open(p, OpenOptions::new().read(true)))?;
                let mut at = 0u64;
                while at < job.len {
                    file.blocking_read_exact_at(at, &mut buf)?;
                    at += buf.len() as u64;
                }
                rt.block_on(file.close())?;
                Ok(at)
            });
        }
        let file = rt.block_on(rt.open(&job.path, &options(job)))?;
        // The owned-buffer calls: an aligned buffer goes to the backend as is
        // (no staging copy), which `O_DIRECT` needs.
        let mut slot = buffers(job, 1)?.pop();
        let mut pos = job.positions();
        let block = job.block;
        let res = if job.kind == Kind::Write {
            drive_blocking(
                &mut pos,
                job.pace(span),
                |p| {
                    let b = slot.take().ok_or_else(|| io::Error::other("buffer lost"))?;
                    let (r, b) = file.blocking_write_all_owned_at(p, b).into_parts();
                    slot = Some(b);
                    r.map(|()| block).map_err(io::Error::from)
                },
                || Ok(rt.block_on(file.sync_data())?),
            )
        } else {
            drive_blocking(
                &mut pos,
                job.pace(span),
                |p| {
                    let b = slot.take().ok_or_else(|| io::Error::other("buffer lost"))?;
                    let (r, b) = file.blocking_read_owned_at(p, b).into_parts();
                    slot = Some(b);
                    r.map_err(io::Error::from)
                },
                || Ok(()),
            )
        };
        rt.block_on(file.close())?;
        res
    }
}

// TCP: both ends of every connection on this runtime.

async fn pairs(rt: &Runtime, n: usize) -> io::Result<Vec<(TcpStream, TcpStream)>> {
    let listener = TcpListener::bind(rt, loopback())?;
    let addr = listener.local_addr()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(rt, addr).await?;
        let (s, _) = listener.accept().await?;
        c.set_nodelay(true)?;
        s.set_nodelay(true)?;
        out.push((c, s));
    }
    Ok(out)
}

async fn round_trip(c: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let (r, b) = c.write_all(b).await.into_parts();
    if let Err(e) = r {
        return (Err(e.into()), c, b);
    }
    let (r, b) = c.read_exact(b).await.into_parts();
    (r.map_err(io::Error::from), c, b)
}

async fn echo(s: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let (r, b) = s.read_exact(b).await.into_parts();
    if let Err(e) = r {
        return (Err(e.into()), s, b);
    }
    let (r, b) = s.write_all(b).await.into_parts();
    (r.map_err(io::Error::from), s, b)
}

async fn send(c: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let (r, b) = c.write_all(b).await.into_parts();
    (r.map_err(io::Error::from), c, b)
}

async fn recv(s: TcpStream, b: Vec<u8>) -> (io::Result<usize>, TcpStream, Vec<u8>) {
    let (r, b) = s.read(b).await.into_parts();
    (r.map_err(io::Error::from), s, b)
}

impl Contender<TcpJob> for Mfio {
    fn name(&self) -> String {
        format!("mfio {}", self.kind.name())
    }

    fn skip_reason(&self, _job: &TcpJob) -> Option<String> {
        unbuilt(&self.rt)
    }

    fn run(&mut self, job: &TcpJob, span: Duration) -> io::Result<Sample> {
        let rt = ready(&mut self.rt)?;
        rt.block_on(async {
            let p = pairs(rt, job.conns).await?;
            session(p, job, span, round_trip, echo, send, recv).await
        })
    }
}
