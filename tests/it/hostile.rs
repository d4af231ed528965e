//! Hostile input: request smuggling forms, oversized heads, control bytes in recorded values.
//!
//! Every request here is written byte for byte on a raw socket to a real sidecar in front of
//! the test app, which records every request head it receives. The promise under test: each
//! hostile form gets a clear 4xx (or is one faithful request), the app never sees a request
//! that was hidden inside another one, and what is recorded is what was sent.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    filter_holds, query_string, raw_exchange, sha256_hex, HttpClient, TestSidecar, Upstream,
};

const RULES: &str = r#"
[unmatched]
record = "mutations"

[[rule]]
name = "buffered"
method = "POST"
path = "/buffered"
action = "buffered.posted"
metadata = { name = "request.body:/name" }

[[rule]]
name = "item"
path = "/items/{id}"
action = "item.touched"
resource = { type = "item", id = "{id}" }
metadata = { tag = "request.header:x-tag", name = "request.body:/name" }
"#;

/// The smuggled request every payload hides; the app must never see this path.
const SMUGGLED: &str = "/smuggled";

async fn setup() -> (Upstream, TestSidecar) {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, RULES).await;
    (upstream, sidecar)
}

/// The paths the app has received so far.
fn seen_paths(upstream: &Upstream) -> Vec<String> {
    upstream
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, path, _)| path.clone())
        .collect()
}

/// The status codes of every response in a raw reply, in order.
fn statuses(reply: &str) -> Vec<u16> {
    let mut codes = Vec::new();
    for (index, _) in reply.match_indices("HTTP/1.") {
        let code = reply
            .get(index + 9..index + 12)
            .and_then(|code| code.parse::<u16>().ok());
        codes.extend(code);
    }
    codes
}

/// One smuggling attempt and what must come of it.
struct Attempt {
    name: &'static str,
    bytes: Vec<u8>,
    /// `None`: the request must be refused with a 4xx. `Some(path)`: it must arrive at the app
    /// as exactly one request for that path (and the smuggled one must not).
    forwarded_as: Option<&'static str>,
}

/// The hidden request, as it would follow its carrier on the wire.
fn hidden() -> String {
    format!("GET {SMUGGLED} HTTP/1.1\r\nHost: x\r\n\r\n")
}

