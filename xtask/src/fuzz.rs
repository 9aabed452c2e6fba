//! `cargo xtask fuzz [--time SECONDS] [--only NAME,...] [--nice]`: every fuzz target of `fuzz/`
//! (one per parser of client input), each for a bounded time, two at a time (the machine has 2
//! cores).
//!
//! The targets are built once with `cargo fuzz build` (libFuzzer, AddressSanitizer; without
//! the release profile's fat LTO, which would link each binary for minutes), on nightly
//! when rustup has one, else on the pinned stable toolchain with `RUSTC_BOOTSTRAP=1` (the
//! sanitizer flags are nightly-only). Each then runs from the built binary with
//! `-max_total_time`, seeded by the corpus in the repository (`fuzz/corpus/NAME/`, read only)
//! and writing what it finds to `target/fuzz/corpus/NAME/`, so a run never changes tracked
//! files. A crash, a panic, a hang over 10 s or an input using more than 2 GiB fails the run;
//! the input is kept in `target/fuzz/artifacts/NAME/` and the message says how to replay it.
//!
//! The build has a target directory of its own (`target/fuzz-build`), so it never waits for the
//! workspace's. `--nice` runs the build and the targets at the lowest CPU priority and prints
//! the build's output only when it fails: `cargo xtask ci` fuzzes that way beside the e2e
//! proofs, which mostly wait (on heartbeats, restarts, drains) and leave the cores idle.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

/// How long each target runs by default: about a minute, as CI runs them.
const DEFAULT_SECONDS: u64 = 60;
/// Targets run at once: one per core.
const PARALLEL: usize = 2;
/// The host triple `cargo fuzz` builds for (it always passes `--target`).
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Where `cargo fuzz build` builds, relative to the project root.
const TARGET_DIR: &str = "target/fuzz-build";

const USAGE: &str = "usage: cargo xtask fuzz [--time SECONDS] [--only NAME,...] [--nice]";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut seconds = DEFAULT_SECONDS;
    let mut only: Option<Vec<String>> = None;
    let mut nice = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--time" => {
                let value = args.next().context(USAGE)?;
                seconds = value
                    .parse()
                    .ok()
                    .filter(|seconds| *seconds > 0)
                    .with_context(|| format!("--time {value}: a number of seconds above 0"))?;
            }
            "--only" => {
                let names = args.next().context(USAGE)?;
                only = Some(names.split(',').map(str::to_owned).collect());
            }
            "--nice" => nice = true,
            _ => bail!("{USAGE}"),
        }
    }

    let sh = Shell::new()?;
    let root = crate::project_root();
    sh.change_dir(&root);
    ensure!(
        cmd!(sh, "cargo fuzz --version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok(),
        "cargo-fuzz is not installed: cargo install cargo-fuzz --locked (.ci/run does)"
    );
    let nightly = cmd!(sh, "rustup toolchain list")
        .quiet()
        .read()
        .is_ok_and(|list| list.lines().any(|line| line.starts_with("nightly")));
    // Every command of a `--nice` run goes through `nice -n 19`.
    let niced = |program: &str| {
        let mut command = Command::new(if nice { "nice" } else { program });
        if nice {
            command.args(["-n", "19", program]);
        }
        command
    };
    let mut cargo = niced("cargo");
    if nightly {
        cargo.arg("+nightly");
    } else {
        cargo.env("RUSTC_BOOTSTRAP", "1");
    }
    let listed = cmd!(sh, "cargo fuzz list").quiet().read()?;
    let all: Vec<String> = listed.lines().map(str::to_owned).collect();
    ensure!(!all.is_empty(), "cargo fuzz list found no target in fuzz/");
    let targets = match only {
        None => all,
        Some(names) => {
            for name in &names {
                ensure!(
                    all.contains(name),
                    "no fuzz target {name}; there are: {all:?}"
                );
            }
            names
        }
    };

    println!(
        "fuzz: building {} target(s) with {}",
        targets.len(),
        if nightly {
            "nightly"
        } else {
            "stable and RUSTC_BOOTSTRAP=1"
        }
    );
    // The release profile's fat LTO and one codegen unit would link each of a dozen small
    // binaries for minutes; a fuzz run needs coverage, not those last few percent.
    cargo
        .current_dir(&root)
        .args([
            "fuzz",
            "build",
            "--codegen-units",
            "16",
            "--target-dir",
            TARGET_DIR,
        ])
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "false");
    if nice {
        let built = cargo.output().context("cargo fuzz build")?;
        if !built.status.success() {
            let log = String::from_utf8_lossy(&built.stderr);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "cargo fuzz build failed ({}):\n{}",
                built.status,
                tail.join("\n")
            );
        }
    } else {
        let status = cargo.status().context("cargo fuzz build")?;
        ensure!(status.success(), "cargo fuzz build failed ({status})");
    }

    let binaries = root.join(TARGET_DIR).join(TRIPLE).join("release");
    let work = root.join("target/fuzz");
    let started = Instant::now();
    let mut failed = Vec::new();
    for batch in targets.chunks(PARALLEL) {
        let running: Vec<(String, Child)> = batch
            .iter()
            .map(|name| {
                let target = niced(binaries.join(name).to_str().context("a UTF-8 path")?);
                Ok((name.clone(), start(target, &root, &work, name, seconds)?))
            })
            .collect::<Result<_>>()?;
        for (name, child) in running {
            let output = child
                .wait_with_output()
                .with_context(|| format!("waiting for fuzz target {name}"))?;
            let log = String::from_utf8_lossy(&output.stderr);
            if output.status.success() {
                println!("fuzz: {name}: {}", stats(&log));
            } else {
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!(
                    "fuzz: {name} FAILED ({}):\n{}\nreplay with: RUSTC_BOOTSTRAP=1 cargo fuzz run {name} target/fuzz/artifacts/{name}/<file>",
                    output.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
                failed.push(name);
            }
        }
    }
    println!(
        "fuzz: {} target(s), {seconds} s each, in {:.0?}",
        targets.len(),
        round(started.elapsed())
    );
    ensure!(
        failed.is_empty(),
        "fuzz targets failed: {}",
        failed.join(", ")
    );
    Ok(())
}

