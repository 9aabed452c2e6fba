//! Drives the target: `concurrency` workers, each with its own HTTP/1.1 connection (hyper's
//! connection-level client, no pool), its own [`Tally`] and no shared lock on the request
//! path. A worker keeps its connection alive unless `--new-connection` asks for one per
//! request, reconnects when the server closed it, and turns every failure into an
//! [`ErrorKind`] with a message that says what happened to which address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

// tokio's clock, not std's: a test can pause and advance it.
use tokio::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Plan;
use super::report::{ErrorKind, Identity, Tally};

/// When the run stops handing out requests.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    Count(u64),
    Duration(Duration),
}

/// What a finished run hands to the report.
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) tally: Tally,
    pub(crate) elapsed: Duration,
    /// Why the run stopped before its end, if it did.
    pub(crate) aborted: Option<String>,
}

/// State every worker reads; written only through atomics and, once per run at most, the
/// abort reason.
#[derive(Debug)]
struct Shared {
    plan: Arc<Plan>,
    addrs: Arc<[SocketAddr]>,
    issued: AtomicU64,
    deadline: Option<Instant>,
    // Set by the first response. Until then a transport failure means the target is not
    // there at all, and repeating it N times would only delay saying so.
    answered: AtomicBool,
    aborted: AtomicBool,
    abort_reason: Mutex<Option<String>>,
    // Makes idempotency keys unique across runs: `<run>-<worker>-<sequence>`.
    run_id: u64,
}

impl Shared {
    /// Hands out the next request, or says the run is over.
    fn next_ticket(&self) -> bool {
        if self.aborted.load(Ordering::Relaxed) {
            return false;
        }
        match (self.plan.stop, self.deadline) {
            (Stop::Count(n), _) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            (Stop::Duration(_), Some(deadline)) => Instant::now() < deadline,
            (Stop::Duration(_), None) => false,
        }
    }

    fn abort(&self, reason: String) {
        let mut slot = self
            .abort_reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.get_or_insert(reason);
        self.aborted.store(true, Ordering::Relaxed);
    }
}

/// Runs the plan against the resolved addresses and returns what every worker saw.
/// `interrupt` ends the run early: no new request starts once it completes, the ones in
/// flight finish, and the run is reported as stopped early.
pub(crate) async fn drive(
    plan: Arc<Plan>,
    addrs: Arc<[SocketAddr]>,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Measured {
    let workers = match plan.stop {
        Stop::Count(n) => plan
            .concurrency
            .min(usize::try_from(n).unwrap_or(usize::MAX)),
        Stop::Duration(_) => plan.concurrency,
    };
    let started = Instant::now();
    let deadline = match plan.stop {
        Stop::Duration(d) => Some(started + d),
        Stop::Count(_) => None,
    };
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        addrs,
        issued: AtomicU64::new(0),
        deadline,
        answered: AtomicBool::new(false),
        aborted: AtomicBool::new(false),
        abort_reason: Mutex::new(None),
        run_id: fastrand::u64(..),
    });
    let handles: Vec<_> = (0..workers)
        .map(|id| tokio::spawn(Worker::new(shared.clone(), id).run()))
        .collect();
    let watcher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            interrupt.await;
            shared.abort("interrupted".to_owned());
        })
    };
    let mut tally = Tally::new(plan.histogram_ceiling());
    for handle in handles {
        match handle.await {
            Ok(worker_tally) => tally.merge(worker_tally),
            // A worker only ends abnormally if the runtime is shutting down: what it saw is
            // lost, and the run says so instead of pretending it was complete.
            Err(e) => shared.abort(format!("a worker stopped: {e}")),
        }
    }
    watcher.abort();
    let elapsed = started.elapsed();
    let aborted = shared
        .abort_reason
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Measured {
        tally,
        elapsed,
        aborted,
    }
}

/// An open connection and how many requests it carried.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    peer: SocketAddr,
    uses: u64,
}

/// A request that got a complete response.
struct Answer {
    status: u16,
    served_by: Option<HeaderValue>,
    version: Option<HeaderValue>,
    node: Option<HeaderValue>,
    // The server said `connection: close`; the next request needs a new connection.
    close: bool,
}

/// A request that got no response.
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    message: String,
}

/// Why one exchange on a connection failed.
struct ExchangeError {
    error: hyper::Error,
    // hyper gave the request back: it never reached the connection, so sending it on a new
    // one cannot duplicate it.
    unsent: bool,
}

struct Worker {
    shared: Arc<Shared>,
    id: usize,
    tally: Tally,
    conn: Option<Conn>,
    // The address of the most recent connection attempt, for error messages.
    peer: Option<SocketAddr>,
    // Index into the resolved addresses of the one to try first.
    preferred: usize,
    sequence: u64,
}

