//! The replication section: `POST /api/counter/increment` through ours on a Sentinel-managed
//! primary, every write confirmed by its replica (`WAIT 1`), next to the same increments on a
//! plain Redis (`--redis-url`, nothing waited for), in the same run.
//!
//! The primary, its replica, the Sentinel, the plain Redis and ours all run on the server CPU,
//! wrk on the load CPU, as in the counter section. The two paths take turns over the plan's
//! rounds (the order rotating), and each figure is the median over rounds. After the last round
//! the replica must hold the primary's count: every acknowledged increment reached it.

use std::{fs, path::Path, process::Command, thread, time::Duration};

use anyhow::{Context, Result, bail};

use super::{
    Plan,
    load::{self, Wrk, WrkOut},
    median,
    servers::{self, Kind, Running, Spec},
};

const PLAIN_PORT: u16 = 18383;
const PRIMARY_PORT: u16 = 18384;
const REPLICA_PORT: u16 = 18385;
const SENTINEL_PORT: u16 = 18386;
const MASTER_NAME: &str = "bench";

/// The medians of one path over the rounds.
#[derive(Debug, Clone)]
pub(crate) struct Figures {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    /// Summed over the rounds.
    pub(crate) errors: u64,
    pub(crate) ours_line: String,
}

#[derive(Debug, Clone)]
pub(crate) struct ReplicationResult {
    pub(crate) rounds: usize,
    pub(crate) unreplicated: Figures,
    pub(crate) replicated: Figures,
    pub(crate) redis_lines: Vec<String>,
    pub(crate) wrk_line: String,
    /// The counter on the primary and on its replica after the last round.
    pub(crate) primary_count: Option<i64>,
    pub(crate) replica_count: Option<i64>,
}

