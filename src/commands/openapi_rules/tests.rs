use super::*;

fn read(text: &str, reads: bool) -> Document {
    let root = parse_text(text, "spec").expect("the test spec parses");
    let options = ReadOptions {
        reads,
        base_path: None,
    };
    read_document(&root, "spec", &options).expect("the test spec is a document")
}

fn find<'a>(document: &'a Document, method: &str, template: &str) -> &'a Operation {
    document
        .operations
        .iter()
        .find(|operation| operation.method == method && operation.template == template)
        .unwrap_or_else(|| panic!("no {method} {template} in {:#?}", document.operations))
}

/// The generated text appended to a minimal config: it must load, and `check` must have nothing
/// to say about it.
fn assert_check_clean(document: &Document) -> Config {
    let text = format!(
        "[proxy]\nupstream = \"http://127.0.0.1:3000\"\n{}",
        render(document, "spec")
    );
    let config =
        Config::parse(&text, Path::new(".")).unwrap_or_else(|errors| panic!("{errors:?}\n{text}"));
    let warnings = crate::commands::check::warnings_with_env(&text, &config, &|_| None);
    assert!(warnings.is_empty(), "{warnings:?}\n{text}");
    config
}

const SWAGGER: &str = r##"
swagger: "2.0"
info: {title: Shop, version: "1"}
basePath: /api/v2/
paths:
  /orders:
    post:
      operationId: placeOrder
      summary: "Place an order\nwith a newline"
      parameters:
        - in: body
          name: body
          schema: {$ref: "#/definitions/NewOrder"}
      responses:
        "201":
          description: created
          schema: {$ref: "#/definitions/Order"}
  /orders/{order-id}:
    parameters:
      - {in: path, name: order-id, type: integer, required: true}
    delete:
      responses: {"204": {description: gone}}
    get:
      responses: {"200": {description: ok}}
  /login:
    post:
      parameters:
        - {in: formData, name: user_password, type: string, format: password}
        - {in: header, name: X-Api-Token, type: string}
      responses: {"200": {description: ok}}
definitions:
  NewOrder:
    type: object
    properties:
      card: {$ref: "#/definitions/Card"}
  Card:
    type: object
    properties:
      number: {type: string}
      pin: {type: string, format: password}
      holder: {$ref: "#/definitions/NewOrder"}
  Order:
    allOf:
      - {$ref: "#/definitions/NewOrder"}
      - type: object
        properties: {id: {type: integer}}
"##;

#[test]
fn swagger_yaml_base_path_refs_and_path_level_parameters() {
    let document = read(SWAGGER, false);
    assert_eq!(document.kind, "Swagger 2.0");
    assert_eq!(document.prefix, "/api/v2");
    let create = find(&document, "POST", "/api/v2/orders");
    assert_eq!(create.action, "order.created");
    // The id of the created order comes from the 201 body, through $ref and allOf.
    assert_eq!(create.resource_id.as_deref(), Some("response.body:/id"));
    assert_eq!(create.operation_id.as_deref(), Some("placeOrder"));
    assert_eq!(
        create.summary.as_deref(),
        Some("Place an order with a newline")
    );
    // `order-id` is not a name our templates take; the path-level parameter gives the sample.
    let delete = find(&document, "DELETE", "/api/v2/orders/{order_id}");
    assert_eq!(delete.action, "order.deleted");
    assert_eq!(delete.resource_id.as_deref(), Some("{order_id}"));
    assert_eq!(delete.sample_path, "/api/v2/orders/1");
    // Reads are left out unless asked for.
    assert!(document.operations.iter().all(|op| op.method != "GET"));
    // Secrets by format and by name, in a $ref'd nested (and recursive) schema and parameters.
    let fields: Vec<&str> = document
        .sensitive_fields
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, ["X-Api-Token", "pin", "user_password"]);
    let config = assert_check_clean(&document);
    let rendered = render(&document, "spec");
    assert!(rendered.contains("[redact]\nfields = [\"X-Api-Token\", \"pin\", \"user_password\"]"));
    // What the sidecar would record for the sample DELETE.
    let report = coverage(&config, &document.operations);
    assert!(report
        .iter()
        .all(|(_, verdict)| matches!(verdict, Coverage::Rule(_))));
}

