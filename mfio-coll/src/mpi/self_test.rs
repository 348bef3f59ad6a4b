//! [`SelfTested`]: a collective whose future tests its own MPI request
//! while its caller spins, where any thread may call MPI.
//!
//! A short collective finishes within microseconds. Through the backend's
//! records it would pay a record, a completion and a wake-up on top of
//! MPI's own cost; tested by its own future it pays one `MPI_Test` per
//! poll, as a C program's test loop does; the call that starts it tests
//! it a few times first, and a collective finished by then gets a finished
//! future (no allocation, nothing to poll). The future keeps its caller
//! polling (it wakes itself) for as long as the backend would spin
//! ([`Progress::spin`](super::Progress::spin)); after that, or if it is
//! dropped first, it hands the request and its buffers to the backend's
//! records, which test it, pause between tests, honour the timeout and
//! keep the buffers until MPI lets go of them.

use std::ffi::c_int;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use mfio_core::completion::{completion, Completion};
use mfio_core::BufResult;

use super::backend::{mpi_error, Owner};
use super::comm::{CollWork, CommHandles};
use super::sys::{self, Tested};
use crate::comm::{CollFuture, CollResult};

/// How many polls pass between two looks at the clock.
const POLLS_PER_CLOCK: u32 = 16;

/// How many tests one poll makes before it yields: a short collective
/// finishes within a few, and a poll that returns after each one pays the
/// way out and back through the caller's loop (the task, `block_on`, the
/// backend's step) per test: 0.25-0.6 µs a collective at 8 B on 2 ranks.
const TESTS_PER_POLL: u32 = 8;

/// How many tests the call that starts a collective makes before it
/// returns the future: as many as one poll makes.
const TESTS_AT_START: u32 = TESTS_PER_POLL;

/// A collective of one MPI call, tested by its own future.
pub(crate) struct SelfTested<B: Send + Default + 'static> {
    shared: Arc<Owner>,
    /// The communicator the request runs on, kept until it finishes.
    handles: Arc<CommHandles>,
    /// The request while this future tests it; `None` once it finished or
    /// went to the backend's records.
    req: Option<sys::Request>,
    /// The buffers the call points into (taken when it finishes or goes to
    /// the records).
    bufs: B,
    /// Count lists the call points into.
    keep: Vec<Vec<c_int>>,
    name: &'static str,
    /// When the clock was first read (a short collective never reads it).
    since: Option<Instant>,
    polls: u32,
    /// The result, once the backend's records test the request.
    handed_over: Option<Completion<CollResult<B>>>,
}

// SAFETY: futures of this type exist only where MPI allows any thread to
// call it at any time (`MPI_THREAD_MULTIPLE`), so the request may be tested
// from whichever thread polls; the buffers are owned.
unsafe impl<B: Send + Default + 'static> Send for SelfTested<B> {}

// The future is never pinned structurally: its fields move freely.
impl<B: Send + Default + 'static> Unpin for SelfTested<B> {}

