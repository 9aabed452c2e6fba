//! `cargo xtask e2e`: the seed's claims, proved on the Docker Swarm stack.
//!
//! Builds the image (and a second one with another version, for the rolling update), deploys
//! the stack, and runs each proof of [`PROOFS`]: a fault or an operation (SIGKILL, SIGTERM,
//! `docker pause`, scaling, a rolling update, a Redis crash) while the real `hello-world check`
//! binary drives load through the balancer on `127.0.0.1:8080`; the proof asserts on the check's
//! `--json` report. Every proof prints its figures, the suite writes them to `e2e/RESULTS.md`,
//! and the stack is removed at the end, also when a proof fails or the run panics.
//!
//! `cargo xtask e2e [--keep] [--no-build] [--only NAME,...]`: `--keep` leaves the stack up for
//! inspection; `--no-build` reuses the images and check client of the previous run; `--only`
//! runs some proofs (by name). A partial run does not rewrite `e2e/RESULTS.md`.
//!
//! Traffic goes only to loopback (the published port) and inside the stack's own network.

pub(crate) mod http;
mod proofs;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

use crate::{image, stack};

/// The tag of the second image the rolling update moves to.
pub(crate) const NEXT_TAG: &str = "hello-world:e2e-next";

/// One proof: its name (for `--only`), the claim of the seed it demonstrates, and the test.
struct Proof {
    name: &'static str,
    claim: &'static str,
    run: fn(&Ctx) -> Result<Figures>,
}

const PROOFS: &[Proof] = &[
    Proof {
        name: "spread",
        claim: "load is balanced: each of the 3 replicas serves ≥ 25 % of requests",
        run: proofs::spread,
    },
    Proof {
        name: "isolation",
        claim: "portability / isolation: the ≤ 8 MiB scratch image runs as 65532:65532, read-only, with no capabilities",
        run: proofs::isolation,
    },
    Proof {
        name: "replica-killed",
        claim: "reliable when a machine fails: SIGKILL a replica under load, no failed request, 3/3 back",
        run: proofs::replica_killed,
    },
    Proof {
        name: "graceful-stop",
        claim: "a replica stopped with SIGTERM drains: no failed request",
        run: proofs::graceful_stop,
    },
    Proof {
        name: "hung-replica",
        claim: "a hung replica (`docker pause`) costs time, not requests: all succeed within a bound",
        run: proofs::hung_replica,
    },
    Proof {
        name: "scale",
        claim: "horizontal scale: 3 → 5 → 2 under load, new replicas get traffic, removed ones drain, no failure",
        run: proofs::scale,
    },
    Proof {
        name: "rolling-update",
        claim: "zero-downtime deployment: rolling update under load, no failed request, every replica on the new version",
        run: proofs::rolling_update,
    },
    Proof {
        name: "consistency",
        claim: "data consistency: N idempotent increments through the balancer while replicas are killed move the counter by exactly N",
        run: proofs::consistency,
    },
    Proof {
        name: "durability",
        claim: "Redis SIGKILLed and restarted under load: no acknowledged increment lost",
        run: proofs::durability,
    },
];

/// What every proof gets: a shell at the repository root, the check client, the versions.
pub(crate) struct Ctx {
    pub(crate) sh: Shell,
    /// The host copy of the static binary, used as `hello-world check`.
    check_bin: PathBuf,
    pub(crate) version: String,
    pub(crate) next_version: String,
}

/// A proof's evidence, in the order it is printed: `(what, value)`.
pub(crate) type Figures = Vec<(String, String)>;

