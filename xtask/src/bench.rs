//! `cargo xtask bench [--quick] [--only NAME,...]`: measures ours against the seed's Flask app
//! (dev server and gunicorn), a stdlib Go server and nginx, in one run, and writes
//! `bench/RESULTS.md` plus the PNG charts beside it.
//!
//! Method: every server runs pinned to CPU 0 and wrk to CPU 1; the servers take turns over
//! several rounds (rotating the order) so drift in machine load hits all alike, and each figure is
//! the median over rounds. CPU per request comes from the server's own utime+stime, not from
//! req/s: wrk saturates its core before the fast servers do, so req/s alone hides the difference.
//!
//! Sections (names for `--only`): `peers` (the main table), `concurrency`, `idle`, `echo`,
//! `counter`, `replication` (increments confirmed by a replica through Sentinel, next to
//! unreplicated ones, [`replication`]), `stack`, `seed-stack` (HAProxy in front of 3 replicas of
//! ours, of the seed's Flask app and of nginx, in containers: [`seed_stack`]; not with
//! `--quick`), `h2c` (`GET /` over cleartext HTTP/2 with
//! h2load, ours vs nginx, [`h2c`]), `newconn` (`GET /` with `Connection: close`, a new
//! connection per request, ours vs nginx, [`newconn`]), `profile` (perf profiles of ours and nginx, and
//! callgrind's instructions per request, [`instructions`]; not with `--quick`). Server names
//! (`ours-glibc`, `ours-musl`, `nginx`, `axum-bare`, `go`, `gunicorn`, `flask-dev`) restrict every
//! section to those servers; only the servers the chosen sections measure are built. A run with
//! `--quick` or `--only` writes to `target/bench/results/` so it never replaces the published
//! results.

mod chart;
mod h2c;
mod idle;
pub(crate) mod instructions;
mod load;
mod newconn;
mod procfs;
mod profile;
mod redis;
mod replication;
mod report;
mod seed_stack;
pub(crate) mod servers;
mod stack;

use std::{fs, thread, time::Duration};

use anyhow::{Context, Result, bail};
use xshell::Shell;

use load::{Measured, Wrk};
use servers::{Kind, Spec};

/// The line after which `bench/RESULTS.md` holds sections that runs keep.
const KEPT: &str = "<!-- kept by cargo xtask bench: sections below this line are carried into every run's results -->";

/// The kept sections of a results file, marker included.
fn kept_section(results: &str) -> Option<&str> {
    results.find(KEPT).map(|at| &results[at..])
}

/// How long and how often: the full run (~20 min) or the smoke run (~2 min).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) quick: bool,
    rounds: usize,
    warmup_s: u32,
    run_s: u32,
    connections: u32,
    startups_per_round: usize,
    curve_s: u32,
    curve_connections: Vec<u32>,
    idle_connections: usize,
    echo_sizes: Vec<usize>,
    echo_connections: u32,
    counter_s: u32,
    redis_requests: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rounds: 1,
                warmup_s: 1,
                run_s: 3,
                connections: 64,
                startups_per_round: 3,
                curve_s: 2,
                curve_connections: vec![1, 64, 256, 1024],
                idle_connections: 2_000,
                echo_sizes: vec![1 << 10, 64 << 10, 1 << 20],
                echo_connections: 16,
                counter_s: 3,
                redis_requests: 200_000,
            }
        } else {
            Plan {
                quick,
                rounds: 5,
                warmup_s: 2,
                run_s: 10,
                connections: 64,
                startups_per_round: 5,
                curve_s: 5,
                curve_connections: vec![1, 64, 256, 1024],
                idle_connections: 10_000,
                echo_sizes: vec![1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20],
                echo_connections: 16,
                counter_s: 10,
                redis_requests: 1_000_000,
            }
        }
    }
}

const SECTIONS: [&str; 11] = [
    "peers",
    "concurrency",
    "idle",
    "echo",
    "counter",
    "replication",
    "stack",
    "seed-stack",
    "h2c",
    "newconn",
    "profile",
];

/// Whether `section` measures `server`, so a run builds only the servers its sections use.
fn measures(section: &str, server: &str) -> bool {
    match section {
        "peers" => true,
        "concurrency" | "idle" => matches!(server, "ours-glibc" | "nginx" | "go"),
        "echo" | "counter" | "replication" => server == "ours-glibc",
        "stack" => server == "ours-musl",
        // Containers of images of its own (the service image among them): no server built here.
        "seed-stack" => false,
        "h2c" => matches!(server, "ours-glibc" | "ours-musl" | "nginx"),
        "newconn" => newconn::SERVERS.contains(&server),
        "profile" => matches!(server, "ours-glibc" | "ours-musl" | "axum-bare" | "nginx"),
        _ => false,
    }
}

