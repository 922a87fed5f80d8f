//! The node's configuration: one TOML file, loaded and validated once at startup.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// One member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// The member's node id (never reused).
    pub id: u64,
    /// Its client API address.
    pub client_addr: SocketAddr,
    /// Its raft RPC address.
    pub raft_addr: SocketAddr,
}

/// Raft timings, in milliseconds, and log compaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat period; in openraft 0.9 also the AppendEntries timeout.
    pub heartbeat_ms: u64,
    /// Election timeout, lower bound.
    pub election_min_ms: u64,
    /// Election timeout, upper bound.
    pub election_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for followers that lag a little.
    pub logs_kept_after_snapshot: u64,
    /// Per-chunk snapshot transfer timeout.
    pub install_snapshot_timeout_ms: u64,
    /// Purge the log only once this many entries can go: each purge is a synced
    /// metadata write, too many for every entry.
    pub purge_batch_size: u64,
    /// Size of one raft log segment file, in MiB (1 to 256). Each is zero-filled before
    /// use, paced in the background while the previous one fills, so appends never grow a
    /// file; larger segments mean longer preparations competing with appends for the disk.
    pub log_segment_mib: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            snapshot_every: 20_000,
            logs_kept_after_snapshot: 2_000,
            install_snapshot_timeout_ms: 10_000,
            purge_batch_size: 256,
            log_segment_mib: 32,
        }
    }
}

/// Limits on client input and waiting.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted value, in bytes of JSON.
    pub max_value_bytes: usize,
    /// How long a write may wait for commit before its outcome is reported unknown.
    pub write_timeout_ms: u64,
    /// How long a linearizable read may wait for the leader's confirmation.
    pub read_timeout_ms: u64,
    /// Most writes proposed in one raft entry.
    pub max_batch: usize,
    /// How long an Idempotency-Key's recorded answer is kept, in seconds.
    pub idempotency_retention_s: u64,
    /// Free space, in MiB, kept on the data directory's file system: below it, writes
    /// that grow the data are refused (507) while deletes, expiry and reads go on. At
    /// least twice `raft.log_segment_mib`, so the log always finds room for a segment.
    pub min_free_disk_mib: u64,
    /// Most bytes of keys and values stored (expired and deleted entries count until
    /// they are removed): past it, writes that grow the data are refused (507
    /// `quota_exceeded`) while deletes, expiry and reads go on. The leader's setting is
    /// the one that counts.
    pub max_data_bytes: u64,
    /// Most open client connections; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Most open client connections from one address (an IPv6 /64 counts as one).
    pub max_connections_per_ip: usize,
    /// How long a client connection may take to send the head of its next request,
    /// counted from its opening or its previous answer: idle and slow connections are
    /// closed after it.
    pub idle_timeout_ms: u64,
    /// How long a request's body may take to arrive in full (408 after it).
    pub body_timeout_ms: u64,
    /// Most idempotency records, client sessions and session answers stored: past it,
    /// writes that would record one more are refused (507 `records_full`).
    pub max_records: u64,
    /// A client session ends after this many seconds without a write.
    pub session_idle_s: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_value_bytes: 1024 * 1024,
            write_timeout_ms: 5_000,
            read_timeout_ms: 3_000,
            max_batch: 512,
            idempotency_retention_s: 24 * 3600,
            min_free_disk_mib: 256,
            max_data_bytes: 8 << 30,
            max_connections: 1024,
            max_connections_per_ip: 256,
            idle_timeout_ms: 30_000,
            body_timeout_ms: 30_000,
            max_records: 1_000_000,
            session_idle_s: 600,
        }
    }
}

/// Certificate files for TLS on both ports and for forwarding (PEM; relative paths are
/// relative to the working directory). Read once at startup, not by `validate`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate chain, for both ports and as its identity to peers; its
    /// subject alternative names hold the IP addresses of `client_addr` and `raft_addr`.
    pub cert_file: PathBuf,
    /// The private key of `cert_file`.
    pub key_file: PathBuf,
    /// The cluster's CA: the only issuer trusted for peers on the raft port and for the
    /// leader when forwarding.
    pub ca_file: PathBuf,
    /// A CA whose client certificates the client port accepts besides the cluster CA's;
    /// never trusted on the raft port.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Refuse client connections without a certificate from the cluster CA or
    /// `client_ca_file` (otherwise one is checked only when offered).
    #[serde(default)]
    pub require_client_cert: bool,
}

