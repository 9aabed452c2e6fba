//! The embedded store: all state in this process, behind one mutex.
//!
//! It is the default when no Redis URL is configured, so `cargo run` needs nothing else. It is
//! correct under concurrency within one process (every verb is one critical section) but shares
//! nothing between replicas and forgets everything on exit.
//!
//! Its memory is bounded by a budget of bytes (`--store-budget`): keys, values, idempotency
//! records and counters, each with a fixed allowance for its share of the maps
//! ([`ENTRY_OVERHEAD`], [`RECORD_OVERHEAD`]). A write that would take the total past the budget
//! is refused with [`StoreError::Full`] before anything changes; reads and deletes always work,
//! and a delete (or an expired record) gives its bytes back. A write that frees as much as it
//! takes, such as replacing a value with one no larger, is never refused. Idempotency records
//! are kept for the retention, then forgotten.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, ready};
use tokio::time::Instant;

use super::{
    Condition, Entry, IDEMPOTENCY_RETENTION, Increment, Store, StoreError, Version, Written,
};

/// What the budget counts for a kv entry or a counter besides its own bytes: its slot in the map
/// (a key and an entry, 64 bytes, in a table that may be half empty after it grew) and the
/// allocator's rounding of its two allocations. Generous, so that a flood of tiny entries cannot
/// outgrow the budget unseen.
pub const ENTRY_OVERHEAD: usize = 256;

/// The same for an idempotency record, which holds its counter name and key twice (in the map
/// of results and in the queue of expiries): two slots and four allocations.
pub const RECORD_OVERHEAD: usize = 320;

/// The in-process [`Store`].
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    retention: Duration,
    /// Most bytes the state may hold, as [`State::used`] counts them.
    budget: usize,
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
    /// Bytes held, as the budget counts them.
    used: usize,
}

fn entry_cost(key: &str, value: &[u8]) -> usize {
    ENTRY_OVERHEAD + key.len() + value.len()
}

fn counter_cost(name: &str) -> usize {
    ENTRY_OVERHEAD + name.len()
}

fn record_cost((counter, key): &(String, String)) -> usize {
    RECORD_OVERHEAD + 2 * (counter.len() + key.len())
}

impl State {
    fn next_version(&mut self) -> Version {
        self.last_version += 1;
        self.last_version
    }

    /// Forgets the records whose retention is over, giving their bytes back.
    fn prune(&mut self, now: Instant) {
        while let Some((expires, _)) = self.expiries.front() {
            if *expires > now {
                break;
            }
            if let Some((_, id)) = self.expiries.pop_front() {
                self.records.remove(&id);
                self.used = self.used.saturating_sub(record_cost(&id));
            }
        }
    }

    /// Takes `more` bytes while giving back `less`, or refuses when that would take the total
    /// past `budget` (then nothing changes).
    fn reserve(&mut self, more: usize, less: usize, budget: usize) -> Result<(), StoreError> {
        let after = self.used.saturating_sub(less).saturating_add(more);
        if more > less && after > budget {
            return Err(StoreError::Full);
        }
        self.used = after;
        Ok(())
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
    /// A store holding at most `budget` bytes, whose idempotency records last the retention.
    pub fn new(budget: usize) -> Self {
        Self::with_retention(IDEMPOTENCY_RETENTION, budget)
    }

    /// A store whose idempotency records last `retention`.
    pub fn with_retention(retention: Duration, budget: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            retention,
            budget,
        }
    }

    /// The number of idempotency records currently held (after pruning expired ones).
    pub fn idempotency_records(&self) -> usize {
        let mut state = self.lock();
        state.prune(Instant::now());
        state.records.len()
    }

