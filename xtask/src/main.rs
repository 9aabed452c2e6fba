//! `cargo xtask`: the project's automation, in Rust instead of shell scripts.
//!
//! | command | what it does |
//! |---|---|
//! | `cargo xtask ci` | every check and test: fmt, clippy, unit + integration tests, then the rest below |
//! | `cargo xtask manifests` | render, validate and policy-scan the Kubernetes manifests; lint the Dockerfile and the GKE script |
//! | `cargo xtask image [--push REPO \| --reproduce]` | the `FROM scratch` service image for amd64 and arm64 with its SBOM, checked (arm64 under emulation); the index pushed; the binaries rebuilt and compared; the HAProxy/Redis base images |
//! | `cargo xtask stack up\|down` | the Docker Swarm stack: 3 replicas behind HAProxy, with Redis |
//! | `cargo xtask cluster up\|down\|status` | three machines (Docker engines in containers) as one Swarm, a registry, an external balancer |
//! | `cargo xtask e2e` | the end-to-end proofs on Swarm; writes `e2e/RESULTS.md` |
//! | `cargo xtask budget` | instructions per `GET /` against bare axum, within the budget CI holds (callgrind) |
//! | `cargo xtask fuzz [--time S] [--only NAME]` | every fuzz target of `fuzz/` for a bounded time, two at a time |
//! | `cargo xtask bench [--quick] [--only NAME]` | ours vs Flask, gunicorn, Go and nginx; writes `bench/RESULTS.md` and charts |
//!
//! Each command lives in its own module; this file only dispatches.

use std::process::ExitCode;

mod bench;
mod budget;
mod ci;
mod cluster;
mod e2e;
mod fuzz;
mod image;
mod image_checks;
mod manifests;
mod stack;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci        run every check and test (the README's test command)
  manifests check the Kubernetes manifests, the Dockerfile and the GKE script offline
  image     build and check the container images (service for amd64 + arm64 with SBOMs, HAProxy,
            Redis) [--push REPOSITORY] [--reproduce]
  stack     up | down [--volumes]: run the Swarm stack on this machine
  cluster   up | down [--volumes] | status: the stack on three machines (engines in containers)
  e2e       prove balancing, failover, updates, scaling and consistency on Swarm
  budget    count the instructions of a GET / against bare axum; fail over the budget
  fuzz      fuzz every parser of client input, each for a bounded time [--time S] [--only NAME]
  bench     measure ours against the references; writes bench/RESULTS.md [--quick] [--only NAME]
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "ci" => ci::run(rest),
        "manifests" => manifests::run(rest),
        "image" => image::run(rest),
        "stack" => stack::run(rest),
        "cluster" => cluster::run(rest),
        "e2e" => e2e::run(rest),
        "fuzz" => fuzz::run(rest),
        "bench" => bench::run(rest),
        "budget" => budget::run(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask {command}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The repository root: xtask is always run through cargo, from anywhere in the workspace.
fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}
