//! The UCX backend in one process: two workers, over shared memory and
//! over TCP on loopback. Every body runs under a time bound.
#![cfg(feature = "ucx")]

mod util;

use std::io::ErrorKind;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use futures::future::join_all;
use mfio_core::{
    BufResult, CloseWrite, Flush, IoBackend, IoBackendExt, IoRead, IoReadStream, IoWrite, IoWriteStream, NoPos,
    PacketIoExt,
};
use mfio_net::ucx::{
    AmId, AmProtocol, AmSend, EagerTag, MemoryRegion, Tag, TagInfo, TagMatch, WorkerAddress, MAX_AM_ID,
};
use util::{fold, pair, pattern, within, Lcg, Transport};

const LIMIT: Duration = Duration::from_secs(120);

per_transport!(
    tag_ping_pong,
    tag_reports_sender_and_truncates,
    eager_tag_send_completes_before_its_receive,
    ten_thousand_tagged_receives_in_random_order,
    one_gib_in_tagged_messages,
    stream_bytes_in_order,
    stream_reads_dropped_mid_flight_lose_nothing,
    stream_ends_when_the_peer_closes,
    active_messages_of_every_size,
    active_message_bad_input,
    rma_put_get_at_random_offsets,
    rma_bad_input,
    dropped_tag_receive_is_cancelled,
    dropped_completed_tag_receive_loses_no_message,
    dropped_completed_am_receive_loses_no_message,
    flush_and_close_write,
    short_tag_messages_sent_and_taken_without_packets,
    receive_of_a_long_message_already_in_completes,
    tag_messages_taken_while_arriving_keep_their_order,
    tag_polls_take_messages_as_they_come,
);

fn tag_ping_pong(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        p.both.block_on(async {
            for size in [0usize, 8, 4096, 1 << 20] {
                for round in 0..20u64 {
                    // Both sides at once: a rendezvous send completes only
                    // once the receiver has matched it.
                    let msg = pattern(round, 0, size);
                    let ping = p.ab().write_at(Tag(round), msg.clone());
                    let got = p.b.tag_recv(TagMatch::exact(round), Vec::with_capacity(size));
                    let (BufResult(sent, _), BufResult(got, buf)) = futures::join!(ping, got);
                    assert_eq!(sent.expect("ping"), size);
                    assert_eq!(got.expect("ping received").len, size);
                    assert_eq!(buf, msg);
                    let pong = p.ba().write_at(Tag(round), buf);
                    let got = p.a.read_at(TagMatch::exact(round), Vec::with_capacity(size));
                    let (BufResult(sent, _), BufResult(got, buf)) = futures::join!(pong, got);
                    assert_eq!(sent.expect("pong"), size);
                    assert_eq!(got.expect("pong received"), size);
                    assert_eq!(buf, msg);
                }
            }
        });
    });
}

fn tag_reports_sender_and_truncates(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        p.both.block_on(async {
            let (sent, _) = p.ab().write_at(Tag(0xAB00_0042), vec![7u8; 100]).await.into_parts();
            sent.expect("send");
            // Matches on the upper bits only; reports the full tag.
            let matching = TagMatch {
                tag: 0xAB00_0000,
                mask: 0xFFFF_0000,
            };
            let (got, buf) = p.b.tag_recv(matching, Vec::with_capacity(128)).await.into_parts();
            let info = got.expect("recv");
            assert_eq!((info.tag, info.len, buf.len()), (0xAB00_0042, 100, 100));

            // Too long for the buffer: a typed error, never a silent cut.
            let (sent, _) = p.ab().write_at(Tag(9), vec![1u8; 1000]).await.into_parts();
            sent.expect("send long");
            let (got, buf) =
                p.b.tag_recv(TagMatch::exact(9), Vec::with_capacity(10))
                    .await
                    .into_parts();
            let err = got.expect_err("truncated");
            assert!(err.is_truncated(), "{err}");
            assert_eq!(err.kind(), ErrorKind::InvalidData);
            assert!(buf.is_empty(), "nothing delivered from a truncated message");
            // The same through the plain packet address.
            let (sent, _) = p.ab().write_at(Tag(10), vec![1u8; 1000]).await.into_parts();
            sent.expect("send long");
            let (got, _) =
                p.b.read_at(TagMatch::exact(10), Vec::with_capacity(999))
                    .await
                    .into_parts();
            assert!(got.expect_err("truncated").is_truncated());
            // And the next message is whole.
            let (sent, _) = p.ab().write_at(Tag(11), b"after".to_vec()).await.into_parts();
            sent.expect("send");
            let (got, buf) =
                p.b.read_at(TagMatch::exact(11), Vec::with_capacity(16))
                    .await
                    .into_parts();
            assert_eq!((got.expect("recv"), &buf[..]), (5, &b"after"[..]));
        });
    });
}

fn eager_tag_send_completes_before_its_receive(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        let size = 64 << 10;
        wire_up(&p);

        // Only the sender driven: an eager send of 64 KiB completes ...
        let eager = pattern(6, 0, size);
        let (sent, _) = p.a.block_on(p.ab().write_at(EagerTag(3), eager.clone())).into_parts();
        assert_eq!(sent.expect("eager send"), size);
        // ... an ordinary one waits for the receiver (UCX's rendezvous).
        let msg = pattern(5, 0, size);
        let mut ordinary = pin!(p.ab().write_at(Tag(2), msg.clone()));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let until = std::time::Instant::now() + Duration::from_millis(200);
        while std::time::Instant::now() < until {
            assert!(
                ordinary.as_mut().poll(&mut cx).is_pending(),
                "a rendezvous send finished alone"
            );
            p.a.drive_now();
        }

        p.both.block_on(async {
            let got = p.b.tag_recv(TagMatch::exact(3), Vec::with_capacity(size));
            let (got, buf) = got.await.into_parts();
            assert_eq!(got.expect("eager receive"), TagInfo { tag: 3, len: size });
            assert_eq!(buf, eager);
            let got = p.b.tag_recv(TagMatch::exact(2), Vec::with_capacity(size));
            let (BufResult(sent, _), BufResult(got, buf)) = futures::join!(ordinary, got);
            assert_eq!(sent.expect("ordinary send"), size);
            assert_eq!(got.expect("ordinary receive").len, size);
            assert_eq!(buf, msg);
        });
    });
}

