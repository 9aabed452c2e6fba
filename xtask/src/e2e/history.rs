//! A history checker for one key of the kv store, the register that `GET`, `PUT` and
//! `PUT` with `If-Match` make of it. Clients record every operation with when it was sent and
//! when its answer came; [`check`] says whether the history is linearizable for what the store
//! promises, which its versions make checkable without a search:
//!
//! - every write is given a version from one store-wide sequence, so the order of versions is
//!   the order in which writes took effect;
//! - **no version is given to two values**: every answer that names a version (a write's new
//!   ETag, a read's ETag and value) agrees on that version's value;
//! - **no stale read**: a read sent after a write was acknowledged sees that write's version or
//!   a later one, and a read sent after another read answered sees at least what that one saw;
//! - **no lost acknowledged write**: the final read, after everything, sees at least the
//!   highest acknowledged version;
//! - **no lost update**: an `If-Match` write acknowledged as going from version `a` to `b` had
//!   no other write of the key take effect in between (no acknowledged version strictly inside
//!   `(a, b)`), and no two acknowledged conditional writes start from the same `a`;
//! - a read returns only what some write wrote: a value no write sent is a corruption.
//!
//! Writes that were not acknowledged (an error, a 503, a timeout) may or may not have taken
//! effect; a read may see them, and nothing is required of them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// What an operation did, as its answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    /// `GET`: 200 with the value and its version.
    Read { version: u64, value: String },
    /// `PUT` acknowledged (200/201) with the value's new version.
    Write { value: String, version: u64 },
    /// `PUT` with `If-Match: "from"` acknowledged with the new version.
    Swap {
        from: u64,
        value: String,
        version: u64,
    },
    /// A write that was not acknowledged: it may have taken effect.
    Unknown { value: String },
}

/// One operation: sent at `invoked`, answered at `completed` (since the history began).
#[derive(Debug, Clone)]
pub(super) struct Event {
    pub(super) invoked: Duration,
    pub(super) completed: Duration,
    pub(super) op: Op,
}

/// What the check found: counts for the report, and every violation (empty when linearizable).
#[derive(Debug, Default)]
pub(super) struct Verdict {
    pub(super) reads: usize,
    pub(super) writes: usize,
    pub(super) swaps: usize,
    pub(super) unknown: usize,
    pub(super) violations: Vec<String>,
}

/// Checks `history`, whose `last` read was sent after every other operation completed.
pub(super) fn check(history: &[Event], last: &Event) -> Verdict {
    let mut verdict = Verdict::default();
    let mut value_of: HashMap<u64, (&str, &Event)> = HashMap::new();
    let mut written: HashMap<&str, usize> = HashMap::new();
    // Acknowledged writes by version, and conditional writes by the version they started from.
    let mut acknowledged: BTreeMap<u64, &Event> = BTreeMap::new();
    let mut swaps_from: HashMap<u64, &Event> = HashMap::new();

    let all = history.iter().chain(std::iter::once(last));
    for event in all.clone() {
        let named = match &event.op {
            Op::Read { version, value } => {
                verdict.reads += 1;
                Some((*version, value.as_str()))
            }
            Op::Write { value, version } => {
                verdict.writes += 1;
                *written.entry(value).or_default() += 1;
                acknowledged.insert(*version, event);
                Some((*version, value.as_str()))
            }
            Op::Swap {
                from,
                value,
                version,
            } => {
                verdict.swaps += 1;
                *written.entry(value).or_default() += 1;
                acknowledged.insert(*version, event);
                if let Some(other) = swaps_from.insert(*from, event) {
                    verdict.violations.push(format!(
                        "lost update: two conditional writes acknowledged from version {from}: {other:?} and {event:?}"
                    ));
                }
                Some((*version, value.as_str()))
            }
            Op::Unknown { value } => {
                verdict.unknown += 1;
                *written.entry(value).or_default() += 1;
                None
            }
        };
        if let Some((version, value)) = named {
            match value_of.get(&version) {
                Some((seen, first)) if *seen != value => verdict.violations.push(format!(
                    "version {version} given to two values: {seen:?} ({first:?}) and {value:?} ({event:?})"
                )),
                Some(_) => {}
                None => {
                    value_of.insert(version, (value, event));
                }
            }
        }
    }
    // Every value is sent once (the clients make them unique), so a read of a value no write
    // sent, or two acknowledgements of one, is the store inventing or duplicating a write.
    for event in all.clone() {
        match &event.op {
            Op::Read { value, .. } if !written.contains_key(value.as_str()) => {
                verdict.violations.push(format!(
                    "a read returned {value:?}, which no write sent: {event:?}"
                ))
            }
            _ => {}
        }
    }
    for (value, times) in &written {
        if *times > 1 {
            verdict.violations.push(format!(
                "the value {value:?} was sent {times} times: the clients must make each unique"
            ));
        }
    }
    // Conditional writes: nothing else took effect between the version they replaced and theirs.
    for event in history {
        if let Op::Swap { from, version, .. } = &event.op
            && let Some((between, other)) = acknowledged.range(from + 1..*version).next()
        {
            verdict.violations.push(format!(
                "lost update: {event:?} replaced version {from}, but version {between} was acknowledged in between: {other:?}"
            ));
        }
    }
    // Real time: what a read sees is at least what was acknowledged, or read, before it was sent.
    let mut finished: Vec<(Duration, u64, &Event)> = history
        .iter()
        .filter_map(|e| version_of(&e.op).map(|v| (e.completed, v, e)))
        .collect();
    finished.sort_by_key(|(completed, _, _)| *completed);
    for read in all {
        let Op::Read { version, .. } = &read.op else {
            continue;
        };
        // The highest version among operations that completed before this read was sent.
        if let Some((_, floor, before)) = finished
            .iter()
            .take_while(|(completed, _, _)| *completed < read.invoked)
            .max_by_key(|(_, v, _)| *v)
            && version < floor
        {
            verdict.violations.push(format!(
                "stale read: {read:?} saw version {version} after {before:?} had answered with {floor}"
            ));
        }
    }
    if let (Op::Read { version, .. }, Some(highest)) = (&last.op, acknowledged.keys().next_back())
        && version < highest
    {
        verdict.violations.push(format!(
            "lost acknowledged write: the final read sees version {version}, below the acknowledged {highest}"
        ));
    }
    verdict
}

