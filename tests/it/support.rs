//! Test helpers: a real upstream app, a real sidecar in front of it, and a small HTTP client.
//! Everything binds 127.0.0.1:0; readiness is the bound socket, never a sleep.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate::config::Config;
use auditgate::entry::AuditEntry;
use auditgate::server::Sidecar;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Releases the `/hold` route's second chunk (one process-wide gate; only one test uses it).
pub static HOLD: std::sync::LazyLock<Arc<tokio::sync::Notify>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Notify::new()));

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("auditgate-it-{label}-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The test app behind the proxy. Routes:
/// - `/status/{code}` answers that status with a small JSON body.
/// - `/json` echoes the request as JSON: method, path, query, headers, body (as text).
/// - `/created` answers 201 with `{"id": 77}` and a Location header.
/// - `/gzip` answers a gzip-encoded JSON body `{"id": 5}`.
/// - `/big/{bytes}` streams that many bytes in 64 KiB chunks.
/// - `/slow/{ms}` waits, then answers 200.
/// - `/abort` sends half a declared body and closes.
/// - `/ws` accepts a WebSocket upgrade and echoes messages.
/// - anything else: the echo JSON (with `"id": 4242`), status 200 or the `x-test-status` header's.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    /// Request heads the app received, in order (method, path, headers).
    pub seen: Arc<std::sync::Mutex<Vec<(String, String, HeaderMap)>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (task_requests, task_seen) = (requests.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let requests = task_requests.clone();
                let seen = task_seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let seen = seen.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(upstream_answer(request, seen).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            addr,
            requests,
            seen,
        }
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn upstream_answer(
    mut request: Request<Incoming>,
    seen: Arc<std::sync::Mutex<Vec<(String, String, HeaderMap)>>>,
) -> Response<BoxBody> {
    let path = request.uri().path().to_string();
    if let Ok(mut seen) = seen.lock() {
        seen.push((
            request.method().to_string(),
            path.clone(),
            request.headers().clone(),
        ));
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["ws"] => {
            let key = request
                .headers()
                .get("sec-websocket-key")
                .map(|key| key.as_bytes().to_vec())
                .unwrap_or_default();
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    while let Some(Ok(message)) = socket.next().await {
                        if message.is_text() || message.is_binary() {
                            let _ = socket.send(message).await;
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-accept", accept)
                .body(full(Bytes::new()))
                .expect("response")
        }
        ["status", code] => {
            let status = code
                .parse::<u16>()
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            let body = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                Bytes::new()
            } else {
                Bytes::from(json!({"status": status.as_u16()}).to_string())
            };
            Response::builder()
                .status(status)
                .body(full(body))
                .expect("response")
        }
        ["created"] => {
            let _ = request.into_body().collect().await;
            Response::builder()
                .status(StatusCode::CREATED)
                .header("location", "/things/77")
                .header("content-type", "application/json")
                .body(full(r#"{"id": 77, "nested": {"ok": true}}"#))
                .expect("response")
        }
        ["gzip"] => {
            use std::io::Write;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            let _ = encoder.write_all(br#"{"id": 5}"#);
            let body = encoder.finish().unwrap_or_default();
            Response::builder()
                .status(StatusCode::CREATED)
                .header("content-encoding", "gzip")
                .header("content-type", "application/json")
                .body(full(body))
                .expect("response")
        }
        ["big", size] => {
            let total: usize = size.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = (0..total.div_ceil(chunk.len())).map(move |index| {
                let len = (total - index * 64 * 1024).min(64 * 1024);
                Ok::<_, std::io::Error>(Frame::data(chunk.slice(0..len)))
            });
            let body = StreamBody::new(futures_util::stream::iter(chunks));
            Response::builder()
                .status(StatusCode::OK)
                .body(BodyExt::boxed(body))
                .expect("response")
        }
        ["hold"] => {
            // One chunk now, the rest only when the test releases it: a proxy that buffered the
            // body would deliver nothing until release.
            let release = HOLD.clone();
            let frames = futures_util::stream::unfold(0u8, move |step| {
                let release = release.clone();
                async move {
                    match step {
                        0 => Some((
                            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"first;"))),
                            1,
                        )),
                        1 => {
                            release.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"second"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::builder()
                .status(StatusCode::OK)
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .expect("response")
        }
        ["slow", ms] => {
            let ms: u64 = ms.parse().unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::builder()
                .status(StatusCode::OK)
                .body(full("slow"))
                .expect("response")
        }
        ["abort"] => {
            // Half a declared body, a pause long enough for the head and first bytes to reach the
            // client, then a failure: the app dying mid-response.
            let frames = futures_util::stream::unfold(0u8, |step| async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"partial"))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("app crashed mid-body")), 2))
                    }
                    _ => None,
                }
            });
            let body = StreamBody::new(frames);
            Response::builder()
                .status(StatusCode::OK)
                .header("content-length", "1000")
                .body(BodyExt::boxed(body))
                .expect("response")
        }
        _ => {
            let forced_status = request
                .headers()
                .get("x-test-status")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u16>().ok())
                .and_then(|code| StatusCode::from_u16(code).ok());
            let reply_headers: Vec<(String, String)> = request
                .headers()
                .iter()
                .filter_map(|(name, value)| {
                    let name = name.as_str().strip_prefix("x-reply-")?;
                    Some((name.to_string(), value.to_str().ok()?.to_string()))
                })
                .collect();
            let method = request.method().to_string();
            let query = request.uri().query().unwrap_or_default().to_string();
            let headers: serde_json::Map<String, Value> = request
                .headers()
                .iter()
                .map(|(name, value)| {
                    (
                        name.to_string(),
                        Value::from(String::from_utf8_lossy(value.as_bytes()).into_owned()),
                    )
                })
                .collect();
            let body = request
                .into_body()
                .collect()
                .await
                .map(|body| body.to_bytes())
                .unwrap_or_default();
            let echo = json!({
                "id": 4242,
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
                "bodyLength": body.len(),
                "body": String::from_utf8_lossy(&body),
            });
            // A test can choose the status the app answers with, and headers it adds: a request
            // header `x-reply-NAME: V` makes the app answer with `NAME: V`.
            let status = forced_status.unwrap_or(StatusCode::OK);
            let mut response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("location", "/echo/4242");
            for (name, value) in &reply_headers {
                response = response.header(name.as_str(), value.as_str());
            }
            response.body(full(echo.to_string())).expect("response")
        }
    }
}

