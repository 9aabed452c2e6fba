//! The `h2c` section: `GET /` over cleartext HTTP/2 (prior knowledge), ours against nginx's
//! `http2` listener, by the main table's method (issue #18's "CPU per request ≤ 1.0× nginx").
//!
//! The load is `h2load` (nghttp2-client) pinned to the load CPU as wrk is, with the same clients
//! and streams per client for every server. Each round starts every server fresh in a rotating
//! order, warms it up, then sends a fixed number of requests; CPU per request is the server
//! tree's utime+stime over that run ÷ the requests that succeeded, and each figure is the median
//! over rounds. Latencies come from h2load's per-request log (`--log-file`), since its summary
//! gives only mean and spread. A run with a failed, errored or timed-out request, a status other
//! than 2xx, or a protocol other than h2c is an error, not a figure.
//!
//! Ours serves h2c on its public port; nginx needs a listener of its own for it (`@H2C_PORT@`
//! in bench/reference/nginx/nginx.conf), in the same process as the HTTP/1.1 one that
//! [`servers::start_timed`] polls.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::{
    Plan,
    load::{self, Measured, WrkOut},
    median, procfs,
    servers::{self, Kind, LOAD_CPU, Running, Spec},
};

/// Connections and concurrent streams on each: 64 connections as the main table's wrk, and 10
/// streams on each (well under both servers' limit of 128), so HTTP/2's multiplexing shows.
const CLIENTS: u32 = 64;
const STREAMS: u32 = 10;

/// Requests per warm-up and per measured run: a full run's measured run is ~10 s at the rate of
/// an idle 2-CPU machine, as the main table's.
fn requests(plan: &Plan) -> (u64, u64) {
    if plan.quick {
        (20_000, 100_000)
    } else {
        (100_000, 1_000_000)
    }
}

/// Where a server answers h2c: ours on its public port, nginx on its `http2` listener.
fn h2c_url(spec: &Spec) -> Option<String> {
    match (spec.kind, spec.name) {
        (Kind::Ours, _) => Some(spec.url("/")),
        (_, "nginx") => Some(format!("http://127.0.0.1:{}/", servers::PORT_NGINX_H2C)),
        _ => None,
    }
}

/// One h2load invocation.
#[derive(Debug, Clone)]
pub(crate) struct H2load {
    url: String,
    requests: u64,
    /// Per-request log (start, status, µs to the end of the response), for the percentiles.
    log_file: Option<PathBuf>,
}

impl H2load {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "-c".to_owned(),
            LOAD_CPU.to_string(),
            "h2load".into(),
            format!("-n{}", self.requests),
            format!("-c{CLIENTS}"),
            format!("-m{STREAMS}"),
        ];
        if let Some(log) = &self.log_file {
            a.push(format!("--log-file={}", log.display()));
        }
        a.push(self.url.clone());
        a
    }

    /// The command line as written in the results file.
    pub(crate) fn command_line(&self) -> String {
        let mut line = "taskset".to_owned();
        for a in self.args() {
            line.push(' ');
            line.push_str(&a);
        }
        line
    }

    /// The command, with the log of an earlier run removed: h2load appends to it.
    fn command(&self) -> Result<Command> {
        if let Some(log) = &self.log_file {
            match fs::remove_file(log) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", log.display()));
                }
                _ => {}
            }
        }
        let mut cmd = Command::new("taskset");
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    /// A generous bound: h2load at a thousandth of a fast server's rate, plus a margin.
    fn bound_seconds(&self) -> u32 {
        (self.requests / 1_000).clamp(30, 1_200) as u32
    }
}

/// What h2load's summary says.
#[derive(Debug, Clone, PartialEq)]
struct Summary {
    protocol: String,
    seconds: f64,
    rps: f64,
    total: u64,
    succeeded: u64,
    failed: u64,
    errored: u64,
    timeout: u64,
    status_2xx: u64,
}

/// `9.73s`, `981.21ms`, `512.00us` (h2load's `util::format_duration`) → seconds.
fn duration_seconds(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    number.parse::<f64>().ok().map(|v| v * scale)
}

/// `50000 total, 50000 started, 0 failed` → the count before `name`.
fn count(list: &str, name: &str) -> Option<u64> {
    list.split(',').find_map(|item| {
        let mut words = item.split_whitespace();
        let n = words.next()?.parse().ok()?;
        (words.next()? == name).then_some(n)
    })
}

