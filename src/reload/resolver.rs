//! The certificate resolver: SNI → certificate, read on every TLS handshake.
//!
//! rustls calls [`ResolvesServerCert::resolve`] synchronously inside each handshake, so it
//! must never wait. The lookup table lives behind an [`ArcSwap`]: a handshake loads the
//! current table (no lock, no allocation), looks the name up and clones one `Arc`.
//! Writers (reloads, a few per day) build a whole new table under a writers-only mutex
//! and publish it with one atomic store. Established connections hold their own
//! `Arc<CertifiedKey>` from their handshake and never look here again, which is why a
//! swap cannot disturb them.
//!
//! Certificates live in slots, one per `[[certificate]]` in config order. SNI picks the
//! slot whose domains name the server (exact, then a `*.` wildcard one label up); a
//! client without SNI, or with a name no slot lists, gets the first loaded slot.
//! tls-alpn-01 challenge certificates (RFC 8737) sit in a separate map that is consulted
//! only when the client offers ALPN `acme-tls/1`, so they never reach ordinary clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::Domain;
use crate::tls::ALPN_ACME_TLS;

/// A served certificate and the slot it is in.
type Entry = (usize, Arc<CertifiedKey>);

#[derive(Default)]
struct Table {
    exact: HashMap<Box<str>, Entry>,
    /// Keyed by the parent of the wildcard: `*.example.com` → `example.com`.
    wildcard: HashMap<Box<str>, Entry>,
    default: Option<Entry>,
    challenges: HashMap<Box<str>, Arc<CertifiedKey>>,
}

#[derive(Default)]
struct Slots {
    domains: Vec<Vec<Domain>>,
    keys: Vec<Option<Arc<CertifiedKey>>>,
    challenges: HashMap<Box<str>, Arc<CertifiedKey>>,
}

pub struct Resolver {
    table: ArcSwap<Table>,
    slots: Mutex<Slots>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// One empty slot per certificate, each with the domains it serves.
    pub fn new(domains: Vec<Vec<Domain>>) -> Resolver {
        let keys = vec![None; domains.len()];
        Resolver {
            table: ArcSwap::from_pointee(Table::default()),
            slots: Mutex::new(Slots {
                domains,
                keys,
                challenges: HashMap::new(),
            }),
        }
    }

    /// Puts `key` in slot `index`; new handshakes see it at once.
    pub fn set(&self, index: usize, key: Arc<CertifiedKey>) {
        self.update(|slots| {
            if let Some(slot) = slots.keys.get_mut(index) {
                *slot = Some(key);
            }
        });
    }

    /// The certificate slot `index` serves now.
    pub fn get(&self, index: usize) -> Option<Arc<CertifiedKey>> {
        self.lock().keys.get(index).cloned().flatten()
    }

