//! `hello-world check` against in-process servers on 127.0.0.1 (the service itself, and small
//! stand-ins for what the service never does: failing on purpose, never answering, closing
//! connections early): how it counts replicas, statuses and transport errors, what its JSON
//! holds, its exit statuses, and that retries with idempotency keys resend the same key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use clap::Parser;
use hello_world::check::{CheckArgs, Outcome, execute, execute_until};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{spawn_app, spawn_app_with};

/// Wraps the flags the way the binary's `check` subcommand does.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    check: CheckArgs,
}

/// Runs `check` with these arguments, with a guard so a hang fails the test instead of
/// stalling the suite.
async fn check(args: &[&str]) -> Outcome {
    let cli = Cli::try_parse_from(std::iter::once("check").chain(args.iter().copied()))
        .expect("clap accepts the arguments");
    tokio::time::timeout(Duration::from_secs(60), execute(cli.check))
        .await
        .expect("check finishes")
}

/// Runs `check --json` and parses its output.
async fn check_json(args: &[&str]) -> (u8, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let outcome = check(&all).await;
    let json = serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|e| panic!("--json prints JSON ({e}): {:?}", outcome.stdout));
    (outcome.exit, json)
}

/// What a test replica remembers about the requests it got.
#[derive(Clone, Default)]
struct Seen {
    // Idempotency keys, in arrival order.
    keys: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct Replica {
    name: &'static str,
    version: &'static str,
    seen: Seen,
}

/// A stand-in for the service: names itself in `x-served-by`/`x-version`, answers
/// `/status/{code}`, fails each idempotency key's first attempt on `/flaky`, and serves an
/// `/api/info`-like JSON body without the headers on `/bare-info`.
async fn spawn_replica(name: &'static str, version: &'static str) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let replica = Replica {
        name,
        version,
        seen: seen.clone(),
    };
    let named = Router::new()
        .route("/", get(|| async { "Hello World!" }))
        .route("/status/{code}", get(status))
        .route("/flaky", any(flaky))
        .route(
            "/close",
            get(|| async { ([("connection", "close")], "bye") }),
        )
        .layer(axum::middleware::map_response_with_state(
            replica.clone(),
            name_response,
        ));
    let app = named
        .route("/bare-info", get(bare_info))
        .with_state(replica);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (addr, seen)
}

async fn name_response(State(replica): State<Replica>, mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("x-served-by", HeaderValue::from_static(replica.name));
    headers.insert("x-version", HeaderValue::from_static(replica.version));
    response
}

async fn status(Path(code): Path<u16>) -> StatusCode {
    StatusCode::from_u16(code).expect("a valid status code")
}

