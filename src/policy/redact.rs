//! Redaction: values that must not be stored as they are.
//!
//! Two levels. *Secrets* — passwords, `Authorization`/`Proxy-Authorization`/`Cookie`/`Set-Cookie`
//! values, the headers and query parameters the actor sources read credentials from, API keys —
//! are always replaced by `[redacted]`, whatever the configuration, because a hash of a password
//! or a token is still something an attacker can test guesses against. *Fields* named in
//! `[redact] fields` are replaced by `[redacted]` (`mode = "mask"`) or by
//! `hmac-sha256:<hex>` of the value under a secret key (`mode = "hmac"`), so equal values stay
//! searchable without being readable (as Vault's audit devices do).
//!
//! A name matches case-insensitively, ignoring `-` and `_` (`api_key`, `apiKey` and `API-Key` are
//! the same name). Names are checked wherever a value gets one: metadata keys, JSON keys at any
//! depth inside values taken from bodies, the header, query parameter or path parameter a value
//! was read from, and the segments of the JSON pointer it was read at. Redaction runs where the
//! entry is finished, before it is handed to the writer; nothing upstream of that stores values.

use std::collections::HashSet;

use hmac::{Hmac, Mac};
use http::HeaderName;
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use crate::base::ConfigError;
use crate::identity::actor::ActorChain;
use crate::policy::template::{Context, Missing, Source, Template};

/// What a redacted value is replaced with in mask mode, and always for secrets.
pub const MASK: &str = "[redacted]";

/// `[redact]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactFile {
    /// Names whose values are redacted: metadata keys, JSON keys anywhere in a body value, header
    /// names, query and path parameter names.
    #[serde(default)]
    pub fields: Vec<String>,
    /// "mask" (default): replace with `[redacted]`; "hmac": replace with `hmac-sha256:<hex>`.
    pub mode: Option<String>,
    /// hmac: environment variable holding the HMAC key (at least 16 bytes).
    pub hmac_key_env: Option<String>,
}

#[derive(Clone)]
enum Mode {
    Mask,
    Hmac(Vec<u8>),
}

/// How sensitive a name is; the strongest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sensitivity {
    Plain,
    Field,
    Secret,
}

/// Compiled redaction: the configured fields and mode, and the secrets of the actor sources.
#[derive(Clone)]
pub struct Redactor {
    fields: HashSet<String>,
    mode: Mode,
    secret_headers: Vec<HeaderName>,
    secret_query: HashSet<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Mask => "mask",
            Mode::Hmac(_) => "hmac",
        };
        write!(formatter, "Redactor({} fields, {mode})", self.fields.len())
    }
}

/// Lowercase without `-` and `_`: the form names are compared in.
fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Names that hold a password or an API key, redacted whatever the configuration.
fn is_secret_name(normalized: &str) -> bool {
    normalized.contains("password")
        || normalized.contains("passwd")
        || normalized.contains("passphrase")
        || normalized.contains("apikey")
        || normalized == "pwd"
}

/// Headers that carry credentials in every HTTP application.
const CREDENTIAL_HEADERS: [HeaderName; 4] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
    http::header::SET_COOKIE,
];

impl Redactor {
    /// Only the built-in protections: secrets masked, no configured fields.
    pub fn builtin(actors: &ActorChain) -> Redactor {
        Redactor {
            fields: HashSet::new(),
            mode: Mode::Mask,
            secret_headers: actors.secret_headers(),
            secret_query: actors.secret_query_parameters().into_iter().collect(),
        }
    }

    /// Compiles `[redact]` (absent: built-in protections only), collecting every error.
    pub fn compile(
        file: Option<&RedactFile>,
        actors: &ActorChain,
        errors: &mut Vec<ConfigError>,
    ) -> Redactor {
        let mut redactor = Redactor::builtin(actors);
        let Some(file) = file else {
            return redactor;
        };
        for (index, field) in file.fields.iter().enumerate() {
            let normalized = normalize(field.trim());
            if normalized.is_empty() {
                errors.push(ConfigError::new(
                    &format!("redact.fields #{}", index + 1),
                    format!("`{field}` names nothing"),
                ));
            } else {
                redactor.fields.insert(normalized);
            }
        }
        match (file.mode.as_deref(), &file.hmac_key_env) {
            (None | Some("mask"), None) => {}
            (None | Some("mask"), Some(_)) => errors.push(ConfigError::new(
                "redact.hmac_key_env",
                "applies only to mode = \"hmac\"",
            )),
            (Some("hmac"), None) => errors.push(ConfigError::new(
                "redact",
                "mode = \"hmac\" needs hmac_key_env: the environment variable holding the HMAC key",
            )),
            (Some("hmac"), Some(variable)) => match std::env::var(variable) {
                Ok(key) if key.len() >= 16 => redactor.mode = Mode::Hmac(key.into_bytes()),
                Ok(key) if !key.is_empty() => errors.push(ConfigError::new(
                    "redact.hmac_key_env",
                    format!("environment variable {variable} must hold at least 16 bytes"),
                )),
                _ => errors.push(ConfigError::new(
                    "redact.hmac_key_env",
                    format!("environment variable {variable} is not set or empty"),
                )),
            },
            (Some(other), _) => errors.push(ConfigError::new(
                "redact.mode",
                format!("`{other}` is not one of mask, hmac"),
            )),
        }
        if file.fields.is_empty() && file.mode.is_some() {
            errors.push(ConfigError::new(
                "redact.fields",
                "is empty: name the fields to redact (e.g. [\"token\", \"ssn\"])",
            ));
        }
        redactor
    }

