//! `cargo xtask cluster up|down [--volumes]|status`: the seed's three-node cluster, on this
//! machine. Three Docker engines, each in a container of its own (`hello-world-node-1..3`, from
//! Debian's `docker.io`), on a private network of the project's own, form one Swarm with three
//! managers; a registry (Debian's `docker-registry`) holds every image they run; the stack is
//! `deploy/swarm/stack.yaml`, deployed by digest; and an external HAProxy, outside the Swarm,
//! balances over the machines on `127.0.0.1:8080`.
//!
//! ```text
//!   127.0.0.1:8080 ─► hello-world-lb (deploy/cluster/haproxy.cfg: checks every machine)
//!                        │ hello-world-cluster network (192.168.213.0/24)
//!        ┌───────────────┼────────────────┐
//!     node-1 :8080    node-2 :8080    node-3 :8080    each: dockerd (manager), `lb` (global,
//!        └──── overlay: web ×3 (one per machine), redis ────┘     host port), a `web` replica
//!   127.0.0.1:5001 ─► hello-world-registry :5000 ◄── the machines pull from it
//! ```
//!
//! What a machine is, is said once, in [`start_node`]: the container's privileges (not
//! `--privileged`: the host's bounding set lacks CAP_SYS_RESOURCE), its own `/var/lib/docker`
//! volume (a restarted machine is a rebooted one, with its images and Swarm state), a fixed
//! address (a reconnected machine keeps the address the Swarm knows), and its engine's settings
//! (`deploy/cluster/daemon.json`). Images are built here, pushed from this machine to the
//! registry's loopback port (which Docker trusts without TLS, so this engine's configuration is
//! left alone) and pulled by the machines by digest.
//!
//! `up` is idempotent: it creates what is missing and reuses what runs. Where it cannot work (no
//! engine, a port in use, too little disk, the single-engine stack running, an engine or a
//! machine that never becomes ready) it fails within two minutes with one message naming the
//! cause, and removes what it started. Every wait is bounded.
//!
//! Built to be extended: the machines are [`NODES`] (one list), a service placed on each machine
//! is a `mode: global` service in the stack file, and [`publish`] pushes by reference and
//! returns the digest, which is all an image index (several platforms) needs as well.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

use crate::e2e::http;
use crate::image;
use crate::stack::{self, Engine, Images, LB, REDIS_SERVERS, SENTINELS, STACK, WEB, wait_until};

/// The machines, in order. Their hostnames are their names: Swarm's `{{.Node.Hostname}}`.
pub(crate) const NODES: [&str; 3] = [
    "hello-world-node-1",
    "hello-world-node-2",
    "hello-world-node-3",
];
/// The cluster's own network; the subnet is fixed so each machine keeps its address when it is
/// disconnected and connected again (the Swarm knows managers by address). It lies outside
/// Docker's default pools (172.17–31.x, and 10.0.x for overlays inside the machines).
pub(crate) const NETWORK: &str = "hello-world-cluster";
const SUBNET: &str = "192.168.213.0/24";
pub(crate) const REGISTRY: &str = "hello-world-registry";
/// How the machines reach the registry (named in `insecure-registries`, daemon.json).
const REGISTRY_ON_NETWORK: &str = "hello-world-registry:5000";
/// How this machine pushes: loopback only, a port the service itself does not default to.
const REGISTRY_PUSH: &str = "127.0.0.1:5001";
const REGISTRY_VOLUME: &str = "hello-world-registry-data";
/// The external balancer: the role of GKE's cloud load balancer.
pub(crate) const EXTERNAL_LB: &str = "hello-world-lb";
/// Every container, volume and network `up` creates carries this label; `down` removes by it.
const LABEL: &str = "org.hello-world.cluster=1";
/// Swarm's dispatcher heartbeat, set at `swarm init` (a running Swarm does not shorten it): a
/// machine that misses heartbeats for a few periods is `Down` and its tasks are rescheduled.
const DISPATCHER_HEARTBEAT: &str = "1s";
/// Below this much free space where the engine keeps its data, `up` refuses to start: each
/// machine stores every image it runs uncompressed (vfs), about 1 GiB a machine with the stack.
const MIN_FREE_DISK: u64 = 6 << 30;
/// Bounds of `up`'s waits. Failures are found within these, well inside two minutes.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(60);
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(60);
const SERVICES_TIMEOUT: Duration = Duration::from_secs(180);

const USAGE: &str =
    "usage: cargo xtask cluster up | down [--volumes] | status | pause NODE | unpause NODE
  pause NODE    hang a machine: its engine and everything it runs stop, its network stays
  unpause NODE  let it go on";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let sh = image::project_shell()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up"] => {
            let started = Instant::now();
            let images = up(&sh)?;
            println!(
                "\nhello-world runs on three machines: {} (up in {:.0?})",
                stack::LB_URL,
                started.elapsed()
            );
            println!(
                "  images: {}, {}, {}",
                images.web, images.haproxy, images.redis
            );
            println!("  see it: cargo xtask cluster status");
            println!("  down:   cargo xtask cluster down [--volumes]");
            Ok(())
        }
        ["down"] => down(&sh, false),
        ["down", "--volumes"] => down(&sh, true),
        ["status"] => status(&sh),
        ["pause", node] => freeze(&sh, machine(node)?, true),
        ["unpause", node] => freeze(&sh, machine(node)?, false),
        _ => bail!("{USAGE}"),
    }
}

/// `hello-world-node-2` or `2` → the machine.
fn machine(name: &str) -> Result<&'static str> {
    NODES
        .into_iter()
        .find(|node| *node == name || node.strip_prefix("hello-world-node-") == Some(name))
        .with_context(|| format!("no machine `{name}`: the machines are {}", NODES.join(", ")))
}

