//! Daemon settings: defaults, an optional TOML file (`--config`), and flags,
//! merged in that order (flags win).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mpreg_query::SqlLimits;
use serde::Deserialize;

use crate::error::{Error, Result};

mod credentials;
mod federation;
mod limits;
mod secrets;

pub use federation::{FederationSettings, PolicyDirectory};

pub use credentials::{Credential, CredentialFile};
pub use limits::{CacheLimits, PubSubLimits, RpcLimits, SlowConsumerPolicy, TransportLimits};
pub use secrets::{SecretFiles, Secrets};

/// Default client + peer listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6666";
/// Default admin HTTP listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:6670";
/// Default `metrics_max_label_values`.
pub const DEFAULT_METRICS_MAX_LABEL_VALUES: usize = 100;
/// Default `min_free_disk_bytes`.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 256 << 20;
/// Default largest log entry (`max_entry_bytes`).
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 8 << 20;
/// Highest `max_entry_bytes`: an entry must fit one AppendEntries frame
/// ([`PEER_BATCH_BYTES`]).
pub const MAX_ENTRY_BYTES: usize = PEER_BATCH_BYTES / 2;
/// Most bytes of entries one AppendEntries request carries; larger batches
/// are split (openraft's `PayloadTooLarge`). Well under the peer frame
/// limit, so replication always makes progress.
pub const PEER_BATCH_BYTES: usize = 32 << 20;
/// Default cluster id of a node started without `--cluster-id`.
pub const DEFAULT_CLUSTER_ID: &str = "local";

/// Whether `url` names a node (its client listener): `ws://` or `wss://`.
pub fn is_node_url(url: &str) -> bool {
    url.starts_with("ws://") || url.starts_with("wss://")
}

/// Whether `id` (a node, cluster or credential name) is 1-128 characters of
/// letters, digits, '-', '_' or '.'.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Settings a config file may hold; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub pg_listen: Option<SocketAddr>,
    pub ready_file: Option<PathBuf>,
    pub listening_file: Option<PathBuf>,
    pub node_id: Option<String>,
    pub cluster_id: Option<String>,
    pub advertise_url: Option<String>,
    pub join: Option<String>,
    pub peers: Option<Vec<String>>,
    pub log: Option<String>,
    pub log_format: Option<LogFormat>,
    pub snapshot_interval: Option<u64>,
    pub log_retention: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub max_entry_bytes: Option<usize>,
    pub min_free_disk_bytes: Option<u64>,
    pub max_frame_bytes: Option<usize>,
    pub max_in_flight_per_connection: Option<usize>,
    pub max_in_flight_bytes_per_connection: Option<usize>,
    pub max_connections: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub max_commands_per_request: Option<usize>,
    pub subscriber_buffer: Option<usize>,
    pub slow_consumer_policy: Option<SlowConsumerPolicy>,
    pub max_payload_bytes: Option<usize>,
    pub backlog_seconds: Option<u64>,
    pub backlog_bytes: Option<usize>,
    pub sql_timeout_ms: Option<u64>,
    pub sql_memory_limit_bytes: Option<usize>,
    pub sql_max_rows: Option<usize>,
    pub sql_max_concurrent: Option<usize>,
    pub metrics_max_label_values: Option<usize>,
    pub cache_memory_bytes: Option<usize>,
    pub cache_max_value_bytes: Option<usize>,
    pub federate: Option<Vec<String>>,
    pub announce_interval_seconds: Option<u64>,
    pub route_ttl_seconds: Option<u64>,
    pub link_dead_seconds: Option<u64>,
    pub max_routes_per_dest: Option<u32>,
    pub hold_down_seconds: Option<u64>,
    pub flap_threshold: Option<u32>,
    pub flap_window_seconds: Option<u64>,
    pub require_signatures: Option<bool>,
    pub key_overlap_seconds: Option<u64>,
    pub hop_budget: Option<u8>,
    pub import_policy: Option<PolicyDirectory>,
    pub export_policy: Option<PolicyDirectory>,
    pub cluster_secret_file: Option<PathBuf>,
    pub link_secret_files: Option<BTreeMap<String, PathBuf>>,
    pub require_link_secrets: Option<bool>,
    pub credentials: Option<Vec<CredentialFile>>,
    pub open_health_endpoints: Option<bool>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_client_ca_file: Option<PathBuf>,
    pub admin_tls: Option<bool>,
}

