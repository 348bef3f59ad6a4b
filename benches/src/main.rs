//! `mfio-bench`: benchmarks of mfio side by side with peers.
//!
//! With no subcommand it runs every benchmark with its defaults, shows a
//! progress bar and prints a result table. Subcommands run one benchmark
//! with its options (`mfio-bench core --help`).

mod core;
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
}

fn progress_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn main() {
    let cli = Cli::parse();
    let core_args = match cli.command {
        Some(Command::Core(args)) => args,
        None => core::CoreArgs {
            sizes: vec![64, 4096],
            depths: vec![1, 64],
            reps: 7,
            rep_ms: 300,
            file_size: 1 << 20,
            only: None,
        },
    };
    let bar = progress_bar(core::steps(&core_args));
    let series = core::run(&core_args, &bar);
    bar.finish_with_message("done");
    println!(
        "core: ns per read (submit + complete + wake), median of {} interleaved repetitions of {} ms",
        core_args.reps, core_args.rep_ms
    );
    report::print_table(&series);
}
