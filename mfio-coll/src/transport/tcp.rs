//! [`TcpTransport`]: the ranks of a job as processes joined by TCP, one
//! connection per pair of ranks ([`Bootstrap`](super::bootstrap::Bootstrap)
//! makes them), driven by an mfio-backends [`Runtime`] (io_uring or poll).
//!
//! A message is a frame: its [`Key`] and length (24 bytes, little-endian),
//! then its bytes. Each connection has one reader, which files every frame
//! in the [`Inbox`](super::Inbox) under its sender and key, and one writer at a time
//! (frames never interleave). A send dropped before its frame is begun
//! sends nothing; one dropped after leaves the rest of its frame to the
//! background, since a frame cut short would put the connection out of
//! step for good. The readers make progress whenever any send
//! or receive of the transport is polled, so a rank reads while it waits
//! for anything, and never stops reading while the other end sends.
//!
//! A rank that drops its transport says goodbye first: receives from it
//! then fail with an error naming it, and the rest of the group goes on. A
//! connection that ends without a goodbye, or fails, means the rank is
//! lost: the group is broken, so every receive with nothing waiting fails
//! (`ConnectionAborted`) with an error naming the lost rank, and the other
//! ranks are told too (a control frame under [`CONTROL_COMM`]), so a rank
//! waiting on a live peer that gave up because of the loss hears the cause
//! rather than waiting. Keepalive probes and `TCP_USER_TIMEOUT` turn a peer
//! that vanished without closing (a cut link, a frozen host) into such a
//! failure within the configured timeout.

use std::sync::Arc;
use std::time::Duration;

use futures_util::lock::{Mutex as AsyncMutex, OwnedMutexGuard};
use mfio_backends::{Runtime, TcpStream};
use mfio_core::{BufResult, Error, IoReadStream, IoWriteStream, Result, Slice};

use super::driven::{InPlace, Task};
use super::linked::{self, Core, Linked};
use super::{
    frame_header, no_such_rank, parse_frame_header, Key, Transport, TransportFuture, CONTROL_COMM, FRAME_HEADER,
};
use crate::comm::Rank;

/// Messages up to this many bytes go out with their header in one write.
const COALESCE: usize = 64 << 10;

/// Control frames (key.comm = [`CONTROL_COMM`]): key.seq says which.
const GOODBYE: u32 = 0;
/// key.step is the lost rank; the payload says why.
const LOST: u32 = 1;

/// One rank's end of a group joined by TCP.
pub struct TcpTransport {
    shared: Arc<Shared>,
}

struct Shared {
    /// Rank, size, inbox, and the connections' readers and notices to
    /// other ranks in flight.
    core: Core,
    /// Per rank: its connection's writer (`None` at this rank).
    writers: Vec<Option<Arc<Writer>>>,
}

impl Drop for Shared {
    /// Says goodbye on every connection, so the peers know this rank left
    /// on purpose. No operation writes now (each holds the state); a notice
    /// still in flight keeps its connection without a goodbye.
    fn drop(&mut self) {
        let frame = header(
            Key {
                comm: CONTROL_COMM,
                seq: GOODBYE,
                step: 0,
                chunk: 0,
            },
            0,
        );
        for w in self.writers.iter().flatten() {
            w.send_now(&frame);
        }
    }
}

/// One connection's sending side: one frame at a time.
struct Writer {
    stream: Arc<TcpStream>,
    /// Held while a frame is written. Owned guards: the writing of a frame
    /// may outlive the send that began it ([`write_frame`]).
    turn: Arc<AsyncMutex<()>>,
}

impl Writer {
    /// Writes a small control frame from this thread, unless a write is in
    /// progress on the connection (then `false`). Waits at most a second
    /// for room in the socket: a connection that takes nothing for that
    /// long is dead anyway.
    fn send_now(&self, frame: &[u8]) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        use rustix::io::Errno;
        use rustix::net::SendFlags;
        let Some(_turn) = self.turn.try_lock() else {
            return false;
        };
        let fd = std::os::fd::AsFd::as_fd(&*self.stream);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut sent = 0;
        while sent < frame.len() {
            match rustix::net::send(fd, &frame[sent..], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(n) => sent += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) if std::time::Instant::now() < deadline => {
                    let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                    let wait = Timespec {
                        tv_sec: 0,
                        tv_nsec: 10_000_000,
                    };
                    let _ = poll(&mut fds, Some(&wait));
                }
                Err(_) => break,
            }
        }
        true
    }
}

/// How a [`TcpTransport`]'s connections detect a peer that vanished.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// A connection with unacknowledged data for this long fails
    /// (`TCP_USER_TIMEOUT`), as does an idle one whose keepalive probes go
    /// unanswered for about as long.
    pub timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
        }
    }
}

