//! OpenTelemetry logs through the real binary: a test collector (a hyper server on
//! 127.0.0.1:0) receives what `[[otlp]]` sends, decodes it with the OpenTelemetry project's own
//! messages (`opentelemetry-proto`) and, independently, with their Python package
//! (`scripts/otlp-decode`). Every entry the store holds arrives once, through failures, a
//! restart and a reload; a collector that is down, silent or refusing changes nothing the
//! proxy's clients see.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as OtelValue;
use prost::Message as _;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::support::{
    eventually, metric_value, read_all_entries, write_config, HttpClient, Process, TempDir,
    Upstream,
};

const RULES: &str = r#"
[unmatched]
record = "all"

[[rule]]
name = "offboard user"
method = "DELETE"
path = "/users/{id}"
action = "user.offboarded"
resource = { type = "user", id = "{id}" }
actor = { id = "request.header:x-user", email = "request.header:x-email" }
"#;

/// One request the collector received.
struct Received {
    /// What it answered.
    status: u16,
    headers: HeaderMap,
    /// The body as sent (gzip).
    body: Bytes,
    request: ExportLogsServiceRequest,
}

/// How the collector answers.
#[derive(Default)]
struct Behaviour {
    /// Statuses answered first, one per request.
    script: VecDeque<u16>,
    /// Answered to every request after the script; 200 when unset.
    always: Option<u16>,
    /// A header every request must carry, else 401.
    required_header: Option<(String, String)>,
    /// A request holding a record with this `url.path` is refused with 400.
    refused_path: Option<String>,
}

/// A test OTLP/HTTP logs collector at `http://ADDR/v1/logs`.
struct Collector {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let behaviour: Arc<Mutex<Behaviour>> = Arc::default();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (task_behaviour, task_received) = (behaviour.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (behaviour, received) = (task_behaviour.clone(), task_received.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let (behaviour, received) = (behaviour.clone(), received.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(request, &behaviour, &received).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            addr,
            behaviour,
            received,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/logs", self.addr)
    }

    fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().expect("behaviour"));
    }

    /// The entry ids of every record in requests answered 2xx, in the order received.
    fn accepted_ids(&self) -> Vec<String> {
        let received = self.received.lock().expect("received");
        received
            .iter()
            .filter(|request| request.status < 300)
            .flat_map(|request| records(&request.request))
            .map(|record| string(&record, "auditgate.entry.id").expect("an entry id"))
            .collect()
    }

    fn statuses(&self) -> Vec<u16> {
        let received = self.received.lock().expect("received");
        received.iter().map(|request| request.status).collect()
    }
}

async fn answer(
    request: Request<Incoming>,
    behaviour: &Mutex<Behaviour>,
    received: &Mutex<Vec<Received>>,
) -> Response<Full<Bytes>> {
    let reply = |status: u16| {
        Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::new()))
            .expect("response")
    };
    if request.method() != "POST" || request.uri().path() != "/v1/logs" {
        return reply(404);
    }
    let headers = request.headers().clone();
    let body = request
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert_eq!(headers["content-encoding"], "gzip");
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut plain)
        .expect("the body is gzip");
    let decoded =
        ExportLogsServiceRequest::decode(plain.as_slice()).expect("an ExportLogsServiceRequest");
    let status = {
        let mut behaviour = behaviour.lock().expect("behaviour");
        let refused = behaviour.refused_path.as_ref().is_some_and(|path| {
            records(&decoded)
                .iter()
                .any(|record| string(record, "url.path").as_ref() == Some(path))
        });
        let unauthorized = behaviour
            .required_header
            .as_ref()
            .is_some_and(|(name, value)| {
                headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
            });
        if unauthorized {
            401
        } else if refused {
            400
        } else if let Some(status) = behaviour.script.pop_front() {
            status
        } else {
            behaviour.always.unwrap_or(200)
        }
    };
    received.lock().expect("received").push(Received {
        status,
        headers,
        body,
        request: decoded,
    });
    reply(status)
}

