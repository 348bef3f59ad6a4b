//! [`IoCursor`]: `std::io::{Read, Write, Seek}` over a packet handle, for code
//! that only knows `std::io`.

use std::io::{self, SeekFrom};

use crate::backend::{block_on, IoBackend};
use crate::buf::{BufResult, Slice};
use crate::error::Error;
use crate::ext::r#async::{IoFlush, IoRead, IoWrite};
use crate::io::{check_offset, Flush, IoLen, PacketIo, Position};
use crate::packet::{Read, Write};

/// A handle plus a position, implementing [`std::io::Read`],
/// [`std::io::Write`] and (for `u64` positions) [`std::io::Seek`].
///
/// Every call runs packets under [`block_on`] on the handle's backend.
/// Reads and writes stage through one owned buffer that the cursor reuses.
#[derive(Debug)]
pub struct IoCursor<T, P: Position = u64> {
    io: T,
    pos: P,
    staging: Vec<u8>,
}

impl<T, P: Position> IoCursor<T, P> {
    /// A cursor over `io` starting at `pos` (`0` for files, `NoPos` for streams).
    pub fn new(io: T, pos: P) -> Self {
        Self {
            io,
            pos,
            staging: Vec::new(),
        }
    }

    /// The current position.
    pub fn position(&self) -> P {
        self.pos
    }

    /// The handle.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Gives the handle back.
    pub fn into_inner(self) -> T {
        self.io
    }

    fn take_staging(&mut self, capacity: usize) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.staging);
        buf.clear();
        buf.reserve(capacity);
        buf
    }
}

impl<T: PacketIo<Read, P> + IoBackend, P: Position> io::Read for IoCursor<T, P> {
    fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let staging = self.take_staging(dst.len());
        let BufResult(res, staged) = block_on(&self.io, self.io.read_at(self.pos, Slice::new(staging, 0, dst.len())));
        let staged = staged.into_inner();
        let n = res?;
        dst[..n].copy_from_slice(&staged[..n]);
        self.pos = self.pos.advance(n);
        self.staging = staged;
        Ok(n)
    }
}

impl<T: PacketIo<Write, P> + PacketIo<Write, Flush> + IoBackend, P: Position> io::Write for IoCursor<T, P> {
    fn write(&mut self, src: &[u8]) -> io::Result<usize> {
        let mut staging = self.take_staging(src.len());
        staging.extend_from_slice(src);
        let BufResult(res, staged) = block_on(&self.io, self.io.write_at(self.pos, staging));
        self.staging = staged;
        let n = res?;
        self.pos = self.pos.advance(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(block_on(&self.io, IoFlush::flush(&self.io))?)
    }
}

impl<T: IoLen> io::Seek for IoCursor<T, u64> {
    /// Like `lseek(2)`: a target below 0 or above
    /// [`MAX_OFFSET`](crate::MAX_OFFSET) is `InvalidInput`, and the position
    /// stays where it was.
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            SeekFrom::Start(n) => (n, 0),
            SeekFrom::Current(d) => (self.pos, d),
            SeekFrom::End(d) => (self.io.io_len()?, d),
        };
        let target = base.checked_add_signed(delta).ok_or_else(|| {
            Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
            .with_op(crate::Op::Seek)
        })?;
        self.pos = check_offset(target, crate::Op::Seek)?;
        Ok(target)
    }
}