/// Reads h2load's summary; a missing or malformed line is an error naming it.
fn parse_summary(stdout: &str) -> Result<Summary> {
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("h2load printed no `{prefix}` line:\n{stdout}"))
    };
    let protocol = line("Application protocol:")?.to_owned();
    // finished in 9.73s, 5139.57 req/s, 452.03KB/s
    let finished = line("finished in")?;
    let mut parts = finished.split(',').map(str::trim);
    let seconds = parts
        .next()
        .and_then(duration_seconds)
        .with_context(|| format!("no duration in `finished in {finished}`"))?;
    let rps = parts
        .next()
        .and_then(|p| p.strip_suffix(" req/s"))
        .and_then(|p| p.parse::<f64>().ok())
        .with_context(|| format!("no req/s in `finished in {finished}`"))?;
    // requests: 50000 total, 50000 started, 50000 done, 50000 succeeded, 0 failed, 0 errored, 0 timeout
    let requests = line("requests:")?;
    let get = |name: &str| {
        count(requests, name).with_context(|| format!("no `{name}` in `requests: {requests}`"))
    };
    let statuses = line("status codes:")?;
    Ok(Summary {
        protocol,
        seconds,
        rps,
        total: get("total")?,
        succeeded: get("succeeded")?,
        failed: get("failed")?,
        errored: get("errored")?,
        timeout: get("timeout")?,
        status_2xx: count(statuses, "2xx")
            .with_context(|| format!("no `2xx` in `status codes: {statuses}`"))?,
    })
}

impl Summary {
    /// Only a run where every request came back 2xx over h2c is a figure.
    fn check(&self) -> Result<()> {
        if self.protocol != "h2c" {
            bail!(
                "h2load spoke `{}`, not h2c: the server did not take HTTP/2 prior knowledge",
                self.protocol
            );
        }
        if self.failed + self.errored + self.timeout > 0 || self.succeeded != self.total {
            bail!(
                "h2load: {} of {} requests succeeded ({} failed, {} errored, {} timed out)",
                self.succeeded,
                self.total,
                self.failed,
                self.errored,
                self.timeout
            );
        }
        if self.status_2xx != self.succeeded {
            bail!(
                "h2load: {} of {} answers were 2xx",
                self.status_2xx,
                self.succeeded
            );
        }
        Ok(())
    }
}

/// Latency percentiles (µs) from h2load's `--log-file`: one line per request, tab-separated
/// start time (µs since the epoch), status and µs until the end of the response.
#[derive(Debug, Clone, PartialEq)]
struct Latencies {
    count: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

fn parse_log(text: &str) -> Result<Latencies> {
    let mut us = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [_, status, elapsed] = fields[..] else {
            bail!("h2load's log, line {}: not 3 columns: `{line}`", n + 1);
        };
        if !status.starts_with('2') {
            bail!("h2load's log, line {}: status {status}", n + 1);
        }
        let elapsed: u64 = elapsed
            .parse()
            .with_context(|| format!("h2load's log, line {}: `{line}`", n + 1))?;
        us.push(elapsed);
    }
    if us.is_empty() {
        bail!("h2load's log is empty");
    }
    us.sort_unstable();
    // Nearest rank: the smallest value with at least q of the requests at or below it.
    let at = |q: f64| us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1] as f64;
    Ok(Latencies {
        count: us.len() as u64,
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
    })
}

/// Reads h2load's output and log into the figures the rest of the bench uses.
fn figures(out: &std::process::Output, log_file: Option<&Path>) -> Result<WrkOut> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load exited with {}:\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let summary = parse_summary(&stdout)?;
    summary.check()?;
    let mut figures = WrkOut {
        requests: summary.succeeded,
        seconds: summary.seconds,
        ..WrkOut::default()
    };
    if let Some(path) = log_file {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading h2load's log {}", path.display()))?;
        let lat = parse_log(&text)?;
        if lat.count != summary.succeeded {
            bail!(
                "h2load's log has {} requests, its summary {} succeeded",
                lat.count,
                summary.succeeded
            );
        }
        (figures.p50_us, figures.p99_us, figures.p999_us) = (lat.p50_us, lat.p99_us, lat.p999_us);
    }
    Ok(figures)
}

/// Runs h2load and waits for it (the warm-up).
fn run_load(h2: &H2load) -> Result<WrkOut> {
    let mut child = h2
        .command()?
        .spawn()
        .context("starting h2load (apt-get install nghttp2-client)")?;
    load::wait_bounded(&mut child, "h2load", h2.bound_seconds(), |_| {})?;
    figures(&child.wait_with_output()?, h2.log_file.as_deref())
}