impl<B: Send + Default + 'static> SelfTested<B> {
    /// The future of a collective started as `req`, whose call points into
    /// `bufs` and the count lists `keep` holds (a closure that hands them
    /// over, so that a one-call collective's lack of them costs nothing).
    ///
    /// The request is tested a few times first, as a C program's test loop
    /// would right after the call: a short collective often finishes
    /// there, and its future is then a finished one, with no allocation
    /// and nothing left to test.
    #[inline]
    pub(crate) fn start(
        shared: &Arc<Owner>,
        handles: &Arc<CommHandles>,
        mut req: sys::Request,
        bufs: B,
        keep: impl FnOnce() -> Vec<Vec<c_int>>,
        name: &'static str,
    ) -> CollFuture<B> {
        for _ in 0..TESTS_AT_START {
            // SAFETY: the request was just started by this thread, which
            // may call MPI at any time (`MPI_THREAD_MULTIPLE`); the
            // buffers and count lists it points into are held here.
            match unsafe { sys::test_collective(&mut req) } {
                Tested::Running => {}
                Tested::Finished(result) => {
                    // The count lists (if any) go with the closure; one
                    // call's empty `Vec::new` is nothing to drop.
                    drop(keep);
                    let result = result.map_err(|c| mpi_error(c, name));
                    return CollFuture::ready(BufResult(result, bufs));
                }
                // The future's polls retry it, or the records do.
                Tested::CallFailed(_) => break,
            }
        }
        Self::boxed(shared, handles, req, bufs, keep(), name)
    }

    /// The future of a collective still running after the tests at its
    /// start. Out of line: the start of one that finished there stays
    /// short.
    #[inline(never)]
    fn boxed(
        shared: &Arc<Owner>,
        handles: &Arc<CommHandles>,
        req: sys::Request,
        bufs: B,
        keep: Vec<Vec<c_int>>,
        name: &'static str,
    ) -> CollFuture<B> {
        shared.self_tested.fetch_add(1, Ordering::AcqRel);
        CollFuture::boxed(Self {
            shared: shared.clone(),
            handles: handles.clone(),
            req: Some(req),
            bufs,
            keep,
            name,
            since: None,
            polls: 0,
            handed_over: None,
        })
    }

    /// Gives the request and the buffers to the backend's records; the
    /// result comes back through `handed_over` if `wanted`.
    fn hand_over(&mut self, wanted: bool) {
        let Some(req) = self.req.take() else { return };
        let done = wanted.then(|| {
            let (done, fut) = completion();
            self.handed_over = Some(fut);
            done
        });
        let bufs = std::mem::take(&mut self.bufs);
        let keep = std::mem::take(&mut self.keep);
        let work = Box::new(CollWork::one_call(bufs, done, keep, self.name));
        let req = SendRequest(req);
        let handles = self.handles.clone();
        self.shared.submit(move |_, st, finished| {
            let mut req = Some(req);
            st.post(
                work,
                Vec::new(),
                handles,
                false,
                |_| req.take().map(|r| Ok(r.0)),
                finished,
            );
        });
        // After the post: `in_flight` never misses it in between.
        self.shared.self_tested.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request moving to the thread that posts it (see `SelfTested`'s
/// `Send`).
struct SendRequest(sys::Request);

// SAFETY: as for `SelfTested`.
unsafe impl Send for SendRequest {}

impl<B: Send + Default + 'static> Future for SelfTested<B> {
    type Output = CollResult<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CollResult<B>> {
        let this = self.get_mut();
        if let Some(req) = &mut this.req {
            let mut tests = 0;
            loop {
                // SAFETY: the future's own active request; any thread may
                // call MPI (see the `Send` impl).
                match unsafe { sys::test_collective(req) } {
                    Tested::Finished(result) => {
                        this.req = None;
                        this.shared.self_tested.fetch_sub(1, Ordering::AcqRel);
                        let result = result.map_err(|c| mpi_error(c, this.name));
                        return Poll::Ready(BufResult(result, std::mem::take(&mut this.bufs)));
                    }
                    Tested::Running => {
                        this.polls = this.polls.wrapping_add(1);
                        let spinning = !this.polls.is_multiple_of(POLLS_PER_CLOCK)
                            || this.since.get_or_insert_with(Instant::now).elapsed() < this.shared.spin();
                        if !spinning {
                            // Waited as long as the backend spins: it takes
                            // over, pausing between tests.
                            break;
                        }
                        tests += 1;
                        if tests < TESTS_PER_POLL {
                            continue;
                        }
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Tested::CallFailed(code) => {
                        tracing::warn!(error = %sys::error_string(code), "MPI_Test failed; the backend's records retry it");
                        break;
                    }
                }
            }
            this.hand_over(true);
        }
        match &mut this.handed_over {
            // A backend that went away with the buffers inside: they are
            // gone with it, and empty ones come back with the error.
            Some(c) => Pin::new(c)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|e| BufResult(Err(e), B::default()))),
            None => panic!("a collective's future polled after it completed"),
        }
    }
}

impl<B: Send + Default + 'static> Drop for SelfTested<B> {
    fn drop(&mut self) {
        // MPI may still read and write the buffers: the records keep them
        // until the request finishes.
        self.hand_over(false);
    }
}
