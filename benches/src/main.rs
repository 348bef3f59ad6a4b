//! `mfio-bench`: benchmarks of mfio side by side with peers.
//!
//! With no subcommand it runs every benchmark with its defaults, shows a
//! progress bar and prints a result table. Subcommands run one benchmark
//! with its options (`mfio-bench core --help`).

mod core;
mod files;
mod report;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(name = "mfio-bench", about = "Benchmarks of mfio backends side by side with peers")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Packet round-trip cost on in-memory backends: mfio `mem` vs memflow mfio `VirtRt`.
    Core(core::CoreArgs),
    /// 4 KiB random reads over a page-cached file: mfio backends vs a `pread` loop.
    Randread(files::RandreadArgs),
}

fn progress_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn default_core() -> core::CoreArgs {
    core::CoreArgs {
        sizes: vec![64, 4096],
        depths: vec![1, 64],
        reps: 7,
        rep_ms: 300,
        file_size: 1 << 20,
        only: None,
    }
}

fn run_core(args: &core::CoreArgs) {
    let bar = progress_bar(core::steps(args));
    let series = core::run(args, &bar);
    bar.finish_with_message("done");
    println!(
        "core: ns per read (submit + complete + wake), median of {} interleaved repetitions of {} ms",
        args.reps, args.rep_ms
    );
    report::print_table(&series);
}

fn run_randread(args: &files::RandreadArgs) {
    let bar = progress_bar(files::steps(args));
    match files::run(args, &bar) {
        Ok(series) => {
            bar.finish_with_message("done");
            println!(
                "randread: ns per {} B read, median of {} interleaved repetitions of {} ms",
                args.block, args.reps, args.rep_ms
            );
            report::print_table(&series);
        }
        Err(e) => {
            bar.abandon_with_message("failed");
            eprintln!("randread failed: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    match Cli::parse().command {
        Some(Command::Core(args)) => run_core(&args),
        Some(Command::Randread(args)) => run_randread(&args),
        None => {
            run_core(&default_core());
            run_randread(&files::RandreadArgs::default());
        }
    }
}
