//! Shared state across real server processes: two `hello-world` binaries share one Redis, as
//! replicas behind a load balancer do, and a Redis that dies and comes back under a running
//! server.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Answer, Process, send};
use crate::redis_server::{Persistence, RedisServer};

/// A replica of the service sharing `redis`, ready to serve state.
fn replica(redis: &RedisServer, extra: &[&str]) -> Process {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    Process::serve(&args, &[])
}

async fn call(
    process: &Process,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    send(
        method,
        &process.url(path),
        headers,
        Bytes::from(body.to_owned()),
    )
    .await
}

/// Polls `/readyz` until it answers `want`; fails after 15 s.
async fn wait_readyz(process: &Process, want: StatusCode) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = call(process, Method::GET, "/readyz", &[], "").await;
        if answer.status == want {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {} ({}) instead of {want}",
            answer.status,
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_concurrent_increments_through_two_replicas_are_counted_exactly() {
    const TASKS: usize = 40;
    const EACH: usize = 50;
    let redis = RedisServer::start();
    let replicas = Arc::new([replica(&redis, &[]), replica(&redis, &[])]);
    for process in replicas.iter() {
        wait_readyz(process, StatusCode::OK).await;
    }

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let replicas = replicas.clone();
        tasks.push(tokio::spawn(async move {
            let mut values = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let process = &replicas[(task + i) % 2];
                let answer = call(process, Method::POST, "/api/counter/increment", &[], "").await;
                assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
                values.push(answer.json()["value"].as_i64().expect("a number"));
            }
            values
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for value in task.await.expect("the task finishes") {
            assert!(seen.insert(value), "value {value} was handed out twice");
        }
    }
    let total = i64::try_from(TASKS * EACH).expect("small");
    assert_eq!(
        seen,
        (1..=total).collect::<HashSet<_>>(),
        "no increment lost, none doubled"
    );
    for process in replicas.iter() {
        let answer = call(process, Method::GET, "/api/counter", &[], "").await;
        assert_eq!(answer.json(), json!({"value": total}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_through_the_other_replica_after_the_first_died_counts_once() {
    let redis = RedisServer::start();
    let mut first = replica(&redis, &[]);
    let second = replica(&redis, &[]);
    wait_readyz(&first, StatusCode::OK).await;
    wait_readyz(&second, StatusCode::OK).await;

    call(&second, Method::POST, "/api/counter/increment", &[], "").await;
    let key = [("idempotency-key", "payment-0001")];
    let answered = call(&first, Method::POST, "/api/counter/increment", &key, "").await;
    assert_eq!(answered.json(), json!({"value": 2}));
    // The replica dies; the client, unsure its request landed, retries through the other one.
    first.child.kill().expect("kill the first replica");
    first.child.wait().expect("reap it");

    let retry = call(&second, Method::POST, "/api/counter/increment", &key, "").await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.json(), json!({"value": 2}));
    assert_eq!(retry.header("idempotent-replayed"), "true");
    let now = call(&second, Method::GET, "/api/counter", &[], "").await;
    assert_eq!(now.json(), json!({"value": 2}), "the retry counted nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_compare_and_set_loops_over_two_replicas_lose_no_update() {
    const LOOPS: usize = 8;
    const EACH: u64 = 25;
    let redis = RedisServer::start();
    let replicas = Arc::new([replica(&redis, &[]), replica(&redis, &[])]);
    for process in replicas.iter() {
        wait_readyz(process, StatusCode::OK).await;
    }

    let mut tasks = Vec::new();
    for task in 0..LOOPS {
        let replicas = replicas.clone();
        tasks.push(tokio::spawn(async move {
            let mut attempts = 0usize;
            for _ in 0..EACH {
                loop {
                    attempts += 1;
                    assert!(attempts < 20_000, "a compare-and-set loop never landed");
                    // Read through one replica, write through the other.
                    let reader = &replicas[(task + attempts) % 2];
                    let writer = &replicas[(task + attempts + 1) % 2];
                    let read = call(reader, Method::GET, "/api/kv/total", &[], "").await;
                    let (current, condition) = match read.status {
                        StatusCode::OK => {
                            let n: u64 = read.text().parse().expect("a number");
                            (n, ("if-match", read.header("etag").to_owned()))
                        }
                        StatusCode::NOT_FOUND => (0, ("if-none-match", "*".to_owned())),
                        other => panic!("GET answered {other}: {}", read.text()),
                    };
                    let next = (current + 1).to_string();
                    let write = call(
                        writer,
                        Method::PUT,
                        "/api/kv/total",
                        &[(condition.0, condition.1.as_str())],
                        &next,
                    )
                    .await;
                    match write.status {
                        StatusCode::OK | StatusCode::CREATED => break,
                        StatusCode::PRECONDITION_FAILED => continue,
                        other => panic!("PUT answered {other}: {}", write.text()),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("the loop finishes");
    }
    let expected = (LOOPS as u64 * EACH).to_string();
    for process in replicas.iter() {
        let read = call(process, Method::GET, "/api/kv/total", &[], "").await;
        assert_eq!(
            read.text(),
            expected,
            "every read-modify-write landed exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_through_another_replica_gets_412() {
    let redis = RedisServer::start();
    let a = replica(&redis, &[]);
    let b = replica(&redis, &[]);
    wait_readyz(&a, StatusCode::OK).await;
    wait_readyz(&b, StatusCode::OK).await;

    let v1 = call(&a, Method::PUT, "/api/kv/doc", &[], "one")
        .await
        .header("etag")
        .to_owned();
    let read = call(&b, Method::GET, "/api/kv/doc", &[], "").await;
    assert_eq!(read.header("etag"), v1, "both replicas see one ETag");
    let v2 = call(&b, Method::PUT, "/api/kv/doc", &[("if-match", &v1)], "two").await;
    assert_eq!(v2.status, StatusCode::OK);
    let v2 = v2.header("etag").to_owned();

    let stale = call(&a, Method::PUT, "/api/kv/doc", &[("if-match", &v1)], "lost").await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.json()["current_etag"], v2.as_str());
    assert_eq!(
        call(&a, Method::GET, "/api/kv/doc", &[], "").await.text(),
        "two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_a_running_server_is_a_503_window_then_recovery() {
    let mut redis = RedisServer::start_with(None, Persistence::AppendOnlyAlways);
    let server = replica(&redis, &["--store-timeout", "500ms"]);
    wait_readyz(&server, StatusCode::OK).await;
    for _ in 0..5 {
        let answer = call(&server, Method::POST, "/api/counter/increment", &[], "").await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    call(&server, Method::PUT, "/api/kv/kept", &[], "kept").await;

    redis.kill();
    let readyz = wait_readyz(&server, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(readyz.json()["reason"], "store unreachable");
    for (method, path) in [
        (Method::GET, "/api/counter"),
        (Method::POST, "/api/counter/increment"),
        (Method::GET, "/api/kv/kept"),
        (Method::PUT, "/api/kv/kept"),
    ] {
        let answer = call(&server, method.clone(), path, &[], "v").await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}"
        );
        assert_eq!(
            answer.header("content-type"),
            "application/json",
            "{method} {path}"
        );
        assert!(
            answer.json()["error"]
                .as_str()
                .expect("a message")
                .starts_with("store")
        );
    }
    // What does not need the store keeps serving.
    let root = call(&server, Method::GET, "/", &[], "").await;
    assert_eq!(
        (root.status, root.text().as_str()),
        (StatusCode::OK, "Hello World!")
    );
    assert_eq!(
        call(&server, Method::GET, "/healthz", &[], "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&server, Method::GET, "/api/info", &[], "")
            .await
            .status,
        StatusCode::OK
    );

    redis.restart();
    wait_readyz(&server, StatusCode::OK).await;
    let counter = call(&server, Method::GET, "/api/counter", &[], "").await;
    assert_eq!(
        counter.json(),
        json!({"value": 5}),
        "every acknowledged increment survived"
    );
    let next = call(&server, Method::POST, "/api/counter/increment", &[], "").await;
    assert_eq!(next.json(), json!({"value": 6}));
    assert_eq!(
        call(&server, Method::GET, "/api/kv/kept", &[], "")
            .await
            .text(),
        "kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_redis_is_down_at_start_serves_and_becomes_ready_when_it_appears() {
    let mut redis = RedisServer::start();
    redis.kill();
    // Process::serve returns once /healthz answers: the server started without its store.
    let server = replica(&redis, &["--store-timeout", "500ms"]);
    let readyz = call(&server, Method::GET, "/readyz", &[], "").await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz.json()["reason"], "store unreachable");
    let counter = call(&server, Method::GET, "/api/counter", &[], "").await;
    assert_eq!(counter.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        call(&server, Method::GET, "/", &[], "").await.status,
        StatusCode::OK
    );

    redis.restart();
    wait_readyz(&server, StatusCode::OK).await;
    let answer = call(&server, Method::POST, "/api/counter/increment", &[], "").await;
    assert_eq!(answer.json(), json!({"value": 1}));
}
