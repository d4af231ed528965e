use super::*;

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "auditgate-discover-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("a test directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn templates(learner: &RouteLearner) -> Vec<String> {
    let mut out: Vec<String> = learner
        .learned()
        .routes
        .into_iter()
        .map(|route| route.template)
        .collect();
    out.sort();
    out
}

#[test]
fn ids_of_every_kind_are_recognized_and_words_are_not() {
    for id in [
        "123",
        "0",
        "9f1c2b7e-4d3a-4f5e-8a9b-0c1d2e3f4a5b",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "01arz3ndektsv4rrffq69g5fav",
        "5f3a9c0d1e2b",
        "a1b2c3d4e5f60718",
        "dGhpcyBpcyBhIHRva2VuMTIz1",
        "my-first-post-2024-05",
        &"x".repeat(MAX_SEGMENT_BYTES + 1),
        "{id}",
        "*all",
        ":name",
    ] {
        assert!(is_id(id), "{id} should be an id");
    }
    for word in [
        "users",
        "api",
        "v1",
        "me",
        "deadbeef",
        "role",
        "createWithList",
        "pets.json",
        "abcdefghijklmnopqrstuvwxyz",
        "order-history",
    ] {
        assert!(!is_id(word), "{word} should be a literal");
    }
}

#[test]
fn ids_group_into_one_template_and_literals_stay_apart() {
    let learner = RouteLearner::new();
    for path in [
        "/users/123",
        "/users/9f1c2b7e-4d3a-4f5e-8a9b-0c1d2e3f4a5b",
        "/users/01ARZ3NDEKTSV4RRFFQ69G5FAV/",
        "/users/me",
        "/users/42/posts/7",
        "/",
    ] {
        learner.observe(path, "GET", 200, Seen::NotRecorded, 100);
    }
    assert_eq!(
        templates(&learner),
        ["/", "/users/me", "/users/{id}", "/users/{id}/posts/{id2}"]
    );
    let learned = learner.learned();
    assert_eq!(learned.routes[0].template, "/users/{id}");
    assert_eq!(learned.routes[0].count(), 3);
    assert_eq!(learned.routes[0].sample.as_deref(), Some("/users/123"));
}

#[test]
fn a_high_cardinality_segment_becomes_an_id_after_the_cap() {
    let learner = RouteLearner::new();
    // 63 names and `settings`: 64 distinct values at the position, the most it keeps.
    for index in 0..MAX_VALUES_PER_SEGMENT - 1 {
        let name = format!("user{}", char::from(b'a' + (index % 26) as u8)).repeat(1 + index / 26);
        learner.observe(
            &format!("/profiles/{name}/edit"),
            "POST",
            200,
            Seen::Fallback,
            1,
        );
    }
    learner.observe("/profiles/settings", "GET", 200, Seen::NotRecorded, 1);
    assert_eq!(templates(&learner).len(), MAX_VALUES_PER_SEGMENT);
    // One more distinct value folds the whole position into `{id}`, stats merged.
    learner.observe("/profiles/zed/edit", "POST", 201, Seen::Fallback, 2);
    assert_eq!(
        templates(&learner),
        ["/profiles/{id}", "/profiles/{id}/edit"]
    );
    let learned = learner.learned();
    let edit = &learned.routes[0];
    assert_eq!(edit.template, "/profiles/{id}/edit");
    let all = MAX_VALUES_PER_SEGMENT as u64;
    assert_eq!(edit.methods[0].count, all);
    assert_eq!(edit.methods[0].fallback_count, all);
    assert_eq!(edit.methods[0].status_classes[1], all);
    assert_eq!(
        (edit.methods[0].first_seen, edit.methods[0].last_seen),
        (1, 2)
    );
    // And stays so: later values go straight to `{id}`.
    learner.observe("/profiles/another/edit", "POST", 200, Seen::Fallback, 3);
    assert_eq!(templates(&learner).len(), 2);
}

#[test]
fn a_flood_of_unique_paths_stays_within_the_caps() {
    let learner = RouteLearner::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut word = || {
        // Letters only, so no segment is taken for an id by its looks.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (0..8)
            .map(|shift| char::from(b'a' + ((seed >> (shift * 5)) % 26) as u8))
            .collect::<String>()
    };
    for round in 0..100_000u32 {
        let depth = 1 + (round % 20) as usize;
        let path: String = (0..depth).map(|_| format!("/{}", word())).collect();
        learner.observe(&path, "POST", 200, Seen::Fallback, i64::from(round));
    }
    let (count, unlearned) = learner.counts();
    assert!(count <= MAX_TEMPLATES, "{count} templates");
    let learned = learner.learned();
    assert_eq!(learned.routes.len(), count);
    let seen: u64 = learned.routes.iter().map(Route::count).sum::<u64>() + unlearned;
    assert_eq!(
        seen, 100_000,
        "every exchange is learned or counted as not learned"
    );
    for route in &learned.routes {
        assert!(
            route.template.split('/').count() <= MAX_DEPTH + 2,
            "{}",
            route.template
        );
    }
    // Every position saw more than 64 values, so what was learned is all ids.
    assert!(learned.routes.iter().all(|route| !route
        .template
        .trim_start_matches('/')
        .split('/')
        .any(|segment| !segment.starts_with('{'))));
}