/// One log record with its resource, flattened.
struct Record {
    resource: BTreeMap<String, OtelValue>,
    attributes: BTreeMap<String, OtelValue>,
    severity_text: String,
    event_name: String,
    time_unix_nano: u64,
}

fn records(request: &ExportLogsServiceRequest) -> Vec<Record> {
    let pairs = |list: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
        list.iter()
            .filter_map(|pair| Some((pair.key.clone(), pair.value.clone()?.value?)))
            .collect::<BTreeMap<_, _>>()
    };
    let mut out = Vec::new();
    for resource_logs in &request.resource_logs {
        let resource = pairs(
            &resource_logs
                .resource
                .as_ref()
                .expect("a resource")
                .attributes,
        );
        for scope_logs in &resource_logs.scope_logs {
            assert_eq!(
                scope_logs.scope.as_ref().expect("a scope").name,
                "auditgate"
            );
            for record in &scope_logs.log_records {
                out.push(Record {
                    resource: resource.clone(),
                    attributes: pairs(&record.attributes),
                    severity_text: record.severity_text.clone(),
                    event_name: record.event_name.clone(),
                    time_unix_nano: record.time_unix_nano,
                });
            }
        }
    }
    out
}

fn string(record: &Record, key: &str) -> Option<String> {
    match record.attributes.get(key)? {
        OtelValue::StringValue(text) => Some(text.clone()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn otlp_table(endpoint: &str, extra: &str) -> String {
    format!(
        "[[otlp]]\nendpoint = \"{endpoint}\"\ninterval = \"50ms\"\nmax_backoff = \"1s\"\ntimeout = \"2s\"\n{extra}\n"
    )
}

/// The ids of every entry in the store.
fn stored_ids(db: &Path) -> BTreeSet<String> {
    if !db.exists() {
        return BTreeSet::new();
    }
    read_all_entries(db)
        .into_iter()
        .map(|entry| entry.id)
        .collect()
}

/// Waits until the collector has accepted every stored entry; fails naming what is missing.
async fn wait_delivered(collector: &Collector, db: &Path, at_least: usize) {
    let delivered = eventually(Duration::from_secs(20), async || {
        let stored = stored_ids(db);
        let accepted: BTreeSet<String> = collector.accepted_ids().into_iter().collect();
        stored.len() >= at_least && stored.is_subset(&accepted)
    })
    .await;
    let stored = stored_ids(db);
    let accepted: BTreeSet<String> = collector.accepted_ids().into_iter().collect();
    assert!(
        delivered,
        "not delivered: {:?} (collector answered {:?})",
        stored.difference(&accepted).collect::<Vec<_>>(),
        collector.statuses()
    );
}

/// Each accepted id once, and exactly the stored ones.
fn assert_exactly_once(collector: &Collector, db: &Path) {
    let accepted = collector.accepted_ids();
    let unique: BTreeSet<String> = accepted.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        accepted.len(),
        "an entry was delivered twice: {accepted:?}"
    );
    assert_eq!(
        unique,
        stored_ids(db),
        "delivered and stored entries differ"
    );
}

/// Stops the process off the test's thread, so the collector (a task on that thread) can answer
/// the requests the process sends while it stops.
async fn stop(process: Process) {
    tokio::task::spawn_blocking(move || process.stop())
        .await
        .expect("stopped");
}

async fn metrics(process: &Process) -> String {
    HttpClient::new()
        .get(&format!("http://{}/metrics", process.admin))
        .await
        .text()
}

#[tokio::test]
async fn entries_arrive_as_log_records_with_semantic_convention_attributes() {
    let upstream = Upstream::start().await;
    let collector = Collector::start().await;
    let dir = TempDir::new("otlp");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        &format!(
            "{RULES}\n{}",
            otlp_table(
                &collector.endpoint(),
                "name = \"siem\"\nservice_name = \"shop-audit\"\n\
                 headers = { x-tenant-key = \"t-123\" }\n\
                 resource = { \"deployment.environment.name\" = \"test\" }"
            )
        ),
    );
    let db = dir.0.join("audit.db");
    let process = Process::start(&config);
    let client = HttpClient::new();
    let refused = client
        .send(
            "DELETE",
            &format!("http://{}/users/42", process.proxy),
            &[
                ("x-user", "u-17"),
                ("x-email", "ada@example.com"),
                ("user-agent", "otlp-test/1"),
                ("x-test-status", "403"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(refused.status, 403);
    let read = client
        .get(&format!("http://{}/notes/%C3%BC", process.proxy))
        .await;
    assert_eq!(read.status, 200);
    wait_delivered(&collector, &db, 3).await;
    let page_ok = eventually(Duration::from_secs(10), async || {
        let page = metrics(&process).await;
        let labels = format!("name=\"siem\",endpoint=\"{}\"", collector.endpoint());
        metric_value(&page, &format!("auditgate_otlp_sent_total{{{labels}}}"))
            == Some(collector.accepted_ids().len() as f64)
            && metric_value(&page, &format!("auditgate_otlp_lag_entries{{{labels}}}")) == Some(0.0)
            && metric_value(&page, &format!("auditgate_otlp_lag_seconds{{{labels}}}")) == Some(0.0)
    })
    .await;
    assert!(page_ok, "{}", metrics(&process).await);
    // A clean stop sends the last entry (audit.stopped) before the process exits.
    stop(process).await;
    let stored = read_all_entries(&db);
    assert_eq!(
        stored.last().map(|entry| entry.action.as_str()),
        Some("audit.stopped")
    );
    assert_exactly_once(&collector, &db);

    let received = collector.received.lock().expect("received");
    let headers = &received[0].headers;
    assert_eq!(headers["x-tenant-key"], "t-123");
    assert!(headers["user-agent"]
        .to_str()
        .expect("ascii")
        .starts_with("auditgate/"));
    let all: Vec<Record> = received
        .iter()
        .flat_map(|request| records(&request.request))
        .collect();
    let entry = stored
        .iter()
        .find(|entry| entry.action == "user.offboarded")
        .expect("the offboard entry");
    let record = all
        .iter()
        .find(|record| string(record, "auditgate.entry.id").as_ref() == Some(&entry.id))
        .expect("its record");
    let text = |value: &str| OtelValue::StringValue(value.to_string());
    let expected = [
        ("http.request.method", text("DELETE")),
        ("url.path", text("/users/42")),
        ("http.route", text("/users/{id}")),
        ("http.response.status_code", OtelValue::IntValue(403)),
        ("client.address", text("127.0.0.1")),
        ("user_agent.original", text("otlp-test/1")),
        ("enduser.id", text("u-17")),
        ("user.email", text("ada@example.com")),
        ("auditgate.action", text("user.offboarded")),
        ("auditgate.outcome", text("failure")),
        ("auditgate.resource.type", text("user")),
        ("auditgate.resource.id", text("42")),
        ("auditgate.rule", text("offboard user")),
        ("auditgate.seq", OtelValue::IntValue(entry.seq as i64)),
        (
            "auditgate.request.id",
            text(entry.request_id.as_deref().expect("a request id")),
        ),
    ];
    for (key, value) in &expected {
        assert_eq!(record.attributes.get(*key), Some(value), "{key}");
    }
    assert_eq!(record.event_name, "user.offboarded");
    assert_eq!(record.severity_text, "WARN");
    assert_eq!(
        record.time_unix_nano,
        entry.created_at.timestamp_nanos_opt().expect("in range") as u64
    );
    let resource = &record.resource;
    assert_eq!(resource["service.name"], text("shop-audit"));
    assert_eq!(resource["service.instance.id"], text("test"));
    assert_eq!(resource["auditgate.log.id"], text("test"));
    assert_eq!(resource["deployment.environment.name"], text("test"));
    assert_eq!(resource["service.version"], text(env!("CARGO_PKG_VERSION")));
    if let Some(host) = auditgate::writer::otlp::encode::host_name() {
        assert_eq!(resource["host.name"], text(&host));
    }
    // The unicode path as the store has it.
    let read_entry = stored
        .iter()
        .find(|entry| entry.action == "http.get")
        .expect("the read entry");
    let read_record = all
        .iter()
        .find(|record| string(record, "auditgate.entry.id").as_ref() == Some(&read_entry.id))
        .expect("its record");
    assert_eq!(
        string(read_record, "url.path").as_deref(),
        read_entry.path.as_deref()
    );

    // The same bytes, decoded by the OpenTelemetry project's Python messages.
    let bodies: Vec<PathBuf> = received
        .iter()
        .enumerate()
        .map(|(index, request)| {
            let path = dir.0.join(format!("request-{index}.bin"));
            std::fs::write(&path, &request.body).expect("write");
            path
        })
        .collect();
    if let Some(decoded) = decode_independently(&bodies) {
        let records: Vec<&Value> = decoded
            .as_array()
            .expect("an array")
            .iter()
            .flat_map(|request| request["records"].as_array().expect("records"))
            .collect();
        assert_eq!(records.len(), all.len());
        let by_id = |id: &str| {
            records
                .iter()
                .find(|record| record["attributes"]["auditgate.entry.id"]["stringValue"] == id)
                .copied()
        };
        let python = by_id(&entry.id).expect("the offboard record in Python's decoding");
        assert_eq!(python["eventName"], "user.offboarded");
        assert_eq!(python["severityText"], "WARN");
        assert_eq!(python["body"], json!({"stringValue": "user.offboarded"}));
        assert_eq!(python["timeUnixNano"], record.time_unix_nano.to_string());
        let attributes = &python["attributes"];
        assert_eq!(
            attributes["http.request.method"],
            json!({"stringValue": "DELETE"})
        );
        assert_eq!(
            attributes["http.response.status_code"],
            json!({"intValue": "403"})
        );
        assert_eq!(attributes["enduser.id"], json!({"stringValue": "u-17"}));
        assert_eq!(
            attributes["client.address"],
            json!({"stringValue": "127.0.0.1"})
        );
        assert_eq!(
            attributes["user_agent.original"],
            json!({"stringValue": "otlp-test/1"})
        );
        assert_eq!(attributes["url.path"], json!({"stringValue": "/users/42"}));
        assert_eq!(
            decoded[0]["resource"]["service.name"],
            json!({"stringValue": "shop-audit"})
        );
        // Both decoders see the same attribute names on every record.
        for rust in &all {
            let id = string(rust, "auditgate.entry.id").expect("id");
            let python = by_id(&id).expect("every record in Python's decoding");
            let python_keys: BTreeSet<&str> = python["attributes"]
                .as_object()
                .expect("attributes")
                .keys()
                .map(String::as_str)
                .collect();
            let rust_keys: BTreeSet<&str> = rust.attributes.keys().map(String::as_str).collect();
            assert_eq!(python_keys, rust_keys, "{id}");
        }
    }
}

/// Runs `scripts/otlp-decode` on the bodies when `AUDITGATE_REQUIRE_OTLP_DECODER=1` (the script
/// installs its pinned package if needed, and any failure fails the test) or when the decoder is
/// already installed; otherwise says why it was skipped.
fn decode_independently(bodies: &[PathBuf]) -> Option<Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let required = std::env::var("AUDITGATE_REQUIRE_OTLP_DECODER").as_deref() == Ok("1");
    let installed = root.join("target/otlp-venv/bin/python").exists();
    if !required && !installed {
        eprintln!(
            "skipping the independent OTLP decoding: set AUDITGATE_REQUIRE_OTLP_DECODER=1 \
             (or run scripts/otlp-decode --install) to decode with the OpenTelemetry Python package"
        );
        return None;
    }
    let output = std::process::Command::new(root.join("scripts/otlp-decode"))
        .args(bodies)
        .output()
        .expect("scripts/otlp-decode runs");
    assert!(
        output.status.success(),
        "the OpenTelemetry Python package could not decode what auditgate sent:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("the decoder prints JSON"))
}

#[tokio::test]
async fn a_collector_that_fails_then_recovers_gets_every_entry_once() {
    let upstream = Upstream::start().await;
    let collector = Collector::start().await;
    collector.set(|behaviour| behaviour.script = VecDeque::from([503, 503, 500, 429]));
    let dir = TempDir::new("otlp-recover");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        &format!("{RULES}\n{}", otlp_table(&collector.endpoint(), "")),
    );
    let db = dir.0.join("audit.db");
    let process = Process::start(&config);
    let client = HttpClient::new();
    for index in 0..6 {
        let reply = client
            .get(&format!("http://{}/items/{index}", process.proxy))
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["id"], 4242, "the app's own answer");
    }
    wait_delivered(&collector, &db, 7).await;
    assert_eq!(
        &collector.statuses()[..4],
        &[503, 503, 500, 429],
        "the failures were retried"
    );
    assert_exactly_once(&collector, &db);
    let page = metrics(&process).await;
    let labels = format!(
        "name=\"127.0.0.1-{}-v1-logs\",endpoint=\"{}\"",
        collector.addr.port(),
        collector.endpoint()
    );
    assert_eq!(
        metric_value(
            &page,
            &format!("auditgate_otlp_failed_total{{{labels},reason=\"unavailable\"}}")
        ),
        Some(4.0),
        "{page}"
    );
    assert_eq!(
        metric_value(
            &page,
            &format!("auditgate_otlp_skipped_total{{{labels},reason=\"rejected\"}}")
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_restarted_sidecar_sends_on_after_the_last_acknowledged_entry() {
    let upstream = Upstream::start().await;
    let collector = Collector::start().await;
    let dir = TempDir::new("otlp-restart");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        &format!("{RULES}\n{}", otlp_table(&collector.endpoint(), "")),
    );
    let db = dir.0.join("audit.db");
    let client = HttpClient::new();
    let process = Process::start(&config);
    for index in 0..3 {
        let reply = client
            .get(&format!("http://{}/before/{index}", process.proxy))
            .await;
        assert_eq!(reply.status, 200);
    }
    wait_delivered(&collector, &db, 4).await;
    // The collector goes down: the proxy answers as before and the entries wait in the store.
    collector.set(|behaviour| behaviour.always = Some(503));
    for index in 0..3 {
        let reply = client
            .get(&format!("http://{}/during/{index}", process.proxy))
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["id"], 4242);
    }
    let lagging = eventually(Duration::from_secs(10), async || {
        let page = metrics(&process).await;
        page.lines()
            .find(|line| line.starts_with("auditgate_otlp_lag_entries{"))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .is_some_and(|lag| lag >= 3.0)
    })
    .await;
    assert!(lagging, "the lag shows the waiting entries");
    stop(process).await;
    let before_restart = collector.accepted_ids().len();
    assert!(stored_ids(&db).len() > before_restart, "entries wait");

    // Back up, and a new process on the same store: everything not yet acknowledged arrives,
    // and nothing acknowledged before the restart is sent again.
    collector.set(|behaviour| behaviour.always = None);
    let process = Process::start(&config);
    let reply = client.get(&format!("http://{}/after", process.proxy)).await;
    assert_eq!(reply.status, 200);
    wait_delivered(&collector, &db, 10).await;
    stop(process).await;
    assert_exactly_once(&collector, &db);
    let cursor = std::fs::read_to_string(dir.0.join(format!(
        "audit.db.otlp-127.0.0.1-{}-v1-logs.cursor",
        collector.addr.port()
    )))
    .expect("the cursor file beside the store");
    let cursor: Value = serde_json::from_str(&cursor).expect("JSON");
    assert_eq!(cursor["seq"], stored_ids(&db).len());
    assert_eq!(cursor["logId"], "test");
}

#[tokio::test]
async fn outputs_that_are_down_or_silent_change_nothing_for_clients_and_others_still_deliver() {
    let upstream = Upstream::start().await;
    let healthy = Collector::start().await;
    // A collector that accepts connections and never answers, and a port nobody listens on.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = silent.accept().await {
            holder.lock().expect("held").push(stream);
        }
    });
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let dir = TempDir::new("otlp-down");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        &format!(
            "{RULES}\n{}\n{}\n{}",
            otlp_table(
                &format!("http://{silent_addr}/v1/logs"),
                "name = \"silent\""
            ),
            otlp_table(&format!("http://{closed}/v1/logs"), "name = \"closed\""),
            otlp_table(&healthy.endpoint(), "name = \"healthy\""),
        ),
    );
    let db = dir.0.join("audit.db");
    let process = Process::start(&config);
    let client = HttpClient::new();
    for index in 0..5 {
        let reply = client
            .send(
                "DELETE",
                &format!("http://{}/users/{index}", process.proxy),
                &[("x-user", "u-1")],
                Bytes::new(),
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["id"], 4242, "the app's own answer");
    }
    wait_delivered(&healthy, &db, 6).await;
    // The other two fail, count it, and show every entry waiting; they sent nothing.
    for name in ["silent", "closed"] {
        let value = |page: &str, family: &str, extra: &str| {
            page.lines()
                .find(|line| {
                    line.starts_with(&format!("{family}{{name=\"{name}\"")) && line.contains(extra)
                })
                .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        };
        let failing = eventually(Duration::from_secs(15), async || {
            let page = metrics(&process).await;
            value(
                &page,
                "auditgate_otlp_failed_total",
                "reason=\"unavailable\"",
            )
            .is_some_and(|failed| failed >= 1.0)
                && value(&page, "auditgate_otlp_lag_entries", "").is_some_and(|lag| lag >= 6.0)
                && value(&page, "auditgate_otlp_lag_seconds", "").is_some_and(|lag| lag > 0.0)
        })
        .await;
        let page = metrics(&process).await;
        assert!(failing, "{name}:\n{page}");
        assert_eq!(value(&page, "auditgate_otlp_sent_total", ""), Some(0.0));
    }
    stop(process).await;
    assert_exactly_once(&healthy, &db);
}

