//! Graceful shutdown as an orchestrator sees it: SIGTERM → /readyz 503 at once → drain delay →
//! in-flight requests finish → exit 0.

use std::time::Duration;

use http::StatusCode;

use crate::helpers::Process;

#[test]
fn sigterm_drains_and_lets_in_flight_requests_finish() {
    let mut process = Process::serve(&["--drain-delay", "1s", "--shutdown-timeout", "5s"], &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let slow_url = process.url("/delay/2s");
    let in_flight = runtime.spawn(async move {
        crate::helpers::send(http::Method::GET, &slow_url, &[], bytes::Bytes::new()).await
    });
    std::thread::sleep(Duration::from_millis(200));

    process.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    let ready = runtime.block_on(crate::helpers::send(
        http::Method::GET,
        &process.url("/readyz"),
        &[],
        bytes::Bytes::new(),
    ));
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "draining replicas are not ready"
    );
    assert_eq!(ready.json()["reason"], "draining");
    let hello = runtime.block_on(crate::helpers::send(
        http::Method::GET,
        &process.url("/"),
        &[],
        bytes::Bytes::new(),
    ));
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
    std::thread::sleep(Duration::from_millis(200));
    process.signal("TERM");
    let (code, logs) = process.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("shutdown timeout reached"), "{logs}");
}