fn attempts() -> Vec<Attempt> {
    let hidden = hidden();
    // A chunk holding the hidden request, for TE.CL forms: a back end reading Content-Length
    // would take the chunk as the next request.
    let chunked_hidden = format!("{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len());
    let attempt = |name, text: String, forwarded_as| Attempt {
        name,
        bytes: text.into_bytes(),
        forwarded_as,
    };
    vec![
        // CL.TE: a front end reading Content-Length passes everything; a back end reading the
        // chunked body would take what follows the last chunk as a second request. RFC 9112
        // 6.1: the body is framed by Transfer-Encoding and the connection closed after, so the
        // hidden request is never read.
        attempt(
            "content-length then transfer-encoding",
            format!(
                "POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
                5 + hidden.len()
            ),
            Some("/cl-te"),
        ),
        // TE.CL: the hidden request sits inside a chunk; a back end reading Content-Length
        // would see it as the next request.
        attempt(
            "transfer-encoding then content-length",
            format!(
                "POST /te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunked_hidden}"
            ),
            Some("/te-cl"),
        ),
        attempt(
            "duplicate conflicting content-length",
            format!(
                "POST /cl-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}",
                hidden.len()
            ),
            None,
        ),
        attempt(
            "content-length list",
            format!(
                "POST /cl-list HTTP/1.1\r\nHost: x\r\nContent-Length: 0, {}\r\n\r\n{hidden}",
                hidden.len()
            ),
            None,
        ),
        attempt(
            "signed content-length",
            format!("POST /cl-sign HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n{hidden}"),
            None,
        ),
        attempt(
            "chunked, identity",
            format!(
                "POST /te-identity HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        attempt(
            "identity, chunked",
            format!(
                "POST /te-identity-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\nContent-Length: 4\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        attempt(
            "chunked twice in one header",
            format!(
                "POST /te-twice HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        attempt(
            "two transfer-encoding headers",
            format!(
                "POST /te-two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        attempt(
            "obfuscated coding xchunked",
            format!(
                "POST /te-x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        attempt(
            "unknown coding before chunked",
            format!(
                "POST /te-gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        attempt(
            "space before the colon",
            format!(
                "POST /te-space HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        attempt(
            "folded transfer-encoding",
            format!(
                "POST /te-fold HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        attempt(
            "vertical tab in transfer-encoding",
            format!(
                "POST /te-vtab HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\nContent-Length: 4\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        attempt(
            "transfer-encoding with a trailing bare CR",
            format!(
                "POST /te-cr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\r\nContent-Length: 4\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        attempt(
            "HTTP/1.0 with transfer-encoding",
            format!(
                "POST /http10-te HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunked_hidden}"
            ),
            None,
        ),
        // HTTP/1.0 with a body framed by Content-Length is valid; the hidden request is body.
        attempt(
            "HTTP/1.0 with a body",
            format!(
                "POST /http10-body HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{hidden}",
                hidden.len()
            ),
            Some("/http10-body"),
        ),
        // A bare LF ending a chunk-size line or chunk data: the chunked framing is strict.
        attempt(
            "bare LF after the chunk size",
            format!(
                "POST /lf-size HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\n{hidden}\r\n0\r\n\r\n",
                hidden.len()
            ),
            None,
        ),
        attempt(
            "bare LF after the chunk data",
            format!(
                "POST /lf-data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n{hidden}"
            ),
            None,
        ),
        // A bare LF splitting one header line in two: a front end that does not split on LF
        // sees one odd header; here it becomes Content-Length plus Transfer-Encoding, which is
        // framed by Transfer-Encoding and closed after, as above.
        attempt(
            "bare LF hiding transfer-encoding",
            format!(
                "POST /lf-header HTTP/1.1\r\nHost: x\r\nX-Pad: a\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{hidden}",
                5 + hidden.len()
            ),
            Some("/lf-header"),
        ),
        attempt(
            "chunk size of 2^64",
            format!(
                "POST /chunk-overflow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n{hidden}\r\n0\r\n\r\n"
            ),
            None,
        ),
        attempt(
            "chunk size of 2^64 with a read body",
            format!(
                "POST /buffered HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n{hidden}\r\n0\r\n\r\n"
            ),
            None,
        ),
        attempt(
            "chunk size with leading zeros past 64 bits",
            format!(
                "POST /chunk-zeros HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n{hidden}\r\n0\r\n\r\n"
            ),
            None,
        ),
        attempt(
            "negative chunk size",
            format!(
                "POST /chunk-negative HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n{hidden}\r\n0\r\n\r\n"
            ),
            None,
        ),
    ]
}

#[tokio::test]
async fn smuggling_forms_are_refused_or_forwarded_as_one_request() {
    let mut failures = Vec::new();
    let mut apps = Vec::new();
    for attempt in attempts() {
        // A fresh app per attempt, so what it saw belongs to this attempt alone.
        let (upstream, sidecar) = setup().await;
        let result = stream_to(sidecar.proxy, attempt.bytes.clone()).await;
        let reply = result.reply;
        let codes = statuses(&reply);
        let seen = seen_paths(&upstream);
        let holds = match attempt.forwarded_as {
            None => codes.len() == 1 && (400..500).contains(&codes[0]),
            Some(path) => codes.len() == 1 && codes[0] < 300 && seen == vec![path.to_string()],
        };
        // The record: nothing when hyper refused the head (no request was formed), else one
        // entry for the carrier with the status the client got.
        let carrier = String::from_utf8_lossy(&attempt.bytes)
            .split(' ')
            .nth(1)
            .map(str::to_string);
        let entries = sidecar.entries().await;
        let recorded: Vec<(Option<String>, Option<u16>)> = entries
            .iter()
            .map(|entry| (entry.path.clone(), entry.status))
            .collect();
        let faithful = recorded.is_empty()
            || (recorded.len() == 1
                && recorded[0].0 == carrier
                && recorded[0].1 == codes.first().copied());
        // After any of these the connection must close: what follows on it cannot be trusted
        // to start a request (RFC 9112 6.1 requires it for Content-Length with
        // Transfer-Encoding).
        if !holds || !faithful || !result.closed || seen.iter().any(|path| path == SMUGGLED) {
            failures.push(format!(
                "{}: answers {codes:?}, closed {}, app saw {seen:?}, recorded {recorded:?}\n{reply}",
                attempt.name, result.closed
            ));
        }
        apps.push((attempt.name, upstream, sidecar));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    // Whatever is still in flight has had every other attempt's time to arrive.
    for (name, upstream, _sidecar) in &apps {
        let seen = seen_paths(upstream);
        assert!(
            !seen.iter().any(|path| path == SMUGGLED),
            "{name}: {seen:?}"
        );
    }
}

/// What a server did with a stream of bytes written while its answer is read.
struct Streamed {
    reply: String,
    /// The server closed the connection (or reset it) within the time allowed.
    closed: bool,
    /// How many bytes the server took before it stopped reading and closed.
    written: usize,
}

/// Writes `bytes` in 16 KiB pieces while reading the answer, as a client streaming a huge head
/// would; gives up after 5 s.
async fn stream_to(addr: SocketAddr, bytes: Vec<u8>) -> Streamed {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut written = 0;
        for piece in bytes.chunks(16 * 1024) {
            if write.write_all(piece).await.is_err() {
                break;
            }
            written += piece.len();
        }
        (written, write)
    });
    let mut out = Vec::new();
    let mut buffer = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let closed = loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(count)) => out.extend_from_slice(&buffer[..count]),
            Err(_) => break false,
        }
    };
    let written = match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Ok(Ok((written, _write))) => written,
        _ => usize::MAX,
    };
    Streamed {
        reply: String::from_utf8_lossy(&out).into_owned(),
        closed,
        written,
    }
}

#[tokio::test]
async fn oversized_heads_are_refused_and_the_connection_closed() {
    let (upstream, sidecar) = setup().await;
    let head = |headers: &str| format!("GET /items/1 HTTP/1.1\r\nHost: x\r\n{headers}\r\n");

    // 257 header lines (Host included): one over the limit.
    let many: String = (0..256).map(|index| format!("X-H{index}: v\r\n")).collect();
    let result = stream_to(sidecar.proxy, head(&many).into_bytes()).await;
    assert!(result.reply.starts_with("HTTP/1.1 431"), "{}", result.reply);
    assert!(result.closed, "the connection stays open after a 431");

    // Exactly 256 are taken: the sidecar forwards the request and records it. (The app behind,
    // with hyper's default of 100 lines, then answers 431 itself, which is what gets recorded.)
    let at_limit: String = (0..254).map(|index| format!("X-H{index}: v\r\n")).collect();
    let reply = raw_exchange(
        sidecar.proxy,
        head(&format!("Connection: close\r\n{at_limit}")).as_bytes(),
    )
    .await;
    assert!(reply.contains("x-request-id: "), "not forwarded: {reply}");
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].path.as_deref(), Some("/items/1"));

    // A 1 MiB header value, and a 1 MiB head of many 8 KiB lines: refused after at most the
    // buffer limit was read, long before the client is done writing 16 MiB.
    let huge_value = format!("X-Big: {}\r\n", "a".repeat(16 << 20));
    let many_big: String = (0..2048)
        .map(|index| format!("X-B{index}: {}\r\n", "b".repeat(8 << 10)))
        .collect();
    for (label, headers) in [("one huge value", huge_value), ("many big lines", many_big)] {
        let result = stream_to(sidecar.proxy, head(&headers).into_bytes()).await;
        assert!(
            result.reply.starts_with("HTTP/1.1 431"),
            "{label}: {}",
            result.reply
        );
        assert!(result.closed, "{label}: the connection stays open");
        assert!(
            result.written < 8 << 20,
            "{label}: the sidecar read {} bytes of an oversized head",
            result.written
        );
    }
    assert_eq!(upstream.count(), 0, "no oversized head reached the app");
    assert_eq!(
        sidecar.entries().await.len(),
        1,
        "refused heads are not requests and record nothing"
    );
}

/// Sends one request head (and body) as raw bytes and returns the status the client got.
async fn raw_status(addr: SocketAddr, head: &[u8], body: &[u8]) -> u16 {
    let mut bytes = head.to_vec();
    bytes.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(body);
    let reply = raw_exchange(addr, &bytes).await;
    statuses(&reply).first().copied().unwrap_or(0)
}

/// CSV cells as the export wrote them, with the formula guard's leading `'` taken off.
fn unguarded(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r']) => rest,
        _ => cell,
    }
}

#[tokio::test]
async fn control_bytes_and_invalid_utf8_are_recorded_faithfully_and_exported_one_per_row() {
    let (_upstream, sidecar) = setup().await;

    // CR, LF, ESC and an invalid byte percent-encoded in a path parameter (an encoded NUL makes
    // a path that cannot be made canonical, refused below); an invalid byte
    // and a tab in the user agent; Latin-1 in a header read as metadata; CR, LF, ESC, NUL and a
    // line separator inside a JSON body field.
    let status = raw_status(
        sidecar.proxy,
        b"POST /items/a%0D%0Ab%1B%5B31mred%FF HTTP/1.1\r\nHost: x\r\nUser-Agent: ev\xffil\tagent\r\nX-Tag: caf\xe9 \x80\r\n",
        br#"{"name": "line1\r\nline2\u001b[31m\u0000end\u2028"}"#,
    )
    .await;
    assert_eq!(status, 200);
    // A spreadsheet formula, and a CSV quote and comma, in a user agent.
    let status = raw_status(
        sidecar.proxy,
        b"POST /items/formula HTTP/1.1\r\nHost: x\r\nUser-Agent: =HYPERLINK(\"http://evil\",\"x\"), \"q\"\r\n",
        br#"{"name": "-1+1"}"#,
    )
    .await;
    assert_eq!(status, 200);
    // Raw bytes outside visible ASCII in the request target, and raw control bytes in a header
    // value, are not HTTP: a clear 400, and nothing recorded (no request was formed). Bytes above
    // 0x7f in a header value (obs-text) are HTTP, and are recorded as above.
    for head in [
        &b"POST /items/raw\xff\xfe HTTP/1.1\r\nHost: x\r\n"[..],
        &b"POST /items/esc\x1b[31m HTTP/1.1\r\nHost: x\r\n"[..],
        &b"POST /items/nul HTTP/1.1\r\nHost: x\r\nUser-Agent: a\x00b\r\n"[..],
        &b"POST /items/esc HTTP/1.1\r\nHost: x\r\nUser-Agent: \x1b[2J\r\n"[..],
        &b"POST /items/cr HTTP/1.1\r\nHost: x\r\nUser-Agent: a\rb\r\n"[..],
    ] {
        assert_eq!(
            raw_status(sidecar.proxy, head, b"").await,
            400,
            "{}",
            String::from_utf8_lossy(head)
        );
    }

    let entries = sidecar.wait_entries(2).await;
    assert_eq!(entries.len(), 2, "{entries:#?}");

    let first = &entries[0];
    assert_eq!(
        first.path.as_deref(),
        Some("/items/a%0D%0Ab%1B%5B31mred%FF"),
        "the path is kept as sent"
    );
    assert_eq!(
        first.resource_id.as_deref(),
        Some("a\r\nb\u{1b}[31mred\u{fffd}"),
        "a decoded path parameter keeps its control bytes; an invalid byte becomes U+FFFD"
    );
    assert_eq!(first.user_agent.as_deref(), Some("ev\u{fffd}il\tagent"));
    assert_eq!(first.metadata["tag"], "caf\u{fffd} \u{fffd}");
    assert_eq!(
        first.metadata["name"],
        "line1\r\nline2\u{1b}[31m\0end\u{2028}"
    );
    let second = &entries[1];
    assert_eq!(
        second.user_agent.as_deref(),
        Some("=HYPERLINK(\"http://evil\",\"x\"), \"q\"")
    );

    // The CSV export: one record per entry, whatever the values hold, and each cell parses back
    // to the stored value (less the formula guard).
    let mut encoder = auditgate::export::ExportEncoder::new(auditgate::export::ExportFormat::Csv);
    let mut bytes = encoder.begin();
    bytes.extend(encoder.encode(&entries).expect("encodes"));
    bytes.extend(encoder.finish());
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(&bytes[..]);
    let header = reader.headers().expect("header").clone();
    let column = |name: &str| header.iter().position(|cell| cell == name).expect("column");
    let records: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .expect("the export is valid CSV");
    assert_eq!(records.len(), entries.len(), "one CSV record per entry");
    for (record, entry) in records.iter().zip(&entries) {
        assert_eq!(record.len(), auditgate::export::CSV_COLUMNS.len());
        assert_eq!(&record[column("id")], entry.id);
        assert_eq!(
            unguarded(&record[column("path")]),
            entry.path.clone().unwrap_or_default()
        );
        assert_eq!(
            unguarded(&record[column("resourceId")]),
            entry.resource_id.clone().unwrap_or_default()
        );
        assert_eq!(
            unguarded(&record[column("userAgent")]),
            entry.user_agent.clone().unwrap_or_default()
        );
        let metadata: serde_json::Value =
            serde_json::from_str(&record[column("metadata")]).expect("metadata is JSON");
        assert_eq!(metadata, serde_json::Value::Object(entry.metadata.clone()));
    }
    assert!(
        records[1][column("userAgent")].starts_with("'="),
        "a formula is neutralised"
    );

    // NDJSON: one line per entry too.
    let mut encoder =
        auditgate::export::ExportEncoder::new(auditgate::export::ExportFormat::Ndjson);
    let ndjson = encoder.encode(&entries).expect("encodes");
    let lines: Vec<&[u8]> = ndjson
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    assert_eq!(lines.len(), entries.len());
}

// ---------------------------------------------------------------------------------------------
// The admin API: credentials, scopes, paths, and SQL meta-characters in every filter
// ---------------------------------------------------------------------------------------------

const READ_TOKEN: &str = "agt_hostile_reader_token_0123456789";
const EXPORT_TOKEN: &str = "agt_hostile_exporter_token_0123456789";
const WRITE_TOKEN: &str = "agt_hostile_writer_token_0123456789";
const ALL_TOKEN: &str = "agt_hostile_all_scopes_token_0123456789";

/// Rules plus one `[[admin.tokens]]` per scope and one with every scope.
fn admin_config() -> String {
    let token = |name: &str, secret: &str, scopes: &str| {
        format!(
            "[[admin.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{scopes}]\n\n",
            sha256_hex(secret)
        )
    };
    format!(
        "{RULES}\n{}{}{}{}",
        token("reader", READ_TOKEN, "\"read\""),
        token("exporter", EXPORT_TOKEN, "\"export\""),
        token("writer", WRITE_TOKEN, "\"write\""),
        token("all", ALL_TOKEN, "\"read\", \"export\", \"write\""),
    )
}

fn token_with(scope: auditgate::admin::config::Scope) -> &'static str {
    match scope {
        auditgate::admin::config::Scope::Read => READ_TOKEN,
        auditgate::admin::config::Scope::Export => EXPORT_TOKEN,
        auditgate::admin::config::Scope::Write => WRITE_TOKEN,
    }
}

/// A token that lacks the scope.
fn token_without(scope: auditgate::admin::config::Scope) -> &'static str {
    match scope {
        auditgate::admin::config::Scope::Read => EXPORT_TOKEN,
        auditgate::admin::config::Scope::Export | auditgate::admin::config::Scope::Write => {
            READ_TOKEN
        }
    }
}

/// Every protected admin route, as (method, concrete path, access).
fn protected_routes() -> Vec<(&'static str, String, auditgate::admin::auth::Access)> {
    auditgate::admin::route_specs()
        .into_iter()
        .filter(|spec| spec.access != auditgate::admin::auth::Access::Public)
        .map(|spec| {
            let path = spec.path.replace("{id}", "1");
            (spec.method.as_str(), path, spec.access)
        })
        .collect()
}

async fn admin_send(
    client: &HttpClient,
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> crate::support::Reply {
    let mut all = headers.to_vec();
    let body = if method == "POST" {
        all.push(("content-type", "application/json"));
        "[]"
    } else {
        ""
    };
    client
        .send(method, &format!("http://{admin}{path}"), &all, body)
        .await
}

#[tokio::test]
async fn admin_auth_bypass_attempts_are_refused() {
    use auditgate::admin::auth::Access;
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, &admin_config()).await;
    let client = HttpClient::new();
    let routes = protected_routes();
    assert!(routes.len() >= 10, "{routes:?}");

    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("reader:{READ_TOKEN}"))
    };
    let truncated = &READ_TOKEN[..READ_TOKEN.len() - 1];
    let long = "a".repeat(10_000);
    let bad_credentials: Vec<(&str, String)> = vec![
        ("authorization", "Bearer".into()),
        ("authorization", "Bearer ".into()),
        ("authorization", "Bearer agt_wrong".into()),
        ("authorization", format!("Bearer {truncated}")),
        ("authorization", format!("Bearer {READ_TOKEN}x")),
        ("authorization", format!("Bearer {long}")),
        // The configured hash is not a credential (no pass-the-hash).
        (
            "authorization",
            format!("Bearer {}", sha256_hex(READ_TOKEN)),
        ),
        ("authorization", format!("Basic {basic}")),
        ("authorization", format!("Token {READ_TOKEN}")),
        ("authorization", READ_TOKEN.into()),
        // A token is not a session id, and a made-up session id is nothing.
        ("cookie", format!("auditgate_session={READ_TOKEN}")),
        (
            "cookie",
            "auditgate_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        ),
        ("x-api-key", READ_TOKEN.into()),
    ];

    for (method, path, access) in &routes {
        let reply = admin_send(&client, sidecar.admin, method, path, &[]).await;
        assert_eq!(reply.status, 401, "{method} {path} without credentials");
        for (name, value) in &bad_credentials {
            let reply = admin_send(
                &client,
                sidecar.admin,
                method,
                path,
                &[(name, value.as_str())],
            )
            .await;
            assert_eq!(
                reply.status,
                401,
                "{method} {path} with {name}: {}",
                value.chars().take(60).collect::<String>()
            );
        }
        // The token in the query string is not read.
        let with_query = format!(
            "{path}{}access_token={READ_TOKEN}",
            if path.contains('?') { '&' } else { '?' }
        );
        let reply = admin_send(&client, sidecar.admin, method, &with_query, &[]).await;
        assert_eq!(reply.status, 401, "{method} {with_query}");

        match access {
            Access::Scope(scope) => {
                let wrong = format!("Bearer {}", token_without(*scope));
                let reply = admin_send(
                    &client,
                    sidecar.admin,
                    method,
                    path,
                    &[("authorization", &wrong)],
                )
                .await;
                assert_eq!(reply.status, 403, "{method} {path} with the wrong scope");
                let right = format!("Bearer {}", token_with(*scope));
                let reply = admin_send(
                    &client,
                    sidecar.admin,
                    method,
                    path,
                    &[("authorization", &right)],
                )
                .await;
                assert!(
                    ![401, 403].contains(&reply.status) && reply.status < 500,
                    "{method} {path} with the right scope: {} {}",
                    reply.status,
                    reply.text()
                );
            }
            Access::Authenticated => {
                let any = format!("Bearer {EXPORT_TOKEN}");
                let reply = admin_send(
                    &client,
                    sidecar.admin,
                    method,
                    path,
                    &[("authorization", &any)],
                )
                .await;
                assert!(
                    ![401, 403].contains(&reply.status) && reply.status < 500,
                    "{method} {path}: {}",
                    reply.status
                );
            }
            Access::Public => unreachable!("filtered out"),
        }
    }

    // Paths that a lenient router might take for a protected route, and method tricks: none
    // answers with data when no credentials come with them.
    for (method, path) in [
        ("GET", "/api/v1/entries/"),
        ("GET", "//api/v1/entries"),
        ("GET", "/api/v1//entries"),
        ("GET", "/api/v1/./entries"),
        ("GET", "/api/v1/x/../entries"),
        ("GET", "/ui/../api/v1/entries"),
        ("GET", "/API/V1/ENTRIES"),
        ("GET", "/api/v1/%65ntries"),
        ("GET", "/api/v1/entries%2F"),
        ("GET", "/api/v1/entries;.css"),
        ("GET", "/api/v1/entries%00"),
        ("GET", "/api/v1/export.csv"),
        ("HEAD", "/api/v1/entries"),
        ("HEAD", "/api/v1/export?format=csv"),
        ("OPTIONS", "/api/v1/entries"),
        ("PUT", "/api/v1/entries"),
        ("POST", "/api/v1/entries"),
        ("DELETE", "/api/v1/entries/1"),
    ] {
        let reply = client
            .send(
                method,
                &format!("http://{}{path}", sidecar.admin),
                &[("x-http-method-override", "GET")],
                "",
            )
            .await;
        assert!(
            matches!(reply.status, 400 | 401 | 404 | 405),
            "{method} {path}: {} {}",
            reply.status,
            reply.text()
        );
    }

    // The admin API is never served on the proxy port: every admin path, even with a valid
    // token, goes to the app.
    let before = upstream.count();
    let mut paths: Vec<String> = routes.iter().map(|(_, path, _)| path.clone()).collect();
    paths.extend(
        [
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/v1/openapi.json",
            "/",
            "/ui/app.js",
        ]
        .map(String::from),
    );
    for path in &paths {
        let reply = client
            .send(
                "GET",
                &sidecar.url(path),
                &[("authorization", &format!("Bearer {ALL_TOKEN}"))],
                "",
            )
            .await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.json()["id"],
            4242,
            "{path} was not answered by the app"
        );
        assert_eq!(reply.json()["path"], path.split('?').next().unwrap_or(path));
    }
    assert_eq!(upstream.count() - before, paths.len() as u64);
}

