//! Bruck alltoall: each rank rotates its blocks so block `i` is the one for
//! rank `r + i`, then in step `k` sends every block whose index has bit `k`
//! set to rank `r + 2^k` (they travel `i` ranks in all, one bit at a
//! time), and finally puts the blocks in source order. ⌈log₂ n⌉ steps of
//! about half the buffer each: the latency-minded alltoall for short
//! blocks and many ranks.

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
pub async fn alltoall_bruck<T: Element>(t: &dyn Transport, id: CollId, send: &[T], recv: &mut [T]) -> Result<()> {
    let (n, r) = (t.size(), t.rank());
    let b = super::alltoall_block(send.len(), recv.len(), n)?;
    // tmp block i: the block for rank r + i.
    let mut tmp: Vec<T> = (0..n)
        .flat_map(|i| {
            let d = (r + i) % n;
            send[d * b..(d + 1) * b].iter().copied()
        })
        .collect();
    let (mut dist, mut step) = (1, 0);
    while dist < n {
        let moving: Vec<usize> = (0..n).filter(|i| i & dist != 0).collect();
        let packed: Vec<T> = moving
            .iter()
            .flat_map(|&i| tmp[i * b..(i + 1) * b].iter().copied())
            .collect();
        let (to, from) = ((r + dist) % n, (r + n - dist) % n);
        let incoming = super::exchange(t, to, from, id.key(step, 0), &packed, packed.len()).await?;
        for (slot, &i) in moving.iter().enumerate() {
            tmp[i * b..(i + 1) * b].copy_from_slice(&incoming[slot * b..(slot + 1) * b]);
        }
        dist *= 2;
        step += 1;
    }
    // tmp block i now came from rank r - i.
    for i in 0..n {
        let src = (r + n - i) % n;
        recv[src * b..(src + 1) * b].copy_from_slice(&tmp[i * b..(i + 1) * b]);
    }
    Ok(())
}
