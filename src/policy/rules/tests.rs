use super::file::{RuleFile, UnmatchedRecord};
use super::*;
use crate::request::route::compile_route;

/// Found while giving the rule_matcher fuzz target host conditions: the host suffix was
/// compared on a text slice that could start inside a multi-byte character, which panics.
/// (Hosts from a request are visible ASCII today, so no request could reach it; the rule set
/// is a public interface all the same.)
#[test]
fn host_suffix_on_non_ascii_hosts_never_panics() {
    let set = rules(
        "[[rule]]\nhost = \"*.b\"\naction = \"x\"\n",
        UnmatchedRecord::None,
    );
    let headers = HeaderMap::new();
    for host in [
        "a\u{e9}z",
        "\u{e9}.b",
        "x.\u{e9}",
        "\u{1f642}\u{1f642}",
        "a.B",
    ] {
        let request = RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            host: Some(host),
            headers: &headers,
        };
        let matched = !set.candidates(&request).is_empty();
        assert_eq!(matched, host.ends_with(".b") || host == "a.B", "{host}");
    }
}

/// Found by the rule_matcher fuzz target: a stray `}` before a parameter was taken as
/// literal text, while the same `}` after the last parameter was a config error.
#[test]
fn a_stray_closing_brace_is_refused_wherever_it_is() {
    for template in ["/a}b", "/a}b/{id}", "/]x}}}<{p2}", "/{id}/}"] {
        let error = compile_route(template).expect_err(template);
        assert!(error.contains("with no `{`"), "{template}: {error}");
    }
    assert!(compile_route("/a/{id}/b").is_ok());
}

/// The `[[rule]]` tables of a test configuration, as the config file holds them.
fn rule_files(text: &str) -> Vec<RuleFile> {
    #[derive(serde::Deserialize)]
    struct File {
        rule: Vec<RuleFile>,
    }
    let file: File = toml::from_str(text).expect("test rules parse");
    file.rule
}

fn rules(text: &str, unmatched: UnmatchedRecord) -> RuleSet {
    RuleSet::compile(&rule_files(text), unmatched).expect("test rules compile")
}

/// The errors of rules that must not compile, as `auditgate check` prints them.
fn compile_errors(text: &str) -> Vec<String> {
    let errors = RuleSet::compile(&rule_files(text), UnmatchedRecord::None).expect_err("invalid");
    errors.iter().map(ToString::to_string).collect()
}

fn view<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    RequestView {
        method,
        path,
        query,
        host: Some("app.example.com:8080"),
        headers,
    }
}

const RULES: &str = r#"
    [[rule]]
    name = "health"
    path = "/healthz"
    skip = true

    [[rule]]
    name = "delete user"
    method = "DELETE"
    path = "/api/users/{id}"
    status = "2xx"
    action = "user.deleted"
    resource = { type = "user", id = "{id}" }

    [[rule]]
    name = "files"
    method = ["GET", "put"]
    path = "/files/{*rest}"
    action = "file.{rest}"

    [[rule]]
    name = "by regex"
    path_regex = "^/v(?P<version>[0-9]+)/things$"
    status = [200, "4xx"]
    action = "thing.v{version}"

    [[rule]]
    name = "tenant header"
    headers = { "x-tenant" = "*" }
    query = { mode = "~^dry" }
    host = "*.example.com"
    action = "tenant.touch"
"#;

#[test]
fn first_match_wins_with_status() {
    let set = rules(RULES, UnmatchedRecord::Mutations);
    let headers = HeaderMap::new();
    let delete = Method::DELETE;
    let candidates = set.candidates(&view(&delete, "/api/users/42", &headers));
    assert_eq!(candidates, vec![1]);
    assert_eq!(set.decide(&candidates, &delete, 204), Decision::Rule(1));
    // A refused delete is not "user.deleted"; it falls to the unmatched policy.
    assert_eq!(set.decide(&candidates, &delete, 403), Decision::Unmatched);
    assert_eq!(
        set.rule(1).path_params("/api/users/a%20b"),
        vec![("id".to_string(), "a b".to_string())]
    );
}