/// A sidecar in front of an upstream, configured by a TOML snippet. `[proxy]` and `[store]` are
/// filled in (upstream, loopback ports, a fresh database) unless the snippet gives them.
pub struct TestSidecar {
    pub sidecar: Option<Sidecar>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub db: PathBuf,
    pub dir: TempDir,
}

/// An admin token every test sidecar accepts (scopes read and export).
pub const TEST_TOKEN: &str = "agt_integration_tests_read_export_token";
/// An admin token with the `write` scope only (the app's ingest token).
pub const TEST_WRITE_TOKEN: &str = "agt_integration_tests_write_token";
/// The `[[admin.tokens]]` entries for [`TEST_TOKEN`] and [`TEST_WRITE_TOKEN`].
pub const TEST_TOKEN_CONFIG: &str = "[[admin.tokens]]\nname = \"app-backend\"\nsha256 = \"e7dc6ee043a6fa3a469af98fdcdde74a7418fd0846c6249afcf383e547f20968\"\nscopes = [\"write\"]\n[[admin.tokens]]\nname = \"tests\"\nsha256 = \"beb5223238d0c0baa5195d4ca74abd43d5c5ce7e00aa041fd48566f2d0a6a5f6\"\nscopes = [\"read\", \"export\"]\n";

/// Builds a full config from a snippet of rules/actors and extra proxy keys.
pub fn config_text(
    upstream: SocketAddr,
    db: &std::path::Path,
    proxy_extra: &str,
    rest: &str,
) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{proxy_extra}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n{TEST_TOKEN_CONFIG}\n[store]\npath = \"{}\"\nflush_interval = \"1ms\"\n\n[log]\nlog_id = \"test\"\n\n{rest}\n",
        db.display()
    )
}

