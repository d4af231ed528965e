//! `auditgate demo`: a small sample app (login and CRUD over users and posts) behind the
//! sidecar on loopback, sample traffic through it, and where to look.
//!
//! The sample app is a real HTTP server that knows nothing of auditing, like the apps auditgate
//! is put in front of; every entry of this run came through the proxy and the rules in
//! `config/demo.toml`. Before that traffic the demo appends nine days of earlier activity of the
//! same shapes ([`history`], marked `demoHistory` in their metadata), so the viewer's chart, top
//! lists and paging have something to show.

mod history;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

use crate::commands::cli::DemoArgs;
use crate::config::Config;
use crate::server::Sidecar;

/// The demo config; addresses, database and token are replaced at start.
const DEMO_CONFIG: &str = include_str!("../../../config/demo.toml");
/// The environment variable the demo config reads the sample app's JWT secret from.
pub const DEMO_SECRET_ENV: &str = "AUDITGATE_DEMO_JWT_SECRET";
const DEMO_PASSWORD: &str = "demo-password";

/// The sample app's JWT secret: `AUDITGATE_DEMO_JWT_SECRET` when set, else made once per run.
/// The demo config reads it as `${AUDITGATE_DEMO_JWT_SECRET}` through the config loader's lookup,
/// so the process environment is never changed.
fn secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        std::env::var(DEMO_SECRET_ENV).unwrap_or_else(|_| crate::commands::token::new_token().token)
    })
}

/// `${VAR}` lookup for the demo config: the sample app's secret, else the process environment.
fn demo_environment(name: &str) -> Option<String> {
    if name == DEMO_SECRET_ENV {
        return Some(secret().to_string());
    }
    crate::config::env::process_environment(name)
}

// ---------------------------------------------------------------------------------------------
// The sample app
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct AppData {
    users: BTreeMap<u64, Value>,
    posts: BTreeMap<u64, Value>,
    next_id: u64,
}

type AppState = Arc<Mutex<AppData>>;

fn seed() -> AppData {
    let mut data = AppData {
        next_id: 100,
        ..AppData::default()
    };
    for (id, email, name, role) in [
        (1, "alice@example.com", "Alice Admin", "admin"),
        (2, "bob@example.com", "Bob Builder", "member"),
        (3, "carol@example.com", "Carol Chen", "member"),
    ] {
        data.users.insert(
            id,
            json!({"id": id, "email": email, "name": name, "role": role}),
        );
    }
    data
}

/// The caller's claims, when the app accepts their token.
fn caller(headers: &HeaderMap) -> Option<Value> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let key = DecodingKey::from_secret(secret().as_bytes());
    jsonwebtoken::decode::<Value>(token, &key, &Validation::default())
        .ok()
        .map(|data| data.claims)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn sample_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/login", post(login))
        .route("/api/users", get(list_users).post(create_user))
        .route("/api/users/{id}", get(get_user).delete(delete_user))
        .route("/api/users/{id}/role", patch(change_role).put(change_role))
        .route("/api/posts", get(list_posts).post(create_post))
        .route("/api/posts/{id}", axum::routing::delete(delete_post))
        .with_state(state)
}

async fn login(State(state): State<AppState>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected a JSON body");
    };
    let email = body["email"].as_str().unwrap_or_default();
    let password = body["password"].as_str().unwrap_or_default();
    let user = {
        let data = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        data.users
            .values()
            .find(|user| user["email"] == email)
            .cloned()
    };
    match user {
        Some(user) if password == DEMO_PASSWORD => {
            let claims = json!({
                "sub": format!("user-{}", user["id"]),
                "email": user["email"],
                "name": user["name"],
                "roles": [user["role"]],
                "exp": chrono::Utc::now().timestamp() + 3600,
            });
            match jsonwebtoken::encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(secret().as_bytes()),
            ) {
                Ok(token) => Json(json!({"token": token})).into_response(),
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot sign"),
            }
        }
        _ => error(StatusCode::UNAUTHORIZED, "wrong email or password"),
    }
}

async fn list_users(State(state): State<AppState>) -> Response {
    let data = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Json(json!(data.users.values().collect::<Vec<_>>())).into_response()
}

async fn get_user(State(state): State<AppState>, UrlPath(id): UrlPath<u64>) -> Response {
    let data = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match data.users.get(&id) {
        Some(user) => Json(user.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such user"),
    }
}

fn is_admin(claims: &Value) -> bool {
    claims["roles"]
        .as_array()
        .is_some_and(|roles| roles.iter().any(|role| role == "admin"))
}

async fn create_user(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(claims) = caller(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "sign in first");
    };
    if !is_admin(&claims) {
        return error(StatusCode::FORBIDDEN, "admins only");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected a JSON body");
    };
    let mut data = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    data.next_id += 1;
    let id = data.next_id;
    let user = json!({"id": id, "email": body["email"], "name": body["name"], "role": body.get("role").cloned().unwrap_or(json!("member"))});
    data.users.insert(id, user.clone());
    (
        StatusCode::CREATED,
        [("location", format!("/api/users/{id}"))],
        Json(user),
    )
        .into_response()
}