/// Everything one node reads from its TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; one of `members` for a node that bootstraps the cluster.
    pub id: u64,
    /// Where the client HTTP API listens.
    pub client_addr: SocketAddr,
    /// Where the raft RPC listener listens.
    pub raft_addr: SocketAddr,
    /// RocksDB and snapshot files; relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    /// The members that bootstrap a new cluster, each with both addresses; once the
    /// cluster exists, membership changes through the membership API, not here.
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    /// The id of an existing cluster this node joins (as `GET /v1/cluster` shows it)
    /// instead of bootstrapping one: it waits, as a node with no state, until the
    /// leader adds it (`kvctl member add`). Excludes `members`.
    #[serde(default)]
    pub join: Option<String>,
    /// Shared secret the raft listener requires in the hello of every connection,
    /// written here: accepted only with a loopback `raft_addr` (local clusters, tests).
    #[serde(default)]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (one line; relative to the working directory).
    #[serde(default)]
    pub cluster_secret_file: Option<PathBuf>,
    /// An environment variable holding the cluster secret.
    #[serde(default)]
    pub cluster_secret_env: Option<String>,
    /// Lets a node whose `raft_addr` is not loopback run without a cluster secret, so
    /// that anyone who reaches its raft port can replace its state. For closed networks
    /// only.
    #[serde(default)]
    pub insecure_raft_port: bool,
    /// Serve the client port on a non-loopback address without tokens: anyone who
    /// reaches it may read and write everything. For closed networks only.
    #[serde(default)]
    pub insecure_client_port: bool,
    /// Test-only: added to this node's wall clock when it stamps commands, to simulate
    /// clock skew.
    #[serde(default)]
    pub clock_offset_ms: i64,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Bearer tokens on the client port.
    #[serde(default)]
    pub auth: AuthConfig,
    /// How the node logs: `text` for people, `json` (one object a line) for shippers.
    #[serde(default)]
    pub log_format: LogFormat,
    /// TLS on the client port, the raft port and forwarding; plain TCP without it.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where the bootstrap admin token comes from. Auth is on when one is named: every
/// request but `/healthz` and `/readyz` then needs a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A file holding the bootstrap admin token on one line.
    pub admin_token_file: Option<PathBuf>,
    /// An environment variable holding it.
    pub admin_token_env: Option<String>,
}

/// A secret kept in a file: its text without the line ending.
fn read_line(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// A secret kept in environment variable `name`, which setting `setting` names.
fn read_env(name: &str, setting: &str) -> Result<String, ConfigError> {
    std::env::var(name).map_err(|_| {
        ConfigError::Invalid(format!(
            "{setting} names {name}, which is not set (or not UTF-8)"
        ))
    })
}

/// Bounds on the bootstrap token: long enough that guessing it is hopeless.
const ADMIN_TOKEN_BYTES: std::ops::RangeInclusive<usize> = 32..=256;

impl AuthConfig {
    /// Whether requests need tokens.
    pub fn enabled(&self) -> bool {
        self.admin_token_file.is_some() || self.admin_token_env.is_some()
    }

    /// The bootstrap admin token, read from its file or variable; `None` if auth is off.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let token = match (&self.admin_token_file, &self.admin_token_env) {
            (None, None) => return Ok(None),
            (Some(path), None) => read_line(path)?,
            (None, Some(name)) => read_env(name, "auth.admin_token_env")?,
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "set one of auth.admin_token_file and auth.admin_token_env".into(),
                ))
            }
        };
        let visible = token.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if !visible || !ADMIN_TOKEN_BYTES.contains(&token.len()) || token.starts_with("kvt_") {
            return Err(ConfigError::Invalid(
                "the admin token must be 32 to 256 visible ASCII characters on one line, \
                 not starting with kvt_ (e.g. the output of `openssl rand -hex 32`)"
                    .into(),
            ));
        }
        Ok(Some(token))
    }
}

