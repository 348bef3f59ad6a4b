//! Every collective of the `Communicator` API, for one element type,
//! length and form, checked against a sequential reference every rank
//! computes for itself. Shared by the MPI backend's tests and the
//! communicator over transports.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::fmt::Debug;

use mfio_coll::{element, CollFuture, CollResult, Communicator, Counts, Element, ReduceOp};

/// A check's outcome: what went wrong, if anything.
pub type Outcome = Result<(), String>;

/// Returns the formatted error unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Values the tests can make from an index and compare exactly (floats hold
/// small integers, so every summation order gives the same result).
pub trait Value: Element + PartialEq + Debug {
    /// A value made from `x`.
    fn make(x: u64) -> Self;
}

macro_rules! value_int {
    ($($t:ty),*) => {$(
        impl Value for $t {
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            fn make(x: u64) -> Self { (x % 97) as $t }
        }
    )*};
}
value_int!(i8, i16, i32, i64, u8, u16, u32, u64);

impl Value for f32 {
    #[allow(clippy::cast_precision_loss)]
    fn make(x: u64) -> Self {
        (x % 1000) as f32
    }
}

impl Value for f64 {
    #[allow(clippy::cast_precision_loss)]
    fn make(x: u64) -> Self {
        (x % 100_000) as f64 - 50_000.0
    }
}

impl Value for [u16; 3] {
    fn make(x: u64) -> Self {
        [u16::make(x), u16::make(x / 3), u16::make(x / 7)]
    }
}

/// A struct element with a derived datatype.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Sample {
    /// A float.
    pub weight: f64,
    /// An integer.
    pub id: u32,
    /// An array.
    pub flags: [u16; 2],
}
element!(Sample { weight, id, flags });

impl Value for Sample {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    fn make(x: u64) -> Self {
        Sample {
            weight: (x % 4096) as f64,
            id: x as u32,
            flags: [(x % 7) as u16, (x % 11) as u16],
        }
    }
}

/// Rank `rank`'s `len` values for a call numbered `salt`.
pub fn data<T: Value>(rank: usize, len: usize, salt: u64) -> Vec<T> {
    (0..len as u64)
        .map(|i| T::make(i.wrapping_mul(31) ^ (rank as u64 * 1_000_003) ^ salt.wrapping_mul(7919)))
        .collect()
}

/// The reduction of the ranks `ranks` (in order) of `data`, as MPI defines
/// it: lower ranks on the left.
pub fn reduce_ref<T: Value>(op: &ReduceOp<T>, ranks: std::ops::Range<usize>, len: usize, salt: u64) -> Vec<T> {
    let mut ranks = ranks.rev();
    let Some(last) = ranks.next() else { return Vec::new() };
    let mut acc = data::<T>(last, len, salt);
    for r in ranks {
        op.apply(&data::<T>(r, len, salt), &mut acc);
    }
    acc
}

/// Runs a collective in its async form (driven by `block_on`) or its
/// blocking form.
#[derive(Clone, Copy, Debug)]
pub enum Form {
    /// `w.wait(async form)`.
    Async,
    /// The blocking form.
    Blocking,
}

/// Runs a collective in `form`: the async one waited for through the
/// communicator's backend, or the blocking one.
pub fn go<C: Communicator, B: Default>(
    w: &C,
    form: Form,
    a: impl FnOnce() -> CollFuture<B>,
    b: impl FnOnce() -> CollResult<B>,
) -> CollResult<B> {
    match form {
        Form::Async => w.wait(a()),
        Form::Blocking => b(),
    }
}

pub fn ok<B>(r: CollResult<B>, what: &str) -> Result<B, String> {
    if std::env::var_os("MFIO_MPI_TRACE").is_some() {
        eprintln!(
            "done: {what} (rank {})",
            std::env::var("OMPI_COMM_WORLD_RANK").unwrap_or_default()
        );
    }
    let (res, bufs) = r.into_parts();
    res.map_err(|e| format!("{what}: {e}"))?;
    Ok(bufs)
}

