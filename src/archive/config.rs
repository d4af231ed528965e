//! `[[archive]]` tables: where each archive goes and how its objects are cut, validated into
//! [`ArchiveConfig`]. Every error names its table (`archive #2 ("r2").url`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::base::units::parse_duration;
use crate::base::{resolve, ConfigError};

/// One `[[archive]]` table: committed entries shipped to an S3-compatible bucket.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveFile {
    /// The name in metrics and messages (default: the bucket and prefix).
    pub name: Option<String>,
    /// "s3://BUCKET/PREFIX": objects go under PREFIX/<log_id>/yyyy/mm/dd/.
    pub url: Option<String>,
    /// The S3 API's base URL for MinIO, Cloudflare R2 and other S3-compatible stores (default:
    /// AWS, https://s3.<region>.amazonaws.com).
    pub endpoint: Option<String>,
    /// The region requests are signed for (default "us-east-1"; "auto" for R2).
    pub region: Option<String>,
    /// Address the bucket in the path (https://endpoint/bucket/key) instead of the host name
    /// (https://bucket.endpoint/key). Default: true with an `endpoint`, false for AWS.
    pub path_style: Option<bool>,
    /// The access key id; use "${AWS_ACCESS_KEY_ID}" to keep it out of the file.
    pub access_key_id: Option<String>,
    /// The secret access key; use "${AWS_SECRET_ACCESS_KEY}".
    pub secret_access_key: Option<String>,
    /// A session token for temporary credentials.
    pub session_token: Option<String>,
    /// The time window of one object (default "1h"); windows start at UTC midnight, so it must
    /// divide a day.
    pub window: Option<String>,
    /// The most entries one object holds (default 10000); a busy window is cut into several.
    pub max_entries: Option<u64>,
    /// What the objects hold: "ndjson" (the default: verifiable entries with proofs), or
    /// "ocsf" (the same objects, and beside each an OCSF copy for SIEMs).
    pub format: Option<String>,
    /// Object Lock retention set on every upload: { mode = "compliance" | "governance",
    /// days = N }. The bucket must have Object Lock enabled.
    pub object_lock: Option<ObjectLockFile>,
    /// Longest wait for one request to the bucket (default "30s").
    pub timeout: Option<String>,
    /// A PEM file of CAs to trust for an https endpoint instead of the system's.
    pub ca_file: Option<String>,
}

/// `object_lock = { mode = "compliance", days = 365 }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockFile {
    /// "compliance" (nobody can shorten or remove it) or "governance" (users with a special
    /// permission can).
    pub mode: Option<String>,
    /// Days each object is retained from its upload.
    pub days: Option<u64>,
}

/// Object Lock retention, as sent on each upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Compliance,
    Governance,
}

