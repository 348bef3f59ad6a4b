//! The UCX backend through every mfio layer and driver: listeners by
//! socket address, the blocking and `std::io` layers, the tokio and futures
//! adapters, tokio (both flavours), smol, and one `Composite` with the
//! io_uring runtime.
#![cfg(feature = "ucx")]

mod util;

use std::future::Future as _;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use mfio_backends::{Composite, OpenOptions, Runtime};
use mfio_core::{
    AsyncIo, IoBackend, IoBackendExt, IoCursor, IoRead, IoReadStream, IoWrite, IoWriteStream, NoPos, SyncIoRead,
    SyncIoWrite,
};
use mfio_integration::{Smol, Tokio};
use mfio_net::ucx::{Endpoint, Listener, Tag, TagMatch, Worker};
use util::{context, pattern, within, Transport};

const LIMIT: Duration = Duration::from_secs(120);

per_transport!(
    listener_accepts_and_streams,
    blocking_and_std_io_layers,
    futures_and_tokio_adapters
);

/// A server worker with a listener and a client endpoint to it, plus the
/// server's accepted endpoint.
struct Connected {
    server: Worker,
    client: Worker,
    to_server: Endpoint,
    to_client: Endpoint,
    _listener: Listener,
    both: Composite,
}

fn connect(t: Transport) -> Connected {
    let ctx = context(t, true);
    let server = ctx.worker().expect("server");
    let client = ctx.worker().expect("client");
    let listener = server.listen(SocketAddr::from(([127, 0, 0, 1], 0))).expect("listen");
    let addr = listener.local_addr();
    assert_ne!(addr.port(), 0, "UCX chose a port");
    let both = Composite::new(vec![Box::new(server.clone()), Box::new(client.clone())]).expect("composite");
    let (to_server, to_client) = both.block_on(async { futures::join!(client.connect_addr(addr), listener.accept()) });
    let (to_server, to_client) = (to_server.expect("connect"), to_client.expect("accept"));
    assert!(to_client.peer_addr().is_some_and(|a| a.ip() == addr.ip()));
    Connected {
        server,
        client,
        to_server,
        to_client,
        _listener: listener,
        both,
    }
}

fn listener_accepts_and_streams(t: Transport) {
    within(LIMIT, move || {
        let c = connect(t);
        c.both.block_on(async {
            let msg = pattern(4, 0, 100_000);
            let send = c.to_server.write_all(msg.clone());
            let recv = c.to_client.read_exact(Vec::with_capacity(msg.len()));
            let (sent, got) = futures::join!(send, recv);
            sent.0.expect("client sends");
            got.0.expect("server receives");
            assert!(got.1 == msg);
            let (r, _) = c.to_client.write_all(b"reply".to_vec()).await.into_parts();
            r.expect("server replies");
            let (r, buf) = c.to_server.read_exact(Vec::with_capacity(5)).await.into_parts();
            r.expect("client reads");
            assert_eq!(&buf[..], b"reply");
        });
        // A closed client: the server reads end of stream.
        let Connected {
            to_server,
            to_client,
            both,
            ..
        } = c;
        both.block_on(async {
            let closing = to_server.close();
            let (closed, n) = futures::join!(closing, to_client.read(Vec::with_capacity(4)));
            closed.expect("close");
            assert_eq!(n.0.expect("end of stream"), 0);
        });
    });
}

fn blocking_and_std_io_layers(t: Transport) {
    within(LIMIT, move || {
        let c = connect(t);
        // Blocking calls drive the endpoint's own worker; the peer worker is
        // driven by a thread of its own meanwhile.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = c.server.clone();
        let stop2 = stop.clone();
        let driver = std::thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                mfio_core::IoBackend::drive(&server);
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        let n = c
            .to_server
            .blocking_write_at(NoPos, b"blocking hello")
            .expect("blocking write");
        assert_eq!(n, 14);
        let mut got = Vec::new();
        while got.len() < 14 {
            let mut buf = [0u8; 64];
            // Reads on the server's endpoint drive the server worker too.
            let n = c.to_client.blocking_read_at(NoPos, &mut buf).expect("blocking read");
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..], b"blocking hello");
        let mut cursor = IoCursor::new(&c.to_server, NoPos);
        cursor.write_all(b"through std::io").expect("std write");
        cursor.flush().expect("std flush");
        let mut reader = IoCursor::new(&c.to_client, NoPos);
        let mut buf = [0u8; 15];
        reader.read_exact(&mut buf).expect("std read");
        assert_eq!(&buf, b"through std::io");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        driver.join().expect("driver thread");
        drop(c.client);
    });
}

