//! The user-facing layers, all thin over the same packets: [`packet`]
//! (send a packet, await it), [`reported`] (a receive that also learns
//! who sent what), `async` (positional and
//! stream reads/writes), [`sync`] (blocking), [`std_io`] (`std::io` cursor)
//! and [`adapter`] (`futures-io` / `tokio` traits).

#[cfg(any(feature = "futures-io", feature = "tokio"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "futures-io", feature = "tokio"))))]
pub mod adapter;
pub mod r#async;
pub mod packet;
pub mod reported;
pub mod std_io;
pub mod sync;
