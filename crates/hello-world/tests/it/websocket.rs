//! The WebSocket echo at `/ws/echo`, as a real client (Python's websockets) sees it: echo,
//! ping/pong, the size limit (1009), the idle timeout (1000), draining (1001), and the
//! `websockets_open` gauge.

use std::time::{Duration, Instant};

use crate::helpers::{TestApp, run_python, spawn_app, spawn_app_with, venv_python};

fn ws_url(app: &TestApp) -> String {
    format!("ws://{}/ws/echo", app.public)
}

/// The `websockets_open` value on /metrics.
fn open_sockets(app: &TestApp) -> u64 {
    app.state
        .metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix("websockets_open "))
        .and_then(|value| value.trim().parse().ok())
        .expect("websockets_open on /metrics")
}

#[tokio::test(flavor = "multi_thread")]
async fn text_and_binary_are_echoed_pings_answered_and_big_messages_closed_with_1009() {
    let app = spawn_app().await;
    run_python(
        "ws_echo.py",
        &["echo".into(), ws_url(&app)],
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_socket_is_closed_with_1000() {
    let app = spawn_app_with(|config| config.ws_idle_timeout = Duration::from_millis(300)).await;
    run_python(
        "ws_echo.py",
        &["idle".into(), ws_url(&app)],
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn open_sockets_are_counted_and_closed_with_1001_on_drain() {
    let app = spawn_app().await;
    if venv_python().is_none() {
        return;
    }
    assert_eq!(open_sockets(&app), 0);
    let args = vec!["drain".to_owned(), ws_url(&app)];
    let client =
        tokio::spawn(async move { run_python("ws_echo.py", &args, Duration::from_secs(30)).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_sockets(&app) == 0 {
        assert!(Instant::now() < deadline, "the socket never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open_sockets(&app), 1);
    app.state.readiness.mark_draining();
    client.await.expect("the client's checks hold");
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_sockets(&app) != 0 {
        assert!(Instant::now() < deadline, "the socket is still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
