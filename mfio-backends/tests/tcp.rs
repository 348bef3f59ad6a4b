//! TCP (and Unix-domain) behaviour on every backend, against `std::net`
//! peers on other threads: connect, accept, send-then-drop, receive to EOF,
//! echo client with half-close, echo server, sequentially and concurrently;
//! short reads, resets, closed peers and cancelled reads.

#[macro_use]
mod util;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::Path;
use std::time::Duration;

use futures::future::try_join_all;
use mfio_backends::{Runtime, TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use mfio_core::{BufResult, IoBackend, IoReadStream, IoWriteStream, Result};
use util::{open_fds, pattern};

const CONCURRENT: usize = 8;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn std_listener() -> std::io::Result<(StdListener, SocketAddr)> {
    let l = StdListener::bind(loopback())?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

/// mfio client sends `data` and drops the stream; a std server must get every byte and EOF.
async fn send_then_drop(rt: &Runtime, addr: SocketAddr, data: Vec<u8>) -> Result<()> {
    let s = TcpStream::connect(rt, addr).await?;
    s.set_nodelay(true)?;
    assert!(s.nodelay()?);
    assert_eq!(s.peer_addr()?, addr);
    s.write_all(data).await.0?;
    drop(s);
    Ok(())
}

fn connect_send_drop(rt: &Runtime, _tmp: &Path) -> Result<()> {
    let (listener, addr) = std_listener()?;
    let data = pattern(3 << 20, 1);
    let expect = data.clone();
    let server = std::thread::spawn(move || -> std::io::Result<Vec<Vec<u8>>> {
        let mut got = Vec::new();
        for _ in 0..=CONCURRENT {
            let (mut s, _) = listener.accept()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            got.push(buf);
        }
        Ok(got)
    });
    util::run(rt, send_then_drop(rt, addr, data.clone()))?;
    let small = pattern(100_000, 2);
    util::run(
        rt,
        try_join_all((0..CONCURRENT).map(|_| send_then_drop(rt, addr, small.clone()))),
    )?;
    let got = server.join().expect("server thread")?;
    assert!(got[0] == expect, "the dropped stream lost bytes");
    assert!(got[1..].iter().all(|g| *g == small), "a concurrent stream lost bytes");
    Ok(())
}

/// A std stream connected with blocking calls, taken over by the runtime:
/// bytes flow both ways, exactly, and end of stream arrives.
fn taken_over_std_stream(rt: &Runtime, _tmp: &Path) -> Result<()> {
    let fds = open_fds();
    let (listener, addr) = std_listener()?;
    let peer = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        s.write_all(&pattern(200_000, 7))?;
        s.shutdown(Shutdown::Write)?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok(got)
    });
    let std_stream = StdStream::connect_timeout(&addr, Duration::from_secs(10))?;
    let s = TcpStream::from_std(rt, std_stream)?;
    assert_eq!(s.peer_addr()?, addr);
    let (got, rest) = util::run(rt, async {
        s.write_all(pattern(300_000, 8)).await.0?;
        let BufResult(res, got) = s.read_exact(Vec::with_capacity(200_000)).await;
        res?;
        let BufResult(res, rest) = s.read_to_end(Vec::new()).await;
        res?;
        Ok::<_, mfio_core::Error>((got, rest))
    })?;
    drop(s);
    assert!(got == pattern(200_000, 7), "the bytes the peer sent");
    assert!(rest.is_empty(), "end of stream after the peer's bytes");
    assert!(
        peer.join().expect("peer thread")? == pattern(300_000, 8),
        "the bytes sent to the peer"
    );
    assert_eq!(open_fds(), fds, "the stream's descriptor was closed");
    Ok(())
}