/// Hangs a machine, or lets it go on. `docker pause` freezes the machine's own container (its
/// engine), but the containers its engine runs live in a cgroup of their own
/// (`--cgroup-parent`), outside it: that one is frozen too, so the whole machine stops, as a
/// hung host does, while its network stack still accepts connections.
pub(crate) fn freeze(sh: &Shell, node: &str, frozen: bool) -> Result<()> {
    let v1 = format!("/sys/fs/cgroup/freezer/{node}/freezer.state");
    let v2 = format!("/sys/fs/cgroup/{node}/cgroup.freeze");
    let (path, value) = if Path::new(&v1).exists() {
        (v1, if frozen { "FROZEN" } else { "THAWED" })
    } else {
        (v2, if frozen { "1" } else { "0" })
    };
    let state = container_state(sh, node);
    if frozen {
        if state.as_deref() == Some("running") {
            cmd!(sh, "docker pause {node}")
                .quiet()
                .ignore_stdout()
                .run()?;
        }
        std::fs::write(&path, value)
            .with_context(|| format!("freezing {node}'s containers ({path})"))?;
    } else {
        // Thawed first: a machine whose containers stay frozen cannot be stopped either.
        if Path::new(&path).exists() {
            std::fs::write(&path, value).with_context(|| format!("thawing {path}"))?;
        }
        if state.as_deref() == Some("paused") {
            cmd!(sh, "docker unpause {node}")
                .quiet()
                .ignore_stdout()
                .run()?;
        }
    }
    Ok(())
}

/// The address a machine has on the cluster network: `.11`, `.12`, `.13`.
pub(crate) fn node_ip(node: &str) -> String {
    let index = NODES.iter().position(|n| *n == node).unwrap_or(0);
    format!("192.168.213.{}", 11 + index)
}

/// True when anything of the cluster exists (any state).
pub(crate) fn exists(sh: &Shell) -> Result<bool> {
    Ok(!labelled(sh, "ps", &["-a"])?.is_empty())
}

/// Starts (or completes) the cluster and waits until it serves through the external balancer.
/// On failure, removes what it started and names the cause.
pub(crate) fn up(sh: &Shell) -> Result<Images> {
    preflight(sh)?;
    image::ensure_images(sh, image::CLUSTER_IMAGES)?;
    let version = image::crate_version(sh)?;
    if !image::PLATFORMS
        .into_iter()
        .all(|p| image::image_exists(sh, &p.tag(&version)))
    {
        image::build_platform_images(sh, &version)?;
    }
    let result = start(sh);
    if result.is_err() {
        eprintln!("cluster: up failed; removing what it started");
        if let Err(err) = down(sh, false) {
            eprintln!("cluster: removing it failed too: {err:#}");
        }
    }
    result
}

fn start(sh: &Shell) -> Result<Images> {
    let started = Instant::now();
    ensure_network(sh)?;
    start_registry(sh)?;
    for node in NODES {
        start_node(sh, node)?;
    }
    for node in NODES {
        wait_for_engine(sh, node)?;
    }
    form_swarm(sh)?;
    eprintln!(
        "cluster: three managers ready after {:.1?}",
        started.elapsed()
    );
    let images = Images {
        // The image index (amd64 and arm64); each machine pulls its own platform's image.
        web: index(sh)?,
        haproxy: publish(sh, image::HAPROXY_IMAGE, "hello-world-haproxy")?,
        redis: publish(sh, image::REDIS_IMAGE, "hello-world-redis")?,
    };
    let manager = live_manager(sh)?;
    stack::deploy(sh, manager, &images)?;
    start_external_lb(sh)?;
    wait_until(
        SERVICES_TIMEOUT,
        "the stack on three machines (3/3 web, lb, a Redis and a Sentinel on each machine)",
        || {
            Ok(manager.replicas(sh, WEB)? == (3, 3)
                && manager.replicas(sh, LB)? == (3, 3)
                && manager.store_running(sh)?)
        },
    )?;
    // A Swarm restored from its machines' data places the replicas of machines that were not
    // Ready yet on the others, and never moves them back.
    spread_web(sh, SERVICES_TIMEOUT)?;
    wait_serving(SERVICES_TIMEOUT)?;
    eprintln!("cluster: serving after {:.1?}", started.elapsed());
    Ok(images)
}

/// One `web` replica per machine. A machine that was not Ready when the Swarm placed its
/// replica (it came back late, or after the rest of a full restart) gets no replica by itself:
/// Swarm does not move running tasks. So a replica of a machine that holds two is stopped
/// politely (SIGTERM: it drains) and its replacement goes where the spread preference puts it,
/// the machine with none. Each wait is bounded by `within`.
pub(crate) fn spread_web(sh: &Shell, within: Duration) -> Result<()> {
    for _ in 0..4 {
        let mut tasks = Vec::new();
        wait_until(within, "3 running web replicas", || {
            tasks = running_web(sh)?;
            Ok(tasks.len() == 3)
        })?;
        let Some(crowded) = NODES
            .into_iter()
            .find(|node| tasks.iter().filter(|t| t.node == *node).count() > 1)
        else {
            return Ok(());
        };
        let task = tasks.iter().find(|t| t.node == crowded).context("a task")?;
        eprintln!(
            "cluster: {crowded} runs two web replicas; stopping {} so that it moves",
            task.name
        );
        let filter = format!("label=com.docker.swarm.task.id={}", task.id);
        let container = Engine::Node(crowded).read(sh, &["ps", "-q", "--filter", &filter])?;
        let container = container.trim();
        ensure!(!container.is_empty(), "no container for task {}", task.id);
        Engine::Node(crowded)
            .read(sh, &["kill", "--signal", "TERM", container])
            .with_context(|| format!("stopping {} on {crowded}", task.name))?;
        wait_until(within, "the stopped replica to be replaced", || {
            let now = running_web(sh)?;
            Ok(now.len() == 3 && now.iter().all(|t| t.id != task.id))
        })?;
    }
    bail!("the web replicas would not spread one per machine")
}

