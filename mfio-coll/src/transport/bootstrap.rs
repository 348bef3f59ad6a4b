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
//! that does not join is named in the error.
//!
//! The connections are made with blocking calls, once, before any
//! collective; [`TcpTransport`](super::tcp::TcpTransport) then hands them
//! to an mfio runtime.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use mfio_core::{Error, Result};

use crate::comm::Rank;

/// The first bytes of every bootstrap message: a stray connection (another
/// job on the same port) is refused instead of misread.
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
    /// - `TimedOut` naming the ranks that did not join in time.
    /// - `InvalidData` for a peer that is not part of this job (another
    ///   size, a duplicate rank, a foreign protocol).
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

/// Accepts `count` ranks that `wanted` admits, each introduced by its
/// hello, filing each stream under its rank. Returns the ranks with the
/// address each said it listens on.
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
    while found.len() < count {
        let (mut s, from) = match listener.accept() {
            Ok(a) => a,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (0..size)
                        .filter(|&r| wanted(r) && links[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    return Err(Error::new(
                        ErrorKind::TimedOut,
                        format!("rank(s) {} did not connect in time", missing.join(", ")),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        let (rank, listen) = read_hello(&mut s, size, deadline)
            .map_err(|e| Error::new(e.kind(), format!("a connection from {from}: {e}")))?;
        if !wanted(rank) || links[rank].is_some() {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("rank {rank} (from {from}) connected where it was not expected, or twice"),
            ));
        }
        links[rank] = Some(s);
        found.push((rank, listen));
    }
    Ok(found)
}

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

fn get_addr(s: &mut TcpStream, deadline: Instant) -> Result<Option<SocketAddr>> {
    let family = read_n(s, 1, deadline)?[0];
    let ip: IpAddr = match family {
        0 => return Ok(None),
        4 => <[u8; 4]>::try_from(read_n(s, 4, deadline)?)
            .map_err(|_| malformed("address"))?
            .into(),
        6 => <[u8; 16]>::try_from(read_n(s, 16, deadline)?)
            .map_err(|_| malformed("address"))?
            .into(),
        _ => return Err(malformed("address family")),
    };
    let port = u16::from_le_bytes(<[u8; 2]>::try_from(read_n(s, 2, deadline)?).map_err(|_| malformed("port"))?);
    Ok(Some(SocketAddr::new(ip, port)))
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

fn read_hello(s: &mut TcpStream, size: usize, deadline: Instant) -> Result<(Rank, Option<SocketAddr>)> {
    if read_n(s, MAGIC.len(), deadline)? != MAGIC {
        return Err(malformed("not an mfio-coll peer"));
    }
    let rank = usize::try_from(read_u64(s, deadline)?).map_err(|_| malformed("rank"))?;
    let theirs = usize::try_from(read_u64(s, deadline)?).map_err(|_| malformed("size"))?;
    if theirs != size || rank >= size {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("a peer says it is rank {rank} of {theirs}; this job has {size} ranks"),
        ));
    }
    Ok((rank, get_addr(s, deadline)?))
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

    #[test]
    fn every_pair_of_ranks_shares_one_connection() {
        let root = free_root();
        let size = 4;
        let ranks: Vec<_> = (0..size)
            .map(|rank| {
                std::thread::spawn(move || {
                    Bootstrap::new(rank, size, root)
                        .map(|b| b.timeout(Duration::from_secs(20)))
                        .and_then(|b| b.connect())
                })
            })
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
        let r1 = std::thread::spawn(move || {
            Bootstrap::new(1, 3, root)
                .map(|b| b.timeout(Duration::from_millis(600)))
                .and_then(|b| b.connect())
        });
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
