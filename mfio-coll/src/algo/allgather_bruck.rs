//! Bruck allgather: in step `k` each rank sends the first `min(2^k, n - 2^k)`
//! blocks it holds to rank `r - 2^k` and appends what rank `r + 2^k` sends;
//! after ⌈log₂ n⌉ steps it holds every block, rotated by its rank, and
//! puts them in rank order. The latency-optimal allgather for any rank
//! count.

use mfio_core::Result;

use crate::element::Element;
use crate::transport::{CollId, Transport};

/// Gathers every rank's `send` into every rank's `recv`, in rank order:
/// `recv` holds size × `send.len()` elements.
///
/// # Errors
/// `InvalidInput` if `recv` has another length; `InvalidData` if ranks'
/// blocks differ in length; what the transport reports.
pub async fn allgather_bruck<T: Element>(t: &dyn Transport, id: CollId, send: &[T], recv: &mut [T]) -> Result<()> {
    let (n, r, b) = (t.size(), t.rank(), send.len());
    super::check_gathered("allgather", recv.len(), n, b)?;
    // `held` is blocks r, r + 1, … (mod n), in that order.
    let mut held = Vec::with_capacity(recv.len());
    held.extend_from_slice(send);
    let (mut dist, mut step) = (1, 0);
    while dist < n {
        let count = dist.min(n - dist);
        let key = id.key(step, 0);
        let (to, from) = ((r + n - dist) % n, (r + dist) % n);
        let incoming = super::exchange(t, to, from, key, &held[..count * b], count * b).await?;
        held.extend_from_slice(&incoming);
        dist *= 2;
        step += 1;
    }
    for (i, block) in held.chunks(b.max(1)).enumerate().take(n) {
        let at = (r + i) % n;
        recv[at * b..(at + 1) * b].copy_from_slice(block);
    }
    Ok(())
}
