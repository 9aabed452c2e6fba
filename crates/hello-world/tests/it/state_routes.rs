//! The shared-state routes (`/api/counter`, `/api/kv/{key}`) as a client sees them, on one
//! in-process server with each store: every check runs on memory and on a real Redis.

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Answer, Ask, TestApp, spawn_app_with};
use crate::redis_server::RedisServer;

/// A server under test and, for Redis, the Redis it uses.
struct Stack {
    app: TestApp,
    redis: Option<RedisServer>,
}

impl Stack {
    async fn memory() -> Self {
        Self::with(None, |_| {}).await
    }

    async fn redis() -> Self {
        Self::with(Some(RedisServer::start()), |_| {}).await
    }

    async fn with(
        redis: Option<RedisServer>,
        configure: impl FnOnce(&mut hello_world::config::Config),
    ) -> Self {
        let url = redis.as_ref().map(RedisServer::url);
        let app = spawn_app_with(|config| {
            config.redis_url = url;
            configure(config);
        })
        .await;
        Self { app, redis }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let url = format!("{}{path}", self.app.public_url());
        Ask::new(method, &url)
            .headers(headers)
            .body(Bytes::from(body.to_owned()))
            .await
    }
}

macro_rules! on_both_stores {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::Stack::memory().await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::Stack::redis().await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    the_counter_starts_at_zero_and_counts_each_increment,
    an_idempotent_retry_returns_the_first_result_marked_replayed,
    malformed_idempotency_keys_are_refused,
    a_value_is_created_read_replaced_and_deleted,
    conditional_writes_answer_412_with_the_current_etag,
    etag_lists_and_if_none_match_on_read,
    malformed_keys_and_conditions_are_refused,
    the_store_and_its_status_are_shown_by_info_and_readyz,
);

async fn the_counter_starts_at_zero_and_counts_each_increment(stack: Stack) {
    let answer = stack.call(Method::GET, "/api/counter", &[], "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "application/json");
    assert_eq!(answer.header("cache-control"), "no-store");
    assert_eq!(answer.json(), json!({"value": 0}));
    for expected in 1..=3 {
        let answer = stack
            .call(Method::POST, "/api/counter/increment", &[], "")
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json(), json!({"value": expected}));
        assert!(answer.headers.get("idempotent-replayed").is_none());
    }
    let answer = stack.call(Method::GET, "/api/counter", &[], "").await;
    assert_eq!(answer.json(), json!({"value": 3}));
    let wrong = stack
        .call(Method::GET, "/api/counter/increment", &[], "")
        .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
}

async fn an_idempotent_retry_returns_the_first_result_marked_replayed(stack: Stack) {
    let key = [("idempotency-key", "order-7f3a")];
    let first = stack
        .call(Method::POST, "/api/counter/increment", &key, "")
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json(), json!({"value": 1}));
    assert!(first.headers.get("idempotent-replayed").is_none());

    stack
        .call(Method::POST, "/api/counter/increment", &[], "")
        .await;
    let retry = stack
        .call(Method::POST, "/api/counter/increment", &key, "")
        .await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(
        retry.json(),
        json!({"value": 1}),
        "the first result, not the current value"
    );
    assert_eq!(retry.header("idempotent-replayed"), "true");

    let now = stack.call(Method::GET, "/api/counter", &[], "").await;
    assert_eq!(now.json(), json!({"value": 2}), "the retry did not count");
}