#[test]
fn skip_and_unmatched_policies() {
    let headers = HeaderMap::new();
    let get = Method::GET;
    let post = Method::POST;
    let set = rules(RULES, UnmatchedRecord::All);
    let candidates = set.candidates(&view(&get, "/healthz", &headers));
    assert_eq!(set.decide(&candidates, &get, 200), Decision::Nothing);
    assert_eq!(set.decide(&[], &get, 200), Decision::Unmatched);
    let set = rules(RULES, UnmatchedRecord::Mutations);
    assert_eq!(set.decide(&[], &get, 200), Decision::Nothing);
    assert_eq!(set.decide(&[], &post, 200), Decision::Unmatched);
    assert!(!set.may_record(&[], &get));
    let set = rules(RULES, UnmatchedRecord::None);
    assert_eq!(set.decide(&[], &post, 200), Decision::Nothing);
}

#[test]
fn catch_all_regex_methods_and_conditions() {
    let set = rules(RULES, UnmatchedRecord::None);
    let mut headers = HeaderMap::new();
    let put = Method::PUT;
    let candidates = set.candidates(&view(&put, "/files/a/b.txt", &headers));
    assert_eq!(candidates, vec![2]);
    assert_eq!(
        set.rule(2).path_params("/files/a/b.txt"),
        vec![("rest".to_string(), "a/b.txt".to_string())]
    );
    let post = Method::POST;
    assert!(set
        .candidates(&view(&post, "/files/a", &headers))
        .is_empty());

    let get = Method::GET;
    let candidates = set.candidates(&view(&get, "/v2/things", &headers));
    assert_eq!(candidates, vec![3]);
    assert_eq!(set.decide(&candidates, &get, 200), Decision::Rule(3));
    assert_eq!(set.decide(&candidates, &get, 404), Decision::Rule(3));
    assert_eq!(set.decide(&candidates, &get, 201), Decision::Nothing);

    assert!(set
        .candidates(&view(&get, "/x?mode=dry-run", &headers))
        .is_empty());
    headers.insert("x-tenant", "acme".parse().expect("header value"));
    assert_eq!(
        set.candidates(&view(&get, "/x?mode=dry-run", &headers)),
        vec![4]
    );
    assert!(set
        .candidates(&view(&get, "/x?mode=live", &headers))
        .is_empty());
}

#[test]
fn unreachable_upstream_is_still_audited() {
    let set = rules(RULES, UnmatchedRecord::None);
    let headers = HeaderMap::new();
    let delete = Method::DELETE;
    let candidates = set.candidates(&view(&delete, "/api/users/42", &headers));
    assert_eq!(
        set.decide_unreachable(&candidates, &delete, 502),
        Decision::Rule(1)
    );
}

