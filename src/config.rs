//! The configuration file: serde structs that mirror the TOML, and `validate()`, which turns them
//! into [`Config`], the types the program runs on.
//!
//! Every error is collected and reported at once, each with where it is (`proxy.upstream`,
//! `rule #3 ("delete user").path`). TOML syntax errors stop parsing, so they come alone; structural
//! errors are found section by section and rule by rule, so one typo does not hide the others.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::actor::{actor_location, ActorChain, ActorFile};
use crate::log::head::LogSigner;
use crate::redact::{RedactFile, Redactor};
use crate::rules::{RouteSemantics, RuleSet};
use crate::units::{parse_duration, parse_size};

/// One problem in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub location: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(location: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            location: location.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.location, self.message)
    }
}

/// All the problems of one configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        writeln!(
            formatter,
            "{}: {count} error{}",
            self.file,
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            writeln!(formatter, "  - {error}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// File structs: exactly the TOML.
// ---------------------------------------------------------------------------------------------

/// `[proxy]`: the listener the app's clients connect to and the app behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// Address to listen on, e.g. "0.0.0.0:8080".
    pub listen: Option<String>,
    /// The app: "host:port" or "http://host:port".
    pub upstream: Option<String>,
    /// Peers whose X-Forwarded-For / Forwarded / identity headers are believed (CIDRs or addresses).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Largest request or response body parsed for `*.body:` values; larger ones stream through
    /// unparsed and the fields are recorded as missing.
    pub max_body_capture: Option<String>,
    /// Longest wait for a client's request head, counted from accept for a connection's first
    /// request (so silent connections cannot hold `max_connections`); also the keep-alive idle
    /// limit.
    pub header_read_timeout: Option<String>,
    /// Longest wait to connect to the app.
    pub connect_timeout: Option<String>,
    /// Longest wait for the app's response head.
    pub upstream_timeout: Option<String>,
    /// How long an idle pooled connection to the app is kept.
    pub idle_timeout: Option<String>,
    /// Accept HTTP/2 (prior knowledge) from clients as well as HTTP/1.1.
    pub http2: Option<bool>,
    /// Most client connections served at once; more wait in the kernel's accept queue.
    pub max_connections: Option<usize>,
    /// At shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace: Option<String>,
    /// Threads serving requests (default: one per CPU core).
    pub worker_threads: Option<usize>,
    /// "strict" (default: RFC 3986 dot-segments removed, slashes merged, unreserved characters
    /// decoded, and that canonical path forwarded) or "none" (the path as sent).
    pub path_normalization: Option<String>,
    /// What `%2F`, `%5C` and a raw `\` in a path become: "reject" (default, 400 and recorded),
    /// "decode" (a path separator) or "keep" (encoded data inside the segment).
    pub escaped_slashes: Option<String>,
    /// How route templates match by default: "insensitive" (default) or "sensitive" to case.
    pub route_case: Option<String>,
    /// Whether a trailing slash matters by default: "optional" (default) or "strict".
    pub trailing_slash: Option<String>,
    /// Where a POST's method override is honoured from: header names, "query:NAME",
    /// "form:NAME". Default: the X-HTTP-Method-Override, X-HTTP-Method and X-Method-Override
    /// headers, query:_method and form:_method; [] honours none and strips those headers.
    pub method_override: Option<Vec<String>>,
}

/// `[admin]`: the admin API and viewer listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address to listen on; defaults to 127.0.0.1:9090, never the proxy's.
    pub listen: Option<String>,
    /// Admin bearer tokens, stored as SHA-256 hashes.
    #[serde(default)]
    pub tokens: Vec<TokenFile>,
    /// Reverse proxies in front of the admin listener (CIDRs or addresses) that terminate TLS:
    /// when one of them says the scheme is https (`X-Forwarded-Proto` or `Forwarded: proto=`),
    /// the viewer's session cookie is marked `Secure`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// One `[[admin.tokens]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// Who holds the token; recorded as the actor of their queries.
    pub name: String,
    /// Lowercase hex SHA-256 of the token (`auditgate token` prints both).
    pub sha256: String,
    /// What the token may do: read, export, write.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Entries that may wait for the writer by default before audited requests wait for room.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// Most entries per group commit by default. Large commits are what make appends cheap: each
/// commit writes every index page its entries touched, so with varied keys (actors, resources,
/// addresses) the cost per entry falls steeply as commits grow (BENCHMARKS.md, "Writer batches").
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// How long the writer gathers a batch by default. Under load this sets how many entries share a
/// commit; it is also the longest an after-response entry waits in memory before its commit
/// starts.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// How often a running sidecar checkpoints its SQLite WAL by default.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// `[store]`: where entries go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// SQLite database file (the default store).
    pub path: Option<String>,
    /// "after-response" (default) or "write-ahead".
    pub durability: Option<String>,
    /// "normal" (survives process crashes) or "full" (fsync each group commit).
    pub sync: Option<String>,
    /// Entries that may wait for the writer before new audited requests wait for room.
    pub queue_capacity: Option<usize>,
    /// Most entries committed in one transaction (default [`DEFAULT_BATCH_SIZE`]).
    pub batch_size: Option<usize>,
    /// How long the writer lingers to gather a batch after the first entry arrives (default
    /// [`DEFAULT_FLUSH_INTERVAL`]). Requests waiting on a write-ahead intent or an event are
    /// never lingered on.
    pub flush_interval: Option<String>,
    /// Write-ahead requests whose entry cannot be made durable: "reject" (503, the default) or
    /// "forward" (counted and logged loudly).
    pub on_store_failure: Option<String>,
    /// How long a write waits for a database lock held by another process before it fails.
    pub busy_timeout: Option<String>,
    /// SQLite: how often the write-ahead log is copied into the database file and emptied
    /// (default "60s"; also done at every clean stop).
    pub checkpoint_interval: Option<String>,
    /// A PostgreSQL database shared by a fleet of sidecars, instead of `path`:
    /// "postgres://USER@HOST:PORT/DBNAME" (or libpq's "host=... user=..." form). Each sidecar
    /// writes its own log (`[log] log_id`) and answers queries over all of them. TLS as in
    /// libpq: `?sslmode=disable|prefer|require|verify-ca|verify-full` (default prefer) and
    /// `sslrootcert=PATH` (a PEM CA file, relative to this file; without it the verify modes
    /// trust the system's CAs). `require` alone checks no certificate: it resists passive
    /// eavesdropping only.
    pub url: Option<String>,
    /// The environment variable that holds the PostgreSQL password, so the file names none
    /// (e.g. one set from a Kubernetes Secret).
    pub password_env: Option<String>,
    /// Where entries the store refuses wait (NDJSON) until it takes them again. Default: beside
    /// the SQLite file, or "data/spill.ndjson" with `url`.
    pub spill_file: Option<String>,
    /// PostgreSQL: idle reader connections kept for the admin API (default 4).
    pub pool_size: Option<usize>,
    /// PostgreSQL: hold an advisory lock on this sidecar's log while running, so a second
    /// sidecar with the same log_id is refused (default true; turn off for databases without
    /// advisory locks, such as CockroachDB).
    pub lock_log: Option<bool>,
    /// PostgreSQL: longest wait for a connection (default "5s").
    pub connect_timeout: Option<String>,
}

/// `[log]`: the log's identity, and its signed tree heads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// Name of this sidecar's log; defaults to the host name.
    pub log_id: Option<String>,
    /// The origin of the log's checkpoints (their first line, and the key name of their
    /// signature), e.g. "audit.example.com/orders"; defaults to the log id.
    pub origin: Option<String>,
    /// Ed25519 private key (PKCS#8 PEM, made by `auditgate keygen`) that signs tree heads.
    /// Without it the Merkle tree is still kept, but no head is signed or published.
    pub signing_key: Option<String>,
    /// Sign a head once this many entries were added since the last one (default 1000).
    pub sign_every: Option<u64>,
    /// Sign a head at least this often while entries are being added (default "10s").
    pub sign_interval: Option<String>,
    /// Sign a head this often even when nothing was added, so that a quiet log can prove it was
    /// quiet rather than cut off (default "1h").
    pub heartbeat_interval: Option<String>,
    /// Where every signed head is also written, outside the database: "file:PATH" (one JSON line
    /// appended and fsynced per head) or "http://HOST/PATH" / "https://HOST/PATH" (the JSON
    /// POSTed; https checks the certificate chain and the host name). A URL target written as
    /// `{ target = "https://HOST/PATH", format = "checkpoint" }` receives the head as a C2SP
    /// checkpoint (text/plain) instead of JSON.
    #[serde(default)]
    pub publish_heads: Vec<toml::Value>,
    /// Longest wait for a URL target to accept a head (default "5s"). At shutdown, a head a URL
    /// refused is retried for up to twice this plus a second before it is given up (and logged).
    pub publish_timeout: Option<String>,
    /// PEM file of the CAs trusted for https:// targets in publish_heads (a private CA);
    /// default: the system's CA store. Relative to this file.
    pub publish_ca_file: Option<String>,
}

