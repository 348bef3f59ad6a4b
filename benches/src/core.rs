//! `core`: packet round-trip cost on in-memory backends (submit + complete +
//! wake), mfio's `mem` backend side by side with the original memflow mfio
//! (`mfio-rt` 0.1 `VirtRt`), same reads, same join, same thread.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use mfio_core::mem::MemBackend;
use mfio_core::{IoBackendExt, IoRead};

use crate::measure::{Batch, Sample};
use crate::report::Series;

/// Settings of the `core` benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct CoreArgs {
    /// Read sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,4096")]
    pub sizes: Vec<usize>,
    /// Queue depths (reads in flight).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub depths: Vec<usize>,
    /// Measured repetitions per contender (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Length of one repetition in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub rep_ms: u64,
    /// Size of the in-memory file read from, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub file_size: usize,
    /// Run only contenders whose name contains this text (for profiling).
    #[arg(long)]
    pub only: Option<String>,
}

impl Default for CoreArgs {
    fn default() -> Self {
        Self {
            sizes: vec![64, 4096],
            depths: vec![1, 64],
            reps: 5,
            rep_ms: 200,
            file_size: 1 << 20,
            only: None,
        }
    }
}

/// `mfio mem` completes inline where it can; `mfio mem (queued)` forces every
/// read through the queue, a driving step and a wake-up.
const CONTENDERS: [&str; 3] = ["mfio mem", "mfio mem (queued)", "memflow mfio VirtRt"];

/// Number of progress steps `run` takes.
pub fn steps(args: &CoreArgs) -> u64 {
    (args.sizes.len() * args.depths.len() * CONTENDERS.len() * (args.reps + 1)) as u64
}

/// Runs every (size, depth) workload, contenders interleaved A B A B …
pub fn run(args: &CoreArgs, progress: &ProgressBar) -> Vec<Vec<Series>> {
    let data = pattern(args.file_size);
    let mut out = Vec::new();
    for &size in &args.sizes {
        for &depth in &args.depths {
            let workload = format!("core: mem read {size} B QD{depth}");
            let mut series: Vec<Series> = CONTENDERS
                .iter()
                .filter(|c| args.only.as_ref().is_none_or(|o| **c == o.as_str()))
                .map(|c| Series::new(&workload, c))
                .collect();
            let spec = Spec {
                size,
                depth,
                span: Duration::from_millis(args.rep_ms),
                file_size: args.file_size,
            };
            for rep in 0..=args.reps {
                for s in series.iter_mut() {
                    progress.set_message(format!("core: {workload}, {}", s.contender));
                    let (elapsed, ops) = match s.contender.as_str() {
                        c if c == CONTENDERS[0] => mfio_mem(&data, &spec, true),
                        c if c == CONTENDERS[1] => mfio_mem(&data, &spec, false),
                        _ => memflow_virt(&data, &spec),
                    };
                    if rep > 0 {
                        s.push(Sample {
                            elapsed,
                            ops,
                            bytes: ops * size as u64,
                            ..Sample::default()
                        });
                    }
                    progress.inc(1);
                }
            }
            out.push(series);
        }
    }
    out
}

struct Spec {
    size: usize,
    depth: usize,
    span: Duration,
    file_size: usize,
}

impl Spec {
    /// Block-aligned pseudo-random read offsets.
    fn offsets(&self) -> impl Iterator<Item = u64> {
        let blocks = (self.file_size / self.size).max(1) as u64;
        let size = self.size as u64;
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        std::iter::repeat_with(move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % blocks) * size
        })
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// Reads per timing check: keeps `Instant::now` out of the measured cost.
const CHUNK: usize = 4096;

fn check_mfio(n: mfio_core::Result<usize>, want: usize) {
    if !matches!(n, Ok(k) if k == want) {
        panic!("mfio read returned {n:?}, wanted {want} bytes");
    }
}

fn mfio_mem(data: &[u8], spec: &Spec, inline: bool) -> (Duration, u64) {
    let be = match MemBackend::builder().inline_completion(inline).build() {
        Ok(be) => be,
        Err(e) => panic!("mem backend: {e}"),
    };
    let file = be.file(data.to_vec());
    let mut offsets = spec.offsets();
    let mut bufs: Vec<Vec<u8>> = (0..spec.depth).map(|_| Vec::with_capacity(spec.size)).collect();
    be.block_on(async {
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < spec.span {
            if spec.depth <= 1 {
                // Depth 1: await each read directly, no join around it.
                let mut buf = bufs.pop().unwrap_or_default();
                for _ in 0..CHUNK {
                    let (n, b) = file.read_at(offsets.next().unwrap_or(0), buf).await.into_parts();
                    check_mfio(n, spec.size);
                    buf = b;
                }
                bufs.push(buf);
                ops += CHUNK as u64;
                continue;
            }
            for _ in 0..CHUNK / spec.depth {
                let futs: Vec<_> = bufs
                    .drain(..)
                    .map(|b| file.read_at(offsets.next().unwrap_or(0), b))
                    .collect();
                for r in Batch::new(futs).await {
                    let (n, b) = r.into_parts();
                    check_mfio(n, spec.size);
                    bufs.push(b);
                }
                ops += spec.depth as u64;
            }
        }
        (start.elapsed(), ops)
    })
}

fn memflow_virt(data: &[u8], spec: &Spec) -> (Duration, u64) {
    use mfio::backend::IoBackendExt as _;
    use mfio::traits::IoRead as _;
    use mfio_rt::{Fs as _, OpenOptions, Path};

    let rt = mfio_rt::virt::VirtRt::build(std::iter::empty(), std::iter::once(("data", data)));
    let mut offsets = spec.offsets();
    let mut bufs: Vec<Vec<u8>> = (0..spec.depth.max(1)).map(|_| vec![0; spec.size]).collect();
    rt.block_on(async {
        let file = match rt.open(Path::new("data"), OpenOptions::new().read(true)).await {
            Ok(f) => f,
            Err(e) => panic!("memflow open: {e:?}"),
        };
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < spec.span {
            if spec.depth <= 1 {
                let buf = &mut bufs[0];
                for _ in 0..CHUNK {
                    if let Err(e) = file.read_all(offsets.next().unwrap_or(0), &mut buf[..]).await {
                        panic!("memflow read failed: {e:?}");
                    }
                }
                ops += CHUNK as u64;
                continue;
            }
            for _ in 0..CHUNK / spec.depth {
                let futs: Vec<_> = bufs
                    .iter_mut()
                    .map(|b| file.read_all(offsets.next().unwrap_or(0), &mut b[..]))
                    .collect();
                for r in Batch::new(futs).await {
                    if let Err(e) = r {
                        panic!("memflow read failed: {e:?}");
                    }
                }
                ops += spec.depth as u64;
            }
        }
        (start.elapsed(), ops)
    })
}
