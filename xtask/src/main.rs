//! `cargo xtask`: the project's automation, in Rust instead of shell scripts.
//!
//! | command | what it does |
//! |---|---|
//! | `cargo xtask ci` | every check and test: fmt, clippy, unit + integration tests, then the rest below |
//! | `cargo xtask manifests` | render, validate and policy-scan the Kubernetes manifests; lint the Dockerfile and the GKE script |
//! | `cargo xtask image` | the `FROM scratch` service image and the HAProxy/Redis base images |
//! | `cargo xtask stack up\|down` | the Docker Swarm stack: 3 replicas behind HAProxy, with Redis |
//! | `cargo xtask e2e` | the end-to-end proofs on Swarm; writes `e2e/RESULTS.md` |
//! | `cargo xtask bench [--quick] [--only NAME]` | ours vs Flask, gunicorn, Go and nginx; writes `bench/RESULTS.md` and charts |
//! | `cargo xtask layout` | record which functions a start runs, for the linker's code layout (`crates/hello-world/layout/`) |
//!
//! Each command lives in its own module; this file only dispatches.

use std::process::ExitCode;

mod bench;
mod ci;
mod e2e;
mod image;
mod layout;
mod manifests;
mod stack;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci        run every check and test (the README's test command)
  manifests check the Kubernetes manifests, the Dockerfile and the GKE script offline
  image     build the container images (service, HAProxy, Redis)
  stack     up | down [--volumes]: run the Swarm stack on this machine
  e2e       prove balancing, failover, updates, scaling and consistency on Swarm
  bench     measure ours against the references; writes bench/RESULTS.md [--quick] [--only NAME]
  layout    record the functions a start runs (needs valgrind); rewrites crates/hello-world/layout/
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
        "e2e" => e2e::run(rest),
        "bench" => bench::run(rest),
        "layout" => layout::run(rest),
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
