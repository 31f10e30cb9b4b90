//! Provisioning: keeping every certificate that wssd obtains itself current, whatever
//! its source (the local dev CA, `source = "selfsigned"`; an ACME CA, `source = "acme"`).
//!
//! [`schedule`] decides when (pure); [`state`] keeps the record of each certificate and
//! its failures; [`selfsigned`] issues from the dev CA (ACME's nouns are in
//! [`crate::acme`]); [`store`] is where the pairs go; [`driver`] runs it all, as a loop
//! per certificate in `wssd run` and as one pass in `wssd issue`, and is the one place
//! that tells the reloader and runs deploy hooks. Provisioning only ever writes to the
//! store; the reloader picks the result up from there like any other change, so there is
//! one path into the resolver.

pub mod driver;
pub mod schedule;
pub mod selfsigned;
pub mod state;
pub mod store;
