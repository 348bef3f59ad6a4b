//! [`Bootstrap`]: how the ranks of a job started by a launcher find each
//! other without MPI. The launcher gives each process its rank and the
//! job's size (`OMPI_COMM_WORLD_RANK`/`SIZE` under Open MPI's `mpiexec`,
//! `PMI_RANK`/`PMI_SIZE` under MPICH's and Slurm's, `MFIO_RANK`/`MFIO_SIZE`
//! by hand); `MFIO_COLL_ROOT=host:port` names where rank 0 listens.
//!
//! Rank 0 accepts one connection from every other rank on the root
//! address; each rank tells it the address where it listens itself, and
//! rank 0 hands the whole table back. Then each rank connects to the ranks
//! below it and accepts those above, so every pair of ranks shares exactly
//! one connection (rank 0's are the ones made to the root address). A rank
//! listens on the address of its own side of its connection to the root, so
//! in a network of several hosts (or namespaces) each rank is reached on
//! the interface that routes to the root. Every wait has a deadline: a rank
//! that does not join is named in the error. A connection that is not a
//! rank (a port probe, another protocol) is turned away, and one that says
//! nothing holds up no other: every hello is read as it comes.
//!
//! The connections are made with blocking calls, once, before any
//! collective; [`TcpTransport`](super::tcp::TcpTransport) then hands them
//! to an mfio runtime.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use mfio_core::{Error, Result};

use crate::comm::Rank;

/// The first bytes of every bootstrap message: a connection whose first
/// bytes differ (another protocol on the same port, a probe) is turned
/// away instead of misread.
const MAGIC: [u8; 8] = *b"mfiocol1";

/// The environment variables a launcher sets, in the order they are tried:
/// `(rank, size)`.
const LAUNCHERS: [(&str, &str); 3] = [
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("MFIO_RANK", "MFIO_SIZE"),
];

/// The variable naming rank 0's rendezvous address.
pub const ROOT_VAR: &str = "MFIO_COLL_ROOT";

/// How long bootstrapping waits by default for the other ranks.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// This rank's place in a job and where to meet the others.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    rank: Rank,
    size: usize,
    root: SocketAddr,
    timeout: Duration,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message.into())
}

