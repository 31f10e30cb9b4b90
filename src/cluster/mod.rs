//! Fleet mode (`[cluster]`, SPEC "Fleet"): replicas that share each certificate through
//! an etcd cluster, so that one ACME order serves the whole fleet.
//!
//! Built so far: [`etcd`], the engine's client (keys, transactions, leases, watches), and
//! [`key`], the fleet's encryption key that seals the private keys stored in the engine.
//! The `[cluster]` section itself is not read yet: a config that has one is refused as
//! an unknown key, rather than quietly run as a single node.

pub mod etcd;
pub mod key;
