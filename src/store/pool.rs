//! The idle reader connections a store keeps between calls, kept the same way by both backends:
//! a call takes one (or opens a new one when none waits) and gives it back after, and the pool
//! keeps at most its capacity, so a burst of readers does not leave connections open for good.

use std::sync::Mutex;

use crate::store::StoreError;

#[derive(Debug)]
pub(crate) struct ReaderPool<C> {
    idle: Mutex<Vec<C>>,
    capacity: usize,
}

impl<C> ReaderPool<C> {
    /// An empty pool that keeps at most `capacity` idle connections.
    pub(crate) fn new(capacity: usize) -> ReaderPool<C> {
        ReaderPool {
            idle: Mutex::new(Vec::new()),
            capacity,
        }
    }

    /// An idle connection, if one waits.
    pub(crate) fn take(&self) -> Result<Option<C>, StoreError> {
        Ok(self
            .idle
            .lock()
            .map_err(|_| StoreError::Other("reader pool poisoned".into()))?
            .pop())
    }

    /// Keeps `connection` for the next call; it is closed instead when the pool is full.
    pub(crate) fn give_back(&self, connection: C) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.capacity {
                idle.push(connection);
            }
        }
    }

    /// Every idle connection, leaving the pool empty (when the store is dropped).
    pub(crate) fn drain(&mut self) -> Vec<C> {
        match self.idle.get_mut() {
            Ok(idle) => std::mem::take(idle),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_at_most_its_capacity_and_gives_the_newest_first() {
        let mut pool = ReaderPool::new(2);
        assert_eq!(pool.take().expect("unpoisoned"), None);
        for connection in ["a", "b", "c"] {
            pool.give_back(connection);
        }
        assert_eq!(pool.take().expect("unpoisoned"), Some("b"), "c was closed");
        assert_eq!(pool.drain(), vec!["a"]);
        assert_eq!(pool.take().expect("unpoisoned"), None);
    }
}