/// Writes a config file for the binary (`Process`, the CLI) to `dir/auditgate.toml`, its database
/// at `dir/audit.db`: [`config_text`] with `store_extra` keys added to `[store]`. Returns the
/// file's path.
pub fn write_config(
    dir: &std::path::Path,
    upstream: SocketAddr,
    store_extra: &str,
    rest: &str,
) -> PathBuf {
    let text = config_text(upstream, &dir.join("audit.db"), "", rest).replace(
        "flush_interval = \"1ms\"",
        &format!("flush_interval = \"1ms\"\n{store_extra}"),
    );
    let path = dir.join("auditgate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

impl TestSidecar {
    pub async fn start(upstream: SocketAddr, rest: &str) -> TestSidecar {
        TestSidecar::start_with(upstream, "", rest).await
    }

    pub async fn start_with(upstream: SocketAddr, proxy_extra: &str, rest: &str) -> TestSidecar {
        TestSidecar::start_config(|db| config_text(upstream, db, proxy_extra, rest)).await
    }

    /// Starts a sidecar on the config `text_for(db)` makes, with its database in a fresh
    /// directory.
    pub async fn start_config(text_for: impl FnOnce(&std::path::Path) -> String) -> TestSidecar {
        TestSidecar::start_in(TempDir::new("sidecar"), text_for).await
    }

    /// [`TestSidecar::start_config`] in a directory the test made first (for a key file, or an
    /// app that reads the store, both of which must exist before the sidecar does). The
    /// database is `dir/audit.db`, and relative paths in the config are relative to `dir`.
    pub async fn start_in(
        dir: TempDir,
        text_for: impl FnOnce(&std::path::Path) -> String,
    ) -> TestSidecar {
        let db = dir.0.join("audit.db");
        let sidecar = start_sidecar(&text_for(&db), &dir.0).await;
        TestSidecar {
            proxy: sidecar.proxy_addr,
            admin: sidecar.admin_addr,
            sidecar: Some(sidecar),
            db,
            dir,
        }
    }

    /// Stops the sidecar (if it runs) and starts it again on the same database and directory,
    /// with the config `text`; the listeners get new ports.
    pub async fn restart(&mut self, text: &str) {
        self.stop().await;
        let sidecar = start_sidecar(text, &self.dir.0).await;
        self.proxy = sidecar.proxy_addr;
        self.admin = sidecar.admin_addr;
        self.sidecar = Some(sidecar);
    }

    /// The running sidecar's writer, to push entries the way the proxy does or read its stats.
    pub fn writer(&self) -> auditgate::writer::WriterHandle {
        self.sidecar
            .as_ref()
            .expect("the sidecar is running")
            .writer()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// Waits until the writer has stored everything produced so far, then reads every entry.
    pub async fn entries(&self) -> Vec<AuditEntry> {
        if let Some(sidecar) = &self.sidecar {
            assert!(
                sidecar.writer().flushed(Duration::from_secs(10)).await,
                "writer did not flush"
            );
        }
        read_entries(&self.db)
    }

    /// Waits for `count` entries (entries are finished when response bodies end, which may be a
    /// moment after the client saw the response).
    pub async fn wait_entries(&self, count: usize) -> Vec<AuditEntry> {
        self.wait_until(&format!("{count} entries"), |entries| {
            entries.len() >= count
        })
        .await
    }

    /// Waits (bounded: 10 s) for the first stored entry that satisfies `wanted`.
    pub async fn wait_entry(&self, wanted: impl Fn(&AuditEntry) -> bool) -> AuditEntry {
        self.wait_until("the entry", |entries| entries.iter().any(&wanted))
            .await
            .into_iter()
            .find(|entry| wanted(entry))
            .expect("an entry that was there a moment ago")
    }

    /// Waits (bounded: 10 s) until the stored entries satisfy `done`, and returns them; fails
    /// the test, naming `what` it waited for, when they never do.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[AuditEntry]) -> bool,
    ) -> Vec<AuditEntry> {
        let mut entries = Vec::new();
        let arrived = eventually(Duration::from_secs(10), async || {
            entries = self.entries().await;
            done(&entries)
        })
        .await;
        assert!(
            arrived,
            "waited for {what}, have {} entries: {entries:#?}",
            entries.len()
        );
        entries
    }

    pub async fn stop(&mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.shutdown().await;
        }
    }
}

/// What the actor sources noted about an entry's actor (`metadata._actor.notes`): why a token
/// did not verify, which source was skipped. Empty when there are none.
pub fn actor_notes(entry: &AuditEntry) -> Vec<String> {
    entry
        .metadata
        .get("_actor")
        .and_then(|extra| extra.get("notes"))
        .and_then(Value::as_array)
        .map(|notes| {
            notes
                .iter()
                .filter_map(|note| note.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A sidecar started on the config `text`, whose relative paths are relative to `dir`.
async fn start_sidecar(text: &str, dir: &std::path::Path) -> Sidecar {
    let config = match Config::parse(text, dir) {
        Ok(config) => config,
        Err(errors) => panic!("test config invalid: {errors:?}\n{text}"),
    };
    Sidecar::start(config, None).await.expect("sidecar starts")
}

/// Every entry in a database file except the sidecar's own `audit.started`, `audit.stopped` and
/// `audit.config_reloaded` records, which every run adds; the tests of those read them with
/// [`read_all_entries`].
pub fn read_entries(db: &std::path::Path) -> Vec<AuditEntry> {
    read_all_entries(db)
        .into_iter()
        .filter(|entry| !is_lifecycle(&entry.action))
        .collect()
}

/// Whether an action is one of the sidecar's records of its own life.
pub fn is_lifecycle(action: &str) -> bool {
    use auditgate::server::lifecycle::{CONFIG_RELOADED, STARTED, STOPPED};
    [STARTED, STOPPED, CONFIG_RELOADED].contains(&action)
}

/// Every entry in a database file, in log order: the sealed ones and those still in `recent`.
pub fn read_all_entries(db: &std::path::Path) -> Vec<AuditEntry> {
    use auditgate::store::sqlite::rows::{entry_from_row, ENTRY_COLUMNS};
    let connection = rusqlite::Connection::open(db).expect("open db");
    let mut statement = connection
        .prepare(&format!(
            "SELECT {ENTRY_COLUMNS} FROM entries UNION ALL \
             SELECT {ENTRY_COLUMNS} FROM recent ORDER BY seq"
        ))
        .expect("prepare");
    let rows = statement.query_map([], entry_from_row).expect("query");
    rows.map(|row| row.expect("row")).collect()
}

/// A small HTTP/1.1 client.
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .client
            .request(request.body(Full::new(body.into())).expect("request"))
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Sends a request and returns its status, or `None` when the connection failed (the server
    /// died) — for crash tests, where failures are expected.
    pub async fn try_send(&self, method: &str, url: &str, headers: &[(&str, &str)]) -> Option<u16> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .client
            .request(request.body(Full::new(Bytes::new())).ok()?)
            .await
            .ok()?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(status)
    }

    /// A GET with the test admin token.
    pub async fn get_admin(&self, url: &str) -> Reply {
        let bearer = format!("Bearer {TEST_TOKEN}");
        self.send("GET", url, &[("authorization", &bearer)], Bytes::new())
            .await
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send("GET", url, &[], Bytes::new()).await
    }
}

/// Sends raw bytes on a new connection and returns everything the server answers until it
/// closes (or 5 s pass).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The auditgate binary running a config file, its log captured; killed on drop.
pub struct Process {
    child: Option<std::process::Child>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `auditgate run --config CONFIG` and waits for its "serving" line.
    pub fn start(config: &std::path::Path) -> Process {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
            .args(["run", "--config"])
            .arg(config)
            .env("AUDITGATE_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take();
        // Killed on drop even if the start fails below.
        let mut process = Process {
            child: Some(child),
            proxy: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: Arc::new(std::sync::Mutex::new(Vec::new())),
        };
        // One thread reads stderr for the life of the child (so it never blocks on a full pipe)
        // and keeps every line for `logged`; the "serving" line is handed over with a bound, so
        // a child that never gets there fails the test instead of hanging it.
        let lines = BufReader::new(stderr.expect("stderr")).lines();
        let sink = process.log.clone();
        let (serving, serving_line) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("auditgate is serving") {
                    let _ = serving.send(line.clone());
                }
                if let Ok(mut log) = sink.lock() {
                    log.push(line);
                }
            }
        });
        let line = match serving_line.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let log = process
                    .log
                    .lock()
                    .map(|log| log.join("\n"))
                    .unwrap_or_default();
                panic!("auditgate did not start serving within 60 s; its log:\n{log}");
            }
        };
        let field = |name: &str| -> Option<SocketAddr> {
            let start = line.find(&format!("{name}="))? + name.len() + 1;
            line[start..]
                .split_whitespace()
                .next()?
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        };
        let (proxy, admin) = (field("proxy"), field("admin"));
        process.proxy = proxy.expect("proxy address in the log");
        process.admin = admin.expect("admin address in the log");
        process
    }

    /// Whether a line of the log so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log
            .lock()
            .map(|log| log.iter().any(|line| line.contains(needle)))
            .unwrap_or(false)
    }

    /// The process id, as the sidecar records it in `audit.started` and `audit.stopped`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Sends a signal by name (KILL, TERM, HUP).
    pub fn signal(&self, signal: &str) {
        let Some(child) = &self.child else { return };
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        child.wait().expect("wait")
    }

    /// SIGTERM, then wait.
    pub fn stop(self) {
        self.signal("TERM");
        let _ = self.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await
}

