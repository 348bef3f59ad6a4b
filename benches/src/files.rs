//! File benchmarks: random and sequential reads, writes (with and without
//! fdatasync), many small files, and `O_DIRECT` reads; every contender on
//! the same files, same offsets, one submitting thread.

use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::ProgressBar;

use crate::contenders::{compio, fio, glommio, memflow, mfio, monoio, std_io, tokio, tokio_uring};
use crate::measure::{keep_only, Contender, JoinStyle, Pace, Positions, Titled};

/// Options shared by the file benchmarks.
#[derive(Debug, Clone, clap::Args)]
pub struct FileArgs {
    /// Size of the data file, in MiB (created once, reused while the size matches).
    #[arg(long = "size", default_value_t = 1024)]
    pub size_mib: u64,
    /// Measured repetitions per contender (after a warm-up), interleaved.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Length of one repetition in milliseconds.
    #[arg(long, default_value_t = 150)]
    pub rep_ms: u64,
    /// Directory of the data files (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run only contenders whose name contains one of these, or is exactly one
    /// written `=name` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Join styles of the async contenders, each a table of its own
    /// (comma-separated; workloads with a sync cadence use the window only).
    #[arg(long, value_delimiter = ',', default_value = "window,unordered,buffered,join-set")]
    pub joins: Vec<JoinStyle>,
}

impl Default for FileArgs {
    fn default() -> Self {
        Self {
            size_mib: 1024,
            reps: 5,
            rep_ms: 150,
            dir: None,
            only: Vec::new(),
            joins: vec![
                JoinStyle::Window,
                JoinStyle::Unordered,
                JoinStyle::Buffered,
                JoinStyle::JoinSet,
            ],
        }
    }
}

/// What a file workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads of `block` bytes.
    Read,
    /// Writes of `block` bytes.
    Write,
    /// Whole files loaded in `block`-sized chunks, open to close.
    ManyFiles,
}

/// One file workload, as every contender receives it.
#[derive(Debug, Clone)]
pub struct FileJob {
    /// Name in tables and file names.
    pub title: String,
    /// Reads, writes or many files.
    pub kind: Kind,
    /// Random (else sequential) offsets.
    pub random: bool,
    /// Bytes per operation (chunk size for many files).
    pub block: usize,
    /// Operations (files, for many files) in flight for async contenders.
    pub depth: usize,
    /// Open with `O_DIRECT` (page cache bypassed; buffers 4 KiB-aligned).
    pub direct: bool,
    /// fdatasync after this many writes.
    pub sync_every: Option<usize>,
    /// How async contenders await the operations in flight.
    pub join: JoinStyle,
    /// The data file (reads) or target file (writes).
    pub path: PathBuf,
    /// Its length.
    pub len: u64,
    /// The many small files.
    pub files: Vec<PathBuf>,
}

/// Alignment of `O_DIRECT` buffers and offsets here.
pub const DIRECT_ALIGN: usize = 4096;

impl FileJob {
    /// Offsets of this job (the same sequence for every contender).
    pub fn positions(&self) -> Positions {
        Positions::new(self.len, self.block, self.random)
    }

    /// The pace of an operation loop of `span`.
    pub fn pace(&self, span: Duration) -> Pace {
        Pace {
            span,
            block: self.block,
            sync_every: self.sync_every,
            join: self.join,
        }
    }

    /// Open flags beyond read/write for std-based opens.
    pub fn custom_flags(&self) -> i32 {
        if self.direct {
            libc::O_DIRECT
        } else {
            0
        }
    }

    /// Opens the job's file with std (for runtimes that adopt a std file).
    ///
    /// # Errors
    /// The open error.
    pub fn open_std(&self) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(self.kind == Kind::Write)
            .custom_flags(self.custom_flags())
            .open(&self.path)
    }

    /// A buffer for one operation: a `Vec` holding the fill pattern, and the
    /// offset inside it where a `DIRECT_ALIGN`-aligned block of `block`
    /// bytes starts (so peers can slice it).
    pub fn aligned_vec(&self) -> (Vec<u8>, usize) {
        let v = vec![0x5a; self.block + DIRECT_ALIGN];
        let off = v.as_ptr().align_offset(DIRECT_ALIGN);
        (v, off)
    }
}

