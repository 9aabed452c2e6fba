//! The admin port: metrics, readiness switches, fault injection, simulated crash — and none of
//! it reachable on the public port.

use http::{Method, StatusCode};

use crate::helpers::{Process, spawn_app};

#[tokio::test]
async fn admin_routes_are_not_on_the_public_port() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/metrics"),
        (Method::POST, "/readyz/disable"),
        (Method::POST, "/readyz/enable"),
        (Method::GET, "/faults"),
        (Method::POST, "/exit"),
    ] {
        let url = format!("{}{path}", app.public_url());
        let answer = crate::helpers::send(method.clone(), &url, &[], bytes::Bytes::new()).await;
        assert!(
            answer.status == StatusCode::NOT_FOUND
                || answer.status == StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} on the public port answered {}",
            answer.status
        );
    }
    assert_eq!(
        app.get("/").await.status,
        StatusCode::OK,
        "the public port still serves"
    );
}

#[tokio::test]
async fn metrics_are_labelled_by_route_template() {
    let app = spawn_app().await;
    app.get("/status/418").await;
    app.get("/status/201").await;
    app.get("/some/random/path").await;
    let text = app.admin(Method::GET, "/metrics", "").await.text();
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/status/{code}",status="418"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(
        !text.contains("/some/random/path"),
        "raw paths must not become labels"
    );
    for name in [
        "# TYPE http_request_duration_seconds histogram",
        "# TYPE http_requests_in_flight gauge",
        "# TYPE hello_world_build_info gauge",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_cpu_seconds_total counter",
        "# TYPE process_open_fds gauge",
        "# TYPE process_start_time_seconds gauge",
        "# TYPE store_operations_total counter",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

#[tokio::test]
async fn an_operator_can_take_a_replica_out_of_rotation_and_back() {
    let app = spawn_app().await;
    let disabled = app.admin(Method::POST, "/readyz/disable", "").await;
    assert_eq!(disabled.status, StatusCode::OK);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["reason"], "disabled");
    assert_eq!(
        app.get("/").await.status,
        StatusCode::OK,
        "a disabled replica still answers"
    );
    app.admin(Method::POST, "/readyz/enable", "").await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn injected_faults_hit_api_routes_but_never_probes() {
    let app = spawn_app().await;
    let set = app
        .admin(Method::PUT, "/faults", r#"{"error_rate": 1.0}"#)
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    let faulted = app.get("/api/info").await;
    assert_eq!(faulted.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(faulted.json()["error"], "injected fault");
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);

    app.admin(
        Method::PUT,
        "/faults",
        r#"{"error_rate": 0, "latency": "200ms"}"#,
    )
    .await;
    let started = std::time::Instant::now();
    assert_eq!(app.get("/").await.status, StatusCode::OK);
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));

    app.admin(Method::DELETE, "/faults", "").await;
    assert_eq!(
        app.admin(Method::GET, "/faults", "").await.json()["error_rate"],
        0.0
    );
    let bad = app
        .admin(Method::PUT, "/faults", r#"{"error_rate": 2}"#)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = app.admin(Method::PUT, "/faults", r#"{"rate": 0.5}"#).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let wrong_method = app.admin(Method::GET, "/exit", "").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.json()["error"], "method not allowed");
}

#[test]
fn exit_simulates_a_crash_with_a_failure_status() {
    let mut process = Process::serve(&[], &[]);
    let url = format!("http://127.0.0.1:{}/exit", process.admin_port);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let answer = runtime.block_on(crate::helpers::send(
        Method::POST,
        &url,
        &[],
        bytes::Bytes::new(),
    ));
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let (code, _) = process.wait_exit(std::time::Duration::from_secs(5));
    assert_eq!(code, Some(hello_world::admin::CRASH_EXIT_CODE));
}

/// `promtool check metrics` is Prometheus' own linter: naming, help text, units.
#[tokio::test]
async fn metrics_pass_the_prometheus_linter() {
    let app = spawn_app().await;
    app.get("/").await;
    app.get("/nope").await;
    let text = app.admin(Method::GET, "/metrics", "").await.text();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`; .ci/run installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = promtool.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
