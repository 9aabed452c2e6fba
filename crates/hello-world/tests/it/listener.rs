//! What the listener does with hostile or broken clients, over raw sockets: nothing here can be
//! seen through a well-behaved HTTP client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app, spawn_app_with};

/// Writes `request` and reads until the server closes or `within` passes; returns what came.
async fn exchange(addr: SocketAddr, request: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write the request");
    read_until_close(&mut stream, within).await
}

async fn read_until_close(stream: &mut TcpStream, within: Duration) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// A server with a 300 ms header timeout, and a connection to it that has sent `start`.
async fn connect_with_header_timeout_300ms(start: &[u8]) -> (crate::helpers::TestApp, TcpStream) {
    let app = spawn_app_with(|config| config.header_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(app.public).await.expect("connect");
    stream.write_all(start).await.expect("write");
    (app, stream)
}

fn status_of(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let (_app, mut stream) =
        connect_with_header_timeout_300ms(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    let started = Instant::now();
    let response = read_until_close(&mut stream, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "connection still open after {waited:?}"
    );
    assert!(
        status_of(&response).is_none_or(|status| status == 408),
        "{response}"
    );
}

#[tokio::test]
async fn a_silent_client_is_cut_off() {
    let (_app, mut stream) = connect_with_header_timeout_300ms(b"").await;
    let started = Instant::now();
    read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "silent connection kept open"
    );
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    let (_app, mut stream) =
        connect_with_header_timeout_300ms(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    // One byte every 50 ms: bytes keep coming, a request head never does.
    let started = Instant::now();
    let mut cut_off = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if stream.write_all(b"a").await.is_err() {
            cut_off = true;
            break;
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
        {
            cut_off = true;
            break;
        }
    }
    let waited = started.elapsed();
    assert!(cut_off, "still open after {waited:?} of trickling");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "cut off after {waited:?}, the header timeout is 300 ms"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let (_app, mut stream) =
        connect_with_header_timeout_300ms(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answered = Instant::now();
    let response = read_until_close(&mut stream, Duration::from_secs(10)).await;
    let waited = answered.elapsed();
    assert!(response.ends_with("Hello World!"), "{response}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed {waited:?} after the answer, the header timeout is 300 ms"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_cut_off() {
    const BODY: usize = 16 * 1024 * 1024;
    let app = spawn_app_with(|config| {
        config.header_timeout = Duration::from_millis(300);
        config.body_limit = BODY;
    })
    .await;
    // A small receive window, so most of the answer cannot wait in socket buffers.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let mut stream = socket.connect(app.public).await.expect("connect");
    let head = format!("POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write the head");
    stream
        .write_all(&vec![b'a'; BODY])
        .await
        .expect("the server reads the whole body");
    // Stop reading while the 16 MiB answer is being written, well past the header timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut received = 0usize;
    let mut buffer = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the connection was neither closed nor finished"),
        }
    }
    assert!(
        received < BODY,
        "the whole answer arrived ({received} bytes): the stalled reader was not cut off"
    );
}

#[tokio::test]
async fn a_route_that_takes_longer_than_the_header_timeout_still_answers() {
    let app = spawn_app_with(|config| config.header_timeout = Duration::from_millis(200)).await;
    let mut stream = TcpStream::connect(app.public).await.expect("connect");
    for _ in 0..2 {
        stream
            .write_all(b"GET /delay/700ms HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buffer = [0u8; 2048];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("answered within 5 s")
            .expect("read");
        let response = String::from_utf8_lossy(&buffer[..read]);
        assert_eq!(status_of(&response), Some(200), "{response}");
    }
}

#[tokio::test]
async fn a_header_section_over_32_kib_is_refused_with_431() {
    let app = spawn_app().await;
    let big = "a".repeat(33 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let response = exchange(app.public, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&response), Some(431), "{response}");
}

#[tokio::test]
async fn more_than_100_headers_are_refused_with_431() {
    let app = spawn_app().await;
    let headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    let response = exchange(app.public, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&response), Some(431), "{response}");
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let app = spawn_app_with(|config| config.body_limit = 1024).await;
    let mut stream = TcpStream::connect(app.public).await.expect("connect");
    let head = "POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("write head");
    // No body byte is sent: the answer must come from the head alone.
    let mut buffer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer))
        .await
        .expect("413 arrives without waiting for the body")
        .expect("read");
    let response = String::from_utf8_lossy(&buffer[..read]);
    assert_eq!(status_of(&response), Some(413), "{response}");
    assert!(response.contains("application/json"), "{response}");
}

#[tokio::test]
async fn a_chunked_body_that_grows_past_the_limit_is_refused() {
    let app = spawn_app_with(|config| config.body_limit = 1024).await;
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let response = exchange(app.public, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&response), Some(413), "{response}");
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let app = spawn_app().await;
    let cases: [&[u8]; 4] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ];
    for request in cases {
        let response = exchange(app.public, request, Duration::from_secs(5)).await;
        assert_eq!(
            status_of(&response),
            Some(400),
            "{:?} → {response}",
            String::from_utf8_lossy(request)
        );
    }
}