    /// One line for `auditgate check`.
    pub fn describe(&self) -> String {
        match (&self.mode, self.fields.len()) {
            (_, 0) => "secrets masked (no [redact] fields)".to_string(),
            (Mode::Mask, count) => format!("secrets and {count} field name(s) masked"),
            (Mode::Hmac(_), count) => {
                format!("secrets masked, {count} field name(s) stored as hmac-sha256")
            }
        }
    }

    fn name_sensitivity(&self, name: &str) -> Sensitivity {
        let normalized = normalize(name);
        if is_secret_name(&normalized) {
            Sensitivity::Secret
        } else if self.fields.contains(&normalized) {
            Sensitivity::Field
        } else {
            Sensitivity::Plain
        }
    }

    fn header_sensitivity(&self, name: &HeaderName) -> Sensitivity {
        if CREDENTIAL_HEADERS.contains(name) || self.secret_headers.contains(name) {
            Sensitivity::Secret
        } else {
            self.name_sensitivity(name.as_str())
        }
    }

    fn pointer_sensitivity(&self, pointer: &str) -> Sensitivity {
        pointer
            .split('/')
            .skip(1)
            .map(|segment| self.name_sensitivity(&segment.replace("~1", "/").replace("~0", "~")))
            .max()
            .unwrap_or(Sensitivity::Plain)
    }

    fn source_sensitivity(&self, source: &Source) -> Sensitivity {
        match source {
            Source::PathParam(name) => self.name_sensitivity(name),
            Source::Query(name) if self.secret_query.contains(name) => Sensitivity::Secret,
            Source::Query(name) => self.name_sensitivity(name),
            Source::RequestHeader(name) | Source::ResponseHeader(name) => {
                self.header_sensitivity(name)
            }
            Source::RequestBody(pointer) | Source::ResponseBody(pointer) => {
                self.pointer_sensitivity(pointer)
            }
        }
    }

    fn replace(&self, sensitivity: Sensitivity, value: &Value) -> Value {
        match (sensitivity, &self.mode) {
            (Sensitivity::Plain, _) => value.clone(),
            (Sensitivity::Secret, _) | (Sensitivity::Field, Mode::Mask) => Value::from(MASK),
            (Sensitivity::Field, Mode::Hmac(key)) => {
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                match Hmac::<Sha256>::new_from_slice(key) {
                    Ok(mut mac) => {
                        mac.update(text.as_bytes());
                        Value::from(format!(
                            "hmac-sha256:{}",
                            hex::encode(mac.finalize().into_bytes())
                        ))
                    }
                    Err(_) => Value::from(MASK),
                }
            }
        }
    }

