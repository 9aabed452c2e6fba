//! The deployment contract: the Kubernetes manifests (every overlay, as `kubectl kustomize`
//! renders it) and the Docker Swarm stack (`deploy/swarm/stack.yaml` and the HAProxy config it
//! ships) run the same service the same way. Replicas, ports, probe paths, grace periods,
//! resources, image name and store are read from both and compared with each other and with the
//! contract table in ARCHITECTURE.md. The GKE script's dry run is held to the seed's commands.
//!
//! Nothing here is skipped: without kubectl (on PATH or in the root's `.venv/bin`, where .ci/run
//! installs it) the tests fail and say how to install it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// The seed's replica count, the same under every orchestrator.
const REPLICAS: u64 = 3;
/// Per-replica limits and requests, the same under every orchestrator.
const CPU_LIMIT_MILLIS: u64 = 500;
const MEMORY_LIMIT_BYTES: u64 = 64 << 20;
const CPU_REQUEST_MILLIS: u64 = 50;
const MEMORY_REQUEST_BYTES: u64 = 16 << 20;
const IMAGE_NAME: &str = "hello-world";
const REDIS_URL: &str = "redis://redis:6379";
const INSTALL_HINT: &str = "run .ci/run's install step, or by hand: \
     python3 -m venv .venv && .venv/bin/pip install -r deploy/k8s/requirements-ci.txt";

// ---------------------------------------------------------------------------------------------
// The contract table (ARCHITECTURE.md)
// ---------------------------------------------------------------------------------------------

/// The values of ARCHITECTURE.md's contract table that the deployments must hold to.
#[derive(Debug)]
struct Contract {
    public_port: u64,
    admin_port: u64,
    drain_delay: Duration,
    shutdown_timeout: Duration,
    grace_period: Duration,
}

impl Contract {
    fn read() -> Self {
        let text = read(&root().join("ARCHITECTURE.md"));
        let cell = |what: &str| -> String {
            let row = text
                .lines()
                .find(|line| line.starts_with(&format!("| {what} |")))
                .unwrap_or_else(|| panic!("ARCHITECTURE.md's contract table has no `{what}` row"));
            row.split('`')
                .nth(1)
                .unwrap_or_else(|| panic!("the `{what}` row has no `value`: {row}"))
                .to_owned()
        };
        let port = |what: &str| -> u64 {
            let value = cell(what);
            value
                .parse()
                .unwrap_or_else(|_| panic!("{what} is not a port: {value}"))
        };
        Contract {
            public_port: port("public port"),
            admin_port: port("admin port"),
            drain_delay: duration(&cell("drain delay")),
            shutdown_timeout: duration(&cell("shutdown timeout")),
            grace_period: duration(&cell("grace period")),
        }
    }

    /// Drain delay and shutdown timeout as a deployment sets them, else the service's defaults.
    fn stop_budget(&self, env: &BTreeMap<String, String>) -> Duration {
        let drain = env
            .get("HELLO_DRAIN_DELAY")
            .map_or(self.drain_delay, |value| duration(value));
        let shutdown = env
            .get("HELLO_SHUTDOWN_TIMEOUT")
            .map_or(self.shutdown_timeout, |value| duration(value));
        drain + shutdown
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: the rendered overlays
// ---------------------------------------------------------------------------------------------

/// One overlay as `kubectl kustomize` renders it.
#[derive(Debug)]
struct Rendering {
    overlay: String,
    resources: Vec<Value>,
}

impl Rendering {
    fn all() -> Vec<Rendering> {
        let dir = root().join("deploy/k8s/overlays");
        let mut overlays: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
            .map(|entry| entry.expect("listing the overlays").path())
            .filter(|path| path.is_dir())
            .collect();
        overlays.sort();
        assert!(!overlays.is_empty(), "no overlay in {}", dir.display());
        overlays.iter().map(|path| Rendering::of(path)).collect()
    }

    fn of(dir: &Path) -> Rendering {
        let output = kubectl(&["kustomize", &dir.display().to_string()]);
        let overlay = dir
            .file_name()
            .expect("an overlay is a directory")
            .to_string_lossy()
            .into_owned();
        Rendering {
            resources: documents(&String::from_utf8_lossy(&output.stdout)),
            overlay,
        }
    }

    fn all_of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> + use<'_> {
        let kind = kind.to_owned();
        self.resources
            .iter()
            .filter(move |resource| str_at(resource, &["kind"]) == Some(kind.as_str()))
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.all_of_kind(kind)
            .find(|resource| str_at(resource, &["metadata", "name"]) == Some(name))
            .unwrap_or_else(|| panic!("overlay {}: no {kind} {name}", self.overlay))
    }

    fn deployment(&self) -> &Value {
        self.get("Deployment", "hello-world")
    }

    fn container(&self) -> &Value {
        let containers = at(
            self.deployment(),
            &["spec", "template", "spec", "containers"],
        )
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("overlay {}: the Deployment has no containers", self.overlay));
        containers
            .iter()
            .find(|container| str_at(container, &["name"]) == Some("hello-world"))
            .unwrap_or_else(|| panic!("overlay {}: no container `hello-world`", self.overlay))
    }

