//! `[log]`: the log's identity, and when its tree heads are signed and where they are published.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::base::units::positive_duration_or;
use crate::base::{resolve, ConfigError};
use crate::log::head::LogSigner;
use crate::log::witness::WitnessKey;
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
    /// Witnesses (C2SP tlog-witness) that are asked to cosign every signed head:
    /// `[[log.witnesses]]` tables with `url`, `vkey` and an optional `timeout`. Needs
    /// `signing_key`.
    #[serde(default)]
    pub witnesses: Vec<WitnessFile>,
}

/// `[[log.witnesses]]`: a witness that cosigns the log's checkpoints.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessFile {
    /// The witness's submission prefix, "http://HOST/PATH" or "https://HOST/PATH": each
    /// checkpoint is POSTed to `<url>/add-checkpoint`.
    pub url: Option<String>,
    /// The witness's verifier key, written out (not a file):
    /// `<name>+<key ID>+<base64(0x04 || Ed25519 key)>`, an Ed25519 cosignature/v1 key as
    /// c2sp.org/tlog-cosignature defines. Only cosignatures that verify under it are kept.
    pub vkey: Option<String>,
    /// Longest wait for the witness's answer (default: `publish_timeout`).
    pub timeout: Option<String>,
}

/// A witness the signer submits each checkpoint to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessTarget {
    /// The submission prefix as configured.
    pub url: http::Uri,
    /// `<url>/add-checkpoint`.
    pub add_checkpoint: http::Uri,
    pub key: WitnessKey,
    pub timeout: Duration,
}

impl WitnessTarget {
    /// The witness's name (its key name), as metrics and logs name it.
    pub fn name(&self) -> &str {
        self.key.name()
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
    /// `[log] public_tiles`: the tlog tiles need no token.
    pub public_tiles: bool,
    /// `[[log.witnesses]]`: asked to cosign every signed head.
    pub witnesses: Vec<WitnessTarget>,
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
    let witnesses = validate_witnesses(file, publish_timeout, errors);
    let https = publish_heads.iter().any(|target| match target {
        PublishTarget::Url(uri) | PublishTarget::UrlCheckpoint(uri) => {
            uri.scheme_str() == Some("https")
        }
        PublishTarget::File(_) => false,
    }) || witnesses
        .iter()
        .any(|witness| witness.url.scheme_str() == Some("https"));
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
        witnesses,
    }
}

/// `[[log.witnesses]]`: each table's URL, verifier key and timeout, every error with its place.
fn validate_witnesses(
    file: &LogFile,
    default_timeout: Duration,
    errors: &mut Vec<ConfigError>,
) -> Vec<WitnessTarget> {
    if !file.witnesses.is_empty() && file.signing_key.is_none() {
        errors.push(ConfigError::new(
            "log.witnesses",
            "needs log.signing_key: witnesses cosign the log's signed checkpoints",
        ));
    }
    let mut witnesses: Vec<WitnessTarget> = Vec::new();
    for (index, witness) in file.witnesses.iter().enumerate() {
        let place = format!("log.witnesses #{}", index + 1);
        let url = match witness.url.as_deref() {
            None => {
                errors.push(ConfigError::new(
                    &format!("{place}.url"),
                    "missing: the witness's submission prefix, e.g. https://witness.example/",
                ));
                None
            }
            Some(text) => match witness_urls(text) {
                Ok(urls) => Some(urls),
                Err(message) => {
                    errors.push(ConfigError::new(&format!("{place}.url"), message));
                    None
                }
            },
        };
        let key = match witness.vkey.as_deref() {
            None => {
                errors.push(ConfigError::new(
                    &format!("{place}.vkey"),
                    "missing: the witness's verifier key, NAME+KEYID+BASE64KEY",
                ));
                None
            }
            Some(text) => match WitnessKey::parse(text) {
                Ok(key) => Some(key),
                Err(error) => {
                    errors.push(ConfigError::new(
                        &format!("{place}.vkey"),
                        error.to_string(),
                    ));
                    None
                }
            },
        };
        let timeout = positive_duration_or(
            &format!("{place}.timeout"),
            witness.timeout.as_deref(),
            default_timeout,
            errors,
        );
        if let Some(key) = &key {
            if witnesses.iter().any(|other| other.key.name() == key.name()) {
                errors.push(ConfigError::new(
                    &format!("{place}.vkey"),
                    format!("names the witness `{}` a second time", key.name()),
                ));
                continue;
            }
        }
        if let (Some((url, add_checkpoint)), Some(key)) = (url, key) {
            witnesses.push(WitnessTarget {
                url,
                add_checkpoint,
                key,
                timeout,
            });
        }
    }
    witnesses
}

