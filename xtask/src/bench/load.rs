//! Load generation with `wrk` pinned to the load CPU, and the server-side figures taken around
//! it: CPU seconds from `/proc` (utime+stime delta of the server's process tree) and RSS sampled
//! while the load runs.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    procfs,
    servers::{LOAD_CPU, Running},
};

/// One wrk invocation.
#[derive(Debug, Clone)]
pub(crate) struct Wrk {
    pub(crate) url: String,
    pub(crate) connections: u32,
    pub(crate) seconds: u32,
    /// `POST` with a body of this many bytes; `None` means `GET`.
    pub(crate) post_body: Option<usize>,
    /// `Connection: close` on every request: each one on a new connection.
    pub(crate) close: bool,
}

impl Wrk {
    pub(crate) fn get(url: String, connections: u32, seconds: u32) -> Wrk {
        Wrk {
            url,
            connections,
            seconds,
            post_body: None,
            close: false,
        }
    }

    fn args(&self) -> Vec<String> {
        let script = crate::project_root().join("bench/wrk/report.lua");
        let mut a = vec![
            "-c".to_owned(),
            LOAD_CPU.to_string(),
            "wrk".into(),
            "-t1".into(),
            format!("-c{}", self.connections),
            format!("-d{}s", self.seconds),
            "--timeout".into(),
            "5s".into(),
            "--latency".into(),
            "-s".into(),
            script.display().to_string(),
        ];
        if self.close {
            a.extend(["-H".into(), "Connection: close".into()]);
        }
        a.push(self.url.clone());
        if let Some(bytes) = self.post_body {
            a.extend(["--".into(), "POST".into(), bytes.to_string()]);
        }
        a
    }

    /// The command line as written in the results file.
    pub(crate) fn command_line(&self) -> String {
        let mut line = "taskset".to_owned();
        for a in self.args() {
            let a = a.replace(&format!("{}/", crate::project_root().display()), "");
            line.push(' ');
            if a.contains(' ') {
                line.push_str(&format!("'{a}'"));
            } else {
                line.push_str(&a);
            }
        }
        line
    }
}

/// What wrk measured (its Lua `done()` line).
#[derive(Debug, Clone, Default)]
pub(crate) struct WrkOut {
    pub(crate) requests: u64,
    pub(crate) seconds: f64,
    pub(crate) errors: u64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
}

impl WrkOut {
    pub(crate) fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// A wrk run against a server, with the server's cost.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    pub(crate) wrk: WrkOut,
    pub(crate) cpu_seconds: f64,
    /// Highest RSS (KiB, summed over the tree) seen while the load ran.
    pub(crate) max_rss_kib: u64,
    /// CPU seconds wrk itself used (last sample before it exited): with `cpu_seconds` it says
    /// which side bounds the rate — a load generator at ~100 % of its core caps req/s.
    pub(crate) wrk_cpu_seconds: f64,
}

impl Measured {
    /// Share of one core the server used during the run (1.0 = its core was saturated).
    pub(crate) fn server_util(&self) -> f64 {
        self.cpu_seconds / self.wrk.seconds.max(1e-9)
    }

    /// Share of one core wrk used during the run.
    pub(crate) fn wrk_util(&self) -> f64 {
        self.wrk_cpu_seconds / self.wrk.seconds.max(1e-9)
    }

    pub(crate) fn cpu_us_per_request(&self) -> f64 {
        if self.wrk.requests == 0 {
            return f64::NAN;
        }
        self.cpu_seconds * 1e6 / self.wrk.requests as f64
    }
}

/// Runs wrk and waits for it, bounded by its duration plus a margin.
pub(crate) fn run(spec: &Wrk) -> Result<WrkOut> {
    let mut child = Command::new("taskset")
        .args(spec.args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk (apt-get install wrk)")?;
    wait_bounded(&mut child, "wrk", spec.seconds + 15, |_| {})?;
    parse(child)
}

/// Runs wrk against `server`, reading the server's CPU time before and after and sampling its RSS
/// every 100 ms meanwhile.
pub(crate) fn measure(server: &Running, spec: &Wrk) -> Result<Measured> {
    let cpu_before = procfs::cpu_seconds(&server.pids());
    let mut child = Command::new("taskset")
        .args(spec.args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk (apt-get install wrk)")?;
    let wrk_pid = [child.id()];
    let wrk_cpu_before = procfs::cpu_seconds(&wrk_pid);
    let mut wrk_cpu_seconds = 0.0;
    let mut max_rss_kib = 0;
    wait_bounded(&mut child, "wrk", spec.seconds + 15, |_| {
        max_rss_kib = max_rss_kib.max(procfs::status_kib(&server.pids(), "VmRSS:"));
        let now = procfs::cpu_seconds(&wrk_pid);
        if now > 0.0 {
            wrk_cpu_seconds = now - wrk_cpu_before;
        }
    })?;
    // The tree is re-read: a worker that started during the run counts too.
    let cpu_after = procfs::cpu_seconds(&server.pids());
    let wrk = parse(child)?;
    Ok(Measured {
        wrk,
        cpu_seconds: cpu_after - cpu_before,
        max_rss_kib,
        wrk_cpu_seconds,
    })
}

/// Waits for a load generator, calling `each_tick` every 100 ms; kills it after `limit_s`.
pub(crate) fn wait_bounded(
    child: &mut std::process::Child,
    what: &str,
    limit_s: u32,
    mut each_tick: impl FnMut(u32),
) -> Result<()> {
    let limit_ticks = limit_s * 10;
    for tick in 0..limit_ticks {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        each_tick(tick);
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("{what} did not finish within {limit_s} s")
}

fn parse(child: std::process::Child) -> Result<WrkOut> {
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("WRK_JSON ")) else {
        bail!(
            "wrk printed no result line (exit {}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    parse_line(line)
}

/// One `WRK_JSON {...}` payload (see `bench/wrk/report.lua`) → the figures.
fn parse_line(line: &str) -> Result<WrkOut> {
    let v: Value = serde_json::from_str(line).with_context(|| format!("parsing `{line}`"))?;
    let num = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    Ok(WrkOut {
        requests: num("requests") as u64,
        seconds: num("duration_us") / 1e6,
        errors: (num("connect_errors")
            + num("read_errors")
            + num("write_errors")
            + num("status_errors")
            + num("timeouts")) as u64,
        p50_us: num("p50_us"),
        p99_us: num("p99_us"),
        p999_us: num("p999_us"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lua_line_becomes_figures_with_every_error_kind_counted() {
        let out = parse_line(
            r#"{"requests":1000,"duration_us":2000000,"bytes":5,"connect_errors":1,"read_errors":2,"write_errors":3,"status_errors":4,"timeouts":5,"p50_us":10,"p90_us":20,"p99_us":30,"p999_us":40,"max_us":50,"mean_us":12.5}"#,
        )
        .expect("a valid line");
        assert_eq!(out.requests, 1000);
        assert_eq!(out.errors, 15);
        assert!((out.rps() - 500.0).abs() < 1e-9);
        assert_eq!((out.p50_us, out.p99_us, out.p999_us), (10.0, 30.0, 40.0));
    }

    #[test]
    fn a_broken_line_is_an_error_not_zeroes() {
        assert!(parse_line("{\"requests\":").is_err());
    }
}
