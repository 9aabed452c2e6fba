//! `cargo xtask ci`: every check and every test, in the order a failure is cheapest to see.
//! Two steps need CPU but no wall-clock of their own, so they run at the lowest CPU priority
//! beside the image builds and the e2e proofs (which mostly wait), side by side so that both
//! are done early in the proofs: the instruction budget (a release build in its own target
//! directory, the bare axum reference's, two callgrind runs of a few seconds; instruction
//! counts do not depend on how busy the machine is) and fuzzing (the instrumented build of the
//! targets, then each of them for 60 s, two at a time).

use std::process::Command;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

pub(crate) fn run(_args: &[String]) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    cmd!(sh, "cargo fmt --all -- --check").run()?;
    cmd!(sh, "cargo clippy --workspace --all-targets -- -D warnings").run()?;
    cmd!(sh, "cargo nextest run --workspace --no-fail-fast").run()?;
    let background = std::thread::spawn(|| {
        // The instruction budget of a GET / (callgrind; deterministic, unlike timings here),
        // and beside it every parser of client input under libFuzzer, 60 s each, two at a time:
        // side by side, so that both end early in the proofs.
        let budget = std::thread::spawn(budget_niced);
        let fuzzed = crate::fuzz::run(&["--nice".to_string()]).context("fuzzing");
        let budget = budget
            .join()
            .map_err(|_| anyhow::anyhow!("the budget thread panicked"))
            .and_then(|done| done);
        budget.and(fuzzed)
    });
    let proofs = (|| {
        // Offline checks of the Kubernetes manifests, the Dockerfile (hadolint), the GKE script.
        crate::manifests::run(&[])?;
        // The service image for amd64 and arm64 with their SBOMs, checked: the arm64 binary
        // under emulation, both images configured alike, the SBOMs against the binaries' lists.
        // About 3.5 minutes of CPU on 2 cores: the arm64 release build (the amd64 one is the
        // build the proofs below need anyway), then 3 s of checks.
        crate::image::run(&[])?;
        // The image, the Swarm stack and the proofs on it.
        crate::e2e::run(&[])?;
        // The same stack on three machines, and the machine failures proved on it, with the
        // images and check client the proofs above just built.
        crate::e2e::run(&["--cluster".to_string(), "--no-build".to_string()])
    })();
    let background = background
        .join()
        .map_err(|_| anyhow::anyhow!("the budget and fuzzing thread panicked"))
        .and_then(|done| done);
    proofs?;
    background
}

/// `cargo xtask budget` as a child at the lowest CPU priority, building (xtask too) in
/// `target/budget` so that its release build never waits for the image builds' lock on
/// `target/` (nor they for it). Its output is printed when it ends, in one piece. (Not this
/// binary run again: the tests above rebuild `target/debug/xtask` under it.)
fn budget_niced() -> Result<()> {
    let target = crate::project_root().join("target/budget");
    let out = Command::new("nice")
        .args(["-n", "19", "cargo", "xtask", "budget"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(crate::project_root())
        .output()
        .context("running the budget")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        println!("budget: {line}");
    }
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        for line in tail.into_iter().rev() {
            eprintln!("budget: {line}");
        }
        bail!("the instruction budget failed ({})", out.status);
    }
    Ok(())
}
