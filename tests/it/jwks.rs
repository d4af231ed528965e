//! JWT keys from a URL (`jwks_url`), through the real proxy: a local JWKS server (http, and
//! https with its own CA) that can rotate its keys, fail, and counts every fetch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::support::{
    actor_notes, eventually, https_identity, metric_value, write_config, HttpClient, TempDir,
    TestSidecar, Upstream,
};
use auditgate::entry::AuditEntry;

const RECORD_ALL: &str = "[unmatched]\nrecord = \"all\"\n";

/// An ES256 key pair: the private key to sign with and the public JWK.
struct KeyPair {
    kid: String,
    signing: EncodingKey,
    jwk: Value,
}

fn key(kid: &str) -> KeyPair {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("pem");
    KeyPair {
        kid: kid.to_string(),
        signing: EncodingKey::from_ec_pem(pem.as_bytes()).expect("signing key"),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y")),
        }),
    }
}

/// A token for `sub` signed by `key`, under `kid` (normally the key's own).
fn token(key: &KeyPair, kid: &str, sub: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let claims = json!({"sub": sub, "exp": chrono::Utc::now().timestamp() + 600});
    encode(&header, &claims, &key.signing).expect("token signs")
}

/// What the JWKS server answers: a key set, or 503.
struct Served {
    keys: Vec<Value>,
    failing: bool,
}

