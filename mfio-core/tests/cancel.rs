//! Cancellation: dropping in-flight futures never frees memory the backend
//! still holds, never loses stream bytes, and leaves nothing behind.

mod util;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mfio_core::mem::MemBackend;
use mfio_core::{IoBackend, IoBackendExt, IoRead, IoReadStream, IoWriteStream, Packet, PacketIo, Read};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn dropped_read_keeps_buffer_until_backend_lets_go() {
    let be = MemBackend::builder()
        .delay(Duration::from_secs(3600))
        .build()
        .expect("backend");
    let f = be.file(vec![7; 64]);
    let (buf, freed) = util::TrackedBuf::new(64);
    let mut fut = f.read_at(0, buf);
    assert!(util::poll_once(&mut fut).is_pending(), "sent, not complete");
    be.drive();
    assert_eq!(
        be.stats().in_flight,
        1,
        "the backend holds the view (parked for an hour)"
    );
    drop(fut);
    assert!(
        !freed.load(Ordering::SeqCst),
        "buffer freed while the backend still holds it"
    );
    let status = be.drive();
    assert!(status.progress);
    assert_eq!(be.stats().in_flight, 0, "cancellation released the parked view early");
    assert!(
        freed.load(Ordering::SeqCst),
        "buffer not freed after the backend let go"
    );
}

/// A delay of `Duration::MAX` parks the view like any other (its end was
/// `Instant + Duration`, which panicked past what an `Instant` holds), and
/// a drop releases it.
#[test]
fn a_read_delayed_by_duration_max_is_parked_and_cancelled() {
    let be = MemBackend::builder().delay(Duration::MAX).build().expect("backend");
    let f = be.file(vec![7; 64]);
    let (buf, freed) = util::TrackedBuf::new(64);
    let mut fut = f.read_at(0, buf);
    assert!(util::poll_once(&mut fut).is_pending(), "sent, not complete");
    be.drive();
    assert_eq!(be.stats().in_flight, 1, "the backend holds the view, parked");
    drop(fut);
    be.drive();
    assert_eq!(be.stats().in_flight, 0, "cancellation released the parked view");
    assert!(
        freed.load(Ordering::SeqCst),
        "buffer not freed after the backend let go"
    );
}

#[test]
fn dropped_before_driving_is_released_on_next_step() {
    let be = MemBackend::builder().inline_completion(false).build().expect("backend");
    let f = be.file(vec![1; 16]);
    let (buf, freed) = util::TrackedBuf::new(16);
    let mut fut = f.read_at(0, buf);
    assert!(util::poll_once(&mut fut).is_pending());
    drop(fut);
    assert!(
        !freed.load(Ordering::SeqCst),
        "the queued view still refers to the buffer"
    );
    be.drive();
    assert!(freed.load(Ordering::SeqCst));
    assert_eq!(be.stats().queued, 0);
}

#[test]
fn borrowed_read_dropped_never_touches_the_slice() {
    let be = MemBackend::builder()
        .delay(Duration::from_millis(1))
        .build()
        .expect("backend");
    let f = be.file(vec![0xAB; 32]);
    let mut dst = [0u8; 32];
    {
        let mut fut = Box::pin(f.read_into_at(0, &mut dst));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        be.drive();
    }
    // The staged read completes later; it must land in the staging buffer only.
    std::thread::sleep(Duration::from_millis(5));
    be.drive();
    assert_eq!(dst, [0u8; 32]);
}

#[test]
fn cancelled_parked_stream_read_loses_no_bytes() {
    util::within(LIMIT, || {
        let be = MemBackend::new().expect("backend");
        let (a, b) = be.stream_pair();
        let mut fut = b.read(Vec::with_capacity(16));
        assert!(util::poll_once(&mut fut).is_pending());
        be.drive();
        assert_eq!(be.stats().in_flight, 1, "read parked, waiting for bytes");
        drop(fut);
        be.drive();
        assert_eq!(be.stats().in_flight, 0, "cancelled read left the backend");
        be.block_on(a.write_all(b"abc".to_vec())).0.expect("write");
        let (n, buf) = be.block_on(b.read(Vec::with_capacity(16))).into_parts();
        assert_eq!((n.expect("read"), buf.as_slice()), (3, &b"abc"[..]));
    });
}

#[test]
fn completed_but_unclaimed_stream_read_puts_bytes_back() {
    util::within(LIMIT, || {
        let be = MemBackend::new().expect("backend");
        let (a, b) = be.stream_pair();
        be.block_on(a.write_all(b"xyz123".to_vec())).0.expect("write");
        let mut fut = b.read(Vec::with_capacity(3));
        assert!(util::poll_once(&mut fut).is_pending());
        be.drive(); // completes the read with "xyz"; nobody polls it
        drop(fut);
        let mut all = Vec::new();
        a.shutdown_write();
        let (res, rest) = be.block_on(b.read_to_end(Vec::new())).into_parts();
        res.expect("read to end");
        all.extend_from_slice(&rest);
        assert_eq!(all, b"xyz123", "bytes of the dropped read were lost or reordered");
    });
}

#[test]
fn unsent_packet_view_dropped_is_aborted() {
    let mut p: Packet<Read, Vec<u8>> = Packet::new(Vec::with_capacity(4));
    let view = p.take_view().expect("view");
    drop(view);
    let (outcome, _) = p.try_take().expect("complete");
    let err = outcome.result().expect_err("nothing was transferred");
    assert!(err.is_aborted());
}

#[test]
fn send_after_queue_refusal_hands_the_packet_back() {
    let be = MemBackend::builder()
        .queue_capacity(1)
        .inline_completion(false)
        .build()
        .expect("backend");
    let f = be.file(vec![0; 8]);
    let mut first: Packet<Read, Vec<u8>> = Packet::new(Vec::with_capacity(8));
    let mut second: Packet<Read, Vec<u8>> = Packet::new(Vec::with_capacity(8));
    f.try_send_io(0, first.take_view().expect("view"))
        .expect("room for one");
    let refused = f
        .try_send_io(0, second.take_view().expect("view"))
        .expect_err("queue full");
    assert_eq!(refused.param, 0);
    assert!(!second.is_complete(), "a refused packet is handed back untouched");
    be.drive();
    f.try_send_io(4, refused.view).expect("room again");
    be.drive();
    assert_eq!(first.try_take().expect("done").0.transferred(), 8);
    assert_eq!(second.try_take().expect("done").0.transferred(), 4);
}

#[test]
fn flush_reaches_the_backend_and_waits_for_earlier_writes() {
    use mfio_core::{IoFlush, PacketIoExt, Write};
    util::within(LIMIT, || {
        let be = MemBackend::builder()
            .delay(Duration::from_millis(30))
            .build()
            .expect("backend");
        let f = be.file(Vec::new());
        // A write sent but not awaited: it completes 30 ms after the backend takes it.
        let mut write = Box::pin(PacketIoExt::<Write, u64>::io(&f, 0, b"durable".to_vec()));
        assert!(util::poll_once(&mut write).is_pending());
        let mut flush = Box::pin(f.flush());
        assert!(util::poll_once(&mut flush).is_pending(), "flush waits for the backend");
        be.block_on(flush).expect("flush");
        // The flush completed only after the earlier write did.
        assert!(
            util::poll_once(&mut write).is_ready(),
            "flush returned before the write completed"
        );
        assert_eq!(f.contents(), b"durable");
    });
}
