//! The `api_key` actor source: a key in a header or a query parameter, recorded as the configured
//! name of the key, or — for a key not in the list — as `key:<first 8 hex of its HMAC>`. The key
//! itself never leaves this module: configured keys are known only by their SHA-256, and unknown
//! ones are hashed with a secret so the recorded form cannot be reversed by guessing.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use super::{header_name, Actor, ActorFile, Trace};
use crate::base::ConfigError;

/// Keys longer than this are not considered (no API key is this long; the check bounds hashing).
const MAX_KEY_BYTES: usize = 4096;

/// Where the key is presented.
pub(super) enum KeyPlace {
    Header(HeaderName),
    Query(String),
}

pub(super) struct ApiKeySource {
    pub(super) place: KeyPlace,
    /// SHA-256 of each configured key -> its name.
    names: HashMap<[u8; 32], String>,
    /// Secret for naming unknown keys; without it an unknown key yields no actor.
    hmac_key: Option<Vec<u8>>,
}

pub(super) fn compile(
    file: &ActorFile,
    location: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<ApiKeySource> {
    let place = match (&file.header, &file.query) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(
                location,
                "give either header or query, not both (use two [[actor]] entries for both)",
            ));
            return None;
        }
        (Some(header), None) => KeyPlace::Header(header_name(location, "header", header, errors)?),
        (None, Some(query)) if !query.is_empty() => KeyPlace::Query(query.clone()),
        (None, Some(_)) => {
            errors.push(ConfigError::new(
                &format!("{location}.query"),
                "names no query parameter",
            ));
            return None;
        }
        (None, None) => {
            errors.push(ConfigError::new(
                location,
                "needs `header` (e.g. x-api-key) or `query` (e.g. api_key): where the key is sent",
            ));
            return None;
        }
    };
    let mut names = HashMap::new();
    for (index, key) in file.keys.iter().flatten().enumerate() {
        let key_location = format!("{location}.keys #{} ({:?})", index + 1, key.name);
        if key.name.trim().is_empty() {
            errors.push(ConfigError::new(
                &format!("{key_location}.name"),
                "must not be empty: it is what entries record as the actor",
            ));
        }
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(key.sha256.trim().to_ascii_lowercase(), &mut hash).is_err() {
            errors.push(ConfigError::new(
                &format!("{key_location}.sha256"),
                "must be 64 hex digits: the SHA-256 of the key (`printf %s KEY | sha256sum`), never the key itself",
            ));
            continue;
        }
        if names.insert(hash, key.name.clone()).is_some() {
            errors.push(ConfigError::new(
                &format!("{key_location}.sha256"),
                "the same key is listed twice",
            ));
        }
    }
    let hmac_key = match &file.hmac_key_env {
        None => None,
        Some(variable) => match std::env::var(variable) {
            Ok(secret) if secret.len() >= 16 => Some(secret.into_bytes()),
            Ok(secret) if !secret.is_empty() => {
                errors.push(ConfigError::new(
                    &format!("{location}.hmac_key_env"),
                    format!("environment variable {variable} must hold at least 16 bytes"),
                ));
                None
            }
            _ => {
                errors.push(ConfigError::new(
                    &format!("{location}.hmac_key_env"),
                    format!("environment variable {variable} is not set or empty"),
                ));
                None
            }
        },
    };
    if names.is_empty() && file.hmac_key_env.is_none() {
        errors.push(ConfigError::new(
            location,
            "needs `keys` (named keys) or `hmac_key_env` (to record any key as key:<hash>)",
        ));
    }
    Some(ApiKeySource {
        place,
        names,
        hmac_key,
    })
}

/// The first 8 hex digits of HMAC-SHA256(secret, key).
fn key_label(secret: &[u8], key: &str) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(key.as_bytes());
    let digest = mac.finalize().into_bytes();
    Some(format!("key:{}", hex::encode(&digest[..4])))
}

impl ApiKeySource {
    fn presented<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<String> {
        match &self.place {
            KeyPlace::Header(name) => {
                let value = headers.get(name)?.to_str().ok()?.trim();
                // In Authorization the key follows a scheme (`Bearer`, `ApiKey`, `Token`).
                let value = if name == http::header::AUTHORIZATION {
                    value.split_once(' ').map(|(_, key)| key.trim())?
                } else {
                    value
                };
                Some(value.to_string())
            }
            KeyPlace::Query(parameter) => form_urlencoded::parse(query?.as_bytes())
                .find(|(name, _)| name == parameter.as_str())
                .map(|(_, value)| value.into_owned()),
        }
    }

    pub(super) fn describe(&self) -> String {
        match &self.place {
            KeyPlace::Header(name) => format!("header {name}"),
            KeyPlace::Query(name) => format!("query parameter {name}"),
        }
    }

    pub(super) fn resolve(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        notes: &mut Vec<String>,
        trace: &mut Trace,
    ) -> Option<Actor> {
        let Some(key) = self.presented(headers, query).filter(|key| !key.is_empty()) else {
            trace.step(|| format!("no key in {}", self.describe()));
            return None;
        };
        if key.len() > MAX_KEY_BYTES {
            notes.push(format!("api_key: key of {} bytes ignored", key.len()));
            trace.step(|| "key too large".into());
            return None;
        }
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some(name) = self.names.get(&hash) {
            trace.step(|| {
                format!(
                    "key in {} is the configured key {name:?}: verified",
                    self.describe()
                )
            });
            return Some(Actor {
                id: Some(name.clone()),
                source: Some("api_key"),
                verified: true,
                ..Actor::default()
            });
        }
        match self
            .hmac_key
            .as_deref()
            .and_then(|secret| key_label(secret, &key))
        {
            Some(label) => {
                notes.push("api_key: key is not one of the configured keys".into());
                trace.step(|| {
                    format!(
                        "key in {} is not configured; recorded as {label} (HMAC of the key), unverified",
                        self.describe()
                    )
                });
                Some(Actor {
                    id: Some(label),
                    source: Some("api_key"),
                    verified: false,
                    ..Actor::default()
                })
            }
            None => {
                notes.push(
                    "api_key: unknown key ignored (set hmac_key_env to record it as key:<hash>)"
                        .into(),
                );
                trace.step(|| format!("key in {} is not configured: ignored", self.describe()));
                None
            }
        }
    }
}
