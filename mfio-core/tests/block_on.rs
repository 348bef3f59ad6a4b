//! `block_on` wake-ups: foreign wakes, wakes after the backend is gone,
//! self-wakes, successive scopes, and submissions from other threads.

mod util;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mfio_core::mem::MemBackend;
use mfio_core::{block_on, IoBackendExt, IoRead, Packet, PacketIo, Read, SyncIoRead};

const LIMIT: Duration = Duration::from_secs(30);

/// Pending until it has been woken `target` times by a foreign thread.
struct ForeignWakes {
    polls: usize,
    target: usize,
    to_waker_thread: mpsc::Sender<Waker>,
}

impl Future for ForeignWakes {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        self.polls += 1;
        if self.polls > self.target {
            return Poll::Ready(self.polls - 1);
        }
        self.to_waker_thread
            .send(cx.waker().clone())
            .expect("waker thread alive");
        Poll::Pending
    }
}

#[test]
fn two_thousand_foreign_wakes_none_lost() {
    let woken = util::within(LIMIT, || {
        let be = MemBackend::new().expect("backend");
        let (tx, rx) = mpsc::channel::<Waker>();
        let waker_thread = std::thread::spawn(move || {
            let mut n = 0usize;
            for w in rx {
                // Vary the timing so wakes land both while the driver is awake and asleep.
                if n % 3 == 0 {
                    std::thread::yield_now();
                }
                w.wake();
                n += 1;
            }
            n
        });
        let polls = be.block_on(ForeignWakes {
            polls: 0,
            target: 2000,
            to_waker_thread: tx,
        });
        (polls, waker_thread.join().expect("waker thread"))
    });
    assert_eq!(woken, (2000, 2000));
}

#[test]
fn wake_after_backend_dropped_does_not_crash() {
    let stale = util::within(LIMIT, || {
        let be = MemBackend::new().expect("backend");
        let waker = be.block_on(poll_fn(|cx| Poll::Ready(cx.waker().clone())));
        drop(be);
        waker
    });
    let t = std::thread::spawn(move || {
        stale.wake_by_ref();
        stale.wake();
    });
    t.join().expect("waking a stale waker must not panic");
}

#[test]
fn self_wake_then_foreign_wake_completes_once() {
    let (polls, completions) = util::within(LIMIT, || {
        let be = MemBackend::new().expect("backend");
        let polls = Arc::new(AtomicUsize::new(0));
        let completions = Arc::new(AtomicUsize::new(0));
        let (p, c) = (polls.clone(), completions.clone());
        let out = be.block_on(poll_fn(move |cx| {
            match p.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    cx.waker().wake_by_ref(); // self-wake
                    let foreign = cx.waker().clone();
                    std::thread::spawn(move || foreign.wake()).join().expect("foreign wake");
                    Poll::Pending
                }
                _ => {
                    c.fetch_add(1, Ordering::SeqCst);
                    Poll::Ready("done")
                }
            }
        }));
        assert_eq!(out, "done");
        (polls.load(Ordering::SeqCst), completions.load(Ordering::SeqCst))
    });
    assert_eq!(completions, 1, "completed more than once");
    assert_eq!(polls, 2, "both wakes coalesce into one re-poll");
}

