//! What a load check saw and what it means: the per-worker [`Tally`] the runner fills without
//! locks, the [`Summary`] merged from all workers (the `--json` object), the pass/fail
//! [`Verdict`] against the [`Thresholds`], and the human report. Everything here is pure: no
//! sockets, no clocks, so it is tested directly.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// How a request failed when no HTTP response came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The target refused the TCP connection (nothing listens there).
    Refused,
    /// The peer reset the connection (a process died, a balancer gave up).
    Reset,
    /// The request was sent but no complete response came within `--timeout`.
    Timeout,
    /// No TCP connection within `--connect-timeout` (packets dropped, host down).
    ConnectTimeout,
    /// The connection closed cleanly before a complete response arrived.
    Closed,
    /// Anything else (a malformed response, an unreachable network, ...).
    Other,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 6] = [
        Self::Refused,
        Self::Reset,
        Self::Timeout,
        Self::ConnectTimeout,
        Self::Closed,
        Self::Other,
    ];

    /// The name used in the JSON object and the human report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::ConnectTimeout => "connect_timeout",
            Self::Closed => "closed",
            Self::Other => "other",
        }
    }

    /// True for failures to open a connection, as opposed to failures of a request on one.
    pub fn is_connect(self) -> bool {
        matches!(self, Self::Refused | Self::ConnectTimeout)
    }
}

/// Who answered a request, as the response named itself (`x-served-by`, `x-version`,
/// `x-node`): raw header bytes, decoded once at the end of the run, not per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity<'a> {
    pub replica: Option<&'a [u8]>,
    pub version: Option<&'a [u8]>,
    /// The machine the replica runs on, when it says.
    pub machine: Option<&'a [u8]>,
}

/// Requests one replica answered, by the version it announced, and the machine it named.
#[derive(Debug, Default, Clone)]
struct ReplicaTally {
    count: u64,
    versions: BTreeMap<Vec<u8>, u64>,
    // A replica runs on one machine; the last one named is kept.
    machine: Option<Vec<u8>>,
}

/// Everything one worker saw. Each worker owns one, so recording takes no lock; the runner
/// merges them when the run ends.
#[derive(Debug, Clone)]
pub struct Tally {
    requests: u64,
    status: BTreeMap<u16, u64>,
    errors: BTreeMap<ErrorKind, u64>,
    // The first message per kind: enough to say what happened without storing thousands.
    error_messages: BTreeMap<ErrorKind, String>,
    replicas: HashMap<Vec<u8>, ReplicaTally>,
    versions: HashMap<Vec<u8>, u64>,
    machines: HashMap<Vec<u8>, u64>,
    unidentified: u64,
    retries: u64,
    connections: u64,
    // Microseconds, for requests that got a response; transport errors would only measure
    // how long a timeout is.
    latency_us: Histogram<u64>,
}