/// [`eventually`] for code that cannot await: plain `#[test]`s and `Drop`.
pub fn eventually_blocking(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// A CA and a certificate for 127.0.0.1 it signed, made with the openssl CLI: (CA PEM path, TLS
/// acceptor serving the certificate).
pub fn https_identity(dir: &std::path::Path) -> (std::path::PathBuf, tokio_rustls::TlsAcceptor) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=auditgate test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("server.crt"))
            .expect("read certificate")
            .collect::<Result<_, _>>()
            .expect("certificate");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certificates, key)
    .expect("server config");
    (
        dir.join("ca.pem"),
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    )
}

/// The value of one sample in a Prometheus text exposition, matched exactly: `series` is the
/// metric name with its labels as printed (`auditgate_entries_lost_total`,
/// `auditgate_requests_total{outcome="success"}`). `None` when the series is absent, so
/// `auditgate_x_total 1` never matches a line that says 10.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            // The series ends at the closing brace of its labels, or at the first space.
            let end = match line.find('{') {
                Some(open) if line[..open].find(' ').is_none() => {
                    open + line[open..].find('}')? + 1
                }
                _ => line.find(' ')?,
            };
            if &line[..end] != series {
                return None;
            }
            line[end..].split_whitespace().next()?.parse().ok()
        })
}

