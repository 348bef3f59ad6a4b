//! The reference: `ucx_perftest` (Debian `ucx-utils`), UCX's own benchmark
//! in C, as two processes (server and client) on the same transport, with
//! the same message size, read from its CSV output. Its iteration count is
//! set from its previous rate so that a repetition lasts about the span.
//! Its latency is one way (half a round trip), its bandwidth counts one-way
//! messages, as this benchmark's rows do.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::Built;
use crate::measure::{Contender, Sample};
use crate::ucx::{Pattern, UcxJob};

/// How `ucx_perftest` sets UCX up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Its defaults: no error handling, no wake-up support, busy polling.
    Plain,
    /// Endpoints with peer error handling and the context with wake-up
    /// support (`-e -I`), as mfio sets UCX up; still busy polling.
    AsMfio,
    /// As `AsMfio`, and asleep on the worker's descriptor between messages
    /// (`-E sleep`): the wake-up reference (ping-pong only).
    Asleep,
}

/// `ucx_perftest`, when installed.
pub struct UcxPerftest {
    setup: Setup,
    installed: Built<()>,
    /// One-way messages per second of the last run of each workload.
    rate: HashMap<String, f64>,
}

impl UcxPerftest {
    /// Looks for `ucx_perftest` on the `PATH`.
    pub fn new(setup: Setup) -> Self {
        let installed = Command::new("ucx_perftest")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(drop)
            .map_err(|e| format!("ucx_perftest: {e} (Debian: apt-get install ucx-utils)"));
        Self {
            setup,
            installed,
            rate: HashMap::new(),
        }
    }
}

fn test_name(pattern: Pattern) -> Option<&'static str> {
    match pattern {
        Pattern::PingPong => Some("tag_lat"),
        Pattern::TagStream => Some("tag_bw"),
        Pattern::AmStream => Some("ucp_am_bw"),
        Pattern::RemoteRead => None,
    }
}

/// A port nobody listens on now (the kernel's pick, released at once).
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn command(job: &UcxJob, setup: Setup) -> Command {
    let mut c = Command::new("ucx_perftest");
    c.env("UCX_WARN_UNUSED_ENV_VARS", "n");
    for (k, v) in job.transport.settings() {
        c.env(format!("UCX_{k}"), v);
    }
    match setup {
        Setup::Plain => {}
        // Peer error handling over shared memory needs this, as in mfio.
        Setup::AsMfio => {
            c.env("UCX_MM_ERROR_HANDLING", "y").args(["-e", "-I"]);
        }
        Setup::Asleep => {
            c.env("UCX_MM_ERROR_HANDLING", "y").args(["-e", "-I", "-E", "sleep"]);
        }
    }
    c
}

/// Waits for `child` at most `limit`; kills it after that.
fn wait_bounded(mut child: Child, limit: Duration) -> io::Result<Output> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("ucx_perftest did not finish within {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.wait_with_output()
}

/// The figures of the last CSV line: iterations, p50 latency (µs), and
/// overall message rate (one-way messages per second).
fn parse(stdout: &str) -> io::Result<(u64, f64, f64)> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "ucx_perftest printed no figures"))?;
    let f: Vec<&str> = line.split(',').collect();
    let num = |i: usize| {
        f.get(i)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("ucx_perftest line {line:?}")))
    };
    Ok((num(0)? as u64, num(1)?, num(7)?))
}

impl Contender<UcxJob> for UcxPerftest {
    fn name(&self) -> String {
        match self.setup {
            Setup::Plain => "ucx_perftest".into(),
            Setup::AsMfio => "ucx_perftest -e -I".into(),
            Setup::Asleep => "ucx_perftest -e -I, asleep".into(),
        }
    }

    fn skip_reason(&self, job: &UcxJob) -> Option<String> {
        if let Err(e) = &self.installed {
            return Some(e.clone());
        }
        if let Some(why) = job.join.style_independent() {
            return Some(why);
        }
        if self.setup == Setup::Asleep && job.pattern != Pattern::PingPong {
            return Some("wake-up latency is measured by the ping-pong only".into());
        }
        test_name(job.pattern)
            .is_none()
            .then(|| "ucx_perftest has no remote-read pattern".into())
    }

    fn run(&mut self, job: &UcxJob, span: Duration) -> io::Result<Sample> {
        let test = test_name(job.pattern).ok_or_else(|| io::Error::other("no such ucx_perftest test"))?;
        // A first guess of 5 µs plus 2 GB/s per message, then the last rate.
        let guess = 1.0 / (5e-6 + job.size as f64 / 2e9);
        let rate = self.rate.get(&job.title).copied().unwrap_or(guess);
        let one_way = if job.pattern == Pattern::PingPong { 2.0 } else { 1.0 };
        let iters = (span.as_secs_f64() * rate / one_way).clamp(10.0, 50e6) as u64;
        let warmup = (iters / 10).clamp(2, 10_000);
        let limit = span * 20 + Duration::from_secs(20);
        // The server may not listen yet when the client starts: retry.
        let mut tries = 0;
        let (client, server) = loop {
            let port = free_port()?.to_string();
            let server = command(job, self.setup)
                .args(["-p", &port])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            std::thread::sleep(Duration::from_millis(20));
            let client = command(job, self.setup)
                .args(["127.0.0.1", "-p", &port, "-t", test])
                .args(["-s", &job.size.to_string(), "-n", &iters.to_string()])
                .args(["-w", &warmup.to_string(), "-f", "-v"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let out = wait_bounded(client, limit)?;
            let refused = String::from_utf8_lossy(&out.stderr).contains("connect() failed");
            if refused && tries < 50 {
                let mut server = server;
                let _ = server.kill();
                let _ = server.wait();
                tries += 1;
                continue;
            }
            break (out, server);
        };
        // The server ends once the client has; as late as the client may.
        let server = wait_bounded(server, limit)?;
        if !client.status.success() || !server.status.success() {
            return Err(io::Error::other(format!(
                "ucx_perftest failed (client {}, server {}): {}",
                client.status,
                server.status,
                String::from_utf8_lossy(&client.stderr).trim()
            )));
        }
        let (done, p50_us, msg_rate) = parse(&String::from_utf8_lossy(&client.stdout))?;
        if msg_rate.is_nan() || msg_rate <= 0.0 {
            return Err(io::Error::other("ucx_perftest reported no message rate"));
        }
        self.rate.insert(job.title.clone(), msg_rate);
        let ops = (done as f64 * one_way) as u64;
        Ok(Sample {
            elapsed: Duration::from_secs_f64(ops as f64 / msg_rate),
            ops,
            bytes: ops * job.bytes(),
            lat_ns: Vec::new(),
            percentiles: (job.pattern == Pattern::PingPong).then_some(((p50_us * 1e3) as u64, None)),
        })
    }
}