impl Bootstrap {
    /// Rank `rank` of `size`, meeting the others at `root` (where rank 0
    /// listens).
    ///
    /// # Errors
    /// `InvalidInput` if `rank` is not below `size`.
    pub fn new(rank: Rank, size: usize, root: SocketAddr) -> Result<Self> {
        if rank >= size {
            return Err(invalid(format!("rank {rank} is outside a job of {size} ranks")));
        }
        Ok(Self {
            rank,
            size,
            root,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The rank, size and root the launcher's environment gives (see the
    /// module docs for the variables).
    ///
    /// # Errors
    /// `NotFound` naming the variables if none is set; `InvalidInput` if
    /// one does not parse or the rank is not below the size.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok();
        let (rank_var, size_var, rank, size) = LAUNCHERS
            .iter()
            .find_map(|&(r, s)| Some((r, s, var(r)?, var(s)?)))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    "no rank in the environment: set by mpiexec (OMPI_COMM_WORLD_RANK/SIZE), a PMI \
                     launcher (PMI_RANK/SIZE), or by hand (MFIO_RANK/MFIO_SIZE)",
                )
            })?;
        let number = |name: &str, value: &str| {
            value
                .trim()
                .parse::<usize>()
                .map_err(|_| invalid(format!("{name}={value:?} is not a number")))
        };
        let (rank, size) = (number(rank_var, &rank)?, number(size_var, &size)?);
        let root = var(ROOT_VAR).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("{ROOT_VAR} is not set: it names where rank 0 listens (host:port, the same for every rank)"),
            )
        })?;
        let root = root
            .to_socket_addrs()
            .map_err(|e| invalid(format!("{ROOT_VAR}={root:?}: {e}")))?
            .next()
            .ok_or_else(|| invalid(format!("{ROOT_VAR}={root:?} names no address")))?;
        Self::new(rank, size, root)
    }

    /// How long to wait for the other ranks, and for each exchange with
    /// them ([`DEFAULT_TIMEOUT`] unless set).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// This rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The deadline-bound wait of every step.
    pub fn deadline(&self) -> Duration {
        self.timeout
    }

    /// Connects every pair of ranks: one stream per other rank (index =
    /// rank; `None` at this rank's own index).
    ///
    /// # Errors
    /// - `TimedOut` naming the ranks that did not join in time, and listing
    ///   the connections turned away meanwhile: ones that were not
    ///   mfio-coll peers (another protocol, or closed before saying who
    ///   they are), which do not stop the wait for the ranks.
    /// - `InvalidData` for an mfio-coll peer that is not part of this job
    ///   (another size, a rank that came twice).
    /// - The OS error of listening or connecting.
    pub fn connect(&self) -> Result<Vec<Option<TcpStream>>> {
        let deadline = mfio_core::deadline_after(self.timeout);
        let mut links: Vec<Option<TcpStream>> = (0..self.size).map(|_| None).collect();
        if self.size == 1 {
            return Ok(links);
        }
        if self.rank == 0 {
            self.gather_table(deadline, &mut links)?;
            return Ok(links);
        }
        // Meet rank 0, listen where the route to it leaves this host.
        let root = connect_until(self.root, deadline, 0)?;
        let local: IpAddr = root.local_addr()?.ip();
        let listener = TcpListener::bind(SocketAddr::new(local, 0))?;
        let mut root = root;
        write_hello(&mut root, self.rank, self.size, Some(listener.local_addr()?))?;
        let table = read_table(&mut root, self.size, deadline)?;
        links[0] = Some(root);
        link_pairs(self.rank, &listener, &table, deadline, &mut links)?;
        Ok(links)
    }

    /// Rank 0: takes one connection from every other rank on the root
    /// address, then sends each the table of listening addresses.
    fn gather_table(&self, deadline: Instant, links: &mut [Option<TcpStream>]) -> Result<()> {
        let listener = bind_until(self.root, deadline)?;
        let mut addrs = vec![self.root; self.size];
        let found = accept_ranks(&listener, self.size, self.size - 1, deadline, links, |r| r > 0)?;
        for (rank, addr) in found {
            addrs[rank] = addr.unwrap_or(self.root);
        }
        for s in links.iter_mut().flatten() {
            write_table(s, &addrs)?;
        }
        Ok(())
    }
}

/// Connects every pair of ranks when the table of listening addresses is
/// known already (exchanged by another means, such as an `MPI_Allgather`
/// under the MPI backend): this rank listens on `listener` (its entry in
/// `table`), connects to the ranks below it and accepts those above. One
/// stream per other rank (index = rank; `None` at `rank`).
///
/// # Errors
/// As [`Bootstrap::connect`]; `InvalidInput` if `rank` is outside `table`.
pub fn connect_pairs(
    rank: Rank,
    listener: &TcpListener,
    table: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<Option<TcpStream>>> {
    let size = table.len();
    if rank >= size {
        return Err(invalid(format!("rank {rank} is outside a table of {size} ranks")));
    }
    let mut links: Vec<Option<TcpStream>> = (0..size).map(|_| None).collect();
    link_pairs(rank, listener, table, mfio_core::deadline_after(timeout), &mut links)?;
    Ok(links)
}

/// The most bytes [`exchange`] passes per rank: written whole before
/// anything is read, so it must fit in the sockets' buffers.
pub const MAX_EXCHANGE: usize = 32 << 10;

/// Gives `mine` to every other rank over `links` (as [`Bootstrap::connect`]
/// returns them) and takes theirs: every rank's bytes, in rank order
/// (`mine` at `rank`). Every rank of the job calls it; each waits at most
/// `timeout` for the others.
///
/// # Errors
/// `InvalidInput` for `mine` longer than [`MAX_EXCHANGE`] or `rank` without
/// its place in `links`; `TimedOut` naming a rank whose bytes did not come
/// in time; `InvalidData` for a peer that sent too many; the OS error of
/// the connection.
pub fn exchange(links: &mut [Option<TcpStream>], rank: Rank, mine: &[u8], timeout: Duration) -> Result<Vec<Vec<u8>>> {
    if mine.len() > MAX_EXCHANGE || rank >= links.len() || links[rank].is_some() {
        return Err(invalid(format!(
            "an exchange of {} bytes from rank {rank} of {} (at most {MAX_EXCHANGE} bytes, no link to itself)",
            mine.len(),
            links.len()
        )));
    }
    let deadline = mfio_core::deadline_after(timeout);
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(mine.len() as u64).to_le_bytes());
    out.extend_from_slice(mine);
    for s in links.iter_mut().flatten() {
        s.write_all(&out)?;
    }
    let mut all = Vec::with_capacity(links.len());
    for (peer, link) in links.iter_mut().enumerate() {
        let Some(s) = link else {
            all.push(mine.to_vec());
            continue;
        };
        let name = |e: Error| Error::new(e.kind(), format!("waiting for rank {peer}'s bootstrap bytes: {e}"));
        if read_n(s, MAGIC.len(), deadline).map_err(name)? != MAGIC {
            return Err(malformed("exchange"));
        }
        let len = read_u64(s, deadline).map_err(name)?;
        if len > MAX_EXCHANGE as u64 {
            return Err(malformed("an exchange longer than allowed"));
        }
        all.push(read_n(s, len as usize, deadline).map_err(name)?);
    }
    Ok(all)
}