#[tokio::test]
async fn a_refused_credential_holds_the_entries_until_a_reload_fixes_it() {
    let upstream = Upstream::start().await;
    let collector = Collector::start().await;
    collector.set(|behaviour| {
        behaviour.required_header = Some(("x-api-key".into(), "right".into()));
    });
    let dir = TempDir::new("otlp-reload");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        &format!(
            "{RULES}\n{}",
            otlp_table(
                &collector.endpoint(),
                "name = \"siem\"\nheaders = { x-api-key = \"wrong\" }"
            )
        ),
    );
    let db = dir.0.join("audit.db");
    let process = Process::start(&config);
    let client = HttpClient::new();
    for index in 0..3 {
        let reply = client
            .get(&format!("http://{}/held/{index}", process.proxy))
            .await;
        assert_eq!(reply.status, 200);
    }
    let refused = eventually(Duration::from_secs(10), async || {
        collector.statuses().contains(&401)
    })
    .await;
    assert!(refused, "the collector was asked");
    assert!(collector.accepted_ids().is_empty());
    let labels = format!("name=\"siem\",endpoint=\"{}\"", collector.endpoint());
    let failed = format!("auditgate_otlp_failed_total{{{labels},reason=\"rejected\"}}");
    // The collector answers before the exporter has read the answer and counted it.
    let counted = eventually(Duration::from_secs(10), async || {
        metric_value(&metrics(&process).await, &failed).is_some_and(|failed| failed >= 1.0)
    })
    .await;
    let page = metrics(&process).await;
    assert!(counted, "{page}");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, text.replace("\"wrong\"", "\"right\"")).expect("write");
    process.signal("HUP");
    wait_delivered(&collector, &db, 5).await;
    let page = metrics(&process).await;
    assert_eq!(
        metric_value(
            &page,
            &format!("auditgate_otlp_skipped_total{{{labels},reason=\"rejected\"}}")
        ),
        Some(0.0),
        "nothing was skipped"
    );
    stop(process).await;
    assert_exactly_once(&collector, &db);
}