impl FileConfig {
    /// Reads a TOML config file; unknown keys are an error.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| Error::BadConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// The settings a node runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// PostgreSQL wire listener for the SQL tables; off unless set.
    pub pg_listen: Option<SocketAddr>,
    pub ready_file: Option<PathBuf>,
    /// Written as soon as the listeners are bound (before the node is ready).
    pub listening_file: Option<PathBuf>,
    /// Node id to use; a new dir without one gets a generated id.
    pub node_id: Option<String>,
    /// Cluster id to use; a new dir without one joins [`DEFAULT_CLUSTER_ID`].
    pub cluster_id: Option<String>,
    /// The URL other nodes reach this one at; default `ws://<listen>`.
    pub advertise_url: Option<String>,
    /// First start: join the cluster of this member (`ws://...`).
    pub join: Option<String>,
    /// First start: form a cluster with these members (their client URLs;
    /// this node's own URL may be among them).
    pub peers: Vec<String>,
    pub log: String,
    pub log_format: LogFormat,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_interval: u64,
    /// Entries kept in the log behind the last snapshot.
    pub log_retention: u64,
    /// Lower bound of the raft election timeout (upper bound is twice it).
    pub election_timeout: Duration,
    /// Largest log entry (all events proposed together), encoded; an event
    /// larger on its own is refused before it is proposed.
    pub max_entry_bytes: usize,
    /// Writes are refused while the data dir's filesystem has fewer bytes
    /// free than this (0: never).
    pub min_free_disk_bytes: u64,
    /// Distinct values a metric label taken from user input (function and
    /// queue names) gets its own series for; the rest share `_other`.
    pub metrics_max_label_values: usize,
    /// Client connection limits.
    pub transport: TransportLimits,
    /// RPC engine limits.
    pub rpc: RpcLimits,
    /// Pub/sub limits.
    pub pubsub: PubSubLimits,
    /// Limits of each SQL query.
    pub sql: SqlLimits,
    /// Cache memory tier and value limits.
    pub cache: CacheLimits,
    /// Links to other clusters and route control.
    pub federation: FederationSettings,
    /// The secrets peers prove at link setup.
    pub secrets: SecretFiles,
    /// Client credentials this node proposes at start and on reload.
    pub credentials: Vec<CredentialFile>,
    /// Whether `/health`, `/status` and `/metrics` answer without a token
    /// while credentials are required.
    pub open_health_endpoints: bool,
    /// TLS on `--listen`: the certificate chain and key files.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The CA certificates trusted when connecting to `wss://` nodes.
    pub tls_ca_file: Option<PathBuf>,
    /// With it, every connection to `--listen` (and to admin HTTP with
    /// `admin_tls`) must present a certificate these CA certificates sign,
    /// and a member's certificate must name its node (mutual TLS).
    pub tls_client_ca_file: Option<PathBuf>,
    /// Admin HTTP over TLS too (`https://`), with the same certificate.
    pub admin_tls: bool,
    /// The config file the settings came from, read again on reload.
    pub config_file: Option<PathBuf>,
}