/// Runs h2load against `server` with the server's CPU read before and after and its RSS
/// sampled meanwhile, as [`load::measure`] does for wrk.
fn measure(server: &Running, h2: &H2load) -> Result<Measured> {
    let cpu_before = procfs::cpu_seconds(&server.pids());
    let mut child = h2
        .command()?
        .spawn()
        .context("starting h2load (apt-get install nghttp2-client)")?;
    let h2load_pid = [child.id()];
    let h2load_cpu_before = procfs::cpu_seconds(&h2load_pid);
    let mut h2load_cpu_seconds = 0.0;
    let mut max_rss_kib = 0;
    load::wait_bounded(&mut child, "h2load", h2.bound_seconds(), |_| {
        max_rss_kib = max_rss_kib.max(procfs::status_kib(&server.pids(), "VmRSS:"));
        let now = procfs::cpu_seconds(&h2load_pid);
        if now > 0.0 {
            h2load_cpu_seconds = now - h2load_cpu_before;
        }
    })?;
    let cpu_after = procfs::cpu_seconds(&server.pids());
    let wrk = figures(&child.wait_with_output()?, h2.log_file.as_deref())?;
    Ok(Measured {
        wrk,
        cpu_seconds: cpu_after - cpu_before,
        max_rss_kib,
        wrk_cpu_seconds: h2load_cpu_seconds,
    })
}

/// One server's rounds, or why it could not be measured.
#[derive(Debug, Clone)]
pub(crate) struct H2cRow {
    name: String,
    runs: Vec<Measured>,
    failure: Option<String>,
}

/// The section's results: the load's command line and a row per server.
#[derive(Debug, Clone)]
pub(crate) struct H2cResult {
    line: String,
    rounds: usize,
    rows: Vec<H2cRow>,
}

/// Ours (both builds) and nginx, `rounds` times in a rotating order, each started fresh.
pub(crate) fn run(plan: &Plan, specs: &[Spec], logs: &Path) -> H2cResult {
    let (warmup, measured) = requests(plan);
    let specs: Vec<(&Spec, String)> = specs
        .iter()
        .filter_map(|s| Some((s, h2c_url(s)?)))
        .collect();
    let mut rows: Vec<H2cRow> = specs
        .iter()
        .map(|(s, _)| H2cRow {
            name: s.name.to_owned(),
            runs: vec![],
            failure: None,
        })
        .collect();
    let line = specs.first().map_or_else(String::new, |(spec, url)| {
        let h2 = H2load {
            url: url.clone(),
            requests: measured,
            log_file: Some(log_file(logs, spec)),
        };
        format!(
            "{}   (after a warmup with the same line, -n{warmup} and no log)",
            h2.command_line()
                .replace(&format!("{}/", crate::project_root().display()), "")
        )
    });
    for round in 0..plan.rounds {
        let n = rows.len();
        for k in 0..n {
            let i = (k + round) % n;
            if rows[i].failure.is_some() {
                continue;
            }
            let (spec, url) = &specs[i];
            eprintln!(
                "bench: h2c round {}/{}: {}",
                round + 1,
                plan.rounds,
                spec.name
            );
            match h2c_round(spec, url, warmup, measured, logs) {
                Ok(m) => rows[i].runs.push(m),
                Err(e) => {
                    eprintln!("bench: h2c {} failed: {e:#}", spec.name);
                    rows[i].failure = Some(format!("{e:#}"));
                }
            }
        }
    }
    H2cResult {
        line,
        rounds: plan.rounds,
        rows,
    }
}

fn h2c_round(spec: &Spec, url: &str, warmup: u64, measured: u64, logs: &Path) -> Result<Measured> {
    let (_, server) = servers::start_timed(spec, &logs.join(format!("{}-h2c.log", spec.name)))?;
    let result = run_load(&H2load {
        url: url.to_owned(),
        requests: warmup,
        log_file: None,
    })
    .and_then(|_| {
        measure(
            &server,
            &H2load {
                url: url.to_owned(),
                requests: measured,
                log_file: Some(log_file(logs, spec)),
            },
        )
    });
    server.stop()?;
    result
}

/// Where h2load logs each request of a server's measured run.
fn log_file(logs: &Path, spec: &Spec) -> PathBuf {
    logs.join(format!("{}-h2load.tsv", spec.name))
}

/// Median figures of one server.
struct Row<'a> {
    name: &'a str,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    cpu_rounds: Vec<f64>,
    server_util: f64,
    h2load_util: f64,
}

