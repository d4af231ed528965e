//! Identity end to end, through the real proxy: who made each request (JWT with real keys,
//! auth-proxy headers, basic auth, API keys, a request-body field), from where (the trusted-proxy
//! walk of X-Forwarded-For and Forwarded, IPv6), and that no secret is ever stored — checked in
//! the stored rows and in the raw bytes of the SQLite file.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::{
    actor_notes, config_text, sha256_hex, HttpClient, TempDir, TestSidecar, Upstream,
};
use auditgate::entry::AuditEntry;

const RECORD_ALL: &str = "[unmatched]\nrecord = \"all\"\n";

// ---------------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------------

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).expect("token signs")
}

fn hs256(secret: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// A real key pair: the private key to sign with, the public PEM the sidecar verifies with, and
/// the public JWK for key sets.
struct KeyPair {
    signing: EncodingKey,
    public_pem: String,
    jwk: Value,
}

/// Two RSA-2048 keys, made once per test run (key generation takes seconds in a debug build).
fn rsa_keys() -> &'static [KeyPair; 2] {
    static KEYS: OnceLock<[KeyPair; 2]> = OnceLock::new();
    KEYS.get_or_init(|| [rsa_key("rsa-1"), rsa_key("rsa-2")])
}

fn rsa_key(kid: &str) -> KeyPair {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("rsa key");
    let public = private.to_public_key();
    let private_pem = private.to_pkcs8_pem(LineEnding::LF).expect("pem");
    KeyPair {
        signing: EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("signing key"),
        public_pem: public.to_public_key_pem(LineEnding::LF).expect("pem"),
        jwk: json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64url(&public.n().to_bytes_be()), "e": b64url(&public.e().to_bytes_be()),
        }),
    }
}

