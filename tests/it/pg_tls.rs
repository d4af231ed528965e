//! PostgreSQL over TLS, against the real test server: `scripts/postgres-test-server` runs it with
//! `ssl = on` and a certificate from a throwaway CA (`AUDITGATE_TEST_POSTGRES_CA`). Each
//! `sslmode` is checked the way a user meets it: the sidecar stores entries over a verified
//! session, and the wrong CA, a wrong host name or a server without TLS are refused with a
//! message that says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use auditgate::config::Config;
use auditgate::server::Sidecar;

use crate::pg::{self, TestDatabase};
use crate::support::{eventually, eventually_blocking, HttpClient, TempDir, Upstream};

/// The CA that signed the test server's certificate, or `None` after saying the test is skipped.
fn server_ca(test: &str) -> Option<PathBuf> {
    pg::server_url(test)?;
    match std::env::var("AUDITGATE_TEST_POSTGRES_CA") {
        Ok(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            assert!(
                std::env::var("AUDITGATE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "{test}: AUDITGATE_TEST_POSTGRES_CA is not set; the test server was made by an \
                 older scripts/postgres-test-server (destroy it and start a new one)"
            );
            eprintln!("{test}: skipped: the test server has no TLS CA");
            None
        }
    }
}

/// A CA that signed nothing the server presents.
fn wrong_ca(ca: &Path) -> PathBuf {
    ca.with_file_name("wrong-ca.pem")
}

/// The store of a config whose `[store] url` is `url`, opened as a sidecar opens it.
fn open_store(url: &str) -> Result<std::sync::Arc<dyn auditgate::store::Store>, String> {
    let text = format!(
        "[proxy]\nupstream = \"127.0.0.1:3000\"\n[store]\nurl = \"{url}\"\n[log]\nlog_id = \"tls\"\n"
    );
    let config = Config::parse(&text, Path::new(".")).map_err(|errors| format!("{errors:?}"))?;
    auditgate::store::open(&config.store, "tls", true).map_err(|error| error.to_string())
}

/// How many of the database's sessions opened by auditgate run over TLS, and how many do not.
fn auditgate_sessions(database: &TestDatabase) -> (i64, i64) {
    let row = database
        .client()
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = $1 AND a.application_name = 'auditgate'",
            &[&database.name],
        )
        .expect("session query");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn verify_full_with_the_servers_ca_stores_entries_over_tls() {
    let Some(ca) = server_ca("verify_full") else {
        return;
    };
    let url = pg::server_url("verify_full").expect("server");
    let database = tokio::task::spawn_blocking(move || TestDatabase::create(&url, "tls_full"))
        .await
        .expect("database");
    let upstream = Upstream::start().await;
    let dir = TempDir::new("pg-tls");
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [store]\nurl = \"{}?sslmode=verify-full&sslrootcert={}\"\nspill_file = \"{}\"\n\
         flush_interval = \"1ms\"\n[log]\nlog_id = \"tls-1\"\n[unmatched]\nrecord = \"all\"\n",
        upstream.addr,
        database.url(),
        ca.display(),
        dir.0.join("spill.ndjson").display(),
    );
    let config = Config::parse(&text, &dir.0).expect("valid config");
    let sidecar = Sidecar::start(config, None).await.expect("sidecar starts");
    let client = HttpClient::new();
    for index in 0..3 {
        let url = format!("http://{}/things/{index}", sidecar.proxy_addr);
        assert_eq!(client.send("POST", &url, &[], "{}").await.status, 200);
    }
    let mut stored = 0;
    eventually(Duration::from_secs(10), async || {
        assert!(sidecar.writer().flushed(Duration::from_secs(10)).await);
        let config = database.config.clone();
        stored = tokio::task::spawn_blocking(move || {
            let mut client = config.connect(postgres::NoTls).expect("connect");
            let row = client
                .query_one(
                    "SELECT count(*) FROM entries WHERE log_id = 'tls-1' AND action LIKE 'http.%'",
                    &[],
                )
                .expect("count");
            row.get::<_, i64>(0)
        })
        .await
        .expect("count task");
        stored >= 3
    })
    .await;
    assert_eq!(stored, 3, "the three requests are stored");
    let database = tokio::task::spawn_blocking(move || {
        let (tls, plain) = auditgate_sessions(&database);
        assert!(tls >= 1, "the sidecar's sessions run over TLS");
        assert_eq!(plain, 0, "no session of the sidecar runs in plain text");
        database
    })
    .await
    .expect("session check");
    sidecar.shutdown().await;
    drop(database);
}

