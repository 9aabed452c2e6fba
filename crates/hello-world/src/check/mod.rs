//! `hello-world check URL`: the load-check client. It sends requests to any HTTP server (a
//! replica, a load balancer, a cluster's external IP) and reports what came back: statuses,
//! transport errors, latency percentiles, and how the responses spread over replicas
//! (`x-served-by`) and versions (`x-version`). It reaches a server only through HTTP, so it
//! judges the service exactly as a client would.
//!
//! - [`CheckArgs`]: the flags; [`run`] checks them, runs, prints, and returns the exit code
//!   (0 pass, 1 a threshold breached, 2 bad arguments).
//! - `runner`: the workers and their connections.
//! - [`report`]: tallies, the summary (`--json`), the verdict and the human report.

pub mod report;
mod runner;

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::Full;

use report::{RunInfo, Summary, Thresholds};
use runner::Stop;

/// Requests sent when neither `--requests` nor `--duration` is given.
const DEFAULT_REQUESTS: u64 = 200;
/// More workers than this is a typo, not a load test: each holds a socket.
const MAX_CONCURRENCY: usize = 10_000;

/// Send requests to a URL and report statuses, latency and the spread over replicas.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The URL to request, e.g. http://127.0.0.1:5000/ (http only; "http://" may be left out).
    pub url: String,

    /// Number of requests to send [default: 200].
    #[arg(short = 'n', long, value_name = "N", conflicts_with = "duration")]
    pub requests: Option<u64>,

    /// Send requests for this long instead of a fixed number (e.g. 250ms, 10s, 1m).
    #[arg(short = 'z', long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Number of concurrent workers, each with its own connection.
    #[arg(short = 'c', long, default_value_t = 8, value_name = "C")]
    pub concurrency: usize,

    /// Open a new TCP connection for every request, so an L4 balancer (a Kubernetes Service)
    /// spreads them; by default each worker keeps its connection alive.
    #[arg(long)]
    pub new_connection: bool,

    /// HTTP method.
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,

    /// Extra request header "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,

    /// Request body.
    #[arg(short = 'd', long)]
    pub body: Option<String>,

    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,

    /// Largest tolerated share of requests without a 2xx/3xx answer (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub max_error_rate: f64,

    /// Fail unless at least this many distinct replicas answered.
    #[arg(long, value_name = "K")]
    pub expect_replicas: Option<usize>,

    /// Fail unless every replica served at least this share of the responses (0.0 to 1.0).
    #[arg(long, value_name = "F")]
    pub min_share: Option<f64>,

    /// Give every request a unique Idempotency-Key header, kept across its retries.
    #[arg(long)]
    pub idempotency_keys: bool,

    /// Retry a request that failed with a transport error or a 5xx up to N times (add
    /// --idempotency-keys when a repeated request must not take effect twice).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub retries: u32,

    /// Give up on a TCP connect after this long.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Give up on a response after this long.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Print nothing when the check passes; on failure print only the reasons (stderr).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// An argument clap could not judge by itself (exit status 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError(String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgError {}

fn bad(message: impl Into<String>) -> ArgError {
    ArgError(message.into())
}

/// A checked set of arguments: everything a worker needs, built once.
#[derive(Debug)]
pub(crate) struct Plan {
    url: String,
    host: String,
    port: u16,
    path: Uri,
    method: Method,
    // Host, user agent and the user's headers, cloned into every request.
    headers: HeaderMap,
    body: Bytes,
    stop: Stop,
    concurrency: usize,
    new_connection: bool,
    connect_timeout: Duration,
    timeout: Duration,
    idempotency_keys: bool,
    retries: u32,
    thresholds: Thresholds,
}

/// Where a check sends its requests, read from its URL argument by [`parse_target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as the report names it.
    pub url: String,
    /// The host name or address to resolve, without an IPv6 address's brackets.
    pub host: String,
    pub port: u16,
    /// The request target: path and query.
    pub path: Uri,
    /// The `Host` header: the URL's authority as written.
    pub authority: HeaderValue,
}