    /// The bytes held, as the budget counts them (after pruning expired records).
    pub fn used(&self) -> usize {
        let mut state = self.lock();
        state.prune(Instant::now());
        state.used
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
        let (current, freed) = match state.kv.get(key) {
            Some(entry) => (Some(entry.version), entry_cost(key, &entry.value)),
            None => (None, 0),
        };
        check(condition, current)?;
        state.reserve(entry_cost(key, &value), freed, self.budget)?;
        // A value received in one piece may be a slice of a larger read buffer, which it would
        // keep alive: a copy owns exactly the bytes the budget counts.
        let value = Bytes::copy_from_slice(&value);
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
        match state.kv.remove(key) {
            Some(entry) => {
                state.used = state.used.saturating_sub(entry_cost(key, &entry.value));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn increment_now(&self, counter: &str, key: Option<&str>) -> Result<Increment, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        state.prune(now);
        let id = key.map(|key| (counter.to_owned(), key.to_owned()));
        if let Some(first) = id.as_ref().and_then(|id| state.records.get(id)) {
            return Ok(Increment {
                value: *first,
                replayed: true,
            });
        }
        // Room for what this increment adds, taken before anything changes.
        let new_counter = !state.counters.contains_key(counter);
        let more =
            usize::from(new_counter) * counter_cost(counter) + id.as_ref().map_or(0, record_cost);
        state.reserve(more, 0, self.budget)?;
        let value = {
            let slot = state.counters.entry(counter.to_owned()).or_insert(0);
            *slot = slot.saturating_add(1);
            *slot
        };
        if let Some(id) = id {
            state.records.insert(id.clone(), value);
            state.expiries.push_back((now + self.retention, id));
        }
        Ok(Increment {
            value,
            replayed: false,
        })
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
        ready(self.increment_now(counter, idempotency_key)).boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room for anything these tests write.
    const ROOMY: usize = 1 << 20;

    #[tokio::test(start_paused = true)]
    async fn idempotency_records_expire_after_the_retention_and_give_their_bytes_back() {
        let store = MemoryStore::with_retention(Duration::from_secs(60), ROOMY);
        let first = store
            .increment("c", Some("k"))
            .await
            .expect("room for one record");
        let with_record = store.used();
        assert_eq!(
            with_record,
            counter_cost("c") + record_cost(&("c".to_owned(), "k".to_owned()))
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        let replay = store.increment("c", Some("k")).await.expect("a replay");
        assert_eq!(
            replay,
            Increment {
                value: first.value,
                replayed: true
            }
        );

        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(store.idempotency_records(), 0);
        assert_eq!(
            store.used(),
            counter_cost("c"),
            "the record's bytes are back"
        );
        let again = store.increment("c", Some("k")).await.expect("room again");
        assert_eq!(
            again,
            Increment {
                value: first.value + 1,
                replayed: false
            }
        );
    }

    #[tokio::test]
    async fn a_full_store_refuses_what_grows_it_and_allows_what_does_not() {
        let value = Bytes::from(vec![b'v'; 1000]);
        let one = entry_cost("k0", &value);
        let store = MemoryStore::new(3 * one);
        for key in ["k0", "k1", "k2"] {
            store
                .put(key, value.clone(), Condition::Always)
                .await
                .expect("fits the budget");
        }
        assert_eq!(store.used(), 3 * one);
        let refused = store.put("k3", value.clone(), Condition::Always).await;
        assert!(matches!(refused, Err(StoreError::Full)), "{refused:?}");
        assert!(
            store.get("k3").await.expect("a read").is_none(),
            "a refused write leaves nothing"
        );
        let bigger = Bytes::from(vec![b'v'; 1001]);
        let grown = store.put("k0", bigger, Condition::Always).await;
        assert!(matches!(grown, Err(StoreError::Full)), "{grown:?}");
        assert_eq!(
            store.get("k0").await.expect("a read").expect("kept").value,
            value
        );
        // Replacing a value with one no larger takes no more room.
        let same = store
            .put("k0", Bytes::from(vec![b'w'; 1000]), Condition::Always)
            .await
            .expect("no growth");
        assert!(!same.created);
        // A refused precondition is answered as such, full or not.
        let conflict = store.put("k0", value.clone(), Condition::IfAbsent).await;
        assert!(matches!(conflict, Err(StoreError::ConditionFailed { .. })));
        // Increments that grow the store are refused; one that does not is counted.
        let keyed = store.increment("c", Some("k")).await;
        assert!(matches!(keyed, Err(StoreError::Full)), "{keyed:?}");
        assert_eq!(
            store.counter("c").await.expect("a read"),
            0,
            "nothing counted"
        );

        assert!(
            store
                .delete("k1", Condition::Always)
                .await
                .expect("a delete")
        );
        assert_eq!(store.used(), 2 * one);
        store
            .put("k3", value, Condition::Always)
            .await
            .expect("the deleted value's room");
    }

    #[tokio::test]
    async fn a_stored_value_owns_exactly_its_bytes() {
        let store = MemoryStore::new(ROOMY);
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        store
            .put("k", buffer.slice(..3), Condition::Always)
            .await
            .expect("put");
        let stored = store.get("k").await.expect("get").expect("present").value;
        assert_eq!(stored, "xxx");
        // Not a view into the 64 KiB buffer, which the budget does not count.
        assert!(!buffer.as_ptr_range().contains(&stored.as_ptr()));
    }
}
