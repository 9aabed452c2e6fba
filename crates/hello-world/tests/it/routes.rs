//! Every public route and its errors, as a client sees them.

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::helpers::{Answer, Ask, TestApp, spawn_app, spawn_app_with};

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
        let answer = Ask::new(Method::GET, &app.public_url())
            .headers(&headers)
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("content-type"), "text/plain; charset=utf-8");
        assert_eq!(answer.text(), "Hello World!", "accept {accept:?}");
        // It names the replica that answered: no shared cache may hand it to someone else.
        assert_eq!(answer.header("cache-control"), "private");
    }
}

#[tokio::test]
async fn head_of_root_answers_headers_without_a_body() {
    let app = spawn_app().await;
    let answer = Ask::new(Method::HEAD, &app.public_url()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(
        answer.header("content-length"),
        "12",
        "the length a GET gets"
    );
    assert!(answer.body.is_empty());
    assert_eq!(answer.header("cache-control"), "private");
}

/// With a fault switched on, the middleware takes its slow path (faults, then the route under
/// the request timeout): what a client gets must not change but for the time it takes.
#[tokio::test]
async fn a_latency_fault_changes_nothing_but_the_time() {
    let app = spawn_app().await;
    let browser = [("accept", "text/html")];
    let asks: [Question; 5] = [
        (Method::GET, "/", &[]),
        (Method::GET, "/", &browser),
        (Method::HEAD, "/", &[]),
        (Method::GET, "/healthz", &[]),
        (Method::GET, "/readyz", &[]),
    ];
    let plain = ask_all(&app, &asks).await;
    // A latency fault of 1 ms is the smallest switch that sends every request the slow way.
    let set = app
        .request(Method::PUT, "/faults")
        .admin()
        .body(r#"{"error_rate": 0, "latency": "1ms"}"#)
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    let faulted = ask_all(&app, &asks).await;
    for (plain, faulted) in plain.iter().zip(&faulted) {
        assert_eq!(plain.status, faulted.status);
        let names = |answer: &Answer| {
            let mut names: Vec<String> = answer.headers.keys().map(|n| n.to_string()).collect();
            names.sort();
            names
        };
        assert_eq!(names(plain), names(faulted));
        // `/readyz` says how long the store has been in its state, which may tick between the
        // two.
        let timed = plain.body.starts_with(b"{") && plain.json().get("store_status").is_some();
        for name in [
            "content-type",
            "cache-control",
            "vary",
            "allow",
            "x-served-by",
            "x-version",
        ] {
            assert_eq!(plain.headers.get(name), faulted.headers.get(name), "{name}");
        }
        // Every answer leaves with a fresh id of its own.
        let id = plain.header("x-request-id");
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id:?}"
        );
        assert_ne!(id, faulted.header("x-request-id"));
        if plain.header("content-type").starts_with("text/html") {
            // The page shows the uptime in seconds, which may tick between the two.
            assert!(faulted.text().contains("Hello World!"));
        } else if timed {
            let untimed = |answer: &Answer| {
                let mut json = answer.json();
                json["store_status"]
                    .as_object_mut()
                    .expect("the store's status is an object")
                    .remove("for_seconds");
                json
            };
            assert_eq!(untimed(plain), untimed(faulted));
        } else {
            assert_eq!(plain.body, faulted.body);
        }
    }
    assert_eq!(plain[5].status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(plain[5].json()["error"], "not ready");
}

/// A method, a path and request headers.
type Question<'a> = (Method, &'a str, &'a [(&'a str, &'a str)]);

/// Each of `asks`, then `/readyz` while readiness is switched off.
async fn ask_all(app: &TestApp, asks: &[Question<'_>]) -> Vec<Answer> {
    let mut answers = Vec::new();
    for (method, path, headers) in asks {
        let url = format!("{}{path}", app.public_url());
        answers.push(Ask::new(method.clone(), &url).headers(headers).await);
    }
    app.request(Method::POST, "/readyz/disable").admin().await;
    answers.push(app.request(Method::GET, "/readyz").await);
    app.request(Method::POST, "/readyz/enable").admin().await;
    answers
}

#[tokio::test]
async fn browsers_get_the_page_under_a_content_security_policy() {
    let app = spawn_app().await;
    let accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let answer = Ask::new(Method::GET, &app.public_url())
        .headers(&[("accept", accept)])
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
        let answer = app.request(Method::GET, path).await;
        assert_eq!(answer.header("x-served-by"), "test-replica", "{path}");
        assert_eq!(answer.header("x-version"), hello_world::VERSION, "{path}");
        assert_eq!(answer.header("x-request-id").len(), 16, "{path}");
    }
    let given = [("x-request-id", "trace-42")];
    let answer = Ask::new(Method::GET, &app.public_url())
        .headers(&given)
        .await;
    assert_eq!(answer.header("x-request-id"), "trace-42");
}

#[tokio::test]
async fn probes_answer_json() {
    let app = spawn_app().await;
    let health = app.request(Method::GET, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    let ready = app.request(Method::GET, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");
}

#[tokio::test]
async fn info_names_the_replica_version_and_store() {
    let app = spawn_app().await;
    let info = app.request(Method::GET, "/api/info").await.json();
    assert_eq!(info["instance"], "test-replica");
    assert_eq!(info["version"], hello_world::VERSION);
    assert_eq!(info["store"], "memory");
    assert!(info["uptime_seconds"].as_f64().is_some());
    assert!(info["hostname"].as_str().is_some_and(|h| !h.is_empty()));
    for field in ["commit", "pod", "node", "namespace"] {
        assert!(info.get(field).is_some(), "{field} missing from {info}");
    }
    let version = app.request(Method::GET, "/version").await.json();
    assert_eq!(version["version"], hello_world::VERSION);
    assert!(version["commit"].is_string());
}

#[tokio::test]
async fn a_replica_that_knows_its_machine_names_it_in_info_and_on_every_answer() {
    let app = spawn_app_with(|c| c.downward.node = Some("hello-world-node-2".to_owned())).await;
    let info = app.request(Method::GET, "/api/info").await;
    assert_eq!(info.json()["node"], "hello-world-node-2");
    assert_eq!(info.header("x-node"), "hello-world-node-2");
    for path in ["/", "/healthz", "/no-such-route"] {
        let answer = app.request(Method::GET, path).await;
        assert_eq!(answer.header("x-node"), "hello-world-node-2", "{path}");
    }
    let anywhere = spawn_app().await;
    let answer = anywhere.request(Method::GET, "/").await;
    assert!(
        answer.headers.get("x-node").is_none(),
        "no machine, no x-node header"
    );
    assert!(anywhere.request(Method::GET, "/api/info").await.json()["node"].is_null());
}

#[tokio::test]
async fn status_answers_the_code_asked_for_and_refuses_others() {
    let app = spawn_app().await;
    for code in [200u16, 201, 204, 302, 404, 418, 500, 503, 599] {
        let answer = app.request(Method::GET, &format!("/status/{code}")).await;
        assert_eq!(answer.status.as_u16(), code);
        if code >= 400 {
            assert_eq!(answer.json()["status"], code);
        }
    }
    for bad in ["99", "600", "abc", "100", "-1", "65536"] {
        let answer = app.request(Method::GET, &format!("/status/{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "/status/{bad}");
        assert!(answer.json()["error"].is_string());
    }
}

#[tokio::test]
async fn delay_waits_within_bounds_and_refuses_the_rest() {
    let app = spawn_app().await;
    let started = std::time::Instant::now();
    let answer = app.request(Method::GET, "/delay/150ms").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["delayed_ms"], 150);
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    for bad in ["61s", "2m", "soon", "-1s"] {
        let answer = app.request(Method::GET, &format!("/delay/{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "/delay/{bad}");
        assert!(answer.json()["error"].is_string());
    }
}

#[tokio::test]
async fn headers_shows_what_the_client_sent() {
    let app = spawn_app().await;
    let url = format!("{}/headers", app.public_url());
    let answer = Ask::new(Method::GET, &url)
        .headers(&[("x-probe", "yes"), ("x-multi", "a"), ("x-multi", "b")])
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
    let answer = Ask::new(Method::POST, &url)
        .headers(&[("content-type", "text/html")])
        .body(Bytes::from(script))
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
    let answer = Ask::new(Method::POST, &url)
        .body(Bytes::from(vec![b'x'; 1025]))
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.json()["limit_bytes"], 1024);
    let answer = Ask::new(Method::POST, &url)
        .body(Bytes::from(vec![b'x'; 1024]))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let missing = app.request(Method::GET, "/no/such/path").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["status"], 404);
    let url = format!("{}/healthz", app.public_url());
    let wrong = Ask::new(Method::DELETE, &url).await;
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
    let answer = app.request(Method::GET, "/delay/2s").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"], "request timed out");
}
