//! Stream behaviour of the mem backend through the async, sync, `std::io`,
//! futures-io and tokio layers.

mod util;

use std::io::{self, ErrorKind};
use std::time::Duration;

use mfio_core::mem::{MemBackend, MemStream};
use mfio_core::{
    AsyncIo, IoBackendExt, IoCursor, IoReadStream, IoWriteStream, NoPos, SyncIoFlush, SyncIoRead, SyncIoWrite,
};

const LIMIT: Duration = Duration::from_secs(60);

/// One way of reading from and writing to a stream end.
trait Layer: Send + std::marker::Sync + 'static {
    fn read(&self, s: &MemStream, max: usize) -> io::Result<Vec<u8>>;
    fn read_to_end(&self, s: &MemStream) -> io::Result<Vec<u8>>;
    fn write_all(&self, s: &MemStream, data: &[u8]) -> io::Result<()>;
}

struct Async;
impl Layer for Async {
    fn read(&self, s: &MemStream, max: usize) -> io::Result<Vec<u8>> {
        let (r, b) = s.block_on(s.read(Vec::with_capacity(max))).into_parts();
        r?;
        Ok(b)
    }
    fn read_to_end(&self, s: &MemStream) -> io::Result<Vec<u8>> {
        let (r, b) = s.block_on(s.read_to_end(Vec::new())).into_parts();
        r?;
        Ok(b)
    }
    fn write_all(&self, s: &MemStream, data: &[u8]) -> io::Result<()> {
        Ok(s.block_on(s.write_all(data.to_vec())).0?)
    }
}

struct Sync;
impl Layer for Sync {
    fn read(&self, s: &MemStream, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; max];
        let n = s.blocking_read_at(NoPos, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
    fn read_to_end(&self, s: &MemStream) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        s.blocking_read_to_end_at(NoPos, &mut buf)?;
        Ok(buf)
    }
    fn write_all(&self, s: &MemStream, data: &[u8]) -> io::Result<()> {
        s.blocking_write_all_at(NoPos, data)?;
        Ok(s.blocking_flush()?)
    }
}

struct StdIo;
impl Layer for StdIo {
    fn read(&self, s: &MemStream, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; max];
        let n = io::Read::read(&mut IoCursor::new(s, NoPos), &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
    fn read_to_end(&self, s: &MemStream) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io::Read::read_to_end(&mut IoCursor::new(s, NoPos), &mut buf)?;
        Ok(buf)
    }
    fn write_all(&self, s: &MemStream, data: &[u8]) -> io::Result<()> {
        let mut c = IoCursor::new(s, NoPos);
        io::Write::write_all(&mut c, data)?;
        io::Write::flush(&mut c)
    }
}

struct FuturesIo;
impl Layer for FuturesIo {
    fn read(&self, s: &MemStream, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; max];
        let mut a = AsyncIo::new(s, NoPos);
        let n = s.block_on(futures::AsyncReadExt::read(&mut a, &mut buf))?;
        buf.truncate(n);
        Ok(buf)
    }
    fn read_to_end(&self, s: &MemStream) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut a = AsyncIo::new(s, NoPos);
        s.block_on(futures::AsyncReadExt::read_to_end(&mut a, &mut buf))?;
        Ok(buf)
    }
    fn write_all(&self, s: &MemStream, data: &[u8]) -> io::Result<()> {
        let mut a = AsyncIo::new(s, NoPos);
        s.block_on(async {
            futures::AsyncWriteExt::write_all(&mut a, data).await?;
            futures::AsyncWriteExt::flush(&mut a).await
        })
    }
}

struct TokioIo;
impl Layer for TokioIo {
    fn read(&self, s: &MemStream, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; max];
        let mut a = AsyncIo::new(s, NoPos);
        let n = s.block_on(tokio::io::AsyncReadExt::read(&mut a, &mut buf))?;
        buf.truncate(n);
        Ok(buf)
    }
    fn read_to_end(&self, s: &MemStream) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut a = AsyncIo::new(s, NoPos);
        s.block_on(tokio::io::AsyncReadExt::read_to_end(&mut a, &mut buf))?;
        Ok(buf)
    }
    fn write_all(&self, s: &MemStream, data: &[u8]) -> io::Result<()> {
        let mut a = AsyncIo::new(s, NoPos);
        s.block_on(async {
            tokio::io::AsyncWriteExt::write_all(&mut a, data).await?;
            tokio::io::AsyncWriteExt::flush(&mut a).await
        })
    }
}

fn backend(small: bool) -> MemBackend {
    let mut b = MemBackend::builder();
    if small {
        b.pipe_capacity(1000).split_at(333).out_of_order(11);
    }
    b.build().expect("mem backend")
}

/// A 64-byte read with 5 bytes available returns those 5 bytes.
fn read_returns_what_is_available<L: Layer>(l: L, small: bool) -> io::Result<()> {
    let be = backend(small);
    let (a, b) = be.stream_pair();
    l.write_all(&a, b"hello")?;
    assert_eq!(l.read(&b, 64)?, b"hello");
    Ok(())
}

