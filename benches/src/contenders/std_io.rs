//! The hardware-side baseline: a plain `pread`/`pwrite` loop on one thread,
//! one operation at a time.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use crate::files::{FileJob, Kind};
use crate::measure::{drive_blocking, drive_files_blocking, Contender, Sample};

/// `pread`/`pwrite` on a `std::fs::File`, QD 1.
pub struct PreadLoop;

impl Contender<FileJob> for PreadLoop {
    fn name(&self) -> String {
        "std pread/pwrite (QD1)".into()
    }

    fn skip_reason(&self, _job: &FileJob) -> Option<String> {
        None
    }

    fn run(&mut self, job: &FileJob, span: Duration) -> io::Result<Sample> {
        if job.kind == Kind::ManyFiles {
            let mut buf = vec![0u8; job.block];
            return drive_files_blocking(&job.files, job.block, span, |p| load(p, &mut buf, job.len));
        }
        let file = job.open_std()?;
        let (mut v, off) = job.aligned_vec();
        let buf = &mut v[off..off + job.block];
        let mut pos = job.positions();
        if job.kind == Kind::Write {
            drive_blocking(&mut pos, job.pace(span), |p| file.write_at(buf, p), || file.sync_data())
        } else {
            drive_blocking(&mut pos, job.pace(span), |p| file.read_at(buf, p), || Ok(()))
        }
    }
}

/// Loads a whole file of `len` bytes in `buf`-sized chunks (open to close).
fn load(path: &Path, buf: &mut [u8], len: u64) -> io::Result<u64> {
    let f = std::fs::File::open(path)?;
    let mut at = 0u64;
    while at < len {
        f.read_exact_at(buf, at)?;
        at += buf.len() as u64;
    }
    Ok(at)
}
