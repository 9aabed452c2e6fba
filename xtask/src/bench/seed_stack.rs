//! The seed-stack section: the seed's topology, one balancer in front of 3 replicas, for three
//! apps in turn in the same run, so the whole stack is compared and not only a server: ours (the
//! service image, `hello-world:dev`), the seed's own Flask app run as its Dockerfile runs it
//! (`python app.py`, Flask's dev server; `bench/reference/seed/`), and nginx. Each sits behind the
//! stack's HAProxy image with the deployed balancer's configuration ([`balancer`]).
//!
//! The containers are plain `docker run` containers on a bridge network of the section's own,
//! not Swarm services: Swarm's service addresses need IPVS, which this machine's kernel lacks.
//! The load goes to the balancer's own address on that network, so the engine's userland proxy
//! is not in the path. Every container is pinned to CPU 0 and wrk to CPU 1, as in the main table:
//! the stack gets one core, the client the other, and CPU per request is the sum of the four
//! containers' cgroup CPU time over the run ([`cgroup`]) ÷ the requests wrk completed.
//!
//! Before measuring, the section checks that HAProxy holds all three servers UP and sends
//! requests to each (its statistics), and for ours that three replicas answer (`x-served-by`).
//! Every container and the network are removed afterwards, also when a step fails; every wait
//! has a deadline.

mod balancer;
mod cgroup;

use std::{
    collections::HashSet,
    fmt::Write as _,
    fs,
    io::Read,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

use super::{
    Plan,
    load::{self, WrkOut},
    median,
    servers::{self, LOAD_CPU, SERVER_CPU},
};
use crate::{e2e::http, image};
use balancer::ServerStat;
use cgroup::CpuUsage;

/// The section's own network and the prefix of every container it makes.
const NETWORK: &str = "hello-world-bench-seed";
/// Where each app listens in its container: the seed's port, and the contract's.
const APP_PORT: u16 = 5000;
/// The balancer's port, as in the stack.
const LB_PORT: u16 = 8080;
const REPLICAS: usize = 3;
/// Measured runs per app, back to back on the same stack; each figure is their median.
const RUNS: usize = 3;
/// Requests sent through the balancer to check that it spreads them (fresh connections).
const PROBES: usize = 30;

/// One app of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum App {
    Ours,
    Seed,
    Nginx,
}

impl App {
    const ALL: [App; 3] = [App::Ours, App::Seed, App::Nginx];

    /// The name in the table.
    fn name(self) -> &'static str {
        match self {
            App::Ours => "ours",
            App::Seed => "seed (Flask dev server)",
            App::Nginx => "nginx",
        }
    }

    /// The part of its containers' names.
    fn slug(self) -> &'static str {
        match self {
            App::Ours => "ours",
            App::Seed => "flask",
            App::Nginx => "nginx",
        }
    }

    fn replica(self, i: usize) -> String {
        format!("{NETWORK}-{}-{i}", self.slug())
    }

    fn balancer(self) -> String {
        format!("{NETWORK}-{}-lb", self.slug())
    }

    /// What the table says about how the app runs.
    fn note(self) -> &'static str {
        match self {
            App::Ours => {
                "the service image, its own `serve` (in-memory store: `GET /` touches none), \
                 read-only and without capabilities as in the stack"
            }
            App::Seed => {
                "bench/reference/seed: the seed's app.py (listening on 0.0.0.0, the one change), \
                 flask==1.1.2, `python app.py` in WORKDIR /app as its Dockerfile runs it: Flask's dev \
                 server, threaded, HTTP/1.0 (a connection per request), a log line per request"
            }
            App::Nginx => {
                "Debian's nginx-light, bench/reference/seed/nginx.conf: `return 200`, 1 worker, \
                 access_log off, as the bench's nginx reference"
            }
        }
    }
}

/// The images the section runs.
#[derive(Debug, Clone)]
struct Images {
    ours: String,
    seed: String,
    nginx: String,
    haproxy: String,
}

impl Images {
    fn of(&self, app: App) -> &str {
        match app {
            App::Ours => &self.ours,
            App::Seed => &self.seed,
            App::Nginx => &self.nginx,
        }
    }
}

