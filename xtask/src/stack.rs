//! `cargo xtask stack up|down`: the Docker Swarm stack `hello-world` on this machine.
//!
//! `up` builds the images that are missing, initialises a one-node Swarm when the engine is not
//! in one, deploys `deploy/swarm/stack.yaml`, waits until every replica is healthy and the load
//! balancer answers, then prints the URL. `down` removes the stack (services, network, config)
//! and waits until its containers are gone; `--volumes` also deletes Redis's data.
//!
//! The admin token the replicas require for admin changes is a Swarm secret made from
//! `target/swarm/admin-token`, which [`ensure_admin_token`] generates when it is missing (32
//! bytes from the system's random source, as hex; never committed, kept across runs so the
//! e2e proofs and an operator can use it: `curl -H "Authorization: Bearer $(cat
//! target/swarm/admin-token)" ...` from a container on the stack's network). The cluster's
//! machines see that directory mounted, so one token serves both.
//!
//! The functions here are also the vocabulary of `cargo xtask e2e` and `cargo xtask cluster`:
//! the [`Engine`] a Swarm command runs on (this machine's, or one of the cluster's machines),
//! deploying the one stack file, replica counts, task containers, waiting with a deadline.

use std::io::Read as _;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::{Cmd, Shell, cmd};

use crate::e2e::http;
use crate::image;

pub(crate) const STACK: &str = "hello-world";
pub(crate) const WEB: &str = "hello-world_web";
pub(crate) const LB: &str = "hello-world_lb";
/// The Redis servers: a primary and two replicas, whichever is which now.
pub(crate) const REDIS_SERVERS: [&str; 3] = [
    "hello-world_redis-1",
    "hello-world_redis-2",
    "hello-world_redis-3",
];
/// The Sentinels that watch them.
pub(crate) const SENTINELS: [&str; 3] = [
    "hello-world_sentinel-1",
    "hello-world_sentinel-2",
    "hello-world_sentinel-3",
];
/// The store's data: one volume per server and per Sentinel (a Sentinel keeps what it learned).
const VOLUMES: [&str; 6] = [
    "hello-world_redis-1-data",
    "hello-world_redis-2-data",
    "hello-world_redis-3-data",
    "hello-world_sentinel-1-data",
    "hello-world_sentinel-2-data",
    "hello-world_sentinel-3-data",
];
/// The master name the Sentinels know the primary by (the stack's HELLO_REDIS_MASTER_NAME).
pub(crate) const MASTER_NAME: &str = "hello-world";
/// Where the store's members may run: `node.labels.hello-world.slot-N == true` places
/// redis-N and sentinel-N.
const SLOTS: [&str; 3] = [
    "hello-world.slot-1",
    "hello-world.slot-2",
    "hello-world.slot-3",
];
/// The published port of the load balancer, on loopback.
pub(crate) const LB_ADDR: &str = "127.0.0.1:8080";
pub(crate) const LB_URL: &str = "http://127.0.0.1:8080";
/// Long enough for a first start on a slow machine; a healthy start takes ~10 s.
const UP_TIMEOUT: Duration = Duration::from_secs(180);
/// Consecutive `/readyz` answers (250 ms apart) that must all be 200: 3 s, three times the
/// balancer's check interval.
const READY_STREAK: u32 = 12;

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

/// Where a Swarm command runs: this machine's engine (the single-engine stack), or the engine of
/// one of the cluster's machines, reached with `docker exec` (its CLI talks to its own engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Host,
    Node(&'static str),
}

/// A machine that hangs (`docker pause`) would hang `docker exec` into it: every command on a
/// machine is bounded.
const NODE_COMMAND_TIMEOUT: &str = "30";

/// Where a machine sees the repository's `deploy/` directory (mounted read-only).
pub(crate) const NODE_DEPLOY_DIR: &str = "/srv/hello-world/deploy";
/// Where a machine sees the directory of the admin token file (mounted read-only).
pub(crate) const NODE_SECRETS_DIR: &str = "/srv/hello-world/secrets";

