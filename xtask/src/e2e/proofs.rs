//! The proofs themselves, one function per claim. Each starts from the baseline (3 healthy
//! replicas, all in the balancer), drives load with `hello-world check`, applies its fault or
//! operation while the load runs, and returns its figures or the reason it failed.

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

use super::{Ctx, Figures, NEXT_TAG, http, short_name};
use crate::stack::{self, LB_ADDR, REDIS, WEB, wait_until};

/// How long the load runs before the fault, so the fault hits a stack in steady state.
const WARM_UP: Duration = Duration::from_secs(3);
/// Swarm notices a dead task, schedules a new one, and its healthcheck passes: seconds, but a
/// loaded 2-core machine is slow, so the bound is generous.
const RECOVERY: Duration = Duration::from_secs(90);

fn fig(what: &str, value: impl ToString) -> (String, String) {
    (what.to_string(), value.to_string())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The container of one running `web` task, chosen as the first listed.
fn a_replica(sh: &Shell) -> Result<(String, String)> {
    stack::task_containers(sh, WEB)?
        .into_iter()
        .next()
        .context("no running web replica")
}

/// `docker kill --signal` on a container.
fn signal(sh: &Shell, container: &str, signal: &str) -> Result<()> {
    cmd!(sh, "docker kill --signal {signal} {container}")
        .quiet()
        .ignore_stdout()
        .run()?;
    Ok(())
}

/// Waits until `gone` is no longer running and the service is back to `replicas` healthy tasks.
fn wait_replaced(sh: &Shell, service: &str, gone: &str, replicas: u32) -> Result<Duration> {
    wait_until(
        RECOVERY,
        &format!("{service} to replace {gone} and be back to {replicas}/{replicas}"),
        || {
            let running = stack::task_containers(sh, service)?;
            Ok(running.iter().all(|(id, _)| id != gone)
                && running.len() == replicas as usize
                && stack::replicas(sh, service)? == (replicas, replicas))
        },
    )
}

/// The shared counter as the service reports it; retried while the stack recovers.
fn counter() -> Result<i64> {
    let mut value = None;
    wait_until(
        Duration::from_secs(30),
        "GET /api/counter to answer 200",
        || {
            let Ok(response) = http::get(LB_ADDR, "/api/counter") else {
                return Ok(false);
            };
            if response.status != 200 {
                return Ok(false);
            }
            value = response.json()?["value"].as_i64();
            Ok(value.is_some())
        },
    )?;
    value.context("counter value")
}

/// All three replicas answer, each at least a quarter of the requests.
pub(super) fn spread(ctx: &Ctx) -> Result<Figures> {
    let check = ctx.check(&[
        "/",
        "--requests",
        "3000",
        "--concurrency",
        "8",
        "--new-connection",
    ])?;
    check.assert_no_failures()?;
    let replicas = check.replicas();
    ensure!(
        replicas.len() == 3,
        "expected 3 replicas to answer, got {}: {}",
        replicas.len(),
        check.spread()
    );
    let total: u64 = replicas.values().sum();
    for (name, n) in &replicas {
        let share = *n as f64 / total as f64;
        ensure!(
            share >= 0.25,
            "{} served only {:.1} % of requests: {}",
            short_name(name),
            share * 100.0,
            check.spread()
        );
    }
    Ok(vec![
        fig("load", check.summary()),
        fig("requests per replica", check.spread()),
    ])
}

/// What the engine and the kernel say about the running replicas: the image is small, and each
/// process runs as 65532 with a read-only root and an empty capability set. The kernel's view
/// (`/proc/<pid>/status` of the replica's process) is the one that counts: it shows that Swarm
/// applied `cap_drop` and `read_only`, not only that the stack file asks for them.
pub(super) fn isolation(ctx: &Ctx) -> Result<Figures> {
    const MAX_IMAGE: u64 = 8 << 20;
    let sh = &ctx.sh;
    let format = "{{.Size}}";
    let tag = crate::image::DEV_TAG;
    let size: u64 = cmd!(sh, "docker image inspect --format {format} {tag}")
        .quiet()
        .read()?
        .trim()
        .parse()?;
    ensure!(size <= MAX_IMAGE, "the image is {size} bytes, above 8 MiB");
    let replicas = stack::task_containers(sh, WEB)?;
    ensure!(
        replicas.len() == 3,
        "expected 3 running replicas, found {}",
        replicas.len()
    );
    let mut seen = Vec::new();
    for (id, name) in &replicas {
        let format = "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.State.Pid}}";
        let inspect = cmd!(sh, "docker inspect --format {format} {id}")
            .quiet()
            .read()?;
        let fields: Vec<&str> = inspect.split_whitespace().collect();
        let [user, read_only, cap_drop, pid] = fields.as_slice() else {
            bail!("unexpected docker inspect output {inspect:?}");
        };
        ensure!(
            *user == "65532:65532",
            "{}: runs as {user:?}",
            short_name(name)
        );
        ensure!(
            *read_only == "true",
            "{}: the root filesystem is writable",
            short_name(name)
        );
        ensure!(
            *cap_drop == "[ALL]",
            "{}: CapDrop is {cap_drop}, not [ALL]",
            short_name(name)
        );
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status of {}", short_name(name)))?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        ensure!(
            field("Uid:").iter().all(|u| *u == "65532"),
            "{}: uids {:?}",
            short_name(name),
            field("Uid:")
        );
        ensure!(
            field("Gid:").iter().all(|g| *g == "65532"),
            "{}: gids {:?}",
            short_name(name),
            field("Gid:")
        );
        for caps in ["CapPrm:", "CapEff:", "CapBnd:"] {
            ensure!(
                field(caps)
                    .first()
                    .is_some_and(|c| c.chars().all(|d| d == '0')),
                "{}: {caps} {:?}",
                short_name(name),
                field(caps)
            );
        }
        seen.push(format!(
            "{}: uid/gid 65532, read-only root, CapEff {}, CapBnd {}",
            short_name(name),
            field("CapEff:").join(""),
            field("CapBnd:").join("")
        ));
    }
    let mut figures = vec![fig(
        "image",
        format!(
            "{tag}: {:.2} MiB (limit 8 MiB), FROM scratch",
            size as f64 / f64::from(1 << 20)
        ),
    )];
    figures.extend(seen.into_iter().map(|s| fig("replica", s)));
    Ok(figures)
}