/// One measured run of one stack.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) wrk: WrkOut,
    /// CPU seconds of the balancer's container over the run.
    pub(crate) balancer_cpu_s: f64,
    /// CPU seconds of the three replicas' containers together.
    pub(crate) replicas_cpu_s: f64,
    /// CPU seconds of the engine's processes that carry the containers' output (dockerd and the
    /// containers' shims), outside the containers' cgroups; `None` where they cannot be read.
    pub(crate) engine_cpu_s: Option<f64>,
}

impl Sample {
    fn per_request_us(&self, seconds: f64) -> f64 {
        if self.wrk.requests == 0 {
            return f64::NAN;
        }
        seconds * 1e6 / self.wrk.requests as f64
    }

    fn stack_cpu_s(&self) -> f64 {
        self.balancer_cpu_s + self.replicas_cpu_s
    }
}

/// One app's stack: how it was run and what it measured (or why it could not be).
#[derive(Debug, Clone)]
pub(crate) struct AppRun {
    pub(crate) name: &'static str,
    pub(crate) note: &'static str,
    /// The `docker run` lines of its first replica and of its balancer, and its wrk line.
    pub(crate) commands: Vec<String>,
    pub(crate) samples: Result<Vec<Sample>, String>,
}

#[derive(Debug, Clone)]
pub(crate) struct SeedStackResult {
    /// How the images were made.
    pub(crate) setup: Vec<String>,
    pub(crate) access_log: &'static str,
    pub(crate) runs: usize,
    pub(crate) apps: Vec<AppRun>,
}

pub(crate) fn run(plan: &Plan, logs: &Path) -> Result<SeedStackResult> {
    let sh = image::project_shell()?;
    let access_log = crate::stack::access_log()?;
    remove_leftovers()?;
    let mut setup = Vec::new();
    let images = prepare_images(&sh, &mut setup)?;
    let work = servers::work_dir().join("seed-stack");
    fs::create_dir_all(&work)?;
    let network = Network::create()?;
    let mut apps = Vec::new();
    for app in App::ALL {
        eprintln!("bench: seed-stack: {} behind HAProxy", app.name());
        let mut commands = Vec::new();
        let samples = measure_app(plan, app, &images, access_log, &work, logs, &mut commands)
            .map_err(|e| format!("{e:#}"));
        if let Err(e) = &samples {
            eprintln!("bench: seed-stack: {} failed: {e}", app.name());
        }
        apps.push(AppRun {
            name: app.name(),
            note: app.note(),
            commands,
            samples,
        });
    }
    network.remove()?;
    Ok(SeedStackResult {
        setup,
        access_log,
        runs: RUNS,
        apps,
    })
}

/// Builds what is missing: the base images (debootstrap), ours (as `cargo xtask stack up` does),
/// and the seed's app on its base.
fn prepare_images(sh: &Shell, setup: &mut Vec<String>) -> Result<Images> {
    image::ensure_images(sh, image::SEED_STACK_IMAGES)?;
    image::ensure_dev_image(sh)?;
    let revision_format = "{{index .Config.Labels \"org.opencontainers.image.revision\"}}";
    let dev_tag = image::DEV_TAG;
    let revision = cmd!(
        sh,
        "docker image inspect --format {revision_format} {dev_tag}"
    )
    .quiet()
    .read()
    .unwrap_or_default();
    setup.push(format!(
        "{dev_tag}: the service image as `cargo xtask image` or `cargo xtask stack up` built it (revision {})",
        revision.trim()
    ));
    setup.push(format!(
        "{}, {} and {}: debootstrap --variant=minbase of Debian bookworm with haproxy, python3 + python-is-python3 \
         and nginx-light, `docker import`ed (xtask/src/image.rs)",
        image::HAPROXY_IMAGE,
        image::SEED_PYTHON_IMAGE,
        image::SEED_NGINX_IMAGE
    ));
    let seed = seed_image(sh, setup)?;
    Ok(Images {
        ours: image::DEV_TAG.to_owned(),
        seed,
        nginx: image::SEED_NGINX_IMAGE.to_owned(),
        haproxy: image::HAPROXY_IMAGE.to_owned(),
    })
}