fn ten_thousand_tagged_receives_in_random_order(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        const N: u64 = 10_000;
        let mut order: Vec<u64> = (0..N).collect();
        let mut rng = Lcg(7);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        p.both.block_on(async {
            let receives = join_all((0..N).map(|tag| p.b.tag_recv(TagMatch::exact(tag), Vec::with_capacity(8))));
            let sends = async {
                for tag in &order {
                    let (sent, _) = p
                        .ab()
                        .write_at(Tag(*tag), tag.to_le_bytes().to_vec())
                        .await
                        .into_parts();
                    sent.expect("send");
                }
            };
            let (results, ()) = futures::join!(receives, sends);
            for (tag, BufResult(info, buf)) in results.into_iter().enumerate() {
                let info = info.expect("receive");
                assert_eq!((info.tag, info.len), (tag as u64, 8));
                assert_eq!(buf, (tag as u64).to_le_bytes());
            }
        });
        assert_eq!(p.b.in_flight(), 0);
    });
}

fn one_gib_in_tagged_messages(t: Transport) {
    within(Duration::from_secs(600), move || {
        let p = pair(t);
        const CHUNK: usize = 64 << 20;
        const CHUNKS: u64 = 16;
        p.both.block_on(async {
            let (mut sent_sum, mut got_sum) = (0u64, 0u64);
            let mut recv_buf = Vec::with_capacity(CHUNK);
            for i in 0..CHUNKS {
                let chunk = pattern(i, i * CHUNK as u64, CHUNK);
                sent_sum = fold(sent_sum, &chunk);
                recv_buf.clear();
                let recv = p.b.tag_recv(TagMatch::exact(i), recv_buf);
                let send = p.ab().write_at(Tag(i), chunk);
                let (got, sent) = futures::join!(recv, send);
                assert_eq!(sent.0.expect("send"), CHUNK);
                let BufResult(info, buf) = got;
                assert_eq!(info.expect("recv").len, CHUNK);
                got_sum = fold(got_sum, &buf);
                recv_buf = buf;
            }
            assert_eq!(got_sum, sent_sum, "1 GiB arrived intact");
        });
    });
}

fn stream_bytes_in_order(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        let total: usize = 3 << 20;
        let data = pattern(1, 0, total);
        p.both.block_on(async {
            let writer = async {
                let mut rng = Lcg(3);
                let mut at = 0;
                while at < total {
                    let n = (1 + rng.below(200_000) as usize).min(total - at);
                    let (r, _) = p.ab().write_all(data[at..at + n].to_vec()).await.into_parts();
                    r.expect("stream write");
                    at += n;
                }
            };
            let reader = async {
                let mut got = Vec::with_capacity(total);
                let mut rng = Lcg(5);
                while got.len() < total {
                    let want = 1 + rng.below(100_000) as usize;
                    let (n, buf) = p.ba().read(Vec::with_capacity(want)).await.into_parts();
                    let n = n.expect("stream read");
                    assert!(n > 0 && n <= want);
                    got.extend_from_slice(&buf);
                }
                got
            };
            let ((), got) = futures::join!(writer, reader);
            assert!(got == data, "stream bytes arrive whole and in order");
        });
    });
}

fn stream_reads_dropped_mid_flight_lose_nothing(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        let total: usize = 256 << 10;
        let data = pattern(9, 0, total);
        p.both.block_on(async {
            let mut got = Vec::with_capacity(total);
            let mut sent = 0;
            let mut rng = Lcg(11);
            let mut round = 0u64;
            while got.len() < total {
                round += 1;
                if sent < total {
                    let n = (1 + rng.below(4096) as usize).min(total - sent);
                    let (r, _) = p.ab().write_all(data[sent..sent + n].to_vec()).await.into_parts();
                    r.expect("write");
                    sent += n;
                }
                // Start a read, let it make some progress, drop it: its
                // bytes (if it took any) must come back to the next read.
                {
                    let mut read = pin!(p.ba().read(Vec::with_capacity(1 + rng.below(3000) as usize)));
                    for _ in 0..rng.below(3) {
                        if let Poll::Ready(BufResult(n, buf)) = futures::poll!(read.as_mut()) {
                            let n = n.expect("read");
                            got.extend_from_slice(&buf[..n]);
                            break;
                        }
                        p.both.drive();
                    }
                }
                if round % 3 == 0 {
                    let (n, buf) = p.ba().read(Vec::with_capacity(2048)).await.into_parts();
                    n.expect("read");
                    got.extend_from_slice(&buf);
                }
            }
            assert_eq!(got.len(), total);
            assert!(got == data, "no byte lost or reordered by dropped reads");
        });
    });
}

fn stream_ends_when_the_peer_closes(t: Transport) {
    within(LIMIT, move || {
        let mut p = pair(t);
        let (ab, ba) = p.take_endpoints();
        p.both.block_on(async {
            let (r, _) = ab.write_all(b"last words".to_vec()).await.into_parts();
            r.expect("write");
            let closing = ab.close();
            let reading = async {
                let (r, buf) = ba.read_exact(Vec::with_capacity(10)).await.into_parts();
                r.expect("the bytes sent before the close");
                assert_eq!(&buf[..], b"last words");
                let (n, _) = ba.read(Vec::with_capacity(10)).await.into_parts();
                assert_eq!(n.expect("end of stream"), 0);
            };
            let (closed, ()) = futures::join!(closing, reading);
            closed.expect("graceful close");
            // Writing to a peer that left fails with a typed error.
            let (r, _) = ba.write_all(b"anyone?".to_vec()).await.into_parts();
            let err = r.expect_err("peer gone");
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::NotConnected | ErrorKind::BrokenPipe
                ),
                "{err}"
            );
            // Closing an endpoint whose peer left succeeds: it is closed.
            ba.close().await.expect("close after the peer left");
        });
    });
}

