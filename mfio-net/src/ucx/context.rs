//! [`Context`]: one UCX context (`ucp_context`), the root every worker and
//! memory registration hangs from.

use std::fmt;
use std::sync::Arc;

use mfio_core::Result;

use super::sys;

pub(crate) struct ContextInner {
    pub(crate) handle: sys::ContextH,
    /// The transport list in force (`TLS` set in code, else `UCX_TLS`).
    tls: Option<String>,
}

// SAFETY: the context is created with `mt_workers_shared`, so UCX locks the
// state its workers and registrations share; the handle itself is a pointer.
unsafe impl Send for ContextInner {}
// SAFETY: as above.
unsafe impl Sync for ContextInner {}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: every worker and memory region holds an `Arc` of this, so
        // none is left when it drops.
        unsafe { sys::cleanup(self.handle) };
    }
}

/// A UCX context with tag, stream, active-message, RMA and wake-up
/// features. Workers and memory regions keep it alive, so it can be dropped
/// in any order.
///
/// Configuration comes from the `UCX_*` environment variables (`UCX_TLS`,
/// `UCX_NET_DEVICES`, …), then from [`ContextBuilder::set`].
///
/// ```
/// use mfio_net::ucx::Context;
/// # fn main() -> mfio_core::Result<()> {
/// let context = Context::builder().set("TLS", "sm,self").build()?;
/// let worker = context.worker()?;
/// # drop(worker); Ok(()) }
/// ```
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<ContextInner>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context configured from the environment.
    ///
    /// # Errors
    /// What `ucp_init` reports (no usable transport, bad `UCX_*` values).
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// A builder to set UCX options in code.
    pub fn builder() -> ContextBuilder {
        ContextBuilder::default()
    }

    /// A worker on this context with the default options.
    ///
    /// # Errors
    /// See [`WorkerBuilder::build`](super::WorkerBuilder::build).
    pub fn worker(&self) -> Result<super::Worker> {
        super::Worker::builder(self).build()
    }

    /// Whether the context's transport list (`TLS` set in code, else
    /// `UCX_TLS`; unset means every transport) lets UCX use transport
    /// `name` (`"cma"`, `"tcp"`, …), through its aliases too: `all`, and
    /// `sm`/`shm` for the shared-memory ones.
    pub fn allows_transport(&self, name: &str) -> bool {
        self.inner.tls.as_deref().is_none_or(|tls| allows(tls, name))
    }
}

/// Options of a [`Context`].
#[derive(Debug, Clone, Default)]
pub struct ContextBuilder {
    settings: Vec<(String, String)>,
}

impl ContextBuilder {
    /// Sets UCX option `name` (without the `UCX_` prefix, e.g. `"TLS"`) to
    /// `value`, over what the environment says. Transport options are
    /// taken too, but named as their table names them, which is not always
    /// their environment variable less `UCX_` (UCX 1.13, checked by
    /// mfio-net's tests): `"MM_FIFO_SIZE"` sets shared memory's
    /// `UCX_POSIX_FIFO_SIZE` and `UCX_SYSV_FIFO_SIZE`, `"SNDBUF"` sets
    /// `UCX_TCP_SNDBUF` (`"TCP_SNDBUF"` and `"POSIX_FIFO_SIZE"` are
    /// accepted and do nothing: UCX keeps a name it does not know for
    /// transports that may ask for it later).
    #[must_use]
    pub fn set(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Creates the context.
    ///
    /// Endpoints use UCX's peer error handling, so that a dead peer fails
    /// the operations waiting on it and an endpoint can be closed by force.
    /// Over shared memory alone that needs `MM_ERROR_HANDLING=y`, which is
    /// set here unless the environment or [`set`](Self::set) says otherwise.
    ///
    /// # Errors
    /// An option UCX does not know or refuses, or what `ucp_init` reports.
    pub fn build(self) -> Result<Context> {
        let mut config = sys::Config::from_env()?;
        let tls = match self.settings.iter().rev().find(|(n, _)| n == "TLS") {
            Some((_, v)) => Some(v.clone()),
            None => std::env::var("UCX_TLS").ok(),
        };
        // Only where shared memory may be used: UCX warns about settings
        // no enabled transport takes.
        let shared_memory = tls.as_deref().is_none_or(uses_shared_memory);
        if shared_memory
            && std::env::var_os("UCX_MM_ERROR_HANDLING").is_none()
            && !self.settings.iter().any(|(n, _)| n == "MM_ERROR_HANDLING")
        {
            config.set("MM_ERROR_HANDLING", "y")?;
        }
        for (name, value) in &self.settings {
            config.set(name, value)?;
        }
        let handle = sys::init(&config)?;
        Ok(Context {
            inner: Arc::new(ContextInner { handle, tls }),
        })
    }
}

/// The transports UCX counts as shared memory (`sm`, `shm`).
const SHARED_MEMORY: [&str; 6] = ["mm", "posix", "sysv", "xpmem", "cma", "knem"];

/// True if the `UCX_TLS` list `tls` lets UCX use transport `name`.
fn allows(tls: &str, name: &str) -> bool {
    let (excluding, list) = match tls.strip_prefix('^') {
        Some(list) => (true, list),
        None => (false, tls),
    };
    let named = list.split(',').map(str::trim).any(|t| {
        t == name || (!excluding && t == "all") || (matches!(t, "sm" | "shm") && SHARED_MEMORY.contains(&name))
    });
    named != excluding
}

/// True if a `UCX_TLS` list may enable a shared-memory transport.
fn uses_shared_memory(tls: &str) -> bool {
    tls.starts_with('^')
        || tls.split(',').map(str::trim).any(|t| {
            matches!(
                t,
                "all" | "sm" | "shm" | "mm" | "posix" | "sysv" | "xpmem" | "cma" | "knem"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::allows;

    #[test]
    fn transport_lists_name_transports_and_their_aliases() {
        assert!(allows("sm,self", "cma"));
        assert!(allows("shm", "posix"));
        assert!(allows("all", "tcp"));
        assert!(allows("tcp,cma", "cma"));
        assert!(!allows("tcp", "cma"));
        assert!(!allows("sm,self", "tcp"));
        assert!(allows("^tcp", "cma"));
        assert!(!allows("^cma", "cma"));
        assert!(!allows("^sm", "cma"));
        assert!(allows("^sm", "tcp"));
    }
}
