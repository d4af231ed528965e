//! `[[otlp]]`: the settings of each OpenTelemetry logs exporter, as written and as validated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::base::units::{duration_or, positive_duration_or};
use crate::base::{resolve, ConfigError};

/// One `[[otlp]]` table: an OTLP/HTTP logs endpoint every committed entry is sent to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpFile {
    /// What this output is called in metrics, logs and the name of its cursor file (letters,
    /// digits, '.', '_', '-'). Defaults to one made from the endpoint; give one to keep the
    /// cursor when the endpoint moves.
    pub name: Option<String>,
    /// The full URL of the collector's logs path: http://collector:4318/v1/logs.
    pub endpoint: Option<String>,
    /// Headers sent with every request (an API key, a tenant); `${VAR}` keeps secrets out of the
    /// file.
    pub headers: Option<BTreeMap<String, String>>,
    /// How long one request may take, connecting included (default "10s").
    pub timeout: Option<String>,
    /// Most entries in one request (default 512).
    pub batch_size: Option<usize>,
    /// How often the log is looked at for new entries once everything was sent (default "1s").
    pub interval: Option<String>,
    /// The longest wait between two attempts while the collector fails (default "60s"); the
    /// first wait is 500ms and each failure doubles it.
    pub max_backoff: Option<String>,
    /// PEM file of the CAs that sign an https endpoint's certificate (default: the system's).
    pub ca_file: Option<String>,
    /// The resource's `service.name` (default "auditgate").
    pub service_name: Option<String>,
    /// More resource attributes, such as `"deployment.environment.name" = "prod"`.
    pub resource: Option<BTreeMap<String, String>>,
    /// Whether a new output (no cursor yet) sends the entries already in the log (default true)
    /// or starts after them.
    pub backfill: Option<bool>,
    /// What to do when the collector refuses one entry's content for good (400, 413, 422):
    /// "hold" (the default: retry it, and everything after it waits) or "skip" (log and count
    /// it, then go on).
    pub on_rejected: Option<String>,
}

/// What happens to an entry the collector refuses for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRejected {
    /// Keep retrying it at the longest back-off; nothing after it is sent meanwhile.
    Hold,
    /// Log it and count it as skipped, then send on.
    Skip,
}

/// One `[[otlp]]` table, validated.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub name: String,
    pub endpoint: http::Uri,
    /// Extra request headers, checked at load.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub timeout: Duration,
    pub batch_size: usize,
    pub interval: Duration,
    pub max_backoff: Duration,
    pub ca_file: Option<PathBuf>,
    /// The TLS client for an https endpoint, built at load so a bad CA file is a config error.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    pub backfill: bool,
    pub on_rejected: OnRejected,
}

impl OtlpConfig {
    /// The endpoint as shown in metrics and logs: scheme, authority and path, never a query.
    pub fn endpoint_label(&self) -> String {
        endpoint_label(&self.endpoint)
    }

    /// One line for `auditgate check`.
    pub fn describe(&self) -> String {
        format!(
            "otlp {:?} -> {} (service {:?}, {} entries a request, {} header{}, on_rejected {})",
            self.name,
            self.endpoint_label(),
            self.service_name,
            self.batch_size,
            self.headers.len(),
            if self.headers.len() == 1 { "" } else { "s" },
            match self.on_rejected {
                OnRejected::Hold => "hold",
                OnRejected::Skip => "skip",
            }
        )
    }
}

fn endpoint_label(uri: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |authority| authority.host()),
        match uri.port_u16() {
            Some(port) => format!(":{port}{}", uri.path()),
            None => uri.path().to_string(),
        }
    )
}

/// Most entries one request may carry.
const MAX_BATCH_SIZE: usize = 10_000;

/// Headers the exporter sets itself; a table may not replace them.
const OWN_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

/// Where a table is, for errors: `otlp #2 ("siem")`, or `otlp #2` without a name.
pub fn otlp_location(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("otlp #{} ({name:?})", index + 1),
        None => format!("otlp #{}", index + 1),
    }
}