    /// Redacts named members at any depth inside a value.
    fn scrub(&self, value: &mut Value) {
        match value {
            Value::Object(members) => {
                for (key, member) in members.iter_mut() {
                    match self.name_sensitivity(key) {
                        Sensitivity::Plain => self.scrub(member),
                        sensitivity => *member = self.replace(sensitivity, member),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.scrub(item)),
            _ => {}
        }
    }

    /// A value read from a source: replaced whole when the source's name is sensitive, and
    /// otherwise with its sensitive members replaced.
    pub fn source_value(&self, source: &Source, mut value: Value) -> Value {
        match self.source_sensitivity(source) {
            Sensitivity::Plain => {
                self.scrub(&mut value);
                value
            }
            sensitivity => self.replace(sensitivity, &value),
        }
    }

    /// The value of a metadata template stored under `key`. When the key is sensitive the raw
    /// value is replaced once, as strongly as the key or any source it reads demands; otherwise
    /// each source's value is redacted on its own (see [`Redactor::source_value`]).
    pub fn metadata_value(
        &self,
        key: &str,
        template: &Template,
        context: &dyn Context,
    ) -> Result<Value, Missing> {
        let key_sensitivity = self.name_sensitivity(key);
        if key_sensitivity == Sensitivity::Plain {
            return template
                .evaluate_filtered(context, &|source, value| self.source_value(source, value));
        }
        let sensitivity = template
            .sources()
            .into_iter()
            .map(|source| self.source_sensitivity(source))
            .fold(key_sensitivity, Ord::max);
        template
            .evaluate(context)
            .map(|value| self.replace(sensitivity, &value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor(text: &str) -> Result<Redactor, Vec<ConfigError>> {
        let file: RedactFile = toml::from_str(text).expect("parses");
        let mut errors = Vec::new();
        let redactor = Redactor::compile(Some(&file), &ActorChain::empty(), &mut errors);
        if errors.is_empty() {
            Ok(redactor)
        } else {
            Err(errors)
        }
    }

    /// A request whose body is fixed and whose headers are all "header-value".
    struct Fixed(Value);

    impl Context for Fixed {
        fn path_param(&self, _: &str) -> Option<&str> {
            None
        }
        fn query(&self, _: &str) -> Option<String> {
            None
        }
        fn request_header(&self, _: &HeaderName) -> Option<std::borrow::Cow<'_, str>> {
            Some("header-value".into())
        }
        fn response_header(&self, _: &HeaderName) -> Option<std::borrow::Cow<'_, str>> {
            None
        }
        fn request_body(&self) -> Result<&Value, &str> {
            Ok(&self.0)
        }
        fn response_body(&self) -> Result<&Value, &str> {
            Err("was not captured")
        }
    }

    fn hmac_hex(key: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("key");
        mac.update(value.as_bytes());
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn names_match_loosely_and_secrets_are_always_masked() {
        let redactor = redactor(
            "fields = [\"token\", \"SSN\"]\nmode = \"hmac\"\nhmac_key_env = \"REDACT_TEST_KEY_1\"\n",
        )
        .expect("valid");
        let user = Source::RequestBody("/user".into());
        let value = redactor.source_value(
            &user,
            json!({"name": "ann", "Token": "t-1", "nested": [{"ssn": "123"}], "newPassword": "pw", "api-key": "k"}),
        );
        assert_eq!(
            value["Token"],
            json!(hmac_hex("0123456789abcdef-key", "t-1"))
        );
        assert_eq!(value["name"], "ann");
        assert_eq!(value["newPassword"], MASK);
        assert_eq!(value["api-key"], MASK);
        assert_eq!(
            value["nested"][0]["ssn"],
            json!(hmac_hex("0123456789abcdef-key", "123"))
        );
        // Equal values give equal HMACs, so they stay searchable.
        let token = Source::RequestBody("/auth/token".into());
        assert_eq!(redactor.source_value(&token, json!("t-1")), value["Token"]);
    }

    #[test]
    fn metadata_values_are_redacted_once_and_as_strongly_as_needed() {
        let redactor = redactor(
            "fields = [\"ssn\", \"owner\"]\nmode = \"hmac\"\nhmac_key_env = \"REDACT_TEST_KEY_2\"\n",
        )
        .expect("valid");
        let context = Fixed(json!({"ssn": "123", "user": {"ssn": "456", "id": 1}}));
        let template = |text: &str| Template::parse(text, &[]).expect("template");
        // Key and pointer both name the field: one HMAC of the raw value, not an HMAC of an HMAC.
        assert_eq!(
            redactor.metadata_value("ssn", &template("request.body:/ssn"), &context),
            Ok(json!(hmac_hex("0123456789abcdef-key", "123")))
        );
        // A field-named key over a credential header: the stronger rule (mask) wins.
        assert_eq!(
            redactor.metadata_value("owner", &template("request.header:authorization"), &context),
            Ok(json!(MASK))
        );
        // A plain key: members are redacted inside the value.
        assert_eq!(
            redactor.metadata_value("user", &template("request.body:/user"), &context),
            Ok(json!({"ssn": hmac_hex("0123456789abcdef-key", "456"), "id": 1}))
        );
    }

    #[test]
    fn sources_are_judged_by_their_names() {
        let redactor = redactor("fields = [\"x-session\"]\n").expect("valid");
        let authorization = Source::RequestHeader(http::header::AUTHORIZATION);
        assert_eq!(
            redactor.source_value(&authorization, json!("Bearer abc")),
            json!(MASK)
        );
        let session = Source::RequestHeader(HeaderName::from_static("x-session"));
        assert_eq!(redactor.source_value(&session, json!("s")), json!(MASK));
        let pointer = Source::RequestBody("/credentials/password".into());
        assert_eq!(redactor.source_value(&pointer, json!("pw")), json!(MASK));
        let plain = Source::RequestBody("/user".into());
        assert_eq!(
            redactor.source_value(&plain, json!({"password": "pw", "id": 1})),
            json!({"password": MASK, "id": 1})
        );
    }

    #[test]
    fn config_errors_are_placed() {
        let errors = redactor("fields = [\"\"]\nmode = \"blur\"\n").expect_err("invalid");
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(all.contains("redact.fields #1"), "{all}");
        assert!(all.contains("redact.mode"), "{all}");
        let errors =
            redactor("fields = [\"a\"]\nmode = \"hmac\"\nhmac_key_env = \"REDACT_TEST_UNSET\"\n")
                .expect_err("invalid");
        assert!(errors[0].to_string().contains("REDACT_TEST_UNSET"));
        assert!(redactor("fields = [\"a\"]\nmode = \"hmac\"\n").is_err());
    }
}
