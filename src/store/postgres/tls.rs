//! TLS to PostgreSQL: `sslmode` and `sslrootcert` of a connection string, as libpq means them.
//!
//! | sslmode       | TLS                        | certificate checked                        |
//! |---------------|----------------------------|--------------------------------------------|
//! | `disable`     | never                      | -                                          |
//! | `prefer`      | tried, plain text if not   | no                                         |
//! | `require`     | required                   | no (verify-ca when `sslrootcert` is given) |
//! | `verify-ca`   | required                   | chain up to the CA                         |
//! | `verify-full` | required                   | chain and host name                        |
//!
//! `prefer` is the default, as in libpq. `require` without a CA resists passive eavesdropping
//! only: anyone who can intercept the connection can present a certificate of their own.
//! `sslrootcert` names a PEM file of trusted CAs (relative paths start at the config file's
//! directory); without it the `verify-*` modes trust the system's CA store, where libpq would
//! insist on `~/.postgresql/root.crt`. `sslrootcert=system` (libpq 16) asks for the system store
//! explicitly and then, as in libpq, requires `verify-full`.
//!
//! The driver (tokio-postgres) knows only disable, prefer and require and no `sslrootcert`, so
//! both are taken out of the connection string before it parses the rest, and the checks it
//! cannot do live in the rustls configuration ([`crate::net::tls`]). Connections over a Unix socket
//! never use TLS, as with libpq.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use postgres::config::{Host, SslMode as DriverSslMode};
use postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::net::tls::{self, Verification};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Option<SslMode> {
        match text {
            "disable" => Some(SslMode::Disable),
            "prefer" => Some(SslMode::Prefer),
            "require" => Some(SslMode::Require),
            "verify-ca" => Some(SslMode::VerifyCa),
            "verify-full" => Some(SslMode::VerifyFull),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// How a store connects: the mode and, unless TLS is off, the finished rustls configuration.
#[derive(Clone)]
pub struct PostgresTls {
    pub mode: SslMode,
    /// The CA file, when one is named (`None`: the system store, or no check at all).
    pub root_cert: Option<PathBuf>,
    client: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for PostgresTls {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PostgresTls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

impl PostgresTls {
    /// No TLS at all (`sslmode=disable`).
    pub fn disabled() -> PostgresTls {
        PostgresTls {
            mode: SslMode::Disable,
            root_cert: None,
            client: None,
        }
    }

    /// For `auditgate check`: `sslmode=verify-full, CA /etc/auditgate/db-ca.pem`.
    pub fn describe(&self) -> String {
        match (&self.root_cert, self.mode) {
            (Some(path), SslMode::VerifyCa | SslMode::VerifyFull | SslMode::Require) => {
                format!("sslmode={}, CA {}", self.mode.as_str(), path.display())
            }
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
                format!("sslmode={}, system CAs", self.mode.as_str())
            }
            (_, SslMode::Require) => "sslmode=require (certificate not checked)".to_string(),
            (_, SslMode::Prefer) => {
                "sslmode=prefer (TLS when the server offers it, certificate not checked)"
                    .to_string()
            }
            _ => format!("sslmode={}", self.mode.as_str()),
        }
    }
}

/// A connection string split into what the driver parses and the TLS settings (or every
/// problem with them, so that they are reported beside the string's other problems).
pub struct ParsedUrl {
    pub config: postgres::Config,
    pub tls: Result<PostgresTls, Vec<String>>,
}

/// Parses a connection string (URL or libpq's `key=value` form) with its `sslmode` and
/// `sslrootcert`. Messages never quote the string, which may hold a password.
pub fn parse_url(url: &str, base: &Path) -> Result<ParsedUrl, String> {
    let (rest, sslmode, sslrootcert) = take_ssl_params(url)?;
    let mut config = rest
        .parse::<postgres::Config>()
        .map_err(|error| format!("not a PostgreSQL connection URL ({error})"))?;
    let mut problems = Vec::new();
    let system = sslrootcert.as_deref() == Some("system");
    let mode = match sslmode.as_deref() {
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
        Some(text) => SslMode::parse(text).unwrap_or_else(|| {
            problems.push(format!(
                "sslmode `{}` is not one of disable, prefer, require, verify-ca, verify-full",
                text.chars().take(20).collect::<String>()
            ));
            SslMode::Prefer
        }),
    };
    if system && mode != SslMode::VerifyFull && problems.is_empty() {
        problems.push(format!(
            "sslrootcert=system needs sslmode=verify-full (not {}), as in libpq",
            mode.as_str()
        ));
    }
    let root_cert = match sslrootcert.as_deref() {
        None | Some("system") | Some("") => None,
        Some(path) => Some(crate::base::resolve(base, path)),
    };
    // As in libpq: `require` with a named CA file checks the chain (verify-ca).
    let verification = match mode {
        SslMode::Disable | SslMode::Prefer => Verification::None,
        SslMode::Require if root_cert.is_some() => Verification::ChainOnly,
        SslMode::Require => Verification::None,
        SslMode::VerifyCa => Verification::ChainOnly,
        SslMode::VerifyFull => Verification::Full,
    };
    if mode == SslMode::Disable && root_cert.is_some() {
        problems.push("sslrootcert is given but sslmode=disable turns TLS off".to_string());
    }
    let client = if mode == SslMode::Disable {
        None
    } else {
        match tls::client_config(root_cert.as_deref(), verification, &[b"postgresql"]) {
            Ok(client) => Some(client),
            Err(error) => {
                let hint = match (&error, &root_cert) {
                    (tls::TlsError::NoSystemRoots, _) => " (name the CA in sslrootcert)",
                    _ => "",
                };
                problems.push(format!("sslrootcert: {error}{hint}"));
                None
            }
        }
    };
    if !problems.is_empty() {
        return Ok(ParsedUrl {
            config,
            tls: Err(problems),
        });
    }
    let all_unix = !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|host| !matches!(host, Host::Tcp(_)));
    config.ssl_mode(match mode {
        _ if all_unix => DriverSslMode::Disable,
        SslMode::Disable => DriverSslMode::Disable,
        SslMode::Prefer => DriverSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
    });
    Ok(ParsedUrl {
        config,
        tls: Ok(PostgresTls {
            mode,
            root_cert,
            client,
        }),
    })
}

/// Connects with the configured TLS. Under `prefer`, a failed TLS attempt (a handshake error, or
/// the server refusing the TLS session in pg_hba.conf) is followed by one plain-text attempt, as
/// libpq does.
pub fn connect(config: &postgres::Config, tls: &PostgresTls) -> Result<Client, postgres::Error> {
    let Some(client) = &tls.client else {
        return config.connect(NoTls);
    };
    if config.get_ssl_mode() == DriverSslMode::Disable {
        return config.connect(NoTls);
    }
    let connected = config.connect(MakeRustlsConnect::new(client.as_ref().clone()));
    match connected {
        Err(error) if tls.mode == SslMode::Prefer && tls_attempt_failed(&error) => {
            let mut plain = config.clone();
            plain.ssl_mode(DriverSslMode::Disable);
            plain.connect(NoTls)
        }
        other => other,
    }
}

/// Whether a connection failed in or because of TLS (rather than, say, a refused connection,
/// which a plain-text attempt would meet as well).
fn tls_attempt_failed(error: &postgres::Error) -> bool {
    if let Some(db) = error.as_db_error() {
        // invalid_authorization_specification: pg_hba.conf has no entry for a TLS session.
        return db.code().code() == "28000";
    }
    error.to_string().contains("TLS")
}

/// Takes `sslmode` and `sslrootcert` out of a connection string: returns the rest and their
/// values (the last of each wins, as in libpq).
fn take_ssl_params(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let trimmed = url.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        return Ok(take_from_url(trimmed));
    }
    take_from_key_values(trimmed)
}

fn take_from_url(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((head, query)) = url.split_once('?') else {
        return (url.to_string(), None, None);
    };
    let (mut sslmode, mut sslrootcert) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode_str(key).decode_utf8_lossy();
        let decoded = || percent_decode_str(value).decode_utf8_lossy().into_owned();
        match key.as_ref() {
            "sslmode" => sslmode = Some(decoded()),
            "sslrootcert" => sslrootcert = Some(decoded()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    (rest, sslmode, sslrootcert)
}

/// libpq's `key = value` form: values bare or in single quotes, with backslash escapes.
fn take_from_key_values(text: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut sslmode, mut sslrootcert) = (None, None);
    let mut kept = String::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(format!(
                "not a PostgreSQL connection URL (`{}` is missing `=`)",
                key.chars().take(20).collect::<String>()
            ));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                    None => {
                        return Err(
                            "not a PostgreSQL connection URL (unterminated quoted value)".into(),
                        )
                    }
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(text.len(), |(index, _)| *index);
        match key.as_str() {
            "sslmode" => sslmode = Some(value),
            "sslrootcert" => sslrootcert = Some(value),
            _ => {
                kept.push_str(&text[start..end]);
                kept.push(' ');
            }
        }
    }
    Ok((kept.trim_end().to_string(), sslmode, sslrootcert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_params_are_taken_from_both_forms() {
        let (rest, mode, root) = take_ssl_params(
            "postgres://u:p@h:5432/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .expect("url");
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) = take_ssl_params("postgres://u@h/db?sslmode=require").expect("url");
        assert_eq!(
            (rest.as_str(), mode.as_deref(), root),
            ("postgres://u@h/db", Some("require"), None)
        );
        let (rest, mode, root) = take_ssl_params(
            "host=h user=u sslmode = verify-ca sslrootcert='/a b/c\\'s.pem' dbname=db",
        )
        .expect("key values");
        assert_eq!(rest, "host=h user=u dbname=db");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/a b/c's.pem"));
        assert!(take_ssl_params("host=h sslrootcert='open").is_err());
        assert!(take_ssl_params("host").is_err());
    }

    #[test]
    fn modes_map_to_checks_like_libpq() {
        let base = Path::new("/etc/auditgate");
        let tls = |url: &str| parse_url(url, base).expect("parses").tls;
        let parsed = parse_url("postgres://u@h/db", base).expect("default");
        assert_eq!(parsed.tls.as_ref().expect("tls").mode, SslMode::Prefer);
        assert_eq!(parsed.config.get_ssl_mode(), DriverSslMode::Prefer);
        let parsed = tls("postgres://u@h/db?sslmode=disable").expect("disable");
        assert!(parsed.client.is_none());
        assert_eq!(parsed.describe(), "sslmode=disable");
        let parsed = tls("postgres://u@h/db?sslmode=require").expect("require");
        assert_eq!(
            parsed.describe(),
            "sslmode=require (certificate not checked)"
        );
        let parsed = parse_url("postgres://u@h/db?sslmode=require", base).expect("require");
        assert_eq!(parsed.config.get_ssl_mode(), DriverSslMode::Require);
        // Over a Unix socket TLS is never used.
        let parsed =
            parse_url("host=/var/run/postgresql user=u sslmode=require", base).expect("unix");
        assert_eq!(parsed.config.get_ssl_mode(), DriverSslMode::Disable);

        let errors =
            tls("postgres://u:secret@h/db?sslmode=verify-everything").expect_err("bad mode");
        assert!(
            errors[0].contains("sslmode `verify-everything` is not one of"),
            "{errors:?}"
        );
        let errors = tls("postgres://u@h/db?sslmode=verify-full&sslrootcert=ca.pem")
            .expect_err("missing CA");
        assert!(
            errors[0].contains("cannot read the CA file /etc/auditgate/ca.pem"),
            "{errors:?}"
        );
        let errors = tls("postgres://u@h/db?sslmode=require&sslrootcert=system")
            .expect_err("system needs verify-full");
        assert!(
            errors[0].contains("sslrootcert=system needs sslmode=verify-full"),
            "{errors:?}"
        );
        let errors = tls("postgres://u@h/db?sslmode=disable&sslrootcert=/x.pem")
            .expect_err("disable with a CA");
        assert!(errors[0].contains("sslmode=disable"), "{errors:?}");
    }
}
