//! What SQL may reach outside the process (docs/security.md): the files of file-like connectors,
//! the librdkafka properties passed through `properties.*`, and the hosts of Kafka and HBase.
//!
//! Every statement that names a connector (`CREATE SOURCE`, `CREATE TABLE`, `CREATE SINK`, and a
//! stored catalog restored at start) is checked here by the [`crate::session::Session`] before
//! anything is opened, whichever entry point sent it (`run`, the REPL, `serve`, `check`, `test`).
//! The defaults per entry point are set in `main.rs`; [`Policy::default`] — what the library and
//! its unit tests get — restricts nothing but the properties that run code.
//!
//! Paths: a `path` resolves against the working directory, then every existing part of it is
//! resolved through symlinks (`std::fs::canonicalize`) and the parts that do not exist yet (a sink's
//! directory) are joined lexically — they cannot be symlinks — so `..` and a symlink pointing out of
//! a root are seen for what they are. The check runs when the statement is planned; a symlink
//! swapped in later by someone who can already write inside a root is outside this model.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::sql::parser::Options;

/// librdkafka keys `properties.*` may set without being allowed by flag: client tuning, delivery
/// and timeouts, and the security settings a user needs to reach a secured cluster. Keys naming
/// files are in [`PATH_PROPERTIES`] and resolve under the roots like `path` does.
const SAFE_PROPERTIES: &[&str] = &[
    "acks",
    "allow.auto.create.topics",
    "api.version.request",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "batch.num.messages",
    "batch.size",
    "broker.address.family",
    "check.crcs",
    "client.id",
    "client.rack",
    "compression.codec",
    "compression.level",
    "compression.type",
    "connections.max.idle.ms",
    "delivery.timeout.ms",
    "enable.auto.commit",
    "enable.idempotence",
    "enable.partition.eof",
    "fetch.error.backoff.ms",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "group.instance.id",
    "heartbeat.interval.ms",
    "isolation.level",
    "linger.ms",
    "max.in.flight",
    "max.in.flight.requests.per.connection",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "message.max.bytes",
    "message.send.max.retries",
    "message.timeout.ms",
    "metadata.max.age.ms",
    "partition.assignment.strategy",
    "partitioner",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "receive.message.max.bytes",
    "reconnect.backoff.max.ms",
    "reconnect.backoff.ms",
    "request.required.acks",
    "request.timeout.ms",
    "retries",
    "retry.backoff.max.ms",
    "retry.backoff.ms",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.password",
    "sasl.username",
    "security.protocol",
    "session.timeout.ms",
    "socket.connection.setup.timeout.ms",
    "socket.keepalive.enable",
    "socket.timeout.ms",
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "ssl.endpoint.identification.algorithm",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "topic.metadata.refresh.interval.ms",
    "transaction.timeout.ms",
    "transactional.id",
];

/// librdkafka keys that name files librdkafka reads: allowed, each resolved under the roots.
const PATH_PROPERTIES: &[&str] = &[
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.crl.location",
    "ssl.key.location",
    "ssl.keystore.location",
];

/// librdkafka keys never allowed, not even by flag: they load code or run a command
/// (`plugin.library.paths`, `ssl.engine.location`, `sasl.kerberos.kinit.cmd`), or name the brokers
/// behind the host check's back (`bootstrap.servers`: use the `bootstrap_servers` option).
const DENIED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "plugin.library.paths",
    "sasl.kerberos.kinit.cmd",
    "ssl.engine.location",
];

/// What statements may touch. See the module doc.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Directories (canonical) every `path` must resolve under; `None`: anywhere.
    roots: Option<Vec<PathBuf>>,
    /// Hosts (`host` or `host:port`, lower case) Kafka and HBase may be reached at; `None`: any.
    hosts: Option<Vec<String>>,
    /// librdkafka keys allowed beyond [`SAFE_PROPERTIES`] and [`PATH_PROPERTIES`].
    properties: Vec<String>,
}

impl Policy {
    /// Paths under `roots` only (each must exist; they are canonicalized here).
    pub fn with_roots<P: AsRef<Path>>(mut self, roots: impl IntoIterator<Item = P>) -> Result<Self> {
        let mut out = Vec::new();
        for r in roots {
            let r = r.as_ref();
            let c = std::fs::canonicalize(r).map_err(|e| Error::io(r, e))?;
            if !out.contains(&c) {
                out.push(c);
            }
        }
        self.roots = Some(out);
        Ok(self)
    }

    /// Kafka and HBase only at these hosts (`host` for any port, or `host:port`; `*` allows any).
    pub fn with_hosts<S: AsRef<str>>(mut self, hosts: impl IntoIterator<Item = S>) -> Self {
        let hosts: Vec<String> = hosts
            .into_iter()
            .map(|h| h.as_ref().trim().to_ascii_lowercase())
            .collect();
        self.hosts = if hosts.iter().any(|h| h == "*") {
            None
        } else {
            Some(hosts)
        };
        self
    }