    fn container_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for var in at(self.container(), &["env"])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(value)) = (str_at(var, &["name"]), str_at(var, &["value"])) {
                env.insert(name.to_owned(), value.to_owned());
            }
        }
        env
    }

    /// containerPort by port name.
    fn container_ports(&self) -> BTreeMap<String, u64> {
        at(self.container(), &["ports"])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(|port| {
                (
                    str_at(port, &["name"]).unwrap_or_default().to_owned(),
                    u64_at(port, &["containerPort"]).expect("a containerPort is a number"),
                )
            })
            .collect()
    }

    fn probe_path(&self, probe: &str) -> (String, u64) {
        let get = at(self.container(), &[probe, "httpGet"])
            .unwrap_or_else(|| panic!("overlay {}: no {probe} with httpGet", self.overlay));
        let path = str_at(get, &["path"])
            .expect("httpGet has a path")
            .to_owned();
        let port = match at(get, &["port"]) {
            Some(Value::Number(number)) => number.as_u64().expect("a port number"),
            Some(Value::String(name)) => *self
                .container_ports()
                .get(name)
                .unwrap_or_else(|| panic!("{probe} names an unknown port {name}")),
            other => panic!("{probe}: port {other:?}"),
        };
        (path, port)
    }
}

// ---------------------------------------------------------------------------------------------
// Docker Swarm: the stack file and the load balancer's configuration
// ---------------------------------------------------------------------------------------------

/// `deploy/swarm/stack.yaml`, and the service in it that runs the image.
#[derive(Debug)]
struct Stack {
    dir: PathBuf,
    file: Value,
}

impl Stack {
    fn read() -> Stack {
        let dir = root().join("deploy/swarm");
        let path = dir.join("stack.yaml");
        assert!(
            path.is_file(),
            "{} is missing: the Swarm stack and the Kubernetes manifests are held to one contract",
            path.display()
        );
        let file = serde_yaml_ng::from_str(&read(&path))
            .unwrap_or_else(|err| panic!("{} does not parse: {err}", path.display()));
        Stack { dir, file }
    }

    fn services(&self) -> impl Iterator<Item = (&str, &Value)> {
        at(&self.file, &["services"])
            .and_then(Value::as_mapping)
            .expect("the stack has services")
            .iter()
            .map(|(name, service)| (name.as_str().expect("service names are strings"), service))
    }

    /// The service that runs the hello-world image (the stack names it `web`).
    fn web(&self) -> (&str, &Value) {
        let mut matching = self.services().filter(|(_, service)| {
            str_at(service, &["image"]).map(image_name) == Some(IMAGE_NAME.to_owned())
        });
        let web = matching
            .next()
            .unwrap_or_else(|| panic!("no service in the stack runs the {IMAGE_NAME} image"));
        assert!(
            matching.next().is_none(),
            "more than one service runs the {IMAGE_NAME} image"
        );
        web
    }

    /// A service's environment, from either of compose's two spellings (map or KEY=VALUE list).
    fn env(service: &Value) -> BTreeMap<String, String> {
        match at(service, &["environment"]) {
            None => BTreeMap::new(),
            Some(Value::Mapping(map)) => map
                .iter()
                .map(|(key, value)| (scalar(key), scalar(value)))
                .collect(),
            Some(Value::Sequence(list)) => list
                .iter()
                .map(|item| {
                    let item = scalar(item);
                    let (key, value) = item.split_once('=').unwrap_or((&item, ""));
                    (key.to_owned(), value.to_owned())
                })
                .collect(),
            Some(other) => panic!("environment is neither a map nor a list: {other:?}"),
        }
    }

