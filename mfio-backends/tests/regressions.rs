//! Regression tests for the defects independent testing found in the
//! runtime (issue 9), one per defect, each named after what a user saw.
//! Each fails on the code before its fix.

#[macro_use]
mod util;

use std::future::Future;
use std::io::{ErrorKind, Read as _, SeekFrom, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mfio_backends::{BackendKind, OpenOptions, Runtime, TcpListener, TcpStream, UnixListener};
use mfio_core::{
    BufResult, IoBackend, IoBackendExt, IoCursor, IoRead, IoReadStream, IoWrite, Result, SyncIoWrite, MAX_OFFSET,
};
use util::{pattern, rw};

/// How long a step may take on a loaded machine before the test calls it a
/// hang (a bound, never a timing check).
const HANG: Duration = Duration::from_secs(20);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `fut`, or `TimedOut` if it is not done within `limit`. A timer thread
/// wakes the task at the deadline (so a driver asleep in `poll(2)` sees
/// it); it is stopped and joined as soon as `within` returns, so it holds
/// no waker (nor the descriptors behind one) afterwards.
async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output> {
    struct Timer {
        stop: Option<std::sync::mpsc::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }
    impl Drop for Timer {
        fn drop(&mut self) {
            drop(self.stop.take());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
    let deadline = Instant::now() + limit;
    let mut fut = std::pin::pin!(fut);
    let mut timer: Option<Timer> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if Instant::now() >= deadline {
            return Poll::Ready(Err(mfio_core::Error::new(
                ErrorKind::TimedOut,
                format!("not done within {limit:?}"),
            )));
        }
        if timer.is_none() {
            let (stop, stopped) = std::sync::mpsc::channel::<()>();
            let waker = cx.waker().clone();
            let thread = std::thread::spawn(move || {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(left) {
                    waker.wake();
                }
            });
            timer = Some(Timer {
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Poll::Pending
    })
    .await
}

/// A connected pair: an mfio stream and its std peer.
fn tcp_pair(rt: &Runtime) -> Result<(TcpStream, StdStream)> {
    let listener = StdListener::bind(loopback())?;
    let addr = listener.local_addr()?;
    let ours = util::run(rt, TcpStream::connect(rt, addr))?;
    let (theirs, _) = listener.accept()?;
    Ok((ours, theirs))
}

// ---------------------------------------------------------------------------
// Defect 1's cause: a sync was an IO_DRAIN barrier for the whole ring. It
// waited for every earlier entry (a receive with no data never completes)
// and held back every later one, cancellations included; operations dropped
// meanwhile kept their sockets open for good.

fn flush_waits_only_for_writes_to_its_own_file(rt: &Runtime, dir: &Path) -> Result<()> {
    let (stream, _peer) = tcp_pair(rt)?;
    let file = util::run(rt, rt.open(dir.join("f"), &rw()))?;
    let mut pending_read = Box::pin(stream.read(Vec::with_capacity(16)));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(pending_read.as_mut().poll(&mut cx).is_pending());
    rt.drive(); // the receive is in the kernel (or parked) now, and stays there
    let synced = util::run(
        rt,
        within(HANG, async {
            file.write_all_at(0, b"durable".to_vec()).await.0?;
            file.sync_all().await?;
            file.sync_data().await
        }),
    )?;
    synced?;
    // Work submitted after the sync is not held back either.
    let (res, back) = util::run(rt, within(HANG, file.read_to_end_at(0, Vec::new())))?.into_parts();
    assert_eq!((res?, back.as_slice()), (7, &b"durable"[..]));
    drop(pending_read);
    Ok(())
}

// Defect 1 itself (descriptors leaked by operations dropped mid-flight on a
// loaded machine) has its stress test beside the drop loop it repeats:
// `files::dropped_mid_flight_under_cpu_load`.

// ---------------------------------------------------------------------------
// Defect 2: a read served from kept-back bytes and dropped unclaimed lost
// them. A property test over random drop points, on io_uring, on poll and
// on the io_uring thread-pool fallback, against the model "the bytes read,
// in order, are the bytes sent".

/// The stream runtimes the property runs on: poll, io_uring, and io_uring
/// with every operation on its fallback pool (where io_uring starts).
fn stream_runtimes() -> Vec<(String, Runtime)> {
    let mut out = vec![(
        "poll".to_string(),
        Runtime::builder()
            .backend(BackendKind::Poll)
            .build()
            .expect("poll backend"),
    )];
    if let Ok(rt) = Runtime::builder().backend(BackendKind::Uring).build() {
        out.push(("uring".into(), rt));
    }
    if let Ok(rt) = Runtime::builder()
        .backend(BackendKind::Uring)
        .uring_without_opcodes(true)
        .build()
    {
        out.push(("uring fallback pool".into(), rt));
    }
    out
}

/// One read of the model: its buffer size, how often it is polled (with a
/// driving step after each) before the caller decides, and whether the
/// caller then drops it or waits for it.
#[derive(Debug, Clone, Copy)]
struct ReadStep {
    len: usize,
    polls: u8,
    drop: bool,
}

fn run_drop_model(rt: &Runtime, chunks: &[usize], steps: &[ReadStep]) -> Result<()> {
    let total: usize = chunks.iter().sum();
    let data = pattern(total, chunks.len() as u64);
    let (stream, mut peer) = tcp_pair(rt)?;
    let mut sent = 0;
    let mut next_chunk = chunks.iter();
    let mut send_more = |sent: &mut usize, peer: &mut StdStream| -> std::io::Result<bool> {
        match next_chunk.next() {
            Some(&n) => {
                peer.write_all(&data[*sent..*sent + n])?;
                *sent += n;
                Ok(true)
            }
            None => {
                peer.shutdown(Shutdown::Write)?;
                Ok(false)
            }
        }
    };
    let mut received = Vec::new();
    let mut eof = false;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for step in steps {
        if sent < total {
            send_more(&mut sent, &mut peer)?;
        }
        let mut read = Box::pin(stream.read(Vec::with_capacity(step.len)));
        let mut done = None;
        for _ in 0..step.polls {
            if let Poll::Ready(r) = read.as_mut().poll(&mut cx) {
                done = Some(r);
                break;
            }
            rt.drive();
        }
        if step.drop && done.is_none() {
            drop(read);
            continue;
        }
        if done.is_none() {
            // The caller waits: make sure there is something to wait for.
            if received.len() + 1 > sent && !eof {
                eof = !send_more(&mut sent, &mut peer)?;
            }
            done = Some(util::run(rt, within(HANG, read))?);
        }
        if let Some(BufResult(res, buf)) = done {
            let n = res?;
            received.extend_from_slice(&buf[..n]);
        }
    }
    while !eof && sent < total {
        send_more(&mut sent, &mut peer)?;
    }
    if !eof {
        peer.shutdown(Shutdown::Write)?;
    }
    loop {
        let BufResult(res, buf) = util::run(rt, within(HANG, stream.read(Vec::with_capacity(4096))))?;
        let n = res?;
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(received.len(), total, "bytes lost or duplicated");
    assert!(received == data, "bytes out of order");
    Ok(())
}

mod kept_bytes {
    use super::*;
    use proptest::prelude::*;

    fn step() -> impl Strategy<Value = ReadStep> {
        (1usize..48, 0u8..3, any::<bool>()).prop_map(|(len, polls, drop)| ReadStep { len, polls, drop })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn dropped_stream_reads_lose_no_bytes(
            chunks in proptest::collection::vec(1usize..96, 1..10),
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            util::serial(move || {
                for (name, rt) in stream_runtimes() {
                    if let Err(e) = run_drop_model(&rt, &chunks, &steps) {
                        panic!("{name}: {e}");
                    }
                }
            });
        }
    }

    /// The exact sequence the defect report gives: `abc` arrives; read 1
    /// completes in the backend and is dropped; read 2 is served from the
    /// kept bytes and dropped too; read 3 must still get `abc`.
    #[test]
    fn a_read_served_from_kept_bytes_and_dropped_keeps_them() -> Result<()> {
        util::serial(a_read_served_from_kept_bytes_and_dropped_keeps_them_body)
    }

    fn a_read_served_from_kept_bytes_and_dropped_keeps_them_body() -> Result<()> {
        for (name, rt) in stream_runtimes() {
            let (stream, mut peer) = tcp_pair(&rt)?;
            peer.write_all(b"abc")?;
            let mut cx = Context::from_waker(std::task::Waker::noop());
            for attempt in 0..2 {
                let mut read = Box::pin(stream.read(Vec::with_capacity(8)));
                assert!(read.as_mut().poll(&mut cx).is_pending(), "{name}: queued, not done");
                // Driven until the backend completed it; the caller never looks.
                let deadline = Instant::now() + HANG;
                rt.drive();
                while rt.in_flight() > 0 {
                    assert!(Instant::now() < deadline, "{name}: read {attempt} never completed");
                    std::thread::sleep(Duration::from_millis(1));
                    rt.drive();
                }
                drop(read);
            }
            let BufResult(res, buf) = util::run(&rt, within(HANG, stream.read(Vec::with_capacity(8))))?;
            assert_eq!((res?, &buf[..]), (3, &b"abc"[..]), "{name}");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Defect 3: the tokio `shutdown` and futures `close` of the adapter only
// flushed, so the peer never read end of stream.

/// A std server that reads the request to end of stream, then answers
/// `reply:` and the request, and closes; `read_to_end` times out (and the
/// answer is empty) if the client never half-closes.
fn echo_after_eof(listener: StdListener) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(HANG))?;
        let mut request = Vec::new();
        if s.read_to_end(&mut request).is_ok() {
            s.write_all(b"reply:")?;
            s.write_all(&request)?;
        }
        Ok(())
    })
}

fn adapter_shutdown_half_closes_tcp(rt: &Runtime, _dir: &Path) -> Result<()> {
    use mfio_core::AsyncIo;
    use mfio_core::NoPos;
    for style in ["tokio", "futures"] {
        let listener = StdListener::bind(loopback())?;
        let addr = listener.local_addr()?;
        let server = echo_after_eof(listener);
        let stream = util::run(rt, TcpStream::connect(rt, addr))?;
        let mut io = AsyncIo::new(stream, NoPos);
        let answer = util::run(
            rt,
            within(HANG, async {
                let mut answer = Vec::new();
                if style == "tokio" {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    io.write_all(b"request").await?;
                    io.shutdown().await?;
                    io.read_to_end(&mut answer).await?;
                } else {
                    use futures::io::{AsyncReadExt, AsyncWriteExt};
                    io.write_all(b"request").await?;
                    io.close().await?;
                    io.read_to_end(&mut answer).await?;
                }
                Ok::<_, std::io::Error>(answer)
            }),
        )??;
        server
            .join()
            .map_err(|_| mfio_core::Error::new(ErrorKind::Other, "server panicked"))??;
        assert_eq!(answer, b"reply:request", "{style}: the peer never saw end of stream");
    }
    Ok(())
}

fn adapter_shutdown_half_closes_unix(rt: &Runtime, dir: &Path) -> Result<()> {
    use mfio_core::{AsyncIo, NoPos};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = dir.join("sock");
    let listener = UnixListener::bind(rt, &path)?;
    let client = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(HANG))?;
        s.write_all(b"ping")?;
        s.shutdown(Shutdown::Write)?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        Ok(answer)
    });
    let (stream, _) = util::run(rt, listener.accept())?;
    let mut io = AsyncIo::new(stream, NoPos);
    util::run(
        rt,
        within(HANG, async {
            let mut request = Vec::new();
            io.read_to_end(&mut request).await?;
            io.write_all(b"pong:").await?;
            io.write_all(&request).await?;
            io.shutdown().await
        }),
    )??;
    let answer = client
        .join()
        .map_err(|_| mfio_core::Error::new(ErrorKind::Other, "client panicked"))??;
    assert_eq!(answer, b"pong:ping", "the client never saw end of stream");
    Ok(())
}

fn adapter_shutdown_of_a_file_is_a_flush(rt: &Runtime, dir: &Path) -> Result<()> {
    use mfio_core::AsyncIo;
    use tokio::io::AsyncWriteExt;
    let file = util::run(rt, rt.open(dir.join("f"), &rw()))?;
    let mut io = AsyncIo::new(file.clone(), 0u64);
    util::run(rt, async {
        io.write_all(b"kept").await?;
        io.shutdown().await
    })?;
    // Still open for both directions: a file has none to close.
    util::run(rt, file.write_all_at(4, b"!".to_vec())).0?;
    assert_eq!(std::fs::read(dir.join("f"))?, b"kept!");
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 4: position u64::MAX is -1 to io_uring ("the current position"),
// so a write at it landed at the file position and returned Ok.

fn positions_beyond_i64_max_are_invalid_input(rt: &Runtime, dir: &Path) -> Result<()> {
    std::fs::write(dir.join("p"), b"0123456789")?;
    let file = util::run(rt, rt.open(dir.join("p"), &rw()))?;
    let invalid = |r: Result<usize>, what: &str| match r {
        Err(e) if e.kind() == ErrorKind::InvalidInput => Ok(()),
        other => Err(mfio_core::Error::new(
            ErrorKind::Other,
            format!("{what}: expected InvalidInput, got {other:?}"),
        )),
    };
    for pos in [u64::MAX, MAX_OFFSET + 1, 1 << 63 | 5] {
        invalid(util::run(rt, file.write_at(pos, b"ZZ".to_vec())).0, "write_at")?;
        invalid(util::run(rt, file.read_at(pos, Vec::with_capacity(4))).0, "read_at")?;
        let wv = util::run(rt, file.write_vectored_at(pos, vec![b"Z".to_vec()])).0;
        invalid(wv, "write_vectored_at")?;
        let rv = util::run(rt, file.read_vectored_at(pos, vec![Vec::with_capacity(4)])).0;
        invalid(rv, "read_vectored_at")?;
        invalid(util::run(rt, file.set_len(pos)).map(|()| 0), "set_len")?;
        invalid(util::run(rt, file.allocate(pos, 1)).map(|()| 0), "allocate at")?;
        invalid(util::run(rt, file.allocate(0, pos)).map(|()| 0), "allocate to")?;
        invalid(file.blocking_write_at(pos, b"ZZ"), "blocking_write_at")?;
        let mut cursor = IoCursor::new(file.clone(), 0);
        let err = std::io::Seek::seek(&mut cursor, SeekFrom::Start(pos)).expect_err("seek beyond MAX_OFFSET");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(cursor.position(), 0, "a refused seek leaves the position");
    }
    assert_eq!(
        std::fs::read(dir.join("p"))?,
        b"0123456789",
        "nothing was written anywhere"
    );
    // Append mode ignores the position: u64::MAX is fine there.
    let mut append = OpenOptions::new();
    append.append(true);
    let log = util::run(rt, rt.open(dir.join("p"), &append))?;
    assert_eq!(util::run(rt, log.write_at(u64::MAX, b"AB".to_vec())).0?, 2);
    assert_eq!(std::fs::read(dir.join("p"))?, b"0123456789AB");
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 5: io_uring ties a request to the thread that submitted it; when
// that thread exited, a pending receive failed with ECANCELED although
// nobody cancelled it.

type Pending = Pin<Box<dyn Future<Output = BufResult<usize, Vec<u8>>> + Send>>;

/// A receive on `stream` (no data yet), polled once: queued, not yet sent.
fn pending_read(stream: &Arc<TcpStream>) -> Pending {
    let stream = stream.clone();
    let mut read: Pending = Box::pin(async move { stream.read(Vec::with_capacity(16)).await });
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(read.as_mut().poll(&mut cx).is_pending());
    read
}

/// Waits (bounded) until the backend took the queued receive.
fn wait_in_flight(rt: &Runtime, drive: bool) {
    let deadline = Instant::now() + HANG;
    while rt.in_flight() == 0 {
        assert!(Instant::now() < deadline, "the receive was never submitted");
        if drive {
            rt.drive();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Sends `hello` from the peer and expects the pending receive to get it.
fn expect_hello(rt: &Runtime, peer: &mut StdStream, read: Pending, how: &str) -> Result<()> {
    peer.write_all(b"hello")?;
    let BufResult(res, buf) = util::run(rt, within(HANG, read))?;
    match res {
        Ok(n) => assert_eq!(&buf[..n], b"hello", "{how}"),
        Err(e) => panic!("{how}: the receive failed although nobody cancelled it: {e}"),
    }
    Ok(())
}

fn uring_runtimes() -> Vec<Runtime> {
    match Runtime::builder().backend(BackendKind::Uring).build() {
        Ok(rt) => vec![rt],
        Err(e) => {
            eprintln!("skip: io_uring unavailable ({e})");
            Vec::new()
        }
    }
}

#[test]
fn operations_survive_a_restarted_null_driver() -> Result<()> {
    util::serial(operations_survive_a_restarted_null_driver_body)
}

fn operations_survive_a_restarted_null_driver_body() -> Result<()> {
    for rt in uring_runtimes() {
        let (stream, mut peer) = tcp_pair(&rt)?;
        let stream = Arc::new(stream);
        let driver = mfio_integration::Null::driver(rt.clone())?;
        let read = pending_read(&stream);
        wait_in_flight(&rt, false); // submitted by the driver thread
        drop(driver); // its thread exits
        let _again = mfio_integration::Null::driver(rt.clone())?;
        expect_hello(&rt, &mut peer, read, "after a Null driver restart")?;
    }
    Ok(())
}

#[test]
fn operations_survive_a_short_lived_blocking_thread() -> Result<()> {
    util::serial(operations_survive_a_short_lived_blocking_thread_body)
}

fn operations_survive_a_short_lived_blocking_thread_body() -> Result<()> {
    for rt in uring_runtimes() {
        let (stream, mut peer) = tcp_pair(&rt)?;
        let stream = Arc::new(stream);
        let scratch = tempfile::tempdir()?;
        let read = pending_read(&stream);
        std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                // Blocking calls drive the runtime: this thread submits the
                // receive queued above, then exits.
                let file = rt.block_on(rt.open(scratch.path().join("b"), &rw()))?;
                file.blocking_write_all_at(0, b"x")?;
                wait_in_flight(&rt, true);
                Ok(())
            })
            .join()
            .map_err(|_| mfio_core::Error::new(ErrorKind::Other, "thread panicked"))?
        })?;
        expect_hello(&rt, &mut peer, read, "after the blocking thread exited")?;
    }
    Ok(())
}

#[test]
fn operations_survive_a_rebuilt_tokio_runtime() -> Result<()> {
    util::serial(operations_survive_a_rebuilt_tokio_runtime_body)
}

fn operations_survive_a_rebuilt_tokio_runtime_body() -> Result<()> {
    use mfio_integration::Tokio;
    for rt in uring_runtimes() {
        let (stream, mut peer) = tcp_pair(&rt)?;
        let stream = Arc::new(stream);
        let mut read = pending_read(&stream);
        // A tokio runtime on a thread of its own drives the mfio runtime for
        // a while (submitting the receive), then goes away with its thread.
        let driven = rt.clone();
        let read = std::thread::spawn(move || {
            let host = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio");
            host.block_on(Tokio::run(&driven, async {
                std::future::poll_fn(|cx| {
                    let _ = read.as_mut().poll(cx);
                    if driven.in_flight() > 0 {
                        Poll::Ready(())
                    } else {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                })
                .await
            }));
            read
        })
        .join()
        .expect("tokio thread");
        let host = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        peer.write_all(b"hello")?;
        let BufResult(res, buf) = host.block_on(Tokio::run(&rt, within(HANG, read)))?;
        match res {
            Ok(n) => assert_eq!(&buf[..n], b"hello"),
            Err(e) => panic!("the receive failed although nobody cancelled it: {e}"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 5, second half: accept and connect errors were labelled "open".

fn accept_and_connect_errors_name_their_operation(rt: &Runtime, _dir: &Path) -> Result<()> {
    let closed = {
        let l = StdListener::bind(loopback())?;
        l.local_addr()?
    };
    let err = util::run(rt, TcpStream::connect(rt, closed)).expect_err("nobody listens");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert_eq!(err.op(), Some(mfio_core::Op::Connect), "{err}");
    assert!(err.to_string().contains("connect"), "{err}");
    let listener = TcpListener::bind(rt, loopback())?;
    rustix::net::shutdown(&listener, rustix::net::Shutdown::Read)?;
    let err = util::run(rt, within(HANG, listener.accept()))?.expect_err("a shut-down listener accepts nothing");
    assert_eq!(err.op(), Some(mfio_core::Op::Accept), "{err}");
    assert!(err.to_string().contains("accept"), "{err}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 7: misaligned O_DIRECT transfers failed with a bare EINVAL.

fn direct_io_misalignment_names_the_alignment(rt: &Runtime, dir: &Path) -> Result<()> {
    let mut opts = rw();
    opts.direct(true);
    let file = match util::run(rt, rt.open(dir.join("d"), &opts)) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::InvalidInput => {
            eprintln!("skip: this file system refuses O_DIRECT ({e})");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let Some((mem, off)) = util::run(rt, file.dio_alignment())? else {
        eprintln!("skip: the kernel does not report the O_DIRECT alignment here");
        return Ok(());
    };
    let (mem, off) = (mem as usize, off as usize);
    let block = off.max(mem).max(512);
    let aligned = || -> Result<mfio_core::AlignedBuf> {
        let mut b = mfio_core::AlignedBuf::with_capacity(block * 2, block)?;
        b.extend_from_slice(&vec![7u8; block * 2]);
        Ok(b)
    };
    let expect = |r: Result<usize>, needle: String| {
        let err = r.expect_err("misaligned O_DIRECT transfer");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert_eq!(err.raw_os_error(), None, "refused before the kernel saw it: {err}");
        let text = err.to_string();
        assert!(text.contains(&format!("aligned to {off} bytes")), "{text}");
        assert!(text.contains(&needle), "{text} lacks {needle:?}");
    };
    // A misaligned offset.
    expect(util::run(rt, file.write_at(1, aligned()?)).0, "offset 1 is not".into());
    // A misaligned length.
    let short = mfio_core::Slice::new(aligned()?, 0, block - 1);
    expect(
        util::run(rt, file.write_at(0, short)).0,
        format!("length {} is not", block - 1),
    );
    // A misaligned buffer address (where memory alignment is more than a byte).
    if mem > 1 {
        let shifted = mfio_core::Slice::new(aligned()?, 1, block + 1);
        expect(util::run(rt, file.write_at(0, shifted)).0, "buffer address".into());
    }
    // Aligned still works.
    assert_eq!(util::run(rt, file.write_at(0, aligned()?)).0?, block * 2);
    Ok(())
}

backend_tests!(
    flush_waits_only_for_writes_to_its_own_file,
    adapter_shutdown_half_closes_tcp,
    adapter_shutdown_half_closes_unix,
    adapter_shutdown_of_a_file_is_a_flush,
    positions_beyond_i64_max_are_invalid_input,
    accept_and_connect_errors_name_their_operation,
    direct_io_misalignment_names_the_alignment,
);
