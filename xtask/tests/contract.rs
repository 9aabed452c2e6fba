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

    /// The gRPC service and port a probe asks (`grpc:`).
    fn probe_grpc(&self, probe: &str) -> (String, u64) {
        let grpc = at(self.container(), &[probe, "grpc"])
            .unwrap_or_else(|| panic!("overlay {}: no {probe} with grpc", self.overlay));
        let service = str_at(grpc, &["service"]).expect("grpc names its service");
        let port = at(grpc, &["port"])
            .and_then(Value::as_u64)
            .expect("a grpc probe's port is a number");
        (service.to_owned(), port)
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
        let mut file: Value = serde_yaml_ng::from_str(&read(&path))
            .unwrap_or_else(|err| panic!("{} does not parse: {err}", path.display()));
        // The Redis servers and Sentinels share their settings through `<<: *anchor`, as
        // Docker's compose loader applies it.
        file.apply_merge()
            .unwrap_or_else(|err| panic!("{}: merge keys: {err}", path.display()));
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
        // The gRPC health service's name for this replica (crates/hello-world/src/api/grpc.rs).
        assert_eq!(
            k8s.probe_grpc("startupProbe"),
            ("hello-world".to_owned(), public)
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

/// How many Redis servers (a primary and its replicas) and Sentinels every deployment runs.
const REDIS_MEMBERS: usize = 3;

/// The words of `--name value` among `words`, or None.
fn flag_value(words: &[String], name: &str) -> Option<String> {
    words
        .windows(2)
        .find(|pair| pair[0] == format!("--{name}"))
        .map(|pair| pair[1].clone())
}

/// A container's command and args, as words.
fn container_words(container: &Value) -> Vec<String> {
    ["command", "args"]
        .iter()
        .filter_map(|field| at(container, &[field]).and_then(Value::as_sequence))
        .flatten()
        .map(scalar)
        .collect()
}

/// A Kubernetes container's plain `env` values (those given as `value:`).
fn k8s_env(container: &Value) -> BTreeMap<String, String> {
    at(container, &["env"])
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|var| {
            Some((
                str_at(var, &["name"])?.to_owned(),
                scalar(at(var, &["value"])?),
            ))
        })
        .collect()
}

impl Rendering {
    /// The Redis StatefulSet's container of this name.
    fn redis_container(&self, name: &str) -> &Value {
        at(
            self.get("StatefulSet", "redis"),
            &["spec", "template", "spec", "containers"],
        )
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .find(|container| str_at(container, &["name"]) == Some(name))
        .unwrap_or_else(|| panic!("overlay {}: no container `{name}` in redis", self.overlay))
    }
}

impl Stack {
    /// The services whose names start with `prefix` (`redis-`, `sentinel-`), by name.
    fn members(&self, prefix: &str) -> Vec<(&str, &Value)> {
        self.services()
            .filter(|(name, _)| name.starts_with(prefix))
            .collect()
    }
}

/// The store's shape, the same under both orchestrators: three Redis servers and three
/// Sentinels, one of each per machine, the service finding the primary through all three
/// Sentinels under one master name, the same quorum, the same failure detection, the same
/// refusal of writes without a replica in sync, and the same start script.
#[test]
fn both_replicate_redis_over_three_machines_under_three_sentinels() {
    let stack = Stack::read();
    let (web_name, web) = stack.web();
    let web_env = Stack::env(web);
    let servers = stack.members("redis-");
    let sentinels = stack.members("sentinel-");
    assert_eq!(servers.len(), REDIS_MEMBERS, "the stack's Redis servers");
    assert_eq!(sentinels.len(), REDIS_MEMBERS, "the stack's Sentinels");
    let master = web_env
        .get("HELLO_REDIS_MASTER_NAME")
        .cloned()
        .unwrap_or_else(|| panic!("{web_name} names no master"));
    let swarm_sentinels: Vec<String> = web_env
        .get("HELLO_REDIS_SENTINEL")
        .unwrap_or_else(|| panic!("{web_name} has no HELLO_REDIS_SENTINEL"))
        .split(',')
        .map(str::to_owned)
        .collect();
    let mut expected: Vec<String> = sentinels
        .iter()
        .map(|(name, _)| format!("{name}:26379"))
        .collect();
    expected.sort();
    let mut named = swarm_sentinels.clone();
    named.sort();
    assert_eq!(
        named, expected,
        "{web_name} asks every Sentinel of the stack"
    );
    assert!(
        !web_env.contains_key("HELLO_REDIS_URL"),
        "{web_name}: a URL would bypass the Sentinels"
    );

    // One of each per machine: each server and each Sentinel has a placement of its own.
    let constraints = |members: &[(&str, &Value)]| -> Vec<String> {
        let mut all: Vec<String> = members
            .iter()
            .map(|(name, service)| {
                let list = at(service, &["deploy", "placement", "constraints"])
                    .and_then(Value::as_sequence)
                    .unwrap_or_else(|| panic!("{name} has no placement constraint"));
                assert_eq!(list.len(), 1, "{name}: one constraint");
                assert_eq!(
                    u64_at(service, &["deploy", "replicas"]),
                    Some(1),
                    "{name}: one task"
                );
                scalar(&list[0])
            })
            .collect();
        all.sort();
        all
    };
    let server_slots = constraints(&servers);
    let mut distinct = server_slots.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        REDIS_MEMBERS,
        "each server on a machine of its own"
    );
    assert_eq!(
        constraints(&sentinels),
        server_slots,
        "a Sentinel beside each server"
    );

    let swarm_server_words: Vec<Vec<String>> = servers
        .iter()
        .map(|(name, service)| {
            at(service, &["command"])
                .and_then(Value::as_sequence)
                .unwrap_or_else(|| panic!("{name} has no command"))
                .iter()
                .map(scalar)
                .collect()
        })
        .collect();
    let sentinel_env: Vec<BTreeMap<String, String>> =
        sentinels.iter().map(|(_, s)| Stack::env(s)).collect();
    let server_env: Vec<BTreeMap<String, String>> =
        servers.iter().map(|(_, s)| Stack::env(s)).collect();
    let script = read(&root().join("deploy/swarm/redis-start.sh"));

    for k8s in Rendering::all() {
        let overlay = &k8s.overlay;
        let statefulset = k8s.get("StatefulSet", "redis");
        assert_eq!(
            u64_at(statefulset, &["spec", "replicas"]),
            Some(REDIS_MEMBERS as u64),
            "overlay {overlay}: Redis pods"
        );
        let env = k8s.container_env();
        assert_eq!(
            env.get("HELLO_REDIS_MASTER_NAME"),
            Some(&master),
            "overlay {overlay}"
        );
        assert!(!env.contains_key("HELLO_REDIS_URL"), "overlay {overlay}");
        assert_eq!(
            env.get("HELLO_REDIS_WAIT_REPLICAS"),
            web_env.get("HELLO_REDIS_WAIT_REPLICAS"),
            "overlay {overlay}: replicas that confirm a write"
        );
        let pods: Vec<String> = env
            .get("HELLO_REDIS_SENTINEL")
            .unwrap_or_else(|| panic!("overlay {overlay}: no HELLO_REDIS_SENTINEL"))
            .split(',')
            .map(str::to_owned)
            .collect();
        let expected: Vec<String> = (0..REDIS_MEMBERS)
            .map(|n| format!("redis-{n}.redis:26379"))
            .collect();
        assert_eq!(pods, expected, "overlay {overlay}: every Sentinel, by pod");

        // Hard anti-affinity: never two members on one node.
        let anti = at(
            statefulset,
            &[
                "spec",
                "template",
                "spec",
                "affinity",
                "podAntiAffinity",
                "requiredDuringSchedulingIgnoredDuringExecution",
            ],
        )
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("overlay {overlay}: Redis has no hard anti-affinity"));
        assert!(
            anti.iter()
                .any(|term| str_at(term, &["topologyKey"]) == Some("kubernetes.io/hostname")),
            "overlay {overlay}: anti-affinity by node"
        );
        let budget = k8s.get("PodDisruptionBudget", "redis");
        assert_eq!(
            u64_at(budget, &["spec", "maxUnavailable"]),
            Some(1),
            "overlay {overlay}: at most one member down by choice"
        );

        let server = k8s.redis_container("redis");
        let sentinel = k8s.redis_container("sentinel");
        let words = container_words(server);
        for words_swarm in &swarm_server_words {
            for flag in ["min-replicas-to-write", "min-replicas-max-lag"] {
                assert_eq!(
                    flag_value(&words, flag),
                    flag_value(words_swarm, flag),
                    "overlay {overlay}: --{flag}"
                );
                assert!(flag_value(&words, flag).is_some(), "--{flag} is set");
            }
        }
        assert_eq!(
            flag_value(&words, "min-replicas-to-write").as_deref(),
            Some("1"),
            "a primary without a replica in sync refuses writes"
        );
        let k8s_server_env = k8s_env(server);
        let k8s_sentinel_env = k8s_env(sentinel);
        for var in [
            "HELLO_SENTINEL_QUORUM",
            "HELLO_SENTINEL_DOWN_AFTER_MS",
            "HELLO_REDIS_MASTER_NAME",
        ] {
            for swarm in &sentinel_env {
                assert_eq!(
                    k8s_sentinel_env.get(var),
                    swarm.get(var),
                    "overlay {overlay}: the Sentinels' {var}"
                );
            }
        }
        for swarm in &server_env {
            assert_eq!(
                k8s_server_env.get("HELLO_REDIS_MASTER_NAME"),
                swarm.get("HELLO_REDIS_MASTER_NAME"),
                "overlay {overlay}: the servers' master name"
            );
        }
        let quorum: usize = k8s_sentinel_env["HELLO_SENTINEL_QUORUM"]
            .parse()
            .expect("a quorum is a number");
        assert_eq!(quorum, REDIS_MEMBERS / 2 + 1, "a majority of the Sentinels");
        assert_eq!(
            k8s_sentinel_env.get("HELLO_REDIS_MASTER_NAME"),
            Some(&master),
            "overlay {overlay}: the Sentinels watch the master the service asks for"
        );

        let config = k8s.get("ConfigMap", "redis-start");
        assert_eq!(
            str_at(config, &["data", "redis-start.sh"]),
            Some(script.as_str()),
            "overlay {overlay}: the ConfigMap's start script is deploy/swarm/redis-start.sh"
        );
        let redis_service = k8s.get("Service", "redis");
        assert_eq!(str_at(redis_service, &["spec", "clusterIP"]), Some("None"));
    }
}