    /// Every container port a service publishes, in long or short syntax.
    fn published_ports(service: &Value) -> Vec<(Option<u64>, u64)> {
        at(service, &["ports"])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(|port| match port {
                Value::Mapping(_) => (
                    at(port, &["published"])
                        .map(|value| scalar(value).parse().expect("a published port is a number")),
                    at(port, &["target"])
                        .map(|value| scalar(value).parse().expect("a target port is a number"))
                        .expect("a long-syntax port has a target"),
                ),
                short => {
                    // [ip:][published:]target[/protocol]
                    let short = scalar(short);
                    let spec = short.split('/').next().unwrap_or_default();
                    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
                    let target = parts[0].parse().expect("a target port is a number");
                    let published = parts.get(1).map(|p| p.parse().expect("a port number"));
                    (published, target)
                }
            })
            .collect()
    }

    /// The text of every file the stack ships as a config (the load balancer's, among them).
    fn config_files(&self) -> Vec<(String, String)> {
        at(&self.file, &["configs"])
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
            .filter_map(|(_, config)| str_at(config, &["file"]))
            .map(|file| (file.to_owned(), read(&self.dir.join(file))))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The contract, held
// ---------------------------------------------------------------------------------------------

#[test]
fn both_run_three_replicas_of_the_hello_world_image() {
    for k8s in Rendering::all() {
        let deployment = k8s.deployment();
        assert_eq!(
            u64_at(deployment, &["spec", "replicas"]),
            Some(REPLICAS),
            "overlay {}: Deployment replicas",
            k8s.overlay
        );
        let hpa = k8s.get("HorizontalPodAutoscaler", "hello-world");
        assert_eq!(
            u64_at(hpa, &["spec", "minReplicas"]),
            Some(REPLICAS),
            "overlay {}: the autoscaler may never go below the seed's count",
            k8s.overlay
        );
        let image = str_at(k8s.container(), &["image"]).expect("the container has an image");
        assert_eq!(
            image_name(image),
            IMAGE_NAME,
            "overlay {}: {image}",
            k8s.overlay
        );
    }
    let stack = Stack::read();
    let (name, web) = stack.web();
    assert_eq!(
        u64_at(web, &["deploy", "replicas"]),
        Some(REPLICAS),
        "Swarm service {name}: deploy.replicas"
    );
}

#[test]
fn the_public_port_is_served_and_the_admin_port_is_never_exposed() {
    let contract = Contract::read();
    for k8s in Rendering::all() {
        let ports = k8s.container_ports();
        assert_eq!(
            ports.get("http"),
            Some(&contract.public_port),
            "overlay {}",
            k8s.overlay
        );
        assert_eq!(
            ports.get("admin"),
            Some(&contract.admin_port),
            "overlay {}",
            k8s.overlay
        );

        // The seed's Service: port 80 named http → the public port.
        let service = k8s.get("Service", "hello-world");
        assert_eq!(str_at(service, &["spec", "type"]), Some("LoadBalancer"));
        let service_ports = at(service, &["spec", "ports"])
            .and_then(Value::as_sequence)
            .expect("the Service has ports");
        assert_eq!(
            service_ports.len(),
            1,
            "overlay {}: one Service port only",
            k8s.overlay
        );
        let port = &service_ports[0];
        assert_eq!(str_at(port, &["name"]), Some("http"));
        assert_eq!(u64_at(port, &["port"]), Some(80));
        let target = match at(port, &["targetPort"]) {
            Some(Value::String(name)) => ports.get(name).copied(),
            Some(value) => value.as_u64(),
            None => None,
        };
        assert_eq!(
            target,
            Some(contract.public_port),
            "overlay {}",
            k8s.overlay
        );

        // No Service at all reaches the admin port, by number or by name.
        for service in k8s.all_of_kind("Service") {
            for port in at(service, &["spec", "ports"])
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                for field in ["port", "targetPort"] {
                    let value = at(port, &[field]).map(scalar);
                    assert!(
                        value.as_deref() != Some(&contract.admin_port.to_string())
                            && value.as_deref() != Some("admin"),
                        "overlay {}: Service {:?} exposes the admin port",
                        k8s.overlay,
                        str_at(service, &["metadata", "name"])
                    );
                }
            }
        }
    }

    let stack = Stack::read();
    let (name, web) = stack.web();
    let env = Stack::env(web);
    for var in ["HELLO_PORT", "PORT"] {
        if let Some(port) = env.get(var) {
            assert_eq!(port, &contract.public_port.to_string(), "{name}: {var}");
        }
    }
    if let Some(port) = env.get("HELLO_ADMIN_PORT") {
        assert_eq!(
            port,
            &contract.admin_port.to_string(),
            "{name}: HELLO_ADMIN_PORT"
        );
    }
    for (service, definition) in stack.services() {
        for (published, target) in Stack::published_ports(definition) {
            assert!(
                target != contract.admin_port && published != Some(contract.admin_port),
                "Swarm service {service} publishes the admin port"
            );
        }
    }
    // The load balancer sends to the replicas' public port, never to the admin port.
    let backends: Vec<String> = stack
        .config_files()
        .iter()
        .flat_map(|(_, text)| {
            text.lines()
                .map(str::trim)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|line| line.starts_with("server"))
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with(&format!("{name}:")))
                .map(str::to_owned)
        })
        .collect();
    assert!(
        !backends.is_empty(),
        "no load balancer config in the stack sends to the {name} service"
    );
    for backend in backends {
        assert_eq!(
            backend,
            format!("{name}:{}", contract.public_port),
            "the load balancer's backend"
        );
    }
}

