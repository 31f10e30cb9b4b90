//! The WSS listener: TLS termination, then HTTP (hyper) with routes: WebSocket upgrades
//! to the built-in echo or relayed to an upstream, and plain requests forwarded to it.
//!
//! A connection goes through small layers, each in its own file and testable alone:
//! [`listener`] (accept, connection limits, workers, drain) → TLS (tokio-rustls; the
//! certificate comes from the resolver) → [`connection`] (HTTP/1.1 or HTTP/2 with hyper,
//! set up by [`protocols`]; HTTP/2's writes batched by [`write_batch`]) → [`service`] (one request: the checks, [`routes`], then)
//! → either [`upgrade`] ([`origin`]) and [`websocket`] ([`echo`], or [`proxy`] +
//! [`relay`] with [`frame`]), or [`forward`] (on [`pool`], bodies in [`body`]), or on an
//! echo route a browser's GET gets the [`test_page`]. [`forwarding`] says which headers pass;
//! [`state`] is what every connection shares; [`http`] has wssd's own responses and the
//! side ports' small server.

pub mod body;
pub mod connection;
pub mod echo;
pub mod forward;
pub mod forwarding;
pub mod frame;
pub mod http;
pub mod limits;
pub mod listener;
pub mod origin;
pub mod pool;
pub mod protocols;
pub mod proxy;
pub mod relay;
pub mod routes;
pub mod service;
pub mod state;
pub mod test_page;
pub mod upgrade;
pub mod websocket;
pub mod workers;
pub mod write_batch;

pub use listener::{serve, serve_all};
pub use state::Server;