fn active_messages_of_every_size(t: Transport) {
    within(Duration::from_secs(300), move || {
        let p = pair(t);
        let max_header = p.a.max_am_header();
        assert!(max_header >= 64, "UCX takes headers of {max_header} bytes");
        p.b.listen_am(3).expect("listen");
        let sizes = [0usize, 1, 100, 8191, 8192, 8193, 65_536, 1 << 20, 16 << 20];
        p.both.block_on(async {
            for (i, &size) in sizes.iter().enumerate() {
                for protocol in [AmProtocol::Auto, AmProtocol::Eager, AmProtocol::Rendezvous] {
                    for header_len in [0usize, 1, 64, max_header] {
                        let header = pattern(i as u64, 7, header_len);
                        let data = pattern(size as u64, 0, size);
                        let to = AmSend {
                            id: 3,
                            header: header.clone(),
                            protocol,
                        };
                        // Sent first, so the message arrives before the
                        // receive is posted; a rendezvous send completes
                        // once a receive fetched the data, so both are awaited together.
                        let send = p.ab().io(to, data.clone());
                        let recv = async {
                            for _ in 0..3 {
                                util::yield_now().await;
                            }
                            p.b.am_recv(3, Vec::with_capacity(size)).await
                        };
                        let ((sent, _), got) = futures::join!(send, recv);
                        sent.result().expect("AM send");
                        let (got, buf) = got.into_parts();
                        let info = got.unwrap_or_else(|e| panic!("AM {size} B {protocol:?}: {e}"));
                        assert_eq!(info.len, size);
                        assert_eq!(info.header, header);
                        assert!(buf == data, "AM data of {size} B ({protocol:?})");
                    }
                }
            }
            // Receive posted first, then sent: rendezvous lands straight in it.
            let size = 4 << 20;
            let data = pattern(77, 0, size);
            let recv = p.b.read_at(AmId(3), Vec::with_capacity(size));
            let send = p.ab().io(AmSend::new(3, b"h".to_vec()), data.clone());
            let (got, (sent, _)) = futures::join!(recv, send);
            sent.result().expect("send");
            let (n, buf) = got.into_parts();
            assert_eq!(n.expect("recv"), size);
            assert!(buf == data);
            // Longer than the buffer: typed, and the next message is whole.
            let (sent, _) = p.ab().io(AmSend::new(3, Vec::new()), vec![5u8; 5000]).await;
            sent.result().expect("send");
            let (got, _) = p.b.am_recv(3, Vec::with_capacity(100)).await.into_parts();
            assert!(got.expect_err("truncated").is_truncated());
            let (sent, _) = p.ab().io(AmSend::new(3, b"ok".to_vec()), vec![6u8; 50]).await;
            sent.result().expect("send");
            let (got, buf) = p.b.am_recv(3, Vec::with_capacity(100)).await.into_parts();
            assert_eq!(got.expect("recv").header, b"ok");
            assert_eq!(buf, vec![6u8; 50]);
        });
    });
}

fn active_message_bad_input(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        let max_header = p.a.max_am_header();
        p.both.block_on(async {
            let (sent, _) = p.ab().io(AmSend::new(MAX_AM_ID + 1, Vec::new()), vec![1u8]).await;
            assert_eq!(sent.result().expect_err("id").kind(), ErrorKind::InvalidInput);
            let (sent, _) = p.ab().io(AmSend::new(1, vec![0u8; max_header + 1]), vec![1u8]).await;
            assert_eq!(sent.result().expect_err("header").kind(), ErrorKind::InvalidInput);
            let (got, _) = p.b.am_recv(u16::MAX, Vec::with_capacity(1)).await.into_parts();
            assert_eq!(got.expect_err("id").kind(), ErrorKind::InvalidInput);
            assert_eq!(
                p.b.listen_am(MAX_AM_ID + 1).expect_err("id").kind(),
                ErrorKind::InvalidInput
            );
            // A message to an id nobody listens on is dropped by UCX, and
            // nothing else is disturbed.
            let (sent, _) = p.ab().io(AmSend::new(900, b"x".to_vec()), vec![1u8; 10]).await;
            sent.result().expect("send to an unknown id");
            let (sent, _) = p.ab().write_at(Tag(1), b"still fine".to_vec()).await.into_parts();
            sent.expect("send");
            let (got, buf) =
                p.b.read_at(TagMatch::exact(1), Vec::with_capacity(32))
                    .await
                    .into_parts();
            assert_eq!((got.expect("recv"), &buf[..]), (10, &b"still fine"[..]));
        });
        // A malformed worker address never reaches UCX.
        let good = p.b.address();
        let bytes = good.as_bytes();
        for bad in [
            &bytes[..bytes.len() - 1],
            &bytes[..3],
            &[][..],
            b"definitely not an address",
        ] {
            assert_eq!(
                WorkerAddress::from_bytes(bad).expect_err("bad").kind(),
                ErrorKind::InvalidData
            );
        }
        let mut flipped = bytes.to_vec();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        assert_eq!(
            WorkerAddress::from_bytes(&flipped).expect_err("flipped").kind(),
            ErrorKind::InvalidData
        );
        assert_eq!(WorkerAddress::from_bytes(bytes).expect("intact"), good);
    });
}

fn rma_put_get_at_random_offsets(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        const SIZE: usize = 1 << 20;
        let region = MemoryRegion::new(p.b.context(), SIZE).expect("register");
        let key = p.ab().remote_key(region.remote_key()).expect("unpack");
        assert_eq!(key.len(), SIZE as u64);
        let mut expect = vec![0u8; SIZE];
        let mut rng = Lcg(21);
        p.both.block_on(async {
            for round in 0..200u64 {
                let len = 1 + rng.below(20_000) as usize;
                let at = rng.below((SIZE - len) as u64);
                let data = pattern(round, at, len);
                let (n, _) = key.write_at(at, data.clone()).await.into_parts();
                assert_eq!(n.expect("put"), len);
                expect[at as usize..at as usize + len].copy_from_slice(&data);
                if round % 10 == 0 {
                    key.io(Flush, Vec::new()).await.0.result().expect("flush");
                    let mut whole = vec![0u8; SIZE];
                    region.read(0, &mut whole).expect("local read");
                    assert!(whole == expect, "puts landed where they were aimed (round {round})");
                }
            }
            for _ in 0..200 {
                let len = 1 + rng.below(50_000) as usize;
                let at = rng.below((SIZE - len) as u64);
                let (n, buf) = key.read_at(at, Vec::with_capacity(len)).await.into_parts();
                assert_eq!(n.expect("get"), len);
                assert!(buf[..] == expect[at as usize..at as usize + len]);
            }
            // Local writes are seen by gets.
            region.write(100, b"local").expect("local write");
            let (n, buf) = key.read_at(100, Vec::with_capacity(5)).await.into_parts();
            assert_eq!((n.expect("get"), &buf[..]), (5, &b"local"[..]));
            // Through the std::io-style layers: read_exact_at at the end.
            let (r, buf) = key
                .read_exact_at(SIZE as u64 - 3, Vec::with_capacity(3))
                .await
                .into_parts();
            r.expect("exact");
            assert_eq!(buf[..], expect[SIZE - 3..]);
        });
    });
}

