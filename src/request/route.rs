//! Route templates: `/api/users/{id}`, `/files/{*rest}` compiled into anchored regexes, matched
//! as the app's framework routes (case and trailing slash per [`RouteSemantics`]).

/// How a route template matches paths: by default as Express, Rails and most frameworks route,
/// case-insensitively and with an optional trailing slash. Matching more than the app routes is
/// safe (the status condition and the recorded status show what the app did); matching less
/// loses entries. Applies to `path` templates only; a `path_regex` means what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSemantics {
    /// `route_case = "insensitive"` (default) or `"sensitive"`.
    pub case_insensitive: bool,
    /// `trailing_slash = "optional"` (default) or `"strict"`.
    pub optional_trailing_slash: bool,
}

impl Default for RouteSemantics {
    fn default() -> RouteSemantics {
        RouteSemantics {
            case_insensitive: true,
            optional_trailing_slash: true,
        }
    }
}

impl RouteSemantics {
    /// The path exactly as written: case-sensitive, trailing slash significant.
    pub const STRICT: RouteSemantics = RouteSemantics {
        case_insensitive: false,
        optional_trailing_slash: false,
    };

    /// Applies `route_case` and `trailing_slash` values over `self`; errors name the key.
    pub fn with(
        self,
        route_case: Option<&str>,
        trailing_slash: Option<&str>,
    ) -> Result<RouteSemantics, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let mut out = self;
        match route_case {
            None => {}
            Some("insensitive") => out.case_insensitive = true,
            Some("sensitive") => out.case_insensitive = false,
            Some(other) => errors.push((
                "route_case",
                format!("`{other}` is not one of insensitive, sensitive"),
            )),
        }
        match trailing_slash {
            None => {}
            Some("optional") => out.optional_trailing_slash = true,
            Some("strict") => out.optional_trailing_slash = false,
            Some(other) => errors.push((
                "trailing_slash",
                format!("`{other}` is not one of optional, strict"),
            )),
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

/// Turns a route template like `/api/users/{id}` or `/files/{*rest}` into an anchored regex and
/// the names of its parameters, matching exactly as written.
pub fn compile_route(template: &str) -> Result<(String, Vec<String>), String> {
    compile_route_with(template, RouteSemantics::STRICT)
}

/// As [`compile_route`], with route semantics compiled into the regex (once, at load): `(?i)`
/// around the whole pattern (parameters keep the case as sent, only matching is folded), and an
/// optional trailing slash unless the route is `/` or ends with a catch-all (which takes it).
pub fn compile_route_with(
    template: &str,
    semantics: RouteSemantics,
) -> Result<(String, Vec<String>), String> {
    let (pattern, params) = compile_route_exact(template)?;
    let Some(body) = pattern
        .strip_prefix('^')
        .and_then(|rest| rest.strip_suffix('$'))
    else {
        return Ok((pattern, params));
    };
    let catch_all_last = template.ends_with('}')
        && template
            .rfind('{')
            .is_some_and(|open| template[open + 1..].starts_with('*'));
    let body = if semantics.optional_trailing_slash && template != "/" && !catch_all_last {
        format!("{}/?", body.strip_suffix('/').unwrap_or(body))
    } else {
        body.to_string()
    };
    let pattern = if semantics.case_insensitive {
        format!("^(?i:{body})$")
    } else {
        format!("^{body}$")
    };
    Ok((pattern, params))
}

fn compile_route_exact(template: &str) -> Result<(String, Vec<String>), String> {
    if !template.starts_with('/') {
        return Err(format!("`{template}` must start with `/`"));
    }
    let mut pattern = String::from("^");
    let mut params = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if rest[..open].contains('}') {
            return Err(format!("`{template}` has a `}}` with no `{{`"));
        }
        pattern.push_str(&regex::escape(&rest[..open]));
        let close = rest[open..]
            .find('}')
            .map(|offset| open + offset)
            .ok_or_else(|| format!("`{template}` has a `{{` that is never closed"))?;
        let inner = &rest[open + 1..close];
        let (name, catch_all) = match inner.strip_prefix('*') {
            Some(name) => (name, true),
            None => (inner, false),
        };
        let valid_name = !name.is_empty()
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!(
                "`{{{inner}}}` in `{template}` is not a parameter name (letters, digits and _)"
            ));
        }
        if params.iter().any(|param| param == name) {
            return Err(format!("`{template}` uses the parameter {name} twice"));
        }
        if catch_all {
            if close + 1 != rest.len() {
                return Err(format!(
                    "`{{*{name}}}` must be the last part of `{template}`"
                ));
            }
            pattern.push_str(&format!("(?P<{name}>.*)"));
        } else {
            pattern.push_str(&format!("(?P<{name}>[^/]+)"));
        }
        params.push(name.to_string());
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("`{template}` has a `}}` with no `{{`"));
    }
    pattern.push_str(&regex::escape(rest));
    pattern.push('$');
    Ok((pattern, params))
}

/// A route template segment in another router's syntax, which auditgate matches literally.
pub fn literal_only_path(path: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut segment_start = true;
    for (position, character) in path.char_indices() {
        match character {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '*' if depth == 0 => {
                return Some(format!(
                    "`*` in `{path}` is matched literally, not as a wildcard: write `{{*rest}}` \
                     for the rest of the path, or use path_regex"
                ))
            }
            ':' if depth == 0 && segment_start => {
                let name: String = path[position + 1..]
                    .chars()
                    .take_while(|next| next.is_ascii_alphanumeric() || *next == '_')
                    .collect();
                if !name.is_empty() {
                    return Some(format!(
                        "`:{name}` in `{path}` is matched literally, not as a parameter: write \
                         `{{{name}}}`"
                    ));
                }
            }
            _ => {}
        }
        segment_start = character == '/';
    }
    None
}