#[tokio::test]
async fn http_1_1_without_host_gets_400_json() {
    let app = spawn_app().await;
    let response = exchange(
        app.public,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&response), Some(400), "{response}");
    assert!(response.contains("Host"), "{response}");
    let http10 = exchange(
        app.public,
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        status_of(&http10),
        Some(200),
        "HTTP/1.0 needs no Host: {http10}"
    );
}

#[tokio::test]
async fn two_host_headers_get_400_json_whatever_the_version() {
    let app = spawn_app().await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
    ] {
        let response = exchange(app.public, request, Duration::from_secs(5)).await;
        assert_eq!(status_of(&response), Some(400), "{response}");
        assert!(response.contains("at most one Host header"), "{response}");
        assert!(response.contains("application/json"), "{response}");
    }
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let app = spawn_app_with(|config| config.max_connections = 2).await;
    wait_for_open_connections(&app, 0).await;
    let _first = TcpStream::connect(app.public).await.expect("connect");
    let _second = TcpStream::connect(app.public).await.expect("connect");
    // Wait (bounded) until the server holds exactly these two, then send the third.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !app
        .request(http::Method::GET, "/metrics")
        .admin()
        .await
        .text()
        .contains("http_connections_open 2")
    {
        assert!(
            Instant::now() < deadline,
            "the two connections were never both open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = TcpStream::connect(app.public)
        .await
        .expect("the kernel accepts the socket");
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let response = read_until_close(&mut third, Duration::from_secs(3)).await;
    assert!(
        response.is_empty(),
        "the third connection was served: {response}"
    );
    let metrics = app
        .request(http::Method::GET, "/metrics")
        .admin()
        .await
        .text();
    assert!(
        metrics.contains("http_connections_rejected_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(app.public).await.expect("connect");
    for _ in 0..3 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buffer = [0u8; 1024];
        let read = stream.read(&mut buffer).await.expect("read");
        let response = String::from_utf8_lossy(&buffer[..read]);
        assert!(response.ends_with("Hello World!"), "{response}");
    }
}

/// Waits (bounded) until the server holds exactly `count` public connections.
async fn wait_for_open_connections(app: &crate::helpers::TestApp, count: u32) {
    let expected = format!("http_connections_open {count}\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !app
        .request(http::Method::GET, "/metrics")
        .admin()
        .await
        .text()
        .contains(&expected)
    {
        assert!(
            Instant::now() < deadline,
            "never exactly {count} open connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Random bytes, random request lines, random header soup: the server must answer or close,
/// never panic, and keep serving. The server runs on worker threads of its own name, so the
/// panic hook counts only its panics and hands every panic on to the hook it replaced: other
/// tests' panics, when `cargo test` runs them beside this one in one process, are still
/// reported as theirs.
#[test]
fn garbage_never_makes_the_server_panic() {
    const SERVER_THREADS: &str = "garbage-server";
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(SERVER_THREADS) {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        previous(info);
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(send_garbage());
    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the server panicked"
    );
}

async fn send_garbage() {
    let app = spawn_app().await;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let methods = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW", "", "G\0T",
    ];
    let paths = [
        "/",
        "/api/echo",
        "/status/%zz",
        "/delay/1e99s",
        "/headers",
        "//..//",
        "*",
        "/api/info?x=%00",
        "/\u{7f}",
    ];
    let mut answered = 0;
    for round in 0..300 {
        let request: Vec<u8> = match round % 3 {
            0 => (0..rng.usize(1..512)).map(|_| rng.u8(..)).collect(),
            1 => format!(
                "{} {} HTTP/1.{}\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                methods[rng.usize(..methods.len())],
                paths[rng.usize(..paths.len())],
                rng.u8(0..3),
                rng.i32(-5..50),
            )
            .into_bytes(),
            _ => {
                let mut head = b"POST /api/echo HTTP/1.1\r\nHost: x\r\n".to_vec();
                for _ in 0..rng.usize(0..20) {
                    let name: Vec<u8> = (0..rng.usize(0..12)).map(|_| rng.u8(33..127)).collect();
                    let value: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
                    head.extend_from_slice(&name);
                    head.extend_from_slice(b": ");
                    head.extend_from_slice(&value);
                    head.extend_from_slice(b"\r\n");
                }
                head.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\nzz\r\n");
                head
            }
        };
        let response = exchange(app.public, &request, Duration::from_millis(300)).await;
        if response.starts_with("HTTP/1.") {
            answered += 1;
        }
    }
    assert!(
        answered >= 200,
        "only {answered} of 300 garbage requests got an HTTP answer"
    );
    assert_eq!(
        app.request(http::Method::GET, "/").await.text(),
        "Hello World!"
    );
}

/// Polls the admin port's metrics (bounded) until `line` is among them.
async fn wait_for_metric(app: &crate::helpers::TestApp, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = app
            .request(http::Method::GET, "/metrics")
            .admin()
            .await
            .text();
        if metrics.lines().any(|seen| seen == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}` in:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bodies_in_flight_wait_for_the_body_budget_and_go_on_when_it_frees() {
    // The whole budget is one body's worth: a client holding a 1 MiB upload half sent has it.
    let app = spawn_app_with(|config| config.body_budget = config.body_limit).await;
    let mut holder = TcpStream::connect(app.public).await.expect("connect");
    let length = 1 << 20;
    holder
        .write_all(
            format!("PUT /api/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write the head");
    holder
        .write_all(&vec![b'a'; length / 2])
        .await
        .expect("write half the body");

    // Another upload, however small, waits; what has no body does not.
    let small = tokio::spawn(exchange(
        app.public,
        b"PUT /api/kv/small HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nv",
        Duration::from_secs(10),
    ));
    wait_for_metric(&app, "http_request_bodies_waiting 1").await;
    assert_eq!(app.request(http::Method::GET, "/").await.status, 200);
    assert!(
        !small.is_finished(),
        "the small upload went ahead of the budget"
    );

    // The held upload finishes: both are stored.
    holder
        .write_all(&vec![b'a'; length - length / 2])
        .await
        .expect("write the rest");
    let held = read_until_status(&mut holder).await;
    assert_eq!(status_of(&held), Some(201), "{held}");
    let small = small.await.expect("the small upload's task");
    assert_eq!(status_of(&small), Some(201), "{small}");
    wait_for_metric(&app, "http_request_bodies_waiting 0").await;
}

/// Reads until a whole response head has arrived (bounded).
async fn read_until_status(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received.windows(4).any(|window| window == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buffer[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}