impl Tally {
    /// An empty tally whose histogram can hold latencies up to `max_latency`; longer ones are
    /// clamped to it rather than lost.
    pub fn new(max_latency: Duration) -> Self {
        let high = u64::try_from(max_latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(2);
        let latency_us = Histogram::new_with_bounds(1, high, 3)
            .or_else(|_| Histogram::new(3))
            .expect("a 3-significant-figure histogram is always valid");
        Self {
            requests: 0,
            status: BTreeMap::new(),
            errors: BTreeMap::new(),
            error_messages: BTreeMap::new(),
            replicas: HashMap::new(),
            versions: HashMap::new(),
            machines: HashMap::new(),
            unidentified: 0,
            retries: 0,
            connections: 0,
            latency_us,
        }
    }

    /// Records a request that got an HTTP response, with the replica, version and machine it
    /// named.
    pub fn record_response(&mut self, status: u16, identity: Identity<'_>, latency: Duration) {
        let Identity {
            replica,
            version,
            machine,
        } = identity;
        self.requests += 1;
        *self.status.entry(status).or_insert(0) += 1;
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latency_us.saturating_record(micros);
        if let Some(version) = version {
            bump(&mut self.versions, version);
        }
        if let Some(machine) = machine {
            bump(&mut self.machines, machine);
        }
        match replica {
            Some(name) => {
                let replica = match self.replicas.get_mut(name) {
                    Some(replica) => replica,
                    None => self.replicas.entry(name.to_vec()).or_default(),
                };
                replica.count += 1;
                if let Some(version) = version {
                    match replica.versions.get_mut(version) {
                        Some(count) => *count += 1,
                        None => {
                            replica.versions.insert(version.to_vec(), 1);
                        }
                    }
                }
                if let Some(machine) = machine
                    && replica.machine.as_deref() != Some(machine)
                {
                    replica.machine = Some(machine.to_vec());
                }
            }
            None => self.unidentified += 1,
        }
    }

    /// Records a request that failed without a response. `message` is only called for the
    /// first failure of each kind.
    pub fn record_error(&mut self, kind: ErrorKind, message: impl FnOnce() -> String) {
        self.requests += 1;
        *self.errors.entry(kind).or_insert(0) += 1;
        self.error_messages.entry(kind).or_insert_with(message);
    }

    /// Counts one retry of a request (the request itself is recorded once, with its outcome).
    pub fn record_retry(&mut self) {
        self.retries += 1;
    }

    /// Counts one TCP connection opened.
    pub fn record_connection(&mut self) {
        self.connections += 1;
    }

    /// Folds another worker's tally into this one.
    pub fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        for (code, n) in other.status {
            *self.status.entry(code).or_insert(0) += n;
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_insert(0) += n;
        }
        for (kind, message) in other.error_messages {
            self.error_messages.entry(kind).or_insert(message);
        }
        for (name, theirs) in other.replicas {
            let ours = self.replicas.entry(name).or_default();
            ours.count += theirs.count;
            for (version, n) in theirs.versions {
                *ours.versions.entry(version).or_insert(0) += n;
            }
            if theirs.machine.is_some() {
                ours.machine = theirs.machine;
            }
        }
        for (version, n) in other.versions {
            *self.versions.entry(version).or_insert(0) += n;
        }
        for (machine, n) in other.machines {
            *self.machines.entry(machine).or_insert(0) += n;
        }
        self.unidentified += other.unidentified;
        self.retries += other.retries;
        self.connections += other.connections;
        // Both histograms come from `Tally::new` with the same bounds, so this cannot fail;
        // if it ever did, the fallback keeps every sample, clamped.
        if self.latency_us.add(&other.latency_us).is_err() {
            for value in other.latency_us.iter_recorded() {
                self.latency_us
                    .saturating_record_n(value.value_iterated_to(), value.count_at_value());
            }
        }
    }

    /// Requests recorded so far (answered or failed).
    pub fn requests(&self) -> u64 {
        self.requests
    }
}

fn bump(map: &mut HashMap<Vec<u8>, u64>, key: &[u8]) {
    match map.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            map.insert(key.to_vec(), 1);
        }
    }
}

/// What must hold for the run to pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Largest tolerated share of requests without a 2xx/3xx answer, 0.0–1.0.
    pub max_error_rate: f64,
    /// At least this many distinct replicas must answer.
    pub expect_replicas: Option<usize>,
    /// Every replica that answered must have served at least this share of the responses.
    pub min_share: Option<f64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_error_rate: 0.0,
            expect_replicas: None,
            min_share: None,
        }
    }
}

/// Latency percentiles of answered requests, in milliseconds (microsecond resolution).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Pass or fail, and every reason for failing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub pass: bool,
    pub reasons: Vec<String>,
}

/// How the run was set up, echoed in the report so a saved JSON object explains itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    pub url: String,
    pub method: String,
    pub concurrency: usize,
    pub new_connection: bool,
}

