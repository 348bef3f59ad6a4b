//! The one error type of mfio: an [`std::io::ErrorKind`], the OS errno when
//! there is one, the operation and the offset that failed.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::io;

/// Result alias used throughout mfio.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operation an [`Error`] happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Reading bytes into a buffer.
    Read,
    /// Writing bytes from a buffer.
    Write,
    /// Flushing written bytes to the backing store.
    Flush,
    /// Moving a cursor.
    Seek,
    /// Querying a length or metadata.
    Len,
    /// Submitting a packet to a backend.
    Submit,
    /// Opening a file.
    Open,
    /// Reading metadata (size, type, times).
    Metadata,
    /// Creating a directory.
    CreateDir,
    /// Removing a file or directory.
    Remove,
    /// Renaming a file or directory.
    Rename,
    /// Listing a directory.
    ReadDir,
    /// Changing a file's length or allocating its space.
    SetLen,
    /// Closing a descriptor.
    Close,
    /// Accepting a connection on a listening socket.
    Accept,
    /// Connecting a socket to a peer.
    Connect,
    /// Shutting down one or both directions of a socket.
    Shutdown,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Seek => "seek",
            Op::Len => "len",
            Op::Submit => "submit",
            Op::Open => "open",
            Op::Metadata => "metadata",
            Op::CreateDir => "create dir",
            Op::Remove => "remove",
            Op::Rename => "rename",
            Op::ReadDir => "read dir",
            Op::SetLen => "set len",
            Op::Close => "close",
            Op::Accept => "accept",
            Op::Connect => "connect",
            Op::Shutdown => "shutdown",
        })
    }
}