/// [`metric_value`] for counters and gauges that hold whole numbers.
pub fn metric_count(text: &str, series: &str) -> Option<u64> {
    let value = metric_value(text, series)?;
    (value >= 0.0 && value.fract() == 0.0).then_some(value as u64)
}

impl TestSidecar {
    /// Like [`TestSidecar::start`], with `store_keys` in place of the default
    /// `flush_interval = "1ms"` (a test that needs a queue to build up sets a long one).
    pub async fn start_with_store(
        upstream: SocketAddr,
        store_keys: &str,
        rest: &str,
    ) -> TestSidecar {
        TestSidecar::start_config(|db| {
            config_text(upstream, db, "", rest).replace("flush_interval = \"1ms\"", store_keys)
        })
        .await
    }
}

/// What the library logs at ERROR level in this test process, one JSON object per line, from the
/// first call on (the first call installs the process-wide subscriber that collects it). Tests
/// run in parallel and share it: pick the lines out by something only your test has.
pub fn error_log() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOG: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::ERROR)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        // Another subscriber already installed would mean the lines go elsewhere: say so.
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global tracing subscriber in the test binary");
        log
    })
    .clone()
}

/// The lines of [`error_log`] so far, parsed.
pub fn error_lines() -> Vec<Value> {
    let log = error_log();
    let bytes = log.lock().map(|log| log.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A test app that, as each request arrives, looks in the sidecar's SQLite store (through its
/// own read-only connection, so it sees only committed transactions) for the write-ahead intent
/// of that request, by its `X-Request-Id`. It answers 200 either way and remembers what it saw:
/// an intent missing on arrival means the request was forwarded before its intent was durable.
pub struct IntentCheckingUpstream {
    pub addr: SocketAddr,
    /// The client's request ids the app saw (`X-Client-Request-Id`, else auditgate's own), each
    /// with whether its intent was already in the store.
    pub seen: Arc<std::sync::Mutex<Vec<(String, bool)>>>,
}

impl IntentCheckingUpstream {
    pub async fn start(db: PathBuf) -> IntentCheckingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task_seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, db) = (task_seen.clone(), db.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (seen, db) = (seen.clone(), db.clone());
                        async move {
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|value| value.to_str().ok())
                                    .map(str::to_string)
                            };
                            // The intent carries auditgate's own request id; the test knows
                            // the request by the id it sent, forwarded as X-Client-Request-Id.
                            let id = header("x-request-id").unwrap_or_default();
                            let label = header("x-client-request-id").unwrap_or(id.clone());
                            let lookup = (db, id);
                            let found = tokio::task::spawn_blocking(move || {
                                intent_is_stored(&lookup.0, &lookup.1)
                            })
                            .await
                            .unwrap_or(false);
                            if let Ok(mut seen) = seen.lock() {
                                seen.push((label, found));
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(full("{}")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        IntentCheckingUpstream { addr, seen }
    }

    /// Request ids that arrived without their intent in the store.
    pub fn forwarded_before_durable(&self) -> Vec<String> {
        self.seen
            .lock()
            .map(|seen| {
                seen.iter()
                    .filter(|(_, found)| !found)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every request id the app saw.
    pub fn seen_ids(&self) -> Vec<String> {
        self.seen
            .lock()
            .map(|seen| seen.iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }
}

/// Whether the intent journal beside the SQLite store at `db` (`<db>.intents.<n>`), or the
/// `pending` table of the store itself (where releases before the journal kept intents, and a
/// store without a journal still does), holds an intent with this request id.
fn intent_is_stored(db: &std::path::Path, request_id: &str) -> bool {
    let mut base = db.as_os_str().to_os_string();
    base.push(".intents");
    let journaled = auditgate::writer::journal::read_intents(std::path::Path::new(&base))
        .is_ok_and(|contents| {
            contents
                .intents
                .iter()
                .any(|intent| intent.request_id.as_deref() == Some(request_id))
        });
    journaled || intent_row_is_stored(db, request_id)
}

/// Whether the `pending` table of the SQLite store at `db` holds an intent with this request id
/// (the intent is the entry's JSON, in the API's camelCase form).
fn intent_row_is_stored(db: &std::path::Path, request_id: &str) -> bool {
    let Ok(connection) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return false;
    };
    let _ = connection.busy_timeout(Duration::from_secs(5));
    let Ok(mut statement) = connection.prepare("SELECT entry FROM pending") else {
        return false;
    };
    let Ok(rows) = statement.query_map([], |row| row.get::<_, String>(0)) else {
        return false;
    };
    let found = rows.map_while(Result::ok).any(|entry| {
        serde_json::from_str::<Value>(&entry)
            .is_ok_and(|entry| entry["requestId"].as_str() == Some(request_id))
    });
    found
}

/// What [`ExpressApp`] did for one request: the handler it ran and the request head it saw.
#[derive(Debug, Clone)]
pub struct Handled {
    /// `DELETE /api/users/:id`, or `404` when no route matched.
    pub handler: String,
    /// The route parameter `:id`, when the route has one.
    pub id: Option<String>,
    /// The method and path on the wire, as the app received them.
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
}

/// An app that routes the way Express does by default (and Rails, Laravel and many legacy stacks
/// come close): paths matched case-insensitively with an optional trailing slash, empty segments
/// ignored, percent-encodings decoded and dot-segments resolved before routing; a POST's method
/// overridden by `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override` (any spelling),
/// a `_method` query parameter or a `_method` urlencoded form field; HEAD served by the GET
/// handler; and an `Upgrade: h2c` accepted with a 101. Every answer names the handler in an
/// `x-handler` header, and [`ExpressApp::handled`] lists what ran. Routes:
/// `GET|POST|DELETE /api/users/:id`, `PATCH /api/users/:id/role`, `GET /api/reports/export`,
/// `GET /static/*`.
pub struct ExpressApp {
    pub addr: SocketAddr,
    handled: Arc<std::sync::Mutex<Vec<Handled>>>,
}

impl ExpressApp {
    pub async fn start() -> ExpressApp {
        ExpressApp::start_routing(false).await
    }

    /// The same app on a Java servlet container (Tomcat, Jetty) or Spring: before anything else,
    /// a `;` path parameter is removed from each segment of the path as sent, up to the next
    /// `/` (`/api/users;jsessionid=1/42` and `/static/..;/api/users/42` route to
    /// `/api/users/42`); an encoded `%3B` stays data.
    pub async fn start_servlet() -> ExpressApp {
        ExpressApp::start_routing(true).await
    }

    async fn start_routing(strips_path_parameters: bool) -> ExpressApp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind express app");
        let addr = listener.local_addr().expect("addr");
        let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task_handled = handled.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handled = task_handled.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let handled = handled.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                express_answer(request, handled, strips_path_parameters).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        ExpressApp { addr, handled }
    }

    /// Everything the app handled so far, in order.
    pub fn handled(&self) -> Vec<Handled> {
        self.handled
            .lock()
            .map(|list| list.clone())
            .unwrap_or_default()
    }

    /// The last request the app handled.
    pub fn last(&self) -> Option<Handled> {
        self.handled().pop()
    }

    /// How many requests ran this handler.
    pub fn ran(&self, handler: &str) -> usize {
        self.handled()
            .iter()
            .filter(|handled| handled.handler == handler)
            .count()
    }
}

/// The app's own view of a path: segments percent-decoded, empty and `.` segments dropped, `..`
/// resolved (never above the root). An encoded `/` stays inside its segment, as in Express.
fn express_segments(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let segment = percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned();
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(segment),
        }
    }
    out
}

fn express_override(headers: &HeaderMap, query: Option<&str>, form: &[u8]) -> Option<String> {
    const HEADERS: [&str; 3] = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];
    for (name, value) in headers {
        let folded = name.as_str().replace('_', "-");
        if HEADERS.contains(&folded.as_str()) {
            return value.to_str().ok().map(str::to_ascii_uppercase);
        }
    }
    let from = |text: &[u8]| {
        form_urlencoded::parse(text)
            .find(|(key, _)| key == "_method")
            .map(|(_, value)| value.to_ascii_uppercase())
    };
    query
        .and_then(|query| from(query.as_bytes()))
        .or_else(|| from(form))
}

async fn express_answer(
    request: Request<Incoming>,
    handled: Arc<std::sync::Mutex<Vec<Handled>>>,
    strips_path_parameters: bool,
) -> Response<BoxBody> {
    let wire_method = request.method().to_string();
    let path = request.uri().path().to_string();
    let headers = request.headers().clone();
    let h2c = headers
        .get("upgrade")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.to_ascii_lowercase().contains("h2c"));
    if h2c {
        if let Ok(mut list) = handled.lock() {
            list.push(Handled {
                handler: "h2c upgrade".to_string(),
                id: None,
                method: wire_method,
                path,
                headers,
            });
        }
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "h2c")
            .body(full(Bytes::new()))
            .expect("response");
    }
    let is_form = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let mut method = wire_method.clone();
    if method == "POST" {
        let form: &[u8] = if is_form { &body } else { b"" };
        if let Some(overridden) = express_override(&parts.headers, parts.uri.query(), form) {
            method = overridden;
        }
    }
    let route_method = if method == "HEAD" {
        "GET"
    } else {
        method.as_str()
    };
    let segments = if strips_path_parameters {
        let stripped: Vec<&str> = path
            .split('/')
            .map(|segment| segment.split(';').next().unwrap_or_default())
            .collect();
        express_segments(&stripped.join("/"))
    } else {
        express_segments(&path)
    };
    let folded: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let folded: Vec<&str> = folded.iter().map(String::as_str).collect();
    let (handler, id) = match (route_method, folded.as_slice()) {
        ("GET", ["api", "users", _]) => ("GET /api/users/:id", Some(segments[2].clone())),
        ("POST", ["api", "users", _]) => ("POST /api/users/:id", Some(segments[2].clone())),
        ("DELETE", ["api", "users", _]) => ("DELETE /api/users/:id", Some(segments[2].clone())),
        ("PATCH", ["api", "users", _, "role"]) => {
            ("PATCH /api/users/:id/role", Some(segments[2].clone()))
        }
        ("GET", ["api", "reports", "export"]) => ("GET /api/reports/export", None),
        ("GET", ["static", ..]) => ("GET /static/*", None),
        _ => ("404", None),
    };
    if let Ok(mut list) = handled.lock() {
        list.push(Handled {
            handler: handler.to_string(),
            id: id.clone(),
            method: wire_method,
            path,
            headers,
        });
    }
    let status = if handler == "404" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    Response::builder()
        .status(status)
        .header("x-handler", handler)
        .header("content-type", "application/json")
        .body(full(json!({"handler": handler, "id": id}).to_string()))
        .expect("response")
}

