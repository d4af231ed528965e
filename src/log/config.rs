//! `[log]`: the log's identity, and when its tree heads are signed and where they are published.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::base::units::positive_duration_or;
use crate::base::{resolve, ConfigError};
use crate::log::head::LogSigner;
use crate::net::https_client;

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
    /// Serve the tlog tiles (`/tlog/checkpoint`, `/tlog/tile/...` on the admin listener) to
    /// anyone, without a token (default false: a token with the `read` scope). The entry bundles
    /// hold every entry's content, so this makes the log readable by whoever reaches the admin
    /// listener. Needs a restart.
    pub public_tiles: Option<bool>,
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
    /// `[log] public_tiles`: the tlog tiles need no token.
    pub public_tiles: bool,
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

pub(crate) fn validate_log(
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
        public_tiles: file.public_tiles.unwrap_or(false),
    }
}

/// `file:PATH` (relative to the config's directory), `http://...` or `https://...`.
pub(crate) fn parse_publish_target(text: &str, base: &Path) -> Result<PublishTarget, String> {
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

pub(crate) fn valid_log_id(id: &str) -> bool {
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
