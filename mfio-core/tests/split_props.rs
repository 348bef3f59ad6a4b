//! Property tests: random split patterns, completion orders and outcomes
//! against a plain model; random mem-backend knobs against a `Vec<u8>`.

mod util;

use proptest::prelude::*;

use mfio_core::mem::MemBackend;
use mfio_core::{Error, IoBackendExt, IoRead, IoWrite, Packet, PacketView, Read, Write};

/// What a backend does with one view.
#[derive(Debug, Clone)]
enum Fate {
    Full,
    /// Complete with `len * num / 256` bytes.
    Short(u8),
    Fail(i32),
    Drop,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => Just(Fate::Full),
        1 => any::<u8>().prop_map(Fate::Short),
        1 => (1i32..100).prop_map(Fate::Fail),
        1 => Just(Fate::Drop),
    ]
}

/// Cuts `[0, len)` at the given points (deduplicated, in range).
fn ranges(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.extend([0, len]);
    points.sort_unstable();
    points.dedup();
    if len == 0 {
        // An empty packet still has one (empty) view to complete.
        return vec![(0, 0)];
    }
    points.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Splits a root view into views with exactly these ranges, by repeated
/// `split_at` from the front and from random middles.
fn split_into<D: mfio_core::Direction>(root: PacketView<D>, bounds: &[(usize, usize)]) -> Vec<PacketView<D>> {
    let mut out = Vec::new();
    let mut rest = root;
    for (i, (start, end)) in bounds.iter().enumerate() {
        if i + 1 == bounds.len() {
            out.push(rest);
            break;
        }
        let (head, tail) = rest.split_at(end - start);
        out.push(head);
        rest = tail;
    }
    out
}

/// Expected transferred prefix and lowest failure, computed directly.
fn model(bounds: &[(usize, usize)], fates: &[Fate]) -> (usize, Option<(usize, Option<i32>)>) {
    let total = bounds.last().map_or(0, |b| b.1);
    let mut transferred = total;
    let mut failure: Option<(usize, Option<i32>)> = None;
    for ((start, end), fate) in bounds.iter().zip(fates) {
        let len = end - start;
        let (n, err) = match fate {
            Fate::Full => (len, None),
            Fate::Short(k) => (len * usize::from(*k) / 256, None),
            Fate::Fail(e) => (0, Some(Some(*e))),
            Fate::Drop => (0, Some(None)),
        };
        if n < len {
            transferred = transferred.min(start + n);
        }
        if let Some(e) = err {
            if failure.is_none_or(|(at, _)| *start < at) {
                failure = Some((*start, e));
            }
        }
    }
    (transferred, failure)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn read_views_complete_in_any_order_like_the_model(
        len in 0usize..2048,
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        fates in prop::collection::vec(fate(), 13),
        order_seed in any::<u64>(),
        threads in any::<bool>(),
    ) {
        let src = util::pattern(len, order_seed);
        let mut packet: Packet<Read, Vec<u8>> = Packet::new(Vec::with_capacity(len));
        let bounds = ranges(len, &cuts);
        let views = split_into(packet.take_view().expect("view"), &bounds);
        prop_assert_eq!(views.len(), bounds.len());
        let mut work: Vec<(PacketView<Read>, Fate)> = views.into_iter().zip(fates.iter().cloned()).collect();
        // Source and destination offsets share one origin: each view's
        // offset is where its bytes come from in `src`.
        for ((view, _), (start, end)) in work.iter().zip(&bounds) {
            prop_assert_eq!((view.offset(), view.len()), (*start, end - start));
        }
        let mut s = order_seed | 1;
        for i in (1..work.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            work.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let run = move |work: Vec<(PacketView<Read>, Fate)>, src: Vec<u8>| {
            for (view, fate) in work {
                let at = view.offset();
                let bytes = &src[at..at + view.len()];
                match fate {
                    Fate::Full => view.complete_from(bytes),
                    Fate::Short(k) => {
                        let n = view.len() * usize::from(k) / 256;
                        view.complete_from(&bytes[..n]);
                    }
                    Fate::Fail(e) => view.fail(Error::from_raw_os_error(e)),
                    Fate::Drop => drop(view),
                }
            }
        };
        if threads {
            let src2 = src.clone();
            std::thread::spawn(move || run(work, src2)).join().expect("completer");
        } else {
            run(work, src.clone());
        }
        let (outcome, buf) = packet.try_take().expect("every view finished");
        let (want_n, want_err) = model(&bounds, &fates);
        prop_assert_eq!(outcome.transferred(), want_n);
        prop_assert_eq!(buf.len(), want_n);
        prop_assert_eq!(&buf[..], &src[..want_n]);
        let got_err = outcome.error().map(|(at, e)| (at, if e.is_aborted() { None } else { e.raw_os_error() }));
        prop_assert_eq!(got_err, want_err);
    }

    #[test]
    fn write_views_see_the_bytes_at_their_offset(
        len in 1usize..1024,
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let src = util::pattern(len, len as u64);
        let mut packet: Packet<Write, Vec<u8>> = Packet::new(src.clone());
        let bounds = ranges(len, &cuts);
        let mut rebuilt = vec![0u8; len];
        for view in split_into(packet.take_view().expect("view"), &bounds).into_iter().rev() {
            rebuilt[view.offset()..view.offset() + view.len()].copy_from_slice(view.as_slice());
            let n = view.len();
            view.complete(n);
        }
        prop_assert_eq!(&rebuilt, &src);
        let (outcome, back) = packet.try_take().expect("done");
        prop_assert_eq!(outcome.transferred(), len);
        prop_assert_eq!(back, src);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mem_backend_with_random_knobs_matches_a_vec(
        split in prop::option::of(1usize..100),
        shuffle in prop::option::of(any::<u64>()),
        queue in 1usize..8,
        ops in prop::collection::vec((any::<bool>(), 0u64..3000, 0usize..700, any::<u64>()), 1..40),
    ) {
        let mut b = MemBackend::builder();
        b.queue_capacity(queue).window(queue);
        if let Some(n) = split { b.split_at(n); }
        if let Some(seed) = shuffle { b.out_of_order(seed); }
        let be = b.build().expect("backend");
        let f = be.file(Vec::new());
        let mut model: Vec<u8> = Vec::new();
        for (is_write, pos, len, seed) in ops {
            if is_write {
                let data = util::pattern(len, seed);
                be.block_on(f.write_all_at(pos, data.clone())).0.expect("write");
                let end = pos as usize + len;
                if model.len() < end { model.resize(end, 0); }
                model[pos as usize..end].copy_from_slice(&data);
            } else {
                let (r, buf) = be.block_on(f.read_at(pos, Vec::with_capacity(len))).into_parts();
                let n = r.expect("read");
                let want = model.get(pos as usize..).map_or(0, |rest| rest.len().min(len));
                prop_assert_eq!(n, want);
                let expected = model.get(pos as usize..).map_or(&[][..], |rest| &rest[..want]);
                prop_assert_eq!(&buf[..], expected);
            }
        }
        prop_assert_eq!(f.contents(), model);
    }
}