/// Connects to every rank below `rank` not linked yet (their listeners are
/// in `table`), then accepts every rank above on `listener`.
fn link_pairs(
    rank: Rank,
    listener: &TcpListener,
    table: &[SocketAddr],
    deadline: Instant,
    links: &mut [Option<TcpStream>],
) -> Result<()> {
    let size = table.len();
    for (peer, addr) in table.iter().enumerate().take(rank) {
        if links[peer].is_some() {
            continue;
        }
        let mut s = connect_until(*addr, deadline, peer)?;
        write_hello(&mut s, rank, size, None)?;
        links[peer] = Some(s);
    }
    accept_ranks(listener, size, size - rank - 1, deadline, links, |r| r > rank)?;
    Ok(())
}

/// Listens on `addr`, trying again until `deadline` while it is in use (a
/// previous job's socket on its way out, another program for a moment).
fn bind_until(addr: SocketAddr, deadline: Instant) -> Result<TcpListener> {
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(Error::new(
                    e.kind(),
                    format!("rank 0 cannot listen on {addr} ({ROOT_VAR}): {e}"),
                ))
            }
        }
    }
}

/// Connects to `addr`, trying again until `deadline` while nobody listens
/// there yet (the peer may start later).
fn connect_until(addr: SocketAddr, deadline: Instant, peer: Rank) -> Result<TcpStream> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(
                ErrorKind::TimedOut,
                format!("rank {peer} did not listen on {addr} in time"),
            ));
        }
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))) {
            // Connecting to a free port of this host can land on the very
            // port the kernel picked for this end (a TCP self-connection):
            // that is nobody, so try again.
            Ok(s) if s.local_addr().ok() == Some(addr) => {
                drop(s);
                std::thread::sleep(Duration::from_millis(20).min(left));
            }
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::TimedOut) => {
                std::thread::sleep(Duration::from_millis(20).min(left));
            }
            Err(e) => {
                return Err(Error::new(
                    e.kind(),
                    format!("connecting to rank {peer} at {addr}: {e}"),
                ))
            }
        }
    }
}

/// A connection accepted on a listener whose hello is still coming.
struct Caller {
    stream: TcpStream,
    from: SocketAddr,
    /// The hello's bytes so far (never more: what the peer sends after it
    /// is for later steps).
    got: Vec<u8>,
}

/// What a [`Caller`] has said so far.
enum Heard {
    /// Not all of its hello yet; `true` if some came now.
    Waiting(bool),
    /// Its whole hello.
    Hello,
    /// It is not a rank of an mfio-coll job: why.
    Stranger(String),
}

/// Bytes of a hello before its address: magic, rank, size, the address's
/// family.
const HELLO_FIXED: usize = MAGIC.len() + 8 + 8 + 1;
/// The longest hello (an IPv6 address and its port).
const HELLO_MAX: usize = HELLO_FIXED + 16 + 2;