/// What `--only` asked for.
#[derive(Debug, Default)]
struct Only {
    sections: Vec<String>,
    servers: Vec<String>,
}

impl Only {
    fn section(&self, name: &str) -> bool {
        self.sections.is_empty() || self.sections.iter().any(|s| s == name)
    }
    fn server(&self, name: &str) -> bool {
        self.servers.is_empty() || self.servers.iter().any(|s| s == name)
    }
    fn is_set(&self) -> bool {
        !self.sections.is_empty() || !self.servers.is_empty()
    }
}

/// One round of the main table for one server.
#[derive(Debug, Clone)]
pub(crate) struct PeerRun {
    pub(crate) measured: Measured,
    pub(crate) idle_rss_kib: u64,
    pub(crate) idle_pss_kib: u64,
    /// The idle RSS split: anonymous memory (heap, stacks) vs file pages (the mapped binary and
    /// libraries), which says whether memory or code size bounds it.
    pub(crate) idle_anon_kib: u64,
    pub(crate) idle_file_kib: u64,
    pub(crate) idle_thp_kib: u64,
    pub(crate) hwm_kib: u64,
}

/// A server's row: its startups and its rounds (or why it could not be measured).
#[derive(Debug, Clone)]
pub(crate) struct PeerRow {
    pub(crate) spec: Spec,
    pub(crate) startup_ms: Vec<f64>,
    pub(crate) runs: Vec<PeerRun>,
    pub(crate) failure: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct IdleRow {
    pub(crate) name: String,
    pub(crate) requested: usize,
    pub(crate) opened: usize,
    pub(crate) open_after_hold: usize,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    pub(crate) fds_after: usize,
    pub(crate) stopped_by: Option<String>,
}

impl IdleRow {
    pub(crate) fn kib_per_connection(&self) -> f64 {
        if self.opened == 0 {
            return f64::NAN;
        }
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.opened as f64
    }
}

#[derive(Debug, Clone)]
pub(crate) struct EchoRow {
    pub(crate) bytes: usize,
    pub(crate) measured: Measured,
}

impl EchoRow {
    /// Request-body megabytes per second (the response carries as many back).
    pub(crate) fn mb_per_s(&self) -> f64 {
        self.measured.wrk.rps() * self.bytes as f64 / 1e6
    }
}

/// Everything one run produced; `report` turns it into markdown and charts.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) machine: Option<procfs::Machine>,
    pub(crate) started: String,
    pub(crate) finished: String,
    pub(crate) loadavg_after: String,
    pub(crate) setup: Vec<String>,
    pub(crate) plan_text: String,
    pub(crate) wrk_line: String,
    pub(crate) peers: Vec<PeerRow>,
    pub(crate) image_size: Option<u64>,
    pub(crate) concurrency: Vec<(String, u32, Result<Measured, String>)>,
    pub(crate) concurrency_line: String,
    pub(crate) idle: Vec<Result<IdleRow, String>>,
    pub(crate) echo: Vec<Result<EchoRow, String>>,
    pub(crate) echo_line: String,
    pub(crate) counter: Option<Result<redis::CounterResult, String>>,
    pub(crate) replication: Option<Result<replication::ReplicationResult, String>>,
    pub(crate) stack: Option<Result<stack::StackResult, String>>,
    pub(crate) seed_stack: Option<Result<seed_stack::SeedStackResult, String>>,
    pub(crate) h2c: Option<h2c::H2cResult>,
    pub(crate) newconn: Option<newconn::NewConnResult>,
    pub(crate) profile: Option<Vec<(String, Result<profile::Profile, String>)>>,
    /// User-space instructions per `GET /` (callgrind), by server.
    pub(crate) instructions: Option<Vec<(String, Result<instructions::Count, String>)>>,
    pub(crate) notes: Vec<String>,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut only = Only::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let v = it.next().context("--only needs a name")?;
                for name in v.split(',').filter(|s| !s.is_empty()) {
                    if SECTIONS.contains(&name) {
                        only.sections.push(name.to_owned());
                    } else {
                        only.servers.push(name.to_owned());
                    }
                }
            }
            other => bail!(
                "unknown argument `{other}` (usage: cargo xtask bench [--quick] [--only NAME,...])"
            ),
        }
    }
    let plan = Plan::new(quick);
    let publish = !quick && !only.is_set();
    let out_dir = if publish {
        crate::project_root().join("bench")
    } else {
        servers::work_dir().join("results")
    };
    fs::create_dir_all(&out_dir)?;

    let sh = Shell::new()?;
    let mut results = Results {
        started: utc_now(),
        ..Results::default()
    };
    results.machine = Some(procfs::machine()?);
    let unknown: Vec<&String> = only
        .servers
        .iter()
        .filter(|n| !servers::NAMES.contains(&n.as_str()))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "--only: unknown name(s) {unknown:?}; sections are {SECTIONS:?}, servers are {:?}",
            servers::NAMES
        );
    }
    let wanted = |server: &str| {
        only.server(server)
            && SECTIONS
                .iter()
                .any(|section| only.section(section) && measures(section, server))
    };
    let specs = servers::prepare(&sh, &mut results.setup, &wanted)?;
    let profile_bin = if only.section("profile") && !quick {
        Some(profile::build_binary(&sh, &mut results.setup)?)
    } else {
        None
    };

    // Room for 10 000 client sockets here and as many in the server (children inherit it).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => results.notes.push(format!(
            "RLIMIT_NOFILE raised to {n} for the bench and its servers"
        )),
        Err(e) => results
            .notes
            .push(format!("could not raise RLIMIT_NOFILE: {e}")),
    }
    // The bench itself (prober, idle client, wrk, redis-benchmark) lives on the load CPU.
    servers::pin_current_thread(servers::LOAD_CPU);
    let logs = servers::work_dir().join("logs");
    fs::create_dir_all(&logs)?;

    if only.section("peers") {
        peers(&plan, &specs, &logs, &mut results);
    }
    results.image_size = image_size();
    if only.section("concurrency") {
        concurrency(&plan, &specs, &logs, &mut results);
    }
    if only.section("idle") {
        idle_connections(&plan, &specs, &logs, &mut results);
    }
    let ours_glibc = specs.iter().find(|s| s.name == "ours-glibc");
    if let Some(ours) = ours_glibc.filter(|_| only.section("echo")) {
        echo(&plan, ours, &logs, &mut results);
    }
    if let Some(ours) = ours_glibc.filter(|_| only.section("counter")) {
        results.counter = Some(
            redis::counter(&plan, ours, profile_bin.as_deref(), &logs)
                .map_err(|e| format!("{e:#}")),
        );
    }
    if let Some(ours) = ours_glibc.filter(|_| only.section("replication")) {
        results.replication =
            Some(replication::run(&plan, ours, &logs).map_err(|e| format!("{e:#}")));
    }
    if only.section("stack") {
        results.stack = Some(
            match (
                stack::unavailable(),
                specs.iter().find(|s| s.name == "ours-musl"),
            ) {
                (Some(why), _) => Err(why),
                (None, _) if quick => {
                    Err("not run with --quick (bringing the stack up takes minutes)".into())
                }
                (None, None) => {
                    Err("not run: ours-musl (the direct baseline) is excluded by --only".into())
                }
                (None, Some(direct)) => {
                    stack::run(&plan, direct, &logs).map_err(|e| format!("{e:#}"))
                }
            },
        );
    }
    if only.section("seed-stack") {
        results.seed_stack = Some(if quick {
            Err("not run with --quick (its images take minutes to build the first time)".into())
        } else {
            seed_stack::run(&plan, &logs).map_err(|e| format!("{e:#}"))
        });
    }
    if only.section("h2c") {
        results.h2c = Some(h2c::run(&plan, &specs, &logs));
    }
    if only.section("newconn") {
        results.newconn = Some(newconn::run(&plan, &specs, &logs));
    }
    if let (Some(bin), Some(ours)) = (profile_bin.clone(), ours_glibc) {
        let mut spec = ours.clone();
        spec.program = bin;
        let mut profiles = vec![(spec.name, profile::run(&plan, &spec, &logs))];
        // nginx under the same load: the same kernel path, so the difference is user space.
        if let Some(nginx) = specs.iter().find(|s| s.name == "nginx") {
            profiles.push((nginx.name, profile::run(&plan, nginx, &logs)));
        }
        results.profile = Some(
            profiles
                .into_iter()
                .map(|(name, p)| (name.to_owned(), p.map_err(|e| format!("{e:#}"))))
                .collect(),
        );
    }
    if only.section("profile") && !quick {
        // Noise-free: the same binary and load execute the same instructions.
        let counted = ["ours-glibc", "ours-musl", "axum-bare", "nginx"]
            .into_iter()
            .filter_map(|name| specs.iter().find(|s| s.name == name))
            .map(|spec| {
                eprintln!("bench: counting instructions per request: {}", spec.name);
                let count = instructions::count(spec, &logs).map_err(|e| format!("{e:#}"));
                (spec.name.to_owned(), count)
            })
            .collect();
        results.instructions = Some(counted);
    }
    results.finished = utc_now();
    results.loadavg_after = procfs::loadavg();
    results.plan_text = format!("{plan:?}");

    let mut md = report::markdown(&plan, &results, publish);
    let path = out_dir.join("RESULTS.md");
    // What a change measured by hand (before and after it, with the commands) is kept below
    // the marker, run after run, until someone removes it.
    let published = fs::read_to_string(crate::project_root().join("bench/RESULTS.md"));
    if let Some(kept) = published.ok().as_deref().and_then(kept_section) {
        md.push_str(kept);
    }
    fs::write(&path, md)?;
    report::charts(&results, &out_dir)?;
    println!("bench: wrote {} and its charts", path.display());
    Ok(())
}

