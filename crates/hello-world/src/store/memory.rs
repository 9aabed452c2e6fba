//! The embedded store: one process's memory, behind one mutex. `cargo run` needs nothing else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::{Condition, Entry, IDEMPOTENCY_RETENTION, Increment, Store, StoreError, Version};

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_version: Version,
    entries: HashMap<String, Entry>,
    counters: HashMap<String, i64>,
    /// Idempotency key → (first result, when recorded).
    seen: HashMap<String, (i64, Instant)>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-written (every change is a
        // single insert/remove), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn check(condition: Condition, current: Option<Version>) -> Result<(), StoreError> {
    let holds = match condition {
        Condition::Always => true,
        Condition::IfVersion(version) => current == Some(version),
        Condition::IfExists => current.is_some(),
        Condition::IfAbsent => current.is_none(),
    };
    if holds {
        Ok(())
    } else {
        Err(StoreError::ConditionFailed { current })
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        let entry = self.lock().entries.get(key).cloned();
        Box::pin(async move { Ok(entry) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        let result = {
            let mut state = self.lock();
            let current = state.entries.get(key).map(|entry| entry.version);
            check(condition, current).map(|()| {
                state.last_version += 1;
                let version = state.last_version;
                state
                    .entries
                    .insert(key.to_owned(), Entry { value, version });
                version
            })
        };
        Box::pin(async move { result })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        condition: Condition,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let result = {
            let mut state = self.lock();
            let current = state.entries.get(key).map(|entry| entry.version);
            check(condition, current).map(|()| state.entries.remove(key).is_some())
        };
        Box::pin(async move { result })
    }

    fn counter<'a>(&'a self, counter: &'a str) -> BoxFuture<'a, Result<i64, StoreError>> {
        let value = self.lock().counters.get(counter).copied().unwrap_or(0);
        Box::pin(async move { Ok(value) })
    }

    fn increment<'a>(
        &'a self,
        counter: &'a str,
        idempotency_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Increment, StoreError>> {
        let result = {
            let mut state = self.lock();
            let now = Instant::now();
            state
                .seen
                .retain(|_, (_, at)| now.duration_since(*at) < IDEMPOTENCY_RETENTION);
            match idempotency_key.and_then(|key| state.seen.get(key).map(|(value, _)| *value)) {
                Some(value) => Increment {
                    value,
                    replayed: true,
                },
                None => {
                    let slot = state.counters.entry(counter.to_owned()).or_insert(0);
                    *slot += 1;
                    let value = *slot;
                    if let Some(key) = idempotency_key {
                        state.seen.insert(key.to_owned(), (value, now));
                    }
                    Increment {
                        value,
                        replayed: false,
                    }
                }
            }
        };
        Box::pin(async move { Ok(result) })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}
