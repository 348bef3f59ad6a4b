//! Every behaviour on every native backend (io_uring, poll) under every
//! driver (plain `block_on`, tokio current-thread, tokio multi-thread with
//! a background driver task, smol). One body per behaviour; the matrix is
//! generated. Tests run one at a time: they compare descriptor counts and
//! CPU time, which are per process.

use std::future::Future;
use std::io::ErrorKind;
use std::sync::{mpsc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use mfio_backends::{BackendKind, OpenOptions, Runtime, TcpListener, TcpStream, BACKEND_ENV};
use mfio_core::mem::MemBackend;
use mfio_core::{
    AsyncIo, IoBackend, IoBackendExt, IoCursor, IoRead, IoReadStream, IoWrite, IoWriteStream, NoPos, Result,
};
use mfio_integration::{Null, Smol, Tokio};

static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, Copy)]
enum Driver {
    Null,
    TokioCurrent,
    TokioMulti,
    Smol,
}

/// Runs `body` with `rt` (any backend) driven by `driver`.
fn drive<B, T, F>(driver: Driver, rt: &B, body: impl FnOnce(B) -> F + Send + 'static) -> T
where
    B: IoBackend + Clone + Send + Sync + 'static,
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let fut = body(rt.clone());
    match driver {
        Driver::Null => Null::run(rt, fut),
        Driver::TokioCurrent => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio")
            .block_on(Tokio::run(rt, fut)),
        Driver::TokioMulti => {
            let host = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio");
            // The backend is driven by a spawned task; the body runs as
            // another task, on whichever worker picks it up.
            let driver = host.spawn(Tokio::driver(rt.clone()));
            let out = host.block_on(async move { host_spawn(fut).await });
            driver.abort();
            out
        }
        Driver::Smol => smol::block_on(Smol::run(rt, fut)),
    }
}

async fn host_spawn<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    tokio::spawn(fut).await.expect("task panicked")
}

fn runtimes() -> Vec<Runtime> {
    if std::env::var_os(BACKEND_ENV).is_some() {
        return vec![Runtime::new().expect("runtime")];
    }
    let mut out = vec![Runtime::builder().backend(BackendKind::Poll).build().expect("poll")];
    match Runtime::builder().backend(BackendKind::Uring).build() {
        Ok(rt) => out.push(rt),
        Err(e) => eprintln!("skip io_uring: {e}"),
    }
    out
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Runs `f` on a thread and fails if it does not finish in time.
fn within<T: Send + 'static>(what: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(v) => {
            let _ = t.join();
            v
        }
        Err(_) => panic!("{what}: no result within 120 s (hang or panic)"),
    }
}

/// Writes through the async layer and reads back through async, futures-io,
/// tokio and `std::io` (the last from a plain thread).
fn file_through_every_layer(rt: &Runtime, driver: Driver) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("f");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let (p, d) = (path.clone(), data.clone());
    drive(driver, rt, move |rt| async move {
        let file = rt
            .open(&p, OpenOptions::new().read(true).write(true).create(true))
            .await?;
        file.write_all_at(0, d.clone()).await.0?;
        file.sync_all().await?;
        let (res, back) = file.read_to_end_at(0, Vec::new()).await.into_parts();
        res?;
        assert!(back == d, "async layer");
        let mut a = AsyncIo::new(file.clone(), 0);
        let mut via_futures = Vec::new();
        futures::AsyncReadExt::read_to_end(&mut a, &mut via_futures).await?;
        assert!(via_futures == d, "futures-io layer");
        let mut t = AsyncIo::new(file.clone(), 0);
        let mut via_tokio = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut t, &mut via_tokio).await?;
        assert!(via_tokio == d, "tokio layer");
        Ok::<(), mfio_core::Error>(())
    })?;
    // std::io from a plain thread, while nothing else drives the runtime.
    let file = rt.block_on(rt.open(&path, OpenOptions::new().read(true)))?;
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut IoCursor::new(file, 0), &mut out)?;
        Ok(out)
    });
    assert!(reader.join().expect("reader")? == data, "std::io layer");
    Ok(())
}