/// The `web` tasks running now, as a live manager sees them.
fn running_web(sh: &Shell) -> Result<Vec<Task>> {
    Ok(tasks(sh, live_manager(sh)?, WEB)?
        .into_iter()
        .filter(Task::running)
        .collect())
}

/// Everything `up` can know before it starts anything: each failure is one message.
fn preflight(sh: &Shell) -> Result<()> {
    let format = "{{.ServerVersion}} {{.DockerRootDir}}";
    let info = cmd!(sh, "timeout 20 docker info --format {format}")
        .quiet()
        .ignore_stderr()
        .read()
        .map_err(|_| {
            anyhow::anyhow!(
                "no Docker engine answers (`docker info` failed): start it, or point DOCKER_HOST at one"
            )
        })?;
    let root = info.split_whitespace().nth(1).unwrap_or("/var/lib/docker");
    if host_stack_deployed(sh) {
        bail!(
            "the single-engine stack `{STACK}` is up on this engine, and it holds {}: only one of \
             the stack and the cluster runs at a time (`cargo xtask stack down` first)",
            stack::LB_ADDR
        );
    }
    let ours = labelled(sh, "ps", &[])?;
    check_ports(
        &[(stack::LB_ADDR, EXTERNAL_LB), (REGISTRY_PUSH, REGISTRY)],
        &ours,
    )?;
    check_disk(free_disk(Path::new(root))?, root)?;
    ensure!(
        Path::new("/sys/fs/cgroup").is_dir(),
        "no /sys/fs/cgroup on this machine: the machines' engines need the cgroup filesystem"
    );
    Ok(())
}

/// Each `(address, container)`: free, unless that container of ours holds it already (`up` on
/// a running cluster).
fn check_ports(ports: &[(&str, &str)], running: &[String]) -> Result<()> {
    for (address, holder) in ports {
        let held_by_us = running.iter().any(|name| name == holder);
        if !held_by_us && TcpListener::bind(address).is_err() {
            bail!(
                "{address} is in use by another program: the cluster publishes its {holder} there"
            );
        }
    }
    Ok(())
}

fn check_disk(free: u64, root: &str) -> Result<()> {
    ensure!(
        free >= MIN_FREE_DISK,
        "too little disk: {} free under {root}, the cluster needs {} (three machines, each \
         storing its images uncompressed)",
        gib(free),
        gib(MIN_FREE_DISK)
    );
    Ok(())
}

fn host_stack_deployed(sh: &Shell) -> bool {
    let format = "{{.Name}}";
    cmd!(sh, "timeout 20 docker stack ls --format {format}")
        .quiet()
        .ignore_stderr()
        .read()
        .is_ok_and(|names| names.lines().any(|n| n == STACK))
}

/// Bytes available to unprivileged writers under `path` (`df`'s "avail").
fn free_disk(path: &Path) -> Result<u64> {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .context("running df")?;
    parse_df(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("free disk under {}", path.display()))
}

fn parse_df(out: &str) -> Result<u64> {
    out.lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .context("unexpected df output")
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1 << 30))
}

/// Names of the running (or, with `-a`, all) containers, or the volumes or networks, that
/// carry the cluster's label.
fn labelled(sh: &Shell, what: &str, extra: &[&str]) -> Result<Vec<String>> {
    let filter = format!("label={LABEL}");
    let format = "{{.Name}}";
    let out = match what {
        "ps" => {
            let format = "{{.Names}}";
            cmd!(
                sh,
                "docker ps {extra...} --filter {filter} --format {format}"
            )
            .quiet()
            .read()?
        }
        "volume" => cmd!(sh, "docker volume ls --filter {filter} --format {format}")
            .quiet()
            .read()?,
        "network" => cmd!(sh, "docker network ls --filter {filter} --format {format}")
            .quiet()
            .read()?,
        other => bail!("labelled: unknown kind {other}"),
    };
    Ok(out.lines().map(str::to_string).collect())
}

/// A container's state, as `docker inspect` says it: "running", "paused", "exited", or None
/// when it does not exist.
pub(crate) fn container_state(sh: &Shell, name: &str) -> Option<String> {
    let format = "{{.State.Status}}";
    cmd!(
        sh,
        "docker inspect --type container --format {format} {name}"
    )
    .quiet()
    .ignore_stderr()
    .read()
    .ok()
    .map(|s| s.trim().to_string())
}

