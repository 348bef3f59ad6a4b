//! `mfio-bench`: mfio side by side with its peers and with the hardware
//! limit (`fio`), on files and on TCP.
//!
//! With no subcommand it runs every benchmark with its defaults (a few
//! minutes), shows a progress bar and prints a table per workload; each
//! workload also gets a JSON file and an SVG plot under `bench-results/`.
//! Subcommands run one benchmark with its options (`mfio-bench randread --help`).

mod coll;
mod contenders;
mod core;
mod files;
mod measure;
mod plot;
mod report;
mod tcp;
mod ucx;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use files::{FileArgs, FileJob, Kind};
use measure::{JoinStyle, Titled};
use report::Series;

#[derive(Parser, Debug)]
#[command(
    name = "mfio-bench",
    about = "Benchmarks of mfio backends side by side with peer runtimes"
)]
struct Cli {
    /// Directory of the JSON and SVG results.
    #[arg(long, global = true, default_value = "bench-results")]
    out: PathBuf,
    /// Exit with status 1 if one of mfio's contenders failed (its row says
    /// why); a peer's failure is printed as a warning.
    #[arg(long, global = true)]
    strict: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Packet round-trip cost on in-memory backends: mfio `mem` vs memflow mfio `VirtRt`.
    Core(core::CoreArgs),
    /// Random reads over a page-cached file, and with O_DIRECT.
    Randread(RandreadArgs),
    /// Sequential large reads over a page-cached file.
    Seqread(SeqreadArgs),
    /// Random small and sequential large writes, and small writes with fdatasync.
    Write(WriteArgs),
    /// Many small files, each opened, read whole in chunks and closed.
    Lsio(LsioArgs),
    /// TCP over loopback: ping-pong and bulk throughput.
    Tcp(tcp::TcpArgs),
    /// UCX over shared memory and TCP: tag ping-pong latency, tag and
    /// active-message bandwidth, remote reads; beside `ucx_perftest`.
    Ucx(ucx::UcxArgs),
    /// MPI collectives (allreduce, bcast, allgather) with 2 and 3 ranks:
    /// mfio's MPI backend beside the same MPI calls made directly; launches
    /// itself under `mpiexec`.
    Coll(coll::CollArgs),
    /// One rank of `coll` (internal: started by `coll` under `mpiexec`).
    #[command(hide = true)]
    CollRank(coll::RankArgs),
    /// The server process of `ucx`'s "2 processes" contender (internal).
    #[command(hide = true)]
    UcxServe(ucx::ServeArgs),
}

/// Settings of `randread`.
#[derive(Debug, Clone, clap::Args)]
struct RandreadArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Read size in bytes.
    #[arg(long, default_value_t = 4096)]
    block: usize,
    /// Queue depths of the async contenders.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    depths: Vec<usize>,
    /// Leave out the O_DIRECT workloads.
    #[arg(long)]
    no_direct: bool,
}

/// Settings of `seqread`.
#[derive(Debug, Clone, clap::Args)]
struct SeqreadArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Read size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    block: usize,
    /// Reads in flight for the async contenders.
    #[arg(long, default_value_t = 4)]
    depth: usize,
}

/// Settings of `write`.
#[derive(Debug, Clone, clap::Args)]
struct WriteArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Writes in flight for the async contenders (small writes).
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// Writes in flight for the async contenders (1 MiB writes).
    #[arg(long, default_value_t = 4)]
    large_depth: usize,
}

/// Settings of `lsio`.
#[derive(Debug, Clone, clap::Args)]
struct LsioArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Files loaded at once by the async contenders.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
}

