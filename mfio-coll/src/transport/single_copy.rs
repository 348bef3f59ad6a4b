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
//! "The same host" means the same kernel (its boot id), the same process
//! namespace (so a process number means the same process) and the same
//! network namespace (ranks in namespaces of their own stand for ranks on
//! hosts of their own, and their bytes go over the network).

use std::sync::OnceLock;

use mfio_core::IoBufMut;

/// Bytes of an encoded [`Offer`].
pub(crate) const OFFER_LEN: usize = 48;

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

    /// The offer of the bytes at `address` in this process.
    pub(crate) fn offer(&self, address: *const u8) -> Offer {
        Offer {
            from: *self,
            address: address as u64,
        }
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
    /// Appends the offer's [`OFFER_LEN`] bytes to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.from.host.boot_id);
        out.extend_from_slice(&self.from.host.pid_namespace.to_le_bytes());
        out.extend_from_slice(&self.from.host.net_namespace.to_le_bytes());
        out.extend_from_slice(&u64::from(self.from.pid).to_le_bytes());
        out.extend_from_slice(&self.address.to_le_bytes());
    }

    /// The offer `bytes` encode, if they are [`OFFER_LEN`] long.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != OFFER_LEN {
            return None;
        }
        let word = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        Some(Self {
            from: Process {
                host: Host {
                    boot_id: bytes.get(..16)?.try_into().ok()?,
                    pid_namespace: word(16)?,
                    net_namespace: word(24)?,
                },
                pid: u32::try_from(word(32)?).ok()?,
            },
            address: word(40)?,
        })
    }

    /// Copies the offered bytes into `into`'s first `len` bytes (its
    /// capacity must be at least `len`), in process `reader` (this one).
    /// The sender must keep them alive and unchanged until it hears that
    /// this is done.
    ///
    /// # Errors
    /// `Unsupported` if the sender is on another host (or is `reader`);
    /// what the kernel says if it refuses (`PermissionDenied` under Yama's
    /// `ptrace_scope`), or if the sender is gone.
    pub(crate) fn read_into<B: IoBufMut>(&self, reader: &Process, into: &mut B, len: usize) -> std::io::Result<()> {
        if self.from.host != reader.host || self.from.pid == reader.pid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the sender is not another process on this host",
            ));
        }
        if into.buf_capacity() < len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a buffer shorter than the message",
            ));
        }
        let mut done = 0;
        while done < len {
            // SAFETY: `into` is ours and holds at least `len` bytes from its
            // pointer (checked above); the remote range is read by the
            // kernel, which checks it against the sender's mappings.
            let n = unsafe {
                sys::read_remote(
                    self.from.pid,
                    self.address + done as u64,
                    into.as_buf_mut_ptr().add(done),
                    len - done,
                )
            }?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the sender's memory ended before the message",
                ));
            }
            done += n;
        }
        // SAFETY: the first `len` bytes were written above.
        unsafe { into.set_buf_init(len) };
        Ok(())
    }
}

/// The kernel call, the only C symbol of this module.
mod sys {
    /// Reads up to `len` bytes at `address` in process `pid` into `into`;
    /// how many it read.
    ///
    /// # Safety
    /// `into` must be valid for writes of `len` bytes.
    pub(super) unsafe fn read_remote(pid: u32, address: u64, into: *mut u8, len: usize) -> std::io::Result<usize> {
        let local = libc::iovec {
            iov_base: into.cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: address as *mut libc::c_void,
            iov_len: len,
        };
        let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: one local and one remote iovec, each valid for the call;
        // `into` is writable for `len` bytes (the caller's promise).
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
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
        let mut encoded = Vec::new();
        offer.encode(&mut encoded);
        assert_eq!(encoded.len(), OFFER_LEN);
        let back = Offer::decode(&encoded).expect("decodes");
        assert_eq!((back.from, back.address), (offer.from, offer.address));
        assert!(Offer::decode(&encoded[1..]).is_none());
        let mut into = Vec::with_capacity(64);
        let err = back.read_into(&me, &mut into, 64).expect_err("own process");
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
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
        let mut into = Vec::with_capacity(8);
        let err = offer.read_into(&me, &mut into, 8).expect_err("another host");
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
        assert!(into.is_empty(), "nothing written");
    }
}