#[test]
fn verify_full_with_a_wrong_ca_or_a_wrong_host_name_is_refused() {
    let Some(ca) = server_ca("wrong_ca") else {
        return;
    };
    let url = pg::server_url("wrong_ca").expect("server");
    let database = TestDatabase::create(&url, "tls_wrong_ca");
    let error = open_store(&format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        database.url(),
        wrong_ca(&ca).display()
    ))
    .err()
    .expect("a server whose certificate the CA did not sign is refused");
    assert!(
        error.contains("TLS") && error.contains("certificate"),
        "the refusal names TLS and the certificate: {error}"
    );
    // The right CA, but the host name the certificate does not carry: verify-full refuses,
    // verify-ca (chain only) accepts. `hostaddr` connects to the server under another name.
    let port = database.config.get_ports().first().copied().expect("port");
    let renamed = |mode: &str| {
        format!(
            "host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres dbname={} sslmode={mode} sslrootcert={}",
            database.name,
            ca.display()
        )
    };
    let error = open_store(&renamed("verify-full"))
        .err()
        .expect("a name mismatch is refused");
    assert!(
        error.contains("TLS") && error.contains("certificate"),
        "the refusal names TLS and the certificate: {error}"
    );
    open_store(&renamed("verify-ca")).expect("verify-ca checks the chain only");
}

#[test]
fn require_connects_to_a_self_signed_server_without_a_ca() {
    if server_ca("require").is_none() {
        return;
    }
    let url = pg::server_url("require").expect("server");
    let database = TestDatabase::create(&url, "tls_require");
    let store = open_store(&format!("{}?sslmode=require", database.url()))
        .expect("require checks no certificate");
    store
        .append(&mut [auditgate::entry::AuditEntry::new("tls", "over.tls")])
        .expect("appends");
    let (tls, plain) = auditgate_sessions(&database);
    assert!(tls >= 1 && plain == 0, "tls {tls}, plain {plain}");
    drop(store);
}

/// Turns the server's TLS off for the life of the guard (the test holds the server alone).
struct TlsOff<'a> {
    database: &'a TestDatabase,
}

impl<'a> TlsOff<'a> {
    fn new(database: &'a TestDatabase) -> TlsOff<'a> {
        set_server_ssl(database, "ALTER SYSTEM SET ssl = off", "off");
        TlsOff { database }
    }
}

impl Drop for TlsOff<'_> {
    fn drop(&mut self) {
        set_server_ssl(self.database, "ALTER SYSTEM RESET ssl", "on");
    }
}

/// Changes `ssl` and waits (bounded) until new sessions see the reloaded value.
fn set_server_ssl(database: &TestDatabase, statement: &str, expected: &str) {
    let mut client = database.client();
    client.batch_execute(statement).expect("alter system");
    client
        .batch_execute("SELECT pg_reload_conf()")
        .expect("reload");
    assert!(
        eventually_blocking(Duration::from_secs(5), || {
            let row = database
                .client()
                .query_one("SHOW ssl", &[])
                .expect("show ssl");
            row.get::<_, String>(0) == expected
        }),
        "the server's ssl did not become {expected}"
    );
}

#[test]
fn require_refuses_a_server_without_tls_and_prefer_falls_back() {
    if server_ca("no_tls").is_none() {
        return;
    }
    let url = pg::server_url("no_tls").expect("server");
    let database = TestDatabase::create_exclusive(&url, "tls_off");
    let tls_off = TlsOff::new(&database);
    let error = open_store(&format!("{}?sslmode=require", database.url()))
        .err()
        .expect("require refuses a server without TLS");
    assert!(
        error.contains("server does not support TLS"),
        "the refusal says the server has no TLS: {error}"
    );
    let store = open_store(&database.url()).expect("prefer (the default) connects in plain text");
    let (tls, plain) = auditgate_sessions(&database);
    assert_eq!((tls, plain >= 1), (0, true), "tls {tls}, plain {plain}");
    drop(store);
    drop(tls_off);
    // With TLS back, prefer uses it.
    let store = open_store(&database.url()).expect("prefer connects");
    let (tls, _) = auditgate_sessions(&database);
    assert!(tls >= 1, "prefer uses TLS when the server offers it");
    drop(store);
}