/// Validates every `[[otlp]]` table, collecting every error with its place.
pub fn validate_otlp(
    tables: &[(usize, OtlpFile)],
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Vec<OtlpConfig> {
    let mut outputs: Vec<OtlpConfig> = Vec::new();
    for (index, file) in tables {
        let place = otlp_location(*index, file.name.as_deref());
        let at = |key: &str| format!("{place}.{key}");
        if let Some(config) = validate_one(file, base, &place, &at, errors) {
            if outputs.iter().any(|other| other.name == config.name) {
                errors.push(ConfigError::new(
                    &at("name"),
                    format!(
                        "`{}` is the name of another [[otlp]] output: give each its own `name` \
                         (it names the output's cursor file and metrics)",
                        config.name
                    ),
                ));
                continue;
            }
            outputs.push(config);
        }
    }
    outputs
}

fn validate_one(
    file: &OtlpFile,
    base: &Path,
    place: &str,
    at: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) -> Option<OtlpConfig> {
    let before = errors.len();
    let endpoint = match file.endpoint.as_deref() {
        None | Some("") => {
            errors.push(ConfigError::new(
                place,
                "missing `endpoint`: the collector's logs URL, like http://collector:4318/v1/logs",
            ));
            None
        }
        Some(text) => match parse_endpoint(text) {
            Ok(uri) => Some(uri),
            Err(message) => {
                errors.push(ConfigError::new(&at("endpoint"), message));
                None
            }
        },
    };
    let name = match (&file.name, &endpoint) {
        (Some(name), _) if valid_name(name) => Some(name.clone()),
        (Some(name), _) => {
            errors.push(ConfigError::new(
                &at("name"),
                format!(
                    "`{}` must be 1-64 characters of letters, digits, '.', '_' or '-'",
                    name.chars().take(80).collect::<String>()
                ),
            ));
            None
        }
        (None, Some(endpoint)) => Some(name_from_endpoint(endpoint)),
        (None, None) => None,
    };
    let mut headers = Vec::new();
    for (key, value) in file.headers.iter().flatten() {
        let location = at(&format!("headers.{key}"));
        let Ok(header) = http::HeaderName::from_bytes(key.as_bytes()) else {
            errors.push(ConfigError::new(&location, "is not a header name"));
            continue;
        };
        if OWN_HEADERS.contains(&header.as_str()) {
            errors.push(ConfigError::new(
                &location,
                "is set by auditgate itself (OTLP/HTTP protobuf, gzip)",
            ));
            continue;
        }
        match http::HeaderValue::from_str(value) {
            // Values are secrets often enough (API keys) that they are marked so, and never
            // printed in a message.
            Ok(mut header_value) => {
                header_value.set_sensitive(true);
                headers.push((header, header_value));
            }
            Err(_) => errors.push(ConfigError::new(
                &location,
                "the value holds a character a header cannot carry (a line break or a control \
                 character)",
            )),
        }
    }
    let timeout = positive_duration_or(
        &at("timeout"),
        file.timeout.as_deref(),
        Duration::from_secs(10),
        errors,
    );
    let interval = positive_duration_or(
        &at("interval"),
        file.interval.as_deref(),
        Duration::from_secs(1),
        errors,
    );
    let max_backoff = duration_or(
        &at("max_backoff"),
        file.max_backoff.as_deref(),
        Duration::from_secs(60),
        errors,
    );
    if max_backoff < FIRST_BACKOFF {
        errors.push(ConfigError::new(
            &at("max_backoff"),
            "must be at least 500ms (the first wait after a failure)",
        ));
    }
    let batch_size = file.batch_size.unwrap_or(512);
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        errors.push(ConfigError::new(
            &at("batch_size"),
            format!("must be between 1 and {MAX_BATCH_SIZE}"),
        ));
    }
    let service_name = file
        .service_name
        .clone()
        .unwrap_or_else(|| "auditgate".to_string());
    if service_name.trim().is_empty() {
        errors.push(ConfigError::new(&at("service_name"), "must not be empty"));
    }
    let mut resource = Vec::new();
    for (key, value) in file.resource.iter().flatten() {
        if key.trim().is_empty() {
            errors.push(ConfigError::new(
                &at("resource"),
                "an attribute name must not be empty",
            ));
        } else if RESOURCE_SET_BY_AUDITGATE.contains(&key.as_str()) {
            errors.push(ConfigError::new(
                &at(&format!("resource.{key}")),
                "is set by auditgate itself (service.name comes from `service_name`)",
            ));
        } else {
            resource.push((key.clone(), value.clone()));
        }
    }
    let on_rejected = match file.on_rejected.as_deref() {
        None | Some("hold") => OnRejected::Hold,
        Some("skip") => OnRejected::Skip,
        Some(other) => {
            errors.push(ConfigError::new(
                &at("on_rejected"),
                format!(
                    "`{}` is not one of hold, skip",
                    other.chars().take(64).collect::<String>()
                ),
            ));
            OnRejected::Hold
        }
    };
    let ca_file = file.ca_file.as_deref().map(|path| resolve(base, path));
    let https = endpoint
        .as_ref()
        .is_some_and(|uri| uri.scheme_str() == Some("https"));
    let tls = if https {
        crate::net::https_client(ca_file.as_deref(), &at("ca_file"), &at("endpoint"), errors)
    } else {
        if ca_file.is_some() && endpoint.is_some() {
            errors.push(ConfigError::new(
                &at("ca_file"),
                "applies to an https:// endpoint, and this one is http://",
            ));
        }
        None
    };
    if errors.len() > before {
        return None;
    }
    Some(OtlpConfig {
        name: name?,
        endpoint: endpoint?,
        headers,
        timeout,
        batch_size,
        interval,
        max_backoff,
        ca_file,
        tls,
        service_name,
        resource,
        backfill: file.backfill.unwrap_or(true),
        on_rejected,
    })
}