async fn malformed_idempotency_keys_are_refused(stack: Stack) {
    let too_long = "k".repeat(129);
    for bad in ["", "two words", too_long.as_str()] {
        let answer = stack
            .call(
                Method::POST,
                "/api/counter/increment",
                &[("idempotency-key", bad)],
                "",
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(
            answer.json()["error"]
                .as_str()
                .expect("a message")
                .contains("Idempotency-Key")
        );
    }
    let answer = stack.call(Method::GET, "/api/counter", &[], "").await;
    assert_eq!(
        answer.json(),
        json!({"value": 0}),
        "a refused request counts nothing"
    );
}

async fn a_value_is_created_read_replaced_and_deleted(stack: Stack) {
    let path = "/api/kv/greeting";
    let missing = stack.call(Method::GET, path, &[], "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["key"], "greeting");

    let created = stack.call(Method::PUT, path, &[], "Hello World!").await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.header("location"), path);
    let etag = created.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(created.json()["key"], "greeting");

    let read = stack.call(Method::GET, path, &[], "").await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.text(), "Hello World!");
    assert_eq!(read.header("etag"), etag);
    assert_eq!(read.header("content-type"), "application/octet-stream");
    assert_eq!(read.header("x-content-type-options"), "nosniff");

    let replaced = stack
        .call(Method::PUT, path, &[], "<script>alert(1)</script>")
        .await;
    assert_eq!(replaced.status, StatusCode::OK);
    assert_ne!(
        replaced.header("etag"),
        etag,
        "every write changes the ETag"
    );
    let read = stack.call(Method::GET, path, &[], "").await;
    assert_eq!(read.text(), "<script>alert(1)</script>");
    assert_eq!(
        read.header("content-type"),
        "application/octet-stream",
        "never rendered"
    );

    let deleted = stack.call(Method::DELETE, path, &[], "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.body.is_empty());
    assert_eq!(
        stack.call(Method::GET, path, &[], "").await.status,
        StatusCode::NOT_FOUND
    );
    let again = stack.call(Method::DELETE, path, &[], "").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.header("content-type"), "application/json");
}