/// A `redis-server` on `port` without persistence, with `extra` arguments, in `dir` (where a
/// primary writes the snapshot that starts its replica).
fn redis(name: &'static str, port: u16, dir: &Path, extra: &[&str]) -> Spec {
    let mut args: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1"]
        .map(String::from)
        .to_vec();
    args.extend([
        "--save".into(),
        String::new(),
        "--appendonly".into(),
        "no".into(),
    ]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Spec {
        name,
        kind: Kind::Reference,
        program: "redis-server".into(),
        args,
        env: vec![],
        cwd: Some(dir.to_owned()),
        port,
        binary: None,
        note: String::new(),
        one_process_args: vec![],
    }
}

/// `redis-cli -p port args...`, its output trimmed.
fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .context("running redis-cli (apt-get install redis-tools)")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Polls until `done` holds (bounded: 20 s), naming `what` if it never does.
fn wait_until(what: &str, done: impl Fn() -> bool) -> Result<()> {
    for _ in 0..400 {
        if done() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} within 20 s")
}

fn count_on(port: u16) -> Option<i64> {
    cli(port, &["GET", "hello-world:counter:hits"])
        .ok()?
        .parse()
        .ok()
}

pub(crate) fn run(plan: &Plan, ours: &Spec, logs: &Path) -> Result<ReplicationResult> {
    for port in [PLAIN_PORT, PRIMARY_PORT, REPLICA_PORT, SENTINEL_PORT] {
        servers::ensure_port_free(port)?;
    }
    let dir = servers::work_dir().join("replication");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    // A Sentinel rewrites its configuration as it learns: a fresh file every run.
    let sentinel_conf = dir.join("sentinel.conf");
    let sentinel_config = format!(
        "sentinel monitor {MASTER_NAME} 127.0.0.1 {PRIMARY_PORT} 1\n\
         sentinel down-after-milliseconds {MASTER_NAME} 5000\n"
    );
    fs::write(&sentinel_conf, &sentinel_config)?;
    let primary_port = PRIMARY_PORT.to_string();
    let specs = [
        redis("redis-plain", PLAIN_PORT, &dir, &[]),
        redis("redis-primary", PRIMARY_PORT, &dir, &[]),
        redis(
            "redis-replica",
            REPLICA_PORT,
            &dir,
            &["--replicaof", "127.0.0.1", &primary_port],
        ),
        Spec {
            args: [
                vec!["sentinel.conf".to_owned(), "--sentinel".into()],
                ["--port", &SENTINEL_PORT.to_string(), "--bind", "127.0.0.1"]
                    .map(String::from)
                    .to_vec(),
            ]
            .concat(),
            ..redis("redis-sentinel", SENTINEL_PORT, &dir, &[])
        },
    ];
    let mut running: Vec<Running> = Vec::new();
    let result = (|| {
        for spec in &specs {
            let log = logs.join(format!("{}.log", spec.name));
            running.push(
                servers::spawn(spec, &log)
                    .context("starting redis-server (apt-get install redis-server)")?,
            );
        }
        wait_until("the replica did not sync with the primary", || {
            cli(REPLICA_PORT, &["INFO", "replication"])
                .is_ok_and(|info| info.contains("master_link_status:up"))
        })?;
        wait_until("the Sentinel did not name the primary", || {
            cli(
                SENTINEL_PORT,
                &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
            )
            .is_ok_and(|named| named.contains(&primary_port))
        })?;
        measure(plan, ours, logs)
    })();
    for server in running {
        let _ = server.stop();
    }
    let (unreplicated, replicated, wrk_line, primary_count, replica_count) = result?;
    let sentinel_line = specs[3].command_line();
    Ok(ReplicationResult {
        rounds: plan.rounds,
        unreplicated,
        replicated,
        redis_lines: vec![
            specs[0].command_line().replace("--save  ", "--save '' "),
            specs[1].command_line().replace("--save  ", "--save '' "),
            specs[2].command_line().replace("--save  ", "--save '' "),
            format!(
                "{sentinel_line}   # sentinel.conf: {}",
                sentinel_config.replace('\n', "; ").trim_end_matches("; ")
            ),
        ],
        wrk_line,
        primary_count,
        replica_count,
    })
}

type Measured = (Figures, Figures, String, Option<i64>, Option<i64>);

/// The rounds: each path started fresh, warmed up for a second, then loaded.
fn measure(plan: &Plan, ours: &Spec, logs: &Path) -> Result<Measured> {
    let unreplicated = ours.with_args(&["--redis-url", &format!("redis://127.0.0.1:{PLAIN_PORT}")]);
    let replicated = ours.with_args(&[
        "--redis-sentinel",
        &format!("127.0.0.1:{SENTINEL_PORT}"),
        "--redis-master-name",
        MASTER_NAME,
        "--redis-wait-replicas",
        "1",
    ]);
    let paths = [&unreplicated, &replicated];
    let mut runs: [Vec<WrkOut>; 2] = [Vec::new(), Vec::new()];
    let mut wrk = Wrk::get(
        ours.url("/api/counter/increment"),
        plan.connections,
        plan.counter_s,
    );
    wrk.post_body = Some(0);
    for round in 0..plan.rounds {
        for k in 0..paths.len() {
            let which = (k + round) % paths.len();
            let spec = paths[which];
            eprintln!(
                "bench: replication round {}/{}: {}",
                round + 1,
                plan.rounds,
                if which == 0 { "unreplicated" } else { "WAIT 1" }
            );
            let log = logs.join(format!("ours-replication-{which}.log"));
            let (_, server) = servers::start_timed(spec, &log)?;
            // The first calls find the primary and open the connections.
            let _ = load::run(&Wrk {
                seconds: 1,
                ..wrk.clone()
            });
            let out = load::run(&wrk);
            server.stop()?;
            runs[which].push(out?);
        }
    }
    let summary = |spec: &Spec, runs: &[WrkOut]| Figures {
        rps: median(runs.iter().map(WrkOut::rps).collect()),
        p50_us: median(runs.iter().map(|r| r.p50_us).collect()),
        p99_us: median(runs.iter().map(|r| r.p99_us).collect()),
        errors: runs.iter().map(|r| r.errors).sum(),
        ours_line: spec.command_line(),
    };
    // Give the replica a moment for the writes still in flight when the last run stopped.
    thread::sleep(Duration::from_millis(500));
    Ok((
        summary(&unreplicated, &runs[0]),
        summary(&replicated, &runs[1]),
        wrk.command_line(),
        count_on(PRIMARY_PORT),
        count_on(REPLICA_PORT),
    ))
}