impl LockMode {
    /// The value of `x-amz-object-lock-mode`.
    pub fn header_value(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

/// Where a bucket is and how requests to it are signed.
#[derive(Clone)]
pub struct BucketConfig {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
    pub endpoint: url::Url,
    pub region: String,
    pub path_style: bool,
    pub credentials: Option<Credentials>,
    pub timeout: Duration,
    /// The TLS client for an https endpoint.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for BucketConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BucketConfig")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

/// Access keys. Never printed.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// One `[[archive]]`, validated.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    pub name: String,
    pub bucket: BucketConfig,
    pub window: Duration,
    pub max_entries: usize,
    pub ocsf: bool,
    pub object_lock: Option<ObjectLock>,
}

/// The default window of one object.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// The default most entries of one object.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// The most entries one object may be configured to hold: an object is built in memory.
pub const MAX_ENTRIES_LIMIT: u64 = 100_000;

/// Where a table is, for error messages: `archive #1 ("name")`.
pub fn archive_location(index: usize, item: &toml::Value) -> String {
    match item.get("name").and_then(toml::Value::as_str) {
        Some(name) => format!("archive #{} ({name:?})", index + 1),
        None => format!("archive #{}", index + 1),
    }
}

/// Splits "s3://bucket/prefix/" into the bucket and the prefix without slashes at its ends.
pub fn parse_s3_url(text: &str) -> Result<(String, String), String> {
    let Some(rest) = text.strip_prefix("s3://") else {
        return Err(format!(
            "`{}` is not an s3:// URL like s3://my-bucket/audit",
            text.chars().take(80).collect::<String>()
        ));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket.chars().all(|character| {
            character.is_ascii_lowercase()
                || character.is_ascii_digit()
                || character == '-'
                || character == '.'
        });
    if !valid_bucket {
        return Err(format!(
            "`{}` is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')",
            bucket.chars().take(80).collect::<String>()
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|part| part == "." || part == "..")
        || prefix.contains("//")
        || prefix.chars().any(char::is_control)
    {
        return Err("the prefix must not hold empty, `.` or `..` parts".to_string());
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// The endpoint of a bucket: the configured one, or AWS's for the region.
pub fn endpoint_url(endpoint: Option<&str>, region: &str) -> Result<url::Url, String> {
    let text = match endpoint {
        Some(text) => text.to_string(),
        None => format!("https://s3.{region}.amazonaws.com"),
    };
    let url = url::Url::parse(&text).map_err(|error| format!("`{text}` is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{text}` must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}` must not carry a query or fragment"));
    }
    Ok(url)
}

/// Validates every `[[archive]]` table. `has_signing_key`: an archive verifies on its own only
/// with signed heads, so it needs `[log] signing_key`.
pub(crate) fn validate_archives(
    files: &[(usize, toml::Value, ArchiveFile)],
    base: &Path,
    has_signing_key: bool,
    errors: &mut Vec<ConfigError>,
) -> Vec<ArchiveConfig> {
    let mut archives = Vec::new();
    let mut names = HashSet::new();
    let mut places = HashSet::new();
    for (index, item, file) in files {
        let at = archive_location(*index, item);
        let before = errors.len();
        if !has_signing_key {
            errors.push(ConfigError::new(
                &at,
                "an archive needs [log] signing_key: its objects carry signed heads and \
                 checkpoints so that they verify on their own",
            ));
        }
        let location = |key: &str| format!("{at}.{key}");
        let bucket_and_prefix = match file.url.as_deref() {
            None | Some("") => {
                errors.push(ConfigError::new(
                    &location("url"),
                    "missing: \"s3://BUCKET/PREFIX\"",
                ));
                None
            }
            Some(text) => match parse_s3_url(text) {
                Ok(parsed) => Some(parsed),
                Err(message) => {
                    errors.push(ConfigError::new(&location("url"), message));
                    None
                }
            },
        };
        let region = file.region.clone().unwrap_or_else(|| "us-east-1".into());
        if region.is_empty()
            || !region
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || character == '-')
        {
            errors.push(ConfigError::new(
                &location("region"),
                "must be a region name like us-east-1 (or \"auto\" for R2)",
            ));
        }
        let endpoint = match endpoint_url(file.endpoint.as_deref(), &region) {
            Ok(url) => Some(url),
            Err(message) => {
                errors.push(ConfigError::new(&location("endpoint"), message));
                None
            }
        };
        let credentials = match (&file.access_key_id, &file.secret_access_key) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Some(Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: file.session_token.clone().filter(|token| !token.is_empty()),
            }),
            (None, None) => None,
            _ => {
                errors.push(ConfigError::new(
                    &location("access_key_id"),
                    "access_key_id and secret_access_key go together, and neither may be empty \
                     (is the ${VAR} they name set?)",
                ));
                None
            }
        };
        let window = match file.window.as_deref() {
            None => DEFAULT_WINDOW,
            Some(text) => match parse_duration(text) {
                Ok(window)
                    if window.as_secs() >= 1
                        && window.subsec_nanos() == 0
                        && 86_400 % window.as_secs() == 0 =>
                {
                    window
                }
                Ok(_) => {
                    errors.push(ConfigError::new(
                        &location("window"),
                        "must be whole seconds that divide a day (\"1m\", \"15m\", \"1h\", \"1d\"): \
                         windows start at UTC midnight",
                    ));
                    DEFAULT_WINDOW
                }
                Err(message) => {
                    errors.push(ConfigError::new(&location("window"), message));
                    DEFAULT_WINDOW
                }
            },
        };
        let max_entries = file.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
        if !(1..=MAX_ENTRIES_LIMIT).contains(&max_entries) {
            errors.push(ConfigError::new(
                &location("max_entries"),
                format!("must be 1 to {MAX_ENTRIES_LIMIT}"),
            ));
        }
        let ocsf = match file.format.as_deref() {
            None | Some("ndjson") => false,
            Some("ocsf") => true,
            Some(other) => {
                errors.push(ConfigError::new(
                    &location("format"),
                    format!(
                        "`{}` is not an archive format: \"ndjson\" or \"ocsf\"",
                        other.chars().take(64).collect::<String>()
                    ),
                ));
                false
            }
        };
        let object_lock = file.object_lock.as_ref().and_then(|lock| {
            let mode = match lock.mode.as_deref() {
                Some("compliance") => Some(LockMode::Compliance),
                Some("governance") => Some(LockMode::Governance),
                _ => {
                    errors.push(ConfigError::new(
                        &location("object_lock.mode"),
                        "must be \"compliance\" or \"governance\"",
                    ));
                    None
                }
            };
            let days = match lock.days {
                Some(days) if (1..=36_500).contains(&days) => Some(days),
                _ => {
                    errors.push(ConfigError::new(
                        &location("object_lock.days"),
                        "must be 1 to 36500",
                    ));
                    None
                }
            };
            Some(ObjectLock {
                mode: mode?,
                days: days?,
            })
        });
        let timeout = match file.timeout.as_deref() {
            None => Duration::from_secs(30),
            Some(text) => match parse_duration(text) {
                Ok(timeout) if !timeout.is_zero() => timeout,
                Ok(_) => {
                    errors.push(ConfigError::new(&location("timeout"), "must not be 0"));
                    Duration::from_secs(30)
                }
                Err(message) => {
                    errors.push(ConfigError::new(&location("timeout"), message));
                    Duration::from_secs(30)
                }
            },
        };
        let tls = endpoint
            .as_ref()
            .filter(|url| url.scheme() == "https")
            .and_then(|_| {
                let ca_file = file.ca_file.as_deref().map(|path| resolve(base, path));
                crate::net::https_client(
                    ca_file.as_deref(),
                    &location("ca_file"),
                    &location("endpoint"),
                    errors,
                )
            });
        let name = file.name.clone().unwrap_or_else(|| {
            bucket_and_prefix
                .as_ref()
                .map(|(bucket, prefix)| {
                    if prefix.is_empty() {
                        bucket.clone()
                    } else {
                        format!("{bucket}/{prefix}")
                    }
                })
                .unwrap_or_default()
        });
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            errors.push(ConfigError::new(
                &location("name"),
                "must be 1 to 64 characters, without control characters",
            ));
        } else if !names.insert(name.clone()) {
            errors.push(ConfigError::new(
                &location("name"),
                format!("`{name}` names two archives; give each its own name"),
            ));
        }
        if let (Some((bucket, prefix)), Some(endpoint)) = (&bucket_and_prefix, &endpoint) {
            // Two archives writing the same keys would overwrite each other's objects.
            if !places.insert((endpoint.to_string(), bucket.clone(), prefix.clone())) {
                errors.push(ConfigError::new(
                    &location("url"),
                    "another archive already writes to this bucket and prefix",
                ));
            }
        }
        if errors.len() > before {
            continue;
        }
        let (Some((bucket, prefix)), Some(endpoint)) = (bucket_and_prefix, endpoint) else {
            continue;
        };
        let path_style = file.path_style.unwrap_or(file.endpoint.is_some());
        archives.push(ArchiveConfig {
            name,
            bucket: BucketConfig {
                bucket,
                prefix,
                endpoint,
                region,
                path_style,
                credentials,
                timeout,
                tls,
            },
            window,
            max_entries: max_entries as usize,
            ocsf,
            object_lock,
        });
    }
    archives
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str, signing_key: bool) -> Result<Vec<ArchiveConfig>, Vec<String>> {
        let table: toml::Table = toml::from_str(text).expect("toml");
        let items = table
            .get("archive")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        let files: Vec<(usize, toml::Value, ArchiveFile)> = items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let file = ArchiveFile::deserialize(item.clone()).expect("file");
                (index, item, file)
            })
            .collect();
        let mut errors = Vec::new();
        let archives = validate_archives(&files, Path::new("."), signing_key, &mut errors);
        if errors.is_empty() {
            Ok(archives)
        } else {
            Err(errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn a_minio_table_becomes_a_path_style_bucket_with_defaults() {
        let archives = validate(
            "[[archive]]\nurl = \"s3://audit-archive/prod/\"\nendpoint = \"http://127.0.0.1:9000\"\naccess_key_id = \"a\"\nsecret_access_key = \"b\"\nobject_lock = { mode = \"compliance\", days = 30 }\n",
            true,
        )
        .expect("valid");
        let archive = &archives[0];
        assert_eq!(archive.name, "audit-archive/prod");
        assert_eq!(archive.bucket.bucket, "audit-archive");
        assert_eq!(archive.bucket.prefix, "prod");
        assert!(archive.bucket.path_style);
        assert_eq!(archive.bucket.region, "us-east-1");
        assert_eq!(archive.window, DEFAULT_WINDOW);
        assert_eq!(archive.max_entries, 10_000);
        assert_eq!(
            archive.object_lock,
            Some(ObjectLock {
                mode: LockMode::Compliance,
                days: 30
            })
        );
        let aws = validate("[[archive]]\nurl = \"s3://audit-archive\"\nregion = \"eu-west-1\"\naccess_key_id = \"a\"\nsecret_access_key = \"b\"\n", true).expect("valid");
        assert_eq!(
            aws[0].bucket.endpoint.as_str(),
            "https://s3.eu-west-1.amazonaws.com/"
        );
        assert!(!aws[0].bucket.path_style);
        assert_eq!(aws[0].bucket.prefix, "");
    }

    #[test]
    fn every_bad_key_is_reported_with_its_table() {
        let errors = validate(
            "[[archive]]\nname = \"r2\"\nurl = \"https://bucket\"\nwindow = \"7m\"\nmax_entries = 0\nformat = \"csv\"\nobject_lock = { mode = \"forever\", days = 0 }\naccess_key_id = \"a\"\n[[archive]]\nurl = \"s3://ok-bucket/x\"\nendpoint = \"ftp://example\"\n",
            false,
        )
        .expect_err("invalid");
        let expected = [
            "archive #1 (\"r2\"): an archive needs [log] signing_key",
            "archive #1 (\"r2\").url: `https://bucket` is not an s3:// URL",
            "archive #1 (\"r2\").access_key_id: access_key_id and secret_access_key go together",
            "archive #1 (\"r2\").window: must be whole seconds that divide a day",
            "archive #1 (\"r2\").max_entries: must be 1 to 100000",
            "archive #1 (\"r2\").format: `csv` is not an archive format",
            "archive #1 (\"r2\").object_lock.mode: must be \"compliance\" or \"governance\"",
            "archive #1 (\"r2\").object_lock.days: must be 1 to 36500",
            "archive #2.endpoint: `ftp://example` must be an http:// or https:// URL",
        ];
        for wanted in expected {
            assert!(
                errors.iter().any(|error| error.starts_with(wanted)),
                "missing {wanted:?} in {errors:#?}"
            );
        }
        let errors = validate(
            "[[archive]]\nurl = \"s3://same-bucket/p\"\n[[archive]]\nname = \"other\"\nurl = \"s3://same-bucket/p/\"\n",
            true,
        )
        .expect_err("invalid");
        assert_eq!(
            errors,
            ["archive #2 (\"other\").url: another archive already writes to this bucket and prefix"]
        );
    }
}
