//! A test rank's communicator over TCP or UCX, made from its bootstrap:
//! the setup the tests of groups of threads share.

use mfio_backends::{BackendKind, Runtime};
use mfio_coll::algo::TransportComm;
use mfio_coll::transport::bootstrap::Bootstrap;
use mfio_coll::transport::tcp::{Liveness, TcpTransport};
use mfio_coll::transport::ucx::UcxTransport;
use mfio_net::ucx::Context;

use super::driver::Driver;

/// The rank's communicator over TCP, on a runtime of `kind`.
pub fn over_tcp(boot: &Bootstrap, kind: BackendKind, live: Liveness) -> Result<TransportComm<Driver>, String> {
    let rt = Runtime::builder().backend(kind).build().map_err(|e| e.to_string())?;
    let links = boot.connect().map_err(|e| e.to_string())?;
    let t = TcpTransport::new(&rt, boot.rank(), links, live).map_err(|e| e.to_string())?;
    Ok(TransportComm::new(Driver::Rt(rt), t))
}

/// The rank's communicator over UCX with these transports (`UCX_TLS`),
/// keepalive every second.
pub fn over_ucx(boot: &Bootstrap, tls: &str) -> Result<TransportComm<Driver>, String> {
    let worker = Context::builder()
        .set("TLS", tls)
        .set("KEEPALIVE_INTERVAL", "1s")
        .build()
        .and_then(|c| c.worker())
        .map_err(|e| e.to_string())?;
    let t = UcxTransport::bootstrap(&worker, boot).map_err(|e| e.to_string())?;
    Ok(TransportComm::new(Driver::Ucx(worker), t))
}
