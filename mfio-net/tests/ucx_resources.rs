//! What the UCX backend costs when it waits, and what it leaves behind.
//! Its own test binary: descriptor counts need a process where nothing else
//! opens descriptors meanwhile, so the tests here also run one at a time.
#![cfg(feature = "ucx")]

mod util;

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mfio_core::{IoBackend, IoBackendExt, IoRead, IoWrite};
use mfio_net::ucx::{Context, Endpoint, Tag, TagMatch, Worker};
use util::{fd_table, fds_settled, open_fds, pair, thread_cpu, within, Transport};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A receive that waits a whole second for its message costs (almost) no
/// CPU: the driver sleeps on the worker's descriptor, armed.
#[test]
fn idle_wait_costs_no_cpu() {
    let _serial = serial();
    for t in [Transport::Sm, Transport::Tcp] {
        within(Duration::from_secs(60), move || {
            let p = pair(t);
            let p = std::sync::Arc::new(p);
            let sender = {
                let p = p.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(1));
                    // Posted from another thread while the receiver sleeps.
                    let (sent, _) = p.a.block_on(p.ab().write_at(Tag(1), b"wake".to_vec())).into_parts();
                    sent.expect("send");
                })
            };
            let started = Instant::now();
            let cpu_before = thread_cpu();
            let (got, buf) =
                p.b.block_on(p.b.tag_recv(TagMatch::exact(1), Vec::with_capacity(8)))
                    .into_parts();
            let cpu = thread_cpu() - cpu_before;
            let waited = started.elapsed();
            assert_eq!((got.expect("recv").len, &buf[..]), (4, &b"wake"[..]));
            assert!(waited >= Duration::from_millis(900), "waited {waited:?}");
            assert!(
                cpu < Duration::from_millis(100),
                "{t:?}: {cpu:?} of CPU over a {waited:?} wait"
            );
            sender.join().expect("sender");
        });
    }
}

/// Workers, endpoints, listeners, regions and contexts, dropped in every
/// order a user can write, leave no descriptor behind.
#[test]
fn descriptors_are_released_in_any_drop_order() {
    let _serial = serial();
    within(Duration::from_secs(120), || {
        // Warm-up: UCX opens some process-wide descriptors once.
        drop(pair(Transport::Sm));
        drop(pair(Transport::Tcp));
        let (before, table) = (open_fds(), fd_table());
        for round in 0..4 {
            for t in [Transport::Sm, Transport::Tcp] {
                let ctx = util::context(t, false);
                let a = ctx.worker().expect("a");
                let b = ctx.worker().expect("b");
                let ab = a.connect(&b.address()).expect("ab");
                let ba = b.connect(&a.address()).expect("ba");
                let region = mfio_net::ucx::MemoryRegion::new(&ctx, 4096).expect("region");
                let key = ab.remote_key(region.remote_key()).expect("key");
                let both = mfio_backends::Composite::new(vec![Box::new(a.clone()), Box::new(b.clone())]).expect("both");
                let (sent, _) = both.block_on(ab.write_at(Tag(1), b"x".to_vec())).into_parts();
                sent.expect("send");
                let (got, _) = both
                    .block_on(b.read_at(TagMatch::exact(1), Vec::with_capacity(1)))
                    .into_parts();
                got.expect("recv");
                match round {
                    0 => drop((key, ab, ba, region, both, a, b, ctx)),
                    1 => drop((ctx, both, a, b, region, key, ab, ba)),
                    2 => drop((b, a, both, ctx, ba, ab, key, region)),
                    _ => drop((region, ctx, key, both, ba, b, ab, a)),
                }
            }
        }
        assert_eq!(
            fds_settled(before, Duration::from_secs(5)),
            before,
            "descriptors before and after: before {table:#?}, after {:#?}",
            fd_table()
        );
    });
}

/// Two workers of one context over `t`, each connected to the other.
fn connected_workers(t: Transport) -> (Context, Worker, Worker, Endpoint, Endpoint) {
    let ctx = util::context(t, false);
    let a = ctx.worker().expect("a");
    let b = ctx.worker().expect("b");
    let ab = a.connect(&b.address()).expect("ab");
    let ba = b.connect(&a.address()).expect("ba");
    (ctx, a, b, ab, ba)
}