/// Reads a check's URL argument: `http://` (which may be left out), a host, an optional port
/// other than 0, an optional path and query; no credentials, no other scheme.
pub fn parse_target(url: &str) -> Result<Target, ArgError> {
    let raw = url.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| bad(format!("invalid URL {raw:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(bad(format!(
                "unsupported URL scheme {other:?}: only http:// is supported"
            )));
        }
        None => return Err(bad(format!("invalid URL {raw:?}: no scheme"))),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad(format!("invalid URL {raw:?}: no host")))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "credentials in the URL are not supported: send them with -H \"Authorization: ...\"",
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(bad(format!("invalid URL {raw:?}: no host")));
    }
    let port = authority.port_u16().unwrap_or(80);
    if port == 0 {
        return Err(bad(format!("invalid URL {raw:?}: port 0")));
    }
    // `uri.path()` is `/` when the URL has none, also before a query (`host:80?x=1`).
    let path_and_query = match uri.query() {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_owned(),
    };
    let path: Uri = path_and_query
        .parse()
        .map_err(|e| bad(format!("invalid URL path in {raw:?}: {e}")))?;
    let authority = HeaderValue::from_str(authority.as_str())
        .map_err(|_| bad(format!("invalid URL {raw:?}: host")))?;
    Ok(Target {
        url: uri.to_string(),
        host,
        port,
        path,
        authority,
    })
}

impl Plan {
    fn new(args: &CheckArgs) -> Result<Self, ArgError> {
        let Target {
            url,
            host,
            port,
            path,
            authority,
        } = parse_target(&args.url)?;

        let method = Method::from_bytes(args.method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| bad(format!("invalid HTTP method {:?}", args.method)))?;

        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, authority);
        let agent = format!("hello-world-check/{}", crate::VERSION);
        let agent = HeaderValue::from_str(&agent)
            .unwrap_or_else(|_| HeaderValue::from_static("hello-world-check"));
        headers.insert(header::USER_AGENT, agent);
        for line in &args.headers {
            let (name, value) = parse_header(line)?;
            // The user's Host or User-Agent replaces ours; other repeated names add up.
            if name == header::HOST || name == header::USER_AGENT {
                headers.insert(name, value);
            } else {
                headers.append(name, value);
            }
        }
        // With a connection per request the server closes it, so the closed sockets wait in
        // TIME_WAIT on the server, not in this client's ephemeral port range.
        if args.new_connection && !headers.contains_key(header::CONNECTION) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }

        let stop = match (args.requests, args.duration) {
            (Some(0), _) => return Err(bad("--requests must be at least 1")),
            (Some(n), _) => Stop::Count(n),
            (None, Some(d)) if d.is_zero() => return Err(bad("--duration must be more than 0")),
            (None, Some(d)) => Stop::Duration(d),
            (None, None) => Stop::Count(DEFAULT_REQUESTS),
        };
        if args.concurrency == 0 {
            return Err(bad("--concurrency must be at least 1"));
        }
        if args.concurrency > MAX_CONCURRENCY {
            return Err(bad(format!(
                "--concurrency must be at most {MAX_CONCURRENCY}"
            )));
        }
        if args.connect_timeout.is_zero() {
            return Err(bad("--connect-timeout must be more than 0"));
        }
        if args.timeout.is_zero() {
            return Err(bad("--timeout must be more than 0"));
        }
        let fraction = |flag: &str, x: f64| {
            if (0.0..=1.0).contains(&x) {
                Ok(x)
            } else {
                Err(bad(format!("{flag} must be between 0.0 and 1.0, not {x}")))
            }
        };
        let max_error_rate = fraction("--max-error-rate", args.max_error_rate)?;
        let min_share = args
            .min_share
            .map(|f| fraction("--min-share", f))
            .transpose()?;
        if args.expect_replicas == Some(0) {
            return Err(bad("--expect-replicas must be at least 1"));
        }

        Ok(Self {
            url,
            host,
            port,
            path,
            method,
            headers,
            body: args.body.clone().map(Bytes::from).unwrap_or_default(),
            stop,
            concurrency: args.concurrency,
            new_connection: args.new_connection,
            connect_timeout: args.connect_timeout,
            timeout: args.timeout,
            idempotency_keys: args.idempotency_keys,
            retries: args.retries,
            thresholds: Thresholds {
                max_error_rate,
                expect_replicas: args.expect_replicas,
                min_share,
            },
        })
    }

    /// A fresh request; only the idempotency key differs from one to the next.
    fn request(&self, idempotency_key: Option<&HeaderValue>) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.path.clone();
        *request.headers_mut() = self.headers.clone();
        if let Some(key) = idempotency_key {
            request.headers_mut().insert("idempotency-key", key.clone());
        }
        request
    }

    /// The longest latency the histogram must hold: a request with all its retries.
    fn histogram_ceiling(&self) -> Duration {
        let attempts = self.retries.saturating_add(1).min(100);
        (self.timeout + self.connect_timeout + Duration::from_secs(1)) * attempts
    }

    fn run_info(&self) -> RunInfo {
        RunInfo {
            url: self.url.clone(),
            method: self.method.to_string(),
            concurrency: self.concurrency,
            new_connection: self.new_connection,
        }
    }
}

