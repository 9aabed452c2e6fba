//! What this replica knows of its store: whether it answers, since when, and if not, why.
//!
//! [`StoreHealth`] is the [`Observer`] of every store call ([`super::metered::Metered`]): it
//! counts each call in the metrics and, from the outcomes, keeps the store's [`State`] —
//! unchecked (no call has ended yet), reachable, unreachable with a reason a client may read
//! ("connection refused", "timed out", "sentinels disagree"), or degraded: a replicated store
//! that answers reads but cannot confirm writes ("not confirmed by a replica"). [`watch`] pings
//! the store every [`PING_INTERVAL`], so the state stays current while no request calls the
//! store; a replicated store's ping is a confirmed write, so it also ends a degraded state.
//!
//! It is also where store failures are logged, as they happen, with the operation and the
//! store's own message (which clients never see). An outage — the store cannot be reached or
//! used, so every call fails alike — is logged once when it starts and once when it ends, not
//! once per failed call; a call the store itself refused while it answers others (a read-only
//! replica, a disk it cannot write) is logged each time.
//!
//! The state is reported, never acted on: `/readyz` and `/api/info` show it, and `store_up` on
//! `/metrics` follows it. It never takes a replica out of rotation: every replica shares the
//! store, so its outage would take all of them out at once, and everything that needs no store
//! (`GET /` first) would go down with it. While the store is away, the state routes answer 503
//! by themselves (see [`crate::error`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::metered::{Observer, Op, Outcome};
use super::{Store, StoreError};
use crate::metrics::Metrics;

/// How often [`watch`] pings the store; also how long a client is told to wait before retrying
/// a call the store could not serve (`Retry-After`).
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// The store as the last calls found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No call has ended yet.
    Unchecked,
    /// The last call got an answer (a refused precondition is an answer too).
    Reachable,
    /// The last call got none, for this reason.
    Unreachable(&'static str),
    /// The store answers, but the last write was not confirmed by a replica, for this reason.
    /// Only a confirmed write (or ping) ends it: a read says nothing about writes.
    Degraded(&'static str),
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Unchecked => "unchecked",
            State::Reachable => "reachable",
            State::Unreachable(_) => "unreachable",
            State::Degraded(_) => "degraded",
        }
    }
}

/// The state and when this replica learned of it.
#[derive(Debug, Clone, Copy)]
struct Current {
    state: State,
    since: Instant,
}

/// Observes every store call: metrics, and the store's [`State`] (see the module docs).
#[derive(Debug)]
pub struct StoreHealth {
    /// `"memory"` or `"redis"`, for the log.
    kind: &'static str,
    metrics: Arc<Metrics>,
    current: Mutex<Current>,
}

/// The store's state as `/readyz` and `/api/info` show it:
/// `{"state": "unreachable", "reason": "connection refused", "for_seconds": 12.5}`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = StoreStatus)]
pub struct Report {
    /// `unchecked` (no call has ended yet), `reachable`, `unreachable`, or `degraded` (a
    /// replicated store that answers but cannot confirm writes).
    #[schema(pattern = "^(unchecked|reachable|unreachable|degraded)$")]
    pub state: &'static str,
    /// Why the store does not answer; only while it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// How long the store has been in this state, as far as this replica knows.
    #[schema(minimum = 0)]
    pub for_seconds: f64,
}

