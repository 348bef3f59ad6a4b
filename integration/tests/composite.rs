//! Several backends behind one descriptor: one `block_on`, or one tokio
//! `AsyncFd`, drives a file read on io_uring, a socket echo on poll and a
//! delayed mem read at once.

use std::io::{Read, Write};
use std::time::Duration;

use mfio_backends::{BackendKind, Composite, OpenOptions, Runtime, TcpStream};
use mfio_core::mem::MemBackend;
use mfio_core::{IoBackendExt, IoRead, IoReadStream, IoWriteStream, Result};
use mfio_integration::Tokio;

struct Setup {
    composite: Composite,
    uring: Runtime,
    poll: Runtime,
    mem: MemBackend,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn setup() -> Option<Setup> {
    let uring = match Runtime::builder().backend(BackendKind::Uring).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skip: io_uring unavailable ({e})");
            return None;
        }
    };
    let poll = Runtime::builder().backend(BackendKind::Poll).build().expect("poll");
    let mem = MemBackend::builder()
        .delay(Duration::from_millis(50))
        .build()
        .expect("mem");
    let composite = Composite::new(vec![
        Box::new(uring.clone()),
        Box::new(poll.clone()),
        Box::new(mem.clone()),
    ])
    .expect("composite");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("on-uring");
    std::fs::write(&path, b"read through io_uring").expect("write");
    Some(Setup {
        composite,
        uring,
        poll,
        mem,
        _dir: dir,
        path,
    })
}

/// The three operations, concurrently; driven by whoever polls the result.
async fn three_backends(s: &Setup) -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, _) = listener.accept()?;
        let mut buf = Vec::new();
        c.read_to_end(&mut buf)?;
        c.write_all(&buf)
    });
    let file_read = async {
        let f = s.uring.open(&s.path, OpenOptions::new().read(true)).await?;
        let (res, buf) = f.read_to_end_at(0, Vec::new()).await.into_parts();
        res?;
        assert_eq!(buf, b"read through io_uring");
        Ok::<(), mfio_core::Error>(())
    };
    let socket_echo = async {
        let c = TcpStream::connect(&s.poll, addr).await?;
        c.write_all(b"echo over poll".to_vec()).await.0?;
        c.shutdown(std::net::Shutdown::Write).await?;
        let (res, back) = c.read_to_end(Vec::new()).await.into_parts();
        res?;
        assert_eq!(back, b"echo over poll");
        Ok(())
    };
    let mem_file = s.mem.file(b"delayed mem read".to_vec());
    let mem_read = async {
        let (res, buf) = mem_file.read_at(8, Vec::with_capacity(8)).await.into_parts();
        assert_eq!((res?, buf.as_slice()), (8, &b"mem read"[..]));
        Ok(())
    };
    let (a, b, c) = futures::join!(file_read, socket_echo, mem_read);
    echo.join().expect("echo thread")?;
    a.and(b).and(c)
}

#[test]
fn one_block_on_drives_uring_poll_and_mem() {
    let Some(s) = setup() else { return };
    s.composite.block_on(three_backends(&s)).expect("all three complete");
}

#[test]
fn one_tokio_asyncfd_drives_uring_poll_and_mem() {
    let Some(s) = setup() else { return };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(Tokio::run(&s.composite, three_backends(&s)))
        .expect("all three complete");
}

#[test]
fn submission_from_another_thread_wakes_the_composite() {
    let Some(s) = setup() else { return };
    let mem = s.mem.clone();
    let (tx, rx) = futures::channel::oneshot::channel();
    let submitter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        // Submitted from here while the composite's driver sleeps; the
        // read completes only if the composite wakes and drives `mem`.
        let f = mem.file(b"late".to_vec());
        let mut packet: mfio_core::Packet<mfio_core::Read, Vec<u8>> = mfio_core::Packet::new(Vec::with_capacity(4));
        let view = packet.take_view().expect("view");
        mfio_core::PacketIo::try_send_io(&f, 0, view).expect("queued");
        let _ = tx.send((f, packet));
    });
    let out = s.composite.block_on(async move {
        let (_f, mut packet) = rx.await.expect("submitter");
        std::future::poll_fn(|cx| packet.poll_complete(cx)).await;
        packet.try_take().expect("complete")
    });
    submitter.join().expect("submitter");
    let (outcome, buf) = out;
    assert_eq!((outcome.transferred(), buf.as_slice()), (4, &b"late"[..]));
}