#[test]
fn every_error_is_reported_with_its_rule() {
    let text = compile_errors(
        r#"
        [[rule]]
        name = "a"
        method = "FETCH ME"
        path = "/x/{id"
        action = "x"
        [[rule]]
        name = "b"
        path = "/users/{id}"
        status = "6xx"
        action = "{user}.deleted"
        [[rule]]
        name = "a"
        path_regex = "("
        "#,
    );
    let all = text.join("\n");
    assert!(all.contains(r#"rule #1 ("a").method"#), "{all}");
    assert!(all.contains(r#"rule #1 ("a").path"#), "{all}");
    assert!(all.contains(r#"rule #2 ("b").status"#), "{all}");
    assert!(all.contains(r#"rule #2 ("b").action"#), "{all}");
    assert!(
        all.contains(r#"rule #3 ("a")"#) && all.contains("unique"),
        "{all}"
    );
    assert!(all.contains(r#"rule #3 ("a").path_regex"#), "{all}");
    assert!(all.contains(r#"rule #3 ("a").action"#), "{all}");
}

/// Every key of a rule is checked even when an earlier one failed, and the errors come in the
/// order of the keys, so one run of `auditgate check` lists every mistake in reading order.
#[test]
fn every_key_of_a_rule_is_checked_in_order() {
    let text = compile_errors(
        r#"
        [[rule]]
        name = "wrong"
        method = ["GET", "NOT A METHOD"]
        path = "/a/{id}"
        route_case = "folded"
        headers = { "bad header" = "*", "x-ok" = "~(" }
        query = { q = "~(" }
        status = "6xx"
        ocsf_activity = "erase"
        resource = { type = "{nope}", id = "{id}" }
        tenant = "{missing}"
        metadata = { k = "{gone}" }
        actor = { id = "{who}", email = "{id}" }
        action = "audit.{id}"
        on_store_failure = "retry"
        [[rule]]
        path_regex = "^/h$"
        trailing_slash = "strict"
        skip = true
        action = "x"
        ocsf_activity = "read"
        write_ahead = true
        "#,
    );
    let keys: Vec<&str> = text
        .iter()
        .map(|error| error.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        [
            r#"rule #1 ("wrong").route_case"#,
            r#"rule #1 ("wrong").method"#,
            r#"rule #1 ("wrong").headers"#,
            r#"rule #1 ("wrong").headers"#,
            r#"rule #1 ("wrong").query"#,
            r#"rule #1 ("wrong").status"#,
            r#"rule #1 ("wrong").ocsf_activity"#,
            r#"rule #1 ("wrong").resource.type"#,
            r#"rule #1 ("wrong").tenant"#,
            r#"rule #1 ("wrong").metadata"#,
            r#"rule #1 ("wrong").actor.id"#,
            r#"rule #1 ("wrong").action"#,
            r#"rule #1 ("wrong").on_store_failure"#,
            "rule #2.route_case",
            "rule #2.skip",
            "rule #2.ocsf_activity",
            "rule #2.write_ahead",
        ],
        "{text:#?}"
    );
}

#[test]
fn ocsf_activity_is_checked_and_kept_with_the_rule() {
    let rules = rules(
        r#"
        [[rule]]
        name = "purge"
        method = "POST"
        path = "/purge"
        action = "cache.purge"
        ocsf_activity = "delete"
        [[rule]]
        name = "plain"
        path = "/x"
        action = "x.happened"
        "#,
        UnmatchedRecord::None,
    );
    let activities: Vec<Option<crate::entry::ocsf::OcsfActivity>> = rules
        .rules()
        .iter()
        .map(|rule| match &rule.kind {
            RuleKind::Record(spec) => spec.ocsf_activity,
            RuleKind::Skip => None,
        })
        .collect();
    assert_eq!(
        activities,
        [Some(crate::entry::ocsf::OcsfActivity::Delete), None]
    );

    let text = compile_errors(
        r#"
        [[rule]]
        path = "/a"
        action = "a"
        ocsf_activity = "Erase"
        [[rule]]
        name = "health"
        path = "/health"
        skip = true
        ocsf_activity = "read"
        "#,
    );
    assert_eq!(
        text,
        [
            "rule #1.ocsf_activity: `Erase` is not one of create, read, update, delete or other",
            r#"rule #2 ("health").ocsf_activity: a skip rule records nothing, so it has no OCSF activity"#,
        ]
    );
}

#[test]
fn a_rule_cannot_name_an_action_in_auditgates_namespace() {
    let text = compile_errors(
        r#"
        [[rule]]
        name = "own"
        path = "/prune"
        action = "audit.pruned"
        [[rule]]
        path = "/q/{id}"
        action = "Audit.query.{id}"
        [[rule]]
        name = "fine"
        path = "/x/{section}"
        action = "{section}.x"
        [[rule]]
        name = "also fine"
        path = "/y"
        action = "auditor.added"
        "#,
    );
    assert_eq!(text.len(), 2, "{text:#?}");
    assert!(
        text[0].starts_with(
            "rule #1 (\"own\").action: `audit.pruned` starts with `audit.`, which is reserved"
        ),
        "{text:#?}"
    );
    assert!(
        text[1].starts_with("rule #2") && text[1].contains(".action: `Audit.query.{id}`"),
        "{text:#?}"
    );
}

#[test]
fn templates_match_as_the_app_routes_by_default() {
    let set = rules(
        r#"
        [[rule]]
        name = "get user"
        method = "GET"
        path = "/api/users/{id}"
        action = "user.viewed"
        [[rule]]
        name = "strict"
        method = "PUT"
        path = "/Exact/{id}/"
        route_case = "sensitive"
        trailing_slash = "strict"
        action = "exact.put"
        [[rule]]
        name = "regex"
        method = "PATCH"
        path_regex = "^/r/(?P<id>[0-9]+)$"
        action = "r.patched"
        "#,
        UnmatchedRecord::None,
    );
    let headers = HeaderMap::new();
    let get = Method::GET;
    for path in ["/api/users/Ab5", "/API/Users/Ab5", "/api/users/Ab5/"] {
        assert_eq!(
            set.candidates(&view(&get, path, &headers)),
            vec![0],
            "{path}"
        );
        // The parameter keeps the case it was sent in; only matching is folded.
        assert_eq!(
            set.rule(0).path_params(path),
            vec![("id".to_string(), "Ab5".to_string())]
        );
    }
    assert!(set
        .candidates(&view(&get, "/api/users/5/x", &headers))
        .is_empty());
    let head = Method::HEAD;
    assert_eq!(
        set.candidates(&view(&head, "/api/users/5", &headers)),
        vec![0]
    );

    let put = Method::PUT;
    assert_eq!(set.candidates(&view(&put, "/Exact/1/", &headers)), vec![1]);
    assert!(set
        .candidates(&view(&put, "/exact/1/", &headers))
        .is_empty());
    assert!(set.candidates(&view(&put, "/Exact/1", &headers)).is_empty());
    // A path_regex is taken as written.
    let patch = Method::PATCH;
    assert_eq!(set.candidates(&view(&patch, "/r/1", &headers)), vec![2]);
    assert!(set.candidates(&view(&patch, "/R/1", &headers)).is_empty());
    assert!(set.candidates(&view(&patch, "/r/1/", &headers)).is_empty());

    let matched = set.rule(0).path_match("/API/users/5/").expect("matches");
    assert!(!matched.exact && matched.case_folded && matched.trailing_slash_ignored);
    let matched = set.rule(0).path_match("/api/users/5").expect("matches");
    assert!(matched.exact && !matched.case_folded && !matched.trailing_slash_ignored);

    // An overridden method: the rules for the method the app runs come first.
    let delete = Method::DELETE;
    assert_eq!(
        set.candidates_for(&view(&delete, "/api/users/5", &headers), Some(&get)),
        vec![0]
    );
}

#[test]
fn route_semantics_are_checked() {
    let text = compile_errors(
        r#"
        [[rule]]
        path = "/a"
        route_case = "folded"
        trailing_slash = "maybe"
        action = "a"
        [[rule]]
        path_regex = "^/b$"
        route_case = "sensitive"
        action = "b"
        "#,
    );
    assert_eq!(text.len(), 3, "{text:#?}");
    assert!(text[0].starts_with("rule #1.route_case"), "{text:#?}");
    assert!(text[1].starts_with("rule #1.trailing_slash"), "{text:#?}");
    assert!(text[2].starts_with("rule #2.route_case"), "{text:#?}");
    assert_eq!(
        compile_route_with("/", RouteSemantics::default())
            .expect("valid")
            .0,
        "^(?i:/)$"
    );
    assert_eq!(
        compile_route_with("/files/{*rest}", RouteSemantics::default())
            .expect("valid")
            .0,
        "^(?i:/files/(?P<rest>.*))$"
    );
    assert_eq!(
        compile_route_with("/a/", RouteSemantics::default())
            .expect("valid")
            .0,
        "^(?i:/a/?)$"
    );
}

#[test]
fn routes_compile() {
    assert_eq!(
        compile_route("/a/{id}/b").expect("valid"),
        ("^/a/(?P<id>[^/]+)/b$".to_string(), vec!["id".to_string()])
    );
    assert!(compile_route("a").is_err());
    assert!(compile_route("/{*rest}/x").is_err());
    assert!(compile_route("/{a}/{a}").is_err());
    assert!(compile_route("/{a-b}").is_err());
}
