//! The counter section: `POST /api/counter/increment` through ours on a real Redis, next to
//! `redis-benchmark -t incr` against the same Redis at the same concurrency.
//!
//! Both sides get the same budget: the server side (Redis, plus ours for the HTTP path) on CPU 0,
//! the load generator on CPU 1. The counter is read before and after, so the figure is checked
//! against what Redis really counted.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    Plan,
    load::{self, Measured, Wrk},
    procfs,
    servers::{self, Kind, LOAD_CPU, Spec},
};

const REDIS_PORT: u16 = 18379;

#[derive(Debug, Clone)]
pub(crate) struct CounterResult {
    pub(crate) connections: u32,
    pub(crate) ours: Measured,
    /// CPU seconds Redis spent while ours ran (ours' own are in `ours.cpu_seconds`).
    pub(crate) redis_cpu_seconds_under_ours: f64,
    /// Counter value after minus before.
    pub(crate) counted: Option<u64>,
    pub(crate) redis_rps: f64,
    pub(crate) redis_p50_ms: f64,
    pub(crate) redis_p99_ms: f64,
    /// CPU seconds Redis spent per `redis-benchmark` run, and its request count.
    pub(crate) redis_cpu_seconds: f64,
    pub(crate) redis_requests: u64,
    pub(crate) redis_line: String,
    pub(crate) redis_server_line: String,
    pub(crate) ours_line: String,
    pub(crate) wrk_line: String,
    pub(crate) profile: Option<Result<String, String>>,
}

fn redis_spec() -> Spec {
    Spec {
        name: "redis",
        kind: Kind::Reference,
        program: "redis-server".into(),
        args: vec![
            "--port".into(),
            REDIS_PORT.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ],
        env: vec![],
        cwd: None,
        port: REDIS_PORT,
        binary: None,
        note: String::new(),
        one_process_args: vec![],
    }
}

/// `profiling_bin`: a build of ours with symbols; when given, a second run of the same load is
/// sampled with perf to show where an increment's CPU goes.
pub(crate) fn counter(
    plan: &Plan,
    ours: &Spec,
    profiling_bin: Option<&std::path::Path>,
    logs: &std::path::Path,
) -> Result<CounterResult> {
    servers::ensure_port_free(REDIS_PORT)?;
    let redis = servers::spawn(&redis_spec(), &logs.join("redis.log"))
        .context("starting redis-server (apt-get install redis-server)")?;
    let result = (|| {
        wait_for_redis()?;
        let c = plan.connections;

        // Redis alone.
        let redis_before = procfs::cpu_seconds(&redis.pids());
        let bench_args = [
            "-c".to_owned(),
            LOAD_CPU.to_string(),
            "redis-benchmark".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            REDIS_PORT.to_string(),
            "-t".into(),
            "incr".into(),
            "-c".into(),
            c.to_string(),
            "-n".into(),
            plan.redis_requests.to_string(),
            "--csv".into(),
        ];
        let out = Command::new("taskset")
            .args(&bench_args)
            .output()
            .context("running redis-benchmark (apt-get install redis-tools)")?;
        let redis_cpu_seconds = procfs::cpu_seconds(&redis.pids()) - redis_before;
        let text = String::from_utf8_lossy(&out.stdout);
        let row = text
            .lines()
            .find(|l| l.starts_with("\"INCR\""))
            .with_context(|| format!("no INCR line in redis-benchmark output:\n{text}"))?;
        let cols: Vec<f64> = row
            .split(',')
            .skip(1)
            .map(|c| c.trim_matches('"').parse().unwrap_or(f64::NAN))
            .collect();
        let redis_rps = cols.first().copied().unwrap_or(f64::NAN);
        let redis_p50_ms = cols.get(3).copied().unwrap_or(f64::NAN);
        let redis_p99_ms = cols.get(5).copied().unwrap_or(f64::NAN);

        // Ours on the same Redis.
        let spec = ours.with_env(
            "HELLO_REDIS_URL",
            &format!("redis://127.0.0.1:{REDIS_PORT}"),
        );
        let (_, server) = servers::start_timed(&spec, &logs.join("ours-counter.log"))?;
        let run = (|| {
            let mut w = Wrk::get(spec.url("/api/counter/increment"), c, plan.counter_s);
            w.post_body = Some(0);
            let _ = load::run(&Wrk {
                seconds: 1,
                ..w.clone()
            });
            let after_warmup = counter_value(spec.port);
            let redis_before = procfs::cpu_seconds(&redis.pids());
            let ours_m = load::measure(&server, &w)?;
            let redis_under = procfs::cpu_seconds(&redis.pids()) - redis_before;
            thread::sleep(Duration::from_millis(200));
            let after = counter_value(spec.port);
            let counted = match (after_warmup, after) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            };
            Ok::<_, anyhow::Error>((w, ours_m, redis_under, counted))
        })();
        server.stop()?;
        let (w, ours_m, redis_under, counted) = run?;
        let profile = profiling_bin.map(|bin| {
            let mut p = spec.clone();
            p.program = bin.to_owned();
            p.name = "ours-counter";
            let (_, server) = servers::start_timed(&p, &logs.join("ours-counter-profile.log"))
                .map_err(|e| format!("{e:#}"))?;
            let sampled = super::profile::sample(&server, &p, &w)
                .map(|p| p.text)
                .map_err(|e| format!("{e:#}"));
            let _ = server.stop();
            sampled
        });
        let mut redis_server_line = redis_spec().command_line();
        redis_server_line = redis_server_line.replace("--save  ", "--save '' ");
        Ok(CounterResult {
            connections: c,
            ours: ours_m,
            redis_cpu_seconds_under_ours: redis_under,
            counted,
            redis_rps,
            redis_p50_ms,
            redis_p99_ms,
            redis_cpu_seconds,
            redis_requests: plan.redis_requests,
            redis_line: format!("taskset {}", bench_args.join(" ")),
            redis_server_line,
            ours_line: spec.command_line(),
            wrk_line: w.command_line(),
            profile,
        })
    })();
    redis.stop()?;
    result
}

/// Polls Redis with PING until it answers PONG (bounded: 5 s).
fn wait_for_redis() -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], REDIS_PORT));
    for _ in 0..500 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
            {
                return Ok(());
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    bail!("redis-server did not answer PING on 127.0.0.1:{REDIS_PORT} within 5 s")
}

/// `GET /api/counter` → its `value`.
fn counter_value(port: u16) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /api/counter HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = &text[text.find("\r\n\r\n")? + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    v.get("value")?.as_u64()
}