/// `[retention]`: how long entries are kept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Entries older than this are pruned: the row is deleted, its leaf hash kept. Absent: kept
    /// forever (unless a rule says otherwise).
    pub max_age: Option<String>,
    /// How often the background task prunes (default "1h").
    pub prune_interval: Option<String>,
    /// Overrides by action prefix; the longest matching prefix wins.
    #[serde(default)]
    pub rules: Vec<RetentionRuleFile>,
}

/// One `[[retention.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleFile {
    /// Actions starting with this (case-sensitive), e.g. "auth.".
    pub action_prefix: String,
    /// Maximum age of those entries, e.g. "30d".
    pub max_age: String,
}

/// `[stream]`: every committed entry as one JSON line, for SIEM shippers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamFile {
    /// "stdout", or a file path that Vector, Fluent Bit or Filebeat tails.
    pub ndjson: Option<String>,
    /// A file is rotated before it grows past this (default "100MiB").
    pub max_bytes: Option<String>,
    /// Rotated files kept: PATH.1 ... PATH.N (default 5).
    pub keep: Option<usize>,
    /// What each line is: "ndjson" (the default: the entry as the admin API returns it) or
    /// "ocsf" (an OCSF API Activity event).
    pub format: Option<String>,
}

/// `[unmatched]`: traffic no rule matched.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmatchedFile {
    /// "none", "mutations" (default: everything but GET/HEAD/OPTIONS/TRACE) or "all".
    pub record: Option<String>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique name, recorded in each entry the rule produces.
    pub name: Option<String>,
    /// Method or list of methods; absent or "*" matches any.
    pub method: Option<OneOrMany>,
    /// Route template: `/api/users/{id}`, `/files/{*rest}`.
    pub path: Option<String>,
    /// Regex over the canonical path (matched as written: no case folding, no optional trailing
    /// slash), with named captures as parameters.
    pub path_regex: Option<String>,
    /// Host name, or `*.example.com`.
    pub host: Option<String>,
    /// Request header conditions: exact value, "*" for present, "~regex".
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameter conditions, as for headers.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// "2xx", 204, [401, 403], "any" (the default).
    pub status: Option<toml::Value>,
    /// Action name template: "user.deleted", "{kind}.updated".
    pub action: Option<String>,
    /// Resource type and id templates.
    pub resource: Option<ResourceFile>,
    /// Metadata key -> value source or template.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Actor fields taken from the exchange (e.g. the attempted login of a failed login).
    pub actor: Option<RuleActorFile>,
    /// Tenant template.
    pub tenant: Option<String>,
    /// Record nothing for matching traffic (health checks).
    #[serde(default)]
    pub skip: bool,
    /// "insensitive" or "sensitive": overrides `[proxy] route_case` for this rule's path.
    pub route_case: Option<String>,
    /// "optional" or "strict": overrides `[proxy] trailing_slash` for this rule's path.
    pub trailing_slash: Option<String>,
    /// Hold the request until its entry is durable (overrides `[store] durability`).
    pub write_ahead: Option<bool>,
    /// For write-ahead: "reject" or "forward" when the entry cannot be stored (overrides
    /// `[store] on_store_failure`).
    pub on_store_failure: Option<String>,
    /// The OCSF activity of the entries this rule records: "create", "read", "update",
    /// "delete" or "other" (default: from the action's last word, else the HTTP method).
    pub ocsf_activity: Option<String>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::One(item) => vec![item.clone()],
            OneOrMany::Many(items) => items.clone(),
        }
    }
}

/// `resource = { type = "...", id = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceFile {
    pub r#type: Option<String>,
    pub id: Option<String>,
}

/// `actor = { id = "...", email = "...", name = "..." }` on a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleActorFile {
    pub id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Runtime config: what the program runs on.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmatchedRecord {
    None,
    Mutations,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    AfterResponse,
    WriteAhead,
}

/// What a write-ahead request does when its entry cannot be made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// Answer 503 without forwarding (fail closed).
    Reject,
    /// Forward anyway, counted in `auditgate_forwarded_unrecorded_total` and logged.
    Forward,
}

impl StoreFailure {
    pub fn parse(text: &str) -> Option<StoreFailure> {
        match text {
            "reject" => Some(StoreFailure::Reject),
            "forward" => Some(StoreFailure::Forward),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Normal,
    Full,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `host:port` of the app.
    pub upstream: String,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_capture: usize,
    pub header_read_timeout: Duration,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2: bool,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// `None`: one per core.
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Export,
    Write,
}

impl Scope {
    /// The scope a config (or `auditgate token --scopes`) names: read, export or write.
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "export" => Some(Scope::Export),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub tokens: Vec<AdminToken>,
    /// TLS-terminating proxies whose word on the scheme is believed.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub durability: Durability,
    pub sync: SyncMode,
    pub queue_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub on_store_failure: StoreFailure,
    pub busy_timeout: Duration,
    /// How often a SQLite store's WAL is checkpointed (TRUNCATE) while running.
    pub checkpoint_interval: Duration,
    /// The shared PostgreSQL database; `None` for the SQLite file at `path`.
    pub postgres: Option<PostgresConfig>,
    /// Where refused entries wait, when not beside the SQLite file.
    pub spill_file: Option<PathBuf>,
}

/// A PostgreSQL store, validated.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Host, port, user, database, password (redacted by its Debug), timeouts.
    pub connection: postgres::Config,
    /// `sslmode` and `sslrootcert`, with the TLS client configuration built from them.
    pub tls: crate::store::postgres::ssl::PostgresTls,
    pub lock_log: bool,
    pub pool_size: usize,
}

impl StoreConfig {
    /// Where entries the store refuses are spilled (`spill_file`, or beside the database).
    pub fn spill_path(&self) -> PathBuf {
        if let Some(path) = &self.spill_file {
            return path.clone();
        }
        let mut name = self
            .path
            .file_name()
            .map(|name| name.to_os_string())
            .unwrap_or_default();
        name.push(".spill.ndjson");
        self.path.with_file_name(name)
    }
}

/// Where signed tree heads are published besides the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishTarget {
    /// Append one JSON line per head and fsync.
    File(PathBuf),
    /// POST the head's JSON (over TLS for an https URL).
    Url(http::Uri),
    /// POST the head as a C2SP checkpoint, a signed note (`format = "checkpoint"`).
    UrlCheckpoint(http::Uri),
}

impl fmt::Display for PublishTarget {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishTarget::File(path) => write!(formatter, "file:{}", path.display()),
            PublishTarget::Url(uri) => write!(formatter, "{uri}"),
            PublishTarget::UrlCheckpoint(uri) => write!(formatter, "{uri} (checkpoint)"),
        }
    }
}

/// Signed tree heads: when they are made and where they go.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub signing_key_path: Option<PathBuf>,
    /// `[log] origin` as written (validated); [`LogConfig::checkpoint_origin`] applies the default.
    pub origin: Option<String>,
    /// Loaded at config time, so a missing or unreadable key is a config error like any other.
    pub signer: Option<Arc<LogSigner>>,
    pub sign_every: u64,
    pub sign_interval: Duration,
    pub heartbeat_interval: Duration,
    pub publish_heads: Vec<PublishTarget>,
    pub publish_timeout: Duration,
    /// The TLS client of the https:// targets (their CAs from `publish_ca_file` or the system),
    /// built at load so an unreadable CA file is a config error; `None` without https targets.
    pub publish_tls: Option<Arc<rustls::ClientConfig>>,
}