struct Outcome {
    name: &'static str,
    claim: &'static str,
    elapsed: Duration,
    result: Result<Figures, String>,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut keep = false;
    let mut build = true;
    let mut only: Option<Vec<String>> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--keep" => keep = true,
            "--no-build" => build = false,
            "--only" => {
                let names = args
                    .next()
                    .context("--only needs a comma-separated list of proofs")?;
                only = Some(names.split(',').map(str::to_string).collect());
            }
            other => bail!(
                "unknown argument `{other}`\n\nusage: cargo xtask e2e [--keep] [--no-build] [--only NAME,...]\nproofs: {}",
                PROOFS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    if let Some(names) = &only
        && let Some(unknown) = names.iter().find(|n| !PROOFS.iter().any(|p| p.name == *n))
    {
        bail!("no proof named `{unknown}`");
    }

    let started = Instant::now();
    let sh = image::project_shell()?;
    let ctx = prepare(sh, build)?;
    let teardown = Teardown { sh: &ctx.sh, keep };
    stack::down(&ctx.sh, true)?;
    stack::up(&ctx.sh)?;

    let mut outcomes = Vec::new();
    for proof in PROOFS {
        if only
            .as_ref()
            .is_some_and(|names| !names.iter().any(|n| n == proof.name))
        {
            continue;
        }
        println!("\n=== {}: {}", proof.name, proof.claim);
        let proof_started = Instant::now();
        let result = baseline(&ctx).and_then(|()| (proof.run)(&ctx));
        let outcome = Outcome {
            name: proof.name,
            claim: proof.claim,
            elapsed: proof_started.elapsed(),
            result: result.map_err(|err| format!("{err:#}")),
        };
        match &outcome.result {
            Ok(figures) => {
                for (what, value) in figures {
                    println!("    {what}: {value}");
                }
                println!("  PASS {} ({:.0?})", proof.name, outcome.elapsed);
            }
            Err(err) => println!("  FAIL {}: {err}", proof.name),
        }
        outcomes.push(outcome);
    }
    drop(teardown);

    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.name)
        .collect();
    if only.is_none() && build {
        write_results(&ctx, &outcomes, started.elapsed())?;
    }
    println!(
        "\ne2e: {} of {} proofs passed in {:.0?}",
        outcomes.len() - failed.len(),
        outcomes.len(),
        started.elapsed()
    );
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the images the proofs need and keeps a copy of the binary as the check client.
fn prepare(sh: Shell, build: bool) -> Result<Ctx> {
    image::ensure_base_images(&sh)?;
    let version = image::crate_version(&sh)?;
    let check_bin = image::target_dir(&sh)?.join("e2e").join("hello-world");
    let next_version = format!("{version}-next");
    if !build {
        for tag in [image::DEV_TAG, NEXT_TAG] {
            ensure!(
                image::image_exists(&sh, tag),
                "--no-build: image {tag} is missing"
            );
        }
        ensure!(
            check_bin.is_file(),
            "--no-build: {} is missing",
            check_bin.display()
        );
        return Ok(Ctx {
            sh,
            check_bin,
            version,
            next_version,
        });
    }
    let binary = image::build_app_image(
        &sh,
        &version,
        &[image::DEV_TAG.to_string(), format!("hello-world:{version}")],
    )?;
    // The next build overwrites the binary; the check client is the current version.
    sh.create_dir(check_bin.parent().context("the e2e directory")?)?;
    sh.copy_file(&binary, &check_bin)?;
    // The rolling update needs an image that reports another version: same code, rebuilt with
    // the version suffixed.
    image::build_app_image(&sh, &next_version, &[NEXT_TAG.to_string()])?;
    Ok(Ctx {
        sh,
        check_bin,
        version,
        next_version,
    })
}

/// Removes the stack when the suite ends, whatever way it ends.
struct Teardown<'a> {
    sh: &'a Shell,
    keep: bool,
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if self.keep {
            println!("\ne2e: --keep: the stack stays up at {}", stack::LB_URL);
            return;
        }
        if let Err(err) = stack::down(self.sh, true) {
            eprintln!("e2e: tearing the stack down failed: {err:#}");
        }
    }
}

/// Every proof starts from the same state: 3 healthy replicas on the current image, Redis and
/// the balancer up, and the balancer sending traffic to all three.
fn baseline(ctx: &Ctx) -> Result<()> {
    let sh = &ctx.sh;
    let (_, desired) = stack::replicas(sh, stack::WEB)?;
    if desired != 3 {
        let web = stack::WEB;
        cmd!(sh, "docker service scale --detach {web}=3")
            .quiet()
            .ignore_stdout()
            .run()?;
    }
    stack::wait_until(
        Duration::from_secs(120),
        "the stack to be back to 3/3 web, 1/1 lb and redis",
        || {
            Ok(stack::replicas(sh, stack::WEB)? == (3, 3)
                && stack::task_containers(sh, stack::WEB)?.len() == 3
                && stack::replicas(sh, stack::LB)? == (1, 1)
                && stack::replicas(sh, stack::REDIS)? == (1, 1))
        },
    )?;
    stack::wait_until(
        Duration::from_secs(60),
        "the balancer to reach all 3 replicas",
        || {
            let probe = ctx.check(&[
                "/",
                "--requests",
                "60",
                "--concurrency",
                "4",
                "--new-connection",
            ])?;
            Ok(probe.errors() == 0 && probe.replicas().len() == 3)
        },
    )?;
    Ok(())
}

