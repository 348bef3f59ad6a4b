//! Helpers shared by the backend test suites.
#![allow(dead_code)]

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use std::cell::{Cell, OnceCell};
use std::future::Future;

use mfio_backends::{BackendKind, OpenOptions, Runtime, BACKEND_ENV};
use mfio_core::{IoBackendExt, Result};
use mfio_integration::{Smol, Tokio};

/// Who drives the backend while a test body waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// mfio's own `block_on`.
    Null,
    /// A current-thread tokio runtime (`Tokio::run`).
    TokioCurrent,
    /// A multi-thread tokio runtime (`Tokio::run` from its `block_on`).
    TokioMulti,
    /// smol (`Smol::run`).
    Smol,
}

/// Environment variable narrowing the drivers: `null,tokio-current,tokio-multi,smol`.
pub const DRIVERS_ENV: &str = "MFIO_TEST_DRIVERS";

/// The drivers to test with: all, or those `MFIO_TEST_DRIVERS` lists.
pub fn drivers() -> Vec<Driver> {
    let all = [Driver::Null, Driver::TokioCurrent, Driver::TokioMulti, Driver::Smol];
    match std::env::var(DRIVERS_ENV) {
        Err(_) => all.to_vec(),
        Ok(list) => list
            .split(',')
            .map(|d| match d.trim() {
                "null" => Driver::Null,
                "tokio-current" => Driver::TokioCurrent,
                "tokio-multi" => Driver::TokioMulti,
                "smol" => Driver::Smol,
                other => panic!("{DRIVERS_ENV}: unknown driver {other:?}"),
            })
            .collect(),
    }
}

thread_local! {
    static DRIVER: Cell<Driver> = const { Cell::new(Driver::Null) };
    static TOKIO_CURRENT: OnceCell<tokio::runtime::Runtime> = const { OnceCell::new() };
    static TOKIO_MULTI: OnceCell<tokio::runtime::Runtime> = const { OnceCell::new() };
}

/// Runs `fut` to completion on this thread, with `rt` driven by this
/// thread's driver (see [`on_every_backend`]).
pub fn run<F: Future>(rt: &Runtime, fut: F) -> F::Output {
    match DRIVER.with(Cell::get) {
        Driver::Null => rt.block_on(fut),
        Driver::TokioCurrent => TOKIO_CURRENT.with(|host| {
            host.get_or_init(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio")
            })
            .block_on(Tokio::run(rt, fut))
        }),
        Driver::TokioMulti => TOKIO_MULTI.with(|host| {
            host.get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio")
            })
            .block_on(Tokio::run(rt, fut))
        }),
        Driver::Smol => smol::block_on(Smol::run(rt, fut)),
    }
}

/// Makes this thread's `block_on` wake descriptor exist (made the first
/// time a `block_on` waits, and kept as long as the thread), so that a
/// descriptor count taken after this does not see it appear: runs a future
/// that is not ready at its first poll.
pub fn make_wake_descriptor(rt: &Runtime) {
    let mut polled = false;
    run(
        rt,
        std::future::poll_fn(move |cx| {
            if std::mem::replace(&mut polled, true) {
                return std::task::Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }),
    );
}

/// Descriptor counts are per process: suites that compare them take this.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `body` on a thread of its own while holding [`SERIAL`], so every
/// descriptor it opens (its `block_on` wake descriptor included, which lives
/// as long as its thread) is closed before another suite counts them.
/// A panic in `body` is raised again here; a body still running after 120 s
/// is a hang and fails the test.
pub fn serial<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    serial_within("serial test", Duration::from_secs(120), body)
}

/// [`serial`] with a hang guard of `limit`. The body's thread is joined
/// before [`SERIAL`] is released: a thread that outlived its result would
/// close its descriptors while the next suite counts them.
pub fn serial_within<T: Send + 'static>(what: &str, limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what}: the body ended without a result"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no result within {limit:?} (hang)"),
    }
}

/// Open read-write, creating.
pub fn rw() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true);
    o
}

/// The runtimes to test: the one `MFIO_BACKEND` names, else every backend
/// that starts here (io_uring is skipped with a message where unavailable).
pub fn runtimes() -> Vec<Runtime> {
    if std::env::var_os(BACKEND_ENV).is_some() {
        return vec![Runtime::new().expect("runtime from MFIO_BACKEND")];
    }
    let mut out = vec![Runtime::builder()
        .backend(BackendKind::Poll)
        .build()
        .expect("poll backend")];
    match Runtime::builder().backend(BackendKind::Uring).build() {
        Ok(rt) => out.push(rt),
        Err(e) => eprintln!("skip io_uring: {e}"),
    }
    // Test files are always page-cached, so with inline cached reads (the
    // default) the ring's and the pool's own read paths would go untested:
    // run them too.
    for kind in [BackendKind::Poll, BackendKind::Uring] {
        if let Ok(rt) = Runtime::builder().backend(kind).inline_cached_reads(false).build() {
            out.push(rt);
        }
    }
    out
}

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Creates the process-wide state of the host runtimes (smol's global
/// reactor keeps its descriptors for the life of the process), so that
/// descriptor counts taken afterwards only see what a test itself opens.
pub fn init_process_globals() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // The same path the tests take (a backend registered with smol's
    // reactor, plus a timer), so everything global exists from here on.
    ONCE.call_once(|| {
        let rt = Runtime::new().expect("runtime");
        smol::block_on(Smol::run(&rt, async {
            smol::Timer::after(std::time::Duration::from_millis(1)).await;
        }));
    });
}

/// Runs `body` on every runtime under every driver, each on a fresh thread
/// under a hang guard.
pub fn on_every_backend(name: &str, body: fn(&Runtime, &Path) -> Result<()>) {
    for driver in drivers() {
        on_every_runtime(name, driver, body);
    }
}

fn on_every_runtime(name: &str, driver: Driver, body: fn(&Runtime, &Path) -> Result<()>) {
    for rt in runtimes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let kind = rt.kind();
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            DRIVER.with(|d| d.set(driver));
            // The host runtime's own descriptors, and this thread's wake
            // descriptor, exist before the body counts any.
            make_wake_descriptor(&rt);
            let _ = tx.send(body(&rt, &path));
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(res) => {
                if let Err(e) = res {
                    panic!("{name} on {kind} under {driver:?}: {e} ({e:?})");
                }
            }
            Err(_) => panic!("{name} on {kind} under {driver:?}: no result within 120 s (hang or panic)"),
        }
        worker.join().expect("worker");
    }
}

/// Generates one `#[test]` per body, each running the body on every backend
/// (see [`on_every_backend`]) with the descriptor count checked around it.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod on_every_backend {
            use super::*;
            $(
                #[test]
                fn $name() {
                    // Descriptor counts are per process: one suite at a time.
                    let _serial = util::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
                    util::init_process_globals();
                    let before = util::open_fds();
                    util::on_every_backend(stringify!($name), $crate::$name);
                    // Runtimes are gone: their ring, eventfds and pool threads too.
                    // Only exact with block_on alone: host runtimes (smol's global
                    // reactor, tokio's drivers) open and close descriptors of their
                    // own; the bodies' own counts cover every driver.
                    if util::drivers() == [util::Driver::Null] {
                        assert_eq!(util::open_fds(), before, "descriptors leaked by the suite");
                    }
                }
            )*
        }
    };
}

/// One spinning thread per core, competing for the CPU until dropped: the
/// load under which races show.
pub struct BusyCores {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCores {
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for BusyCores {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// CPU time this thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