impl LogConfig {
    /// The origin of the log's checkpoints: `[log] origin`, or else the log id (whose alphabet
    /// is always a valid origin).
    pub fn checkpoint_origin(&self, log_id: &str) -> String {
        self.origin.clone().unwrap_or_else(|| log_id.to_string())
    }

    /// The `file:` targets heads are published to.
    pub fn heads_files(&self) -> Vec<PathBuf> {
        self.publish_heads
            .iter()
            .filter_map(|target| match target {
                PublishTarget::File(path) => Some(path.clone()),
                PublishTarget::Url(_) | PublishTarget::UrlCheckpoint(_) => None,
            })
            .collect()
    }
}

/// One retention override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    pub action_prefix: String,
    pub max_age: Duration,
}

/// How long entries are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `None`: kept forever unless a rule applies.
    pub max_age: Option<Duration>,
    pub prune_interval: Duration,
    pub rules: Vec<RetentionRule>,
}

/// The part of the configuration that a reload (SIGHUP) may replace while running.
#[derive(Debug)]
pub struct Policy {
    pub rules: RuleSet,
    pub actors: ActorChain,
    pub hints: crate::hints::HintsConfig,
    /// What is never stored as it is (secrets) or stored masked or HMAC'd (`[redact]`).
    pub redact: Redactor,
    /// How a request's path and method are made canonical before the rules see them.
    pub canonical: crate::normalize::CanonicalConfig,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub log_id: String,
    pub log: LogConfig,
    pub retention: RetentionConfig,
    pub policy: Arc<Policy>,
    /// The NDJSON stream of committed entries, if configured.
    pub stream: Option<crate::stream::StreamConfig>,
    /// The file as parsed, for comparing with the next one at a reload.
    pub table: RawTable,
    /// Lowercase hex SHA-256 of the configuration text, logged at start and on reload and shown
    /// in `/metrics`, so an operator can tell which file is in force.
    pub sha256: String,
}

/// A configuration file as parsed. Never printed: it may hold secrets, such as the password in
/// a database URL.
#[derive(Clone, Default)]
pub struct RawTable(pub toml::Table);

impl std::fmt::Debug for RawTable {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "RawTable({} sections)", self.0.len())
    }
}

/// The environment variable naming the directory that relative data paths start from.
pub const DATA_DIR_VARIABLE: &str = "AUDITGATE_DATA_DIR";

/// The whole file, section by section, as TOML values (so each is checked on its own).
const SECTIONS: &[&str] = &[
    "proxy",
    "admin",
    "store",
    "log",
    "retention",
    "unmatched",
    "hints",
    "actor",
    "redact",
    "rule",
    "stream",
];

impl Config {
    /// Reads and validates a configuration file. Relative store paths are resolved against the
    /// file's directory, so a config means the same thing from any working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError::new("file", format!("cannot read: {error}"))],
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let data_dir = std::env::var_os(DATA_DIR_VARIABLE)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from);
        Config::parse_with_data_dir(&text, &base, data_dir.as_deref())
            .map_err(|errors| ConfigErrors { file, errors })
    }

    /// Parses and validates configuration text; `base` is the directory relative paths start from.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
        Config::parse_with_env(text, base, &crate::config_env::process_environment)
    }

    /// [`Config::parse`] with `${VAR}` references resolved by `lookup` instead of the process
    /// environment.
    pub fn parse_with_env(
        text: &str,
        base: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        Config::parse_with(text, base, None, lookup)
    }

    /// As [`Config::parse`], with relative data paths (the store, its spill file, the stream
    /// file, `file:` head targets) resolved against `data_dir` when given: a container keeps its
    /// configuration in a read-only mount and its data in a writable volume, wherever the
    /// configuration file sits.
    pub fn parse_with_data_dir(
        text: &str,
        base: &Path,
        data_dir: Option<&Path>,
    ) -> Result<Config, Vec<ConfigError>> {
        Config::parse_with(
            text,
            base,
            data_dir,
            &crate::config_env::process_environment,
        )
    }

    /// Parses and validates: relative paths start from `base` (data paths from `data_dir` when
    /// given), `${VAR}` references are resolved by `lookup`.
    pub fn parse_with(
        text: &str,
        base: &Path,
        data_dir: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        let data_base = data_dir.unwrap_or(base);
        let mut table: toml::Table = toml::from_str(text).map_err(|error| {
            let location = match error.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                }
                None => "file".to_string(),
            };
            vec![ConfigError::new(
                &location,
                error.message().trim().to_string(),
            )]
        })?;
        let mut errors = Vec::new();
        // `${VAR}` in string values, before anything reads them; a missing variable is one more
        // error among all the others.
        crate::config_env::substitute(&mut table, lookup, &mut errors);
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                errors.push(ConfigError::new(
                    key,
                    format!("unknown section (known: {})", SECTIONS.join(", ")),
                ));
            }
        }
        let proxy: Option<ProxyFile> = section(&table, "proxy", &mut errors);
        let admin: AdminFile = section(&table, "admin", &mut errors).unwrap_or_default();
        let store: StoreFile = section(&table, "store", &mut errors).unwrap_or_default();
        let log: LogFile = section(&table, "log", &mut errors).unwrap_or_default();
        let retention: RetentionFile =
            section(&table, "retention", &mut errors).unwrap_or_default();
        let stream: Option<StreamFile> = section(&table, "stream", &mut errors);
        let unmatched: UnmatchedFile =
            section(&table, "unmatched", &mut errors).unwrap_or_default();
        let hints_file: crate::hints::HintsFile =
            section(&table, "hints", &mut errors).unwrap_or_default();
        let hints = crate::hints::HintsConfig::from_file(&hints_file, &mut errors);
        let actors: Vec<(usize, ActorFile)> = array_section(
            &table,
            "actor",
            |index, value| actor_location(index, value.get("from").and_then(toml::Value::as_str)),
            &mut errors,
        );
        let redact: Option<RedactFile> = section(&table, "redact", &mut errors);
        let rules: Vec<(usize, RuleFile)> = array_section(
            &table,
            "rule",
            |index, value| {
                let name = value.get("name").and_then(toml::Value::as_str);
                crate::rules::rule_location(index, name)
            },
            &mut errors,
        );

        let proxy_file = proxy;
        let proxy = match &proxy_file {
            Some(proxy) => validate_proxy(proxy, &mut errors),
            None => {
                errors.push(ConfigError::new(
                    "proxy",
                    "missing: [proxy] needs at least `upstream`",
                ));
                None
            }
        };
        let admin = validate_admin(&admin, &mut errors);
        let store = validate_store(&store, data_base, &mut errors);
        let log_id = match log.log_id.clone() {
            Some(id) if valid_log_id(&id) => id,
            Some(id) => {
                errors.push(ConfigError::new(
                    "log.log_id",
                    format!("`{id}` must be 1-64 characters of letters, digits, '.', '_' or '-'"),
                ));
                String::new()
            }
            None => default_log_id(),
        };
        let log_config = validate_log(&log, base, data_base, &mut errors);
        let retention = validate_retention(&retention, &mut errors);
        let stream = stream
            .as_ref()
            .and_then(|stream| validate_stream(stream, data_base, &mut errors));
        let unmatched = match unmatched.record.as_deref() {
            None | Some("mutations") => UnmatchedRecord::Mutations,
            Some("none") => UnmatchedRecord::None,
            Some("all") => UnmatchedRecord::All,
            Some(other) => {
                errors.push(ConfigError::new(
                    "unmatched.record",
                    format!("`{other}` is not one of none, mutations, all"),
                ));
                UnmatchedRecord::Mutations
            }
        };
        let trusted = proxy
            .as_ref()
            .map(|proxy| proxy.trusted_proxies.clone())
            .unwrap_or_default();
        let actors = ActorChain::compile(&actors, &trusted, base)
            .map_err(|actor_errors| errors.extend(actor_errors));
        let redact = match &actors {
            Ok(actors) => Redactor::compile(redact.as_ref(), actors, &mut errors),
            Err(()) => Redactor::compile(redact.as_ref(), &ActorChain::empty(), &mut errors),
        };
        let rules: Vec<(usize, &RuleFile)> =
            rules.iter().map(|(index, rule)| (*index, rule)).collect();
        let canonical = crate::normalize::CanonicalConfig::compile(
            proxy_file
                .as_ref()
                .and_then(|file| file.path_normalization.as_deref()),
            proxy_file
                .as_ref()
                .and_then(|file| file.escaped_slashes.as_deref()),
            proxy_file
                .as_ref()
                .and_then(|file| file.method_override.as_deref()),
            &mut errors,
        );
        let semantics = RouteSemantics::default()
            .with(
                proxy_file
                    .as_ref()
                    .and_then(|file| file.route_case.as_deref()),
                proxy_file
                    .as_ref()
                    .and_then(|file| file.trailing_slash.as_deref()),
            )
            .unwrap_or_else(|messages| {
                errors.extend(
                    messages
                        .into_iter()
                        .map(|(key, message)| ConfigError::new(&format!("proxy.{key}"), message)),
                );
                RouteSemantics::default()
            });
        let rules = RuleSet::compile_indexed(&rules, unmatched, semantics)
            .map_err(|rule_errors| errors.extend(rule_errors));
        if let (Some(proxy), Some(admin)) = (&proxy, &admin) {
            if proxy.listen == admin.listen && proxy.listen.port() != 0 {
                errors.push(ConfigError::new(
                    "admin.listen",
                    "must differ from proxy.listen: the admin API is never served on the proxy port",
                ));
            }
        }
        match (proxy, admin, store, actors, rules) {
            (Some(proxy), Some(admin), Some(store), Ok(actors), Ok(rules)) if errors.is_empty() => {
                Ok(Config {
                    proxy,
                    admin,
                    store,
                    log_id,
                    log: log_config,
                    retention,
                    stream,
                    table: RawTable(table.clone()),
                    sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
                    policy: Arc::new(Policy {
                        rules,
                        actors,
                        hints,
                        redact,
                        canonical,
                    }),
                })
            }
            _ => Err(errors),
        }
    }
}

