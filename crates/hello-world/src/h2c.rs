//! `Upgrade: h2c`: an HTTP/1.1 request that asks to go on in HTTP/2 cleartext.
//!
//! Prior knowledge (a connection that opens with the HTTP/2 preface: `curl
//! --http2-prior-knowledge`, gRPC clients, Kubernetes' `grpc:` probes, a balancer speaking h2 to
//! its servers) needs nothing here: hyper-util's `auto` connection tells it from HTTP/1.1 by the
//! first bytes ([`crate::server`]).
//!
//! The upgrade (RFC 7540 §3.2: `curl --http2`, `nghttp -u`) does: the request comes in HTTP/1.1,
//! and its answer must be the first HTTP/2 stream, which hyper's HTTP/2 server cannot start
//! without reading it. So [`Upgrade`] answers `101 Switching Protocols` and leaves the request
//! in the connection's [`Handoff`]; once the `101` is out, [`Handoff::into_http2`] reads the
//! client's preface and first SETTINGS frame and puts the request right after them, as the
//! HEADERS frame of stream 1 in HPACK's plainest form (a literal per field: no table, no
//! Huffman, so the client's and the server's HPACK state stay as they were). From there it is
//! an ordinary HTTP/2 connection, served by the same router, middleware and limits as any
//! other. Only requests without a body are upgraded, and only when their head fits one frame;
//! for any other the `Upgrade` header is ignored and the answer is HTTP/1.1 (RFC 9110 §7.8
//! allows it). The settings in `HTTP2-Settings` are those the client's first SETTINGS frame
//! repeats, which is what the server applies (RFC 9113 deprecates the upgrade; the clients that
//! still use it send both).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::{Either, Ready};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;

/// What every HTTP/2 connection opens with (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest frame a peer may send before it has read our settings (RFC 9113 §4.2): the
/// frame made from an upgraded request, and the client's first SETTINGS, must fit in it.
const INITIAL_MAX_FRAME_SIZE: usize = 16_384;

static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// An HTTP/1.1 connection's service that answers `Upgrade: h2c` requests itself (see the
/// module docs) and passes every other request to `inner`. Only a request hyper marked as an
/// upgrade (it carries an `Upgrade` header) is looked at, so the others cost one branch.
#[derive(Debug, Clone)]
pub struct Upgrade<S> {
    inner: S,
    handoff: Handoff,
}

impl<S> Upgrade<S> {
    pub fn new(inner: S, handoff: Handoff) -> Self {
        Self { inner, handoff }
    }
}

impl<S> hyper::service::Service<Request<hyper::body::Incoming>> for Upgrade<S>
where
    S: hyper::service::Service<
            Request<hyper::body::Incoming>,
            Response = Response,
            Error = Infallible,
        >,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn call(&self, mut request: Request<hyper::body::Incoming>) -> Self::Future {
        if request.extensions().get::<OnUpgrade>().is_some()
            && request.version() == http::Version::HTTP_11
            && let Some(frame) = upgradable(&request)
            && let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>()
        {
            self.handoff.set(Pending { on_upgrade, frame });
            let mut switching = Response::new(Body::empty());
            *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = switching.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
            return Either::Left(futures_util::future::ready(Ok(switching)));
        }
        Either::Right(self.inner.call(request))
    }
}

