//! Dissemination barrier: in step `k` each rank tells rank `r + 2^k` it
//! arrived and hears from rank `r - 2^k`; after ⌈log₂ n⌉ steps every rank
//! has heard, through some path, from every other.

use mfio_core::Result;

use crate::transport::{CollId, Transport};

/// Waits until every rank of `t`'s group called it (with the same `id`).
///
/// # Errors
/// What the transport reports (a rank that left).
pub async fn barrier_dissemination(t: &dyn Transport, id: CollId) -> Result<()> {
    let (n, r) = (t.size(), t.rank());
    let (mut dist, mut step) = (1, 0);
    while dist < n {
        let key = id.key(step, 0);
        super::exchange::<u8>(t, (r + dist) % n, (r + n - dist) % n, key, &[], 0).await?;
        dist *= 2;
        step += 1;
    }
    Ok(())
}