#[tokio::test]
async fn an_entry_the_collector_refuses_is_found_and_skipped_when_configured() {
    let upstream = Upstream::start().await;
    let collector = Collector::start().await;
    // The first request fails, so the entries below gather while the output backs off and the
    // refused one reaches the collector in a batch with others.
    collector.set(|behaviour| {
        behaviour.refused_path = Some("/poison".into());
        behaviour.script = VecDeque::from([503]);
    });
    let dir = TempDir::new("otlp-skip");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        &format!(
            "{RULES}\n{}",
            otlp_table(
                &collector.endpoint(),
                "name = \"siem\"\non_rejected = \"skip\"\nbatch_size = 8"
            )
        ),
    );
    let db = dir.0.join("audit.db");
    let process = Process::start(&config);
    let client = HttpClient::new();
    for path in ["/a", "/b", "/poison", "/c", "/d"] {
        let reply = client.get(&format!("http://{}{path}", process.proxy)).await;
        assert_eq!(reply.status, 200);
    }
    let poison = read_all_entries(&db);
    let poison_entry = eventually(Duration::from_secs(10), async || {
        read_all_entries(&db)
            .iter()
            .any(|entry| entry.path.as_deref() == Some("/poison"))
    })
    .await;
    assert!(poison_entry, "stored: {poison:?}");
    let poison_id = read_all_entries(&db)
        .into_iter()
        .find(|entry| entry.path.as_deref() == Some("/poison"))
        .expect("the poison entry")
        .id;
    let others_delivered = eventually(Duration::from_secs(20), async || {
        let accepted: BTreeSet<String> = collector.accepted_ids().into_iter().collect();
        let mut waiting = stored_ids(&db);
        waiting.remove(&poison_id);
        waiting.len() >= 5 && waiting.is_subset(&accepted)
    })
    .await;
    assert!(others_delivered, "answers: {:?}", collector.statuses());
    assert!(!collector.accepted_ids().contains(&poison_id));
    let labels = format!("name=\"siem\",endpoint=\"{}\"", collector.endpoint());
    let skipped = eventually(Duration::from_secs(10), async || {
        metric_value(
            &metrics(&process).await,
            &format!("auditgate_otlp_skipped_total{{{labels},reason=\"rejected\"}}"),
        ) == Some(1.0)
    })
    .await;
    assert!(skipped, "{}", metrics(&process).await);
    assert!(process.logged("the OTLP collector refuses this entry; skipped"));
    stop(process).await;
    let accepted = collector.accepted_ids();
    let unique: BTreeSet<&String> = accepted.iter().collect();
    assert_eq!(unique.len(), accepted.len(), "no entry twice");
}

