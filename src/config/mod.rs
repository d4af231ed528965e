//! The configuration file: reads the TOML, substitutes `${VAR}` ([`env`]), hands each section to
//! the component that owns it (its `…File` struct and the function that validates it, e.g.
//! `proxy::config`, `store::config`, `log::config`) and assembles [`Config`], the settings the
//! program runs on. Components never import this module.
//!
//! Every error is collected and reported at once, each with where it is (`proxy.upstream`,
//! `rule #3 ("delete user").path`). TOML syntax errors stop parsing, so they come alone; structural
//! errors are found section by section and rule by rule, so one typo does not hide the others.

pub mod env;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::admin::config::{validate_admin, AdminConfig, AdminFile};
use crate::archive::config::{archive_location, validate_archives, ArchiveConfig, ArchiveFile};
use crate::base::{ConfigError, ConfigErrors};
use crate::discover::config::{validate_discover, DiscoverConfig, DiscoverFile};
use crate::identity::actor::{actor_location, ActorChain, ActorFile};
use crate::log::config::{default_log_id, valid_log_id, validate_log, LogConfig, LogFile};
use crate::policy::redact::{RedactFile, Redactor};
use crate::policy::rules::file::{RuleFile, UnmatchedFile, UnmatchedRecord};
use crate::policy::rules::RuleSet;
use crate::policy::Policy;
use crate::proxy::config::{validate_proxy, ProxyConfig, ProxyFile};
use crate::request::route::RouteSemantics;
use crate::store::config::{validate_store, StoreConfig, StoreFile};
use crate::store::retention::{validate_retention, RetentionConfig, RetentionFile};
use crate::writer::otlp::config::{otlp_location, validate_otlp, OtlpConfig, OtlpFile};
use crate::writer::stream::{validate_stream, StreamFile};

// ---------------------------------------------------------------------------------------------
// File structs: exactly the TOML.
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Runtime config: what the program runs on.
// ---------------------------------------------------------------------------------------------

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub log_id: String,
    pub log: LogConfig,
    pub retention: RetentionConfig,
    pub policy: Arc<Policy>,
    /// The NDJSON stream of committed entries, if configured.
    pub stream: Option<crate::writer::stream::StreamConfig>,
    /// The object-storage archives (`[[archive]]`), in file order.
    pub archives: Vec<ArchiveConfig>,
    /// The OpenTelemetry logs outputs (`[[otlp]]`), in file order.
    pub otlp: Vec<OtlpConfig>,
    /// Learning routes from traffic (`[discover]`).
    pub discover: DiscoverConfig,
    /// The file as parsed, for comparing with the next one at a reload.
    pub table: RawTable,
    /// Lowercase hex SHA-256 of the configuration text, logged at start and on reload and shown
    /// in `/metrics`, so an operator can tell which file is in force.
    pub sha256: String,
}

/// A configuration file as parsed. Never printed: it may hold secrets, such as the password in
/// a database URL.
#[derive(Clone, Default)]
pub struct RawTable(pub toml::Table);

impl std::fmt::Debug for RawTable {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "RawTable({} sections)", self.0.len())
    }
}

/// The environment variable naming the directory that relative data paths start from.
pub const DATA_DIR_VARIABLE: &str = "AUDITGATE_DATA_DIR";

/// The whole file, section by section, as TOML values (so each is checked on its own).
const SECTIONS: &[&str] = &[
    "proxy",
    "admin",
    "store",
    "log",
    "retention",
    "unmatched",
    "hints",
    "actor",
    "redact",
    "rule",
    "stream",
    "archive",
    "otlp",
    "discover",
];

