//! `hello-world healthcheck`: the container's HEALTHCHECK. A scratch image has no curl, so the
//! binary probes itself: `GET /healthz` on the local public port, exit 0 on 200, 1 otherwise,
//! always within the timeout.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Probes `http://127.0.0.1:{port}/healthz`; `Err` says what went wrong.
pub fn probe(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let remaining = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut stream = TcpStream::connect_timeout(&address, remaining())
        .map_err(|err| format!("cannot connect to {address}: {err}"))?;
    stream
        .set_write_timeout(Some(remaining()))
        .map_err(|err| err.to_string())?;
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|err| format!("cannot send the probe: {err}"))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    // The status line fits in the first bytes; read until we have it or time runs out.
    while read < 12 {
        stream
            .set_read_timeout(Some(remaining()))
            .map_err(|err| err.to_string())?;
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(err) => return Err(format!("no answer from {address}: {err}")),
        }
    }
    let status_line = String::from_utf8_lossy(&head[..read]);
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(status) => Err(format!("/healthz answered {status}")),
        None => Err(format!(
            "/healthz answered something that is not HTTP: {status_line:?}"
        )),
    }
}