/// Every collective for one element type, length and form.
pub fn collectives_of<C: Communicator, T: Value>(w: &C, len: usize, form: Form, salt: u64) -> Outcome {
    let (rank, size) = (w.rank(), w.size());
    let name = std::any::type_name::<T>();
    let what = |op: &str| format!("{op}<{name}> len {len} {form:?}");
    if std::env::var_os("MFIO_MPI_TRACE").is_some() {
        eprintln!("rank {rank}: collectives of {name}, len {len}, {form:?}");
    }
    let root = size - 1;
    let sum: ReduceOp<T> = if T::layout().homogeneous().is_some() {
        ReduceOp::Sum
    } else {
        // Structs: element-wise by a closure (commutative).
        ReduceOp::custom(true, |inc: &[T], acc: &mut [T]| {
            for (a, x) in acc.iter_mut().zip(inc) {
                let (ab, xb): (&mut [u8], &[u8]) = (bytemuck::bytes_of_mut(a), bytemuck::bytes_of(x));
                for (p, q) in ab.iter_mut().zip(xb) {
                    *p ^= *q;
                }
            }
        })
    };

    // bcast
    let buf = if rank == root {
        data::<T>(root, len, salt)
    } else {
        vec![T::zeroed(); len]
    };
    let got = ok(
        go(
            w,
            form,
            || w.bcast(buf.clone(), root),
            || w.blocking_bcast(buf.clone(), root),
        ),
        &what("bcast"),
    )?;
    ensure!(got == data::<T>(root, len, salt), "{}: wrong data", what("bcast"));

    // reduce and reduce_in_place
    let want = reduce_ref(&sum, 0..size, len, salt);
    let send = data::<T>(rank, len, salt);
    let recv = if rank == 0 { vec![T::zeroed(); len] } else { Vec::new() };
    let (s, r) = ok(
        go(
            w,
            form,
            || w.reduce(send.clone(), recv.clone(), sum.clone(), 0),
            || w.blocking_reduce(send.clone(), recv.clone(), sum.clone(), 0),
        ),
        &what("reduce"),
    )?;
    ensure!(s == send, "{}: the send buffer changed", what("reduce"));
    ensure!(
        rank != 0 || r == want,
        "{}: wrong result: first difference at {:?} of {}: got {:?} want {:?}; inputs {:?}",
        what("reduce"),
        r.iter().zip(&want).position(|(a, b)| a != b),
        r.len(),
        r.get(251),
        want.get(251),
        (0..size)
            .map(|q| data::<T>(q, len, salt).get(251).copied())
            .collect::<Vec<_>>()
    );
    ensure!(rank == 0 || r.is_empty(), "{}: non-root recv touched", what("reduce"));
    let b = ok(
        go(
            w,
            form,
            || w.reduce_in_place(send.clone(), sum.clone(), root),
            || w.blocking_reduce_in_place(send.clone(), sum.clone(), root),
        ),
        &what("reduce_in_place"),
    )?;
    ensure!(
        if rank == root { b == want } else { b == send },
        "{}: wrong result",
        what("reduce_in_place")
    );

    // allreduce and allreduce_in_place
    let (_, r) = ok(
        go(
            w,
            form,
            || w.allreduce(send.clone(), vec![T::zeroed(); len], sum.clone()),
            || w.blocking_allreduce(send.clone(), vec![T::zeroed(); len], sum.clone()),
        ),
        &what("allreduce"),
    )?;
    ensure!(r == want, "{}: wrong result", what("allreduce"));
    let b = ok(
        go(
            w,
            form,
            || w.allreduce_in_place(send.clone(), sum.clone()),
            || w.blocking_allreduce_in_place(send.clone(), sum.clone()),
        ),
        &what("allreduce_in_place"),
    )?;
    ensure!(b == want, "{}: wrong result", what("allreduce_in_place"));

    // scan and exscan
    let (_, r) = ok(
        go(
            w,
            form,
            || w.scan(send.clone(), vec![T::zeroed(); len], sum.clone()),
            || w.blocking_scan(send.clone(), vec![T::zeroed(); len], sum.clone()),
        ),
        &what("scan"),
    )?;
    ensure!(
        r == reduce_ref(&sum, 0..rank + 1, len, salt),
        "{}: wrong result",
        what("scan")
    );
    let marker = data::<T>(99, len, salt);
    let (_, r) = ok(
        go(
            w,
            form,
            || w.exscan(send.clone(), marker.clone(), sum.clone()),
            || w.blocking_exscan(send.clone(), marker.clone(), sum.clone()),
        ),
        &what("exscan"),
    )?;
    let want_ex = if rank == 0 {
        marker.clone()
    } else {
        reduce_ref(&sum, 0..rank, len, salt)
    };
    ensure!(
        r == want_ex,
        "{}: wrong result (rank 0 must be unchanged)",
        what("exscan")
    );

    // reduce_scatter_block: blocks of `len` per rank
    let big = data::<T>(rank, len * size, salt);
    let (_, r) = ok(
        go(
            w,
            form,
            || w.reduce_scatter_block(big.clone(), vec![T::zeroed(); len], sum.clone()),
            || w.blocking_reduce_scatter_block(big.clone(), vec![T::zeroed(); len], sum.clone()),
        ),
        &what("reduce_scatter_block"),
    )?;
    let full = reduce_ref(&sum, 0..size, len * size, salt);
    ensure!(
        r[..] == full[rank * len..(rank + 1) * len],
        "{}: wrong block",
        what("reduce_scatter_block")
    );

    // scatter / gather / allgather / alltoall
    let all = data::<T>(root, len * size, salt);
    let send_s = if rank == root { all.clone() } else { Vec::new() };
    let (_, r) = ok(
        go(
            w,
            form,
            || w.scatter(send_s.clone(), vec![T::zeroed(); len], root),
            || w.blocking_scatter(send_s.clone(), vec![T::zeroed(); len], root),
        ),
        &what("scatter"),
    )?;
    ensure!(
        r[..] == all[rank * len..(rank + 1) * len],
        "{}: wrong part",
        what("scatter")
    );
    let gathered: Vec<T> = (0..size).flat_map(|q| data::<T>(q, len, salt)).collect();
    let recv_g = if rank == root {
        vec![T::zeroed(); len * size]
    } else {
        Vec::new()
    };
    let (_, r) = ok(
        go(
            w,
            form,
            || w.gather(send.clone(), recv_g.clone(), root),
            || w.blocking_gather(send.clone(), recv_g.clone(), root),
        ),
        &what("gather"),
    )?;
    ensure!(
        if rank == root { r == gathered } else { r.is_empty() },
        "{}: wrong result",
        what("gather")
    );
    let (_, r) = ok(
        go(
            w,
            form,
            || w.allgather(send.clone(), vec![T::zeroed(); len * size]),
            || w.blocking_allgather(send.clone(), vec![T::zeroed(); len * size]),
        ),
        &what("allgather"),
    )?;
    ensure!(r == gathered, "{}: wrong result", what("allgather"));
    let (_, r) = ok(
        go(
            w,
            form,
            || w.alltoall(big.clone(), vec![T::zeroed(); len * size]),
            || w.blocking_alltoall(big.clone(), vec![T::zeroed(); len * size]),
        ),
        &what("alltoall"),
    )?;
    let want_a2a: Vec<T> = (0..size)
        .flat_map(|q| data::<T>(q, len * size, salt)[rank * len..(rank + 1) * len].to_vec())
        .collect();
    ensure!(r == want_a2a, "{}: wrong result", what("alltoall"));

    // v variants with uneven counts: rank q has len + q elements (rank 0
    // none when len is 0), laid out with a gap of one element after each.
    let counts: Vec<usize> = (0..size).map(|q| if len == 0 { 0 } else { len + q }).collect();
    let displs: Vec<usize> = counts
        .iter()
        .scan(0, |at, &c| {
            let d = *at;
            *at += c + 1;
            Some(d)
        })
        .collect();
    rooted_v::<C, T>(w, form, &Counts { counts, displs }, salt, root, &what("v"))?;
    // alltoallv: rank p sends (p + q) % 3 + len/2 elements to rank q.
    alltoallv_of::<C, T>(
        w,
        form,
        |p, q| if len == 0 { 0 } else { (p + q) % 3 + len / 2 },
        salt,
        &what("alltoallv"),
    )?;

    ok(
        go(
            w,
            form,
            || w.barrier(),
            || mfio_core::BufResult(w.blocking_barrier(), ()),
        ),
        &what("barrier"),
    )?;
    Ok(())
}

