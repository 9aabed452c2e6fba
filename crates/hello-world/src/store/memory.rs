//! The embedded store: all state in this process, behind one mutex.
//!
//! It is the default when no Redis URL is configured, so `cargo run` needs nothing else. It is
//! correct under concurrency within one process (every verb is one critical section) but shares
//! nothing between replicas and forgets everything on exit.
//!
//! Idempotency records are kept for the retention and at most [`MAX_IDEMPOTENCY_RECORDS`] of
//! them at a time, so a client sending endless fresh keys cannot grow memory without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, ready};
use tokio::time::Instant;

use super::{
    Condition, Entry, IDEMPOTENCY_RETENTION, Increment, Store, StoreError, Version, Written,
};

/// The most idempotency records kept at once. Past it the oldest record is forgotten early, so
/// a retry of that request would count again; at 100 000 records the table stays around 20 MiB
/// even with 128-byte keys.
pub const MAX_IDEMPOTENCY_RECORDS: usize = 100_000;

/// The in-process [`Store`].
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    retention: Duration,
    max_records: usize,
}

#[derive(Debug, Default)]
struct State {
    /// The store-wide version sequence: the last version handed out (0: none yet).
    last_version: Version,
    kv: HashMap<String, Entry>,
    counters: HashMap<String, i64>,
    /// First results by (counter, idempotency key).
    records: HashMap<(String, String), i64>,
    /// The same records in insertion order with their expiry. Every record gets the same
    /// retention, so insertion order is expiry order and pruning only looks at the front.
    expiries: VecDeque<(Instant, (String, String))>,
}

impl State {
    fn next_version(&mut self) -> Version {
        self.last_version += 1;
        self.last_version
    }

    /// Forgets records that have expired, then the oldest ones while over `max_records`.
    fn prune(&mut self, now: Instant, max_records: usize) {
        while let Some((expires, _)) = self.expiries.front() {
            if *expires > now && self.expiries.len() <= max_records {
                break;
            }
            if let Some((_, id)) = self.expiries.pop_front() {
                self.records.remove(&id);
            }
        }
    }
}

/// Whether `condition` allows a write when the key's current version is `current`.
fn check(condition: Condition, current: Option<Version>) -> Result<(), StoreError> {
    let holds = match condition {
        Condition::Always => true,
        Condition::IfVersion(expected) => current == Some(expected),
        Condition::IfExists => current.is_some(),
        Condition::IfAbsent => current.is_none(),
    };
    if holds {
        Ok(())
    } else {
        Err(StoreError::ConditionFailed { current })
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_limits(IDEMPOTENCY_RETENTION, MAX_IDEMPOTENCY_RECORDS)
    }

    /// A store whose idempotency records last `retention` and number at most `max_records`
    /// (at least one).
    pub fn with_limits(retention: Duration, max_records: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            retention,
            max_records: max_records.max(1),
        }
    }

    /// The number of idempotency records currently held (after pruning expired ones).
    pub fn idempotency_records(&self) -> usize {
        let mut state = self.lock();
        state.prune(Instant::now(), self.max_records);
        state.records.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock, and every critical section leaves the
        // state consistent before any fallible step, so a poisoned lock still guards valid data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn put_now(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
    ) -> Result<Written, StoreError> {
        let mut state = self.lock();
        let current = state.kv.get(key).map(|entry| entry.version);
        check(condition, current)?;
        let version = state.next_version();
        state.kv.insert(key.to_owned(), Entry { value, version });
        Ok(Written {
            version,
            created: current.is_none(),
        })
    }

    fn delete_now(&self, key: &str, condition: Condition) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let current = state.kv.get(key).map(|entry| entry.version);
        check(condition, current)?;
        Ok(state.kv.remove(key).is_some())
    }

    fn increment_now(&self, counter: &str, key: Option<&str>) -> Increment {
        let now = Instant::now();
        let mut state = self.lock();
        state.prune(now, self.max_records);
        let id = key.map(|key| (counter.to_owned(), key.to_owned()));
        if let Some(first) = id.as_ref().and_then(|id| state.records.get(id)) {
            return Increment {
                value: *first,
                replayed: true,
            };
        }
        let value = {
            let slot = state.counters.entry(counter.to_owned()).or_insert(0);
            *slot = slot.saturating_add(1);
            *slot
        };
        if let Some(id) = id {
            state.records.insert(id.clone(), value);
            state.expiries.push_back((now + self.retention, id));
            // The new record may take the table over its cap.
            state.prune(now, self.max_records);
        }
        Increment {
            value,
            replayed: false,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        ready(Ok(self.lock().kv.get(key).cloned())).boxed()
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Written, StoreError>> {
        ready(self.put_now(key, value, condition)).boxed()
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(self.delete_now(key, condition)).boxed()
    }

    fn counter<'a>(&'a self, counter: &'a str) -> BoxFuture<'a, Result<i64, StoreError>> {
        ready(Ok(self.lock().counters.get(counter).copied().unwrap_or(0))).boxed()
    }

    fn increment<'a>(
        &'a self,
        counter: &'a str,
        idempotency_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Increment, StoreError>> {
        ready(Ok(self.increment_now(counter, idempotency_key))).boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idempotency_records_expire_after_the_retention() {
        let store = MemoryStore::with_limits(Duration::from_secs(60), 10);
        let first = store
            .increment("c", Some("k"))
            .await
            .expect("memory never fails");
        tokio::time::advance(Duration::from_secs(59)).await;
        let replay = store
            .increment("c", Some("k"))
            .await
            .expect("memory never fails");
        assert_eq!(
            replay,
            Increment {
                value: first.value,
                replayed: true
            }
        );

        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(store.idempotency_records(), 0);
        let again = store
            .increment("c", Some("k"))
            .await
            .expect("memory never fails");
        assert_eq!(
            again,
            Increment {
                value: first.value + 1,
                replayed: false
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idempotency_records_are_capped_by_forgetting_the_oldest() {
        let store = MemoryStore::with_limits(Duration::from_secs(60), 3);
        for key in ["a", "b", "c", "d"] {
            store
                .increment("c", Some(key))
                .await
                .expect("memory never fails");
        }
        assert_eq!(store.idempotency_records(), 3);
        // "a" was forgotten: it counts again. "d" is still remembered.
        let a = store
            .increment("c", Some("a"))
            .await
            .expect("memory never fails");
        assert_eq!(
            a,
            Increment {
                value: 5,
                replayed: false
            }
        );
        let d = store
            .increment("c", Some("d"))
            .await
            .expect("memory never fails");
        assert_eq!(
            d,
            Increment {
                value: 4,
                replayed: true
            }
        );
    }
}