/// The seed's app built from `bench/reference/seed/Dockerfile`, tagged by the digest of what goes
/// into it (its files and its base image), so a change rebuilds it and nothing else does.
fn seed_image(sh: &Shell, setup: &mut Vec<String>) -> Result<String> {
    let dir = crate::project_root().join("bench/reference/seed");
    let base = image::SEED_PYTHON_IMAGE;
    let id_format = "{{.Id}}";
    let base_id = cmd!(sh, "docker image inspect --format {id_format} {base}")
        .quiet()
        .read()
        .with_context(|| format!("inspecting {base}"))?;
    let mut inputs = base_id;
    for file in ["Dockerfile", "app.py", "requirements.txt"] {
        inputs.push_str(
            &fs::read_to_string(dir.join(file))
                .with_context(|| format!("reading bench/reference/seed/{file}"))?,
        );
    }
    let digest = cmd!(sh, "sha256sum").stdin(inputs).quiet().read()?;
    let tag = format!(
        "hello-world-seed:{}",
        digest.get(..12).context("sha256sum")?
    );
    setup.push(format!(
        "{tag}: `python3 -m venv V && V/bin/pip install --target C/site-packages -r bench/reference/seed/requirements.txt`, \
         then `docker build -f bench/reference/seed/Dockerfile -t {tag} C` with app.py and requirements.txt in C"
    ));
    if image::image_exists(sh, &tag) {
        return Ok(tag);
    }
    eprintln!("bench: seed-stack: building {tag}");
    let work = servers::work_dir().join("seed-stack");
    let venv = work.join("pip-venv");
    if !venv.join("bin/pip").is_file() {
        cmd!(sh, "python3 -m venv {venv}")
            .run()
            .context("python3 -m venv (apt-get install python3-venv)")?;
    }
    let context = work.join("image-context");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context)?;
    for file in ["app.py", "requirements.txt"] {
        fs::copy(dir.join(file), context.join(file))?;
    }
    let pip = venv.join("bin/pip");
    let requirements = dir.join("requirements.txt");
    let site = context.join("site-packages");
    cmd!(
        sh,
        "{pip} install --quiet --disable-pip-version-check --no-cache-dir --target {site} -r {requirements}"
    )
    .run()
    .context("installing the seed's requirements")?;
    let dockerfile = dir.join("Dockerfile");
    cmd!(
        sh,
        "docker build --quiet -f {dockerfile} -t {tag} {context}"
    )
    .ignore_stdout()
    .run()
    .context("docker build of the seed's app")?;
    // What the seed's app needs to start: the pinned Flask must import on this Python.
    let name = format!("{NETWORK}-flask-imports");
    let code = "import flask, werkzeug; print(flask.__version__, werkzeug.__version__)";
    let imports = cmd!(
        sh,
        "docker run --rm --name {name} --network none {tag} python -c {code}"
    )
    .quiet()
    .read();
    match imports {
        Ok(versions) if versions.trim() == "1.1.2 1.0.1" => Ok(tag),
        other => {
            let _ = cmd!(sh, "docker rmi {tag}").quiet().ignore_stderr().run();
            bail!("the seed's image does not import flask 1.1.2 / werkzeug 1.0.1: {other:?}")
        }
    }
}

/// One app's stack, up, checked, measured and removed.
fn measure_app(
    plan: &Plan,
    app: App,
    images: &Images,
    access_log: &'static str,
    work: &Path,
    logs: &Path,
    commands: &mut Vec<String>,
) -> Result<Vec<Sample>> {
    let mut stack = Containers::default();
    let result = (|| {
        let mut counters = Vec::new();
        for i in 1..=REPLICAS {
            let args = replica_args(app, images, access_log, i);
            if i == 1 {
                commands.push(docker_line(&args));
            }
            counters.push(stack.start(&args)?);
        }
        let servers: Vec<String> = (1..=REPLICAS)
            .map(|i| format!("{}:{APP_PORT}", app.replica(i)))
            .collect();
        let deployed = fs::read_to_string(crate::project_root().join("deploy/swarm/haproxy.cfg"))
            .context("reading deploy/swarm/haproxy.cfg")?;
        let cfg_path = work.join(format!("haproxy-{}.cfg", app.slug()));
        fs::write(&cfg_path, balancer::config(&deployed, &servers)?)?;
        let args = balancer_args(app, images, access_log, &cfg_path);
        commands.push(docker_line(&args));
        let balancer_cpu = stack.start(&args)?;
        let address = container_address(&app.balancer())?;
        wait_until_all_up(&address, Duration::from_secs(30))?;
        check_spread(app, &address)?;
        let wrk = load::Wrk::get(
            format!("http://{address}:{LB_PORT}/"),
            plan.connections,
            plan.curve_s,
        );
        commands.push(wrk.command_line());
        let _ = load::run(&load::Wrk {
            seconds: 1,
            ..wrk.clone()
        });
        let engine = engine_processes(&stack);
        let mut samples = Vec::new();
        for _ in 0..RUNS {
            samples.push(measure_once(&wrk, &balancer_cpu, &counters, &engine)?);
        }
        Ok(samples)
    })();
    stack.save_logs(logs);
    stack.remove();
    result
}