fn p256_key(kid: &str) -> KeyPair {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let public = secret.public_key();
    let point = public.to_encoded_point(false);
    let private_pem = secret.to_pkcs8_pem(LineEnding::LF).expect("pem");
    KeyPair {
        signing: EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("signing key"),
        public_pem: public.to_public_key_pem(LineEnding::LF).expect("pem"),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64url(point.x().expect("x")), "y": b64url(point.y().expect("y")),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and stored rows
// ---------------------------------------------------------------------------------------------

/// Sends a GET with headers through the sidecar and insists the app answered.
async fn get(sidecar: &TestSidecar, path: &str, headers: &[(&str, &str)]) -> Value {
    let reply = HttpClient::new()
        .send("GET", &sidecar.url(path), headers, "")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn actor(entry: &AuditEntry) -> (Option<&str>, Option<&str>, bool) {
    (
        entry.actor_id.as_deref(),
        entry.actor_source.as_deref(),
        entry.actor_verified,
    )
}

/// Stops the sidecar, folds the WAL into the database file, and asserts that none of the
/// secrets occurs anywhere in the file's bytes (or in any leftover WAL/SHM file). `stored` is a
/// value the entries do hold, found by the same search, so the search is known to work.
async fn assert_never_stored(sidecar: &mut TestSidecar, stored: &str, secrets: &[&str]) {
    sidecar.stop().await;
    let connection = rusqlite::Connection::open(&sidecar.db).expect("open db");
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    drop(connection);
    let mut bytes = std::fs::read(&sidecar.db).expect("db bytes");
    assert!(bytes.len() > 4096, "the database holds pages");
    for suffix in ["-wal", "-shm"] {
        let mut path = sidecar.db.clone().into_os_string();
        path.push(suffix);
        if let Ok(more) = std::fs::read(&path) {
            bytes.extend(more);
        }
    }
    let contains = |needle: &str| {
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    };
    assert!(contains(stored), "{stored:?} should be in the stored bytes");
    for secret in secrets {
        assert!(secret.len() >= 6, "search for distinctive strings only");
        assert!(
            !contains(secret),
            "secret {secret:?} is in the stored bytes"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// JWT
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_jwt_in_the_query_string_names_the_actor_and_is_never_stored() {
    let upstream = Upstream::start().await;
    let mut sidecar = TestSidecar::start(
        upstream.addr,
        &format!(
            "{RECORD_ALL}\n[[actor]]\nfrom = \"jwt\"\nquery = \"access_token\"\nhs256_secret_env = \"IT_IDENTITY_HS_1\"\n\
             [[rule]]\nmethod = \"GET\"\npath = \"/dashboards/{{id}}\"\naction = \"dashboard.viewed\"\n\
             metadata = {{ token = \"query:access_token\", view = \"query:view\" }}\n"
        ),
    )
    .await;
    let token = hs256(
        "it-identity-hs-secret-1",
        &json!({"sub": "viewer-7", "email": "viewer@example.com", "exp": 4_102_444_800u64}),
    );
    let client = HttpClient::new();
    // Percent-encoded, after another parameter, as a WebSocket or dashboard client sends it.
    let url = sidecar.url(&format!(
        "/dashboards/42?view=compact&access_token={}",
        token.replace('.', "%2E")
    ));
    assert_eq!(client.get(&url).await.status, 200);
    // A token in a header is not read by this source.
    let bearer = format!("Bearer {token}");
    client
        .send(
            "GET",
            &sidecar.url("/dashboards/43"),
            &[("authorization", &bearer)],
            "",
        )
        .await;
    let entries = sidecar.wait_entries(2).await;
    let viewed = &entries[0];
    assert_eq!(viewed.action, "dashboard.viewed");
    assert_eq!(viewed.actor_id.as_deref(), Some("viewer-7"));
    assert_eq!(viewed.actor_source.as_deref(), Some("jwt"));
    assert!(viewed.actor_verified);
    assert_eq!(
        viewed.path.as_deref(),
        Some("/dashboards/42"),
        "the stored path has no query"
    );
    assert_eq!(viewed.metadata["view"], "compact");
    assert_ne!(
        viewed.metadata["token"],
        token.as_str(),
        "the token parameter is redacted"
    );
    assert_eq!(
        entries[1].actor_id, None,
        "only the query parameter is read"
    );
    // Twice in the query: this source would read the first, PHP or Rails the last. Refused and
    // recorded, and the app never sees it.
    let before = upstream.count();
    let twice = client
        .get(&sidecar.url(&format!(
            "/dashboards/44?access_token={token}&access_token=someone-elses"
        )))
        .await;
    assert_eq!(twice.status, 400, "{}", twice.text());
    assert_eq!(
        upstream.count(),
        before,
        "the app saw a request with two tokens"
    );
    let entries = sidecar.wait_entries(3).await;
    let refused = &entries[2];
    assert_eq!(refused.status, Some(400));
    assert!(
        refused.error.as_deref().is_some_and(
            |error| error.contains("access_token (a credential) is given more than once")
        ),
        "{refused:?}"
    );
    let signature = token.rsplit('.').next().expect("a signature");
    assert_never_stored(&mut sidecar, "viewer-7", &[&token, signature]).await;
}

#[tokio::test]
async fn hs256_tokens_valid_expired_not_yet_valid_and_wrongly_signed() {
    let upstream = Upstream::start().await;
    let mut sidecar = TestSidecar::start(
        upstream.addr,
        &format!("{RECORD_ALL}\n[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"IT_IDENTITY_HS_1\"\nroles = \"realm_access.roles\"\ntenant = \"org\"\nleeway_seconds = 30\n"),
    )
    .await;
    let secret = "it-identity-hs-secret-1";
    let tokens = [
        hs256(
            secret,
            &json!({"sub": "u-valid", "email": "v@x.io", "exp": now() + 600, "org": "acme", "realm_access": {"roles": ["admin", "ops"]}}),
        ),
        hs256(secret, &json!({"sub": "u-expired", "exp": now() - 3600})),
        hs256(secret, &json!({"sub": "u-early", "nbf": now() + 3600})),
        hs256(secret, &json!({"sub": "u-leeway", "exp": now() - 5})),
        hs256(
            "not-the-secret",
            &json!({"sub": "u-forged", "exp": now() + 600}),
        ),
    ];
    for token in &tokens {
        get(&sidecar, "/who", &[("authorization", &bearer(token))]).await;
    }
    let entries = sidecar.wait_entries(tokens.len()).await;
    assert_eq!(actor(&entries[0]), (Some("u-valid"), Some("jwt"), true));
    assert_eq!(entries[0].actor_email.as_deref(), Some("v@x.io"));
    assert_eq!(entries[0].tenant.as_deref(), Some("acme"));
    assert_eq!(
        entries[0].metadata["_actor"]["roles"],
        json!(["admin", "ops"])
    );
    assert_eq!(actor(&entries[1]), (Some("u-expired"), Some("jwt"), false));
    assert_eq!(actor_notes(&entries[1]), ["jwt: token expired"]);
    assert_eq!(actor(&entries[2]), (Some("u-early"), Some("jwt"), false));
    assert_eq!(actor_notes(&entries[2]), ["jwt: token not yet valid (nbf)"]);
    assert_eq!(actor(&entries[3]), (Some("u-leeway"), Some("jwt"), true));
    assert_eq!(actor(&entries[4]), (Some("u-forged"), Some("jwt"), false));
    assert_eq!(actor_notes(&entries[4]), ["jwt: signature does not verify"]);

    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.push(secret);
    // The signature part alone must not be stored either.
    let signatures: Vec<&str> = tokens
        .iter()
        .filter_map(|token| token.rsplit('.').next())
        .collect();
    secrets.extend(signatures);
    assert_never_stored(&mut sidecar, "u-valid", &secrets).await;
}

#[tokio::test]
async fn rs256_and_es256_public_keys_with_issuer_and_audience() {
    let [rsa, other_rsa] = rsa_keys();
    let ec = p256_key("ec");
    let other_ec = p256_key("other");
    let upstream = Upstream::start().await;
    let rest = format!(
        "{RECORD_ALL}
[[actor]]
from = \"jwt\"
public_key_pem = '''
{}'''
issuer = \"https://idp.example\"
audience = [\"orders-api\"]

[[actor]]
from = \"jwt\"
header = \"x-es-token\"
public_key_pem = '''
{}'''
algorithms = [\"ES256\"]
",
        rsa.public_pem, ec.public_pem
    );
    let sidecar = TestSidecar::start(upstream.addr, &rest).await;
    let good = json!({"sub": "r-1", "iss": "https://idp.example", "aud": "orders-api", "exp": now() + 600});
    let wrong_issuer = json!({"sub": "r-2", "iss": "https://evil.example", "aud": "orders-api"});
    let wrong_audience = json!({"sub": "r-3", "iss": "https://idp.example", "aud": ["billing"]});
    let no_issuer = json!({"sub": "r-4", "aud": "orders-api"});
    let requests = [
        sign(Algorithm::RS256, None, &good, &rsa.signing),
        sign(Algorithm::RS256, None, &good, &other_rsa.signing),
        sign(Algorithm::RS256, None, &wrong_issuer, &rsa.signing),
        sign(Algorithm::RS256, None, &wrong_audience, &rsa.signing),
        sign(Algorithm::RS256, None, &no_issuer, &rsa.signing),
    ];
    for token in &requests {
        get(&sidecar, "/orders", &[("authorization", &bearer(token))]).await;
    }
    let es = json!({"sub": "e-1", "exp": now() + 600});
    for key in [&ec.signing, &other_ec.signing] {
        let token = sign(Algorithm::ES256, None, &es, key);
        get(&sidecar, "/orders", &[("x-es-token", &token)]).await;
    }
    let entries = sidecar.wait_entries(7).await;
    assert_eq!(actor(&entries[0]), (Some("r-1"), Some("jwt"), true));
    assert_eq!(actor_notes(&entries[0]), Vec::<String>::new());
    assert_eq!(actor_notes(&entries[1]), ["jwt: signature does not verify"]);
    assert_eq!(actor_notes(&entries[2]), ["jwt: issuer not accepted"]);
    assert_eq!(actor_notes(&entries[3]), ["jwt: audience not accepted"]);
    assert_eq!(
        actor_notes(&entries[4]),
        ["jwt: required claim iss is missing"]
    );
    for entry in &entries[1..5] {
        assert!(!entry.actor_verified, "{entry:?}");
    }
    assert_eq!(actor(&entries[5]), (Some("e-1"), Some("jwt"), true));
    assert_eq!(actor(&entries[6]), (Some("e-1"), Some("jwt"), false));
    assert_eq!(actor_notes(&entries[6]), ["jwt: signature does not verify"]);
}

#[tokio::test]
async fn jwks_file_with_two_keys_of_different_families() {
    let [rsa, _] = rsa_keys();
    let ec = p256_key("ec-1");
    let dir = TempDir::new("jwks");
    let jwks = dir.0.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [rsa.jwk, ec.jwk]}).to_string()).expect("write jwks");
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(
        upstream.addr,
        &format!(
            "{RECORD_ALL}\n[[actor]]\nfrom = \"jwt\"\njwks_file = {:?}\n",
            jwks.display()
        ),
    )
    .await;
    let claims = json!({"sub": "k", "exp": now() + 600});
    let tokens = [
        sign(Algorithm::RS256, Some("rsa-1"), &claims, &rsa.signing),
        sign(Algorithm::ES256, Some("ec-1"), &claims, &ec.signing),
        // A valid signature under the RSA key, presented with the EC key's kid.
        sign(Algorithm::RS256, Some("ec-1"), &claims, &rsa.signing),
        sign(Algorithm::ES256, Some("ec-9"), &claims, &ec.signing),
        sign(Algorithm::ES256, None, &claims, &ec.signing),
    ];
    for token in &tokens {
        get(&sidecar, "/k", &[("authorization", &bearer(token))]).await;
    }
    let entries = sidecar.wait_entries(tokens.len()).await;
    assert_eq!(actor(&entries[0]), (Some("k"), Some("jwt"), true));
    assert_eq!(actor(&entries[1]), (Some("k"), Some("jwt"), true));
    assert_eq!(
        actor_notes(&entries[2]),
        ["jwt: algorithm \"RS256\" is not accepted (pinned: ES256)"]
    );
    assert_eq!(
        actor_notes(&entries[3]),
        ["jwt: no key with kid \"ec-9\" in the key set"]
    );
    assert_eq!(
        actor_notes(&entries[4]),
        ["jwt: token has no kid and the key set holds 2 keys"]
    );
    for entry in &entries[2..] {
        assert!(!entry.actor_verified);
    }
}

#[tokio::test]
async fn alg_none_and_rs_hs_confusion_are_never_verified() {
    let [rsa, _] = rsa_keys();
    let upstream = Upstream::start().await;
    let rest = format!(
        "{RECORD_ALL}
[[actor]]
from = \"jwt\"
public_key_pem = '''
{pem}'''

[[actor]]
from = \"jwt\"
header = \"x-strict-token\"
public_key_pem = '''
{pem}'''
on_invalid = \"anonymous\"
",
        pem = rsa.public_pem
    );
    let sidecar = TestSidecar::start(upstream.addr, &rest).await;
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(br#"{"sub":"root","exp":99999999999}"#)
    );
    // The classic confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let confused = sign(
        Algorithm::HS256,
        None,
        &json!({"sub": "root"}),
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    );
    get(&sidecar, "/a", &[("authorization", &bearer(&none))]).await;
    get(&sidecar, "/b", &[("authorization", &bearer(&confused))]).await;
    get(&sidecar, "/c", &[("x-strict-token", &none)]).await;
    get(&sidecar, "/d", &[("x-strict-token", &confused)]).await;
    let entries = sidecar.wait_entries(4).await;
    assert_eq!(actor(&entries[0]), (Some("root"), Some("jwt"), false));
    assert_eq!(
        actor_notes(&entries[0]),
        ["jwt: algorithm none is not accepted"]
    );
    assert_eq!(actor(&entries[1]), (Some("root"), Some("jwt"), false));
    assert_eq!(
        actor_notes(&entries[1]),
        ["jwt: algorithm \"HS256\" is not accepted (pinned: RS256)"]
    );
    // on_invalid = "anonymous": no actor at all, but the reason is kept.
    assert_eq!(actor(&entries[2]), (None, None, false));
    assert_eq!(
        actor_notes(&entries[2]),
        ["jwt: algorithm none is not accepted"]
    );
    assert_eq!(actor(&entries[3]), (None, None, false));
    assert_eq!(
        actor_notes(&entries[3]),
        ["jwt: algorithm \"HS256\" is not accepted (pinned: RS256)"]
    );
}

#[tokio::test]
async fn truncated_non_base64_and_huge_tokens_pass_through_unharmed() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start(
        upstream.addr,
        &format!(
            "{RECORD_ALL}\n[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"IT_IDENTITY_HS_2\"\n"
        ),
    )
    .await;
    let token = hs256(
        "it-identity-hs-secret-2",
        &json!({"sub": "t", "exp": now() + 600}),
    );
    // The signature cut short at a base64 boundary (HS256 signatures are 43 characters).
    let truncated = &token[..token.len() - 3];
    let cut_to_two_parts = token.rsplit_once('.').expect("three parts").0;
    let huge = format!("eyJ{}", "A".repeat(100 * 1024));
    let values = [
        bearer(truncated),
        bearer(cut_to_two_parts),
        bearer("%%%%.@@@@.####"),
        bearer(&huge),
    ];
    for value in &values {
        let echo = get(&sidecar, "/echo", &[("authorization", value)]).await;
        // The app sees exactly what the client sent, however broken.
        assert_eq!(echo["headers"]["authorization"], json!(value));
    }
    let entries = sidecar.wait_entries(values.len()).await;
    assert_eq!(actor(&entries[0]), (Some("t"), Some("jwt"), false));
    assert_eq!(actor_notes(&entries[0]), ["jwt: signature does not verify"]);
    assert_eq!(actor(&entries[1]), (Some("t"), Some("jwt"), false));
    assert_eq!(
        actor_notes(&entries[1]),
        ["jwt: token is malformed (not three dot-separated parts)"]
    );
    assert_eq!(actor(&entries[2]), (None, None, false));
    assert_eq!(
        actor_notes(&entries[2]),
        ["jwt: token is malformed (header is not base64url JSON)"]
    );
    assert_eq!(actor(&entries[3]), (None, None, false));
    assert_eq!(
        actor_notes(&entries[3]),
        [format!(
            "jwt: token of {} bytes ignored (limit 16384)",
            huge.len()
        )]
    );
}

#[tokio::test]
async fn tokens_in_named_headers_and_cookies_and_verify_false() {
    let upstream = Upstream::start().await;
    let rest = format!(
        "{RECORD_ALL}
[[actor]]
from = \"jwt\"
header = \"x-pomerium-jwt-assertion\"
hs256_secret_env = \"IT_IDENTITY_HS_3\"
email = \"user.email\"

[[actor]]
from = \"jwt\"
cookie = \"session\"
hs256_secret_env = \"IT_IDENTITY_HS_3\"

[[actor]]
from = \"jwt\"
header = \"teleport-jwt-assertion\"
verify = false
id = \"username\"
"
    );
    let mut sidecar = TestSidecar::start(upstream.addr, &rest).await;
    let secret = "it-identity-hs-secret-3";
    let pomerium = hs256(secret, &json!({"sub": "p", "user": {"email": "p@x.io"}}));
    let session = hs256(secret, &json!({"sub": "c"}));
    let teleport = hs256("unknown-cluster-key", &json!({"username": "tele"}));
    get(&sidecar, "/1", &[("x-pomerium-jwt-assertion", &pomerium)]).await;
    let cookie = format!("theme=dark; session={session}; other=1");
    get(&sidecar, "/2", &[("cookie", &cookie)]).await;
    get(&sidecar, "/3", &[("teleport-jwt-assertion", &teleport)]).await;
    let entries = sidecar.wait_entries(3).await;
    assert_eq!(actor(&entries[0]), (Some("p"), Some("jwt"), true));
    assert_eq!(entries[0].actor_email.as_deref(), Some("p@x.io"));
    assert_eq!(actor(&entries[1]), (Some("c"), Some("jwt"), true));
    assert_eq!(actor(&entries[2]), (Some("tele"), Some("jwt"), false));
    assert_eq!(
        actor_notes(&entries[2]),
        ["jwt: signature not checked (verify = false)"]
    );
    assert_never_stored(
        &mut sidecar,
        "p@x.io",
        &[&pomerium, &session, &teleport, secret],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Auth-proxy headers, basic auth, API keys, body fields
// ---------------------------------------------------------------------------------------------

/// Two Authorization headers, or two X-Forwarded-User headers from a trusted proxy: the actor
/// source would read one and the app may read the other (apps take the first, the last, or both
/// joined), so no entry could name who the app acted for. The request is refused, recorded, and
/// never reaches the app. Sent once each, the same headers pass and name the actor; a groups
/// header is a list and may repeat.
#[tokio::test]
async fn a_credential_or_identity_header_sent_twice_is_refused_and_recorded() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start_with(
        upstream.addr,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!(
            "{RECORD_ALL}[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"IT_IDENTITY_HS_1\"\n\
             [[actor]]\nfrom = \"header\"\nid = \"x-forwarded-user\"\ngroups = \"x-forwarded-groups\"\n\
             [[rule]]\nmethod = \"DELETE\"\npath = \"/api/users/{{id}}\"\naction = \"user.deleted\"\n\
             resource = {{ type = \"user\", id = \"{{id}}\" }}\n"
        ),
    )
    .await;
    let token = |subject: &str| {
        bearer(&hs256(
            "it-identity-hs-secret-1",
            &json!({"sub": subject, "exp": now() + 600}),
        ))
    };
    let (alice, mallory) = (token("alice"), token("mallory"));
    let client = HttpClient::new();
    let delete = |headers: Vec<(&'static str, String)>| {
        let client = &client;
        let url = sidecar.url("/api/users/7");
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            client.send("DELETE", &url, &headers, "").await
        }
    };

    let once = delete(vec![("authorization", alice.clone())]).await;
    assert_eq!(once.status, 200, "{}", once.text());
    assert_eq!(upstream.count(), 1);
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].action, "user.deleted");
    assert_eq!(entries[0].resource_id.as_deref(), Some("7"));
    assert_eq!(actor(&entries[0]), (Some("alice"), Some("jwt"), true));

    let refusals = [
        (
            vec![("authorization", alice.clone()), ("authorization", mallory)],
            "header authorization",
        ),
        (
            vec![
                ("x-forwarded-user", "ann".to_string()),
                ("x-forwarded-user", "admin".to_string()),
            ],
            "header x-forwarded-user",
        ),
    ];
    for (index, (headers, named)) in refusals.into_iter().enumerate() {
        let reply = delete(headers).await;
        assert_eq!(reply.status, 400, "{named}: {}", reply.text());
        assert!(
            reply.text().contains("given more than once"),
            "{}",
            reply.text()
        );
        assert_eq!(
            upstream.count(),
            1,
            "the app saw a request with {named} twice"
        );
        let entries = sidecar.wait_entries(index + 2).await;
        let refused = &entries[index + 1];
        assert_eq!(refused.status, Some(400), "{named}");
        assert_eq!(refused.method.as_deref(), Some("DELETE"));
        assert_eq!(refused.action, "http.delete", "{named}");
        let error = refused.error.clone().unwrap_or_default();
        assert!(
            error.contains(&format!(
                "{named} (read by an actor source) is given more than once"
            )),
            "{error}"
        );
    }

    let groups = delete(vec![
        ("x-forwarded-user", "ann".to_string()),
        ("x-forwarded-groups", "ops".to_string()),
        ("x-forwarded-groups", "auditors".to_string()),
    ])
    .await;
    assert_eq!(groups.status, 200, "{}", groups.text());
    assert_eq!(upstream.count(), 2);
    let entries = sidecar.wait_entries(4).await;
    assert_eq!(actor(&entries[3]), (Some("ann"), Some("header"), true));
    assert_eq!(entries[3].action, "user.deleted");
    assert_eq!(
        entries[3].metadata["_actor"]["roles"],
        json!(["ops", "auditors"])
    );
}

const OAUTH2_PROXY_ACTORS: &str = "
[[actor]]
from = \"header\"
id = \"x-forwarded-user\"
email = \"x-forwarded-email\"
groups = \"x-forwarded-groups\"

[[actor]]
from = \"basic\"
";

#[tokio::test]
async fn identity_headers_from_an_untrusted_peer_are_a_spoof_attempt() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start_with(
        upstream.addr,
        "trusted_proxies = [\"10.0.0.0/8\"]",
        &format!("{RECORD_ALL}{OAUTH2_PROXY_ACTORS}"),
    )
    .await;
    let spoof = [
        ("x-forwarded-user", "admin"),
        ("x-forwarded-email", "admin@corp.example"),
        ("x-forwarded-for", "10.9.9.9"),
    ];
    get(&sidecar, "/s", &spoof).await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("mallory:pw-mallory")
    );
    let mut with_basic = spoof.to_vec();
    with_basic.push(("authorization", &basic));
    get(&sidecar, "/s", &with_basic).await;
    let entries = sidecar.wait_entries(2).await;
    let spoof_note = "header: ignored x-forwarded-email, x-forwarded-user from a peer that is not a trusted proxy (spoof attempt)";
    assert_eq!(actor(&entries[0]), (None, None, false));
    assert_eq!(actor_notes(&entries[0]), [spoof_note]);
    assert_eq!(entries[0].ip.as_deref(), Some("127.0.0.1"));
    // The next source still yields, and the spoof is still on record.
    assert_eq!(actor(&entries[1]), (Some("mallory"), Some("basic"), false));
    assert_eq!(actor_notes(&entries[1]), [spoof_note]);
}