/// SQL meta-characters, alone and in the classic injection shapes.
const META: [&str; 15] = [
    "'",
    "\"",
    ";",
    "--",
    "%",
    "_",
    "\\",
    "/*",
    "*/",
    "' OR '1'='1",
    "%' OR 1=1 --",
    "'; DROP TABLE entries; --",
    "\\%",
    "_%",
    "a\\_b",
];

/// Entries whose fields hold the meta-characters, and decoys a wildcard or a broken escape
/// would match by mistake.
fn meta_entries() -> Vec<auditgate::entry::AuditEntry> {
    let mut values: Vec<String> = META.iter().map(|meta| meta.to_string()).collect();
    values.extend(["x", "m", "ab", "a_b", "a\\b", "50%_off", "500x", "O'Brien"].map(String::from));
    values
        .iter()
        .enumerate()
        .map(|(index, value)| {
            let mut entry = auditgate::entry::AuditEntry::new("meta", format!("m{value}"));
            entry.actor_id = Some(value.clone());
            entry.actor_email = Some(format!("{value}@example.com"));
            entry.resource_type = Some(format!("t{value}"));
            entry.resource_id = Some(value.clone());
            entry.path = Some(format!("/p/{value}"));
            entry.status = Some(200 + index as u16);
            entry
        })
        .collect()
}