fn tcp_echo(rt: &Runtime, driver: Driver) -> Result<()> {
    drive(driver, rt, |rt| async move {
        let listener = TcpListener::bind(&rt, "127.0.0.1:0".parse().expect("addr"))?;
        let addr = listener.local_addr()?;
        let server = async {
            let (s, _) = listener.accept().await?;
            loop {
                let (res, buf) = s.read(Vec::with_capacity(8192)).await.into_parts();
                if res? == 0 {
                    return Ok::<(), mfio_core::Error>(());
                }
                s.write_all(buf).await.0?;
            }
        };
        let client = async {
            let c = TcpStream::connect(&rt, addr).await?;
            let msg = vec![42u8; 200_000];
            c.write_all(msg.clone()).await.0?;
            c.shutdown(std::net::Shutdown::Write).await?;
            let (res, back) = c.read_to_end(Vec::new()).await.into_parts();
            res?;
            assert!(back == msg, "echo differs");
            Ok(())
        };
        let (a, b) = futures::join!(server, client);
        a.and(b)
    })
}

/// Handles move into tasks spawned on the host runtime (threads for `Null`)
/// and the I/O they issue there completes.
fn handles_in_spawned_tasks(rt: &Runtime, driver: Driver) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("g");
    std::fs::write(&path, b"moved into a task")?;
    let file = rt.block_on(rt.open(&path, OpenOptions::new().read(true)))?;
    let read = |f: mfio_backends::File| async move {
        let (res, buf) = f.read_to_end_at(0, Vec::new()).await.into_parts();
        res.map(|_| buf)
    };
    let got = match driver {
        Driver::Null => {
            let f = file.clone();
            std::thread::spawn(move || mfio_core::block_on(&f.clone(), read(f)))
                .join()
                .expect("thread")?
        }
        Driver::Smol => {
            let (f, r) = (file.clone(), rt.clone());
            smol::block_on(Smol::run(&r, async move { smol::spawn(read(f)).await }))?
        }
        Driver::TokioCurrent | Driver::TokioMulti => {
            let (f, r) = (file.clone(), rt.clone());
            drive(driver, rt, move |_| async move {
                let _keep = r;
                tokio::spawn(read(f)).await.expect("task")
            })?
        }
    };
    assert_eq!(got, b"moved into a task");
    Ok(())
}

/// 2000 wakes from another thread; none lost, one completion.
fn foreign_wakes(rt: &Runtime, driver: Driver) -> Result<()> {
    let polls = drive(driver, rt, |_rt| async move {
        let (tx, rx) = mpsc::channel::<Waker>();
        let waker_thread = std::thread::spawn(move || {
            for w in rx {
                w.wake();
            }
        });
        let mut polls = 0usize;
        std::future::poll_fn(|cx| {
            polls += 1;
            if polls > 2000 {
                return Poll::Ready(());
            }
            tx.send(cx.waker().clone()).expect("waker thread");
            Poll::Pending
        })
        .await;
        drop(tx);
        waker_thread.join().expect("waker thread");
        polls
    });
    assert_eq!(polls, 2001);
    Ok(())
}

fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Waiting idle costs (almost) no CPU: no busy loop, no polling thread.
fn idle_costs_no_cpu(rt: &Runtime, driver: Driver) -> Result<()> {
    let cpu = drive(driver, rt, |rt| async move {
        // Some I/O first, so the backend's descriptor has been signalled.
        let dir = tempfile::tempdir().expect("dir");
        let f = rt
            .open(dir.path().join("i"), OpenOptions::new().write(true).create(true))
            .await
            .expect("open");
        f.write_all_at(0, vec![1u8; 4096]).await.0.expect("write");
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            let _ = tx.send(());
        });
        let before = process_cpu_time();
        let _ = rx.await;
        let cpu = process_cpu_time() - before;
        waker.join().expect("waker");
        cpu
    });
    assert!(
        cpu < Duration::from_millis(150),
        "idle wait used {cpu:?} of CPU in 600 ms"
    );
    Ok(())
}