/// The length of the hello that `got` begins, as far as `got` tells (the
/// hello is whole once `got` has that many bytes); `Err` if `got` cannot
/// begin a hello.
fn hello_len(got: &[u8]) -> std::result::Result<usize, &'static str> {
    let n = got.len().min(MAGIC.len());
    if got[..n] != MAGIC[..n] {
        return Err("not an mfio-coll peer");
    }
    match got.get(HELLO_FIXED - 1) {
        None => Ok(HELLO_FIXED),
        Some(&family) => addr_len(family)
            .map(|n| HELLO_FIXED + n)
            .ok_or("an unknown address family in its hello"),
    }
}

impl Caller {
    /// Reads what has come of the hello, without waiting and never past
    /// its end.
    fn hear(&mut self) -> Heard {
        let mut more = false;
        loop {
            let want = match hello_len(&self.got) {
                Ok(want) => want,
                Err(why) => return Heard::Stranger(why.into()),
            };
            if self.got.len() == want {
                return Heard::Hello;
            }
            let mut buf = [0u8; HELLO_MAX];
            match self.stream.read(&mut buf[..want - self.got.len()]) {
                Ok(0) => return Heard::Stranger("closed before its hello".into()),
                Ok(n) => {
                    self.got.extend_from_slice(&buf[..n]);
                    more = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Heard::Waiting(more),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Heard::Stranger(e.to_string()),
            }
        }
    }
}

/// The rank and listening address of a whole hello (as [`hello_len`] has
/// checked it) from a job of `size` ranks.
fn parse_hello(hello: &[u8], size: usize) -> Result<(Rank, Option<SocketAddr>)> {
    let number = |at: usize| {
        let bytes: [u8; 8] = hello
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("hello"))?;
        usize::try_from(u64::from_le_bytes(bytes)).map_err(|_| malformed("hello"))
    };
    let (rank, theirs) = (number(MAGIC.len())?, number(MAGIC.len() + 8)?);
    if theirs != size || rank >= size {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("a peer says it is rank {rank} of {theirs}; this job has {size} ranks"),
        ));
    }
    let family = hello.get(HELLO_FIXED - 1).copied().unwrap_or(u8::MAX);
    let listen = addr_from(family, hello.get(HELLO_FIXED..).unwrap_or_default())?;
    Ok((rank, listen))
}