/// The allocator's settings (`MIMALLOC_*`) are the image's everywhere: the orchestrators set
/// them again, so an image run by hand, the stack and the Deployment all get the same.
#[test]
fn both_give_the_allocator_the_images_settings() {
    let dockerfile = read(&root().join("deploy/Dockerfile"));
    let image: BTreeMap<String, String> = dockerfile
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|word| word.trim_end_matches('\\'))
        .filter_map(|word| word.split_once('='))
        .filter(|(name, _)| name.starts_with("MIMALLOC_"))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    assert!(
        image.contains_key("MIMALLOC_ARENA_RESERVE") && image.contains_key("MIMALLOC_ALLOW_THP"),
        "deploy/Dockerfile sets {image:?}"
    );
    let allocator = |env: BTreeMap<String, String>| -> BTreeMap<String, String> {
        env.into_iter()
            .filter(|(name, _)| name.starts_with("MIMALLOC_"))
            .collect()
    };
    for k8s in Rendering::all() {
        assert_eq!(
            allocator(k8s.container_env()),
            image,
            "overlay {}",
            k8s.overlay
        );
    }
    let stack = Stack::read();
    let (name, web) = stack.web();
    assert_eq!(allocator(Stack::env(web)), image, "{name}");
}

/// The Kubernetes Secret the admin token comes from; the GKE script creates it.
const ADMIN_SECRET: &str = "hello-world-admin-token";

