//! Results: per-contender series of repetitions, the text table, the summary
//! line, and the JSON and SVG files under `bench-results/`.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::measure::Sample;

/// Repeated measurements of one contender on one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    /// Workload name (e.g. `randread 4 KiB cached QD64`).
    pub workload: String,
    /// Contender name (e.g. `mfio uring`).
    pub contender: String,
    /// Operations per second, one entry per measured repetition.
    pub ops_per_s: Vec<f64>,
    /// MB/s (10^6 bytes), one entry per measured repetition.
    pub mb_per_s: Vec<f64>,
    /// Sampled operation latencies of all repetitions, in ns (not serialised).
    #[serde(skip)]
    pub lat_ns: Vec<u64>,
    /// Reported (p50, p99) per repetition, for contenders that measure their own.
    #[serde(skip)]
    pub reported: Vec<(u64, Option<u64>)>,
    /// Why the contender has no figures (skipped or failed).
    pub note: Option<String>,
    /// Which ranks of the workload shared a core, where ranks share cores
    /// (that decides the figures of a row).
    #[serde(default)]
    pub placement: Option<String>,
    /// Operations of every run, the warm-up included: what an instruction
    /// count of the whole process (callgrind) is divided by.
    #[serde(default)]
    pub ops_with_warmup: u64,
}

impl Series {
    /// An empty series.
    pub fn new(workload: &str, contender: &str) -> Self {
        Self {
            workload: workload.to_string(),
            contender: contender.to_string(),
            ops_per_s: Vec::new(),
            mb_per_s: Vec::new(),
            lat_ns: Vec::new(),
            reported: Vec::new(),
            note: None,
            placement: None,
            ops_with_warmup: 0,
        }
    }

    /// Adds one measured repetition.
    pub fn push(&mut self, s: Sample) {
        self.ops_with_warmup += s.ops;
        let secs = s.elapsed.as_secs_f64().max(1e-9);
        self.ops_per_s.push(s.ops as f64 / secs);
        self.mb_per_s.push(s.bytes as f64 / secs / 1e6);
        self.lat_ns.extend(s.lat_ns);
        self.reported.extend(s.percentiles);
    }

    /// Whether the series has figures.
    pub fn measured(&self) -> bool {
        !self.ops_per_s.is_empty()
    }

    /// Median operations per second.
    pub fn median_ops(&self) -> f64 {
        median(&self.ops_per_s)
    }

    /// Latency percentile `p` (0–100) of the sampled operations, in ns.
    pub fn latency(&self, p: f64) -> Option<u64> {
        if self.lat_ns.is_empty() {
            // Median over the repetitions of the tool's own percentile.
            // A tool that gives no p99 leaves it unknown.
            let pick = |r: &(u64, Option<u64>)| if p < 75.0 { Some(r.0) } else { r.1 };
            let v: Vec<f64> = self.reported.iter().filter_map(pick).map(|v| v as f64).collect();
            return (!v.is_empty()).then(|| median(&v) as u64);
        }
        let mut v = self.lat_ns.clone();
        v.sort_unstable();
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v.get(idx).copied()
    }

    fn summary(&self) -> Summary {
        let (lo, hi) = min_max(&self.ops_per_s);
        Summary {
            contender: self.contender.clone(),
            median_ops_per_s: self.median_ops(),
            min_ops_per_s: lo,
            max_ops_per_s: hi,
            median_mb_per_s: median(&self.mb_per_s),
            p50_ns: self.latency(50.0),
            p99_ns: self.latency(99.0),
            reps: self.ops_per_s.clone(),
            note: self.note.clone(),
            ops_with_warmup: self.ops_with_warmup,
        }
    }
}

/// Median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Smallest and largest of `v` (infinities when empty).
pub fn min_max(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// The JSON record of one contender on one workload.
#[derive(Debug, Serialize)]
struct Summary {
    contender: String,
    median_ops_per_s: f64,
    min_ops_per_s: f64,
    max_ops_per_s: f64,
    median_mb_per_s: f64,
    p50_ns: Option<u64>,
    p99_ns: Option<u64>,
    reps: Vec<f64>,
    note: Option<String>,
    /// Operations of every run, the warm-up included (see [`Series`]).
    ops_with_warmup: u64,
}

/// The JSON file of one workload.
#[derive(Debug, Serialize)]
struct WorkloadFile<'a> {
    workload: &'a str,
    /// [`Series::placement`] of the workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    placement: Option<&'a str>,
    baseline: Option<&'a str>,
    fastest: Option<&'a str>,
    contenders: Vec<Summary>,
    /// `ratios[i][j]`: median ops/s of contender i ÷ that of contender j.
    ratios: Vec<Vec<f64>>,
}

fn human_rate(v: f64) -> String {
    match v {
        v if !v.is_finite() => "–".into(),
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.1} k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn human_ns(v: Option<u64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 1_000_000 => format!("{:.2} ms", v as f64 / 1e6),
        Some(v) if v >= 10_000 => format!("{:.1} µs", v as f64 / 1e3),
        Some(v) => format!("{:.2} µs", v as f64 / 1e3),
    }
}