async fn flaky(State(replica): State<Replica>, headers: HeaderMap) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut keys = replica.seen.keys.lock().expect("lock");
    let first = !keys.contains(&key);
    keys.push(key);
    if first {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn bare_info(State(replica): State<Replica>) -> impl IntoResponse {
    axum::Json(serde_json::json!({"instance": replica.name, "version": replica.version}))
}

/// A round-robin L4 balancer: each new connection goes to the next backend.
async fn spawn_balancer(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        for turn in 0.. {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let backend = backends[turn % backends.len()];
            tokio::spawn(async move {
                if let Ok(mut upstream) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    addr
}

/// A port nothing listens on: bound, then released.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr")
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

fn count(json: &Value, map: &str, key: &str) -> u64 {
    json[map][key].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_through_a_round_robin_balancer_reach_both_replicas_equally() {
    let (a, _) = spawn_replica("replica-a", "1.0.0").await;
    let (b, _) = spawn_replica("replica-b", "1.1.0").await;
    let lb = spawn_balancer(vec![a, b]).await;
    let target = url(lb, "/");
    let (exit, json) = check_json(&[
        &target,
        "-n",
        "40",
        "-c",
        "4",
        "--new-connection",
        "--expect-replicas",
        "2",
        "--min-share",
        "0.45",
    ])
    .await;
    assert_eq!(exit, 0, "{json}");
    assert_eq!(json["requests"], 40);
    assert_eq!(json["ok"], 40);
    assert_eq!(json["connections"], 40, "one connection per request");
    assert_eq!(count(&json, "replicas", "replica-a"), 20);
    assert_eq!(count(&json, "replicas", "replica-b"), 20);
    assert_eq!(count(&json, "versions", "1.0.0"), 20);
    assert_eq!(count(&json, "versions", "1.1.0"), 20);
    assert_eq!(json["replica_versions"]["replica-a"], "1.0.0");
    assert_eq!(json["replica_versions"]["replica-b"], "1.1.0");
    assert_eq!(json["verdict"]["pass"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_stick_to_one_replica_and_fail_a_spread_expectation() {
    let (a, _) = spawn_replica("replica-a", "1.0.0").await;
    let (b, _) = spawn_replica("replica-b", "1.0.0").await;
    let lb = spawn_balancer(vec![a, b]).await;
    let target = url(lb, "/");
    // One worker, one kept-alive connection: an L4 balancer cannot spread its requests.
    let (exit, json) =
        check_json(&[&target, "-n", "30", "-c", "1", "--expect-replicas", "2"]).await;
    assert_eq!(exit, 1, "{json}");
    assert_eq!(json["connections"], 1);
    assert_eq!(json["replicas"].as_object().expect("replicas").len(), 1);
    assert_eq!(
        json["verdict"]["reasons"][0],
        "1 replica(s) answered, expected at least 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_opens_one_connection_per_worker() {
    let (addr, _) = spawn_replica("solo", "1.0.0").await;
    let (exit, json) = check_json(&[&url(addr, "/"), "-n", "50", "-c", "5"]).await;
    assert_eq!(exit, 0, "{json}");
    assert_eq!(json["requests"], 50);
    // At most one per worker (a worker that starts after the others took every request
    // opens none), never one per request.
    let connections = json["connections"].as_u64().expect("connections");
    assert!((1..=5).contains(&connections), "{json}");
    assert_eq!(count(&json, "replicas", "solo"), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_are_counted_and_fail_the_check_unless_tolerated() {
    let (addr, _) = spawn_replica("solo", "1.0.0").await;
    let target = url(addr, "/status/500");
    let (exit, json) = check_json(&[&target, "-n", "10", "-c", "2"]).await;
    assert_eq!(exit, 1, "{json}");
    assert_eq!(count(&json, "status", "500"), 10);
    assert_eq!(json["ok"], 0);
    assert_eq!(json["errors"], 10);
    let transport_errors: u64 = json["error_kinds"]
        .as_object()
        .expect("error_kinds")
        .values()
        .map(|n| n.as_u64().expect("a count"))
        .sum();
    assert_eq!(
        transport_errors, 0,
        "a 500 is an answer, not a transport error"
    );
    assert_eq!(
        count(&json, "replicas", "solo"),
        10,
        "the replica that failed is still named"
    );

    let (exit, json) = check_json(&[&target, "-n", "10", "--max-error-rate", "1"]).await;
    assert_eq!(exit, 0, "{json}");

    let (exit, json) = check_json(&[&url(addr, "/status/302"), "-n", "5"]).await;
    assert_eq!(exit, 0, "a redirect is a success: {json}");
    assert_eq!(json["ok"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out_instead_of_hanging() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    // Accepts and holds every connection without a word.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let (exit, json) = check_json(&[
        &url(addr, "/"),
        "-n",
        "100",
        "-c",
        "2",
        "--timeout",
        "200ms",
    ])
    .await;
    assert_eq!(exit, 1, "{json}");
    assert!(count(&json, "error_kinds", "timeout") >= 1, "{json}");
    assert_eq!(json["ok"], 0);
    let message = json["error_messages"]["timeout"]
        .as_str()
        .expect("a timeout message");
    assert_eq!(message, format!("no response from {addr} within 200ms"));
    // Nothing ever answered: the run stops after the first round instead of waiting out
    // all 100 timeouts.
    assert!(json["requests"].as_u64().expect("requests") <= 2, "{json}");
    let reason = json["verdict"]["reasons"][0].as_str().expect("a reason");
    assert!(
        reason.starts_with("stopped early: target unreachable: no response from"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_fails_fast_and_names_the_address() {
    let addr = closed_port().await;
    let outcome = check(&[&url(addr, "/"), "-z", "30s", "-c", "3"]).await;
    assert_eq!(outcome.exit, 1);
    let summary = outcome.summary.expect("a summary");
    assert!(
        summary.requests >= 1 && summary.requests <= 3,
        "{summary:?}"
    );
    assert_eq!(summary.ok, 0);
    let reasons = summary.verdict.reasons.join("\n");
    assert!(
        reasons.contains(&format!("target unreachable: connection refused to {addr}")),
        "{reasons}"
    );
    assert!(
        outcome.stdout.contains("error      refused: "),
        "{}",
        outcome.stdout
    );
    assert!(outcome.stdout.contains("FAIL"), "{}", outcome.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_resend_the_same_idempotency_key() {
    let (addr, seen) = spawn_replica("solo", "1.0.0").await;
    let (exit, json) = check_json(&[
        &url(addr, "/flaky"),
        "-m",
        "POST",
        "-n",
        "10",
        "-c",
        "3",
        "--idempotency-keys",
        "--retries",
        "2",
    ])
    .await;
    assert_eq!(exit, 0, "{json}");
    assert_eq!(json["requests"], 10);
    assert_eq!(json["ok"], 10);
    assert_eq!(
        json["retries"], 10,
        "each request failed once, then succeeded"
    );

    let keys = seen.keys.lock().expect("lock").clone();
    assert_eq!(keys.len(), 20);
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for key in &keys {
        assert!(!key.is_empty(), "every request carries a key");
        *per_key.entry(key).or_default() += 1;
    }
    assert_eq!(per_key.len(), 10, "one key per request: {keys:?}");
    assert!(
        per_key.values().all(|&n| n == 2),
        "each key sent exactly twice: {per_key:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_after_the_limit_and_the_last_status_counts() {
    let (addr, _) = spawn_replica("solo", "1.0.0").await;
    let (exit, json) = check_json(&[
        &url(addr, "/status/503"),
        "-n",
        "3",
        "-c",
        "1",
        "--retries",
        "2",
    ])
    .await;
    assert_eq!(exit, 1, "{json}");
    assert_eq!(json["requests"], 3);
    assert_eq!(json["retries"], 6);
    assert_eq!(count(&json, "status", "503"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_server_is_replaced_without_an_error() {
    let (addr, _) = spawn_replica("solo", "1.0.0").await;
    let (exit, json) = check_json(&[&url(addr, "/close"), "-n", "20", "-c", "2"]).await;
    assert_eq!(exit, 0, "{json}");
    assert_eq!(json["ok"], 20);
    assert_eq!(json["connections"], 20);
}

/// Reads one request head (bodies are not sent to this server); false at end of stream.
async fn read_request_head(socket: &mut TcpStream) -> bool {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A server that answers one request per connection without `connection: close`, then
/// closes the connection: at once (`swallow_next` false, like a keep-alive timeout firing
/// between two requests), or after reading the next request (true, like that timeout firing
/// just as the next request arrives).
async fn spawn_one_answer_server(swallow_next: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_request_head(&mut socket).await {
                    return;
                }
                let response =
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-served-by: one-shot\r\n\r\nok";
                let _ = socket.write_all(response).await;
                if swallow_next {
                    read_request_head(&mut socket).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_closed_keep_alive_connection_is_replaced_without_an_error() {
    let addr = spawn_one_answer_server(false).await;
    let (exit, json) = check_json(&[&url(addr, "/"), "-n", "30", "-c", "2"]).await;
    assert_eq!(exit, 0, "{json}");
    assert_eq!(json["ok"], 30);
    assert_eq!(count(&json, "replicas", "one-shot"), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_lost_on_a_closing_connection_is_sent_again_once() {
    let addr = spawn_one_answer_server(true).await;
    let (exit, json) = check_json(&[&url(addr, "/"), "-n", "30", "-c", "2"]).await;
    assert_eq!(exit, 0, "{json}");
    assert_eq!(json["ok"], 30);
    assert_eq!(
        json["connections"], 30,
        "every second request went to a new connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_lost_on_a_closing_connection_is_an_error_not_silently_repeated() {
    let addr = spawn_one_answer_server(true).await;
    let (exit, json) = check_json(&[&url(addr, "/"), "-m", "POST", "-n", "10", "-c", "1"]).await;
    assert_eq!(exit, 1, "{json}");
    // Odd requests open a connection and are answered; even ones die with it.
    assert_eq!(json["ok"], 5);
    assert_eq!(count(&json, "error_kinds", "closed"), 5, "{json}");
    let message = json["error_messages"]["closed"].as_str().expect("message");
    assert_eq!(
        message,
        format!("{addr} closed the connection before a complete response")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_names_the_replica_when_headers_do_not() {
    let (addr, _) = spawn_replica("info-only", "2.0.0").await;
    let (exit, json) = check_json(&[&url(addr, "/bare-info"), "-n", "4"]).await;
    assert_eq!(exit, 0, "{json}");
    assert_eq!(count(&json, "replicas", "info-only"), 4);
    assert_eq!(json["replica_versions"]["info-only"], "2.0.0");
    assert_eq!(json["unidentified"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_run_sends_requests_until_the_duration_ends() {
    let (addr, _) = spawn_replica("solo", "1.0.0").await;
    let (exit, json) = check_json(&[&url(addr, "/"), "-z", "300ms", "-c", "2"]).await;
    assert_eq!(exit, 0, "{json}");
    let requests = json["requests"].as_u64().expect("requests");
    assert!(requests > 0);
    assert_eq!(json["ok"], requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_object_has_every_documented_key_with_its_type() {
    let (addr, _) = spawn_replica("solo", "1.0.0").await;
    let (_, json) = check_json(&[&url(addr, "/"), "-n", "5"]).await;
    let object = json.as_object().expect("one JSON object");
    for key in [
        "requests",
        "ok",
        "errors",
        "retries",
        "connections",
        "unidentified",
        "concurrency",
    ] {
        assert!(object[key].is_u64(), "{key} is a count: {json}");
    }
    for key in [
        "status",
        "error_kinds",
        "error_messages",
        "replicas",
        "versions",
        "replica_versions",
        "machines",
        "replica_machines",
    ] {
        assert!(object[key].is_object(), "{key} is a map: {json}");
    }
    for key in ["rps", "duration_s"] {
        assert!(object[key].is_number(), "{key} is a number: {json}");
    }
    for key in ["p50", "p90", "p99", "p999", "max", "mean"] {
        assert!(
            json["latency_ms"][key].is_number(),
            "latency_ms.{key}: {json}"
        );
    }
    assert!(json["verdict"]["pass"].is_boolean());
    assert!(json["verdict"]["reasons"].is_array());
    assert_eq!(json["url"], url(addr, "/"));
    assert_eq!(json["method"], "GET");
    assert_eq!(json["new_connection"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_is_0_on_pass_1_on_failure_2_on_bad_arguments() {
    let (addr, _) = spawn_replica("solo", "1.0.0").await;
    assert_eq!(check(&[&url(addr, "/"), "-n", "3"]).await.exit, 0);
    assert_eq!(check(&[&url(addr, "/status/404"), "-n", "3"]).await.exit, 1);
    assert_eq!(
        check(&[&url(addr, "/"), "-n", "3", "--expect-replicas", "2"])
            .await
            .exit,
        1
    );
    let bad = check(&[&url(addr, "/"), "-H", "no colon"]).await;
    assert_eq!(bad.exit, 2);
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_prints_nothing_on_pass_and_only_reasons_on_failure() {
    let (addr, _) = spawn_replica("solo", "1.0.0").await;
    let pass = check(&[&url(addr, "/"), "-n", "3", "-q"]).await;
    assert_eq!(
        (pass.exit, pass.stdout.as_str(), pass.stderr.as_str()),
        (0, "", "")
    );
    let fail = check(&[&url(addr, "/status/500"), "-n", "3", "-q"]).await;
    assert_eq!(fail.exit, 1);
    assert_eq!(fail.stdout, "");
    assert_eq!(
        fail.stderr,
        "check failed: 3 of 3 requests failed (100.00 %), more than the 0.00 % allowed\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_human_report_shows_the_replica_table() {
    let (a, _) = spawn_replica("replica-a", "1.0.0").await;
    let (b, _) = spawn_replica("replica-b", "1.0.0").await;
    let lb = spawn_balancer(vec![a, b]).await;
    let outcome = check(&[&url(lb, "/"), "-n", "10", "-c", "2", "--new-connection"]).await;
    assert_eq!(outcome.exit, 0, "{}", outcome.stdout);
    let report = outcome.stdout;
    assert!(report.contains("replicas   2 answered"), "{report}");
    assert!(report.contains("replica-a"), "{report}");
    assert!(report.contains(" 50.0 %"), "{report}");
    assert!(report.contains("status     200: 10"), "{report}");
    assert!(report.contains("p99.9"), "{report}");
    assert!(report.trim_end().ends_with("PASS"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_service_replicas_behind_a_balancer_each_serve_half_and_announce_their_version() {
    let a = spawn_app_with(|c| c.instance_name = "hello-a".to_owned()).await;
    let b = spawn_app_with(|c| c.instance_name = "hello-b".to_owned()).await;
    let lb = spawn_balancer(vec![a.public, b.public]).await;
    let (exit, json) = check_json(&[
        &url(lb, "/"),
        "-n",
        "60",
        "-c",
        "3",
        "--new-connection",
        "--expect-replicas",
        "2",
        "--min-share",
        "0.5",
    ])
    .await;
    assert_eq!(exit, 0, "{json}");
    assert_eq!(count(&json, "replicas", "hello-a"), 30);
    assert_eq!(count(&json, "replicas", "hello-b"), 30);
    assert_eq!(count(&json, "versions", hello_world::VERSION), 60);
    assert_eq!(json["replica_versions"]["hello-a"], hello_world::VERSION);
    assert_eq!(count(&json, "status", "200"), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_two_machines_are_counted_per_machine_in_json_and_text() {
    let on = |instance: &str, node: &str| {
        let (instance, node) = (instance.to_owned(), node.to_owned());
        move |c: &mut hello_world::config::Config| {
            c.instance_name = instance;
            c.downward.node = Some(node);
        }
    };
    let a = spawn_app_with(on("web.1", "machine-1")).await;
    let b = spawn_app_with(on("web.2", "machine-2")).await;
    let c = spawn_app_with(on("web.3", "machine-2")).await;
    let lb = spawn_balancer(vec![a.public, b.public, c.public]).await;
    let (exit, json) =
        check_json(&[&url(lb, "/"), "-n", "90", "-c", "3", "--new-connection"]).await;
    assert_eq!(exit, 0, "{json}");
    assert_eq!(count(&json, "machines", "machine-1"), 30, "{json}");
    assert_eq!(count(&json, "machines", "machine-2"), 60, "{json}");
    assert_eq!(json["replica_machines"]["web.3"], "machine-2");
    assert_eq!(count(&json, "replicas", "web.3"), 30);

    let outcome = check(&[&url(lb, "/"), "-n", "30", "-c", "3", "--new-connection"]).await;
    let report = outcome.stdout;
    assert!(report.contains("machines   2 answered"), "{report}");
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with("machine-2"))
        .unwrap_or_else(|| panic!("a line for machine-2: {report}"));
    assert!(
        line.contains("66.7 %") && line.contains("web.2, web.3"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_status_route_is_counted_as_failures() {
    let app = spawn_app().await;
    let (exit, json) = check_json(&[
        &format!("{}/status/500", app.public_url()),
        "-n",
        "20",
        "-c",
        "4",
    ])
    .await;
    assert_eq!(exit, 1, "{json}");
    assert_eq!(count(&json, "status", "500"), 20);
    assert_eq!(json["errors"], 20);
    assert_eq!(count(&json, "replicas", "test-replica"), 20);
}

/// Runs the built binary's `check` subcommand: exit status, stdout, stderr.
async fn check_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hello-world"))
        .arg("check")
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the check process finishes")
        .expect("the check process runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_0_on_pass_1_on_failure_and_2_on_bad_arguments() {
    let app = spawn_app().await;
    let target = format!("{}/", app.public_url());

    let (code, stdout, _) = check_binary(&[&target, "-n", "20", "--json"]).await;
    assert_eq!(code, Some(0), "{stdout}");
    let json: Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert_eq!(json["ok"], 20);

    let (code, stdout, _) = check_binary(&[&target, "-n", "5"]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("test-replica"), "{stdout}");

    let failing = format!("{}/status/503", app.public_url());
    let (code, _, _) = check_binary(&[&failing, "-n", "5", "-q"]).await;
    assert_eq!(code, Some(1));

    let (code, _, _) = check_binary(&[&target, "-n", "5", "--expect-replicas", "3"]).await;
    assert_eq!(code, Some(1));

    let dead = url(closed_port().await, "/");
    let (code, stdout, _) = check_binary(&[&dead, "-z", "30s"]).await;
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains("connection refused to 127.0.0.1:"),
        "{stdout}"
    );

    // Rejected by clap, and by the check's own validation: both exit 2 with a message.
    let (code, _, stderr) = check_binary(&[&target, "--concurrency", "many"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    for bad in [
        vec![target.as_str(), "-c", "0"],
        vec![target.as_str(), "-H", "no-colon"],
        vec!["ftp://127.0.0.1/"],
    ] {
        let (code, stdout, stderr) = check_binary(&bad).await;
        assert_eq!(code, Some(2), "{bad:?}: {stderr}");
        assert_eq!(stdout, "");
        assert_eq!(stderr.lines().count(), 1, "{bad:?}: one line: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_stops_early_and_still_reports() {
    let app = spawn_app().await;
    let cli = Cli::try_parse_from(["check", &app.public_url(), "-z", "60s", "-c", "2", "--json"])
        .expect("clap accepts the arguments");
    let (interrupt, interrupted) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(execute_until(cli.check, async {
        let _ = interrupted.await;
    }));
    // Interrupted once the server has answered some of its requests.
    let answered = r#"http_requests_total{method="GET",route="/",status="200"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !app
        .request(http::Method::GET, "/metrics")
        .admin()
        .await
        .text()
        .contains(answered)
    {
        assert!(std::time::Instant::now() < deadline, "no request answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    interrupt.send(()).expect("the run is waiting");
    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run stops")
        .expect("the run completes");
    assert_eq!(outcome.exit, 1);
    let json: Value = serde_json::from_str(&outcome.stdout).expect("JSON");
    assert!(json["ok"].as_u64().expect("ok") > 0, "{json}");
    assert_eq!(json["errors"], 0);
    assert_eq!(json["verdict"]["reasons"][0], "stopped early: interrupted");
}

/// A proxy that loses every other answer: on even connections it forwards the request, waits
/// until the service starts answering (so the request has taken effect), then drops both
/// connections; odd connections pass through. Meant for one request per connection.
async fn spawn_answer_losing_proxy(backend: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        for turn in 0usize.. {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(backend).await else {
                    return;
                };
                if turn % 2 == 1 {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
                let mut buf = [0u8; 4096];
                let Ok(n) = client.read(&mut buf).await else {
                    return;
                };
                if upstream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                // The first byte of the answer: the service has done the work. Lose it.
                let _ = upstream.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_increments_with_idempotency_keys_count_exactly_once() {
    let app = spawn_app().await;
    let proxy = spawn_answer_losing_proxy(app.public).await;
    let (exit, json) = check_json(&[
        &url(proxy, "/api/counter/increment"),
        "-m",
        "POST",
        "-n",
        "20",
        "-c",
        "1",
        "--new-connection",
        "--idempotency-keys",
        "--retries",
        "3",
    ])
    .await;
    assert_eq!(exit, 0, "{json}");
    assert_eq!(json["ok"], 20);
    // Every first attempt took effect and lost its answer; its retry carried the same key.
    assert_eq!(json["retries"], 20, "{json}");
    let counter = app.request(http::Method::GET, "/api/counter").await.json();
    assert_eq!(
        counter["value"], 20,
        "each increment counted once: {counter}"
    );
}