#[test]
fn packet_completion_raced_by_foreign_wake_is_taken_once() {
    util::within(LIMIT, || {
        let be = MemBackend::builder().inline_completion(false).build().expect("backend");
        let f = be.file(b"abcd".to_vec());
        let mut packet: Packet<Read, Vec<u8>> = Packet::new(Vec::with_capacity(4));
        let view = packet.take_view().expect("view");
        f.try_send_io(0, view).expect("queued");
        let mut taken = 0;
        be.block_on(poll_fn(|cx| {
            let foreign = cx.waker().clone();
            std::thread::spawn(move || foreign.wake());
            match packet.poll_complete(cx) {
                Poll::Ready(()) => {
                    while packet.try_take().is_some() {
                        taken += 1;
                    }
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            }
        }));
        assert_eq!(taken, 1);
    });
}

#[test]
fn successive_block_on_scopes_on_one_backend() {
    util::within(LIMIT, || {
        let be = MemBackend::new().expect("backend");
        let f = be.file(b"first second".to_vec());
        for (pos, want) in [(0u64, &b"first"[..]), (6, b"second"), (0, b"first")] {
            let (r, buf) = be.block_on(f.read_at(pos, Vec::with_capacity(want.len()))).into_parts();
            assert_eq!(r.expect("read"), want.len());
            assert_eq!(buf, want);
        }
        let mut nested = [0u8; 6];
        f.blocking_read_exact_at(6, &mut nested)
            .expect("sync read between scopes");
        assert_eq!(&nested, b"second");
    });
}

#[test]
fn submission_from_another_thread_wakes_the_sleeping_driver() {
    util::within(LIMIT, || {
        let be = MemBackend::builder().inline_completion(false).build().expect("backend");
        let f = be.file(b"from afar".to_vec());
        let (tx, rx) = futures::channel::oneshot::channel();
        let remote = f.clone();
        let submitter = std::thread::spawn(move || {
            // Give the driver time to fall asleep in poll(2) first.
            std::thread::sleep(Duration::from_millis(50));
            let mut packet: Packet<Read, Vec<u8>> = Packet::new(Vec::with_capacity(9));
            remote
                .try_send_io(0, packet.take_view().expect("view"))
                .expect("queued");
            // Wait for completion without driving: only the sleeping driver can complete it.
            let thread = std::thread::current();
            let waker = Waker::from(Arc::new(Unpark(thread)));
            let mut cx = Context::from_waker(&waker);
            while packet.poll_complete(&mut cx).is_pending() {
                std::thread::park();
            }
            let (outcome, buf) = packet.try_take().expect("complete");
            let _ = tx.send((outcome.transferred(), buf));
        });
        let (n, buf) = block_on(&be, rx).expect("submitter sent its result");
        submitter.join().expect("submitter");
        assert_eq!((n, buf.as_slice()), (9, &b"from afar"[..]));
    });
}

struct Unpark(std::thread::Thread);
impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// `block_on` reuses its wake state from call to call on a thread; a waker
/// a previous call left behind (held here) must neither be reused under a
/// later call nor break it, and waking it late is harmless.
#[test]
fn stale_waker_of_an_earlier_block_on_does_not_disturb_later_ones() {
    util::within(LIMIT, || {
        let be = MemBackend::new().expect("backend");
        let mut stale = None;
        block_on(
            &be,
            poll_fn(|cx| {
                stale = Some(cx.waker().clone());
                Poll::Ready(())
            }),
        );
        for round in 0..3u8 {
            // Pending until another thread completes it: this call must
            // sleep and be woken through its own wake state.
            let (done, fut) = mfio_core::completion::completion::<u8>();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                done.complete(Ok(round));
            });
            assert_eq!(block_on(&be, fut).expect("completed"), round);
            t.join().expect("completer thread");
            if let Some(w) = stale.take() {
                w.wake();
            }
        }
        assert_eq!(block_on(&be, async { 5 }), 5);
    });
}

/// A backend whose ordinary step spins (as UCX, MPI and a busy-polling
/// ring do while work is pending) and whose `drive_now` does not; it
/// counts both.
#[derive(Default)]
struct Spinning {
    inner: Option<MemBackend>,
    spins: AtomicUsize,
    now: AtomicUsize,
}

impl mfio_core::IoBackend for Spinning {
    fn polling_handle(&self) -> mfio_core::PollingHandle<'_> {
        self.inner.as_ref().expect("backend").polling_handle()
    }

    fn drive(&self) -> mfio_core::DriveStatus {
        self.spins.fetch_add(1, Ordering::SeqCst);
        // Work is pending elsewhere: report progress so the caller polls
        // again, as a spin that ended on a completion would.
        mfio_core::DriveStatus {
            progress: true,
            timeout: None,
        }
    }

    fn drive_now(&self) -> mfio_core::DriveStatus {
        self.now.fetch_add(1, Ordering::SeqCst);
        mfio_core::DriveStatus::IDLE
    }
}

