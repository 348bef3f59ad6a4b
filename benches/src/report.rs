//! Interleaved repetitions, medians and the result table.

use std::time::Duration;

/// Repeated measurements of one contender on one workload.
#[derive(Debug, Clone)]
pub struct Series {
    /// Workload name (e.g. `read 64 B, QD 1`).
    pub workload: String,
    /// Contender name (e.g. `mfio mem`).
    pub contender: String,
    /// Nanoseconds per operation, one entry per measured repetition.
    pub ns_per_op: Vec<f64>,
}

impl Series {
    /// Median of the repetitions.
    pub fn median(&self) -> f64 {
        let mut v = self.ns_per_op.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// Smallest and largest repetition.
    pub fn range(&self) -> (f64, f64) {
        let min = self.ns_per_op.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.ns_per_op.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    }
}

/// ns/op of `ops` operations that took `elapsed`.
pub fn ns_per_op(elapsed: Duration, ops: u64) -> f64 {
    elapsed.as_nanos() as f64 / ops.max(1) as f64
}

/// Prints one table per workload: median ns/op, min–max, and the ratio of
/// every contender to the first one (the baseline of that workload).
pub fn print_table(series: &[Series]) {
    let mut workloads: Vec<&str> = Vec::new();
    for s in series {
        if !workloads.contains(&s.workload.as_str()) {
            workloads.push(&s.workload);
        }
    }
    println!();
    println!(
        "{:<24} {:<22} {:>12} {:>21} {:>12}",
        "workload", "contender", "median ns/op", "min–max ns/op", "vs first"
    );
    println!("{}", "-".repeat(95));
    for w in workloads {
        let rows: Vec<&Series> = series.iter().filter(|s| s.workload == w).collect();
        let base = rows.first().map_or(f64::NAN, |s| s.median());
        for s in &rows {
            let (lo, hi) = s.range();
            println!(
                "{:<24} {:<22} {:>12.1} {:>21} {:>11.2}×",
                w,
                s.contender,
                s.median(),
                format!("{lo:.1}–{hi:.1}"),
                s.median() / base
            );
        }
        if let Some(best) = rows.iter().min_by(|a, b| a.median().total_cmp(&b.median())) {
            println!("{:<24} fastest: {}", "", best.contender);
        }
    }
}