fn ensure_network(sh: &Shell) -> Result<()> {
    if labelled(sh, "network", &[])?.iter().any(|n| n == NETWORK) {
        return Ok(());
    }
    cmd!(
        sh,
        "docker network create --driver bridge --subnet {SUBNET} --label {LABEL} {NETWORK}"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .with_context(|| {
        format!("creating the network {NETWORK} ({SUBNET}): is another network using that range?")
    })?;
    Ok(())
}

/// The registry: Debian's `docker-registry`, its data on a volume, published on loopback for
/// the push and on the cluster network for the machines.
fn start_registry(sh: &Shell) -> Result<()> {
    let config = crate::project_root().join("deploy/cluster/registry.yml");
    let config = format!("{}:/etc/docker/registry/config.yml:ro", config.display());
    let image = image::REGISTRY_IMAGE;
    let volume = format!("{REGISTRY_VOLUME}:/var/lib/docker-registry");
    let publish = format!("{REGISTRY_PUSH}:5000");
    ensure_container(sh, REGISTRY, || {
        cmd!(
            sh,
            "docker run --detach --name {REGISTRY} --hostname {REGISTRY} --label {LABEL}
                --network {NETWORK} --ip 192.168.213.5 --publish {publish}
                --volume {volume} --volume {config}
                --read-only --tmpfs /tmp --cap-drop ALL --memory 256m
                {image}"
        )
    })?;
    // Volumes made by `docker run` carry no label; `down --volumes` finds them by name.
    wait_until(Duration::from_secs(30), "the registry to answer", || {
        Ok(http::get(REGISTRY_PUSH, "/v2/").is_ok_and(|r| r.status == 200))
    })?;
    Ok(())
}

/// One machine: a Docker engine in a container. Not `--privileged`, which this host refuses
/// (its capability bounding set lacks CAP_SYS_RESOURCE): every other capability, no seccomp
/// filter, `/proc` and `/sys` unmasked (systempaths), and the host's cgroup tree, under which
/// the machine's containers get a parent of their own (`--cgroup-parent`). Its root mount is
/// made shared first, for the mounts of its containers.
fn start_node(sh: &Shell, node: &'static str) -> Result<()> {
    let image = image::NODE_IMAGE;
    let ip = node_ip(node);
    let data = format!("{node}-docker:/var/lib/docker");
    let root = crate::project_root();
    let deploy = format!(
        "{}:{}:ro",
        root.join("deploy").display(),
        stack::NODE_DEPLOY_DIR
    );
    // The stack's admin token, for `docker stack deploy` through this machine's CLI.
    let token = stack::ensure_admin_token()?;
    let secrets = format!(
        "{}:{}:ro",
        token.parent().context("the token's directory")?.display(),
        stack::NODE_SECRETS_DIR
    );
    let daemon = format!(
        "{}:/etc/docker/daemon.json:ro",
        root.join("deploy/cluster/daemon.json").display()
    );
    let engine = format!(
        "mount --make-rshared / && exec dockerd --cgroup-parent=/{node} --host unix:///var/run/docker.sock"
    );
    ensure_container(sh, node, || {
        cmd!(
            sh,
            "docker run --detach --name {node} --hostname {node} --label {LABEL}
                --network {NETWORK} --ip {ip}
                --cap-add ALL --cap-drop SYS_RESOURCE
                --security-opt seccomp=unconfined --security-opt systempaths=unconfined
                --volume /sys/fs/cgroup:/sys/fs/cgroup:rw
                --volume {data} --volume {deploy} --volume {daemon} --volume {secrets}
                --tmpfs /run --tmpfs /tmp
                {image} sh -c {engine}"
        )
    })
}

/// Runs `create` unless the container runs already; starts it when it exists stopped.
fn ensure_container<'a>(
    sh: &'a Shell,
    name: &str,
    create: impl FnOnce() -> xshell::Cmd<'a>,
) -> Result<()> {
    match container_state(sh, name).as_deref() {
        Some("running") => Ok(()),
        Some("paused") => {
            cmd!(sh, "docker unpause {name}")
                .quiet()
                .ignore_stdout()
                .run()?;
            Ok(())
        }
        Some(_) => {
            cmd!(sh, "docker start {name}")
                .quiet()
                .ignore_stdout()
                .run()?;
            Ok(())
        }
        None => {
            create()
                .quiet()
                .ignore_stdout()
                .run()
                .with_context(|| format!("starting {name}"))?;
            Ok(())
        }
    }
}

/// Waits until a machine's engine answers; on timeout, says so with the end of its log.
pub(crate) fn wait_for_engine(sh: &Shell, node: &'static str) -> Result<Duration> {
    let engine = Engine::Node(node);
    let mut exited = None;
    let waited = wait_until(ENGINE_TIMEOUT, &format!("the engine of {node}"), || {
        // An engine that exited will not answer later: stop waiting now.
        let state = container_state(sh, node);
        if state.as_deref() != Some("running") {
            exited = Some(state.unwrap_or_else(|| "gone".to_string()));
            return Ok(true);
        }
        Ok(engine
            .read(sh, &["version", "--format", "{{.Server.Version}}"])
            .is_ok())
    });
    let failure = match (waited, exited) {
        (Ok(waited), None) => return Ok(waited),
        (Ok(_), Some(state)) => anyhow::anyhow!("{node}'s engine stopped (container {state})"),
        (Err(err), _) => err.context(format!("{node}'s engine never answered")),
    };
    let log = engine_log(sh, node, 5);
    Err(failure.context(format!("its last lines:\n{}", log.trim_end())))
}

/// The last `lines` lines a machine's engine logged (its container's stderr), or nothing.
fn engine_log(sh: &Shell, node: &str, lines: u32) -> String {
    let lines = lines.to_string();
    cmd!(sh, "docker logs --tail {lines} {node}")
        .quiet()
        .ignore_stdout()
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default()
}

/// What each machine says of the Swarm, for a wait on membership that timed out: its container's
/// state, its engine's Swarm state and error, the members as it sees them, and the end of its
/// engine's log. Nothing here fails: a machine that cannot answer says why.
pub(crate) fn swarm_report(sh: &Shell) -> String {
    let mut report = String::new();
    for node in NODES {
        let state = container_state(sh, node).unwrap_or_else(|| "gone".to_string());
        report.push_str(&format!("\n  {node}: container {state}"));
        if state != "running" {
            continue;
        }
        let engine = Engine::Node(node);
        let swarm = engine
            .read(
                sh,
                &[
                    "info",
                    "--format",
                    "{{.Swarm.LocalNodeState}} {{.Swarm.Error}}",
                ],
            )
            .unwrap_or_else(|err| format!("{err:#}"));
        report.push_str(&format!("; swarm {}", swarm.trim()));
        match members(sh, engine) {
            Ok(members) => {
                for m in members {
                    report.push_str(&format!(
                        "\n    sees {} {} {} {}",
                        m.hostname,
                        m.status,
                        m.availability,
                        m.manager.unwrap_or_default()
                    ));
                }
            }
            Err(err) => report.push_str(&format!("\n    node ls: {err:#}")),
        }
        for line in engine_log(sh, node, 6).lines() {
            report.push_str(&format!("\n    log: {}", line.trim_end()));
        }
    }
    report
}