impl StoreHealth {
    pub fn new(kind: &'static str, metrics: Arc<Metrics>) -> Self {
        metrics.set_store_up(false);
        Self {
            kind,
            metrics,
            current: Mutex::new(Current {
                state: State::Unchecked,
                since: Instant::now(),
            }),
        }
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    pub fn report(&self) -> Report {
        let current = *self.lock();
        Report {
            state: current.state.name(),
            reason: match current.state {
                State::Unreachable(reason) | State::Degraded(reason) => Some(reason),
                State::Unchecked | State::Reachable => None,
            },
            for_seconds: (current.since.elapsed().as_millis() as f64) / 1000.0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        // Every critical section is an assignment of plain values: a poisoned lock still
        // guards a consistent state.
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes in what one call found.
    fn note(&self, op: Op, started: Instant, result: Result<(), &StoreError>) {
        let seen = match result {
            Err(err @ (StoreError::Unavailable { .. } | StoreError::Timeout(_))) => {
                State::Unreachable(err.unavailable_reason().unwrap_or("unavailable"))
            }
            Err(err @ StoreError::Failed { reason, .. }) => {
                // The store answered, with an error for this call alone.
                tracing::warn!(
                    operation = op.as_str(),
                    store = self.kind,
                    reason,
                    error = %err,
                    "store call failed"
                );
                State::Reachable
            }
            Err(StoreError::NotReplicated { reason, .. }) => State::Degraded(reason),
            Ok(()) | Err(StoreError::ConditionFailed { .. } | StoreError::Full) => State::Reachable,
        };
        let mut current = self.lock();
        // A read that succeeds proves reads work, not that writes reach a replica again.
        if let (State::Degraded(_), State::Reachable) = (current.state, seen)
            && op.is_read()
        {
            return;
        }
        // A call that began before the last change says nothing newer than it: a slow answer
        // from before an outage must not declare the store back, nor a late failure from before
        // its return declare it gone again.
        if started < current.since {
            return;
        }
        let previous = *current;
        match (previous.state, seen) {
            // Still away (or still degraded): keep the latest reason, and the time it began.
            (State::Unreachable(_), State::Unreachable(_))
            | (State::Degraded(_), State::Degraded(_)) => {
                current.state = seen;
                return;
            }
            (before, now) if before == now => return,
            _ => {}
        }
        *current = Current {
            state: seen,
            since: Instant::now(),
        };
        drop(current);

        self.metrics
            .set_store_up(matches!(seen, State::Reachable | State::Degraded(_)));
        match (previous.state, seen) {
            (State::Unreachable(_), State::Reachable) => tracing::info!(
                store = self.kind,
                unreachable_for_s = previous.since.elapsed().as_secs_f64(),
                "store reachable again"
            ),
            (State::Degraded(_), State::Reachable) => tracing::info!(
                store = self.kind,
                degraded_for_s = previous.since.elapsed().as_secs_f64(),
                "store writes confirmed again"
            ),
            (_, State::Reachable) => tracing::info!(store = self.kind, "store reachable"),
            (_, State::Unreachable(reason)) => tracing::warn!(
                operation = op.as_str(),
                store = self.kind,
                reason,
                error = result.err().map(ToString::to_string),
                "store unreachable: state routes answer 503 until it answers again"
            ),
            (_, State::Degraded(reason)) => tracing::warn!(
                operation = op.as_str(),
                store = self.kind,
                reason,
                error = result.err().map(ToString::to_string),
                "store writes not confirmed by a replica: writes answer 503 until they are"
            ),
            (_, State::Unchecked) => {}
        }
    }
}

impl Observer for StoreHealth {
    fn observe(&self, op: Op, started: Instant, result: Result<(), &StoreError>) {
        let outcome = Outcome::of(result);
        if let Some(reason) = result.err().and_then(StoreError::unavailable_reason) {
            self.metrics.record_store_unavailable(reason);
        }
        self.metrics.record_store_operation(
            op.as_str(),
            outcome.is_error(),
            outcome == Outcome::Full,
        );
        self.note(op, started, result);
    }
}

/// Pings `store` every [`PING_INTERVAL`], forever; each ping is observed like any other call.
/// Runs until aborted.
pub async fn watch(store: Arc<dyn Store>) {
    loop {
        // The outcome reaches StoreHealth through the store's observer.
        let _ = store.ping().await;
        tokio::time::sleep(PING_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::KeptLogs;

    fn refused() -> StoreError {
        StoreError::Unavailable {
            reason: "connection refused",
            detail: "Connection refused (os error 111)".to_owned(),
        }
    }

    fn messages(logs: &KeptLogs, message: &str) -> Vec<serde_json::Value> {
        logs.lines()
            .into_iter()
            .filter(|line| line["message"] == message)
            .collect()
    }

    #[test]
    fn an_outage_is_reported_and_logged_once_when_it_starts_and_once_when_it_ends() {
        let logs = KeptLogs::default();
        let _logging = tracing::subscriber::set_default(logs.subscriber("info"));
        let metrics = Arc::new(Metrics::new());
        let health = StoreHealth::new("redis", metrics.clone());
        assert_eq!(health.state(), State::Unchecked);
        assert!(metrics.render().contains("store_up 0"));

        let before_the_outage = Instant::now();
        health.observe(Op::Ping, Instant::now(), Ok(()));
        assert_eq!(health.state(), State::Reachable);
        assert!(metrics.render().contains("store_up 1"));

        for _ in 0..50 {
            health.observe(Op::Get, Instant::now(), Err(&refused()));
            health.observe(Op::Ping, Instant::now(), Err(&refused()));
        }
        assert_eq!(health.state(), State::Unreachable("connection refused"));
        assert!(metrics.render().contains("store_up 0"));
        let timeout = StoreError::Timeout(Duration::from_secs(1));
        health.observe(Op::Put, Instant::now(), Err(&timeout));
        assert_eq!(
            health.state(),
            State::Unreachable("timed out"),
            "the latest reason is shown"
        );
        // An answer to a call made before the outage was noticed proves nothing now.
        health.observe(Op::Get, before_the_outage, Ok(()));
        assert_eq!(health.state(), State::Unreachable("timed out"));
        let report = health.report();
        assert_eq!(report.state, "unreachable");
        assert_eq!(report.reason, Some("timed out"));

        for _ in 0..50 {
            health.observe(Op::Get, Instant::now(), Ok(()));
        }
        assert_eq!(health.state(), State::Reachable);
        // A refused precondition and a full store are answers.
        let conflict = StoreError::ConditionFailed { current: None };
        health.observe(Op::Put, Instant::now(), Err(&conflict));
        health.observe(Op::Put, Instant::now(), Err(&StoreError::Full));
        assert_eq!(health.state(), State::Reachable);
        assert_eq!(health.report().reason, None);

        let gone = messages(
            &logs,
            "store unreachable: state routes answer 503 until it answers again",
        );
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert_eq!(gone[0]["operation"], "get", "the call that found it");
        assert_eq!(gone[0]["store"], "redis");
        assert_eq!(gone[0]["reason"], "connection refused");
        assert_eq!(
            gone[0]["error"],
            "store unavailable (connection refused): Connection refused (os error 111)"
        );
        assert_eq!(messages(&logs, "store reachable again").len(), 1);
        assert_eq!(
            messages(&logs, "store reachable").len(),
            1,
            "the first answer"
        );
        let metrics = metrics.render();
        assert!(
            metrics.contains("store_errors_total{operation=\"get\"} 50"),
            "{metrics}"
        );
        assert!(metrics.contains("store_up 1"), "{metrics}");
    }

    #[test]
    fn a_call_the_store_refused_is_logged_each_time_and_leaves_it_reachable() {
        let logs = KeptLogs::default();
        let _logging = tracing::subscriber::set_default(logs.subscriber("warn"));
        let health = StoreHealth::new("redis", Arc::new(Metrics::new()));
        health.observe(Op::Get, Instant::now(), Ok(()));
        let read_only = StoreError::Failed {
            reason: "read-only replica",
            detail: "READONLY You can't write against a read only replica.".to_owned(),
        };
        for _ in 0..3 {
            health.observe(Op::Put, Instant::now(), Err(&read_only));
        }
        assert_eq!(health.state(), State::Reachable);
        let failed = messages(&logs, "store call failed");
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert_eq!(failed[0]["operation"], "put");
        assert_eq!(failed[0]["reason"], "read-only replica");
        assert!(
            failed[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("READONLY"))
        );
    }

    #[test]
    fn unconfirmed_writes_degrade_the_store_until_a_write_is_confirmed_and_reads_do_not_end_it() {
        let logs = KeptLogs::default();
        let _logging = tracing::subscriber::set_default(logs.subscriber("info"));
        let metrics = Arc::new(Metrics::new());
        let health = StoreHealth::new("redis", metrics.clone());
        health.observe(Op::Ping, Instant::now(), Ok(()));
        let lagging = |reason| StoreError::NotReplicated {
            reason,
            detail: "WAIT 1 500: 0 replica(s) confirmed the write".to_owned(),
        };
        for _ in 0..10 {
            health.observe(
                Op::Put,
                Instant::now(),
                Err(&lagging("not confirmed by a replica")),
            );
            health.observe(Op::Get, Instant::now(), Ok(()));
            health.observe(Op::Counter, Instant::now(), Ok(()));
        }
        health.observe(
            Op::Increment,
            Instant::now(),
            Err(&lagging("no replica in sync")),
        );
        assert_eq!(health.state(), State::Degraded("no replica in sync"));
        let report = health.report();
        assert_eq!(
            (report.state, report.reason),
            ("degraded", Some("no replica in sync"))
        );
        assert!(metrics.render().contains("store_up 1"), "it still answers");
        health.observe(Op::Ping, Instant::now(), Ok(()));
        assert_eq!(health.state(), State::Reachable);

        let degraded = messages(
            &logs,
            "store writes not confirmed by a replica: writes answer 503 until they are",
        );
        assert_eq!(degraded.len(), 1, "{degraded:?}");
        assert_eq!(degraded[0]["reason"], "not confirmed by a replica");
        assert_eq!(messages(&logs, "store writes confirmed again").len(), 1);
        let metrics = metrics.render();
        assert!(
            metrics.contains("store_unavailable_total{reason=\"not confirmed by a replica\"} 10"),
            "{metrics}"
        );
        assert!(
            metrics.contains("store_unavailable_total{reason=\"no replica in sync\"} 1"),
            "{metrics}"
        );
    }
}
