//! Readiness and the order of shutdown.
//!
//! [`Readiness`] is a latch of independent reasons to be out of rotation — starting, draining,
//! disabled by an operator, store unreachable — so turning one off can never hide another.
//! `/readyz` reports the first reason that holds.
//!
//! Shutdown order, when the orchestrator sends SIGTERM (Kubernetes and Swarm both do, then wait
//! the grace period before SIGKILL), or an operator presses Ctrl-C (SIGINT):
//! 1. readiness turns 503 at once, so load balancers stop picking this replica;
//! 2. the listener stays open for the drain delay, serving what still arrives while balancers
//!    notice (their checks run every second or two);
//! 3. the listener closes; in-flight requests get the shutdown timeout to finish;
//! 4. the process exits 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::store::Store;

/// Why this replica should not receive traffic, if it should not.
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
    draining: AtomicBool,
    disabled: AtomicBool,
    store_unreachable: AtomicBool,
}

impl Readiness {
    /// A latch that says "starting" until [`Readiness::mark_started`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The listeners are bound and the store answered once (or was given time to).
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Shutdown began: out of rotation for good.
    pub fn mark_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// An operator took this replica out of rotation (`true`) or put it back (`false`).
    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Release);
    }

    pub fn set_store_reachable(&self, reachable: bool) {
        self.store_unreachable.store(!reachable, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// `Ok` when ready, else the reason, most fundamental first.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining")
        } else if !self.started.load(Ordering::Acquire) {
            Err("starting")
        } else if self.disabled.load(Ordering::Acquire) {
            Err("disabled")
        } else if self.store_unreachable.load(Ordering::Acquire) {
            Err("store unreachable")
        } else {
            Ok(())
        }
    }
}

/// How often the store is pinged to keep readiness true to it.
pub const STORE_PING_INTERVAL: Duration = Duration::from_secs(1);

/// Pings the store forever, keeping [`Readiness`] in step with it. Runs until aborted.
pub async fn watch_store(store: Arc<dyn Store>, readiness: Arc<Readiness>) {
    let mut was_reachable = true;
    loop {
        let reachable = match store.ping().await {
            Ok(()) => true,
            Err(err) => {
                if was_reachable {
                    tracing::warn!(error = %err, store = store.kind(), "store unreachable: not ready");
                }
                false
            }
        };
        if reachable && !was_reachable {
            tracing::info!(store = store.kind(), "store reachable again: ready");
        }
        was_reachable = reachable;
        readiness.set_store_reachable(reachable);
        tokio::time::sleep(STORE_PING_INTERVAL).await;
    }
}

/// Resolves on the first SIGTERM (the orchestrator stopping us) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(signal = "ctrl-c", "shutdown requested");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_keeps_the_replica_out_until_it_clears() {
        let readiness = Readiness::new();
        assert_eq!(readiness.check(), Err("starting"));
        readiness.mark_started();
        assert_eq!(readiness.check(), Ok(()));
        readiness.set_store_reachable(false);
        readiness.set_disabled(true);
        assert_eq!(readiness.check(), Err("disabled"));
        readiness.set_disabled(false);
        assert_eq!(readiness.check(), Err("store unreachable"));
        readiness.set_store_reachable(true);
        readiness.mark_draining();
        readiness.set_disabled(false);
        assert_eq!(readiness.check(), Err("draining"));
    }
}