/// scatterv, gatherv and allgatherv of blocks laid out by `layout` (rank
/// q's block holds `data(q)`; the gaps keep a filler), checked exactly.
pub fn rooted_v<C: Communicator, T: Value>(
    w: &C,
    form: Form,
    layout: &Counts,
    salt: u64,
    root: usize,
    label: &str,
) -> Outcome {
    let (rank, size) = (w.rank(), w.size());
    let (counts, displs) = (&layout.counts, &layout.displs);
    let total = (0..size).map(|q| displs[q] + counts[q]).max().unwrap_or(0) + 1;
    let filler = T::make(12345);
    let mut whole = vec![filler; total];
    for q in 0..size {
        whole[displs[q]..displs[q] + counts[q]].copy_from_slice(&data::<T>(q, counts[q], salt));
    }
    let mine = data::<T>(rank, counts[rank], salt);
    let send = if rank == root { whole.clone() } else { Vec::new() };
    let (_, r) = ok(
        go(
            w,
            form,
            || w.scatterv(send.clone(), layout, vec![T::zeroed(); counts[rank]], root),
            || w.blocking_scatterv(send.clone(), layout, vec![T::zeroed(); counts[rank]], root),
        ),
        &format!("{label}: scatterv"),
    )?;
    ensure!(r == mine, "{label}: scatterv: wrong part");
    let recv = if rank == root { vec![filler; total] } else { Vec::new() };
    let (_, r) = ok(
        go(
            w,
            form,
            || w.gatherv(mine.clone(), recv.clone(), layout, root),
            || w.blocking_gatherv(mine.clone(), recv.clone(), layout, root),
        ),
        &format!("{label}: gatherv"),
    )?;
    ensure!(
        if rank == root { r == whole } else { r.is_empty() },
        "{label}: gatherv: wrong result"
    );
    let (_, r) = ok(
        go(
            w,
            form,
            || w.allgatherv(mine.clone(), vec![filler; total], layout),
            || w.blocking_allgatherv(mine.clone(), vec![filler; total], layout),
        ),
        &format!("{label}: allgatherv"),
    )?;
    ensure!(r == whole, "{label}: allgatherv: wrong result");
    Ok(())
}

