//! Instructions per `GET /`, counted by valgrind's callgrind: the user-space cost of a request
//! with little of the machine's noise. CPU time per request moves by several percent from one
//! run to the next here, and its kernel part (loopback TCP) is the same for every server; two
//! counts of the same binary agree within about 1 % whatever else the machine does (what
//! varies is how many requests each wakeup finds ready), so they say how much work each
//! server's own code does per request.
//!
//! Each server runs under callgrind with instrumentation off, is warmed up, and is counted
//! over a `wrk` run between `callgrind_control -i on` and `-i off`; the count divided by the
//! requests wrk completed is the figure. Counted with 8 connections: callgrind makes the server
//! ~50× slower, and a few connections keep it saturated without wrk timing out. Requests are
//! counted on kept-alive connections ([`count`]) or each on a connection of its own
//! ([`count_new_connections`]: accepting, setting up and closing it included).

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use super::{
    load::{self, Wrk},
    servers::{self, Spec},
};

/// Connections and seconds of the counted run.
const CONNECTIONS: u32 = 8;
const SECONDS: u32 = 4;

/// One server's count.
#[derive(Debug, Clone)]
pub(crate) struct Count {
    pub(crate) per_request: f64,
    pub(crate) requests: u64,
    /// How the server ran and how it was loaded, as a person would type them.
    pub(crate) server: String,
    pub(crate) load: String,
}

/// Counts the instructions `spec` executes per `GET /` on kept-alive connections (see the
/// module docs).
pub(crate) fn count(spec: &Spec, logs: &Path) -> Result<Count> {
    counted(spec, logs, "", |seconds| {
        Wrk::get(spec.url("/"), CONNECTIONS, seconds)
    })
}

/// Counts the instructions `spec` executes per `GET /` with `Connection: close`: a connection
/// accepted, served and closed for every request.
pub(crate) fn count_new_connections(spec: &Spec, logs: &Path) -> Result<Count> {
    counted(spec, logs, "-newconn", |seconds| Wrk {
        close: true,
        ..Wrk::get(spec.url("/"), CONNECTIONS, seconds)
    })
}

/// Runs `spec` under callgrind and counts it over the load `wrk(seconds)` makes; `label` keeps
/// the profiles of different loads apart.
fn counted(spec: &Spec, logs: &Path, label: &str, wrk: impl Fn(u32) -> Wrk) -> Result<Count> {
    let out = servers::work_dir().join(format!("callgrind-{}{label}.out", spec.name));
    let dump = out.with_extension("out.1");
    for stale in [&out, &dump] {
        let _ = fs::remove_file(stale);
    }
    let mut under = spec.clone();
    under.program = "valgrind".into();
    under.args = vec![
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        format!("--callgrind-out-file={}", out.display()),
        spec.program.display().to_string(),
    ];
    under.args.extend(spec.args.iter().cloned());
    under.args.extend(spec.one_process_args.iter().cloned());
    let log = logs.join(format!("{}{label}-callgrind.log", spec.name));
    let (_, server) = servers::start_timed(&under, &log)?;
    let pid = server.pid().to_string();
    let counted = (|| {
        load::run(&wrk(1))?;
        callgrind_control(&["-i", "on", &pid])?;
        let done = load::run(&wrk(SECONDS));
        callgrind_control(&["-i", "off", &pid])?;
        let done = done?;
        callgrind_control(&["--dump", &pid])?;
        let text =
            fs::read_to_string(&dump).with_context(|| format!("reading {}", dump.display()))?;
        let total = totals(&text).with_context(|| format!("no totals in {}", dump.display()))?;
        if done.requests == 0 {
            bail!(
                "wrk completed no request under callgrind; see {}",
                log.display()
            );
        }
        Ok(Count {
            per_request: total as f64 / done.requests as f64,
            requests: done.requests,
            server: under
                .command_line()
                .replace(&servers::work_dir().display().to_string(), "target/bench"),
            load: wrk(SECONDS).command_line(),
        })
    })();
    server.stop()?;
    counted
}

/// Runs `callgrind_control` (valgrind's remote control for a running callgrind) with `args`.
fn callgrind_control(args: &[&str]) -> Result<()> {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running callgrind_control (apt-get install valgrind)")?;
    if !status.success() {
        bail!("callgrind_control {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The instruction total of a callgrind profile: its `totals:` line (one event, `Ir`).
fn totals(profile: &str) -> Option<u64> {
    profile
        .lines()
        .find_map(|line| line.strip_prefix("totals: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_comes_from_the_totals_line() {
        let profile = "events: Ir\nsummary: 0\nfn=(1) main\n16 3\ntotals: 709799527\n";
        assert_eq!(totals(profile), Some(709_799_527));
        assert_eq!(totals("events: Ir\nsummary: 0\n"), None);
    }
}