fn set_liveness(stream: &std::net::TcpStream, live: Liveness) -> Result<()> {
    use rustix::net::sockopt;
    let secs = live.timeout.as_secs().clamp(1, 3600);
    let probe = Duration::from_secs((secs / 4).max(1));
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, probe)?;
    sockopt::set_tcp_keepintvl(stream, probe)?;
    sockopt::set_tcp_keepcnt(stream, 3)?;
    let ms = u32::try_from(live.timeout.as_millis()).unwrap_or(u32::MAX).max(1);
    sockopt::set_tcp_user_timeout(stream, ms)?;
    Ok(())
}

impl TcpTransport {
    /// This rank's transport over `links` (one connected stream per other
    /// rank, `None` at `rank`, as [`Bootstrap::connect`] returns them),
    /// driven by `rt`.
    ///
    /// # Errors
    /// `InvalidInput` if `links` does not have exactly one stream per other
    /// rank; the OS error of setting the sockets up.
    ///
    /// [`Bootstrap::connect`]: super::bootstrap::Bootstrap::connect
    pub fn new(rt: &Runtime, rank: Rank, links: Vec<Option<std::net::TcpStream>>, live: Liveness) -> Result<Self> {
        let size = links.len();
        if rank >= size || links.iter().enumerate().any(|(r, l)| l.is_some() == (r == rank)) {
            return Err(Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("links: rank {rank} of {size} needs one stream per other rank and none to itself"),
            ));
        }
        let mut streams = Vec::with_capacity(size);
        for link in links {
            match link {
                None => streams.push(None),
                Some(s) => {
                    set_liveness(&s, live)?;
                    s.set_nodelay(true)?;
                    streams.push(Some(Arc::new(TcpStream::from_std(rt, s)?)));
                }
            }
        }
        let shared = Arc::new(Shared {
            core: Core::new(rank, size),
            writers: streams
                .iter()
                .map(|s| {
                    s.as_ref().map(|stream| {
                        Arc::new(Writer {
                            stream: stream.clone(),
                            turn: Arc::new(AsyncMutex::new(())),
                        })
                    })
                })
                .collect(),
        });
        // The readers hold the shared state weakly: dropping the transport
        // drops them, which closes the connections.
        for (peer, s) in streams.into_iter().enumerate() {
            if let Some(stream) = s {
                shared
                    .core
                    .background
                    .spawn(read_loop(peer, stream, Arc::downgrade(&shared)));
            }
        }
        Ok(Self { shared })
    }
}

/// Bytes a reader takes from its connection at once: every frame in them
/// (short messages come several to a read) is filed without another read.
const READ_AHEAD: usize = 64 << 10;

/// The bytes read from a connection and not yet parsed.
struct ReadAhead {
    buf: Vec<u8>,
    /// Where the unparsed bytes start.
    start: usize,
}

impl ReadAhead {
    fn unparsed(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads more (whatever the connection has, up to the room left),
    /// after moving the unparsed bytes to the front.
    async fn fill(&mut self, stream: &TcpStream) -> Result<()> {
        self.buf.drain(..self.start);
        self.start = 0;
        let len = self.buf.len();
        let buf = std::mem::take(&mut self.buf);
        let BufResult(res, buf) = stream.read(Slice::new(buf, len, READ_AHEAD)).await;
        self.buf = buf.into_inner();
        match res? {
            0 => Err(Error::new(std::io::ErrorKind::UnexpectedEof, "the connection ended")),
            _ => Ok(()),
        }
    }

    /// The next frame's key and message, reading as needed; a long message
    /// is read straight into a buffer of the transport's pool. `None` once
    /// the transport is gone.
    async fn frame(&mut self, stream: &TcpStream, shared: &std::sync::Weak<Shared>) -> Result<Option<(Key, Vec<u8>)>> {
        while self.unparsed().len() < FRAME_HEADER {
            self.fill(stream).await?;
        }
        let Some((key, len)) = parse_frame_header(self.unparsed()) else {
            return Err(Error::new(
                std::io::ErrorKind::InvalidData,
                "a frame longer than memory",
            ));
        };
        self.start += FRAME_HEADER;
        if len <= READ_AHEAD - FRAME_HEADER {
            while self.unparsed().len() < len {
                self.fill(stream).await?;
            }
            let data = self.unparsed()[..len].to_vec();
            self.start += len;
            return Ok(Some((key, data)));
        }
        // Not held while reading: a dropped transport's reader must end.
        let Some(taken) = shared.upgrade().map(|s| s.core.pool.take(len)) else {
            return Ok(None);
        };
        let mut data = taken.map_err(|e| Error::new(e.kind(), format!("{e} ({key})")))?;
        let have = self.unparsed().len().min(len);
        data.extend_from_slice(&self.unparsed()[..have]);
        self.start += have;
        // A kept buffer may be larger: exactly the message is read.
        let BufResult(res, data) = stream.read_exact(Slice::new(data, have, len)).await;
        res?;
        Ok(Some((key, data.into_inner())))
    }
}

/// Reads frames from `peer` until its connection ends, filing each in the
/// inbox. A goodbye closes the peer; an end without one (or news from the
/// peer of a lost rank) breaks the group.
fn read_loop(peer: Rank, stream: Arc<TcpStream>, shared: std::sync::Weak<Shared>) -> Task {
    Box::pin(async move {
        let mut ahead = ReadAhead {
            buf: Vec::with_capacity(READ_AHEAD),
            start: 0,
        };
        let reason = loop {
            let (key, data) = match ahead.frame(&stream, &shared).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => break e,
            };
            let Some(shared) = shared.upgrade() else { return };
            if key.comm != CONTROL_COMM {
                shared.core.inbox.deliver(peer, key, data);
                continue;
            }
            match key.seq {
                GOODBYE => {
                    tracing::debug!(peer, "mfio-coll TCP: rank said goodbye");
                    shared.core.inbox.close(peer);
                    return;
                }
                LOST => {
                    let lost = key.step as Rank;
                    let why = String::from_utf8_lossy(&data);
                    shared
                        .core
                        .inbox
                        .poison(format!("rank {lost} is gone (rank {peer} lost it: {why})"));
                }
                _ => {}
            }
        };
        tracing::debug!(peer, error = %reason, "mfio-coll TCP: rank lost");
        if let Some(shared) = shared.upgrade() {
            shared.lost(peer, &reason.to_string());
        }
    })
}