/// Accepts `count` ranks that `wanted` admits, each introduced by its
/// hello, filing each stream under its rank. Returns the ranks with the
/// address each said it listens on.
///
/// Hellos are read as they come, from every connection at once, so one
/// that says nothing holds up nobody. A connection that is not an
/// mfio-coll peer (another protocol, or closed before its hello: a port
/// probe) is turned away and the wait goes on; the timeout's error lists
/// them. A peer that is one but not of this job (another size, a rank
/// that came twice or was not expected here) is an error at once: the job
/// was launched wrong.
fn accept_ranks(
    listener: &TcpListener,
    size: usize,
    count: usize,
    deadline: Instant,
    links: &mut [Option<TcpStream>],
    wanted: impl Fn(Rank) -> bool,
) -> Result<Vec<(Rank, Option<SocketAddr>)>> {
    listener.set_nonblocking(true)?;
    let mut found = Vec::with_capacity(count);
    let mut callers: Vec<Caller> = Vec::new();
    let mut turned_away = TurnedAway::default();
    while found.len() < count {
        let mut busy = false;
        loop {
            match listener.accept() {
                Ok((stream, from)) => {
                    stream.set_nonblocking(true)?;
                    callers.push(Caller {
                        stream,
                        from,
                        got: Vec::with_capacity(HELLO_MAX),
                    });
                    busy = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // A caller that left before it was accepted.
                Err(e) if matches!(e.kind(), ErrorKind::ConnectionAborted | ErrorKind::Interrupted) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut i = 0;
        while i < callers.len() {
            match callers[i].hear() {
                Heard::Waiting(more) => {
                    busy |= more;
                    i += 1;
                }
                Heard::Stranger(why) => {
                    let caller = callers.swap_remove(i);
                    turned_away.add(caller.from, &why);
                    busy = true;
                }
                Heard::Hello => {
                    let caller = callers.swap_remove(i);
                    let from = caller.from;
                    let (rank, listen) = parse_hello(&caller.got, size)
                        .map_err(|e| Error::new(e.kind(), format!("a connection from {from}: {e}")))?;
                    if !wanted(rank) || links[rank].is_some() {
                        return Err(Error::new(
                            ErrorKind::InvalidData,
                            format!("rank {rank} (from {from}) connected where it was not expected, or twice"),
                        ));
                    }
                    caller.stream.set_nonblocking(false)?;
                    caller.stream.set_nodelay(true)?;
                    links[rank] = Some(caller.stream);
                    found.push((rank, listen));
                    busy = true;
                }
            }
        }
        if found.len() == count {
            break;
        }
        // Checked busy or not: a flood of strangers must not outlast it.
        if Instant::now() >= deadline {
            return Err(missing_ranks(size, links, &wanted, &turned_away, callers.len()));
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(found)
}

/// The connections a wait for ranks turned away: how many, and the first
/// few of them (a scan may make thousands).
#[derive(Default)]
struct TurnedAway {
    count: usize,
    first: Vec<String>,
}

impl TurnedAway {
    /// How many are listed (and logged as warnings).
    const LISTED: usize = 5;

    fn add(&mut self, from: SocketAddr, why: &str) {
        self.count += 1;
        if self.first.len() < Self::LISTED {
            tracing::warn!(%from, %why, "bootstrap: turned away a connection that is not a rank");
            self.first.push(format!("{from} ({why})"));
        }
    }
}

/// The error of a wait for ranks that ended before all came: the ranks
/// `wanted` that have no link, the connections turned away, and how many
/// said nothing at all.
fn missing_ranks(
    size: usize,
    links: &[Option<TcpStream>],
    wanted: impl Fn(Rank) -> bool,
    turned_away: &TurnedAway,
    silent: usize,
) -> Error {
    let missing: Vec<String> = (0..size)
        .filter(|&r| wanted(r) && links[r].is_none())
        .map(|r| r.to_string())
        .collect();
    let mut text = format!("rank(s) {} did not connect in time", missing.join(", "));
    if turned_away.count > 0 {
        text += &format!(
            "; turned away {} connection(s) that were not ranks: {}{}",
            turned_away.count,
            turned_away.first.join(", "),
            if turned_away.count > turned_away.first.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    if silent > 0 {
        text += &format!("; {silent} connection(s) said nothing");
    }
    Error::new(ErrorKind::TimedOut, text)
}

/// Writes `addr` as the bootstrap's messages carry it: a family byte (0:
/// none, 4 or 6), then the IP address and the port (little-endian).
fn put_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        None => out.push(0),
        Some(SocketAddr::V4(a)) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_le_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_le_bytes());
        }
    }
}

fn malformed(what: &str) -> Error {
    Error::new(ErrorKind::InvalidData, format!("malformed bootstrap message ({what})"))
}

/// Reads exactly `n` bytes before `deadline`.
fn read_n(s: &mut TcpStream, n: usize, deadline: Instant) -> Result<Vec<u8>> {
    let left = deadline.saturating_duration_since(Instant::now());
    s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::new(ErrorKind::TimedOut, "no bootstrap message in time"),
        _ => e.into(),
    })?;
    s.set_read_timeout(None)?;
    Ok(buf)
}

/// The bytes that follow an address's family byte ([`put_addr`]); `None`
/// for an unknown family.
fn addr_len(family: u8) -> Option<usize> {
    match family {
        0 => Some(0),
        4 => Some(4 + 2),
        6 => Some(16 + 2),
        _ => None,
    }
}

/// The address of family `family` whose [`addr_len`] bytes begin `rest`
/// ([`put_addr`]).
fn addr_from(family: u8, rest: &[u8]) -> Result<Option<SocketAddr>> {
    let n = addr_len(family).ok_or_else(|| malformed("address family"))?;
    let rest = rest.get(..n).ok_or_else(|| malformed("address"))?;
    let (ip, port) = rest.split_at(n.saturating_sub(2));
    let ip: IpAddr = match family {
        0 => return Ok(None),
        4 => <[u8; 4]>::try_from(ip).map_err(|_| malformed("address"))?.into(),
        6 => <[u8; 16]>::try_from(ip).map_err(|_| malformed("address"))?.into(),
        _ => return Err(malformed("address family")),
    };
    let port = <[u8; 2]>::try_from(port).map_err(|_| malformed("port"))?;
    Ok(Some(SocketAddr::new(ip, u16::from_le_bytes(port))))
}

fn get_addr(s: &mut TcpStream, deadline: Instant) -> Result<Option<SocketAddr>> {
    let family = read_n(s, 1, deadline)?[0];
    let n = addr_len(family).ok_or_else(|| malformed("address family"))?;
    addr_from(family, &read_n(s, n, deadline)?)
}

fn write_hello(s: &mut TcpStream, rank: Rank, size: usize, listen: Option<SocketAddr>) -> Result<()> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(rank as u64).to_le_bytes());
    out.extend_from_slice(&(size as u64).to_le_bytes());
    put_addr(&mut out, listen);
    s.write_all(&out)?;
    Ok(())
}