impl Worker {
    fn new(shared: Arc<Shared>, id: usize) -> Self {
        let tally = Tally::new(shared.plan.histogram_ceiling());
        Self {
            shared,
            id,
            tally,
            conn: None,
            peer: None,
            preferred: 0,
            sequence: 0,
        }
    }

    async fn run(mut self) -> Tally {
        while self.shared.next_ticket() {
            self.one_request().await;
        }
        self.tally
    }

    /// One request as the user counts it: attempts, retries with the same idempotency key,
    /// and one recorded outcome.
    async fn one_request(&mut self) {
        let plan = self.shared.plan.clone();
        let key = plan.idempotency_keys.then(|| self.next_key());
        let started = Instant::now();
        let mut retried = 0;
        let outcome = loop {
            let outcome = self.attempt(key.as_ref()).await;
            let failed = match &outcome {
                Ok(answer) => answer.status >= 500,
                Err(_) => true,
            };
            if failed && retried < plan.retries && !self.shared.aborted.load(Ordering::Relaxed) {
                retried += 1;
                self.tally.record_retry();
                tokio::time::sleep(retry_backoff(retried)).await;
                continue;
            }
            break outcome;
        };
        match outcome {
            Ok(answer) => {
                self.shared.answered.store(true, Ordering::Relaxed);
                self.tally.record_response(
                    answer.status,
                    Identity {
                        replica: answer.served_by.as_ref().map(HeaderValue::as_bytes),
                        version: answer.version.as_ref().map(HeaderValue::as_bytes),
                        machine: answer.node.as_ref().map(HeaderValue::as_bytes),
                    },
                    started.elapsed(),
                );
            }
            Err(failure) => {
                let kind = failure.kind;
                if !self.shared.answered.load(Ordering::Relaxed) {
                    self.shared
                        .abort(format!("target unreachable: {}", failure.message));
                }
                self.tally.record_error(kind, || failure.message);
                // A refused connection fails in microseconds; without a pause a down target
                // turns a timed run into a busy loop.
                if kind.is_connect() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn next_key(&mut self) -> HeaderValue {
        self.sequence += 1;
        let key = format!("{:016x}-{}-{}", self.shared.run_id, self.id, self.sequence);
        HeaderValue::from_str(&key).expect("hex digits and dashes are a valid header value")
    }

    /// One attempt of a request: connect if needed, send, read the whole response.
    async fn attempt(&mut self, key: Option<&HeaderValue>) -> Result<Answer, Failure> {
        let plan = self.shared.plan.clone();
        // A kept-alive connection can be closed by the server just as a request is written to
        // it. Such a request is sent again, once, on a new connection when that cannot repeat
        // its effect: hyper gave it back unsent, or its method is idempotent (RFC 9110 §9.2.2).
        let mut resent = false;
        loop {
            self.ensure_connection().await?;
            let conn = self
                .conn
                .as_mut()
                .expect("ensure_connection leaves a connection");
            let reused = conn.uses > 0;
            conn.uses += 1;
            let peer = conn.peer;
            let request = plan.request(key);
            let exchange = exchange(&mut conn.sender, request);
            match tokio::time::timeout(plan.timeout, exchange).await {
                Ok(Ok(answer)) => {
                    if plan.new_connection || answer.close {
                        self.conn = None;
                    }
                    return Ok(answer);
                }
                Ok(Err(ExchangeError { error, unsent })) => {
                    self.conn = None;
                    let kind = classify(&error);
                    let stale = unsent
                        || (reused
                            && plan.method.is_idempotent()
                            && matches!(kind, ErrorKind::Closed | ErrorKind::Reset));
                    if stale && !resent {
                        resent = true;
                        continue;
                    }
                    return Err(Failure {
                        kind,
                        message: describe(kind, peer, &error),
                    });
                }
                Err(_elapsed) => {
                    // The connection is in an unknown state: drop it.
                    self.conn = None;
                    return Err(Failure {
                        kind: ErrorKind::Timeout,
                        message: format!(
                            "no response from {peer} within {}",
                            humantime::format_duration(plan.timeout)
                        ),
                    });
                }
            }
        }
    }

    /// Makes sure `self.conn` holds a connection ready for a request.
    async fn ensure_connection(&mut self) -> Result<(), Failure> {
        if let Some(conn) = self.conn.as_mut() {
            // Ready at once on a live idle connection; an error means the server closed it.
            if conn.sender.ready().await.is_ok() {
                return Ok(());
            }
            self.conn = None;
        }
        let plan = self.shared.plan.clone();
        let mut last = None;
        // Start with the address that worked last: a name such as `localhost` may resolve
        // to an address nothing listens on first.
        let addrs = self.shared.addrs.clone();
        let count = addrs.len();
        for index in (0..count).map(|i| (self.preferred + i) % count) {
            let addr = addrs[index];
            self.peer = Some(addr);
            let failure =
                match tokio::time::timeout(plan.connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => {
                        // Requests are small and latency is what is measured: no Nagle delay.
                        let _ = stream.set_nodelay(true);
                        match http1::handshake(TokioIo::new(stream)).await {
                            Ok((sender, connection)) => {
                                tokio::spawn(async move {
                                    // The connection's own errors reach the request that was on it.
                                    let _ = connection.await;
                                });
                                self.tally.record_connection();
                                self.preferred = index;
                                self.conn = Some(Conn {
                                    sender,
                                    peer: addr,
                                    uses: 0,
                                });
                                return Ok(());
                            }
                            Err(e) => Failure {
                                kind: ErrorKind::Other,
                                message: format!("HTTP handshake with {addr} failed: {e}"),
                            },
                        }
                    }
                    Ok(Err(e)) => connect_failure(addr, &e),
                    Err(_elapsed) => Failure {
                        kind: ErrorKind::ConnectTimeout,
                        message: format!(
                            "connect to {addr} timed out after {}",
                            humantime::format_duration(plan.connect_timeout)
                        ),
                    },
                };
            last = Some(failure);
        }
        Err(last.unwrap_or_else(|| Failure {
            kind: ErrorKind::Other,
            message: "the host resolved to no address".to_owned(),
        }))
    }
}

/// Backoff before the n-th retry (n ≥ 1): 25 ms doubling, at most 1 s, so a balancer has time
/// to notice a dead replica.
fn retry_backoff(n: u32) -> Duration {
    Duration::from_millis(25u64.saturating_mul(1 << n.saturating_sub(1).min(6)))
        .min(Duration::from_secs(1))
}

/// Sends a request and reads the response to its end, so the connection can carry the next.
async fn exchange(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<Answer, ExchangeError> {
    let response = sender.try_send_request(request).await.map_err(|mut e| {
        let unsent = e.take_message().is_some();
        ExchangeError {
            error: e.into_error(),
            unsent,
        }
    })?;
    let (parts, mut body) = response.into_parts();
    let headers = &parts.headers;
    let mut served_by = headers.get("x-served-by").cloned();
    let mut version = headers.get("x-version").cloned();
    let mut node = headers.get("x-node").cloned();
    let close = headers
        .get(header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    // A server without these headers may still name itself in a JSON body (`/api/info`):
    // keep the start of such a body to read it.
    let json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let mut kept = (json && (served_by.is_none() || version.is_none())).then(Vec::new);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ExchangeError {
            error,
            unsent: false,
        })?;
        if let (Some(kept), Ok(data)) = (kept.as_mut(), frame.into_data())
            && kept.len() < INFO_BODY_LIMIT
        {
            kept.extend_from_slice(&data);
        }
    }
    if let Some(kept) = kept {
        let (name, ver, machine) = identity_from_json(&kept);
        served_by = served_by.or(name);
        version = version.or(ver);
        node = node.or(machine);
    }
    Ok(Answer {
        status: parts.status.as_u16(),
        served_by,
        version,
        node,
        close,
    })
}

/// How much of a JSON body is kept to look for the replica's name and version.
const INFO_BODY_LIMIT: usize = 16 * 1024;

/// The replica name (`instance`, else `hostname`), `version` and machine (`node`) of an
/// `/api/info`-like body.
fn identity_from_json(
    body: &[u8],
) -> (
    Option<HeaderValue>,
    Option<HeaderValue>,
    Option<HeaderValue>,
) {
    let Ok(serde_json::Value::Object(info)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return (None, None, None);
    };
    let text = |key: &str| {
        info.get(key)
            .and_then(serde_json::Value::as_str)
            .and_then(|s| HeaderValue::from_str(s).ok())
    };
    (
        text("instance").or_else(|| text("hostname")),
        text("version"),
        text("node"),
    )
}

/// Sorts a hyper error into a kind, from the I/O error underneath when there is one.
fn classify(error: &hyper::Error) -> ErrorKind {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_kind(io);
        }
        source = e.source();
    }
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        ErrorKind::Closed
    } else if error.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Other
    }
}