/// Dropping the host runtime with I/O in flight neither hangs nor leaks.
fn host_shutdown_with_io_in_flight(rt: &Runtime, driver: Driver) -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    // This thread's wake descriptor, made the first time a `block_on`
    // waits, exists from here on.
    let mut polled = false;
    rt.block_on(std::future::poll_fn(move |cx| {
        if std::mem::replace(&mut polled, true) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }));
    let before = open_fds();
    match driver {
        Driver::TokioCurrent | Driver::TokioMulti => {
            let host = match driver {
                Driver::TokioCurrent => tokio::runtime::Builder::new_current_thread(),
                _ => tokio::runtime::Builder::new_multi_thread(),
            }
            .enable_all()
            .build()?;
            let r = rt.clone();
            host.spawn(Tokio::driver(rt.clone()));
            host.block_on(async move {
                let s = TcpStream::connect(&r, addr).await?;
                // A read that will never complete, in a task left running.
                tokio::spawn(async move {
                    let _ = s.read(Vec::with_capacity(16)).await;
                });
                tokio::task::yield_now().await;
                Ok::<(), mfio_core::Error>(())
            })?;
            drop(host);
        }
        Driver::Smol => {
            let ex = smol::Executor::new();
            let r = rt.clone();
            let task = ex.spawn(Smol::driver(rt.clone()));
            smol::block_on(ex.run(async {
                let s = TcpStream::connect(&r, addr).await?;
                ex.spawn(async move {
                    let _ = s.read(Vec::with_capacity(16)).await;
                })
                .detach();
                smol::future::yield_now().await;
                Ok::<(), mfio_core::Error>(())
            }))?;
            drop(task);
            drop(ex);
        }
        Driver::Null => {
            let driver = Null::driver(rt.clone())?;
            let s = rt.block_on(TcpStream::connect(rt, addr))?;
            let r = rt.clone();
            let reader = std::thread::spawn(move || {
                let mut fut = Box::pin(s.read(Vec::with_capacity(16)));
                let mut cx = std::task::Context::from_waker(Waker::noop());
                let _ = fut.as_mut().poll(&mut cx);
                drop(fut);
                drop(r);
            });
            reader.join().expect("reader");
            drop(driver);
        }
    }
    drop(listener);
    for _ in 0..200 {
        mfio_core::IoBackend::drive(rt);
        if open_fds() <= before {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(open_fds() <= before, "descriptors left after the host shut down");
    Ok(())
}

macro_rules! matrix {
    ($($body:ident),* $(,)?) => {
        $(
            mod $body {
                use super::*;
                fn run(driver: Driver) {
                    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
                    for rt in runtimes() {
                        let what = format!("{} on {} under {driver:?}", stringify!($body), rt.kind());
                        let res = within(what.clone(), move || crate::$body(&rt, driver));
                        if let Err(e) = res {
                            panic!("{what}: {e}");
                        }
                    }
                }
                #[test] fn null() { run(Driver::Null) }
                #[test] fn tokio_current_thread() { run(Driver::TokioCurrent) }
                #[test] fn tokio_multi_thread() { run(Driver::TokioMulti) }
                #[test] fn smol() { run(Driver::Smol) }
            }
        )*
    };
}

matrix!(
    file_through_every_layer,
    tcp_echo,
    handles_in_spawned_tasks,
    foreign_wakes,
    idle_costs_no_cpu,
    host_shutdown_with_io_in_flight,
);

/// The in-memory backend through every layer, on its queued path (delay,
/// splitting, out-of-order completion), files and a stream pair.
fn mem_every_layer(driver: Driver) -> Result<()> {
    let be = MemBackend::builder()
        .delay(Duration::from_micros(300))
        .split_at(7)
        .out_of_order(5)
        .build()?;
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 239) as u8).collect();
    let d = data.clone();
    drive(driver, &be, move |be| async move {
        let f = be.file(Vec::new());
        f.write_all_at(0, d.clone()).await.0?;
        let (res, back) = f.read_to_end_at(0, Vec::new()).await.into_parts();
        res?;
        assert!(back == d, "async layer");
        let mut a = AsyncIo::new(f.clone(), 0);
        let mut via_futures = Vec::new();
        futures::AsyncReadExt::read_to_end(&mut a, &mut via_futures).await?;
        assert!(via_futures == d, "futures-io layer");
        let mut t = AsyncIo::new(f.clone(), 0);
        let mut via_tokio = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut t, &mut via_tokio).await?;
        assert!(via_tokio == d, "tokio layer");
        let (x, y) = be.stream_pair();
        let send = async {
            x.write_all(d.clone()).await.0?;
            x.shutdown_write();
            Ok::<(), mfio_core::Error>(())
        };
        let (sent, got) = futures::join!(send, y.read_to_end(Vec::new()));
        sent?;
        let (res, got) = got.into_parts();
        res?;
        assert!(got == d, "stream layer");
        Ok::<(), mfio_core::Error>(())
    })?;
    // Blocking `std::io` from a plain thread while nothing else drives.
    let f = be.file(data.clone());
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut IoCursor::new(f, 0), &mut out)?;
        Ok(out)
    });
    assert!(reader.join().expect("reader")? == data, "std::io layer");
    Ok(())
}

