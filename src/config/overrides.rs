//! `wssd run`'s sidecar flags (`--listen`, `--upstream`, `--domain`, `--cert-file`,
//! `--key-file`), applied on top of whatever config `run` loaded: a file, `./wssd.toml`, or
//! the dev mode. With no file at all they make a whole sidecar in one command, as
//! `caddy reverse-proxy --from --to` and ghostunnel's flags do.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use super::{BindOrigin, CertificateConfig, Config, Domain, KeyType, Source, Upstream};

/// `--listen`: a socket address, or `localhost:PORT` for both loopbacks (127.0.0.1 and
/// ::1 on one port, as the dev certificate covers both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub both_loopbacks: bool,
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        if let Some(port) = text.strip_prefix("localhost:") {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{text:?}: the port must be a number from 0 to 65535"))?;
            return Ok(Listen {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                both_loopbacks: true,
            });
        }
        text.parse::<SocketAddr>()
            .map(|addr| Listen {
                addr,
                both_loopbacks: false,
            })
            .map_err(|_| {
                format!(
                    "{text:?} is not an address to listen on: write IP:PORT (0.0.0.0:443, [::]:443, 127.0.0.1:8443) or localhost:PORT for both loopbacks"
                )
            })
    }
}

/// The flags, already parsed. Empty changes nothing.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<Listen>,
    pub upstream: Option<Upstream>,
    /// Names for a dev-CA certificate that replaces the config's certificates.
    pub domains: Vec<Domain>,
    /// A pair something else keeps current, replacing the config's certificates.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Config {
    /// The config with `flags` applied: `--listen` sets `[listener] bind`, `--upstream`
    /// `[listener] upstream`, and `--cert-file`/`--key-file` or `--domain` replace the
    /// certificates with one pair read from those files or issued by the dev CA.
    pub fn with_overrides(mut self, flags: Overrides) -> Config {
        if let Some(listen) = flags.listen {
            self.listener.bind = listen.addr;
            self.listener.bind_origin = BindOrigin::Flag {
                localhost: listen.both_loopbacks,
            };
            self.listener.also_bind = if listen.both_loopbacks {
                vec![SocketAddr::from((Ipv6Addr::LOCALHOST, listen.addr.port()))]
            } else {
                Vec::new()
            };
        }
        if let Some(upstream) = flags.upstream {
            self.listener.upstream = Some(upstream);
        }
        let files = flags.cert_file.zip(flags.key_file);
        if files.is_none() && flags.domains.is_empty() {
            return self;
        }
        let template = self.certificates.first().cloned();
        let (source, cert_file, key_file) = match files {
            Some((cert, key)) => (Source::Files, cert, key),
            None => {
                let first = flags
                    .domains
                    .first()
                    .map_or("localhost".into(), Domain::dir_name);
                let dir = self.data_dir.join("certs").join(first);
                (
                    Source::Selfsigned,
                    dir.join("cert.pem"),
                    dir.join("key.pem"),
                )
            }
        };
        self.certificates = vec![CertificateConfig {
            domains: flags.domains,
            source,
            cert_file,
            key_file,
            deploy_hook: template.and_then(|t| t.deploy_hook),
            key_type: KeyType::EcdsaP256,
            profile: None,
        }];
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_an_address_or_localhost_for_both_loopbacks() {
        let both: Listen = "localhost:8443".parse().unwrap();
        assert_eq!(both.addr, SocketAddr::from(([127, 0, 0, 1], 8443)));
        assert!(both.both_loopbacks);
        let v6: Listen = "[::]:443".parse().unwrap();
        assert!(!v6.both_loopbacks);
        assert_eq!(v6.addr.port(), 443);
        for bad in ["8443", "localhost", "localhost:x", "example.com:443", ""] {
            let e = bad.parse::<Listen>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn flags_replace_bind_upstream_and_certificates() {
        let dev = Config::dev_mode();
        let config = dev.clone().with_overrides(Overrides::default());
        assert_eq!(config.listener.bind, dev.listener.bind);
        assert_eq!(config.certificates[0].domains, dev.certificates[0].domains);

        let config = dev.clone().with_overrides(Overrides {
            listen: Some("0.0.0.0:9443".parse().unwrap()),
            upstream: Some("http://127.0.0.1:3000".parse().unwrap()),
            domains: vec![Domain::parse("app.test").unwrap()],
            ..Overrides::default()
        });
        assert_eq!(config.listener.bind.to_string(), "0.0.0.0:9443");
        assert!(config.listener.also_bind.is_empty());
        assert_eq!(
            config.listener.upstream.map(|u| u.to_string()).as_deref(),
            Some("http://127.0.0.1:3000")
        );
        assert_eq!(config.certificates.len(), 1);
        assert_eq!(config.certificates[0].source, Source::Selfsigned);
        assert!(
            config.certificates[0]
                .cert_file
                .ends_with("certs/app.test/cert.pem")
        );

        let config = dev.with_overrides(Overrides {
            cert_file: Some("/tls/fullchain.pem".into()),
            key_file: Some("/tls/key.pem".into()),
            ..Overrides::default()
        });
        assert_eq!(config.certificates[0].source, Source::Files);
        assert_eq!(
            config.certificates[0].key_file,
            PathBuf::from("/tls/key.pem")
        );
    }
}
