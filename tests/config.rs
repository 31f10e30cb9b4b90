//! Configuration errors name the key, the line and the file, and exit 2; the example
//! configs in config/ load.

mod common;

use std::path::Path;

use common::*;

fn check(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("wssd.toml");
    std::fs::write(&path, config).unwrap();
    let out = wssd_cmd(dir, &["check", "--config", path.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[listener]
bind = "127.0.0.1:0"

[[certificate]]
domains = ["localhost"]
source = "selfsigned"
"#;

#[test]
fn unknown_key_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = check(dir.path(), &GOOD.replace("bind =", "bnid = \"x\"\nbind ="));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("unknown field `bnid`"), "{err}");
    assert!(err.contains("listener"), "{err}");
    assert!(err.contains("wssd.toml"), "{err}");
}

#[test]
fn bad_duration_is_named_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = check(
        dir.path(),
        &GOOD.replace(
            "bind = \"127.0.0.1:0\"",
            "bind = \"127.0.0.1:0\"\nhandshake_timeout = \"10 parsecs\"",
        ),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listener.handshake_timeout"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("10 parsecs"), "{err}");
}

#[test]
fn bad_size_is_named_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = check(
        dir.path(),
        &GOOD.replace(
            "bind = \"127.0.0.1:0\"",
            "bind = \"127.0.0.1:0\"\nmax_message_size = \"lots\"",
        ),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("listener.max_message_size") && err.contains("line 4"),
        "{err}"
    );
}

#[test]
fn zero_timeouts_and_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, message) in [
        ("handshake_timeout", "\"0s\"", "longer than zero"),
        ("idle_timeout", "\"0s\"", "longer than zero"),
        ("max_message_size", "\"0\"", "larger than zero"),
        ("drain_timeout", "\"500000 years\"", "longer than ten years"),
        ("max_connections", "0", "nonzero"),
        ("workers", "0", "nonzero"),
    ] {
        let config = GOOD.replace(
            "bind = \"127.0.0.1:0\"",
            &format!("bind = \"127.0.0.1:0\"\n{key} = {value}"),
        );
        let (code, err) = check(dir.path(), &config);
        assert_eq!(code, Some(2), "{key}: {err}");
        assert!(
            err.contains(&format!("listener.{key}"))
                && err.contains("line 4")
                && err.contains(message),
            "{key}: {err}"
        );
    }
}