/// A waker kept past its backend's life can still be woken, harmlessly.
fn mem_wake_after_backend_dropped(driver: Driver) -> Result<()> {
    let be = MemBackend::new()?;
    let waker = drive(driver, &be, |_| async {
        std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await
    });
    drop(be);
    std::thread::spawn(move || {
        waker.wake_by_ref();
        waker.wake();
    })
    .join()
    .expect("a stale wake must not panic");
    Ok(())
}

/// A completion racing a foreign wake is taken exactly once.
fn mem_single_completion(driver: Driver) -> Result<()> {
    let be = MemBackend::builder().inline_completion(false).build()?;
    let taken = drive(driver, &be, |be| async move {
        let f = be.file(b"once".to_vec());
        let mut taken = 0;
        for _ in 0..200 {
            let mut packet: mfio_core::Packet<mfio_core::Read, Vec<u8>> = mfio_core::Packet::new(Vec::with_capacity(4));
            mfio_core::PacketIo::try_send_io(&f, 0, packet.take_view().expect("view")).expect("queued");
            std::future::poll_fn(|cx| {
                let foreign = cx.waker().clone();
                std::thread::spawn(move || foreign.wake());
                packet.poll_complete(cx)
            })
            .await;
            while packet.try_take().is_some() {
                taken += 1;
            }
        }
        taken
    });
    assert_eq!(taken, 200, "each packet completed (and was taken) exactly once");
    Ok(())
}

macro_rules! driver_matrix {
    ($($body:ident),* $(,)?) => {
        $(
            mod $body {
                use super::*;
                fn run(driver: Driver) {
                    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
                    let what = format!("{} under {driver:?}", stringify!($body));
                    if let Err(e) = within(what.clone(), move || crate::$body(driver)) {
                        panic!("{what}: {e}");
                    }
                }
                #[test] fn null() { run(Driver::Null) }
                #[test] fn tokio_current_thread() { run(Driver::TokioCurrent) }
                #[test] fn tokio_multi_thread() { run(Driver::TokioMulti) }
                #[test] fn smol() { run(Driver::Smol) }
            }
        )*
    };
}

