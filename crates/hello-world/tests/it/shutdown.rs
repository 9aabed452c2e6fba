//! Graceful shutdown as an orchestrator sees it: SIGTERM → /readyz 503 at once → drain delay →
//! in-flight requests finish → exit 0.
//!
//! A real process takes real time, so each step waits for what shows the one before happened
//! (the request counted in flight, the drain logged), never for a fixed while. The order itself
//! is also checked in process on tokio's paused clock, where five seconds of drain take none.

use std::time::Duration;

use http::StatusCode;

use crate::helpers::{Ask, Process};

#[test]
fn sigterm_drains_and_lets_in_flight_requests_finish() {
    let mut process = Process::serve(&["--drain-delay", "1s", "--shutdown-timeout", "5s"], &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let slow_url = process.url("/delay/2s");
    let in_flight = runtime.spawn(async move { Ask::new(http::Method::GET, &slow_url).await });
    process.wait_for_in_flight(1, Duration::from_secs(10));

    process.signal("TERM");
    process.wait_for_log("draining", Duration::from_secs(10));
    let ready = runtime.block_on(Ask::new(http::Method::GET, &process.url("/readyz")));
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "draining replicas are not ready"
    );
    assert_eq!(ready.json()["reason"], "draining");
    let hello = runtime.block_on(Ask::new(http::Method::GET, &process.url("/")));
    assert_eq!(
        hello.status,
        StatusCode::OK,
        "requests arriving during the drain delay are still served"
    );

    let answer = runtime.block_on(in_flight).expect("in-flight request task");
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the in-flight request completed"
    );
    let (code, logs) = process.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{logs}");
    for phase in [
        "shutdown requested",
        "draining",
        "closing listeners",
        "all requests finished",
    ] {
        assert!(logs.contains(phase), "phase '{phase}' not logged:\n{logs}");
    }
}

#[test]
fn shutdown_timeout_bounds_how_long_stragglers_are_waited_for() {
    let mut process = Process::serve(&["--drain-delay", "0s", "--shutdown-timeout", "300ms"], &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let slow_url = process.url("/delay/20s");
    let _straggler = runtime.spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let _ = client.get(slow_url.parse().expect("url")).await;
    });
    process.wait_for_in_flight(1, Duration::from_secs(10));
    process.signal("TERM");
    let (code, logs) = process.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("shutdown timeout reached"), "{logs}");
}

/// The shutdown order on the runtime's own clock, paused: readiness turns at once, and `run`
/// returns when the drain delay has passed, not before (nothing is in flight to wait for).
#[tokio::test(start_paused = true)]
async fn readiness_turns_at_once_and_the_drain_delay_passes_before_run_returns() {
    let mut config = hello_world::config::Config::for_tests("draining");
    config.drain_delay = Duration::from_secs(5);
    config.shutdown_timeout = Duration::from_secs(10);
    let server = hello_world::server::Server::bind(config)
        .await
        .expect("binds");
    let state = server.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    while state.readiness.check() == Err("starting") {
        tokio::task::yield_now().await;
    }
    let signalled = tokio::time::Instant::now();
    stop.send(()).expect("the server waits for its signal");
    while !state.readiness.is_draining() {
        tokio::task::yield_now().await;
    }
    assert_eq!(signalled.elapsed(), Duration::ZERO, "readiness turned late");
    assert_eq!(state.readiness.check(), Err("draining"));
    run.await
        .expect("run does not panic")
        .expect("run ends well");
    assert_eq!(signalled.elapsed(), Duration::from_secs(5));
}