fn io_kind(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match e.kind() {
        Io::ConnectionRefused => ErrorKind::Refused,
        Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe => ErrorKind::Reset,
        Io::TimedOut => ErrorKind::Timeout,
        Io::UnexpectedEof => ErrorKind::Closed,
        _ => ErrorKind::Other,
    }
}

fn connect_failure(addr: SocketAddr, e: &std::io::Error) -> Failure {
    let kind = match io_kind(e) {
        ErrorKind::Timeout => ErrorKind::ConnectTimeout,
        ErrorKind::Refused => ErrorKind::Refused,
        _ => ErrorKind::Other,
    };
    let message = match kind {
        ErrorKind::Refused => format!("connection refused to {addr}"),
        ErrorKind::ConnectTimeout => format!("connect to {addr} timed out"),
        _ => format!("cannot connect to {addr}: {e}"),
    };
    Failure { kind, message }
}

/// A one-line message for a failed exchange.
fn describe(kind: ErrorKind, peer: SocketAddr, error: &hyper::Error) -> String {
    match kind {
        ErrorKind::Refused => format!("connection refused to {peer}"),
        ErrorKind::Reset => format!("connection reset by {peer}"),
        ErrorKind::Closed => format!("{peer} closed the connection before a complete response"),
        ErrorKind::Timeout => format!("no response from {peer} (timed out)"),
        ErrorKind::ConnectTimeout => format!("connect to {peer} timed out"),
        ErrorKind::Other => format!("{peer}: {}", chain(error)),
    }
}

