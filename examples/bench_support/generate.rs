//! The entries the store benchmarks write: production-like keys and weights (a few very active
//! accounts among 5000, actions weighted as real traffic is, resources of several kinds, client
//! addresses per user in IPv4 and IPv6, a status mix with errors, timestamps over 90 days).

use auditgate::entry::{AuditEntry, Outcome};
use chrono::{Duration as TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::Rng;

pub const USERS: usize = 5000;

/// Actions with realistic weights: reads of a few kinds dominate, deletions and role changes are
/// rare.
const ACTIONS: [(&str, u32); 12] = [
    ("post.created", 30),
    ("post.updated", 20),
    ("comment.created", 25),
    ("auth.login", 15),
    ("auth.login_failed", 4),
    ("user.updated", 6),
    ("user.created", 2),
    ("user.deleted", 1),
    ("user.role_changed", 1),
    ("billing.plan_changed", 1),
    ("http.post", 8),
    ("http.delete", 2),
];

pub fn pick_action(rng: &mut StdRng) -> &'static str {
    let total: u32 = ACTIONS.iter().map(|(_, weight)| weight).sum();
    let mut roll = rng.gen_range(0..total);
    for (action, weight) in ACTIONS {
        if roll < weight {
            return action;
        }
        roll -= weight;
    }
    ACTIONS[0].0
}

/// A skewed user index: a few accounts are very active, most are occasional.
pub fn pick_user(rng: &mut StdRng) -> usize {
    let uniform: f64 = rng.gen();
    ((uniform.powi(3)) * USERS as f64) as usize
}

pub fn entry(
    rng: &mut StdRng,
    index: usize,
    count: usize,
    start: chrono::DateTime<Utc>,
) -> AuditEntry {
    let action = pick_action(rng);
    let mut entry = AuditEntry::new("bench", action);
    let span = TimeDelta::days(90).num_milliseconds() as f64;
    entry.created_at =
        start + TimeDelta::milliseconds((span * index as f64 / count.max(1) as f64) as i64);
    let user = pick_user(rng);
    if rng.gen_ratio(9, 10) {
        entry.actor_id = Some(format!("u{user}"));
        entry.actor_email = Some(format!("user{user}@example.com"));
        entry.actor_source = Some("jwt".into());
        entry.actor_verified = true;
    }
    let (kind, id) = match action.split('.').next().unwrap_or("http") {
        "post" => ("post", format!("{}", rng.gen_range(0..200_000))),
        "comment" => ("comment", format!("{}", rng.gen_range(0..500_000))),
        "user" => ("user", format!("{}", rng.gen_range(0..USERS))),
        "billing" => ("workspace", format!("w{}", rng.gen_range(0..800))),
        _ => ("", String::new()),
    };
    if !kind.is_empty() {
        entry.resource_type = Some(kind.into());
        entry.resource_id = Some(id.clone());
    }
    let status = match rng.gen_range(0..100) {
        0..=84 => [200, 201, 204][rng.gen_range(0..3)],
        85..=89 => 302,
        90..=96 => [400, 401, 403, 404, 409][rng.gen_range(0..5)],
        _ => [500, 502, 503][rng.gen_range(0..3)],
    };
    entry.status = Some(status);
    entry.outcome = Outcome::from_status(status);
    entry.method = Some(
        if action.ends_with("deleted") {
            "DELETE"
        } else {
            "POST"
        }
        .into(),
    );
    entry.path = Some(format!("/api/{kind}s/{id}"));
    entry.ip = Some(match user % 3 {
        0 => format!("10.{}.{}.{}", user % 7, user % 250, rng.gen_range(1..255)),
        1 => format!("192.168.{}.{}", user % 20, user % 250),
        _ => format!("2001:db8:{:x}::{:x}", user % 30, user),
    });
    entry.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) bench".into());
    entry.request_id = Some(format!("req-{index}"));
    entry.duration_us = Some(rng.gen_range(200..50_000));
    entry.metadata.insert("n".into(), serde_json::json!(index));
    if action == "user.role_changed" {
        entry
            .metadata
            .insert("newRole".into(), serde_json::json!("admin"));
    }
    entry
}
