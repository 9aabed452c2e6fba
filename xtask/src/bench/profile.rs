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
    servers::{self, Spec},
};

pub(crate) fn build_binary(sh: &Shell, log: &mut Vec<String>) -> Result<PathBuf> {
    let dir = servers::work_dir().join("profiling-target");
    sh.change_dir(crate::project_root());
    let _env = sh.push_env("CARGO_TARGET_DIR", &dir);
    let _strip = sh.push_env("CARGO_PROFILE_RELEASE_STRIP", "none");
    cmd!(sh, "cargo build --release --locked -p hello-world").run()?;
    log.push(format!(
        "CARGO_TARGET_DIR={} CARGO_PROFILE_RELEASE_STRIP=none cargo build --release --locked -p hello-world   # symbols kept, for perf",
        servers::display_path(&dir)
    ));
    Ok(dir.join("release/hello-world"))
}

/// Samples ours under wrk; returns the command lines and `perf report`'s flat profile.
pub(crate) fn run(plan: &Plan, spec: &Spec, logs: &std::path::Path) -> Result<String> {
    let data = servers::work_dir().join("perf.data");
    let (_, server) = servers::start_timed(spec, &logs.join("ours-profile.log"))?;
    let result = (|| {
        load::run(&Wrk::get(spec.url("/"), plan.connections, plan.warmup_s))?;
        let seconds = plan.run_s.max(4);
        let sample_s = seconds - 2;
        let pid = server.pid().to_string();
        let perf_args = [
            "record".to_owned(),
            "-e".into(),
            "cpu-clock".into(),
            "-F".into(),
            "2999".into(),
            "-p".into(),
            pid,
            "-o".into(),
            data.display().to_string(),
            "--".into(),
            "sleep".into(),
            sample_s.to_string(),
        ];
        let wrk = Wrk::get(spec.url("/"), plan.connections, seconds);
        let wrk_line = wrk.command_line();
        let load_thread = thread::spawn(move || load::run(&wrk));
        thread::sleep(Duration::from_millis(800));
        let status = Command::new("perf")
            .args(&perf_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running perf (apt-get install linux-perf)")?;
        let load = load_thread
            .join()
            .map_err(|_| anyhow::anyhow!("the wrk thread panicked"))??;
        if !status.success() {
            bail!("perf record failed ({status})");
        }
        let report = |sort: &str, limit: &str| -> Result<String> {
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
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n"))
        };
        let by_dso = report("dso", "0.5")?;
        let by_symbol = report("dso,symbol", "0.7")?;
        Ok(format!(
            "server: `{}`\n\nload: `{wrk_line}` ({:.0} req/s while sampled)\n\nprofile: `perf record {}` then \
             `perf report --stdio --no-children --sort dso,symbol`\n\nBy binary/library:\n```\n{by_dso}\n```\n\nBy symbol (self time, ≥ 0.7 %):\n```\n{by_symbol}\n```\n",
            spec.command_line(),
            load.rps(),
            perf_args
                .join(" ")
                .replace(&servers::work_dir().display().to_string(), "target/bench"),
        ))
    })();
    server.stop()?;
    result
}
