//! `cargo xtask stack up|down`: the Docker Swarm stack `hello-world` on this machine.
//!
//! `up` builds the images that are missing, initialises a one-node Swarm when the engine is not
//! in one, deploys `deploy/swarm/stack.yaml`, waits until every replica is healthy and the load
//! balancer answers, then prints the URL. `down` removes the stack (services, network, config)
//! and waits until its containers are gone; `--volumes` also deletes Redis's data.
//!
//! The functions here are also the vocabulary of `cargo xtask e2e`: replica counts, task
//! containers, waiting with a deadline.

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::e2e::http;
use crate::image;

pub(crate) const STACK: &str = "hello-world";
pub(crate) const WEB: &str = "hello-world_web";
pub(crate) const LB: &str = "hello-world_lb";
pub(crate) const REDIS: &str = "hello-world_redis";
const VOLUME: &str = "hello-world_redis-data";
/// The published port of the load balancer, on loopback.
pub(crate) const LB_ADDR: &str = "127.0.0.1:8080";
pub(crate) const LB_URL: &str = "http://127.0.0.1:8080";
/// Long enough for a first start on a slow machine; a healthy start takes ~10 s.
const UP_TIMEOUT: Duration = Duration::from_secs(180);

const USAGE: &str = "usage: cargo xtask stack up | down [--volumes]";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let sh = image::project_shell()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up"] => {
            up(&sh)?;
            println!("\nhello-world is up: {LB_URL}");
            println!("  try: hello-world check {LB_URL} --requests 300 --new-connection");
            println!("  down: cargo xtask stack down [--volumes]");
            Ok(())
        }
        ["down"] => down(&sh, false),
        ["down", "--volumes"] => down(&sh, true),
        _ => bail!("{USAGE}"),
    }
}

/// Builds what is missing, deploys and waits until the stack serves through the balancer.
pub(crate) fn up(sh: &Shell) -> Result<()> {
    image::ensure_base_images(sh)?;
    if !image::image_exists(sh, image::DEV_TAG) {
        let version = image::crate_version(sh)?;
        image::build_app_image(
            sh,
            &version,
            &[image::DEV_TAG.to_string(), format!("hello-world:{version}")],
        )?;
    }
    ensure_swarm(sh)?;
    deploy(sh)?;
    let started = Instant::now();
    wait_until(
        UP_TIMEOUT,
        "the stack to be ready (3/3 web, lb, redis)",
        || {
            Ok(replicas(sh, REDIS)? == (1, 1)
                && replicas(sh, LB)? == (1, 1)
                && replicas(sh, WEB)? == (3, 3))
        },
    )?;
    wait_until(UP_TIMEOUT, "the load balancer to answer 200 on /", || {
        // `x-served-by` shows the answer came from a replica, not from the balancer itself.
        Ok(http::get(LB_ADDR, "/")
            .is_ok_and(|r| r.status == 200 && r.header("x-served-by").is_some()))
    })?;
    eprintln!("stack: ready in {:.1?}", started.elapsed());
    Ok(())
}

/// `docker swarm init` on loopback when the engine is not part of a Swarm yet.
fn ensure_swarm(sh: &Shell) -> Result<()> {
    let format = "{{.Swarm.LocalNodeState}}";
    let state = cmd!(sh, "docker info --format {format}").quiet().read()?;
    if state.trim() != "active" {
        cmd!(sh, "docker swarm init --advertise-addr 127.0.0.1")
            .ignore_stdout()
            .run()?;
    }
    Ok(())
}

/// `docker stack deploy`; the HAProxy config name carries a digest of the file, because a Swarm
/// config cannot change in place.
pub(crate) fn deploy(sh: &Shell) -> Result<()> {
    let digest = cmd!(sh, "sha256sum deploy/swarm/haproxy.cfg")
        .quiet()
        .read()?;
    let digest = digest.get(..12).context("sha256sum output")?.to_string();
    cmd!(
        sh,
        "docker stack deploy --prune --compose-file deploy/swarm/stack.yaml {STACK}"
    )
    .env("HAPROXY_CFG_DIGEST", digest)
    .run()
    .context("docker stack deploy")?;
    Ok(())
}

