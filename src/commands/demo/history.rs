//! Nine days of earlier activity for the demo, so the viewer's chart, top lists and paging have
//! something to show the first time someone opens it.
//!
//! The live sample traffic of `auditgate demo` all lands within a second, which would draw a
//! chart with one bar. These entries have the shapes the demo rules produce for the sample app
//! (same actions, actors, rules, routes, clients), spread over the last nine days (a little more
//! than the viewer's "7 days" preset) with a working-day rhythm, a night-time password-guessing
//! burst, a nightly batch import and a short upstream outage. They are appended through the writer
//! like any entry, before the live traffic, so their sequence numbers follow their times and they
//! are hashed into the log and signed like the rest.
//! Each carries `"demoHistory": true` in its metadata, so nobody mistakes them for real requests.

use chrono::{DateTime, Duration, Timelike, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::entry::{AuditEntry, Outcome};

/// How far back the history reaches.
const DAYS: i64 = 9;
/// The newest history entry is at least this old, so the live traffic stands apart from it.
const QUIET_BEFORE_NOW: Duration = Duration::minutes(20);

struct Person {
    id: &'static str,
    email: &'static str,
    name: &'static str,
    role: &'static str,
    ip: &'static str,
    agent: &'static str,
}

const PEOPLE: [Person; 3] = [
    Person {
        id: "user-1",
        email: "alice@example.com",
        name: "Alice Admin",
        role: "admin",
        ip: "198.51.100.10",
        agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    },
    Person {
        id: "user-2",
        email: "bob@example.com",
        name: "Bob Builder",
        role: "member",
        ip: "203.0.113.24",
        agent: "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
    },
    Person {
        id: "user-3",
        email: "carol@example.com",
        name: "Carol Chen",
        role: "member",
        ip: "192.0.2.77",
        agent: "curl/8.5.0",
    },
];

const POST_TITLES: [&str; 6] = [
    "Weekly sync notes",
    "Roadmap draft",
    "Customer interview",
    "Security review",
    "Design critique",
    "Hiring plan",
];

/// The history entries, oldest first, for a demo started at `now`. The same seed gives the same
/// shape of history on every run, shifted to end before `now`.
pub fn entries(log_id: &str, now: DateTime<Utc>) -> Vec<AuditEntry> {
    let mut rng = StdRng::seed_from_u64(0x00a0_d17a_7e00);
    let end = now - QUIET_BEFORE_NOW;
    let start = end - Duration::days(DAYS);
    let mut entries = Vec::new();
    let mut next_id = 200_u64;
    let mut hour_start = start
        .with_minute(0)
        .and_then(|time| time.with_second(0))
        .and_then(|time| time.with_nanosecond(0))
        .unwrap_or(start);
    while hour_start < end {
        let hour = hour_start.hour();
        let workday = matches!(hour, 8..=18);
        let count = if workday {
            rng.gen_range(2..7)
        } else {
            rng.gen_range(0..2)
        };
        for _ in 0..count {
            let at = hour_start + Duration::seconds(rng.gen_range(0..3600));
            if at < start || at >= end {
                continue;
            }
            let person = &PEOPLE[rng.gen_range(0..PEOPLE.len())];
            entries.push(person_entry(log_id, at, person, &mut rng, &mut next_id));
        }
        // The nightly batch import of a legacy system, with HTTP basic auth.
        if hour == 2 {
            let at = hour_start + Duration::minutes(5);
            if at >= start && at < end {
                entries.push(batch_import(log_id, at, &mut rng));
            }
        }
        hour_start += Duration::hours(1);
    }
    // Somebody guessing passwords one night, three days ago.
    let burst = (end - Duration::days(3))
        .with_hour(3)
        .and_then(|time| time.with_minute(12))
        .unwrap_or(end - Duration::days(3));
    for attempt in 0..9 {
        let at = burst + Duration::seconds(attempt * 7);
        entries.push(failed_login(log_id, at, "alice@example.com", &mut rng));
    }
    // A mistyped password a few hours ago and another eight days ago, whatever the time of day:
    // the viewer's "last hour", "24 hours" and "7 days" presets then each show failed sign-ins the
    // shorter one does not (the random traffic alone leaves some of those windows empty at some
    // hours of the day).
    for (ago, email) in [
        (Duration::hours(4), "bob@example.com"),
        (Duration::days(8), "carol@example.com"),
    ] {
        entries.push(failed_login(log_id, end - ago, email, &mut rng));
    }
    // An upstream outage yesterday afternoon: the proxy answered 502 for a few minutes.
    let outage = (end - Duration::days(1))
        .with_hour(15)
        .and_then(|time| time.with_minute(40))
        .unwrap_or(end - Duration::days(1));
    for (minute, person) in [(0, &PEOPLE[1]), (1, &PEOPLE[2]), (3, &PEOPLE[0])] {
        let at = outage + Duration::minutes(minute);
        entries.push(upstream_error(log_id, at, person, &mut rng));
    }
    entries.retain(|entry| entry.created_at >= start && entry.created_at < end);
    entries.sort_by_key(|entry| entry.created_at);
    entries
}

/// A blank entry at a past time, with an id whose time part is that time.
fn at_time(log_id: &str, action: &str, at: DateTime<Utc>, rng: &mut StdRng) -> AuditEntry {
    let mut entry = AuditEntry::new(log_id, action);
    entry.created_at = at;
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or_default();
    entry.id = ulid::Ulid::from_parts(millis, rng.gen()).to_string();
    entry.request_id = Some(ulid::Ulid::from_parts(millis, rng.gen()).to_string());
    entry.duration_us = Some(rng.gen_range(250..4_000));
    entry
        .metadata
        .insert("demoHistory".into(), Value::Bool(true));
    entry
}

fn request(entry: &mut AuditEntry, method: &str, path: String, route: &str, rule: &str) {
    entry.method = Some(method.to_string());
    entry.path = Some(path);
    entry.route = Some(route.to_string());
    entry.rule = Some(rule.to_string());
}

fn answered(entry: &mut AuditEntry, status: u16) {
    entry.status = Some(status);
    entry.outcome = Outcome::from_status(status);
}

fn signed_in(entry: &mut AuditEntry, person: &Person) {
    entry.actor_id = Some(person.id.to_string());
    entry.actor_email = Some(person.email.to_string());
    entry.actor_name = Some(person.name.to_string());
    entry.actor_source = Some("jwt".to_string());
    entry.actor_verified = true;
    entry.ip = Some(person.ip.to_string());
    entry.user_agent = Some(person.agent.to_string());
    entry
        .metadata
        .insert("_actor".into(), json!({"roles": [person.role]}));
}

/// One thing a signed-in person of the sample app does; what depends on their role.
fn person_entry(
    log_id: &str,
    at: DateTime<Utc>,
    person: &Person,
    rng: &mut StdRng,
    next_id: &mut u64,
) -> AuditEntry {
    let roll: u32 = rng.gen_range(0..100);
    if roll < 30 {
        let mut entry = at_time(log_id, "auth.login", at, rng);
        request(&mut entry, "POST", "/login".into(), "/login", "login");
        answered(&mut entry, 200);
        entry.actor_email = Some(person.email.to_string());
        entry.actor_source = Some("rule".to_string());
        entry.ip = Some(person.ip.to_string());
        entry.user_agent = Some(person.agent.to_string());
        return entry;
    }
    if roll < 36 {
        return failed_login(log_id, at, person.email, rng);
    }
    let admin = person.role == "admin";
    if roll < 62 {
        let mut entry = at_time(log_id, "post.created", at, rng);
        request(
            &mut entry,
            "POST",
            "/api/posts".into(),
            "/api/posts",
            "create post",
        );
        signed_in(&mut entry, person);
        answered(&mut entry, 201);
        *next_id += 1;
        entry.resource_type = Some("post".into());
        entry.resource_id = Some(next_id.to_string());
        let title = POST_TITLES[rng.gen_range(0..POST_TITLES.len())];
        entry.metadata.insert("title".into(), Value::from(title));
        return entry;
    }
    if roll < 74 {
        let id = rng.gen_range(150..=(*next_id).max(151));
        let mut entry = at_time(log_id, "post.deleted", at, rng);
        request(
            &mut entry,
            "DELETE",
            format!("/api/posts/{id}"),
            "/api/posts/{id}",
            "delete post",
        );
        signed_in(&mut entry, person);
        answered(&mut entry, if rng.gen_bool(0.85) { 204 } else { 404 });
        entry.resource_type = Some("post".into());
        entry.resource_id = Some(id.to_string());
        return entry;
    }
    if roll < 86 {
        let target = rng.gen_range(2..=3);
        let role = if rng.gen_bool(0.5) {
            "billing"
        } else {
            "member"
        };
        let mut entry = at_time(log_id, "user.role_changed", at, rng);
        request(
            &mut entry,
            if rng.gen_bool(0.5) { "PATCH" } else { "PUT" },
            format!("/api/users/{target}/role"),
            "/api/users/{id}/role",
            "role change",
        );
        signed_in(&mut entry, person);
        answered(&mut entry, if admin { 200 } else { 403 });
        entry.resource_type = Some("user".into());
        entry.resource_id = Some(target.to_string());
        entry.metadata.insert("newRole".into(), Value::from(role));
        return entry;
    }
    if roll < 95 {
        *next_id += 1;
        let mut entry = at_time(log_id, "user.created", at, rng);
        request(
            &mut entry,
            "POST",
            "/api/users".into(),
            "/api/users",
            "create user",
        );
        signed_in(&mut entry, person);
        entry.resource_type = Some("user".into());
        let email = format!("new-{}@example.com", *next_id);
        entry.metadata.insert("email".into(), Value::from(email));
        if admin {
            answered(&mut entry, 201);
            entry.resource_id = Some(next_id.to_string());
            entry.metadata.insert(
                "location".into(),
                Value::from(format!("/api/users/{}", *next_id)),
            );
        } else {
            answered(&mut entry, 403);
            entry.metadata.insert("location".into(), Value::Null);
        }
        return entry;
    }
    let target = rng.gen_range(150..=(*next_id).max(151));
    let mut entry = at_time(log_id, "user.deleted", at, rng);
    request(
        &mut entry,
        "DELETE",
        format!("/api/users/{target}"),
        "/api/users/{id}",
        "delete user",
    );
    signed_in(&mut entry, person);
    answered(&mut entry, if admin { 204 } else { 403 });
    entry.resource_type = Some("user".into());
    entry.resource_id = Some(target.to_string());
    entry
}

fn failed_login(log_id: &str, at: DateTime<Utc>, email: &str, rng: &mut StdRng) -> AuditEntry {
    let mut entry = at_time(log_id, "auth.login_failed", at, rng);
    request(
        &mut entry,
        "POST",
        "/login".into(),
        "/login",
        "failed login",
    );
    answered(&mut entry, 401);
    entry.actor_email = Some(email.to_string());
    entry.actor_source = Some("rule".to_string());
    entry.ip = Some("45.83.64.2".to_string());
    entry.user_agent = Some("python-requests/2.32.3".to_string());
    entry
}

fn batch_import(log_id: &str, at: DateTime<Utc>, rng: &mut StdRng) -> AuditEntry {
    let mut entry = at_time(log_id, "http.post", at, rng);
    entry.method = Some("POST".into());
    entry.path = Some("/api/import".into());
    answered(&mut entry, 404);
    entry.actor_id = Some("legacy-batch".into());
    entry.actor_source = Some("basic".into());
    entry.ip = Some("10.20.30.40".into());
    entry.user_agent = Some("curl/8.5.0".into());
    entry
}

fn upstream_error(
    log_id: &str,
    at: DateTime<Utc>,
    person: &Person,
    rng: &mut StdRng,
) -> AuditEntry {
    let mut entry = at_time(log_id, "post.created", at, rng);
    request(
        &mut entry,
        "POST",
        "/api/posts".into(),
        "/api/posts",
        "create post",
    );
    signed_in(&mut entry, person);
    entry.status = Some(502);
    entry.outcome = Outcome::Error;
    entry.resource_type = Some("post".into());
    entry.error = Some("upstream: connection refused".into());
    let mut missing = Map::new();
    missing.insert("resourceId".into(), Value::from("response body has no /id"));
    entry
        .metadata
        .insert("_missing".into(), Value::Object(missing));
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn nine_days_of_history_in_time_order_ending_before_now() {
        let now = Utc
            .with_ymd_and_hms(2026, 11, 26, 10, 0, 0)
            .single()
            .expect("time");
        let entries = entries("demo", now);
        assert!(entries.len() > 150, "{}", entries.len());
        assert!(entries
            .windows(2)
            .all(|pair| pair[0].created_at <= pair[1].created_at));
        let first = entries.first().expect("entries").created_at;
        let last = entries.last().expect("entries").created_at;
        assert!(first >= now - Duration::days(DAYS + 1), "{first}");
        assert!(first < now - Duration::days(DAYS - 1), "{first}");
        assert!(last <= now - QUIET_BEFORE_NOW, "{last}");
        assert!(last >= now - Duration::hours(12), "{last}");
        for outcome in [Outcome::Success, Outcome::Failure, Outcome::Error] {
            assert!(entries.iter().any(|entry| entry.outcome == outcome));
        }
        assert!(entries
            .iter()
            .all(|entry| entry.metadata["demoHistory"] == true));
        let ids: std::collections::HashSet<&str> =
            entries.iter().map(|entry| entry.id.as_str()).collect();
        assert_eq!(ids.len(), entries.len());
    }

    #[test]
    fn failed_sign_ins_fall_in_every_time_preset_at_any_hour() {
        // The viewer's presets (the browser test checks each shows more than the shorter one):
        // the history must put a failed sign-in between one and 24 hours back, between one and
        // seven days back, and further back, whenever the demo starts.
        for hour in 0..24 {
            let now = Utc
                .with_ymd_and_hms(2026, 11, 26, hour, 37, 0)
                .single()
                .expect("time");
            let ages: Vec<Duration> = entries("demo", now)
                .iter()
                .filter(|entry| entry.action == "auth.login_failed")
                .map(|entry| now - entry.created_at)
                .collect();
            let within =
                |low: Duration, high: Duration| ages.iter().any(|age| *age > low && *age <= high);
            assert!(within(Duration::hours(1), Duration::hours(24)), "{hour}:37");
            assert!(within(Duration::hours(24), Duration::days(7)), "{hour}:37");
            assert!(
                within(Duration::days(7), Duration::days(DAYS + 1)),
                "{hour}:37"
            );
        }
    }
}