#[test]
fn the_template_cap_counts_what_it_cannot_learn() {
    let learner = RouteLearner::new();
    // Distinct depths under distinct literal prefixes: each its own template.
    let mut made = 0;
    'outer: for first in 0..MAX_VALUES_PER_SEGMENT {
        for second in 0..MAX_VALUES_PER_SEGMENT {
            if made == MAX_TEMPLATES {
                break 'outer;
            }
            let path = format!("/a{}/b{}", letters(first), letters(second));
            learner.observe(&path, "GET", 200, Seen::NotRecorded, 1);
            made += 1;
        }
    }
    assert_eq!(learner.counts(), (MAX_TEMPLATES, 0));
    learner.observe("/brand/new", "DELETE", 204, Seen::Fallback, 2);
    assert_eq!(learner.counts(), (MAX_TEMPLATES, 1));
    // A template already known is still counted.
    learner.observe("/aaa/baa", "GET", 200, Seen::NotRecorded, 3);
    assert_eq!(learner.counts(), (MAX_TEMPLATES, 1));
}

fn letters(index: usize) -> String {
    format!(
        "{}{}",
        char::from(b'a' + (index / 26) as u8),
        char::from(b'a' + (index % 26) as u8)
    )
}

#[test]
fn deep_paths_end_in_rest_and_methods_are_capped() {
    let learner = RouteLearner::new();
    let deep: String = (0..40).map(|_| "/deep").collect();
    learner.observe(&deep, "GET", 200, Seen::NotRecorded, 1);
    let template = &learner.learned().routes[0].template;
    assert_eq!(template.matches("deep").count(), MAX_DEPTH);
    assert!(template.ends_with("/{*rest}"), "{template}");
    for index in 0..50 {
        learner.observe("/x", &format!("M{index}"), 200, Seen::NotRecorded, 1);
    }
    let learned = learner.learned();
    let x = learned
        .routes
        .iter()
        .find(|r| r.template == "/x")
        .expect("/x is learned");
    assert_eq!(x.methods.len(), MAX_METHODS);
    assert_eq!(x.count(), 50);
    assert!(x.methods.iter().any(|m| m.method == "OTHER"));
}

#[test]
fn coverage_follows_the_latest_exchange_and_counts_the_fallback() {
    let learner = RouteLearner::new();
    learner.observe("/orders/1", "DELETE", 204, Seen::Fallback, 10);
    learner.observe("/orders/2", "DELETE", 500, Seen::Fallback, 11);
    learner.observe("/orders/3", "DELETE", 204, Seen::Rule("delete order"), 12);
    learner.observe("/healthz", "GET", 200, Seen::Skipped("health"), 12);
    let learned = learner.learned();
    let orders = &learned.routes[0];
    assert_eq!(orders.template, "/orders/{id}");
    let delete = &orders.methods[0];
    assert_eq!(delete.fallback_count, 2);
    assert_eq!(delete.status_classes, [0, 2, 0, 0, 1]);
    assert_eq!(
        delete.covered,
        Covered::Rule {
            rule: "delete order".to_string()
        }
    );
    assert!(learned.routes[1].methods[0].covered.by_rule());
}

#[test]
fn what_was_learned_survives_a_save_and_a_restart() {
    let dir = TempDir::new();
    let path = dir.0.join("routes.json");
    let learner = RouteLearner::new();
    learner.observe("/users/7/role", "PATCH", 200, Seen::Fallback, 5);
    learner.observe("/users/8/role", "PATCH", 403, Seen::Fallback, 6);
    learner.observe("/deep/1/2/3", "GET", 200, Seen::NotRecorded, 6);
    let before = learner.learned();
    before.write(&path).expect("the learned routes are saved");
    let restarted =
        RouteLearner::from_learned(Learned::read(&path).expect("the saved routes read back"));
    assert_eq!(restarted.learned(), before);
    restarted.observe("/users/9/role", "PATCH", 200, Seen::Rule("role"), 7);
    let after = restarted.learned();
    assert_eq!(after.routes[0].template, "/users/{id}/role");
    assert_eq!(after.routes[0].count(), 3);
}

#[test]
fn a_bad_or_hostile_file_is_an_error_or_bounded_never_a_panic() {
    let dir = TempDir::new();
    let path = dir.0.join("routes.json");
    std::fs::write(&path, "{not json").expect("write");
    assert!(matches!(
        Learned::read(&path),
        Err(LearnedFileError::Format { .. })
    ));
    std::fs::write(&path, r#"{"version":99,"routes":[],"unlearned":0}"#).expect("write");
    assert!(Learned::read(&path).is_err());
    // A hand-made file with more templates than the cap, and ones that are not templates.
    let mut routes: Vec<Route> = (0..MAX_TEMPLATES + 10)
        .map(|index| Route {
            template: format!("/t{}/u{}", letters(index / 60), letters(index % 60)),
            sample: None,
            methods: vec![MethodStats::new("GET", 1, Seen::NotRecorded)],
        })
        .collect();
    for template in ["", "no-slash", "/a//b", "/{*rest}/x", "/123"] {
        routes.push(Route {
            template: template.to_string(),
            sample: None,
            methods: Vec::new(),
        });
    }
    let learner = RouteLearner::from_learned(Learned {
        version: 1,
        routes,
        unlearned: 0,
    });
    assert!(learner.counts().0 <= MAX_TEMPLATES);
}