fn futures_and_tokio_adapters(t: Transport) {
    within(LIMIT, move || {
        let c = connect(t);
        // futures-io
        c.both.block_on(async {
            let mut w = AsyncIo::new(&c.to_server, NoPos);
            let mut r = AsyncIo::new(&c.to_client, NoPos);
            w.write_all(b"futures-io bytes").await.expect("write");
            w.flush().await.expect("flush");
            let mut buf = [0u8; 16];
            r.read_exact(&mut buf).await.expect("read");
            assert_eq!(&buf, b"futures-io bytes");
        });
        // tokio's traits, driven by a current-thread tokio runtime.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        rt.block_on(Tokio::run(&c.both, async {
            let mut w = AsyncIo::new(&c.to_client, NoPos);
            let mut r = AsyncIo::new(&c.to_server, NoPos);
            tokio::io::AsyncWriteExt::write_all(&mut w, b"tokio bytes")
                .await
                .expect("write");
            let mut buf = [0u8; 11];
            tokio::io::AsyncReadExt::read_exact(&mut r, &mut buf)
                .await
                .expect("read");
            assert_eq!(&buf, b"tokio bytes");
            // shutdown closes the endpoint: the peer reads end of stream.
            tokio::io::AsyncWriteExt::shutdown(&mut w).await.expect("shutdown");
            let mut rest = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut r, &mut rest)
                .await
                .expect("read to end");
            assert!(rest.is_empty());
        }));
    });
}

/// One pair driven by each host runtime in turn.
#[test]
fn tokio_multi_thread_and_smol_drive_the_workers() {
    within(LIMIT, || {
        let p = util::pair(Transport::Sm);
        let body = |round: u64| {
            let p = &p;
            async move {
                let msg = pattern(round, 0, 300_000);
                let send = p.ab().write_all(msg.clone());
                let recv = p.ba().read_exact(Vec::with_capacity(msg.len()));
                let (sent, got) = futures::join!(send, recv);
                sent.0.expect("send");
                got.0.expect("recv");
                assert!(got.1 == msg);
            }
        };
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio");
        multi.block_on(Tokio::run(&p.both, body(1)));
        smol::block_on(Smol::run(&p.both, body(2)));
    });
}

/// A file read by io_uring and a UCX transfer of its bytes, under one
/// `block_on` on one descriptor.
#[test]
fn one_composite_drives_io_uring_and_ucx() {
    within(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let data = pattern(8, 0, 1 << 20);
        std::fs::write(&path, &data).expect("write file");
        let runtime = Runtime::new().expect("runtime");
        let ctx = context(Transport::Sm, false);
        let a = ctx.worker().expect("a");
        let b = ctx.worker().expect("b");
        let ab = a.connect(&b.address()).expect("a->b");
        let ba = b.connect(&a.address()).expect("b->a");
        let all = Composite::new(vec![
            Box::new(runtime.clone()),
            Box::new(a.clone()),
            Box::new(b.clone()),
        ])
        .expect("composite");
        all.block_on(async {
            let file = runtime.open(&path, OpenOptions::new().read(true)).await.expect("open");
            let (r, buf) = file.read_exact_at(0, Vec::with_capacity(data.len())).await.into_parts();
            r.expect("file read");
            let send = ab.write_all(buf);
            let recv = ba.read_exact(Vec::with_capacity(data.len()));
            let (sent, got) = futures::join!(send, recv);
            sent.0.expect("send");
            got.0.expect("recv");
            assert!(got.1 == data);
        });
        drop((ab, ba));
    });
}

/// In a `Composite`, a worker with a receive pending and an hour's spin
/// does not hold up another member: the composite steps every member
/// without a spin for the longest budget instead of letting one member
/// spin through it. File reads by the runtime in the same composite finish
/// at once (with the worker's own spinning step, the composite's first
/// step would spin for the hour), so does a task woken from another
/// thread; then the receive gets its bytes.
#[test]
fn a_spinning_member_does_not_hold_up_the_others_of_a_composite() {
    within(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        std::fs::write(&path, b"read beside a spinning worker").expect("write file");
        let runtime = Runtime::new().expect("runtime");
        let ctx = context(Transport::Sm, false);
        let a = Worker::builder(&ctx)
            .spin(Duration::from_secs(3600))
            .build()
            .expect("worker a");
        let b = ctx.worker().expect("worker b");
        let ba = b.connect(&a.address()).expect("connect b->a");
        let both = Composite::new(vec![Box::new(runtime.clone()), Box::new(a.clone())]).expect("composite");
        let mut recv = std::pin::pin!(a.tag_recv(TagMatch::exact(9), Vec::with_capacity(4)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(recv.as_mut().poll(&mut cx).is_pending(), "nothing was sent yet");
        assert_eq!(
            both.spin_budget(),
            Duration::from_secs(3600),
            "the worker's budget, with a receive pending"
        );
        let file = both
            .block_on(runtime.open(&path, OpenOptions::new().read(true)))
            .expect("open");
        for _ in 0..3 {
            let (res, got) = both.block_on(file.read_at(0, Vec::with_capacity(4))).into_parts();
            assert_eq!((res.expect("read"), got.as_slice()), (4, &b"read"[..]));
        }
        // A task woken from another thread (no member signals) runs when
        // it is woken, not when the composite's round of steps ends.
        util::wait_for_a_wake_from_another_thread(&both);
        let (sent, _) = b.block_on(ba.write_at(Tag(9), b"pong".to_vec())).into_parts();
        sent.expect("send");
        let (info, got) = both.block_on(recv).into_parts();
        assert_eq!(info.expect("receive").len, 4);
        assert_eq!(got, b"pong");
        assert_eq!(both.spin_budget(), Duration::ZERO, "nothing pending");
        let all = Composite::new(vec![Box::new(a.clone()), Box::new(b.clone())]).expect("composite");
        all.block_on(ba.close()).expect("close");
    });
}