/// The SHA-256 of `bytes` in lowercase hex, as `[[admin.tokens]]` and API keys name secrets and
/// `/metrics` names the config file.
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes.as_ref()))
}

/// `pairs` as a URL query string, names and values form-encoded.
pub fn query_string<V: AsRef<str>>(pairs: &[(&str, V)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value.as_ref());
    }
    serializer.finish()
}

/// What the entry filter `name=value` means, written out apart from the library (its parameter
/// parsing and the stores' SQL): the one oracle that the admin API and both stores are held to.
/// `name` is an admin query parameter (`actor`, `status`, `ip`, `since`, ...) or
/// `action_contains`, the reference endpoint's case-insensitive `action`; `now` anchors the
/// relative times (`7d`).
pub fn filter_holds(
    entry: &AuditEntry,
    name: &str,
    value: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    use std::net::IpAddr;
    fn text(field: &Option<String>) -> Option<&str> {
        field.as_deref()
    }
    let lower = value.to_ascii_lowercase();
    let contains = |field: Option<&str>| {
        field.is_some_and(|field| field.to_ascii_lowercase().contains(&lower))
    };
    match name {
        "actor" => text(&entry.actor_id) == Some(value) || text(&entry.actor_email) == Some(value),
        "action" => entry.action == value,
        "action_prefix" => entry.action.starts_with(value),
        "action_contains" => contains(Some(&entry.action)),
        "exclude_action_prefix" => !entry.action.starts_with(value),
        "resource_type" => text(&entry.resource_type) == Some(value),
        "resource_id" => text(&entry.resource_id) == Some(value),
        "outcome" => entry.outcome.as_str() == value,
        "status" => entry
            .status
            .is_some_and(|status| match value.strip_suffix("xx") {
                Some(class) => status / 100 == class.parse::<u16>().expect("a status class"),
                None => status == value.parse::<u16>().expect("a status"),
            }),
        "ip" => entry
            .ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .is_some_and(|address| match value.parse::<ipnet::IpNet>() {
                Ok(network) => network_holds(network, address),
                Err(_) => value.parse::<IpAddr>().expect("an address") == address,
            }),
        "since" => entry.created_at >= filter_time(value, now),
        "until" => entry.created_at < filter_time(value, now),
        "q" => [
            text(&entry.actor_id),
            text(&entry.actor_email),
            Some(entry.action.as_str()),
            text(&entry.resource_type),
            text(&entry.resource_id),
            text(&entry.path),
        ]
        .into_iter()
        .any(contains),
        "log_id" => entry.log_id == value,
        other => panic!("no oracle for the filter {other}"),
    }
}