/// Creates `path` with `len` bytes of a pattern unless it already has that
/// length.
fn ensure_file(path: &Path, len: u64) -> io::Result<()> {
    if std::fs::metadata(path).map(|m| m.len()).ok() == Some(len) {
        return Ok(());
    }
    let f = std::fs::File::create(path)?;
    let chunk: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 131 % 251) as u8).collect();
    let mut at = 0u64;
    while at < len {
        let n = chunk.len().min((len - at) as usize);
        f.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    f.sync_all()
}

/// Reads a file once so that it is in the page cache.
fn warm(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = f.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(());
        }
        at += n as u64;
    }
}

/// The files the benchmarks use, created (or reused) and page-cached.
pub struct Data {
    /// The read file.
    pub read: PathBuf,
    /// Its length.
    pub len: u64,
    /// The write target (a separate file of the same length).
    pub write: PathBuf,
    /// The many small files.
    pub small: Vec<PathBuf>,
}

/// Number and size of the many small files.
pub const SMALL_FILES: usize = 256;
/// Size of each small file.
pub const SMALL_FILE_LEN: u64 = 1 << 20;
/// Chunk in which small files are read.
pub const SMALL_CHUNK: usize = 256 << 10;

/// Prepares the data files for the given workloads.
///
/// # Errors
/// Creating or reading the files.
pub fn prepare(args: &FileArgs, need_write: bool, need_small: bool, progress: &ProgressBar) -> io::Result<Data> {
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir).join("mfio-bench");
    std::fs::create_dir_all(&dir)?;
    let len = args.size_mib << 20;
    let read = dir.join(format!("read-{}m.dat", args.size_mib));
    progress.set_message(format!("preparing {} MiB data file", args.size_mib));
    ensure_file(&read, len)?;
    warm(&read)?;
    let write = dir.join(format!("write-{}m.dat", args.size_mib));
    if need_write {
        progress.set_message("preparing the write target");
        ensure_file(&write, len)?;
    }
    let small_dir = dir.join("small");
    let mut small = Vec::new();
    if need_small {
        progress.set_message(format!("preparing {SMALL_FILES} small files"));
        std::fs::create_dir_all(&small_dir)?;
        for i in 0..SMALL_FILES {
            let p = small_dir.join(format!("{i:04}.dat"));
            ensure_file(&p, SMALL_FILE_LEN)?;
            warm(&p)?;
            small.push(p);
        }
    }
    Ok(Data {
        read,
        len,
        write,
        small,
    })
}

/// Every file contender, runtimes built once; a contender whose runtime does
/// not build here says so in its rows.
pub fn contenders(args: &FileArgs) -> Vec<Box<dyn Contender<FileJob>>> {
    let all: Vec<Box<dyn Contender<FileJob>>> = vec![
        Box::new(std_io::PreadLoop),
        Box::new(mfio::Mfio::new(mfio_backends::BackendKind::Uring)),
        Box::new(mfio::Mfio::with_inline_reads(mfio_backends::BackendKind::Uring, false)),
        Box::new(mfio::Mfio::busy_polling(Duration::from_micros(50))),
        Box::new(mfio::MfioOnTokio::new()),
        Box::new(mfio::Mfio::new(mfio_backends::BackendKind::Poll)),
        Box::new(mfio::MfioSync::new()),
        Box::new(tokio::Tokio::new()),
        Box::new(memflow::Memflow::new(memflow::Backend::IoUring)),
        Box::new(memflow::Memflow::new(memflow::Backend::Mio)),
        Box::new(compio::Compio::new()),
        Box::new(tokio_uring::TokioUring::new()),
        Box::new(monoio::Monoio::new()),
        Box::new(glommio::Glommio::new()),
        Box::new(fio::Fio::new()),
    ];
    keep_only(all, &args.only)
}

/// Shorthand for the skip reason of a job kind a contender has no API for.
pub fn unsupported(what: &str) -> Option<String> {
    Some(format!("skipped: {what}"))
}

impl Titled for FileJob {
    fn title(&self) -> &str {
        &self.title
    }

    fn latency(&self) -> &'static str {
        match self.kind {
            Kind::ManyFiles => "latency: one whole file, open to close, from the start of its group",
            _ if self.sync_every.is_some() => {
                "latency: one write, from the start of its batch (fdatasync after each batch)"
            }
            _ => "latency: one operation, submission to completion",
        }
    }
}
