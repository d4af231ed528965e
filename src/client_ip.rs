//! The client's address: the socket peer, or — only when the peer is a trusted proxy — the
//! right-to-left walk of `X-Forwarded-For` / `Forwarded` past trusted hops.
//!
//! Headers from an untrusted peer are never believed: anyone can write `X-Forwarded-For: 1.2.3.4`.
//! Walking from the right, each hop was added by the proxy to its right; the first address that is
//! not a trusted proxy is the client. Garbage, ports, brackets, quotes and IPv4-mapped IPv6 forms
//! are handled; an unparseable hop stops the walk at the last believable address.

use std::net::{IpAddr, Ipv6Addr};

use http::HeaderMap;
use ipnet::IpNet;

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

/// The `for=` hops of all RFC 7239 Forwarded headers, in order.
fn forwarded_hops(headers: &HeaderMap) -> Vec<String> {
    let mut hops = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        let Ok(text) = value.to_str() else {
            hops.push(String::new());
            continue;
        };
        for element in text.split(',') {
            let found = element.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim().to_string())
            });
            hops.push(found.unwrap_or_default());
        }
    }
    hops
}

/// The client address as believed, and the chain of hops believed (left to right, ending with
/// the peer), which is what the proxy forwards upstream as X-Forwarded-For.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    pub client: IpAddr,
    pub believed_chain: Vec<IpAddr>,
}

/// Resolves the client address for a request from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> ClientAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return ClientAddr {
            client: peer,
            believed_chain: vec![peer],
        };
    }
    // Prefer the standard header when present; otherwise the de-facto one.
    let mut hops = forwarded_hops(headers);
    if hops.is_empty() {
        hops = forwarded_for_hops(headers);
    }
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
    ClientAddr {
        client,
        believed_chain: believed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        map
    }

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
    fn garbage_stops_the_walk() {
        let request = headers(&[("x-forwarded-for", "198.51.100.7, not-an-ip, 10.0.0.3")]);
        let resolved = resolve(ip("10.0.0.1"), &request, &nets(&["10.0.0.0/8"]));
        assert_eq!(resolved.client, ip("10.0.0.3"));
        assert_eq!(parse_hop("unknown"), None);
        assert_eq!(parse_hop("_hidden"), None);
        assert_eq!(parse_hop("1.2.3.4:80"), Some(ip("1.2.3.4")));
    }
}