fn rma_bad_input(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        let region = MemoryRegion::new(p.b.context(), 4096).expect("register");
        let packed = region.remote_key();
        for cut in [0, 5, packed.len() / 2, packed.len() - 1] {
            let err = p.ab().remote_key(&packed[..cut]).expect_err("truncated key");
            assert_eq!(err.kind(), ErrorKind::InvalidData, "cut at {cut}");
        }
        let mut flipped = packed.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x10;
        assert_eq!(
            p.ab().remote_key(&flipped).expect_err("flipped").kind(),
            ErrorKind::InvalidData
        );
        let key = p.ab().remote_key(packed).expect("intact");
        p.both.block_on(async {
            for (at, len) in [(4096u64, 1usize), (4000, 97), (u64::MAX - 1, 4), (0, 4097)] {
                let (r, _) = key.write_at(at, vec![0u8; len]).await.into_parts();
                assert_eq!(
                    r.expect_err("put outside").kind(),
                    ErrorKind::InvalidInput,
                    "put at {at}+{len}"
                );
                let (r, _) = key.read_at(at, Vec::with_capacity(len)).await.into_parts();
                assert_eq!(
                    r.expect_err("get outside").kind(),
                    ErrorKind::InvalidInput,
                    "get at {at}+{len}"
                );
            }
            let mut outside = vec![0u8; 2];
            assert_eq!(
                region.read(4095, &mut outside).expect_err("local").kind(),
                ErrorKind::InvalidInput
            );
            // The region is untouched and still reachable.
            let (r, buf) = key.read_at(0, Vec::with_capacity(4096)).await.into_parts();
            assert_eq!(r.expect("get"), 4096);
            assert!(buf.iter().all(|b| *b == 0));
        });
    });
}

fn dropped_tag_receive_is_cancelled(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        for _ in 0..100 {
            let mut recv = Box::pin(p.b.tag_recv(TagMatch::exact(1234), Vec::with_capacity(64)));
            let waker = futures::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(recv.as_mut().poll(&mut cx).is_pending());
            assert_eq!(p.b.in_flight(), 1);
            drop(recv);
            p.both.drive();
            assert_eq!(
                p.b.in_flight(),
                0,
                "the UCX receive was cancelled and its buffer released"
            );
        }
        // A later message with that tag goes to a later receive.
        p.both.block_on(async {
            let (sent, _) = p.ab().write_at(Tag(1234), b"late".to_vec()).await.into_parts();
            sent.expect("send");
            let (got, buf) =
                p.b.read_at(TagMatch::exact(1234), Vec::with_capacity(8))
                    .await
                    .into_parts();
            assert_eq!((got.expect("recv"), &buf[..]), (4, &b"late"[..]));
        });
    });
}

/// A receive that took a message and was then dropped unclaimed gives the
/// message back: the next matching receive takes it, in order, whatever
/// its size (none, eager, rendezvous); a returned message longer than the
/// next buffer is a typed truncation, as from UCX.
fn dropped_completed_tag_receive_loses_no_message(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        for (round, size) in [0usize, 5, 100, 1 << 20].into_iter().enumerate() {
            let tag = 700 + round as u64;
            let (first, second) = (pattern(tag, 0, size), pattern(tag, 1, size));
            p.both.block_on(async {
                let mut taken = Box::pin(p.b.tag_recv(TagMatch::exact(tag), Vec::with_capacity(size)));
                assert!(futures::poll!(taken.as_mut()).is_pending(), "posted");
                // A rendezvous send completes once a receive matched it:
                // both messages are sent while the receives go on.
                let send = async {
                    for m in [first.clone(), second.clone()] {
                        let (sent, _) = p.ab().write_at(Tag(tag), m).await.into_parts();
                        sent.expect("send");
                    }
                };
                let receive = async {
                    // The first message completes the posted receive in the
                    // worker; its caller leaves without it.
                    while p.b.in_flight() > 0 {
                        util::yield_now().await;
                    }
                    drop(taken);
                    let (got, buf) =
                        p.b.tag_recv(TagMatch::exact(tag), Vec::with_capacity(size))
                            .await
                            .into_parts();
                    let got = got.expect("the returned message");
                    assert_eq!((got.tag, got.len), (tag, size));
                    assert!(buf == first, "the first message, whole");
                    let (got, buf) =
                        p.b.read_at(TagMatch::any(), Vec::with_capacity(size))
                            .await
                            .into_parts();
                    assert_eq!(got.expect("the second message"), size);
                    assert!(buf == second, "then the second");
                };
                futures::join!(send, receive);
            });
        }
        // Returned, then too long for the next receive: typed, discarded.
        p.both.block_on(async {
            let mut taken = Box::pin(p.b.tag_recv(TagMatch::exact(9), Vec::with_capacity(64)));
            assert!(futures::poll!(taken.as_mut()).is_pending());
            let (sent, _) = p.ab().write_at(Tag(9), vec![1u8; 64]).await.into_parts();
            sent.expect("send");
            while p.b.in_flight() > 0 {
                util::yield_now().await;
            }
            drop(taken);
            let (got, _) =
                p.b.read_at(TagMatch::exact(9), Vec::with_capacity(8))
                    .await
                    .into_parts();
            assert!(got.expect_err("truncated").is_truncated());
            let (sent, _) = p.ab().write_at(Tag(9), b"next".to_vec()).await.into_parts();
            sent.expect("send");
            let (got, buf) =
                p.b.read_at(TagMatch::exact(9), Vec::with_capacity(8))
                    .await
                    .into_parts();
            assert_eq!((got.expect("next"), &buf[..]), (4, &b"next"[..]));
        });
    });
}