/// An error and its causes on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's shared state for `args`, with its deadline (if timed) from now.
    fn shared(args: &[&str]) -> Shared {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: crate::check::CheckArgs,
        }
        let only = <Only as clap::Parser>::try_parse_from(args).expect("valid arguments");
        let plan = Plan::new(&only.args).expect("a valid plan");
        let deadline = match plan.stop {
            Stop::Duration(duration) => Some(Instant::now() + duration),
            Stop::Count(_) => None,
        };
        Shared {
            plan: Arc::new(plan),
            addrs: Arc::from(Vec::new()),
            issued: AtomicU64::new(0),
            deadline,
            answered: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            abort_reason: Mutex::new(None),
            run_id: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_run_hands_out_requests_until_its_duration_ends() {
        let run = shared(&["check", "http://127.0.0.1:1/", "-z", "30s"]);
        assert!(run.next_ticket());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(run.next_ticket(), "a second before the end");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!run.next_ticket(), "the duration is over");
    }

    #[test]
    fn a_counted_run_hands_out_exactly_its_count_unless_aborted() {
        let run = shared(&["check", "http://127.0.0.1:1/", "-n", "3"]);
        assert_eq!((0..5).filter(|_| run.next_ticket()).count(), 3);
        let run = shared(&["check", "http://127.0.0.1:1/", "-n", "3"]);
        run.abort("stopped".into());
        assert!(!run.next_ticket());
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_second() {
        assert_eq!(retry_backoff(1), Duration::from_millis(25));
        assert_eq!(retry_backoff(2), Duration::from_millis(50));
        assert_eq!(retry_backoff(3), Duration::from_millis(100));
        assert_eq!(retry_backoff(7), Duration::from_secs(1));
        assert_eq!(retry_backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn io_errors_map_to_the_documented_kinds() {
        use std::io::{Error, ErrorKind as Io};
        assert_eq!(
            io_kind(&Error::from(Io::ConnectionRefused)),
            ErrorKind::Refused
        );
        assert_eq!(io_kind(&Error::from(Io::ConnectionReset)), ErrorKind::Reset);
        assert_eq!(io_kind(&Error::from(Io::BrokenPipe)), ErrorKind::Reset);
        assert_eq!(io_kind(&Error::from(Io::UnexpectedEof)), ErrorKind::Closed);
        assert_eq!(
            io_kind(&Error::from(Io::PermissionDenied)),
            ErrorKind::Other
        );
    }

    #[test]
    fn a_refused_connect_names_the_address() {
        let addr: SocketAddr = "127.0.0.1:5999".parse().expect("address");
        let failure = connect_failure(
            addr,
            &std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(failure.kind, ErrorKind::Refused);
        assert_eq!(failure.message, "connection refused to 127.0.0.1:5999");
        let failure = connect_failure(addr, &std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(failure.kind, ErrorKind::ConnectTimeout);
    }

    #[test]
    fn an_info_body_names_the_replica_version_and_machine() {
        let (name, version, machine) = identity_from_json(
            br#"{"instance":"web-1","hostname":"h","version":"1.2.3","node":"node-2"}"#,
        );
        assert_eq!(name.expect("name"), "web-1");
        assert_eq!(version.expect("version"), "1.2.3");
        assert_eq!(machine.expect("machine"), "node-2");
        let (name, version, machine) = identity_from_json(br#"{"hostname":"h","node":null}"#);
        assert_eq!(name.expect("name"), "h");
        assert!(version.is_none() && machine.is_none());
        assert_eq!(identity_from_json(b"[1,2]").0, None);
        assert_eq!(identity_from_json(b"not json").0, None);
    }
}
