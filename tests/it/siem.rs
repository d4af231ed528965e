//! The SIEM stream through a real sidecar: every committed entry, and only committed ones, as
//! one JSON line in the file a shipper tails.

use std::time::Duration;

use crate::support::{
    eventually, metric_count, read_all_entries, HttpClient, TempDir, TestSidecar, Upstream,
};

#[tokio::test]
async fn committed_entries_reach_the_ndjson_file_once_each() {
    let upstream = Upstream::start().await;
    let out = TempDir::new("siem");
    let path = out.0.join("stream/audit.ndjson");
    let sidecar = TestSidecar::start(
        upstream.addr,
        &format!(
            "[stream]\nndjson = \"{}\"\nmax_bytes = \"4KiB\"\nkeep = 20\n\n[[rule]]\nname = \"all\"\npath = \"/{{*rest}}\"\naction = \"siem.{{rest}}\"\n",
            path.display()
        ),
    )
    .await;
    let client = HttpClient::new();
    for index in 0..30 {
        let reply = client.get(&sidecar.url(&format!("/thing{index}"))).await;
        assert_eq!(reply.status, 200);
    }
    sidecar.wait_entries(30).await;
    // The stream carries every stored entry, the run's audit.started too.
    let stored = read_all_entries(&sidecar.db);
    assert_eq!(stored.len(), 31);
    assert_eq!(stored[0].action, auditgate::server::lifecycle::STARTED);
    // The line is written right after the commit the entries were read back from. Thirty-one
    // entries fill several 4 KiB files; keep = 20 holds them all, so the rotated files and the
    // live one, oldest first, are the whole stream.
    let read_stream = || {
        let mut lines = Vec::new();
        for index in (1..=20).rev() {
            let rotated = path.with_file_name(format!("audit.ndjson.{index}"));
            lines.extend(ndjson_lines(&rotated));
        }
        lines.extend(ndjson_lines(&path));
        lines
    };
    assert!(
        eventually(Duration::from_secs(10), async || read_stream().len()
            >= stored.len())
        .await,
        "the stream has {} lines for {} entries",
        read_stream().len(),
        stored.len()
    );
    let lines = read_stream();
    assert_eq!(lines.len(), stored.len(), "one line per stored entry");
    let rotated = path.with_file_name("audit.ndjson.1");
    assert!(rotated.exists(), "the stream reached its rotation size");
    // File sizes are not checked here: one commit's lines go in one write, so under load a
    // batch bigger than max_bytes makes a file that size (the unit test checks the limit).
    for (line, entry) in lines.iter().zip(&stored) {
        assert_eq!(line["id"], entry.id.as_str());
        assert_eq!(
            line["seq"], entry.seq,
            "lines carry the sequence number the store gave"
        );
        assert_eq!(line["action"], entry.action.as_str());
        assert_eq!(line["logId"], "test");
    }
    let metrics = client
        .get(&format!("http://{}/metrics", sidecar.admin))
        .await
        .text();
    assert_eq!(
        metric_count(&metrics, "auditgate_stream_lines_total"),
        Some(stored.len() as u64),
        "{metrics}"
    );
}

/// Every line of an NDJSON file, each parsed (a torn line fails the test); none if it is absent.
fn ndjson_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .collect()
}