fn section<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let value = table.get(key)?;
    if !value.is_table() {
        errors.push(ConfigError::new(key, format!("must be a table: [{key}]")));
        return None;
    }
    match T::deserialize(value.clone()) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            errors.push(ConfigError::new(key, error.message().trim().to_string()));
            None
        }
    }
}

fn array_section<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    locate: impl Fn(usize, &toml::Value) -> String,
    errors: &mut Vec<ConfigError>,
) -> Vec<(usize, T)> {
    let Some(value) = table.get(key) else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        errors.push(ConfigError::new(
            key,
            format!("must be an array of tables: [[{key}]]"),
        ));
        return Vec::new();
    };
    let mut parsed = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match T::deserialize(item.clone()) {
            Ok(value) => parsed.push((index, value)),
            Err(error) => errors.push(ConfigError::new(
                &locate(index, item),
                error.message().trim().to_string(),
            )),
        }
    }
    parsed
}

fn parse_addr(location: &str, text: &str, errors: &mut Vec<ConfigError>) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(ConfigError::new(
                location,
                format!("`{text}` is not an address like 127.0.0.1:8080 or [::]:8080"),
            ));
            None
        }
    }
}

fn duration_or(
    location: &str,
    text: Option<&str>,
    default: Duration,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    match text {
        None => default,
        Some(text) => parse_duration(text).unwrap_or_else(|message| {
            errors.push(ConfigError::new(location, message));
            default
        }),
    }
}

/// [`duration_or`] for settings that must be longer than zero (intervals, periods).
pub(crate) fn positive_duration_or(
    location: &str,
    text: Option<&str>,
    default: Duration,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    let duration = duration_or(location, text, default, errors);
    if duration.is_zero() {
        errors.push(ConfigError::new(location, "must be longer than 0"));
        return default;
    }
    duration
}

/// Parses trusted proxy entries: CIDRs or single addresses.
pub fn parse_networks(
    location: &str,
    items: &[String],
    errors: &mut Vec<ConfigError>,
) -> Vec<IpNet> {
    let mut networks = Vec::new();
    for item in items {
        if let Ok(network) = item.parse::<IpNet>() {
            networks.push(network);
        } else if let Ok(addr) = item.parse::<std::net::IpAddr>() {
            networks.push(IpNet::from(addr));
        } else {
            errors.push(ConfigError::new(
                location,
                format!("`{item}` is not a CIDR like 10.0.0.0/8 or an address"),
            ));
        }
    }
    networks
}

fn validate_proxy(file: &ProxyFile, errors: &mut Vec<ConfigError>) -> Option<ProxyConfig> {
    let listen = parse_addr(
        "proxy.listen",
        file.listen.as_deref().unwrap_or("0.0.0.0:8080"),
        errors,
    );
    let upstream = match file.upstream.as_deref() {
        None => {
            errors.push(ConfigError::new(
                "proxy.upstream",
                "missing: the app's host:port, e.g. 127.0.0.1:3000",
            ));
            None
        }
        Some(text) => match normalize_upstream(text) {
            Ok(upstream) => Some(upstream),
            Err(message) => {
                errors.push(ConfigError::new("proxy.upstream", message));
                None
            }
        },
    };
    let trusted_proxies = parse_networks("proxy.trusted_proxies", &file.trusted_proxies, errors);
    let max_body_capture = match file.max_body_capture.as_deref() {
        None => 64 * 1024,
        Some(text) => match parse_size(text) {
            Ok(size) if size <= 64 * 1024 * 1024 => size as usize,
            Ok(_) => {
                errors.push(ConfigError::new(
                    "proxy.max_body_capture",
                    "must be at most 64MiB",
                ));
                0
            }
            Err(message) => {
                errors.push(ConfigError::new("proxy.max_body_capture", message));
                0
            }
        },
    };
    let header_read_timeout = duration_or(
        "proxy.header_read_timeout",
        file.header_read_timeout.as_deref(),
        Duration::from_secs(30),
        errors,
    );
    let connect_timeout = duration_or(
        "proxy.connect_timeout",
        file.connect_timeout.as_deref(),
        Duration::from_secs(5),
        errors,
    );
    let upstream_timeout = duration_or(
        "proxy.upstream_timeout",
        file.upstream_timeout.as_deref(),
        Duration::from_secs(60),
        errors,
    );
    let idle_timeout = duration_or(
        "proxy.idle_timeout",
        file.idle_timeout.as_deref(),
        Duration::from_secs(90),
        errors,
    );
    let shutdown_grace = duration_or(
        "proxy.shutdown_grace",
        file.shutdown_grace.as_deref(),
        Duration::from_secs(10),
        errors,
    );
    if file
        .worker_threads
        .is_some_and(|threads| threads == 0 || threads > 1024)
    {
        errors.push(ConfigError::new(
            "proxy.worker_threads",
            "must be between 1 and 1024",
        ));
    }
    let max_connections = file.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        errors.push(ConfigError::new(
            "proxy.max_connections",
            "must be at least 1",
        ));
    }
    Some(ProxyConfig {
        listen: listen?,
        upstream: upstream?,
        trusted_proxies,
        max_body_capture,
        header_read_timeout,
        connect_timeout,
        upstream_timeout,
        idle_timeout,
        http2: file.http2.unwrap_or(true),
        max_connections,
        shutdown_grace,
        worker_threads: file.worker_threads,
    })
}

/// Accepts `host:port` or `http://host:port[/]` and returns `host:port`.
fn normalize_upstream(text: &str) -> Result<String, String> {
    let rest = if let Some(rest) = text.strip_prefix("http://") {
        rest.trim_end_matches('/')
    } else if text.starts_with("https://") {
        return Err(
            "https upstreams are not supported; the app beside the sidecar speaks plain HTTP"
                .to_string(),
        );
    } else {
        text
    };
    let authority: http::uri::Authority = rest
        .parse()
        .map_err(|_| format!("`{text}` is not host:port"))?;
    if authority.port_u16().is_none() {
        return Err(format!("`{text}` needs a port, e.g. 127.0.0.1:3000"));
    }
    if rest.contains('/') || rest.contains('@') {
        return Err(format!(
            "`{text}` must be only host:port (no path or credentials)"
        ));
    }
    Ok(authority.to_string())
}