/// The main table: every server, `rounds` times, in a rotating order.
fn peers(plan: &Plan, specs: &[Spec], logs: &std::path::Path, results: &mut Results) {
    let mut rows: Vec<PeerRow> = specs
        .iter()
        .map(|s| PeerRow {
            spec: s.clone(),
            startup_ms: vec![],
            runs: vec![],
            failure: None,
        })
        .collect();
    let wrk_for = |s: &Spec| Wrk::get(s.url("/"), plan.connections, plan.run_s);
    if let Some(first) = specs.first() {
        results.wrk_line = format!(
            "{}   (after a {} s warmup with the same line and -d{}s)",
            wrk_for(first).command_line(),
            plan.warmup_s,
            plan.warmup_s
        );
    }
    for round in 0..plan.rounds {
        let n = rows.len();
        for k in 0..n {
            let row = &mut rows[(k + round) % n];
            if row.failure.is_some() {
                continue;
            }
            eprintln!(
                "bench: peers round {}/{}: {}",
                round + 1,
                plan.rounds,
                row.spec.name
            );
            match peer_round(plan, &row.spec, logs) {
                Ok((startups, run)) => {
                    row.startup_ms.extend(startups);
                    row.runs.push(run);
                }
                Err(e) => {
                    eprintln!("bench: {} failed: {e:#}", row.spec.name);
                    row.failure = Some(format!("{e:#}"));
                }
            }
        }
    }
    results.peers = rows;
}

