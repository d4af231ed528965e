//! The client's address: the socket peer, or — only when the peer is a trusted proxy — the
//! right-to-left walk of `X-Forwarded-For` / `Forwarded` past trusted hops.
//!
//! Headers from an untrusted peer are never believed: anyone can write `X-Forwarded-For: 1.2.3.4`.
//! Walking from the right, each hop was added by the proxy to its right; the first address that is
//! not a trusted proxy is the client. Garbage, ports, brackets, quotes and IPv4-mapped IPv6 forms
//! are handled; an unparseable hop stops the walk at the last believable address.
//!
//! What the app receives is rebuilt from what was believed: X-Forwarded-For is the believed chain
//! ending with the peer, and a Forwarded header keeps only its believed elements, followed by
//! this hop's own `for=`. A spoofed entry never reaches the app as if it had been checked.
//!
//! Many app servers do not read header names as HTTP spells them: CGI, WSGI, PHP and nginx with
//! `underscores_in_headers` turn both `X-Forwarded-For` and `X_Forwarded_For` into
//! `HTTP_X_FORWARDED_FOR`. Only the dashed spelling is read here, so every other spelling of a
//! forwarding header is removed before forwarding ([`remove_other_forwarding_spellings`]): the app
//! can never read a value the proxy did not believe.

use std::net::{IpAddr, Ipv6Addr};

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// Forwarding headers an app may read for the client's address, scheme, host or path prefix.
/// Only their dashed spelling is ever read or forwarded by the proxy.
pub const FORWARDING_HEADERS: [&str; 10] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-real-ip",
    "x-client-ip",
];

/// Whether an app server that folds `_` into `-` and ignores case (CGI, WSGI, PHP, nginx with
/// `underscores_in_headers`) reads `name` as the header `canonical`.
pub fn same_header_for_apps(name: &str, canonical: &str) -> bool {
    let fold = |byte: u8| match byte {
        b'_' => b'-',
        other => other.to_ascii_lowercase(),
    };
    name.len() == canonical.len()
        && name
            .bytes()
            .zip(canonical.bytes())
            .all(|(left, right)| fold(left) == fold(right))
}

/// The headers of a request that an app may read as `canonical` but that are spelled otherwise
/// (`x_forwarded_user` for `x-forwarded-user`).
pub fn other_spellings<'a>(
    headers: &'a HeaderMap,
    canonical: &'a str,
) -> impl Iterator<Item = &'a HeaderName> + 'a {
    headers.keys().filter(move |name| {
        name.as_str() != canonical && same_header_for_apps(name.as_str(), canonical)
    })
}

/// Removes every spelling of a forwarding header other than the dashed one (`X_Forwarded_For`,
/// `x_real_ip`): the proxy rebuilds or passes on only the dashed ones, from what it believed.
/// Returns the names removed.
pub fn remove_other_forwarding_spellings(headers: &mut HeaderMap) -> Vec<HeaderName> {
    // Every forwarding header is spelled with dashes, so only a name with an underscore can be
    // another spelling of one; most requests have none and cost one pass over the names.
    if !headers.keys().any(|name| name.as_str().contains('_')) {
        return Vec::new();
    }
    let others: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            FORWARDING_HEADERS.iter().any(|canonical| {
                name.as_str() != *canonical && same_header_for_apps(name.as_str(), canonical)
            })
        })
        .cloned()
        .collect();
    for name in &others {
        headers.remove(name);
    }
    others
}