/// The peer reads every byte and then EOF after the writer is dropped.
fn drop_after_send_delivers_all_then_eof<L: Layer>(l: L, small: bool) -> io::Result<()> {
    let be = backend(small);
    let (a, b) = be.stream_pair();
    let data = util::pattern(300_000, 5);
    let expect = data.clone();
    let writer = std::thread::spawn(move || {
        let r = l.write_all(&a, &data);
        drop(a);
        (r, l)
    });
    let got = Async.read_to_end(&b)?;
    let (r, l) = writer.join().expect("writer thread");
    r?;
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "stream bytes differ");
    assert_eq!(l.read(&b, 10)?, b"", "EOF stays EOF");
    Ok(())
}

/// Echo with half-close on one handle: the client writes, shuts down its
/// write side, and reads the echo to EOF on the same handle.
fn echo_with_half_close<L: Layer>(l: L, small: bool) -> io::Result<()> {
    let be = backend(small);
    let (client, server) = be.stream_pair();
    let server = std::thread::spawn(move || -> io::Result<()> {
        let got = Sync.read_to_end(&server)?;
        Sync.write_all(&server, &got)
    });
    let data = util::pattern(50_000, 6);
    l.write_all(&client, &data)?;
    client.shutdown_write();
    let echoed = l.read_to_end(&client)?;
    server.join().expect("server thread")?;
    assert!(echoed == data, "echo differs");
    let err = l.write_all(&client, b"late").expect_err("write side is shut down");
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    Ok(())
}

/// Writing to a stream whose peer is gone is `BrokenPipe`, not a hang.
fn write_to_closed_peer_is_broken_pipe<L: Layer>(l: L, small: bool) -> io::Result<()> {
    let be = backend(small);
    let (a, b) = be.stream_pair();
    drop(b);
    let err = l.write_all(&a, &[1; 5000]).expect_err("peer closed");
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    assert_eq!(l.read(&a, 8)?, b"", "the peer's write side is closed too");
    Ok(())
}

macro_rules! per_layer {
    ($body:ident: $($name:ident => $l:expr),*) => {
        mod $body {
            use super::*;
            $(
                #[test]
                fn $name() -> io::Result<()> {
                    util::within(LIMIT, || {
                        crate::$body($l, false)?;
                        crate::$body($l, true)
                    })
                }
            )*
        }
    };
}

macro_rules! all_layers {
    ($($body:ident),*) => {
        $( per_layer!($body: async_layer => Async, sync_layer => Sync, std_io => StdIo, futures_io => FuturesIo, tokio_io => TokioIo); )*
    };
}

all_layers!(
    read_returns_what_is_available,
    drop_after_send_delivers_all_then_eof,
    echo_with_half_close,
    write_to_closed_peer_is_broken_pipe
);

#[test]
fn two_threads_block_on_one_backend() {
    // Both ends are driven by block_on from different threads at once; a
    // lost wake-up or a stolen notification would hang here.
    util::within(LIMIT, || {
        let be = backend(true);
        let (a, b) = be.stream_pair();
        let data = util::pattern(1 << 20, 8);
        let expect = data.clone();
        let t = std::thread::spawn(move || Sync.write_all(&a, &data));
        let got = Sync.read_to_end(&b).expect("read");
        t.join().expect("writer").expect("write");
        assert!(got == expect);
    });
}

/// Issue 9, defect 3: the adapters' `close` (futures-io) and `shutdown`
/// (tokio) only flushed; the peer never read end of stream. Now they send a
/// half-close ([`mfio_core::CloseWrite`]) after the flush, and the other
/// direction keeps working.
#[test]
fn adapter_close_and_shutdown_half_close() -> io::Result<()> {
    for style in ["futures", "tokio"] {
        let backend = MemBackend::new()?;
        let (a, b) = backend.stream_pair();
        let mut io = AsyncIo::new(a, NoPos);
        backend.block_on(async {
            if style == "futures" {
                use futures::io::AsyncWriteExt;
                io.write_all(b"request").await?;
                io.close().await
            } else {
                use tokio::io::AsyncWriteExt;
                io.write_all(b"request").await?;
                io.shutdown().await
            }
        })?;
        // The peer sees the request, then end of stream (not a hang).
        let (res, got) = b.block_on(b.read_to_end(Vec::new())).into_parts();
        res?;
        assert_eq!(got, b"request", "{style}");
        // Reading the other way still works after the half-close.
        b.blocking_write_all_at(NoPos, b"reply")?;
        drop(b);
        let mut answer = Vec::new();
        backend.block_on(async {
            use futures::io::AsyncReadExt;
            io.read_to_end(&mut answer).await
        })?;
        assert_eq!(answer, b"reply", "{style}");
    }
    Ok(())
}