impl Config {
    /// Reads and validates a configuration file. Relative store paths are resolved against the
    /// file's directory, so a config means the same thing from any working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError::new("file", format!("cannot read: {error}"))],
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let data_dir = std::env::var_os(DATA_DIR_VARIABLE)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from);
        Config::parse_with_data_dir(&text, &base, data_dir.as_deref())
            .map_err(|errors| ConfigErrors { file, errors })
    }

    /// Parses and validates configuration text; `base` is the directory relative paths start from.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
        Config::parse_with_env(text, base, &crate::config::env::process_environment)
    }

    /// [`Config::parse`] with `${VAR}` references resolved by `lookup` instead of the process
    /// environment.
    pub fn parse_with_env(
        text: &str,
        base: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        Config::parse_with(text, base, None, lookup)
    }

    /// As [`Config::parse`], with relative data paths (the store, its spill file, the stream
    /// file, `file:` head targets) resolved against `data_dir` when given: a container keeps its
    /// configuration in a read-only mount and its data in a writable volume, wherever the
    /// configuration file sits.
    pub fn parse_with_data_dir(
        text: &str,
        base: &Path,
        data_dir: Option<&Path>,
    ) -> Result<Config, Vec<ConfigError>> {
        Config::parse_with(
            text,
            base,
            data_dir,
            &crate::config::env::process_environment,
        )
    }

    /// Parses and validates: relative paths start from `base` (data paths from `data_dir` when
    /// given), `${VAR}` references are resolved by `lookup`.
    pub fn parse_with(
        text: &str,
        base: &Path,
        data_dir: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        let data_base = data_dir.unwrap_or(base);
        let mut table: toml::Table = toml::from_str(text).map_err(|error| {
            let location = match error.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                }
                None => "file".to_string(),
            };
            vec![ConfigError::new(
                &location,
                error.message().trim().to_string(),
            )]
        })?;
        let mut errors = Vec::new();
        // `${VAR}` in string values, before anything reads them; a missing variable is one more
        // error among all the others.
        crate::config::env::substitute(&mut table, lookup, &mut errors);
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                errors.push(ConfigError::new(
                    key,
                    format!("unknown section (known: {})", SECTIONS.join(", ")),
                ));
            }
        }
        let proxy: Option<ProxyFile> = section(&table, "proxy", &mut errors);
        let admin: AdminFile = section(&table, "admin", &mut errors).unwrap_or_default();
        let store: StoreFile = section(&table, "store", &mut errors).unwrap_or_default();
        let log: LogFile = section(&table, "log", &mut errors).unwrap_or_default();
        let retention: RetentionFile =
            section(&table, "retention", &mut errors).unwrap_or_default();
        let stream: Option<StreamFile> = section(&table, "stream", &mut errors);
        let otlp: Vec<(usize, OtlpFile)> = array_section(
            &table,
            "otlp",
            |index, value| otlp_location(index, value.get("name").and_then(toml::Value::as_str)),
            &mut errors,
        );
        let discover: DiscoverFile = section(&table, "discover", &mut errors).unwrap_or_default();
        let unmatched: UnmatchedFile =
            section(&table, "unmatched", &mut errors).unwrap_or_default();
        let hints_file: crate::policy::hints::HintsFile =
            section(&table, "hints", &mut errors).unwrap_or_default();
        let hints = crate::policy::hints::HintsConfig::from_file(&hints_file, &mut errors);
        let actors: Vec<(usize, ActorFile)> = array_section(
            &table,
            "actor",
            |index, value| actor_location(index, value.get("from").and_then(toml::Value::as_str)),
            &mut errors,
        );
        let redact: Option<RedactFile> = section(&table, "redact", &mut errors);
        let archive_files: Vec<(usize, toml::Value, ArchiveFile)> =
            array_section(&table, "archive", archive_location, &mut errors)
                .into_iter()
                .filter_map(|(index, file)| {
                    let item = table.get("archive")?.as_array()?.get(index)?.clone();
                    Some((index, item, file))
                })
                .collect();
        let rules: Vec<(usize, RuleFile)> = array_section(
            &table,
            "rule",
            |index, value| {
                let name = value.get("name").and_then(toml::Value::as_str);
                crate::policy::rules::rule_location(index, name)
            },
            &mut errors,
        );

        let proxy_file = proxy;
        let proxy = match &proxy_file {
            Some(proxy) => validate_proxy(proxy, &mut errors),
            None => {
                errors.push(ConfigError::new(
                    "proxy",
                    "missing: [proxy] needs at least `upstream`",
                ));
                None
            }
        };
        let admin = validate_admin(&admin, &mut errors);
        let store = validate_store(&store, data_base, &mut errors);
        let log_id = match log.log_id.clone() {
            Some(id) if valid_log_id(&id) => id,
            Some(id) => {
                errors.push(ConfigError::new(
                    "log.log_id",
                    format!("`{id}` must be 1-64 characters of letters, digits, '.', '_' or '-'"),
                ));
                String::new()
            }
            None => default_log_id(),
        };
        let log_config = validate_log(&log, base, data_base, &mut errors);
        let retention = validate_retention(&retention, &mut errors);
        let stream = stream
            .as_ref()
            .and_then(|stream| validate_stream(stream, data_base, &mut errors));
        let archives = validate_archives(
            &archive_files,
            base,
            log_config.signing_key_path.is_some(),
            &mut errors,
        );
        let otlp = validate_otlp(&otlp, base, &mut errors);
        let discover = store
            .as_ref()
            .map(|store| validate_discover(&discover, data_base, &store.path, &mut errors));
        let unmatched = match unmatched.record.as_deref() {
            None | Some("mutations") => UnmatchedRecord::Mutations,
            Some("none") => UnmatchedRecord::None,
            Some("all") => UnmatchedRecord::All,
            Some(other) => {
                errors.push(ConfigError::new(
                    "unmatched.record",
                    format!("`{other}` is not one of none, mutations, all"),
                ));
                UnmatchedRecord::Mutations
            }
        };
        let trusted = proxy
            .as_ref()
            .map(|proxy| proxy.trusted_proxies.clone())
            .unwrap_or_default();
        let actors = ActorChain::compile(&actors, &trusted, base, lookup)
            .map_err(|actor_errors| errors.extend(actor_errors));
        let redact = match &actors {
            Ok(actors) => Redactor::compile(redact.as_ref(), actors, &mut errors),
            Err(()) => Redactor::compile(redact.as_ref(), &ActorChain::empty(), &mut errors),
        };
        let rules: Vec<(usize, &RuleFile)> =
            rules.iter().map(|(index, rule)| (*index, rule)).collect();
        let canonical = crate::request::CanonicalConfig::compile(
            proxy_file
                .as_ref()
                .and_then(|file| file.path_normalization.as_deref()),
            proxy_file
                .as_ref()
                .and_then(|file| file.escaped_slashes.as_deref()),
            proxy_file
                .as_ref()
                .and_then(|file| file.path_parameters.as_deref()),
            proxy_file
                .as_ref()
                .and_then(|file| file.method_override.as_deref()),
            &mut errors,
        );
        let semantics = RouteSemantics::default()
            .with(
                proxy_file
                    .as_ref()
                    .and_then(|file| file.route_case.as_deref()),
                proxy_file
                    .as_ref()
                    .and_then(|file| file.trailing_slash.as_deref()),
            )
            .unwrap_or_else(|messages| {
                errors.extend(
                    messages
                        .into_iter()
                        .map(|(key, message)| ConfigError::new(&format!("proxy.{key}"), message)),
                );
                RouteSemantics::default()
            });
        let rules = RuleSet::compile_indexed(&rules, unmatched, semantics)
            .map_err(|rule_errors| errors.extend(rule_errors));
        if let (Some(proxy), Some(admin)) = (&proxy, &admin) {
            if proxy.listen == admin.listen && proxy.listen.port() != 0 {
                errors.push(ConfigError::new(
                    "admin.listen",
                    "must differ from proxy.listen: the admin API is never served on the proxy port",
                ));
            }
        }
        match (proxy, admin, store, actors, rules, discover) {
            (Some(proxy), Some(admin), Some(store), Ok(actors), Ok(rules), Some(discover))
                if errors.is_empty() =>
            {
                Ok(Config {
                    proxy,
                    admin,
                    store,
                    log_id,
                    log: log_config,
                    retention,
                    stream,
                    archives,
                    otlp,
                    discover,
                    table: RawTable(table.clone()),
                    sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
                    policy: Arc::new(Policy {
                        rules,
                        actors,
                        hints,
                        redact,
                        canonical,
                    }),
                })
            }
            _ => Err(errors),
        }
    }
}

