//! What an operator relies on day to day: private store files, logs a collector can read, the
//! build, configuration and process in `/metrics`, reload counters, and a viewer cookie that is
//! `Secure` behind a TLS-terminating proxy.

use std::time::Duration;

use crate::support::{
    config_text, eventually, metric_value, read_all_entries, sha256_hex, write_config, HttpClient,
    Process, TempDir, TestSidecar, Upstream, TEST_TOKEN,
};

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_and_its_wal_are_private_to_the_sidecar_user() {
    let upstream = Upstream::start().await;
    let mut sidecar = TestSidecar::start(upstream.addr, "").await;
    let client = HttpClient::new();
    client
        .send("DELETE", &sidecar.url("/api/users/1"), &[], "")
        .await;
    assert_eq!(sidecar.wait_entries(1).await.len(), 1);
    let db = sidecar.db.clone();
    for suffix in ["", "-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        assert_eq!(
            mode(&path),
            0o600,
            "{} is {:o}",
            path.display(),
            mode(&path)
        );
    }
    sidecar.stop().await;
}

fn sha256_of(path: &std::path::Path) -> String {
    sha256_hex(std::fs::read(path).expect("config"))
}

#[tokio::test]
async fn json_logs_have_flat_fields_and_an_unknown_format_is_refused() {
    use std::io::{BufRead, BufReader};
    let upstream = Upstream::start().await;
    let dir = TempDir::new("json-logs");
    let config = write_config(&dir.0, upstream.addr, "", "");

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("AUDITGATE_LOG_FORMAT", "yaml")
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(64));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("AUDITGATE_LOG_FORMAT=`yaml` is not one of text, json"),
        "{said}"
    );

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("AUDITGATE_LOG_FORMAT", "json")
        .env_remove("AUDITGATE_LOG")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    // The reader ends when the child's stderr closes, so a start that never logs the line below
    // ends the loop (the child is killed by the bounded wait at the end, whatever happens).
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("auditgate is serving"))
    });
    // A reader still running after the bound is ended by the kill below, and its answer says
    // whether the line came.
    eventually(Duration::from_secs(30), async || reader.is_finished()).await;
    let _ = child.kill();
    let _ = child.wait();
    let line = reader.join().expect("reader").expect("a serving line");
    let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON object a line");
    assert_eq!(event["message"], "auditgate is serving", "{line}");
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["version"], env!("CARGO_PKG_VERSION"), "{line}");
    assert_eq!(
        event["config_sha256"],
        sha256_of(&config).as_str(),
        "{line}"
    );
    assert!(
        event["proxy"]
            .as_str()
            .is_some_and(|proxy| proxy.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert!(event.get("fields").is_none(), "fields are flat: {line}");
}

#[tokio::test]
async fn metrics_show_the_build_the_config_in_force_the_process_and_reloads() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("metrics-ops");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        "[[rule]]\nmethod = \"DELETE\"\npath = \"/api/users/{id}\"\naction = \"user.deleted\"\n",
    );
    let first_hash = sha256_of(&config);
    let process = Process::start(&config);
    let client = HttpClient::new();
    let metrics_url = format!("http://{}/metrics", process.admin);
    let page = client.get_admin(&metrics_url).await.text();
    let version_series = format!(
        "auditgate_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric_value(&page, &version_series), Some(1.0), "{page}");
    let config_series = |hash: &str| format!("auditgate_config_info{{sha256=\"{hash}\"}}");
    assert_eq!(
        metric_value(&page, &config_series(&first_hash)),
        Some(1.0),
        "{page}"
    );
    assert!(metric_value(&page, "process_resident_memory_bytes").is_some_and(|rss| rss > 1e6));
    assert!(metric_value(&page, "process_open_fds").is_some_and(|fds| fds >= 3.0));
    assert!(metric_value(&page, "process_start_time_seconds").is_some());

    // Exchanges by method, status class and whether a rule matched.
    let proxy = |path: &str| format!("http://{}{path}", process.proxy);
    client.send("DELETE", &proxy("/api/users/3"), &[], "").await;
    client.send("GET", &proxy("/api/users/3"), &[], "").await;
    client.send("GET", &proxy("/a/%00/b"), &[], "").await;
    let page = client.get_admin(&metrics_url).await.text();
    let series = |labels: &str| {
        metric_value(
            &page,
            &format!("auditgate_proxied_requests_total{{{labels}}}"),
        )
    };
    assert_eq!(
        series("method=\"DELETE\",class=\"2xx\",matched=\"true\""),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        series("method=\"GET\",class=\"2xx\",matched=\"false\""),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        series("method=\"GET\",class=\"4xx\",matched=\"false\""),
        Some(1.0),
        "a refused path is counted with auditgate's answer: {page}"
    );
    assert_eq!(
        metric_value(&page, "auditgate_request_duration_seconds_count"),
        Some(3.0)
    );
    assert_eq!(
        metric_value(&page, "auditgate_upstream_duration_seconds_count"),
        Some(2.0),
        "the refused request never reached the app"
    );

    // A valid change is reloaded and counted; the new hash replaces the old one.
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, text.replace("user.deleted", "user.removed")).expect("write");
    let second_hash = sha256_of(&config);
    process.signal("HUP");
    let reloaded = eventually(Duration::from_secs(10), async || {
        let page = client.get_admin(&metrics_url).await.text();
        metric_value(&page, "auditgate_config_reloads_total{result=\"ok\"}") == Some(1.0)
    })
    .await;
    assert!(reloaded, "the reload was not counted");
    let page = client.get_admin(&metrics_url).await.text();
    assert_eq!(
        metric_value(&page, &config_series(&second_hash)),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric_value(&page, &config_series(&first_hash)),
        None,
        "{page}"
    );

    // An invalid file is refused, counted, and the hash in force stays.
    std::fs::write(&config, "[proxy]\nupstream = 5\n").expect("write");
    process.signal("HUP");
    let refused = eventually(Duration::from_secs(10), async || {
        let page = client.get_admin(&metrics_url).await.text();
        metric_value(&page, "auditgate_config_reloads_total{result=\"failed\"}") == Some(1.0)
    })
    .await;
    assert!(refused, "the refused reload was not counted");
    let page = client.get_admin(&metrics_url).await.text();
    assert_eq!(
        metric_value(&page, &config_series(&second_hash)),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric_value(&page, "auditgate_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    process.stop();
}

/// Signs in to the viewer and returns the `Set-Cookie` header.
async fn sign_in(admin: std::net::SocketAddr, extra: &[(&str, &str)]) -> String {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    let reply = HttpClient::new()
        .send(
            "POST",
            &format!("http://{admin}/api/v1/session"),
            &headers,
            format!("{{\"token\":\"{TEST_TOKEN}\"}}"),
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text());
    reply
        .headers
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .expect("a cookie")
        .to_string()
}

#[tokio::test]
async fn the_session_cookie_is_secure_when_a_trusted_proxy_says_https() {
    let upstream = Upstream::start().await;
    let start = async |trusted: &str| {
        TestSidecar::start_config(|db| {
            config_text(upstream.addr, db, "", "").replace(
                "[admin]\n",
                &format!("[admin]\ntrusted_proxies = [\"{trusted}\"]\n"),
            )
        })
        .await
    };
    let https = [("x-forwarded-proto", "https")];

    // The test client connects from 127.0.0.1: a trusted proxy.
    let mut behind_tls = start("127.0.0.1").await;
    let cookie = sign_in(behind_tls.admin, &https).await;
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let plain = sign_in(behind_tls.admin, &[]).await;
    assert!(
        !plain.contains("Secure"),
        "plain HTTP could never send it back: {plain}"
    );
    behind_tls.stop().await;

    // A client that is not a trusted proxy cannot decide the cookie's attributes.
    let mut elsewhere = start("192.0.2.1").await;
    let cookie = sign_in(elsewhere.admin, &https).await;
    assert!(!cookie.contains("Secure"), "{cookie}");
    elsewhere.stop().await;
}

#[tokio::test]
async fn a_reload_applies_tokens_redaction_and_stream_and_names_what_waits_for_a_restart() {
    let upstream = Upstream::start().await;
    let other_upstream = Upstream::start().await;
    let dir = TempDir::new("honest-reload");
    let config = write_config(
        &dir.0,
        upstream.addr,
        "",
        "[redact]\nfields = [\"password\", \"ssn\"]\n\
         [[rule]]\nmethod = \"DELETE\"\npath = \"/api/users/{id}\"\naction = \"user.deleted\"\n",
    );
    let process = Process::start(&config);
    let client = HttpClient::new();
    let admin = |path: &str| format!("http://{}{path}", process.admin);
    let with_token = async |token: &str| {
        client
            .send(
                "GET",
                &admin("/api/v1/entries"),
                &[("authorization", &format!("Bearer {token}"))],
                "",
            )
            .await
            .status
    };
    assert_eq!(with_token(TEST_TOKEN).await, 200);
    let new_token = "agt_rotated_token_for_the_reload_test";
    assert_eq!(with_token(new_token).await, 401);
    // A viewer session opened with the token that the reload removes.
    let cookie = sign_in(process.admin, &[]).await;
    let session = cookie.split(';').next().expect("name=value").to_string();
    let session_status = async || {
        client
            .send(
                "GET",
                &admin("/api/v1/session"),
                &[("cookie", &session)],
                "",
            )
            .await
            .status
    };
    assert_eq!(session_status().await, 200);

    // The new file: the test token replaced, a redaction field dropped, a stream added, and the
    // app's address changed (which needs a restart).
    let new_hash = sha256_hex(new_token);
    let text = std::fs::read_to_string(&config).expect("read");
    let stream_path = dir.0.join("stream.ndjson");
    let changed =
        text.replace(
            "beb5223238d0c0baa5195d4ca74abd43d5c5ce7e00aa041fd48566f2d0a6a5f6",
            &new_hash,
        )
        .replace("[\"password\", \"ssn\"]", "[\"password\"]")
        .replace(
            &format!("upstream = \"{}\"", upstream.addr),
            &format!("upstream = \"{}\"", other_upstream.addr),
        ) + &format!("\n[stream]\nndjson = \"{}\"\n", stream_path.display());
    assert_ne!(changed, text);
    std::fs::write(&config, changed).expect("write");
    process.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), async || with_token(new_token)
            .await
            == 200)
        .await,
        "the new token never worked"
    );
    assert_eq!(
        with_token(TEST_TOKEN).await,
        401,
        "a removed token keeps working"
    );
    assert_eq!(
        session_status().await,
        401,
        "its viewer session outlived it"
    );
    assert!(
        eventually(Duration::from_secs(10), async || process
            .logged("key=proxy.upstream"))
        .await,
        "no warning names the key that needs a restart"
    );

    // Requests still go to the running upstream, and now reach the stream too.
    let reply = client
        .send(
            "DELETE",
            &format!("http://{}/api/users/7", process.proxy),
            &[],
            "",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        other_upstream.count(),
        0,
        "the app's address changed without a restart"
    );
    let streamed = eventually(Duration::from_secs(10), async || {
        std::fs::read_to_string(&stream_path).is_ok_and(|text| text.contains("user.deleted"))
    })
    .await;
    assert!(streamed, "the stream added by the reload got nothing");

    // The log says what changed, what took effect and what waits.
    let entries = client
        .send(
            "GET",
            &admin("/api/v1/entries?action=audit.config_reloaded"),
            &[("authorization", &format!("Bearer {new_token}"))],
            "",
        )
        .await
        .json();
    let record = &entries["entries"][0];
    let metadata = &record["metadata"];
    assert_eq!(record["actorId"], "auditgate", "{entries}");
    assert_eq!(
        metadata["newConfigSha256"],
        sha256_of(&config).as_str(),
        "{entries}"
    );
    assert_ne!(metadata["oldConfigSha256"], metadata["newConfigSha256"]);
    let listed = |key: &str| -> Vec<String> {
        metadata[key]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|key| key.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(listed("restartNeeded"), ["proxy.upstream"], "{metadata}");
    for key in ["admin.tokens", "redact.fields", "stream.ndjson"] {
        assert!(
            listed("applied").contains(&key.to_string()),
            "{key}: {metadata}"
        );
    }
    assert_eq!(
        metadata["details"]["redact.fields"],
        serde_json::json!({"removed": ["ssn"], "added": []}),
        "{metadata}"
    );
    process.stop();
}