fn accept_and_receive_to_eof(rt: &Runtime, _tmp: &Path) -> Result<()> {
    let listener = TcpListener::bind(rt, loopback())?;
    let addr = listener.local_addr()?;
    let data = pattern(2 << 20, 3);
    let sent = data.clone();
    let clients = std::thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..=CONCURRENT {
            let mut s = StdStream::connect(addr)?;
            s.write_all(&sent)?;
        }
        Ok(())
    });
    util::run(rt, async {
        let (first, peer) = listener.accept().await?;
        assert_eq!(first.local_addr()?, addr);
        assert_eq!(peer, first.peer_addr()?);
        let (res, got) = first.read_to_end(Vec::new()).await.into_parts();
        res?;
        assert!(got == data, "received bytes differ");
        let mut accepted = Vec::new();
        for _ in 0..CONCURRENT {
            accepted.push(listener.accept().await?.0);
        }
        let all = try_join_all(accepted.iter().map(|s| async move {
            let (res, got) = s.read_to_end(Vec::new()).await.into_parts();
            res.map(|_| got)
        }))
        .await?;
        assert!(all.iter().all(|g| *g == data), "a concurrent stream differs");
        Ok::<(), mfio_core::Error>(())
    })?;
    clients.join().expect("client thread")?;
    Ok(())
}

async fn echo_client(rt: &Runtime, addr: SocketAddr, data: &[u8]) -> Result<()> {
    let s = TcpStream::connect(rt, addr).await?;
    s.write_all(data.to_vec()).await.0?;
    s.shutdown(Shutdown::Write).await?;
    let (res, echoed) = s.read_to_end(Vec::new()).await.into_parts();
    res?;
    assert!(echoed == data, "echo differs");
    Ok(())
}

fn echo_client_half_close(rt: &Runtime, _tmp: &Path) -> Result<()> {
    let (listener, addr) = std_listener()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let mut handles = Vec::new();
        for _ in 0..=CONCURRENT {
            let (mut s, _) = listener.accept()?;
            handles.push(std::thread::spawn(move || -> std::io::Result<()> {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf)?;
                s.write_all(&buf)
            }));
        }
        for h in handles {
            h.join().expect("echo thread")?;
        }
        Ok(())
    });
    let data = pattern(1 << 20, 4);
    util::run(rt, echo_client(rt, addr, &data))?;
    util::run(
        rt,
        try_join_all((0..CONCURRENT).map(|_| echo_client(rt, addr, &data[..50_000]))),
    )?;
    server.join().expect("server thread")?;
    Ok(())
}

async fn echo_one(stream: TcpStream) -> Result<()> {
    loop {
        let (res, buf) = stream.read(Vec::with_capacity(16 * 1024)).await.into_parts();
        if res? == 0 {
            return Ok(());
        }
        stream.write_all(buf).await.0?;
    }
}

fn echo_server(rt: &Runtime, _tmp: &Path) -> Result<()> {
    let listener = TcpListener::bind(rt, loopback())?;
    let addr = listener.local_addr()?;
    let clients = std::thread::spawn(move || -> std::io::Result<()> {
        let data = pattern(300_000, 5);
        let mut handles = Vec::new();
        for _ in 0..CONCURRENT {
            let data = data.clone();
            handles.push(std::thread::spawn(move || -> std::io::Result<()> {
                let mut s = StdStream::connect(addr)?;
                let mut r = s.try_clone()?;
                let reader = std::thread::spawn(move || {
                    let mut back = Vec::new();
                    r.read_to_end(&mut back).map(|_| back)
                });
                s.write_all(&data)?;
                s.shutdown(Shutdown::Write)?;
                let back = reader.join().expect("reader")?;
                assert!(back == data, "echo server changed the bytes");
                Ok(())
            }));
        }
        for h in handles {
            h.join().expect("client")?;
        }
        Ok(())
    });
    util::run(rt, async {
        let mut conns = Vec::new();
        for _ in 0..CONCURRENT {
            conns.push(listener.accept().await?.0);
        }
        try_join_all(conns.into_iter().map(echo_one)).await
    })?;
    clients.join().expect("clients")?;
    Ok(())
}

fn short_read_returns_what_is_there(rt: &Runtime, _tmp: &Path) -> Result<()> {
    let (listener, addr) = std_listener()?;
    let s = util::run(rt, TcpStream::connect(rt, addr))?;
    let (mut peer, _) = listener.accept()?;
    peer.write_all(b"12345")?;
    let (n, buf) = util::run(rt, s.read(Vec::with_capacity(64))).into_parts();
    assert_eq!((n?, buf.as_slice()), (5, &b"12345"[..]));
    Ok(())
}

