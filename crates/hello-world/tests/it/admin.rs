//! The admin port: metrics, readiness switches, fault injection, simulated crash — none of it
//! reachable on the public port, and no change without the admin token (or, with none set,
//! from anywhere but loopback).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ConnectInfo;
use bytes::Bytes;
use hello_world::config::AdminToken;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::helpers::{Ask, Process, TestApp, spawn_app, spawn_app_with};

/// A token as an operator would make one (`openssl rand -hex 32`).
const TOKEN: &str = "9f2c4e1a7b3d5f60182a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d";

/// A token file of this test's own, with `contents`; removed by the caller.
fn token_file(contents: &[u8]) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "hello-world-admin-token-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).expect("write the token file");
    path
}

async fn spawn_app_with_token() -> TestApp {
    let path = token_file(format!("{TOKEN}\n").as_bytes());
    let token = AdminToken::read(&path).expect("a valid token file");
    std::fs::remove_file(&path).expect("remove the token file");
    spawn_app_with(|config| config.admin_token = Some(token)).await
}

/// An admin request with `authorization` (if any), over a real connection.
async fn admin_with(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> crate::helpers::Answer {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(value) = authorization {
        headers.push(("authorization", value));
    }
    let url = format!("{}{path}", app.admin_url());
    Ask::new(method, &url)
        .headers(&headers)
        .body(Bytes::from(body.to_owned()))
        .await
}

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
        let answer = Ask::new(method.clone(), &url).await;
        assert!(
            answer.status == StatusCode::NOT_FOUND
                || answer.status == StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} on the public port answered {}",
            answer.status
        );
    }
    assert_eq!(
        app.request(Method::GET, "/").await.status,
        StatusCode::OK,
        "the public port still serves"
    );
}

