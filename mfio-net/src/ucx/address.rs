//! [`WorkerAddress`]: a worker's address as bytes to hand to a peer, in an
//! envelope that is checked before UCX sees it.
//!
//! UCX parses a worker address (and a packed remote key) without being told
//! its length, so a truncated or corrupted blob from the network would make
//! it read past the end or abort. Every blob mfio hands out is wrapped as
//! `magic (4) | kind (1) | length (4, LE) | FNV-1a 64 of the payload (8, LE) |
//! payload`; [`open`] refuses anything that does not check out, with a typed
//! error, and the payload is copied into a buffer that owns exactly it.

use std::fmt;
use std::io::ErrorKind;

use mfio_core::{Error, Result};

const MAGIC: &[u8; 4] = b"mfuX";
const HEADER: usize = 4 + 1 + 4 + 8;

/// What an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    WorkerAddress = 1,
    RemoteKey = 2,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Wraps `payload` of `kind`.
pub(crate) fn seal(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&fnv1a(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of an envelope of `kind`.
///
/// # Errors
/// `InvalidData` naming what is wrong: too short, not an mfio blob, the
/// wrong kind, a length that disagrees, or a checksum mismatch.
pub(crate) fn open(kind: Kind, bytes: &[u8]) -> Result<&[u8]> {
    let what = match kind {
        Kind::WorkerAddress => "worker address",
        Kind::RemoteKey => "remote key",
    };
    let bad = |why: &str| Error::new(ErrorKind::InvalidData, format!("malformed UCX {what}: {why}"));
    if bytes.len() < HEADER {
        return Err(bad(&format!(
            "{} bytes, shorter than its {HEADER}-byte header",
            bytes.len()
        )));
    }
    if &bytes[..4] != MAGIC {
        return Err(bad("not produced by mfio-net"));
    }
    if bytes[4] != kind as u8 {
        return Err(bad(&format!("holds kind {}, not a {what}", bytes[4])));
    }
    let len = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        return Err(bad(&format!("says {len} bytes, has {}", payload.len())));
    }
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&bytes[9..17]);
    if u64::from_le_bytes(sum) != fnv1a(payload) {
        return Err(bad("checksum mismatch (corrupted)"));
    }
    Ok(payload)
}

/// A worker's address, as bytes a peer passes to
/// [`Worker::connect`](super::Worker::connect).
///
/// [`as_bytes`](Self::as_bytes) and [`from_bytes`](Self::from_bytes) carry
/// it over any channel; a blob that was truncated or corrupted on the way
/// is refused by `from_bytes` with an `InvalidData` error and never reaches
/// UCX.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerAddress {
    sealed: Vec<u8>,
}

impl fmt::Debug for WorkerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerAddress")
            .field("len", &self.sealed.len())
            .finish()
    }
}

impl WorkerAddress {
    pub(crate) fn wrap(raw: &[u8]) -> Self {
        Self {
            sealed: seal(Kind::WorkerAddress, raw),
        }
    }

    /// The address as bytes to send to a peer.
    pub fn as_bytes(&self) -> &[u8] {
        &self.sealed
    }

    /// An address received from a peer.
    ///
    /// # Errors
    /// `InvalidData` if `bytes` is not a whole, intact worker address.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        open(Kind::WorkerAddress, bytes)?;
        Ok(Self { sealed: bytes.to_vec() })
    }

    /// The address as lowercase hex, for text channels (a command line, an
    /// environment variable, a file, a pipe).
    pub fn to_hex(&self) -> String {
        self.sealed.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// An address received from a peer as hex ([`to_hex`](Self::to_hex));
    /// surrounding white space is ignored.
    ///
    /// # Errors
    /// `InvalidData` if `text` is not hex, or not a whole, intact address.
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = || {
            Error::new(
                ErrorKind::InvalidData,
                "malformed worker address: not an even number of hex digits",
            )
        };
        if text.len() % 2 != 0 {
            return Err(bad());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(bad)
            })
            .collect::<Result<Vec<u8>>>()?;
        Self::from_bytes(&bytes)
    }

    /// The UCX address inside (checked at construction).
    pub(crate) fn raw(&self) -> &[u8] {
        &self.sealed[HEADER..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_hex_and_bad_hex_is_refused() {
        let address = WorkerAddress::wrap(b"some ucx address");
        let hex = address.to_hex();
        assert_eq!(
            WorkerAddress::from_hex(&format!(" {hex}\n")).expect("round trip"),
            address
        );
        for bad in ["", "0", "zz", &hex[..hex.len() - 1], &hex[..hex.len() - 2], "é1"] {
            let err = WorkerAddress::from_hex(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidData, "{bad:?}");
        }
    }

    #[test]
    fn sealed_blobs_open_and_damaged_ones_do_not() {
        let sealed = seal(Kind::RemoteKey, b"payload");
        assert_eq!(open(Kind::RemoteKey, &sealed).expect("intact"), b"payload");
        let wrong_kind = open(Kind::WorkerAddress, &sealed).expect_err("kind");
        assert_eq!(wrong_kind.kind(), ErrorKind::InvalidData);
        for cut in 0..sealed.len() {
            let err = open(Kind::RemoteKey, &sealed[..cut]).expect_err("truncated");
            assert_eq!(err.kind(), ErrorKind::InvalidData, "cut at {cut}");
        }
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x40;
            assert!(open(Kind::RemoteKey, &flipped).is_err(), "flip at {i}");
        }
        let mut longer = sealed;
        longer.push(0);
        assert!(open(Kind::RemoteKey, &longer).is_err());
    }
}