fn validate_admin(file: &AdminFile, errors: &mut Vec<ConfigError>) -> Option<AdminConfig> {
    let listen = parse_addr(
        "admin.listen",
        file.listen.as_deref().unwrap_or("127.0.0.1:9090"),
        errors,
    );
    let mut tokens = Vec::new();
    for (index, token) in file.tokens.iter().enumerate() {
        let location = format!("admin.tokens #{} ({:?})", index + 1, token.name);
        let mut sha256 = [0u8; 32];
        if hex::decode_to_slice(token.sha256.trim(), &mut sha256).is_err() {
            errors.push(ConfigError::new(
                &format!("{location}.sha256"),
                "must be 64 hex digits (the hash `auditgate token` prints, never the token itself)",
            ));
        }
        let mut scopes = Vec::new();
        for scope in &token.scopes {
            match Scope::parse(scope) {
                Some(scope) => scopes.push(scope),
                None => errors.push(ConfigError::new(
                    &format!("{location}.scopes"),
                    format!("`{scope}` is not one of read, export, write"),
                )),
            }
        }
        if token.scopes.is_empty() {
            errors.push(ConfigError::new(
                &format!("{location}.scopes"),
                "a token needs at least one scope",
            ));
        }
        tokens.push(AdminToken {
            name: token.name.clone(),
            sha256,
            scopes,
        });
    }
    let trusted_proxies = parse_networks("admin.trusted_proxies", &file.trusted_proxies, errors);
    Some(AdminConfig {
        listen: listen?,
        tokens,
        trusted_proxies,
    })
}