/// The oauth2-proxy header actor with `strip_untrusted` set as given.
fn stripping_actor(strip: bool) -> String {
    format!(
        "\n[[actor]]\nfrom = \"header\"\nid = \"x-forwarded-user\"\nemail = \"x-forwarded-email\"\n\
         groups = \"x-forwarded-groups\"\nstrip_untrusted = {strip}\n"
    )
}

/// The request headers the app received, from the test app's echo.
fn app_saw<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"][name].as_str()
}

const IDENTITY: [(&str, &str); 4] = [
    ("x-forwarded-user", "admin"),
    ("x-forwarded-email", "admin@corp.example"),
    ("x-forwarded-groups", "admins"),
    ("x-unrelated", "kept"),
];

#[tokio::test]
async fn spoofed_identity_headers_are_removed_before_the_app_when_asked() {
    let upstream = Upstream::start().await;
    let untrusted = "trusted_proxies = [\"10.0.0.0/8\"]";
    let sidecar = TestSidecar::start_with(
        upstream.addr,
        untrusted,
        &format!("{RECORD_ALL}{}", stripping_actor(true)),
    )
    .await;
    let echo = get(&sidecar, "/s", &IDENTITY).await;
    for name in [
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
    ] {
        assert_eq!(app_saw(&echo, name), None, "{name} reached the app: {echo}");
    }
    assert_eq!(app_saw(&echo, "x-unrelated"), Some("kept"));
    assert_eq!(app_saw(&echo, "x-forwarded-for"), Some("127.0.0.1"));
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(actor(&entries[0]), (None, None, false));
    assert_eq!(
        actor_notes(&entries[0]),
        ["header: ignored x-forwarded-email, x-forwarded-groups, x-forwarded-user from a peer that is not a trusted proxy (spoof attempt); removed before forwarding"]
    );

    // A request no rule records is cleaned all the same: the app's safety does not depend on
    // what is audited.
    let quiet = TestSidecar::start_with(
        upstream.addr,
        untrusted,
        &format!("[unmatched]\nrecord = \"none\"\n{}", stripping_actor(true)),
    )
    .await;
    let echo = get(&quiet, "/quiet", &IDENTITY).await;
    assert_eq!(app_saw(&echo, "x-forwarded-user"), None, "{echo}");
    assert_eq!(app_saw(&echo, "x-unrelated"), Some("kept"));
    assert!(quiet.entries().await.is_empty());
}

