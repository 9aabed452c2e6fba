//! `cargo xtask e2e`: the seed's claims, proved on the Docker Swarm stack.
//!
//! Builds the image (and a second one with another version, for the rolling update), deploys
//! the stack, and runs each proof of [`PROOFS`]: a fault or an operation (SIGKILL, SIGTERM,
//! `docker pause`, scaling, a rolling update, a Redis crash, Redis stopped, a store filled up)
//! while the real `hello-world check` binary drives load through the balancer on
//! `127.0.0.1:8080`; the proof asserts on the check's `--json` report. The protocols proof
//! speaks h2c (curl), gRPC (grpcio) and WebSocket (websockets) through the same balancer. Every proof prints its
//! figures, the suite writes them to `e2e/RESULTS.md`, and the stack is removed at the end, also
//! when a proof fails or the run panics.
//!
//! `cargo xtask e2e [--cluster [--seed N]] [--keep] [--no-build] [--only NAME,...]`: `--keep`
//! leaves the stack up for inspection; `--no-build` reuses the images and check client of the
//! previous run; `--only` runs some proofs (by name). A partial run does not rewrite
//! `e2e/RESULTS.md`. `--cluster` runs the machine-failure proofs of [`machines`] on the
//! three-machine cluster instead; each suite rewrites its own section of `e2e/RESULTS.md`.
//!
//! Traffic goes only to loopback (the published ports: the balancer's, and that of the one
//! container the memory proof starts on its own) and inside the project's own networks.

mod history;
pub(crate) mod http;
mod machines;
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

/// One proof: its name (for `--only`), the claim of the seed it demonstrates, and the test,
/// which gets the suite's context `C`.
struct Proof<C> {
    name: &'static str,
    claim: &'static str,
    run: fn(&C) -> Result<Figures>,
}