fn progress_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    // Creating the data files takes seconds with no step done: keep the
    // spinner and the clock moving.
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Whether the filesystem of `path` accepts O_DIRECT.
fn direct_ok(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn job(title: String, kind: Kind, block: usize, depth: usize, data: &files::Data) -> FileJob {
    FileJob {
        title,
        kind,
        random: true,
        block,
        depth,
        direct: false,
        sync_every: None,
        join: JoinStyle::Window,
        path: if kind == Kind::Write {
            data.write.clone()
        } else {
            data.read.clone()
        },
        len: if kind == Kind::ManyFiles {
            files::SMALL_FILE_LEN
        } else {
            data.len
        },
        files: if kind == Kind::ManyFiles {
            data.small.clone()
        } else {
            Vec::new()
        },
    }
}

fn randread_jobs(a: &RandreadArgs, data: &files::Data) -> Vec<FileJob> {
    let bs = size_label(a.block);
    let mut jobs: Vec<FileJob> = a
        .depths
        .iter()
        .map(|&d| job(format!("randread {bs} cached QD{d}"), Kind::Read, a.block, d, data))
        .collect();
    if a.no_direct {
        return jobs;
    }
    match direct_ok(&data.read) {
        Ok(()) => jobs.extend(a.depths.iter().map(|&d| FileJob {
            direct: true,
            ..job(format!("randread {bs} O_DIRECT QD{d}"), Kind::Read, a.block, d, data)
        })),
        Err(e) => println!("randread: O_DIRECT workloads skipped: this filesystem refuses O_DIRECT ({e})"),
    }
    jobs
}

fn seqread_jobs(a: &SeqreadArgs, data: &files::Data) -> Vec<FileJob> {
    let title = format!("seqread {} cached QD{}", size_label(a.block), a.depth);
    vec![FileJob {
        random: false,
        ..job(title, Kind::Read, a.block, a.depth, data)
    }]
}

fn write_jobs(a: &WriteArgs, data: &files::Data) -> Vec<FileJob> {
    let d = a.depth;
    vec![
        job(format!("write 4 KiB random QD{d}"), Kind::Write, 4096, d, data),
        FileJob {
            random: false,
            ..job(
                format!("write 1 MiB sequential QD{}", a.large_depth),
                Kind::Write,
                1 << 20,
                a.large_depth,
                data,
            )
        },
        FileJob {
            sync_every: Some(d),
            ..job(
                format!("write 4 KiB random QD{d} + fdatasync/{d}"),
                Kind::Write,
                4096,
                d,
                data,
            )
        },
    ]
}

fn lsio_jobs(a: &LsioArgs, data: &files::Data) -> Vec<FileJob> {
    let title = format!(
        "lsio {} files × {}, {} chunks, {} files in flight",
        files::SMALL_FILES,
        size_label(files::SMALL_FILE_LEN as usize),
        size_label(files::SMALL_CHUNK),
        a.in_flight
    );
    vec![job(title, Kind::ManyFiles, files::SMALL_CHUNK, a.in_flight, data)]
}

/// Which data files beyond the read file a benchmark needs.
#[derive(Debug, Clone, Copy)]
struct Needs {
    write_file: bool,
    small_files: bool,
}

const READ_ONLY: Needs = Needs {
    write_file: false,
    small_files: false,
};

/// Prints and saves the results of one benchmark.
/// Returns false if one of mfio's contenders failed or a result file could
/// not be written.
fn report<'a>(out: &std::path::Path, results: &[Vec<Series>], latency: impl Fn(usize) -> &'a str) -> bool {
    let mut ok = true;
    for (i, rows) in results.iter().enumerate() {
        report::print_workload(rows, latency(i));
        if let Err(e) = report::write_files(out, rows) {
            eprintln!("could not write results to {}: {e}", out.display());
            ok = false;
        }
        for s in rows {
            let Some(why) = s.note.as_deref().filter(|n| n.starts_with("failed")) else {
                continue;
            };
            // A peer's program failing (a timeout on a loaded machine, a
            // missing tool) costs its row only; mfio's own must not fail.
            if is_mfio(&s.contender) {
                ok = false;
            } else {
                eprintln!("warning: peer {:?} on {:?} {why}", s.contender, s.workload);
            }
        }
    }
    ok
}