/// A send goes out at once when the socket's buffer has room (partly, when
/// it has less room than the send), and waits, queued, while the buffer is
/// full: it completes only once the peer reads, and every byte arrives in
/// order.
fn a_send_into_a_full_buffer_waits_for_the_reader(rt: &Runtime, _tmp: &Path) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (listener, addr) = std_listener()?;
    let s = util::run(rt, TcpStream::connect(rt, addr))?;
    rustix::net::sockopt::set_socket_send_buffer_size(&s, 64 << 10)?;
    let (mut peer, _) = listener.accept()?;
    rustix::net::sockopt::set_socket_recv_buffer_size(&peer, 64 << 10)?;
    let data = pattern(8 << 20, 11);
    // Nobody reads yet: the first send fills the buffers and reports how much.
    let (first, _) = util::run(rt, s.write(data.clone())).into_parts();
    let mut first = first?;
    assert!(first > 0 && first < data.len(), "sent {first} of {} bytes", data.len());
    // Acknowledgements in flight can still free room: top the buffer up
    // until the kernel refuses, after they have settled.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(50));
        let flags = rustix::net::SendFlags::DONTWAIT;
        while let Ok(n) = rustix::net::send(&s, &data[first..first + 4096], flags) {
            first += n;
        }
    }
    let reading = Arc::new(AtomicBool::new(false));
    let reader = {
        let reading = reading.clone();
        std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            std::thread::sleep(Duration::from_millis(200));
            reading.store(true, Ordering::SeqCst);
            let mut got = Vec::new();
            peer.read_to_end(&mut got)?;
            Ok(got)
        })
    };
    // The buffer is full: this send can only complete after the reader starts.
    let (second, _) = util::run(rt, s.write(data[first..].to_vec())).into_parts();
    let second = second?;
    assert!(reading.load(Ordering::SeqCst), "a send completed into a full buffer");
    assert!(second > 0);
    util::run(rt, s.write_all(data[first + second..].to_vec())).0?;
    drop(s);
    let got = reader.join().expect("reader thread")?;
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes arrived changed or out of order");
    Ok(())
}