/// Whether `entry` meets every condition `filter` sets, each held to [`filter_holds`].
pub fn filter_matches(filter: &auditgate::store::query::Filter, entry: &AuditEntry) -> bool {
    use auditgate::store::query::{Filter, IpFilter, StatusFilter};
    use chrono::SecondsFormat;
    // Every field by name, so a condition added to `Filter` fails to compile here until the
    // oracle knows it.
    let Filter {
        actor,
        action,
        action_prefix,
        action_contains,
        exclude_action_prefixes,
        resource_type,
        resource_id,
        outcome,
        status,
        ip,
        since,
        until,
        q,
        log_id,
    } = filter;
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for (name, value) in [
        ("actor", actor),
        ("action", action),
        ("action_prefix", action_prefix),
        ("action_contains", action_contains),
        ("resource_type", resource_type),
        ("resource_id", resource_id),
        ("q", q),
        ("log_id", log_id),
    ] {
        pairs.extend(value.iter().map(|value| (name, value.clone())));
    }
    pairs.extend(
        exclude_action_prefixes
            .iter()
            .map(|prefix| ("exclude_action_prefix", prefix.clone())),
    );
    pairs.extend(outcome.map(|outcome| ("outcome", outcome.as_str().to_string())));
    pairs.extend(status.map(|status| match status {
        StatusFilter::Exact(code) => ("status", code.to_string()),
        StatusFilter::Class(class) => ("status", format!("{class}xx")),
    }));
    pairs.extend(ip.map(|ip| match ip {
        IpFilter::Exact(address) => ("ip", address.to_string()),
        IpFilter::Network(network) => ("ip", network.to_string()),
    }));
    let time =
        |time: &chrono::DateTime<chrono::Utc>| time.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    pairs.extend(since.iter().map(|since| ("since", time(since))));
    pairs.extend(until.iter().map(|until| ("until", time(until))));
    let now = chrono::Utc::now();
    pairs
        .iter()
        .all(|(name, value)| filter_holds(entry, name, value, now))
}