/// `{{.Swarm.LocalNodeState}}` of a machine: "active", "inactive", "pending"...
fn swarm_state(sh: &Shell, node: &'static str) -> String {
    Engine::Node(node)
        .read(sh, &["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Three managers: the first machine initialises the Swarm (with the short heartbeat, which
/// only `init` sets) unless one is in a Swarm already; the others join as managers.
fn form_swarm(sh: &Shell) -> Result<()> {
    let active: Vec<&str> = NODES
        .into_iter()
        .filter(|node| swarm_state(sh, node) == "active")
        .collect();
    let leader = match active.first() {
        Some(node) => *node,
        None => {
            let node = NODES[0];
            let ip = node_ip(node);
            let listen = format!("{ip}:2377");
            Engine::Node(node)
                .docker(
                    sh,
                    &[
                        "swarm",
                        "init",
                        "--advertise-addr",
                        &ip,
                        "--listen-addr",
                        &listen,
                        "--dispatcher-heartbeat",
                        DISPATCHER_HEARTBEAT,
                    ],
                    &[],
                )
                .quiet()
                .ignore_stdout()
                .run()
                .context("docker swarm init")?;
            node
        }
    };
    let token = Engine::Node(leader)
        .read(sh, &["swarm", "join-token", "--quiet", "manager"])?
        .trim()
        .to_string();
    let join = format!("{}:2377", node_ip(leader));
    for node in NODES {
        if swarm_state(sh, node) == "active" {
            continue;
        }
        let ip = node_ip(node);
        let listen = format!("{ip}:2377");
        Engine::Node(node)
            .docker(
                sh,
                &[
                    "swarm",
                    "join",
                    "--token",
                    &token,
                    "--advertise-addr",
                    &ip,
                    "--listen-addr",
                    &listen,
                    &join,
                ],
                &[],
            )
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("{node} joining the Swarm"))?;
    }
    let all_ready = || -> Result<bool> {
        let members = members(sh, Engine::Node(leader))?;
        Ok(members.len() == 3
            && members
                .iter()
                .all(|m| m.status == "Ready" && m.manager.is_some()))
    };
    if wait_until(MEMBERS_TIMEOUT, "three Ready managers", all_ready).is_ok() {
        return Ok(());
    }
    // A machine whose engine came back in the Raft (Reachable) but whose agent never reported
    // (Down) was seen after a full restart; an engine restart is what brings it back, so each
    // such machine is restarted once before giving up.
    let stuck = members(sh, Engine::Node(leader))
        .map(|members| not_ready(&members, |m| m.status == "Ready"))
        .unwrap_or_default();
    if !stuck.is_empty() {
        eprintln!("cluster: {} not Ready; restarting once", stuck.join(", "));
        restart_machines(sh, &stuck)?;
    }
    wait_until(MEMBERS_TIMEOUT, "three Ready managers", all_ready).map_err(|err| {
        let seen = members(sh, Engine::Node(leader))
            .map(|m| format!("{m:?}"))
            .unwrap_or_default();
        err.context(format!("a machine never became a Ready manager: {seen}"))
    })?;
    Ok(())
}

/// The machines that `members` does not show as `ready`.
pub(crate) fn not_ready(members: &[Member], ready: impl Fn(&Member) -> bool) -> Vec<&'static str> {
    NODES
        .into_iter()
        .filter(|node| !members.iter().any(|m| m.hostname == *node && ready(m)))
        .collect()
}

/// Restarts each machine's container (its engine and all on it, as a reboot) and waits until
/// its engine answers.
pub(crate) fn restart_machines(sh: &Shell, nodes: &[&'static str]) -> Result<()> {
    for node in nodes {
        cmd!(sh, "docker restart {node}")
            .quiet()
            .ignore_stdout()
            .run()?;
        wait_for_engine(sh, node)?;
    }
    Ok(())
}

/// A Swarm member as `docker node ls` shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub(crate) hostname: String,
    /// "Ready", "Down", "Unknown".
    pub(crate) status: String,
    /// "Active", "Drain", "Pause".
    pub(crate) availability: String,
    /// "Leader", "Reachable", "Unreachable"; None for a worker.
    pub(crate) manager: Option<String>,
}

impl Member {
    /// A manager that takes part in the Raft: the leader or a reachable follower.
    pub(crate) fn reachable(&self) -> bool {
        matches!(self.manager.as_deref(), Some("Leader" | "Reachable"))
    }
}

pub(crate) fn members(sh: &Shell, engine: Engine) -> Result<Vec<Member>> {
    let out = engine.read(
        sh,
        &[
            "node",
            "ls",
            "--format",
            "{{.Hostname}}\t{{.Status}}\t{{.Availability}}\t{{.ManagerStatus}}",
        ],
    )?;
    Ok(parse_members(&out))
}

fn parse_members(out: &str) -> Vec<Member> {
    out.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let hostname = fields.next()?.trim().to_string();
            let status = fields.next()?.trim().to_string();
            let availability = fields.next()?.trim().to_string();
            let manager = fields
                .next()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string);
            Some(Member {
                hostname,
                status,
                availability,
                manager,
            })
        })
        .collect()
}

