//! `GET /ws/echo`: a WebSocket that sends back every text and binary message it receives.
//!
//! - pings are answered with pongs (the WebSocket library does it as it reads);
//! - a message (or frame) over [`MAX_MESSAGE_BYTES`] closes the socket with 1009 (message too
//!   big), before more than that is buffered;
//! - a socket that receives nothing for `--ws-idle-timeout` is closed with 1000;
//! - when the replica starts draining, every socket is closed with 1001 (going away), so
//!   clients reconnect, through the balancer, to a replica that stays;
//! - `websockets_open` on `/metrics` counts the open sockets.
//!
//! The upgrade is an HTTP/1.1 request; the socket then lives on its own task, outside the
//! connection's header timeout, bounded by the idle timeout instead.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use axum::routing::get;

use super::AppState;
use crate::error::ApiError;

/// Largest message the echo takes (and so sends back).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/ws/echo", get(upgrade))
}

/// A WebSocket that echoes every text and binary message.
///
/// An HTTP/1.1 upgrade (`Connection: upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`,
/// `Sec-WebSocket-Key`), answered 101; OpenAPI can describe only the handshake. Then: pings get
/// pongs, a message over 64 KiB closes with 1009, a socket that receives nothing for
/// `--ws-idle-timeout` closes with 1000, and draining closes every socket with 1001.
#[utoipa::path(
    get,
    path = "/ws/echo",
    operation_id = "ws_echo",
    tag = "websocket",
    responses(
        (status = 101, description = "Switched to the WebSocket protocol",
            headers(("Upgrade" = String, description = "`websocket`"), ("Sec-WebSocket-Accept" = String))),
        (status = 400, description = "Not a WebSocket handshake: the headers above are missing or wrong", body = ApiError),
    ),
)]
async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| echo(socket, state))
}

/// Echoes until the client leaves, the socket idles, a message is too big or shutdown begins.
async fn echo(mut socket: WebSocket, state: AppState) {
    let _open = state.metrics.websocket_opened();
    let mut draining = state.readiness.subscribe();
    let idle = state.config.ws_idle_timeout;
    let close = loop {
        if state.readiness.is_draining() {
            break Some((close_code::AWAY, "the server is shutting down"));
        }
        let received = tokio::select! {
            received = tokio::time::timeout(idle, socket.recv()) => received,
            _ = draining.changed() => continue,
        };
        let message = match received {
            Err(_) => break Some((close_code::NORMAL, "idle timeout")),
            // The client closed (the library answers its close) or the connection ended.
            Ok(None | Some(Ok(Message::Close(_)))) => break None,
            Ok(Some(Err(err))) => {
                if is_too_big(&err) {
                    break Some((close_code::SIZE, "message too big"));
                }
                tracing::debug!(error = %err, "websocket ended with an error");
                break None;
            }
            Ok(Some(Ok(message))) => message,
        };
        let echoed = match message {
            Message::Text(_) | Message::Binary(_) => socket.send(message).await,
            // Pongs to our pings (we send none) and pings, which the library answers.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => Ok(()),
        };
        if echoed.is_err() {
            break None;
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // Bounded: a client that does not read gets no more than the send buffer's worth.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

/// Whether the library refused a message or frame over the limit. axum hides the library's
/// error type, so this reads its words: tungstenite's `CapacityError`, "Space limit exceeded:
/// Message too long: N > MAX", for frames and messages alike.
fn is_too_big(err: &axum::Error) -> bool {
    err.to_string().starts_with("Space limit exceeded")
}