/// As for tags: an active message a receive took, dropped unclaimed, goes
/// to the next receive of its id, header and data, whatever its size.
fn dropped_completed_am_receive_loses_no_message(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        p.b.listen_am(5).expect("listen");
        for (round, size) in [0usize, 5, 100, 1 << 20].into_iter().enumerate() {
            let (header, data) = (pattern(round as u64, 9, 16), pattern(round as u64, 0, size));
            p.both.block_on(async {
                // A bare packet: its completion is seen without taking it.
                let mut taken = mfio_core::Packet::<mfio_core::Read, Vec<u8>>::new(Vec::with_capacity(size));
                let view = taken.take_view().expect("view");
                mfio_core::PacketIo::try_send_io(&p.b, AmId(5), view).expect("posted");
                let send = async {
                    let (sent, _) = p.ab().io(AmSend::new(5, header.clone()), data.clone()).await;
                    sent.result().expect("send");
                };
                let receive = async {
                    while !taken.is_complete() {
                        util::yield_now().await;
                    }
                    drop(taken);
                    let (got, buf) = p.b.am_recv(5, Vec::with_capacity(size)).await.into_parts();
                    let got = got.expect("the returned message");
                    assert_eq!((&got.header, got.len), (&header, size));
                    assert!(buf == data, "its data, whole");
                };
                futures::join!(send, receive);
            });
        }
    });
}

use std::future::Future;

fn flush_and_close_write(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        p.both.block_on(async {
            let (r, _) = p.ab().write_all(b"before flush".to_vec()).await.into_parts();
            r.expect("write");
            p.ab().io(Flush, Vec::new()).await.0.result().expect("flush");
            let (r, buf) = p.ba().read_exact(Vec::with_capacity(12)).await.into_parts();
            r.expect("read");
            assert_eq!(&buf[..], b"before flush");
            let closing = p.ab().io(CloseWrite, Vec::new());
            let reading = p.ba().read(Vec::with_capacity(4));
            let ((closed, _), BufResult(n, _)) = futures::join!(closing, reading);
            closed.result().expect("close");
            assert_eq!(n.expect("end of stream"), 0);
            // Reads after our own close end; writes fail.
            let (n, _) = p.ab().read_at(NoPos, Vec::with_capacity(4)).await.into_parts();
            assert_eq!(n.expect("ended"), 0);
            let (r, _) = p.ab().write_at(NoPos, b"x".to_vec()).await.into_parts();
            assert_eq!(r.expect_err("closed").kind(), ErrorKind::NotConnected);
        });
    });
}

/// Worker `a`, with an hour's spin (giving the core away now and then
/// after `yield_after`, if given) and a receive of tag 7 pending (polled
/// once, so UCX holds it); `meanwhile` runs, then worker `b` sends `ping`
/// and the receive must take it.
fn with_a_receive_pending_under_an_hours_spin(
    yield_after: Option<Duration>,
    meanwhile: impl FnOnce(&mfio_net::ucx::Worker),
) {
    with_a_receive_pending_under_a_spin(Duration::from_secs(3600), yield_after, meanwhile);
}