/// The whole result of a run: the `--json` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub run: RunInfo,
    /// Requests made (each counted once, however often it was retried).
    pub requests: u64,
    /// Requests answered with a 2xx or 3xx status.
    pub ok: u64,
    /// `requests - ok`: other statuses plus transport errors.
    pub errors: u64,
    /// Every status received, by code.
    pub status: BTreeMap<u16, u64>,
    /// Transport errors by kind (every kind, zeros included).
    pub error_kinds: BTreeMap<ErrorKind, u64>,
    /// The first error message of each kind.
    pub error_messages: BTreeMap<ErrorKind, String>,
    /// Responses by the replica named in `x-served-by`.
    pub replicas: BTreeMap<String, u64>,
    /// Responses by the version named in `x-version`.
    pub versions: BTreeMap<String, u64>,
    /// The version each replica announced (comma-separated if it announced several).
    pub replica_versions: BTreeMap<String, String>,
    /// Responses by the machine named in `x-node` (empty when no replica names one).
    pub machines: BTreeMap<String, u64>,
    /// The machine each replica named.
    pub replica_machines: BTreeMap<String, String>,
    /// Responses that named no replica.
    pub unidentified: u64,
    pub latency_ms: Latency,
    pub rps: f64,
    pub duration_s: f64,
    /// Extra attempts made for requests that failed with a transport error or a 5xx.
    pub retries: u64,
    /// TCP connections opened.
    pub connections: u64,
    pub verdict: Verdict,
}

impl Summary {
    /// Builds the summary of a finished run. `aborted` is the reason the run stopped early,
    /// if it did.
    pub fn new(
        run: RunInfo,
        tally: &Tally,
        elapsed: Duration,
        thresholds: &Thresholds,
        aborted: Option<&str>,
    ) -> Self {
        let ok: u64 = tally.status.range(200..400).map(|(_, n)| n).sum();
        let decode = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let replicas: BTreeMap<String, u64> = tally
            .replicas
            .iter()
            .map(|(name, r)| (decode(name), r.count))
            .collect();
        let replica_versions = tally
            .replicas
            .iter()
            .filter(|(_, r)| !r.versions.is_empty())
            .map(|(name, r)| {
                let versions: Vec<String> = r.versions.keys().map(|v| decode(v)).collect();
                (decode(name), versions.join(","))
            })
            .collect();
        let versions = tally
            .versions
            .iter()
            .map(|(v, n)| (decode(v), *n))
            .collect();
        let machines = tally
            .machines
            .iter()
            .map(|(m, n)| (decode(m), *n))
            .collect();
        let replica_machines = tally
            .replicas
            .iter()
            .filter_map(|(name, r)| Some((decode(name), decode(r.machine.as_deref()?))))
            .collect();
        let duration_s = elapsed.as_secs_f64();
        let rps = if duration_s > 0.0 {
            tally.requests as f64 / duration_s
        } else {
            0.0
        };
        let mut summary = Self {
            run,
            requests: tally.requests,
            ok,
            errors: tally.requests - ok,
            status: tally.status.clone(),
            // Every kind is present, zero or not, so scripts can read any of them directly.
            error_kinds: ErrorKind::ALL
                .iter()
                .map(|&kind| (kind, tally.errors.get(&kind).copied().unwrap_or(0)))
                .collect(),
            error_messages: tally.error_messages.clone(),
            replicas,
            versions,
            replica_versions,
            machines,
            replica_machines,
            unidentified: tally.unidentified,
            latency_ms: latency(&tally.latency_us),
            rps: round3(rps),
            duration_s: round3(duration_s),
            retries: tally.retries,
            connections: tally.connections,
            verdict: Verdict {
                pass: false,
                reasons: Vec::new(),
            },
        };
        summary.verdict = verdict(&summary, thresholds, aborted);
        summary
    }

    /// Responses received (any status).
    pub fn responses(&self) -> u64 {
        self.status.values().sum()
    }

