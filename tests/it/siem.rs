//! The SIEM stream through a real sidecar: every committed entry, and only committed ones, as
//! one JSON line in the file a shipper tails.

use std::time::Duration;

use crate::support::{HttpClient, TempDir, TestSidecar, Upstream};

#[tokio::test]
async fn committed_entries_reach_the_ndjson_file_once_each() {
    let upstream = Upstream::start().await;
    let out = TempDir::new("siem");
    let path = out.0.join("stream/audit.ndjson");
    let sidecar = TestSidecar::start(
        upstream.addr,
        &format!(
            "[stream]\nndjson = \"{}\"\nmax_bytes = \"64KiB\"\nkeep = 2\n\n[[rule]]\nname = \"all\"\npath = \"/{{*rest}}\"\naction = \"siem.{{rest}}\"\n",
            path.display()
        ),
    )
    .await;
    let client = HttpClient::new();
    for index in 0..30 {
        let reply = client.get(&sidecar.url(&format!("/thing{index}"))).await;
        assert_eq!(reply.status, 200);
    }
    let stored = sidecar.wait_entries(30).await;
    // The line is written right after the commit the entries were read back from.
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
            .collect();
        if lines.len() >= stored.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lines.len(), stored.len(), "one line per stored entry");
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
    assert!(
        metrics.contains(&format!("auditgate_stream_lines_total {}", stored.len())),
        "{metrics}"
    );
}