/// A machine whose engine answers as a manager of a Swarm with quorum: the first that does, so
/// nothing depends on which one leads.
pub(crate) fn live_manager(sh: &Shell) -> Result<Engine> {
    let mut tried = Vec::new();
    for node in NODES {
        if container_state(sh, node).as_deref() != Some("running") {
            tried.push(format!("{node}: not running"));
            continue;
        }
        match members(sh, Engine::Node(node)) {
            Ok(members) if !members.is_empty() => return Ok(Engine::Node(node)),
            Ok(_) => tried.push(format!("{node}: no members")),
            Err(err) => tried.push(format!("{node}: {err:#}")),
        }
    }
    bail!(
        "no machine answers as a Swarm manager: {}",
        tried.join("; ")
    )
}

/// A task of a service, as `docker service ps` shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Task {
    /// `hello-world_web.2`: the slot; the task id tells a replacement from what it replaced.
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) desired: String,
    /// "Running 3 seconds ago", "Shutdown 2 seconds ago"...
    pub(crate) current: String,
}

impl Task {
    pub(crate) fn running(&self) -> bool {
        self.desired == "Running" && self.current.starts_with("Running")
    }
}

/// The tasks of `service` that Swarm wants running, with the machine each is on.
pub(crate) fn tasks(sh: &Shell, engine: Engine, service: &str) -> Result<Vec<Task>> {
    let out = engine.read(
        sh,
        &[
            "service",
            "ps",
            "--no-trunc",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Name}}\t{{.ID}}\t{{.Node}}\t{{.DesiredState}}\t{{.CurrentState}}",
            service,
        ],
    )?;
    Ok(parse_tasks(&out))
}

fn parse_tasks(out: &str) -> Vec<Task> {
    out.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            let [name, id, node, desired, current] = fields.as_slice() else {
                return None;
            };
            Some(Task {
                name: name.to_string(),
                id: id.to_string(),
                node: node.to_string(),
                desired: desired.to_string(),
                current: current.to_string(),
            })
        })
        .collect()
}

/// Tags `local` for the registry, pushes it from this machine and returns the reference the
/// machines pull: `hello-world-registry:5000/<repository>:<tag>@sha256:…`. Pulling by digest
/// means every machine runs exactly what was pushed, and Swarm needs no registry query to pin
/// it. An image index (several platforms) is pushed and referenced the same way.
pub(crate) fn publish(sh: &Shell, local: &str, repository: &str) -> Result<String> {
    let tag = local.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    let pushed = format!("{REGISTRY_PUSH}/{repository}:{tag}");
    cmd!(sh, "docker tag {local} {pushed}").quiet().run()?;
    let output = cmd!(sh, "docker push {pushed}")
        .quiet()
        .ignore_stderr()
        .read()
        .with_context(|| format!("docker push {pushed}"))?;
    let digest = push_digest(&output).with_context(|| format!("no digest in: {output}"))?;
    Ok(format!("{REGISTRY_ON_NETWORK}/{repository}:{tag}@{digest}"))
}

/// Pushes both platforms' images and the index over them; returns the index by digest.
fn index(sh: &Shell) -> Result<String> {
    let version = image::crate_version(sh)?;
    let digest = image::push_index(
        sh,
        &format!("{REGISTRY_PUSH}/hello-world"),
        &version,
        &version,
    )?;
    Ok(format!(
        "{REGISTRY_ON_NETWORK}/hello-world:{version}@{digest}"
    ))
}

/// `…: digest: sha256:abc… size: 528` → `sha256:abc…`.
fn push_digest(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .find(|word| word.starts_with("sha256:") && word.len() == 71)
        .map(str::to_string)
}

/// The external balancer, started last: every machine's balancer is deployed by then.
fn start_external_lb(sh: &Shell) -> Result<()> {
    let config = crate::project_root().join("deploy/cluster/haproxy.cfg");
    let config = format!("{}:/etc/haproxy/haproxy.cfg:ro", config.display());
    let image = image::HAPROXY_IMAGE;
    let publish = format!("{}:8080", stack::LB_ADDR);
    let access_log = format!("ACCESS_LOG={}", stack::access_log()?);
    ensure_container(sh, EXTERNAL_LB, || {
        cmd!(
            sh,
            "docker run --detach --name {EXTERNAL_LB} --hostname {EXTERNAL_LB} --label {LABEL}
                --network {NETWORK} --ip 192.168.213.6 --publish {publish} --env {access_log}
                --volume {config} --read-only --cap-drop ALL --memory 128m
                --stop-signal SIGUSR1
                {image}"
        )
    })
}

/// Consecutive `/readyz` answers through the external balancer that must all be 200.
const READY_STREAK: u32 = 12;

/// Waits until every replica has answered `/readyz` 200 through the external balancer, from
/// all three machines, and the last [`READY_STREAK`] answers were all 200.
pub(crate) fn wait_serving(timeout: Duration) -> Result<()> {
    let mut replicas = std::collections::BTreeSet::new();
    let mut machines = std::collections::BTreeSet::new();
    let mut streak = 0;
    let mut last = String::from("no answer yet");
    let waited = wait_until(
        timeout,
        "every replica on every machine to answer /readyz 200 through the external balancer",
        || {
            match http::get(stack::LB_ADDR, "/readyz") {
                Ok(r) if r.status == 200 => {
                    if let Some(name) = r.header("x-served-by") {
                        replicas.insert(name.to_string());
                    }
                    if let Some(node) = r.header("x-node") {
                        machines.insert(node.to_string());
                    }
                    streak += 1;
                }
                Ok(r) => {
                    last = format!("{} {}", r.status, r.body.trim());
                    streak = 0;
                }
                Err(err) => {
                    last = format!("{err:#}");
                    streak = 0;
                }
            }
            // Machines are counted only when the image names them (`x-node`); an older
            // `hello-world:dev` does not, and still serves.
            Ok(replicas.len() >= 3
                && (machines.is_empty() || machines.len() >= 3)
                && streak >= READY_STREAK)
        },
    );
    waited.map(|_| ()).with_context(|| {
        format!(
            "seen answering 200: replicas {replicas:?}, machines {machines:?}; the last other answer: {last}"
        )
    })
}

