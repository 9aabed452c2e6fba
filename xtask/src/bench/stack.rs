//! The stack section: `GET /` through the Swarm stack's HAProxy with 1, 3 and 5 replicas of the
//! image, next to the same image's binary served directly on loopback, with the same wrk line.
//!
//! It drives the stack only through its public commands (`cargo xtask stack up|down`, `docker
//! service scale`), waits with deadlines, checks that HAProxy really spreads over N replicas
//! (distinct `x-served-by`) before measuring, and brings the stack down again. A stack that was already up is left alone: someone may be
//! testing on it.

use std::{
    collections::HashSet,
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Plan,
    load::{self, WrkOut},
    servers::{self, Spec},
};

const WEB_SERVICE: &str = "hello-world_web";
const LB_PORT: u16 = 8080;
const REPLICAS: [u32; 3] = [1, 3, 5];

#[derive(Debug, Clone)]
pub(crate) struct StackResult {
    /// (replicas, wrk figures) through the published port; replicas 0 = direct, no load balancer.
    pub(crate) runs: Vec<(u32, WrkOut)>,
    /// (replicas, wrk figures) at the balancer's own address, which leaves the engine's userland
    /// proxy for the published loopback port out of the path.
    pub(crate) own_address: Vec<(u32, WrkOut)>,
    pub(crate) wrk_line: String,
    pub(crate) own_line: String,
    pub(crate) direct_line: String,
    /// The stack's access log switch during the run (`ACCESS_LOG`).
    pub(crate) access_log: &'static str,
}

/// Why the section cannot run on this tree, if it cannot.
pub(crate) fn unavailable() -> Option<String> {
    let root = crate::project_root();
    let main_rs = std::fs::read_to_string(root.join("xtask/src/main.rs")).unwrap_or_default();
    if !main_rs.contains("\"stack\"") || !root.join("deploy/swarm/stack.yaml").exists() {
        return Some(
            "not run: this tree has no `cargo xtask stack up` (and `deploy/swarm/stack.yaml`) yet, so there is no HAProxy stack to measure through".into(),
        );
    }
    None
}

pub(crate) fn run(plan: &Plan, direct: &Spec, logs: &std::path::Path) -> Result<StackResult> {
    // An engine outside any Swarm runs no stack (and cannot list them): `stack up` joins it.
    let in_swarm = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .context("asking docker whether it is in a Swarm")?
        .trim()
        == "active";
    let was_up = in_swarm
        && docker(&["stack", "ls", "--format", "{{.Name}}"])
            .map(|s| s.lines().any(|l| l.trim() == "hello-world"))
            .context("asking docker which stacks run")?;
    // A stack someone else brought up may be under test right now: scaling it or loading it
    // would break their run, so the bench measures only a stack it brings up (and down) itself.
    if was_up {
        bail!(
            "not run: the `hello-world` stack was already up when the bench reached this section, and the bench \
             only loads a stack it brought up itself (`cargo xtask stack down`, then `cargo xtask bench --only stack`)"
        );
    }
    let result = measure(plan, direct, logs);
    let _ = cargo_xtask(&["stack", "down"], Duration::from_secs(180));
    result
}

fn measure(plan: &Plan, direct: &Spec, logs: &std::path::Path) -> Result<StackResult> {
    cargo_xtask(&["stack", "up"], Duration::from_secs(600)).context("cargo xtask stack up")?;
    let url = format!("http://127.0.0.1:{LB_PORT}/");
    let mut runs = Vec::new();
    let mut own_address = Vec::new();
    let mut wrk_line = String::new();
    let mut own_line = String::new();
    for n in REPLICAS {
        eprintln!("bench: stack with {n} replica(s)");
        docker(&[
            "service",
            "scale",
            "--detach",
            &format!("{WEB_SERVICE}={n}"),
        ])?;
        wait_for(
            Duration::from_secs(180),
            &format!("{n}/{n} replicas"),
            || {
                docker(&[
                    "service",
                    "ls",
                    "--filter",
                    &format!("name={WEB_SERVICE}"),
                    "--format",
                    "{{.Replicas}}",
                ])
                .is_ok_and(|s| s.trim().starts_with(&format!("{n}/{n}")))
            },
        )?;
        wait_for(
            Duration::from_secs(60),
            &format!("HAProxy to spread over {n} replica(s)"),
            || served_by(LB_PORT, 40 * n as usize) == n as usize,
        )?;
        let w = load::Wrk::get(url.clone(), plan.connections, plan.curve_s);
        wrk_line = w.command_line();
        let _ = load::run(&load::Wrk {
            seconds: 1,
            ..w.clone()
        });
        runs.push((n, load::run(&w)?));
        let own = load::Wrk::get(
            format!("http://{}:{LB_PORT}/", balancer_address()?),
            plan.connections,
            plan.curve_s,
        );
        own_line = own.command_line();
        own_address.push((n, load::run(&own)?));
    }
    // Direct: the image's own binary on loopback, same wrk line, no balancer in the path.
    let (_, server) = servers::start_timed(direct, &logs.join("ours-direct.log"))?;
    let w = load::Wrk::get(direct.url("/"), plan.connections, plan.curve_s);
    let _ = load::run(&load::Wrk {
        seconds: 1,
        ..w.clone()
    });
    let direct_run = load::run(&w);
    server.stop()?;
    runs.insert(0, (0, direct_run?));
    Ok(StackResult {
        runs,
        own_address,
        wrk_line,
        own_line,
        direct_line: format!("{}   with `{}`", w.command_line(), direct.command_line()),
        access_log: crate::stack::access_log()?,
    })
}

/// The balancer's own address: its task's interface on `docker_gwbridge`, where the engine sends
/// what arrives on the published port (through its userland proxy, for 127.0.0.1).
fn balancer_address() -> Result<String> {
    let task = docker(&[
        "ps",
        "--quiet",
        "--no-trunc",
        "--filter",
        "label=com.docker.swarm.service.name=hello-world_lb",
    ])?;
    let task = task
        .lines()
        .next()
        .context("no running balancer task")?
        .trim();
    let attached = docker(&[
        "network",
        "inspect",
        "docker_gwbridge",
        "--format",
        "{{range $id, $c := .Containers}}{{$id}} {{$c.IPv4Address}}{{println}}{{end}}",
    ])?;
    attached
        .lines()
        .find_map(|line| {
            let (id, cidr) = line.split_once(' ')?;
            (id == task).then(|| cidr.split('/').next().unwrap_or(cidr).to_owned())
        })
        .with_context(|| format!("the balancer task {task} is not on docker_gwbridge"))
}

/// Distinct `x-served-by` values over `requests` fresh connections (bounded by a 2 s timeout each).
fn served_by(port: u16, requests: usize) -> usize {
    let mut seen = HashSet::new();
    for _ in 0..requests {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            continue;
        }
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        if let Some(v) = text.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-served-by:")
                .map(|v| v.trim().to_owned())
        }) {
            seen.insert(v);
        }
    }
    seen.len()
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(500));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs another xtask command from this tree, bounded by `limit`.
fn cargo_xtask(args: &[&str], limit: Duration) -> Result<()> {
    let mut child = Command::new("cargo")
        .arg("xtask")
        .args(args)
        .current_dir(crate::project_root())
        .stdout(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("cargo xtask {} exited with {status}", args.join(" "));
        }
        thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!(
        "cargo xtask {} did not finish within {limit:?}",
        args.join(" ")
    )
}
