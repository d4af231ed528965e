//! The serde structs that mirror `[[rule]]` and `[unmatched]` in the configuration file, as
//! written; [`super::RuleSet::compile`] turns them into the rules the proxy runs.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[unmatched]`: traffic no rule matched.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmatchedFile {
    /// "none", "mutations" (default: everything but GET/HEAD/OPTIONS/TRACE) or "all".
    pub record: Option<String>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique name, recorded in each entry the rule produces.
    pub name: Option<String>,
    /// Method or list of methods; absent or "*" matches any.
    pub method: Option<OneOrMany>,
    /// Route template: `/api/users/{id}`, `/files/{*rest}`.
    pub path: Option<String>,
    /// Regex over the canonical path (matched as written: no case folding, no optional trailing
    /// slash), with named captures as parameters.
    pub path_regex: Option<String>,
    /// Host name, or `*.example.com`.
    pub host: Option<String>,
    /// Request header conditions: exact value, "*" for present, "~regex".
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameter conditions, as for headers.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// "2xx", 204, [401, 403], "any" (the default).
    pub status: Option<toml::Value>,
    /// Action name template: "user.deleted", "{kind}.updated".
    pub action: Option<String>,
    /// Resource type and id templates.
    pub resource: Option<ResourceFile>,
    /// Metadata key -> value source or template.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Actor fields taken from the exchange (e.g. the attempted login of a failed login).
    pub actor: Option<RuleActorFile>,
    /// Tenant template.
    pub tenant: Option<String>,
    /// Record nothing for matching traffic (health checks).
    #[serde(default)]
    pub skip: bool,
    /// "insensitive" or "sensitive": overrides `[proxy] route_case` for this rule's path.
    pub route_case: Option<String>,
    /// "optional" or "strict": overrides `[proxy] trailing_slash` for this rule's path.
    pub trailing_slash: Option<String>,
    /// Hold the request until its entry is durable (overrides `[store] durability`).
    pub write_ahead: Option<bool>,
    /// For write-ahead: "reject" or "forward" when the entry cannot be stored (overrides
    /// `[store] on_store_failure`).
    pub on_store_failure: Option<String>,
    /// The OCSF activity of the entries this rule records: "create", "read", "update",
    /// "delete" or "other" (default: from the action's last word, else the HTTP method).
    pub ocsf_activity: Option<String>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::One(item) => vec![item.clone()],
            OneOrMany::Many(items) => items.clone(),
        }
    }
}

/// `resource = { type = "...", id = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceFile {
    pub r#type: Option<String>,
    pub id: Option<String>,
}

/// `actor = { id = "...", email = "...", name = "..." }` on a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleActorFile {
    pub id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmatchedRecord {
    None,
    Mutations,
    All,
}
