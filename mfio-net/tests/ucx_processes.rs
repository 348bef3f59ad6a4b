//! The UCX backend between two processes: this test binary starts itself
//! again as the peer (the ignored test `peer`, told its role by the
//! environment), they swap worker addresses over the peer's stdin and
//! stdout, and everything else goes over UCX: shared memory (`sm,self`)
//! and TCP on loopback. Every case is bounded by a timeout.
#![cfg(feature = "ucx")]

mod util;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::join_all;
use mfio_core::{BufResult, Error, IoBackend, IoBackendExt, IoRead, IoReadStream, IoWrite, IoWriteStream, PacketIoExt};
use mfio_net::ucx::{AmProtocol, AmSend, Context, Endpoint, Tag, TagMatch, Worker, WorkerAddress};
use util::{fd_table, fds_settled, fold, open_fds, pattern, within, Lcg, Transport};

/// Environment variable that turns this binary into the peer.
const ROLE: &str = "MFIO_UCX_PEER";
/// Tags the peer echoes (reply: the same tag with `REPLY` set).
const ECHO: u64 = 1 << 40;
const REPLY: u64 = 1 << 41;
const STOP: u64 = 1 << 42;
const RKEY: u64 = 1 << 43;
/// AM ids: requests to the peer, replies from it.
const AM_TO_PEER: u16 = 1;
const AM_FROM_PEER: u16 = 2;
const REGION: usize = 16 << 20;
const MAX_MESSAGE: usize = 64 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

fn context(t: Transport) -> Context {
    let builder = match t {
        Transport::Sm => Context::builder().set("TLS", "sm,self"),
        Transport::Tcp => Context::builder().set("TLS", "tcp").set("NET_DEVICES", "lo"),
    };
    // A dead peer is noticed within a couple of seconds.
    builder.set("KEEPALIVE_INTERVAL", "1s").build().expect("context")
}

/// The peer process, seen from the test.
struct Peer {
    /// Taken by a test that kills and reaps it itself.
    child: Option<Child>,
    /// Drains the peer's stdout until the peer exits; joined when it has,
    /// so the pipe is closed before anyone counts descriptors.
    drain: Option<std::thread::JoinHandle<()>>,
    worker: Worker,
    ep: Option<Endpoint>,
    /// The peer's first message: its region's packed remote key, taken at
    /// the start whether a test uses it or not, so that no test leaves a
    /// message of the peer unreceived.
    packed_key: Vec<u8>,
}

