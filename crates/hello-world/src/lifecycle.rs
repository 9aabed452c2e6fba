//! Readiness and the order of shutdown.
//!
//! [`Readiness`] is a latch of independent reasons for this replica to be out of rotation —
//! starting, draining, disabled by an operator — so turning one off can never hide another.
//! `/readyz` reports the first reason that holds. Each is about this replica alone: the store
//! is shared, so its outage is reported ([`crate::store::health`]) but is no reason, or one
//! outage would take every replica out of rotation at once.
//!
//! Shutdown order, when the orchestrator sends SIGTERM (Kubernetes and Swarm both do, then wait
//! the grace period before SIGKILL), or an operator presses Ctrl-C (SIGINT):
//! 1. readiness turns 503 at once, so load balancers stop picking this replica;
//! 2. the listener stays open for the drain delay, serving what still arrives while balancers
//!    notice (their checks run every second or two);
//! 3. the listener closes; in-flight requests get the shutdown timeout to finish;
//! 4. the process exits 0.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Why this replica should not receive traffic, if it should not.
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
    draining: AtomicBool,
    disabled: AtomicBool,
    /// Told of every change, for those that follow readiness (the gRPC health service).
    changes: watch::Sender<()>,
}

impl Readiness {
    /// A latch that says "starting" until [`Readiness::mark_started`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The listeners are bound and serving.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
        self.changes.send_replace(());
    }

    /// Shutdown began: out of rotation for good.
    pub fn mark_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.changes.send_replace(());
    }

    /// An operator took this replica out of rotation (`true`) or put it back (`false`).
    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Release);
        self.changes.send_replace(());
    }

    /// Resolves its `changed()` after each change of a reason, from now on.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
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
        } else {
            Ok(())
        }
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
        readiness.set_disabled(true);
        assert_eq!(readiness.check(), Err("disabled"));
        readiness.set_disabled(false);
        assert_eq!(readiness.check(), Ok(()));
        readiness.set_disabled(true);
        readiness.mark_draining();
        readiness.set_disabled(false);
        assert_eq!(readiness.check(), Err("draining"));
    }
}
