//! The contenders, one module per runtime: each builds its runtime once and
//! runs the workloads it has an API for (files, TCP, or both); a runtime
//! that does not build here says why in its rows.

/// `Contender<FileJob>` for a runtime struct with a `rt: Built<_>` field
/// whose `block_on` runs the module's `ops(job, span)` and
/// `load(path, chunk, len)`.
macro_rules! file_contender {
    ($ty:ty, $name:expr) => {
        impl $crate::measure::Contender<$crate::files::FileJob> for $ty {
            fn name(&self) -> String {
                $name.into()
            }

            fn skip_reason(&self, job: &$crate::files::FileJob) -> Option<String> {
                $crate::contenders::unbuilt(&self.rt).or_else(|| job.join.unspawnable())
            }

            fn run(
                &mut self,
                job: &$crate::files::FileJob,
                span: std::time::Duration,
            ) -> std::io::Result<$crate::measure::Sample> {
                let rt = $crate::contenders::ready(&mut self.rt)?;
                if job.kind == $crate::files::Kind::ManyFiles {
                    let load = |p| load(p, job.block, job.len);
                    return rt.block_on($crate::measure::drive_files(
                        &job.files, job.depth, job.block, span, load,
                    ));
                }
                rt.block_on(ops(job, span))
            }
        }
    };
}

/// `Contender<TcpJob>` for a runtime struct with a `rt: Built<_>` field
/// whose `block_on` runs the module's `pairs(n)` and stream calls
/// `round_trip`, `echo`, `send`, `recv`.
/// With `spawn`, the runtime is tokio's and the `JoinSet` style runs (the
/// ping-pong's two ends as tasks); otherwise that style is skipped.
macro_rules! tcp_contender {
    ($ty:ty, $name:expr) => {
        tcp_contender!(
            $ty,
            $name,
            |job: &$crate::tcp::TcpJob| job.join.unspawnable(),
            |p, job, span| { $crate::tcp::session(p, job, span, round_trip, echo, send, recv).await }
        );
    };
    ($ty:ty, $name:expr, spawn) => {
        tcp_contender!($ty, $name, |_job: &$crate::tcp::TcpJob| None, |p, job, span| {
            if job.join == $crate::measure::JoinStyle::JoinSet {
                $crate::tcp::ping_pong_spawned(p, job.size, span, round_trip, echo).await
            } else {
                $crate::tcp::session(p, job, span, round_trip, echo, send, recv).await
            }
        });
    };
    ($ty:ty, $name:expr, $skip:expr, |$p:ident, $job:ident, $span:ident| $body:expr) => {
        impl $crate::measure::Contender<$crate::tcp::TcpJob> for $ty {
            fn name(&self) -> String {
                $name.into()
            }

            fn skip_reason(&self, job: &$crate::tcp::TcpJob) -> Option<String> {
                $crate::contenders::unbuilt(&self.rt).or_else(|| ($skip)(job))
            }

            fn run(
                &mut self,
                $job: &$crate::tcp::TcpJob,
                $span: std::time::Duration,
            ) -> std::io::Result<$crate::measure::Sample> {
                $crate::contenders::ready(&mut self.rt)?.block_on(async {
                    let $p = pairs($job.conns).await?;
                    $body
                })
            }
        }
    };
}

pub mod compio;
pub mod fio;
pub mod glommio;
pub mod memflow;
pub mod mfio;
pub mod mfio_ucx;
pub mod monoio;
pub mod mpi_direct;
pub mod std_io;
pub mod tokio;
pub mod tokio_uring;
pub mod ucx_perftest;

use std::future::Future;
use std::io;

/// A runtime built once per benchmark, or why it did not build.
pub type Built<T> = Result<T, String>;

/// The skip reason of a runtime that did not build.
pub fn unbuilt<T>(b: &Built<T>) -> Option<String> {
    b.as_ref().err().map(|e| format!("runtime failed to build: {e}"))
}

/// The runtime, or its build error as an I/O error.
///
/// # Errors
/// The runtime did not build.
pub fn ready<T>(b: &mut Built<T>) -> io::Result<&mut T> {
    b.as_mut().map_err(|e| io::Error::other(e.clone()))
}

/// Reads `len` bytes in exact `chunk`-sized reads, `read_exact(at, buf)`
/// each, one owned buffer passed along; returns the bytes read. The body of
/// every many-files loader.
pub async fn read_chunks<F, Fut>(len: u64, chunk: usize, mut read_exact: F) -> io::Result<u64>
where
    F: FnMut(u64, Vec<u8>) -> Fut,
    Fut: Future<Output = (io::Result<()>, Vec<u8>)>,
{
    let mut buf = Vec::with_capacity(chunk);
    let mut at = 0u64;
    while at < len {
        let (res, b) = read_exact(at, buf).await;
        buf = b;
        res?;
        at += chunk as u64;
    }
    Ok(at)
}