#[test]
fn check_lists_every_bad_otlp_table_with_its_place() {
    let dir = TempDir::new("otlp-check");
    let path = dir.0.join("bad.toml");
    std::fs::write(
        &path,
        r#"
[proxy]
upstream = "127.0.0.1:3000"

[[otlp]]
endpoint = "grpc://collector:4317"

[[otlp]]
name = "siem"
endpoint = "https://otlp.example.com/v1/logs"
ca_file = "missing-ca.pem"
timeout = "soon"
headers = { content-encoding = "br" }

[[otlp]]
name = "siem2"
endpoint = "http://collector:4318/v1/logs"
on_rejected = "drop"
typo = 1
"#,
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "otlp #1.endpoint: `grpc://collector:4317` must start with http:// or https://",
        "otlp #2 (\"siem\").ca_file: cannot read the CA file",
        "otlp #2 (\"siem\").timeout",
        "otlp #2 (\"siem\").headers.content-encoding: is set by auditgate itself",
        "otlp #3 (\"siem2\"): unknown field `typo`",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    // A valid table is summarised.
    std::fs::write(
        &path,
        "[proxy]\nupstream = \"127.0.0.1:3000\"\n[[otlp]]\nendpoint = \"http://collector:4318/v1/logs\"\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("otlp \"collector-4318-v1-logs\" -> http://collector:4318/v1/logs"),
        "{stdout}"
    );
}