/// The first wait after a failed attempt; each failure doubles it up to `max_backoff`.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Resource attributes auditgate sets from the log and the host, so a table cannot pose as
/// another log.
const RESOURCE_SET_BY_AUDITGATE: &[&str] = &[
    "service.name",
    "service.version",
    "service.instance.id",
    "host.name",
    "auditgate.log.id",
];

fn parse_endpoint(text: &str) -> Result<http::Uri, String> {
    let shown = text.chars().take(200).collect::<String>();
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("`{shown}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "`{shown}` must start with http:// or https:// (OTLP/HTTP; gRPC is not supported)"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{shown}` names no host"));
    }
    if uri
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        return Err(
            "must not carry a user or password: put credentials in `headers` (with ${VAR})"
                .to_string(),
        );
    }
    if matches!(uri.path(), "" | "/") {
        return Err(format!(
            "`{shown}` names no path: OTLP/HTTP collectors take logs at /v1/logs \
             (http://collector:4318/v1/logs)"
        ));
    }
    Ok(uri)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `collector-4318-v1-logs` for http://collector:4318/v1/logs: readable in a file name and a
/// metric label.
fn name_from_endpoint(uri: &http::Uri) -> String {
    let text = format!(
        "{}-{}-{}",
        uri.host().unwrap_or_default(),
        uri.port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            }),
        uri.path()
    );
    let mut name = String::new();
    for c in text.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_') {
            c
        } else {
            '-'
        };
        if !(c == '-' && name.ends_with('-')) {
            name.push(c);
        }
    }
    let name: String = name.trim_matches('-').chars().take(64).collect();
    if name.is_empty() {
        "otlp".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<OtlpConfig>, String> {
        let table: toml::Table = toml::from_str(text).expect("toml");
        let items = table["otlp"].as_array().expect("array").clone();
        let files: Vec<(usize, OtlpFile)> = items
            .into_iter()
            .enumerate()
            .map(|(index, item)| (index, item.try_into().expect("fields")))
            .collect();
        let mut errors = Vec::new();
        let outputs = validate_otlp(&files, Path::new("/etc/auditgate"), &mut errors);
        if errors.is_empty() {
            Ok(outputs)
        } else {
            Err(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }

    #[test]
    fn defaults_and_a_name_made_from_the_endpoint() {
        let outputs = parse(
            "[[otlp]]\nendpoint = \"http://collector:4318/v1/logs\"\n\
             [[otlp]]\nname = \"siem\"\nendpoint = \"https://otlp.example.com/v1/logs\"\n\
             headers = { authorization = \"Bearer k\" }\nresource = { \"deployment.environment.name\" = \"prod\" }\n\
             on_rejected = \"skip\"\nbackfill = false\nbatch_size = 100\n",
        )
        .expect("valid");
        assert_eq!(outputs[0].name, "collector-4318-v1-logs");
        assert_eq!(outputs[0].timeout, Duration::from_secs(10));
        assert_eq!(outputs[0].batch_size, 512);
        assert_eq!(outputs[0].service_name, "auditgate");
        assert_eq!(outputs[0].on_rejected, OnRejected::Hold);
        assert!(outputs[0].backfill);
        assert!(outputs[0].tls.is_none());
        assert_eq!(outputs[0].endpoint_label(), "http://collector:4318/v1/logs");
        assert_eq!(outputs[1].name, "siem");
        assert!(outputs[1].tls.is_some(), "https gets the TLS client");
        assert_eq!(outputs[1].headers[0].0, "authorization");
        assert!(outputs[1].headers[0].1.is_sensitive());
        assert_eq!(outputs[1].on_rejected, OnRejected::Skip);
        assert!(!outputs[1].backfill);
        assert_eq!(
            outputs[1].endpoint_label(),
            "https://otlp.example.com/v1/logs"
        );
    }

    #[test]
    fn every_bad_table_is_named_with_its_key() {
        let errors = parse(
            r#"
            [[otlp]]
            endpoint = "grpc://collector:4317"
            [[otlp]]
            name = "two"
            endpoint = "http://collector:4318"
            timeout = "soon"
            batch_size = 0
            headers = { "content-type" = "application/json", "bad header" = "x" }
            [[otlp]]
            name = "bad name!"
            endpoint = "http://user:pw@collector:4318/v1/logs"
            ca_file = "ca.pem"
            on_rejected = "drop"
            resource = { "service.name" = "other" }
            [[otlp]]
            name = "four"
            [[otlp]]
            endpoint = "http://c:4318/v1/logs"
            max_backoff = "10ms"
            interval = "0s"
            [[otlp]]
            endpoint = "http://c:4318/v1/logs"
            [[otlp]]
            endpoint = "http://c:4318/v1/logs"
            "#,
        )
        .expect_err("invalid");
        for expected in [
            "otlp #1.endpoint: `grpc://collector:4317` must start with http:// or https://",
            "otlp #2 (\"two\").endpoint: `http://collector:4318` names no path",
            "otlp #2 (\"two\").timeout: ",
            "otlp #2 (\"two\").batch_size: must be between 1 and 10000",
            "otlp #2 (\"two\").headers.content-type: is set by auditgate itself",
            "otlp #2 (\"two\").headers.bad header: is not a header name",
            "otlp #3 (\"bad name!\").name: `bad name!` must be 1-64 characters",
            "otlp #3 (\"bad name!\").endpoint: must not carry a user or password",
            "otlp #3 (\"bad name!\").on_rejected: `drop` is not one of hold, skip",
            "otlp #3 (\"bad name!\").resource.service.name: is set by auditgate itself",
            "otlp #4 (\"four\"): missing `endpoint`",
            "otlp #5.max_backoff: must be at least 500ms",
            "otlp #5.interval: must be longer than 0",
            "otlp #7.name: `c-4318-v1-logs` is the name of another [[otlp]] output",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
        let errors = parse(
            "[[otlp]]\nendpoint = \"http://c:4318/v1/logs\"\nca_file = \"ca.pem\"\n\
             [[otlp]]\nendpoint = \"https://c:4318/v1/logs\"\nca_file = \"missing-ca.pem\"\n",
        )
        .expect_err("invalid");
        assert!(
            errors.contains("otlp #1.ca_file: applies to an https:// endpoint"),
            "{errors}"
        );
        assert!(
            errors
                .contains("otlp #2.ca_file: cannot read the CA file /etc/auditgate/missing-ca.pem"),
            "{errors}"
        );
    }
}
