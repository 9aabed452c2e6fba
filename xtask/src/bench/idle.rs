//! The idle keep-alive client: opens N connections to a loopback server, sends one `GET /` on
//! each (so the server has set up everything a served connection keeps), holds them open while
//! the server's memory is read, then closes them all.
//!
//! Bounded: at most the requested count, a timeout on every socket operation, and a stop at the
//! first failure (the count that did open is reported).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// The connections that are open, and why opening stopped early (if it did).
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) streams: Vec<TcpStream>,
    pub(crate) stopped_by: Option<String>,
}

pub(crate) fn open(port: u16, count: usize) -> Held {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        match one(&addr) {
            Ok(s) => streams.push(s),
            Err(e) => {
                return Held {
                    streams,
                    stopped_by: Some(format!("connection {}: {e}", i + 1)),
                };
            }
        }
    }
    Held {
        streams,
        stopped_by: None,
    }
}

/// How many held connections the server has not closed (a read that would block = still open).
pub(crate) fn still_open(held: &Held) -> usize {
    held.streams
        .iter()
        .filter(|s| {
            let _ = s.set_nonblocking(true);
            let mut b = [0u8; 1];
            let open =
                matches!((&**s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            let _ = s.set_nonblocking(false);
            open
        })
        .count()
}

fn one(addr: &SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    // Read the whole response (head + Content-Length body) so the connection is idle after it.
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("closed by the server"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(s);
            }
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("response larger than expected"));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
