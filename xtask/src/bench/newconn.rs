//! The new-connection section: `GET /` with `Connection: close`, so every request opens, serves
//! and closes one connection, as probes, curl and a Kubernetes Service's balancing of
//! connections make servers do. The main table's method: every server pinned to CPU 0 and wrk to
//! CPU 1, started fresh each round, the order rotating over rounds, medians; CPU per request is
//! the server tree's utime+stime over the run ÷ the requests wrk completed (kernel time
//! included: accepting and closing a connection is mostly the kernel's work). Then the user-space
//! part alone, which is where the servers differ: instructions per request counted by
//! callgrind ([`instructions::count_new_connections`]), for ours and nginx, beside ours on
//! kept-alive connections.

use std::fmt::Write as _;

use anyhow::Result;

use super::{
    Plan, instructions,
    load::{self, Measured, Wrk},
    median,
    servers::{self, Spec},
};

/// The servers of this section: ours (both builds) and the reference that bounds it.
pub(crate) const SERVERS: [&str; 3] = ["ours-glibc", "ours-musl", "nginx"];

/// Enough connections that the client keeps the server's core busy: each one is closed after its
/// request, and wrk waits for the close before it reconnects.
const CONNECTIONS: u32 = 16;

#[derive(Debug, Clone)]
pub(crate) struct NewConnResult {
    pub(crate) rounds: usize,
    pub(crate) warmup_s: u32,
    pub(crate) line: String,
    /// Each server's rounds, or why it could not be measured.
    pub(crate) servers: Vec<(&'static str, Result<Vec<Measured>, String>)>,
    /// Instructions per request (callgrind), or why they could not be counted.
    pub(crate) instructions: Vec<Counted>,
}

/// One server's user-space instructions per request, on new and on kept-alive connections.
#[derive(Debug, Clone)]
pub(crate) struct Counted {
    pub(crate) server: &'static str,
    pub(crate) new_connection: Result<instructions::Count, String>,
    pub(crate) kept_alive: Result<instructions::Count, String>,
}

/// The servers whose instructions are counted: ours as users run it outside the image (the
/// glibc build's profile is the budget's) and the reference.
const COUNTED: [&str; 2] = ["ours-glibc", "nginx"];

fn wrk(spec: &Spec, seconds: u32) -> Wrk {
    Wrk {
        close: true,
        ..Wrk::get(spec.url("/"), CONNECTIONS, seconds)
    }
}

pub(crate) fn run(plan: &Plan, specs: &[Spec], logs: &std::path::Path) -> NewConnResult {
    let specs: Vec<&Spec> = SERVERS
        .iter()
        .filter_map(|name| specs.iter().find(|s| s.name == *name))
        .collect();
    let mut servers: Vec<(&'static str, Result<Vec<Measured>, String>)> =
        specs.iter().map(|s| (s.name, Ok(Vec::new()))).collect();
    for round in 0..plan.rounds {
        for k in 0..specs.len() {
            let i = (k + round) % specs.len();
            let (name, runs) = &mut servers[i];
            let Ok(done) = runs else { continue };
            eprintln!(
                "bench: new connections round {}/{}: {name}",
                round + 1,
                plan.rounds
            );
            match one_round(plan, specs[i], logs) {
                Ok(measured) => done.push(measured),
                Err(e) => *runs = Err(format!("{e:#}")),
            }
        }
    }
    let instructions = specs
        .iter()
        .filter(|spec| COUNTED.contains(&spec.name))
        .map(|spec| {
            eprintln!("bench: new connections: {} under callgrind", spec.name);
            let counted = |count: fn(&Spec, &std::path::Path) -> Result<instructions::Count>| {
                count(spec, logs).map_err(|e| format!("{e:#}"))
            };
            Counted {
                server: spec.name,
                new_connection: counted(instructions::count_new_connections),
                kept_alive: counted(instructions::count),
            }
        })
        .collect();
    NewConnResult {
        instructions,
        rounds: plan.rounds,
        warmup_s: plan.warmup_s,
        line: specs
            .first()
            .map(|s| wrk(s, plan.run_s).command_line())
            .unwrap_or_default(),
        servers,
    }
}

fn one_round(plan: &Plan, spec: &Spec, logs: &std::path::Path) -> Result<Measured> {
    let log = logs.join(format!("{}-newconn.log", spec.name));
    let (_, server) = servers::start_timed(spec, &log)?;
    let measured = (|| {
        load::run(&wrk(spec, plan.warmup_s))?;
        load::measure(&server, &wrk(spec, plan.run_s))
    })();
    server.stop()?;
    let measured = measured?;
    anyhow::ensure!(
        measured.wrk.errors == 0,
        "{} of {} requests failed",
        measured.wrk.errors,
        measured.wrk.requests
    );
    Ok(measured)
}

/// One server's medians.
#[derive(Debug, Clone, Copy)]
struct Row {
    rps: f64,
    cpu_us: f64,
    server_util: f64,
    wrk_util: f64,
}

fn row(runs: &[Measured]) -> Row {
    let of = |f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
    Row {
        rps: of(|m| m.wrk.rps()),
        cpu_us: of(Measured::cpu_us_per_request),
        server_util: of(Measured::server_util),
        wrk_util: of(Measured::wrk_util),
    }
}

pub(crate) fn markdown(w: &mut String, r: Option<&NewConnResult>) {
    let _ = writeln!(
        w,
        "\n## GET / on a new connection each (`Connection: close`): ours vs nginx\n"
    );
    let Some(r) = r else {
        let _ = writeln!(
            w,
            "Not run in this mode (it runs in the full run, or with `--only newconn`)."
        );
        return;
    };
    let _ = writeln!(
        w,
        "Every request on a connection of its own, {CONNECTIONS} at a time. {} round(s), the order rotating, each \
         server started fresh and warmed up with the same line for {} s; medians over rounds. CPU µs per request = \
         the server tree's utime+stime over the run ÷ the requests wrk completed. Server and wrk CPU are shares of \
         one core: a server near 1.00 is the bound, a wrk near 1.00 means the client is.\n",
        r.rounds, r.warmup_s
    );
    let _ = writeln!(w, "```\n{}\n```\n", r.line);
    let rows: Vec<(&str, Result<Row, &str>)> = r
        .servers
        .iter()
        .map(|(name, runs)| {
            let row = match runs {
                Ok(runs) if !runs.is_empty() => Ok(row(runs)),
                Ok(_) => Err("no round completed"),
                Err(e) => Err(e.as_str()),
            };
            (*name, row)
        })
        .collect();
    let nginx = rows
        .iter()
        .find(|(name, _)| *name == "nginx")
        .and_then(|(_, row)| row.as_ref().ok().copied());
    let _ = writeln!(
        w,
        "| server | req/s | CPU µs/request | server CPU | wrk CPU | req/s ÷ nginx | CPU ÷ nginx |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (name, row) in &rows {
        match row {
            Ok(x) => {
                let vs = |a: f64, b: Option<f64>| match b {
                    Some(b) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "–".into(),
                };
                let _ = writeln!(
                    w,
                    "| {name} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {} |",
                    x.rps,
                    x.cpu_us,
                    x.server_util,
                    x.wrk_util,
                    vs(x.rps, nginx.map(|n| n.rps)),
                    vs(x.cpu_us, nginx.map(|n| n.cpu_us)),
                );
            }
            Err(e) => {
                let _ = writeln!(w, "| {name} | failed: {e} | | | | | |");
            }
        }
    }
    instructions_markdown(w, &r.instructions);
}

/// The user-space part: instructions per request, new connection vs kept alive, vs nginx.
fn instructions_markdown(w: &mut String, counted: &[Counted]) {
    if counted.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "\nUser space alone: instructions per request counted by callgrind (the server under valgrind, \
         instrumentation on for one wrk run), on a new connection each and on kept-alive connections. \
         The difference between the two columns is what a connection costs in user space.\n"
    );
    let per = |c: &Result<instructions::Count, String>| c.as_ref().ok().map(|c| c.per_request);
    let nginx_new = counted
        .iter()
        .find(|c| c.server == "nginx")
        .and_then(|c| per(&c.new_connection));
    let _ = writeln!(
        w,
        "| server | instructions/request, new connection | kept alive | a connection's own | new connection ÷ nginx |\n|---|---:|---:|---:|---:|"
    );
    for c in counted {
        let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.0}"));
        let (new, kept) = (per(&c.new_connection), per(&c.kept_alive));
        let own = new.zip(kept).map(|(n, k)| n - k);
        let ratio = new
            .zip(nginx_new)
            .filter(|(_, n)| *n > 0.0)
            .map_or("–".to_owned(), |(o, n)| format!("{:.2}", o / n));
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {ratio} |",
            c.server,
            cell(new),
            cell(kept),
            cell(own)
        );
    }
    for c in counted {
        for (what, count) in [
            ("new connection", &c.new_connection),
            ("kept alive", &c.kept_alive),
        ] {
            match count {
                Ok(count) => {
                    let _ = writeln!(
                        w,
                        "\n{} ({what}, {} requests counted):\n```\n{}\n{}\n```",
                        c.server, count.requests, count.server, count.load
                    );
                }
                Err(e) => {
                    let _ = writeln!(w, "\n{} ({what}): not counted: {e}", c.server);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::WrkOut;

    fn measured(requests: u64, cpu_seconds: f64) -> Measured {
        Measured {
            wrk: WrkOut {
                requests,
                seconds: 10.0,
                ..WrkOut::default()
            },
            cpu_seconds,
            wrk_cpu_seconds: 5.0,
            ..Measured::default()
        }
    }

    #[test]
    fn the_table_gives_medians_and_ratios_to_nginx() {
        let r = NewConnResult {
            rounds: 3,
            warmup_s: 2,
            line: "wrk".into(),
            servers: vec![
                (
                    "ours-glibc",
                    Ok(vec![
                        measured(300_000, 9.0),
                        measured(310_000, 9.3),
                        measured(100, 9.9),
                    ]),
                ),
                ("ours-musl", Err("it broke".into())),
                ("nginx", Ok(vec![measured(400_000, 10.0)])),
            ],
            instructions: vec![
                Counted {
                    server: "ours-glibc",
                    new_connection: Ok(count(30_424.0)),
                    kept_alive: Ok(count(14_912.0)),
                },
                Counted {
                    server: "nginx",
                    new_connection: Ok(count(9_945.0)),
                    kept_alive: Err("valgrind is missing".into()),
                },
            ],
        };
        let mut w = String::new();
        markdown(&mut w, Some(&r));
        // ours: median 300,000 requests in 10 s, median CPU 30 µs per request; nginx 25 µs.
        assert!(
            w.contains("| ours-glibc | 30000 | 30.0 | 0.93 | 0.50 | 0.75 | 1.20 |"),
            "{w}"
        );
        assert!(w.contains("| ours-musl | failed: it broke |"), "{w}");
        assert!(w.contains("| nginx | 40000 | 25.0 |"), "{w}");
        assert!(
            w.contains("| ours-glibc | 30424 | 14912 | 15512 | 3.06 |"),
            "{w}"
        );
        assert!(w.contains("| nginx | 9945 | – | – | 1.00 |"), "{w}");
        assert!(
            w.contains("nginx (kept alive): not counted: valgrind is missing"),
            "{w}"
        );
    }

    fn count(per_request: f64) -> instructions::Count {
        instructions::Count {
            per_request,
            requests: 1000,
            server: "valgrind server".into(),
            load: "taskset wrk".into(),
        }
    }

    #[test]
    fn every_request_closes_its_connection() {
        let spec = Spec {
            name: "x",
            kind: servers::Kind::Ours,
            program: "x".into(),
            args: vec![],
            env: vec![],
            cwd: None,
            port: 1,
            binary: None,
            note: String::new(),
            one_process_args: vec![],
        };
        assert!(
            wrk(&spec, 1)
                .command_line()
                .contains("-H 'Connection: close'")
        );
    }
}