impl Peer {
    fn start(t: Transport) -> Self {
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args(["--exact", "peer", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(ROLE, if t == Transport::Sm { "sm" } else { "tcp" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the peer");
        let stdout = child.stdout.take().expect("peer stdout");
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            let line = lines.next().expect("the peer printed its address").expect("line");
            // libtest may have started the line ("test peer ... ").
            if let Some((_, h)) = line.split_once("ADDR ") {
                break WorkerAddress::from_hex(h).expect("address");
            }
        };
        // Keep draining the peer's stdout so it never blocks on a full pipe.
        let drain = std::thread::spawn(move || for _ in lines {});
        let worker = context(t).worker().expect("worker");
        let mut stdin = child.stdin.take().expect("peer stdin");
        writeln!(stdin, "{}", worker.address().to_hex()).expect("send address");
        let ep = worker.connect(&address).expect("connect");
        let (got, packed_key) = worker
            .block_on(worker.tag_recv(TagMatch::exact(RKEY), Vec::with_capacity(4096)))
            .into_parts();
        got.expect("rkey");
        Self {
            child: Some(child),
            drain: Some(drain),
            worker,
            ep: Some(ep),
            packed_key,
        }
    }

    fn ep(&self) -> &Endpoint {
        self.ep.as_ref().expect("endpoint")
    }

    /// Tells the peer to exit and waits for it.
    fn stop(mut self) {
        let (sent, _) = self
            .worker
            .block_on(self.ep().write_at(Tag(STOP), Vec::new()))
            .into_parts();
        sent.expect("stop");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.worker.drive();
            let child = self.child.as_mut().expect("the peer process");
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "peer exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "peer did not exit");
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(ep) = self.ep.take() {
            drop(ep);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.worker.in_flight() > 0 && Instant::now() < deadline {
            self.worker.drive();
        }
        // The peer exited: its stdout is at end of file.
        if let Some(drain) = self.drain.take() {
            drain.join().expect("stdout drain");
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // Dead and reaped: its stdout is at end of file.
            if let Some(drain) = self.drain.take() {
                let _ = drain.join();
            }
        }
        // A peer its test took is left to that test (the drain ends when
        // the peer does).
    }
}

/// `fut`'s output, or `None` once `stop` is set (looked at whenever the
/// task is polled: the peer's other loops wake it).
async fn unless_stopped<T>(stop: &std::cell::Cell<bool>, fut: impl std::future::Future<Output = T>) -> Option<T> {
    let stopped = futures::future::poll_fn(|_| {
        if stop.get() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    });
    futures::pin_mut!(fut, stopped);
    match futures::future::select(fut, stopped).await {
        futures::future::Either::Left((out, _)) => Some(out),
        futures::future::Either::Right(_) => None,
    }
}

/// The peer: echoes tags, active messages and stream bytes until told to stop.
#[test]
#[ignore = "started by the other tests as their peer process"]
fn peer() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let t = if role == "sm" { Transport::Sm } else { Transport::Tcp };
    let ctx = context(t);
    let worker = ctx.worker().expect("worker");
    println!("ADDR {}", worker.address().to_hex());
    std::io::stdout().flush().expect("flush");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("address");
    let client = worker
        .connect(&WorkerAddress::from_hex(&line).expect("address"))
        .expect("connect");
    let region = mfio_net::ucx::MemoryRegion::new(&ctx, REGION).expect("region");
    worker.listen_am(AM_TO_PEER).expect("listen");
    let stop = std::cell::Cell::new(false);
    worker.block_on(async {
        let (sent, _) = client
            .write_at(Tag(RKEY), region.remote_key().to_vec())
            .await
            .into_parts();
        sent.expect("rkey");
        let tags = async {
            let mut buf = Vec::with_capacity(MAX_MESSAGE);
            loop {
                buf.clear();
                // Echo requests and the stop: neither reply nor key bits.
                let requests = TagMatch {
                    tag: 0,
                    mask: REPLY | RKEY,
                };
                let (got, b) = worker.tag_recv(requests, buf).await.into_parts();
                let info = got.expect("peer receive");
                if info.tag & STOP != 0 {
                    stop.set(true);
                    return;
                }
                let (sent, b) = client.write_at(Tag(info.tag | REPLY), b).await.into_parts();
                sent.expect("echo");
                buf = b;
            }
        };
        let ams = async {
            while !stop.get() {
                let recv = worker.am_recv(AM_TO_PEER, Vec::with_capacity(MAX_MESSAGE));
                match unless_stopped(&stop, recv).await {
                    Some(BufResult(info, data)) => {
                        let info = info.expect("peer AM");
                        let to = AmSend {
                            id: AM_FROM_PEER,
                            header: info.header,
                            protocol: AmProtocol::Auto,
                        };
                        let (sent, _) = client.io(to, data).await;
                        sent.result().expect("AM echo");
                    }
                    None => return,
                }
            }
        };
        let streams = async {
            while !stop.get() {
                let read = client.read(Vec::with_capacity(1 << 20));
                match unless_stopped(&stop, read).await {
                    Some(BufResult(n, data)) => {
                        if n.expect("peer stream read") == 0 {
                            return;
                        }
                        let (sent, _) = client.write_all(data).await.into_parts();
                        sent.expect("stream echo");
                    }
                    None => return,
                }
            }
        };
        futures::join!(tags, ams, streams);
        // Let the last replies leave before the process exits.
        let _ = client.io(mfio_core::Flush, Vec::new()).await;
    });
}

per_transport!(
    ping_pong_and_truncation,
    ten_thousand_receives_in_random_order,
    one_gib_round_trip,
    active_messages_both_ways,
    rma_against_the_peer_region,
    stream_echo_with_dropped_reads,
    descriptors_same_before_and_after,
);

/// Over TCP the kernel tells UCX at once; over shared memory UCX's
/// keepalive finds the peer's process gone.
#[test]
fn tcp_peer_killed_mid_transfer() {
    peer_killed_mid_transfer(Transport::Tcp);
}

#[test]
fn sm_peer_killed_mid_transfer() {
    peer_killed_mid_transfer(Transport::Sm);
}

const LIMIT: Duration = Duration::from_secs(180);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ping_pong_and_truncation(t: Transport) {
    let _s = serial();
    within(LIMIT, move || {
        let p = Peer::start(t);
        p.worker.block_on(async {
            for size in [0usize, 8, 4096, 1 << 20] {
                for round in 0..10u64 {
                    let msg = pattern(round, 0, size);
                    let tag = ECHO | round;
                    let recv = p
                        .worker
                        .tag_recv(TagMatch::exact(tag | REPLY), Vec::with_capacity(size));
                    let send = p.ep().write_at(Tag(tag), msg.clone());
                    let (BufResult(info, buf), BufResult(sent, _)) = futures::join!(recv, send);
                    sent.expect("send");
                    assert_eq!(info.expect("echo").len, size);
                    assert!(buf == msg);
                }
            }
            // An echo longer than the buffer: typed, and the next one is whole.
            let recv = p
                .worker
                .tag_recv(TagMatch::exact(ECHO | 77 | REPLY), Vec::with_capacity(10));
            let send = p.ep().write_at(Tag(ECHO | 77), vec![1u8; 5000]);
            let (BufResult(info, _), BufResult(sent, _)) = futures::join!(recv, send);
            sent.expect("send");
            assert!(info.expect_err("truncated").is_truncated());
            let recv = p
                .worker
                .tag_recv(TagMatch::exact(ECHO | 78 | REPLY), Vec::with_capacity(10));
            let send = p.ep().write_at(Tag(ECHO | 78), b"whole".to_vec());
            let (BufResult(info, buf), _) = futures::join!(recv, send);
            assert_eq!((info.expect("echo").len, &buf[..]), (5, &b"whole"[..]));
        });
        p.stop();
    });
}

fn ten_thousand_receives_in_random_order(t: Transport) {
    let _s = serial();
    within(LIMIT, move || {
        let p = Peer::start(t);
        const N: u64 = 10_000;
        let mut order: Vec<u64> = (0..N).collect();
        let mut rng = Lcg(99);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        p.worker.block_on(async {
            let receives = join_all((0..N).map(|i| {
                p.worker
                    .tag_recv(TagMatch::exact(ECHO | REPLY | i), Vec::with_capacity(8))
            }));
            let sends = async {
                for i in &order {
                    let (sent, _) = p
                        .ep()
                        .write_at(Tag(ECHO | i), i.to_le_bytes().to_vec())
                        .await
                        .into_parts();
                    sent.expect("send");
                }
            };
            let (results, ()) = futures::join!(receives, sends);
            for (i, BufResult(info, buf)) in results.into_iter().enumerate() {
                assert_eq!(info.expect("echo").tag, ECHO | REPLY | i as u64);
                assert_eq!(buf, (i as u64).to_le_bytes());
            }
        });
        p.stop();
    });
}

fn one_gib_round_trip(t: Transport) {
    let _s = serial();
    within(Duration::from_secs(600), move || {
        let p = Peer::start(t);
        const CHUNK: usize = MAX_MESSAGE;
        const CHUNKS: u64 = (1 << 30) / CHUNK as u64;
        p.worker.block_on(async {
            let (mut sent_sum, mut got_sum) = (0u64, 0u64);
            let mut back = Vec::with_capacity(CHUNK);
            for i in 0..CHUNKS {
                let chunk = pattern(i, i * CHUNK as u64, CHUNK);
                sent_sum = fold(sent_sum, &chunk);
                back.clear();
                let recv = p.worker.tag_recv(TagMatch::exact(ECHO | REPLY | i), back);
                let send = p.ep().write_at(Tag(ECHO | i), chunk);
                let (BufResult(info, buf), BufResult(sent, _)) = futures::join!(recv, send);
                sent.expect("send");
                assert_eq!(info.expect("echo").len, CHUNK);
                got_sum = fold(got_sum, &buf);
                back = buf;
            }
            assert_eq!(got_sum, sent_sum, "1 GiB went there and back intact");
        });
        p.stop();
    });
}

fn active_messages_both_ways(t: Transport) {
    let _s = serial();
    within(LIMIT, move || {
        let p = Peer::start(t);
        p.worker.listen_am(AM_FROM_PEER).expect("listen");
        let max_header = p.worker.max_am_header();
        p.worker.block_on(async {
            for size in [0usize, 1, 8191, 8192, 8193, 1 << 20, 16 << 20] {
                for protocol in [AmProtocol::Eager, AmProtocol::Rendezvous, AmProtocol::Auto] {
                    for header_len in [0, 1, max_header] {
                        let header = pattern(size as u64, 1, header_len);
                        let data = pattern(header_len as u64, 0, size);
                        let to = AmSend {
                            id: AM_TO_PEER,
                            header: header.clone(),
                            protocol,
                        };
                        let send = p.ep().io(to, data.clone());
                        let recv = p.worker.am_recv(AM_FROM_PEER, Vec::with_capacity(size));
                        let ((sent, _), BufResult(info, buf)) = futures::join!(send, recv);
                        sent.result().expect("AM send");
                        let info = info.unwrap_or_else(|e| panic!("AM {size} B {protocol:?}: {e}"));
                        assert_eq!((info.len, &info.header), (size, &header));
                        assert!(buf == data);
                    }
                }
            }
        });
        p.stop();
    });
}

fn rma_against_the_peer_region(t: Transport) {
    let _s = serial();
    within(LIMIT, move || {
        let p = Peer::start(t);
        let key = p.ep().remote_key(&p.packed_key).expect("unpack");
        assert_eq!(key.len(), REGION as u64);
        let mut expect = vec![0u8; REGION];
        let mut rng = Lcg(5);
        p.worker.block_on(async {
            for round in 0..300u64 {
                let len = 1 + rng.below(100_000) as usize;
                let at = rng.below((REGION - len) as u64);
                let data = pattern(round, at, len);
                let (n, _) = key.write_at(at, data.clone()).await.into_parts();
                assert_eq!(n.expect("put"), len);
                expect[at as usize..at as usize + len].copy_from_slice(&data);
            }
            key.io(mfio_core::Flush, Vec::new()).await.0.result().expect("flush");
            for _ in 0..300 {
                let len = 1 + rng.below(100_000) as usize;
                let at = rng.below((REGION - len) as u64);
                let (n, buf) = key.read_at(at, Vec::with_capacity(len)).await.into_parts();
                assert_eq!(n.expect("get"), len);
                assert!(buf[..] == expect[at as usize..at as usize + len], "get at {at}+{len}");
            }
            let (r, _) = key.read_at(REGION as u64 - 1, Vec::with_capacity(2)).await.into_parts();
            assert_eq!(r.expect_err("outside").kind(), std::io::ErrorKind::InvalidInput);
        });
        drop(key);
        p.stop();
    });
}

fn stream_echo_with_dropped_reads(t: Transport) {
    let _s = serial();
    within(LIMIT, move || {
        let p = Peer::start(t);
        let total = 2 << 20;
        let data = pattern(3, 0, total);
        p.worker.block_on(async {
            let writer = async {
                let mut at = 0;
                let mut rng = Lcg(8);
                while at < total {
                    let n = (1 + rng.below(65_536) as usize).min(total - at);
                    let (r, _) = p.ep().write_all(data[at..at + n].to_vec()).await.into_parts();
                    r.expect("write");
                    at += n;
                }
            };
            let reader = async {
                let mut got = Vec::with_capacity(total);
                let mut rng = Lcg(9);
                while got.len() < total {
                    // Every third read is dropped after a poll or two.
                    let read = p.ep().read(Vec::with_capacity(1 + rng.below(100_000) as usize));
                    if rng.below(3) == 0 {
                        let mut read = Box::pin(read);
                        for _ in 0..rng.below(3) {
                            if let std::task::Poll::Ready(BufResult(n, buf)) = futures::poll!(read.as_mut()) {
                                n.expect("read");
                                got.extend_from_slice(&buf);
                                break;
                            }
                            util::yield_now().await;
                        }
                        continue;
                    }
                    let (n, buf) = read.await.into_parts();
                    assert!(n.expect("read") > 0);
                    got.extend_from_slice(&buf);
                }
                got
            };
            let ((), got) = futures::join!(writer, reader);
            assert!(got == data, "every echoed byte, in order, despite dropped reads");
        });
        p.stop();
    });
}

fn peer_killed_mid_transfer(t: Transport) {
    let _s = serial();
    within(LIMIT, move || {
        let mut p = Peer::start(t);
        // Killed and reaped here: a dead process nobody reaped is a zombie,
        // which UCX's shared-memory keepalive takes for a live peer (its
        // process entry is still there).
        let mut child = p.child.take().expect("the peer process");
        let started = Instant::now();
        let outcome: Result<(), Error> = p.worker.block_on(async {
            // Stream echoes in flight while the peer dies.
            let mut killed = false;
            loop {
                let (r, _) = p.ep().write_all(vec![7u8; 1 << 20]).await.into_parts();
                r?;
                let (n, _) = p.ep().read(Vec::with_capacity(1 << 20)).await.into_parts();
                let n = n?;
                if killed && n == 0 {
                    return Err(Error::new(std::io::ErrorKind::ConnectionReset, "end of stream"));
                }
                if !killed {
                    child.kill().expect("kill the peer");
                    child.wait().expect("reap the peer");
                    killed = true;
                }
            }
        });
        // Reaped whatever happened above (a no-op once killed there).
        let _ = child.kill();
        let _ = child.wait();
        let err = outcome.expect_err("operations on a dead peer fail");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::Other
            ),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "noticed in {:?}",
            started.elapsed()
        );
    });
}

fn descriptors_same_before_and_after(t: Transport) {
    let _s = serial();
    within(LIMIT, move || {
        // Warm-up: UCX opens some process-wide descriptors once.
        Peer::start(t).stop();
        let (before, table) = (open_fds(), fd_table());
        for _ in 0..3 {
            Peer::start(t).stop();
        }
        assert_eq!(
            fds_settled(before, Duration::from_secs(5)),
            before,
            "descriptors before and after three peers: before {table:#?}, after {:#?}",
            fd_table()
        );
    });
}