impl Linked for Shared {
    fn core(&self) -> &Core {
        &self.core
    }

    /// Rank `peer` is lost (its connection failed, or a receive waited for
    /// a message it left without sending): the group is broken. Every
    /// receive with nothing waiting fails naming it, and the other ranks
    /// hear of it, so a rank waiting on a live peer that gives up because
    /// of the loss learns the cause. Once per group.
    fn lost(&self, peer: Rank, why: &str) {
        if !self.core.inbox.poison(format!("rank {peer} is gone: {why}")) {
            return;
        }
        let notices = self
            .writers
            .iter()
            .enumerate()
            .filter(|&(r, w)| r != peer && w.is_some());
        for (to, w) in notices {
            let Some(w) = w.clone() else { continue };
            let key = Key {
                comm: CONTROL_COMM,
                seq: LOST,
                step: peer as u32,
                chunk: self.core.rank as u32,
            };
            let mut frame = header(key, why.len());
            frame.extend_from_slice(why.as_bytes());
            // At once where the connection is free, so the news goes out
            // even if this rank gives up and leaves right after.
            if w.send_now(&frame) {
                continue;
            }
            self.core.background.spawn(Box::pin(async move {
                let _turn = w.turn.lock().await;
                if let Err(e) = w.stream.write_all(frame).await.0 {
                    tracing::debug!(to, error = %e, "mfio-coll TCP: could not tell a rank of a loss");
                }
            }));
        }
    }
}

fn header(key: Key, len: usize) -> Vec<u8> {
    frame_header(key, len, len.min(COALESCE))
}

/// Writes the frame of `data` under `key` on `w`'s connection, in the
/// `turn` the send took. A short message goes out with its header in one
/// write. It holds the connection's writer and not the transport, so a
/// frame left to the background does not keep the transport alive.
async fn write_frame(w: Arc<Writer>, turn: OwnedMutexGuard<()>, key: Key, data: Vec<u8>) -> BufResult<(), Vec<u8>> {
    let mut frame = header(key, data.len());
    let out = if data.len() <= COALESCE {
        frame.extend_from_slice(&data);
        BufResult(w.stream.write_all(frame).await.0, data)
    } else {
        match w.stream.write_all(frame).await.0 {
            Ok(()) => w.stream.write_all(data).await,
            Err(e) => BufResult(Err(e), data),
        }
    };
    drop(turn);
    out
}

impl Transport for TcpTransport {
    fn send(&self, to: Rank, key: Key, data: Vec<u8>) -> TransportFuture {
        let data = match linked::check_send(&*self.shared, to, key, data) {
            Ok(data) => data,
            Err(done) => return done,
        };
        let shared = self.shared.clone();
        linked::driven(&*self.shared, async move {
            let Some(w) = shared.writers[to].clone() else {
                return BufResult(Err(no_such_rank(to, shared.writers.len())), data);
            };
            // A send dropped while it waits for its turn sends nothing; once
            // its frame is begun, the rest is written even if the send is
            // dropped, so the connection's frames stay whole.
            let turn = w.turn.clone().lock_owned().await;
            let frame = Box::pin(write_frame(w, turn, key, data));
            let BufResult(res, data) = InPlace::new(shared.core.background.clone(), frame).await;
            let Err(e) = res else {
                return BufResult(Ok(()), data);
            };
            // The peer's connection failed. What it said before it went
            // (news of a lost rank, a goodbye) is still to be read: until
            // its reader has taken it, the cause is unknown.
            let why = std::future::poll_fn(|cx| shared.core.inbox.poll_ended(to, cx)).await;
            BufResult(Err(linked::send_failed(to, key, why, e)), data)
        })
    }

    crate::transport::linked::core_methods!();
}