async fn change_role(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
    body: Bytes,
) -> Response {
    let Some(claims) = caller(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "sign in first");
    };
    if !is_admin(&claims) {
        return error(StatusCode::FORBIDDEN, "admins only");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected a JSON body");
    };
    let mut data = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match data.users.get_mut(&id) {
        Some(user) => {
            user["role"] = body["role"].clone();
            Json(user.clone()).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "no such user"),
    }
}

async fn delete_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> Response {
    let Some(claims) = caller(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "sign in first");
    };
    if !is_admin(&claims) {
        return error(StatusCode::FORBIDDEN, "admins only");
    }
    let mut data = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match data.users.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::NOT_FOUND, "no such user"),
    }
}

async fn list_posts(State(state): State<AppState>) -> Response {
    let data = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Json(json!(data.posts.values().collect::<Vec<_>>())).into_response()
}

async fn create_post(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(claims) = caller(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "sign in first");
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected a JSON body");
    };
    let mut data = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    data.next_id += 1;
    let id = data.next_id;
    let post = json!({"id": id, "title": body["title"], "author": claims["sub"]});
    data.posts.insert(id, post.clone());
    (StatusCode::CREATED, Json(post)).into_response()
}

async fn delete_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> Response {
    if caller(&headers).is_none() {
        return error(StatusCode::UNAUTHORIZED, "sign in first");
    }
    let mut data = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match data.posts.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::NOT_FOUND, "no such post"),
    }
}

/// Starts the sample app on a free loopback port.
pub async fn start_sample_app() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = sample_app(Arc::new(Mutex::new(seed())));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "sample app failed");
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// Sample traffic
// ---------------------------------------------------------------------------------------------

struct Traffic {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    sent: usize,
}

impl Traffic {
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.proxy));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let response = self.client.request(request.body(body)?).await?;
        self.sent += 1;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
    "curl/8.5.0",
    "python-requests/2.32.3",
];

/// Drives a realistic mix of traffic through the proxy: sign-ins (some failing), user
/// administration (some refused), posts, health checks and plain reads.
async fn drive_traffic(proxy: SocketAddr) -> anyhow::Result<usize> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut traffic = Traffic {
        client,
        proxy,
        sent: 0,
    };
    let from = |ip: &str, agent: usize| {
        vec![
            ("x-forwarded-for", ip.to_string()),
            ("user-agent", AGENTS[agent % AGENTS.len()].to_string()),
        ]
    };

    let mut tokens = BTreeMap::new();
    for (email, ip, agent) in [
        ("alice@example.com", "198.51.100.10", 0),
        ("bob@example.com", "203.0.113.24", 1),
        ("carol@example.com", "192.0.2.77", 2),
    ] {
        let (_, body) = traffic
            .send(
                "POST",
                "/login",
                &from(ip, agent),
                Some(json!({"email": email, "password": DEMO_PASSWORD})),
            )
            .await?;
        let token = body["token"].as_str().unwrap_or_default().to_string();
        tokens.insert(email, (token, ip, agent));
    }
    for attempt in 0..3 {
        traffic
            .send(
                "POST",
                "/login",
                &from("45.83.64.2", 3),
                Some(json!({"email": "alice@example.com", "password": format!("guess-{attempt}")})),
            )
            .await?;
    }
    traffic
        .send(
            "POST",
            "/login",
            &from("45.83.64.2", 3),
            Some(json!({"email": "root@example.com", "password": "toor"})),
        )
        .await?;

    let with_token = |email: &str| -> Vec<(&'static str, String)> {
        let (token, ip, agent) = tokens.get(email).cloned().unwrap_or_default();
        let mut headers = from(ip, agent);
        headers.push(("authorization", format!("Bearer {token}")));
        headers
    };
    let alice = with_token("alice@example.com");
    let bob = with_token("bob@example.com");
    let carol = with_token("carol@example.com");

    let mut created = Vec::new();
    for (name, email) in [
        ("Dan Diaz", "dan@example.com"),
        ("Erin Estrada", "erin@example.com"),
        ("Frank Fischer", "frank@example.com"),
    ] {
        let (_, user) = traffic
            .send(
                "POST",
                "/api/users",
                &alice,
                Some(json!({"name": name, "email": email})),
            )
            .await?;
        if let Some(id) = user["id"].as_u64() {
            created.push(id);
        }
    }
    traffic
        .send(
            "POST",
            "/api/users",
            &bob,
            Some(json!({"name": "Mallory", "email": "mallory@example.com", "role": "admin"})),
        )
        .await?;
    if let Some(&id) = created.first() {
        traffic
            .send(
                "PATCH",
                &format!("/api/users/{id}/role"),
                &alice,
                Some(json!({"role": "admin"})),
            )
            .await?;
    }
    traffic
        .send(
            "PUT",
            "/api/users/2/role",
            &alice,
            Some(json!({"role": "billing"})),
        )
        .await?;
    traffic
        .send(
            "PATCH",
            "/api/users/3/role",
            &bob,
            Some(json!({"role": "admin"})),
        )
        .await?;
    for title in [
        "Quarterly report",
        "Incident review 2026-11",
        "Onboarding checklist",
    ] {
        traffic
            .send("POST", "/api/posts", &carol, Some(json!({"title": title})))
            .await?;
    }
    traffic
        .send(
            "POST",
            "/api/posts",
            &bob,
            Some(json!({"title": "Release notes"})),
        )
        .await?;
    if let Some(&id) = created.last() {
        traffic
            .send("DELETE", &format!("/api/users/{id}"), &alice, None)
            .await?;
    }
    traffic.send("DELETE", "/api/users/1", &bob, None).await?;
    traffic
        .send("DELETE", "/api/users/999", &alice, None)
        .await?;
    for _ in 0..3 {
        traffic.send("GET", "/healthz", &[], None).await?;
    }
    traffic.send("GET", "/api/users", &alice, None).await?;
    traffic.send("GET", "/api/users/2", &bob, None).await?;
    traffic.send("DELETE", "/api/posts/101", &[], None).await?;
    let basic = base64::engine::general_purpose::STANDARD.encode("legacy-batch:batch-password");
    let mut batch = from("10.20.30.40", 2);
    batch.push(("authorization", format!("Basic {basic}")));
    traffic
        .send("POST", "/api/import", &batch, Some(json!({"rows": 42})))
        .await?;
    Ok(traffic.sent)
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

