//! Helpers shared by the backend test suites.
#![allow(dead_code)]

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use mfio_backends::{BackendKind, OpenOptions, Runtime, BACKEND_ENV};
use mfio_core::Result;

/// Descriptor counts are per process: suites that compare them take this.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

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

/// Runs `body` on every runtime under a hang guard.
pub fn on_every_backend(name: &str, body: fn(&Runtime, &Path) -> Result<()>) {
    for rt in runtimes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let kind = rt.kind();
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            let _ = tx.send(body(&rt, &path));
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(res) => {
                if let Err(e) = res {
                    panic!("{name} on {kind}: {e} ({e:?})");
                }
            }
            Err(_) => panic!("{name} on {kind}: no result within 120 s (hang or panic)"),
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
                    let before = util::open_fds();
                    util::on_every_backend(stringify!($name), $crate::$name);
                    // Runtimes are gone: their ring, eventfds and pool threads too.
                    assert_eq!(util::open_fds(), before, "descriptors leaked by the suite");
                }
            )*
        }
    };
}