/// As [`with_a_receive_pending_under_an_hours_spin`], with a spin of `spin`.
fn with_a_receive_pending_under_a_spin(
    spin: Duration,
    yield_after: Option<Duration>,
    meanwhile: impl FnOnce(&mfio_net::ucx::Worker),
) {
    let ctx = util::context(Transport::Sm, false);
    let a = mfio_net::ucx::Worker::builder(&ctx)
        .spin(spin)
        .yield_when_idle(yield_after.is_some())
        .yield_after(yield_after.unwrap_or_default())
        .build()
        .expect("worker a");
    let b = ctx.worker().expect("worker b");
    let ba = b.connect(&a.address()).expect("connect b->a");
    let mut recv = pin!(a.tag_recv(TagMatch::exact(7), Vec::with_capacity(4)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(recv.as_mut().poll(&mut cx).is_pending(), "nothing was sent yet");
    meanwhile(&a);
    let (sent, _) = b.block_on(ba.write_at(Tag(7), b"ping".to_vec())).into_parts();
    sent.expect("send");
    let (info, got) = a.block_on(recv).into_parts();
    assert_eq!(info.expect("receive").len, 4);
    assert_eq!(got, b"ping");
    let both = mfio_backends::Composite::new(vec![Box::new(a.clone()), Box::new(b.clone())]).expect("composite");
    both.block_on(ba.close()).expect("close");
}

/// A wake from another thread ends the worker's spin: with a receive
/// pending and an hour's spin, a `block_on` whose task another thread
/// wakes returns when it is woken (it waited for the whole spin before),
/// and the receive then takes its message.
#[test]
fn a_wake_from_another_thread_ends_the_spin() {
    within(LIMIT, || {
        with_a_receive_pending_under_an_hours_spin(Some(Duration::ZERO), util::wait_for_a_wake_from_another_thread);
    });
}

/// A spin that never gives the core away (`yield_when_idle(false)`) still
/// ends on a wake from another thread.
#[test]
fn a_spin_that_never_yields_still_ends_on_a_wake() {
    within(LIMIT, || {
        with_a_receive_pending_under_an_hours_spin(None, util::wait_for_a_wake_from_another_thread);
    });
}

/// Nor does one that would yield only after an hour (`yield_after`): the
/// clock and the wake are checked from the start, not from the first yield.
#[test]
fn a_spin_that_yields_only_after_an_hour_still_ends_on_a_wake() {
    within(LIMIT, || {
        with_a_receive_pending_under_an_hours_spin(
            Some(Duration::from_secs(3600)),
            util::wait_for_a_wake_from_another_thread,
        );
    });
}

/// A spin and a yield delay of `Duration::MAX` ("no limit") are spins
/// like any other: a wake from another thread ends them, on the worker and
/// on a composite of it (which spins for its members' longest budget). The
/// end of the spin was `Instant + Duration`, which panics past what an
/// `Instant` holds.
#[test]
fn a_spin_of_duration_max_ends_on_a_wake() {
    within(LIMIT, || {
        with_a_receive_pending_under_a_spin(Duration::MAX, Some(Duration::MAX), |a| {
            util::wait_for_a_wake_from_another_thread(a);
            let alone = mfio_backends::Composite::new(vec![Box::new(a.clone())]).expect("composite");
            util::wait_for_a_wake_from_another_thread(&alone);
        });
    });
}

/// Runs `f` on this thread pinned to the core it is on, while a thread
/// pinned to the same core spins without yielding; restores this
/// thread's cores after.
fn beside_a_busy_thread_on_this_core<T>(f: impl FnOnce() -> T) -> T {
    use rustix::thread::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
    let before = sched_getaffinity(None).expect("this thread's cores");
    let mut one = CpuSet::new();
    one.set(sched_getcpu());
    sched_setaffinity(None, &one).expect("pin this thread");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            sched_setaffinity(None, &one).expect("pin the busy thread");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    let out = f();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.join().expect("the busy thread");
    sched_setaffinity(None, &before).expect("unpin this thread");
    out
}

/// A worker whose spin yields, on a core where another thread spins,
/// says its core is shared (`core_shared_lately`): its yields give the
/// core to that thread. A fresh worker says no.
#[test]
fn a_spin_that_yields_to_another_thread_says_its_core_is_shared() {
    within(LIMIT, || {
        with_a_receive_pending_under_a_spin(Duration::from_millis(20), Some(Duration::ZERO), |a| {
            assert!(!a.core_shared_lately(), "a fresh worker");
            let shared = beside_a_busy_thread_on_this_core(|| {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while !a.core_shared_lately() && std::time::Instant::now() < deadline {
                    a.drive();
                }
                a.core_shared_lately()
            });
            assert!(shared, "30 s of yields to a busy thread on the core");
        });
    });
}

/// A spin that does not yield has nothing to judge by: its worker never
/// says its core is shared, busy as the core is.
#[test]
fn a_spin_that_never_yields_does_not_say_its_core_is_shared() {
    within(LIMIT, || {
        with_a_receive_pending_under_a_spin(Duration::from_millis(20), None, |a| {
            beside_a_busy_thread_on_this_core(|| {
                let until = std::time::Instant::now() + Duration::from_millis(300);
                while std::time::Instant::now() < until {
                    a.drive();
                    assert!(!a.core_shared_lately());
                }
            });
        });
    });
}

/// A driving step for a caller with work of its own ready to run
/// (`drive_now`) does not spend the worker's spin, however long: with a
/// receive pending and an hour's spin, it returns, and the receive then
/// takes its message.
#[test]
fn a_step_without_a_spin_returns_with_a_receive_pending() {
    within(LIMIT, || {
        with_a_receive_pending_under_an_hours_spin(Some(Duration::ZERO), |a| {
            for _ in 0..3 {
                a.drive_now();
            }
        });
    });
}

/// The packetless pair: `try_tag_send` sends short messages at once (and
/// says no, sending nothing, when it would have to wait), `try_tag_recv`
/// takes what has arrived; both keep UCX's order and exact bytes, and a
/// message they cannot handle is left for the packet path.
fn short_tag_messages_sent_and_taken_without_packets(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        wire_up(&p);
        let mut buf = Vec::with_capacity(4096);
        assert_eq!(p.b.try_tag_recv(TagMatch::any(), &mut buf).expect("nothing"), None);

        // Sent at once until the way to the peer is full (nobody drives
        // the receiver meanwhile), then refused, with nothing sent.
        let sizes = [0usize, 8, 1000, 3];
        let mut sent = Vec::new();
        let mut refused = false;
        for i in 0..2_000_000u64 {
            let msg = pattern(i, 0, sizes[i as usize % sizes.len()]);
            if !p.ab().try_tag_send(Tag(0x5000 + i), &msg).expect("send now") {
                refused = true;
                break;
            }
            sent.push(msg);
        }
        assert!(refused, "{} messages sent at once and never a wait", sent.len());
        // Too long for UCX's short protocol: never sent at once.
        assert!(!p.ab().try_tag_send(Tag(7), &vec![7u8; 1 << 20]).expect("long"));

        // Taken in order, exact, without packets; what has not arrived yet
        // is `None` until the worker progresses.
        let mut next = 0usize;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while next < sent.len() {
            assert!(std::time::Instant::now() < deadline, "{next} of {} taken", sent.len());
            match p
                .b
                .try_tag_recv(
                    TagMatch {
                        tag: 0x5000,
                        mask: !0xFFFF_FFFF,
                    },
                    &mut buf,
                )
                .expect("take")
            {
                Some(info) => {
                    assert_eq!(
                        info,
                        TagInfo {
                            tag: 0x5000 + next as u64,
                            len: sent[next].len()
                        }
                    );
                    assert!(buf == sent[next], "message {next}");
                    next += 1;
                }
                None => {
                    p.b.drive_now();
                    p.a.drive_now();
                }
            }
        }
        // Nothing more came (the refused and the long message were not sent).
        for _ in 0..100 {
            p.b.drive_now();
            p.a.drive_now();
        }
        assert_eq!(p.b.try_tag_recv(TagMatch::any(), &mut buf).expect("nothing more"), None);

        // Given back by a dropped receive: first, to this receive too; one
        // given back under another tag holds nothing up.
        for (tag, text) in [(21u64, &b"elsewhere"[..]), (20, b"first")] {
            p.both.block_on(async {
                let mut taken = Box::pin(p.b.tag_recv(TagMatch::exact(tag), Vec::with_capacity(64)));
                assert!(futures::poll!(taken.as_mut()).is_pending(), "posted");
                let (sent, _) = p.ab().write_at(Tag(tag), text.to_vec()).await.into_parts();
                sent.expect("send");
                while p.b.in_flight() > 0 {
                    util::yield_now().await;
                }
                drop(taken);
            });
        }
        let (sent, _) = p
            .both
            .block_on(p.ab().write_at(Tag(22), b"second".to_vec()))
            .into_parts();
        sent.expect("send");
        let (mut first, mut second) = (None, None);
        let mut tiny = Vec::with_capacity(2);
        for _ in 0..1000 {
            p.b.drive_now();
            // Too long for `tiny`: left where it is.
            assert_eq!(
                p.b.try_tag_recv(TagMatch::exact(21), &mut tiny).expect("too long"),
                None
            );
            let twenty_or_22 = TagMatch { tag: 20, mask: !2 };
            match p.b.try_tag_recv(twenty_or_22, &mut buf).expect("take") {
                Some(info) if first.is_none() => first = Some((info, buf.clone())),
                Some(info) => second = Some((info, buf.clone())),
                None if first.is_some() && second.is_some() => break,
                None => {}
            }
        }
        assert_eq!(
            first,
            Some((TagInfo { tag: 20, len: 5 }, b"first".to_vec())),
            "the given-back one first"
        );
        assert_eq!(second, Some((TagInfo { tag: 22, len: 6 }, b"second".to_vec())));
        received_truncated(&p, 21, 2);

        // Longer than the buffer: left for a receive, which says so.
        let (sent, _) = p.both.block_on(p.ab().write_at(Tag(8), vec![2u8; 100])).into_parts();
        sent.expect("send");
        let mut small = Vec::with_capacity(10);
        for _ in 0..100 {
            p.b.drive_now();
            assert_eq!(
                p.b.try_tag_recv(TagMatch::exact(8), &mut small).expect("too long"),
                None
            );
        }
        received_truncated(&p, 8, 10);
    });
}

