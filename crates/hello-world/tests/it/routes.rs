//! Every public route and its errors, as a client sees them.

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::helpers::{Answer, TestApp, send, spawn_app};

#[tokio::test]
async fn root_says_hello_world_as_plain_text_to_non_browsers() {
    let app = spawn_app().await;
    for accept in [
        None,
        Some("*/*"),
        Some("text/plain"),
        Some("application/json"),
    ] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let answer = send(Method::GET, &app.public_url(), &headers, Bytes::new()).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("content-type"), "text/plain; charset=utf-8");
        assert_eq!(answer.text(), "Hello World!", "accept {accept:?}");
    }
}

#[tokio::test]
async fn head_of_root_answers_headers_without_a_body() {
    let app = spawn_app().await;
    let answer = send(Method::HEAD, &app.public_url(), &[], Bytes::new()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(
        answer.header("content-length"),
        "12",
        "the length a GET gets"
    );
    assert!(answer.body.is_empty());
}

/// `/`, `/healthz` and `/readyz` are answered without the router (`api::Direct`), except when
/// faults are switched on: then they take the router like every route. Both ways must agree.
#[tokio::test]
async fn direct_answers_match_the_routers() {
    let app = spawn_app().await;
    let browser = [("accept", "text/html")];
    let asks: [Ask; 5] = [
        (Method::GET, "/", &[]),
        (Method::GET, "/", &browser),
        (Method::HEAD, "/", &[]),
        (Method::GET, "/healthz", &[]),
        (Method::GET, "/readyz", &[]),
    ];
    let direct = ask_all(&app, &asks).await;
    // A latency fault of 1 ms is the smallest switch that sends every request through the router.
    let set = app
        .admin(
            Method::PUT,
            "/faults",
            r#"{"error_rate": 0, "latency": "1ms"}"#,
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    let routed = ask_all(&app, &asks).await;
    for (direct, routed) in direct.iter().zip(&routed) {
        assert_eq!(direct.status, routed.status);
        let names = |answer: &Answer| {
            let mut names: Vec<String> = answer.headers.keys().map(|n| n.to_string()).collect();
            names.sort();
            names
        };
        assert_eq!(names(direct), names(routed));
        for name in [
            "content-type",
            "content-length",
            "cache-control",
            "vary",
            "allow",
            "x-served-by",
            "x-version",
        ] {
            assert_eq!(direct.headers.get(name), routed.headers.get(name), "{name}");
        }
        // The greeting's headers are stamped in advance with a placeholder id
        // (`observe::stamp_in_advance`): every answer must leave with a fresh id of its own.
        let id = direct.header("x-request-id");
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id:?}"
        );
        assert_ne!(id, routed.header("x-request-id"));
        if direct.header("content-type").starts_with("text/html") {
            // The page shows the uptime in seconds, which may tick between the two.
            assert!(routed.text().contains("Hello World!"));
        } else {
            assert_eq!(direct.body, routed.body);
        }
    }
    assert_eq!(direct[5].status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(direct[5].json()["error"], "not ready");
}

/// A method, a path and request headers.
type Ask<'a> = (Method, &'a str, &'a [(&'a str, &'a str)]);

/// Each of `asks`, then `/readyz` while readiness is switched off.
async fn ask_all(app: &TestApp, asks: &[Ask<'_>]) -> Vec<Answer> {
    let mut answers = Vec::new();
    for (method, path, headers) in asks {
        let url = format!("{}{path}", app.public_url());
        answers.push(send(method.clone(), &url, headers, Bytes::new()).await);
    }
    app.admin(Method::POST, "/readyz/disable", "").await;
    answers.push(app.get("/readyz").await);
    app.admin(Method::POST, "/readyz/enable", "").await;
    answers
}

#[tokio::test]
async fn browsers_get_the_page_under_a_content_security_policy() {
    let app = spawn_app().await;
    let accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let answer = send(
        Method::GET,
        &app.public_url(),
        &[("accept", accept)],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "text/html; charset=utf-8");
    assert!(
        answer
            .header("content-security-policy")
            .contains("default-src 'none'")
    );
    assert!(answer.text().contains("Hello World!"));
}

#[tokio::test]
async fn every_answer_says_who_served_it_and_carries_a_request_id() {
    let app = spawn_app().await;
    for path in ["/", "/healthz", "/nope", "/status/503"] {
        let answer = app.get(path).await;
        assert_eq!(answer.header("x-served-by"), "test-replica", "{path}");
        assert_eq!(answer.header("x-version"), hello_world::VERSION, "{path}");
        assert_eq!(answer.header("x-request-id").len(), 16, "{path}");
    }
    let given = [("x-request-id", "trace-42")];
    let answer = send(Method::GET, &app.public_url(), &given, Bytes::new()).await;
    assert_eq!(answer.header("x-request-id"), "trace-42");
}

#[tokio::test]
async fn probes_answer_json() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");
}

#[tokio::test]
async fn info_names_the_replica_version_and_store() {
    let app = spawn_app().await;
    let info = app.get("/api/info").await.json();
    assert_eq!(info["instance"], "test-replica");
    assert_eq!(info["version"], hello_world::VERSION);
    assert_eq!(info["store"], "memory");
    assert!(info["uptime_seconds"].as_f64().is_some());
    assert!(info["hostname"].as_str().is_some_and(|h| !h.is_empty()));
    for field in ["commit", "pod", "node", "namespace"] {
        assert!(info.get(field).is_some(), "{field} missing from {info}");
    }
    let version = app.get("/version").await.json();
    assert_eq!(version["version"], hello_world::VERSION);
    assert!(version["commit"].is_string());
}

#[tokio::test]
async fn status_answers_the_code_asked_for_and_refuses_others() {
    let app = spawn_app().await;
    for code in [200u16, 201, 204, 302, 404, 418, 500, 503, 599] {
        let answer = app.get(&format!("/status/{code}")).await;
        assert_eq!(answer.status.as_u16(), code);
        if code >= 400 {
            assert_eq!(answer.json()["status"], code);
        }
    }
    for bad in ["99", "600", "abc", "100", "-1", "65536"] {
        let answer = app.get(&format!("/status/{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "/status/{bad}");
        assert!(answer.json()["error"].is_string());
    }
}

#[tokio::test]
async fn delay_waits_within_bounds_and_refuses_the_rest() {
    let app = spawn_app().await;
    let started = std::time::Instant::now();
    let answer = app.get("/delay/150ms").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["delayed_ms"], 150);
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    for bad in ["61s", "2m", "soon", "-1s"] {
        let answer = app.get(&format!("/delay/{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "/delay/{bad}");
        assert!(answer.json()["error"].is_string());
    }
}

#[tokio::test]
async fn headers_shows_what_the_client_sent() {
    let app = spawn_app().await;
    let url = format!("{}/headers", app.public_url());
    let answer = send(
        Method::GET,
        &url,
        &[("x-probe", "yes"), ("x-multi", "a"), ("x-multi", "b")],
        Bytes::new(),
    )
    .await;
    let json = answer.json();
    assert_eq!(json["headers"]["x-probe"], "yes");
    assert_eq!(json["headers"]["x-multi"], serde_json::json!(["a", "b"]));
}

#[tokio::test]
async fn echo_returns_the_body_and_never_as_html() {
    let app = spawn_app().await;
    let url = format!("{}/api/echo", app.public_url());
    let script = "<script>alert(1)</script>";
    let answer = send(
        Method::POST,
        &url,
        &[("content-type", "text/html")],
        Bytes::from(script),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), script);
    assert_eq!(answer.header("content-type"), "application/octet-stream");
    assert_eq!(answer.header("x-content-type-options"), "nosniff");
}

#[tokio::test]
async fn echo_refuses_a_body_over_the_limit_with_json() {
    let app = crate::helpers::spawn_app_with(|config| config.body_limit = 1024).await;
    let url = format!("{}/api/echo", app.public_url());
    let answer = send(Method::POST, &url, &[], Bytes::from(vec![b'x'; 1025])).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.json()["limit_bytes"], 1024);
    let answer = send(Method::POST, &url, &[], Bytes::from(vec![b'x'; 1024])).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let missing = app.get("/no/such/path").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["status"], 404);
    let url = format!("{}/healthz", app.public_url());
    let wrong = send(Method::DELETE, &url, &[], Bytes::new()).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong.header("allow").contains("GET"));
    assert_eq!(wrong.json()["error"], "method not allowed");
}

#[tokio::test]
async fn request_timeout_answers_503_json() {
    let app = crate::helpers::spawn_app_with(|config| {
        config.request_timeout = std::time::Duration::from_millis(100);
    })
    .await;
    let answer = app.get("/delay/2s").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"], "request timed out");
}
