//! Files: [`OpenOptions`], [`File`] (a positional packet handle) and
//! [`Metadata`].

use std::ffi::CString;
use std::future::Future;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mfio_core::{
    check_offset, BufResult, CloseWrite, Direction, DriveStatus, Error, Flush, IoBackend, IoBuf, IoBufMut, IoLen,
    Op as ErrOp, Packet, PacketIo, PacketView, PollingHandle, QueueFull, Read, Result, Write,
};

use crate::op::{self, At, FileFd, Metadata};
use crate::runtime::OpFuture;
use crate::runtime::Runtime;

/// How to open a file; the same rules as [`std::fs::OpenOptions`], plus
/// `O_DIRECT`.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
    direct: bool,
    mode: u32,
    custom_flags: i32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// All options off; mode `0o666` (before the umask).
    pub fn new() -> Self {
        Self {
            read: false,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
            direct: false,
            mode: 0o666,
            custom_flags: 0,
        }
    }

    /// Open for reading.
    pub fn read(&mut self, on: bool) -> &mut Self {
        self.read = on;
        self
    }

    /// Open for writing.
    pub fn write(&mut self, on: bool) -> &mut Self {
        self.write = on;
        self
    }

    /// Every write goes to the end of the file (`O_APPEND`).
    pub fn append(&mut self, on: bool) -> &mut Self {
        self.append = on;
        self
    }

    /// Truncate to length 0 on open (needs write access).
    pub fn truncate(&mut self, on: bool) -> &mut Self {
        self.truncate = on;
        self
    }

    /// Create the file if it does not exist (needs write or append).
    pub fn create(&mut self, on: bool) -> &mut Self {
        self.create = on;
        self
    }

    /// Create the file, failing with `AlreadyExists` if it exists.
    pub fn create_new(&mut self, on: bool) -> &mut Self {
        self.create_new = on;
        self
    }

    /// Bypass the page cache (`O_DIRECT`): buffers, offsets and lengths must
    /// then be aligned (see [`Metadata::dio_offset_align`]).
    pub fn direct(&mut self, on: bool) -> &mut Self {
        self.direct = on;
        self
    }

    /// Permission bits for a created file (default `0o666`, before the umask).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    /// Extra `open(2)` flags, or-ed in.
    pub fn custom_flags(&mut self, flags: i32) -> &mut Self {
        self.custom_flags = flags;
        self
    }

    /// The `open(2)` flags, validated like `std` does.
    pub(crate) fn flags(&self) -> Result<i32> {
        let access = match (self.read, self.write, self.append) {
            (true, false, false) => libc::O_RDONLY,
            (false, true, false) => libc::O_WRONLY,
            (true, true, false) => libc::O_RDWR,
            (false, _, true) => libc::O_WRONLY | libc::O_APPEND,
            (true, _, true) => libc::O_RDWR | libc::O_APPEND,
            (false, false, false) => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "open needs read, write or append access",
                ))
            }
        };
        if !self.write && !self.append && (self.truncate || self.create || self.create_new) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "create or truncate needs write access",
            ));
        }
        if self.append && self.truncate && !self.create_new {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "append and truncate exclude each other",
            ));
        }
        let creation = match (self.create, self.truncate, self.create_new) {
            (_, _, true) => libc::O_CREAT | libc::O_EXCL,
            (true, true, false) => libc::O_CREAT | libc::O_TRUNC,
            (true, false, false) => libc::O_CREAT,
            (false, true, false) => libc::O_TRUNC,
            (false, false, false) => 0,
        };
        let direct = if self.direct { libc::O_DIRECT } else { 0 };
        Ok(access | creation | direct | libc::O_CLOEXEC | (self.custom_flags & !libc::O_ACCMODE))
    }
}

/// An open file on a [`Runtime`]: `PacketIo` at `u64` offsets (reads and
/// writes), at [`Flush`] (`fsync`), plus every mfio-core layer on top
/// (`IoRead`, `SyncIoRead`, `IoCursor`, …). Cloning shares the descriptor,
/// which is closed when the last clone and the last operation using it are gone.
#[derive(Debug, Clone)]
pub struct File {
    rt: Runtime,
    fd: Arc<FileFd>,
    append: bool,
    /// Try reads inline from the page cache first (see `RuntimeBuilder::inline_cached_reads`).
    inline_reads: bool,
    /// For an `O_DIRECT` file whose alignment the kernel reports: checked
    /// before any transfer is queued.
    dio: Option<DioAlign>,
}