impl Config {
    /// Defaults for a node on `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Config {
            data_dir,
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            admin_listen: DEFAULT_ADMIN_LISTEN.parse().expect("valid default address"),
            pg_listen: None,
            ready_file: None,
            listening_file: None,
            node_id: None,
            cluster_id: None,
            advertise_url: None,
            join: None,
            peers: Vec::new(),
            log: "info,openraft=warn".to_string(),
            log_format: LogFormat::Text,
            snapshot_interval: 10_000,
            log_retention: 1_000,
            election_timeout: Duration::from_millis(500),
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
            metrics_max_label_values: DEFAULT_METRICS_MAX_LABEL_VALUES,
            transport: TransportLimits::default(),
            rpc: RpcLimits::default(),
            pubsub: PubSubLimits::default(),
            sql: SqlLimits::default(),
            cache: CacheLimits::default(),
            federation: FederationSettings::default(),
            secrets: SecretFiles::default(),
            credentials: Vec::new(),
            open_health_endpoints: true,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            tls_client_ca_file: None,
            admin_tls: false,
            config_file: None,
        }
    }

    /// Applies the settings a config file holds.
    pub fn merge_file(&mut self, file: FileConfig) {
        let FileConfig {
            data_dir,
            listen,
            admin_listen,
            pg_listen,
            ready_file,
            listening_file,
            node_id,
            cluster_id,
            advertise_url,
            join,
            peers,
            log,
            log_format,
            snapshot_interval,
            log_retention,
            election_timeout_ms,
            max_entry_bytes,
            min_free_disk_bytes,
            max_frame_bytes,
            max_in_flight_per_connection,
            max_in_flight_bytes_per_connection,
            max_connections,
            request_timeout_ms,
            max_commands_per_request,
            subscriber_buffer,
            slow_consumer_policy,
            max_payload_bytes,
            backlog_seconds,
            backlog_bytes,
            sql_timeout_ms,
            sql_memory_limit_bytes,
            sql_max_rows,
            sql_max_concurrent,
            metrics_max_label_values,
            cache_memory_bytes,
            cache_max_value_bytes,
            federate,
            announce_interval_seconds,
            route_ttl_seconds,
            link_dead_seconds,
            max_routes_per_dest,
            hold_down_seconds,
            flap_threshold,
            flap_window_seconds,
            require_signatures,
            key_overlap_seconds,
            hop_budget,
            import_policy,
            export_policy,
            cluster_secret_file,
            link_secret_files,
            require_link_secrets,
            credentials,
            open_health_endpoints,
            tls_cert_file,
            tls_key_file,
            tls_ca_file,
            tls_client_ca_file,
            admin_tls,
        } = file;
        if let Some(v) = data_dir {
            self.data_dir = v;
        }
        if let Some(v) = listen {
            self.listen = v;
        }
        if let Some(v) = admin_listen {
            self.admin_listen = v;
        }
        self.pg_listen = pg_listen.or(self.pg_listen.take());
        self.ready_file = ready_file.or(self.ready_file.take());
        self.listening_file = listening_file.or(self.listening_file.take());
        self.node_id = node_id.or(self.node_id.take());
        self.cluster_id = cluster_id.or(self.cluster_id.take());
        self.advertise_url = advertise_url.or(self.advertise_url.take());
        self.join = join.or(self.join.take());
        if let Some(v) = peers {
            self.peers = v;
        }
        if let Some(v) = log {
            self.log = v;
        }
        if let Some(v) = log_format {
            self.log_format = v;
        }
        if let Some(v) = snapshot_interval {
            self.snapshot_interval = v;
        }
        if let Some(v) = log_retention {
            self.log_retention = v;
        }
        if let Some(v) = max_entry_bytes {
            self.max_entry_bytes = v;
        }
        if let Some(v) = min_free_disk_bytes {
            self.min_free_disk_bytes = v;
        }
        if let Some(v) = election_timeout_ms {
            self.election_timeout = Duration::from_millis(v);
        }
        if let Some(v) = max_frame_bytes {
            self.transport.max_frame_bytes = v;
        }
        if let Some(v) = max_in_flight_bytes_per_connection {
            self.transport.max_in_flight_bytes = v;
        }
        if let Some(v) = max_in_flight_per_connection {
            self.transport.max_in_flight = v;
        }
        if let Some(v) = max_connections {
            self.transport.max_connections = v;
        }
        if let Some(v) = request_timeout_ms {
            self.rpc.request_timeout = Duration::from_millis(v);
        }
        if let Some(v) = max_commands_per_request {
            self.rpc.max_commands = v;
        }
        if let Some(v) = subscriber_buffer {
            self.pubsub.subscriber_buffer = v;
        }
        if let Some(v) = slow_consumer_policy {
            self.pubsub.slow_consumer = v;
        }
        if let Some(v) = max_payload_bytes {
            self.pubsub.max_payload_bytes = v;
        }
        if let Some(v) = backlog_seconds {
            self.pubsub.backlog_window = Duration::from_secs(v);
        }
        if let Some(v) = backlog_bytes {
            self.pubsub.backlog_bytes = v;
        }
        if let Some(v) = sql_timeout_ms {
            self.sql.timeout = Duration::from_millis(v);
        }
        if let Some(v) = sql_memory_limit_bytes {
            self.sql.memory_limit_bytes = v;
        }
        if let Some(v) = sql_max_rows {
            self.sql.max_rows = v;
        }
        if let Some(v) = sql_max_concurrent {
            self.sql.max_concurrent = v;
        }
        if let Some(v) = metrics_max_label_values {
            self.metrics_max_label_values = v;
        }
        if let Some(v) = cache_memory_bytes {
            self.cache.memory_bytes = v;
        }
        if let Some(v) = cache_max_value_bytes {
            self.cache.max_value_bytes = v;
        }
        let federation = &mut self.federation;
        if let Some(v) = federate {
            federation.federate = v;
        }
        if let Some(v) = announce_interval_seconds {
            federation.announce_interval = Duration::from_secs(v);
        }
        if let Some(v) = route_ttl_seconds {
            federation.route_ttl = Duration::from_secs(v);
        }
        if let Some(v) = link_dead_seconds {
            federation.link_dead = Duration::from_secs(v);
        }
        if let Some(v) = max_routes_per_dest {
            federation.max_routes_per_dest = v;
        }
        if let Some(v) = hold_down_seconds {
            federation.damping.hold_down_ms = v.saturating_mul(1000);
        }
        if let Some(v) = flap_threshold {
            federation.damping.flap_threshold = v;
        }
        if let Some(v) = flap_window_seconds {
            federation.damping.flap_window_ms = v.saturating_mul(1000);
        }
        if let Some(v) = hop_budget {
            federation.hop_budget = v;
        }
        if let Some(v) = require_signatures {
            federation.require_signatures = v;
        }
        if let Some(v) = key_overlap_seconds {
            federation.key_overlap = Duration::from_secs(v);
        }
        if let Some(v) = import_policy {
            federation.import = v;
        }
        if let Some(v) = export_policy {
            federation.export = v;
        }
        let secrets = &mut self.secrets;
        secrets.cluster = cluster_secret_file.or(secrets.cluster.take());
        if let Some(v) = link_secret_files {
            secrets.links = v;
        }
        if let Some(v) = require_link_secrets {
            secrets.require_links = v;
        }
        if let Some(v) = credentials {
            self.credentials = v;
        }
        if let Some(v) = open_health_endpoints {
            self.open_health_endpoints = v;
        }
        self.tls_cert_file = tls_cert_file.or(self.tls_cert_file.take());
        self.tls_key_file = tls_key_file.or(self.tls_key_file.take());
        self.tls_ca_file = tls_ca_file.or(self.tls_ca_file.take());
        self.tls_client_ca_file = tls_client_ca_file.or(self.tls_client_ca_file.take());
        if let Some(v) = admin_tls {
            self.admin_tls = v;
        }
    }

    /// Longest a write waits for a leader to take it, or for its commit:
    /// long enough for a few elections.
    pub fn propose_timeout(&self) -> Duration {
        (self.election_timeout * 20).max(Duration::from_secs(5))
    }

    /// Refuses settings that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.join.is_some() && !self.peers.is_empty() {
            return Err(Error::InvalidSetting(
                "--join and --peers exclude each other: join a running cluster, or form a new one"
                    .into(),
            ));
        }
        let node_urls = || {
            self.join
                .iter()
                .chain(&self.peers)
                .chain(&self.advertise_url)
                .chain(&self.federation.federate)
        };
        for url in node_urls() {
            if !is_node_url(url) {
                return Err(Error::InvalidSetting(format!(
                    "{url:?} is not a node URL: expected ws://host:port"
                )));
            }
        }
        if self.admin_tls && self.tls_cert_file.is_none() {
            return Err(Error::InvalidSetting(
                "admin_tls (--admin-tls) serves the certificate of tls_cert_file: set it (and tls_key_file)".into(),
            ));
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(Error::InvalidSetting(
                "tls_client_ca_file (--tls-client-ca) asks for client certificates in the TLS handshake of --listen, which needs TLS there: set tls_cert_file and tls_key_file".into(),
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(Error::InvalidSetting(
                "tls_cert_file (--tls-cert) and tls_key_file (--tls-key) go together".into(),
            ));
        }
        let reaches_wss = node_urls().any(|url| url.starts_with("wss://"));
        if (reaches_wss || self.tls_cert_file.is_some()) && self.tls_ca_file.is_none() {
            return Err(Error::InvalidSetting(
                "a node serving TLS (its members connect to each other over wss://) or reaching nodes over wss:// needs tls_ca_file (--tls-ca): the CA certificates to trust"
                    .into(),
            ));
        }
        let federation = &self.federation;
        if federation.announce_interval.is_zero()
            || federation.link_dead.is_zero()
            || federation.max_routes_per_dest == 0
            || federation.route_ttl <= federation.announce_interval
        {
            return Err(Error::InvalidSetting(format!(
                "announce_interval_seconds, link_dead_seconds and max_routes_per_dest must be at least 1, and route_ttl_seconds ({}) above announce_interval_seconds ({})",
                federation.route_ttl.as_secs(),
                federation.announce_interval.as_secs()
            )));
        }
        if self.snapshot_interval == 0 {
            return Err(Error::InvalidSetting(
                "snapshot_interval must be at least 1".into(),
            ));
        }
        if self.pubsub.subscriber_buffer == 0 {
            return Err(Error::InvalidSetting(
                "subscriber_buffer must be at least 1".into(),
            ));
        }
        if self.transport.max_frame_bytes < 1024
            || self.transport.max_in_flight == 0
            || self.transport.max_connections == 0
            || self.rpc.max_commands == 0
        {
            return Err(Error::InvalidSetting(
                "max_frame_bytes must be at least 1024, max_in_flight_per_connection, max_connections and max_commands_per_request at least 1"
                    .into(),
            ));
        }
        let bytes = self.transport.max_in_flight_bytes;
        if bytes < self.transport.max_frame_bytes || u32::try_from(bytes).is_err() {
            return Err(Error::InvalidSetting(format!(
                "max_in_flight_bytes_per_connection ({bytes}) must be at least max_frame_bytes ({}) and below 4 GiB",
                self.transport.max_frame_bytes
            )));
        }
        if self.metrics_max_label_values == 0 {
            return Err(Error::InvalidSetting(
                "metrics_max_label_values must be at least 1".into(),
            ));
        }
        if self.sql.timeout.is_zero()
            || self.sql.memory_limit_bytes < 1 << 20
            || self.sql.max_rows == 0
            || self.sql.max_concurrent == 0
        {
            return Err(Error::InvalidSetting(
                "sql_timeout_ms, sql_max_rows and sql_max_concurrent must be at least 1, sql_memory_limit_bytes at least 1048576"
                    .into(),
            ));
        }
        if self.cache.max_value_bytes == 0 {
            return Err(Error::InvalidSetting(
                "cache_max_value_bytes must be at least 1".into(),
            ));
        }
        if !(1024..=MAX_ENTRY_BYTES).contains(&self.max_entry_bytes) {
            return Err(Error::InvalidSetting(format!(
                "max_entry_bytes must be between 1024 and {MAX_ENTRY_BYTES} (a raft batch of peer frames must hold one entry)"
            )));
        }
        if self.election_timeout < Duration::from_millis(50) {
            return Err(Error::InvalidSetting(
                "election_timeout_ms must be at least 50".into(),
            ));
        }
        for (what, id) in [("node_id", &self.node_id), ("cluster_id", &self.cluster_id)] {
            if let Some(id) = id.as_deref().filter(|id| !valid_id(id)) {
                return Err(Error::InvalidSetting(format!(
                    "{what} {id:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn file_settings_apply_and_unknown_keys_fail() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:7000\"\nsnapshot_interval = 5\nlog_format = \"json\"",
        )
        .unwrap();
        let mut config = Config::new("d".into());
        config.merge_file(file);
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.snapshot_interval, 5);
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
    }

    #[test]
    fn bad_ids_are_refused() {
        let mut config = Config::new("d".into());
        config.node_id = Some("a b".into());
        assert!(config.validate().is_err());
        config.node_id = Some("node-1".into());
        assert!(config.validate().is_ok());
    }
}