    /// Serves `key` to tls-alpn-01 validation handshakes for `name`.
    pub fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        let name: Box<str> = name.to_ascii_lowercase().into();
        self.update(|slots| {
            slots.challenges.insert(name, key);
        });
    }

    /// Stops serving `key` for `name`; a newer challenge for the same name (another
    /// order for an overlapping certificate) stays.
    pub fn clear_challenge(&self, name: &str, key: &Arc<CertifiedKey>) {
        let name = name.to_ascii_lowercase();
        self.update(|slots| {
            if slots
                .challenges
                .get(name.as_str())
                .is_some_and(|k| Arc::ptr_eq(k, key))
            {
                slots.challenges.remove(name.as_str());
            }
        });
    }

    /// True once every slot holds a certificate.
    pub fn all_loaded(&self) -> bool {
        self.lock().keys.iter().all(Option::is_some)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A writer that panicked left the slots whole (each update is one assignment).
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Slots)) {
        let mut slots = self.lock();
        change(&mut slots);
        let mut table = Table {
            challenges: slots.challenges.clone(),
            ..Table::default()
        };
        for (index, (domains, key)) in slots.domains.iter().zip(&slots.keys).enumerate() {
            let Some(key) = key else { continue };
            let entry = (index, key.clone());
            table.default.get_or_insert_with(|| entry.clone());
            for domain in domains {
                let Domain::Dns(name) = domain else { continue };
                let (map, name) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut table.wildcard, parent),
                    None => (&mut table.exact, name.as_str()),
                };
                // The first certificate to list a name keeps it.
                map.entry(name.into()).or_insert_with(|| entry.clone());
            }
        }
        self.table.store(Arc::new(table));
    }

    /// The lookup itself, separate from rustls' `ClientHello` so it can be tested.
    fn lookup(&self, server_name: Option<&str>, acme_tls: bool) -> Option<Arc<CertifiedKey>> {
        if acme_tls {
            let table = self.table.load();
            return server_name.and_then(|name| table.challenges.get(name).cloned());
        }
        self.find(server_name, |(_, key)| key.clone())
    }

    /// Which slot serves `server_name` (for per-certificate connection counts).
    pub fn slot_for(&self, server_name: Option<&str>) -> Option<usize> {
        self.find(server_name, |(index, _)| *index)
    }

    fn find<T>(&self, server_name: Option<&str>, pick: impl Fn(&Entry) -> T) -> Option<T> {
        let table = self.table.load();
        if let Some(name) = server_name {
            if let Some(entry) = table.exact.get(name) {
                return Some(pick(entry));
            }
            if let Some(entry) = name
                .split_once('.')
                .and_then(|(_, parent)| table.wildcard.get(parent))
            {
                return Some(pick(entry));
            }
        }
        table.default.as_ref().map(pick)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A validation offers acme-tls/1 and nothing else (RFC 8737 §3); a client that
        // offers it among others is an ordinary client.
        let acme_tls = hello.alpn().is_some_and(|mut protocols| {
            protocols.next() == Some(ALPN_ACME_TLS) && protocols.next().is_none()
        });
        // rustls hands over SNI already lowercased.
        self.lookup(hello.server_name(), acme_tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::sign::SigningKey;

    fn key(tag: u8) -> Arc<CertifiedKey> {
        // The resolver never looks inside a key; a recognisable fake chain is enough.
        let signer = crate::tls::provider()
            .key_provider
            .load_private_key(
                rcgen::KeyPair::generate()
                    .unwrap()
                    .serialize_der()
                    .try_into()
                    .unwrap(),
            )
            .unwrap();
        let _: &dyn SigningKey = signer.as_ref();
        Arc::new(CertifiedKey::new(vec![vec![tag].into()], signer))
    }

    fn tag(k: Option<Arc<CertifiedKey>>) -> Option<u8> {
        k.map(|k| k.cert[0].as_ref()[0])
    }

    fn dns(n: &str) -> Domain {
        Domain::parse(n).unwrap()
    }

    #[test]
    fn sni_picks_the_slot_and_the_first_is_default() {
        let r = Resolver::new(vec![
            vec![dns("a.example"), dns("www.a.example")],
            vec![dns("b.example"), dns("*.b.example")],
        ]);
        assert_eq!(tag(r.lookup(Some("a.example"), false)), None);
        r.set(1, key(2));
        assert_eq!(
            tag(r.lookup(Some("nope.example"), false)),
            Some(2),
            "only loaded slot is default"
        );
        r.set(0, key(1));
        assert_eq!(tag(r.lookup(Some("www.a.example"), false)), Some(1));
        assert_eq!(tag(r.lookup(Some("b.example"), false)), Some(2));
        assert_eq!(tag(r.lookup(Some("x.b.example"), false)), Some(2));
        assert_eq!(
            tag(r.lookup(Some("y.x.b.example"), false)),
            Some(1),
            "wildcard covers one label"
        );
        assert_eq!(tag(r.lookup(None, false)), Some(1));
        assert!(r.all_loaded());
    }

    #[test]
    fn challenge_certificates_only_for_acme_tls_alpn() {
        let r = Resolver::new(vec![vec![dns("a.example")]]);
        r.set(0, key(1));
        let first = key(8);
        r.set_challenge("A.example", first.clone());
        let second = key(9);
        r.set_challenge("a.example", second.clone());
        assert_eq!(tag(r.lookup(Some("a.example"), false)), Some(1));
        assert_eq!(tag(r.lookup(Some("a.example"), true)), Some(9));
        assert_eq!(
            tag(r.lookup(Some("other.example"), true)),
            None,
            "no fallback for acme-tls/1"
        );
        r.clear_challenge("a.example", &first);
        assert_eq!(
            tag(r.lookup(Some("a.example"), true)),
            Some(9),
            "a newer challenge stays"
        );
        r.clear_challenge("a.example", &second);
        assert_eq!(tag(r.lookup(Some("a.example"), true)), None);
    }

    #[test]
    fn swap_replaces_what_new_lookups_see() {
        let r = Resolver::new(vec![vec![dns("a.example")]]);
        r.set(0, key(1));
        let held = r.lookup(Some("a.example"), false);
        r.set(0, key(2));
        assert_eq!(tag(held), Some(1), "a handshake's key is its own");
        assert_eq!(tag(r.lookup(Some("a.example"), false)), Some(2));
    }
}
