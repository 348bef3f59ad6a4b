//! Single copy within a host: a long message's receiver reads its bytes
//! straight out of the sender's memory (`process_vm_readv`, Linux's
//! cross-memory attach, as MPI's shared-memory transports and UCX's `cma`
//! do), instead of the bytes passing through a shared-memory queue (a copy
//! in, a copy out).
//!
//! The sender makes an [`Offer`]: where the bytes are, in which process,
//! and on which host. The receiver takes it only if that host is its own;
//! else, or if the kernel refuses (Yama's `ptrace_scope`, another user), the
//! bytes come the ordinary way. The sender keeps the bytes untouched and
//! alive until the receiver says it is done with them.
//!
//! A long message is copied by both sides at once: the receiver names a
//! [`Target`] (where in its memory the message's second part goes), the
//! sender writes that part there (`process_vm_writev`) while the receiver
//! reads the first. The sender writes only into a process that proved it
//! is the one asking: the target carries a random number and where it is
//! in the asking process, and the sender reads it there before writing.
//!
//! "The same host" means the same kernel (its boot id), the same process
//! namespace (so a process number means the same process) and the same
//! network namespace (ranks in namespaces of their own stand for ranks on
//! hosts of their own, and their bytes go over the network).

use std::sync::OnceLock;

/// Bytes of an encoded [`Offer`].
pub(crate) const OFFER_LEN: usize = PROCESS_LEN + 8;

/// Which host a process runs on, as far as reading its memory goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Host {
    boot_id: [u8; 16],
    pid_namespace: u64,
    net_namespace: u64,
}

/// This process's host, if `/proc` says (else nothing is offered).
fn this_host() -> Option<Host> {
    static HOST: OnceLock<Option<Host>> = OnceLock::new();
    *HOST.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let hex: Vec<u8> = boot.trim().bytes().filter(|b| *b != b'-').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut boot_id = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok()?;
            boot_id[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        let namespace = |which: &str| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/self/ns/{which}"))
                .ok()
                .map(|m| m.ino())
        };
        Some(Host {
            boot_id,
            pid_namespace: namespace("pid")?,
            net_namespace: namespace("net")?,
        })
    })
}

/// Bytes of an encoded [`Process`].
const PROCESS_LEN: usize = 40;

/// The little-endian word at `at` in `bytes`.
fn word(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// A process as far as reading its memory goes: its host and number,
/// learned once (a process number costs a system call each time it is
/// asked for).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Process {
    host: Host,
    pid: u32,
}

impl Process {
    /// This process, if `/proc` says which host it is on (else nothing is
    /// offered).
    pub(crate) fn this() -> Option<Self> {
        Some(Self {
            host: this_host()?,
            pid: std::process::id(),
        })
    }

    /// The process's [`PROCESS_LEN`] bytes.
    fn to_bytes(self) -> [u8; PROCESS_LEN] {
        let mut out = [0; PROCESS_LEN];
        out[..16].copy_from_slice(&self.host.boot_id);
        out[16..24].copy_from_slice(&self.host.pid_namespace.to_le_bytes());
        out[24..32].copy_from_slice(&self.host.net_namespace.to_le_bytes());
        out[32..].copy_from_slice(&u64::from(self.pid).to_le_bytes());
        out
    }

    /// Appends the process's [`PROCESS_LEN`] bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// The process the first [`PROCESS_LEN`] of `bytes` encode.
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            host: Host {
                boot_id: bytes.get(..16)?.try_into().ok()?,
                pid_namespace: word(bytes, 16)?,
                net_namespace: word(bytes, 24)?,
            },
            pid: u32::try_from(word(bytes, 32)?).ok()?,
        })
    }

    /// `Ok` if this is another process than `me`, on its host; else
    /// `Unsupported`, saying that of `who`.
    fn other_than(&self, me: &Process, who: &str) -> std::io::Result<()> {
        if self.host != me.host || self.pid == me.pid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("{who} is not another process on this host"),
            ));
        }
        Ok(())
    }

    /// The offer of the bytes at `address` in this process.
    pub(crate) fn offer(&self, address: *const u8) -> Offer {
        Offer {
            from: *self,
            address: address as u64,
        }
    }

    /// The target `address` in this process, for a sender to write to;
    /// none if the process has no random number to prove itself with.
    pub(crate) fn target(&self, address: *mut u8) -> Option<Target> {
        let proof = proof()?;
        Some(Target {
            to: *self,
            address: address as u64,
            proof_at: proof.as_ptr() as u64,
            proof: *proof,
        })
    }
}

/// Bytes of an encoded [`Target`].
pub(crate) const TARGET_LEN: usize = PROCESS_LEN + 8 + 8 + 16;

/// A random number of this process's, at an address that does not move:
/// a process shows it is the one that named a [`Target`] by holding it
/// there.
fn proof() -> Option<&'static [u8; 16]> {
    static PROOF: OnceLock<Option<[u8; 16]>> = OnceLock::new();
    PROOF
        .get_or_init(|| {
            let mut bytes = [0u8; 16];
            // SAFETY: `bytes` is writable for its 16 bytes.
            let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
            (usize::try_from(n).ok() == Some(bytes.len())).then_some(bytes)
        })
        .as_ref()
}