/// A long message that `try_tag_recv` takes while its pieces still arrive
/// goes with the buffer's memory and comes, whole, to the next receive;
/// nothing sent after it is taken before it, by either kind of receive.
fn tag_messages_taken_while_arriving_keep_their_order(t: Transport) {
    within(LIMIT, move || {
        // Little room on the way, so that the long message's pieces cannot
        // all be in flight at once: some are in, the rest wait for the
        // sender's next progress. (In code a transport setting is named as
        // its table names it: `MM_FIFO_SIZE` is `UCX_POSIX_FIFO_SIZE` and
        // `UCX_SYSV_FIFO_SIZE`, `SNDBUF` is `UCX_TCP_SNDBUF`.)
        let p = util::pair_with(t, &[("MM_FIFO_SIZE", "4"), ("SNDBUF", "16k"), ("RCVBUF", "16k")]);
        wire_up(&p);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut taken_in_pieces = 0;
        for round in 0..20u64 {
            let base = (round + 1) << 16;
            let matching = TagMatch { tag: base, mask: !0xFF };
            let big = pattern(round, 0, (160 << 10) + round as usize * 4099);
            let shorts: Vec<Vec<u8>> = (1..=4).map(|i| pattern(round, i, 16 * i as usize)).collect();
            // The long one eagerly (in pieces), the short ones behind it.
            let mut sends = vec![Box::pin(p.ab().write_at(EagerTag(base), big.clone()))];
            for (i, m) in shorts.iter().enumerate() {
                sends.push(Box::pin(p.ab().write_at(EagerTag(base + 1 + i as u64), m.clone())));
            }
            // Posted (a send may finish at once).
            let mut sent = Vec::new();
            sends.retain_mut(|s| match s.as_mut().poll(&mut cx) {
                Poll::Ready(BufResult(res, _)) => {
                    sent.push(res);
                    false
                }
                Poll::Pending => true,
            });
            for _ in 0..4 {
                p.a.drive_now();
            }
            // Part of it in.
            p.b.drive_now();
            let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut buf = Vec::with_capacity(256 << 10);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while got.len() < 5 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: {} of 5",
                    got.len()
                );
                let tried = p.b.try_tag_recv(matching, &mut buf).expect("take");
                match tried {
                    Some(info) => {
                        assert_eq!(info.len, buf.len());
                        got.push((info.tag, buf.clone()));
                    }
                    None if buf.capacity() == 0 => {
                        taken_in_pieces += 1;
                        // It comes next, whole, to whichever kind of
                        // receive asks first; nothing overtakes it.
                        // (Every other round a packet receive, or a poll,
                        // is posted at once: it waits for the message to
                        // land.)
                        let mut next = None;
                        for _ in 0..if round % 2 == 0 { 10 } else { 0 } {
                            p.a.drive_now();
                            p.b.drive_now();
                            let mut other = Vec::with_capacity(256 << 10);
                            if let Some(info) = p.b.try_tag_recv(matching, &mut other).expect("next") {
                                next = Some((info.tag, other));
                                break;
                            }
                        }
                        let next = next.unwrap_or_else(|| {
                            if round % 4 == 1 {
                                // A poll: it waits for the message to land.
                                let mut whole = Vec::with_capacity(256 << 10);
                                let info = p
                                    .both
                                    .block_on(std::future::poll_fn(|cx| p.b.poll_tag_recv(matching, &mut whole, cx)))
                                    .expect("the message taken in pieces, polled");
                                return (info.tag, whole);
                            }
                            let (info, whole) = p
                                .both
                                .block_on(p.b.tag_recv(matching, Vec::with_capacity(256 << 10)))
                                .into_parts();
                            (info.expect("the message taken in pieces").tag, whole)
                        });
                        got.push(next);
                        buf = Vec::with_capacity(256 << 10);
                    }
                    None => {
                        p.a.drive_now();
                        p.b.drive_now();
                    }
                }
            }
            let tags: Vec<u64> = got.iter().map(|(tag, _)| *tag).collect();
            assert_eq!(
                tags,
                (0..5).map(|i| base + i).collect::<Vec<_>>(),
                "round {round}: in order"
            );
            assert!(got[0].1 == big, "round {round}: the long one whole");
            for (i, m) in shorts.iter().enumerate() {
                assert!(&got[i + 1].1 == m, "round {round}: short {i}");
            }
            p.both.block_on(async {
                for s in sends {
                    sent.push(s.await.0);
                }
            });
            for res in sent {
                res.expect("send");
            }
        }
        assert!(taken_in_pieces > 0, "never took a message while it arrived");
    });
}