impl Ctx {
    /// Runs `hello-world check <LB><path> <args> --json` to completion.
    pub(crate) fn check(&self, args: &[&str]) -> Result<Check> {
        self.spawn_check(args)?.finish()
    }

    /// Starts `hello-world check` in the background, to act on the stack while it runs.
    pub(crate) fn spawn_check(&self, args: &[&str]) -> Result<Load> {
        let (path, rest) = args.split_first().context("a path to request")?;
        let url = format!("{}{path}", stack::LB_URL);
        let child = Command::new(&self.check_bin)
            .arg("check")
            .arg(&url)
            .args(rest)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.check_bin.display()))?;
        Ok(Load {
            child,
            started: Instant::now(),
        })
    }
}

/// A running `hello-world check`.
pub(crate) struct Load {
    child: Child,
    started: Instant,
}

impl Load {
    /// Fails unless the load is still running: a fault applied after the load ended proves
    /// nothing, so every proof checks this once its operation is over.
    pub(crate) fn assert_running(&mut self, during: &str) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            bail!(
                "the load ended ({:.1?} after it started) before {during} was over: the proof would be vacuous",
                self.started.elapsed()
            );
        }
        Ok(())
    }

    /// Waits for the check to end and parses its report.
    pub(crate) fn finish(mut self) -> Result<Check> {
        let mut stdout = String::new();
        let mut stderr = String::new();
        self.child
            .stdout
            .take()
            .context("check stdout")?
            .read_to_string(&mut stdout)?;
        self.child
            .stderr
            .take()
            .context("check stderr")?
            .read_to_string(&mut stderr)?;
        let status = self.child.wait()?;
        // A breached threshold exits 1 with a full report; anything else without JSON is a
        // broken invocation.
        let json: serde_json::Value = serde_json::from_str(stdout.trim()).with_context(|| {
            format!("hello-world check exited {status} without a JSON report: {stderr}")
        })?;
        Ok(Check { json })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A proof that failed midway must not leave a load generator behind.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `--json` report of one `hello-world check` run.
pub(crate) struct Check {
    json: serde_json::Value,
}

impl Check {
    fn count(&self, field: &str) -> u64 {
        self.json[field].as_u64().unwrap_or(0)
    }

    pub(crate) fn requests(&self) -> u64 {
        self.count("requests")
    }

    pub(crate) fn ok(&self) -> u64 {
        self.count("ok")
    }

    pub(crate) fn errors(&self) -> u64 {
        self.count("errors")
    }

    /// Extra attempts the client made (with `--retries`).
    pub(crate) fn retries(&self) -> u64 {
        self.count("retries")
    }

    fn map(&self, field: &str) -> BTreeMap<String, u64> {
        self.json[field]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Responses per replica (`x-served-by`).
    pub(crate) fn replicas(&self) -> BTreeMap<String, u64> {
        self.map("replicas")
    }

    /// Responses per version (`x-version`).
    pub(crate) fn versions(&self) -> BTreeMap<String, u64> {
        self.map("versions")
    }

    pub(crate) fn latency_ms(&self, which: &str) -> f64 {
        self.json["latency_ms"][which].as_f64().unwrap_or(f64::NAN)
    }

    /// Fails unless every request got a 2xx/3xx answer; the message carries what went wrong.
    pub(crate) fn assert_no_failures(&self) -> Result<()> {
        if self.requests() == 0 {
            bail!("the check sent no request");
        }
        if self.errors() != 0 {
            bail!(
                "{} of {} requests failed: status {}, transport errors {}, first messages {}",
                self.errors(),
                self.requests(),
                self.json["status"],
                self.json["error_kinds"],
                self.json["error_messages"]
            );
        }
        Ok(())
    }

    /// "12000 requests, 0 errors, 850 req/s, p50 4.1 ms, p99 30.2 ms, max 1012 ms".
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} requests, {} errors, {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
            self.requests(),
            self.errors(),
            self.json["rps"].as_f64().unwrap_or(0.0),
            self.latency_ms("p50"),
            self.latency_ms("p99"),
            self.latency_ms("max")
        )
    }

    /// "web.1 33 %, web.2 34 %, web.3 33 %".
    pub(crate) fn spread(&self) -> String {
        let total: u64 = self.replicas().values().sum();
        self.replicas()
            .iter()
            .map(|(name, n)| {
                format!(
                    "{} {:.1} %",
                    short_name(name),
                    100.0 * *n as f64 / total.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `hello-world_web.2.k3j2x9…` → `web.2.k3j2x9`: the slot and enough of the task id to tell a
/// replacement from the task it replaced.
pub(crate) fn short_name(task: &str) -> String {
    let name = task.strip_prefix("hello-world_").unwrap_or(task);
    let mut parts = name.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(service), Some(slot), Some(id)) => {
            format!("{service}.{slot}.{}", id.get(..6).unwrap_or(id))
        }
        _ => name.to_string(),
    }
}

/// The `e2e/RESULTS.md` a reader opens to see the evidence.
fn write_results(ctx: &Ctx, outcomes: &[Outcome], total: Duration) -> Result<()> {
    let sh = &ctx.sh;
    let commit = image::git_commit(sh);
    let format = "{{.Server.Version}}";
    let docker = cmd!(sh, "docker version --format {format}")
        .quiet()
        .read()
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = cmd!(sh, "date -u +%Y-%m-%dT%H:%M:%SZ")
        .quiet()
        .read()
        .unwrap_or_default();
    let passed = outcomes.iter().filter(|o| o.result.is_ok()).count();

    let mut md = String::new();
    writeln!(md, "# End-to-end proofs on Docker Swarm\n")?;
    writeln!(
        md,
        "Written by `cargo xtask e2e` — do not edit. Each proof drives load with `hello-world check` \
         through the HAProxy balancer (`{}`) of the stack in `deploy/swarm/`, applies a fault or an \
         operation, and asserts on the check's JSON report.\n",
        stack::LB_URL
    )?;
    writeln!(
        md,
        "- run: {date}, commit `{commit}`, version `{}` (update target `{}`)\n- machine: {cpus} CPUs, Docker Engine {docker} (one-node Swarm)\n- result: **{passed} of {} proofs passed** in {:.0?}\n",
        ctx.version,
        ctx.next_version,
        outcomes.len(),
        total
    )?;
    writeln!(md, "| proof | claim | result | time |\n|---|---|---|---|")?;
    for o in outcomes {
        let result = if o.result.is_ok() { "pass" } else { "**FAIL**" };
        writeln!(
            md,
            "| {} | {} | {result} | {:.0?} |",
            o.name, o.claim, o.elapsed
        )?;
    }
    for o in outcomes {
        writeln!(md, "\n## {}\n\n{}\n", o.name, o.claim)?;
        match &o.result {
            Ok(figures) => {
                for (what, value) in figures {
                    writeln!(md, "- {what}: {value}")?;
                }
            }
            Err(err) => writeln!(md, "**Failed:** {err}")?,
        }
    }
    let path: PathBuf = crate::project_root().join("e2e").join("RESULTS.md");
    write_file(&path, &md)?;
    println!("e2e: wrote {}", path.display());
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_shorten_to_service_slot_and_task_id_prefix() {
        assert_eq!(
            short_name("hello-world_web.2.oizup8zwhw102w4jrh5ic6xff"),
            "web.2.oizup8"
        );
        assert_eq!(short_name("replica-a"), "replica-a");
    }

    #[test]
    fn a_check_report_with_a_failed_request_does_not_pass() {
        let json = serde_json::json!({
            "requests": 10, "ok": 9, "errors": 1,
            "status": {"200": 9, "502": 1}, "error_kinds": {}, "replicas": {"a": 9}
        });
        let check = Check { json };
        let err = check.assert_no_failures().expect_err("one request failed");
        assert!(err.to_string().contains("1 of 10 requests failed"), "{err}");
    }

    #[test]
    fn a_check_report_that_sent_nothing_does_not_pass() {
        let check = Check {
            json: serde_json::json!({"requests": 0, "ok": 0, "errors": 0}),
        };
        assert!(check.assert_no_failures().is_err());
    }
}