    /// Allow these librdkafka keys too (never those in [`DENIED_PROPERTIES`]).
    pub fn with_properties<S: AsRef<str>>(mut self, keys: impl IntoIterator<Item = S>) -> Result<Self> {
        for k in keys {
            let k = k.as_ref().trim().to_string();
            if DENIED_PROPERTIES.contains(&k.as_str()) {
                return Err(Error::option(
                    format!("properties.{k}"),
                    "can never be allowed: it loads code, runs a command or bypasses the host check",
                ));
            }
            self.properties.push(k);
        }
        Ok(self)
    }

    /// The roots, for messages and docs (`None`: any path).
    pub fn roots(&self) -> Option<&[PathBuf]> {
        self.roots.as_deref()
    }

    /// Check a connector's options (a source's, a table's or a sink's) against the policy.
    pub fn check_options(&self, options: &Options) -> Result<()> {
        let connector = options.get("connector").unwrap_or_default();
        if matches!(connector, "file" | "parquet")
            && let Some(p) = options.get("path")
        {
            self.check_path("path", p)?;
        }
        if connector == "kafka" {
            if let Some(servers) = options.get("bootstrap_servers") {
                for s in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    self.check_host("bootstrap_servers", s)?;
                }
            }
            for (k, v) in &options.0 {
                if let Some(p) = k.strip_prefix("properties.") {
                    self.check_property(k, p, v)?;
                }
            }
        }
        if connector == "hbase" {
            let thrift = crate::connector::hbase::thrift_address(options);
            for s in thrift.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                self.check_host("thrift", s)?;
            }
        }
        Ok(())
    }

    fn check_property(&self, key: &str, property: &str, value: &str) -> Result<()> {
        if DENIED_PROPERTIES.contains(&property) {
            return Err(Error::forbidden(
                key,
                if property.ends_with("servers") || property.ends_with("broker.list") {
                    "name the brokers with the 'bootstrap_servers' option".to_string()
                } else {
                    "this librdkafka key loads code or runs a command and is never allowed".to_string()
                },
            ));
        }
        if PATH_PROPERTIES.contains(&property) {
            return self.check_path(key, value).map(|_| ());
        }
        if SAFE_PROPERTIES.contains(&property) || self.properties.iter().any(|p| p == property) {
            return Ok(());
        }
        Err(Error::forbidden(
            key,
            "not an allowed librdkafka key (docs/security.md lists them); the operator may allow it with --allow-property",
        ))
    }

    /// Check `host[:port]` (or `[v6]:port`) against the allowed hosts.
    pub fn check_host(&self, key: &str, server: &str) -> Result<()> {
        let Some(allowed) = &self.hosts else { return Ok(()) };
        let server = server.to_ascii_lowercase();
        let host = split_host(&server);
        if allowed.iter().any(|a| *a == server || *a == host) {
            return Ok(());
        }
        Err(Error::forbidden(
            key,
            format!(
                "host '{server}' is not allowed here (allowed: {}); the operator may allow it with --allow-host",
                allowed.join(", ")
            ),
        ))
    }

    /// Check that `path` (as the connector will open it, relative to the working directory)
    /// resolves under a root; returns where it resolves to.
    pub fn check_path(&self, key: &str, path: &str) -> Result<PathBuf> {
        let resolved = resolve(Path::new(path)).map_err(|e| Error::option(key, format!("'{path}': {e}")))?;
        let Some(roots) = &self.roots else { return Ok(resolved) };
        if roots.iter().any(|r| resolved.starts_with(r)) {
            return Ok(resolved);
        }
        let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(Error::forbidden(
            key,
            format!(
                "'{path}' resolves to {}, outside the allowed directories ({}); the operator may allow a directory with --allow-path",
                resolved.display(),
                list.join(", ")
            ),
        ))
    }
}

/// The host of `host`, `host:port`, `[v6]` or `[v6]:port` (a bare v6 address is taken whole).
pub fn split_host(server: &str) -> &str {
    if let Some(rest) = server.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match server.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => server,
    }
}

/// Where `path` leads: absolute, through every symlink of the part that exists, with the part that
/// does not yet exist joined lexically (`..` there steps back within what was resolved).
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    // The longest prefix that exists, canonicalized; then the rest.
    let components: Vec<Component> = absolute.components().collect();
    for split in (1..=components.len()).rev() {
        let head: PathBuf = components[..split].iter().collect();
        let Ok(mut out) = std::fs::canonicalize(&head) else {
            continue;
        };
        for c in &components[split..] {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                Component::Normal(n) => out.push(n),
                // Only the first components of an absolute path are roots or prefixes.
                Component::RootDir | Component::Prefix(_) => {}
            }
        }
        return Ok(out);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no part of it exists",
    ))
}

