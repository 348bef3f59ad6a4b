//! tokio on a current-thread runtime. Files: `tokio::fs`, where every call
//! goes to tokio's blocking thread pool; positioned I/O is `seek` +
//! `read_exact`/`write_all`, so each operation in flight has its own file
//! handle. TCP: `tokio::net` streams on its epoll reactor.

use std::io::{self, SeekFrom};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{ready, Built};
use crate::files::{unsupported, FileJob, Kind};
use crate::measure::{drive_files, drive_join_set, drive_ops, Contender, JoinStyle, Sample};
use crate::tcp::loopback;

/// A current-thread tokio runtime with I/O enabled.
pub struct Tokio {
    rt: Built<tokio::runtime::Runtime>,
}

impl Tokio {
    /// Builds a current-thread runtime (its blocking pool grows on demand).
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| e.to_string());
        Self { rt }
    }
}

async fn load(path: &Path, chunk: usize, len: u64) -> io::Result<u64> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; chunk];
    let mut at = 0u64;
    while at < len {
        f.read_exact(&mut buf).await?;
        at += chunk as u64;
    }
    Ok(at)
}

async fn ops(job: &FileJob, span: Duration) -> io::Result<Sample> {
    let mut handles = Vec::with_capacity(job.depth);
    for _ in 0..job.depth {
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(job.kind == Kind::Write)
            .open(&job.path)
            .await?;
        handles.push((f, vec![0x5a; job.block]));
    }
    let syncer = tokio::fs::File::open(&job.path).await?;
    let sync = || syncer.sync_data();
    let write = job.kind == Kind::Write;
    let op = |p: u64, (mut f, mut buf): (tokio::fs::File, Vec<u8>)| async move {
        let res = async {
            f.seek(SeekFrom::Start(p)).await?;
            if write {
                f.write_all(&buf).await?;
            } else {
                f.read_exact(&mut buf).await?;
            }
            Ok(buf.len())
        }
        .await;
        (res, (f, buf))
    };
    if job.join == JoinStyle::JoinSet && job.sync_every.is_none() {
        return drive_join_set(&mut job.positions(), job.pace(span), handles, op).await;
    }
    drive_ops(&mut job.positions(), job.pace(span), handles, op, sync).await
}

impl Contender<FileJob> for Tokio {
    fn name(&self) -> String {
        "tokio::fs".into()
    }

    fn skip_reason(&self, job: &FileJob) -> Option<String> {
        if let Err(e) = &self.rt {
            return Some(format!("runtime failed to build: {e}"));
        }
        // tokio::fs copies through its own unaligned buffer, which O_DIRECT rejects.
        job.direct
            .then(|| unsupported("tokio::fs reads through its own unaligned buffer (no O_DIRECT)"))
            .flatten()
    }

    fn run(&mut self, job: &FileJob, span: Duration) -> io::Result<Sample> {
        let rt = ready(&mut self.rt)?;
        if job.kind == Kind::ManyFiles {
            return rt.block_on(drive_files(&job.files, job.depth, job.block, span, |p| {
                load(p, job.block, job.len)
            }));
        }
        rt.block_on(ops(job, span))
    }
}

// TCP: both ends of every connection on this runtime.

async fn pairs(n: usize) -> io::Result<Vec<(TcpStream, TcpStream)>> {
    let listener = TcpListener::bind(loopback()).await?;
    let addr = listener.local_addr()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(addr).await?;
        let (s, _) = listener.accept().await?;
        c.set_nodelay(true)?;
        s.set_nodelay(true)?;
        out.push((c, s));
    }
    Ok(out)
}

async fn round_trip(mut c: TcpStream, mut b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let r = async {
        c.write_all(&b).await?;
        c.read_exact(&mut b).await.map(drop)
    }
    .await;
    (r, c, b)
}

async fn echo(mut s: TcpStream, mut b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let r = async {
        s.read_exact(&mut b).await?;
        s.write_all(&b).await
    }
    .await;
    (r, s, b)
}

async fn send(mut c: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let r = c.write_all(&b).await;
    (r, c, b)
}

async fn recv(mut s: TcpStream, mut b: Vec<u8>) -> (io::Result<usize>, TcpStream, Vec<u8>) {
    let r = s.read(&mut b).await;
    (r, s, b)
}

tcp_contender!(Tokio, "tokio", spawn);
