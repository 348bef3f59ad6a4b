//! File behaviour through every API layer (async, sync, `std::io`,
//! futures-io, tokio) on every mem backend configuration. One body per
//! behaviour; the matrix is generated.

mod util;

use std::io::{self, ErrorKind};
use std::time::Duration;

use mfio_core::mem::{MemBackend, MemFile};
use mfio_core::{
    AsyncIo, Error, IoBackendExt, IoCursor, IoFlush, IoRead, IoWrite, SyncIoFlush, SyncIoRead, SyncIoWrite,
};

/// One way of calling into a file.
trait Layer {
    /// One read call of up to `len` bytes at `pos`.
    fn read(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>>;
    fn read_exact(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>>;
    fn read_to_end(&self, f: &MemFile, pos: u64) -> io::Result<Vec<u8>>;
    /// Writes all of `data` at `pos` and flushes.
    fn write_all(&self, f: &MemFile, pos: u64, data: &[u8]) -> io::Result<()>;
}

struct Async;
impl Layer for Async {
    fn read(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let (r, b) = f.block_on(f.read_at(pos, Vec::with_capacity(len))).into_parts();
        r?;
        Ok(b)
    }
    fn read_exact(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let (r, b) = f.block_on(f.read_exact_at(pos, Vec::with_capacity(len))).into_parts();
        r?;
        Ok(b)
    }
    fn read_to_end(&self, f: &MemFile, pos: u64) -> io::Result<Vec<u8>> {
        let (r, b) = f.block_on(f.read_to_end_at(pos, Vec::new())).into_parts();
        assert_eq!(r?, b.len());
        Ok(b)
    }
    fn write_all(&self, f: &MemFile, pos: u64, data: &[u8]) -> io::Result<()> {
        f.block_on(async {
            f.write_all_at(pos, data.to_vec()).await.0?;
            f.flush().await
        })?;
        Ok(())
    }
}

struct Sync;
impl Layer for Sync {
    fn read(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        let n = f.blocking_read_at(pos, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
    fn read_exact(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        f.blocking_read_exact_at(pos, &mut buf)?;
        Ok(buf)
    }
    fn read_to_end(&self, f: &MemFile, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        f.blocking_read_to_end_at(pos, &mut buf)?;
        Ok(buf)
    }
    fn write_all(&self, f: &MemFile, pos: u64, data: &[u8]) -> io::Result<()> {
        f.blocking_write_all_at(pos, data)?;
        f.blocking_flush()?;
        Ok(())
    }
}

struct StdIo;
impl StdIo {
    fn cursor(f: &MemFile, pos: u64) -> io::Result<IoCursor<MemFile>> {
        use std::io::Seek;
        let mut c = IoCursor::new(f.clone(), 0);
        assert_eq!(c.seek(io::SeekFrom::Start(pos))?, pos);
        Ok(c)
    }
}
impl Layer for StdIo {
    fn read(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        let n = io::Read::read(&mut Self::cursor(f, pos)?, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
    fn read_exact(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        io::Read::read_exact(&mut Self::cursor(f, pos)?, &mut buf)?;
        Ok(buf)
    }
    fn read_to_end(&self, f: &MemFile, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io::Read::read_to_end(&mut Self::cursor(f, pos)?, &mut buf)?;
        Ok(buf)
    }
    fn write_all(&self, f: &MemFile, pos: u64, data: &[u8]) -> io::Result<()> {
        let mut c = Self::cursor(f, pos)?;
        io::Write::write_all(&mut c, data)?;
        io::Write::flush(&mut c)
    }
}

struct FuturesIo;
impl FuturesIo {
    fn adapter(f: &MemFile, pos: u64) -> io::Result<AsyncIo<MemFile>> {
        use futures::AsyncSeekExt;
        let mut a = AsyncIo::new(f.clone(), 0);
        assert_eq!(f.block_on(a.seek(io::SeekFrom::Start(pos)))?, pos);
        Ok(a)
    }
}
impl Layer for FuturesIo {
    fn read(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        let mut a = Self::adapter(f, pos)?;
        let n = f.block_on(futures::AsyncReadExt::read(&mut a, &mut buf))?;
        buf.truncate(n);
        Ok(buf)
    }
    fn read_exact(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        let mut a = Self::adapter(f, pos)?;
        f.block_on(futures::AsyncReadExt::read_exact(&mut a, &mut buf))?;
        Ok(buf)
    }
    fn read_to_end(&self, f: &MemFile, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut a = Self::adapter(f, pos)?;
        f.block_on(futures::AsyncReadExt::read_to_end(&mut a, &mut buf))?;
        Ok(buf)
    }
    fn write_all(&self, f: &MemFile, pos: u64, data: &[u8]) -> io::Result<()> {
        let mut a = Self::adapter(f, pos)?;
        f.block_on(async {
            futures::AsyncWriteExt::write_all(&mut a, data).await?;
            futures::AsyncWriteExt::close(&mut a).await
        })
    }
}

struct TokioIo;
impl TokioIo {
    fn adapter(f: &MemFile, pos: u64) -> io::Result<AsyncIo<MemFile>> {
        use tokio::io::AsyncSeekExt;
        let mut a = AsyncIo::new(f.clone(), 0);
        assert_eq!(f.block_on(a.seek(io::SeekFrom::Start(pos)))?, pos);
        Ok(a)
    }
}
impl Layer for TokioIo {
    fn read(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        let mut a = Self::adapter(f, pos)?;
        let n = f.block_on(tokio::io::AsyncReadExt::read(&mut a, &mut buf))?;
        buf.truncate(n);
        Ok(buf)
    }
    fn read_exact(&self, f: &MemFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        let mut a = Self::adapter(f, pos)?;
        f.block_on(tokio::io::AsyncReadExt::read_exact(&mut a, &mut buf))?;
        Ok(buf)
    }
    fn read_to_end(&self, f: &MemFile, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut a = Self::adapter(f, pos)?;
        f.block_on(tokio::io::AsyncReadExt::read_to_end(&mut a, &mut buf))?;
        Ok(buf)
    }
    fn write_all(&self, f: &MemFile, pos: u64, data: &[u8]) -> io::Result<()> {
        let mut a = Self::adapter(f, pos)?;
        f.block_on(async {
            tokio::io::AsyncWriteExt::write_all(&mut a, data).await?;
            tokio::io::AsyncWriteExt::shutdown(&mut a).await
        })
    }
}

/// Backend configurations: each knob alone and combined.
fn backend(config: &str) -> MemBackend {
    let mut b = MemBackend::builder();
    match config {
        "plain" => {}
        "queued" => {
            b.inline_completion(false);
        }
        "split" => {
            b.split_at(7);
        }
        "reorder" => {
            b.split_at(5).out_of_order(0x5eed);
        }
        "delay" => {
            b.delay(Duration::from_micros(200));
        }
        "tiny_queue" => {
            b.queue_capacity(1).window(1).inline_completion(false);
        }
        "all" => {
            b.split_at(3)
                .out_of_order(7)
                .delay(Duration::from_micros(50))
                .queue_capacity(2)
                .window(3);
        }
        other => panic!("unknown config {other}"),
    }
    b.build().expect("mem backend")
}

/// Bytes written are read back exactly, from any offset, across requests.
fn round_trip(layer: &dyn Layer, be: MemBackend) -> io::Result<()> {
    let data = util::pattern(20_000, 1);
    let f = be.file(Vec::new());
    layer.write_all(&f, 0, &data)?;
    assert_eq!(f.contents(), data);
    assert_eq!(layer.read_exact(&f, 0, data.len())?, data);
    assert_eq!(layer.read_exact(&f, 12_345, 100)?, &data[12_345..12_445]);
    let some = layer.read(&f, 19_990, 5)?;
    assert!(!some.is_empty() && some.len() <= 5);
    assert_eq!(some, &data[19_990..19_990 + some.len()]);
    assert_eq!(layer.read_to_end(&f, 3)?, &data[3..]);
    Ok(())
}

/// Writing past the end grows the file with zeros; overwrites stay in place.
fn write_grows_and_overwrites(layer: &dyn Layer, be: MemBackend) -> io::Result<()> {
    let f = be.file(b"abcdef".to_vec());
    layer.write_all(&f, 10, b"XY")?;
    assert_eq!(f.contents(), b"abcdef\0\0\0\0XY");
    layer.write_all(&f, 1, b"__")?;
    assert_eq!(f.contents(), b"a__def\0\0\0\0XY");
    Ok(())
}

/// At the end a read returns 0 bytes; across it, the bytes up to it;
/// `read_exact` fails with `UnexpectedEof`.
fn reads_at_and_past_eof(layer: &dyn Layer, be: MemBackend) -> io::Result<()> {
    let f = be.file(b"0123456789".to_vec());
    assert_eq!(layer.read(&f, 10, 8)?, b"");
    assert_eq!(layer.read(&f, 1_000_000, 8)?, b"");
    let tail = layer.read(&f, 7, 8)?;
    assert!(!tail.is_empty() && b"789".starts_with(&tail), "{tail:?}");
    assert_eq!(layer.read_to_end(&f, 7)?, b"789");
    assert_eq!(layer.read_to_end(&f, 10)?, b"");
    let err = layer.read_exact(&f, 5, 6).expect_err("only 5 bytes are left");
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    Ok(())
}

/// An injected failure keeps its errno and kind through every layer, and the
/// bytes before it are still delivered.
fn injected_error_keeps_errno(layer: &dyn Layer, config: &str) -> io::Result<()> {
    let mut b = MemBackend::builder();
    b.fail_range(1000..1010, Error::from_raw_os_error(13));
    if config != "plain" {
        b.split_at(64).out_of_order(3);
    }
    let be = b.build()?;
    let data = util::pattern(4096, 9);
    let f = be.file(data.clone());
    let err = layer.read_exact(&f, 900, 200).expect_err("range 1000..1010 fails");
    assert_eq!(
        (err.kind(), err.raw_os_error()),
        (ErrorKind::PermissionDenied, Some(13))
    );
    let before = layer.read(&f, 990, 20)?;
    assert_eq!(before, &data[990..1000], "partial success up to the failure");
    let err = layer.read(&f, 1005, 20).expect_err("starts inside the range");
    assert_eq!(err.raw_os_error(), Some(13));
    assert_eq!(layer.read_exact(&f, 1010, 50)?, &data[1010..1060]);
    let err = layer
        .write_all(&f, 995, b"0123456789")
        .expect_err("write into the range");
    assert_eq!(err.raw_os_error(), Some(13));
    Ok(())
}

macro_rules! per_config {
    ($body:ident, $l:expr, [$($cfg:ident),*]) => {
        mod $body {
            use super::*;
            $(
                #[test]
                fn $cfg() -> io::Result<()> {
                    util::within(Duration::from_secs(60), || crate::$body(&$l, backend(stringify!($cfg))))
                }
            )*
        }
    };
}

macro_rules! matrix {
    ($($layer:ident => $l:expr),* $(,)?) => {
        $(
            mod $layer {
                use super::*;
                per_config!(round_trip, $l, [plain, queued, split, reorder, delay, tiny_queue, all]);
                per_config!(write_grows_and_overwrites, $l, [plain, queued, split, reorder, delay, tiny_queue, all]);
                per_config!(reads_at_and_past_eof, $l, [plain, queued, split, reorder, delay, tiny_queue, all]);

                #[test]
                fn injected_error_keeps_errno() -> io::Result<()> {
                    crate::injected_error_keeps_errno(&$l, "plain")?;
                    crate::injected_error_keeps_errno(&$l, "split")
                }
            }
        )*
    };
}

matrix!(async_layer => Async, sync_layer => Sync, std_io => StdIo, futures_io => FuturesIo, tokio_io => TokioIo);

#[test]
fn async_errors_carry_op_and_offset() {
    let be = backend("split");
    let f = be.file(b"short".to_vec());
    let (res, buf) = f.block_on(f.read_exact_at(2, Vec::with_capacity(10))).into_parts();
    let err = res.expect_err("past the end");
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    assert_eq!((err.op(), err.offset()), (Some(mfio_core::Op::Read), Some(5)));
    assert_eq!(buf, b"ort", "bytes read before the shortfall are kept");
}

#[test]
fn seek_from_current_and_end_and_bad_seek() -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let be = backend("plain");
    let f = be.file(b"0123456789".to_vec());
    let mut c = IoCursor::new(f, 0);
    assert_eq!(c.seek(SeekFrom::End(-3))?, 7);
    assert_eq!(c.seek(SeekFrom::Current(-2))?, 5);
    let mut two = [0; 2];
    c.read_exact(&mut two)?;
    assert_eq!(&two, b"56");
    assert_eq!(c.stream_position()?, 7);
    let err = c.seek(SeekFrom::Current(-8)).expect_err("negative position");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(c.position(), 7, "a failed seek does not move the cursor");
    Ok(())
}

/// A mem file that records, per packet, whether it was marked as awaited by
/// a blocking caller.
struct MarkProbe {
    file: MemFile,
    marks: std::sync::Mutex<Vec<bool>>,
}

impl<D: mfio_core::Direction> mfio_core::PacketIo<D, u64> for MarkProbe
where
    MemFile: mfio_core::PacketIo<D, u64>,
{
    fn try_send_io(
        &self,
        pos: u64,
        view: mfio_core::PacketView<D>,
    ) -> std::result::Result<(), mfio_core::QueueFull<D, u64>> {
        self.marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(view.caller_blocks());
        self.file.try_send_io(pos, view)
    }
    fn poll_send_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        mfio_core::PacketIo::<D, u64>::poll_send_ready(&self.file, cx)
    }
}

impl mfio_core::IoBackend for MarkProbe {
    fn polling_handle(&self) -> mfio_core::PollingHandle<'_> {
        self.file.polling_handle()
    }
    fn drive(&self) -> mfio_core::DriveStatus {
        self.file.drive()
    }
}

#[test]
fn blocking_calls_mark_their_packets_and_async_calls_do_not() {
    let be = MemBackend::new().expect("mem backend");
    let probe = MarkProbe {
        file: be.file(b"0123456789".to_vec()),
        marks: std::sync::Mutex::new(Vec::new()),
    };
    let mut two = [0u8; 2];
    probe.blocking_read_exact_at(3, &mut two).expect("blocking read");
    probe.blocking_write_all_at(0, b"ab").expect("blocking write");
    let (n, _) = be.block_on(probe.read_at(0, Vec::with_capacity(4))).into_parts();
    assert_eq!(n.expect("async read"), 4);
    assert_eq!(two, *b"34");
    let marks = probe.marks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(marks, [true, true, false]);
}

/// Issue 9, defect 4: a position above `i64::MAX` is `InvalidInput` before
/// anything is queued, on the mem backend too, through every layer; a seek
/// there is refused and leaves the position.
#[test]
fn positions_beyond_i64_max_are_invalid_input() -> io::Result<()> {
    use mfio_core::MAX_OFFSET;
    use std::io::Seek;
    let backend = MemBackend::new()?;
    let file = backend.file(b"0123".to_vec());
    for pos in [u64::MAX, MAX_OFFSET + 1] {
        let err = backend
            .block_on(file.write_at(pos, b"ZZ".to_vec()))
            .0
            .expect_err("write");
        assert_eq!((err.kind(), err.offset()), (ErrorKind::InvalidInput, Some(pos)));
        let err = backend
            .block_on(file.read_at(pos, Vec::with_capacity(2)))
            .0
            .expect_err("read");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = file.blocking_write_at(pos, b"Z").expect_err("blocking write");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let mut byte = [0u8; 1];
        let err = file.blocking_read_at(pos, &mut byte).expect_err("blocking read");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(file.set_len(pos).expect_err("set_len").kind(), ErrorKind::InvalidInput);
        let mut cursor = IoCursor::new(file.clone(), 1);
        let err = cursor.seek(io::SeekFrom::Start(pos)).expect_err("seek");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(cursor.position(), 1);
        let mut adapter = AsyncIo::new(file.clone(), 1u64);
        let err = backend
            .block_on(futures::io::AsyncSeekExt::seek(&mut adapter, io::SeekFrom::Start(pos)))
            .expect_err("adapter seek");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(adapter.position(), 1);
    }
    assert_eq!(file.contents(), b"0123", "nothing was written anywhere");
    Ok(())
}