/// Removes the stack and waits until nothing of it runs; with `volumes`, deletes Redis's data.
pub(crate) fn down(sh: &Shell, volumes: bool) -> Result<()> {
    let format = "{{.Name}}";
    let listed = cmd!(sh, "docker stack ls --format {format}").quiet().read();
    let deployed = listed.is_ok_and(|names| names.lines().any(|n| n == STACK));
    if deployed {
        cmd!(sh, "docker stack rm {STACK}").run()?;
    }
    // A paused container would never stop; a test may have left one paused if it failed.
    for id in stack_containers(sh)? {
        let _ = cmd!(sh, "docker unpause {id}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
    }
    wait_until(
        Duration::from_secs(90),
        "the stack's containers and network to go",
        || {
            let network_left = cmd!(sh, "docker network ls -q --filter name={STACK}_backend")
                .quiet()
                .read()?;
            Ok(stack_containers(sh)?.is_empty() && network_left.trim().is_empty())
        },
    )?;
    if volumes {
        // The volume is released a moment after its container is removed.
        wait_until(
            Duration::from_secs(30),
            "the Redis volume to be removed",
            || {
                let exists = cmd!(sh, "docker volume ls -q --filter name={VOLUME}")
                    .quiet()
                    .read()?;
                if exists.lines().all(|v| v != VOLUME) {
                    return Ok(true);
                }
                Ok(cmd!(sh, "docker volume rm {VOLUME}")
                    .quiet()
                    .ignore_stdout()
                    .ignore_stderr()
                    .run()
                    .is_ok())
            },
        )?;
    }
    eprintln!(
        "stack: down{}",
        if volumes { " (volume removed)" } else { "" }
    );
    Ok(())
}

/// Every container (any state) that belongs to the stack.
fn stack_containers(sh: &Shell) -> Result<Vec<String>> {
    let filter = format!("label=com.docker.stack.namespace={STACK}");
    let ids = cmd!(sh, "docker ps -aq --filter {filter}").quiet().read()?;
    Ok(ids.lines().map(str::to_string).collect())
}

/// `(running, desired)` tasks of a service, as `docker service ls` shows them ("3/3"). A task
/// with a healthcheck counts as running only once it is healthy.
pub(crate) fn replicas(sh: &Shell, service: &str) -> Result<(u32, u32)> {
    let format = "{{.Replicas}}";
    let filter = format!("name={service}");
    let out = cmd!(sh, "docker service ls --filter {filter} --format {format}")
        .quiet()
        .read()?;
    // The name filter matches prefixes; the stack's service names are not prefixes of each other.
    let line = out
        .lines()
        .next()
        .with_context(|| format!("service {service} not found"))?;
    let counts = line.split_whitespace().next().unwrap_or_default();
    let (running, desired) = counts
        .split_once('/')
        .with_context(|| format!("replicas `{line}`"))?;
    Ok((running.parse()?, desired.parse()?))
}

/// The running containers of a service's tasks: `(container id, task name)`.
pub(crate) fn task_containers(sh: &Shell, service: &str) -> Result<Vec<(String, String)>> {
    let filter = format!("label=com.docker.swarm.service.name={service}");
    let format = "{{.ID}} {{.Names}}";
    let out = cmd!(
        sh,
        "docker ps --filter {filter} --filter status=running --format {format}"
    )
    .quiet()
    .read()?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .collect())
}

/// Polls `ready` every 250 ms until it says true; fails after `timeout`. Returns how long it took.
pub(crate) fn wait_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let started = Instant::now();
    let mut last_error = None;
    while started.elapsed() < timeout {
        match ready() {
            Ok(true) => return Ok(started.elapsed()),
            Ok(false) => {}
            Err(err) => last_error = Some(err),
        }
        sleep(Duration::from_millis(250));
    }
    match last_error {
        Some(err) => Err(err.context(format!("timed out after {timeout:?} waiting for {what}"))),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}