/// Whether a contender is one of mfio's own (its row name says so).
fn is_mfio(contender: &str) -> bool {
    contender.starts_with("mfio")
}

/// Each job once per join style, the style in its title; a job whose
/// operations are not joined (many files, or a sync after each batch) once.
fn with_join_styles(jobs: Vec<FileJob>, joins: &[JoinStyle]) -> Vec<FileJob> {
    let mut out = Vec::new();
    for job in jobs {
        if job.kind == Kind::ManyFiles || job.sync_every.is_some() || joins.is_empty() {
            out.push(job);
            continue;
        }
        out.extend(joins.iter().map(|&join| FileJob {
            title: format!("{}, {}", job.title, join.name()),
            join,
            ..job.clone()
        }));
    }
    out
}

/// Runs a file benchmark: prepares the data, builds the contenders once,
/// runs the jobs.
fn run_files(
    out: &std::path::Path,
    args: &FileArgs,
    needs: Needs,
    make_jobs: impl FnOnce(&files::Data) -> Vec<FileJob>,
) -> bool {
    let mut contenders = files::contenders(args);
    let bar = progress_bar(0);
    let data = match files::prepare(args, needs.write_file, needs.small_files, &bar) {
        Ok(d) => d,
        Err(e) => {
            bar.abandon_with_message("failed");
            eprintln!("preparing the data files failed: {e}");
            std::process::exit(1);
        }
    };
    let jobs = with_join_styles(make_jobs(&data), &args.joins);
    bar.set_length(measure::steps(jobs.len(), contenders.len(), args.reps));
    let span = Duration::from_millis(args.rep_ms);
    let results = measure::run_jobs(&jobs, &mut contenders, args.reps, span, &bar);
    bar.finish_and_clear();
    let ok = report(out, &results, |i| jobs[i].latency());
    print_headlines(&results);
    ok
}

/// The headline figures: mfio's default path in the `FuturesUnordered`
/// style (how most users await many operations) against `pread` and the
/// best peer, one line per workload.
fn print_headlines(results: &[Vec<Series>]) {
    let lines: Vec<String> = results
        .iter()
        .filter(|rows| {
            rows.first()
                .is_some_and(|s| s.workload.ends_with(JoinStyle::Unordered.name()))
        })
        .filter_map(|rows| report::headline(rows, "mfio uring"))
        .collect();
    if !lines.is_empty() {
        println!("\nHeadline (FuturesUnordered style):");
        for l in lines {
            println!("  {l}");
        }
    }
}

fn run_core(out: &std::path::Path, args: &core::CoreArgs) -> bool {
    let bar = progress_bar(core::steps(args));
    let results = core::run(args, &bar);
    bar.finish_and_clear();
    report(out, &results, |_| "latency: not sampled (in-memory round trips)")
}

fn run_tcp(out: &std::path::Path, args: &tcp::TcpArgs) -> bool {
    let mut contenders = tcp::contenders(args);
    let jobs = tcp::jobs(args);
    let bar = progress_bar(measure::steps(jobs.len(), contenders.len(), args.reps));
    let span = Duration::from_millis(args.rep_ms);
    let results = measure::run_jobs(&jobs, &mut contenders, args.reps, span, &bar);
    bar.finish_and_clear();
    report(out, &results, |i| jobs[i].latency())
}

fn run_ucx(out: &std::path::Path, args: &ucx::UcxArgs) -> bool {
    let mut contenders = ucx::contenders(args);
    let jobs = ucx::jobs(args);
    let bar = progress_bar(measure::steps(jobs.len(), contenders.len(), args.reps));
    let results = measure::run_jobs(&jobs, &mut contenders, args.reps, args.span(), &bar);
    bar.finish_and_clear();
    report(out, &results, |i| jobs[i].latency())
}