/// A send of `len` bytes (long enough for a rendezvous) over `ab` at tag 9,
/// started and kept waiting: polled and both workers driven `rounds` times
/// while nobody receives it, and still pending.
fn pending_rendezvous<'a>(
    ab: &'a Endpoint,
    a: &Worker,
    b: &Worker,
    len: usize,
    rounds: usize,
    cx: &mut std::task::Context<'_>,
) -> std::pin::Pin<Box<impl Future + 'a>> {
    let mut send = Box::pin(ab.write_at(Tag(9), vec![7u8; len]));
    for _ in 0..rounds {
        assert!(send.as_mut().poll(cx).is_pending(), "a send nobody received finished");
        a.drive_now();
        b.drive_now();
    }
    send
}

/// A worker dropped while its send waits for a peer that lives on but
/// never receives it (a rendezvous), its endpoint dropped or closed first,
/// goes within its grace period: the endpoint's close waited for the send,
/// and the worker's end closes it by force, which ends the send. Before,
/// the close was under way in UCX with the send still on the endpoint,
/// and UCX aborted the process as the worker went. The peer goes after
/// it, and no descriptor is left.
#[test]
fn a_worker_goes_with_a_send_its_peer_never_takes() {
    let _serial = serial();
    within(Duration::from_secs(120), || {
        drop(pair(Transport::Sm));
        drop(pair(Transport::Tcp));
        let (before, table) = (open_fds(), fd_table());
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for t in [Transport::Sm, Transport::Tcp] {
            for close_first in [false, true] {
                let (ctx, a, b, ab, ba) = connected_workers(t);
                let send = pending_rendezvous(&ab, &a, &b, 4 << 20, 200, &mut cx);
                // It goes on without its caller; then the endpoint goes.
                drop(send);
                if close_first {
                    let mut closing = ab.close();
                    for _ in 0..50 {
                        a.drive_now();
                    }
                    assert!(
                        std::pin::Pin::new(&mut closing).poll(&mut cx).is_pending(),
                        "{t:?}: the close did not wait for the send"
                    );
                } else {
                    drop(ab);
                }
                let started = Instant::now();
                drop(a);
                let took = started.elapsed();
                assert!(took < Duration::from_secs(5), "{t:?}: the worker took {took:?} to go");
                drop((ba, b, ctx));
            }
        }
        assert_eq!(
            fds_settled(before, Duration::from_secs(5)),
            before,
            "descriptors before and after: before {table:#?}, after {:#?}",
            fd_table()
        );
    });
}

/// Environment variable that turns this binary into the child of
/// `a_worker_goes_while_a_stalled_peer_sends_to_it`.
const STALLED_ROLE: &str = "MFIO_UCX_STALLED";