/// The fastest measured contender of a workload.
pub fn fastest(rows: &[Series]) -> Option<&Series> {
    rows.iter()
        .filter(|s| s.measured())
        .max_by(|a, b| a.median_ops().total_cmp(&b.median_ops()))
}

/// The fastest measured peer of a workload: a contender that is neither
/// mfio, nor the baseline (first row), nor a reference tool.
pub fn best_peer(rows: &[Series]) -> Option<&Series> {
    let base = rows.first().map(|s| s.contender.as_str());
    rows.iter()
        .filter(|s| {
            s.measured()
                && !s.contender.starts_with("mfio")
                && !s.contender.contains("(reference)")
                && Some(s.contender.as_str()) != base
        })
        .max_by(|a, b| a.median_ops().total_cmp(&b.median_ops()))
}

/// Prints the table of one workload: ops/s (median, min–max), MB/s, p50/p99
/// latency, the ratio to the baseline (first row), to the best peer and to
/// the fastest row; then the summary line naming the fastest.
pub fn print_workload(rows: &[Series], latency_label: &str) -> String {
    let mut t = String::new();
    let Some(first) = rows.first() else { return t };
    let base = rows.iter().find(|s| s.measured());
    let best = fastest(rows);
    let peer = best_peer(rows);
    let _ = writeln!(t, "\n{}", first.workload);
    if let Some(placement) = &first.placement {
        let _ = writeln!(t, "  ({placement})");
    }
    let _ = writeln!(
        t,
        "  {:<26} {:>10} {:>19} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "contender", "ops/s", "min–max", "MB/s", "p50", "p99", "÷base", "÷peer", "÷best"
    );
    for s in rows {
        if !s.measured() {
            let why = s.note.as_deref().unwrap_or("no figures");
            let _ = writeln!(t, "  {:<26} {why}", s.contender);
            continue;
        }
        let (lo, hi) = min_max(&s.ops_per_s);
        // A table with no peer in it (every row mfio's) shows a dash.
        let ratio =
            |o: Option<&Series>| o.map_or_else(|| "–".into(), |o| format!("{:.2}×", s.median_ops() / o.median_ops()));
        let _ = writeln!(
            t,
            "  {:<26} {:>10} {:>19} {:>9.1} {:>10} {:>10} {:>8} {:>8} {:>8}",
            s.contender,
            human_rate(s.median_ops()),
            format!("{}–{}", human_rate(lo), human_rate(hi)),
            median(&s.mb_per_s),
            human_ns(s.latency(50.0)),
            human_ns(s.latency(99.0)),
            ratio(base),
            ratio(peer),
            ratio(best),
        );
    }
    if let Some(best) = best {
        let runner_up = rows
            .iter()
            .filter(|s| s.measured() && s.contender != best.contender)
            .max_by(|a, b| a.median_ops().total_cmp(&b.median_ops()));
        let margin = runner_up.map_or(String::new(), |r| {
            format!(", {:.2}× {}", best.median_ops() / r.median_ops(), r.contender)
        });
        let _ = writeln!(
            t,
            "  => fastest: {} ({} ops/s{margin}); {latency_label}",
            best.contender,
            human_rate(best.median_ops())
        );
    }
    print!("{t}");
    t
}

/// The headline of a workload: how `contender` fares against the baseline
/// (first row) and the best peer; `None` if either is unmeasured.
pub fn headline(rows: &[Series], contender: &str) -> Option<String> {
    let ours = rows.iter().find(|s| s.contender == contender && s.measured())?;
    let base = rows.first().filter(|s| s.measured())?;
    let peer = best_peer(rows)?;
    Some(format!(
        "{}: {contender} {} ops/s, {:.2}× {}, {:.2}× the best peer ({})",
        ours.workload,
        human_rate(ours.median_ops()),
        ours.median_ops() / base.median_ops(),
        base.contender,
        ours.median_ops() / peer.median_ops(),
        peer.contender,
    ))
}

/// A file-name slug of a workload name.
pub fn slug(workload: &str) -> String {
    let mut out = String::new();
    for c in workload.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// Writes `<dir>/<slug>.json` and `<dir>/<slug>.svg` for one workload.
///
/// # Errors
/// Creating the directory or writing either file.
pub fn write_files(dir: &Path, rows: &[Series]) -> io::Result<()> {
    let Some(first) = rows.first() else { return Ok(()) };
    std::fs::create_dir_all(dir)?;
    let name = slug(&first.workload);
    let measured: Vec<&Series> = rows.iter().filter(|s| s.measured()).collect();
    let ratios = measured
        .iter()
        .map(|a| measured.iter().map(|b| a.median_ops() / b.median_ops()).collect())
        .collect();
    let file = WorkloadFile {
        workload: &first.workload,
        placement: first.placement.as_deref(),
        baseline: measured.first().map(|s| s.contender.as_str()),
        fastest: fastest(rows).map(|s| s.contender.as_str()),
        contenders: rows.iter().map(Series::summary).collect(),
        ratios,
    };
    let json = serde_json::to_string_pretty(&file).map_err(io::Error::other)?;
    std::fs::write(dir.join(format!("{name}.json")), json)?;
    crate::plot::bar_chart(&dir.join(format!("{name}.svg")), &first.workload, &measured)
}