/// Removes the cluster: the stack's containers go with their machines. With `volumes`, also
/// the machines' data (their images and Swarm state) and the registry's.
pub(crate) fn down(sh: &Shell, volumes: bool) -> Result<()> {
    let containers = labelled(sh, "ps", &["-a"])?;
    if !containers.is_empty() {
        // A paused machine cannot be removed, nor what it runs killed while frozen.
        for node in NODES {
            let _ = freeze(sh, node, false);
        }
        for name in &containers {
            if container_state(sh, name).as_deref() == Some("paused") {
                let _ = cmd!(sh, "docker unpause {name}")
                    .quiet()
                    .ignore_stdout()
                    .run();
            }
        }
        cmd!(sh, "docker rm --force {containers...}")
            .quiet()
            .ignore_stdout()
            .run()
            .context("removing the cluster's containers")?;
    }
    for network in labelled(sh, "network", &[])? {
        cmd!(sh, "docker network rm {network}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("removing the network {network}"))?;
    }
    // The tags of pushed images; the images themselves stay under their local tags.
    let format = "{{.Repository}}:{{.Tag}}";
    let pushed = cmd!(sh, "docker images --format {format}").quiet().read()?;
    // A tag that a newer push moved away is listed as `<none>` and has no name to remove.
    let pushed: Vec<&str> = pushed
        .lines()
        .filter(|name| name.starts_with(&format!("{REGISTRY_PUSH}/")) && !name.ends_with(":<none>"))
        .collect();
    if !pushed.is_empty() {
        cmd!(sh, "docker rmi {pushed...}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()?;
    }
    if volumes {
        let mut names: Vec<String> = NODES.iter().map(|n| format!("{n}-docker")).collect();
        names.push(REGISTRY_VOLUME.to_string());
        let format = "{{.Name}}";
        let existing = cmd!(sh, "docker volume ls --format {format}")
            .quiet()
            .read()?;
        let existing: Vec<&String> = names
            .iter()
            .filter(|n| existing.lines().any(|e| e == n.as_str()))
            .collect();
        if !existing.is_empty() {
            cmd!(sh, "docker volume rm {existing...}")
                .quiet()
                .ignore_stdout()
                .run()
                .context("removing the cluster's volumes")?;
        }
    }
    eprintln!(
        "cluster: down{}",
        if volumes {
            " (machines' and registry's data removed)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Memory in use by each part of the cluster, without the page cache the kernel can reclaim (as
/// `docker stats` counts it): each machine (its engine's container, plus the cgroup parent
/// under which its engine runs its containers), the registry and the external balancer.
pub(crate) fn memory(sh: &Shell) -> Result<Vec<(String, u64)>> {
    let mut parts = Vec::new();
    for node in NODES {
        let engine = container_memory(sh, node).unwrap_or(0);
        let workload = cgroup_memory(node).unwrap_or(0);
        parts.push((node.to_string(), engine + workload));
    }
    for name in [REGISTRY, EXTERNAL_LB] {
        parts.push((name.to_string(), container_memory(sh, name).unwrap_or(0)));
    }
    Ok(parts)
}

fn container_memory(sh: &Shell, name: &str) -> Option<u64> {
    let format = "{{.Id}}";
    let id = cmd!(sh, "docker inspect --format {format} {name}")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    cgroup_memory(&format!("docker/{}", id.trim()))
}

/// Usage minus inactive file pages of a cgroup (v1 or v2), children included.
fn cgroup_memory(relative: &str) -> Option<u64> {
    let read = |path: String| std::fs::read_to_string(path).ok();
    let stat = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
    };
    let v1 = format!("/sys/fs/cgroup/memory/{relative}");
    if let Some(usage) = read(format!("{v1}/memory.usage_in_bytes")) {
        let usage: u64 = usage.trim().parse().ok()?;
        let inactive = read(format!("{v1}/memory.stat"))
            .and_then(|t| stat(&t, "total_inactive_file "))
            .unwrap_or(0);
        return Some(usage.saturating_sub(inactive));
    }
    let v2 = format!("/sys/fs/cgroup/{relative}");
    let usage: u64 = read(format!("{v2}/memory.current"))?.trim().parse().ok()?;
    let inactive = read(format!("{v2}/memory.stat"))
        .and_then(|t| stat(&t, "inactive_file "))
        .unwrap_or(0);
    Some(usage.saturating_sub(inactive))
}

/// Machines (container state, Swarm status and role), services, and where each task runs.
fn status(sh: &Shell) -> Result<()> {
    if !exists(sh)? {
        println!("no cluster: `cargo xtask cluster up` starts one");
        return Ok(());
    }
    println!("containers (this machine's engine):");
    for name in NODES.iter().copied().chain([REGISTRY, EXTERNAL_LB]) {
        let state = container_state(sh, name).unwrap_or_else(|| "absent".to_string());
        println!("  {name:<22} {state}");
    }
    let manager = match live_manager(sh) {
        Ok(manager) => manager,
        Err(err) => {
            println!("swarm: {err:#}");
            return Ok(());
        }
    };
    println!("\nmachines (as {manager} sees them):");
    for m in members(sh, manager)? {
        println!(
            "  {:<22} {:<8} {:<7} {}",
            m.hostname,
            m.status,
            m.availability,
            m.manager.as_deref().unwrap_or("worker")
        );
    }
    println!("\nservices:");
    for service in [WEB, LB].iter().chain(&REDIS_SERVERS).chain(&SENTINELS) {
        let (running, desired) = manager.replicas(sh, service).unwrap_or((0, 0));
        println!("  {service:<20} {running}/{desired}");
        for task in tasks(sh, manager, service)? {
            println!(
                "    {:<22} on {:<20} {}",
                task.name, task.node, task.current
            );
        }
    }
    let memory = memory(sh)?;
    let total: u64 = memory.iter().map(|(_, bytes)| bytes).sum();
    println!("\nmemory: {} in all", mib(total));
    for (part, bytes) in &memory {
        println!("  {part:<22} {}", mib(*bytes));
    }
    println!("\nexternal balancer: {}", stack::LB_URL);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_read_from_node_ls() {
        let out = "hello-world-node-1\tReady\tActive\tLeader\n\
                   hello-world-node-2\tDown\tActive\tUnreachable\n\
                   hello-world-node-3\tReady\tDrain\t\n";
        let members = parse_members(out);
        assert_eq!(members.len(), 3);
        assert_eq!(members[0].manager.as_deref(), Some("Leader"));
        assert_eq!(members[1].status, "Down");
        assert_eq!(members[2].availability, "Drain");
        assert_eq!(members[2].manager, None);
    }

    #[test]
    fn tasks_are_read_from_service_ps() {
        let out = "hello-world_web.1\tabc123\thello-world-node-2\tRunning\tRunning 5 seconds ago\n\
                   hello-world_web.2\tdef456\thello-world-node-3\tRunning\tPreparing 1 second ago\n";
        let tasks = parse_tasks(out);
        assert_eq!(tasks.len(), 2);
        assert!(tasks[0].running());
        assert_eq!(tasks[0].node, "hello-world-node-2");
        assert!(!tasks[1].running(), "a task still preparing is not running");
    }

    #[test]
    fn the_digest_comes_from_the_push_output() {
        let out = "The push refers to repository [127.0.0.1:5001/hello-world]\n\
                   5f70bf18a086: Pushed\n\
                   dev: digest: sha256:2f5c1d9e0b9f0f3a3a6d6c0e1b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d size: 528\n";
        assert_eq!(
            push_digest(out).as_deref(),
            Some("sha256:2f5c1d9e0b9f0f3a3a6d6c0e1b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d")
        );
        assert_eq!(push_digest("no digest here"), None);
    }

    #[test]
    fn a_port_another_program_holds_is_named_unless_the_cluster_holds_it() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("a port");
        let address = taken.local_addr().expect("its address").to_string();
        let err = check_ports(&[(&address, EXTERNAL_LB)], &[]).expect_err("the port is taken");
        assert!(
            err.to_string().starts_with(&format!("{address} is in use")),
            "{err}"
        );
        check_ports(&[(&address, EXTERNAL_LB)], &[EXTERNAL_LB.to_string()])
            .expect("our own balancer may hold it");
    }

    #[test]
    fn too_little_disk_is_refused_with_the_figures() {
        let err = check_disk(1 << 30, "/var/lib/docker").expect_err("1 GiB is too little");
        assert_eq!(
            err.to_string(),
            "too little disk: 1.0 GiB free under /var/lib/docker, the cluster needs 6.0 GiB \
             (three machines, each storing its images uncompressed)"
        );
        check_disk(MIN_FREE_DISK, "/").expect("enough");
    }

    #[test]
    fn free_disk_is_df_s_available_bytes() {
        assert_eq!(parse_df("Avail\n123456\n").expect("bytes"), 123_456);
        assert!(parse_df("Avail\n").is_err());
    }

    #[test]
    fn machines_have_fixed_addresses_in_the_cluster_subnet() {
        let prefix = SUBNET.trim_end_matches("0/24");
        for node in NODES {
            assert!(node_ip(node).starts_with(prefix), "{node}");
        }
        assert_eq!(node_ip(NODES[2]), "192.168.213.13");
    }

    #[test]
    fn the_external_balancer_checks_every_machine_and_no_other() {
        let text =
            std::fs::read_to_string(crate::project_root().join("deploy/cluster/haproxy.cfg"))
                .expect("the external balancer's config");
        // One backend per protocol (HTTP/1.1, HTTP/2): each lists every machine, once.
        let mut backends: Vec<(&str, Vec<&str>)> = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("backend ") {
                backends.push((name, Vec::new()));
            } else if let Some(server) = line.strip_prefix("server ") {
                let (_, servers) = backends.last_mut().expect("servers are in a backend");
                servers.push(server);
            }
        }
        let names: Vec<&str> = backends.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["machines", "machines-h2"]);
        for (backend, servers) in &backends {
            assert_eq!(servers.len(), NODES.len(), "{backend}: {servers:?}");
            for (server, node) in servers.iter().zip(NODES) {
                assert!(
                    server.starts_with(&format!("{node} {node}:8080 "))
                        && server.ends_with("check"),
                    "{backend}: {server}"
                );
            }
        }
    }

    #[test]
    fn the_machines_trust_exactly_the_cluster_registry() {
        let text =
            std::fs::read_to_string(crate::project_root().join("deploy/cluster/daemon.json"))
                .expect("the machines' engine settings");
        let settings: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            settings["insecure-registries"],
            serde_json::json!([REGISTRY_ON_NETWORK])
        );
        assert_eq!(settings["storage-driver"], "vfs");
    }
}
