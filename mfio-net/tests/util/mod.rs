//! Helpers of the UCX test suites: transports, a connected pair of
//! workers driven together, bounded waits.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

use mfio_backends::Composite;
use mfio_core::IoBackendExt;
use mfio_net::ucx::{Context, Endpoint, Worker};

/// How the two workers of a test reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Shared memory (`sm,self`); `tcp` is added where a listener is used,
    /// since sockets need a transport on the interface.
    Sm,
    /// TCP on loopback only.
    Tcp,
}

/// A context on `transport`; `listener` adds what socket-address
/// connections need.
pub fn context(transport: Transport, listener: bool) -> Context {
    context_with(transport, listener, &[])
}

/// As [`context`], with UCX settings (names without `UCX_`) on top.
pub fn context_with(transport: Transport, listener: bool, settings: &[(&str, &str)]) -> Context {
    let mut builder = match (transport, listener) {
        (Transport::Sm, false) => Context::builder().set("TLS", "sm,self"),
        (Transport::Sm, true) => Context::builder().set("TLS", "sm,self,tcp").set("NET_DEVICES", "lo"),
        (Transport::Tcp, _) => Context::builder().set("TLS", "tcp").set("NET_DEVICES", "lo"),
    };
    for &(name, value) in settings {
        builder = builder.set(name, value);
    }
    builder.build().expect("UCX context")
}

/// Two workers connected both ways by worker address, and one backend
/// that drives both (a flush-mode close needs the peer to progress).
pub struct Pair {
    pub a: Worker,
    pub b: Worker,
    ab: Option<Endpoint>,
    ba: Option<Endpoint>,
    pub both: Composite,
}

impl Pair {
    /// a's endpoint to b.
    pub fn ab(&self) -> &Endpoint {
        self.ab.as_ref().expect("endpoint a->b")
    }

    /// b's endpoint to a.
    pub fn ba(&self) -> &Endpoint {
        self.ba.as_ref().expect("endpoint b->a")
    }

    /// Takes both endpoints (a->b, b->a) out of the pair.
    pub fn take_endpoints(&mut self) -> (Endpoint, Endpoint) {
        (self.ab.take().expect("a->b"), self.ba.take().expect("b->a"))
    }
}

/// Closes what is left gracefully while both workers are driven (a
/// flush-mode close completes only while the peer progresses), so each
/// test ends with nothing in flight.
impl Drop for Pair {
    fn drop(&mut self) {
        let closes: Vec<_> = [self.ab.take(), self.ba.take()]
            .into_iter()
            .flatten()
            .map(|ep| ep.close())
            .collect();
        self.both.block_on(futures::future::join_all(closes));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (self.a.in_flight() > 0 || self.b.in_flight() > 0) && std::time::Instant::now() < deadline {
            mfio_core::IoBackend::drive(&self.both);
        }
    }
}

pub fn pair(transport: Transport) -> Pair {
    pair_with(transport, &[])
}

/// As [`pair`], on a context with UCX settings on top.
pub fn pair_with(transport: Transport, settings: &[(&str, &str)]) -> Pair {
    let ctx = context_with(transport, false, settings);
    let a = ctx.worker().expect("worker a");
    let b = ctx.worker().expect("worker b");
    let ab = a.connect(&b.address()).expect("connect a->b");
    let ba = b.connect(&a.address()).expect("connect b->a");
    let both = Composite::new(vec![Box::new(a.clone()), Box::new(b.clone())]).expect("composite");
    Pair {
        a,
        b,
        ab: Some(ab),
        ba: Some(ba),
        both,
    }
}

/// Runs `body` on a thread of its own and fails the test if it takes
/// longer than `limit` (a hang is a failure, not a stuck CI job).
pub fn within<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let out = body();
        let _ = tx.send(());
        out
    });
    match rx.recv_timeout(limit) {
        Ok(()) => handle.join().expect("test body panicked"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(_) => unreachable!("the body sends before returning"),
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test body did not finish within {limit:?}"),
    }
}

/// Deterministic bytes: the pattern of stream/message `seed`, at `offset`.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (offset + i).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
            (x >> 29) as u8
        })
        .collect()
}

/// A small deterministic generator (no dependency for test randomness).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// The descriptor count once it is back to `before`, or after `limit`:
/// UCX closes some TCP sockets from its own thread a moment after the
/// worker is gone. The reading that ends the wait is the one returned (a
/// second reading could catch a descriptor some thread holds an instant).
pub fn fds_settled(before: usize, limit: Duration) -> usize {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let now = open_fds();
        if now == before || std::time::Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What each open descriptor is (`/proc/self/fd`), for failure messages.
pub fn fd_table() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = std::fs::read_link(e.path()).map(|t| t.display().to_string());
                    format!("{} -> {}", e.file_name().to_string_lossy(), target.unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// CPU time this thread has used (`/proc/thread-self/schedstat`).
pub fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("run time");
    Duration::from_nanos(ns)
}

/// Generates one test per transport from a body taking the transport.
#[macro_export]
macro_rules! per_transport {
    ($($name:ident),* $(,)?) => {
        mod sm {
            $(#[test] fn $name() { super::$name(super::util::Transport::Sm) })*
        }
        mod tcp {
            $(#[test] fn $name() { super::$name(super::util::Transport::Tcp) })*
        }
    };
}

/// Yields once to the executor (waking itself so it is polled again).
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// An order-sensitive checksum, folded over chunks as they come.
pub fn fold(sum: u64, bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(sum, |s, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        (s.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Blocks on `backend` until a thread of its own completes a future 50 ms
/// from now, and checks what it got: a task woken from another thread
/// while the backend may be spinning.
pub fn wait_for_a_wake_from_another_thread(backend: &impl mfio_core::IoBackend) {
    let (done, woken) = mfio_core::completion::completion::<u8>();
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        done.complete(Ok(7));
    });
    assert_eq!(backend.block_on(woken).expect("woken"), 7);
    waker.join().expect("waking thread");
}