#[test]
fn both_read_the_admin_token_from_a_secret_that_is_never_committed() {
    for k8s in Rendering::all() {
        let file = k8s
            .container_env()
            .get("HELLO_ADMIN_TOKEN_FILE")
            .cloned()
            .unwrap_or_else(|| panic!("overlay {}: no HELLO_ADMIN_TOKEN_FILE", k8s.overlay));
        let (dir, key) = file.rsplit_once('/').expect("an absolute path");
        let mount = at(k8s.container(), &["volumeMounts"])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .find(|mount| str_at(mount, &["mountPath"]) == Some(dir))
            .unwrap_or_else(|| panic!("overlay {}: nothing mounted at {dir}", k8s.overlay));
        assert_eq!(at(mount, &["readOnly"]), Some(&Value::Bool(true)));
        let volume_name = str_at(mount, &["name"]).expect("a mount names its volume");
        let volume = at(k8s.deployment(), &["spec", "template", "spec", "volumes"])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .find(|volume| str_at(volume, &["name"]) == Some(volume_name))
            .unwrap_or_else(|| panic!("overlay {}: no volume {volume_name}", k8s.overlay));
        assert_eq!(
            str_at(volume, &["secret", "secretName"]),
            Some(ADMIN_SECRET),
            "overlay {}",
            k8s.overlay
        );
        let items = at(volume, &["secret", "items"])
            .and_then(Value::as_sequence)
            .expect("the token is mounted by key");
        assert!(
            items
                .iter()
                .any(|item| str_at(item, &["key"]) == Some("token")
                    && str_at(item, &["path"]) == Some(key)),
            "overlay {}: key `token` at {file}",
            k8s.overlay
        );
        assert!(
            k8s.all_of_kind("Secret").next().is_none(),
            "overlay {}: a Secret in the manifests would be committed with its value",
            k8s.overlay
        );
    }
    let commands = printed_commands(&deploy_script(&[
        "--dry-run",
        "--project=hello-world-ci",
        "--tag=ci",
    ]));
    let create = commands
        .iter()
        .find(|command| command.contains(&format!("create secret generic {ADMIN_SECRET} ")))
        .expect("the GKE script creates the admin token Secret");
    assert!(
        create.contains("--from-file=token="),
        "the token goes through a file, never a command line: {create}"
    );

    let stack = Stack::read();
    let (name, web) = stack.web();
    let file = Stack::env(web)
        .get("HELLO_ADMIN_TOKEN_FILE")
        .cloned()
        .unwrap_or_else(|| panic!("{name}: no HELLO_ADMIN_TOKEN_FILE"));
    let target = file
        .strip_prefix("/run/secrets/")
        .unwrap_or_else(|| panic!("{name}: {file} is not a Swarm secret"));
    let mounted = at(web, &["secrets"])
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .find(|secret| str_at(secret, &["target"]) == Some(target))
        .unwrap_or_else(|| panic!("{name}: no secret mounted as {target}"));
    assert_eq!(str_at(mounted, &["uid"]), Some("65532"));
    let source = str_at(mounted, &["source"]).expect("a secret has a source");
    let secret = at(&stack.file, &["secrets", source])
        .unwrap_or_else(|| panic!("the stack defines no secret {source}"));
    let from = str_at(secret, &["file"]).expect("the secret comes from a file");
    let default = from
        .strip_prefix("${ADMIN_TOKEN_FILE:-")
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("`cargo xtask stack up` passes ADMIN_TOKEN_FILE: {from}"));
    let ignored = Command::new("git")
        .args(["check-ignore", "--quiet"])
        .arg(stack.dir.join(default))
        .status()
        .expect("running git check-ignore");
    assert!(ignored.success(), "{default} must be git-ignored");
}