fn rows(r: &H2cResult) -> Vec<Row<'_>> {
    r.rows
        .iter()
        .filter(|x| x.failure.is_none() && !x.runs.is_empty())
        .map(|x| {
            let med = |f: fn(&Measured) -> f64| median(x.runs.iter().map(f).collect());
            Row {
                name: &x.name,
                rps: med(|m| m.wrk.rps()),
                p50_us: med(|m| m.wrk.p50_us),
                p99_us: med(|m| m.wrk.p99_us),
                cpu_us: med(Measured::cpu_us_per_request),
                cpu_rounds: x.runs.iter().map(Measured::cpu_us_per_request).collect(),
                server_util: med(Measured::server_util),
                h2load_util: med(Measured::wrk_util),
            }
        })
        .collect()
}

/// The verdict of issue #18's bar: CPU per request ≤ 1.0× nginx's, over h2c.
fn verdict(ratio: f64) -> &'static str {
    if !ratio.is_finite() {
        "not measured"
    } else if ratio <= 1.0 {
        "**pass**"
    } else {
        "**miss**"
    }
}

/// The section of the results file.
pub(crate) fn markdown(w: &mut String, r: Option<&H2cResult>) {
    let _ = writeln!(w, "\n## GET / over h2c (cleartext HTTP/2): ours vs nginx\n");
    let Some(r) = r else {
        let _ = writeln!(
            w,
            "Not run in this mode (it runs in the full run, or with `--only h2c`)."
        );
        return;
    };
    let _ = writeln!(
        w,
        "Prior knowledge (no Upgrade), {CLIENTS} connections × {STREAMS} concurrent streams, the same for every server; \
         nginx on its `listen ... http2` listener (bench/reference/nginx/nginx.conf). {} round(s), the order rotating, \
         each server started fresh; medians over rounds. CPU µs per request = the server tree's utime+stime over the \
         measured run ÷ the requests h2load saw succeed; p50/p99 from h2load's per-request log.\n",
        r.rounds
    );
    let _ = writeln!(w, "```\n{}\n```\n", r.line);
    let rows = rows(r);
    let nginx = rows.iter().find(|x| x.name == "nginx");
    let ratio = |a: f64, b: Option<f64>| match b {
        Some(b) if b > 0.0 && a.is_finite() => a / b,
        _ => f64::NAN,
    };
    let num = |v: f64, d: usize| {
        if v.is_finite() {
            format!("{v:.d$}")
        } else {
            "–".into()
        }
    };
    let _ = writeln!(
        w,
        "| server | req/s | p50 ms | p99 ms | CPU µs/req | CPU µs/req by round | CPU/req ÷ nginx | req/s ÷ nginx | server CPU | h2load CPU |\n|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    for x in &rows {
        let by_round: Vec<String> = x.cpu_rounds.iter().map(|v| num(*v, 2)).collect();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} % | {} % |",
            x.name,
            num(x.rps, 0),
            num(x.p50_us / 1e3, 2),
            num(x.p99_us / 1e3, 2),
            num(x.cpu_us, 2),
            by_round.join(", "),
            num(ratio(x.cpu_us, nginx.map(|n| n.cpu_us)), 2),
            num(ratio(x.rps, nginx.map(|n| n.rps)), 2),
            num(x.server_util * 100.0, 0),
            num(x.h2load_util * 100.0, 0),
        );
    }
    for x in r.rows.iter().filter(|x| x.failure.is_some()) {
        let _ = writeln!(
            w,
            "\n{}: not measured: {}",
            x.name,
            x.failure.as_deref().unwrap_or_default()
        );
    }
    let _ = writeln!(
        w,
        "\n| target | issue | measured | verdict |\n|---|---|---|---|"
    );
    for x in rows.iter().filter(|x| x.name.starts_with("ours-")) {
        let q = ratio(x.cpu_us, nginx.map(|n| n.cpu_us));
        let _ = writeln!(
            w,
            "| {}: h2c CPU/req ≤ 1.0× nginx | #18 | {} | {} |",
            x.name,
            if q.is_finite() {
                format!("{q:.2}×")
            } else {
                "–".into()
            },
            verdict(q)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "starting benchmark...
spawning thread #0: 64 total client(s). 50000 total requests
Application protocol: h2c
progress: 10% done
progress: 100% done

finished in 981.21ms, 50957.50 req/s, 4.38MB/s
requests: 50000 total, 50000 started, 50000 done, 50000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 50000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 4.29MB (4503136) total, 2.86MB (3000000) headers (space savings 47.37%), 585.94KB (600000) data
                     min         max         mean         sd        +/- sd
time for request:      122us    624.88ms    108.71ms    109.78ms    87.76%
req/s           :      80.29       90.70       83.00        2.87    82.81%
";

    #[test]
    fn the_summary_gives_duration_rate_and_every_count() {
        let s = parse_summary(OUTPUT).expect("h2load's own output");
        assert_eq!(s.protocol, "h2c");
        assert!((s.seconds - 0.98121).abs() < 1e-9);
        assert!((s.rps - 50957.5).abs() < 1e-9);
        assert_eq!(
            (s.total, s.succeeded, s.failed, s.errored, s.timeout),
            (50000, 50000, 0, 0, 0)
        );
        assert_eq!(s.status_2xx, 50000);
        s.check().expect("a clean run is a figure");
    }

    #[test]
    fn durations_in_seconds_milliseconds_and_microseconds_are_read() {
        assert_eq!(duration_seconds("9.73s"), Some(9.73));
        assert_eq!(duration_seconds("12.00ms"), Some(0.012));
        assert_eq!(duration_seconds("512.00us"), Some(0.000512));
        assert_eq!(duration_seconds("soon"), None);
    }

    #[test]
    fn a_run_with_failed_requests_is_an_error_not_a_figure() {
        let failed = OUTPUT.replace("50000 succeeded, 0 failed", "49990 succeeded, 10 failed");
        let err = parse_summary(&failed)
            .expect("parses")
            .check()
            .expect_err("10 failed");
        assert!(err.to_string().contains("49990 of 50000"), "{err}");
        let timed_out = OUTPUT.replace("0 timeout", "3 timeout");
        assert!(parse_summary(&timed_out).expect("parses").check().is_err());
    }

    #[test]
    fn answers_other_than_2xx_or_another_protocol_are_errors() {
        let not_found = OUTPUT.replace("50000 2xx, 0 3xx, 0 4xx", "0 2xx, 0 3xx, 50000 4xx");
        let err = parse_summary(&not_found)
            .expect("parses")
            .check()
            .expect_err("all 4xx");
        assert!(
            err.to_string().contains("0 of 50000 answers were 2xx"),
            "{err}"
        );
        let h1 = OUTPUT.replace("protocol: h2c", "protocol: http/1.1");
        assert!(parse_summary(&h1).expect("parses").check().is_err());
    }

    #[test]
    fn output_without_its_summary_lines_is_an_error_naming_the_line() {
        let cut = OUTPUT.replace("requests: 50000 total", "requests: lots");
        let err = parse_summary(&cut).expect_err("no total");
        assert!(err.to_string().contains("no `total`"), "{err}");
        let err = parse_summary("starting benchmark...\nApplication protocol: h2c\n")
            .expect_err("no summary");
        assert!(err.to_string().contains("finished in"), "{err}");
    }

    #[test]
    fn the_log_gives_nearest_rank_percentiles() {
        let log: String = (1..=1000)
            .map(|i| format!("1796138804013057\t200\t{i}\n"))
            .collect();
        let lat = parse_log(&log).expect("a well-formed log");
        assert_eq!(lat.count, 1000);
        assert_eq!((lat.p50_us, lat.p99_us, lat.p999_us), (500.0, 990.0, 999.0));
        let one = parse_log("1\t200\t42\n").expect("one request");
        assert_eq!((one.p50_us, one.p99_us), (42.0, 42.0));
    }

    #[test]
    fn a_log_with_a_bad_line_or_status_or_nothing_is_an_error() {
        assert!(parse_log("1\t200\n").is_err());
        assert!(parse_log("1\t200\tfast\n").is_err());
        assert!(parse_log("1\t503\t10\n").is_err());
        assert!(parse_log("").is_err());
    }

    #[test]
    fn a_measured_run_starts_from_an_empty_log_since_h2load_appends() {
        let dir = std::env::temp_dir().join(format!("h2c-log-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("a scratch directory");
        let log = dir.join("ours-h2load.tsv");
        fs::write(&log, "1\t200\t10\n").expect("an earlier run's log");
        let h2 = H2load {
            url: "http://127.0.0.1:1/".into(),
            requests: 1,
            log_file: Some(log.clone()),
        };
        let cmd = h2.command().expect("the command");
        assert!(!log.exists(), "the earlier log is gone");
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(
            args,
            [
                "-c",
                "1",
                "h2load",
                "-n1",
                "-c64",
                "-m10",
                &format!("--log-file={}", log.display()),
                "http://127.0.0.1:1/"
            ]
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_verdict_is_against_one_times_nginx() {
        assert_eq!(verdict(0.98), "**pass**");
        assert_eq!(verdict(1.0), "**pass**");
        assert_eq!(verdict(1.02), "**miss**");
        assert_eq!(verdict(f64::NAN), "not measured");
    }
}