#[test]
fn a_future_that_wakes_itself_is_driven_without_a_spin() {
    let (spins, now) = util::within(LIMIT, || {
        let be = Spinning {
            inner: Some(MemBackend::new().expect("backend")),
            ..Spinning::default()
        };
        // Wakes itself five times, then is done.
        let mut left = 5;
        be.block_on(poll_fn(|cx| {
            if left == 0 {
                return Poll::Ready(());
            }
            left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }));
        (be.spins.load(Ordering::SeqCst), be.now.load(Ordering::SeqCst))
    });
    // The first poll is a probe with a waker that does nothing, so its
    // self-wake is answered by the poll with the real waker, at once; each
    // later one by a step.
    assert_eq!(now, 4, "one step without a spin per self-wake after the first poll");
    assert_eq!(spins, 0, "no spinning step while the future was ready to run");
}

/// A backend whose step spins for an hour, as a UCX worker, the MPI
/// backend or a busy-polling ring with a long budget does while work is
/// pending, unless the task of the `block_on` driving it was woken.
struct SpinsAnHour {
    inner: MemBackend,
    spins: AtomicUsize,
}

impl mfio_core::IoBackend for SpinsAnHour {
    fn polling_handle(&self) -> mfio_core::PollingHandle<'_> {
        self.inner.polling_handle()
    }

    fn drive(&self) -> mfio_core::DriveStatus {
        self.spins.fetch_add(1, Ordering::SeqCst);
        let until = std::time::Instant::now() + Duration::from_secs(3600);
        while std::time::Instant::now() < until && !mfio_core::task_woken() {
            std::hint::spin_loop();
        }
        mfio_core::DriveStatus::IDLE
    }

    fn drive_now(&self) -> mfio_core::DriveStatus {
        mfio_core::DriveStatus::IDLE
    }
}

/// A wake from another thread ends the backend's spin: the task runs
/// when it is woken, not an hour later.
#[test]
fn a_wake_from_another_thread_ends_the_spin() {
    assert!(!mfio_core::task_woken(), "no block_on runs on this thread");
    let (got, spins) = util::within(LIMIT, || {
        let be = SpinsAnHour {
            inner: MemBackend::new().expect("backend"),
            spins: AtomicUsize::new(0),
        };
        let (done, fut) = mfio_core::completion::completion::<u8>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            done.complete(Ok(7));
        });
        let got = be.block_on(fut).expect("completed");
        t.join().expect("completer thread");
        assert!(!mfio_core::task_woken(), "the block_on is over");
        (got, be.spins.load(Ordering::SeqCst))
    });
    assert_eq!(got, 7);
    assert!(spins >= 1, "the backend never spun");
}

/// Records, per poll, whether its waker was one that does nothing; pending
/// until a thread it hands its waker to has woken it.
struct WakersSeen {
    noop: Vec<bool>,
    to_waker_thread: Option<mpsc::Sender<Waker>>,
}

impl Future for WakersSeen {
    type Output = Vec<bool>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<bool>> {
        // (A waker that does nothing has no data; `will_wake` may not
        // know it, its table being copied per crate.)
        self.noop.push(cx.waker().data().is_null());
        if !*self.noop.last().expect("just pushed") {
            if let Some(tx) = self.to_waker_thread.take() {
                tx.send(cx.waker().clone()).expect("waker thread alive");
                return Poll::Pending;
            }
            return Poll::Ready(std::mem::take(&mut self.noop));
        }
        Poll::Pending
    }
}

#[test]
fn block_on_waiting_polls_first_with_the_waker_it_must_wake() {
    let seen = |waiting: bool| {
        util::within(LIMIT, move || {
            let be = MemBackend::new().expect("backend");
            let (tx, rx) = mpsc::channel::<Waker>();
            let waker_thread = std::thread::spawn(move || {
                for w in rx {
                    w.wake();
                }
            });
            let fut = WakersSeen {
                noop: Vec::new(),
                to_waker_thread: Some(tx),
            };
            let seen = if waiting {
                be.block_on_waiting(fut)
            } else {
                block_on(&be, fut)
            };
            waker_thread.join().expect("waker thread");
            seen
        })
    };
    // block_on probes with a waker that does nothing, then polls at once
    // with its own; block_on_waiting skips the probe.
    assert_eq!(seen(false), [true, false, false]);
    assert_eq!(seen(true), [false, false]);
}
