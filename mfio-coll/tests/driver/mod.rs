//! What drives a test rank's operations: the runtime its TCP transport (or
//! in-process transport) runs on, or its UCX worker. One type, so a test
//! body runs over either.

use mfio_backends::Runtime;
use mfio_core::{DriveStatus, IoBackend, PollingHandle};
use mfio_net::ucx::Worker;

/// A rank's runtime or UCX worker.
#[derive(Clone)]
pub enum Driver {
    Rt(Runtime),
    Ucx(Worker),
}

impl IoBackend for Driver {
    fn polling_handle(&self) -> PollingHandle<'_> {
        match self {
            Driver::Rt(rt) => rt.polling_handle(),
            Driver::Ucx(w) => w.polling_handle(),
        }
    }

    fn drive(&self) -> DriveStatus {
        match self {
            Driver::Rt(rt) => rt.drive(),
            Driver::Ucx(w) => w.drive(),
        }
    }
}