#[test]
fn missing_cert_file_is_named_with_key_line_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
[[certificate]]
domains = ["localhost"]
source = "files"
cert_file = "/nonexistent/wssd/cert.pem"
key_file = "/nonexistent/wssd/key.pem"
"#;
    let (code, err) = check(dir.path(), config);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("certificate[0].cert_file"), "{err}");
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("/nonexistent/wssd/cert.pem"), "{err}");
    // `run` refuses the same config the same way.
    let out = wssd_cmd(
        dir.path(),
        &[
            "run",
            "--config",
            dir.path().join("wssd.toml").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate[0].cert_file"));
}

#[test]
fn bad_domain_and_bad_upstream_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = check(
        dir.path(),
        &GOOD.replace("[\"localhost\"]", "[\"bad name!\"]"),
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("certificate[0].domains[0]")
            && err.contains("bad name!")
            && err.contains("line 6"),
        "{err}"
    );
    let (code, err) = check(
        dir.path(),
        &GOOD.replace("bind = \"127.0.0.1:0\"", "upstream = \"http://x:1/path\""),
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("listener.upstream")
            && err.contains("must not have a path")
            && err.contains("line 3"),
        "{err}"
    );
    let (code, err) = check(
        dir.path(),
        &GOOD.replace("bind = \"127.0.0.1:0\"", "upstream = \"ftp://x:1\""),
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("listener.upstream") && err.contains("ws:// or http://"),
        "{err}"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = check(dir.path(), "[listener\nbind = 1\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn invalid_files_pair_fails_check() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let a = ca.leaf(&["localhost"]);
    let b = ca.leaf(&["localhost"]);
    write_pair(
        dir.path(),
        &Pair {
            key_pem: b.key_pem,
            ..a
        },
    );
    let (code, err) = check(dir.path(), &files_config(dir.path(), "", ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn example_configs_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dev = root.join("config/dev.toml");
    let text = std::fs::read_to_string(&dev).unwrap();
    wssd::config::Config::from_toml(&text, &dev).unwrap();
    // dev.toml needs no files: `wssd check` passes as is.
    let dir = tempfile::tempdir().unwrap();
    let out = wssd_cmd(dir.path(), &["check", "--config", dev.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let sidecar = root.join("config/sidecar-files.toml");
    let text = std::fs::read_to_string(&sidecar).unwrap();
    let config = wssd::config::Config::from_toml(&text, &sidecar).unwrap();
    assert!(config.listener.upstream.is_some());
    assert_eq!(config.certificates[0].source, wssd::config::Source::Files);
    // With its files present, `wssd check` passes on the same text.
    let ca = TestCa::new();
    let pair = ca.leaf(
        &config.certificates[0]
            .domains
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    std::fs::write(dir.path().join("tls.crt"), &pair.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &pair.key_pem).unwrap();
    let local = text
        .replace(
            &config.certificates[0].cert_file.display().to_string(),
            dir.path().join("tls.crt").to_str().unwrap(),
        )
        .replace(
            &config.certificates[0].key_file.display().to_string(),
            dir.path().join("tls.key").to_str().unwrap(),
        );
    let (code, err) = check(dir.path(), &local);
    assert_eq!(code, Some(0), "{err}");
}

/// Every TOML example in the README and in docs/ (the config reference and the guides)
/// parses with the real parser (fragments are completed with a minimal certificate), so
/// the docs cannot drift from the code: a renamed or removed key fails here.
#[test]
fn every_toml_example_in_the_docs_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    docs.insert(0, "README.md".into());
    assert!(docs.contains(&"docs/config.md".to_string()));
    for doc in &docs {
        let doc = doc.as_str();
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (i, block) in text.split("```toml\n").skip(1).enumerate() {
            let block = block.split("```").next().unwrap();
            let mut toml = block.to_string();
            if toml.contains("source = \"acme\"") && !toml.contains("[acme]") {
                toml.push_str("\n[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\n");
            }
            if !toml.contains("[[certificate]]") {
                toml.push_str(
                    "\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"selfsigned\"\n",
                );
            }
            if let Err(e) = wssd::config::Config::from_toml(&toml, Path::new(doc)) {
                panic!("{doc}, TOML block {}: {e}\n{block}", i + 1);
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} examples found");
}

#[test]
fn names_the_challenge_cannot_prove_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let acme = |challenge: &str, domains: &str| {
        format!(
            "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\nchallenge = \"{challenge}\"\ndns01_hook = \"/bin/true\"\n\n[[certificate]]\ndomains = [{domains}]\nsource = \"acme\"\n"
        )
    };
    let (code, err) = check(dir.path(), &acme("http-01", "\"*.example.test\""));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("certificate[0].domains") && err.contains("dns-01") && err.contains("line 6"),
        "{err}"
    );
    let (code, err) = check(
        dir.path(),
        &acme("dns-01", "\"example.test\", \"192.0.2.1\""),
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("192.0.2.1") && err.contains("http-01"),
        "{err}"
    );
}

#[test]
fn wssd_written_pairs_need_a_directory_each() {
    let dir = tempfile::tempdir().unwrap();
    let shared = r#"
[[certificate]]
domains = ["a.example"]
source = "selfsigned"
cert_file = "/srv/tls/a.pem"
key_file = "/srv/tls/a.key"

[[certificate]]
domains = ["b.example"]
source = "selfsigned"
cert_file = "/srv/tls/b.pem"
key_file = "/srv/tls/b.key"
"#;
    let (code, err) = check(dir.path(), shared);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("certificate[0].cert_file") && err.contains("directory of its own"),
        "{err}"
    );
    // Default paths never collide, even for certificates named alike.
    let alike = "[[certificate]]\ndomains = [\"a.example\"]\nsource = \"selfsigned\"\n[[certificate]]\ndomains = [\"a.example\", \"b.example\"]\nsource = \"selfsigned\"\n";
    let config = wssd::config::Config::from_toml(alike, Path::new("x.toml")).unwrap();
    assert_ne!(
        config.certificates[0].cert_file.parent(),
        config.certificates[1].cert_file.parent()
    );
}

/// The configs embedded in the Kubernetes ConfigMaps parse too.
#[test]
fn kubernetes_configmaps_hold_valid_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for manifest in [
        "deploy/kubernetes/sidecar/configmap.yaml",
        "deploy/kubernetes/acme/configmap.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(manifest)).unwrap();
        let body = text
            .split("wssd.toml: |\n")
            .nth(1)
            .expect("a wssd.toml entry");
        let toml: String = body
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l.trim_start()))
            .collect::<Vec<_>>()
            .join("\n");
        let config = wssd::config::Config::from_toml(&toml, Path::new(manifest))
            .unwrap_or_else(|e| panic!("{manifest}: {e}"));
        assert!(
            config.admin.is_some(),
            "{manifest}: probes need the admin server"
        );
    }
}

#[test]
fn route_mistakes_are_named_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let route = |body: &str| format!("{GOOD}\n[[route]]\n{body}\n");
    let cases = [
        (
            route(
                "path = \"/ws\"\nupstream = \"ws://127.0.0.1:1\"\n\n[[route]]\npath = \"/ws\"\nupstream = \"ws://127.0.0.1:2\"",
            ),
            "route[1].path",
            "line 14",
            "route[0] has the same path",
        ),
        (
            route("path = \"ws\"\nupstream = \"ws://127.0.0.1:1\""),
            "route[0].path",
            "line 10",
            "starts with /",
        ),
        (
            route("path = \"/ws?x\"\nupstream = \"ws://127.0.0.1:1\""),
            "route[0].path",
            "line 10",
            "no query",
        ),
        (
            route("path = \"/a/../b\"\nupstream = \"ws://127.0.0.1:1\""),
            "route[0].path",
            "line 10",
            "segments",
        ),
        (
            route("path = \"/ws\"\nupstream = \"https://127.0.0.1:1\""),
            "route[0].upstream",
            "line 11",
            "terminates TLS",
        ),
        (
            route("path = \"/ws\""),
            "route[0]",
            "line 9",
            "missing field `upstream`",
        ),
        (
            route("upstream = \"ws://127.0.0.1:1\""),
            "route[0]",
            "line 9",
            "missing field `path`",
        ),
        (
            route(
                "path = \"/ws\"\nupstream = \"ws://127.0.0.1:1\"\nallowed_origins = [\"https://a.example/x\"]",
            ),
            "route[0].allowed_origins",
            "line 12",
            "https://a.example/x",
        ),
        (
            route("path = \"/ws\"\nupstream = \"ws://127.0.0.1:1\"\nmax_message_size = \"0\""),
            "route[0].max_message_size",
            "line 12",
            "larger than zero",
        ),
        (
            route("path = \"/ws\"\nupstream = \"ws://127.0.0.1:1\"\nidle_timeout = \"1s\""),
            "route[0]",
            "line 12",
            "unknown field `idle_timeout`",
        ),
    ];
    for (config, key, line, message) in cases {
        let (code, err) = check(dir.path(), &config);
        assert_eq!(code, Some(2), "{config}\n{err}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(err.contains(line), "{line}: {err}");
        assert!(err.contains(message), "{message}: {err}");
    }
    let ok = route(
        "path = \"/ws\"\nupstream = \"http://127.0.0.1:1\"\nallowed_origins = [\"https://a.example\"]\nmax_message_size = \"1KiB\"",
    );
    let (code, err) = check(dir.path(), &ok);
    assert_eq!(code, Some(0), "{ok}\n{err}");
}

#[test]
fn response_header_mistakes_name_the_header() {
    let dir = tempfile::tempdir().unwrap();
    for (table, key, why) in [
        (
            "{ \"X Frame\" = \"DENY\" }",
            "listener.response_headers.X Frame",
            "not a header name",
        ),
        (
            "{ \"Connection\" = \"close\" }",
            "listener.response_headers.Connection",
            "manage it",
        ),
        (
            "{ \"X-A\" = \"\" }",
            "listener.response_headers.X-A",
            "not a header value",
        ),
    ] {
        let config = GOOD.replace(
            "bind = \"127.0.0.1:0\"",
            &format!("bind = \"127.0.0.1:0\"\nresponse_headers = {table}"),
        );
        let (code, err) = check(dir.path(), &config);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(key) && err.contains(why) && err.contains("line 4"),
            "{err}"
        );
    }
}

#[test]
fn cluster_mistakes_are_named_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    wssd::cert::store::write_atomic(
        &key,
        b"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\n",
        0o600,
    )
    .unwrap();
    let cluster = |body: &str| {
        format!(
            "{GOOD}\n[cluster]\nbackend = \"etcd\"\nencryption_key_file = \"{}\"\n{body}",
            key.display()
        )
    };
    let good = cluster("endpoints = [\"http://127.0.0.1:2379\"]\nname = \"chat-prod\"\n");
    let (code, err) = check(dir.path(), &good);
    assert_eq!(code, Some(0), "{err}");
    // The key's mode: its owner's alone, or (owned by root) also its group's, as
    // Kubernetes mounts a Secret with fsGroup; never anyone else's.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let set_mode =
        |mode| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mode(0o644);
    let (code, err) = check(dir.path(), &good);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("chmod 600") && err.contains("fleet.key"),
        "{err}"
    );
    if std::fs::metadata(&key).unwrap().uid() == 0 {
        set_mode(0o440);
        let (code, err) = check(dir.path(), &good);
        assert_eq!(
            code,
            Some(0),
            "root:group 0440 (a Kubernetes Secret with fsGroup): {err}"
        );
    }
    set_mode(0o600);
    let cases = [
        (
            "endpoints = []\nname = \"x\"\n",
            "cluster.endpoints",
            "at least one engine URL",
        ),
        (
            "endpoints = [\"127.0.0.1:2379\"]\nname = \"x\"\n",
            "cluster.endpoints[0]",
            "http:// or https://",
        ),
        (
            "endpoints = [\"http://127.0.0.1:2379/v3\"]\nname = \"x\"\n",
            "cluster.endpoints[0]",
            "a host and a port",
        ),
        (
            "endpoints = [\"http://127.0.0.1:2379\"]\nname = \"a/b\"\n",
            "cluster.name",
            "letters, digits",
        ),
        (
            "endpoints = [\"http://127.0.0.1:2379\"]\nname = \"x\"\nlease_ttl = \"1s\"\n",
            "cluster.lease_ttl",
            "between 2s",
        ),
        (
            "endpoints = [\"http://127.0.0.1:2379\"]\nname = \"x\"\ncert_file = \"/etc/c.pem\"\n",
            "cluster.cert_file",
            "both cert_file and key_file",
        ),
        (
            "endpoints = [\"http://127.0.0.1:2379\"]\nname = \"x\"\nbackend2 = 1\n",
            "cluster",
            "unknown field `backend2`",
        ),
    ];
    for (body, key_name, message) in cases {
        let (code, err) = check(dir.path(), &cluster(body));
        assert_eq!(code, Some(2), "{body}: {err}");
        assert!(err.contains(key_name), "{body}: {err}");
        assert!(err.contains(message), "{body}: {err}");
        assert!(err.contains("line "), "{body}: {err}");
    }
    // Every challenge works in a fleet, tls-alpn-01 (the default) too.
    let acme = format!(
        "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\n\n[[certificate]]\ndomains = [\"a.example.test\"]\nsource = \"acme\"\n\n[cluster]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nname = \"x\"\nencryption_key_file = \"{}\"\n",
        key.display()
    );
    for challenge in ["tls-alpn-01", "http-01"] {
        let config = acme.replace(
            "[acme]\n",
            &format!("[acme]\nchallenge = \"{challenge}\"\n"),
        );
        let (_, err) = check(dir.path(), &config);
        assert!(!err.contains("cluster"), "{challenge} in a fleet: {err}");
    }
    // The key file: present, 32 bytes of base64, private.
    let (code, err) = check(dir.path(), &good.replace("fleet.key", "missing.key"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cluster.encryption_key_file"), "{err}");
    wssd::cert::store::write_atomic(&key, b"AAAA\n", 0o600).unwrap();
    let (code, err) = check(dir.path(), &good);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("holds 3 bytes, not 32"), "{err}");
    assert!(
        !err.contains("AAAA"),
        "the key's contents are never shown: {err}"
    );
}