fn run_coll(out: &std::path::Path, args: &coll::CollArgs) -> bool {
    match coll::run(args) {
        Ok(results) => report(out, &results, |_| "latency: median time per call (the slowest rank's)"),
        Err(e) => {
            eprintln!("mfio-bench coll: {e}");
            false
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let out = cli.out.as_path();
    let ok = match cli.command {
        Some(Command::Core(a)) => run_core(out, &a),
        Some(Command::Randread(a)) => run_files(out, &a.files, READ_ONLY, |d| randread_jobs(&a, d)),
        Some(Command::Seqread(a)) => run_files(out, &a.files, READ_ONLY, |d| seqread_jobs(&a, d)),
        Some(Command::Write(a)) => {
            let needs = Needs {
                write_file: true,
                ..READ_ONLY
            };
            run_files(out, &a.files, needs, |d| write_jobs(&a, d))
        }
        Some(Command::Lsio(a)) => {
            let needs = Needs {
                small_files: true,
                ..READ_ONLY
            };
            run_files(out, &a.files, needs, |d| lsio_jobs(&a, d))
        }
        Some(Command::Tcp(a)) => run_tcp(out, &a),
        Some(Command::Ucx(a)) => run_ucx(out, &a),
        Some(Command::Coll(a)) => run_coll(out, &a),
        Some(Command::CollRank(a)) => match coll::rank(&a) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("mfio-bench coll-rank: {e}");
                std::process::exit(1);
            }
        },
        Some(Command::UcxServe(a)) => match contenders::mfio_ucx::serve_process(&a.job()) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("mfio-bench ucx-serve: {e}");
                std::process::exit(1);
            }
        },
        None => run_all(out),
    };
    if cli.strict && !ok {
        eprintln!("mfio-bench: a contender failed (--strict)");
        std::process::exit(1);
    }
}

/// Every benchmark with its defaults; the file workloads share one set of
/// contenders and one progress bar.
fn run_all(out: &std::path::Path) -> bool {
    let files = FileArgs::default();
    let rr = RandreadArgs {
        files: files.clone(),
        block: 4096,
        depths: vec![1, 64],
        no_direct: false,
    };
    let sr = SeqreadArgs {
        files: files.clone(),
        block: 1 << 20,
        depth: 4,
    };
    let wr = WriteArgs {
        files: files.clone(),
        depth: 64,
        large_depth: 4,
    };
    let ls = LsioArgs {
        files: files.clone(),
        in_flight: 16,
    };
    let needs = Needs {
        write_file: true,
        small_files: true,
    };
    let files_ok = run_files(out, &files, needs, |d| {
        let mut jobs = randread_jobs(&rr, d);
        jobs.extend(seqread_jobs(&sr, d));
        jobs.extend(write_jobs(&wr, d));
        jobs.extend(lsio_jobs(&ls, d));
        jobs
    });
    let tcp_ok = run_tcp(out, &tcp::TcpArgs::default());
    let core_ok = run_core(out, &core::CoreArgs::default());
    let ucx_ok = run_ucx(out, &ucx::UcxArgs::default());
    let coll_ok = run_coll(out, &coll::CollArgs::default());
    files_ok && tcp_ok && core_ok && ucx_ok && coll_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(contender: &str) -> Series {
        let mut s = Series::new("strict check", contender);
        s.note = Some("failed: did not finish within 10s".into());
        s
    }

    #[test]
    fn only_mfio_failures_fail_the_report() {
        let out = std::env::temp_dir().join(format!("mfio-bench-strict-{}", std::process::id()));
        let peer = vec![vec![failed("ucx_perftest -e -I")]];
        let own = vec![vec![failed("ucx_perftest -e -I"), failed("mfio ucx")]];
        let peer_ok = report(&out, &peer, |_| "");
        let own_ok = report(&out, &own, |_| "");
        let _ = std::fs::remove_dir_all(&out);
        assert!(peer_ok, "a peer's failure is a warning");
        assert!(!own_ok, "mfio's failure fails --strict");
    }
}