#[tokio::test]
async fn metrics_are_labelled_by_route_template() {
    let app = spawn_app().await;
    app.request(Method::GET, "/status/418").await;
    app.request(Method::GET, "/status/201").await;
    app.request(Method::GET, "/some/random/path").await;
    let text = app.request(Method::GET, "/metrics").admin().await.text();
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
    let disabled = app.request(Method::POST, "/readyz/disable").admin().await;
    assert_eq!(disabled.status, StatusCode::OK);
    let ready = app.request(Method::GET, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["reason"], "disabled");
    assert_eq!(
        app.request(Method::GET, "/").await.status,
        StatusCode::OK,
        "a disabled replica still answers"
    );
    app.request(Method::POST, "/readyz/enable").admin().await;
    assert_eq!(
        app.request(Method::GET, "/readyz").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn injected_faults_hit_api_routes_but_never_probes() {
    let app = spawn_app().await;
    let set = app
        .request(Method::PUT, "/faults")
        .admin()
        .body(r#"{"error_rate": 1.0}"#)
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    let faulted = app.request(Method::GET, "/api/info").await;
    assert_eq!(faulted.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(faulted.json()["error"], "injected fault");
    assert_eq!(
        app.request(Method::GET, "/healthz").await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.request(Method::GET, "/readyz").await.status,
        StatusCode::OK
    );

    app.request(Method::PUT, "/faults")
        .admin()
        .body(r#"{"error_rate": 0, "latency": "200ms"}"#)
        .await;
    let started = std::time::Instant::now();
    assert_eq!(app.request(Method::GET, "/").await.status, StatusCode::OK);
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));

    app.request(Method::DELETE, "/faults").admin().await;
    assert_eq!(
        app.request(Method::GET, "/faults").admin().await.json()["error_rate"],
        0.0
    );
    let bad = app
        .request(Method::PUT, "/faults")
        .admin()
        .body(r#"{"error_rate": 2}"#)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = app
        .request(Method::PUT, "/faults")
        .admin()
        .body(r#"{"rate": 0.5}"#)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let wrong_method = app.request(Method::GET, "/exit").admin().await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.json()["error"], "method not allowed");
}

#[test]
fn exit_simulates_a_crash_with_a_failure_status() {
    let mut process = Process::serve(&[], &[]);
    let url = format!("http://127.0.0.1:{}/exit", process.admin_port);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let answer = runtime.block_on(Ask::new(Method::POST, &url));
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let (code, _) = process.wait_exit(std::time::Duration::from_secs(5));
    assert_eq!(code, Some(hello_world::admin::CRASH_EXIT_CODE));
}

/// `promtool check metrics` is Prometheus' own linter: naming, help text, units.
#[tokio::test]
async fn metrics_pass_the_prometheus_linter() {
    let app = spawn_app().await;
    app.request(Method::GET, "/").await;
    app.request(Method::GET, "/nope").await;
    let text = app.request(Method::GET, "/metrics").admin().await.text();
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

#[tokio::test]
async fn with_a_token_set_every_change_needs_it_and_reads_stay_open() {
    let app = spawn_app_with_token().await;
    let bearer = format!("Bearer {TOKEN}");
    let changes = [
        (Method::PUT, "/faults", r#"{"error_rate": 1.0}"#),
        (Method::DELETE, "/faults", ""),
        (Method::POST, "/readyz/disable", ""),
        (Method::POST, "/readyz/enable", ""),
        (Method::POST, "/exit", ""),
        (Method::POST, "/no/such/route", ""),
    ];
    for (method, path, body) in &changes {
        for (authorization, reason, challenge) in [
            (None, "missing_token", r#"Bearer realm="hello-world admin""#),
            (
                Some("Basic YWRtaW46YWRtaW4="),
                "missing_token",
                r#"Bearer realm="hello-world admin""#,
            ),
            (
                Some("Bearer not-the-token-but-just-as-long-as-a-real-one-xxxxxxxxxxxxxxxxx"),
                "wrong_token",
                r#"Bearer realm="hello-world admin", error="invalid_token""#,
            ),
            (
                Some(&TOKEN[..TOKEN.len() - 1]),
                "missing_token",
                r#"Bearer realm="hello-world admin""#,
            ),
        ] {
            let refused = admin_with(&app, method.clone(), path, authorization, body).await;
            let what = format!("{method} {path} with {authorization:?}");
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(refused.header("www-authenticate"), challenge, "{what}");
            assert_eq!(refused.json()["reason"], reason, "{what}");
            assert_eq!(refused.json()["status"], 401, "{what}");
            assert!(
                !refused.text().contains(TOKEN),
                "{what}: {}",
                refused.text()
            );
        }
    }
    // Nothing above took effect: the replica serves, ready and unfaulted.
    assert_eq!(
        app.request(Method::GET, "/readyz").await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.request(Method::GET, "/api/info").await.status,
        StatusCode::OK
    );

    let lowercase_scheme = format!("bearer {TOKEN}");
    let set = admin_with(
        &app,
        Method::PUT,
        "/faults",
        Some(&lowercase_scheme),
        r#"{"error_rate": 1.0}"#,
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    assert_eq!(
        app.request(Method::GET, "/api/info").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let cleared = admin_with(&app, Method::DELETE, "/faults", Some(&bearer), "").await;
    assert_eq!(cleared.status, StatusCode::OK);
    let disabled = admin_with(&app, Method::POST, "/readyz/disable", Some(&bearer), "").await;
    assert_eq!(disabled.status, StatusCode::OK);
    assert_eq!(
        app.request(Method::GET, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let enabled = admin_with(&app, Method::POST, "/readyz/enable", Some(&bearer), "").await;
    assert_eq!(enabled.status, StatusCode::OK);
    assert_eq!(
        app.request(Method::GET, "/readyz").await.status,
        StatusCode::OK
    );

    let faults = admin_with(&app, Method::GET, "/faults", None, "").await;
    assert_eq!(faults.status, StatusCode::OK, "reads need no token");
    let metrics = admin_with(&app, Method::GET, "/metrics", None, "").await;
    assert_eq!(metrics.status, StatusCode::OK, "reads need no token");
    let text = metrics.text();
    let refused = |reason: &str| format!(r#"admin_requests_refused_total{{reason="{reason}"}} "#);
    assert!(
        text.contains(&format!("{}18", refused("missing_token"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}6", refused("wrong_token"))),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "the token is in /metrics");
    assert!(
        !app.request(Method::GET, "/api/info")
            .await
            .text()
            .contains(TOKEN)
    );
}

/// An admin request from `peer`, handed to the admin router as the accept loop hands it one.
async fn from_peer(app: &TestApp, method: Method, path: &str, peer: Option<&str>) -> StatusCode {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(axum::body::Body::empty())
        .expect("a valid request");
    if let Some(peer) = peer {
        let peer: SocketAddr = peer.parse().expect("a socket address");
        request.extensions_mut().insert(ConnectInfo(peer));
    }
    let response = hello_world::admin::admin_app(app.state.clone())
        .oneshot(request)
        .await
        .expect("the router never fails");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    if !status.is_success() {
        let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
        assert_eq!(json["status"], status.as_u16());
    }
    status
}

#[tokio::test]
async fn without_a_token_only_loopback_may_change_anything() {
    let app = spawn_app().await;
    let text = app.request(Method::GET, "/metrics").admin().await.text();
    for reason in ["missing_token", "wrong_token", "not_loopback"] {
        assert!(
            text.contains(&format!(
                r#"admin_requests_refused_total{{reason="{reason}"}} 0"#
            )),
            "every refusal series reads 0 before any refusal:\n{text}"
        );
    }
    for remote in [Some("192.0.2.7:40000"), Some("[2001:db8::7]:40000"), None] {
        assert_eq!(
            from_peer(&app, Method::POST, "/readyz/disable", remote).await,
            StatusCode::FORBIDDEN,
            "{remote:?}"
        );
        assert_eq!(
            from_peer(&app, Method::GET, "/metrics", remote).await,
            StatusCode::OK,
            "reads stay open to {remote:?}"
        );
    }
    assert_eq!(
        app.request(Method::GET, "/readyz").await.status,
        StatusCode::OK
    );
    for local in [
        "127.0.0.1:40000",
        "127.8.9.10:40000",
        "[::1]:40000",
        "[::ffff:127.0.0.1]:40000",
    ] {
        assert_eq!(
            from_peer(&app, Method::POST, "/readyz/enable", Some(local)).await,
            StatusCode::OK,
            "{local}"
        );
    }
    let text = app.request(Method::GET, "/metrics").admin().await.text();
    assert!(
        text.contains(r#"admin_requests_refused_total{reason="not_loopback"} 3"#),
        "{text}"
    );
}

#[test]
fn exit_needs_the_token_and_no_log_line_shows_it() {
    let path = token_file(format!("  {TOKEN}\r\n").as_bytes());
    let mut process = Process::serve(
        &["--log", "debug"],
        &[(
            "HELLO_ADMIN_TOKEN_FILE",
            path.to_str().expect("a UTF-8 temporary path"),
        )],
    );
    std::fs::remove_file(&path).expect("remove the token file");
    let url = format!("http://127.0.0.1:{}/exit", process.admin_port);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let send = |authorization: &str| {
        runtime.block_on(
            Ask::new(Method::POST, &url)
                .headers(&[(header::AUTHORIZATION.as_str(), authorization)]),
        )
    };
    let wrong = send("Bearer 0000000000000000000000000000000000000000000000000000000000000000");
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        process.child.try_wait().expect("poll").is_none(),
        "a wrong token must not stop the process"
    );
    let accepted = send(&format!("Bearer {TOKEN}"));
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let (code, logs) = process.wait_exit(std::time::Duration::from_secs(5));
    assert_eq!(code, Some(hello_world::admin::CRASH_EXIT_CODE));
    assert!(logs.contains("admin request refused"), "{logs}");
    assert!(logs.contains("wrong_token"), "{logs}");
    assert!(!logs.contains(TOKEN), "the token is in the logs:\n{logs}");
}
