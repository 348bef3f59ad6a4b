//! Leak checks that count the process's file descriptors. This binary holds
//! a single test, so no other test opens or closes descriptors meanwhile.

mod util;

use std::sync::atomic::Ordering;
use std::time::Duration;

use mfio_core::mem::MemBackend;
use mfio_core::{IoBackend, IoRead, IoReadStream, IoWriteStream};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn drop_mid_flight_in_a_loop_leaks_nothing() {
    util::within(LIMIT, || {
        let fds_before = util::open_fds();
        for round in 0..200u64 {
            let be = MemBackend::builder()
                .delay(Duration::from_micros(round % 7 * 50))
                .split_at(3)
                .out_of_order(round + 1)
                .build()
                .expect("backend");
            let f = be.file(util::pattern(256, round));
            let (a, b) = be.stream_pair();
            let mut freed = Vec::new();
            let mut futs = Vec::new();
            for i in 0..8 {
                let (buf, flag) = util::TrackedBuf::new(40);
                freed.push(flag);
                futs.push(f.read_at(i * 30, buf));
            }
            for fut in &mut futs {
                let _ = util::poll_once(fut);
            }
            let mut read = b.read(Vec::with_capacity(8));
            let _ = util::poll_once(&mut read);
            let mut write = Box::pin(a.write_all(vec![1; 100]));
            let _ = util::poll_once(&mut write);
            if round % 2 == 0 {
                be.drive();
            }
            drop(futs);
            drop(read);
            drop(write);
            drop((a, b, f));
            // Dropping the last handle drops the backend and everything it holds.
            drop(be);
            assert!(
                freed.iter().all(|f| f.load(Ordering::SeqCst)),
                "a buffer outlived its backend"
            );
        }
        assert_eq!(util::open_fds(), fds_before, "file descriptors leaked");
    });
}
