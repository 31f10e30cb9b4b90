//! Keeping the served certificates current: [`resolver`] is the lock-free map the TLS
//! handshake reads; [`reloader`] validates a pair from disk and swaps it in; [`watch`]
//! notices file changes and tells the reloader.

pub mod reloader;
pub mod resolver;
pub mod watch;
