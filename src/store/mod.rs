//! The store of audit entries.

pub mod query;
pub mod sqlite_rows;
