//! The WSS listener: TLS termination, the HTTP upgrade, and then either the built-in echo
//! service or the relay to the upstream.
//!
//! A connection goes through small layers, each in its own file and testable alone:
//! [`listener`] (accept, connection limit, drain) → TLS (tokio-rustls; the certificate
//! comes from the resolver) → [`http`] (read the head) → [`routes`] (which upstream, by
//! path) → [`upgrade`] (is it a WebSocket upgrade we serve? [`origin`]) → [`echo`] or [`proxy`] + [`relay`] (with [`frame`]).

pub mod echo;
pub mod frame;
pub mod http;
pub mod limits;
pub mod listener;
pub mod origin;
pub mod proxy;
pub mod relay;
pub mod routes;
pub mod upgrade;
pub mod workers;

pub use listener::{Server, serve};