/// The `docker run` arguments of one replica.
fn replica_args(app: App, images: &Images, access_log: &str, i: usize) -> Vec<String> {
    let name = app.replica(i);
    let mut args = common_args(&name);
    match app {
        App::Ours => args.extend([
            "--read-only".into(),
            "--cap-drop".into(),
            "ALL".into(),
            "--env".into(),
            format!("HELLO_INSTANCE_NAME={name}"),
            "--env".into(),
            format!("HELLO_ACCESS_LOG={access_log}"),
        ]),
        App::Seed => {}
        App::Nginx => args.extend([
            "--volume".into(),
            format!(
                "{}:/etc/nginx/nginx.conf:ro",
                crate::project_root()
                    .join("bench/reference/seed/nginx.conf")
                    .display()
            ),
        ]),
    }
    args.push(images.of(app).to_owned());
    args
}

/// The `docker run` arguments of the balancer, as the stack runs it (read-only, no capabilities,
/// the access-log switch), with its configuration mounted where the image reads it.
fn balancer_args(app: App, images: &Images, access_log: &str, cfg: &Path) -> Vec<String> {
    let mut args = common_args(&app.balancer());
    args.extend([
        "--read-only".into(),
        "--cap-drop".into(),
        "ALL".into(),
        "--env".into(),
        format!("ACCESS_LOG={access_log}"),
        "--volume".into(),
        format!("{}:/etc/haproxy/haproxy.cfg:ro", cfg.display()),
        images.haproxy.clone(),
    ]);
    args
}

