//! Config text → [`Config`]: serde reads the TOML into the `Raw*` structs of `raw.rs`
//! (unknown keys and malformed values fail there, with their key path and line), and
//! [`Config::from_toml`] fills in defaults and checks what spans keys (e.g. `client_auth`
//! without `client_ca_file`), naming the key and line of every mistake.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::RawConfig;
use super::*;

impl Config {
    /// Reads and parses a config file, then checks the files it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::parse_file(path)?;
        config.check_files()?;
        Ok(config)
    }

    /// Reads and parses a config file without looking at the files it names.
    pub fn parse_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses config text; `file` is only used to name the file in errors.
    pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let invalid = |line: Option<usize>, key: &str, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            line,
            key: key.to_string(),
            message,
        };
        let line_of =
            |offset: usize| Some(text[..offset.min(text.len())].matches('\n').count() + 1);

        let deserializer = toml::de::Deserializer::parse(text).map_err(|e| {
            invalid(
                e.span().and_then(|s| line_of(s.start)),
                "(syntax)",
                e.message().trim().to_string(),
            )
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            // serde_spanned shows up in the path as a private field name; hide it.
            let key = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            invalid(
                inner.span().and_then(|s| line_of(s.start)),
                &key,
                inner.message().trim().to_string(),
            )
        })?;

        let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from("./wssd-data"));
        let mut path_lines = Vec::new();
        let mut spanned_path = |key: String, p: Spanned<PathBuf>| {
            if let Some(line) = line_of(p.span().start) {
                path_lines.push((key, line));
            }
            p.into_inner()
        };
        let origin_patterns = |list: Vec<Spanned<String>>, key: &str| {
            list.into_iter()
                .map(|origin| {
                    let line = line_of(origin.span().start);
                    OriginPattern::parse(origin.get_ref()).map_err(|m| invalid(line, key, m))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut listener = ListenerConfig::default();
        if let Some(l) = raw.listener {
            listener.bind = l.bind.unwrap_or(listener.bind);
            listener.upstream = l.upstream;
            if let Some(origins) = l.allowed_origins {
                listener.allowed_origins = origin_patterns(origins, "listener.allowed_origins")?;
            }
            listener.max_connections = l
                .max_connections
                .map_or(listener.max_connections, |n| n.get());
            listener.handshake_timeout = l.handshake_timeout.unwrap_or(listener.handshake_timeout);
            listener.idle_timeout = l.idle_timeout.unwrap_or(listener.idle_timeout);
            listener.max_message_size = l.max_message_size.unwrap_or(listener.max_message_size);
            listener.max_body_size = l.max_body_size.unwrap_or(listener.max_body_size);
            listener.drain_timeout = l.drain_timeout.unwrap_or(listener.drain_timeout);
            listener.max_connections_per_ip = l.max_connections_per_ip.unwrap_or(0);
            listener.handshake_rate_per_ip = l.handshake_rate_per_ip.unwrap_or(0);
            listener.upstream_connect_timeout = l
                .upstream_connect_timeout
                .unwrap_or(listener.upstream_connect_timeout);
            listener.upstream_response_timeout = l
                .upstream_response_timeout
                .unwrap_or(listener.upstream_response_timeout);
            listener.hsts_max_age = l.hsts_max_age.unwrap_or(listener.hsts_max_age);
            listener.workers = l.workers.map_or(listener.workers, |n| n.get());
            listener.http2 = l.http2.unwrap_or(listener.http2);
            if let Some(table) = l.response_headers {
                let line = line_of(table.span().start);
                for (name, value) in table.into_inner() {
                    http_names::response_header(&name, &value).map_err(|m| {
                        invalid(line, &format!("listener.response_headers.{name}"), m)
                    })?;
                    listener.response_headers.push((name, value));
                }
            }
        }
        for (index, spanned) in raw.route.into_iter().enumerate() {
            let r = spanned.into_inner();
            let key = |name: &str| format!("route[{index}].{name}");
            let path_line = line_of(r.path.span().start);
            let path = http_names::route_path(r.path.get_ref())
                .map_err(|m| invalid(path_line, &key("path"), m))?;
            if let Some(other) = listener.routes.iter().position(|o| o.path == path) {
                return Err(invalid(
                    path_line,
                    &key("path"),
                    format!(
                        "route[{other}] has the same path {path:?}; each path prefix can have one route"
                    ),
                ));
            }
            let allowed_origins = match r.allowed_origins {
                Some(list) => Some(origin_patterns(list, &key("allowed_origins"))?),
                None => None,
            };
            listener.routes.push(RouteConfig {
                path,
                upstream: r.upstream,
                allowed_origins,
                max_message_size: r.max_message_size,
                max_body_size: r.max_body_size,
            });
        }
        if listener.max_connections == 0 {
            return Err(invalid(
                None,
                "listener.max_connections",
                "must be at least 1".into(),
            ));
        }

        let tls = match raw.tls {
            None => TlsConfig::default(),
            Some(spanned) => {
                let tls_line = line_of(spanned.span().start);
                let t = spanned.into_inner();
                if t.client_auth.is_some() && t.client_ca_file.is_none() {
                    return Err(invalid(
                        tls_line,
                        "tls.client_auth",
                        "needs tls.client_ca_file, the CA that client certificates must chain to"
                            .into(),
                    ));
                }
                let client_ca_file = t
                    .client_ca_file
                    .map(|p| spanned_path("tls.client_ca_file".into(), p));
                TlsConfig {
                    profile: t.profile.unwrap_or_default(),
                    client_auth: client_ca_file
                        .as_ref()
                        .map(|_| t.client_auth.unwrap_or(ClientAuth::Required)),
                    client_ca_file,
                }
            }
        };
        let acme = match raw.acme {
            None => None,
            Some(spanned) => {
                let acme_line = line_of(spanned.span().start);
                let a = spanned.into_inner();
                if a.eab_kid.is_some() != a.eab_hmac_key.is_some() {
                    return Err(invalid(
                        acme_line,
                        "acme.eab_kid",
                        "External Account Binding needs both eab_kid and eab_hmac_key".into(),
                    ));
                }
                let challenge = a.challenge.unwrap_or(Challenge::TlsAlpn01);
                if challenge == Challenge::Dns01 && a.dns01_hook.is_none() {
                    return Err(invalid(
                        acme_line,
                        "acme.dns01_hook",
                        "challenge = \"dns-01\" needs dns01_hook, the program that sets the TXT record".into(),
                    ));
                }
                Some(AcmeConfig {
                    directory: a.directory,
                    contact: a.contact,
                    challenge,
                    http01_bind: a
                        .http01_bind
                        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 80))),
                    dns01_hook: a.dns01_hook,
                    ca_file: a.ca_file.map(|p| spanned_path("acme.ca_file".into(), p)),
                    renew_before: a.renew_before,
                    retry_backoff: a.retry_backoff.unwrap_or(Duration::from_secs(30)),
                    eab_kid: a.eab_kid,
                    eab_hmac_key: a.eab_hmac_key,
                    profile: a.profile,
                })
            }
        };

        let mut certificates = Vec::new();
        let mut cert_lines = Vec::new();
        for (index, spanned) in raw.certificate.into_iter().enumerate() {
            let line = line_of(spanned.span().start);
            cert_lines.push(line);
            let c = spanned.into_inner();
            let key = |name: &str| format!("certificate[{index}].{name}");
            if c.domains.is_empty() {
                return Err(invalid(
                    line,
                    &key("domains"),
                    "at least one domain is required".into(),
                ));
            }
            if c.source == Source::Acme && acme.is_none() {
                return Err(invalid(
                    line,
                    &key("source"),
                    "source = \"acme\" needs an [acme] section with at least `directory`".into(),
                ));
            }
            // Two certificates named alike still get a directory each.
            let mut default_dir = data_dir.join("certs").join(c.domains[0].dir_name());
            if certificates.iter().any(|other: &CertificateConfig| {
                other.cert_file.parent() == Some(default_dir.as_path())
            }) {
                default_dir = data_dir
                    .join("certs")
                    .join(format!("{}-{index}", c.domains[0].dir_name()));
            }
            let (cert_file, key_file) = match (c.cert_file, c.key_file) {
                (Some(cert), Some(k)) => (
                    spanned_path(key("cert_file"), cert),
                    spanned_path(key("key_file"), k),
                ),
                (None, None) if c.source != Source::Files => {
                    (default_dir.join("cert.pem"), default_dir.join("key.pem"))
                }
                (cert, _) => {
                    let missing = if cert.is_none() {
                        "cert_file"
                    } else {
                        "key_file"
                    };
                    return Err(invalid(
                        line,
                        &key(missing),
                        format!(
                            "is required{}",
                            if c.source == Source::Files {
                                " for source = \"files\""
                            } else {
                                " when the other of cert_file/key_file is set"
                            }
                        ),
                    ));
                }
            };
            if c.source != Source::Files
                && (cert_file.parent() != key_file.parent()
                    || cert_file.file_name() == key_file.file_name())
            {
                return Err(invalid(
                    line,
                    &key("key_file"),
                    format!(
                        "for source = \"{}\", cert_file and key_file must be two files in one directory: wssd replaces them together",
                        c.source
                    ),
                ));
            }
            certificates.push(CertificateConfig {
                domains: c.domains,
                source: c.source,
                cert_file,
                key_file,
                deploy_hook: c.deploy_hook,
                key_type: c.key_type.unwrap_or_default(),
                profile: c.profile,
            });
        }
        // Names the configured challenge cannot prove are refused now, not at every order.
        if let Some(acme) = &acme {
            for (index, cert) in certificates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.source == Source::Acme)
            {
                let problem = cert.domains.iter().find_map(|d| match (d, acme.challenge) {
                    (Domain::Dns(name), Challenge::Http01 | Challenge::TlsAlpn01) if name.starts_with("*.") => {
                        Some(format!("the wildcard {name} can only be validated with challenge = \"dns-01\""))
                    }
                    (Domain::Ip(ip), Challenge::Dns01) => Some(format!(
                        "the IP address {ip} cannot be validated with dns-01; use \"http-01\" or \"tls-alpn-01\""
                    )),
                    _ => None,
                });
                if let Some(message) = problem {
                    return Err(invalid(
                        cert_lines.get(index).copied().flatten(),
                        &format!("certificate[{index}].domains"),
                        message,
                    ));
                }
            }
        }
        // A pair wssd writes switches its directory's `..data` link: no other pair may
        // live there.
        for (index, cert) in certificates.iter().enumerate() {
            if cert.source == Source::Files {
                continue;
            }
            let dir = cert.cert_file.parent();
            if let Some(other) = certificates.iter().enumerate().find(|(i, o)| {
                *i != index && (o.cert_file.parent() == dir || o.key_file.parent() == dir)
            }) {
                return Err(invalid(
                    cert_lines.get(index).copied().flatten(),
                    &format!("certificate[{index}].cert_file"),
                    format!(
                        "certificate[{}] uses the same directory; a certificate that wssd writes (source = \"{}\") needs a directory of its own",
                        other.0, cert.source
                    ),
                ));
            }
        }
        if certificates.is_empty() {
            return Err(invalid(
                None,
                "certificate",
                "at least one [[certificate]] is required (for local development, `source = \"selfsigned\"`)".into(),
            ));
        }

        Ok(Config {
            file: Some(file.to_path_buf()),
            data_dir,
            ca_dir: raw.ca_dir.unwrap_or_else(default_ca_dir),
            watch: raw.watch.unwrap_or(true),
            listener,
            tls,
            admin: raw.admin.map(|a| AdminConfig {
                bind: a.bind,
                readyz_checks_upstream: a.readyz_checks_upstream.unwrap_or(false),
            }),
            certificates,
            acme,
            path_lines,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("wssd.toml")).map_err(|e| e.to_string())
    }

    fn with_certs(certs: &str) -> String {
        format!("[listener]\nbind = \"127.0.0.1:8443\"\n{certs}")
    }

    #[test]
    fn files_needs_both_paths_and_the_others_default_them() {
        let e = parse(&with_certs(
            "[[certificate]]\ndomains = [\"a.test\"]\nsource = \"files\"\n",
        ))
        .unwrap_err();
        assert_eq!(
            e,
            "wssd.toml, line 3: certificate[0].cert_file: is required for source = \"files\""
        );
        let c = parse(&with_certs(
            "[[certificate]]\ndomains = [\"a.test\"]\nsource = \"selfsigned\"\n",
        ))
        .unwrap();
        let cert = &c.certificates[0];
        assert_eq!(cert.cert_file.file_name().unwrap(), "cert.pem");
        assert_eq!(cert.key_file.parent(), cert.cert_file.parent());
    }

    #[test]
    fn a_pair_wssd_writes_is_two_files_in_one_directory() {
        let pair = |source: &str, cert: &str, key: &str| {
            parse(&with_certs(&format!(
                "[[certificate]]\ndomains = [\"a.test\"]\nsource = \"{source}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n"
            )))
        };
        let apart = pair("selfsigned", "/d/a/cert.pem", "/d/b/key.pem").unwrap_err();
        assert!(
            apart.ends_with("certificate[0].key_file: for source = \"selfsigned\", cert_file and key_file must be two files in one directory: wssd replaces them together"),
            "{apart}"
        );
        let same = pair("selfsigned", "/d/a/pem", "/d/a/pem").unwrap_err();
        assert!(
            same.contains("must be two files in one directory"),
            "{same}"
        );
        assert!(pair("selfsigned", "/d/a/cert.pem", "/d/a/key.pem").is_ok());
        // Files wssd only reads may live anywhere.
        assert!(pair("files", "/d/a/cert.pem", "/d/b/key.pem").is_ok());
    }

    #[test]
    fn no_other_pair_shares_the_directory_of_a_pair_wssd_writes() {
        // The files pair keeps only its key in the selfsigned pair's directory.
        let e = parse(&with_certs(
            "[[certificate]]\ndomains = [\"a.test\"]\nsource = \"selfsigned\"\ncert_file = \"/d/a/cert.pem\"\nkey_file = \"/d/a/key.pem\"\n\
             [[certificate]]\ndomains = [\"b.test\"]\nsource = \"files\"\ncert_file = \"/d/b/cert.pem\"\nkey_file = \"/d/a/b-key.pem\"\n",
        ))
        .unwrap_err();
        assert!(
            e.contains("certificate[0].cert_file: certificate[1] uses the same directory"),
            "{e}"
        );
    }

    #[test]
    fn durations_go_up_to_ten_years() {
        let drain = |value: &str| {
            parse(&format!(
                "[listener]\nbind = \"127.0.0.1:8443\"\ndrain_timeout = \"{value}\"\n[[certificate]]\ndomains = [\"a.test\"]\nsource = \"selfsigned\"\n"
            ))
        };
        assert_eq!(
            drain("3660d").unwrap().listener.drain_timeout,
            std::time::Duration::from_secs(3660 * 86_400)
        );
        assert!(drain("3000d").is_ok());
        let e = drain("3661d").unwrap_err();
        assert!(e.contains("\"3661d\" is longer than ten years"), "{e}");
    }
}