/// Whether `network` holds `address`, written apart from `ipnet`'s own methods: the first
/// `prefix` bits equal to the network's (an IPv4 network never holds an IPv6 address,
/// IPv4-mapped or not).
fn network_holds(network: ipnet::IpNet, address: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let same_prefix = |a: u128, b: u128, bits: u32, prefix: u8| {
        let prefix = u32::from(prefix);
        prefix == 0 || (a ^ b) >> (bits - prefix) == 0
    };
    match (network, address) {
        (ipnet::IpNet::V4(network), IpAddr::V4(address)) => same_prefix(
            u128::from(u32::from(address)),
            u128::from(u32::from(network.network())),
            32,
            network.prefix_len(),
        ),
        (ipnet::IpNet::V6(network), IpAddr::V6(address)) => same_prefix(
            u128::from(address),
            u128::from(network.network()),
            128,
            network.prefix_len(),
        ),
        _ => false,
    }
}

/// A `since`/`until` value as a time, in the forms the tests use: RFC 3339, a date (its
/// midnight, UTC), or hours or days before `now` (`3h`, `7d`).
pub fn filter_time(
    value: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return time.with_timezone(&Utc);
    }
    if let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    }
    let (amount, unit) = value.split_at(value.len() - 1);
    let amount: i64 = amount.parse().expect("a relative amount");
    now - match unit {
        "h" => TimeDelta::hours(amount),
        "d" => TimeDelta::days(amount),
        _ => panic!("unit {unit}"),
    }
}

/// Runs the auditgate binary with `args` (its own log at `warn`) and returns what it did.
pub fn auditgate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(args)
        .env("AUDITGATE_LOG", "warn")
        .output()
        .expect("the auditgate binary runs")
}

/// Runs the auditgate binary with `args` (its own log at `error`) and returns its exit code and
/// what it printed, stdout then stderr.
pub fn auditgate_report(args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(args)
        .env("AUDITGATE_LOG", "error")
        .output()
        .expect("the auditgate binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// A path as a command-line argument (the tests' temporary paths are UTF-8).
pub fn path_arg(path: &std::path::Path) -> &str {
    path.to_str().expect("utf-8 path")
}