/// A worker dropped while a rendezvous comes to it from a peer that lives
/// on but stopped sending midway (the message received, or being taken
/// into nothing as the worker goes) goes within its grace period instead
/// of aborting the process: UCX can end such a receive neither by
/// cancelling it nor by closing an endpoint already closed, so the worker
/// is kept, never destroyed, with the receive's buffer. In a child
/// process (without leak detection): what is kept stays for its life.
#[test]
fn a_worker_goes_while_a_stalled_peer_sends_to_it() {
    let _serial = serial();
    let exe = std::env::current_exe().expect("test binary");
    let started = Instant::now();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "stalled_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(STALLED_ROLE, "1")
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .expect("start the child");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "child failed ({:?}): {stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("stalled child done"),
        "the child did not get through: {stdout}\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// The child of `a_worker_goes_while_a_stalled_peer_sends_to_it`.
#[test]
#[ignore = "started by a_worker_goes_while_a_stalled_peer_sends_to_it"]
fn stalled_child() {
    if std::env::var_os(STALLED_ROLE).is_none() {
        return;
    }
    within(Duration::from_secs(60), || {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for t in [Transport::Sm, Transport::Tcp] {
            for received in [true, false] {
                let (ctx, a, b, ab, ba) = connected_workers(t);
                let send = pending_rendezvous(&ab, &a, &b, 8 << 20, 50, &mut cx);
                // From here on a is never driven again until b is gone.
                let mut recv = Box::pin(b.tag_recv(TagMatch::exact(9), Vec::with_capacity(8 << 20)));
                if received {
                    for _ in 0..20 {
                        let _ = recv.as_mut().poll(&mut cx);
                        b.drive_now();
                    }
                }
                drop((recv, ba));
                let started = Instant::now();
                drop(b);
                let took = started.elapsed();
                assert!(took < Duration::from_secs(5), "{t:?}: the worker took {took:?} to go");
                drop(send);
                drop((ab, a, ctx));
            }
        }
    });
    println!("stalled child done");
}

/// Environment variable that turns this binary into the child of
/// `tag_messages_nobody_received_leave_no_warning` (its transport).
const UNRECEIVED_ROLE: &str = "MFIO_UCX_UNRECEIVED";

/// A worker dropped with tag messages that came and that nobody received
/// (an eager one, one in fragments and a rendezvous) takes them into
/// nothing as it goes: UCX prints no warning naming them on stderr, and
/// the rendezvous's sender finishes (UCX tells it the message was taken;
/// before, over shared memory, it waited forever). UCX's warning comes
/// from its own logger, so the case runs in a child process whose stderr
/// is read here.
#[test]
fn tag_messages_nobody_received_leave_no_warning() {
    let _serial = serial();
    for t in ["sm", "tcp"] {
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "unreceived_child",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(UNRECEIVED_ROLE, t)
            .output()
            .expect("start the child");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{t}: child failed: {stdout}\n{stderr}");
        assert!(
            stdout.contains("rendezvous sender done"),
            "{t}: the child did not get through: {stdout}\n{stderr}"
        );
        assert!(
            !stderr.contains("was not matched"),
            "{t}: UCX warned of messages left at the worker's end:\n{stderr}"
        );
    }
}

/// The child of `tag_messages_nobody_received_leave_no_warning`.
#[test]
#[ignore = "started by tag_messages_nobody_received_leave_no_warning"]
fn unreceived_child() {
    let Ok(role) = std::env::var(UNRECEIVED_ROLE) else {
        return;
    };
    let t = if role == "sm" { Transport::Sm } else { Transport::Tcp };
    within(Duration::from_secs(60), move || {
        let ctx = util::context(t, false);
        let a = ctx.worker().expect("a");
        let b = ctx.worker().expect("b");
        let ab = a.connect(&b.address()).expect("ab");
        let both = mfio_backends::Composite::new(vec![Box::new(a.clone()), Box::new(b.clone())]).expect("both");
        // Eager sends are done once their bytes left.
        for (tag, len) in [(1u64, 8usize), (2, 40 << 10)] {
            let (sent, _) = both
                .block_on(ab.write_at(mfio_net::ucx::EagerTag(tag), vec![7u8; len]))
                .into_parts();
            assert_eq!(sent.expect("eager send"), len);
        }
        // A rendezvous send is done once its receiver takes the message:
        // b drops it unreceived once its announcement is in. A marker sent
        // after it on the same endpoint is matched after it, so b holds
        // the announcement once it has taken the marker.
        let mut rendezvous = Box::pin(ab.write_at(Tag(3), vec![9u8; 4 << 20]));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(
            rendezvous.as_mut().poll(&mut cx).is_pending(),
            "taken with nobody receiving"
        );
        let (sent, _) = both
            .block_on(ab.write_at(mfio_net::ucx::EagerTag(4), vec![1u8]))
            .into_parts();
        sent.expect("marker");
        let mut marker = Vec::with_capacity(1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while b
            .try_tag_recv(TagMatch::exact(4), &mut marker)
            .expect("marker")
            .is_none()
        {
            assert!(Instant::now() < deadline, "the marker never came");
            both.drive();
        }
        assert!(
            rendezvous.as_mut().poll(&mut cx).is_pending(),
            "taken with nobody receiving"
        );
        drop(both);
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let std::task::Poll::Ready(out) = rendezvous.as_mut().poll(&mut cx) {
                println!("rendezvous sender done: {:?}", out.0.map_err(|e| e.kind()));
                break;
            }
            assert!(Instant::now() < deadline, "the rendezvous sender was never told");
            a.drive();
        }
        drop((ab, a, ctx));
    });
}