fn peer_round(plan: &Plan, spec: &Spec, logs: &std::path::Path) -> Result<(Vec<f64>, PeerRun)> {
    let log = logs.join(format!("{}.log", spec.name));
    let mut startups = Vec::new();
    for _ in 1..plan.startups_per_round {
        let (t, server) = servers::start_timed(spec, &log)?;
        startups.push(t.as_secs_f64() * 1e3);
        server.stop()?;
    }
    let (t, server) = servers::start_timed(spec, &log)?;
    startups.push(t.as_secs_f64() * 1e3);
    let result = (|| {
        // Idle: after the first answer, let start-up work settle.
        thread::sleep(Duration::from_millis(500));
        let idle_rss_kib = procfs::status_kib(&server.pids(), "VmRSS:");
        let idle_pss_kib = procfs::rollup_kib(&server.pids(), "Pss:");
        let idle_thp_kib = procfs::rollup_kib(&server.pids(), "AnonHugePages:");
        let idle_anon_kib = procfs::status_kib(&server.pids(), "RssAnon:");
        let idle_file_kib = procfs::status_kib(&server.pids(), "RssFile:");
        load::run(&Wrk::get(spec.url("/"), plan.connections, plan.warmup_s))?;
        let measured = load::measure(
            &server,
            &Wrk::get(spec.url("/"), plan.connections, plan.run_s),
        )?;
        let hwm_kib = procfs::status_kib(&server.pids(), "VmHWM:");
        Ok(PeerRun {
            measured,
            idle_rss_kib,
            idle_pss_kib,
            idle_anon_kib,
            idle_file_kib,
            idle_thp_kib,
            hwm_kib,
        })
    })();
    server.stop()?;
    result.map(|r| (startups, r))
}

/// Servers that make sense on the growth curves: ours next to the two fast references.
fn curve_servers(specs: &[Spec]) -> Vec<&Spec> {
    specs
        .iter()
        .filter(|s| matches!(s.name, "ours-glibc" | "nginx" | "go"))
        .collect()
}