#[tokio::test]
async fn an_upstream_failure_is_logged_with_the_request_id_method_and_path() {
    // An address nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let dir = TempDir::new("upstream-warning");
    let config = write_config(&dir.0, closed, "", "");
    let process = Process::start(&config);
    let reply = HttpClient::new()
        .send(
            "DELETE",
            &format!("http://{}/api/users/9", process.proxy),
            &[],
            "",
        )
        .await;
    assert_eq!(reply.status, 502);
    let request_id = reply
        .headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .expect("the answer names its request id")
        .to_string();
    let logged = eventually(Duration::from_secs(10), async || {
        process.logged("upstream failed")
    })
    .await;
    assert!(logged, "no upstream warning");
    assert!(
        process.logged(&format!("request_id={request_id}")),
        "the warning names the request id {request_id}"
    );
    assert!(process.logged("method=DELETE"));
    assert!(process.logged("path=/api/users/9"));
    process.stop();
}

/// The log records the sidecar's own life: `audit.started` before any request of a run and, at a
/// clean stop, `audit.stopped` after every one, each naming the build, the configuration in force
/// and the process, and both covered by the signed head published at shutdown. A crash leaves no
/// `audit.stopped`, so an auditor sees it as a start without a stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_records_each_start_and_each_clean_stop_of_the_sidecar() {
    use auditgate::log::head::{public_key_path, LogSigner, LogVerifier, SignedTreeHead};
    use auditgate::server::lifecycle::{STARTED, STOPPED};

    let upstream = Upstream::start().await;
    let dir = TempDir::new("lifecycle");
    let db = dir.0.join("audit.db");
    let key = dir.0.join("log.key");
    LogSigner::write_new(&key).expect("key");
    let heads = dir.0.join("heads.ndjson");
    let text = config_text(
        upstream.addr,
        &db,
        "",
        "[[rule]]\nmethod = \"DELETE\"\npath = \"/api/users/{id}\"\naction = \"user.deleted\"\n",
    )
    .replace(
        "log_id = \"test\"\n",
        &format!(
            "log_id = \"test\"\nsigning_key = \"{}\"\npublish_heads = [\"file:{}\"]\n",
            key.display(),
            heads.display()
        ),
    );
    let config = dir.0.join("auditgate.toml");
    std::fs::write(&config, &text).expect("write config");
    let client = HttpClient::new();

    // A run with three requests, then a reload, then a clean stop.
    let first_hash = sha256_of(&config);
    let process = Process::start(&config);
    let first_pid = process.pid();
    for id in 1..=3 {
        let url = format!("http://{}/api/users/{id}", process.proxy);
        assert_eq!(client.send("DELETE", &url, &[], "").await.status, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), async || read_all_entries(&db)
            .len()
            == 4)
        .await,
        "{:#?}",
        read_all_entries(&db)
    );
    std::fs::write(&config, text.replace("user.deleted", "user.removed")).expect("write");
    let second_hash = sha256_of(&config);
    process.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), async || read_all_entries(&db)
            .len()
            == 5)
        .await,
        "the reload was not recorded: {:#?}",
        read_all_entries(&db)
    );
    process.signal("TERM");
    assert!(process.wait().success());

    let entries = read_all_entries(&db);
    let actions: Vec<&str> = entries.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            STARTED,
            "user.deleted",
            "user.deleted",
            "user.deleted",
            auditgate::server::lifecycle::CONFIG_RELOADED,
            STOPPED
        ]
    );
    let (started, stopped) = (&entries[0], &entries[5]);
    assert_eq!((started.seq, stopped.seq), (1, 6));
    // Each names the build, the configuration in force at that moment and the process.
    for (entry, hash) in [(started, &first_hash), (stopped, &second_hash)] {
        assert_eq!(entry.metadata["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(entry.metadata["configSha256"], hash.as_str(), "{entry:#?}");
        assert_eq!(
            entry.metadata["pid"].as_u64(),
            first_pid.map(u64::from),
            "{entry:#?}"
        );
        assert_eq!(entry.actor_id.as_deref(), Some("auditgate"));
        assert_eq!(entry.resource_id.as_deref(), Some("test"));
        assert_eq!(entry.log_id, "test");
    }

    // The shutdown head covers both, and it is validly signed.
    let published: Vec<SignedTreeHead> = std::fs::read_to_string(&heads)
        .expect("heads file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a head"))
        .collect();
    let last = published.last().expect("a shutdown head");
    assert_eq!(last.head.size, 6, "the shutdown head covers audit.stopped");
    LogVerifier::load(&public_key_path(&key))
        .expect("public key")
        .verify(last)
        .expect("the shutdown head verifies");

    // A crash: the next run's audit.started follows with no audit.stopped before it.
    let process = Process::start(&config);
    let crashed_pid = process.pid();
    assert!(
        eventually(Duration::from_secs(10), async || read_all_entries(&db)
            .len()
            == 7)
        .await,
        "{:#?}",
        read_all_entries(&db)
    );
    process.signal("KILL");
    let _ = process.wait();
    let process = Process::start(&config);
    let restarted_pid = process.pid();
    process.signal("TERM");
    assert!(process.wait().success());
    let entries = read_all_entries(&db);
    let tail: Vec<(&str, Option<u64>)> = entries[6..]
        .iter()
        .map(|entry| (entry.action.as_str(), entry.metadata["pid"].as_u64()))
        .collect();
    assert_eq!(
        tail,
        [
            (STARTED, crashed_pid.map(u64::from)),
            (STARTED, restarted_pid.map(u64::from)),
            (STOPPED, restarted_pid.map(u64::from)),
        ]
    );
    let seqs: Vec<u64> = entries.iter().map(|entry| entry.seq).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<u64>>());
}