fn free_or_any(addr: &str) -> String {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr.to_string(),
        Err(_) => "127.0.0.1:0".to_string(),
    }
}

/// The demo configuration with this run's addresses, database and token.
pub fn demo_config(
    upstream: SocketAddr,
    proxy_listen: &str,
    admin_listen: &str,
    db: &Path,
    token_sha256: &str,
    signing_key: &Path,
    heads: &Path,
) -> anyhow::Result<Config> {
    let mut config = Config::parse_with_env(DEMO_CONFIG, Path::new("."), &demo_environment)
        .map_err(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("the built-in demo config is invalid: {}", list.join("; "))
        })?;
    config.proxy.upstream = upstream.to_string();
    config.proxy.listen = proxy_listen
        .parse()
        .context("--proxy-listen is not an address")?;
    config.admin.listen = admin_listen
        .parse()
        .context("--admin-listen is not an address")?;
    config.store.path = db.to_path_buf();
    config.discover.file = crate::discover::config::learned_path_beside(db);
    let signer = crate::log::head::LogSigner::load(signing_key)
        .with_context(|| format!("cannot load {}", signing_key.display()))?;
    config.log.signing_key_path = Some(signing_key.to_path_buf());
    config.log.signer = Some(std::sync::Arc::new(signer));
    config.log.publish_heads = vec![crate::log::config::PublishTarget::File(heads.to_path_buf())];
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(token_sha256, &mut sha256).context("token hash")?;
    for token in &mut config.admin.tokens {
        token.sha256 = sha256;
    }
    Ok(config)
}

