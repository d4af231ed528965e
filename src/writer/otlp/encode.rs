//! Entries as OpenTelemetry log records: one `ExportLogsServiceRequest` per batch, protobuf,
//! gzipped, built with the OpenTelemetry project's own generated messages
//! (`opentelemetry-proto`) so the wire format is theirs, not ours.
//!
//! Fields with a name in OpenTelemetry's semantic conventions use it (`http.request.method`,
//! `url.path`, `http.response.status_code`, `http.route`, `client.address`,
//! `user_agent.original`, `enduser.id`, `user.email`, `user.full_name`); the others are under
//! `auditgate.` so they never collide with a convention. The record's time is the entry's
//! `createdAt`, and everything in a record comes from the stored entry, so a batch sent again
//! after a failure is byte for byte the same.

use std::io::Write as _;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use serde_json::Value;

use crate::entry::{AuditEntry, Outcome};

/// The resource every record of one output shares: who sent it.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub service_name: String,
    pub log_id: String,
    pub host_name: Option<String>,
    /// The table's own `resource` attributes.
    pub extra: Vec<(String, String)>,
}

impl ResourceInfo {
    fn to_resource(&self) -> Resource {
        let mut attributes = vec![
            string("service.name", &self.service_name),
            string("service.version", env!("CARGO_PKG_VERSION")),
            // One log per sidecar: the log id is what tells two instances of the service apart.
            string("service.instance.id", &self.log_id),
            string("auditgate.log.id", &self.log_id),
        ];
        if let Some(host) = &self.host_name {
            attributes.push(string("host.name", host));
        }
        attributes.extend(self.extra.iter().map(|(key, value)| string(key, value)));
        Resource {
            attributes,
            ..Default::default()
        }
    }
}

/// The host's name as the system gives it (`HOSTNAME`, else `/etc/hostname`), if any.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// The request for a batch of entries, as protobuf bytes (not yet compressed).
pub fn export_request(resource: &ResourceInfo, entries: &[&AuditEntry]) -> Vec<u8> {
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.to_resource()),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "auditgate".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                log_records: entries.iter().map(|entry| log_record(entry)).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    request.encode_to_vec()
}

/// Gzips a request body (`Content-Encoding: gzip`).
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4 + 64),
        flate2::Compression::default(),
    );
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// One entry as a log record.
pub fn log_record(entry: &AuditEntry) -> LogRecord {
    let time = entry
        .created_at
        .timestamp_nanos_opt()
        .and_then(|nanos| u64::try_from(nanos).ok())
        .unwrap_or(0);
    let (severity, severity_text) = match entry.outcome {
        Outcome::Success => (SeverityNumber::Info, "INFO"),
        Outcome::Failure => (SeverityNumber::Warn, "WARN"),
        Outcome::Error => (SeverityNumber::Error, "ERROR"),
        // The response was never seen: worth a look, not an error of the app.
        Outcome::Unknown => (SeverityNumber::Warn, "WARN"),
    };
    let mut attributes = vec![
        string("auditgate.entry.id", &entry.id),
        int(
            "auditgate.seq",
            i64::try_from(entry.seq).unwrap_or(i64::MAX),
        ),
        string("auditgate.action", &entry.action),
        string("auditgate.outcome", entry.outcome.as_str()),
        boolean("auditgate.actor.verified", entry.actor_verified),
    ];
    let optional = [
        ("http.request.method", &entry.method),
        ("url.path", &entry.path),
        ("http.route", &entry.route),
        ("client.address", &entry.ip),
        ("user_agent.original", &entry.user_agent),
        ("enduser.id", &entry.actor_id),
        ("user.email", &entry.actor_email),
        ("user.full_name", &entry.actor_name),
        ("auditgate.actor.source", &entry.actor_source),
        ("auditgate.tenant", &entry.tenant),
        ("auditgate.resource.type", &entry.resource_type),
        ("auditgate.resource.id", &entry.resource_id),
        ("auditgate.rule", &entry.rule),
        ("auditgate.request.id", &entry.request_id),
        ("auditgate.error", &entry.error),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            attributes.push(string(key, value));
        }
    }
    if let Some(status) = entry.status {
        attributes.push(int("http.response.status_code", i64::from(status)));
    }
    if let Some(micros) = entry.duration_us {
        attributes.push(KeyValue {
            key: "auditgate.duration_ms".to_string(),
            value: Some(any(any_value::Value::DoubleValue(micros as f64 / 1000.0))),
            ..Default::default()
        });
    }
    if !entry.metadata.is_empty() {
        attributes.push(KeyValue {
            key: "auditgate.metadata".to_string(),
            value: Some(json_value(&Value::Object(entry.metadata.clone()))),
            ..Default::default()
        });
    }
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_number: severity as i32,
        severity_text: severity_text.to_string(),
        body: Some(any(any_value::Value::StringValue(entry.action.clone()))),
        attributes,
        event_name: entry.action.clone(),
        ..Default::default()
    }
}