/// Where a receiver wants part of a message written: at `address` in
/// process `to`, which holds the random `proof` at `proof_at`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    to: Process,
    address: u64,
    proof_at: u64,
    proof: [u8; 16],
}

impl Target {
    /// Appends the target's [`TARGET_LEN`] bytes to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.to.encode(out);
        out.extend_from_slice(&self.address.to_le_bytes());
        out.extend_from_slice(&self.proof_at.to_le_bytes());
        out.extend_from_slice(&self.proof);
    }

    /// The target `bytes` encode, if they are [`TARGET_LEN`] long.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != TARGET_LEN {
            return None;
        }
        Some(Self {
            to: Process::decode(bytes)?,
            address: word(bytes, PROCESS_LEN)?,
            proof_at: word(bytes, PROCESS_LEN + 8)?,
            proof: bytes.get(PROCESS_LEN + 16..)?.try_into().ok()?,
        })
    }

    /// The process the target is in, by number.
    pub(crate) fn pid(&self) -> u32 {
        self.to.pid
    }

    /// Whether the target's process is the one that named it: on this
    /// host, not `writer`, and holding the target's random number where it
    /// says. Ask once per peer (it reads the peer's memory).
    ///
    /// # Errors
    /// `Unsupported` for another host or `writer` itself; `PermissionDenied`
    /// if the process there does not hold the number; what the kernel says
    /// if it refuses the read.
    pub(crate) fn prove(&self, writer: &Process) -> std::io::Result<()> {
        self.to.other_than(writer, "the target")?;
        let mut held = [0u8; 16];
        // SAFETY: `held` is writable for its 16 bytes.
        let n = unsafe { sys::read_remote(self.to.pid, self.proof_at, held.as_mut_ptr(), held.len()) }?;
        if n != held.len() || held != self.proof {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("process {} is not the one that named the target", self.to.pid),
            ));
        }
        Ok(())
    }

    /// Writes `len` bytes from `from` to the target (after [`prove`](Self::prove)).
    ///
    /// # Safety
    /// `from` must be valid for reads of `len` bytes.
    ///
    /// # Errors
    /// What the kernel says (the target's range not mapped writable, the
    /// process gone); `WriteZero` if it takes no more bytes.
    pub(crate) unsafe fn write(&self, from: *const u8, len: usize) -> std::io::Result<()> {
        let ended = (
            std::io::ErrorKind::WriteZero,
            "the target's memory ended before the message",
        );
        every_byte(0..len, ended, |done| {
            // SAFETY: `from` is readable for `len` bytes (the caller's
            // promise); the remote range is checked by the kernel.
            unsafe { sys::write_remote(self.to.pid, self.address + done as u64, from.add(done), len - done) }
        })
    }
}

/// Where a long message's bytes are: `len` bytes at `address` in process
/// `from`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Offer {
    from: Process,
    address: u64,
}

impl Offer {
    /// The offer's [`OFFER_LEN`] bytes (a fixed size: an offer's frame is
    /// built on the stack).
    pub(crate) fn to_bytes(self) -> [u8; OFFER_LEN] {
        let mut out = [0; OFFER_LEN];
        out[..PROCESS_LEN].copy_from_slice(&self.from.to_bytes());
        out[PROCESS_LEN..].copy_from_slice(&self.address.to_le_bytes());
        out
    }

    /// The offer `bytes` encode, if they are [`OFFER_LEN`] long.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != OFFER_LEN {
            return None;
        }
        Some(Self {
            from: Process::decode(bytes)?,
            address: word(bytes, PROCESS_LEN)?,
        })
    }

    /// Copies the offered bytes `part` (offsets in the message) to `into`
    /// plus `part.start`, in process `reader` (this one). The sender must
    /// keep them alive and unchanged until it hears that this is done.
    ///
    /// # Safety
    /// `into` must be valid for writes of `part.end` bytes.
    ///
    /// # Errors
    /// `Unsupported` if the sender is on another host (or is `reader`);
    /// what the kernel says if it refuses (`PermissionDenied` under Yama's
    /// `ptrace_scope`), or if the sender is gone.
    pub(crate) unsafe fn read_part(
        &self,
        reader: &Process,
        into: *mut u8,
        part: std::ops::Range<usize>,
    ) -> std::io::Result<()> {
        self.from.other_than(reader, "the sender")?;
        let ended = (
            std::io::ErrorKind::UnexpectedEof,
            "the sender's memory ended before the message",
        );
        let end = part.end;
        every_byte(part, ended, |done| {
            // SAFETY: `into` is writable for `part.end` bytes (the caller's
            // promise); the remote range is read by the kernel, which
            // checks it against the sender's mappings.
            unsafe { sys::read_remote(self.from.pid, self.address + done as u64, into.add(done), end - done) }
        })
    }
}