#[tokio::test]
async fn sql_meta_characters_in_every_filter_match_only_themselves() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, &admin_config()).await;
    let client = HttpClient::new();
    let seeded = meta_entries();
    // No filter here is relative to the present; the oracle's clock is a formality.
    let now = chrono::Utc::now();
    let writer = sidecar.writer();
    for entry in &seeded {
        writer.push(entry.clone());
    }
    assert!(writer.flushed(Duration::from_secs(10)).await);
    let bearer = format!("Bearer {ALL_TOKEN}");
    let get = |path: String| {
        let client = &client;
        let bearer = bearer.clone();
        let admin = sidecar.admin;
        async move {
            client
                .send(
                    "GET",
                    &format!("http://{admin}{path}"),
                    &[("authorization", &bearer)],
                    "",
                )
                .await
        }
    };
    let ids = |reply: &crate::support::Reply, key: &str| -> std::collections::BTreeSet<String> {
        reply.json()[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {}", reply.text()))
            .iter()
            .map(|entry| entry["id"].as_str().expect("id").to_string())
            .collect()
    };

    // Every text filter, with every meta-character probe (and the probe as the tail of an
    // action, which is how actions were seeded): 200, exactly the entries the filter means.
    let mut probes: Vec<String> = META.iter().map(|meta| meta.to_string()).collect();
    probes.extend(META.iter().map(|meta| format!("m{meta}")));
    probes.extend(["m", "a_b", "50%", "o'brien"].map(String::from));
    let mut checked = 0;
    for filter in [
        "actor",
        "action",
        "action_prefix",
        "resource_type",
        "resource_id",
        "q",
        "log_id",
    ] {
        for probe in &probes {
            let mut pairs = vec![
                (filter, probe.as_str()),
                ("limit", "1000"),
                ("count", "true"),
            ];
            if filter != "log_id" {
                pairs.push(("log_id", "meta"));
            }
            let reply = get(format!("/api/v1/entries?{}", query_string(&pairs))).await;
            assert_eq!(reply.status, 200, "{filter}={probe:?}: {}", reply.text());
            let expected: std::collections::BTreeSet<String> = seeded
                .iter()
                .filter(|entry| filter_holds(entry, filter, probe, now))
                .map(|entry| entry.id.clone())
                .collect();
            assert_eq!(ids(&reply, "entries"), expected, "{filter}={probe:?}");
            assert_eq!(reply.json()["total"], expected.len(), "{filter}={probe:?}");
            checked += 1;
        }
    }
    assert!(checked > 200);

    // The reference endpoint's action filter is a case-insensitive substring: among the seeded
    // entries exactly those whose action holds the probe, and nothing that does not hold it.
    for probe in &probes {
        let reply = get(format!(
            "/api/audit-log?{}",
            query_string(&[("action", probe)])
        ))
        .await;
        assert_eq!(reply.status, 200, "action={probe:?}: {}", reply.text());
        let logs = reply.json()["logs"].as_array().cloned().unwrap_or_default();
        for log in &logs {
            let action = log["action"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            assert!(
                action.contains(&probe.to_ascii_lowercase()),
                "{probe:?}: {action}"
            );
        }
        let seeded_found: std::collections::BTreeSet<String> = logs
            .iter()
            .filter(|log| log["logId"] == "meta")
            .map(|log| log["id"].as_str().unwrap_or_default().to_string())
            .collect();
        let expected: std::collections::BTreeSet<String> = seeded
            .iter()
            .filter(|entry| filter_holds(entry, "action_contains", probe, now))
            .map(|entry| entry.id.clone())
            .collect();
        if expected.len() <= 10 {
            // (A page holds ten; more would need paging, which is not what is tested here.)
            assert_eq!(seeded_found, expected, "reference action={probe:?}");
        }
    }

    // An export filtered by a meta-character holds exactly the same entries.
    for probe in ["%", "_", "'", "\\"] {
        let reply = get(format!(
            "/api/v1/export?{}",
            query_string(&[("format", "ndjson"), ("q", probe), ("log_id", "meta")])
        ))
        .await;
        assert_eq!(reply.status, 200, "{probe:?}: {}", reply.text());
        let exported: std::collections::BTreeSet<String> = reply
            .text()
            .lines()
            .map(|line| {
                let entry: serde_json::Value = serde_json::from_str(line).expect("ndjson line");
                entry["id"].as_str().expect("id").to_string()
            })
            .collect();
        let expected: std::collections::BTreeSet<String> = seeded
            .iter()
            .filter(|entry| filter_holds(entry, "q", probe, now))
            .map(|entry| entry.id.clone())
            .collect();
        assert_eq!(exported, expected, "export q={probe:?}");
    }

    // Where a number, a time, an address, a cursor or a keyword belongs, a meta-character is a
    // malformed value: a clear 400 naming the parameter.
    for param in [
        "status", "ip", "since", "until", "limit", "cursor", "order", "outcome", "count",
    ] {
        for meta in META {
            let reply = get(format!(
                "/api/v1/entries?{}",
                query_string(&[(param, meta)])
            ))
            .await;
            assert_eq!(reply.status, 400, "{param}={meta:?}: {}", reply.text());
            assert_eq!(reply.json()["param"], param, "{param}={meta:?}");
        }
    }
    for meta in META {
        for (path, param) in [
            ("/api/v1/stats", "by"),
            ("/api/v1/export", "format"),
            ("/api/audit-log", "page"),
        ] {
            let reply = get(format!("{path}?{}", query_string(&[(param, meta)]))).await;
            assert_eq!(
                reply.status,
                400,
                "{path}?{param}={meta:?}: {}",
                reply.text()
            );
        }
        // A meta-character as a parameter's name is an unknown parameter.
        let reply = get(format!("/api/v1/entries?{}", query_string(&[(meta, "1")]))).await;
        assert_eq!(reply.status, 400, "name {meta:?}: {}", reply.text());
        // And in an entry id: no such entry.
        let id: String = form_urlencoded::byte_serialize(meta.as_bytes()).collect();
        let reply = get(format!("/api/v1/entries/{id}")).await;
        assert!(
            matches!(reply.status, 400 | 404),
            "id {meta:?}: {}",
            reply.status
        );
    }

    // The table is intact and nothing was answered with a server error.
    let reply = get(format!(
        "/api/v1/entries?{}",
        query_string(&[("log_id", "meta"), ("count", "true")])
    ))
    .await;
    assert_eq!(reply.json()["total"], seeded.len());
}

/// What schemathesis found (scripts/schemathesis), held here: the log endpoints answer as their
/// OpenAPI document says.
#[tokio::test]
async fn log_endpoints_answer_as_their_openapi_document_says() {
    let upstream = Upstream::start().await;
    let keys = crate::support::TempDir::new("hostile-key");
    let key = keys.0.join("log.key");
    auditgate::log::head::LogSigner::write_new(&key).expect("signing key");
    let config = format!("signing_key = \"{}\"\n{}", key.display(), admin_config());
    let sidecar = TestSidecar::start(upstream.addr, &config).await;
    let client = HttpClient::new();
    let bearer = format!("Bearer {READ_TOKEN}");
    let get = |path: &str| {
        let url = format!("http://{}{path}", sidecar.admin);
        let client = &client;
        let bearer = bearer.clone();
        async move {
            client
                .send("GET", &url, &[("authorization", &bearer)], "")
                .await
        }
    };
    let document = get("/api/v1/openapi.json").await.json();

    // The key carries every property its schema requires (it was documented as `publicKey`).
    let reply = get("/api/v1/log/key").await;
    assert_eq!(reply.status, 200);
    let required = document["components"]["schemas"]["LogKey"]["required"]
        .as_array()
        .expect("LogKey.required")
        .clone();
    for property in &required {
        let name = property.as_str().expect("name");
        assert!(
            reply.json().get(name).is_some(),
            "{name} missing: {}",
            reply.text()
        );
    }

    // A repeated parameter is the API's JSON 400, not axum's plain-text refusal.
    for path in [
        "/api/v1/log/consistency?from=0&from=0",
        "/api/v1/log/consistency?from=0&to=0&to=0",
        "/api/v1/verify?full=1&full=0",
    ] {
        let reply = get(path).await;
        assert_eq!(reply.status, 400, "{path}");
        assert!(
            reply
                .headers
                .get("content-type")
                .is_some_and(|value| value.as_bytes().starts_with(b"application/json")),
            "{path}: {:?}",
            reply.headers
        );
        assert!(reply.json()["error"]
            .as_str()
            .is_some_and(|error| error.contains("more than once")));
    }
    // The empty tree is consistent with every tree, as documented (minimum 0, `to` optional).
    assert_eq!(get("/api/v1/log/consistency?from=0&to=0").await.status, 200);
    let parameters = &document["components"]["parameters"];
    assert_eq!(parameters["from"]["schema"]["minimum"], 0);
    assert_eq!(parameters["to"]["required"], false);
    // A proof asked for before a signed head covers the entry is a documented 409.
    let responses = &document["paths"]["/api/v1/entries/{id}/proof"]["get"]["responses"];
    assert!(responses.get("409").is_some(), "{responses}");
}

/// A request body that breaks (bad chunked framing) is answered 400 with the connection closed,
/// counted as a client error, and recorded with why: both where the proxy buffers the body for a
/// rule and where it streams the body to the app.
#[tokio::test]
async fn a_broken_request_body_is_answered_400_counted_and_recorded() {
    let (upstream, sidecar) = setup().await;
    // `zz` is no chunk size: the body breaks after its first chunk.
    let broken = |path: &str, id: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: app\r\nX-Request-Id: {id}\r\nContent-Type: \
             application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"a\":\r\nzz\r\n"
        )
    };
    // Buffered: the "buffered" rule reads request.body:/name, so the body is read before the
    // app sees anything.
    let reply = raw_exchange(
        sidecar.proxy,
        broken("/buffered", "broken-buffered").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&reply), [400], "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    // Streamed: no rule reads the body of an unmatched POST, so it goes to the app as it comes.
    let reply = raw_exchange(
        sidecar.proxy,
        broken("/elsewhere", "broken-streamed").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&reply), [400], "{reply}");
    assert!(
        !seen_paths(&upstream).contains(&"/buffered".to_string()),
        "a body the proxy could not read reached the app"
    );

    for (id, action) in [
        ("broken-buffered", "buffered.posted"),
        ("broken-streamed", "http.post"),
    ] {
        let entry = sidecar
            .wait_entry(|entry| {
                entry
                    .metadata
                    .get("_clientRequestId")
                    .and_then(|v| v.as_str())
                    == Some(id)
            })
            .await;
        assert_eq!(entry.action, action, "{entry:?}");
        assert_eq!(entry.status, Some(400), "{entry:?}");
        let error = entry.error.clone().unwrap_or_default();
        assert!(
            error.contains("body") || error.contains("chunk"),
            "the entry says why: {error:?}"
        );
    }
    let metrics = HttpClient::new()
        .get(&format!("http://{}/metrics", sidecar.admin))
        .await
        .text();
    assert_eq!(
        crate::support::metric_count(&metrics, "auditgate_client_errors_total"),
        Some(2),
        "{metrics}"
    );
}