#[test]
fn reads_are_listed_or_viewed() {
    let document = read(SWAGGER, true);
    let view = find(&document, "GET", "/api/v2/orders/{order_id}");
    assert_eq!(view.action, "order.viewed");
    assert_check_clean(&document);
}

#[test]
fn openapi_servers_odd_paths_and_duplicate_actions() {
    let document = read(
        r#"{
          "openapi": "3.0.1",
          "info": {"title": "Odd"},
          "servers": [{"url": "https://example.com/{base}/", "variables": {"base": {"default": "v3"}}}],
          "paths": {
            "/pets/{petId}.json": {"delete": {"responses": {}}},
            "/pets/{petId}": {"delete": {"operationId": "deletePet", "responses": {}},
                              "post": {"responses": {}}},
            "/pets/{id}": {"delete": {"operationId": "alsoDelete", "responses": {}}},
            "/cafés/{nom}": {"put": {"responses": {}}},
            "/jobs/{name}:cancel": {"post": {"responses": {}}},
            "/files/*": {"delete": {"responses": {}}},
            "/things?action=merge": {"post": {"responses": {}}},
            "/things": {"post": {"requestBody": {"content": {"application/json": {"schema": {
               "type": "object", "properties": {"client_secret": {"type": "string"}}}}}},
               "responses": {"201": {"content": {"application/json": {"schema": {
               "properties": {"data": {"properties": {"uuid": {"type": "string"}}}}}}}}}}},
            "/broken/{": {"post": {"responses": {}}},
            "/twice/{a}{b}": {"post": {"responses": {}}},
            "/notamap": {"post": 5}
          }
        }"#,
        false,
    );
    assert_eq!(document.prefix, "/v3");
    // The `.json` route is more specific, so it comes before `{petId}` would take its paths.
    let position = |template: &str, method: &str| {
        document
            .operations
            .iter()
            .position(|op| op.template == template && op.method == method)
            .unwrap_or_else(|| panic!("no {method} {template} operation"))
    };
    assert!(position("/v3/pets/{petId}.json", "DELETE") < position("/v3/pets/{petId}", "DELETE"));
    // Three operations would all be `pet.deleted`: each is told apart, every action unique.
    let actions: HashSet<&str> = document
        .operations
        .iter()
        .map(|op| op.action.as_str())
        .collect();
    assert_eq!(actions.len(), document.operations.len());
    assert_eq!(
        find(&document, "DELETE", "/v3/pets/{petId}").action,
        "pet.deleted.delete_pet"
    );
    // A POST on one pet changes it.
    assert_eq!(
        find(&document, "POST", "/v3/pets/{petId}").action,
        "pet.updated"
    );
    // Non-ASCII literals are matched as clients send them, percent-encoded.
    let cafe = find(&document, "PUT", "/v3/caf%C3%A9s/{nom}");
    assert_eq!(cafe.action, "café.updated");
    assert_eq!(cafe.sample_path, "/v3/caf%C3%A9s/sample");
    // Google-style custom methods act on their resource.
    assert_eq!(
        find(&document, "POST", "/v3/jobs/{name}:cancel").action,
        "job.cancel"
    );
    // A query in the path becomes a query condition.
    let merge = document
        .operations
        .iter()
        .find(|op| op.query == [("action".to_string(), "merge".to_string())])
        .expect("the merge operation");
    assert_eq!(merge.template, "/v3/things");
    let plain = document
        .operations
        .iter()
        .find(|op| op.template == "/v3/things" && op.query.is_empty())
        .expect("the plain /v3/things operation");
    assert_eq!(
        plain.resource_id.as_deref(),
        Some("response.body:/data/uuid")
    );
    assert!(document.sensitive_fields.contains("client_secret"));
    // What cannot be a rule is left out with where and why; nothing else is lost.
    let skipped = document.skipped.join("\n");
    assert!(skipped.contains("paths./broken/{.post"), "{skipped}");
    assert!(skipped.contains("paths./twice/{a}{b}.post"), "{skipped}");
    assert!(
        skipped.contains("paths./notamap.post: not a mapping"),
        "{skipped}"
    );
    let config = assert_check_clean(&document);
    // The same requests as an earlier rule: written commented out, so check has nothing to say.
    let rendered = render(&document, "spec");
    assert!(rendered.contains("# Same requests as the rule \"DELETE /v3/pets/{id}\""));
    // The wildcard-looking path is a regex, which matches the literal `*` only.
    assert!(
        rendered.contains("path_regex = '^/v3/files/\\*$'"),
        "{rendered}"
    );
    assert_eq!(
        find(&document, "DELETE", "/v3/files/*").action,
        "file.deleted"
    );
    let report = coverage(&config, &document.operations);
    let uncovered: Vec<&str> = report
        .iter()
        .filter(|(_, verdict)| !matches!(verdict, Coverage::Rule(_)))
        .map(|(op, _)| op.template.as_str())
        .collect();
    // Only the operation shadowed by an earlier same-shaped rule is recorded by another rule.
    assert!(uncovered.is_empty(), "{uncovered:?}");
}