/// A backend that spins for completions (a busy-polling ring with an
/// hour's budget and a receive pending) leaves the host's thread to the
/// tasks on it: a wake from another thread reaches its task at once, and
/// the task then sends the receive its bytes. Host drivers used to let the
/// backend spin inside the step, which held the thread for the hour (a
/// current-thread tokio runtime's, smol's `block_on`'s).
fn spinning_backend_yields_to_the_host(driver: Driver) -> Result<()> {
    let rt = match Runtime::builder()
        .backend(BackendKind::Uring)
        .busy_poll(Duration::from_secs(3600))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skip: no io_uring here: {e}");
            return Ok(());
        }
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drive(driver, &rt, move |rt| async move {
        let s = TcpStream::connect(&rt, addr).await?;
        let (mut peer, _) = listener.accept()?;
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        let waking = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let _ = tx.send(());
        });
        let send = async move {
            rx.await.map_err(|_| std::io::Error::other("the waking thread went"))?;
            std::io::Write::write_all(&mut peer, b"ping")?;
            Ok::<_, mfio_core::Error>(peer)
        };
        let (read, sent) = futures::future::join(s.read_exact(Vec::with_capacity(4)), send).await;
        let _peer = sent?;
        let (n, got) = read.into_parts();
        n?;
        assert_eq!(got, b"ping");
        waking
            .join()
            .map_err(|_| std::io::Error::other("the waking thread panicked"))?;
        Ok(())
    })
}

driver_matrix!(
    mem_every_layer,
    mem_wake_after_backend_dropped,
    mem_single_completion,
    spinning_backend_yields_to_the_host,
);

#[test]
fn wake_after_backend_dropped_is_harmless() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let waker = {
        let rt = Runtime::new().expect("runtime");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio")
            .block_on(Tokio::run(
                &rt,
                std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())),
            ))
    };
    std::thread::spawn(move || waker.wake())
        .join()
        .expect("a stale wake must not panic");
    let err = std::io::Error::from(ErrorKind::Other);
    assert_eq!(err.kind(), ErrorKind::Other);
}

#[test]
fn stream_adapters_on_sockets() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = Runtime::new().expect("runtime");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(Tokio::run(&rt, async {
            let listener = TcpListener::bind(&rt, "127.0.0.1:0".parse().expect("addr"))?;
            let c = TcpStream::connect(&rt, listener.local_addr()?).await?;
            let (s, _) = listener.accept().await?;
            let mut w = AsyncIo::new(c, NoPos);
            tokio::io::AsyncWriteExt::write_all(&mut w, b"tokio adapter").await?;
            tokio::io::AsyncWriteExt::flush(&mut w).await?;
            let mut r = AsyncIo::new(s, NoPos);
            let mut buf = [0u8; 13];
            tokio::io::AsyncReadExt::read_exact(&mut r, &mut buf).await?;
            assert_eq!(&buf, b"tokio adapter");
            Ok::<(), mfio_core::Error>(())
        }))
        .expect("adapters on sockets");
}

/// Several backends, each driven by its own tokio task, used at once from
/// several tasks on a multi-thread runtime.
#[test]
fn several_backends_on_several_tokio_tasks() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    within("several backends".into(), || {
        let host = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio");
        let runtimes = runtimes();
        let mem = MemBackend::builder()
            .delay(Duration::from_micros(200))
            .build()
            .expect("mem");
        let dir = tempfile::tempdir().expect("dir");
        let mut drivers = Vec::new();
        for rt in &runtimes {
            drivers.push(host.spawn(Tokio::driver(rt.clone())));
        }
        drivers.push(host.spawn(Tokio::driver(mem.clone())));
        let results = host.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..8usize {
                let rt = runtimes[i % runtimes.len()].clone();
                let path = dir.path().join(format!("t{i}"));
                let memfile = mem.file(vec![i as u8; 1000]);
                tasks.push(tokio::spawn(async move {
                    let f = rt
                        .open(&path, OpenOptions::new().read(true).write(true).create(true))
                        .await?;
                    f.write_all_at(0, vec![i as u8; 10_000]).await.0?;
                    let (res, back) = f.read_to_end_at(0, Vec::new()).await.into_parts();
                    res?;
                    let (res, m) = memfile.read_exact_at(0, Vec::with_capacity(1000)).await.into_parts();
                    res?;
                    Ok::<bool, mfio_core::Error>(back == vec![i as u8; 10_000] && m == vec![i as u8; 1000])
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await.expect("task"));
            }
            all
        });
        for d in drivers {
            d.abort();
        }
        for r in results {
            assert!(r.expect("I/O on a backend driven by its own task"), "bytes differ");
        }
    });
}
