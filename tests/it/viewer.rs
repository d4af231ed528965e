//! The web viewer's files as the admin listener serves them.

use crate::support::{HttpClient, TestSidecar, Upstream};

#[tokio::test]
async fn the_viewer_is_served_with_strict_headers_on_the_admin_listener_only() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(upstream.addr, "").await;
    let client = HttpClient::new();
    let page = client.get(&format!("http://{}/", sidecar.admin)).await;
    assert_eq!(page.status, 200);
    assert!(page
        .text()
        .contains("<script type=\"module\" src=\"ui/app.js\">"));
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap_or("")
        .contains("script-src 'self'"));
    for file in ["app.js", "api.js", "proof.js"] {
        let script = client
            .get(&format!("http://{}/ui/{file}", sidecar.admin))
            .await;
        assert_eq!(script.status, 200, "{file}");
        assert_eq!(
            script.headers["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(script.headers["x-content-type-options"], "nosniff");
    }
    assert_eq!(
        client
            .get(&format!("http://{}/ui/../Cargo.toml", sidecar.admin))
            .await
            .status,
        404
    );
    // The proxy port forwards "/" to the app; it never serves the viewer.
    let proxied = client.get(&sidecar.url("/")).await;
    assert!(!proxied.text().contains("ui/app.js"));
    assert_eq!(upstream.count(), 1);
}