fn reset_and_closed_peers_are_errors(rt: &Runtime, _tmp: &Path) -> Result<()> {
    let (listener, addr) = std_listener()?;
    let s = util::run(rt, TcpStream::connect(rt, addr))?;
    let (peer, _) = listener.accept()?;
    // SO_LINGER 0: closing sends a reset instead of a FIN.
    rustix::net::sockopt::set_socket_linger(&peer, Some(Duration::ZERO))?;
    drop(peer);
    let res = util::run(rt, async {
        // Reads see the reset (or EOF first, then the reset on write).
        let (r, _) = s.read(Vec::with_capacity(16)).await.into_parts();
        match r {
            Err(e) => Err(e),
            Ok(_) => s.write_all(vec![0u8; 1 << 20]).await.0,
        }
    });
    let err = res.expect_err("the peer reset the connection");
    assert!(
        matches!(err.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "{err:?}"
    );
    let err = util::run(rt, TcpStream::connect(rt, addr_with_nobody_listening()?)).expect_err("nobody listens");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    Ok(())
}

fn addr_with_nobody_listening() -> std::io::Result<SocketAddr> {
    let l = StdListener::bind(loopback())?;
    let addr = l.local_addr()?;
    drop(l);
    Ok(addr)
}

fn dropped_reads_lose_no_bytes(rt: &Runtime, _tmp: &Path) -> Result<()> {
    let (listener, addr) = std_listener()?;
    let s = util::run(rt, TcpStream::connect(rt, addr))?;
    let (mut peer, _) = listener.accept()?;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // 1. A read waiting for data is dropped, then data arrives.
    {
        let mut read = Box::pin(s.read(Vec::with_capacity(8)));
        assert!(std::future::Future::poll(read.as_mut(), &mut cx).is_pending());
        rt.drive();
    }
    peer.write_all(b"abc")?;
    let (n, buf) = util::run(rt, s.read(Vec::with_capacity(8))).into_parts();
    assert_eq!(
        (n?, buf.as_slice()),
        (3, &b"abc"[..]),
        "bytes lost after a cancelled read"
    );
    // 2. A read completes but its future is dropped before anyone looks.
    peer.write_all(b"xyz")?;
    std::thread::sleep(Duration::from_millis(20));
    {
        let mut read = Box::pin(s.read(Vec::with_capacity(8)));
        let _ = std::future::Future::poll(read.as_mut(), &mut cx);
        for _ in 0..50 {
            rt.drive();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    peer.write_all(b"!")?;
    peer.shutdown(Shutdown::Write)?;
    let (res, rest) = util::run(rt, s.read_to_end(Vec::new())).into_parts();
    res?;
    assert_eq!(rest, b"xyz!", "bytes of a completed but dropped read were lost");
    Ok(())
}

fn cancelled_accepts_and_connects_leak_nothing(rt: &Runtime, _tmp: &Path) -> Result<()> {
    let listener = TcpListener::bind(rt, loopback())?;
    let addr = listener.local_addr()?;
    util::make_wake_descriptor(rt);
    let before = open_fds();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..50 {
        let mut accept = Box::pin(listener.accept());
        let _ = std::future::Future::poll(accept.as_mut(), &mut cx);
        rt.drive();
        let client = StdStream::connect(addr)?;
        rt.drive();
        drop(accept);
        drop(client);
        let mut connect = Box::pin(TcpStream::connect(rt, addr));
        let _ = std::future::Future::poll(connect.as_mut(), &mut cx);
        drop(connect);
    }
    // Connections the kernel queued are accepted and dropped here.
    for _ in 0..200 {
        rt.drive();
        if open_fds() == before {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(open_fds(), before, "a cancelled accept or connect leaked a descriptor");
    Ok(())
}

fn unix_stream_echo(rt: &Runtime, tmp: &Path) -> Result<()> {
    let path = tmp.join("sock");
    let listener = UnixListener::bind(rt, &path)?;
    assert_eq!(listener.local_addr()?.as_deref(), Some(path.as_path()));
    let data = pattern(500_000, 9);
    util::run(rt, async {
        let client = UnixStream::connect(rt, &path).await?;
        let (server, _) = listener.accept().await?;
        let send = async {
            client.write_all(data.clone()).await.0?;
            client.shutdown(Shutdown::Write).await
        };
        let (sent, got) = futures::join!(send, server.read_to_end(Vec::new()));
        sent?;
        let (res, got) = got.into_parts();
        res?;
        assert!(got == data, "unix stream bytes differ");
        Ok::<(), mfio_core::Error>(())
    })
}

/// `incoming()` yields connections; the blocking and `std::io` layers work
/// on a socket from a plain thread.
fn incoming_and_blocking_layers(rt: &Runtime, _tmp: &Path) -> Result<()> {
    use futures::StreamExt;
    let listener = TcpListener::bind(rt, loopback())?;
    let addr = listener.local_addr()?;
    let clients = std::thread::spawn(move || -> std::io::Result<Vec<Vec<u8>>> {
        (0..2)
            .map(|i| {
                let mut s = StdStream::connect(addr)?;
                s.write_all(format!("client {i}\n").as_bytes())?;
                let mut reply = Vec::new();
                s.read_to_end(&mut reply)?;
                Ok(reply)
            })
            .collect()
    });
    let mut incoming = Box::pin(listener.incoming());
    for i in 0..2 {
        let (stream, peer) = util::run(rt, incoming.next()).expect("a connection")?;
        assert_eq!(peer, stream.peer_addr()?);
        // std::io on the accepted stream, from this (plain) thread.
        let mut cursor = mfio_core::IoCursor::new(stream.clone(), mfio_core::NoPos);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut cursor), &mut line)?;
        assert_eq!(line, format!("client {i}\n"));
        mfio_core::SyncIoWrite::blocking_write_all_at(&stream, mfio_core::NoPos, b"bye")?;
        drop(cursor);
        drop(stream);
    }
    let replies = clients.join().expect("clients")?;
    assert_eq!(replies, vec![b"bye".to_vec(), b"bye".to_vec()]);
    Ok(())
}

fn udp_datagrams(rt: &Runtime, _tmp: &Path) -> Result<()> {
    let sock = UdpSocket::bind(rt, loopback())?;
    let addr = sock.local_addr()?;
    let peer = std::net::UdpSocket::bind(loopback())?;
    peer.set_read_timeout(Some(Duration::from_secs(10)))?;
    let peer_addr = peer.local_addr()?;
    // send_to: one datagram, exactly these bytes.
    let (n, _) = util::run(rt, sock.send_to(b"ping".to_vec(), peer_addr)).into_parts();
    assert_eq!(n?, 4);
    let mut buf = [0u8; 64];
    let (len, from) = peer.recv_from(&mut buf)?;
    assert_eq!((&buf[..len], from), (&b"ping"[..], addr));
    // recv_from: bytes and the sender's address.
    peer.send_to(b"pong!", addr)?;
    let (res, got) = util::run(rt, sock.recv_from(Vec::with_capacity(64))).into_parts();
    assert_eq!((res?, got.as_slice()), ((5, peer_addr), &b"pong!"[..]));
    // A datagram larger than the buffer is truncated to it.
    peer.send_to(&[7u8; 100], addr)?;
    let (res, got) = util::run(rt, sock.recv_from(Vec::with_capacity(10))).into_parts();
    assert_eq!((res?.0, got.as_slice()), (10, &[7u8; 10][..]));
    // A dropped receive does not eat the next datagram.
    {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut pending = Box::pin(sock.recv_from(Vec::with_capacity(16)));
        assert!(std::future::Future::poll(pending.as_mut(), &mut cx).is_pending());
        rt.drive();
    }
    rt.drive();
    peer.send_to(b"after", addr)?;
    let (res, got) = util::run(rt, sock.recv_from(Vec::with_capacity(16))).into_parts();
    assert_eq!((res?.0, got.as_slice()), (5, &b"after"[..]));
    // Connected: the stream layers send to and receive from the peer.
    sock.connect(peer_addr)?;
    assert_eq!(sock.peer_addr()?, peer_addr);
    util::run(rt, sock.write(b"via write".to_vec())).0?;
    let (len, _) = peer.recv_from(&mut buf)?;
    assert_eq!(&buf[..len], b"via write");
    peer.send_to(b"via read", addr)?;
    let (n, got) = util::run(rt, sock.read(Vec::with_capacity(32))).into_parts();
    assert_eq!((n?, got.as_slice()), (8, &b"via read"[..]));
    Ok(())
}

/// An io_uring runtime that busy-polls for `budget`, a connection on it and
/// its peer's end; `None` (said on stderr) where io_uring is not available.
fn busy_polled_connection(budget: Duration) -> Result<Option<(Runtime, TcpStream, std::net::TcpStream)>> {
    use mfio_core::IoBackendExt;
    let rt = match Runtime::builder()
        .backend(mfio_backends::BackendKind::Uring)
        .busy_poll(budget)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skip: no io_uring here: {e}");
            return Ok(None);
        }
    };
    let (listener, addr) = std_listener()?;
    let s = rt.block_on(TcpStream::connect(&rt, addr))?;
    let (peer, _) = listener.accept()?;
    Ok(Some((rt, s, peer)))
}

/// With a busy-poll budget, a receive that waits long for its bytes gets
/// them exactly, and the wait spins only for the budget before it sleeps:
/// the thread uses a small share of the wait's CPU time.
#[test]
fn busy_polling_spins_only_for_its_budget() {
    let body = || -> Result<()> {
        use mfio_core::IoBackendExt;
        let Some((rt, s, mut peer)) = busy_polled_connection(Duration::from_micros(200))? else {
            return Ok(());
        };
        let late = std::thread::spawn(move || -> std::io::Result<()> {
            std::thread::sleep(Duration::from_millis(500));
            peer.write_all(b"late bytes")
        });
        let cpu_before = util::thread_cpu_time();
        let (n, got) = rt.block_on(s.read_exact(Vec::with_capacity(10))).into_parts();
        let cpu = util::thread_cpu_time() - cpu_before;
        late.join().expect("peer thread")?;
        n?;
        assert_eq!(got, b"late bytes");
        assert!(cpu < Duration::from_millis(100), "a 500 ms wait used {cpu:?} of CPU");
        Ok(())
    };
    util::serial_within("busy-polled receive", Duration::from_secs(60), body).expect("busy-polled receive");
}

/// A ring with an hour's busy-poll budget and a receive pending (polled
/// once, so it is in flight); `meanwhile` runs, then the peer sends
/// `ping` and the receive must get it.
fn with_a_receive_pending_under_an_hours_busy_poll(meanwhile: impl FnOnce(&Runtime)) -> Result<()> {
    with_a_receive_pending_under_a_busy_poll(Duration::from_secs(3600), meanwhile)
}

/// As [`with_a_receive_pending_under_an_hours_busy_poll`], with a budget of
/// `budget`.
fn with_a_receive_pending_under_a_busy_poll(budget: Duration, meanwhile: impl FnOnce(&Runtime)) -> Result<()> {
    use mfio_core::IoBackendExt;
    let Some((rt, s, mut peer)) = busy_polled_connection(budget)? else {
        return Ok(());
    };
    let mut read = std::pin::pin!(s.read_exact(Vec::with_capacity(4)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        std::future::Future::poll(read.as_mut(), &mut cx).is_pending(),
        "nothing was sent yet"
    );
    meanwhile(&rt);
    peer.write_all(b"ping")?;
    let (n, got) = rt.block_on(read).into_parts();
    n?;
    assert_eq!(got, b"ping");
    Ok(())
}

/// A `block_on` on `rt` of a completion another thread completes after
/// 50 ms returns its value.
fn wait_for_a_wake_from_another_thread(rt: &Runtime) {
    use mfio_core::IoBackendExt;
    let (done, woken) = mfio_core::completion::completion::<u8>();
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        done.complete(Ok(7));
    });
    assert_eq!(rt.block_on(woken).expect("woken"), 7);
    waker.join().expect("waking thread");
}