/// The alignment `O_DIRECT` transfers need on one file (`statx` DIO fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DioAlign {
    /// Of buffer addresses (and of each vectored segment's length).
    mem: u32,
    /// Of file offsets and transfer lengths.
    offset: u32,
}

impl DioAlign {
    /// `InvalidInput`, naming the alignment and the value that broke it, if
    /// a transfer at `pos` (`None`: append) of the `(address, length)`
    /// segments is misaligned.
    fn check(self, op: ErrOp, pos: Option<u64>, segments: impl Iterator<Item = (usize, usize)>) -> Result<()> {
        let (mem, off) = (u64::from(self.mem.max(1)), u64::from(self.offset.max(1)));
        let broke = |what: String| {
            let err = Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "O_DIRECT on this file needs buffer addresses aligned to {mem} bytes and offsets and lengths \
                     aligned to {off} bytes: {what}"
                ),
            )
            .with_op(op);
            match pos {
                Some(p) => err.with_offset(p),
                None => err,
            }
        };
        if let Some(p) = pos.filter(|p| p % off != 0) {
            return Err(broke(format!("offset {p} is not")));
        }
        let mut total = 0u64;
        let mut count = 0;
        for (addr, len) in segments {
            let (addr, len) = (addr as u64, len as u64);
            if addr % mem != 0 {
                return Err(broke(format!("buffer address {addr:#x} is not")));
            }
            total += len;
            count += 1;
            if count > 1 && len % mem != 0 {
                return Err(broke(format!("a vectored segment of {len} bytes is not")));
            }
        }
        if total % off != 0 {
            return Err(broke(format!("length {total} is not")));
        }
        Ok(())
    }
}

impl File {
    /// The file's metadata, from `statx` on the backend.
    pub fn metadata(&self) -> OpFuture<Metadata> {
        let at = At {
            dir: Some(self.fd.clone()),
            path: CString::default(),
        };
        OpFuture::submit(&self.rt, |done| op::Statx {
            at,
            flags: libc::AT_EMPTY_PATH,
            done,
        })
    }

    /// Reads into `bufs` in order from `pos` with one vectored read
    /// (`preadv`); returns the bytes read (fewer only at the end of the file)
    /// and the buffers, each filled from its start.
    ///
    /// # Errors
    /// `InvalidInput` for more than 1024 buffers, a position above
    /// [`MAX_OFFSET`](mfio_core::MAX_OFFSET) or a misaligned `O_DIRECT`
    /// transfer; the OS error of the read.
    pub async fn read_vectored_at<B: IoBufMut>(&self, pos: u64, mut bufs: Vec<B>) -> BufResult<usize, Vec<B>> {
        let segments = bufs.iter_mut().map(|b| (b.as_buf_mut_ptr() as usize, b.buf_capacity()));
        if let Err(e) = self.check_transfer(ErrOp::Read, Some(pos), segments.collect::<Vec<_>>()) {
            return BufResult(Err(e), bufs);
        }
        let fd = self.fd.clone();
        vectored(&self.rt, bufs, move |views| op::ReadVectoredAt {
            fd: fd.clone(),
            pos,
            views,
        })
        .await
    }

    /// Writes `bufs` in order from `pos` with one vectored write (`pwritev`;
    /// in append mode at the end); returns the bytes written.
    ///
    /// # Errors
    /// `InvalidInput` for more than 1024 buffers, a position above
    /// [`MAX_OFFSET`](mfio_core::MAX_OFFSET) or a misaligned `O_DIRECT`
    /// transfer; the OS error of the write.
    pub async fn write_vectored_at<B: IoBuf>(&self, pos: u64, bufs: Vec<B>) -> BufResult<usize, Vec<B>> {
        let at = (!self.append).then_some(pos);
        let segments = bufs.iter().map(|b| (b.as_buf_ptr() as usize, b.buf_len()));
        if let Err(e) = self.check_transfer(ErrOp::Write, at, segments.collect::<Vec<_>>()) {
            return BufResult(Err(e), bufs);
        }
        let fd = self.fd.clone();
        vectored(&self.rt, bufs, move |views| op::WriteVectoredAt {
            fd: fd.clone(),
            pos: at,
            views,
        })
        .await
    }