#[test]
fn probes_use_the_contract_paths_on_the_public_port() {
    let contract = Contract::read();
    for k8s in Rendering::all() {
        let public = contract.public_port;
        assert_eq!(
            k8s.probe_path("startupProbe"),
            ("/healthz".to_owned(), public)
        );
        assert_eq!(
            k8s.probe_path("livenessProbe"),
            ("/healthz".to_owned(), public)
        );
        assert_eq!(
            k8s.probe_path("readinessProbe"),
            ("/readyz".to_owned(), public)
        );
    }
    let stack = Stack::read();
    let (name, web) = stack.web();
    // Swarm's health check is the binary's own client, which probes /healthz (ARCHITECTURE.md).
    let test: Vec<String> = at(web, &["healthcheck", "test"])
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{name} has no healthcheck test"))
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(
        test,
        ["CMD", "/hello-world", "healthcheck"],
        "{name}: healthcheck"
    );
    // Readiness under Swarm is the load balancer's check.
    let configs = stack.config_files();
    assert!(
        configs.iter().any(|(_, text)| text
            .lines()
            .any(|line| line.trim() == "option httpchk GET /readyz")),
        "no load balancer config in the stack checks /readyz: {:?}",
        configs.iter().map(|(file, _)| file).collect::<Vec<_>>()
    );
}

#[test]
fn the_grace_period_covers_the_pre_stop_pause_the_drain_and_the_shutdown() {
    let contract = Contract::read();
    assert!(
        contract.grace_period > contract.drain_delay + contract.shutdown_timeout,
        "ARCHITECTURE.md: grace period {:?} must exceed drain + shutdown",
        contract.grace_period
    );
    for k8s in Rendering::all() {
        let spec = at(k8s.deployment(), &["spec", "template", "spec"]).expect("a pod spec");
        let grace = Duration::from_secs(
            u64_at(spec, &["terminationGracePeriodSeconds"]).unwrap_or_else(|| {
                panic!("overlay {}: no terminationGracePeriodSeconds", k8s.overlay)
            }),
        );
        // The preStop pause runs before SIGTERM is sent, inside the same grace period.
        let pre_stop = Duration::from_secs(
            u64_at(
                k8s.container(),
                &["lifecycle", "preStop", "sleep", "seconds"],
            )
            .unwrap_or(0),
        );
        let budget = pre_stop + contract.stop_budget(&k8s.container_env());
        assert_eq!(grace, contract.grace_period, "overlay {}", k8s.overlay);
        assert!(
            grace > budget,
            "overlay {}: grace period {grace:?} <= preStop {pre_stop:?} + drain + shutdown = {budget:?}",
            k8s.overlay
        );
    }
    let stack = Stack::read();
    let (name, web) = stack.web();
    let grace = duration(
        str_at(web, &["stop_grace_period"])
            .unwrap_or_else(|| panic!("{name}: no stop_grace_period (Docker's default is 10s)")),
    );
    let budget = contract.stop_budget(&Stack::env(web));
    assert_eq!(grace, contract.grace_period, "{name}: stop_grace_period");
    assert!(
        grace > budget,
        "{name}: stop_grace_period {grace:?} <= drain + shutdown {budget:?}"
    );
}