#[test]
fn coverage_names_what_only_the_fallback_records() {
    let document = read(SWAGGER, false);
    let text = "[proxy]\nupstream = \"http://127.0.0.1:3000\"\n\
        [[rule]]\nmethod = \"DELETE\"\npath = \"/api/v2/orders/{id}\"\naction = \"order.deleted\"\n\
        [[rule]]\nmethod = \"POST\"\npath = \"/api/v2/login\"\nskip = true\n";
    let config =
        Config::parse(text, Path::new(".")).expect("the generated rules are a valid config");
    let report = coverage(&config, &document.operations);
    let verdict = |template: &str| {
        report
            .iter()
            .find(|(op, _)| op.template == template)
            .map(|(_, verdict)| verdict.clone())
            .unwrap_or_else(|| panic!("no verdict for {template}"))
    };
    assert_eq!(
        verdict("/api/v2/orders/{order_id}"),
        Coverage::Rule("rule #1".into())
    );
    assert_eq!(verdict("/api/v2/orders"), Coverage::GenericFallback);
    assert_eq!(
        verdict("/api/v2/login"),
        Coverage::Skipped("rule #2".into())
    );
    let text = coverage_report(&document, &report);
    assert!(text.starts_with("2 of 3 operations"), "{text}");
    assert!(
        text.contains("POST    /api/v2/orders  (generic fallback"),
        "{text}"
    );
    assert!(!text.contains("/api/v2/login"), "{text}");
}

#[test]
fn malformed_documents_are_errors_that_say_where() {
    let cases = [
        ("[1, 2]", "the top level: is not a mapping"),
        ("{\"info\": {}}", "neither `openapi` nor `swagger`"),
        ("{\"openapi\": \"1.0\"}", "not OpenAPI 3.x or Swagger 2.0"),
        (
            "{\"openapi\": \"3.0.0\", \"paths\": []}",
            "paths: is not a mapping",
        ),
    ];
    for (text, expected) in cases {
        let root = parse_text(text, "spec").expect("the test spec parses");
        let error = read_document(&root, "spec", &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{text}: {error}");
    }
    let error = parse_text("{\"openapi\": ", "spec")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("spec: not valid JSON"), "{error}");
    let error = parse_text("openapi: 3.0.0\npaths: [\n", "spec")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("spec: not valid YAML: line "), "{error}");
    // A $ref cycle and a $ref to nothing leave the operation out instead of looping.
    let document = read(
        r##"{"openapi": "3.0.0", "paths": {
            "/a": {"$ref": "#/paths/~1b"}, "/b": {"$ref": "#/paths/~1a"},
            "/c": {"post": {"$ref": "#/nowhere"}}}}"##,
        false,
    );
    assert!(document.operations.is_empty());
    assert_eq!(document.skipped.len(), 3, "{:?}", document.skipped);
}

#[test]
fn words_become_resource_names() {
    assert_eq!(singular("categories"), "category");
    assert_eq!(singular("addresses"), "address");
    assert_eq!(singular("pets"), "pet");
    assert_eq!(singular("status"), "status");
    assert_eq!(snake("uploadImage"), "upload_image");
    assert_eq!(snake("request-body"), "requestbody");
    assert!(is_version_or_api("v1") && is_version_or_api("2.0") && !is_version_or_api("vets"));
}
