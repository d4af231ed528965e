//! A PostgreSQL database per test, on the server `scripts/postgres-test-server` started.
//!
//! `AUDITGATE_TEST_POSTGRES_URL` names the server (any database on it; each test creates its
//! own and drops it after). Without it the PostgreSQL half of a test is skipped, loudly: the
//! notice goes straight to stderr, past the test harness's capture, and with
//! `AUDITGATE_REQUIRE_POSTGRES=1` (as `scripts/test` sets) a missing server fails the test instead.

#![allow(dead_code)]

use std::io::Write as _;

use postgres::NoTls;

pub const URL_VARIABLE: &str = "AUDITGATE_TEST_POSTGRES_URL";
pub const DIR_VARIABLE: &str = "AUDITGATE_TEST_POSTGRES_DIR";

/// The server's URL, or `None` after saying that the PostgreSQL half of `test` is skipped.
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var(URL_VARIABLE) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("AUDITGATE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "{test}: AUDITGATE_REQUIRE_POSTGRES=1 but {URL_VARIABLE} is not set; start one \
                 with scripts/postgres-test-server"
            );
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: no PostgreSQL ({URL_VARIABLE} is not set; see \
                 scripts/postgres-test-server)"
            );
            None
        }
    }
}

/// Tests that use the server hold this shared; the outage test, which stops the server, holds it
/// exclusively, so it never pulls the server from under another test.
/// (tokio's lock: its guards may move between threads, as a database made on the blocking pool
/// does.)
static SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

enum ServerUse {
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>),
}

/// A database of its own on the test server, dropped (with its connections) on drop.
pub struct TestDatabase {
    server: postgres::Config,
    pub name: String,
    pub config: postgres::Config,
    _use: ServerUse,
}

impl TestDatabase {
    /// Call from a blocking context (a plain test, or `spawn_blocking`).
    pub fn create(server_url: &str, label: &str) -> TestDatabase {
        let guard = SERVER.blocking_read();
        TestDatabase::create_with(server_url, label, ServerUse::Shared(guard))
    }

    /// A database on a server no other test uses meanwhile (the test may stop it).
    pub fn create_exclusive(server_url: &str, label: &str) -> TestDatabase {
        let guard = SERVER.blocking_write();
        TestDatabase::create_with(server_url, label, ServerUse::Exclusive(guard))
    }

    fn create_with(server_url: &str, label: &str, server_use: ServerUse) -> TestDatabase {
        let server: postgres::Config = server_url.parse().expect("test server URL");
        let name = format!(
            "auditgate_{}_{}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let mut admin = server.connect(NoTls).expect("connect to the test server");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create database");
        let mut config = server.clone();
        config.dbname(&name);
        TestDatabase {
            server,
            name,
            config,
            _use: server_use,
        }
    }

    /// `postgres://user@host:port/name`, for a config file.
    pub fn url(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("postgres");
        format!("postgres://{user}@{host}:{port}/{}", self.name)
    }

    /// A plain client on the database, for the test's own SQL.
    pub fn client(&self) -> postgres::Client {
        self.config
            .connect(NoTls)
            .expect("connect to the test database")
    }

    /// Makes the database one of an earlier release: the schema SQL of versions 1 to `version`
    /// as that release ran it, its version row, and `logs` registered. Returns the client.
    pub fn at_schema_version(&self, version: usize, logs: &[&str]) -> postgres::Client {
        const SCHEMAS: [&str; 2] = [
            include_str!("../../src/store/postgres/schema_v1.sql"),
            include_str!("../../src/store/postgres/schema_v2.sql"),
        ];
        assert!((1..=SCHEMAS.len()).contains(&version), "version {version}");
        let mut client = self.client();
        for (number, sql) in SCHEMAS[..version].iter().enumerate() {
            client
                .batch_execute(sql)
                .unwrap_or_else(|error| panic!("schema version {}: {error}", number + 1));
        }
        client
            .execute(
                "CREATE TABLE auditgate_schema (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)",
                &[],
            )
            .expect("version table");
        client
            .execute(
                "INSERT INTO auditgate_schema (id, version) VALUES (1, $1)",
                &[&(version as i32)],
            )
            .expect("version row");
        for log_id in logs {
            client
                .execute("INSERT INTO logs (log_id) VALUES ($1)", &[log_id])
                .expect("registers the log");
        }
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // On a thread of its own: a postgres client must not be dropped on an async worker, and
        // a test may drop its database there.
        let server = self.server.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(mut admin) = server.connect(NoTls) {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
            }
        })
        .join();
    }
}

/// TLS as a store URL without `sslmode` gets it: libpq's default, `prefer` (the test server
/// speaks TLS, so the store tests run over it).
pub fn default_tls() -> auditgate::store::postgres::tls::PostgresTls {
    auditgate::store::postgres::tls::parse_url(
        "postgres://postgres@127.0.0.1/postgres",
        std::path::Path::new("."),
    )
    .expect("parses")
    .tls
    .expect("prefer needs no CA")
}

/// Stops or starts the test server (the outage test), through the same script that made it.
pub fn server_control(action: &str) -> bool {
    let Ok(dir) = std::env::var(DIR_VARIABLE) else {
        return false;
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres-test-server");
    std::process::Command::new(script)
        .arg(action)
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