fn read_u64(s: &mut TcpStream, deadline: Instant) -> Result<u64> {
    let b = read_n(s, 8, deadline)?;
    Ok(u64::from_le_bytes(
        <[u8; 8]>::try_from(b).map_err(|_| malformed("number"))?,
    ))
}

fn write_table(s: &mut TcpStream, addrs: &[SocketAddr]) -> Result<()> {
    let mut out = MAGIC.to_vec();
    for a in addrs {
        put_addr(&mut out, Some(*a));
    }
    s.write_all(&out)?;
    Ok(())
}

fn read_table(s: &mut TcpStream, size: usize, deadline: Instant) -> Result<Vec<SocketAddr>> {
    if read_n(s, MAGIC.len(), deadline)
        .map_err(|e| Error::new(e.kind(), format!("waiting for rank 0's table of ranks: {e}")))?
        != MAGIC
    {
        return Err(malformed("table"));
    }
    (0..size)
        .map(|_| get_addr(s, deadline)?.ok_or_else(|| malformed("table entry")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback address for rank 0 below the kernel's ephemeral ports
    /// (32768 and up), so no connection's own end can take it.
    fn free_root() -> SocketAddr {
        use std::sync::atomic::{AtomicU16, Ordering};
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let base = 20_000 + (std::process::id() % 500) as u16 * 20;
        SocketAddr::from(([127, 0, 0, 1], base + NEXT.fetch_add(1, Ordering::Relaxed) % 20))
    }

    /// Rank `rank` of `size` bootstrapping at `root` on a thread of its
    /// own, waiting at most `timeout`.
    fn joining(
        rank: Rank,
        size: usize,
        root: SocketAddr,
        timeout: Duration,
    ) -> std::thread::JoinHandle<Result<Vec<Option<TcpStream>>>> {
        std::thread::spawn(move || Bootstrap::new(rank, size, root)?.timeout(timeout).connect())
    }

    #[test]
    fn every_pair_of_ranks_shares_one_connection() {
        let root = free_root();
        let size = 4;
        let ranks: Vec<_> = (0..size)
            .map(|rank| joining(rank, size, root, Duration::from_secs(20)))
            .collect();
        let mut links: Vec<Vec<Option<TcpStream>>> = ranks
            .into_iter()
            .map(|h| h.join().expect("rank thread").expect("bootstrap"))
            .collect();
        // Each pair: what one end writes, the other reads.
        let pairs = (0..size).flat_map(|a| (0..size).map(move |b| (a, b)));
        for (a, b) in pairs {
            if a == b {
                assert!(links[a][a].is_none(), "rank {a} has a link to itself");
            } else {
                let msg = [a as u8, b as u8, 0xA5];
                links[a][b].as_mut().expect("link").write_all(&msg).expect("write");
                let mut got = [0u8; 3];
                links[b][a].as_mut().expect("link").read_exact(&mut got).expect("read");
                assert_eq!(got, msg, "link {a}->{b}");
            }
        }
    }

    /// A timeout of `Duration::MAX` ("no limit") is a timeout like any
    /// other: the ranks connect and exchange (every wait's end was
    /// `Instant + Duration`, which panicked past what an `Instant` holds).
    #[test]
    fn a_timeout_of_duration_max_connects_and_exchanges() {
        let root = free_root();
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                std::thread::spawn(move || {
                    let mut links = Bootstrap::new(rank, 2, root)?.timeout(Duration::MAX).connect()?;
                    exchange(&mut links, rank, &[rank as u8; 3], Duration::MAX)
                })
            })
            .collect();
        for h in ranks {
            let got = h.join().expect("rank thread").expect("bootstrap and exchange");
            assert_eq!(got, vec![vec![0u8; 3], vec![1u8; 3]]);
        }
    }

    #[test]
    fn a_rank_that_never_comes_is_named() {
        let root = free_root();
        let start = Instant::now();
        // Rank 2 of 3 never starts.
        let r1 = joining(1, 3, root, Duration::from_millis(600));
        let r0 = Bootstrap::new(0, 3, root)
            .map(|b| b.timeout(Duration::from_millis(600)))
            .and_then(|b| b.connect());
        match r0 {
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::TimedOut);
                assert!(e.to_string().contains("rank(s) 2 "), "{e}");
            }
            Ok(_) => panic!("rank 0 bootstrapped without rank 2"),
        }
        assert!(
            r1.join().expect("rank 1").is_err(),
            "rank 1 bootstrapped without rank 2"
        );
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    }

    /// Connects to `root` as a stranger would, once rank 0 listens.
    fn stranger(root: SocketAddr) -> TcpStream {
        connect_until(root, mfio_core::deadline_after(Duration::from_secs(10)), 0).expect("rank 0 listens")
    }

    /// Connections that are not ranks of the job are turned away and the
    /// job goes on: a port probe that closes at once, another protocol,
    /// and one that never says anything (which must not hold up the ranks
    /// that come after it). Before, the first made rank 0 fail and the
    /// last made it wait out its whole timeout.
    #[test]
    fn strangers_at_the_root_are_turned_away() {
        let root = free_root();
        let start = Instant::now();
        let r0 = std::thread::spawn(move || {
            let mut links = Bootstrap::new(0, 2, root)?.timeout(Duration::from_secs(20)).connect()?;
            exchange(&mut links, 0, b"zero", Duration::from_secs(20))
        });
        drop(stranger(root));
        let mut http = stranger(root);
        http.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
        let silent = stranger(root);
        let mut short = stranger(root);
        short.write_all(&MAGIC[..5]).expect("write");
        let r1 = Bootstrap::new(1, 2, root)
            .and_then(|b| b.timeout(Duration::from_secs(20)).connect())
            .and_then(|mut links| exchange(&mut links, 1, b"one", Duration::from_secs(20)))
            .expect("rank 1 bootstraps beside the strangers");
        let r0 = r0
            .join()
            .expect("rank 0")
            .expect("rank 0 bootstraps beside the strangers");
        let want = vec![b"zero".to_vec(), b"one".to_vec()];
        assert_eq!((r0, r1), (want.clone(), want));
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
        // Rank 0 hung up on the one that spoke another protocol (a reset
        // if some of its bytes were still unread).
        http.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut rest = Vec::new();
        match http.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "rank 0 answered a stranger: {rest:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        drop((silent, short));
    }

    /// A rank that never comes is named even where strangers came instead,
    /// and the error says who was turned away and why.
    #[test]
    fn a_missing_rank_is_named_beside_the_strangers_turned_away() {
        let root = free_root();
        let r0 = joining(0, 2, root, Duration::from_secs(2));
        let mut other = stranger(root);
        other.write_all(b"SSH-2.0-OpenSSH\r\n").expect("write");
        let from = other.local_addr().expect("address");
        let silent = stranger(root);
        let err = r0
            .join()
            .expect("rank 0")
            .expect_err("rank 0 bootstrapped without rank 1");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        let text = err.to_string();
        assert!(text.contains("rank(s) 1 did not connect in time"), "{text}");
        assert!(text.contains(&format!("{from} (not an mfio-coll peer)")), "{text}");
        assert!(text.contains("1 connection(s) said nothing"), "{text}");
        drop(silent);
    }

    /// Strangers that never stop coming (a scan) do not keep rank 0 past
    /// its timeout, and its error lists only the first few.
    #[test]
    fn a_flood_of_strangers_does_not_outlast_the_timeout() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let root = free_root();
        let start = Instant::now();
        let r0 = joining(0, 2, root, Duration::from_secs(1));
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                drop(stranger(root));
                while !stop.load(Ordering::Relaxed) {
                    // Refused once rank 0 has given up: that is the end.
                    let Ok(mut s) = TcpStream::connect(root) else { break };
                    let _ = s.write_all(b"x");
                }
            })
        };
        let err = r0
            .join()
            .expect("rank 0")
            .expect_err("rank 0 bootstrapped without rank 1");
        stop.store(true, Ordering::Relaxed);
        flood.join().expect("flood");
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        let text = err.to_string();
        let count: usize = text
            .split("turned away ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {text}"));
        assert!(count > TurnedAway::LISTED, "{count} strangers in a second: {text}");
        assert_eq!(text.matches("127.0.0.1:").count(), TurnedAway::LISTED, "{text}");
        assert!(text.contains(", …"), "{text}");
    }

    /// A peer that speaks the protocol but is not of this job (another
    /// size, or a rank that is there already) is the job launched wrong:
    /// an error at once, naming what it said, not a wait for the timeout.
    #[test]
    fn a_peer_of_another_job_is_an_error_at_once() {
        for (rank, size, says) in [(1, 3, "rank 1 of 3; this job has 2 ranks"), (0, 2, "rank 0 (from")] {
            let root = free_root();
            let start = Instant::now();
            let r0 = joining(0, 2, root, Duration::from_secs(20));
            let mut peer = stranger(root);
            write_hello(&mut peer, rank, size, None).expect("hello");
            let err = r0
                .join()
                .expect("rank 0")
                .expect_err("rank 0 took a peer of another job");
            assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
            assert!(err.to_string().contains(says), "{err}");
            assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
        }
    }

    /// Every address family of a hello reads back as written, each from
    /// exactly the bytes [`hello_len`] asks for.
    #[test]
    fn a_hello_reads_back_as_written() {
        let v6: SocketAddr = "[fe80::1:2]:4321".parse().expect("v6");
        let v4: SocketAddr = "10.1.2.3:65000".parse().expect("v4");
        for listen in [None, Some(v4), Some(v6)] {
            let mut hello = MAGIC.to_vec();
            hello.extend_from_slice(&3u64.to_le_bytes());
            hello.extend_from_slice(&5u64.to_le_bytes());
            put_addr(&mut hello, listen);
            for cut in 0..hello.len() {
                assert!(
                    hello_len(&hello[..cut]).is_ok_and(|n| n > cut),
                    "{listen:?} cut at {cut}"
                );
            }
            assert_eq!(hello_len(&hello), Ok(hello.len()), "{listen:?}");
            assert_eq!(parse_hello(&hello, 5).expect("hello"), (3, listen));
        }
        assert!(hello_len(b"mfioXXX").is_err());
        let mut bad_family = MAGIC.to_vec();
        bad_family.extend_from_slice(&[0; 16]);
        bad_family.push(9);
        assert!(hello_len(&bad_family).is_err());
    }

    #[test]
    fn the_environment_names_rank_size_and_root() {
        // One test owns these variables (tests in this binary run in
        // parallel, none other reads them).
        std::env::set_var("MFIO_RANK", "2");
        std::env::set_var("MFIO_SIZE", "5");
        std::env::set_var(ROOT_VAR, "127.0.0.1:4567");
        let b = Bootstrap::from_env();
        std::env::set_var("MFIO_SIZE", "two");
        let bad = Bootstrap::from_env();
        std::env::set_var("MFIO_SIZE", "5");
        std::env::remove_var(ROOT_VAR);
        let no_root = Bootstrap::from_env();
        std::env::remove_var("MFIO_RANK");
        std::env::remove_var("MFIO_SIZE");
        let b = b.expect("from env");
        assert_eq!(
            (b.rank(), b.size(), b.root),
            (2, 5, "127.0.0.1:4567".parse().expect("addr"))
        );
        assert!(bad.is_err_and(|e| e.kind() == ErrorKind::InvalidInput && e.to_string().contains("MFIO_SIZE")));
        assert!(no_root.is_err_and(|e| e.kind() == ErrorKind::NotFound && e.to_string().contains(ROOT_VAR)));
    }
}
