//! The reference limit: `fio` with its io_uring engine and the same
//! parameters, run as a subprocess per repetition and read from its JSON
//! output. fio keeps `iodepth` operations in flight continuously (no
//! batches); its latency figures are its own completion latencies.

use std::io;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::Built;
use crate::files::{unsupported, FileJob, Kind};
use crate::measure::{Contender, Sample};

/// `fio --ioengine=io_uring`, when installed.
pub struct Fio {
    version: Built<String>,
}

impl Fio {
    /// Looks for `fio` on the `PATH`.
    pub fn new() -> Self {
        let version = Command::new("fio")
            .arg("--version")
            .output()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                o.status
                    .success()
                    .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .ok_or_else(|| format!("fio --version failed: {}", o.status))
            });
        Self { version }
    }
}

fn rw(job: &FileJob) -> &'static str {
    match (job.kind, job.random) {
        (Kind::Write, true) => "randwrite",
        (Kind::Write, false) => "write",
        (_, true) => "randread",
        (_, false) => "read",
    }
}

fn args(job: &FileJob, span: Duration) -> Vec<String> {
    let mut a = vec![
        "--name=mfio-bench".to_string(),
        format!("--filename={}", job.path.display()),
        format!("--size={}", job.len),
        format!("--rw={}", rw(job)),
        format!("--bs={}", job.block),
        "--ioengine=io_uring".into(),
        format!("--iodepth={}", job.depth),
        format!("--direct={}", u8::from(job.direct)),
        // Keep the page cache: the cached workloads are about cached data.
        "--invalidate=0".into(),
        "--time_based".into(),
        format!("--runtime={}ms", span.as_millis().max(1)),
        "--norandommap".into(),
        "--randrepeat=0".into(),
        "--thread".into(),
        "--output-format=json".into(),
    ];
    if let Some(n) = job.sync_every {
        a.push(format!("--fdatasync={n}"));
    }
    a
}

fn field<'a>(v: &'a Value, path: &[&str]) -> io::Result<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k)).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("fio JSON has no {}", path.join(".")),
        )
    })
}

fn number(v: &Value, path: &[&str]) -> io::Result<f64> {
    field(v, path)?.as_f64().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("fio JSON {} is not a number", path.join(".")),
        )
    })
}

/// Parses one fio JSON report into a sample.
fn parse(out: &[u8], dir: &str) -> io::Result<Sample> {
    // fio may print notes before the JSON object.
    let start = out.iter().position(|&b| b == b'{').unwrap_or(0);
    let v: Value = serde_json::from_slice(&out[start..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let job = field(&v, &["jobs"])?
        .get(0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "fio JSON has no job"))?;
    let ms = number(job, &[dir, "runtime"])?;
    let pct = |p: &str| number(job, &[dir, "clat_ns", "percentile", p]).ok().map(|v| v as u64);
    Ok(Sample {
        elapsed: Duration::from_secs_f64(ms / 1e3),
        ops: number(job, &[dir, "total_ios"])? as u64,
        bytes: number(job, &[dir, "io_bytes"])? as u64,
        lat_ns: Vec::new(),
        percentiles: pct("50.000000").map(|p50| (p50, pct("99.000000"))),
    })
}

impl Contender<FileJob> for Fio {
    fn name(&self) -> String {
        "fio io_uring (reference)".into()
    }

    fn skip_reason(&self, job: &FileJob) -> Option<String> {
        if let Err(e) = &self.version {
            return Some(format!("fio not found ({e}); install it: apt-get install fio"));
        }
        if let Some(why) = job.join.style_independent() {
            return Some(why);
        }
        (job.kind == Kind::ManyFiles)
            .then(|| unsupported("no equivalent fio job"))
            .flatten()
    }

    fn run(&mut self, job: &FileJob, span: Duration) -> io::Result<Sample> {
        let out = Command::new("fio").args(args(job, span)).output()?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            return Err(io::Error::other(format!("fio failed ({}): {}", out.status, msg.trim())));
        }
        parse(&out.stdout, if job.kind == Kind::Write { "write" } else { "read" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_fio_report() {
        let json = br#"note: something
{"jobs":[{"read":{"runtime":300,"total_ios":64872,"io_bytes":265715712,
 "clat_ns":{"percentile":{"50.000000":175104,"99.000000":1187840}}}}]}"#;
        let s = parse(json, "read").expect("parse");
        assert_eq!(s.ops, 64872);
        assert_eq!(s.bytes, 265_715_712);
        assert_eq!(s.elapsed, Duration::from_millis(300));
        assert_eq!(s.percentiles, Some((175_104, Some(1_187_840))));
    }

    #[test]
    fn missing_fields_are_invalid_data() {
        let err = parse(br#"{"jobs":[{"read":{}}]}"#, "read").expect_err("no runtime");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