/// A driving step for a caller with work of its own ready to run
/// (`drive_now`) does not spend the busy-poll budget, however long: with a
/// receive pending and an hour's budget, it returns, and the receive then
/// gets its bytes.
#[test]
fn a_step_without_a_spin_returns_with_a_receive_pending() {
    let body = || {
        with_a_receive_pending_under_an_hours_busy_poll(|rt| {
            use mfio_core::IoBackend;
            for _ in 0..3 {
                rt.drive_now();
            }
        })
    };
    util::serial_within("a step without a spin", Duration::from_secs(60), body).expect("a step without a spin");
}

/// A wake from another thread ends the busy poll: with a receive pending
/// and an hour's budget, a `block_on` whose task another thread wakes
/// returns when it is woken (it waited for the whole budget before), and
/// the receive then gets its bytes.
#[test]
fn a_wake_from_another_thread_ends_the_busy_poll() {
    let body = || with_a_receive_pending_under_an_hours_busy_poll(wait_for_a_wake_from_another_thread);
    util::serial_within("a wake ends the busy poll", Duration::from_secs(60), body).expect("a wake ends the busy poll");
}

/// A busy-poll budget of `Duration::MAX` ("no limit") is a budget like
/// any other: a wake from another thread ends the poll, and the receive
/// gets its bytes (the poll's end was `Instant + Duration`, which panics
/// past what an `Instant` holds).
#[test]
fn a_busy_poll_of_duration_max_ends_on_a_wake() {
    let body = || with_a_receive_pending_under_a_busy_poll(Duration::MAX, wait_for_a_wake_from_another_thread);
    util::serial_within("a busy poll of Duration::MAX", Duration::from_secs(60), body)
        .expect("a busy poll of Duration::MAX");
}

backend_tests!(
    connect_send_drop,
    taken_over_std_stream,
    accept_and_receive_to_eof,
    echo_client_half_close,
    echo_server,
    short_read_returns_what_is_there,
    a_send_into_a_full_buffer_waits_for_the_reader,
    reset_and_closed_peers_are_errors,
    dropped_reads_lose_no_bytes,
    cancelled_accepts_and_connects_leak_nothing,
    unix_stream_echo,
    udp_datagrams,
    incoming_and_blocking_layers,
);
