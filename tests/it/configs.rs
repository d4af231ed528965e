//! The shipped configs, `check`, `explain`, `query` and `demo` through the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use auditgate::config::Config;
use auditgate::server::Sidecar;
use serde_json::Value;

use crate::support::{HttpClient, TempDir, Upstream};

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_auditgate"));
    command
        .env("APP_JWT_SECRET", "example-secret")
        .env("AUDITGATE_DEMO_JWT_SECRET", "demo-secret")
        .env("AUDITGATE_LOG", "warn");
    command
}

fn shipped_configs() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
            .expect("config dir")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
    paths.sort();
    paths
}

#[test]
fn every_shipped_config_is_valid() {
    let paths = shipped_configs();
    assert!(paths.len() >= 4, "{paths:?}");
    let output = binary().arg("check").args(&paths).output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for path in &paths {
        assert!(
            stdout.contains(&format!("{}: valid", path.display())),
            "{stdout}"
        );
    }
}

#[test]
fn a_rule_action_in_auditgates_namespace_is_a_config_error() {
    let dir = TempDir::new("check-reserved");
    let path = dir.0.join("reserved.toml");
    std::fs::write(
        &path,
        "[proxy]\nupstream = \"127.0.0.1:3000\"\n[[rule]]\nname = \"prune\"\npath = \"/prune\"\naction = \"audit.pruned\"\n[[rule]]\nname = \"b\"\nstatus = \"9xx\"\naction = \"x\"\n[[rule]]\nname = \"c\"\npath = \"/c/{section}\"\naction = \"{section}.viewed\"\n",
    )
    .expect("write");
    let output = binary()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "2 errors",
        "rule #1 (\"prune\").action: `audit.pruned` starts with `audit.`, which is reserved for auditgate's own entries",
        "rule #2 (\"b\").status",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn an_invalid_config_lists_every_error_and_exits_64() {
    let dir = TempDir::new("check");
    let path = dir.0.join("bad.toml");
    std::fs::write(
        &path,
        "[proxy]\nupstream = \"nowhere\"\nmax_body_capture = \"huge\"\n\
         [log]\nsign_every = 0\n\
         [retention]\nmax_age = \"forever\"\n\
         [[actor]]\nfrom = \"magic\"\n\
         [redact]\nfields = [\"token\"]\nmode = \"hmac\"\n\
         [hints]\nmax_metadata = \"enormous\"\n\
         [stream]\nndjson = \"audit.ndjson\"\nkeep = 0\n\
         [[rule]]\nname = \"a\"\npath = \"/x/{id\"\naction = \"x\"\n[[rule]]\nname = \"b\"\nstatus = \"9xx\"\naction = \"{nope}\"\n",
    )
    .expect("write");
    let output = binary()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "11 errors",
        "proxy.upstream",
        "proxy.max_body_capture",
        "log.sign_every",
        "retention.max_age",
        "actor #1 (magic).from",
        "redact: mode = \"hmac\" needs hmac_key_env",
        "hints.max_metadata",
        "stream.keep",
        "rule #1 (\"a\").path",
        "rule #2 (\"b\").status",
        "rule #2 (\"b\").action",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn explain_prints_the_rule_and_the_entry() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/auditgate.example.toml");
    let output = binary()
        .args(["explain", "--config"])
        .arg(&config)
        .args([
            "PATCH",
            "/api/users/42/role",
            "--status",
            "200",
            "--body",
            r#"{"role":"admin"}"#,
        ])
        .args([
            "-H",
            "Authorization: Basic YWxpY2U6aHVudGVyMg==",
            "-H",
            "User-Agent: cli",
        ])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let explanation: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(explanation["decision"], "record");
    assert_eq!(explanation["rule"], "role change");
    let entry = &explanation["entry"];
    assert_eq!(entry["action"], "user.role_changed");
    assert_eq!(entry["resourceId"], "42");
    assert_eq!(entry["metadata"]["newRole"], "admin");
    assert_eq!(entry["actorId"], "alice");
    assert_eq!(entry["actorSource"], "basic");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("hunter2"));

    let output = binary()
        .args(["explain", "--config"])
        .arg(&config)
        .args(["GET", "/healthz"])
        .output()
        .expect("runs");
    let explanation: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(explanation["decision"], "skip");
    assert_eq!(explanation["entry"], Value::Null);
}