/// Parses a `-H` argument, `Name: value` (or `Name:value`).
pub fn parse_header(line: &str) -> Result<(HeaderName, HeaderValue), ArgError> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| bad(format!("invalid header {line:?}: expected \"Name: value\"")))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| bad(format!("invalid header name in {line:?}")))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| bad(format!("invalid header value in {line:?}")))?;
    Ok((name, value))
}

/// What a check produced: the text for each stream and the exit status.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// 0 pass, 1 failed (a threshold breached or the target unreachable), 2 bad arguments.
    pub exit: u8,
    pub stdout: String,
    pub stderr: String,
    /// The summary, unless the arguments were bad or the host did not resolve.
    pub summary: Option<Summary>,
}

impl Outcome {
    fn failed(exit: u8, message: String) -> Self {
        Self {
            exit,
            stdout: String::new(),
            stderr: format!("error: {message}\n"),
            summary: None,
        }
    }
}

/// Runs a check and prints its report; the exit code for `main`. Ctrl-C stops the run early
/// and still prints what it saw.
pub async fn run(args: CheckArgs) -> ExitCode {
    let interrupt = async {
        // Without signal support there is nothing to wait for: the run goes to its end.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let outcome = execute_until(args, interrupt).await;
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    ExitCode::from(outcome.exit)
}

/// Runs a check without printing: what [`run`] would print, and its exit status.
pub async fn execute(args: CheckArgs) -> Outcome {
    execute_until(args, std::future::pending()).await
}

/// Like [`execute`], but `interrupt` completing stops the run early (it then fails, with
/// "interrupted" among its reasons).
pub async fn execute_until(
    args: CheckArgs,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Outcome {
    let plan = match Plan::new(&args) {
        Ok(plan) => Arc::new(plan),
        Err(e) => return Outcome::failed(2, e.to_string()),
    };
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(
        plan.connect_timeout,
        tokio::net::lookup_host((plan.host.as_str(), plan.port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return Outcome::failed(1, format!("cannot resolve {}: {e}", plan.host)),
        Err(_) => return Outcome::failed(1, format!("cannot resolve {}: timed out", plan.host)),
    };
    if addrs.is_empty() {
        return Outcome::failed(1, format!("cannot resolve {}: no address", plan.host));
    }

    let measured = runner::drive(plan.clone(), addrs.into(), interrupt).await;
    let summary = Summary::new(
        plan.run_info(),
        &measured.tally,
        measured.elapsed,
        &plan.thresholds,
        measured.aborted.as_deref(),
    );
    let exit = if summary.verdict.pass { 0 } else { 1 };
    let (stdout, stderr) = if args.json {
        (format!("{}\n", summary.to_json()), String::new())
    } else if args.quiet {
        let reasons: String = summary
            .verdict
            .reasons
            .iter()
            .map(|r| format!("check failed: {r}\n"))
            .collect();
        (String::new(), reasons)
    } else {
        (report::render(&summary), String::new())
    };
    Outcome {
        exit,
        stdout,
        stderr,
        summary: Some(summary),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        check: CheckArgs,
    }

    fn plan(args: &[&str]) -> Result<Plan, ArgError> {
        let cli = Cli::try_parse_from(std::iter::once("check").chain(args.iter().copied()))
            .expect("clap accepts these arguments");
        Plan::new(&cli.check)
    }

    fn rejection(args: &[&str]) -> String {
        plan(args)
            .expect_err("the arguments are rejected")
            .to_string()
    }

    #[test]
    fn defaults_are_200_requests_over_8_keep_alive_workers() {
        let p = plan(&["http://127.0.0.1:5000/"]).expect("valid");
        assert!(matches!(p.stop, Stop::Count(200)));
        assert_eq!(p.concurrency, 8);
        assert!(!p.new_connection);
        assert_eq!(p.method, Method::GET);
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(p.timeout, Duration::from_secs(10));
        assert_eq!(p.thresholds, Thresholds::default());
        assert_eq!(p.headers[header::HOST], "127.0.0.1:5000");
        assert!(!p.headers.contains_key(header::CONNECTION));
    }

    #[test]
    fn a_url_without_scheme_means_http_and_keeps_its_path_and_query() {
        let p = plan(&["localhost:8080/api/info?x=1"]).expect("valid");
        assert_eq!(p.host, "localhost");
        assert_eq!(p.port, 8080);
        assert_eq!(p.path, "/api/info?x=1");
        let p = plan(&["localhost:8080?x=1"]).expect("a query needs no path before it");
        assert_eq!(p.path, "/?x=1");
        let p = plan(&["http://[::1]/"]).expect("valid");
        assert_eq!(p.host, "::1");
        assert_eq!(p.port, 80);
    }

    #[test]
    fn flags_shape_the_request() {
        let p = plan(&[
            "http://example.test:81/api/echo",
            "-m",
            "post",
            "-H",
            "Content-Type: text/plain",
            "--header=x-a:1",
            "--header=x-a:2",
            "-H",
            "Host: other.test",
            "-d",
            "hi",
            "--new-connection",
            "-z",
            "250ms",
        ])
        .expect("valid");
        assert_eq!(p.method, Method::POST);
        assert!(matches!(p.stop, Stop::Duration(d) if d == Duration::from_millis(250)));
        let key = HeaderValue::from_static("k-1");
        let request = p.request(Some(&key));
        let h = request.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/plain");
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(h[header::HOST], "other.test");
        assert_eq!(h[header::CONNECTION], "close");
        assert_eq!(h["idempotency-key"], "k-1");
        assert_eq!(request.uri(), "/api/echo");
        assert_eq!(p.body, "hi");
    }

    #[test]
    fn bad_arguments_are_rejected_with_a_reason() {
        assert!(rejection(&["https://127.0.0.1/"]).contains("only http://"));
        assert!(rejection(&["http://"]).contains("invalid URL"));
        assert!(rejection(&["http://127.0.0.1:0/"]).contains("port 0"));
        assert!(rejection(&["http://u:p@127.0.0.1/"]).contains("credentials"));
        assert!(rejection(&["x", "-c", "0"]).contains("--concurrency"));
        assert!(rejection(&["x", "-c", "100000"]).contains("--concurrency"));
        assert!(rejection(&["x", "-n", "0"]).contains("--requests"));
        assert!(rejection(&["x", "-z", "0s"]).contains("--duration"));
        assert!(rejection(&["x", "-H", "no-colon"]).contains("invalid header"));
        assert!(rejection(&["x", "-H", "bad name: v"]).contains("invalid header name"));
        assert!(rejection(&["x", "-m", "GE T"]).contains("invalid HTTP method"));
        assert!(rejection(&["x", "--max-error-rate", "1.5"]).contains("--max-error-rate"));
        assert!(rejection(&["x", "--min-share=-0.1"]).contains("--min-share"));
        assert!(rejection(&["x", "--expect-replicas", "0"]).contains("--expect-replicas"));
        assert!(rejection(&["x", "--timeout", "0s"]).contains("--timeout"));
        assert!(rejection(&["x", "--connect-timeout", "0ms"]).contains("--connect-timeout"));
    }

    #[test]
    fn requests_and_duration_exclude_each_other() {
        let parsed = Cli::try_parse_from(["check", "x", "-n", "5", "-z", "1s"]);
        assert!(parsed.is_err());
    }

    #[tokio::test]
    async fn bad_arguments_exit_2_with_one_line() {
        let cli = Cli::try_parse_from(["check", "http://127.0.0.1:1/", "-c", "0"]).expect("parses");
        let outcome = execute(cli.check).await;
        assert_eq!(outcome.exit, 2);
        assert_eq!(outcome.stderr, "error: --concurrency must be at least 1\n");
        assert!(outcome.summary.is_none());
    }
}