/// alltoallv where rank p sends `n(p, q)` elements to rank q, checked
/// exactly.
pub fn alltoallv_of<C: Communicator, T: Value>(
    w: &C,
    form: Form,
    n: impl Fn(usize, usize) -> usize,
    salt: u64,
    label: &str,
) -> Outcome {
    let (rank, size) = (w.rank(), w.size());
    let send_layout = Counts::packed((0..size).map(|q| n(rank, q)).collect());
    let recv_layout = Counts::packed((0..size).map(|p| n(p, rank)).collect());
    let payload = |p: usize| data::<T>(p, send_layout_total(p, size, &n), salt);
    let mut want = Vec::new();
    for p in 0..size {
        let from = Counts::packed((0..size).map(|q| n(p, q)).collect());
        let d = from.displs[rank];
        want.extend_from_slice(&payload(p)[d..d + from.counts[rank]]);
    }
    let (_, r) = ok(
        go(
            w,
            form,
            || {
                w.alltoallv(
                    payload(rank),
                    &send_layout,
                    vec![T::zeroed(); recv_layout.total()],
                    &recv_layout,
                )
            },
            || {
                w.blocking_alltoallv(
                    payload(rank),
                    &send_layout,
                    vec![T::zeroed(); recv_layout.total()],
                    &recv_layout,
                )
            },
        ),
        label,
    )?;
    ensure!(r == want, "{label}: wrong result");
    Ok(())
}

pub fn send_layout_total(p: usize, size: usize, n: &impl Fn(usize, usize) -> usize) -> usize {
    (0..size).map(|q| n(p, q)).sum()
}
