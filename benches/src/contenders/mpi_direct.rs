//! The reference of `mfio-bench coll`: MPI's collectives called directly
//! through `mpi-sys`, on a communicator of their own (a duplicate of the
//! world, as mfio's are), blocking or non-blocking with an `MPI_Test` loop
//! — what a C program would do.

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;

use mpi_sys as ffi;

/// A duplicate of `MPI_COMM_WORLD` for the direct calls. MPI must be
/// initialised (by mfio) before, and outlive it.
pub struct Direct {
    comm: ffi::MPI_Comm,
}

/// An MPI error code.
pub type Code = c_int;

fn check(rc: c_int) -> Result<(), Code> {
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

fn count(n: usize) -> Result<c_int, Code> {
    c_int::try_from(n).map_err(|_| -1)
}

impl Direct {
    /// Duplicates the world communicator.
    ///
    /// # Errors
    /// MPI's error code.
    pub fn new() -> Result<Self, Code> {
        let mut comm = MaybeUninit::uninit();
        // SAFETY: MPI is initialised (the caller built an mfio `Mpi`); the
        // world communicator is predefined.
        check(unsafe { ffi::MPI_Comm_dup(ffi::RSMPI_COMM_WORLD, comm.as_mut_ptr()) })?;
        // SAFETY: written by the successful call.
        let comm = unsafe { comm.assume_init() };
        Ok(Self { comm })
    }

    /// `MPI_Barrier`.
    pub fn barrier(&self) {
        // SAFETY: a live communicator; this thread initialised MPI.
        unsafe { ffi::MPI_Barrier(self.comm) };
    }

    /// The largest `mine` over the ranks.
    pub fn max(&self, mine: f64) -> f64 {
        let mut out = mine;
        // SAFETY: one double each way, a live communicator.
        unsafe {
            ffi::MPI_Allreduce(
                std::ptr::addr_of!(mine).cast(),
                std::ptr::addr_of_mut!(out).cast(),
                1,
                ffi::RSMPI_DOUBLE,
                ffi::RSMPI_MAX,
                self.comm,
            )
        };
        out
    }

    /// Waits for `req` by testing it in a loop, as a program that overlaps
    /// nothing with the call would.
    fn test_loop(req: &mut ffi::MPI_Request) -> Result<(), Code> {
        let mut flag = 0;
        while flag == 0 {
            // SAFETY: an active request of this thread; the status is ignored.
            check(unsafe { ffi::MPI_Test(req, &mut flag, ffi::RSMPI_STATUS_IGNORE) })?;
        }
        Ok(())
    }

    /// `MPI_Allreduce` (or `MPI_Iallreduce` + test loop) of doubles, summed.
    ///
    /// # Errors
    /// MPI's error code.
    pub fn allreduce_f64(&self, send: &[f64], recv: &mut [f64], nonblocking: bool) -> Result<(), Code> {
        let n = count(send.len().min(recv.len()))?;
        let (s, r) = (send.as_ptr().cast::<c_void>(), recv.as_mut_ptr().cast::<c_void>());
        // SAFETY: both buffers hold `n` doubles and outlive the call (the
        // non-blocking one is waited for before returning).
        unsafe {
            if nonblocking {
                let mut req = MaybeUninit::uninit();
                check(ffi::MPI_Iallreduce(
                    s,
                    r,
                    n,
                    ffi::RSMPI_DOUBLE,
                    ffi::RSMPI_SUM,
                    self.comm,
                    req.as_mut_ptr(),
                ))?;
                Self::test_loop(&mut req.assume_init())
            } else {
                check(ffi::MPI_Allreduce(
                    s,
                    r,
                    n,
                    ffi::RSMPI_DOUBLE,
                    ffi::RSMPI_SUM,
                    self.comm,
                ))
            }
        }
    }

    /// `MPI_Bcast` (or `MPI_Ibcast` + test loop) of bytes from rank 0.
    ///
    /// # Errors
    /// MPI's error code.
    pub fn bcast(&self, buf: &mut [u8], nonblocking: bool) -> Result<(), Code> {
        let n = count(buf.len())?;
        let b = buf.as_mut_ptr().cast::<c_void>();
        // SAFETY: the buffer holds `n` bytes and outlives the call.
        unsafe {
            if nonblocking {
                let mut req = MaybeUninit::uninit();
                check(ffi::MPI_Ibcast(
                    b,
                    n,
                    ffi::RSMPI_UINT8_T,
                    0,
                    self.comm,
                    req.as_mut_ptr(),
                ))?;
                Self::test_loop(&mut req.assume_init())
            } else {
                check(ffi::MPI_Bcast(b, n, ffi::RSMPI_UINT8_T, 0, self.comm))
            }
        }
    }

    /// `MPI_Allgather` (or `MPI_Iallgather` + test loop) of bytes.
    ///
    /// # Errors
    /// MPI's error code.
    pub fn allgather(&self, send: &[u8], recv: &mut [u8], nonblocking: bool) -> Result<(), Code> {
        let n = count(send.len())?;
        let (s, r) = (send.as_ptr().cast::<c_void>(), recv.as_mut_ptr().cast::<c_void>());
        // SAFETY: a constant of mpi-sys's shim.
        let t = unsafe { ffi::RSMPI_UINT8_T };
        // SAFETY: `recv` holds size × `n` bytes (the caller sized it) and
        // both outlive the call.
        unsafe {
            if nonblocking {
                let mut req = MaybeUninit::uninit();
                check(ffi::MPI_Iallgather(s, n, t, r, n, t, self.comm, req.as_mut_ptr()))?;
                Self::test_loop(&mut req.assume_init())
            } else {
                check(ffi::MPI_Allgather(s, n, t, r, n, t, self.comm))
            }
        }
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // SAFETY: ours, unused from now on; MPI is still initialised (mfio
        // finalises after).
        unsafe { ffi::MPI_Comm_free(&mut self.comm) };
    }
}