/// A JWKS server on 127.0.0.1:0, over http or (with a certificate) https.
struct JwksServer {
    addr: SocketAddr,
    served: Arc<Mutex<Served>>,
    fetches: Arc<AtomicU64>,
    /// When each fetch arrived, in order.
    fetched_at: Arc<Mutex<Vec<std::time::Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>, tls: Option<tokio_rustls::TlsAcceptor>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(Mutex::new(Served {
            keys,
            failing: false,
        }));
        let fetches = Arc::new(AtomicU64::new(0));
        let fetched_at = Arc::new(Mutex::new(Vec::new()));
        let (state, count, times) = (served.clone(), fetches.clone(), fetched_at.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (state, count, tls) = (state.clone(), count.clone(), tls.clone());
                let times = times.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        if let Ok(mut times) = times.lock() {
                            times.push(std::time::Instant::now());
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        let served = state.lock().expect("state");
                        let response = if served.failing {
                            http::Response::builder()
                                .status(503)
                                .body(Full::new(Bytes::from("down")))
                        } else {
                            http::Response::builder()
                                .header("content-type", "application/jwk-set+json")
                                .body(Full::new(Bytes::from(
                                    json!({"keys": served.keys}).to_string(),
                                )))
                        };
                        async move { response }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        JwksServer {
            addr,
            served,
            fetches,
            fetched_at,
            task,
        }
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    fn serve(&self, keys: Vec<Value>) {
        self.served.lock().expect("state").keys = keys;
    }

    fn fail(&self, failing: bool) {
        self.served.lock().expect("state").failing = failing;
    }

    /// Waits (bounded) until the server has answered `count` fetches.
    async fn wait_fetches(&self, count: u64) {
        assert!(
            eventually(Duration::from_secs(6), async || self.fetches() >= count).await,
            "expected {count} fetches, saw {}",
            self.fetches()
        );
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn jwt_actor(url: &str, extra: &str) -> String {
    format!("{RECORD_ALL}\n[[actor]]\nfrom = \"jwt\"\njwks_url = \"{url}\"\n{extra}\n")
}

/// Sends one request with `token` and returns its stored entry.
async fn request(sidecar: &TestSidecar, token: &str, seen: &mut usize) -> AuditEntry {
    let authorization = format!("Bearer {token}");
    let reply = HttpClient::new()
        .send(
            "GET",
            &sidecar.url("/api/things"),
            &[("authorization", &authorization)],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    *seen += 1;
    sidecar
        .wait_entries(*seen)
        .await
        .pop()
        .expect("the request's entry")
}

/// The entry's actor notes, one a line, to search and to show.
fn notes_text(entry: &AuditEntry) -> String {
    actor_notes(entry).join("\n")
}

#[tokio::test]
async fn keys_from_an_http_url_follow_a_rotation_and_explain_uses_them() {
    let (a, b) = (key("key-a"), key("key-b"));
    let server = JwksServer::start(vec![a.jwk.clone()], None).await;
    let url = format!("http://{}/.well-known/jwks.json", server.addr);
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(
        upstream.addr,
        &jwt_actor(&url, "jwks_refresh = \"1h\"\njwks_min_refresh = \"200ms\""),
    )
    .await;
    assert_eq!(server.fetches(), 1, "fetched once at start");
    let mut seen = 0;
    let entry = request(&sidecar, &token(&a, &a.kid, "alice"), &mut seen).await;
    assert_eq!(entry.actor_id.as_deref(), Some("alice"));
    assert!(
        entry.actor_verified,
        "key A verifies: {}",
        notes_text(&entry)
    );

    // The issuer rotates to key B. The first token under B arrives before the sidecar knows the
    // key: recorded unverified, and a refetch is asked for; tokens after it verify.
    server.serve(vec![b.jwk.clone()]);
    let entry = request(&sidecar, &token(&b, &b.kid, "bob"), &mut seen).await;
    assert!(!entry.actor_verified);
    assert!(
        notes_text(&entry)
            .contains("no key with kid \"key-b\" in the key set (key set refetch requested)"),
        "{}",
        notes_text(&entry)
    );
    let mut attempt = 0;
    assert!(
        eventually(Duration::from_secs(5), async || {
            attempt += 1;
            request(
                &sidecar,
                &token(&b, &b.kid, &format!("bob-{attempt}")),
                &mut seen,
            )
            .await
            .actor_verified
        })
        .await,
        "a token under key B verifies after the refetch"
    );
    assert_eq!(
        server.fetches(),
        2,
        "one refetch for the rotation, not one per token"
    );
    // Key A left the set: its tokens no longer verify, even one verified (and remembered) before.
    let entry = request(&sidecar, &token(&a, &a.kid, "alice"), &mut seen).await;
    assert!(
        !entry.actor_verified,
        "a token under a removed key is checked again"
    );

    // `auditgate explain` fetches the set once and checks tokens as the sidecar does.
    let dir = TempDir::new("jwks-explain");
    let config = write_config(&dir.0, upstream.addr, "", &jwt_actor(&url, ""));
    let header = format!("Authorization: Bearer {}", token(&b, &b.kid, "carol"));
    // The JWKS server runs on this test's runtime: the CLI runs on the blocking pool.
    let explain_config = config.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
            .args(["explain", "--config"])
            .arg(&explain_config)
            .args(["GET", "/api/things", "-H", &header])
            .output()
            .expect("auditgate runs")
    })
    .await
    .expect("explain task");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown: Value = serde_json::from_slice(&output.stdout).expect("explain prints JSON");
    assert_eq!(shown["actor"]["id"], json!("carol"));
    assert_eq!(shown["actor"]["verified"], json!(true), "{shown}");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("auditgate runs");
    let described = String::from_utf8_lossy(&check.stdout);
    assert!(
        described.contains(&format!(
            "key set from {url} (refreshed every 10m, on an unknown kid at most every 30s)"
        )),
        "{described}"
    );
}

#[tokio::test]
async fn https_keys_with_a_ca_file_survive_a_failed_refresh() {
    let dir = TempDir::new("jwks-https");
    let (ca, acceptor) = https_identity(&dir.0);
    let a = key("key-a");
    let server = JwksServer::start(vec![a.jwk.clone()], Some(acceptor)).await;
    let url = format!("https://127.0.0.1:{}/jwks.json", server.addr.port());
    let upstream = Upstream::start().await;
    let extra = format!(
        "jwks_refresh = \"300ms\"\njwks_min_refresh = \"300ms\"\njwks_ca_file = \"{}\"",
        ca.display()
    );
    let sidecar = TestSidecar::start(upstream.addr, &jwt_actor(&url, &extra)).await;
    let mut seen = 0;
    let entry = request(&sidecar, &token(&a, &a.kid, "alice"), &mut seen).await;
    assert!(
        entry.actor_verified,
        "verified over https: {}",
        notes_text(&entry)
    );

    // The key server goes down: refreshes fail, the last good keys stay.
    server.fail(true);
    let before = server.fetches();
    server.wait_fetches(before + 2).await;
    let entry = request(&sidecar, &token(&a, &a.kid, "alice-again"), &mut seen).await;
    assert!(
        entry.actor_verified,
        "the old keys still verify while refreshes fail: {}",
        notes_text(&entry)
    );

    // Without the CA file the server's certificate is not trusted: the sidecar starts anyway and
    // records tokens unverified, saying why.
    let untrusting = TestSidecar::start(upstream.addr, &jwt_actor(&url, "")).await;
    let mut seen = 0;
    let entry = request(&untrusting, &token(&a, &a.kid, "mallory"), &mut seen).await;
    assert!(!entry.actor_verified);
    let why = notes_text(&entry);
    assert!(
        why.contains("key set not loaded yet") && why.contains("certificate"),
        "{why}"
    );
}

#[tokio::test]
async fn a_storm_of_unknown_kids_refetches_at_most_once_per_interval() {
    let a = key("key-a");
    let server = JwksServer::start(vec![a.jwk.clone()], None).await;
    let url = format!("http://{}/jwks.json", server.addr);
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(
        upstream.addr,
        &jwt_actor(&url, "jwks_refresh = \"1h\"\njwks_min_refresh = \"1s\""),
    )
    .await;
    assert_eq!(server.fetches(), 1);
    let client = HttpClient::new();
    for index in 0..30 {
        let authorization = format!("Bearer {}", token(&a, &format!("made-up-{index}"), "x"));
        let reply = client
            .send(
                "GET",
                &sidecar.url("/x"),
                &[("authorization", &authorization)],
                "",
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    // Unknown kids within one interval make one refetch, at the interval's end. However slowly
    // the thirty requests went, no two fetches are closer than jwks_min_refresh (1 s; the slack
    // is for the moment the sidecar takes its timestamp versus the moment the fetch arrives).
    // One fetch per request would put thirty fetches milliseconds apart.
    server.wait_fetches(2).await;
    let times = server.fetched_at.lock().expect("times").clone();
    let gaps: Vec<Duration> = times
        .windows(2)
        .map(|pair| pair[1].duration_since(pair[0]))
        .collect();
    assert!(
        gaps.iter().all(|gap| *gap >= Duration::from_millis(900)),
        "{} fetches for thirty unknown kids, some closer than jwks_min_refresh: {gaps:?}",
        times.len()
    );
    let entries = sidecar.wait_entries(30).await;
    assert!(entries.iter().all(|entry| !entry.actor_verified));
}

#[tokio::test]
async fn fetch_failures_and_the_age_of_the_keys_show_on_metrics_not_on_readyz() {
    let a = key("key-a");
    let server = JwksServer::start(vec![a.jwk.clone()], None).await;
    let url = format!("http://{}/jwks.json", server.addr);
    let upstream = Upstream::start().await;
    // The key set source is the second `[[actor]]`: its label says so.
    let sidecar = TestSidecar::start(
        upstream.addr,
        &format!(
            "{RECORD_ALL}\n[[actor]]\nfrom = \"header\"\nid = \"x-user\"\n\
             [[actor]]\nfrom = \"jwt\"\njwks_url = \"{url}\"\n\
             jwks_refresh = \"200ms\"\njwks_min_refresh = \"200ms\"\n"
        ),
    )
    .await;
    let client = HttpClient::new();
    let admin = |path: &str| format!("http://{}{path}", sidecar.admin);
    let labels = "actor=\"2\",host=\"127.0.0.1\"";
    let ok = format!("auditgate_jwks_fetches_total{{{labels},result=\"ok\"}}");
    let failed = format!("auditgate_jwks_fetches_total{{{labels},result=\"failed\"}}");
    let loaded = format!("auditgate_jwks_keys_loaded{{{labels}}}");
    let age = format!("auditgate_jwks_keys_age_seconds{{{labels}}}");

    let text = client.get(&admin("/metrics")).await.text();
    assert!(
        metric_value(&text, &ok).is_some_and(|count| count >= 1.0),
        "{text}"
    );
    assert_eq!(metric_value(&text, &failed), Some(0.0), "{text}");
    assert_eq!(metric_value(&text, &loaded), Some(1.0), "{text}");
    assert!(
        metric_value(&text, &age).is_some_and(|age| age < 5.0),
        "{text}"
    );

    // The key server answers 503: every refresh fails, the keys in use grow old, and the
    // sidecar stays ready (tokens are recorded, unverified at worst, never refused).
    server.fail(true);
    let before = server.fetches();
    server.wait_fetches(before + 3).await;
    let mut failing = String::new();
    assert!(
        eventually(Duration::from_secs(5), async || {
            failing = client.get(&admin("/metrics")).await.text();
            metric_value(&failing, &failed).is_some_and(|count| count >= 3.0)
        })
        .await,
        "{failing}"
    );
    let ok_while_failing = metric_value(&failing, &ok).expect("ok count");
    let age_while_failing = metric_value(&failing, &age).expect("age while failing");
    assert!(age_while_failing >= 0.4, "{failing}");
    assert_eq!(
        metric_value(&failing, &loaded),
        Some(1.0),
        "the old keys stay"
    );
    let mut older = String::new();
    assert!(
        eventually(Duration::from_secs(5), async || {
            older = client.get(&admin("/metrics")).await.text();
            metric_value(&older, &age).is_some_and(|age| age >= age_while_failing + 0.3)
        })
        .await,
        "the age grows while fetches fail: {older}"
    );
    assert_eq!(metric_value(&older, &ok), Some(ok_while_failing), "{older}");
    let ready = client.get(&admin("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    // The server recovers: the next fetch counts as ok and the keys are fresh again.
    server.fail(false);
    let mut fresh = String::new();
    assert!(
        eventually(Duration::from_secs(5), async || {
            fresh = client.get(&admin("/metrics")).await.text();
            metric_value(&fresh, &ok).is_some_and(|count| count > ok_while_failing)
                && metric_value(&fresh, &age).is_some_and(|age| age < age_while_failing)
        })
        .await,
        "{fresh}"
    );
}