/// Runs `step` (which moves bytes from an offset on, and says how many)
/// until `range` is done; `ended` is the error if a step moves none.
fn every_byte(
    range: std::ops::Range<usize>,
    ended: (std::io::ErrorKind, &str),
    mut step: impl FnMut(usize) -> std::io::Result<usize>,
) -> std::io::Result<()> {
    let mut done = range.start;
    while done < range.end {
        match step(done)? {
            0 => return Err(std::io::Error::new(ended.0, ended.1)),
            n => done += n,
        }
    }
    Ok(())
}

/// The kernel calls, the only C symbols of this module.
mod sys {
    /// `process_vm_readv` or `process_vm_writev`: their arguments are alike.
    type CrossMemory = unsafe extern "C" fn(
        libc::pid_t,
        *const libc::iovec,
        libc::c_ulong,
        *const libc::iovec,
        libc::c_ulong,
        libc::c_ulong,
    ) -> libc::ssize_t;

    /// Moves up to `len` bytes between `local` and `address` in process
    /// `pid`, the way `call` does; how many it moved.
    ///
    /// # Safety
    /// `local` must be valid for `len` bytes of what `call` does to it.
    unsafe fn cross_memory(
        call: CrossMemory,
        pid: u32,
        address: u64,
        local: *mut u8,
        len: usize,
    ) -> std::io::Result<usize> {
        let local = libc::iovec {
            iov_base: local.cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: address as *mut libc::c_void,
            iov_len: len,
        };
        let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: one local and one remote iovec, each valid for the call;
        // `local` is valid for what the call does to its `len` bytes (the
        // caller's promise); the kernel checks the remote range.
        let n = unsafe { call(pid, &local, 1, &remote, 1, 0) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    /// Reads up to `len` bytes at `address` in process `pid` into `into`;
    /// how many it read.
    ///
    /// # Safety
    /// `into` must be valid for writes of `len` bytes.
    pub(super) unsafe fn read_remote(pid: u32, address: u64, into: *mut u8, len: usize) -> std::io::Result<usize> {
        // SAFETY: the caller's promise.
        unsafe { cross_memory(libc::process_vm_readv, pid, address, into, len) }
    }

    /// Writes up to `len` bytes from `from` to `address` in process `pid`;
    /// how many it wrote.
    ///
    /// # Safety
    /// `from` must be valid for reads of `len` bytes.
    pub(super) unsafe fn write_remote(pid: u32, address: u64, from: *const u8, len: usize) -> std::io::Result<usize> {
        // SAFETY: the caller's promise; the kernel only reads `from`.
        unsafe { cross_memory(libc::process_vm_writev, pid, address, from.cast_mut(), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_survives_encoding_and_this_process_reads_no_offer_of_its_own() {
        let bytes = [7u8; 64];
        let Some(me) = Process::this() else {
            eprintln!("skip: no host identity in /proc here");
            return;
        };
        let offer = me.offer(bytes.as_ptr());
        let encoded = offer.to_bytes();
        let back = Offer::decode(&encoded).expect("decodes");
        assert_eq!((back.from, back.address), (offer.from, offer.address));
        assert!(Offer::decode(&encoded[1..]).is_none());
        let mut into = [0u8; 64];
        // SAFETY: `into` is writable for its 64 bytes.
        let err = unsafe { back.read_part(&me, into.as_mut_ptr(), 0..64) }.expect_err("own process");
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    }

    #[test]
    fn a_target_survives_encoding_and_a_process_must_prove_it_named_it() {
        let Some(me) = Process::this() else {
            eprintln!("skip: no host identity in /proc here");
            return;
        };
        let mut into = [0u8; 8];
        let target = me.target(into.as_mut_ptr()).expect("a random number");
        let mut encoded = Vec::new();
        target.encode(&mut encoded);
        assert_eq!(encoded.len(), TARGET_LEN);
        let back = Target::decode(&encoded).expect("decodes");
        assert_eq!(
            (back.to, back.address, back.proof),
            (target.to, target.address, target.proof)
        );
        assert!(Target::decode(&encoded[1..]).is_none());
        // Not into this process itself.
        let err = back.prove(&me).expect_err("own process");
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
        // Another process of this host, which does not hold the number
        // where the target says (a child that never saw it): refused, and
        // nothing is written.
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let mut theirs = back;
        theirs.to.pid = child.id();
        theirs.proof = [0xA5; 16];
        let refused = theirs.prove(&me);
        let _ = child.kill();
        let _ = child.wait();
        let err = refused.expect_err("a process that does not hold the number");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
            ) || err.raw_os_error() == Some(libc::EFAULT),
            "{err:?}"
        );
        assert_eq!(into, [0; 8]);
    }

    #[test]
    fn an_offer_from_another_host_is_refused() {
        let bytes = [7u8; 8];
        let Some(me) = Process::this() else {
            return;
        };
        let mut offer = me.offer(bytes.as_ptr());
        offer.from.pid = offer.from.pid.wrapping_add(1);
        offer.from.host.net_namespace ^= 1;
        let mut into = [0u8; 8];
        // SAFETY: `into` is writable for its 8 bytes.
        let err = unsafe { offer.read_part(&me, into.as_mut_ptr(), 0..8) }.expect_err("another host");
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
        assert_eq!(into, [0; 8], "nothing written");
    }
}