fn validate_store(
    file: &StoreFile,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<StoreConfig> {
    let path = resolve(base, file.path.as_deref().unwrap_or("data/audit.db"));
    let durability = match file.durability.as_deref() {
        None | Some("after-response") => Durability::AfterResponse,
        Some("write-ahead") => Durability::WriteAhead,
        Some(other) => {
            errors.push(ConfigError::new(
                "store.durability",
                format!("`{other}` is not one of after-response, write-ahead"),
            ));
            Durability::AfterResponse
        }
    };
    let sync = match file.sync.as_deref() {
        None | Some("normal") => SyncMode::Normal,
        Some("full") => SyncMode::Full,
        Some(other) => {
            errors.push(ConfigError::new(
                "store.sync",
                format!("`{other}` is not one of normal, full"),
            ));
            SyncMode::Normal
        }
    };
    let queue_capacity = file.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
    if queue_capacity == 0 {
        errors.push(ConfigError::new(
            "store.queue_capacity",
            "must be at least 1",
        ));
    }
    let batch_size = file.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    if batch_size == 0 {
        errors.push(ConfigError::new("store.batch_size", "must be at least 1"));
    }
    let flush_interval = duration_or(
        "store.flush_interval",
        file.flush_interval.as_deref(),
        DEFAULT_FLUSH_INTERVAL,
        errors,
    );
    let on_store_failure = match file.on_store_failure.as_deref() {
        None => StoreFailure::Reject,
        Some(text) => StoreFailure::parse(text).unwrap_or_else(|| {
            errors.push(ConfigError::new(
                "store.on_store_failure",
                format!("`{text}` is not one of reject, forward"),
            ));
            StoreFailure::Reject
        }),
    };
    let busy_timeout = duration_or(
        "store.busy_timeout",
        file.busy_timeout.as_deref(),
        Duration::from_secs(5),
        errors,
    );
    let checkpoint_interval = positive_duration_or(
        "store.checkpoint_interval",
        file.checkpoint_interval.as_deref(),
        DEFAULT_CHECKPOINT_INTERVAL,
        errors,
    );
    let postgres = validate_postgres(file, base, errors);
    let spill_file = match (&file.spill_file, &postgres) {
        (Some(spill), _) => Some(resolve(base, spill)),
        (None, Some(_)) => Some(base.join("data/spill.ndjson")),
        (None, None) => None,
    };
    if file.url.is_none() {
        for (key, set) in [
            ("store.password_env", file.password_env.is_some()),
            ("store.pool_size", file.pool_size.is_some()),
            ("store.lock_log", file.lock_log.is_some()),
            ("store.connect_timeout", file.connect_timeout.is_some()),
        ] {
            if set {
                errors.push(ConfigError::new(
                    key,
                    "applies to a PostgreSQL store only (set store.url)",
                ));
            }
        }
    }
    Some(StoreConfig {
        path,
        durability,
        sync,
        queue_capacity,
        batch_size,
        flush_interval,
        on_store_failure,
        busy_timeout,
        checkpoint_interval,
        postgres,
        spill_file,
    })
}

fn validate_stream(
    file: &StreamFile,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<crate::stream::StreamConfig> {
    use crate::stream::{StreamConfig, StreamFormat, StreamTarget};
    let format = match file.format.as_deref() {
        None | Some("ndjson") => StreamFormat::Ndjson,
        Some("ocsf") => StreamFormat::Ocsf,
        Some(other) => {
            errors.push(ConfigError::new(
                "stream.format",
                format!(
                    "`{}` is not a stream format: \"ndjson\" or \"ocsf\"",
                    other.chars().take(64).collect::<String>()
                ),
            ));
            StreamFormat::Ndjson
        }
    };
    let target = match file.ndjson.as_deref() {
        None | Some("") => {
            errors.push(ConfigError::new(
                "stream.ndjson",
                "missing: \"stdout\" or the path of a file to write",
            ));
            None
        }
        Some("stdout") => Some(StreamTarget::Stdout),
        Some(path) => Some(StreamTarget::File(resolve(base, path))),
    };
    let max_bytes = match file.max_bytes.as_deref() {
        None => 100 * 1024 * 1024,
        Some(text) => match parse_size(text) {
            Ok(bytes) if bytes >= 4096 => bytes,
            Ok(_) => {
                errors.push(ConfigError::new(
                    "stream.max_bytes",
                    "must be at least 4KiB",
                ));
                0
            }
            Err(message) => {
                errors.push(ConfigError::new("stream.max_bytes", message));
                0
            }
        },
    };
    let keep = file.keep.unwrap_or(5);
    if keep == 0 {
        errors.push(ConfigError::new("stream.keep", "must be at least 1"));
    }
    if target == Some(StreamTarget::Stdout) && (file.max_bytes.is_some() || file.keep.is_some()) {
        errors.push(ConfigError::new(
            "stream.max_bytes",
            "rotation applies to a file, not to stdout",
        ));
    }
    Some(StreamConfig {
        target: target?,
        max_bytes,
        keep,
        format,
    })
}

/// The `url` and its companions of `[store]`, when set. Every problem is reported; the URL's
/// text never appears in a message, since it may hold a password.
fn validate_postgres(
    file: &StoreFile,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<PostgresConfig> {
    let url = file.url.as_deref()?;
    let mut valid = true;
    if file.path.is_some() {
        errors.push(ConfigError::new(
            "store.url",
            "give either path (SQLite) or url (PostgreSQL), not both",
        ));
        valid = false;
    }
    let crate::store::postgres::ssl::ParsedUrl {
        config: mut connection,
        tls,
    } = match crate::store::postgres::ssl::parse_url(url, base) {
        Ok(parsed) => parsed,
        Err(message) => {
            errors.push(ConfigError::new("store.url", message));
            return None;
        }
    };
    let tls = match tls {
        Ok(tls) => Some(tls),
        Err(problems) => {
            for problem in problems {
                errors.push(ConfigError::new("store.url", problem));
            }
            valid = false;
            None
        }
    };
    if connection.get_hosts().is_empty() {
        errors.push(ConfigError::new(
            "store.url",
            "names no host (postgres://USER@HOST:PORT/DBNAME)",
        ));
        valid = false;
    }
    if connection.get_user().is_none() {
        errors.push(ConfigError::new(
            "store.url",
            "names no user (postgres://USER@HOST:PORT/DBNAME)",
        ));
        valid = false;
    }
    if let Some(variable) = &file.password_env {
        match std::env::var(variable) {
            Ok(password) if !password.is_empty() => {
                connection.password(password);
            }
            _ => {
                errors.push(ConfigError::new(
                    "store.password_env",
                    format!("environment variable {variable} is not set"),
                ));
                valid = false;
            }
        }
    }
    let pool_size = file.pool_size.unwrap_or(4);
    if pool_size == 0 {
        errors.push(ConfigError::new("store.pool_size", "must be at least 1"));
        valid = false;
    }
    if connection.get_connect_timeout().is_none() || file.connect_timeout.is_some() {
        let timeout = duration_or(
            "store.connect_timeout",
            file.connect_timeout.as_deref(),
            Duration::from_secs(5),
            errors,
        );
        connection.connect_timeout(timeout);
    }
    if connection.get_application_name().is_none() {
        connection.application_name("auditgate");
    }
    // A peer that vanishes (a database host lost without a FIN) is noticed within about a
    // minute instead of the kernel's two hours.
    connection.keepalives_idle(Duration::from_secs(30));
    Some(PostgresConfig {
        connection,
        tls: tls.filter(|_| valid)?,
        lock_log: file.lock_log.unwrap_or(true),
        pool_size,
    })
}

fn validate_log(
    file: &LogFile,
    base: &Path,
    data_base: &Path,
    errors: &mut Vec<ConfigError>,
) -> LogConfig {
    let signing_key_path = file.signing_key.as_deref().map(|path| resolve(base, path));
    let signer = signing_key_path
        .as_deref()
        .and_then(|path| match LogSigner::load(path) {
            Ok(signer) => Some(Arc::new(signer)),
            Err(error) => {
                errors.push(ConfigError::new(
                    "log.signing_key",
                    format!("{error} (make one with `auditgate keygen --out PATH`)"),
                ));
                None
            }
        });
    let sign_every = file.sign_every.unwrap_or(1000);
    if sign_every == 0 {
        errors.push(ConfigError::new("log.sign_every", "must be at least 1"));
    }
    let positive = positive_duration_or;
    let sign_interval = positive(
        "log.sign_interval",
        file.sign_interval.as_deref(),
        Duration::from_secs(10),
        errors,
    );
    let heartbeat_interval = positive(
        "log.heartbeat_interval",
        file.heartbeat_interval.as_deref(),
        Duration::from_secs(3600),
        errors,
    );
    let publish_timeout = positive(
        "log.publish_timeout",
        file.publish_timeout.as_deref(),
        Duration::from_secs(5),
        errors,
    );
    let origin = file.origin.clone().filter(|origin| {
        let checked = crate::log::checkpoint::validate_origin(origin);
        if let Err(error) = &checked {
            errors.push(ConfigError::new("log.origin", error.to_string()));
        }
        checked.is_ok()
    });
    let mut publish_heads = Vec::new();
    for (index, target) in file.publish_heads.iter().enumerate() {
        let location = format!("log.publish_heads #{}", index + 1);
        match parse_publish_entry(target, data_base) {
            Ok(target) => publish_heads.push(target),
            Err(message) => errors.push(ConfigError::new(&location, message)),
        }
    }
    if !file.publish_heads.is_empty() && file.signing_key.is_none() {
        errors.push(ConfigError::new(
            "log.publish_heads",
            "needs log.signing_key: only signed heads are published",
        ));
    }
    let https = publish_heads.iter().any(|target| match target {
        PublishTarget::Url(uri) | PublishTarget::UrlCheckpoint(uri) => {
            uri.scheme_str() == Some("https")
        }
        PublishTarget::File(_) => false,
    });
    let ca_file = file
        .publish_ca_file
        .as_deref()
        .map(|path| resolve(base, path));
    let publish_tls = if https {
        https_client(
            ca_file.as_deref(),
            "log.publish_ca_file",
            "log.publish_heads",
            errors,
        )
    } else {
        if ca_file.is_some() {
            errors.push(ConfigError::new(
                "log.publish_ca_file",
                "applies to https:// targets in log.publish_heads, and there is none",
            ));
        }
        None
    };
    LogConfig {
        signing_key_path,
        origin,
        signer,
        sign_every,
        sign_interval,
        heartbeat_interval,
        publish_heads,
        publish_timeout,
        publish_tls,
    }
}

/// The TLS client for an https:// URL of the config (fully verified, HTTP/1.1), trusting
/// `ca_file` or the system's CAs. A failure is a config error at `ca_location` when a CA file was
/// given (it is the file's fault), else at `url_location`.
pub(crate) fn https_client(
    ca_file: Option<&Path>,
    ca_location: &str,
    url_location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<std::sync::Arc<rustls::ClientConfig>> {
    match crate::tls::client_config(ca_file, crate::tls::Verification::Full, &[b"http/1.1"]) {
        Ok(tls) => Some(tls),
        Err(error) => {
            let location = if ca_file.is_some() {
                ca_location
            } else {
                url_location
            };
            errors.push(ConfigError::new(location, error.to_string()));
            None
        }
    }
}

/// A path from the config file: absolute, or relative to the file's directory `base`.
pub(crate) fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// `file:PATH` (relative to the config's directory), `http://...` or `https://...`.
fn parse_publish_target(text: &str, base: &Path) -> Result<PublishTarget, String> {
    if let Some(path) = text.strip_prefix("file:") {
        if path.is_empty() {
            return Err("`file:` needs a path, e.g. file:data/heads.ndjson".to_string());
        }
        return Ok(PublishTarget::File(resolve(base, path)));
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        let uri: http::Uri = text.parse().map_err(|_| format!("`{text}` is not a URL"))?;
        if uri.host().is_none() {
            return Err(format!("`{text}` has no host"));
        }
        return Ok(PublishTarget::Url(uri));
    }
    Err(format!(
        "`{text}` is not a target: use file:PATH, http://HOST/PATH or https://HOST/PATH"
    ))
}

/// One `publish_heads` item: a target string, or `{ target = "...", format = "json" |
/// "checkpoint" }`.
fn parse_publish_entry(value: &toml::Value, base: &Path) -> Result<PublishTarget, String> {
    let table = match value {
        toml::Value::String(text) => return parse_publish_target(text, base),
        toml::Value::Table(table) => table,
        _ => {
            return Err(
                "must be a target string or a table { target = \"...\", format = \"...\" }"
                    .to_string(),
            )
        }
    };
    if let Some(key) = table
        .keys()
        .find(|key| !matches!(key.as_str(), "target" | "format"))
    {
        return Err(format!("unknown key `{key}` (expected target, format)"));
    }
    let target = match table.get("target") {
        Some(toml::Value::String(text)) => parse_publish_target(text, base)?,
        Some(_) => return Err("target must be a string".to_string()),
        None => return Err("missing `target`".to_string()),
    };
    match (table.get("format").map(toml::Value::as_str), target) {
        (None | Some(Some("json")), target) => Ok(target),
        (Some(Some("checkpoint")), PublishTarget::Url(uri)) => {
            Ok(PublishTarget::UrlCheckpoint(uri))
        }
        (Some(Some("checkpoint")), _) => Err(
            "format = \"checkpoint\" applies to http:// and https:// targets; a heads file holds \
             JSON lines"
                .to_string(),
        ),
        (Some(Some(other)), _) => Err(format!("format `{other}` is not one of json, checkpoint")),
        (Some(None), _) => Err("format must be a string".to_string()),
    }
}

fn validate_retention(file: &RetentionFile, errors: &mut Vec<ConfigError>) -> RetentionConfig {
    let max_age = file
        .max_age
        .as_deref()
        .and_then(|text| match parse_duration(text) {
            Ok(age) if !age.is_zero() => Some(age),
            Ok(_) => {
                errors.push(ConfigError::new(
                    "retention.max_age",
                    "must be longer than 0",
                ));
                None
            }
            Err(message) => {
                errors.push(ConfigError::new("retention.max_age", message));
                None
            }
        });
    let prune_interval = duration_or(
        "retention.prune_interval",
        file.prune_interval.as_deref(),
        Duration::from_secs(3600),
        errors,
    );
    if prune_interval.is_zero() {
        errors.push(ConfigError::new(
            "retention.prune_interval",
            "must be longer than 0",
        ));
    }
    let mut rules: Vec<RetentionRule> = Vec::new();
    for (index, rule) in file.rules.iter().enumerate() {
        let location = format!("retention.rules #{} ({:?})", index + 1, rule.action_prefix);
        if rule.action_prefix.is_empty() {
            errors.push(ConfigError::new(
                &format!("{location}.action_prefix"),
                "must not be empty (use retention.max_age for every action)",
            ));
            continue;
        }
        if rules
            .iter()
            .any(|other| other.action_prefix == rule.action_prefix)
        {
            errors.push(ConfigError::new(
                &format!("{location}.action_prefix"),
                "names the same prefix as an earlier rule",
            ));
            continue;
        }
        match parse_duration(&rule.max_age) {
            Ok(age) if !age.is_zero() => rules.push(RetentionRule {
                action_prefix: rule.action_prefix.clone(),
                max_age: age,
            }),
            Ok(_) => errors.push(ConfigError::new(
                &format!("{location}.max_age"),
                "must be longer than 0",
            )),
            Err(message) => errors.push(ConfigError::new(&format!("{location}.max_age"), message)),
        }
    }
    RetentionConfig {
        max_age,
        prune_interval,
        rules,
    }
}

fn valid_log_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The host name, cleaned to a valid log id; "auditgate" if there is none.
pub fn default_log_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let cleaned: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "auditgate".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_errors(store: &str) -> Vec<String> {
        let text = format!("[proxy]\nupstream = \"127.0.0.1:3000\"\n[store]\n{store}\n");
        match Config::parse(&text, Path::new("/etc/auditgate")) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_postgres_url_replaces_the_sqlite_file() {
        let config = Config::parse(
            "[proxy]\nupstream = \"127.0.0.1:3000\"\n[store]\nurl = \"postgres://audit:s3cret@db.internal:6432/audit\"\npool_size = 2\n",
            Path::new("/etc/auditgate"),
        )
        .expect("valid");
        let postgres = config.store.postgres.as_ref().expect("postgres");
        assert_eq!(postgres.pool_size, 2);
        assert!(postgres.lock_log);
        assert_eq!(postgres.connection.get_dbname(), Some("audit"));
        assert_eq!(
            config.store.spill_path(),
            PathBuf::from("/etc/auditgate/data/spill.ndjson")
        );
        assert_eq!(
            crate::store::describe(&config.store),
            "postgres://db.internal:6432/audit"
        );
        // The password never shows, not even in a debug dump of the config.
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn the_stream_goes_to_stdout_or_a_rotated_file() {
        let parse = |stream: &str| {
            Config::parse(
                &format!("[proxy]\nupstream = \"127.0.0.1:3000\"\n[stream]\n{stream}\n"),
                Path::new("/etc/auditgate"),
            )
        };
        let config = parse("ndjson = \"stdout\"").expect("valid");
        let stream = config.stream.expect("stream");
        assert_eq!(stream.target, crate::stream::StreamTarget::Stdout);
        let config =
            parse("ndjson = \"log/audit.ndjson\"\nmax_bytes = \"1MiB\"\nkeep = 3").expect("valid");
        let stream = config.stream.expect("stream");
        assert_eq!(
            stream.target,
            crate::stream::StreamTarget::File(PathBuf::from("/etc/auditgate/log/audit.ndjson"))
        );
        assert_eq!((stream.max_bytes, stream.keep), (1024 * 1024, 3));
        assert_eq!(stream.format, crate::stream::StreamFormat::Ndjson);
        let config = parse("ndjson = \"stdout\"\nformat = \"ocsf\"").expect("valid");
        let stream = config.stream.expect("stream");
        assert_eq!(stream.format, crate::stream::StreamFormat::Ocsf);
        let errors = parse("ndjson = \"stdout\"\nformat = \"cef\"").expect_err("invalid");
        assert_eq!(
            errors[0].to_string(),
            "stream.format: `cef` is not a stream format: \"ndjson\" or \"ocsf\""
        );
        assert!(
            Config::parse("[proxy]\nupstream = \"a:1\"\n", Path::new("."))
                .expect("valid")
                .stream
                .is_none()
        );
        let errors: Vec<String> = parse("max_bytes = \"1KiB\"\nkeep = 0\nformat = \"x\"")
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            errors.iter().any(|error| error.starts_with("stream")),
            "{errors:?}"
        );
        let errors: Vec<String> = parse("max_bytes = \"1KiB\"\nkeep = 0")
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        let all = errors.join("\n");
        for expected in [
            "stream.ndjson: missing",
            "stream.max_bytes: must be at least 4KiB",
            "stream.keep: must be at least 1",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in {all}");
        }
        let errors = parse("ndjson = \"stdout\"\nkeep = 2").expect_err("invalid");
        assert!(errors[0].to_string().contains("rotation applies to a file"));
    }

    #[test]
    fn postgres_settings_are_checked_together() {
        let errors = store_errors(
            "path = \"a.db\"\nurl = \"postgres://u@h/db?sslmode=verify-full&sslrootcert=missing-ca.pem\"\npassword_env = \"AUDITGATE_TEST_UNSET_VARIABLE\"\npool_size = 0\nconnect_timeout = \"soon\"",
        );
        let all = errors.join("\n");
        for expected in [
            "store.url: give either path",
            "store.url: sslrootcert: cannot read the CA file /etc/auditgate/missing-ca.pem",
            "store.password_env: environment variable AUDITGATE_TEST_UNSET_VARIABLE is not set",
            "store.pool_size: must be at least 1",
            "store.connect_timeout",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let errors = store_errors("url = \"postgres:///db\"").join("\n");
        assert!(errors.contains("names no host"), "{errors}");
        let errors = store_errors("url = \"mysql://x\"").join("\n");
        assert!(
            errors.contains("store.url: not a PostgreSQL connection URL"),
            "{errors}"
        );
        let errors = store_errors("lock_log = false\npool_size = 3").join("\n");
        assert!(
            errors.contains("store.lock_log: applies to a PostgreSQL store only"),
            "{errors}"
        );
        assert!(
            errors.contains("store.pool_size: applies to a PostgreSQL store only"),
            "{errors}"
        );
        let errors = store_errors("url = \"postgres://u:p4ss@h/db?sslmode=bogus\"").join("\n");
        assert!(
            errors.contains("store.url: sslmode `bogus` is not one of disable, prefer, require, verify-ca, verify-full"),
            "{errors}"
        );
        assert!(!errors.contains("p4ss"), "{errors}");
        // libpq's modes are all accepted; `require` needs no CA.
        assert_eq!(
            store_errors("url = \"postgres://u@h/db?sslmode=require\""),
            Vec::<String>::new()
        );
    }

    #[test]
    fn minimal_config_has_defaults() {
        let config = Config::parse(
            "[proxy]\nupstream = \"127.0.0.1:3000\"\n",
            Path::new("/etc/auditgate"),
        )
        .expect("valid");
        assert_eq!(config.proxy.upstream, "127.0.0.1:3000");
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(
            config.store.path,
            PathBuf::from("/etc/auditgate/data/audit.db")
        );
        assert_eq!(config.proxy.max_body_capture, 65_536);
        assert_eq!(config.policy.rules.unmatched, UnmatchedRecord::Mutations);
    }

    #[test]
    fn relative_data_paths_follow_the_data_directory_and_keys_stay_with_the_config() {
        let config_dir =
            std::env::temp_dir().join(format!("auditgate-config-data-dir-{}", std::process::id()));
        std::fs::create_dir_all(&config_dir).expect("dir");
        LogSigner::write_new(&config_dir.join("log.key")).expect("key");
        let text = "[proxy]\nupstream = \"127.0.0.1:3000\"\n\
            [store]\npath = \"audit.db\"\n\
            [stream]\nndjson = \"siem/audit.ndjson\"\n\
            [log]\nsigning_key = \"log.key\"\npublish_heads = [\"file:heads.ndjson\"]\n";
        let data = Path::new("/var/lib/auditgate");
        let config = Config::parse_with_data_dir(text, &config_dir, Some(data)).expect("valid");
        assert_eq!(config.store.path, data.join("audit.db"));
        assert_eq!(
            config.store.spill_path(),
            data.join("audit.db.spill.ndjson")
        );
        assert_eq!(
            config.log.signing_key_path,
            Some(config_dir.join("log.key"))
        );
        let rendered = format!("{:?} {:?}", config.stream, config.log.publish_heads);
        assert!(
            rendered.contains("/var/lib/auditgate/siem/audit.ndjson"),
            "{rendered}"
        );
        assert!(
            rendered.contains("/var/lib/auditgate/heads.ndjson"),
            "{rendered}"
        );
        // Absolute paths are left alone; without a data directory the config's is used.
        let absolute = text.replace("\"audit.db\"", "\"/srv/audit.db\"");
        let config =
            Config::parse_with_data_dir(&absolute, &config_dir, Some(data)).expect("valid");
        assert_eq!(config.store.path, PathBuf::from("/srv/audit.db"));
        let config = Config::parse(text, &config_dir).expect("valid");
        assert_eq!(config.store.path, config_dir.join("audit.db"));
        let _ = std::fs::remove_dir_all(&config_dir);
    }

    #[test]
    fn every_error_is_listed_with_its_place() {
        let text = r#"
            [proxy]
            listen = "nowhere"
            upstream = "https://app"
            max_body_capture = "lots"
            trusted_proxies = ["10.0.0.0/33"]
            [admin]
            listen = "127.0.0.1:9090"
            [[admin.tokens]]
            name = "ops"
            sha256 = "abc"
            scopes = ["read", "delete"]
            [store]
            durability = "sometimes"
            [unmatched]
            record = "some"
            [bogus]
            x = 1
            [[rule]]
            name = "r"
            path = "/x"
            actoin = "typo"
            [[rule]]
            name = "ok"
            path = "/y"
            action = "y"
            status = "7xx"
        "#;
        let errors = Config::parse(text, Path::new(".")).expect_err("invalid");
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        for expected in [
            "proxy.listen",
            "proxy.upstream",
            "proxy.max_body_capture",
            "proxy.trusted_proxies",
            "admin.tokens #1 (\"ops\").sha256",
            "admin.tokens #1 (\"ops\").scopes",
            "store.durability",
            "unmatched.record",
            "bogus: unknown section",
            "rule #1 (\"r\"): unknown field `actoin`",
            "rule #2 (\"ok\").status",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn syntax_errors_say_the_line() {
        let errors = Config::parse("[proxy]\nupstream = \n", Path::new(".")).expect_err("invalid");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].location.starts_with("line "), "{:?}", errors[0]);
    }

    #[test]
    fn admin_never_shares_the_proxy_port() {
        let text = "[proxy]\nupstream = \"127.0.0.1:3000\"\nlisten = \"127.0.0.1:9090\"\n";
        let errors = Config::parse(text, Path::new(".")).expect_err("invalid");
        assert!(errors.iter().any(|error| error.location == "admin.listen"));
    }

    #[test]
    fn log_and_retention_keys_are_validated() {
        let dir = std::env::temp_dir().join(format!("auditgate-config-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("dir");
        LogSigner::write_new(&dir.join("log.key")).expect("key");
        let text = r#"
            [proxy]
            upstream = "127.0.0.1:3000"
            [log]
            signing_key = "log.key"
            sign_every = 10
            sign_interval = "250ms"
            publish_heads = ["file:heads.ndjson", "http://audit.example:8080/heads"]
            [retention]
            max_age = "400d"
            [[retention.rules]]
            action_prefix = "auth."
            max_age = "30d"
        "#;
        let config = Config::parse(text, &dir).expect("valid");
        assert!(config.log.signer.is_some());
        assert_eq!(config.log.sign_every, 10);
        assert_eq!(config.log.sign_interval, Duration::from_millis(250));
        assert_eq!(config.log.heartbeat_interval, Duration::from_secs(3600));
        assert_eq!(
            config.log.publish_heads[0],
            PublishTarget::File(dir.join("heads.ndjson"))
        );
        assert_eq!(
            config.log.publish_heads[1].to_string(),
            "http://audit.example:8080/heads"
        );
        assert_eq!(
            config.retention.max_age,
            Some(Duration::from_secs(400 * 86_400))
        );
        assert_eq!(config.retention.rules[0].action_prefix, "auth.");

        let defaults =
            Config::parse("[proxy]\nupstream = \"127.0.0.1:3000\"\n", &dir).expect("valid");
        assert!(defaults.log.signer.is_none());
        assert_eq!(defaults.log.sign_every, 1000);
        assert_eq!(defaults.log.sign_interval, Duration::from_secs(10));
        assert_eq!(defaults.retention.max_age, None);

        let text = r#"
            [proxy]
            upstream = "127.0.0.1:3000"
            [log]
            signing_key = "missing.key"
            sign_every = 0
            sign_interval = "0s"
            publish_heads = ["https://x/heads", "s3://bucket", "file:"]
            publish_ca_file = "missing-ca.pem"
            [retention]
            max_age = "forever"
            prune_interval = "soon"
            [[retention.rules]]
            action_prefix = "auth."
            max_age = "30d"
            [[retention.rules]]
            action_prefix = "auth."
            max_age = "60d"
            [[retention.rules]]
            action_prefix = ""
            max_age = "1d"
            [[retention.rules]]
            action_prefix = "user."
            max_age = "0d"
        "#;
        let errors = Config::parse(text, &dir).expect_err("invalid");
        let all = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for expected in [
            "log.signing_key: ",
            "auditgate keygen",
            "log.sign_every: must be at least 1",
            "log.sign_interval: must be longer than 0",
            "log.publish_ca_file: cannot read the CA file ",
            "log.publish_heads #2: `s3://bucket` is not a target",
            "log.publish_heads #3: `file:` needs a path",
            "retention.max_age: ",
            "retention.prune_interval: ",
            "retention.rules #2 (\"auth.\").action_prefix: names the same prefix",
            "retention.rules #3 (\"\").action_prefix: must not be empty",
            "retention.rules #4 (\"user.\").max_age: must be longer than 0",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let errors = Config::parse(
            "[proxy]\nupstream = \"127.0.0.1:3000\"\n[log]\npublish_heads = [\"file:h\"]\n",
            &dir,
        )
        .expect_err("invalid");
        assert!(
            errors[0].message.contains("needs log.signing_key"),
            "{errors:?}"
        );
        let errors = Config::parse(
            "[proxy]\nupstream = \"127.0.0.1:3000\"\n[log]\nsigning_key = \"log.key\"\n\
             publish_heads = [\"http://relay/heads\"]\npublish_ca_file = \"ca.pem\"\n",
            &dir,
        )
        .expect_err("a CA file without an https target");
        assert_eq!(
            errors[0].to_string(),
            "log.publish_ca_file: applies to https:// targets in log.publish_heads, and there is none"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn checkpoint_origin_and_target_formats_are_validated() {
        let dir = std::env::temp_dir().join(format!("auditgate-config-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("dir");
        LogSigner::write_new(&dir.join("log.key")).expect("key");
        let text = r#"
            [proxy]
            upstream = "127.0.0.1:3000"
            [log]
            log_id = "orders"
            signing_key = "log.key"
            publish_heads = [
                "file:heads.ndjson",
                { target = "http://witness.example/add-checkpoint", format = "checkpoint" },
                { target = "http://collector.example/heads", format = "json" },
                { target = "file:more-heads.ndjson" },
            ]
        "#;
        let config = Config::parse(text, &dir).expect("valid");
        assert_eq!(config.log.checkpoint_origin(&config.log_id), "orders");
        let targets: Vec<String> = config
            .log
            .publish_heads
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            targets,
            [
                format!("file:{}", dir.join("heads.ndjson").display()),
                "http://witness.example/add-checkpoint (checkpoint)".to_string(),
                "http://collector.example/heads".to_string(),
                format!("file:{}", dir.join("more-heads.ndjson").display()),
            ]
        );
        assert_eq!(config.log.heads_files().len(), 2);

        let with_origin = text.replace(
            "log_id = \"orders\"",
            "log_id = \"orders\"\norigin = \"audit.example.com/orders\"",
        );
        let config = Config::parse(&with_origin, &dir).expect("valid");
        assert_eq!(
            config.log.checkpoint_origin(&config.log_id),
            "audit.example.com/orders"
        );

        let text = r#"
            [proxy]
            upstream = "127.0.0.1:3000"
            [log]
            origin = "audit example+orders"
            signing_key = "log.key"
            publish_heads = [
                { target = "file:heads.ndjson", format = "checkpoint" },
                { target = "http://w.example/", format = "note" },
                { target = "http://w.example/", fromat = "checkpoint" },
                { format = "checkpoint" },
                42,
            ]
        "#;
        let errors = Config::parse(text, &dir).expect_err("invalid");
        let all = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for expected in [
            "log.origin: invalid origin: contains a space",
            "log.publish_heads #1: format = \"checkpoint\" applies to http:// and https:// targets",
            "log.publish_heads #2: format `note` is not one of json, checkpoint",
            "log.publish_heads #3: unknown key `fromat`",
            "log.publish_heads #4: missing `target`",
            "log.publish_heads #5: must be a target string or a table",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn upstream_forms() {
        assert_eq!(
            normalize_upstream("http://app:3000/"),
            Ok("app:3000".to_string())
        );
        assert!(normalize_upstream("app").is_err());
        assert!(normalize_upstream("app:3000/x").is_err());
    }
}