/// Redis's memory, the same under both orchestrators: a `maxmemory` below the container's limit,
/// leaving room for what Redis does not count in it (the fork that rewrites the append-only
/// file, client buffers, fragmentation), and `noeviction`, so that a full Redis refuses writes
/// (answered 507) instead of being killed by the kernel or silently dropping data.
#[test]
fn both_bound_redis_memory_below_its_limit_and_never_evict() {
    let mut seen = Vec::new();
    for k8s in Rendering::all() {
        let container = k8s.redis_container("redis");
        let words = container_words(container);
        let limit = at(container, &["resources", "limits", "memory"])
            .map(|memory| k8s_bytes(&scalar(memory)))
            .unwrap_or_else(|| panic!("overlay {}: Redis has no memory limit", k8s.overlay));
        seen.push((format!("overlay {}", k8s.overlay), words, limit));
    }
    let stack = Stack::read();
    for (name, redis) in stack.members("redis-") {
        let words: Vec<String> = at(redis, &["command"])
            .and_then(Value::as_sequence)
            .expect("the stack's redis has a command list")
            .iter()
            .map(scalar)
            .collect();
        let limit = at(redis, &["deploy", "resources", "limits", "memory"])
            .map(|memory| swarm_bytes(&scalar(memory)))
            .expect("the stack's redis has a memory limit");
        seen.push((format!("the stack's {name}"), words, limit));
    }
    assert_eq!(seen.len(), Rendering::all().len() + REDIS_MEMBERS);

    let mut values = Vec::new();
    for (place, words, limit) in &seen {
        let setting = |name: &str| {
            words
                .windows(2)
                .find(|pair| pair[0] == format!("--{name}"))
                .map(|pair| pair[1].clone())
                .unwrap_or_else(|| panic!("{place}: Redis runs without --{name}: {words:?}"))
        };
        let maxmemory = redis_bytes(&setting("maxmemory"));
        let policy = setting("maxmemory-policy");
        assert_eq!(policy, "noeviction", "{place}");
        assert!(
            maxmemory * 4 <= limit * 3,
            "{place}: maxmemory {maxmemory} leaves less than a quarter of the {limit}-byte limit"
        );
        values.push((maxmemory, policy, *limit));
    }
    assert!(
        values.windows(2).all(|pair| pair[0] == pair[1]),
        "Redis's memory differs between deployments: {:?}",
        seen.iter()
            .map(|(place, _, _)| place)
            .zip(&values)
            .collect::<Vec<_>>()
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
            == "cargo xtask image --push europe-west1-docker.pkg.dev/hello-world-ci/images/hello-world --tag ci"),
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
    // Pinned to the digest of the image index that `cargo xtask image --push` printed.
    let image = str_at(rendering.container(), &["image"]).expect("an image");
    assert_eq!(
        image,
        format!("{registry}/hello-world@sha256:PUSHED_INDEX_DIGEST"),
        "{stdout}"
    );
    let push = stdout
        .lines()
        .position(|line| {
            line.starts_with(&format!(
                "+ cargo xtask image --push {registry}/hello-world --tag ci"
            ))
        })
        .expect("the dry run pushes the index");
    let apply = stdout
        .lines()
        .position(|line| line.starts_with("+ kubectl apply -k "))
        .expect("the dry run applies");
    assert!(push < apply, "the index is pushed before it is deployed");
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

/// Redis's own sizes: `k`, `m`, `g` are powers of ten, `kb`, `mb`, `gb` powers of two.
fn redis_bytes(quantity: &str) -> u64 {
    let lower = quantity.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let factor = match unit {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => panic!("Redis size {quantity:?}: unknown unit"),
    };
    number.parse::<u64>().expect("a Redis size") * factor
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
    assert_eq!(redis_bytes("192mb"), 192 << 20);
    assert_eq!(redis_bytes("200m"), 200_000_000);
    assert_eq!(redis_bytes("1gb"), 1 << 30);
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

// ---------------------------------------------------------------------------------------------
// What differs on three machines (`cargo xtask cluster`): the same stack file, placed per machine
// ---------------------------------------------------------------------------------------------

#[test]
fn the_stack_spreads_its_replicas_over_machines_and_runs_a_balancer_on_each() {
    let stack = Stack::read();
    let (name, web) = stack.web();
    let spread = at(web, &["deploy", "placement", "preferences"])
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|preference| str_at(preference, &["spread"]))
        .collect::<Vec<_>>();
    assert!(
        spread
            .iter()
            .any(|key| *key == "node.hostname" || *key == "node.id"),
        "Swarm service {name}: spread over machines (placement.preferences), found {spread:?}"
    );
    // Three replicas must fit on the two machines left when one is lost.
    if let Some(max) = u64_at(web, &["deploy", "placement", "max_replicas_per_node"]) {
        assert!(
            max * 2 >= REPLICAS,
            "Swarm service {name}: max_replicas_per_node {max} leaves replicas unscheduled when a machine is lost"
        );
    }
    assert_eq!(
        Stack::env(web).get("NODE_NAME").map(String::as_str),
        Some("{{.Node.Hostname}}"),
        "Swarm service {name}: NODE_NAME names the machine"
    );
    let (_, lb) = stack
        .services()
        .find(|(service, _)| *service == "lb")
        .expect("the stack has its balancer, `lb`");
    assert_eq!(
        str_at(lb, &["deploy", "mode"]),
        Some("global"),
        "one balancer on every machine"
    );
    let ports = at(lb, &["ports"])
        .and_then(Value::as_sequence)
        .expect("the balancer publishes a port");
    assert!(
        ports
            .iter()
            .all(|port| str_at(port, &["mode"]) == Some("host")),
        "each machine's balancer is published on its own machine (host mode): {ports:?}"
    );
}

#[test]
fn the_external_balancer_checks_each_machine_s_balancer_and_outwaits_it() {
    let external = read(&root().join("deploy/cluster/haproxy.cfg"));
    let (_, internal) = Stack::read()
        .config_files()
        .into_iter()
        .find(|(file, _)| file.contains("haproxy"))
        .expect("the stack ships its HAProxy config");
    let setting = |text: &str, key: &str| -> String {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(key))
            .unwrap_or_else(|| panic!("no `{key}` in a balancer config"))
            .trim()
            .to_owned()
    };
    // It checks what every machine's balancer answers by itself, which fails while that
    // balancer has no replica to send to.
    let uri = setting(&internal, "monitor-uri");
    assert_eq!(
        setting(&external, "option httpchk"),
        format!("GET {uri}"),
        "the external balancer checks the machines' own liveness URI"
    );
    assert!(
        setting(&internal, "monitor fail if").contains("nbsrv("),
        "a machine's balancer with no live replica fails its liveness"
    );
    // A machine that answers gets the time to retry a hung replica before the external
    // balancer gives up on the machine.
    let outer = duration(&setting(&external, "timeout server"));
    let inner = duration(&setting(&internal, "timeout server"));
    assert!(
        outer > inner,
        "external timeout server {outer:?} must exceed the in-cluster {inner:?}"
    );
    // It sends to the port each machine's balancer binds.
    let bind = setting(&internal, "bind");
    assert!(
        external
            .lines()
            .filter(|l| l.trim().starts_with("server "))
            .all(
                |l| l.contains(&format!("{}:", l.split_whitespace().nth(1).unwrap_or("")))
                    && l.contains(bind.trim_start_matches(':'))
            ),
        "every machine is reached on the port its balancer binds ({bind})"
    );
}
