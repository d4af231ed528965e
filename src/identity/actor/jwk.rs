//! Verifying keys: a PEM file, a JWK or a JWK Set turned into the keys a token may be verified
//! with, each with the algorithms it accepts.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;

/// One key a token may be verified with, and the algorithms it accepts.
pub(super) struct VerifyingKey {
    pub(super) kid: Option<String>,
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
}

/// The family default when the configuration names no algorithm.
pub(super) fn default_algorithm(family: AlgorithmFamily) -> Algorithm {
    match family {
        AlgorithmFamily::Hmac => Algorithm::HS256,
        AlgorithmFamily::Rsa => Algorithm::RS256,
        AlgorithmFamily::Ec => Algorithm::ES256,
        AlgorithmFamily::Ed => Algorithm::EdDSA,
    }
}

pub(super) fn algorithm_name(algorithm: Algorithm) -> String {
    format!("{algorithm:?}")
}

/// A key of a key set that cannot be used, and where it is (`key #2 (kid "a")`).
pub(super) struct KeySetProblem {
    pub place: String,
    pub message: String,
}

/// The usable keys of a JWKS document, and the keys that are unusable in a way worth reporting.
/// Encryption keys and keys of algorithms outside the pinned list are left out; symmetric keys
/// are refused, since a key set is public by convention. `template` is the validation every key
/// starts from (issuer, audience, leeway); each key gets its own algorithms.
pub(super) fn compile_key_set(
    document: &Value,
    pinned: Option<&[Algorithm]>,
    template: &Validation,
) -> Result<(Vec<VerifyingKey>, Vec<KeySetProblem>), String> {
    let Some(items) = document.get("keys").and_then(Value::as_array) else {
        return Err("is not a JWKS document ({\"keys\": [...]})".to_string());
    };
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let kid = item.get("kid").and_then(Value::as_str);
        let place = match kid {
            Some(kid) => format!("key #{} (kid {})", index + 1, shown(kid)),
            None => format!("key #{}", index + 1),
        };
        if item.get("kty").and_then(Value::as_str) == Some("oct") {
            problems.push(KeySetProblem {
                place,
                message: "is a symmetric (oct) key; a key set holds public keys (use hs256_secret_env for a shared secret)".into(),
            });
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
            // Key types this crate does not verify with (e.g. P-521) cannot verify any token.
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(params) => match params.curve {
                EllipticCurve::P256 | EllipticCurve::P384 => AlgorithmFamily::Ec,
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(params) => match params.curve {
                EllipticCurve::Ed25519 => AlgorithmFamily::Ed,
                _ => continue,
            },
            AlgorithmParameters::OctetKey(_) => continue,
        };
        // The key's own `alg`, when present, narrows what it may verify.
        let own = match jwk.common.key_algorithm {
            Some(declared) => match declared.to_string().parse::<Algorithm>() {
                Ok(algorithm) => Some(algorithm),
                Err(_) => continue,
            },
            None => None,
        };
        let curve_default = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P384 => {
                Algorithm::ES384
            }
            _ => default_algorithm(family),
        };
        let algorithms: Vec<Algorithm> = match (pinned, own) {
            (Some(pinned), Some(own)) => pinned.iter().copied().filter(|a| *a == own).collect(),
            (Some(pinned), None) => pinned
                .iter()
                .copied()
                .filter(|a| a.family() == family)
                .collect(),
            (None, Some(own)) => vec![own],
            (None, None) => vec![curve_default],
        };
        if algorithms.is_empty() || algorithms.iter().any(|a| a.family() != family) {
            continue;
        }
        match DecodingKey::from_jwk(&jwk) {
            Ok(key) => {
                let mut validation = template.clone();
                validation.algorithms = algorithms;
                keys.push(VerifyingKey {
                    kid: kid.map(str::to_string),
                    key,
                    validation,
                });
            }
            Err(error) => problems.push(KeySetProblem {
                place,
                message: format!("is not a usable key: {error}"),
            }),
        }
    }
    Ok((keys, problems))
}

/// Attacker-chosen text (an `alg`, a `kid`) made safe and short for a note.
pub(super) fn shown(text: &str) -> String {
    let cleaned: String = text.chars().filter(|c| !c.is_control()).take(40).collect();
    format!("{cleaned:?}")
}
