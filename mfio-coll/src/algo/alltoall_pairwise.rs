//! Pairwise-exchange alltoall: in step `s` (1 ≤ s < n) each rank sends its
//! block for rank `r + s` and receives rank `r - s`'s block for it. n - 1
//! steps, one block each way per step: the bandwidth-minded choice for any
//! rank count.

use mfio_core::Result;

use crate::element::Element;
use crate::transport::{CollId, Transport};

/// Block `d` of `send` goes to rank `d`, which puts it at block `r` of its
/// `recv`; both hold size × block elements.
///
/// # Errors
/// `InvalidInput` if `send` and `recv` differ in length or do not split
/// into one block per rank; `InvalidData` on a mismatch between ranks; what
/// the transport reports.
pub async fn alltoall_pairwise<T: Element>(t: &dyn Transport, id: CollId, send: &[T], recv: &mut [T]) -> Result<()> {
    let (n, r) = (t.size(), t.rank());
    let b = super::alltoall_block(send.len(), recv.len(), n)?;
    recv[r * b..(r + 1) * b].copy_from_slice(&send[r * b..(r + 1) * b]);
    for s in 1..n {
        let (to, from) = ((r + s) % n, (r + n - s) % n);
        let key = id.key(s as u32, 0);
        let incoming = super::exchange(t, to, from, key, &send[to * b..(to + 1) * b], b).await?;
        recv[from * b..(from + 1) * b].copy_from_slice(&incoming);
    }
    Ok(())
}
