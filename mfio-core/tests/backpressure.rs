//! Backpressure: a flood of submissions neither panics nor grows the
//! backend's queues beyond their bounds.

mod util;

use std::time::Duration;

use futures::{stream, StreamExt};
use mfio_core::mem::MemBackend;
use mfio_core::{IoBackend, IoBackendExt, IoRead, Packet, PacketIo, Read};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn million_send_io_without_driving_stays_bounded() {
    util::within(LIMIT, || {
        let be = MemBackend::builder()
            .queue_capacity(1024)
            .inline_completion(false)
            .build()
            .expect("backend");
        let f = be.file(vec![5; 64]);
        let mut refused = 0usize;
        let mut accepted = Vec::new();
        for i in 0..1_000_000u64 {
            let mut p: Packet<Read, Vec<u8>> = Packet::new(Vec::with_capacity(8));
            f.send_io(i % 56, p.take_view().expect("view"));
            if p.is_complete() {
                let (outcome, _) = p.try_take().expect("complete");
                let err = outcome.result().expect_err("refused packets fail");
                assert!(err.is_queue_full(), "{err}");
                assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
                refused += 1;
            } else {
                accepted.push(p);
            }
        }
        assert_eq!(accepted.len(), 1024);
        assert_eq!(refused, 1_000_000 - 1024);
        let stats = be.stats();
        assert_eq!((stats.queued, stats.max_queued), (1024, 1024));
        be.drive();
        for mut p in accepted {
            let (outcome, buf) = p.try_take().expect("completed by the drive");
            assert_eq!((outcome.transferred(), buf.as_slice()), (8, &[5u8; 8][..]));
        }
        assert_eq!(be.stats().queued, 0);
    });
}

#[test]
fn million_async_reads_wait_for_slots() {
    util::within(LIMIT, || {
        let be = MemBackend::builder()
            .queue_capacity(256)
            .window(64)
            .inline_completion(false)
            .build()
            .expect("backend");
        let data = util::pattern(4096, 3);
        let f = be.file(data.clone());
        let total = be.block_on(
            stream::iter(0..1_000_000u64)
                .map(|i| {
                    let f = &f;
                    let data = &data;
                    async move {
                        let pos = (i * 37) % 4000;
                        let (r, buf) = f.read_at(pos, Vec::with_capacity(16)).await.into_parts();
                        assert_eq!(r.expect("read"), 16);
                        assert_eq!(buf, &data[pos as usize..pos as usize + 16]);
                        1usize
                    }
                })
                .buffer_unordered(10_000)
                .fold(0, |acc, n| async move { acc + n }),
        );
        assert_eq!(total, 1_000_000);
        let stats = be.stats();
        assert!(stats.max_queued <= 256, "{stats:?}");
        assert!(stats.max_queued > 1, "the queue was never used: {stats:?}");
    });
}

#[test]
fn in_flight_window_bounds_parked_work() {
    util::within(LIMIT, || {
        let be = MemBackend::builder()
            .queue_capacity(32)
            .window(16)
            .delay(Duration::from_micros(100))
            .build()
            .expect("backend");
        let f = be.file(util::pattern(1024, 4));
        let done = be.block_on(
            stream::iter(0..5_000u64)
                .map(|i| {
                    let f = &f;
                    async move { f.read_at(i % 1000, Vec::with_capacity(8)).await.0.expect("read") }
                })
                .buffer_unordered(1_000)
                .fold(0usize, |acc, n| async move { acc + n }),
        );
        assert_eq!(done, 5_000 * 8);
        let stats = be.stats();
        assert!(stats.max_in_flight <= 16 && stats.max_queued <= 32, "{stats:?}");
        assert!(stats.max_in_flight > 1, "the window was never used: {stats:?}");
    });
}
