//! HTTP/2 cleartext on the public port. Real clients (curl with prior knowledge and with
//! `Upgrade: h2c`) get what HTTP/1.1 clients get; hostile ones (malformed frames, a header list
//! over the limit, a flood of reset streams, silence) get GOAWAY, 431 or a closed connection,
//! and the server goes on serving.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::Reason;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app, spawn_app_with};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// curl's answer (status lines, headers and bodies), failing the test when curl cannot run.
fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--include", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs (apt-get install curl)");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n")
}

#[tokio::test]
async fn prior_knowledge_gets_the_greeting_with_every_header() {
    let app = spawn_app().await;
    let url = format!("{}/", app.public_url());
    let answer = tokio::task::spawn_blocking(move || curl(&["--http2-prior-knowledge", &url]))
        .await
        .expect("curl ran");
    assert!(answer.starts_with("HTTP/2 200"), "{answer}");
    for header in [
        "content-type: text/plain; charset=utf-8",
        "cache-control: private",
        "x-served-by: test-replica",
        "x-request-id: ",
    ] {
        assert!(answer.contains(header), "{header} in {answer}");
    }
    assert!(answer.ends_with("\n\nHello World!"), "{answer}");
}

#[tokio::test]
async fn an_upgrade_is_answered_in_http2_and_the_connection_stays_http2() {
    let app = spawn_app().await;
    let (first, second) = (
        format!("{}/version", app.public_url()),
        format!("{}/api/info", app.public_url()),
    );
    let answer = tokio::task::spawn_blocking(move || curl(&["--http2", &first, &second]))
        .await
        .expect("curl ran");
    assert_eq!(
        answer.matches("HTTP/1.1 101 Switching Protocols").count(),
        1,
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/2 200").count(), 2, "{answer}");
    assert!(answer.contains("\"version\""), "{answer}");
    assert!(answer.contains("\"instance\":\"test-replica\""), "{answer}");
    // One connection for both: curl says so when it reuses one, and HTTP/1.1 appears once.
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
}

#[tokio::test]
async fn an_upgrade_request_with_a_body_is_answered_in_http1() {
    let app = spawn_app().await;
    let url = format!("{}/api/echo", app.public_url());
    let answer = tokio::task::spawn_blocking(move || {
        curl(&["--http2", "--data-binary", "hello over one", &url])
    })
    .await
    .expect("curl ran");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\n\nhello over one"), "{answer}");
}

/// An HTTP/2 connection made with the h2 crate, driven by its own task.
async fn h2_client(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    (client, tokio::spawn(connection))
}

fn get(path: &str) -> Request<()> {
    Request::builder()
        .method(Method::GET)
        .uri(format!("http://localhost{path}"))
        .body(())
        .expect("a valid request")
}

#[tokio::test]
async fn the_body_limit_holds_over_http2() {
    let app = spawn_app_with(|config| config.body_limit = 1024).await;
    let (client, _connection) = h2_client(app.public).await;
    let mut client = client.ready().await.expect("ready");
    let request = Request::post("http://localhost/api/echo")
        .body(())
        .expect("a valid request");
    let (response, mut body) = client.send_request(request, false).expect("sent");
    body.send_data(Bytes::from(vec![b'x'; 4096]), true)
        .expect("body sent");
    let response = response.await.expect("answered");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn a_header_list_over_32_kib_gets_431_and_the_connection_serves_on() {
    let app = spawn_app().await;
    let (client, _connection) = h2_client(app.public).await;
    let mut client = client.ready().await.expect("ready");
    let mut request = get("/");
    for n in 0..10 {
        let name = http::HeaderName::try_from(format!("x-big-{n}")).expect("a name");
        request
            .headers_mut()
            .insert(name, "y".repeat(4000).parse().expect("a value"));
    }
    let (response, _) = client.send_request(request, true).expect("sent");
    let response = response.await.expect("answered");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let mut client = client.ready().await.expect("the connection is still open");
    let (response, _) = client.send_request(get("/"), true).expect("sent");
    assert_eq!(response.await.expect("answered").status(), StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_reset_streams_is_answered_with_goaway() {
    let app = spawn_app().await;
    let (mut client, connection) = h2_client(app.public).await;
    // Streams opened and reset at once, without yielding: they reach the server in one burst,
    // before it has taken any of them up (the "rapid reset" attack).
    for _ in 0..100 {
        let Ok((_, mut stream)) = client.send_request(get("/delay/1s"), false) else {
            break;
        };
        stream.send_reset(Reason::CANCEL);
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the server closes the connection")
        .expect("the connection task does not panic");
    let error = ended.expect_err("the connection ends with an error");
    assert!(error.is_go_away(), "{error}");
    assert_eq!(error.reason(), Some(Reason::ENHANCE_YOUR_CALM), "{error}");
    // The server itself serves on.
    let answer = app.request(Method::GET, "/").await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// One frame: a 9-byte header (RFC 9113 §4.1) and its payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Writes `bytes` after the preface and an empty SETTINGS frame, then reads frames until the
/// server closes or `within` passes: (type, flags, payload) of each, and how long it took.
async fn raw_exchange(
    addr: SocketAddr,
    bytes: &[u8],
    within: Duration,
) -> (Vec<(u8, u8, Vec<u8>)>, Duration) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(0x4, 0, 0, &[]));
    opening.extend_from_slice(bytes);
    let started = Instant::now();
    stream.write_all(&opening).await.expect("write");
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
    let took = started.elapsed();
    let mut frames = Vec::new();
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let end = (9 + length).min(rest.len());
        frames.push((rest[3], rest[4], rest[9..end].to_vec()));
        rest = &rest[end..];
    }
    (frames, took)
}

/// The error code of the GOAWAY among `frames`.
fn goaway(frames: &[(u8, u8, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|(kind, _, payload)| *kind == 0x7 && payload.len() >= 8)
        .map(|(_, _, payload)| u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]))
}

#[tokio::test]
async fn the_server_announces_its_stream_and_header_list_limits() {
    let app = spawn_app().await;
    let (frames, _) = raw_exchange(app.public, &[], Duration::from_millis(500)).await;
    let (_, _, settings) = frames
        .iter()
        .find(|(kind, flags, _)| *kind == 0x4 && flags & 0x1 == 0)
        .expect("the server's SETTINGS");
    let announced: Vec<(u16, u32)> = settings
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    assert!(
        announced.contains(&(0x3, 128)),
        "MAX_CONCURRENT_STREAMS in {announced:?}"
    );
    assert!(
        announced.contains(&(0x6, 32 * 1024)),
        "MAX_HEADER_LIST_SIZE in {announced:?}"
    );
}

#[tokio::test]
async fn malformed_frames_are_answered_with_goaway() {
    let app = spawn_app().await;
    // DATA on stream 0, which only frames of the connection may use: PROTOCOL_ERROR.
    let data_on_zero = frame(0x0, 0, 0, b"hello");
    let (frames, _) = raw_exchange(app.public, &data_on_zero, Duration::from_secs(5)).await;
    assert_eq!(goaway(&frames), Some(0x1), "{frames:?}");
    // A frame that says it is 16 MiB long, over the 16 KiB the server allows: FRAME_SIZE_ERROR,
    // before any of it is buffered.
    let mut huge = frame(0x1, 0x4, 1, &[]);
    huge[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
    let (frames, _) = raw_exchange(app.public, &huge, Duration::from_secs(5)).await;
    assert_eq!(goaway(&frames), Some(0x6), "{frames:?}");
    let answer = app.request(Method::GET, "/").await;
    assert_eq!(answer.status, StatusCode::OK, "the server serves on");
}

#[tokio::test]
async fn a_silent_http2_connection_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(|config| config.header_timeout = Duration::from_millis(300)).await;
    let (_, took) = raw_exchange(app.public, &[], Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "still open after {took:?}");
}
