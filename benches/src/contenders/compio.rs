//! compio: its io_uring driver and runtime, `read_at`/`write_at` with owned
//! buffers (aligned slices of a `Vec`, so `O_DIRECT` works too).

use std::io;
use std::path::Path;
use std::time::Duration;

use compio::buf::{BufResult, IoBuf};
use compio::io::{AsyncRead, AsyncReadAt, AsyncReadAtExt, AsyncReadExt, AsyncWriteAt, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};

use super::{read_chunks, Built};
use crate::files::{FileJob, Kind};
use crate::measure::{drive_ops, Sample};
use crate::tcp::loopback;

/// compio's runtime on this thread.
pub struct Compio {
    rt: Built<compio::runtime::Runtime>,
}

impl Compio {
    /// Builds the runtime.
    pub fn new() -> Self {
        Self {
            rt: compio::runtime::Runtime::new().map_err(|e| e.to_string()),
        }
    }
}

async fn ops(job: &FileJob, span: Duration) -> io::Result<Sample> {
    let file = compio::fs::OpenOptions::new()
        .read(true)
        .write(job.kind == Kind::Write)
        .custom_flags(job.custom_flags())
        .open(&job.path)
        .await?;
    let file = &file;
    let bufs: Vec<_> = (0..job.depth)
        .map(|_| {
            let (v, off) = job.aligned_vec();
            v.slice(off..off + job.block)
        })
        .collect();
    let mut pos = job.positions();
    let sync = || file.sync_data();
    if job.kind == Kind::Write {
        let op = |p, b| async move {
            let mut f = file;
            let r = f.write_at(b, p).await;
            (r.0, r.1)
        };
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    } else {
        let op = |p, b| async move {
            let r = file.read_at(b, p).await;
            (r.0, r.1)
        };
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    }
}

async fn load(path: &Path, chunk: usize, len: u64) -> io::Result<u64> {
    let file = compio::fs::File::open(path).await?;
    let read = read_chunks(len, chunk, |at, b| {
        let file = &file;
        async move {
            let BufResult(r, b) = file.read_exact_at(b, at).await;
            (r, b)
        }
    })
    .await?;
    file.close().await?;
    Ok(read)
}

file_contender!(Compio, "compio");

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

async fn round_trip(mut c: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let BufResult(r, b) = c.write_all(b).await;
    if let Err(e) = r {
        return (Err(e), c, b);
    }
    let BufResult(r, b) = c.read_exact(b).await;
    (r, c, b)
}

async fn echo(mut s: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let BufResult(r, b) = s.read_exact(b).await;
    if let Err(e) = r {
        return (Err(e), s, b);
    }
    let BufResult(r, b) = s.write_all(b).await;
    (r, s, b)
}

async fn send(mut c: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let BufResult(r, b) = c.write_all(b).await;
    (r, c, b)
}

async fn recv(mut s: TcpStream, b: Vec<u8>) -> (io::Result<usize>, TcpStream, Vec<u8>) {
    let BufResult(r, b) = s.read(b).await;
    (r, s, b)
}

tcp_contender!(Compio, "compio");
