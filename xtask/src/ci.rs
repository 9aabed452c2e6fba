//! `cargo xtask ci`: every check and every test, in the order a failure is cheapest to see.

use anyhow::Result;
use xshell::{Shell, cmd};

pub(crate) fn run(_args: &[String]) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    cmd!(sh, "cargo fmt --all -- --check").run()?;
    cmd!(sh, "cargo clippy --workspace --all-targets -- -D warnings").run()?;
    cmd!(sh, "cargo nextest run --workspace --no-fail-fast").run()?;
    // Offline checks of the Kubernetes manifests, the Dockerfile (hadolint) and the GKE script.
    crate::manifests::run(&[])?;
    // The image, the Swarm stack and the proofs on it.
    crate::e2e::run(&[])?;
    Ok(())
}