/// `poll_tag_recv`, the packetless receive as a poll: pending (its waker
/// kept) until a message comes, woken by the driving step that brought
/// it, exact bytes in UCX's order; a message longer than the buffer is a
/// truncation error and stays to be taken whole; a receiver asleep on its
/// worker (the spin over) wakes for a message sent later, from another
/// thread; and a message taken while it arrived comes whole to the next
/// poll, which waits for it.
fn tag_polls_take_messages_as_they_come(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        wire_up(&p);
        let woken = std::sync::Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut buf = Vec::with_capacity(4096);
        let matching = TagMatch {
            tag: 0x7000,
            mask: !0xFFFF,
        };
        assert!(p.b.poll_tag_recv(matching, &mut buf, &mut cx).is_pending());
        // The same waker again is kept once.
        assert!(p.b.poll_tag_recv(matching, &mut buf, &mut cx).is_pending());

        // Three messages; the waker hears of the first progress that
        // brings any, and the polls then take them in order.
        let msgs: Vec<Vec<u8>> = [8usize, 0, 3000].iter().map(|&n| pattern(n as u64, 1, n)).collect();
        for (i, m) in msgs.iter().enumerate() {
            let (sent, _) = p
                .both
                .block_on(p.ab().write_at(Tag(0x7000 + i as u64), m.clone()))
                .into_parts();
            sent.expect("send");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while woken.count() == 0 {
            assert!(std::time::Instant::now() < deadline, "never woken");
            p.b.drive_now();
        }
        let mut got = Vec::new();
        while got.len() < msgs.len() {
            assert!(std::time::Instant::now() < deadline, "{} of 3 taken", got.len());
            match p.b.poll_tag_recv(matching, &mut buf, &mut cx) {
                Poll::Ready(info) => {
                    let info = info.expect("take");
                    assert_eq!(info.len, buf.len());
                    got.push((info.tag, buf.clone()));
                }
                Poll::Pending => {
                    p.b.drive_now();
                }
            }
        }
        let want: Vec<(u64, Vec<u8>)> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| (0x7000 + i as u64, m.clone()))
            .collect();
        assert!(got == want, "in order, exact");
        assert_eq!(buf.capacity(), 4096, "the buffer keeps its memory");

        // Too long: an error, and the message stays.
        let (sent, _) = p
            .both
            .block_on(p.ab().write_at(Tag(0x7010), vec![5u8; 100]))
            .into_parts();
        sent.expect("send");
        let mut small = Vec::with_capacity(10);
        let err =
            p.b.block_on(std::future::poll_fn(|cx| p.b.poll_tag_recv(matching, &mut small, cx)))
                .expect_err("longer than the buffer");
        assert!(err.is_truncated(), "{err}");
        let info =
            p.b.block_on(std::future::poll_fn(|cx| p.b.poll_tag_recv(matching, &mut buf, cx)))
                .expect("taken whole by a longer buffer");
        assert_eq!((info.tag, &buf[..]), (0x7010, &[5u8; 100][..]));

        // Asleep on the worker (no spin), then a message from another
        // thread, sent well after the sleep began.
        let b = p.b.clone();
        let waiting = std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(64);
            let info = b.block_on(std::future::poll_fn(|cx| b.poll_tag_recv(matching, &mut buf, cx)));
            (info.map(|i| i.tag), buf)
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiting.is_finished(), "took a message nobody sent");
        let (sent, _) =
            p.a.block_on(p.ab().write_at(Tag(0x7020), b"late".to_vec()))
                .into_parts();
        sent.expect("send");
        let (tag, late) = waiting.join().expect("the waiting thread");
        assert_eq!((tag.expect("the late message"), &late[..]), (0x7020, &b"late"[..]));
    });
}

/// A waker that counts its wakes.
#[derive(Default)]
struct Woken(std::sync::atomic::AtomicUsize);

impl Woken {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::task::Wake for Woken {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A message from a to b, so that the endpoint is wired up
/// (its first send may wait for that).
fn wire_up(p: &util::Pair) {
    p.both.block_on(async {
        let (sent, _) = p.ab().write_at(Tag(1), vec![1u8; 8]).await.into_parts();
        sent.expect("wire-up send");
        let (got, _) =
            p.b.tag_recv(TagMatch::exact(1), Vec::with_capacity(8))
                .await
                .into_parts();
        got.expect("wire-up receive");
    });
}

/// A packet receive at b of the message at `tag`, into `cap` bytes, fails
/// as truncated (`try_tag_recv` left the message for it).
fn received_truncated(p: &util::Pair, tag: u64, cap: usize) {
    let (got, _) =
        p.b.block_on(p.b.tag_recv(TagMatch::exact(tag), Vec::with_capacity(cap)))
            .into_parts();
    assert!(got.expect_err("truncated").is_truncated());
}

/// A receive posted once every piece of a long eager message is in (the
/// pieces waiting unexpected) completes inside UCX's posting call, which
/// calls back before it returns the request (UCX 1.13): the receive still
/// ends, with the message whole (`try_tag_recv` takes it at once), and
/// nothing stays in flight. (Reading the
/// operation's key in that callback, before it was written, left the
/// receive in flight for good, or ended another operation.) Receives that
/// never match are posted around it so that the keys shift.
fn receive_of_a_long_message_already_in_completes(t: Transport) {
    within(LIMIT, move || {
        let p = pair(t);
        wire_up(&p);
        for round in 0..8u64 {
            let (long_tag, behind_tag) = (0x7000 + 2 * round, 0x7001 + 2 * round);
            let long = pattern(round, 0, (100 << 10) + round as usize * 4099);
            let behind = pattern(round, 1, 24);
            let mut idle: Vec<_> = (0..round % 3)
                .map(|i| Box::pin(p.b.tag_recv(TagMatch::exact(0xDEAD_0000 + i), vec![0u8; 8])))
                .collect();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            for r in &mut idle {
                assert!(
                    r.as_mut().poll(&mut cx).is_pending(),
                    "round {round}: nothing was sent to it"
                );
            }
            let BufResult(sent, _) = p.both.block_on(p.ab().write_at(EagerTag(long_tag), long.clone()));
            sent.expect("long eager send");
            let BufResult(sent, _) = p.both.block_on(p.ab().write_at(EagerTag(behind_tag), behind.clone()));
            sent.expect("short send");
            // The short message travels behind the long one: once it is
            // taken, every piece of the long one is in.
            let mut small = Vec::with_capacity(64);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: the short one never came"
                );
                if let Some(info) = p.b.try_tag_recv(TagMatch::exact(behind_tag), &mut small).expect("take") {
                    assert_eq!((info.tag, &small), (behind_tag, &behind), "round {round}");
                    break;
                }
                p.a.drive_now();
                p.b.drive_now();
            }
            // Every other round taken without a packet: whole at once.
            let (info, got) = if round % 2 == 0 {
                let (info, got) = p
                    .both
                    .block_on(p.b.tag_recv(TagMatch::exact(long_tag), Vec::with_capacity(256 << 10)))
                    .into_parts();
                (info.expect("the long message"), got)
            } else {
                let mut got = Vec::with_capacity(256 << 10);
                let info = p.b.try_tag_recv(TagMatch::exact(long_tag), &mut got).expect("take");
                (info.expect("the long message, in whole already"), got)
            };
            assert_eq!((info.tag, info.len), (long_tag, long.len()), "round {round}");
            assert!(got == long, "round {round}: the long message whole");
            drop(idle);
            p.both.block_on(async {
                for _ in 0..3 {
                    util::yield_now().await;
                }
            });
            assert_eq!(p.b.in_flight(), 0, "round {round}: receives left in flight");
        }
    });
}