    /// The share of responses a replica served, 0.0–1.0.
    pub fn share(&self, replica: &str) -> f64 {
        let responses = self.responses();
        match self.replicas.get(replica) {
            Some(&count) if responses > 0 => count as f64 / responses as f64,
            _ => 0.0,
        }
    }

    /// The share of responses a machine served, 0.0–1.0.
    pub fn machine_share(&self, machine: &str) -> f64 {
        let responses = self.responses();
        match self.machines.get(machine) {
            Some(&count) if responses > 0 => count as f64 / responses as f64,
            _ => 0.0,
        }
    }

    /// Requests without a 2xx/3xx answer, as a share of all requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The one-line `--json` output.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a summary of maps, numbers and strings serialises")
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Percentiles of a microsecond histogram, in milliseconds.
fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency {
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            p999: 0.0,
            max: 0.0,
            mean: 0.0,
        };
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: round3(h.mean() / 1000.0),
    }
}

/// Judges a summary against the thresholds: every reason the run fails, or a pass.
pub fn verdict(summary: &Summary, thresholds: &Thresholds, aborted: Option<&str>) -> Verdict {
    let mut reasons = Vec::new();
    if let Some(why) = aborted {
        reasons.push(format!("stopped early: {why}"));
    }
    if summary.requests == 0 {
        reasons.push("no request was made".to_owned());
    }
    if summary.errors > 0 && summary.error_rate() > thresholds.max_error_rate {
        reasons.push(format!(
            "{} of {} requests failed ({:.2} %), more than the {:.2} % allowed",
            summary.errors,
            summary.requests,
            summary.error_rate() * 100.0,
            thresholds.max_error_rate * 100.0
        ));
    }
    if let Some(expected) = thresholds.expect_replicas
        && summary.replicas.len() < expected
    {
        reasons.push(format!(
            "{} replica(s) answered, expected at least {expected}",
            summary.replicas.len()
        ));
    }
    if let Some(min) = thresholds.min_share {
        if summary.replicas.is_empty() {
            reasons.push("no response named its replica (x-served-by)".to_owned());
        }
        for name in summary.replicas.keys() {
            let share = summary.share(name);
            if share < min {
                reasons.push(format!(
                    "replica {name} served {:.1} % of responses, less than the {:.1} % required",
                    share * 100.0,
                    min * 100.0
                ));
            }
        }
    }
    Verdict {
        pass: reasons.is_empty(),
        reasons,
    }
}

const BAR_WIDTH: usize = 20;