/// Loopback host names, the default hosts of `freshet serve`.
pub const LOOPBACK_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Options {
        Options(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn forbidden(r: Result<()>) -> String {
        match r {
            Err(Error::Forbidden { key, message }) => format!("{key}: {message}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn paths_resolve_under_the_roots_and_dotdot_and_symlinks_out_are_refused() {
        let root = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("tmp");
        let r = root.path().canonicalize().expect("test setup");
        std::fs::write(outside.path().join("secret"), "x").expect("test setup");
        std::fs::create_dir(r.join("data")).expect("test setup");
        std::os::unix::fs::symlink(outside.path(), r.join("link")).expect("test setup");
        let p = Policy::default().with_roots([&r]).expect("test setup");
        let file = |path: &str| opts(&[("connector", "file"), ("path", path)]);

        p.check_options(&file(r.join("data/in.jsonl").to_str().expect("test setup")))
            .expect("test setup");
        // A sink's directory that does not exist yet, with `..` inside the root.
        p.check_options(&opts(&[
            ("connector", "parquet"),
            ("path", r.join("new/deeper/../out").to_str().expect("test setup")),
        ]))
        .expect("test setup");
        for escape in [
            outside.path().join("secret"),
            r.join("data/../../")
                .join(outside.path().file_name().expect("test setup")),
            r.join("link/secret"),
            r.join("link/not-yet/out"),
            r.join("new/../../.."),
            PathBuf::from("/etc/passwd"),
        ] {
            let msg = forbidden(p.check_options(&file(escape.to_str().expect("test setup"))));
            assert!(msg.starts_with("path: "), "{msg}");
            assert!(msg.contains("outside the allowed directories"), "{msg}");
        }
        // A relative path resolves against the working directory (here: not under the root).
        let msg = forbidden(p.check_options(&file("in.jsonl")));
        assert!(msg.contains("--allow-path"), "{msg}");
    }

    #[test]
    fn librdkafka_properties_are_allowlisted_and_code_loading_keys_never_allowed() {
        let kafka = |k: &str, v: &str| opts(&[("connector", "kafka"), (k, v)]);
        let p = Policy::default();
        p.check_options(&kafka("properties.linger.ms", "5"))
            .expect("test setup");
        p.check_options(&kafka("properties.security.protocol", "SASL_SSL"))
            .expect("test setup");
        for key in [
            "plugin.library.paths",
            "sasl.kerberos.kinit.cmd",
            "ssl.engine.location",
            "bootstrap.servers",
        ] {
            let msg = forbidden(p.check_options(&kafka(&format!("properties.{key}"), "x")));
            assert!(msg.starts_with(&format!("properties.{key}: ")), "{msg}");
        }
        let msg = forbidden(p.check_options(&kafka("properties.sasl.oauthbearer.token.endpoint.url", "x")));
        assert!(msg.contains("--allow-property"), "{msg}");
        let widened = Policy::default()
            .with_properties(["sasl.oauthbearer.token.endpoint.url"])
            .expect("test setup");
        widened
            .check_options(&kafka("properties.sasl.oauthbearer.token.endpoint.url", "x"))
            .expect("test setup");
        assert!(Policy::default().with_properties(["plugin.library.paths"]).is_err());
        // A key naming a file is checked like `path`.
        let root = tempfile::tempdir().expect("tmp");
        let rooted = Policy::default().with_roots([root.path()]).expect("test setup");
        let msg = forbidden(rooted.check_options(&kafka("properties.ssl.ca.location", "/etc/ssl/certs")));
        assert!(msg.contains("outside the allowed directories"), "{msg}");
    }

    #[test]
    fn hosts_are_checked_by_name_or_name_and_port() {
        let p = Policy::default().with_hosts(["localhost", "127.0.0.1", "::1", "kafka.internal:9093"]);
        let kafka = |s: &str| opts(&[("connector", "kafka"), ("bootstrap_servers", s)]);
        p.check_options(&kafka("localhost:9092, 127.0.0.1:9093"))
            .expect("test setup");
        p.check_options(&kafka("[::1]:9092")).expect("test setup");
        p.check_options(&kafka("KAFKA.internal:9093")).expect("test setup");
        let msg = forbidden(p.check_options(&kafka("kafka.internal:9092")));
        assert!(
            msg.starts_with("bootstrap_servers: host 'kafka.internal:9092'"),
            "{msg}"
        );
        forbidden(p.check_options(&kafka("localhost:9092,169.254.169.254:80")));
        // HBase: its Thrift gateway, by default the local one.
        p.check_options(&opts(&[("connector", "hbase")])).expect("test setup");
        let msg = forbidden(p.check_options(&opts(&[("connector", "hbase"), ("thrift", "10.0.0.1:9090")])));
        assert!(msg.starts_with("thrift: "), "{msg}");
        // `*` allows any; the default allows any.
        Policy::default()
            .with_hosts(["*"])
            .check_options(&kafka("example.com:1"))
            .expect("test setup");
        Policy::default()
            .check_options(&kafka("example.com:1"))
            .expect("test setup");
    }
}