    /// The alignment `O_DIRECT` needs on this file, as (memory, offset and
    /// length) from `statx`'s DIO fields (Linux 6.1+); `None` where the
    /// kernel or file system does not report it (4096 is then a safe guess
    /// on common devices).
    ///
    /// # Errors
    /// The OS error of `statx`.
    pub async fn dio_alignment(&self) -> Result<Option<(u32, u32)>> {
        let meta = self.metadata().await?;
        Ok(meta.dio_mem_align().zip(meta.dio_offset_align()))
    }

    /// Closes the file and reports `close(2)`'s error (which `Drop` cannot).
    /// If clones of this `File` or operations in flight still use the
    /// descriptor, it is closed when the last of them is gone and this
    /// returns `Ok(())` at once.
    ///
    /// # Errors
    /// The OS error of `close` (e.g. `EIO` for a write-back failure on NFS).
    pub async fn close(self) -> Result<()> {
        let File { rt, fd, .. } = self;
        let Ok(file) = Arc::try_unwrap(fd) else {
            return Ok(());
        };
        OpFuture::submit(&rt, |done| op::CloseFile { file, done }).await
    }

    /// Truncates or extends (with zeros) to `len` bytes (`ftruncate`).
    pub fn set_len(&self, len: u64) -> OpFuture<()> {
        if let Err(e) = check_offset(len, ErrOp::SetLen) {
            return OpFuture::ready(Err(e));
        }
        let fd = self.fd.clone();
        OpFuture::submit(&self.rt, |done| op::SetLen { fd, len, done })
    }

    /// Reserves disk space for `offset..offset + len`, growing the file if
    /// needed (`fallocate` mode 0).
    pub fn allocate(&self, offset: u64, len: u64) -> OpFuture<()> {
        let end = offset.saturating_add(len);
        if let Err(e) = check_offset(offset, ErrOp::SetLen).and_then(|_| check_offset(end, ErrOp::SetLen)) {
            return OpFuture::ready(Err(e));
        }
        let fd = self.fd.clone();
        OpFuture::submit(&self.rt, |done| op::Allocate { fd, offset, len, done })
    }

    pub(crate) fn into_parts(self) -> (Runtime, Arc<FileFd>) {
        (self.rt, self.fd)
    }

    /// Waits until written data (not metadata) reached the device
    /// (`fdatasync`), after every write submitted before it completed.
    ///
    /// # Errors
    /// The OS error of `fdatasync`.
    pub async fn sync_data(&self) -> Result<()> {
        let (outcome, _) = mfio_core::PacketIoExt::io(self, SyncData, &[][..]).await;
        outcome.exact().map_err(|e| e.with_op(ErrOp::Flush))
    }

    /// Waits until data and metadata reached the device (`fsync`); the same
    /// as flushing through [`Flush`].
    ///
    /// # Errors
    /// The OS error of `fsync`.
    pub async fn sync_all(&self) -> Result<()> {
        mfio_core::IoFlush::flush(self).await
    }

    /// The runtime the file belongs to.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }
}

impl AsFd for File {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl File {
    /// Checks a transfer at `pos` (`None`: append, where the position is the
    /// kernel's) of `segments` before anything is queued: the position must
    /// be one the OS takes, and an `O_DIRECT` file's alignment must hold.
    fn check_transfer(
        &self,
        op: ErrOp,
        pos: Option<u64>,
        segments: impl IntoIterator<Item = (usize, usize)>,
    ) -> Result<()> {
        if let Some(pos) = pos {
            check_offset(pos, op)?;
        }
        match self.dio {
            Some(dio) => dio.check(op, pos, segments.into_iter()),
            None => Ok(()),
        }
    }

