//! Recursive-doubling allgather: in step `k` each rank exchanges everything
//! it holds (2^k blocks, contiguous in rank order) with the rank whose
//! number differs in bit `k`. log₂ n steps, each doubling what a rank
//! holds; for a power-of-two rank count (use [`allgather_bruck`] for
//! others).
//!
//! [`allgather_bruck`]: super::allgather_bruck

use mfio_core::Result;

use crate::element::Element;
use crate::transport::{CollId, Transport};

/// Gathers every rank's `send` into every rank's `recv`, in rank order:
/// `recv` holds size × `send.len()` elements.
///
/// # Errors
/// `InvalidInput` if the rank count is not a power of two or `recv` has
/// another length; `InvalidData` if ranks' blocks differ in length; what
/// the transport reports.
pub async fn allgather_recursive_doubling<T: Element>(
    t: &dyn Transport,
    id: CollId,
    send: &[T],
    recv: &mut [T],
) -> Result<()> {
    let (n, r, b) = (t.size(), t.rank(), send.len());
    if !n.is_power_of_two() {
        return Err(crate::check::invalid(format!(
            "recursive-doubling allgather needs a power-of-two rank count, not {n} (Bruck or the ring take any)"
        )));
    }
    super::check_gathered("allgather", recv.len(), n, b)?;
    recv[r * b..(r + 1) * b].copy_from_slice(send);
    let (mut mask, mut step) = (1, 0);
    while mask < n {
        let partner = r ^ mask;
        // This rank holds the `mask` blocks of its aligned group; the
        // partner holds the other half of the doubled group.
        let mine = r & !(mask - 1);
        let theirs = partner & !(mask - 1);
        let key = id.key(step, 0);
        let incoming = super::exchange(t, partner, partner, key, &recv[mine * b..(mine + mask) * b], mask * b).await?;
        recv[theirs * b..(theirs + mask) * b].copy_from_slice(&incoming);
        mask <<= 1;
        step += 1;
    }
    Ok(())
}
