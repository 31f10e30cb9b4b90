//! Config text → [`Config`]: serde reads the TOML into the `Raw*` structs of `raw.rs`
//! (unknown keys and malformed values fail there, with their key path and line), and
//! [`Config::from_toml`] fills in defaults and checks what spans keys (e.g. `client_auth`
//! without `client_ca_file`), naming the key and line of every mistake.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::{RawAcme, RawCertificate, RawCluster, RawConfig, RawListener, RawRoute, RawTls};
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
        let mut reader = Reader {
            text,
            file,
            path_lines: Vec::new(),
        };
        let raw = reader.deserialize()?;
        let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from("./wssd-data"));
        let mut listener = reader.listener(raw.listener)?;
        listener.routes = reader.routes(raw.route)?;
        let tls = reader.tls(raw.tls)?;
        let acme = reader.acme(raw.acme)?;
        let certificates = reader.certificates(raw.certificate, &data_dir, acme.as_ref())?;
        let cluster = reader.cluster(raw.cluster)?;
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
                drain_endpoint: a.drain_endpoint.unwrap_or(false),
            }),
            certificates,
            acme,
            cluster,
            path_lines: reader.path_lines,
        })
    }
}

/// One config text being read: what names the key and line of a mistake, and the
/// lines of the paths it names (for the errors of [`Config::check_files`]).
struct Reader<'a> {
    text: &'a str,
    file: &'a Path,
    path_lines: Vec<(String, usize)>,
}