    /// Runs a blocking caller's operation (see [`PacketView::caller_blocks`])
    /// right here, on its thread: it would only wait for another thread to
    /// do it and wake it. Anything else is queued for the backend.
    fn run_or_submit<D: Direction, O: Into<op::Request>>(
        &self,
        view: PacketView<D>,
        make: impl FnOnce(PacketView<D>) -> O,
    ) -> std::result::Result<(), PacketView<D>> {
        if view.caller_blocks() {
            let op = make(view).into();
            if let Some(file) = op.written_file() {
                file.write_started();
            }
            crate::blocking::run_blocking(op);
            return Ok(());
        }
        self.rt.try_submit(view, make)
    }
}

impl File {
    /// Queues an `fsync` (or, `data_only`, an `fdatasync`) of this file that
    /// completes `view`; it waits for the writes to this file sent before it.
    fn submit_sync<P>(
        &self,
        param: P,
        view: PacketView<Write>,
        data_only: bool,
    ) -> std::result::Result<(), QueueFull<Write, P>> {
        let fd = self.fd.clone();
        self.rt
            .try_submit(view, |view| op::Sync { fd, data_only, view })
            .map_err(|view| QueueFull { param, view })
    }
}

impl PacketIo<Read, u64> for File {
    /// With inline cached reads (default), data already in the page cache is
    /// read here with `preadv2(RWF_NOWAIT)`; a blocking caller's read (see
    /// [`PacketView::caller_blocks`]) is read here too; the rest is queued.
    fn try_send_io(&self, pos: u64, mut view: PacketView<Read>) -> std::result::Result<(), QueueFull<Read, u64>> {
        if let Err(e) = self.check_transfer(ErrOp::Read, Some(pos), [(view.as_mut_ptr() as usize, view.len())]) {
            view.fail(e);
            return Ok(());
        }
        if self.inline_reads {
            if let Some(n) = crate::blocking::sys::read_cached(&self.fd, pos, &mut view) {
                view.complete(n);
                return Ok(());
            }
        }
        let fd = self.fd.clone();
        self.run_or_submit(view, |view| op::ReadAt { fd, pos, view })
            .map_err(|view| QueueFull { param: pos, view })
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.rt.poll_ready(cx)
    }
}

impl PacketIo<Write, u64> for File {
    /// In append mode the position is ignored: every write goes to the end.
    /// A blocking caller's write (see [`PacketView::caller_blocks`]) runs on
    /// its own thread: buffered writes to most filesystems cannot be issued
    /// without blocking, so io_uring would hand each to a kernel worker and
    /// wake the caller back for every one.
    fn try_send_io(&self, pos: u64, view: PacketView<Write>) -> std::result::Result<(), QueueFull<Write, u64>> {
        let at = (!self.append).then_some(pos);
        let segment = [(view.as_slice().as_ptr() as usize, view.len())];
        if let Err(e) = self.check_transfer(ErrOp::Write, at, segment) {
            view.fail(e);
            return Ok(());
        }
        let fd = self.fd.clone();
        self.run_or_submit(view, |view| op::WriteAt { fd, pos: at, view })
            .map_err(|view| QueueFull { param: pos, view })
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.rt.poll_ready(cx)
    }
}

impl PacketIo<Write, Flush> for File {
    /// A flush is an `fsync` that runs after every write submitted before it completed.
    fn try_send_io(&self, param: Flush, view: PacketView<Write>) -> std::result::Result<(), QueueFull<Write, Flush>> {
        self.submit_sync(param, view, false)
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.rt.poll_ready(cx)
    }
}

impl PacketIo<Write, CloseWrite> for File {
    /// A file has no direction to close: this is a flush (`fsync`), so the
    /// `futures-io` `close` and tokio `shutdown` of an adapter over a file
    /// make its data durable.
    fn try_send_io(
        &self,
        param: CloseWrite,
        view: PacketView<Write>,
    ) -> std::result::Result<(), QueueFull<Write, CloseWrite>> {
        self.submit_sync(param, view, false)
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.rt.poll_ready(cx)
    }
}

/// The address of an `fdatasync`: a [`Write`] packet (usually empty) sent at
/// `SyncData` completes once the data of every earlier write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncData;

impl PacketIo<Write, SyncData> for File {
    fn try_send_io(
        &self,
        param: SyncData,
        view: PacketView<Write>,
    ) -> std::result::Result<(), QueueFull<Write, SyncData>> {
        self.submit_sync(param, view, true)
    }
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.rt.poll_ready(cx)
    }
}

impl IoLen for File {
    /// `fstat(2)` on the calling thread: a metadata lookup, never device I/O.
    fn io_len(&self) -> Result<u64> {
        Ok(rustix::fs::fstat(&*self.fd).map(|st| st.st_size as u64)?)
    }
}