/// What an app behind CGI, WSGI or PHP reads from the headers it received: each name upper-cased
/// with `-` folded into `_` and prefixed `HTTP_`, so `X-Forwarded-User` and `X_Forwarded_User`
/// both become `HTTP_X_FORWARDED_USER`. Every value of a folded name is kept, since which one
/// the app ends up with depends on the server.
fn cgi_environment(headers: &http::HeaderMap) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut environment = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (name, value) in headers {
        let key = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        environment
            .entry(key)
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    environment
}

/// The CGI environment of the last request the test app received.
fn last_cgi_environment(upstream: &Upstream) -> std::collections::BTreeMap<String, Vec<String>> {
    let seen = upstream.seen.lock().expect("seen");
    let (_, _, headers) = seen.last().expect("the app saw a request");
    cgi_environment(headers)
}

#[tokio::test]
async fn underscore_spellings_never_reach_an_app_that_folds_them() {
    let upstream = Upstream::start().await;
    let spoofed = [
        ("X_Forwarded_User", "admin"),
        ("x-forwarded_email", "admin@corp.example"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("x_real_ip", "6.6.6.6"),
        ("X_Forwarded_Host", "evil.example"),
    ];
    // An untrusted peer with a stripping actor: no spelling of the identity or forwarding
    // headers survives, and the attempt is on record.
    let untrusted = TestSidecar::start_with(
        upstream.addr,
        "trusted_proxies = [\"10.0.0.0/8\"]",
        &format!("{RECORD_ALL}{}", stripping_actor(true)),
    )
    .await;
    get(&untrusted, "/u", &spoofed).await;
    let environment = last_cgi_environment(&upstream);
    for name in [
        "HTTP_X_FORWARDED_USER",
        "HTTP_X_FORWARDED_EMAIL",
        "HTTP_X_REAL_IP",
        "HTTP_X_FORWARDED_HOST",
    ] {
        assert_eq!(environment.get(name), None, "{name}: {environment:?}");
    }
    assert_eq!(
        environment.get("HTTP_X_FORWARDED_FOR"),
        Some(&vec!["127.0.0.1".to_string()])
    );
    let entries = untrusted.wait_entries(1).await;
    assert_eq!(actor(&entries[0]), (None, None, false));
    assert_eq!(entries[0].ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        actor_notes(&entries[0]),
        ["header: removed x_forwarded_user (read by some apps as x-forwarded-user), x-forwarded_email (read by some apps as x-forwarded-email) before forwarding: only the configured spelling is read (spoof attempt)"]
    );

    // From a trusted proxy only the dashed spelling is believed, and it is the only one the app
    // can read: the underscore spelling a client slipped past the proxy is removed.
    let trusted = TestSidecar::start_with(
        upstream.addr,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!("{RECORD_ALL}{}", stripping_actor(false)),
    )
    .await;
    get(
        &trusted,
        "/t",
        &[
            ("x-forwarded-user", "ann"),
            ("X_Forwarded_User", "admin"),
            ("x-forwarded-for", "198.51.100.20"),
            ("X_Forwarded_For", "6.6.6.6"),
        ],
    )
    .await;
    let environment = last_cgi_environment(&upstream);
    assert_eq!(
        environment.get("HTTP_X_FORWARDED_USER"),
        Some(&vec!["ann".to_string()])
    );
    assert_eq!(
        environment.get("HTTP_X_FORWARDED_FOR"),
        Some(&vec!["198.51.100.20, 127.0.0.1".to_string()])
    );
    let entries = trusted.wait_entries(1).await;
    assert_eq!(actor(&entries[0]), (Some("ann"), Some("header"), true));
    assert_eq!(entries[0].ip.as_deref(), Some("198.51.100.20"));
    assert_eq!(
        actor_notes(&entries[0]).len(),
        1,
        "{:?}",
        actor_notes(&entries[0])
    );
}

#[tokio::test]
async fn identity_headers_reach_the_app_from_a_trusted_proxy_or_when_not_asked_to_strip() {
    let upstream = Upstream::start().await;
    // From a trusted proxy the headers are believed and forwarded unchanged, strip or not.
    let trusted = TestSidecar::start_with(
        upstream.addr,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!("{RECORD_ALL}{}", stripping_actor(true)),
    )
    .await;
    let echo = get(&trusted, "/t", &IDENTITY).await;
    for (name, value) in IDENTITY {
        assert_eq!(app_saw(&echo, name), Some(value), "{name}");
    }
    let entries = trusted.wait_entries(1).await;
    assert_eq!(actor(&entries[0]), (Some("admin"), Some("header"), true));
    assert_eq!(actor_notes(&entries[0]), Vec::<String>::new());

    // Without strip_untrusted an untrusted peer's headers still reach the app, as before; only
    // the audit ignores them.
    let plain = TestSidecar::start_with(
        upstream.addr,
        "trusted_proxies = [\"10.0.0.0/8\"]",
        &format!("{RECORD_ALL}{}", stripping_actor(false)),
    )
    .await;
    let echo = get(&plain, "/p", &IDENTITY).await;
    for (name, value) in IDENTITY {
        assert_eq!(app_saw(&echo, name), Some(value), "{name}");
    }
    let entries = plain.wait_entries(1).await;
    assert_eq!(actor(&entries[0]), (None, None, false));
    assert_eq!(
        actor_notes(&entries[0]),
        ["header: ignored x-forwarded-email, x-forwarded-groups, x-forwarded-user from a peer that is not a trusted proxy (spoof attempt)"]
    );
}

#[tokio::test]
async fn identity_headers_from_a_trusted_proxy_are_believed() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start_with(
        upstream.addr,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!("{RECORD_ALL}{OAUTH2_PROXY_ACTORS}"),
    )
    .await;
    get(
        &sidecar,
        "/t",
        &[
            ("x-forwarded-user", "8a1f"),
            ("x-forwarded-email", "ann@corp.example"),
            ("x-forwarded-groups", "admins, ops"),
            ("x-forwarded-for", "198.51.100.20"),
        ],
    )
    .await;
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(actor(&entries[0]), (Some("8a1f"), Some("header"), true));
    assert_eq!(entries[0].actor_email.as_deref(), Some("ann@corp.example"));
    assert_eq!(
        entries[0].metadata["_actor"]["roles"],
        json!(["admins", "ops"])
    );
    assert_eq!(entries[0].ip.as_deref(), Some("198.51.100.20"));
    assert_eq!(actor_notes(&entries[0]), Vec::<String>::new());
}