/// A witness's submission prefix and its `add-checkpoint` URL.
fn witness_urls(text: &str) -> Result<(http::Uri, http::Uri), String> {
    if !text.starts_with("http://") && !text.starts_with("https://") {
        return Err(format!("`{text}` is not an http:// or https:// URL"));
    }
    let url: http::Uri = text.parse().map_err(|_| format!("`{text}` is not a URL"))?;
    if url.host().is_none() {
        return Err(format!("`{text}` has no host"));
    }
    if url.query().is_some() {
        return Err(format!(
            "`{text}` has a query; a submission prefix is a URL path that add-checkpoint is \
             appended to"
        ));
    }
    let add_checkpoint = format!("{}/add-checkpoint", text.trim_end_matches('/'))
        .parse()
        .map_err(|_| format!("`{text}` is not a URL"))?;
    Ok((url, add_checkpoint))
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

#[cfg(test)]
mod tests {
    use super::*;

    const WITNESS_VKEY: &str =
        "witness.example/w1+eb762cc2+BNdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea";

    fn validate(text: &str) -> (LogConfig, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("auditgate-logcfg-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("dir");
        LogSigner::write_new(&dir.join("log.key")).expect("key");
        let file: LogFile = toml::from_str(text).expect("the test's own input is valid");
        let mut errors = Vec::new();
        let config = validate_log(&file, &dir, &dir, &mut errors);
        let _ = std::fs::remove_dir_all(dir);
        (config, errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn witnesses_are_read_with_their_add_checkpoint_url_and_timeout() {
        let second = {
            use base64::Engine;
            let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
            format!(
                "w2.example+{:08x}+{}",
                crate::log::witness::cosigner_key_id("w2.example", key.as_bytes()),
                base64::engine::general_purpose::STANDARD
                    .encode([&[0x04][..], key.as_bytes()].concat())
            )
        };
        let (config, errors) = validate(&format!(
            "signing_key = \"log.key\"\npublish_timeout = \"3s\"\n\
             [[witnesses]]\nurl = \"http://witness.example/w1/\"\nvkey = \"{WITNESS_VKEY}\"\n\
             [[witnesses]]\nurl = \"https://w2.example\"\ntimeout = \"1s\"\nvkey = \"{second}\"\n"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.witnesses.len(), 2);
        let first = &config.witnesses[0];
        assert_eq!(first.name(), "witness.example/w1");
        assert_eq!(
            first.add_checkpoint.to_string(),
            "http://witness.example/w1/add-checkpoint"
        );
        assert_eq!(first.timeout, Duration::from_secs(3));
        assert_eq!(
            config.witnesses[1].add_checkpoint.to_string(),
            "https://w2.example/add-checkpoint"
        );
        assert_eq!(config.witnesses[1].timeout, Duration::from_secs(1));
        assert!(config.publish_tls.is_some(), "an https witness needs TLS");
    }

    #[test]
    fn every_witness_error_is_reported_with_its_place() {
        let (config, errors) = validate(&format!(
            "[[witnesses]]\nurl = \"ftp://w\"\nvkey = \"nope\"\ntimeout = \"0s\"\n\
             [[witnesses]]\nvkey = \"{WITNESS_VKEY}\"\n\
             [[witnesses]]\nurl = \"http://w/?a=b\"\nvkey = \"{WITNESS_VKEY}\"\n\
             [[witnesses]]\nurl = \"http://w3\"\nvkey = \"{WITNESS_VKEY}\"\n\
             [[witnesses]]\nurl = \"http://w4\"\nvkey = \"{WITNESS_VKEY}\"\n"
        ));
        let all = errors.join("\n");
        for expected in [
            "log.witnesses: needs log.signing_key",
            "log.witnesses #1.url: `ftp://w` is not an http:// or https:// URL",
            "log.witnesses #1.vkey: invalid witness verifier key",
            "log.witnesses #1.timeout: must be longer than 0",
            "log.witnesses #2.url: missing",
            "log.witnesses #3.url: `http://w/?a=b` has a query",
            "log.witnesses #5.vkey: names the witness `witness.example/w1` a second time",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(config.witnesses.len(), 1);
    }
}