/// Every rule of the documented example config produces its entry through the real proxy, and
/// `auditgate query` shows them.
#[tokio::test]
async fn every_example_rule_produces_an_entry_seen_by_query() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("example");
    let db = dir.0.join("audit.db");
    // The JWT secret's variable is one that .cargo/config.toml sets for the tests: setting
    // APP_JWT_SECRET here would race the threads of the tests running beside this one.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/auditgate.example.toml");
    let text = std::fs::read_to_string(&example)
        .expect("read the example config")
        .replace(
            "hs256_secret_env = \"APP_JWT_SECRET\"",
            "hs256_secret_env = \"IT_EXAMPLE_APP_JWT_SECRET\"",
        );
    let base = example.parent().expect("config dir");
    let mut config = match Config::parse(&text, base) {
        Ok(config) => config,
        Err(errors) => panic!("example config is invalid: {errors:?}"),
    };
    config.proxy.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin.listen = "127.0.0.1:0".parse().expect("addr");
    config.proxy.upstream = upstream.addr.to_string();
    config.store.path = db.clone();
    let sidecar = Sidecar::start(config, None).await.expect("starts");
    let base = format!("http://{}", sidecar.proxy_addr);
    let client = HttpClient::new();
    type Request<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let requests: [Request; 6] = [
        ("GET", "/healthz", &[], ""),
        ("DELETE", "/api/users/42", &[], ""),
        (
            "POST",
            "/login",
            &[("x-test-status", "401")],
            r#"{"email":"eve@example.com","password":"guess"}"#,
        ),
        ("PUT", "/api/users/42/role", &[], r#"{"role":"admin"}"#),
        (
            "POST",
            "/api/posts",
            &[("x-test-status", "201")],
            r#"{"title":"hello"}"#,
        ),
        (
            "GET",
            "/api/reports/export?format=csv",
            &[("x-tenant", "acme")],
            "",
        ),
    ];
    for (method, path, headers, body) in requests {
        client
            .send(method, &format!("{base}{path}"), headers, body.to_string())
            .await;
    }
    assert!(
        sidecar
            .writer()
            .flushed(std::time::Duration::from_secs(10))
            .await
    );
    sidecar.shutdown().await;

    let output = binary()
        .args(["query", "--db"])
        .arg(&db)
        .args(["--format", "json", "--asc"])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entries: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("json line"))
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|entry| entry["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        vec![
            "audit.started",
            "user.deleted",
            "auth.login_failed",
            "user.role_changed",
            "post.created",
            "reports.exported",
            "audit.stopped"
        ],
        "the run's own start and stop frame the example traffic"
    );
    assert_eq!(entries[2]["actorEmail"], "eve@example.com");
    assert_eq!(entries[2]["actorVerified"], false);
    assert_eq!(entries[3]["metadata"]["newRole"], "admin");
    assert_eq!(entries[4]["resourceId"], "4242");
    assert_eq!(entries[4]["metadata"]["location"], "/echo/4242");
    assert_eq!(entries[5]["tenant"], "acme");
    assert_eq!(entries[5]["metadata"]["format"], "csv");

    let table = binary()
        .args(["query", "--db"])
        .arg(&db)
        .args(["--action", "user.deleted"])
        .output()
        .expect("runs");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("user.deleted") && table.contains("user/42") && table.contains("(1 entry)"),
        "{table}"
    );
}

/// `auditgate demo --no-wait` on loopback ports, its data in `data_dir`.
fn run_demo(data_dir: &std::path::Path) -> std::process::Output {
    binary()
        .args([
            "demo",
            "--no-wait",
            "--proxy-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .expect("runs")
}

#[test]
fn demo_runs_and_prints_where_to_look() {
    let dir = TempDir::new("demo");
    let output = run_demo(&dir.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("viewer and admin API     http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("admin token              agt_"), "{stdout}");
    let entries = crate::support::read_entries(&dir.0.join("audit.db"));
    assert!(entries.len() >= 20, "{}", entries.len());
    let actions: std::collections::BTreeSet<&str> =
        entries.iter().map(|entry| entry.action.as_str()).collect();
    for action in [
        "auth.login",
        "auth.login_failed",
        "user.created",
        "user.role_changed",
        "user.deleted",
        "post.created",
    ] {
        assert!(actions.contains(action), "demo lacks {action}: {actions:?}");
    }
    assert!(entries
        .iter()
        .any(|entry| entry.actor_verified && entry.actor_source.as_deref() == Some("jwt")));

    // The checkpoints' verifier key is written beside the key, and the printed command to check
    // the log without auditgate names it; a checkpoint of the demo's log verifies under it.
    let vkey_path = dir.0.join("log.key.vkey");
    assert!(
        stdout.contains(&format!(
            "scripts/c2sp-verify tiles {}",
            vkey_path.display()
        )),
        "{stdout}"
    );
    let vkey = std::fs::read_to_string(&vkey_path).expect("the demo writes log.key.vkey");
    let vkey = auditgate::log::checkpoint::VerifierKey::parse(vkey.trim()).expect("a vkey");
    let mirror = dir.0.join("mirror");
    let tiles = binary()
        .args(["tiles", "--db"])
        .arg(dir.0.join("audit.db"))
        .arg("--key")
        .arg(dir.0.join("log.key"))
        .arg("--out")
        .arg(&mirror)
        .output()
        .expect("runs");
    assert!(
        tiles.status.success(),
        "{}",
        String::from_utf8_lossy(&tiles.stderr)
    );
    let note = std::fs::read_to_string(mirror.join("checkpoint")).expect("a checkpoint");
    let checkpoint = vkey
        .verify_checkpoint(&note)
        .expect("the demo's checkpoint verifies under the vkey it wrote");
    // The sidecar's own `audit.started` / `audit.stopped` entries are in the tree too.
    assert!(checkpoint.size as usize >= entries.len(), "{note}");

    // Started again on its directory, the demo goes on from its log: the sample traffic is
    // added again, the generated history (entries of the last nine days) is not.
    let older = |entries: &[auditgate::entry::AuditEntry]| {
        let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
        entries
            .iter()
            .filter(|entry| entry.created_at < hour_ago)
            .count()
    };
    let history = older(&entries);
    assert!(history > 0, "the first run generated no history");
    let again = run_demo(&dir.0);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(
        stdout.contains("the log of the earlier run goes on"),
        "{stdout}"
    );
    let after = crate::support::read_entries(&dir.0.join("audit.db"));
    assert!(after.len() > entries.len());
    assert_eq!(older(&after), history, "the history was added twice");
}