/// A bar of `BAR_WIDTH` cells, filled in proportion to `share`.
fn bar(share: f64) -> String {
    let filled = ((share.clamp(0.0, 1.0) * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    let mut bar = "█".repeat(filled);
    bar.push_str(&"·".repeat(BAR_WIDTH - filled));
    bar
}

/// The human report: what a person needs to see at a glance.
pub fn render(summary: &Summary) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let s = summary;
    let mode = if s.run.new_connection {
        "new connection per request"
    } else {
        "keep-alive"
    };
    let _ = writeln!(out, "{} {}", s.run.method, s.run.url);
    let _ = writeln!(
        out,
        "  {} workers, {mode}, {} connection(s)",
        s.run.concurrency, s.connections
    );
    let _ = writeln!(
        out,
        "  requests   {} in {:.2} s = {:.1} req/s",
        s.requests, s.duration_s, s.rps
    );
    let _ = writeln!(
        out,
        "  ok         {}   failed {} ({:.2} %){}",
        s.ok,
        s.errors,
        s.error_rate() * 100.0,
        if s.retries > 0 {
            format!("   retries {}", s.retries)
        } else {
            String::new()
        }
    );
    if !s.status.is_empty() {
        let codes: Vec<String> = s
            .status
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect();
        let _ = writeln!(out, "  status     {}", codes.join("   "));
    }
    for (kind, n) in s.error_kinds.iter().filter(|(_, n)| **n > 0) {
        let message = s.error_messages.get(kind).map(String::as_str).unwrap_or("");
        let _ = writeln!(out, "  error      {}: {n}   e.g. {message}", kind.as_str());
    }
    let l = &s.latency_ms;
    if s.responses() > 0 {
        let _ = writeln!(
            out,
            "  latency    p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
    } else {
        let _ = writeln!(out, "  latency    no response to measure");
    }
    if !s.replicas.is_empty() {
        let width = s
            .replicas
            .keys()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(7);
        let _ = writeln!(out, "  replicas   {} answered", s.replicas.len());
        for (name, count) in &s.replicas {
            let share = s.share(name);
            let version = s
                .replica_versions
                .get(name)
                .map(String::as_str)
                .unwrap_or("-");
            let _ = writeln!(
                out,
                "    {name:<width$}  {count:>8}  {:>5.1} %  {}  {version}",
                share * 100.0,
                bar(share)
            );
        }
    }
    if !s.machines.is_empty() {
        let width = s
            .machines
            .keys()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(7);
        let _ = writeln!(out, "  machines   {} answered", s.machines.len());
        for (machine, count) in &s.machines {
            let share = s.machine_share(machine);
            let on_it: Vec<&str> = s
                .replica_machines
                .iter()
                .filter(|(_, m)| *m == machine)
                .map(|(replica, _)| replica.as_str())
                .collect();
            let _ = writeln!(
                out,
                "    {machine:<width$}  {count:>8}  {:>5.1} %  {}  {}",
                share * 100.0,
                bar(share),
                on_it.join(", ")
            );
        }
    }
    if s.unidentified > 0 {
        let _ = writeln!(
            out,
            "  unnamed    {} response(s) without x-served-by",
            s.unidentified
        );
    }
    if s.versions.len() > 1 {
        let versions: Vec<String> = s
            .versions
            .iter()
            .map(|(v, n)| format!("{v}: {n}"))
            .collect();
        let _ = writeln!(out, "  versions   {}", versions.join("   "));
    }
    if s.verdict.pass {
        let _ = writeln!(out, "PASS");
    } else {
        let _ = writeln!(out, "FAIL");
        for reason in &s.verdict.reasons {
            let _ = writeln!(out, "  - {reason}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            url: "http://127.0.0.1:5000/".to_owned(),
            method: "GET".to_owned(),
            concurrency: 2,
            new_connection: false,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tally() -> Tally {
        Tally::new(Duration::from_secs(10))
    }

    fn named<'a>(replica: Option<&'a str>, version: Option<&'a str>) -> Identity<'a> {
        Identity {
            replica: replica.map(str::as_bytes),
            version: version.map(str::as_bytes),
            machine: None,
        }
    }

    fn on_machine<'a>(replica: &'a str, machine: &'a str) -> Identity<'a> {
        Identity {
            replica: Some(replica.as_bytes()),
            version: Some(b"1.0.0"),
            machine: Some(machine.as_bytes()),
        }
    }

    #[test]
    fn responses_are_counted_per_machine_beside_per_replica() {
        let mut a = tally();
        a.record_response(200, on_machine("web.1", "node-1"), ms(1));
        a.record_response(200, on_machine("web.2", "node-2"), ms(1));
        let mut b = tally();
        b.record_response(200, on_machine("web.1", "node-1"), ms(1));
        b.record_response(200, on_machine("web.4", "node-1"), ms(1));
        a.merge(b);
        let s = summary(&a, &Thresholds::default());
        assert_eq!(s.machines["node-1"], 3);
        assert_eq!(s.machines["node-2"], 1);
        assert_eq!(s.replica_machines["web.4"], "node-1");
        assert!((s.machine_share("node-1") - 0.75).abs() < 1e-9);
        let json: serde_json::Value = serde_json::from_str(&s.to_json()).expect("valid JSON");
        assert_eq!(json["machines"]["node-2"], 1);
        assert_eq!(json["replica_machines"]["web.2"], "node-2");
        let text = render(&s);
        assert!(text.contains("machines   2 answered"), "{text}");
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("node-1"))
            .expect("a line for node-1");
        assert!(
            line.contains("75.0 %") && line.contains("web.1, web.4"),
            "{line}"
        );
    }

    #[test]
    fn a_run_without_machine_names_reports_no_machines() {
        let mut t = tally();
        t.record_response(200, named(Some("a"), Some("1")), ms(1));
        let s = summary(&t, &Thresholds::default());
        assert!(s.machines.is_empty() && s.replica_machines.is_empty());
        assert!(!render(&s).contains("machines"));
    }

    fn summary(tally: &Tally, thresholds: &Thresholds) -> Summary {
        Summary::new(info(), tally, Duration::from_secs(2), thresholds, None)
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut t = tally();
        for i in 1..=1000 {
            t.record_response(200, Identity::default(), Duration::from_micros(i * 1000));
        }
        let s = summary(&t, &Thresholds::default());
        // Three significant figures: each value is within 0.1 % of the exact percentile.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(s.latency_ms.p50, 500.0), "p50 {}", s.latency_ms.p50);
        assert!(close(s.latency_ms.p90, 900.0), "p90 {}", s.latency_ms.p90);
        assert!(close(s.latency_ms.p99, 990.0), "p99 {}", s.latency_ms.p99);
        assert!(
            close(s.latency_ms.p999, 999.0),
            "p999 {}",
            s.latency_ms.p999
        );
        assert!(close(s.latency_ms.max, 1000.0), "max {}", s.latency_ms.max);
        assert_eq!(s.rps, 500.0);
        assert_eq!(s.duration_s, 2.0);
    }

    #[test]
    fn latencies_longer_than_the_histogram_are_clamped_not_lost() {
        let mut t = Tally::new(ms(100));
        t.record_response(200, Identity::default(), Duration::from_secs(60));
        let s = summary(&t, &Thresholds::default());
        assert_eq!(s.requests, 1);
        assert!(
            s.latency_ms.max >= 99.0 && s.latency_ms.max <= 101.0,
            "{}",
            s.latency_ms.max
        );
    }

    #[test]
    fn merged_tallies_add_up_counts_replicas_versions_and_latencies() {
        let mut a = tally();
        a.record_response(200, named(Some("alpha"), Some("1.0.0")), ms(1));
        a.record_response(500, named(Some("beta"), Some("1.0.0")), ms(2));
        a.record_error(ErrorKind::Refused, || "first refusal".to_owned());
        a.record_retry();
        a.record_connection();
        let mut b = tally();
        b.record_response(200, named(Some("alpha"), Some("1.1.0")), ms(3));
        b.record_response(204, Identity::default(), ms(4));
        b.record_error(ErrorKind::Refused, || "second refusal".to_owned());
        b.record_error(ErrorKind::Timeout, || "too slow".to_owned());
        b.record_connection();
        a.merge(b);

        let s = summary(&a, &Thresholds::default());
        assert_eq!(s.requests, 7);
        assert_eq!(s.ok, 3);
        assert_eq!(s.errors, 4);
        assert_eq!(s.status, BTreeMap::from([(200, 2), (204, 1), (500, 1)]));
        assert_eq!(
            s.error_kinds,
            BTreeMap::from([
                (ErrorKind::Refused, 2),
                (ErrorKind::Reset, 0),
                (ErrorKind::Timeout, 1),
                (ErrorKind::ConnectTimeout, 0),
                (ErrorKind::Closed, 0),
                (ErrorKind::Other, 0),
            ])
        );
        assert_eq!(s.error_messages[&ErrorKind::Refused], "first refusal");
        assert_eq!(
            s.replicas,
            BTreeMap::from([("alpha".into(), 2), ("beta".into(), 1)])
        );
        assert_eq!(
            s.versions,
            BTreeMap::from([("1.0.0".into(), 2), ("1.1.0".into(), 1)])
        );
        assert_eq!(s.replica_versions["alpha"], "1.0.0,1.1.0");
        assert_eq!(s.replica_versions["beta"], "1.0.0");
        assert_eq!(s.unidentified, 1);
        assert_eq!(s.retries, 1);
        assert_eq!(s.connections, 2);
        assert!(
            (s.latency_ms.max - 4.0).abs() < 0.01,
            "max {}",
            s.latency_ms.max
        );
        assert_eq!(s.share("alpha"), 0.5);
    }

    #[test]
    fn a_clean_run_passes() {
        let mut t = tally();
        t.record_response(200, named(Some("a"), None), ms(1));
        t.record_response(301, named(Some("b"), None), ms(1));
        let s = summary(&t, &Thresholds::default());
        assert_eq!(
            s.verdict,
            Verdict {
                pass: true,
                reasons: vec![]
            }
        );
    }

    #[test]
    fn any_failure_fails_by_default_but_a_tolerated_rate_passes() {
        let mut t = tally();
        for _ in 0..99 {
            t.record_response(200, Identity::default(), ms(1));
        }
        t.record_response(503, Identity::default(), ms(1));
        let strict = summary(&t, &Thresholds::default());
        assert!(!strict.verdict.pass);
        assert!(strict.verdict.reasons[0].contains("1 of 100 requests failed"));

        let lenient = Thresholds {
            max_error_rate: 0.01,
            ..Thresholds::default()
        };
        assert!(summary(&t, &lenient).verdict.pass);
        let too_strict = Thresholds {
            max_error_rate: 0.009,
            ..Thresholds::default()
        };
        assert!(!summary(&t, &too_strict).verdict.pass);
    }

    #[test]
    fn transport_errors_count_as_failures() {
        let mut t = tally();
        t.record_response(200, Identity::default(), ms(1));
        t.record_error(ErrorKind::Reset, || "reset".to_owned());
        let s = summary(&t, &Thresholds::default());
        assert_eq!(s.errors, 1);
        assert!(!s.verdict.pass);
    }

    #[test]
    fn too_few_replicas_fail_the_expectation() {
        let mut t = tally();
        t.record_response(200, named(Some("a"), None), ms(1));
        t.record_response(200, named(Some("b"), None), ms(1));
        let want3 = Thresholds {
            expect_replicas: Some(3),
            ..Thresholds::default()
        };
        let s = summary(&t, &want3);
        assert!(!s.verdict.pass);
        assert_eq!(
            s.verdict.reasons,
            vec!["2 replica(s) answered, expected at least 3"]
        );
        let want2 = Thresholds {
            expect_replicas: Some(2),
            ..Thresholds::default()
        };
        assert!(summary(&t, &want2).verdict.pass);
    }

    #[test]
    fn a_replica_below_the_minimum_share_fails() {
        let mut t = tally();
        for _ in 0..3 {
            t.record_response(200, named(Some("busy"), None), ms(1));
        }
        t.record_response(200, named(Some("idle"), None), ms(1));
        let quarter = Thresholds {
            min_share: Some(0.25),
            ..Thresholds::default()
        };
        assert!(summary(&t, &quarter).verdict.pass);
        let third = Thresholds {
            min_share: Some(0.3),
            ..Thresholds::default()
        };
        let s = summary(&t, &third);
        assert!(!s.verdict.pass);
        assert_eq!(s.verdict.reasons.len(), 1);
        assert!(s.verdict.reasons[0].starts_with("replica idle served 25.0 %"));
    }

    #[test]
    fn a_share_requirement_without_named_replicas_fails() {
        let mut t = tally();
        t.record_response(200, Identity::default(), ms(1));
        let s = summary(
            &t,
            &Thresholds {
                min_share: Some(0.1),
                ..Thresholds::default()
            },
        );
        assert!(!s.verdict.pass);
    }

    #[test]
    fn an_empty_or_aborted_run_fails() {
        let t = tally();
        assert!(!summary(&t, &Thresholds::default()).verdict.pass);
        let mut t = tally();
        t.record_error(ErrorKind::Refused, || {
            "connection refused to 127.0.0.1:1".to_owned()
        });
        let s = Summary::new(
            info(),
            &t,
            ms(5),
            &Thresholds {
                max_error_rate: 1.0,
                ..Thresholds::default()
            },
            Some("target unreachable: connection refused to 127.0.0.1:1"),
        );
        assert_eq!(
            s.verdict.reasons,
            vec!["stopped early: target unreachable: connection refused to 127.0.0.1:1"]
        );
    }

    #[test]
    fn the_json_object_has_every_documented_key() {
        let mut t = tally();
        t.record_response(200, named(Some("a"), Some("1.0.0")), ms(1));
        t.record_error(ErrorKind::ConnectTimeout, || "slow".to_owned());
        let json: serde_json::Value =
            serde_json::from_str(&summary(&t, &Thresholds::default()).to_json()).expect("json");
        for key in [
            "url",
            "method",
            "concurrency",
            "new_connection",
            "requests",
            "ok",
            "errors",
            "status",
            "error_kinds",
            "error_messages",
            "replicas",
            "versions",
            "replica_versions",
            "unidentified",
            "latency_ms",
            "rps",
            "duration_s",
            "retries",
            "connections",
            "verdict",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["status"]["200"], 1);
        assert_eq!(json["error_kinds"]["connect_timeout"], 1);
        for kind in ErrorKind::ALL {
            assert!(
                json["error_kinds"][kind.as_str()].is_u64(),
                "{} always present",
                kind.as_str()
            );
        }
        assert_eq!(json["replica_versions"]["a"], "1.0.0");
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(json["latency_ms"][key].is_number(), "latency_ms.{key}");
        }
        assert_eq!(json["verdict"]["pass"], false);
        assert!(json["verdict"]["reasons"].is_array());
    }

    #[test]
    fn the_human_report_shows_shares_bars_and_reasons() {
        let mut t = tally();
        for _ in 0..3 {
            t.record_response(200, named(Some("replica-a"), Some("1.0.0")), ms(1));
        }
        t.record_response(200, named(Some("replica-b"), Some("1.0.0")), ms(1));
        t.record_error(ErrorKind::Refused, || {
            "connection refused to 127.0.0.1:9".to_owned()
        });
        let text = render(&summary(&t, &Thresholds::default()));
        assert!(text.contains("replica-a"), "{text}");
        assert!(text.contains(" 75.0 %"), "{text}");
        assert!(
            text.contains(&format!("{}{}", "█".repeat(15), "·".repeat(5))),
            "{text}"
        );
        assert!(
            text.contains("refused: 1   e.g. connection refused to 127.0.0.1:9"),
            "{text}"
        );
        assert!(text.contains("FAIL"), "{text}");
        assert!(text.contains("1 of 5 requests failed"), "{text}");
        assert!(text.contains("latency    p50 1.000"), "{text}");
    }

    #[test]
    fn a_report_without_responses_says_there_is_no_latency() {
        let mut t = tally();
        t.record_error(ErrorKind::Refused, || {
            "connection refused to 127.0.0.1:9".to_owned()
        });
        let text = render(&summary(&t, &Thresholds::default()));
        assert!(text.contains("latency    no response to measure"), "{text}");
    }

    #[test]
    fn bars_are_proportional_and_bounded() {
        assert_eq!(bar(0.0), "·".repeat(BAR_WIDTH));
        assert_eq!(bar(1.0), "█".repeat(BAR_WIDTH));
        assert_eq!(
            bar(0.5).chars().filter(|&c| c == '█').count(),
            BAR_WIDTH / 2
        );
        assert_eq!(bar(7.0).chars().count(), BAR_WIDTH);
    }
}
