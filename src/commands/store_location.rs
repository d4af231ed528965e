//! Where the read commands (`query`, `export`, `verify`, `backup`) find the store: `--db` (a
//! SQLite file or a PostgreSQL URL) or `--config` (a sidecar's configuration: its `[store]`,
//! with the password from `password_env` and its TLS settings, and its `[log] log_id`).
//!
//! Every store is opened read-only: a read command never creates, migrates or changes a file,
//! and a path that holds no log is an error that says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;

use crate::store::postgres::config::PostgresConfig;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// The SQLite file read when neither `--db` nor `--config` is given.
pub const DEFAULT_DB: &str = "data/audit.db";

/// A store named on the command line.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    /// A PostgreSQL URL given with `--db` (password from the URL or `PGPASSWORD`).
    PostgresUrl(String),
    /// The PostgreSQL database of a configuration file.
    Postgres(Box<PostgresConfig>),
}

/// A located store and, when it came from a configuration, that configuration's log.
#[derive(Debug, Clone)]
pub struct Located {
    pub location: StoreLocation,
    /// `[log] log_id` of the configuration, when `--config` was given.
    pub config_log_id: Option<String>,
    /// The log's signing key, when `--config` names one: exports with proofs sign their
    /// manifest with it.
    pub config_signer: Option<Arc<crate::log::head::LogSigner>>,
    /// The origin of the log's checkpoints, when `--config` was given.
    pub config_origin: Option<String>,
    /// The verifier keys of the configuration's `[[log.witnesses]]`.
    pub config_witnesses: Vec<crate::log::witness::WitnessKey>,
}

/// Why a store could not be located.
#[derive(Debug)]
pub enum LocateError {
    /// The configuration file is invalid; every error, ready to print.
    Config(crate::base::ConfigErrors),
}

/// Resolves `--db` / `--config` (clap refuses both at once); neither means [`DEFAULT_DB`].
pub fn locate(db: Option<&Path>, config: Option<&Path>) -> Result<Located, LocateError> {
    if let Some(path) = config {
        let config = Config::load(path).map_err(LocateError::Config)?;
        let location = match &config.store.postgres {
            Some(database) => StoreLocation::Postgres(Box::new(database.clone())),
            None => StoreLocation::Sqlite(config.store.path.clone()),
        };
        return Ok(Located {
            location,
            config_origin: Some(config.log.checkpoint_origin(&config.log_id)),
            config_witnesses: config
                .log
                .witnesses
                .iter()
                .map(|witness| witness.key.clone())
                .collect(),
            config_log_id: Some(config.log_id),
            config_signer: config.log.signer,
        });
    }
    let db = db.unwrap_or(Path::new(DEFAULT_DB));
    let location = match db
        .to_str()
        .filter(|text| crate::store::postgres::is_url(text))
    {
        Some(url) => StoreLocation::PostgresUrl(url.to_string()),
        None => StoreLocation::Sqlite(db.to_path_buf()),
    };
    Ok(Located {
        location,
        config_log_id: None,
        config_signer: None,
        config_origin: None,
        config_witnesses: Vec::new(),
    })
}

impl StoreLocation {
    /// For messages: the file, or `postgres://host:port/db` (never a password).
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => path.display().to_string(),
            StoreLocation::PostgresUrl(url) => {
                crate::store::postgres::tls::parse_url(url, Path::new("."))
                    .map(|parsed| crate::store::postgres::describe_target(&parsed.config))
                    .unwrap_or_else(|_| "the PostgreSQL URL".to_string())
            }
            StoreLocation::Postgres(database) => {
                crate::store::postgres::describe_target(&database.connection)
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        !matches!(self, StoreLocation::Sqlite(_))
    }

    /// Opens the store read-only; `log_id` is the log whose tree and heads are read (PostgreSQL
    /// holds several).
    pub fn open_for_reading(&self, log_id: &str) -> Result<ReadStore, StoreError> {
        match self {
            StoreLocation::Sqlite(path) => {
                let store = Arc::new(SqliteStore::open_read_only(path)?);
                Ok(ReadStore {
                    store: store.clone(),
                    sqlite: Some(store),
                })
            }
            StoreLocation::PostgresUrl(url) => Ok(ReadStore {
                store: Arc::new(crate::store::postgres::open_for_reading(url, log_id)?),
                sqlite: None,
            }),
            StoreLocation::Postgres(database) => Ok(ReadStore {
                store: Arc::new(crate::store::postgres::open_config_for_reading(
                    database, log_id,
                )?),
                sqlite: None,
            }),
        }
    }
}

/// A store opened by a read command.
pub struct ReadStore {
    pub store: Arc<dyn Store>,
    sqlite: Option<Arc<SqliteStore>>,
}

impl ReadStore {
    /// Call when the reading is done: fails if a SQLite file read without locks changed
    /// meanwhile, since the result may then mix two states of the log.
    pub fn check_consistent(&self) -> Result<(), StoreError> {
        match &self.sqlite {
            Some(store) => store.check_read_consistent(),
            None => Ok(()),
        }
    }
}
