//! What the UCX backend costs when it waits, and what it leaves behind.
//! Its own test binary: descriptor counts need a process where nothing else
//! opens descriptors meanwhile, so the tests here also run one at a time.
#![cfg(feature = "ucx")]

mod util;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mfio_core::{IoBackendExt, IoRead, IoWrite};
use mfio_net::ucx::{Tag, TagMatch};
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
