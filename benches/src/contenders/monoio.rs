//! monoio with its io_uring driver: `read_at`/`write_at` with owned buffers
//! (aligned slices of a `Vec`, so `O_DIRECT` works too).

use std::io;
use std::path::Path;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use super::{read_chunks, Built};
use crate::files::{FileJob, Kind};
use crate::measure::{drive_ops, Sample};
use crate::tcp::loopback;

type Rt = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// monoio's io_uring runtime on this thread.
pub struct Monoio {
    rt: Built<Rt>,
}

impl Monoio {
    /// Builds the runtime.
    pub fn new() -> Self {
        let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .map_err(|e| e.to_string());
        Self { rt }
    }
}

async fn ops(job: &FileJob, span: Duration) -> io::Result<Sample> {
    let file = monoio::fs::File::from_std(job.open_std()?)?;
    let file = &file;
    let bufs: Vec<_> = (0..job.depth)
        .map(|_| {
            let (v, off) = job.aligned_vec();
            v.slice_mut(off..off + job.block)
        })
        .collect();
    let mut pos = job.positions();
    let sync = || file.sync_data();
    if job.kind == Kind::Write {
        let op = |p, b| file.write_at(b, p);
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    } else {
        let op = |p, b| file.read_at(b, p);
        drive_ops(&mut pos, job.pace(span), bufs, op, sync).await
    }
}

async fn load(path: &Path, chunk: usize, len: u64) -> io::Result<u64> {
    let file = monoio::fs::File::open(path).await?;
    let read = read_chunks(len, chunk, |at, b| file.read_exact_at(b, at)).await?;
    file.close().await?;
    Ok(read)
}

file_contender!(Monoio, "monoio");

// TCP: both ends of every connection on this runtime.

async fn pairs(n: usize) -> io::Result<Vec<(TcpStream, TcpStream)>> {
    let listener = TcpListener::bind(loopback())?;
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
    let (r, b) = c.write_all(b).await;
    if let Err(e) = r {
        return (Err(e), c, b);
    }
    let (r, b) = c.read_exact(b).await;
    (r.map(drop), c, b)
}

async fn echo(mut s: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let (r, b) = s.read_exact(b).await;
    if let Err(e) = r {
        return (Err(e), s, b);
    }
    let (r, b) = s.write_all(b).await;
    (r.map(drop), s, b)
}

async fn send(mut c: TcpStream, b: Vec<u8>) -> (io::Result<()>, TcpStream, Vec<u8>) {
    let (r, b) = c.write_all(b).await;
    (r.map(drop), c, b)
}

async fn recv(mut s: TcpStream, b: Vec<u8>) -> (io::Result<usize>, TcpStream, Vec<u8>) {
    let (r, b) = s.read(b).await;
    (r, s, b)
}

tcp_contender!(Monoio, "monoio");