const PROOFS: &[Proof<Ctx>] = &[
    Proof {
        name: "spread",
        claim: "load is balanced: each of the 3 replicas serves ≥ 25 % of requests",
        run: proofs::spread,
    },
    Proof {
        name: "isolation",
        claim: "portability / isolation: the ≤ 6 MiB scratch image runs as 65532:65532, read-only, with no capabilities",
        run: proofs::isolation,
    },
    Proof {
        name: "admin-token",
        claim: "no one on the stack's network changes a replica without the admin token; with it, an operator takes one out of rotation and back",
        run: proofs::admin_token,
    },
    Proof {
        name: "access-logs",
        claim: "one switch for the stack's access logs: by default errors and slow requests are logged by the replicas and the balancer, fast 200s by neither",
        run: proofs::access_logs,
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
        claim: "the Redis primary SIGKILLed under load (the Sentinels promote a replica), then the new one at rest: no acknowledged increment lost",
        run: proofs::durability,
    },
    Proof {
        name: "store-outage",
        claim: "a store outage is not a service outage: every Redis server stopped under load, no failed `GET /`, state routes answer 503 within the store timeout, all recover by themselves",
        run: proofs::store_outage,
    },
    Proof {
        name: "protocols",
        claim: "HTTP/2 cleartext, gRPC health and the WebSocket echo work through the balancer, with real clients (curl, grpcio, websockets)",
        run: proofs::protocols,
    },
    Proof {
        name: "memory",
        claim: "memory cannot be exhausted: 1 MiB values PUT until refused, on the memory store in a 64 MiB container and on the stack's Redis: a 507, no container OOM-killed, reads work, deleting makes room",
        run: proofs::memory_bounded,
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

/// What the command line asked for.
struct Options {
    keep: bool,
    build: bool,
    only: Option<Vec<String>>,
    cluster: bool,
    seed: Option<u64>,
}

const USAGE: &str =
    "usage: cargo xtask e2e [--cluster [--seed N]] [--keep] [--no-build] [--only NAME,...]";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut options = Options {
        keep: false,
        build: true,
        only: None,
        cluster: false,
        seed: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--keep" => options.keep = true,
            "--no-build" => options.build = false,
            "--cluster" => options.cluster = true,
            "--seed" => {
                let seed = args.next().context("--seed needs a number")?;
                options.seed = Some(seed.parse().with_context(|| format!("--seed {seed}"))?);
            }
            "--only" => {
                let names = args
                    .next()
                    .context("--only needs a comma-separated list of proofs")?;
                options.only = Some(names.split(',').map(str::to_string).collect());
            }
            other => bail!(
                "unknown argument `{other}`\n\n{USAGE}\nproofs: {}\nwith --cluster: {}",
                PROOFS.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
                machines::PROOFS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    ensure!(
        options.cluster || options.seed.is_none(),
        "--seed chooses the machines a fault hits: it needs --cluster"
    );
    let names: Vec<&str> = if options.cluster {
        machines::PROOFS.iter().map(|p| p.name).collect()
    } else {
        PROOFS.iter().map(|p| p.name).collect()
    };
    if let Some(only) = &options.only
        && let Some(unknown) = only.iter().find(|n| !names.contains(&n.as_str()))
    {
        bail!("no proof named `{unknown}`");
    }
    if options.cluster {
        return machines::run(&options);
    }

    let started = Instant::now();
    let sh = image::project_shell()?;
    let ctx = prepare(sh, options.build)?;
    let teardown = Teardown {
        sh: &ctx.sh,
        keep: options.keep,
    };
    stack::down(&ctx.sh, true)?;
    stack::up(&ctx.sh)?;
    let outcomes = run_proofs(PROOFS, options.only.as_deref(), &ctx, baseline);
    drop(teardown);
    finish(
        &ctx,
        &options,
        &outcomes,
        started.elapsed(),
        (Section::OneEngine, "one-node Swarm"),
    )
}

/// Runs each proof that `only` names (all without it) after the suite's baseline, printing
/// its figures as it goes.
fn run_proofs<C>(
    proofs: &[Proof<C>],
    only: Option<&[String]>,
    ctx: &C,
    baseline: fn(&C) -> Result<()>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for proof in proofs {
        if only.is_some_and(|names| !names.iter().any(|n| n == proof.name)) {
            continue;
        }
        println!("\n=== {}: {}", proof.name, proof.claim);
        let proof_started = Instant::now();
        let result = baseline(ctx).and_then(|()| (proof.run)(ctx));
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
    outcomes
}

/// Writes the suite's section of `e2e/RESULTS.md` after a full run, and fails if a proof did.
fn finish(
    ctx: &Ctx,
    options: &Options,
    outcomes: &[Outcome],
    total: Duration,
    (section, setup): (Section, &str),
) -> Result<()> {
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.name)
        .collect();
    if options.only.is_none() && options.build {
        write_results(ctx, outcomes, total, section, setup)?;
    }
    println!(
        "\ne2e: {} of {} proofs passed in {:.0?}",
        outcomes.len() - failed.len(),
        outcomes.len(),
        total
    );
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the images the proofs need and keeps a copy of the binary as the check client.
pub(crate) fn prepare(sh: Shell, build: bool) -> Result<Ctx> {
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
    let (_, desired) = stack::Engine::Host.replicas(sh, stack::WEB)?;
    if desired != 3 {
        let web = stack::WEB;
        cmd!(sh, "docker service scale --detach {web}=3")
            .quiet()
            .ignore_stdout()
            .run()?;
    }
    stack::wait_until(
        Duration::from_secs(120),
        "the stack to be back to 3/3 web, 1/1 lb, 3 Redis and 3 Sentinels",
        || {
            Ok(stack::Engine::Host.replicas(sh, stack::WEB)? == (3, 3)
                && stack::task_containers(sh, stack::WEB)?.len() == 3
                && stack::Engine::Host.replicas(sh, stack::LB)? == (1, 1)
                && stack::Engine::Host.store_running(sh)?)
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

    /// Stops the check as Ctrl-C would (it still reports) and parses its report: for a load
    /// that only has to outlast an operation of unknown length.
    pub(crate) fn stop(self) -> Result<Check> {
        let pid = self.child.id().to_string();
        let stopped = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .context("running kill")?;
        ensure!(stopped.success(), "kill -INT {pid} failed");
        self.finish()
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

/// `hello-world check <url> <args> --json` run inside `container` (the image carries the check
/// client), so it reaches what only the stack's network reaches. Never echoed: the arguments
/// may carry the admin token.
pub(crate) fn check_inside(sh: &Shell, container: &str, url: &str, args: &[&str]) -> Result<Check> {
    let output = cmd!(
        sh,
        "docker exec {container} /hello-world check {url} {args...} --json"
    )
    .quiet()
    .ignore_status()
    .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "check inside {}: not a JSON report: {stdout}{}",
            short_name(container),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok(Check { json })
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

    /// Responses with this status.
    pub(crate) fn status(&self, code: u16) -> u64 {
        self.json["status"][code.to_string()].as_u64().unwrap_or(0)
    }

    /// Responses per replica (`x-served-by`).
    pub(crate) fn replicas(&self) -> BTreeMap<String, u64> {
        self.map("replicas")
    }

    /// Responses per machine (`x-node`).
    pub(crate) fn machines(&self) -> BTreeMap<String, u64> {
        self.map("machines")
    }

    /// The machine each replica named.
    pub(crate) fn replica_machines(&self) -> BTreeMap<String, String> {
        self.json["replica_machines"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// "node-1 33.4 %, node-2 33.3 %, node-3 33.3 %".
    pub(crate) fn machine_spread(&self) -> String {
        shares(&self.machines())
    }

    /// Responses per version (`x-version`).
    pub(crate) fn versions(&self) -> BTreeMap<String, u64> {
        self.map("versions")
    }

    /// Responses per status code.
    pub(crate) fn statuses(&self) -> BTreeMap<String, u64> {
        self.map("status")
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

    /// "web.1.k3j2x9 33.4 %, web.2.oizup8 33.3 %, web.3.p0q1r2 33.3 %".
    pub(crate) fn spread(&self) -> String {
        shares(&self.replicas_by_short_name())
    }

    /// Responses per replica, named by [`short_name`].
    pub(crate) fn replicas_by_short_name(&self) -> BTreeMap<String, u64> {
        self.replicas()
            .into_iter()
            .map(|(name, n)| (short_name(&name), n))
            .collect()
    }
}

/// "node-1 33.4 %, node-2 33.3 %, node-3 33.3 %": each server's share of the responses.
pub(crate) fn shares(served: &BTreeMap<String, u64>) -> String {
    let total: u64 = served.values().sum();
    served
        .iter()
        .map(|(name, n)| format!("{name} {:.1} %", 100.0 * *n as f64 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fails unless `expected` servers (`what`: replicas, machines) answered and each served at
/// least a quarter of the requests: the balancer spread them over all, near evenly.
pub(crate) fn ensure_each_serves_a_quarter(
    what: &str,
    served: &BTreeMap<String, u64>,
    expected: usize,
) -> Result<()> {
    ensure!(
        served.len() == expected,
        "expected {expected} {what} to answer, got {}: {}",
        served.len(),
        shares(served)
    );
    let total: u64 = served.values().sum();
    for (name, n) in served {
        let share = *n as f64 / total as f64;
        ensure!(
            share >= 0.25,
            "{name} served only {:.1} % of requests: {}",
            share * 100.0,
            shares(served)
        );
    }
    Ok(())
}

/// Waits (within `within`) until a kv write through `addr` is acknowledged again, then deletes
/// it. With replicated Redis a write is acknowledged once a replica has it, so after an outage
/// this comes seconds after reads do: the store has recovered only then.
fn wait_for_acknowledged_write(addr: &str, within: Duration) -> Result<()> {
    const KEY: &str = "/api/kv/e2e-recovery-write";
    stack::wait_until(within, "a kv write to be acknowledged again", || {
        let answer = http::request_with_body(addr, "PUT", KEY, &[], b"back")?;
        Ok((200..300).contains(&answer.status))
    })?;
    let deleted = http::request(addr, "DELETE", KEY, &[])?;
    ensure!(
        (200..300).contains(&deleted.status),
        "DELETE of the write that showed recovery answered {}",
        deleted.status
    );
    Ok(())
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

/// The two suites, each with its own section of `e2e/RESULTS.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    OneEngine,
    Cluster,
}

impl Section {
    /// The comment that opens the section in the file, so a suite replaces only its own.
    fn marker(self) -> &'static str {
        match self {
            Section::OneEngine => "<!-- e2e: one engine -->",
            Section::Cluster => "<!-- e2e: three machines -->",
        }
    }
}

/// `text` with `section` replaced by `body` (or added), the other section kept as it was. A
/// file from before the sections existed is all the one-engine section.
fn replace_section(text: &str, section: Section, body: &str) -> String {
    let sections = [Section::OneEngine, Section::Cluster];
    let mut parts: Vec<String> = sections
        .iter()
        .map(|s| {
            let Some(start) = text.find(s.marker()) else {
                return String::new();
            };
            let rest = &text[start..];
            let end = sections
                .iter()
                .filter_map(|other| rest[1..].find(other.marker()).map(|at| at + 1))
                .min()
                .unwrap_or(rest.len());
            rest[..end].trim_end().to_string()
        })
        .collect();
    if parts.iter().all(String::is_empty) && !text.trim().is_empty() {
        parts[0] = format!("{}\n{}", Section::OneEngine.marker(), text.trim_end());
    }
    let index = sections.iter().position(|s| *s == section).unwrap_or(0);
    parts[index] = format!("{}\n{}", section.marker(), body.trim_end());
    let mut out = parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n");
    out.push('\n');
    out
}

/// The `e2e/RESULTS.md` a reader opens to see the evidence: this suite's section.
fn write_results(
    ctx: &Ctx,
    outcomes: &[Outcome],
    total: Duration,
    section: Section,
    setup: &str,
) -> Result<()> {
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
    match section {
        Section::OneEngine => {
            writeln!(md, "# End-to-end proofs on Docker Swarm\n")?;
            writeln!(
                md,
                "Written by `cargo xtask e2e` — do not edit. Each proof drives load with `hello-world check` \
                 through the HAProxy balancer (`{}`) of the stack in `deploy/swarm/`, applies a fault or an \
                 operation, and asserts on the check's JSON report.\n",
                stack::LB_URL
            )?;
        }
        Section::Cluster => {
            writeln!(md, "# Machine failures on three machines\n")?;
            writeln!(
                md,
                "Written by `cargo xtask e2e --cluster` — do not edit. The same stack on the \
                 three-machine cluster (`cargo xtask cluster up`): each proof drives load with \
                 `hello-world check` through the external balancer (`{}`, deploy/cluster/), \
                 breaks a machine (chosen from the seed below), and asserts on the check's JSON \
                 report and on what the Swarm says.\n",
                stack::LB_URL
            )?;
        }
    }
    writeln!(
        md,
        "- run: {date}, commit `{commit}`, version `{}` (update target `{}`)\n- machine: {cpus} CPUs, Docker Engine {docker} ({setup})\n- result: **{passed} of {} proofs passed** in {:.0?}\n",
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
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    write_file(&path, &replace_section(&existing, section, &md))?;
    println!("e2e: wrote {}", path.display());
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// HTTP/2 cleartext, gRPC health and the WebSocket echo through the balancer at `addr`: curl
/// with prior knowledge, and the real Python clients of the integration tests (grpcio,
/// websockets) from the project's `.venv`, which `.ci/run` makes.
fn protocols_through(sh: &Shell, addr: &str) -> Result<Figures> {
    let url = format!("http://{addr}/");
    let format = "%{http_version} %{http_code}";
    let h2 = cmd!(
        sh,
        "curl --silent --show-error --max-time 5 --http2-prior-knowledge --output /dev/null --write-out {format} {url}"
    )
    .quiet()
    .read()
    .context("curl --http2-prior-knowledge")?;
    ensure!(
        h2.trim() == "2 200",
        "GET / over h2c answered {h2:?}, not \"2 200\""
    );
    let root = crate::project_root();
    let python = root.join(".venv/bin/python");
    ensure!(
        python.is_file(),
        "{} is missing: python3 -m venv .venv && .venv/bin/pip install -r crates/hello-world/tests/requirements.txt",
        python.display()
    );
    let script = root.join("crates/hello-world/tests/it/py/through_balancer.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(addr)
        .output()
        .context("running through_balancer.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "through_balancer.py: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut figures = vec![(
        "h2c".to_string(),
        "GET / with prior knowledge (curl): HTTP/2 200".to_string(),
    )];
    for line in stdout.lines() {
        if let Some((what, said)) = line.split_once(": ") {
            figures.push((what.to_string(), said.to_string()));
        }
    }
    Ok(figures)
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
    fn a_spread_passes_only_with_every_server_at_a_quarter_or_more() {
        let served = |counts: &[(&str, u64)]| -> BTreeMap<String, u64> {
            counts.iter().map(|(n, c)| (n.to_string(), *c)).collect()
        };
        let even = served(&[("node-1", 34), ("node-2", 33), ("node-3", 33)]);
        ensure_each_serves_a_quarter("machines", &even, 3).expect("an even spread passes");
        let lopsided = served(&[("node-1", 60), ("node-2", 24), ("node-3", 16)]);
        let err =
            ensure_each_serves_a_quarter("machines", &lopsided, 3).expect_err("node-3 is short");
        assert!(
            err.to_string().contains("node-2 served only 24.0 %"),
            "{err}"
        );
        let missing = served(&[("node-1", 50), ("node-2", 50)]);
        let err =
            ensure_each_serves_a_quarter("machines", &missing, 3).expect_err("node-3 is missing");
        assert!(
            err.to_string()
                .starts_with("expected 3 machines to answer, got 2: node-1 50.0 %"),
            "{err}"
        );
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
    fn each_suite_rewrites_only_its_own_section_of_the_results() {
        let old = "# End-to-end proofs on Docker Swarm\n\nold one-engine run\n";
        let with_cluster = replace_section(old, Section::Cluster, "# Machines\nfirst");
        assert!(with_cluster.starts_with("<!-- e2e: one engine -->\n# End-to-end proofs"));
        assert!(with_cluster.contains("old one-engine run"));
        assert!(with_cluster.ends_with("<!-- e2e: three machines -->\n# Machines\nfirst\n"));
        let again = replace_section(&with_cluster, Section::OneEngine, "# Swarm\nnew run");
        assert!(!again.contains("old one-engine run"));
        assert!(again.starts_with("<!-- e2e: one engine -->\n# Swarm\nnew run\n\n"));
        assert!(again.contains("# Machines\nfirst"));
        assert_eq!(
            replace_section(&again, Section::OneEngine, "# Swarm\nnew run"),
            again
        );
    }

    #[test]
    fn a_check_report_that_sent_nothing_does_not_pass() {
        let check = Check {
            json: serde_json::json!({"requests": 0, "ok": 0, "errors": 0}),
        };
        assert!(check.assert_no_failures().is_err());
    }
}