fn section<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let value = table.get(key)?;
    if !value.is_table() {
        errors.push(ConfigError::new(key, format!("must be a table: [{key}]")));
        return None;
    }
    match T::deserialize(value.clone()) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            errors.push(ConfigError::new(key, error.message().trim().to_string()));
            None
        }
    }
}

fn array_section<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    locate: impl Fn(usize, &toml::Value) -> String,
    errors: &mut Vec<ConfigError>,
) -> Vec<(usize, T)> {
    let Some(value) = table.get(key) else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        errors.push(ConfigError::new(
            key,
            format!("must be an array of tables: [[{key}]]"),
        ));
        return Vec::new();
    };
    let mut parsed = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match T::deserialize(item.clone()) {
            Ok(value) => parsed.push((index, value)),
            Err(error) => errors.push(ConfigError::new(
                &locate(index, item),
                error.message().trim().to_string(),
            )),
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::log::config::PublishTarget;
    use crate::log::head::LogSigner;
    use crate::proxy::config::normalize_upstream;

    fn store_errors(store: &str) -> Vec<String> {
        let text = format!("[proxy]\nupstream = \"127.0.0.1:3000\"\n[store]\n{store}\n");
        match Config::parse(&text, Path::new("/etc/auditgate")) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_postgres_url_replaces_the_sqlite_file() {
        let config = Config::parse(
            "[proxy]\nupstream = \"127.0.0.1:3000\"\n[store]\nurl = \"postgres://audit:s3cret@db.internal:6432/audit\"\npool_size = 2\n",
            Path::new("/etc/auditgate"),
        )
        .expect("valid");
        let postgres = config.store.postgres.as_ref().expect("postgres");
        assert_eq!(postgres.pool_size, 2);
        assert!(postgres.lock_log);
        assert_eq!(postgres.connection.get_dbname(), Some("audit"));
        assert_eq!(
            config.store.spill_path(),
            PathBuf::from("/etc/auditgate/data/spill.ndjson")
        );
        assert_eq!(
            crate::store::describe(&config.store),
            "postgres://db.internal:6432/audit"
        );
        // The password never shows, not even in a debug dump of the config.
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn the_stream_goes_to_stdout_or_a_rotated_file() {
        let parse = |stream: &str| {
            Config::parse(
                &format!("[proxy]\nupstream = \"127.0.0.1:3000\"\n[stream]\n{stream}\n"),
                Path::new("/etc/auditgate"),
            )
        };
        let config = parse("ndjson = \"stdout\"").expect("valid");
        let stream = config.stream.expect("stream");
        assert_eq!(stream.target, crate::writer::stream::StreamTarget::Stdout);
        let config =
            parse("ndjson = \"log/audit.ndjson\"\nmax_bytes = \"1MiB\"\nkeep = 3").expect("valid");
        let stream = config.stream.expect("stream");
        assert_eq!(
            stream.target,
            crate::writer::stream::StreamTarget::File(PathBuf::from(
                "/etc/auditgate/log/audit.ndjson"
            ))
        );
        assert_eq!((stream.max_bytes, stream.keep), (1024 * 1024, 3));
        assert_eq!(stream.format, crate::writer::stream::StreamFormat::Ndjson);
        let config = parse("ndjson = \"stdout\"\nformat = \"ocsf\"").expect("valid");
        let stream = config.stream.expect("stream");
        assert_eq!(stream.format, crate::writer::stream::StreamFormat::Ocsf);
        let errors = parse("ndjson = \"stdout\"\nformat = \"cef\"").expect_err("invalid");
        assert_eq!(
            errors[0].to_string(),
            "stream.format: `cef` is not a stream format: \"ndjson\" or \"ocsf\""
        );
        assert!(
            Config::parse("[proxy]\nupstream = \"a:1\"\n", Path::new("."))
                .expect("valid")
                .stream
                .is_none()
        );
        let errors: Vec<String> = parse("max_bytes = \"1KiB\"\nkeep = 0\nformat = \"x\"")
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            errors.iter().any(|error| error.starts_with("stream")),
            "{errors:?}"
        );
        let errors: Vec<String> = parse("max_bytes = \"1KiB\"\nkeep = 0")
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        let all = errors.join("\n");
        for expected in [
            "stream.ndjson: missing",
            "stream.max_bytes: must be at least 4KiB",
            "stream.keep: must be at least 1",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in {all}");
        }
        let errors = parse("ndjson = \"stdout\"\nkeep = 2").expect_err("invalid");
        assert!(errors[0].to_string().contains("rotation applies to a file"));
    }

    #[test]
    fn postgres_settings_are_checked_together() {
        let errors = store_errors(
            "path = \"a.db\"\nurl = \"postgres://u@h/db?sslmode=verify-full&sslrootcert=missing-ca.pem\"\npassword_env = \"AUDITGATE_TEST_UNSET_VARIABLE\"\npool_size = 0\nconnect_timeout = \"soon\"",
        );
        let all = errors.join("\n");
        for expected in [
            "store.url: give either path",
            "store.url: sslrootcert: cannot read the CA file /etc/auditgate/missing-ca.pem",
            "store.password_env: environment variable AUDITGATE_TEST_UNSET_VARIABLE is not set",
            "store.pool_size: must be at least 1",
            "store.connect_timeout",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let errors = store_errors("url = \"postgres:///db\"").join("\n");
        assert!(errors.contains("names no host"), "{errors}");
        let errors = store_errors("url = \"mysql://x\"").join("\n");
        assert!(
            errors.contains("store.url: not a PostgreSQL connection URL"),
            "{errors}"
        );
        let errors = store_errors("lock_log = false\npool_size = 3").join("\n");
        assert!(
            errors.contains("store.lock_log: applies to a PostgreSQL store only"),
            "{errors}"
        );
        assert!(
            errors.contains("store.pool_size: applies to a PostgreSQL store only"),
            "{errors}"
        );
        let errors = store_errors("url = \"postgres://u:p4ss@h/db?sslmode=bogus\"").join("\n");
        assert!(
            errors.contains("store.url: sslmode `bogus` is not one of disable, prefer, require, verify-ca, verify-full"),
            "{errors}"
        );
        assert!(!errors.contains("p4ss"), "{errors}");
        // libpq's modes are all accepted; `require` needs no CA.
        assert_eq!(
            store_errors("url = \"postgres://u@h/db?sslmode=require\""),
            Vec::<String>::new()
        );
    }

    #[test]
    fn minimal_config_has_defaults() {
        let config = Config::parse(
            "[proxy]\nupstream = \"127.0.0.1:3000\"\n",
            Path::new("/etc/auditgate"),
        )
        .expect("valid");
        assert_eq!(config.proxy.upstream, "127.0.0.1:3000");
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(
            config.store.path,
            PathBuf::from("/etc/auditgate/data/audit.db")
        );
        assert_eq!(config.proxy.max_body_capture, 65_536);
        assert_eq!(config.policy.rules.unmatched, UnmatchedRecord::Mutations);
    }

    #[test]
    fn relative_data_paths_follow_the_data_directory_and_keys_stay_with_the_config() {
        let config_dir =
            std::env::temp_dir().join(format!("auditgate-config-data-dir-{}", std::process::id()));
        std::fs::create_dir_all(&config_dir).expect("dir");
        LogSigner::write_new(&config_dir.join("log.key")).expect("key");
        let text = "[proxy]\nupstream = \"127.0.0.1:3000\"\n\
            [store]\npath = \"audit.db\"\n\
            [stream]\nndjson = \"siem/audit.ndjson\"\n\
            [log]\nsigning_key = \"log.key\"\npublish_heads = [\"file:heads.ndjson\"]\n";
        let data = Path::new("/var/lib/auditgate");
        let config = Config::parse_with_data_dir(text, &config_dir, Some(data)).expect("valid");
        assert_eq!(config.store.path, data.join("audit.db"));
        assert_eq!(
            config.store.spill_path(),
            data.join("audit.db.spill.ndjson")
        );
        assert_eq!(
            config.log.signing_key_path,
            Some(config_dir.join("log.key"))
        );
        let rendered = format!("{:?} {:?}", config.stream, config.log.publish_heads);
        assert!(
            rendered.contains("/var/lib/auditgate/siem/audit.ndjson"),
            "{rendered}"
        );
        assert!(
            rendered.contains("/var/lib/auditgate/heads.ndjson"),
            "{rendered}"
        );
        // Absolute paths are left alone; without a data directory the config's is used.
        let absolute = text.replace("\"audit.db\"", "\"/srv/audit.db\"");
        let config =
            Config::parse_with_data_dir(&absolute, &config_dir, Some(data)).expect("valid");
        assert_eq!(config.store.path, PathBuf::from("/srv/audit.db"));
        let config = Config::parse(text, &config_dir).expect("valid");
        assert_eq!(config.store.path, config_dir.join("audit.db"));
        let _ = std::fs::remove_dir_all(&config_dir);
    }

    #[test]
    fn every_error_is_listed_with_its_place() {
        let text = r#"
            [proxy]
            listen = "nowhere"
            upstream = "https://app"
            max_body_capture = "lots"
            trusted_proxies = ["10.0.0.0/33"]
            [admin]
            listen = "127.0.0.1:9090"
            [[admin.tokens]]
            name = "ops"
            sha256 = "abc"
            scopes = ["read", "delete"]
            [store]
            durability = "sometimes"
            [unmatched]
            record = "some"
            [bogus]
            x = 1
            [[rule]]
            name = "r"
            path = "/x"
            actoin = "typo"
            [[rule]]
            name = "ok"
            path = "/y"
            action = "y"
            status = "7xx"
        "#;
        let errors = Config::parse(text, Path::new(".")).expect_err("invalid");
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        for expected in [
            "proxy.listen",
            "proxy.upstream",
            "proxy.max_body_capture",
            "proxy.trusted_proxies",
            "admin.tokens #1 (\"ops\").sha256",
            "admin.tokens #1 (\"ops\").scopes",
            "store.durability",
            "unmatched.record",
            "bogus: unknown section",
            "rule #1 (\"r\"): unknown field `actoin`",
            "rule #2 (\"ok\").status",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn syntax_errors_say_the_line() {
        let errors = Config::parse("[proxy]\nupstream = \n", Path::new(".")).expect_err("invalid");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].location.starts_with("line "), "{:?}", errors[0]);
    }

    #[test]
    fn admin_never_shares_the_proxy_port() {
        let text = "[proxy]\nupstream = \"127.0.0.1:3000\"\nlisten = \"127.0.0.1:9090\"\n";
        let errors = Config::parse(text, Path::new(".")).expect_err("invalid");
        assert!(errors.iter().any(|error| error.location == "admin.listen"));
    }

    #[test]
    fn log_and_retention_keys_are_validated() {
        let dir = std::env::temp_dir().join(format!("auditgate-config-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("dir");
        LogSigner::write_new(&dir.join("log.key")).expect("key");
        let text = r#"
            [proxy]
            upstream = "127.0.0.1:3000"
            [log]
            signing_key = "log.key"
            sign_every = 10
            sign_interval = "250ms"
            publish_heads = ["file:heads.ndjson", "http://audit.example:8080/heads"]
            [retention]
            max_age = "400d"
            [[retention.rules]]
            action_prefix = "auth."
            max_age = "30d"
        "#;
        let config = Config::parse(text, &dir).expect("valid");
        assert!(config.log.signer.is_some());
        assert_eq!(config.log.sign_every, 10);
        assert_eq!(config.log.sign_interval, Duration::from_millis(250));
        assert_eq!(config.log.heartbeat_interval, Duration::from_secs(3600));
        assert_eq!(
            config.log.publish_heads[0],
            PublishTarget::File(dir.join("heads.ndjson"))
        );
        assert_eq!(
            config.log.publish_heads[1].to_string(),
            "http://audit.example:8080/heads"
        );
        assert_eq!(
            config.retention.max_age,
            Some(Duration::from_secs(400 * 86_400))
        );
        assert_eq!(config.retention.rules[0].action_prefix, "auth.");

        let defaults =
            Config::parse("[proxy]\nupstream = \"127.0.0.1:3000\"\n", &dir).expect("valid");
        assert!(defaults.log.signer.is_none());
        assert_eq!(defaults.log.sign_every, 1000);
        assert_eq!(defaults.log.sign_interval, Duration::from_secs(10));
        assert_eq!(defaults.retention.max_age, None);

        let text = r#"
            [proxy]
            upstream = "127.0.0.1:3000"
            [log]
            signing_key = "missing.key"
            sign_every = 0
            sign_interval = "0s"
            publish_heads = ["https://x/heads", "s3://bucket", "file:"]
            publish_ca_file = "missing-ca.pem"
            [retention]
            max_age = "forever"
            prune_interval = "soon"
            [[retention.rules]]
            action_prefix = "auth."
            max_age = "30d"
            [[retention.rules]]
            action_prefix = "auth."
            max_age = "60d"
            [[retention.rules]]
            action_prefix = ""
            max_age = "1d"
            [[retention.rules]]
            action_prefix = "user."
            max_age = "0d"
        "#;
        let errors = Config::parse(text, &dir).expect_err("invalid");
        let all = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for expected in [
            "log.signing_key: ",
            "auditgate keygen",
            "log.sign_every: must be at least 1",
            "log.sign_interval: must be longer than 0",
            "log.publish_ca_file: cannot read the CA file ",
            "log.publish_heads #2: `s3://bucket` is not a target",
            "log.publish_heads #3: `file:` needs a path",
            "retention.max_age: ",
            "retention.prune_interval: ",
            "retention.rules #2 (\"auth.\").action_prefix: names the same prefix",
            "retention.rules #3 (\"\").action_prefix: must not be empty",
            "retention.rules #4 (\"user.\").max_age: must be longer than 0",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let errors = Config::parse(
            "[proxy]\nupstream = \"127.0.0.1:3000\"\n[log]\npublish_heads = [\"file:h\"]\n",
            &dir,
        )
        .expect_err("invalid");
        assert!(
            errors[0].message.contains("needs log.signing_key"),
            "{errors:?}"
        );
        let errors = Config::parse(
            "[proxy]\nupstream = \"127.0.0.1:3000\"\n[log]\nsigning_key = \"log.key\"\n\
             publish_heads = [\"http://relay/heads\"]\npublish_ca_file = \"ca.pem\"\n",
            &dir,
        )
        .expect_err("a CA file without an https target");
        assert_eq!(
            errors[0].to_string(),
            "log.publish_ca_file: applies to https:// targets in log.publish_heads, and there is none"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn checkpoint_origin_and_target_formats_are_validated() {
        let dir = std::env::temp_dir().join(format!("auditgate-config-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("dir");
        LogSigner::write_new(&dir.join("log.key")).expect("key");
        let text = r#"
            [proxy]
            upstream = "127.0.0.1:3000"
            [log]
            log_id = "orders"
            signing_key = "log.key"
            publish_heads = [
                "file:heads.ndjson",
                { target = "http://witness.example/add-checkpoint", format = "checkpoint" },
                { target = "http://collector.example/heads", format = "json" },
                { target = "file:more-heads.ndjson" },
            ]
        "#;
        let config = Config::parse(text, &dir).expect("valid");
        assert_eq!(config.log.checkpoint_origin(&config.log_id), "orders");
        let targets: Vec<String> = config
            .log
            .publish_heads
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            targets,
            [
                format!("file:{}", dir.join("heads.ndjson").display()),
                "http://witness.example/add-checkpoint (checkpoint)".to_string(),
                "http://collector.example/heads".to_string(),
                format!("file:{}", dir.join("more-heads.ndjson").display()),
            ]
        );
        assert_eq!(config.log.heads_files().len(), 2);

        let with_origin = text.replace(
            "log_id = \"orders\"",
            "log_id = \"orders\"\norigin = \"audit.example.com/orders\"",
        );
        let config = Config::parse(&with_origin, &dir).expect("valid");
        assert_eq!(
            config.log.checkpoint_origin(&config.log_id),
            "audit.example.com/orders"
        );

        let text = r#"
            [proxy]
            upstream = "127.0.0.1:3000"
            [log]
            origin = "audit example+orders"
            signing_key = "log.key"
            publish_heads = [
                { target = "file:heads.ndjson", format = "checkpoint" },
                { target = "http://w.example/", format = "note" },
                { target = "http://w.example/", fromat = "checkpoint" },
                { format = "checkpoint" },
                42,
            ]
        "#;
        let errors = Config::parse(text, &dir).expect_err("invalid");
        let all = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for expected in [
            "log.origin: invalid origin: contains a space",
            "log.publish_heads #1: format = \"checkpoint\" applies to http:// and https:// targets",
            "log.publish_heads #2: format `note` is not one of json, checkpoint",
            "log.publish_heads #3: unknown key `fromat`",
            "log.publish_heads #4: missing `target`",
            "log.publish_heads #5: must be a target string or a table",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn upstream_forms() {
        assert_eq!(
            normalize_upstream("http://app:3000/"),
            Ok("app:3000".to_string())
        );
        assert!(normalize_upstream("app").is_err());
        assert!(normalize_upstream("app:3000/x").is_err());
    }
}
