//! Certificates on disk and in memory: reading the files safely ([`read`]), validating a
//! pair ([`pair`]), writing files atomically with the right modes ([`store`]), the
//! persistent local dev CA ([`devca`]), and human/JSON summaries of X.509 certificates
//! ([`inspect`]).

pub mod devca;
pub mod inspect;
pub mod pair;
pub mod read;
pub mod store;