impl Engine {
    /// `docker ARGS` on this engine, with `env` set for the docker CLI (stack files read it).
    pub(crate) fn docker<'a>(&self, sh: &'a Shell, args: &[&str], env: &[(&str, &str)]) -> Cmd<'a> {
        match self {
            Engine::Host => {
                let mut command = cmd!(sh, "docker {args...}");
                for (key, value) in env {
                    command = command.env(key, value);
                }
                command
            }
            Engine::Node(node) => {
                let env: Vec<String> = env
                    .iter()
                    .flat_map(|(key, value)| ["-e".to_string(), format!("{key}={value}")])
                    .collect();
                cmd!(
                    sh,
                    "timeout --kill-after=5 {NODE_COMMAND_TIMEOUT} docker exec {env...} {node} docker {args...}"
                )
            }
        }
    }

    /// Whether every Redis server and every Sentinel runs (1/1 each).
    pub(crate) fn store_running(&self, sh: &Shell) -> Result<bool> {
        for service in REDIS_SERVERS.iter().chain(&SENTINELS) {
            if self.replicas(sh, service)? != (1, 1) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `docker ARGS` on this engine, its output as text.
    pub(crate) fn read(&self, sh: &Shell, args: &[&str]) -> Result<String> {
        self.docker(sh, args, &[])
            .quiet()
            .ignore_stderr()
            .read()
            .with_context(|| format!("docker {} on {self}", args.join(" ")))
    }

    /// The admin token file as this engine's CLI sees it: a machine has this machine's
    /// `target/swarm/` mounted at [`NODE_SECRETS_DIR`].
    fn admin_token_file(&self, host_path: &std::path::Path) -> String {
        match self {
            Engine::Host => host_path.display().to_string(),
            Engine::Node(_) => format!(
                "{NODE_SECRETS_DIR}/{}",
                host_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        }
    }

    /// The stack file as this engine's CLI sees it.
    fn stack_file(&self) -> String {
        match self {
            Engine::Host => "deploy/swarm/stack.yaml".to_string(),
            Engine::Node(_) => format!("{NODE_DEPLOY_DIR}/swarm/stack.yaml"),
        }
    }

    /// `(running, desired)` tasks of a service, as `docker service ls` shows them ("3/3"). A
    /// task with a healthcheck counts as running only once it is healthy.
    pub(crate) fn replicas(&self, sh: &Shell, service: &str) -> Result<(u32, u32)> {
        let filter = format!("name={service}");
        let out = self.read(
            sh,
            &[
                "service",
                "ls",
                "--filter",
                &filter,
                "--format",
                "{{.Replicas}}",
            ],
        )?;
        parse_replicas(&out).with_context(|| format!("service {service}"))
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::Host => f.write_str("this machine's engine"),
            Engine::Node(node) => f.write_str(node),
        }
    }
}

/// The images a deployment runs: local tags on one engine, registry references by digest on
/// the cluster. Each is the `${VAR:-default}` of its service in the stack file.
#[derive(Debug, Clone)]
pub(crate) struct Images {
    pub(crate) web: String,
    pub(crate) haproxy: String,
    pub(crate) redis: String,
}

impl Images {
    /// The local tags the stack file defaults to.
    pub(crate) fn local() -> Images {
        Images {
            web: image::DEV_TAG.to_string(),
            haproxy: image::HAPROXY_IMAGE.to_string(),
            redis: image::REDIS_IMAGE.to_string(),
        }
    }

    /// The stack file's variables, with these images.
    fn variables(&self) -> [(&'static str, &str); 3] {
        [
            ("HELLO_WORLD_IMAGE", &self.web),
            ("HAPROXY_IMAGE", &self.haproxy),
            ("REDIS_IMAGE", &self.redis),
        ]
    }
}

/// Builds what is missing, deploys and waits until the stack serves through the balancer.
pub(crate) fn up(sh: &Shell) -> Result<()> {
    if crate::cluster::exists(sh)? {
        bail!(
            "the three-machine cluster is up, and it holds {LB_ADDR}: only one of the stack and \
             the cluster runs at a time (`cargo xtask cluster down` first)"
        );
    }
    image::ensure_base_images(sh)?;
    image::ensure_dev_image(sh)?;
    ensure_swarm(sh)?;
    deploy(sh, Engine::Host, &Images::local())?;
    let started = Instant::now();
    wait_until(
        UP_TIMEOUT,
        "the stack to be ready (3/3 web, lb, 3 Redis, 3 Sentinels)",
        || {
            Ok(Engine::Host.store_running(sh)?
                && Engine::Host.replicas(sh, LB)? == (1, 1)
                && Engine::Host.replicas(sh, WEB)? == (3, 3))
        },
    )?;
    // HAProxy assumes new servers up, so one good answer proves little; the stack is ready when
    // every replica has answered `/readyz` through the balancer, found Redis (a fresh replica's
    // client may still be connecting: readiness does not wait for the store, the state routes
    // would answer 503), and the last READY_STREAK answers in a row (over more than two check
    // intervals) were all so.
    let mut replicas_ready = std::collections::BTreeSet::new();
    let mut streak = 0;
    wait_until(
        UP_TIMEOUT,
        "every replica to answer /readyz 200 with Redis reachable, through the balancer",
        || {
            // `x-served-by` shows the answer came from a replica, not from the balancer itself.
            match http::get(LB_ADDR, "/readyz") {
                Ok(r) if r.status == 200 && store_reachable(&r) => {
                    if let Some(name) = r.header("x-served-by") {
                        replicas_ready.insert(name.to_string());
                    }
                    streak += 1;
                }
                _ => streak = 0,
            }
            Ok(replicas_ready.len() >= 3 && streak >= READY_STREAK)
        },
    )?;
    eprintln!("stack: ready in {:.1?}", started.elapsed());
    Ok(())
}

/// Whether a `/readyz` answer says the replica found its store.
pub(crate) fn store_reachable(readyz: &http::Response) -> bool {
    readyz
        .json()
        .is_ok_and(|body| body["store_status"]["state"] == "reachable")
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

/// `docker stack deploy` of `deploy/swarm/stack.yaml` on `engine` with `images`: the one way the
/// stack is deployed, on one engine or on the cluster. The HAProxy config's and the admin
/// token's names carry a digest of their files, because a Swarm config or secret cannot change
/// in place.
pub(crate) fn deploy(sh: &Shell, engine: Engine, images: &Images) -> Result<()> {
    let token = ensure_admin_token()?;
    let config_digest = file_digest(sh, "deploy/swarm/haproxy.cfg")?;
    let start_digest = file_digest(sh, "deploy/swarm/redis-start.sh")?;
    let token_digest = file_digest(sh, &token)?;
    let token_file = engine.admin_token_file(&token);
    label_slots(sh, engine)?;
    let access_log = access_log()?;
    let mut env = vec![
        ("ACCESS_LOG", access_log),
        ("HAPROXY_CFG_DIGEST", config_digest.as_str()),
        ("REDIS_START_DIGEST", start_digest.as_str()),
        ("ADMIN_TOKEN_DIGEST", token_digest.as_str()),
        ("ADMIN_TOKEN_FILE", token_file.as_str()),
    ];
    env.extend(images.variables());
    let file = engine.stack_file();
    engine
        .docker(
            sh,
            &["stack", "deploy", "--prune", "--compose-file", &file, STACK],
            &env,
        )
        .run()
        .with_context(|| format!("docker stack deploy on {engine}"))?;
    Ok(())
}

/// The stacks' one switch for access logs, the replicas' and the balancers' alike: `ACCESS_LOG`
/// where the stack is deployed, `all` (every request) or `errors` (4xx, 5xx and slow requests:
/// the default, and what an unset or empty variable means).
pub(crate) fn access_log() -> Result<&'static str> {
    let given = std::env::var("ACCESS_LOG").unwrap_or_default();
    match given.as_str() {
        "" | "errors" => Ok("errors"),
        "all" => Ok("all"),
        _ => bail!(
            "ACCESS_LOG={given:?}: the stacks log `all` requests or only `errors` (the default)"
        ),
    }
}

/// Labels the machines with the store's slots: slot N on the Nth machine by hostname, so each
/// machine of three holds one Redis and one Sentinel, and one engine holds all of them.
fn label_slots(sh: &Shell, engine: Engine) -> Result<()> {
    let format = "{{.Hostname}}";
    let listed = engine.read(sh, &["node", "ls", "--format", format])?;
    let mut machines: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    machines.sort_unstable();
    if machines.is_empty() {
        bail!("{engine}: the Swarm lists no machine");
    }
    for (n, slot) in SLOTS.iter().enumerate() {
        let machine = machines[n % machines.len()];
        let label = format!("{slot}=true");
        engine
            .docker(sh, &["node", "update", "--label-add", &label, machine], &[])
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("labelling {machine} with {slot}"))?;
    }
    Ok(())
}

/// The first 12 hex digits of a file's SHA-256: short, and enough to tell versions apart.
fn file_digest(sh: &Shell, path: impl AsRef<std::path::Path>) -> Result<String> {
    let path = path.as_ref();
    let digest = cmd!(sh, "sha256sum {path}").quiet().read()?;
    Ok(digest.get(..12).context("sha256sum output")?.to_string())
}

/// Where the stack's admin token is kept: under the git-ignored target/, never committed.
pub(crate) fn admin_token_path() -> PathBuf {
    crate::project_root().join("target/swarm/admin-token")
}

/// The admin token file of the stack (and of the three-machine cluster), generated when it is
/// missing: 32 bytes from the system's random source, as 64 hex characters, readable by its
/// owner only. Returns its path; the token stays in the file.
pub(crate) fn ensure_admin_token() -> Result<PathBuf> {
    let path = admin_token_path();
    if path.is_file() {
        return Ok(path);
    }
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut source| source.read_exact(&mut random))
        .context("reading 32 random bytes for the admin token")?;
    let token: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    let dir = path.parent().context("the token file has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(token.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("stack: generated the admin token in {}", path.display());
    Ok(path)
}

/// The stack's admin token, as an `Authorization` header value.
pub(crate) fn admin_bearer() -> Result<String> {
    let path = ensure_admin_token()?;
    let token =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("Bearer {}", token.trim()))
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
            "the Redis volumes to be removed",
            || {
                let exists = cmd!(sh, "docker volume ls -q --filter name=hello-world_")
                    .quiet()
                    .read()?;
                let left: Vec<&str> = exists.lines().filter(|v| VOLUMES.contains(v)).collect();
                if left.is_empty() {
                    return Ok(true);
                }
                Ok(cmd!(sh, "docker volume rm {left...}")
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

/// "3/3" (or "2/3 (max 1 per node)") → `(3, 3)`. The name filter of `docker service ls`
/// matches prefixes; the stack's service names are not prefixes of each other.
fn parse_replicas(out: &str) -> Result<(u32, u32)> {
    let line = out.lines().next().context("not found")?;
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

/// The Redis server (its service) the Sentinels name as the primary now, asked of the first
/// Sentinel on this machine's engine that answers.
pub(crate) fn redis_primary(sh: &Shell) -> Result<String> {
    for sentinel in SENTINELS {
        let Some((id, _)) = task_containers(sh, sentinel)?.into_iter().next() else {
            continue;
        };
        let Ok(named) = cmd!(
            sh,
            "docker exec {id} redis-cli -p 26379 --raw sentinel get-master-addr-by-name {MASTER_NAME}"
        )
        .quiet()
        .ignore_stderr()
        .read() else {
            continue;
        };
        if let Some(name) = named
            .lines()
            .next()
            .map(str::trim)
            .filter(|name| name.starts_with("redis-"))
        {
            return Ok(format!("{STACK}_{name}"));
        }
    }
    bail!("no Sentinel names a primary")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_counts_are_read_from_service_ls() {
        assert_eq!(parse_replicas("3/3\n").expect("counts"), (3, 3));
        assert_eq!(
            parse_replicas("2/3 (max 1 per node)").expect("counts"),
            (2, 3)
        );
        assert!(parse_replicas("").is_err());
    }

    #[test]
    fn the_stack_file_reads_exactly_the_variables_a_deployment_sets() {
        let text = std::fs::read_to_string(crate::project_root().join("deploy/swarm/stack.yaml"))
            .expect("the stack file");
        let mut used: Vec<&str> = text
            .split("${")
            .skip(1)
            .filter_map(|rest| rest.split([':', '}']).next())
            .collect();
        used.sort_unstable();
        used.dedup();
        let mut set: Vec<&str> = Images::local()
            .variables()
            .iter()
            .map(|(k, _)| *k)
            .collect();
        set.extend([
            "ACCESS_LOG",
            "HAPROXY_CFG_DIGEST",
            "REDIS_START_DIGEST",
            "ADMIN_TOKEN_DIGEST",
            "ADMIN_TOKEN_FILE",
        ]);
        set.sort_unstable();
        assert_eq!(
            used, set,
            "deploy() sets what deploy/swarm/stack.yaml reads"
        );
    }
}