fn any(value: any_value::Value) -> AnyValue {
    AnyValue { value: Some(value) }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(any(any_value::Value::StringValue(value.to_string()))),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(any(any_value::Value::IntValue(value))),
        ..Default::default()
    }
}

fn boolean(key: &str, value: bool) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(any(any_value::Value::BoolValue(value))),
        ..Default::default()
    }
}

/// A JSON value as an OpenTelemetry value: objects as key-value lists, arrays as arrays,
/// integers as integers (a `u64` past `i64` as a double), `null` as an empty value.
fn json_value(value: &Value) -> AnyValue {
    let inner = match value {
        Value::Null => None,
        Value::Bool(flag) => Some(any_value::Value::BoolValue(*flag)),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => Some(any_value::Value::IntValue(integer)),
            None => Some(any_value::Value::DoubleValue(
                number.as_f64().unwrap_or(f64::NAN),
            )),
        },
        Value::String(text) => Some(any_value::Value::StringValue(text.clone())),
        Value::Array(items) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(json_value).collect(),
        })),
        Value::Object(map) => Some(any_value::Value::KvlistValue(KeyValueList {
            values: map
                .iter()
                .map(|(key, value)| KeyValue {
                    key: key.clone(),
                    value: Some(json_value(value)),
                    ..Default::default()
                })
                .collect(),
        })),
    };
    AnyValue { value: inner }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read as _;

    fn attributes(record: &LogRecord) -> BTreeMap<String, any_value::Value> {
        record
            .attributes
            .iter()
            .filter_map(|pair| {
                Some((
                    pair.key.clone(),
                    pair.value.clone()?.value.expect("a value"),
                ))
            })
            .collect()
    }

    fn text(value: &str) -> any_value::Value {
        any_value::Value::StringValue(value.to_string())
    }

    #[test]
    fn an_entry_becomes_a_record_with_semantic_convention_names() {
        let mut entry = AuditEntry::new("orders", "user.deleted");
        entry.seq = 42;
        entry.outcome = Outcome::Failure;
        entry.status = Some(403);
        entry.method = Some("DELETE".into());
        entry.path = Some("/api/users/7".into());
        entry.route = Some("/api/users/{id}".into());
        entry.ip = Some("203.0.113.9".into());
        entry.user_agent = Some("curl/8".into());
        entry.actor_id = Some("u-1".into());
        entry.actor_email = Some("ada@example.com".into());
        entry.resource_type = Some("user".into());
        entry.resource_id = Some("7".into());
        entry.duration_us = Some(1500);
        entry.metadata =
            serde_json::json!({"n": 3, "big": u64::MAX, "list": [true, null], "o": {"k": "v"}})
                .as_object()
                .cloned()
                .expect("object");
        let record = log_record(&entry);
        assert_eq!(record.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(record.severity_text, "WARN");
        assert_eq!(record.event_name, "user.deleted");
        assert_eq!(
            record.time_unix_nano,
            entry.created_at.timestamp_nanos_opt().expect("in range") as u64
        );
        let found = attributes(&record);
        assert_eq!(found["http.request.method"], text("DELETE"));
        assert_eq!(found["url.path"], text("/api/users/7"));
        assert_eq!(found["http.route"], text("/api/users/{id}"));
        assert_eq!(found["client.address"], text("203.0.113.9"));
        assert_eq!(found["user_agent.original"], text("curl/8"));
        assert_eq!(found["enduser.id"], text("u-1"));
        assert_eq!(found["user.email"], text("ada@example.com"));
        assert_eq!(
            found["http.response.status_code"],
            any_value::Value::IntValue(403)
        );
        assert_eq!(found["auditgate.seq"], any_value::Value::IntValue(42));
        assert_eq!(found["auditgate.entry.id"], text(&entry.id));
        assert_eq!(
            found["auditgate.duration_ms"],
            any_value::Value::DoubleValue(1.5)
        );
        assert!(
            !found.contains_key("user.full_name"),
            "absent fields are left out"
        );
        let any_value::Value::KvlistValue(metadata) = &found["auditgate.metadata"] else {
            panic!("metadata is a key-value list: {found:?}");
        };
        let metadata: BTreeMap<&str, &AnyValue> = metadata
            .values
            .iter()
            .map(|pair| (pair.key.as_str(), pair.value.as_ref().expect("value")))
            .collect();
        assert_eq!(metadata["n"].value, Some(any_value::Value::IntValue(3)));
        assert_eq!(
            metadata["big"].value,
            Some(any_value::Value::DoubleValue(u64::MAX as f64))
        );
        assert_eq!(
            metadata["list"].value,
            Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![
                    any(any_value::Value::BoolValue(true)),
                    AnyValue { value: None }
                ]
            }))
        );
    }

    #[test]
    fn a_batch_decodes_back_with_its_resource() {
        let entries: Vec<AuditEntry> = (1..=3)
            .map(|seq| {
                let mut entry = AuditEntry::new("orders", "note.read");
                entry.seq = seq;
                entry.outcome = Outcome::Success;
                entry
            })
            .collect();
        let resource = ResourceInfo {
            service_name: "billing-audit".into(),
            log_id: "orders".into(),
            host_name: Some("node-1".into()),
            extra: vec![("deployment.environment.name".into(), "prod".into())],
        };
        let bytes = export_request(&resource, &entries.iter().collect::<Vec<_>>());
        let compressed = gzip(&bytes).expect("gzip");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut plain)
            .expect("gunzip");
        let decoded = ExportLogsServiceRequest::decode(plain.as_slice()).expect("protobuf");
        let logs = &decoded.resource_logs[0];
        let sent_resource: BTreeMap<String, String> = logs
            .resource
            .as_ref()
            .expect("resource")
            .attributes
            .iter()
            .filter_map(|pair| match pair.value.clone()?.value? {
                any_value::Value::StringValue(value) => Some((pair.key.clone(), value)),
                _ => None,
            })
            .collect();
        assert_eq!(sent_resource["service.name"], "billing-audit");
        assert_eq!(sent_resource["service.instance.id"], "orders");
        assert_eq!(sent_resource["host.name"], "node-1");
        assert_eq!(sent_resource["deployment.environment.name"], "prod");
        let records = &logs.scope_logs[0].log_records;
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].severity_number, SeverityNumber::Info as i32);
        assert_eq!(
            attributes(&records[2])["auditgate.seq"],
            any_value::Value::IntValue(3)
        );
        // The same entries give the same bytes, so a retry resends exactly what failed.
        assert_eq!(
            export_request(&resource, &entries.iter().collect::<Vec<_>>()),
            bytes
        );
    }
}