/// Starts one target's binary (`target`, maybe behind `nice`) for `seconds`, its findings under
/// `work`.
fn start(mut target: Command, root: &Path, work: &Path, name: &str, seconds: u64) -> Result<Child> {
    let corpus = work.join("corpus").join(name);
    let artifacts = work.join("artifacts").join(name);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds: PathBuf = root.join("fuzz/corpus").join(name);
    ensure!(
        seeds.is_dir(),
        "{} is missing: every target keeps a small corpus",
        seeds.display()
    );
    let mut artifact_prefix = artifacts.into_os_string();
    artifact_prefix.push("/");
    let mut prefix_flag = std::ffi::OsString::from("-artifact_prefix=");
    prefix_flag.push(artifact_prefix);
    target
        .arg(format!("-max_total_time={seconds}"))
        .args(["-timeout=10", "-rss_limit_mb=2048", "-max_len=4096"])
        .arg("-print_final_stats=1")
        .arg(prefix_flag)
        // The first corpus directory is where new inputs go; the seeds are only read.
        .arg(&corpus)
        .arg(&seeds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting fuzz target {name} (built by cargo fuzz build?)"))
}

/// "1234567 runs, 412 coverage points, 87 new inputs" from libFuzzer's final lines.
fn stats(log: &str) -> String {
    let stat = |key: &str| {
        log.lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|value| value.trim().to_owned())
            .unwrap_or_else(|| "?".to_owned())
    };
    let coverage = log
        .lines()
        .rev()
        .find_map(|line| line.split("cov: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?");
    format!(
        "{} runs, {coverage} coverage points, {} new inputs",
        stat("stat::number_of_executed_units:"),
        stat("stat::new_units_added:")
    )
}

fn round(elapsed: Duration) -> Duration {
    Duration::from_secs(elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reads_libfuzzers_final_lines() {
        let log = "#2\tINITED cov: 12 ft: 13 corp: 2/10b exec/s: 0\n\
                   #9000\tDONE   cov: 345 ft: 900 corp: 40/1kb exec/s: 150\n\
                   stat::number_of_executed_units: 9000\n\
                   stat::new_units_added: 38\n";
        assert_eq!(stats(log), "9000 runs, 345 coverage points, 38 new inputs");
        assert_eq!(stats(""), "? runs, ? coverage points, ? new inputs");
    }
}