fn concurrency(plan: &Plan, specs: &[Spec], logs: &std::path::Path, results: &mut Results) {
    for spec in curve_servers(specs) {
        let log = logs.join(format!("{}-concurrency.log", spec.name));
        let server = match servers::start_timed(spec, &log) {
            Ok((_, s)) => s,
            Err(e) => {
                results
                    .concurrency
                    .push((spec.name.into(), 0, Err(format!("{e:#}"))));
                continue;
            }
        };
        for &c in &plan.curve_connections {
            eprintln!("bench: concurrency {} c={c}", spec.name);
            let _ = load::run(&Wrk::get(spec.url("/"), c, 1));
            let w = Wrk::get(spec.url("/"), c, plan.curve_s);
            results.concurrency_line = w
                .command_line()
                .replace(&format!("-c{c}"), "-c{1,64,256,1024}");
            let m = load::measure(&server, &w).map_err(|e| format!("{e:#}"));
            results.concurrency.push((spec.name.into(), c, m));
        }
        let _ = server.stop();
    }
}

fn idle_connections(plan: &Plan, specs: &[Spec], logs: &std::path::Path, results: &mut Results) {
    for spec in curve_servers(specs) {
        eprintln!(
            "bench: {} idle connections to {}",
            plan.idle_connections, spec.name
        );
        let spec = if spec.kind == Kind::Ours {
            spec.with_args(&[
                "--max-connections",
                &(plan.idle_connections * 2).to_string(),
            ])
        } else {
            spec.clone()
        };
        let row = (|| -> Result<IdleRow> {
            let log = logs.join(format!("{}-idle.log", spec.name));
            let (_, server) = servers::start_timed(&spec, &log)?;
            thread::sleep(Duration::from_millis(500));
            let rss_before_kib = procfs::status_kib(&server.pids(), "VmRSS:");
            let held = idle::open(spec.port, plan.idle_connections);
            thread::sleep(Duration::from_secs(1));
            let rss_after_kib = procfs::status_kib(&server.pids(), "VmRSS:");
            let fds_after = procfs::open_fds(&server.pids());
            let open_after_hold = idle::still_open(&held);
            let row = IdleRow {
                name: spec.name.into(),
                requested: plan.idle_connections,
                opened: held.streams.len(),
                open_after_hold,
                rss_before_kib,
                rss_after_kib,
                fds_after,
                stopped_by: held.stopped_by.clone(),
            };
            drop(held);
            server.stop()?;
            Ok(row)
        })();
        results
            .idle
            .push(row.map_err(|e| format!("{}: {e:#}", spec.name)));
    }
}

fn echo(plan: &Plan, ours: &Spec, logs: &std::path::Path, results: &mut Results) {
    // Bodies up to 1 MiB must be accepted: the limit is raised above the largest size.
    let spec = ours.with_args(&["--body-limit", "2MiB"]);
    let log = logs.join("ours-echo.log");
    let server = match servers::start_timed(&spec, &log) {
        Ok((_, s)) => s,
        Err(e) => {
            results.echo.push(Err(format!("{e:#}")));
            return;
        }
    };
    for &bytes in &plan.echo_sizes {
        eprintln!("bench: echo {bytes} B");
        let mut w = Wrk::get(spec.url("/api/echo"), plan.echo_connections, plan.curve_s);
        w.post_body = Some(bytes);
        results.echo_line = format!(
            "{}   (ours started with {})",
            w.command_line(),
            "--body-limit 2097152"
        )
        .replace(&format!("POST {bytes}"), "POST {1024..1048576}");
        let _ = load::run(&Wrk {
            seconds: 1,
            ..w.clone()
        });
        results.echo.push(
            load::measure(&server, &w)
                .map(|measured| EchoRow { bytes, measured })
                .map_err(|e| format!("{bytes} B: {e:#}")),
        );
    }
    let _ = server.stop();
}

/// `hello-world:dev`'s size if the image was built on this machine.
fn image_size() -> Option<u64> {
    let out = std::process::Command::new("docker")
        .args([
            "image",
            "inspect",
            "hello-world:dev",
            "--format",
            "{{.Size}}",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The median of `values` (NaN when empty).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let m = values.len() / 2;
    if values.len() % 2 == 1 {
        values[m]
    } else {
        (values[m - 1] + values[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_ignores_failed_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![f64::NAN, 5.0]), 5.0);
        assert!(median(vec![]).is_nan());
    }
}
