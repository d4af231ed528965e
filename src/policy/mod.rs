//! What is recorded for a request: the compiled [`rules`], the value [`template`]s they fill
//! an entry from, what is never stored as it is ([`redact`]), and the response [`hints`] an app
//! may send.

pub mod draft;
pub mod hints;
pub mod redact;
pub mod rules;
pub mod template;

use crate::identity::actor::ActorChain;
use crate::request::CanonicalConfig;
use hints::HintsConfig;
use redact::Redactor;
use rules::RuleSet;

/// The part of the configuration that a reload (SIGHUP) may replace while running.
#[derive(Debug)]
pub struct Policy {
    pub rules: RuleSet,
    pub actors: ActorChain,
    pub hints: HintsConfig,
    /// What is never stored as it is (secrets) or stored masked or HMAC'd (`[redact]`).
    pub redact: Redactor,
    /// How a request's path and method are made canonical before the rules see them.
    pub canonical: CanonicalConfig,
}
