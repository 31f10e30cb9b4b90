//! wssd: a certificate provisioning and hot-reload agent with a built-in WSS listener.
//!
//! Data flows one way:
//!
//! ```text
//! config ──▶ provision ──▶ cert::store ──▶ reload::watch ──▶ reload::resolver ◀── server
//! ```
//!
//! * [`config`] turns the TOML file into typed settings once; nothing else sees strings.
//! * [`provision`] makes certificates that are missing or due (the local dev CA today,
//!   ACME next) and writes them through [`cert::store`], atomically.
//! * [`reload`] watches the certificate files, validates each new pair
//!   ([`cert::pair`]) and swaps it into the lock-free [`reload::resolver`].
//! * [`server`] accepts TLS connections; each handshake asks the resolver for a
//!   certificate, and a swap never touches an established connection.
//! * [`probe`] is the client side: it checks a `wss://` endpoint the way a user would.
#![forbid(unsafe_code)]
// Input and I/O reach almost everything here: an error is handled or returned, never
// unwrapped. Unit tests may unwrap (clippy.toml); `scripts/test` runs clippy.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod acme;
pub mod admin;
pub mod agent;
pub mod cert;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod errors;
pub mod hooks;
pub mod metrics;
pub mod preflight;
pub mod probe;
pub mod provision;
pub mod reload;
pub mod server;
pub mod tls;
pub mod trust;
pub mod units;
