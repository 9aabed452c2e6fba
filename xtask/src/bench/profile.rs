//! The profile section: where ours spends CPU under the same `GET /` load as the main table.
//!
//! The release profile strips symbols, so a copy is built with symbols kept (same optimisation,
//! LTO and codegen units; only `strip` differs) in its own target directory, then sampled with
//! `perf record -e cpu-clock` (a software clock: this VM exposes no hardware counters) while wrk
//! runs. The flat profile (self time per symbol) is what goes into the results.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use super::{
    Plan,
    load::{self, Wrk},
    servers::{self, Running, Spec},
};

pub(crate) fn build_binary(sh: &Shell, log: &mut Vec<String>) -> Result<PathBuf> {
    let dir = servers::work_dir().join("profiling-target");
    sh.change_dir(crate::project_root());
    let _env = sh.push_env("CARGO_TARGET_DIR", &dir);
    // Through RUSTFLAGS rather than the profile, so everything else about the build is the
    // measured one's.
    let _strip = sh.push_env("RUSTFLAGS", "-C strip=none");
    cmd!(sh, "cargo build --release --locked -p hello-world").run()?;
    log.push(format!(
        "CARGO_TARGET_DIR={} RUSTFLAGS='-C strip=none' cargo build --release --locked -p hello-world   # symbols kept, for perf",
        servers::display_path(&dir)
    ));
    Ok(dir.join("release/hello-world"))
}

/// Samples a server under the `GET /` load; returns the command lines, the CPU cost per request
/// measured meanwhile, and `perf report`'s flat profile (by binary, and by symbol).
pub(crate) fn run(plan: &Plan, spec: &Spec, logs: &std::path::Path) -> Result<Profile> {
    let (_, server) = servers::start_timed(spec, &logs.join(format!("{}-profile.log", spec.name)))?;
    let result =
        load::run(&Wrk::get(spec.url("/"), plan.connections, plan.warmup_s)).and_then(|_| {
            let wrk = Wrk::get(spec.url("/"), plan.connections, plan.run_s.max(4));
            sample(&server, spec, &wrk)
        });
    server.stop()?;
    result
}

/// A flat profile: the text for the results, and the split of a request's CPU between the kernel
/// and user space (the server's binary and its libraries), in µs per request.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    pub(crate) text: String,
    pub(crate) cpu_us: f64,
    pub(crate) kernel_us: f64,
    pub(crate) user_us: f64,
}

/// Samples a running server with perf while `wrk` loads it (the server is warmed up already).
pub(crate) fn sample(server: &Running, spec: &Spec, wrk: &Wrk) -> Result<Profile> {
    let data = servers::work_dir().join(format!("perf-{}.data", spec.name));
    {
        let seconds = wrk.seconds;
        let pids: Vec<String> = server.pids().iter().map(u32::to_string).collect();
        let perf_args = [
            "record".to_owned(),
            "-e".into(),
            "cpu-clock".into(),
            "-F".into(),
            "2999".into(),
            "-p".into(),
            pids.join(","),
            "-o".into(),
            data.display().to_string(),
            "--".into(),
            "sleep".into(),
            (seconds - 2).to_string(),
        ];
        let perf_cmd = perf_args.clone();
        let perf = thread::spawn(move || {
            thread::sleep(Duration::from_millis(800));
            Command::new("perf")
                .args(&perf_cmd)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        });
        let measured = load::measure(server, wrk)?;
        let status = perf
            .join()
            .map_err(|_| anyhow::anyhow!("the perf thread panicked"))?
            .context("running perf (apt-get install linux-perf)")?;
        if !status.success() {
            bail!("perf record failed ({status})");
        }
        let cpu_us = measured.cpu_us_per_request();
        let report = |sort: &str, limit: &str| -> Result<Vec<(f64, String)>> {
            let out = Command::new("perf")
                .args(["report", "-i"])
                .arg(&data)
                .args([
                    "--stdio",
                    "--no-children",
                    "--sort",
                    sort,
                    "--percent-limit",
                    limit,
                ])
                .stderr(Stdio::null())
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let l = l.trim();
                    let (pct, rest) = l.split_once('%')?;
                    let words: Vec<&str> = rest.split_whitespace().filter(|w| *w != "-").collect();
                    Some((pct.trim().parse().ok()?, words.join(" ")))
                })
                .collect())
        };
        let table = |rows: Vec<(f64, String)>| {
            let mut t = String::from("| share | µs/request | where |\n|---:|---:|---|\n");
            for (pct, what) in rows {
                t.push_str(&format!(
                    "| {pct:.1} % | {:.2} | `{}` |\n",
                    pct / 100.0 * cpu_us,
                    what.replace('|', "\\|")
                ));
            }
            t
        };
        let dsos = report("dso", "0")?;
        let kernel_share: f64 = dsos
            .iter()
            .filter(|(_, d)| d.contains("[kernel"))
            .map(|(p, _)| p)
            .sum();
        let user_share: f64 = dsos
            .iter()
            .filter(|(_, d)| !d.contains("[kernel"))
            .map(|(p, _)| p)
            .sum();
        let by_dso = table(dsos.into_iter().filter(|(p, _)| *p >= 0.5).collect());
        let by_symbol = table(report("dso,symbol", "0.7")?);
        Ok(Profile {
            text: format!(
                "server: `{}`\n\nload: `{}` — {:.0} req/s, **{cpu_us:.2} µs CPU per request** while sampled\n\n\
             profile: `perf {}`, then `perf report --stdio --no-children --sort dso` and `--sort dso,symbol` \
             (µs/request = share × the CPU per request above)\n\nBy binary or library:\n\n{by_dso}\nBy symbol (self time, ≥ 0.7 %):\n\n{by_symbol}",
                spec.command_line(),
                wrk.command_line(),
                measured.wrk.rps(),
                perf_args
                    .join(" ")
                    .replace(&servers::work_dir().display().to_string(), "target/bench"),
            ),
            cpu_us,
            kernel_us: kernel_share / 100.0 * cpu_us,
            user_us: user_share / 100.0 * cpu_us,
        })
    }
}
