//! `${VAR}` and `${VAR:-default}` in configuration values.
//!
//! Substitution runs on the parsed TOML, string value by string value, never on the raw text:
//! a `$` in a regex, a comment or a key is left alone, and a value can never break out of its
//! string. `${NAME}` is the variable's value (an unset variable is an error naming it and the
//! key); `${NAME:-default}` falls back to `default` when the variable is unset or empty; `$${`
//! is a literal `${`. Any other `$` is kept as it is.

use crate::base::ConfigError;

/// Replaces variable references in every string value of `table`, recursively; every problem is
/// pushed onto `errors` with the key it is in (the value is then left unchanged).
pub fn substitute(
    table: &mut toml::Table,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    for (key, value) in table.iter_mut() {
        if let ("rule" | "actor", toml::Value::Array(items)) = (key.as_str(), &mut *value) {
            for (index, item) in items.iter_mut().enumerate() {
                let location = array_location(key, index, item);
                substitute_value(item, &location, lookup, errors);
            }
            continue;
        }
        substitute_value(value, key, lookup, errors);
    }
}

/// Where an element of `[[rule]]` or `[[actor]]` is, as the rest of config validation names it.
fn array_location(key: &str, index: usize, item: &toml::Value) -> String {
    if key == "rule" {
        crate::policy::rules::rule_location(index, item.get("name").and_then(toml::Value::as_str))
    } else {
        crate::identity::actor::actor_location(
            index,
            item.get("from").and_then(toml::Value::as_str),
        )
    }
}

fn substitute_value(
    value: &mut toml::Value,
    location: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        toml::Value::String(text) => match expand(text, lookup) {
            Ok(expanded) => *text = expanded,
            Err(problems) => errors.extend(
                problems
                    .into_iter()
                    .map(|problem| ConfigError::new(location, problem)),
            ),
        },
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                substitute_value(item, &format!("{location}[{index}]"), lookup, errors);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                substitute_value(item, &format!("{location}.{key}"), lookup, errors);
            }
        }
        _ => {}
    }
}

/// Expands the references in one string; `Err` lists every problem in it.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(reference) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = reference.find('}') else {
            problems.push(
                "`${` starts a variable reference that is never closed with `}` (write `$${` for \
                 a literal `${`)"
                    .to_string(),
            );
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &reference[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if !valid_name(name) {
            problems.push(format!(
                "`${{{inner}}}` is not a variable reference: write `${{NAME}}` or \
                 `${{NAME:-default}}` with NAME of letters, digits and `_`, or `$${{` for a \
                 literal `${{`"
            ));
        } else {
            match (lookup(name), default) {
                (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => problems.push(format!(
                    "environment variable `{name}` is not set (write `${{{name}:-default}}` to \
                     give a default)"
                )),
            }
        }
        rest = &reference[end + 1..];
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn valid_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && characters.all(|character| character.is_ascii_alphanumeric() || character == '_')
}

/// The process environment; a value that is not UTF-8 counts as unset.
pub fn process_environment(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn references_defaults_and_escapes() {
        assert_eq!(
            expand("postgres://a@${HOST}/x", &lookup),
            Ok("postgres://a@db.internal/x".into())
        );
        assert_eq!(expand("${UNSET:-5s}", &lookup), Ok("5s".into()));
        assert_eq!(expand("${EMPTY:-fallback}", &lookup), Ok("fallback".into()));
        assert_eq!(expand("[${EMPTY}]", &lookup), Ok("[]".into()));
        assert_eq!(expand("${HOST:-}", &lookup), Ok("db.internal".into()));
        assert_eq!(expand("$${HOST}", &lookup), Ok("${HOST}".into()));
        // A `$` that starts no reference is the regex anchor it looks like.
        assert_eq!(expand("^/api/(\\d+)$", &lookup), Ok("^/api/(\\d+)$".into()));
        assert_eq!(expand("a$b$$c$", &lookup), Ok("a$b$$c$".into()));
    }

    #[test]
    fn every_problem_of_a_value_is_named() {
        let problems = expand("${NOPE}-${ALSO_NOPE}", &lookup).expect_err("unset");
        assert_eq!(problems.len(), 2);
        assert!(problems[0].contains("`NOPE` is not set"), "{problems:?}");
        assert!(problems[1].contains("`ALSO_NOPE`"), "{problems:?}");
        let problems = expand("${HOST", &lookup).expect_err("unclosed");
        assert!(problems[0].contains("never closed"), "{problems:?}");
        let problems = expand("${1X}", &lookup).expect_err("bad name");
        assert!(
            problems[0].contains("not a variable reference"),
            "{problems:?}"
        );
    }

    #[test]
    fn substitution_walks_every_value_and_names_the_key() {
        let mut table: toml::Table = toml::from_str(
            "[store]\nurl = \"postgres://${HOST}/a\"\n[[rule]]\nname = \"r\"\naction = \"${MISSING}\"\nmetadata = { a = \"${HOST}\" }\n[proxy]\ntrusted_proxies = [\"${NOPE}\"]\n# ${NOT_IN_A_VALUE}\n",
        )
        .expect("toml");
        let mut errors = Vec::new();
        substitute(&mut table, &lookup, &mut errors);
        assert_eq!(
            table["store"]["url"].as_str(),
            Some("postgres://db.internal/a")
        );
        assert_eq!(
            table["rule"][0]["metadata"]["a"].as_str(),
            Some("db.internal")
        );
        let locations: Vec<&str> = errors.iter().map(|error| error.location.as_str()).collect();
        assert_eq!(
            locations,
            ["proxy.trusted_proxies[0]", "rule #1 (\"r\").action"],
            "{errors:?}"
        );
    }
}