/// SIGKILL one replica under load: the balancer retries what it sent there, Swarm replaces it.
pub(super) fn replica_killed(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let (victim, name) = a_replica(sh)?;
    let mut load = ctx.spawn_check(&["/", "--duration", "20s", "--concurrency", "8"])?;
    sleep(WARM_UP);
    signal(sh, &victim, "KILL")?;
    let recovered = wait_replaced(sh, WEB, &victim, 3)?;
    load.assert_running("the recovery")?;
    let check = load.finish()?;
    check.assert_no_failures()?;
    Ok(vec![
        fig(
            "killed",
            format!("{} with SIGKILL after {}", short_name(&name), secs(WARM_UP)),
        ),
        fig("load", check.summary()),
        fig("back to 3/3 healthy replicas after", secs(recovered)),
        fig("requests per replica", check.spread()),
    ])
}

/// SIGTERM one replica under load: it turns unready, drains, exits 0 and is replaced.
pub(super) fn graceful_stop(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let (victim, name) = a_replica(sh)?;
    let mut load = ctx.spawn_check(&["/", "--duration", "30s", "--concurrency", "8"])?;
    sleep(WARM_UP);
    let stopped = Instant::now();
    signal(sh, &victim, "TERM")?;
    let exited = wait_until(RECOVERY, "the stopped replica to exit", || {
        Ok(stack::task_containers(sh, WEB)?
            .iter()
            .all(|(id, _)| *id != victim))
    })?;
    let format = "{{.State.ExitCode}}";
    let exit_code = cmd!(sh, "docker inspect --format {format} {victim}")
        .quiet()
        .read()?;
    wait_replaced(sh, WEB, &victim, 3)?;
    let back = stopped.elapsed();
    load.assert_running("the replacement")?;
    let check = load.finish()?;
    check.assert_no_failures()?;
    ensure!(
        exit_code.trim() == "0",
        "the replica exited with {exit_code} after SIGTERM, not 0"
    );
    Ok(vec![
        fig(
            "stopped",
            format!("{} with SIGTERM after {}", short_name(&name), secs(WARM_UP)),
        ),
        fig("load", check.summary()),
        fig("replica drained and exited (status 0) after", secs(exited)),
        fig("back to 3/3 healthy replicas after", secs(back)),
    ])
}