#[test]
fn both_give_each_replica_the_same_cpu_and_memory() {
    for k8s in Rendering::all() {
        let resources = at(k8s.container(), &["resources"]).expect("the container has resources");
        let cpu = |kind: &str| k8s_cpu_millis(&scalar(at(resources, &[kind, "cpu"]).expect("cpu")));
        let memory =
            |kind: &str| k8s_bytes(&scalar(at(resources, &[kind, "memory"]).expect("memory")));
        assert_eq!(cpu("limits"), CPU_LIMIT_MILLIS, "overlay {}", k8s.overlay);
        assert_eq!(
            memory("limits"),
            MEMORY_LIMIT_BYTES,
            "overlay {}",
            k8s.overlay
        );
        assert_eq!(
            cpu("requests"),
            CPU_REQUEST_MILLIS,
            "overlay {}",
            k8s.overlay
        );
        assert_eq!(
            memory("requests"),
            MEMORY_REQUEST_BYTES,
            "overlay {}",
            k8s.overlay
        );
    }
    let stack = Stack::read();
    let (name, web) = stack.web();
    let resources =
        at(web, &["deploy", "resources"]).unwrap_or_else(|| panic!("{name}: no deploy.resources"));
    let cpus =
        |kind: &str| swarm_cpu_millis(&scalar(at(resources, &[kind, "cpus"]).expect("cpus")));
    let memory =
        |kind: &str| swarm_bytes(&scalar(at(resources, &[kind, "memory"]).expect("memory")));
    assert_eq!(cpus("limits"), CPU_LIMIT_MILLIS, "{name}: limits.cpus");
    assert_eq!(
        memory("limits"),
        MEMORY_LIMIT_BYTES,
        "{name}: limits.memory"
    );
    assert_eq!(
        cpus("reservations"),
        CPU_REQUEST_MILLIS,
        "{name}: reservations.cpus"
    );
    assert_eq!(
        memory("reservations"),
        MEMORY_REQUEST_BYTES,
        "{name}: reservations.memory"
    );
}

#[test]
fn both_keep_the_shared_state_in_the_redis_service() {
    for k8s in Rendering::all() {
        assert_eq!(
            k8s.container_env()
                .get("HELLO_REDIS_URL")
                .map(String::as_str),
            Some(REDIS_URL),
            "overlay {}",
            k8s.overlay
        );
        // The URL's host is the headless Service in front of the Redis StatefulSet.
        let redis = k8s.get("Service", "redis");
        assert_eq!(str_at(redis, &["spec", "clusterIP"]), Some("None"));
        k8s.get("StatefulSet", "redis");
    }
    let stack = Stack::read();
    let (name, web) = stack.web();
    assert_eq!(
        Stack::env(web).get("HELLO_REDIS_URL").map(String::as_str),
        Some(REDIS_URL),
        "{name}"
    );
    assert!(
        stack.services().any(|(service, _)| service == "redis"),
        "the stack has no `redis` service for {REDIS_URL}"
    );
}

// ---------------------------------------------------------------------------------------------
// The GKE script's dry run
// ---------------------------------------------------------------------------------------------

/// The seed's two GKE commands, word for word.
const SEED_CREATE: &str = "gcloud container clusters create hello-world --num-nodes=3 \
                           --zone=us-central1-c --machine-type=n1-standard-1";
const SEED_CREDENTIALS: &str = "gcloud container clusters get-credentials hello-world \
                                --zone=us-central1-c";