/// The HEADERS frame of an HTTP/1.1 request that asks for `Upgrade: h2c` and may have it: no
/// body, one `HTTP2-Settings`, and a head that fits one frame.
fn upgradable<B>(request: &Request<B>) -> Option<Bytes> {
    let headers = request.headers();
    let asks = list_has(headers, &header::UPGRADE, "h2c");
    let settings = headers.get_all(&HTTP2_SETTINGS).iter().count() == 1;
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if !asks || !settings || has_body {
        return None;
    }
    headers_frame(request)
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn list_has(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The request as stream 1's HEADERS frame, ending the stream (no body), or None when it does
/// not fit one frame.
fn headers_frame<B>(request: &Request<B>) -> Option<Bytes> {
    let mut block = BytesMut::with_capacity(512);
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    literal(&mut block, b":method", request.method().as_str().as_bytes());
    literal(&mut block, b":scheme", b"http");
    literal(&mut block, b":path", path.as_bytes());
    if let Some(host) = request.headers().get(header::HOST) {
        literal(&mut block, b":authority", host.as_bytes());
    }
    for (name, value) in request.headers() {
        if !is_connection_specific(name, request.headers()) {
            literal(&mut block, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if block.len() > INITIAL_MAX_FRAME_SIZE {
        return None;
    }
    let mut frame = BytesMut::with_capacity(9 + block.len());
    frame.put_uint(block.len() as u64, 3);
    frame.put_u8(0x1); // HEADERS
    frame.put_u8(0x1 | 0x4); // END_STREAM | END_HEADERS
    frame.put_u32(1); // stream 1, the upgraded request's (RFC 7540 §3.2)
    frame.put(block);
    Some(frame.freeze())
}

/// Fields of the HTTP/1.1 connection, not of the request, which HTTP/2 forbids (RFC 9113
/// §8.2.2); `Host` travels as `:authority`.
fn is_connection_specific(name: &HeaderName, headers: &HeaderMap) -> bool {
    name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::HOST
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == HTTP2_SETTINGS
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
        || list_has(headers, &header::CONNECTION, name.as_str())
}

/// One HPACK "literal header field without indexing, new name" (RFC 7541 §6.2.2), with plain
/// (not Huffman) strings: the decoder's table is left as it was.
fn literal(block: &mut BytesMut, name: &[u8], value: &[u8]) {
    block.put_u8(0x00);
    integer(block, name.len());
    block.put_slice(name);
    integer(block, value.len());
    block.put_slice(value);
}

/// An HPACK integer with a 7-bit prefix and the Huffman bit clear (RFC 7541 §5.1).
fn integer(block: &mut BytesMut, mut value: usize) {
    const PREFIX_MAX: usize = 0x7f;
    if value < PREFIX_MAX {
        block.put_u8(value as u8);
        return;
    }
    block.put_u8(PREFIX_MAX as u8);
    value -= PREFIX_MAX;
    while value >= 0x80 {
        block.put_u8((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    block.put_u8(value as u8);
}

/// Where [`Upgrade`] leaves an upgraded request for its connection's task, which goes on in
/// HTTP/2 once the `101` is out.
#[derive(Debug, Clone, Default)]
pub struct Handoff(Arc<Mutex<Option<Pending>>>);

#[derive(Debug)]
struct Pending {
    on_upgrade: OnUpgrade,
    frame: Bytes,
}

impl Handoff {
    fn set(&self, pending: Pending) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(pending);
    }

    /// After the HTTP/1.1 connection ended: the connection as HTTP/2, with the upgraded
    /// request as its first stream, if a request was upgraded.
    pub async fn into_http2(self) -> Option<io::Result<Rewind<Upgraded>>> {
        let pending = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()?;
        Some(pending.connect().await)
    }
}

impl Pending {
    async fn connect(self) -> io::Result<Rewind<Upgraded>> {
        let upgraded = self.on_upgrade.await.map_err(io::Error::other)?;
        let mut io = TokioIo::new(upgraded);
        // The client's preface, then its first frame, which must be SETTINGS (RFC 9113 §3.4):
        // the request goes right after them.
        let mut opening = BytesMut::zeroed(PREFACE.len() + 9);
        io.read_exact(&mut opening).await?;
        let frame = &opening[PREFACE.len()..];
        let length =
            usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
        if &opening[..PREFACE.len()] != PREFACE
            || frame[3] != 0x4
            || length > INITIAL_MAX_FRAME_SIZE
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an upgraded h2c connection must open with the preface and a SETTINGS frame",
            ));
        }
        let start = opening.len();
        opening.resize(start + length, 0);
        io.read_exact(&mut opening[start..]).await?;
        opening.put(self.frame);
        Ok(Rewind {
            replay: opening.freeze(),
            inner: io.into_inner(),
        })
    }
}

/// A connection that first gives back bytes already read from it (and the request put after
/// them).
#[derive(Debug)]
pub struct Rewind<T> {
    replay: Bytes,
    inner: T,
}

impl<T: Read + Unpin> Read for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replay.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.replay.len().min(buf.remaining());
        buf.put_slice(&self.replay[..n]);
        self.replay.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: Write + Unpin> Write for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_use_the_seven_bit_prefix_then_continuation_bytes() {
        let encoded = |value| {
            let mut block = BytesMut::new();
            integer(&mut block, value);
            block.to_vec()
        };
        assert_eq!(encoded(10), [10]);
        assert_eq!(encoded(126), [126]);
        assert_eq!(encoded(127), [127, 0]);
        // RFC 7541 §C.1.2 has 1337 with a 5-bit prefix; with 7 bits it is 127 + 1210.
        assert_eq!(encoded(1337), [127, 0xba, 0x09]);
    }

    #[test]
    fn only_bodiless_requests_that_ask_are_upgraded_without_their_connection_fields() {
        let request = |extra: &[(&str, &str)]| {
            let mut builder = Request::get("/api/info?x=1")
                .header("host", "example.test")
                .header("connection", "Upgrade, HTTP2-Settings")
                .header("upgrade", "h2c")
                .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
                .header("accept", "*/*");
            for (name, value) in extra {
                builder = builder.header(*name, *value);
            }
            builder.body(()).expect("a valid request")
        };
        let frame = upgradable(&request(&[])).expect("upgraded");
        assert_eq!(
            &frame[3..9],
            [0x1, 0x5, 0, 0, 0, 1],
            "HEADERS, stream 1, ended"
        );
        let block = &frame[9..];
        assert_eq!(usize::from(frame[2]), block.len());
        let text = String::from_utf8_lossy(block);
        for expected in [
            ":method",
            "GET",
            ":path",
            "/api/info?x=1",
            ":authority",
            "example.test",
            "accept",
        ] {
            assert!(text.contains(expected), "{expected} in {text:?}");
        }
        for dropped in ["connection", "upgrade", "http2-settings", "host"] {
            assert!(!text.contains(dropped), "{dropped} in {text:?}");
        }
        assert!(upgradable(&request(&[("content-length", "5")])).is_none());
        assert!(upgradable(&request(&[("transfer-encoding", "chunked")])).is_none());
        assert!(upgradable(&request(&[("x-big", &"x".repeat(17_000))])).is_none());
        let mut plain = request(&[]);
        plain.headers_mut().remove("upgrade");
        assert!(upgradable(&plain).is_none());
    }
}