/// Whether an address is inside any of the networks.
pub fn is_trusted(addr: IpAddr, trusted: &[IpNet]) -> bool {
    let addr = canonical(addr);
    trusted.iter().any(|network| network.contains(&addr))
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) is the IPv4 address.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Parses one hop as written in X-Forwarded-For or a Forwarded `for=`: `1.2.3.4`, `1.2.3.4:567`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`, `2001:db8::1`, optionally quoted.
pub fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside
            .parse::<Ipv6Addr>()
            .ok()
            .map(|v6| canonical(IpAddr::V6(v6)));
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    // IPv4 with a port.
    let (host, port) = text.rsplit_once(':')?;
    if port.bytes().all(|b| b.is_ascii_digit()) && !host.contains(':') {
        return host.parse::<IpAddr>().ok().map(canonical);
    }
    None
}

/// The hops of all X-Forwarded-For headers, in order, as written (unparsed).
fn forwarded_for_hops(headers: &HeaderMap) -> Vec<String> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            hops.push(String::new());
            continue;
        };
        hops.extend(text.split(',').map(|hop| hop.trim().to_string()));
    }
    hops
}

/// Splits on `separator` outside double quotes (a quoted-string may hold `,` or `;`).
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (index, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if c == separator && !quoted => {
                parts.push(&text[start..index]);
                start = index + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The elements of all RFC 7239 Forwarded headers, in order, as written. A header that is not
/// text counts as one unreadable element.
fn forwarded_elements(headers: &HeaderMap) -> Vec<String> {
    let mut elements = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        match value.to_str() {
            Ok(text) => elements.extend(
                split_unquoted(text, ',')
                    .into_iter()
                    .map(|element| element.trim().to_string()),
            ),
            Err(_) => elements.push(String::new()),
        }
    }
    elements
}

/// The `for=` value of one Forwarded element (empty when it has none).
fn forwarded_for(element: &str) -> String {
    split_unquoted(element, ';')
        .into_iter()
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("for")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default()
}

/// An address as a Forwarded `for=` value: IPv6 bracketed and quoted (RFC 7239 section 6).
fn forwarded_node(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

/// The client address as believed, and the chain of hops believed (left to right, ending with
/// the peer), which is what the proxy forwards upstream as X-Forwarded-For.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    pub client: IpAddr,
    pub believed_chain: Vec<IpAddr>,
    /// When the request had a Forwarded header: its rebuilt value — the believed elements as
    /// they were written, then this hop's `for=<peer>` — so the app never sees an element that
    /// was not believed. `None` when the request had none (none is added).
    pub forwarded: Option<String>,
}

/// Resolves the client address for a request from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> ClientAddr {
    let peer = canonical(peer);
    let elements = forwarded_elements(headers);
    // This hop's own Forwarded element is written only when the request had the header: most
    // requests do not, and the proxy pays for no formatting then.
    if !is_trusted(peer, trusted) {
        return ClientAddr {
            client: peer,
            believed_chain: vec![peer],
            forwarded: (!elements.is_empty()).then(|| forwarded_node(peer)),
        };
    }
    // Prefer the standard header when present; otherwise the de-facto one.
    let walking_forwarded = !elements.is_empty();
    let hops: Vec<String> = if walking_forwarded {
        elements
            .iter()
            .map(|element| forwarded_for(element))
            .collect()
    } else {
        forwarded_for_hops(headers)
    };
    let mut believed = vec![peer];
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(addr) = parse_hop(hop) else {
            break;
        };
        believed.push(addr);
        client = addr;
        if !is_trusted(addr, trusted) {
            break;
        }
    }
    believed.reverse();
    let forwarded = walking_forwarded.then(|| {
        let own = forwarded_node(peer);
        let kept = believed.len() - 1;
        let mut rebuilt: Vec<&str> = elements[elements.len() - kept..]
            .iter()
            .map(String::as_str)
            .collect();
        rebuilt.push(&own);
        rebuilt.join(", ")
    });
    ClientAddr {
        client,
        believed_chain: believed,
        forwarded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::test_headers as headers;

    fn nets(items: &[&str]) -> Vec<IpNet> {
        items
            .iter()
            .map(|item| item.parse().expect("cidr"))
            .collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let resolved = resolve(
            ip("203.0.113.9"),
            &headers(&[("x-forwarded-for", "1.2.3.4")]),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(resolved.client, ip("203.0.113.9"));
        assert_eq!(resolved.believed_chain, vec![ip("203.0.113.9")]);
    }

    #[test]
    fn walk_stops_at_first_untrusted_hop() {
        // The client forged "6.6.6.6"; the edge proxy 10.0.0.2 appended the real client 198.51.100.7.
        let request = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let resolved = resolve(ip("10.0.0.1"), &request, &nets(&["10.0.0.0/8"]));
        assert_eq!(resolved.client, ip("198.51.100.7"));
        assert_eq!(
            resolved.believed_chain,
            vec![ip("198.51.100.7"), ip("10.0.0.2"), ip("10.0.0.1")]
        );
    }

    #[test]
    fn forwarded_header_forms_and_ipv6() {
        let request = headers(&[(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=10.1.2.3:80",
        )]);
        let resolved = resolve(ip("::ffff:10.0.0.1"), &request, &nets(&["10.0.0.0/8"]));
        assert_eq!(resolved.client, ip("2001:db8::7"));
    }

    #[test]
    fn forwarded_is_rebuilt_from_what_was_believed() {
        let request = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https;by=\"_a,b\", for=10.1.2.3",
        )]);
        let resolved = resolve(ip("10.0.0.1"), &request, &nets(&["10.0.0.0/8"]));
        assert_eq!(resolved.client, ip("2001:db8::7"));
        assert_eq!(
            resolved.forwarded.as_deref(),
            Some("for=\"[2001:db8::7]:4711\";proto=https;by=\"_a,b\", for=10.1.2.3, for=10.0.0.1")
        );
        let untrusted = resolve(ip("2001:db8::9"), &request, &nets(&["10.0.0.0/8"]));
        assert_eq!(untrusted.client, ip("2001:db8::9"));
        assert_eq!(
            untrusted.forwarded.as_deref(),
            Some("for=\"[2001:db8::9]\"")
        );
        let none = resolve(ip("10.0.0.1"), &headers(&[]), &nets(&["10.0.0.0/8"]));
        assert_eq!(none.forwarded, None);
    }

    #[test]
    fn other_spellings_of_forwarding_headers_are_removed() {
        let mut sent = headers(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("X_Forwarded_Proto", "https"),
            ("x-forwarded_host", "evil.example"),
            ("x_real_ip", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
            ("x_unrelated", "kept"),
        ]);
        let mut removed: Vec<String> = remove_other_forwarding_spellings(&mut sent)
            .iter()
            .map(ToString::to_string)
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                "x-forwarded_host",
                "x_forwarded_for",
                "x_forwarded_proto",
                "x_real_ip"
            ]
        );
        let left: std::collections::BTreeSet<&str> = sent.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            left,
            std::collections::BTreeSet::from(["x-forwarded-for", "x_unrelated"])
        );
        let mut plain = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert!(remove_other_forwarding_spellings(&mut plain).is_empty());
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn spellings_fold_as_app_servers_read_them() {
        assert!(same_header_for_apps("x_forwarded_user", "x-forwarded-user"));
        assert!(same_header_for_apps("X_Forwarded-User", "x-forwarded-user"));
        assert!(same_header_for_apps("x-user", "x_user"));
        assert!(!same_header_for_apps(
            "x-forwarded-users",
            "x-forwarded-user"
        ));
        assert!(!same_header_for_apps(
            "x.forwarded.user",
            "x-forwarded-user"
        ));
        let sent = headers(&[("x_forwarded_user", "a"), ("x-forwarded-user", "b")]);
        let others: Vec<&str> = other_spellings(&sent, "x-forwarded-user")
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(others, ["x_forwarded_user"]);
    }

    #[test]
    fn garbage_stops_the_walk() {
        let request = headers(&[("x-forwarded-for", "198.51.100.7, not-an-ip, 10.0.0.3")]);
        let resolved = resolve(ip("10.0.0.1"), &request, &nets(&["10.0.0.0/8"]));
        assert_eq!(resolved.client, ip("10.0.0.3"));
        assert_eq!(parse_hop("unknown"), None);
        assert_eq!(parse_hop("_hidden"), None);
        assert_eq!(parse_hop("1.2.3.4:80"), Some(ip("1.2.3.4")));
    }
}
