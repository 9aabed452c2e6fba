//! Fault injection, for resilience demos: a share of public requests answered 500, and latency
//! added before each. An operator switches them on the admin port ([`crate::admin`]); the
//! public middleware ([`crate::observe`]) applies them. Both are off by default, and probes
//! are never faulted, so faults never get replicas restarted or taken out of rotation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;

use crate::error::ApiError;

/// The switches, read on every public request: two atomics, so reading them costs nothing
/// while they are off.
#[derive(Debug, Default)]
pub struct Faults {
    /// Share of requests to fail, as `f64` bits (0 = off).
    error_rate: AtomicU64,
    /// Latency to add, in microseconds (0 = off).
    latency_us: AtomicU64,
}

impl Faults {
    pub fn set(&self, error_rate: f64, latency: Duration) {
        self.error_rate
            .store(error_rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.store(micros, Ordering::Relaxed);
    }

    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate.load(Ordering::Relaxed))
    }

    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    /// Whether any fault is switched on.
    pub fn active(&self) -> bool {
        self.error_rate.load(Ordering::Relaxed) != 0 || self.latency_us.load(Ordering::Relaxed) != 0
    }

    /// Applies the faults to one request: waits the added latency, then maybe returns the
    /// injected error. Probes are exempt.
    pub async fn roll(&self, is_probe: bool) -> Option<ApiError> {
        if is_probe {
            return None;
        }
        let latency = self.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let rate = self.error_rate();
        (rate > 0.0 && fastrand::f64() < rate)
            .then(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "injected fault"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_are_never_faulted() {
        let faults = Faults::default();
        faults.set(1.0, Duration::ZERO);
        assert!(faults.roll(true).await.is_none());
        assert!(faults.roll(false).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn added_latency_is_waited_before_the_answer() {
        let faults = Faults::default();
        assert!(!faults.active());
        faults.set(0.0, Duration::from_millis(250));
        assert!(faults.active());
        let started = tokio::time::Instant::now();
        assert!(faults.roll(false).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        faults.set(0.0, Duration::ZERO);
        assert!(!faults.active());
    }
}