/// Runs deploy.sh with an empty PATH: a dry run must need nothing but bash.
fn deploy_script(args: &[&str]) -> Output {
    let bash = find_on_path("bash").expect("bash is on PATH");
    let empty = std::env::temp_dir().join(format!("hello-world-empty-path-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("creating an empty directory for PATH");
    let output = Command::new(bash)
        .arg(root().join("deploy/gke/deploy.sh"))
        .args(args)
        .env_clear()
        .env("PATH", &empty)
        .output()
        .expect("running deploy/gke/deploy.sh");
    std::fs::remove_dir(&empty).ok();
    output
}

fn printed_commands(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("+ "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dry_run_prints_the_seed_commands_and_needs_no_tool() {
    let output = deploy_script(&["--dry-run", "--project=hello-world-ci", "--tag=ci"]);
    assert!(
        output.status.success(),
        "dry run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let commands = printed_commands(&output);
    let create = commands
        .iter()
        .find(|command| command.starts_with("gcloud container clusters create "))
        .expect("the dry run creates a cluster");
    assert!(
        create == SEED_CREATE || create.starts_with(&format!("{SEED_CREATE} ")),
        "the seed's create command, with additions only at the end: {create}"
    );
    assert!(commands.iter().any(|command| command == SEED_CREDENTIALS));
    assert!(
        commands
            .iter()
            .any(|command| command.starts_with("kubectl apply -k "))
    );
    let check = commands
        .iter()
        .find(|command| command.contains(" check http://"))
        .expect("the dry run ends with a check");
    for flag in ["--new-connection", "--expect-replicas=3"] {
        assert!(
            check.split(' ').any(|word| word == flag),
            "{flag} in: {check}"
        );
    }
    // Every value in the --flag=value form, as the seed writes them.
    for command in &commands {
        for word in command.split(' ') {
            assert!(
                !(word.starts_with("--") && word.ends_with('=')),
                "a flag without its value: {command}"
            );
        }
    }
}

#[test]
fn every_cluster_setting_can_be_overridden() {
    let output = deploy_script(&[
        "--dry-run",
        "--project=hello-world-ci",
        "--tag=ci",
        "--zone=europe-west1-b",
        "--cluster=demo",
        "--nodes=5",
        "--machine-type=e2-standard-2",
        "--repository=images",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let commands = printed_commands(&output);
    assert!(
        commands.iter().any(|command| command.starts_with(
            "gcloud container clusters create demo --num-nodes=5 --zone=europe-west1-b \
             --machine-type=e2-standard-2"
        )),
        "{commands:#?}"
    );
    assert!(
        commands.iter().any(|command| command
            == "docker push europe-west1-docker.pkg.dev/hello-world-ci/images/hello-world:ci"),
        "{commands:#?}"
    );
}

#[test]
fn the_dry_run_overlay_puts_the_pushed_images_into_the_gke_manifests() {
    let output = deploy_script(&["--dry-run", "--project=hello-world-ci", "--tag=ci"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let kustomization: String = stdout
        .lines()
        .skip_while(|line| !line.starts_with("+ cat > "))
        .skip(1)
        .take_while(|line| *line != "EOF")
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        !kustomization.is_empty(),
        "the dry run shows no overlay:\n{stdout}"
    );

    // The script writes it two levels below the root (target/<dir>); so does this test.
    let dir = root()
        .join("target")
        .join(format!("contract-gke-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the overlay directory");
    std::fs::write(dir.join("kustomization.yaml"), kustomization).expect("writing the overlay");
    let rendering = Rendering::of(&dir);
    std::fs::remove_dir_all(&dir).ok();

    let registry = "us-central1-docker.pkg.dev/hello-world-ci/hello-world";
    let image = str_at(rendering.container(), &["image"]).expect("an image");
    assert!(
        image.starts_with(&format!("{registry}/hello-world@sha256:")),
        "{image}"
    );
    let redis = at(
        rendering.get("StatefulSet", "redis"),
        &["spec", "template", "spec", "containers"],
    )
    .and_then(Value::as_sequence)
    .and_then(|containers| containers.first())
    .and_then(|container| str_at(container, &["image"]))
    .expect("the Redis container has an image");
    assert!(
        redis.starts_with(&format!("{registry}/redis@sha256:")),
        "{redis}"
    );
}

#[test]
fn without_a_project_the_script_stops_and_says_which_flag_is_missing() {
    let output = deploy_script(&["--dry-run", "--tag=ci"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--project"), "{stderr}");
    assert!(
        printed_commands(&output).is_empty(),
        "ran on without a project"
    );
}

// ---------------------------------------------------------------------------------------------
// Reading YAML, quantities and durations
// ---------------------------------------------------------------------------------------------

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn kubectl(args: &[&str]) -> Output {
    let kubectl = find_on_path("kubectl")
        .or_else(|| Some(root().join(".venv/bin/kubectl")).filter(|path| path.is_file()))
        .unwrap_or_else(|| panic!("kubectl is neither on PATH nor in .venv/bin: {INSTALL_HINT}"));
    let output = Command::new(kubectl)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running kubectl: {err}"));
    assert!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).expect("kubectl renders valid YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| value.get(*key))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn u64_at(value: &Value, path: &[&str]) -> Option<u64> {
    at(value, path).and_then(Value::as_u64)
}

/// A YAML scalar as text, whether it was written as a string, a number or a boolean.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `registry/path/hello-world:tag@sha256:...` → `hello-world`. A `${VAR:-default}` reference
/// (compose interpolation) stands for its default.
fn image_name(reference: &str) -> String {
    let reference = reference
        .strip_prefix("${")
        .and_then(|rest| rest.split_once(":-"))
        .map_or(reference, |(_, default)| default.trim_end_matches('}'));
    let without_digest = reference.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    last.split(':').next().unwrap_or_default().to_owned()
}

/// Go-style durations as compose and this project write them: `30s`, `1m30s`, `500ms`, `1.5s`.
fn duration(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    assert!(!rest.is_empty(), "an empty duration");
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or_else(|| panic!("duration {text:?} lacks a unit"));
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let number: f64 = number
            .parse()
            .unwrap_or_else(|_| panic!("duration {text:?}: bad number {number:?}"));
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            _ => panic!("duration {text:?}: unknown unit {unit:?}"),
        };
        total += Duration::from_secs_f64(number * seconds);
        rest = tail;
    }
    total
}

/// Kubernetes CPU: `500m` or `0.5` cores → millicores.
fn k8s_cpu_millis(quantity: &str) -> u64 {
    match quantity.strip_suffix('m') {
        Some(millis) => millis.parse().expect("millicores"),
        None => cores_to_millis(quantity),
    }
}

/// Compose `cpus`: `0.5` cores → millicores.
fn swarm_cpu_millis(cpus: &str) -> u64 {
    cores_to_millis(cpus)
}

fn cores_to_millis(cores: &str) -> u64 {
    let cores: f64 = cores.parse().unwrap_or_else(|_| panic!("cpu {cores:?}"));
    (cores * 1000.0).round() as u64
}

/// Kubernetes memory: binary (`Ki`, `Mi`, `Gi`) or decimal (`k`, `M`, `G`) suffixes.
fn k8s_bytes(quantity: &str) -> u64 {
    const UNITS: [(&str, u64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in UNITS {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return number.parse::<u64>().expect("a memory quantity") * factor;
        }
    }
    quantity.parse().expect("a memory quantity in bytes")
}

/// Compose memory: `b`, `k`/`kb`, `m`/`mb`, `g`/`gb` in either case, all binary (Docker's units).
fn swarm_bytes(quantity: &str) -> u64 {
    let lower = quantity.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let factor = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => panic!("memory {quantity:?}: unknown unit"),
    };
    number.parse::<u64>().expect("a memory quantity") * factor
}

#[test]
fn quantities_and_durations_read_as_their_orchestrators_read_them() {
    assert_eq!(k8s_cpu_millis("500m"), 500);
    assert_eq!(k8s_cpu_millis("0.5"), 500);
    assert_eq!(swarm_cpu_millis("0.05"), 50);
    assert_eq!(k8s_bytes("64Mi"), 64 << 20);
    assert_eq!(k8s_bytes("64M"), 64_000_000);
    assert_eq!(swarm_bytes("64M"), 64 << 20);
    assert_eq!(swarm_bytes("16m"), 16 << 20);
    assert_eq!(duration("30s"), Duration::from_secs(30));
    assert_eq!(duration("1m30s"), Duration::from_secs(90));
    assert_eq!(duration("250ms"), Duration::from_millis(250));
    assert_eq!(image_name("hello-world:dev"), "hello-world");
    assert_eq!(
        image_name("us-central1-docker.pkg.dev/p/r/hello-world@sha256:ab"),
        "hello-world"
    );
    assert_eq!(image_name("${HELLO_IMAGE:-hello-world:dev}"), "hello-world");
    assert_eq!(image_name("localhost:5000/hello-world:1"), "hello-world");
}