impl IoBackend for File {
    fn polling_handle(&self) -> PollingHandle<'_> {
        self.rt.polling_handle()
    }
    fn drive(&self) -> DriveStatus {
        self.rt.drive()
    }
    fn drive_now(&self) -> DriveStatus {
        self.rt.drive_now()
    }
    fn spin_budget(&self) -> std::time::Duration {
        self.rt.spin_budget()
    }
}

/// Future of [`Runtime::open`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct OpenFuture {
    rt: Runtime,
    append: bool,
    inline_reads: bool,
    direct: bool,
    inner: OpFuture<OwnedFd>,
}

impl Future for OpenFuture {
    type Output = Result<File>;

    /// Errors keep the OS errno (like `std::fs`, the path is not attached).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<File>> {
        let res = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        Poll::Ready(match res {
            Ok(fd) => {
                // A metadata lookup on this thread, never device I/O: the
                // alignment every O_DIRECT transfer is checked against.
                let dio = if self.direct {
                    crate::blocking::sys::dio_alignment(&fd).map(|(mem, offset)| DioAlign { mem, offset })
                } else {
                    None
                };
                Ok(File {
                    fd: Arc::new(self.rt.file_fd(fd)),
                    inline_reads: self.inline_reads,
                    rt: self.rt.clone(),
                    append: self.append,
                    dio,
                })
            }
            Err(e) => Err(e.with_op(ErrOp::Open)),
        })
    }
}

/// Most buffers one vectored call takes (`IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

/// Sends one operation carrying a view of each buffer (waiting for room in
/// the queue), then collects the buffers; the count is the contiguous prefix
/// transferred, as for a single buffer.
async fn vectored<D, B, O>(
    rt: &Runtime,
    bufs: Vec<B>,
    make: impl Fn(Vec<PacketView<D>>) -> O,
) -> BufResult<usize, Vec<B>>
where
    D: mfio_core::Direction,
    B: mfio_core::PacketBuf<D>,
    O: Into<op::Request>,
{
    let mut packets: Vec<Packet<D, B>> = bufs.into_iter().map(Packet::new).collect();
    let mut views: Vec<PacketView<D>> = packets.iter_mut().filter_map(Packet::take_view).collect();
    let refused = if views.len() > IOV_MAX {
        drop(views);
        Some(Error::new(
            ErrorKind::InvalidInput,
            "more than IOV_MAX buffers in one vectored call",
        ))
    } else {
        loop {
            match rt.try_submit(views, &make) {
                Ok(()) => break None,
                Err(back) => {
                    views = back;
                    std::future::poll_fn(|cx| rt.poll_ready(cx)).await;
                }
            }
        }
    };
    std::future::poll_fn(|cx| {
        for p in packets.iter_mut() {
            if p.poll_complete(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(())
    })
    .await;
    let mut total = 0;
    let mut first_error = None;
    let mut stopped = false;
    let mut out = Vec::with_capacity(packets.len());
    for mut p in packets {
        let Some((outcome, buf)) = p.try_take() else { continue };
        if !stopped {
            total += outcome.transferred();
            if outcome.transferred() < outcome.len() {
                stopped = true;
                if total == 0 {
                    first_error = outcome.result().err();
                }
            }
        }
        out.push(buf);
    }
    let result = match (refused, first_error) {
        (Some(e), _) | (None, Some(e)) => Err(e),
        (None, None) => Ok(total),
    };
    BufResult(result, out)
}

pub(crate) fn open(rt: &Runtime, at: Result<At>, opts: &OpenOptions) -> OpenFuture {
    let inner = match opts.flags().and_then(|flags| Ok((flags, at?))) {
        Ok((flags, at)) => OpFuture::submit(rt, |done| op::OpenAt {
            at,
            flags,
            mode: opts.mode,
            done,
        }),
        Err(e) => OpFuture::ready(Err(e)),
    };
    OpenFuture {
        rt: rt.clone(),
        append: opts.append,
        // O_DIRECT reads always need the device: never worth a try.
        inline_reads: rt.inline_cached_reads() && !opts.direct,
        direct: opts.direct || opts.custom_flags & libc::O_DIRECT != 0,
        inner,
    }
}

impl File {
    /// The raw descriptor, for diagnostics.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// True if io_uring addresses this file through its registered-file
    /// table (a slot was free when it was opened); for diagnostics.
    pub fn is_registered(&self) -> bool {
        self.fd.fixed.is_some()
    }
}
