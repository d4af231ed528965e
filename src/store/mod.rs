//! The store: where entries are appended and from where they are queried.
//!
//! [`Store`] is the one interface the writer and the admin API use; `sqlite.rs` is the embedded
//! default. Calls are blocking: the writer runs on its own thread and the admin API calls the
//! store through `spawn_blocking`, so the proxy's async workers never wait on a database.

pub mod query;
pub mod sqlite;
pub mod sqlite_rows;

use crate::entry::AuditEntry;
use query::{Filter, PageRequest};
pub use sqlite_rows::{Bucket, Page, StatsBy};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open the store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("store schema version {found} is newer than this auditgate knows ({known}); upgrade auditgate")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("{0}")]
    Other(String),
}

/// An append-only log of entries.
pub trait Store: Send + Sync + 'static {
    /// Appends the entries in one transaction, giving each the next sequence number in order.
    /// Either all are appended or none is.
    fn append(&self, entries: &mut [AuditEntry]) -> Result<(), StoreError>;

    /// Whether the store can take writes now (for /readyz).
    fn check_writable(&self) -> Result<(), StoreError>;

    /// Number of entries in the log.
    fn size(&self) -> Result<u64, StoreError>;

    /// One page of entries matching the filter, by keyset.
    fn list(&self, filter: &Filter, page: &PageRequest) -> Result<Page, StoreError>;

    /// A page by number, newest first (the reference-compatible endpoint's paging).
    fn list_offset(
        &self,
        filter: &Filter,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// How many entries match the filter.
    fn count(&self, filter: &Filter) -> Result<u64, StoreError>;

    /// One entry by id (or by decimal sequence number).
    fn get(&self, id: &str) -> Result<Option<AuditEntry>, StoreError>;

    /// Counts grouped by action, actor, outcome, day or hour.
    fn stats(&self, filter: &Filter, by: StatsBy, limit: u32) -> Result<Vec<Bucket>, StoreError>;

    /// Durably records write-ahead intents (entries of requests not yet forwarded), in one
    /// transaction.
    fn record_intents(&self, intents: &[AuditEntry]) -> Result<(), StoreError>;

    /// Removes the intents of entries that have been appended.
    fn clear_intents(&self, ids: &[String]) -> Result<(), StoreError>;

    /// The intents whose final entry never arrived (a crash between forwarding and completion),
    /// oldest first. Intents whose entry is in the log are cleared, not returned.
    fn unfinished_intents(&self) -> Result<Vec<AuditEntry>, StoreError>;

    /// Which of these entry ids are already in the log (for re-imports that must not duplicate).
    fn existing_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
}
