//! The `[store]` settings of a PostgreSQL store: the URL, its TLS mode, the pool and the lock.

use std::path::Path;
use std::time::Duration;

use crate::base::units::duration_or;
use crate::base::ConfigError;

/// A PostgreSQL store, validated.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Host, port, user, database, password (redacted by its Debug), timeouts.
    pub connection: postgres::Config,
    /// `sslmode` and `sslrootcert`, with the TLS client configuration built from them.
    pub tls: crate::store::postgres::tls::PostgresTls,
    pub lock_log: bool,
    pub pool_size: usize,
}

/// The `[store]` keys of a PostgreSQL store, as written.
pub(crate) struct PostgresKeys<'a> {
    pub url: &'a str,
    /// `path` is given too (it names a SQLite file: one or the other).
    pub sqlite_path_given: bool,
    pub password_env: Option<&'a str>,
    pub pool_size: Option<usize>,
    pub lock_log: Option<bool>,
    pub connect_timeout: Option<&'a str>,
}

/// The `url` of `[store]` and its companions. Every problem is reported; the URL's text never
/// appears in a message, since it may hold a password.
pub(crate) fn validate_postgres(
    file: PostgresKeys<'_>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<PostgresConfig> {
    let url = file.url;
    let mut valid = true;
    if file.sqlite_path_given {
        errors.push(ConfigError::new(
            "store.url",
            "give either path (SQLite) or url (PostgreSQL), not both",
        ));
        valid = false;
    }
    let crate::store::postgres::tls::ParsedUrl {
        config: mut connection,
        tls,
    } = match crate::store::postgres::tls::parse_url(url, base) {
        Ok(parsed) => parsed,
        Err(message) => {
            errors.push(ConfigError::new("store.url", message));
            return None;
        }
    };
    let tls = match tls {
        Ok(tls) => Some(tls),
        Err(problems) => {
            for problem in problems {
                errors.push(ConfigError::new("store.url", problem));
            }
            valid = false;
            None
        }
    };
    if connection.get_hosts().is_empty() {
        errors.push(ConfigError::new(
            "store.url",
            "names no host (postgres://USER@HOST:PORT/DBNAME)",
        ));
        valid = false;
    }
    if connection.get_user().is_none() {
        errors.push(ConfigError::new(
            "store.url",
            "names no user (postgres://USER@HOST:PORT/DBNAME)",
        ));
        valid = false;
    }
    if let Some(variable) = file.password_env {
        match std::env::var(variable) {
            Ok(password) if !password.is_empty() => {
                connection.password(password);
            }
            _ => {
                errors.push(ConfigError::new(
                    "store.password_env",
                    format!("environment variable {variable} is not set"),
                ));
                valid = false;
            }
        }
    }
    let pool_size = file.pool_size.unwrap_or(4);
    if pool_size == 0 {
        errors.push(ConfigError::new("store.pool_size", "must be at least 1"));
        valid = false;
    }
    if connection.get_connect_timeout().is_none() || file.connect_timeout.is_some() {
        let timeout = duration_or(
            "store.connect_timeout",
            file.connect_timeout,
            Duration::from_secs(5),
            errors,
        );
        connection.connect_timeout(timeout);
    }
    if connection.get_application_name().is_none() {
        connection.application_name("auditgate");
    }
    // A peer that vanishes (a database host lost without a FIN) is noticed within about a
    // minute instead of the kernel's two hours.
    connection.keepalives_idle(Duration::from_secs(30));
    Some(PostgresConfig {
        connection,
        tls: tls.filter(|_| valid)?,
        lock_log: file.lock_log.unwrap_or(true),
        pool_size,
    })
}