impl NodeConfig {
    /// Loads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The cluster secret from wherever the configuration says it is, if anywhere.
    /// Called once at startup: a secret file or variable that is missing or empty stops
    /// the node.
    pub fn cluster_secret(&self) -> Result<Option<String>, ConfigError> {
        let secret = match (
            &self.cluster_secret,
            &self.cluster_secret_file,
            &self.cluster_secret_env,
        ) {
            (Some(literal), None, None) => literal.clone(),
            (None, Some(path), None) => read_line(path)?,
            (None, None, Some(name)) => read_env(name, "cluster_secret_env")?,
            (None, None, None) => return Ok(None),
            _ => {
                return Err(ConfigError::Invalid(
                    "set one of cluster_secret, cluster_secret_file and cluster_secret_env".into(),
                ))
            }
        };
        if secret.is_empty() || secret.contains('\n') {
            return Err(ConfigError::Invalid(
                "the cluster secret is empty or spans lines".into(),
            ));
        }
        Ok(Some(secret))
    }

    /// Checks what serde cannot: membership, distinct addresses, sane timings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let sources = [
            self.cluster_secret.is_some(),
            self.cluster_secret_file.is_some(),
            self.cluster_secret_env.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return invalid(
                "set one of cluster_secret, cluster_secret_file and cluster_secret_env".into(),
            );
        }
        let loopback = self.raft_addr.ip().is_loopback();
        if self.cluster_secret.is_some() && !loopback {
            return invalid(format!(
                "cluster_secret written in the configuration is accepted only for a loopback \
                 raft_addr, not {}: put the secret in cluster_secret_file or cluster_secret_env",
                self.raft_addr
            ));
        }
        if !sources.contains(&true) && !loopback && !self.insecure_raft_port {
            return invalid(format!(
                "raft_addr {} is not loopback and no cluster secret is set: anyone who reaches \
                 the raft port could replace this node's state. Set cluster_secret_file or \
                 cluster_secret_env (or, on a closed network, insecure_raft_port = true)",
                self.raft_addr
            ));
        }
        if self.auth.admin_token_file.is_some() && self.auth.admin_token_env.is_some() {
            return invalid("set one of auth.admin_token_file and auth.admin_token_env".into());
        }
        if !self.auth.enabled()
            && !self.client_addr.ip().is_loopback()
            && !self.insecure_client_port
        {
            return invalid(format!(
                "client_addr {} is not loopback and auth is off: anyone who reaches it could \
                 read and overwrite every key. Set auth.admin_token_file or \
                 auth.admin_token_env (or, on a closed network, insecure_client_port = true)",
                self.client_addr
            ));
        }
        if self.join.is_some() {
            if !self.members.is_empty() {
                return invalid(
                    "set members to bootstrap a new cluster or join to join one, not both".into(),
                );
            }
        } else {
            let me = self.members.iter().find(|m| m.id == self.id);
            let Some(me) = me else {
                return invalid(format!(
                    "node id {} is not among the members (a node joining an existing \
                     cluster sets join instead)",
                    self.id
                ));
            };
            if me.client_addr != self.client_addr || me.raft_addr != self.raft_addr {
                return invalid(format!(
                    "node {}'s addresses differ from its entry in members",
                    self.id
                ));
            }
        }
        let mut ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.members.len() {
            return invalid("member ids must be distinct".into());
        }
        let mut addrs: Vec<SocketAddr> = self
            .members
            .iter()
            .flat_map(|m| [m.client_addr, m.raft_addr])
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.len() != 2 * self.members.len() {
            return invalid("every member needs its own client and raft addresses".into());
        }
        let r = &self.raft;
        if !(r.heartbeat_ms * 2 < r.election_min_ms && r.election_min_ms < r.election_max_ms) {
            return invalid("need heartbeat_ms * 2 < election_min_ms < election_max_ms".into());
        }
        if r.purge_batch_size == 0 || r.snapshot_every == 0 {
            return invalid("purge_batch_size and snapshot_every must be positive".into());
        }
        if !(1..=256).contains(&r.log_segment_mib) {
            return invalid("log_segment_mib must be between 1 and 256".into());
        }
        if self.limits.min_free_disk_mib < 2 * r.log_segment_mib {
            return invalid(
                "limits.min_free_disk_mib must be at least twice raft.log_segment_mib".into(),
            );
        }
        if self.limits.max_value_bytes == 0
            || self.limits.max_data_bytes == 0
            || self.limits.max_connections == 0
            || self.limits.max_connections_per_ip == 0
            || self.limits.idle_timeout_ms == 0
            || self.limits.body_timeout_ms == 0
            || self.limits.max_records == 0
            || self.limits.session_idle_s == 0
            || self.limits.max_batch == 0
            || self.limits.idempotency_retention_s == 0
        {
            return invalid("limits must be positive".into());
        }
        if let Some(tls) = &self.tls {
            let files = [&tls.cert_file, &tls.key_file, &tls.ca_file];
            if files.iter().any(|f| f.as_os_str().is_empty())
                || tls
                    .client_ca_file
                    .as_ref()
                    .is_some_and(|f| f.as_os_str().is_empty())
            {
                return invalid("tls: file names must not be empty".into());
            }
            if tls.cert_file == tls.key_file {
                return invalid(
                    "tls: cert_file and key_file name one file; keep the key in a file of its own"
                        .into(),
                );
            }
            if tls.client_ca_file.as_ref() == Some(&tls.ca_file) {
                return invalid(
                    "tls: client_ca_file is the cluster CA, which the client port trusts anyway; \
                     give client certificates a CA of their own, so they cannot open the raft port"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The member that bootstraps a fresh cluster: the lowest id.
    pub fn bootstrapper(&self) -> u64 {
        self.members.iter().map(|m| m.id).min().unwrap_or(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        id = 2
        client_addr = "127.0.0.1:7002"
        raft_addr = "127.0.0.1:7102"
        data_dir = "data/node2"
        members = [
          { id = 1, client_addr = "127.0.0.1:7001", raft_addr = "127.0.0.1:7101" },
          { id = 2, client_addr = "127.0.0.1:7002", raft_addr = "127.0.0.1:7102" },
        ]
        [raft]
        heartbeat_ms = 50
    "#;

    #[test]
    fn valid_config_parses_with_defaults() {
        let c: NodeConfig = toml::from_str(VALID).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.raft.heartbeat_ms, 50);
        assert_eq!(c.raft.election_min_ms, 500);
        assert_eq!(c.limits.max_value_bytes, 1 << 20);
        assert_eq!(c.bootstrapper(), 1);
    }

    /// VALID on `ip` instead of 127.0.0.1, with `extra` top-level lines.
    /// `VALID` with both ports on `ip` and `extra` top-level lines, the client port open
    /// (see `a_client_port_off_loopback_needs_auth`).
    fn on(ip: &str, extra: &str) -> NodeConfig {
        with_client_port(ip, &format!("insecure_client_port = true\n{extra}"), "")
    }

    fn with_client_port(ip: &str, extra: &str, sections: &str) -> NodeConfig {
        let text = VALID
            .replace("127.0.0.1", ip)
            .replace("data_dir", &format!("{extra}\ndata_dir"))
            .replace("[raft]", &format!("{sections}\n[raft]"));
        toml::from_str(&text).expect("parses")
    }

    #[test]
    fn a_client_port_off_loopback_needs_auth() {
        let secret = "cluster_secret_env = \"S\"";
        let open = with_client_port("10.1.2.3", secret, "").validate();
        assert!(open
            .expect_err("refused")
            .to_string()
            .contains("insecure_client_port"));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("admin");
        let auth = format!("[auth]\nadmin_token_file = {file:?}");
        let with_auth = with_client_port("10.1.2.3", secret, &auth);
        assert!(with_auth.validate().is_ok());
        assert!(with_auth.auth.admin_token().is_err(), "the file is missing");
        std::fs::write(&file, "short\n").expect("write");
        assert!(with_auth.auth.admin_token().is_err(), "too short");
        std::fs::write(&file, format!("kvt_{}\n", "a".repeat(40))).expect("write");
        assert!(
            with_auth.auth.admin_token().is_err(),
            "looks like a stored token"
        );
        let good = "0123456789abcdef".repeat(4);
        std::fs::write(&file, format!("{good}\n")).expect("write");
        assert_eq!(
            with_auth.auth.admin_token().expect("read").as_deref(),
            Some(good.as_str())
        );
        let both = format!("{auth}\nadmin_token_env = \"T\"");
        assert!(with_client_port("127.0.0.1", "", &both).validate().is_err());
        assert!(
            with_client_port("127.0.0.1", "", "").validate().is_ok(),
            "local use"
        );
        assert!(!with_client_port("127.0.0.1", "", "").auth.enabled());
    }

    #[test]
    fn a_raft_port_off_loopback_needs_a_secret_kept_outside_the_configuration() {
        assert!(
            on("127.0.0.1", "").validate().is_ok(),
            "loopback: local use"
        );
        let open = on("10.1.2.3", "").validate().expect_err("refused");
        assert!(open.to_string().contains("insecure_raft_port"), "{open}");
        assert!(on("10.1.2.3", "insecure_raft_port = true")
            .validate()
            .is_ok());
        let written = on("10.1.2.3", "cluster_secret = \"s\"").validate();
        assert!(written
            .expect_err("refused")
            .to_string()
            .contains("cluster_secret_file"));
        assert!(on("127.0.0.1", "cluster_secret = \"s\"").validate().is_ok());
        let both = "cluster_secret = \"s\"\ncluster_secret_env = \"X\"";
        assert!(on("127.0.0.1", both).validate().is_err());

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").expect("write");
        let from_file = on("10.1.2.3", &format!("cluster_secret_file = {:?}", file));
        assert!(from_file.validate().is_ok());
        assert_eq!(
            from_file.cluster_secret().expect("read").as_deref(),
            Some("s3cret")
        );
        std::fs::write(&file, "\n").expect("write");
        assert!(from_file.cluster_secret().is_err(), "an empty secret");
        let missing = on(
            "10.1.2.3",
            "cluster_secret_env = \"KV_TEST_NO_SUCH_SECRET\"",
        );
        assert!(missing.validate().is_ok());
        assert!(missing.cluster_secret().is_err(), "an unset variable");
        assert_eq!(on("127.0.0.1", "").cluster_secret().expect("none"), None);
    }

    #[test]
    fn tls_needs_a_certificate_its_key_and_the_cluster_ca() {
        let with = |lines: &str| toml::from_str::<NodeConfig>(&format!("{VALID}\n[tls]\n{lines}"));
        let full = with("cert_file = \"n.pem\"\nkey_file = \"n-key.pem\"\nca_file = \"ca.pem\"")
            .expect("parses");
        full.validate().expect("valid");
        let tls = full.tls.expect("a tls section");
        assert!(tls.client_ca_file.is_none() && !tls.require_client_cert);
        let no_ca = with("cert_file = \"n.pem\"\nkey_file = \"n-key.pem\"");
        assert!(no_ca.expect_err("refused").to_string().contains("ca_file"));
        let one_file = with("cert_file = \"n.pem\"\nkey_file = \"n.pem\"\nca_file = \"ca.pem\"")
            .expect("parses");
        assert!(
            one_file.validate().is_err(),
            "the key beside the certificate"
        );
        let clients_are_peers = with(
            "cert_file = \"n.pem\"\nkey_file = \"k.pem\"\nca_file = \"ca.pem\"\nclient_ca_file = \"ca.pem\"",
        )
        .expect("parses");
        assert!(clients_are_peers.validate().is_err());
        let missing_files = with(
            "cert_file = \"/nonexistent/n.pem\"\nkey_file = \"/nonexistent/k.pem\"\nca_file = \"/nonexistent/ca.pem\"",
        )
        .expect("parses");
        assert!(
            missing_files.validate().is_ok(),
            "validate reads no files: they are loaded at startup"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = VALID.replace("[raft]", "typo = 1\n[raft]");
        assert!(toml::from_str::<NodeConfig>(&text).is_err());
    }

    #[test]
    fn node_must_be_a_member_with_matching_addresses() {
        let c: NodeConfig = toml::from_str(&VALID.replace("id = 2\n", "id = 3\n")).expect("parses");
        assert!(c.validate().is_err());
        let c: NodeConfig = toml::from_str(&VALID.replace(
            "raft_addr = \"127.0.0.1:7102\"\n",
            "raft_addr = \"127.0.0.1:7199\"\n",
        ))
        .expect("parses");
        assert!(c.validate().is_err());
    }

    #[test]
    fn every_shipped_cluster_config_loads() {
        // Taken at run time (cargo sets it then too), so a test binary built from another
        // checkout sharing the target directory still reads this checkout's files.
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
            || env!("CARGO_MANIFEST_DIR").into(),
            std::path::PathBuf::from,
        );
        let root = manifest_dir.join("../../cluster-config");
        let mut seen = 0;
        for cluster in std::fs::read_dir(&root).expect("cluster-config exists") {
            for file in std::fs::read_dir(cluster.expect("entry").path()).expect("a cluster folder")
            {
                let path = file.expect("entry").path();
                if path.extension().is_some_and(|e| e == "toml") {
                    NodeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    seen += 1;
                }
            }
        }
        assert!(seen >= 3, "found only {seen} configs");
    }
}