/// Waits (a few seconds at most) for a signed head that covers the first `size` entries, so the
/// viewer opened right after the demo starts shows a signed log and proofs that verify instead of
/// "no signed head covers this entry yet".
async fn wait_for_signed_head(sidecar: &Sidecar, size: u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let store = sidecar.store.clone();
        let signed = tokio::task::spawn_blocking(move || store.latest_head())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .map_or(0, |signed| signed.head.size);
        if signed >= size {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let data_dir: PathBuf = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "auditgate-demo-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        )),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let db = data_dir.join("audit.db");
    // The generated history goes into a new log only: a demo started again on its data directory
    // goes on from the log it left, rather than adding the same nine days a second time.
    let fresh = !db.exists();
    let signing_key = data_dir.join("log.key");
    if !signing_key.exists() {
        crate::log::head::LogSigner::write_new(&signing_key)
            .with_context(|| format!("cannot make {}", signing_key.display()))?;
    }
    let heads = data_dir.join("heads.ndjson");
    let upstream = start_sample_app().await?;
    let token = crate::commands::token::new_token();
    let proxy_listen = free_or_any(&args.proxy_listen);
    let admin_listen = free_or_any(&args.admin_listen);
    let config = demo_config(
        upstream,
        &proxy_listen,
        &admin_listen,
        &db,
        &token.sha256,
        &signing_key,
        &heads,
    )?;
    let log_id = config.log_id.clone();
    // The checkpoints' verifier key beside the key, as `auditgate keygen` writes it, so the log
    // can be checked with tools auditgate did not write (the command is printed below).
    let vkey = crate::log::checkpoint::verifier_key_path(&signing_key);
    if let Some(signer) = &config.log.signer {
        let key = signer.verifier_key(&config.log.checkpoint_origin(&log_id))?;
        std::fs::write(&vkey, format!("{key}\n"))
            .with_context(|| format!("cannot write {}", vkey.display()))?;
    }
    let sidecar = Sidecar::start(config, None).await?;
    let writer = sidecar.writer();
    let earlier = if fresh {
        history::entries(&log_id, chrono::Utc::now())
    } else {
        Vec::new()
    };
    let earlier_count = earlier.len();
    for entry in earlier {
        writer.push(entry);
    }
    // The history goes in before the live traffic, so sequence numbers follow time (after the
    // sidecar's own `audit.started`, which is always the first entry of a run).
    writer.flushed(std::time::Duration::from_secs(10)).await;
    let sent = drive_traffic(sidecar.proxy_addr).await?;
    sidecar
        .writer()
        .flushed(std::time::Duration::from_secs(10))
        .await;
    let entries = sidecar.store.size().unwrap_or(0);
    wait_for_signed_head(&sidecar, entries).await;

    println!();
    let history_note = if fresh {
        format!("{earlier_count} of them generated history of the last nine days")
    } else {
        "the log of the earlier run goes on".to_string()
    };
    println!("auditgate demo: a sample app behind the sidecar, {sent} sample requests sent, {entries} audit entries in the log ({history_note}).");
    println!();
    println!("  app (through the proxy)  http://{}", sidecar.proxy_addr);
    println!("  viewer and admin API     http://{}/", sidecar.admin_addr);
    println!("  admin token              {}", token.token);
    println!("  database                 {}", db.display());
    println!();
    println!("Try:");
    println!(
        "  curl -s -H 'Authorization: Bearer {}' 'http://{}/api/v1/entries?limit=5'",
        token.token, sidecar.admin_addr
    );
    let auditgate = invocation();
    println!("  {auditgate} query --db {} --limit 20", db.display());
    println!("  curl -s -X POST http://{}/login -d '{{\"email\":\"alice@example.com\",\"password\":\"nope\"}}'", sidecar.proxy_addr);
    println!(
        "  {auditgate} verify --db {} --heads {} --key {}",
        db.display(),
        heads.display(),
        crate::log::head::public_key_path(&signing_key).display()
    );
    println!(
        "  AUDITGATE_TOKEN={} scripts/c2sp-verify tiles {} http://{}/tlog   # checked by Go's sumdb/tlog, not by auditgate",
        token.token,
        vkey.display(),
        sidecar.admin_addr
    );
    println!();
    if args.no_wait {
        sidecar.shutdown().await;
        return Ok(());
    }
    println!("Serving until Ctrl-C.");
    let _ = tokio::signal::ctrl_c().await;
    sidecar.shutdown().await;
    Ok(())
}

/// How the person started this program, so the commands the demo prints can be pasted as they
/// are: `cargo run [--release] --` under cargo, else the program as it was invoked (a path as
/// typed, or `auditgate` when it was found on the PATH).
fn invocation() -> String {
    let program = std::env::args().next().unwrap_or_default();
    invocation_of(
        &program,
        std::env::var_os("CARGO").is_some() && std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
    )
}

fn invocation_of(program: &str, under_cargo: bool) -> String {
    if under_cargo {
        let release = program.contains("/release/") || program.contains("\\release\\");
        return if release {
            "cargo run --release --".to_string()
        } else {
            "cargo run --".to_string()
        };
    }
    if program.contains('/') || program.contains('\\') {
        program.to_string()
    } else {
        "auditgate".to_string()
    }
}

#[cfg(test)]
mod invocation_tests {
    use super::invocation_of;

    #[test]
    fn printed_commands_start_the_way_the_demo_was_started() {
        assert_eq!(
            invocation_of("/work/target/release/auditgate", true),
            "cargo run --release --"
        );
        assert_eq!(
            invocation_of("target/debug/auditgate", true),
            "cargo run --"
        );
        assert_eq!(invocation_of("auditgate", false), "auditgate");
        assert_eq!(
            invocation_of("./target/release/auditgate", false),
            "./target/release/auditgate"
        );
    }
}
