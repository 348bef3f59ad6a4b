//! Local checks of a collective's arguments, made before any backend sees
//! them: a bad root or peer, counts that do not fit the buffers, `v`-variant
//! layouts that overrun or overlap. Each failure is `InvalidInput` naming
//! the argument, and nothing has been sent.

use mfio_core::Error;

/// An `InvalidInput` error with `message`.
pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::new(std::io::ErrorKind::InvalidInput, message.into())
}

/// `rank` (the argument named `what`) lies inside a communicator of `size`.
///
/// # Errors
/// `InvalidInput` naming the argument.
#[inline]
pub fn rank(what: &str, rank: usize, size: usize) -> Result<(), Error> {
    if rank < size {
        Ok(())
    } else {
        Err(outside(what, rank, size))
    }
}

// The failures are out of line: every collective makes these checks, and
// the message's formatting would otherwise weigh on each one's inlined
// path.
#[cold]
#[inline(never)]
fn outside(what: &str, rank: usize, size: usize) -> Error {
    invalid(format!("{what} {rank} is outside the communicator of {size} ranks"))
}

/// `buf` (named `what`) holds exactly `want` elements.
///
/// # Errors
/// `InvalidInput` naming the argument and both lengths.
#[inline]
pub fn len(what: &str, have: usize, want: usize) -> Result<(), Error> {
    if have == want {
        Ok(())
    } else {
        Err(wrong_len(what, have, want))
    }
}

#[cold]
#[inline(never)]
fn wrong_len(what: &str, have: usize, want: usize) -> Error {
    invalid(format!("{what} holds {have} elements; this call needs {want}"))
}

/// `have` (named `what`) is a multiple of the communicator size.
///
/// # Errors
/// `InvalidInput` naming the argument.
#[inline]
pub fn divisible(what: &str, have: usize, size: usize) -> Result<(), Error> {
    if size > 0 && have.is_multiple_of(size) {
        Ok(())
    } else {
        Err(not_divisible(what, have, size))
    }
}

#[cold]
#[inline(never)]
fn not_divisible(what: &str, have: usize, size: usize) -> Error {
    invalid(format!(
        "{what} holds {have} elements, not a multiple of the {size} ranks"
    ))
}

/// Whether regions of a `v`-variant layout may share elements: a send
/// layout may read one element for several ranks; a receive layout must
/// not write one element twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Regions may overlap (send side).
    Allowed,
    /// Regions must be disjoint (receive side).
    Refused,
}

/// A `v`-variant layout: `counts` and `displs` (in elements) of `size`
/// ranks inside a buffer of `buf_len` elements. Named `what` in errors.
///
/// # Errors
/// `InvalidInput` when a list's length is not `size`, a region runs past
/// the buffer, or (with [`Overlap::Refused`]) two regions share elements.
pub fn layout(
    what: &str,
    counts: &[usize],
    displs: &[usize],
    size: usize,
    buf_len: usize,
    overlap: Overlap,
) -> Result<(), Error> {
    if counts.len() != size {
        return Err(invalid(format!(
            "{what} counts list {} entries for {size} ranks",
            counts.len()
        )));
    }
    if displs.len() != size {
        return Err(invalid(format!(
            "{what} displacements list {} entries for {size} ranks",
            displs.len()
        )));
    }
    for (r, (&c, &d)) in counts.iter().zip(displs).enumerate() {
        if d.checked_add(c).is_none_or(|end| end > buf_len) {
            return Err(invalid(format!(
                "{what}: rank {r}'s region (displacement {d}, count {c}) runs past the buffer of {buf_len} elements"
            )));
        }
    }
    if overlap == Overlap::Refused {
        let mut regions: Vec<(usize, usize, usize)> = counts
            .iter()
            .zip(displs)
            .enumerate()
            .filter(|(_, (&c, _))| c > 0)
            .map(|(r, (&c, &d))| (d, d + c, r))
            .collect();
        regions.sort_unstable();
        for pair in regions.windows(2) {
            let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
            if start < end {
                return Err(invalid(format!("{what}: the regions of ranks {a} and {b} overlap")));
            }
        }
    }
    Ok(())
}

/// The displacements of counts laid out back to back.
pub fn packed_displs(counts: &[usize]) -> Vec<usize> {
    let mut at = 0usize;
    counts
        .iter()
        .map(|&c| {
            let d = at;
            at = at.saturating_add(c);
            d
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_that_overrun_or_overlap_are_refused_with_the_argument_named() {
        assert!(layout("recv", &[2, 3], &[0, 2], 2, 5, Overlap::Refused).is_ok());
        let err = layout("recv", &[2, 3], &[0, 3], 2, 5, Overlap::Refused).expect_err("overrun");
        assert!(err.to_string().contains("rank 1's region"), "{err}");
        let err = layout("recv", &[2, 3], &[1, 2], 2, 5, Overlap::Refused).expect_err("overlap");
        assert!(err.to_string().contains("ranks 0 and 1 overlap"), "{err}");
        assert!(layout("send", &[2, 3], &[1, 2], 2, 5, Overlap::Allowed).is_ok());
        let err = layout("send", &[2], &[0, 2], 2, 5, Overlap::Allowed).expect_err("short list");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(
            layout("recv", &[0, 0], &[9, 9], 2, 9, Overlap::Refused).is_ok(),
            "empty regions"
        );
        assert!(
            layout("x", &[1], &[usize::MAX], 1, 4, Overlap::Allowed).is_err(),
            "no overflow"
        );
    }

    #[test]
    fn ranks_and_lengths() {
        assert!(rank("root", 2, 3).is_ok());
        assert!(rank("root", 3, 3).expect_err("outside").to_string().contains("root 3"));
        assert!(divisible("send", 6, 3).is_ok());
        assert!(divisible("send", 7, 3).is_err());
        assert_eq!(packed_displs(&[2, 0, 3]), [0, 2, 2]);
    }
}