#[tokio::test]
async fn basic_auth_records_the_user_name_and_never_the_password() {
    let upstream = Upstream::start().await;
    let rest = "
[[actor]]
from = \"basic\"

[[rule]]
name = \"admin\"
path = \"/admin/{*rest}\"
action = \"admin.{rest}\"
metadata = { credentials = \"request.header:authorization\", via = \"{request.header:authorization} at {rest}\" }
";
    let mut sidecar = TestSidecar::start(upstream.addr, rest).await;
    let encoded = base64::engine::general_purpose::STANDARD.encode("alice:hunter2-Secret");
    let authorization = format!("Basic {encoded}");
    let echo = get(
        &sidecar,
        "/admin/reports",
        &[("authorization", &authorization)],
    )
    .await;
    assert_eq!(echo["headers"]["authorization"], json!(authorization));
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(actor(&entries[0]), (Some("alice"), Some("basic"), false));
    assert_eq!(entries[0].metadata["credentials"], json!("[redacted]"));
    assert_eq!(entries[0].metadata["via"], json!("[redacted] at reports"));
    assert_never_stored(&mut sidecar, "alice", &["hunter2-Secret", &encoded]).await;
}

#[tokio::test]
async fn api_keys_are_recorded_by_name_or_keyed_hash_never_the_key() {
    let known = "sk_live_known_key_0001";
    let partner = "pk_partner_key_0002";
    let unknown = "sk_live_unknown_key_0003";
    let upstream = Upstream::start().await;
    let rest = format!(
        "{RECORD_ALL}
[[actor]]
from = \"api_key\"
header = \"x-api-key\"
keys = [{{ name = \"ci-deploy\", sha256 = \"{}\" }}]
hmac_key_env = \"IT_IDENTITY_KEY_HMAC\"

[[actor]]
from = \"api_key\"
query = \"api_key\"
keys = [{{ name = \"partner\", sha256 = \"{}\" }}]

[[rule]]
name = \"keyed\"
path = \"/keyed\"
action = \"keyed\"
metadata = {{ header = \"request.header:x-api-key\", query = \"query:api_key\", page = \"query:page\" }}
",
        sha256_hex(known),
        sha256_hex(partner),
    );
    let mut sidecar = TestSidecar::start(upstream.addr, &rest).await;
    let echo = get(&sidecar, "/keyed", &[("x-api-key", known)]).await;
    assert_eq!(echo["headers"]["x-api-key"], json!(known));
    get(&sidecar, "/keyed", &[("x-api-key", unknown)]).await;
    let echo = get(&sidecar, &format!("/keyed?page=2&api_key={partner}"), &[]).await;
    assert_eq!(echo["query"], json!(format!("page=2&api_key={partner}")));
    let entries = sidecar.wait_entries(3).await;
    assert_eq!(
        actor(&entries[0]),
        (Some("ci-deploy"), Some("api_key"), true)
    );
    assert_eq!(entries[0].metadata["header"], json!("[redacted]"));
    let mut mac =
        Hmac::<Sha256>::new_from_slice(b"it-identity-api-key-hmac-secret").expect("hmac key");
    mac.update(unknown.as_bytes());
    let label = format!("key:{}", &hex::encode(mac.finalize().into_bytes())[..8]);
    assert_eq!(
        actor(&entries[1]),
        (Some(label.as_str()), Some("api_key"), false)
    );
    assert_eq!(
        actor_notes(&entries[1]),
        ["api_key: key is not one of the configured keys"]
    );
    assert_eq!(actor(&entries[2]), (Some("partner"), Some("api_key"), true));
    assert_eq!(entries[2].metadata["query"], json!("[redacted]"));
    assert_eq!(entries[2].metadata["page"], json!("2"));
    assert_eq!(entries[2].path.as_deref(), Some("/keyed"));
    assert_never_stored(&mut sidecar, "ci-deploy", &[known, partner, unknown]).await;
}

#[tokio::test]
async fn a_failed_login_records_the_attempted_login_from_the_body() {
    let upstream = Upstream::start().await;
    let rest = "
[[actor]]
from = \"jwt\"
hs256_secret_env = \"IT_IDENTITY_HS_4\"

[[actor]]
from = \"body\"
email = \"/email\"
paths = [\"/status/{code}\"]

[[rule]]
name = \"failed login\"
method = \"POST\"
path = \"/status/{code}\"
status = \"4xx\"
action = \"auth.login_failed\"
metadata = { password = \"request.body:/password\", form = \"request.body:/form\" }
";
    let mut sidecar = TestSidecar::start(upstream.addr, rest).await;
    let body = json!({
        "email": "eve@x.io",
        "password": "pw-Tr0ub4dor",
        "form": {"remember": true, "newPassword": "pw-n3w-one", "otp": {"api_key": "otp-key-778899"}},
    })
    .to_string();
    let client = HttpClient::new();
    let reply = client
        .send(
            "POST",
            &sidecar.url("/status/401"),
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, 401);
    // A signed-in user trying the same: the token comes first in the chain and wins.
    let token = hs256("it-identity-hs-secret-4", &json!({"sub": "signed-in"}));
    let reply = client
        .send(
            "POST",
            &sidecar.url("/status/403"),
            &[
                ("content-type", "application/json"),
                ("authorization", &bearer(&token)),
            ],
            body,
        )
        .await;
    assert_eq!(reply.status, 403);
    let entries = sidecar.wait_entries(2).await;
    assert_eq!(entries[0].action, "auth.login_failed");
    assert_eq!(entries[0].actor_email.as_deref(), Some("eve@x.io"));
    assert_eq!(entries[0].actor_source.as_deref(), Some("body"));
    assert!(!entries[0].actor_verified);
    assert_eq!(entries[0].metadata["password"], json!("[redacted]"));
    assert_eq!(
        entries[0].metadata["form"],
        json!({"remember": true, "newPassword": "[redacted]", "otp": {"api_key": "[redacted]"}})
    );
    assert_eq!(actor(&entries[1]), (Some("signed-in"), Some("jwt"), true));
    assert_never_stored(
        &mut sidecar,
        "eve@x.io",
        &["pw-Tr0ub4dor", "pw-n3w-one", "otp-key-778899"],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Client IP
// ---------------------------------------------------------------------------------------------

/// Request headers, the client address the entry must record, and the forwarding header the app
/// must receive.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);

#[tokio::test]
async fn forwarded_for_chains_are_walked_past_trusted_hops_only() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start_with(
        upstream.addr,
        "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]",
        RECORD_ALL,
    )
    .await;
    let cases: [Case; 6] = [
        // The client forged the left-most entries; the edge proxy appended the real client.
        (
            &[
                ("x-forwarded-for", "6.6.6.6, 1.1.1.1"),
                ("x-forwarded-for", "198.51.100.7, 10.0.0.2"),
            ],
            "198.51.100.7",
            "198.51.100.7, 10.0.0.2, 127.0.0.1",
        ),
        (
            &[("x-forwarded-for", "198.51.100.1, not-an-ip, 10.0.0.3")],
            "10.0.0.3",
            "10.0.0.3, 127.0.0.1",
        ),
        (
            &[("x-forwarded-for", "198.51.100.8:5555")],
            "198.51.100.8",
            "198.51.100.8, 127.0.0.1",
        ),
        (
            &[("x-forwarded-for", "::ffff:198.51.100.9, ::ffff:10.0.0.4")],
            "198.51.100.9",
            "198.51.100.9, 10.0.0.4, 127.0.0.1",
        ),
        (
            &[("x-forwarded-for", "[2001:db8::1]:443")],
            "2001:db8::1",
            "2001:db8::1, 127.0.0.1",
        ),
        (&[], "127.0.0.1", "127.0.0.1"),
    ];
    for (headers, _, forwarded) in &cases {
        let echo = get(&sidecar, "/ip", headers).await;
        assert_eq!(
            echo["headers"]["x-forwarded-for"],
            json!(forwarded),
            "{headers:?}"
        );
    }
    let entries = sidecar.wait_entries(cases.len()).await;
    for (entry, (headers, ip, _)) in entries.iter().zip(&cases) {
        assert_eq!(entry.ip.as_deref(), Some(*ip), "{headers:?}");
    }
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start_with(
        upstream.addr,
        "trusted_proxies = [\"10.0.0.0/8\"]",
        RECORD_ALL,
    )
    .await;
    let echo = get(
        &sidecar,
        "/ip",
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(echo["headers"]["x-forwarded-for"], json!("127.0.0.1"));
    assert_eq!(echo["headers"]["forwarded"], json!("for=127.0.0.1"));
    assert_eq!(echo["headers"]["x-forwarded-proto"], json!("http"));
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].ip.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn forwarded_header_forms() {
    let upstream = Upstream::start().await;
    let sidecar = TestSidecar::start_with(
        upstream.addr,
        "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]",
        RECORD_ALL,
    )
    .await;
    let cases: [Case; 5] = [
        (
            &[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")],
            "192.0.2.60",
            "for=192.0.2.60;proto=http;by=203.0.113.43, for=127.0.0.1",
        ),
        (
            &[("forwarded", "For=\"[2001:db8:cafe::17]:4711\"")],
            "2001:db8:cafe::17",
            "For=\"[2001:db8:cafe::17]:4711\", for=127.0.0.1",
        ),
        // Two headers, a spoofed element on the left, a trusted hop on the right.
        (
            &[
                ("forwarded", "for=6.6.6.6, for=198.51.100.30"),
                ("forwarded", "for=10.0.0.7;proto=https"),
            ],
            "198.51.100.30",
            "for=198.51.100.30, for=10.0.0.7;proto=https, for=127.0.0.1",
        ),
        // An obfuscated node cannot be believed past: the walk stops at the peer.
        (
            &[
                ("forwarded", "for=unknown"),
                ("x-forwarded-for", "198.51.100.31"),
            ],
            "127.0.0.1",
            "for=127.0.0.1",
        ),
        (
            &[("forwarded", "for=\"_hidden\", for=10.0.0.8")],
            "10.0.0.8",
            "for=10.0.0.8, for=127.0.0.1",
        ),
    ];
    for (headers, _, forwarded) in &cases {
        let echo = get(&sidecar, "/fwd", headers).await;
        assert_eq!(
            echo["headers"]["forwarded"],
            json!(forwarded),
            "{headers:?}"
        );
    }
    let entries = sidecar.wait_entries(cases.len()).await;
    for (entry, (headers, ip, _)) in entries.iter().zip(&cases) {
        assert_eq!(entry.ip.as_deref(), Some(*ip), "{headers:?}");
    }
}

/// A sidecar listening on the IPv6 loopback.
async fn ipv6_sidecar(upstream: std::net::SocketAddr, trusted: &str, rest: &str) -> TestSidecar {
    let sidecar = TestSidecar::start_config(|db| {
        config_text(upstream, db, &format!("trusted_proxies = {trusted}"), rest).replace(
            "listen = \"127.0.0.1:0\"\nupstream",
            "listen = \"[::1]:0\"\nupstream",
        )
    })
    .await;
    assert!(sidecar.proxy.is_ipv6());
    sidecar
}

#[tokio::test]
async fn ipv6_peers_and_ipv6_trusted_networks() {
    let upstream = Upstream::start().await;
    let rest = format!("{RECORD_ALL}{OAUTH2_PROXY_ACTORS}");
    let trusted = ipv6_sidecar(upstream.addr, "[\"::1/128\", \"fd00::/8\"]", &rest).await;
    let headers = [
        ("x-forwarded-for", "2001:db8::66, 2001:db8::5, fd00::2"),
        ("x-forwarded-user", "v6-user"),
    ];
    let echo = get(&trusted, "/v6", &headers).await;
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        json!("2001:db8::5, fd00::2, ::1")
    );
    let entries = trusted.wait_entries(1).await;
    assert_eq!(entries[0].ip.as_deref(), Some("2001:db8::5"));
    assert_eq!(actor(&entries[0]), (Some("v6-user"), Some("header"), true));

    let untrusted = ipv6_sidecar(upstream.addr, "[\"fd00::/8\"]", &rest).await;
    let echo = get(&untrusted, "/v6", &headers).await;
    assert_eq!(echo["headers"]["x-forwarded-for"], json!("::1"));
    let entries = untrusted.wait_entries(1).await;
    assert_eq!(entries[0].ip.as_deref(), Some("::1"));
    assert_eq!(actor(&entries[0]), (None, None, false));
    assert!(actor_notes(&entries[0])[0].contains("spoof attempt"));
}

// ---------------------------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------------------------

const PROFILE_RULE: &str = "
[[rule]]
name = \"profile\"
method = \"POST\"
path = \"/profile\"
action = \"profile.updated\"
resource = { type = \"user\", id = \"request.body:/profile/id\" }
metadata = { profile = \"request.body:/profile\", ssn = \"request.body:/profile/ssn\", session = \"request.header:x-session\", auth = \"request.header:authorization\", cookie = \"request.header:cookie\", token = \"query:token\", email = \"request.body:/profile/email\" }
";

async fn post_profile(sidecar: &TestSidecar, ssn: &str) {
    let body = json!({
        "profile": {
            "id": "u-42",
            "name": "Ann",
            "email": "ann@x.io",
            "ssn": ssn,
            "password": "pw-Correct-Horse",
            "settings": {"token": "tok-settings-5566", "theme": "dark"},
        }
    });
    let reply = HttpClient::new()
        .send(
            "POST",
            &sidecar.url("/profile?token=tok-query-1122&page=1"),
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer tok-bearer-3344"),
                ("cookie", "sid=cookie-sid-7788"),
                ("x-session", "session-9900"),
            ],
            body.to_string(),
        )
        .await;
    assert_eq!(reply.status, 200);
}

const PROFILE_SECRETS: [&str; 7] = [
    "pw-Correct-Horse",
    "tok-settings-5566",
    "tok-query-1122",
    "tok-bearer-3344",
    "cookie-sid-7788",
    "session-9900",
    "123-45-6789",
];

#[tokio::test]
async fn redaction_in_mask_mode() {
    let upstream = Upstream::start().await;
    let rest = format!(
        "[redact]\nfields = [\"ssn\", \"token\", \"X-Session\"]\nmode = \"mask\"\n{PROFILE_RULE}"
    );
    let mut sidecar = TestSidecar::start(upstream.addr, &rest).await;
    post_profile(&sidecar, "123-45-6789").await;
    let entries = sidecar.wait_entries(1).await;
    assert_eq!(entries[0].resource_id.as_deref(), Some("u-42"));
    let expected = json!({
        "profile": {
            "id": "u-42", "name": "Ann", "email": "ann@x.io", "ssn": "[redacted]",
            "password": "[redacted]", "settings": {"token": "[redacted]", "theme": "dark"},
        },
        "ssn": "[redacted]",
        "session": "[redacted]",
        "auth": "[redacted]",
        "cookie": "[redacted]",
        "token": "[redacted]",
        "email": "ann@x.io",
    });
    assert_eq!(Value::Object(entries[0].metadata.clone()), expected);
    assert_never_stored(&mut sidecar, "u-42", &PROFILE_SECRETS).await;
}

#[tokio::test]
async fn redaction_in_hmac_mode_keeps_equal_values_searchable() {
    let key = "it-identity-redact-hmac-key";
    let upstream = Upstream::start().await;
    let rest = format!(
        "[redact]\nfields = [\"ssn\", \"email\", \"token\", \"x-session\"]\nmode = \"hmac\"\nhmac_key_env = \"IT_IDENTITY_REDACT_KEY\"\n{PROFILE_RULE}"
    );
    let mut sidecar = TestSidecar::start(upstream.addr, &rest).await;
    post_profile(&sidecar, "123-45-6789").await;
    post_profile(&sidecar, "123-45-6789").await;
    post_profile(&sidecar, "987-65-4321").await;
    let entries = sidecar.wait_entries(3).await;
    let hmac = |value: &str| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("key");
        mac.update(value.as_bytes());
        json!(format!(
            "hmac-sha256:{}",
            hex::encode(mac.finalize().into_bytes())
        ))
    };
    let metadata = &entries[0].metadata;
    assert_eq!(metadata["ssn"], hmac("123-45-6789"));
    assert_eq!(metadata["profile"]["ssn"], hmac("123-45-6789"));
    assert_eq!(metadata["email"], hmac("ann@x.io"));
    assert_eq!(metadata["session"], hmac("session-9900"));
    assert_eq!(
        metadata["profile"]["settings"]["token"],
        hmac("tok-settings-5566")
    );
    // Secrets are masked in every mode: a hash of a password or a credential can be guessed at.
    assert_eq!(metadata["profile"]["password"], json!("[redacted]"));
    assert_eq!(metadata["auth"], json!("[redacted]"));
    assert_eq!(metadata["cookie"], json!("[redacted]"));
    assert_eq!(metadata["profile"]["name"], json!("Ann"));
    assert_eq!(entries[1].metadata["ssn"], metadata["ssn"]);
    assert_ne!(entries[2].metadata["ssn"], metadata["ssn"]);
    let mut secrets = PROFILE_SECRETS.to_vec();
    secrets.extend(["987-65-4321", "ann@x.io", key]);
    assert_never_stored(&mut sidecar, "hmac-sha256:", &secrets).await;
}

// ---------------------------------------------------------------------------------------------
// explain, example configs
// ---------------------------------------------------------------------------------------------

fn explain(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .arg("explain")
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("auditgate runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("explain prints JSON")
}

#[tokio::test]
async fn explain_shows_the_actor_and_how_it_was_derived() {
    let dir = TempDir::new("explain");
    let config = dir.0.join("auditgate.toml");
    let db = dir.0.join("audit.db");
    let upstream: std::net::SocketAddr = "127.0.0.1:3000".parse().expect("addr");
    let rest = format!(
        "{RECORD_ALL}\n[[actor]]\nfrom = \"jwt\"\nhs256_secret_env = \"IT_EXPLAIN_SECRET\"\n{OAUTH2_PROXY_ACTORS}"
    );
    std::fs::write(
        &config,
        config_text(upstream, &db, "trusted_proxies = [\"10.0.0.5\"]", &rest),
    )
    .expect("write config");
    let secret = "it-explain-secret";
    let env = [("IT_EXPLAIN_SECRET", secret)];
    let token = hs256(
        secret,
        &json!({"sub": "u-7", "email": "u7@x.io", "exp": now() + 600}),
    );
    let header = format!("Authorization: Bearer {token}");
    let shown = explain(&config, &env, &["GET", "/api/things", "-H", &header]);
    assert_eq!(shown["actor"]["id"], json!("u-7"));
    assert_eq!(shown["actor"]["source"], json!("jwt"));
    assert_eq!(shown["actor"]["verified"], json!(true));
    assert_eq!(
        shown["actor"]["derivation"],
        json!(["actor #1 (jwt): token from header authorization verified (HS256); claims sub -> id, email -> email"])
    );
    assert_eq!(shown["entry"]["actorSource"], json!("jwt"));
    assert!(
        !shown.to_string().contains(&token),
        "explain never prints the token"
    );

    // A forged token falls through to the auth-proxy headers, which a non-proxy peer cannot set.
    let forged = hs256("guess", &json!({"sub": "root"}));
    let forged_header = format!("Authorization: Bearer {forged}");
    let args = [
        "DELETE",
        "/api/things/1",
        "-H",
        &forged_header,
        "-H",
        "X-Forwarded-User: admin",
        "--peer",
        "203.0.113.9",
    ];
    let shown = explain(&config, &env, &args);
    assert_eq!(shown["actor"]["id"], json!("root"));
    assert_eq!(shown["actor"]["verified"], json!(false));
    assert_eq!(
        shown["actor"]["notes"],
        json!(["jwt: signature does not verify"])
    );
    let derivation = shown["actor"]["derivation"].to_string();
    assert!(
        derivation.contains("recorded as unverified"),
        "{derivation}"
    );
    assert_eq!(shown["client"]["ip"], json!("203.0.113.9"));

    let args = [
        "GET",
        "/x",
        "-H",
        "X-Forwarded-User: admin",
        "-H",
        "X-Forwarded-For: 198.51.100.4",
        "--peer",
        "10.0.0.5",
    ];
    let shown = explain(&config, &env, &args);
    assert_eq!(shown["actor"]["source"], json!("header"));
    assert_eq!(shown["actor"]["verified"], json!(true));
    assert_eq!(shown["client"]["ip"], json!("198.51.100.4"));
    assert_eq!(shown["client"]["peerTrusted"], json!(true));
    assert_eq!(shown["upstream"]["removedHeaders"], json!([]));
}

#[test]
fn explain_shows_which_identity_headers_the_app_would_not_see() {
    let dir = TempDir::new("explain-strip");
    let config = dir.0.join("auditgate.toml");
    let upstream: std::net::SocketAddr = "127.0.0.1:3000".parse().expect("addr");
    std::fs::write(
        &config,
        config_text(
            upstream,
            &dir.0.join("audit.db"),
            "trusted_proxies = [\"10.0.0.5\"]",
            &format!("{RECORD_ALL}{}", stripping_actor(true)),
        ),
    )
    .expect("write config");
    let spoof = [
        "GET",
        "/x",
        "-H",
        "X-Forwarded-User: admin",
        "-H",
        "X-Forwarded-Groups: admins",
        "--peer",
        "203.0.113.9",
    ];
    let shown = explain(&config, &[], &spoof);
    assert_eq!(
        shown["upstream"]["removedHeaders"],
        json!(["x-forwarded-user", "x-forwarded-groups"])
    );
    assert_eq!(
        shown["actor"]["notes"],
        json!(["header: ignored x-forwarded-groups, x-forwarded-user from a peer that is not a trusted proxy (spoof attempt); removed before forwarding"])
    );
    let derivation = shown["actor"]["derivation"].to_string();
    assert!(
        derivation.contains("removed before forwarding"),
        "{derivation}"
    );
    // From the trusted proxy nothing is removed.
    let mut trusted = spoof;
    trusted[7] = "10.0.0.5";
    let shown = explain(&config, &[], &trusted);
    assert_eq!(shown["upstream"]["removedHeaders"], json!([]));
    assert_eq!(shown["actor"]["id"], json!("admin"));
}

// ---------------------------------------------------------------------------------------------
// Secrets in every place an entry goes
// ---------------------------------------------------------------------------------------------

/// Which of `secrets` occur in `bytes`, verbatim.
fn secrets_in<'a>(bytes: &[u8], secrets: &[&'a str]) -> Vec<&'a str> {
    secrets
        .iter()
        .copied()
        .filter(|secret| {
            bytes
                .windows(secret.len())
                .any(|window| window == secret.as_bytes())
        })
        .collect()
}

/// Redaction holds beyond the database: the spill file, the `[stream]` NDJSON file, and every
/// export format, from the admin API and from the CLI, carry no secret that was sent. Each of
/// them does carry the entry (its resource id), so a scan of an empty or unrelated file cannot
/// pass for a clean one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_spill_file_the_stream_or_any_export() {
    // The scanner's positive control: a secret planted in some text is found.
    let planted = format!("{{\"note\":\"{}\"}}", PROFILE_SECRETS[3]);
    assert_eq!(
        secrets_in(planted.as_bytes(), &PROFILE_SECRETS),
        vec![PROFILE_SECRETS[3]]
    );

    let upstream = Upstream::start().await;
    let out = TempDir::new("secrets-out");
    let stream = out.0.join("audit.ndjson");
    let rest = format!(
        "[redact]\nfields = [\"ssn\", \"token\", \"X-Session\"]\nmode = \"mask\"\n[stream]\nndjson = \"{}\"\n{PROFILE_RULE}",
        stream.display()
    );
    let mut sidecar = TestSidecar::start_with_store(
        upstream.addr,
        "flush_interval = \"1ms\"\nbusy_timeout = \"50ms\"",
        &rest,
    )
    .await;
    post_profile(&sidecar, "123-45-6789").await;
    sidecar.wait_entries(1).await;

    let mut artifacts: Vec<(String, Vec<u8>)> = Vec::new();
    let client = HttpClient::new();
    for format in ["csv", "json", "ndjson"] {
        let reply = client
            .get_admin(&format!(
                "http://{}/api/v1/export?format={format}",
                sidecar.admin
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        artifacts.push((format!("API export ({format})"), reply.body.to_vec()));
        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
            .args(["export", "--format", format, "--db"])
            .arg(&sidecar.db)
            .output()
            .expect("auditgate export runs");
        assert!(
            cli.status.success(),
            "{}",
            String::from_utf8_lossy(&cli.stderr)
        );
        artifacts.push((format!("CLI export ({format})"), cli.stdout));
    }

    // The store refuses writes (another connection holds its lock): the next entry is spilled.
    let lock = rusqlite::Connection::open(&sidecar.db).expect("open");
    lock.execute_batch("BEGIN IMMEDIATE").expect("lock");
    post_profile(&sidecar, "123-45-6789").await;
    let writer = sidecar.writer();
    assert!(
        crate::support::eventually(Duration::from_secs(20), async || writer
            .stats()
            .entries_spilled
            .get()
            >= 1)
        .await,
        "the entry was not spilled"
    );
    let spill = sidecar.dir.0.join("audit.db.spill.ndjson");
    artifacts.push((
        "spill file".to_string(),
        std::fs::read(&spill).expect("spill file"),
    ));
    drop(lock);
    sidecar.stop().await;
    artifacts.push((
        "[stream] file".to_string(),
        std::fs::read(&stream).expect("stream file"),
    ));

    let mut leaks = Vec::new();
    for (name, bytes) in &artifacts {
        assert!(
            !secrets_in(bytes, &["u-42"]).is_empty(),
            "{name} does not hold the entry: {}",
            String::from_utf8_lossy(bytes)
        );
        for secret in secrets_in(bytes, &PROFILE_SECRETS) {
            leaks.push(format!("{secret} in the {name}"));
        }
    }
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
}