async fn conditional_writes_answer_412_with_the_current_etag(stack: Stack) {
    let path = "/api/kv/doc";
    let absent_match = stack
        .call(Method::PUT, path, &[("if-match", "*")], "x")
        .await;
    assert_eq!(absent_match.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(absent_match.json()["current_etag"], serde_json::Value::Null);

    let created = stack
        .call(Method::PUT, path, &[("if-none-match", "*")], "v1")
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let v1 = created.header("etag").to_owned();

    let create_again = stack
        .call(Method::PUT, path, &[("if-none-match", "*")], "v1'")
        .await;
    assert_eq!(create_again.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(create_again.header("content-type"), "application/json");
    assert_eq!(create_again.json()["current_etag"], v1.as_str());

    let updated = stack
        .call(Method::PUT, path, &[("if-match", &v1)], "v2")
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    let v2 = updated.header("etag").to_owned();

    let stale = stack
        .call(Method::PUT, path, &[("if-match", &v1)], "lost?")
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.json()["current_etag"], v2.as_str());
    assert_eq!(stack.call(Method::GET, path, &[], "").await.text(), "v2");

    let stale_delete = stack
        .call(Method::DELETE, path, &[("if-match", &v1)], "")
        .await;
    assert_eq!(stale_delete.status, StatusCode::PRECONDITION_FAILED);
    let any = stack
        .call(Method::PUT, path, &[("if-match", "*")], "v3")
        .await;
    assert_eq!(any.status, StatusCode::OK);
    let v3 = any.header("etag").to_owned();
    let delete = stack
        .call(Method::DELETE, path, &[("if-match", &v3)], "")
        .await;
    assert_eq!(delete.status, StatusCode::NO_CONTENT);
    let delete_absent = stack
        .call(Method::DELETE, path, &[("if-match", "*")], "")
        .await;
    assert_eq!(delete_absent.status, StatusCode::PRECONDITION_FAILED);
}

async fn etag_lists_and_if_none_match_on_read(stack: Stack) {
    let path = "/api/kv/list";
    let v1 = stack
        .call(Method::PUT, path, &[], "one")
        .await
        .header("etag")
        .to_owned();

    let fresh = stack
        .call(Method::GET, path, &[("if-none-match", &v1)], "")
        .await;
    assert_eq!(fresh.status, StatusCode::NOT_MODIFIED);
    assert_eq!(fresh.header("etag"), v1);
    assert!(fresh.body.is_empty());
    // RFC 9110 §15.4.5: the 304 says what the 200 says about caching.
    let full = stack.call(Method::GET, path, &[], "").await;
    assert_eq!(full.status, StatusCode::OK);
    assert_eq!(fresh.header("cache-control"), full.header("cache-control"));
    assert_eq!(fresh.header("cache-control"), "no-cache");

    let list = format!("\"999999\", {v1}");
    let updated = stack
        .call(Method::PUT, path, &[("if-match", &list)], "two")
        .await;
    assert_eq!(
        updated.status,
        StatusCode::OK,
        "one ETag of the list matches"
    );
    let v2 = updated.header("etag").to_owned();
    let stale_list = stack
        .call(Method::PUT, path, &[("if-match", &list)], "three")
        .await;
    assert_eq!(stale_list.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale_list.json()["current_etag"], v2.as_str());

    let weak = format!("W/{v2}");
    let weak_match = stack
        .call(Method::PUT, path, &[("if-match", &weak)], "four")
        .await;
    assert_eq!(
        weak_match.status,
        StatusCode::PRECONDITION_FAILED,
        "If-Match compares strongly"
    );

    let not_v2 = stack
        .call(Method::PUT, path, &[("if-none-match", &v2)], "five")
        .await;
    assert_eq!(not_v2.status, StatusCode::PRECONDITION_FAILED);
    let not_v1 = stack
        .call(Method::PUT, path, &[("if-none-match", &v1)], "six")
        .await;
    assert_eq!(not_v1.status, StatusCode::OK);
    assert_eq!(stack.call(Method::GET, path, &[], "").await.text(), "six");
}

async fn malformed_keys_and_conditions_are_refused(stack: Stack) {
    let long = format!("/api/kv/{}", "k".repeat(257));
    let longest = format!("/api/kv/{}", "k".repeat(256));
    for path in [
        long.as_str(),
        "/api/kv/two%20words",
        "/api/kv/a%2Fb",
        "/api/kv/%C3%A9",
    ] {
        let answer = stack.call(Method::PUT, path, &[], "v").await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(answer.header("content-type"), "application/json", "{path}");
    }
    assert_eq!(
        stack.call(Method::PUT, &longest, &[], "v").await.status,
        StatusCode::CREATED
    );
    let fine = "/api/kv/user:42.profile_v-1";
    assert_eq!(
        stack.call(Method::PUT, fine, &[], "v").await.status,
        StatusCode::CREATED
    );

    for (name, value) in [
        ("if-match", "42"),
        ("if-match", "*, \"1\""),
        ("if-none-match", "\"1"),
    ] {
        let answer = stack.call(Method::PUT, fine, &[(name, value)], "v").await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{name}: {value}");
    }
}

async fn the_store_and_its_status_are_shown_by_info_and_readyz(stack: Stack) {
    let expected = if stack.redis.is_some() {
        "redis"
    } else {
        "memory"
    };
    // The first ping may still be on its way: the state is `unchecked` until it ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let readyz = loop {
        let readyz = stack.call(Method::GET, "/readyz", &[], "").await;
        assert_eq!(readyz.status, StatusCode::OK);
        if readyz.json()["store_status"]["state"] == "reachable" {
            break readyz.json();
        }
        assert_eq!(readyz.json()["store_status"]["state"], "unchecked");
        assert!(std::time::Instant::now() < deadline, "{}", readyz.text());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(readyz["status"], "ready");
    assert_eq!(readyz["store"], expected);
    assert!(
        readyz["store_status"]["for_seconds"].is_number(),
        "{readyz}"
    );
    assert!(readyz["store_status"].get("reason").is_none(), "{readyz}");
    let info = stack.call(Method::GET, "/api/info", &[], "").await.json();
    assert_eq!(info["store"], expected);
    assert_eq!(info["store_status"]["state"], "reachable", "{info}");
}

// Limits, on the embedded store (the limit is checked before the store is called).

#[tokio::test]
async fn values_over_the_limit_are_refused_with_413() {
    let stack = Stack::with(None, |config| config.value_limit = 16).await;
    let fits = stack
        .call(Method::PUT, "/api/kv/small", &[], &"x".repeat(16))
        .await;
    assert_eq!(fits.status, StatusCode::CREATED);
    let over = stack
        .call(Method::PUT, "/api/kv/big", &[], &"x".repeat(17))
        .await;
    assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(over.json()["limit_bytes"], 16);
    assert_eq!(
        stack.call(Method::GET, "/api/kv/big", &[], "").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_one_mebibyte_value_fits_by_default() {
    let stack = Stack::memory().await;
    let value = "v".repeat(1024 * 1024);
    let put = stack.call(Method::PUT, "/api/kv/big", &[], &value).await;
    assert_eq!(put.status, StatusCode::CREATED);
    assert_eq!(
        stack
            .call(Method::GET, "/api/kv/big", &[], "")
            .await
            .body
            .len(),
        value.len()
    );
    let over = stack
        .call(Method::PUT, "/api/kv/big", &[], &format!("{value}v"))
        .await;
    assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A full store through the routes, either kind: PUTs are answered 507 JSON, reads and deletes
/// still work, and a delete makes room for the next PUT.
async fn a_full_store_answers_507_and_deleting_makes_room(stack: Stack) {
    let value = "v".repeat(256 << 10);
    let mut stored = 0;
    let refused = loop {
        assert!(stored < 1000, "the store never filled up");
        let answer = stack
            .call(Method::PUT, &format!("/api/kv/fill-{stored}"), &[], &value)
            .await;
        match answer.status {
            StatusCode::CREATED => stored += 1,
            StatusCode::INSUFFICIENT_STORAGE => break answer,
            other => panic!("PUT answered {other}: {}", answer.text()),
        }
    };
    assert!(stored > 1, "full from the start");
    assert_eq!(refused.header("content-type"), "application/json");
    let body = refused.json();
    assert_eq!(body["error"], "store full");
    assert_eq!(body["status"], 507);
    assert!(body["reason"].is_string(), "{body}");
    let not_stored = format!("/api/kv/fill-{stored}");
    assert_eq!(
        stack.call(Method::GET, &not_stored, &[], "").await.status,
        StatusCode::NOT_FOUND
    );
    let read = stack.call(Method::GET, "/api/kv/fill-0", &[], "").await;
    assert_eq!(
        (read.status, read.body.len()),
        (StatusCode::OK, value.len())
    );
    // The store answered: it is full, not away.
    let readyz = stack.call(Method::GET, "/readyz", &[], "").await.json();
    assert_eq!(readyz["store_status"]["state"], "reachable", "{readyz}");
    for index in 0..4 {
        let path = format!("/api/kv/fill-{index}");
        let deleted = stack.call(Method::DELETE, &path, &[], "").await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{path}");
    }
    let again = stack.call(Method::PUT, &not_stored, &[], &value).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text());
    let metrics = Ask::new(Method::GET, &format!("{}/metrics", stack.app.admin_url()))
        .await
        .text();
    assert!(
        metrics.contains("store_full_total{operation=\"put\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_full_memory_store_answers_507_and_deleting_makes_room() {
    let stack = Stack::with(None, |config| config.store_budget = 2 << 20).await;
    a_full_store_answers_507_and_deleting_makes_room(stack).await;
}

#[tokio::test]
async fn a_redis_at_its_maxmemory_answers_507_and_deleting_makes_room() {
    let redis = RedisServer::start_with_maxmemory("8mb");
    let stack = Stack::with(Some(redis), |_| {}).await;
    a_full_store_answers_507_and_deleting_makes_room(stack).await;
}

#[tokio::test]
async fn store_calls_are_counted_in_metrics() {
    let stack = Stack::memory().await;
    stack
        .call(Method::POST, "/api/counter/increment", &[], "")
        .await;
    stack.call(Method::PUT, "/api/kv/k", &[], "v").await;
    let metrics = Ask::new(Method::GET, &format!("{}/metrics", stack.app.admin_url()))
        .await
        .text();
    for operation in ["increment", "put"] {
        let line = format!("store_operations_total{{operation=\"{operation}\"}} 1");
        assert!(metrics.contains(&line), "missing {line} in:\n{metrics}");
    }
}