/// `docker pause` one replica under load: its requests time out at the balancer and are
/// retried elsewhere; its checks fail and it leaves the pool. Latency rises, nothing fails.
pub(super) fn hung_replica(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let (victim, name) = a_replica(sh)?;
    // The check's own timeout is well above the balancer's server timeout (5 s), so a request
    // that waits on the hung replica and is retried still counts as the success it is.
    let mut load = ctx.spawn_check(&[
        "/",
        "--duration",
        "15s",
        "--concurrency",
        "8",
        "--timeout",
        "30s",
    ])?;
    sleep(WARM_UP);
    cmd!(sh, "docker pause {victim}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let paused = Instant::now();
    // Keep it hung through most of the load.
    sleep(Duration::from_secs(10));
    load.assert_running("the pause")?;
    let check = load.finish()?;
    let hung_for = paused.elapsed();
    // Swarm may already have replaced the unhealthy task; unpausing a removed one is fine.
    let _ = cmd!(sh, "docker unpause {victim}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
    check.assert_no_failures()?;
    // The structural bound: one balancer server timeout (5 s) plus a retry, with wide margin for
    // a loaded machine. A request held longer would mean the balancer did not give up on it.
    let max_ms = check.latency_ms("max");
    ensure!(
        max_ms < 15_000.0,
        "the slowest request took {max_ms:.0} ms: the hung replica was not bypassed"
    );
    Ok(vec![
        fig(
            "paused",
            format!("{} for {}", short_name(&name), secs(hung_for)),
        ),
        fig("load", check.summary()),
        fig(
            "slowest request (bound: balancer timeout 5 s + retry)",
            format!("{max_ms:.0} ms"),
        ),
        fig("p99.9", format!("{:.0} ms", check.latency_ms("p999"))),
    ])
}

/// Scale 3 → 5 → 2 under load, then back to 3 for the next proof.
pub(super) fn scale(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let mut load = ctx.spawn_check(&["/", "--duration", "45s", "--concurrency", "8"])?;
    sleep(WARM_UP);
    cmd!(sh, "docker service scale --detach {WEB}=5")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()?;
    let up = wait_until(RECOVERY, "5/5 replicas", || {
        Ok(stack::replicas(sh, WEB)? == (5, 5))
    })?;
    // Let the balancer find the new replicas and send them traffic.
    sleep(Duration::from_secs(5));
    let scaled_down = Instant::now();
    cmd!(sh, "docker service scale --detach {WEB}=2")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()?;
    wait_until(
        RECOVERY,
        "2/2 replicas with the others drained and gone",
        || Ok(stack::replicas(sh, WEB)? == (2, 2) && stack::task_containers(sh, WEB)?.len() == 2),
    )?;
    let down = scaled_down.elapsed();
    load.assert_running("the scale-down")?;
    let check = load.finish()?;
    check.assert_no_failures()?;
    let seen = check.replicas().len();
    ensure!(
        seen >= 5,
        "only {seen} replicas answered: the added ones got no traffic ({})",
        check.spread()
    );
    Ok(vec![
        fig("load", check.summary()),
        fig("3 → 5/5 healthy after", secs(up)),
        fig("5 → 2, the 3 removed drained and gone after", secs(down)),
        fig(
            "replicas that answered",
            format!("{seen}: {}", check.spread()),
        ),
    ])
}

/// `docker service update --image` to a build with another version, under load.
pub(super) fn rolling_update(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let mut load = ctx.spawn_check(&["/", "--duration", "45s", "--concurrency", "8"])?;
    sleep(WARM_UP);
    let started = Instant::now();
    cmd!(
        sh,
        "docker service update --detach --image {NEXT_TAG} {WEB}"
    )
    .quiet()
    .ignore_stdout()
    .ignore_stderr()
    .run()?;
    let format = "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}";
    let updated = wait_until(
        Duration::from_secs(150),
        "the rolling update to complete",
        || {
            let state = cmd!(sh, "docker service inspect --format {format} {WEB}")
                .quiet()
                .read()?;
            match state.trim() {
                "completed" => Ok(true),
                s if s.starts_with("rollback") || s == "paused" => {
                    bail!("the update did not complete: {s}")
                }
                _ => Ok(false),
            }
        },
    )?;
    load.assert_running("the update")?;
    let during = load.finish()?;
    during.assert_no_failures()?;
    let versions = during.versions();
    ensure!(
        versions.contains_key(&ctx.version) && versions.contains_key(&ctx.next_version),
        "the load did not see both versions answer during the update: {versions:?}"
    );

    let after = ctx.check(&[
        "/",
        "--requests",
        "300",
        "--concurrency",
        "4",
        "--new-connection",
    ])?;
    after.assert_no_failures()?;
    let after_versions = after.versions();
    ensure!(
        after_versions.len() == 1 && after_versions.contains_key(&ctx.next_version),
        "after the update, versions answering: {after_versions:?}"
    );
    ensure!(
        after.replicas().len() == 3,
        "after the update {} replicas answered",
        after.replicas().len()
    );
    Ok(vec![
        fig(
            "update",
            format!(
                "{} → {} ({NEXT_TAG}), start-first, one at a time",
                ctx.version, ctx.next_version
            ),
        ),
        fig("load during the update", during.summary()),
        fig("update completed after", secs(updated)),
        fig("versions answering during", format!("{versions:?}")),
        fig(
            "versions answering after",
            format!(
                "{after_versions:?} from {} replicas",
                after.replicas().len()
            ),
        ),
        fig(
            "from the start of the update to this check",
            secs(started.elapsed()),
        ),
    ])
}

/// Increments with idempotency keys through the balancer while two replicas are killed. The check
/// runs for a fixed time (a fixed count finishes before any fault on a fast machine) and lets
/// every request in flight at the end complete, so N is the number of increments it made.
pub(super) fn consistency(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let before = counter()?;
    // Two replicas of the original three, so the second kill does not hit the first's
    // replacement.
    let mut originals = stack::task_containers(sh, WEB)?.into_iter();
    let (victim, name) = originals.next().context("no running web replica")?;
    let (second, second_name) = originals.next().context("no second web replica")?;
    let mut load = ctx.spawn_check(&[
        "/api/counter/increment",
        "--method",
        "POST",
        "--idempotency-keys",
        "--retries",
        "20",
        "--duration",
        "10s",
        "--concurrency",
        "8",
    ])?;
    sleep(WARM_UP);
    load.assert_running("the kill")?;
    signal(sh, &victim, "KILL")?;
    // A second replica three seconds later: each kill can catch increments in flight, whose
    // answers are lost and which the client must retry with their key.
    sleep(WARM_UP);
    load.assert_running("the second kill")?;
    signal(sh, &second, "KILL")?;
    let check = load.finish()?;
    wait_replaced(sh, WEB, &victim, 3)?;
    let recovered = wait_replaced(sh, WEB, &second, 3)?;
    let after = counter()?;
    let n = check.requests();
    let moved = after - before;
    ensure!(
        check.ok() == n,
        "{} of {n} increments were never acknowledged, even with retries: {}",
        n - check.ok(),
        check.summary()
    );
    ensure!(
        moved == n as i64,
        "the counter moved by {moved}, not {n}: increments were lost or counted twice"
    );
    Ok(vec![
        fig(
            "increments",
            format!("N = {n} POSTs in 10 s, each with its own Idempotency-Key, 8 at a time"),
        ),
        fig(
            "killed",
            format!(
                "{} after 3 s and {} after 6 s, with SIGKILL",
                short_name(&name),
                short_name(&second_name)
            ),
        ),
        fig("load", check.summary()),
        fig("client retries (same key)", check.retries()),
        fig("acknowledged", check.ok()),
        fig(
            "counter",
            format!("{before} → {after} (moved by {moved} = N)"),
        ),
        fig("back to 3/3 after the load", secs(recovered)),
    ])
}

/// Increments with idempotency keys while Redis is SIGKILLed; then Redis is killed once more at
/// rest, and the counter read after its restart still holds every acknowledged increment.
pub(super) fn durability(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let before = counter()?;
    // Up to 40 retries with backoff capped at 1 s: ~35 s for Redis to come back.
    let mut load = ctx.spawn_check(&[
        "/api/counter/increment",
        "--method",
        "POST",
        "--idempotency-keys",
        "--retries",
        "40",
        "--duration",
        "12s",
        "--concurrency",
        "8",
    ])?;
    sleep(WARM_UP);
    let (redis, _) = stack::task_containers(sh, REDIS)?
        .into_iter()
        .next()
        .context("no running redis")?;
    load.assert_running("the Redis kill")?;
    signal(sh, &redis, "KILL")?;
    let redis_back = wait_replaced(sh, REDIS, &redis, 1)?;
    let check = load.finish()?;
    let after_load = counter()?;
    let n = check.requests();
    ensure!(
        check.ok() == n,
        "{} of {n} increments were never acknowledged: {}",
        n - check.ok(),
        check.summary()
    );
    let moved = after_load - before;
    ensure!(
        moved == check.ok() as i64,
        "the counter moved by {moved} for {} acknowledged increments",
        check.ok()
    );

    // Once more at rest: what was acknowledged is on disk, not only in Redis's memory.
    let (redis, _) = stack::task_containers(sh, REDIS)?
        .into_iter()
        .next()
        .context("no running redis")?;
    signal(sh, &redis, "KILL")?;
    let redis_back_again = wait_replaced(sh, REDIS, &redis, 1)?;
    let after_restart = counter()?;
    ensure!(
        after_restart == after_load,
        "after a second Redis restart the counter reads {after_restart}, not {after_load}"
    );
    Ok(vec![
        fig(
            "increments",
            format!(
                "{n} POSTs in 12 s with Idempotency-Keys; Redis SIGKILLed after {}",
                secs(WARM_UP)
            ),
        ),
        fig("load", check.summary()),
        fig("client retries (same key)", check.retries()),
        fig("Redis back (healthy) after", secs(redis_back)),
        fig("acknowledged", check.ok()),
        fig(
            "counter",
            format!("{before} → {after_load} (moved by {moved})"),
        ),
        fig(
            "after a second SIGKILL at rest",
            format!(
                "Redis back after {}, counter still {after_restart}",
                secs(redis_back_again)
            ),
        ),
    ])
}