/// What made the operation fail, beyond its [`io::ErrorKind`].
#[derive(Debug)]
enum Cause {
    /// The OS reported this errno.
    Os(i32),
    /// A view of the packet was dropped by the backend without completing.
    Aborted,
    /// The caller cancelled the operation.
    Cancelled,
    /// The backend's submission queue was full.
    QueueFull,
    /// A message was longer than the buffer it was received into.
    Truncated { message: Option<u64>, buffer: u64 },
    /// A plain message.
    Message(Cow<'static, str>),
    /// Another error, kept as the source.
    Source(Box<dyn StdError + Send + Sync>),
}

/// An I/O error with its kind, errno, operation and offset.
///
/// Converts to and from [`std::io::Error`]: the [`io::ErrorKind`] always
/// survives; an OS error becomes [`io::Error::from_raw_os_error`] so
/// `raw_os_error()` keeps working, and anything else is carried inside the
/// `io::Error` and recovered intact by `Error::from(io_error)`.
pub struct Error(Box<Inner>);

/// Boxed so that `Result<usize, Error>` stays two words on the hot path.
struct Inner {
    kind: io::ErrorKind,
    cause: Cause,
    op: Option<Op>,
    offset: Option<u64>,
}

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: io::ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self::with_cause(kind, Cause::Message(message.into()))
    }

    /// An error of `kind` wrapping another error as its source.
    pub fn other(kind: io::ErrorKind, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::with_cause(kind, Cause::Source(source.into()))
    }

    /// An error for an OS errno; the kind is derived the way `std` derives it.
    pub fn from_raw_os_error(errno: i32) -> Self {
        let kind = io::Error::from_raw_os_error(errno).kind();
        Self::with_cause(kind, Cause::Os(errno))
    }

    /// A view of a packet was dropped by a backend without being completed.
    pub fn aborted() -> Self {
        Self::with_cause(io::ErrorKind::Other, Cause::Aborted)
    }

    /// The caller cancelled the operation before it completed.
    pub fn cancelled() -> Self {
        Self::with_cause(io::ErrorKind::Interrupted, Cause::Cancelled)
    }

    /// The backend's submission queue was full and the packet was not taken.
    pub fn queue_full() -> Self {
        Self::with_cause(io::ErrorKind::WouldBlock, Cause::QueueFull)
    }

    /// A message of `message` bytes (if known) did not fit the `buffer`
    /// bytes it was received into; nothing of it was delivered.
    pub fn truncated(message: Option<u64>, buffer: u64) -> Self {
        Self::with_cause(io::ErrorKind::InvalidData, Cause::Truncated { message, buffer })
    }

    /// Fewer bytes than required were available.
    pub fn unexpected_eof() -> Self {
        Self::new(io::ErrorKind::UnexpectedEof, "unexpected end of data")
    }

    fn with_cause(kind: io::ErrorKind, cause: Cause) -> Self {
        Self(Box::new(Inner {
            kind,
            cause,
            op: None,
            offset: None,
        }))
    }

    /// Records the operation that failed (keeps an operation already set).
    #[must_use]
    pub fn with_op(mut self, op: Op) -> Self {
        self.0.op.get_or_insert(op);
        self
    }

    /// Records the offset that failed (keeps an offset already set).
    #[must_use]
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.0.offset.get_or_insert(offset);
        self
    }

    /// The [`io::ErrorKind`] of this error.
    pub fn kind(&self) -> io::ErrorKind {
        self.0.kind
    }

    /// The OS errno, if the OS reported this error.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self.0.cause {
            Cause::Os(errno) => Some(errno),
            _ => None,
        }
    }

    /// The operation that failed, if known.
    pub fn op(&self) -> Option<Op> {
        self.0.op
    }

    /// The offset (file position, or byte offset in a stream) that failed, if known.
    pub fn offset(&self) -> Option<u64> {
        self.0.offset
    }

    /// True if a backend dropped part of the packet without completing it.
    pub fn is_aborted(&self) -> bool {
        matches!(self.0.cause, Cause::Aborted)
    }

    /// True if the caller cancelled the operation.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.0.cause, Cause::Cancelled)
    }

    /// True if the packet was refused because the submission queue was full.
    pub fn is_queue_full(&self) -> bool {
        matches!(self.0.cause, Cause::QueueFull)
    }

    /// True if a received message did not fit its buffer
    /// ([`truncated`](Self::truncated)).
    pub fn is_truncated(&self) -> bool {
        matches!(self.0.cause, Cause::Truncated { .. })
    }

    /// A copy of this error. Sources that are not `Clone` are kept as their message.
    pub fn duplicate(&self) -> Self {
        let cause = match &self.0.cause {
            Cause::Os(e) => Cause::Os(*e),
            Cause::Aborted => Cause::Aborted,
            Cause::Cancelled => Cause::Cancelled,
            Cause::QueueFull => Cause::QueueFull,
            Cause::Truncated { message, buffer } => Cause::Truncated {
                message: *message,
                buffer: *buffer,
            },
            Cause::Message(m) => Cause::Message(m.clone()),
            Cause::Source(s) => Cause::Message(s.to_string().into()),
        };
        Self(Box::new(Inner {
            kind: self.0.kind,
            cause,
            op: self.0.op,
            offset: self.0.offset,
        }))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("cause", &self.0.cause)
            .field("op", &self.0.op)
            .field("offset", &self.0.offset)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(op) = self.0.op {
            write!(f, "{op}")?;
            if let Some(off) = self.0.offset {
                write!(f, " at offset {off}")?;
            }
            f.write_str(": ")?;
        }
        match &self.0.cause {
            Cause::Os(errno) => write!(f, "{} (os error {errno})", io::Error::from_raw_os_error(*errno).kind()),
            Cause::Aborted => f.write_str("backend dropped the request without completing it"),
            Cause::Cancelled => f.write_str("operation cancelled"),
            Cause::QueueFull => f.write_str("submission queue is full"),
            Cause::Truncated {
                message: Some(len),
                buffer,
            } => write!(f, "message of {len} bytes does not fit a buffer of {buffer} bytes"),
            Cause::Truncated { message: None, buffer } => {
                write!(f, "message is longer than the buffer of {buffer} bytes")
            }
            Cause::Message(m) => f.write_str(m),
            Cause::Source(s) => write!(f, "{s}"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.0.cause {
            Cause::Source(s) => Some(s.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        if let Some(errno) = e.raw_os_error() {
            return Self::from_raw_os_error(errno);
        }
        let kind = e.kind();
        match e.into_inner() {
            Some(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Self::with_cause(kind, Cause::Source(other)),
            },
            None => Self::with_cause(kind, Cause::Message(Cow::Owned(kind.to_string()))),
        }
    }
}

impl From<Error> for io::Error {
    /// An OS error becomes a plain OS `io::Error` (kind and errno kept, as
    /// `std` reports it); anything else is carried whole inside the `io::Error`.
    fn from(e: Error) -> Self {
        match e.0.cause {
            Cause::Os(errno) => io::Error::from_raw_os_error(errno),
            _ => io::Error::new(e.0.kind, e),
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Self::from_raw_os_error(e.raw_os_error())
    }
}

impl From<io::ErrorKind> for Error {
    fn from(kind: io::ErrorKind) -> Self {
        Self::with_cause(kind, Cause::Message(Cow::Owned(kind.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_round_trips_through_std() {
        let ours = Error::from_raw_os_error(libc_enoent()).with_op(Op::Read).with_offset(7);
        assert_eq!(ours.kind(), io::ErrorKind::NotFound);
        assert_eq!(ours.to_string(), "read at offset 7: entity not found (os error 2)");
        let std_err: io::Error = ours.into();
        assert_eq!(std_err.raw_os_error(), Some(2));
        assert_eq!(std_err.kind(), io::ErrorKind::NotFound);
        let back = Error::from(std_err);
        assert_eq!(back.raw_os_error(), Some(2));
        assert_eq!(back.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn non_os_error_keeps_context_through_std() {
        let ours = Error::unexpected_eof().with_op(Op::Read).with_offset(4096);
        let std_err: io::Error = ours.into();
        assert_eq!(std_err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(std_err.raw_os_error(), None);
        let back = Error::from(std_err);
        assert_eq!(back.op(), Some(Op::Read));
        assert_eq!(back.offset(), Some(4096));
        assert_eq!(back.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn foreign_io_error_keeps_kind_and_source() {
        let e = Error::from(io::Error::new(io::ErrorKind::InvalidData, "bad frame"));
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "bad frame");
        assert!(e.source().is_some());
    }

    #[test]
    fn result_of_error_stays_two_words() {
        assert_eq!(std::mem::size_of::<Result<usize>>(), 16);
    }

    #[test]
    fn first_op_and_offset_win() {
        let e = Error::aborted()
            .with_offset(3)
            .with_op(Op::Write)
            .with_offset(9)
            .with_op(Op::Read);
        assert_eq!((e.op(), e.offset()), (Some(Op::Write), Some(3)));
        assert!(e.is_aborted());
        assert!(!e.is_cancelled());
    }

    fn libc_enoent() -> i32 {
        rustix::io::Errno::NOENT.raw_os_error()
    }
}