/// What every container of the section is started with: its name, the section's network, and
/// the server CPU.
fn common_args(name: &str) -> Vec<String> {
    [
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        NETWORK,
        "--cpuset-cpus",
        &SERVER_CPU.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The command line as written in the results, to be run from the repository's root: a mount
/// needs an absolute path, so the root is written `$PWD`.
fn docker_line(args: &[String]) -> String {
    let root = crate::project_root().display().to_string();
    let mut line = "docker".to_owned();
    for a in args {
        line.push(' ');
        line.push_str(&a.replace(&root, "$PWD"));
    }
    line
}

/// One wrk run with the stack's CPU read before and after it.
fn measure_once(
    wrk: &load::Wrk,
    balancer: &CpuUsage,
    replicas: &[CpuUsage],
    engine: &[u32],
) -> Result<Sample> {
    let read_all = || -> Result<(f64, f64)> {
        let mut replicas_s = 0.0;
        for r in replicas {
            replicas_s += r.seconds()?;
        }
        Ok((balancer.seconds()?, replicas_s))
    };
    let engine_before = super::procfs::cpu_seconds(engine);
    let (balancer_before, replicas_before) = read_all()?;
    let out = load::run(wrk)?;
    let (balancer_after, replicas_after) = read_all()?;
    let engine_after = super::procfs::cpu_seconds(engine);
    Ok(Sample {
        wrk: out,
        balancer_cpu_s: balancer_after - balancer_before,
        replicas_cpu_s: replicas_after - replicas_before,
        engine_cpu_s: (!engine.is_empty()).then_some(engine_after - engine_before),
    })
}

/// Waits until the balancer's statistics show every server UP after a check it passed (HAProxy
/// counts a new server UP before its first check).
fn wait_until_all_up(address: &str, limit: Duration) -> Result<()> {
    let started = Instant::now();
    let mut last = String::from("no answer from the statistics page");
    while started.elapsed() < limit {
        match stats(address) {
            Ok(servers) if servers.len() == REPLICAS && servers.iter().all(ServerStat::passed) => {
                return Ok(());
            }
            Ok(servers) => last = format!("{servers:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        thread::sleep(Duration::from_millis(250));
    }
    bail!("HAProxy did not hold {REPLICAS} servers UP within {limit:?}: {last}")
}

/// Checks that the balancer sends requests to every server: each one's count of times chosen
/// grows over [`PROBES`] requests, all answered 200; for ours, that many distinct replicas name
/// themselves in `x-served-by`.
fn check_spread(app: App, address: &str) -> Result<()> {
    let before = stats(address)?;
    let mut served_by = HashSet::new();
    let balancer = format!("{address}:{LB_PORT}");
    for _ in 0..PROBES {
        let answer = http::get(&balancer, "/")
            .with_context(|| format!("GET / through the balancer at {balancer}"))?;
        ensure!(
            answer.status == 200,
            "GET / through the balancer answered {}",
            answer.status
        );
        if let Some(name) = answer.header("x-served-by") {
            served_by.insert(name.to_owned());
        }
    }
    let after = stats(address)?;
    let grown: Vec<&str> = after
        .iter()
        .filter(|a| {
            before
                .iter()
                .any(|b| b.name == a.name && a.chosen > b.chosen)
        })
        .map(|a| a.name.as_str())
        .collect();
    ensure!(
        grown.len() == REPLICAS,
        "{PROBES} requests through HAProxy reached only {grown:?} of {REPLICAS} servers ({after:?})"
    );
    if app == App::Ours {
        ensure!(
            served_by.len() == REPLICAS,
            "{PROBES} requests were answered by {served_by:?}, not {REPLICAS} replicas"
        );
    }
    Ok(())
}

fn stats(address: &str) -> Result<Vec<ServerStat>> {
    let answer = http::get(
        &format!("{address}:{}", balancer::STATS_PORT),
        balancer::STATS_PATH,
    )
    .context("reading HAProxy's statistics")?;
    ensure!(
        answer.status == 200,
        "HAProxy's statistics answered {}",
        answer.status
    );
    balancer::servers(&answer.body, balancer::BACKEND)
}

/// The engine's processes that carry the containers' output: dockerd (from its pid file) and
/// each container's shim (the parent of its first process). Empty when dockerd's pid is unknown.
fn engine_processes(stack: &Containers) -> Vec<u32> {
    let Some(dockerd) = fs::read_to_string("/var/run/docker.pid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return Vec::new();
    };
    let mut pids = vec![dockerd];
    for pid in &stack.pids {
        if let Some(shim) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(parent_pid)
        {
            pids.push(shim);
        }
    }
    pids
}

/// The parent pid in a `/proc/PID/stat` line (the field after the state, which follows the
/// command name in parentheses; the name may itself hold spaces and parentheses).
fn parent_pid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The containers one app's stack made, removed when it is done.
#[derive(Debug, Default)]
struct Containers {
    names: Vec<String>,
    /// Each container's first process, for the engine's shim of it.
    pids: Vec<u32>,
}

impl Containers {
    /// `docker run` with `args` (which name the container); returns where its CPU is counted.
    fn start(&mut self, args: &[String]) -> Result<CpuUsage> {
        let name = args
            .iter()
            .position(|a| a == "--name")
            .and_then(|i| args.get(i + 1))
            .context("a container without --name")?
            .clone();
        // Recorded first: a container that was created but failed to start is removed too.
        self.names.push(name.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args, Duration::from_secs(60))?;
        let pid: u32 = docker(
            &["inspect", "--format", "{{.State.Pid}}", &name],
            Duration::from_secs(30),
        )?
        .trim()
        .parse()
        .with_context(|| format!("the first process of {name}"))?;
        ensure!(pid > 0, "{name} is not running (see `docker logs {name}`)");
        self.pids.push(pid);
        CpuUsage::of_process(pid).with_context(|| format!("the CPU accounting of {name}"))
    }

    /// Each container's output into the bench's log directory, for a look after the run.
    fn save_logs(&self, logs: &Path) {
        for name in &self.names {
            let _ = save_log(name, &logs.join(format!("{name}.log")));
        }
    }

    fn remove(&mut self) {
        for name in self.names.drain(..) {
            let _ = docker(&["rm", "--force", &name], Duration::from_secs(60));
        }
        self.pids.clear();
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The section's network, removed when dropped (after the containers on it).
struct Network {
    removed: bool,
}

impl Network {
    fn create() -> Result<Network> {
        docker(&["network", "create", NETWORK], Duration::from_secs(60))
            .context("creating the section's network")?;
        Ok(Network { removed: false })
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        docker(&["network", "rm", NETWORK], Duration::from_secs(60))?;
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if !self.removed {
            let _ = docker(&["network", "rm", NETWORK], Duration::from_secs(60));
        }
    }
}

/// Removes what an interrupted run of this section left: containers named by it, and its
/// network. Nothing else carries these names.
fn remove_leftovers() -> Result<()> {
    let listed = docker(
        &[
            "ps",
            "--all",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("name=^{NETWORK}-"),
        ],
        Duration::from_secs(30),
    )?;
    for name in listed.lines().map(str::trim).filter(|n| !n.is_empty()) {
        docker(&["rm", "--force", name], Duration::from_secs(60))?;
    }
    let networks = docker(
        &["network", "ls", "--format", "{{.Name}}"],
        Duration::from_secs(30),
    )?;
    if networks.lines().any(|n| n.trim() == NETWORK) {
        docker(&["network", "rm", NETWORK], Duration::from_secs(60))?;
    }
    Ok(())
}

/// The container's address on the section's network.
fn container_address(name: &str) -> Result<String> {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}");
    let address = docker(
        &["inspect", "--format", &format, name],
        Duration::from_secs(30),
    )?;
    let address = address.trim();
    ensure!(!address.is_empty(), "{name} has no address on {NETWORK}");
    Ok(address.to_owned())
}

/// `docker logs NAME` into `path`, bounded.
fn save_log(name: &str, path: &Path) -> Result<()> {
    let file = fs::File::create(path)?;
    let mut child = Command::new("docker")
        .args(["logs", name])
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("running docker logs")?;
    wait_within(&mut child, Duration::from_secs(30), "docker logs")?;
    Ok(())
}

/// Runs docker with `args`, bounded by `limit`; its standard output.
fn docker(args: &[&str], limit: Duration) -> Result<String> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running docker")?;
    // Read on threads, so a long output cannot fill its pipe and stall the bounded wait.
    let stdout = child.stdout.take().map(read_on_thread);
    let stderr = child.stderr.take().map(read_on_thread);
    let what = format!("docker {}", args.join(" "));
    let status = wait_within(&mut child, limit, &what)?;
    let collect =
        |h: Option<thread::JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    if !status.success() {
        bail!("{what}: {}", stderr.trim());
    }
    Ok(stdout)
}

fn read_on_thread(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Waits for `child` until `limit`, then kills it.
fn wait_within(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> Result<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("{what} did not finish within {limit:?}")
}

/// One app's medians over its runs.
#[derive(Debug, Clone, Copy)]
struct Row {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    cpu_us: f64,
    balancer_us: f64,
    cores: f64,
    engine_us: Option<f64>,
}

fn row(samples: &[Sample]) -> Row {
    let of = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    let engine: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.engine_cpu_s.map(|e| s.per_request_us(e)))
        .collect();
    Row {
        rps: of(&|s| s.wrk.rps()),
        p50_us: of(&|s| s.wrk.p50_us),
        p99_us: of(&|s| s.wrk.p99_us),
        errors: samples.iter().map(|s| s.wrk.errors).sum(),
        cpu_us: of(&|s| s.per_request_us(s.stack_cpu_s())),
        balancer_us: of(&|s| s.per_request_us(s.balancer_cpu_s)),
        cores: of(&|s| s.stack_cpu_s() / s.wrk.seconds.max(1e-9)),
        engine_us: (!engine.is_empty()).then(|| median(engine)),
    }
}

/// The section of the results file.
pub(crate) fn markdown(w: &mut String, r: Option<&Result<SeedStackResult, String>>) {
    let _ = writeln!(
        w,
        "\n### The seed's stack, side by side: HAProxy → 3 replicas of ours, of the seed's Flask app, of nginx\n"
    );
    let r = match r {
        None => {
            let _ = writeln!(
                w,
                "Not run in this mode (it runs in the full run, or with `--only seed-stack`)."
            );
            return;
        }
        Some(Err(e)) => {
            let _ = writeln!(w, "{e}");
            return;
        }
        Some(Ok(r)) => r,
    };
    let _ = writeln!(
        w,
        "The seed's topology, one balancer in front of 3 replicas, for each app in turn: plain `docker run` containers \
         on a bridge network of the section's own (Swarm's service addresses need IPVS, which this kernel lacks), the \
         balancer the stack's HAProxy image with deploy/swarm/haproxy.cfg's balancer (roundrobin, its timeouts, retries \
         and access-log rules: `ACCESS_LOG={}`), the replicas listed by container name and checked with `GET /`, the one \
         route all three apps have. All 4 containers pinned to CPU {SERVER_CPU}, wrk to CPU {LOAD_CPU}; the load goes to \
         the balancer's own address on that network (no userland proxy in the path), after a check that HAProxy holds \
         all 3 servers UP and chooses each. {} runs of the line below per stack after a 1 s warm-up; medians. CPU µs per \
         request = the 4 containers' cgroup CPU time over the run ÷ requests; stack CPU = the same in cores (1.00: its \
         core is the bound). The engine column is dockerd and the containers' shims, which carry what the containers \
         write to their output (the Flask dev server logs every request): outside the stack's cgroups, and dockerd's \
         other work counts there too.\n",
        r.access_log, r.runs
    );
    let _ = writeln!(w, "```");
    for line in &r.setup {
        let _ = writeln!(w, "{line}");
    }
    for app in &r.apps {
        let _ = writeln!(w, "# {}", app.name);
        for line in &app.commands {
            let _ = writeln!(w, "{line}");
        }
    }
    let _ = writeln!(w, "```\n");
    let rows: Vec<(&AppRun, Result<Row, &str>)> = r
        .apps
        .iter()
        .map(|app| {
            let row = match &app.samples {
                Ok(samples) if !samples.is_empty() => Ok(row(samples)),
                Ok(_) => Err("no run completed"),
                Err(e) => Err(e.as_str()),
            };
            (app, row)
        })
        .collect();
    let ours = rows.first().and_then(|(_, row)| row.as_ref().ok().copied());
    let _ = writeln!(
        w,
        "| stack | req/s | p50 ms | p99 ms | errors | CPU µs/request | of it HAProxy | stack CPU | engine µs/request | req/s ÷ ours | p99 ÷ ours | CPU/request ÷ ours |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let vs = |a: f64, b: Option<f64>| match b {
        Some(b) if b > 0.0 && a.is_finite() => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    for (app, row) in &rows {
        match row {
            Ok(x) => {
                let _ = writeln!(
                    w,
                    "| {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {} |",
                    app.name,
                    x.rps,
                    x.p50_us / 1e3,
                    x.p99_us / 1e3,
                    x.errors,
                    x.cpu_us,
                    x.balancer_us,
                    x.cores,
                    x.engine_us.map_or("–".into(), |e| format!("{e:.1}")),
                    vs(x.rps, ours.map(|o| o.rps)),
                    vs(x.p99_us, ours.map(|o| o.p99_us)),
                    vs(x.cpu_us, ours.map(|o| o.cpu_us)),
                );
            }
            Err(e) => {
                let _ = writeln!(w, "| {} | failed: {e} | | | | | | | | | | |", app.name);
            }
        }
    }
    let _ = writeln!(w);
    for app in &r.apps {
        let _ = writeln!(w, "- {}: {}", app.name, app.note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: u64, balancer_s: f64, replicas_s: f64, p99_us: f64) -> Sample {
        Sample {
            wrk: WrkOut {
                requests,
                seconds: 5.0,
                p50_us: 500.0,
                p99_us,
                ..WrkOut::default()
            },
            balancer_cpu_s: balancer_s,
            replicas_cpu_s: replicas_s,
            engine_cpu_s: Some(0.1),
        }
    }

    fn app(name: &'static str, samples: Result<Vec<Sample>, String>) -> AppRun {
        AppRun {
            name,
            note: "how it runs",
            commands: vec![format!("docker run {name}")],
            samples,
        }
    }

    #[test]
    fn the_table_gives_medians_of_the_whole_stack_and_ratios_to_ours() {
        let r = SeedStackResult {
            setup: vec!["built".into()],
            access_log: "errors",
            runs: 3,
            apps: vec![
                app(
                    "ours",
                    Ok(vec![
                        sample(100_000, 2.0, 2.0, 4000.0),
                        sample(90_000, 2.0, 2.5, 5000.0),
                        sample(110_000, 2.0, 1.5, 3000.0),
                    ]),
                ),
                app("seed", Ok(vec![sample(5_000, 1.0, 4.0, 80_000.0)])),
                app("nginx", Err("it broke".into())),
            ],
        };
        let mut w = String::new();
        markdown(&mut w, Some(&Ok(r)));
        // ours: median 100,000 requests in 5 s; 4 s of stack CPU for 100,000 requests = 40 µs,
        // of it HAProxy 20 µs; 0.80 of a core; the engine 0.1 s = 1 µs per request.
        assert!(
            w.contains(
                "| ours | 20000 | 0.50 | 4.00 | 0 | 40.0 | 20.0 | 0.80 | 1.0 | 1.00 | 1.00 | 1.00 |"
            ),
            "{w}"
        );
        // seed: 5,000 requests, 5 s of CPU = 1000 µs each: 25× ours per request, 20× its p99.
        assert!(
            w.contains("| seed | 1000 | 0.50 | 80.00 | 0 | 1000.0 | 200.0 | 1.00 | 20.0 | 0.05 | 20.00 | 25.00 |"),
            "{w}"
        );
        assert!(w.contains("| nginx | failed: it broke |"), "{w}");
        assert!(w.contains("docker run seed"), "{w}");
        assert!(w.contains("`ACCESS_LOG=errors`"), "{w}");
    }

    #[test]
    fn without_ours_there_are_no_ratios() {
        let r = SeedStackResult {
            setup: vec![],
            access_log: "errors",
            runs: 1,
            apps: vec![
                app("ours", Err("no image".into())),
                app("seed", Ok(vec![sample(5_000, 1.0, 4.0, 80_000.0)])),
            ],
        };
        let mut w = String::new();
        markdown(&mut w, Some(&Ok(r)));
        assert!(w.contains("| 20.0 | – | – | – |"), "{w}");
    }

    #[test]
    fn errors_are_counted_over_every_run() {
        let mut a = sample(1000, 1.0, 1.0, 1.0);
        a.wrk.errors = 3;
        let mut b = a.clone();
        b.wrk.errors = 4;
        assert_eq!(row(&[a, b]).errors, 7);
    }

    #[test]
    fn the_parent_pid_is_read_past_a_name_with_parentheses() {
        assert_eq!(parent_pid("42 (my (odd) name) S 17 42 42 0"), Some(17));
        assert_eq!(parent_pid("42 (python) R 1 42"), Some(1));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn every_container_is_on_the_sections_network_and_pinned() {
        let images = Images {
            ours: "o".into(),
            seed: "s".into(),
            nginx: "n".into(),
            haproxy: "h".into(),
        };
        for app in App::ALL {
            let args = replica_args(app, &images, "errors", 2);
            let line = docker_line(&args);
            assert!(
                line.starts_with(&format!(
                    "docker run --detach --name {NETWORK}-{}-2 --network {NETWORK} --cpuset-cpus {SERVER_CPU} ",
                    app.slug()
                )),
                "{line}"
            );
            assert_eq!(args.last().map(String::as_str), Some(images.of(app)));
        }
        let line = docker_line(&balancer_args(
            App::Seed,
            &images,
            "errors",
            Path::new("/x/haproxy-flask.cfg"),
        ));
        assert!(
            line.contains("--env ACCESS_LOG=errors --volume /x/haproxy-flask.cfg:/etc/haproxy/haproxy.cfg:ro h"),
            "{line}"
        );
        let nginx = docker_line(&replica_args(App::Nginx, &images, "errors", 1));
        assert!(
            nginx.contains(
                "--volume $PWD/bench/reference/seed/nginx.conf:/etc/nginx/nginx.conf:ro n"
            ),
            "{nginx}"
        );
    }
}