fn version_of(op: &Op) -> Option<u64> {
    match op {
        Op::Read { version, .. } | Op::Write { version, .. } | Op::Swap { version, .. } => {
            Some(*version)
        }
        Op::Unknown { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(invoked: u64, completed: u64, op: Op) -> Event {
        Event {
            invoked: Duration::from_millis(invoked),
            completed: Duration::from_millis(completed),
            op,
        }
    }

    fn read(version: u64, value: &str) -> Op {
        Op::Read {
            version,
            value: value.to_string(),
        }
    }

    fn write(value: &str, version: u64) -> Op {
        Op::Write {
            value: value.to_string(),
            version,
        }
    }

    fn swap(from: u64, value: &str, version: u64) -> Op {
        Op::Swap {
            from,
            value: value.to_string(),
            version,
        }
    }

    fn problems(history: &[Event], last: Event) -> Vec<String> {
        check(history, &last).violations
    }

    #[test]
    fn a_linearizable_history_passes() {
        let history = [
            at(0, 10, write("a", 3)),
            at(5, 20, read(3, "a")),
            at(15, 30, swap(3, "b", 7)),
            // Concurrent with the swap: either version may be seen.
            at(16, 25, read(3, "a")),
            at(31, 40, read(7, "b")),
            at(35, 50, Op::Unknown { value: "c".into() }),
            // The unacknowledged write took effect after all: reading it is allowed.
            at(51, 60, read(9, "c")),
        ];
        let verdict = check(&history, &at(61, 70, read(9, "c")));
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!(
            (
                verdict.reads,
                verdict.writes,
                verdict.swaps,
                verdict.unknown
            ),
            (5, 1, 1, 1)
        );
    }

    #[test]
    fn a_read_older_than_an_acknowledged_write_is_stale() {
        let history = [
            at(0, 10, write("a", 3)),
            at(20, 30, write("b", 5)),
            at(31, 40, read(3, "a")),
        ];
        let found = problems(&history, at(41, 50, read(5, "b")));
        assert!(
            found.iter().any(|p| p.starts_with("stale read")),
            "{found:?}"
        );
    }

    #[test]
    fn reads_never_go_back_in_time() {
        let history = [
            at(0, 10, write("a", 3)),
            at(11, 20, Op::Unknown { value: "b".into() }),
            at(21, 30, read(5, "b")),
            at(31, 40, read(3, "a")),
        ];
        let found = problems(&history, at(41, 50, read(5, "b")));
        assert!(
            found.iter().any(|p| p.starts_with("stale read")),
            "{found:?}"
        );
    }

    #[test]
    fn a_version_with_two_values_is_found() {
        let history = [at(0, 10, write("a", 3)), at(20, 30, read(3, "z"))];
        let found = problems(&history, at(41, 50, read(3, "a")));
        assert!(
            found.iter().any(|p| p.contains("given to two values")),
            "{found:?}"
        );
    }

    #[test]
    fn a_final_read_below_an_acknowledged_write_is_a_lost_write() {
        let history = [at(0, 10, write("a", 3)), at(20, 30, write("b", 5))];
        // The final read is also stale; the lost write is named as such.
        let found = problems(&history, at(41, 50, read(3, "a")));
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("lost acknowledged write")),
            "{found:?}"
        );
    }

    #[test]
    fn two_swaps_from_one_version_are_a_lost_update() {
        let history = [
            at(0, 10, write("a", 3)),
            at(11, 20, swap(3, "b", 5)),
            at(12, 21, swap(3, "c", 6)),
        ];
        let found = problems(&history, at(41, 50, read(6, "c")));
        assert!(
            found.iter().any(|p| p.starts_with("lost update")),
            "{found:?}"
        );
    }

    #[test]
    fn a_swap_over_an_acknowledged_write_is_a_lost_update() {
        let history = [
            at(0, 10, write("a", 3)),
            at(11, 20, write("b", 4)),
            at(12, 21, swap(3, "c", 6)),
        ];
        let found = problems(&history, at(41, 50, read(6, "c")));
        assert!(
            found.iter().any(|p| p.starts_with("lost update")),
            "{found:?}"
        );
    }

    #[test]
    fn a_value_no_one_wrote_is_found() {
        let history = [at(0, 10, write("a", 3))];
        let found = problems(&history, at(41, 50, read(4, "ghost")));
        assert!(
            found.iter().any(|p| p.contains("which no write sent")),
            "{found:?}"
        );
    }
}