impl Reader<'_> {
    fn invalid(&self, line: Option<usize>, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            key: key.to_string(),
            message,
        }
    }

    /// The line (from 1) of a byte offset into the text.
    fn line_of(&self, offset: usize) -> Option<usize> {
        let text = self.text;
        Some(text[..offset.min(text.len())].matches('\n').count() + 1)
    }

    /// The TOML, into the `Raw*` structs: unknown keys and malformed values fail here.
    fn deserialize(&self) -> Result<RawConfig, ConfigError> {
        let deserializer = toml::de::Deserializer::parse(self.text).map_err(|e| {
            self.invalid(
                e.span().and_then(|s| self.line_of(s.start)),
                "(syntax)",
                e.message().trim().to_string(),
            )
        })?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            // serde_spanned shows up in the path as a private field name; hide it.
            let key = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            self.invalid(
                inner.span().and_then(|s| self.line_of(s.start)),
                &key,
                inner.message().trim().to_string(),
            )
        })
    }

    /// A path the config names, its line noted under `key`.
    fn path(&mut self, key: String, p: Spanned<PathBuf>) -> PathBuf {
        if let Some(line) = self.line_of(p.span().start) {
            self.path_lines.push((key, line));
        }
        p.into_inner()
    }

    fn origin_patterns(
        &self,
        list: Vec<Spanned<String>>,
        key: &str,
    ) -> Result<Vec<OriginPattern>, ConfigError> {
        list.into_iter()
            .map(|origin| {
                let line = self.line_of(origin.span().start);
                OriginPattern::parse(origin.get_ref()).map_err(|m| self.invalid(line, key, m))
            })
            .collect()
    }

    /// `[listener]`, its defaults filled in (the routes come from [`Reader::routes`]).
    fn listener(&self, raw: Option<RawListener>) -> Result<ListenerConfig, ConfigError> {
        let mut listener = ListenerConfig::default();
        let Some(l) = raw else {
            return Ok(listener);
        };
        listener.bind = l.bind.unwrap_or(listener.bind);
        listener.upstream = l.upstream;
        if let Some(origins) = l.allowed_origins {
            listener.allowed_origins = self.origin_patterns(origins, "listener.allowed_origins")?;
        }
        // Zero is refused by its type (NonZeroUsize), with the key and line.
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
            let line = self.line_of(table.span().start);
            for (name, value) in table.into_inner() {
                http_names::response_header(&name, &value).map_err(|m| {
                    self.invalid(line, &format!("listener.response_headers.{name}"), m)
                })?;
                listener.response_headers.push((name, value));
            }
        }
        Ok(listener)
    }

    /// `[[route]]`: each path prefix once.
    fn routes(&self, raw: Vec<Spanned<RawRoute>>) -> Result<Vec<RouteConfig>, ConfigError> {
        let mut routes: Vec<RouteConfig> = Vec::new();
        for (index, spanned) in raw.into_iter().enumerate() {
            let r = spanned.into_inner();
            let key = |name: &str| format!("route[{index}].{name}");
            let path_line = self.line_of(r.path.span().start);
            let path = http_names::route_path(r.path.get_ref())
                .map_err(|m| self.invalid(path_line, &key("path"), m))?;
            if let Some(other) = routes.iter().position(|o| o.path == path) {
                return Err(self.invalid(
                    path_line,
                    &key("path"),
                    format!(
                        "route[{other}] has the same path {path:?}; each path prefix can have one route"
                    ),
                ));
            }
            let allowed_origins = match r.allowed_origins {
                Some(list) => Some(self.origin_patterns(list, &key("allowed_origins"))?),
                None => None,
            };
            routes.push(RouteConfig {
                path,
                upstream: r.upstream,
                allowed_origins,
                max_message_size: r.max_message_size,
                max_body_size: r.max_body_size,
            });
        }
        Ok(routes)
    }

    /// `[tls]`: `client_auth` needs `client_ca_file`.
    fn tls(&mut self, raw: Option<Spanned<RawTls>>) -> Result<TlsConfig, ConfigError> {
        let Some(spanned) = raw else {
            return Ok(TlsConfig::default());
        };
        let tls_line = self.line_of(spanned.span().start);
        let t = spanned.into_inner();
        if t.client_auth.is_some() && t.client_ca_file.is_none() {
            return Err(self.invalid(
                tls_line,
                "tls.client_auth",
                "needs tls.client_ca_file, the CA that client certificates must chain to".into(),
            ));
        }
        let client_ca_file = t
            .client_ca_file
            .map(|p| self.path("tls.client_ca_file".into(), p));
        Ok(TlsConfig {
            profile: t.profile.unwrap_or_default(),
            client_auth: client_ca_file
                .as_ref()
                .map(|_| t.client_auth.unwrap_or(ClientAuth::Required)),
            client_ca_file,
        })
    }

    /// `[acme]`: External Account Binding needs both its keys; dns-01 needs its hook.
    fn acme(&mut self, raw: Option<Spanned<RawAcme>>) -> Result<Option<AcmeConfig>, ConfigError> {
        let Some(spanned) = raw else {
            return Ok(None);
        };
        let acme_line = self.line_of(spanned.span().start);
        let a = spanned.into_inner();
        if a.eab_kid.is_some() != a.eab_hmac_key.is_some() {
            return Err(self.invalid(
                acme_line,
                "acme.eab_kid",
                "External Account Binding needs both eab_kid and eab_hmac_key".into(),
            ));
        }
        let challenge = a.challenge.unwrap_or(Challenge::TlsAlpn01);
        if challenge == Challenge::Dns01 && a.dns01_hook.is_none() {
            return Err(self.invalid(
                acme_line,
                "acme.dns01_hook",
                "challenge = \"dns-01\" needs dns01_hook, the program that sets the TXT record"
                    .into(),
            ));
        }
        Ok(Some(AcmeConfig {
            directory: a.directory,
            contact: a.contact,
            challenge,
            http01_bind: a
                .http01_bind
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 80))),
            dns01_hook: a.dns01_hook,
            ca_file: a.ca_file.map(|p| self.path("acme.ca_file".into(), p)),
            renew_before: a.renew_before,
            retry_backoff: a.retry_backoff.unwrap_or(Duration::from_secs(30)),
            eab_kid: a.eab_kid,
            eab_hmac_key: a.eab_hmac_key,
            profile: a.profile,
        }))
    }

    /// `[[certificate]]`: at least one; each with its files (a directory of its own under
    /// `data_dir` for the ones wssd writes), and names the configured challenge can prove.
    fn certificates(
        &mut self,
        raw: Vec<Spanned<RawCertificate>>,
        data_dir: &Path,
        acme: Option<&AcmeConfig>,
    ) -> Result<Vec<CertificateConfig>, ConfigError> {
        let mut certificates = Vec::new();
        let mut lines = Vec::new();
        for (index, spanned) in raw.into_iter().enumerate() {
            let line = self.line_of(spanned.span().start);
            lines.push(line);
            let (raw, has_acme) = (spanned.into_inner(), acme.is_some());
            let cert = self.certificate(index, line, raw, data_dir, &certificates, has_acme)?;
            certificates.push(cert);
        }
        if let Some(acme) = acme {
            self.check_challenges(&certificates, &lines, acme)?;
        }
        self.check_directories(&certificates, &lines)?;
        if certificates.is_empty() {
            return Err(self.invalid(
                None,
                "certificate",
                "at least one [[certificate]] is required (for local development, `source = \"selfsigned\"`)".into(),
            ));
        }
        Ok(certificates)
    }

    /// One `[[certificate]]` (`certificate[index]`, at `line`); `before` are the ones
    /// above it, `has_acme` whether there is an `[acme]` section.
    fn certificate(
        &mut self,
        index: usize,
        line: Option<usize>,
        c: RawCertificate,
        data_dir: &Path,
        before: &[CertificateConfig],
        has_acme: bool,
    ) -> Result<CertificateConfig, ConfigError> {
        let key = |name: &str| format!("certificate[{index}].{name}");
        let Some(first) = c.domains.first() else {
            return Err(self.invalid(
                line,
                &key("domains"),
                "at least one domain is required".into(),
            ));
        };
        if c.source == Source::Acme && !has_acme {
            return Err(self.invalid(
                line,
                &key("source"),
                "source = \"acme\" needs an [acme] section with at least `directory`".into(),
            ));
        }
        // Two certificates named alike still get a directory each.
        let mut default_dir = data_dir.join("certs").join(first.dir_name());
        if before
            .iter()
            .any(|other| other.cert_file.parent() == Some(default_dir.as_path()))
        {
            default_dir = data_dir
                .join("certs")
                .join(format!("{}-{index}", first.dir_name()));
        }
        let (cert_file, key_file) = match (c.cert_file, c.key_file) {
            (Some(cert), Some(k)) => (
                self.path(key("cert_file"), cert),
                self.path(key("key_file"), k),
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
                return Err(self.invalid(
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
            return Err(self.invalid(
                line,
                &key("key_file"),
                format!(
                    "for source = \"{}\", cert_file and key_file must be two files in one directory: wssd replaces them together",
                    c.source
                ),
            ));
        }
        Ok(CertificateConfig {
            domains: c.domains,
            source: c.source,
            cert_file,
            key_file,
            deploy_hook: c.deploy_hook,
            key_type: c.key_type.unwrap_or_default(),
            profile: c.profile,
        })
    }

    /// `[cluster]`: endpoints that are URLs, a name fit for a key prefix, a lease that
    /// etcd can keep, a client certificate with its key.
    fn cluster(
        &mut self,
        raw: Option<Spanned<RawCluster>>,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let Some(spanned) = raw else {
            return Ok(None);
        };
        let line = self.line_of(spanned.span().start);
        let c = spanned.into_inner();
        if c.endpoints.is_empty() {
            return Err(self.invalid(
                line,
                "cluster.endpoints",
                "needs at least one engine URL, like \"http://127.0.0.1:2379\"".into(),
            ));
        }
        let mut endpoints = Vec::new();
        for (index, endpoint) in c.endpoints.into_iter().enumerate() {
            let at = self.line_of(endpoint.span().start);
            let url = endpoint.into_inner();
            names::engine_url(&url)
                .map_err(|m| self.invalid(at, &format!("cluster.endpoints[{index}]"), m))?;
            endpoints.push(url);
        }
        let name_line = self.line_of(c.name.span().start);
        let name = c.name.into_inner();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(self.invalid(
                name_line,
                "cluster.name",
                format!("{name:?}: 1 to 64 letters, digits, '-', '_' or '.' (it prefixes the fleet's keys)"),
            ));
        }
        let lease_ttl = c.lease_ttl.unwrap_or(Duration::from_secs(10));
        if !(Duration::from_secs(2)..=Duration::from_secs(300)).contains(&lease_ttl) {
            return Err(self.invalid(
                line,
                "cluster.lease_ttl",
                "must be between 2s (etcd's shortest lease) and 5m".into(),
            ));
        }
        if c.cert_file.is_some() != c.key_file.is_some() {
            return Err(self.invalid(
                line,
                "cluster.cert_file",
                "a client certificate for the engine needs both cert_file and key_file".into(),
            ));
        }
        Ok(Some(ClusterConfig {
            backend: c.backend,
            endpoints,
            name,
            lease_ttl,
            encryption_key_file: self
                .path("cluster.encryption_key_file".into(), c.encryption_key_file),
            ca_file: c.ca_file.map(|p| self.path("cluster.ca_file".into(), p)),
            cert_file: c
                .cert_file
                .map(|p| self.path("cluster.cert_file".into(), p)),
            key_file: c.key_file.map(|p| self.path("cluster.key_file".into(), p)),
        }))
    }

    /// Names the configured challenge cannot prove are refused now, not at every order.
    fn check_challenges(
        &self,
        certificates: &[CertificateConfig],
        lines: &[Option<usize>],
        acme: &AcmeConfig,
    ) -> Result<(), ConfigError> {
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
                return Err(self.invalid(
                    lines.get(index).copied().flatten(),
                    &format!("certificate[{index}].domains"),
                    message,
                ));
            }
        }
        Ok(())
    }

    /// A pair wssd writes switches its directory's `..data` link: no other pair may live
    /// there.
    fn check_directories(
        &self,
        certificates: &[CertificateConfig],
        lines: &[Option<usize>],
    ) -> Result<(), ConfigError> {
        for (index, cert) in certificates.iter().enumerate() {
            if cert.source == Source::Files {
                continue;
            }
            let dir = cert.cert_file.parent();
            if let Some(other) = certificates.iter().enumerate().find(|(i, o)| {
                *i != index && (o.cert_file.parent() == dir || o.key_file.parent() == dir)
            }) {
                return Err(self.invalid(
                    lines.get(index).copied().flatten(),
                    &format!("certificate[{index}].cert_file"),
                    format!(
                        "certificate[{}] uses the same directory; a certificate that wssd writes (source = \"{}\") needs a directory of its own",
                        other.0, cert.source
                    ),
                ));
            }
        }
        Ok(())
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
