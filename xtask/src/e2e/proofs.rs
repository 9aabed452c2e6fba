//! The proofs themselves, one function per claim. Each starts from the baseline (3 healthy
//! replicas, all in the balancer), drives load with `hello-world check`, applies its fault or
//! operation while the load runs, and returns its figures or the reason it failed.

use std::collections::BTreeSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

use super::{Ctx, Figures, NEXT_TAG, http, short_name};
use crate::stack::{self, LB_ADDR, REDIS_SERVERS, WEB, wait_until};

/// The service's store timeout (`--store-timeout`, the stack leaves the default): a state route
/// answers within it, plus the balancer's share, when the store is away.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);

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
                && stack::Engine::Host.replicas(sh, service)? == (replicas, replicas))
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

/// h2c, gRPC health and the WebSocket echo through the stack's balancer.
pub(super) fn protocols(ctx: &Ctx) -> Result<Figures> {
    super::protocols_through(&ctx.sh, stack::LB_ADDR)
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
    super::ensure_each_serves_a_quarter("replicas", &check.replicas_by_short_name(), 3)?;
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
    const MAX_IMAGE: u64 = crate::image_checks::IMAGE_BUDGET;
    let sh = &ctx.sh;
    let format = "{{.Size}}";
    let tag = crate::image::DEV_TAG;
    let size: u64 = cmd!(sh, "docker image inspect --format {format} {tag}")
        .quiet()
        .read()?
        .trim()
        .parse()?;
    ensure!(
        size <= MAX_IMAGE,
        "the image is {size} bytes, above {} MiB",
        MAX_IMAGE >> 20
    );
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
            "{tag}: {:.2} MiB (limit 6 MiB, `cargo xtask image`'s budget), FROM scratch",
            size as f64 / f64::from(1 << 20)
        ),
    )];
    figures.extend(seen.into_iter().map(|s| fig("replica", s)));
    Ok(figures)
}

/// From inside one replica's container (as any neighbour on the stack's network), ask another
/// replica's admin port to leave the rotation: refused without the token and with a wrong one,
/// done with it; the balancer then stops sending to it, and takes it back when it is enabled.
pub(super) fn admin_token(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let replicas = stack::task_containers(sh, WEB)?;
    let [(neighbour, neighbour_name), (target, target_name), ..] = replicas.as_slice() else {
        bail!("expected 3 running replicas, found {}", replicas.len());
    };
    let format = format!(
        "{{{{(index .NetworkSettings.Networks \"{}_backend\").IPAddress}}}}",
        stack::STACK
    );
    let address = cmd!(sh, "docker inspect --format {format} {target}")
        .quiet()
        .read()?;
    let address = address.trim();
    ensure!(
        !address.is_empty(),
        "{} has no backend address",
        short_name(target_name)
    );
    let admin = |path: &str, authorization: Option<&str>| -> Result<u64> {
        let url = format!("http://{address}:9000{path}");
        let header = authorization.map(|value| format!("Authorization: {value}"));
        let mut args = vec!["-m", "POST", "-n", "1", "-c", "1"];
        if let Some(header) = &header {
            args.extend(["-H", header.as_str()]);
        }
        let report = super::check_inside(sh, neighbour, &url, &args)?;
        let statuses = report.statuses();
        ensure!(
            statuses.len() == 1,
            "POST {path} from {}: {statuses:?}",
            short_name(neighbour_name)
        );
        let (status, _) = statuses.into_iter().next().expect("one status");
        Ok(status.parse()?)
    };
    let bearer = stack::admin_bearer()?;
    let wrong = format!("Bearer {}", "0".repeat(64));
    let without = admin("/readyz/disable", None)?;
    ensure!(without == 401, "without a token: {without}, not 401");
    let with_wrong = admin("/readyz/disable", Some(&wrong))?;
    ensure!(
        with_wrong == 401,
        "with a wrong token: {with_wrong}, not 401"
    );
    let crash = admin("/exit", None)?;
    ensure!(crash == 401, "POST /exit without a token: {crash}, not 401");
    let serving = |name: &str| -> Result<bool> {
        let probe = ctx.check(&["/", "-n", "60", "-c", "4", "--new-connection"])?;
        Ok(probe.replicas().contains_key(name))
    };
    ensure!(
        serving(target_name)?,
        "{} left the rotation without a valid token",
        short_name(target_name)
    );

    let disabled = admin("/readyz/disable", Some(&bearer))?;
    ensure!(disabled == 200, "with the token: {disabled}, not 200");
    let out = wait_until(
        Duration::from_secs(30),
        "the balancer to stop sending to the disabled replica",
        || Ok(!serving(target_name)?),
    )?;
    let enabled = admin("/readyz/enable", Some(&bearer))?;
    ensure!(enabled == 200, "enable with the token: {enabled}, not 200");
    let back = wait_until(
        Duration::from_secs(30),
        "the balancer to send to the enabled replica again",
        || serving(target_name),
    )?;
    Ok(vec![
        fig("from", short_name(neighbour_name)),
        fig("to", format!("{}'s admin port", short_name(target_name))),
        fig(
            "no token / wrong token / POST /exit without",
            "401 / 401 / 401, still serving",
        ),
        fig("with the token", "200: out of rotation"),
        fig("out of the balancer after", secs(out)),
        fig("back after enable", secs(back)),
    ])
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

/// The stack's one access log switch (`ACCESS_LOG`, `errors` unless told `all`) holds for the
/// replicas and the balancer alike: with `errors`, answers of 400 and above and slow ones leave a
/// line in both logs and a fast 200 leaves none; with `all`, every request leaves one.
pub(super) fn access_logs(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let mode = stack::access_log()?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let since = format!("{}", nonce / 1000 - 1);
    let marker = |kind: &str| format!("alp{nonce}-{kind}");
    const QUIET: usize = 20;
    for i in 0..QUIET {
        let id = marker(&format!("quiet{i}"));
        let answer = http::request(
            LB_ADDR,
            "GET",
            &format!("/?m={id}"),
            &[("x-request-id", &id)],
        )?;
        ensure!(answer.status == 200, "GET / answered {}", answer.status);
    }
    let loud = [
        ("/status/404", 404, "client-error"),
        ("/status/503", 503, "server-error"),
        ("/delay/1200ms", 200, "slow"),
    ];
    for (path, status, kind) in loud {
        let id = marker(kind);
        let answer = http::request(
            LB_ADDR,
            "GET",
            &format!("{path}?m={id}"),
            &[("x-request-id", &id)],
        )?;
        ensure!(
            answer.status == status,
            "GET {path} answered {}, not {status}",
            answer.status
        );
    }
    let logs = |service: &str| -> Result<String> {
        let out = cmd!(sh, "docker service logs --raw --since {since} {service}")
            .quiet()
            .ignore_stderr()
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let lb = format!("{}_lb", stack::STACK);
    let (mut web_log, mut lb_log) = (String::new(), String::new());
    // The engine hands container output on asynchronously: wait for the last loud line.
    let last = marker("slow");
    wait_until(
        Duration::from_secs(20),
        "both logs to show the slow request",
        || {
            web_log = logs(WEB)?;
            lb_log = logs(&lb)?;
            Ok(web_log.contains(&last) && lb_log.contains(&last))
        },
    )?;
    let count = |log: &str, kind: &str| log.lines().filter(|l| l.contains(&marker(kind))).count();
    for (path, _, kind) in loud {
        ensure!(
            count(&web_log, kind) == 1,
            "the replicas logged GET {path} {} times, not once",
            count(&web_log, kind)
        );
        ensure!(
            count(&lb_log, kind) == 1,
            "the balancer logged GET {path} {} times, not once",
            count(&lb_log, kind)
        );
    }
    let quiet_in = |log: &str| {
        (0..QUIET)
            .filter(|i| count(log, &format!("quiet{i}")) > 0)
            .count()
    };
    let (web_quiet, lb_quiet) = (quiet_in(&web_log), quiet_in(&lb_log));
    let expected = if mode == "all" { QUIET } else { 0 };
    ensure!(
        web_quiet == expected && lb_quiet == expected,
        "ACCESS_LOG={mode}: of {QUIET} fast 200s the replicas logged {web_quiet} and the balancer {lb_quiet}, not {expected}"
    );
    Ok(vec![
        fig("switch", format!("ACCESS_LOG={mode}")),
        fig(
            "fast 200s logged (replicas, balancer)",
            format!("{web_quiet}/{QUIET}, {lb_quiet}/{QUIET}"),
        ),
        fig(
            "404, 503 and a 1.2 s answer logged",
            "once each, by the replicas and by the balancer",
        ),
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
        Ok(stack::Engine::Host.replicas(sh, WEB)? == (5, 5))
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
        || {
            Ok(stack::Engine::Host.replicas(sh, WEB)? == (2, 2)
                && stack::task_containers(sh, WEB)?.len() == 2)
        },
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

/// Increments with idempotency keys while the Redis primary is SIGKILLed (the Sentinels promote a
/// replica); then the new primary is killed once more at rest, and the counter read after the
/// next promotion still holds every acknowledged increment.
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
    let primary = stack::redis_primary(sh)?;
    let (redis, _) = stack::task_containers(sh, &primary)?
        .into_iter()
        .next()
        .context("no running primary")?;
    load.assert_running("the Redis kill")?;
    signal(sh, &redis, "KILL")?;
    let redis_back = wait_replaced(sh, &primary, &redis, 1)?;
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

    let promoted = stack::redis_primary(sh)?;

    // Once more at rest, the primary again: what was acknowledged is on a replica too. The
    // counter is read once the state routes answer again (the Sentinels promote another).
    let (redis, _) = stack::task_containers(sh, &promoted)?
        .into_iter()
        .next()
        .context("no running primary")?;
    signal(sh, &redis, "KILL")?;
    let redis_back_again = wait_replaced(sh, &promoted, &redis, 1)?;
    let mut after_restart = 0;
    wait_until(RECOVERY, "the counter to be readable again", || {
        Ok(match counter() {
            Ok(value) => {
                after_restart = value;
                true
            }
            Err(_) => false,
        })
    })?;
    ensure!(
        after_restart == after_load,
        "after a second Redis restart the counter reads {after_restart}, not {after_load}"
    );
    Ok(vec![
        fig(
            "increments",
            format!(
                "{n} POSTs in 12 s with Idempotency-Keys; the Redis primary ({}) SIGKILLed after {}",
                primary.trim_start_matches("hello-world_"),
                secs(WARM_UP)
            ),
        ),
        fig(
            "the Sentinels promoted",
            promoted.trim_start_matches("hello-world_"),
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
                "the primary killed again, back after {}, counter still {after_restart}",
                secs(redis_back_again)
            ),
        ),
    ])
}

/// Every Redis server stopped under load (`docker service scale redis-N=0`): `GET /` keeps answering,
/// every replica stays in rotation and says on `/readyz` that its store is away, the state
/// routes answer 503 with the cause and `Retry-After` within the store timeout, and when Redis
/// is back the replicas find it by themselves: none is restarted.
pub(super) fn store_outage(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let replicas_before: BTreeSet<_> = stack::task_containers(sh, WEB)?.into_iter().collect();
    let mut load = ctx.spawn_check(&["/", "--duration", "120s", "--concurrency", "8"])?;
    sleep(WARM_UP);
    let every_redis = |replicas: u32| -> Vec<String> {
        REDIS_SERVERS
            .iter()
            .map(|service| format!("{service}={replicas}"))
            .collect()
    };
    let stop = every_redis(0);
    cmd!(sh, "docker service scale --detach {stop...}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()?;
    let stopped = Instant::now();
    wait_until(Duration::from_secs(60), "every Redis to stop", || {
        for service in REDIS_SERVERS {
            if !stack::task_containers(sh, service)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    })?;

    // Every replica notices, and stays in rotation: the balancer reaches each of them.
    let mut reporting = BTreeSet::new();
    let mut unready = None;
    let mut reason = String::new();
    wait_until(
        Duration::from_secs(30),
        "every replica to report its store unreachable on /readyz",
        || {
            let readyz = http::get(LB_ADDR, "/readyz")?;
            if readyz.status != 200 {
                unready.get_or_insert(format!("{} {}", readyz.status, readyz.body));
            } else if !stack::store_reachable(&readyz) {
                if let Some(name) = readyz.header("x-served-by") {
                    reporting.insert(name.to_string());
                }
                reason = readyz.json()?["store_status"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            }
            Ok(reporting.len() >= 3)
        },
    )?;
    let noticed = stopped.elapsed();
    if let Some(answer) = unready {
        bail!("/readyz answered {answer} while Redis was away: a store outage took a replica out");
    }

    // The state routes, through the balancer: 503 with the cause, within the store timeout.
    let answer = http::get(LB_ADDR, "/api/counter")?;
    ensure!(
        answer.status == 503,
        "GET /api/counter answered {} without Redis: {}",
        answer.status,
        answer.body
    );
    let body = answer.json()?;
    ensure!(
        body["error"] == "store unavailable" && body["reason"].is_string(),
        "the 503 does not name its cause: {body}"
    );
    ensure!(
        answer.header("retry-after") == Some("1"),
        "the 503 has no Retry-After: 1"
    );
    let mut sampled = Vec::new();
    for args in [
        &["/api/counter", "--requests", "40", "--concurrency", "4"][..],
        &[
            "/api/counter/increment",
            "--method",
            "POST",
            "--requests",
            "40",
            "--concurrency",
            "4",
        ][..],
    ] {
        let state = ctx.check(args)?;
        ensure!(
            state.requests() > 0 && state.status(503) == state.requests(),
            "{} without Redis: expected every answer to be 503, got {}",
            args[0],
            state.summary()
        );
        let max = state.latency_ms("max");
        let bound = (STORE_TIMEOUT + Duration::from_secs(1)).as_millis() as f64;
        ensure!(
            max < bound,
            "{} without Redis: the slowest 503 took {max:.0} ms (store timeout {:?})",
            args[0],
            STORE_TIMEOUT
        );
        sampled.push(format!(
            "{} × 503 from `{}`: p50 {:.1} ms, max {max:.0} ms",
            state.requests(),
            args[0],
            state.latency_ms("p50")
        ));
    }
    load.assert_running("the outage")?;

    let start = every_redis(1);
    cmd!(sh, "docker service scale --detach {start...}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()?;
    let restarted = Instant::now();
    let mut serving = BTreeSet::new();
    wait_until(
        RECOVERY,
        "every replica to answer GET /api/counter 200 again",
        || {
            let answer = http::get(LB_ADDR, "/api/counter")?;
            if answer.status == 200
                && let Some(name) = answer.header("x-served-by")
            {
                serving.insert(name.to_string());
            }
            Ok(serving.len() >= 3)
        },
    )?;
    let reads_back = restarted.elapsed();
    super::wait_for_acknowledged_write(LB_ADDR, RECOVERY)?;
    let recovered = restarted.elapsed();
    load.assert_running("the recovery")?;
    let check = load.stop()?;
    check.assert_no_failures()?;
    let replicas_after: BTreeSet<_> = stack::task_containers(sh, WEB)?.into_iter().collect();
    ensure!(
        replicas_after == replicas_before,
        "the replicas changed during the outage: {replicas_before:?} → {replicas_after:?}"
    );
    Ok(vec![
        fig(
            "Redis stopped",
            format!(
                "`docker service scale` of the 3 Redis servers to 0 after {}",
                secs(WARM_UP)
            ),
        ),
        fig("load on GET / through the balancer", check.summary()),
        fig(
            "every replica in rotation, reporting the store unreachable on /readyz after",
            format!("{} (reason: {reason})", secs(noticed)),
        ),
        fig(
            "state routes without Redis",
            format!(
                "{} (store timeout {:?}; Retry-After: 1)",
                sampled.join("; "),
                STORE_TIMEOUT
            ),
        ),
        fig(
            "Redis back; all 3 replicas serving state again after",
            format!(
                "{} (reads), {} (writes acknowledged by a replica), none restarted",
                secs(reads_back),
                secs(recovered)
            ),
        ),
    ])
}

/// The size of the values the memory proof writes: the service's default value limit.
const FILL_VALUE: usize = 1 << 20;

/// The memory store, alone in a container with the manifests' limit (64 MiB, no swap), and the
/// stack's Redis (`maxmemory` under its limit), each written 1 MiB values until it refuses:
/// a 507 comes, no container is OOM-killed or restarted, reads still work, deleting makes room
/// and writes work again.
pub(super) fn memory_bounded(ctx: &Ctx) -> Result<Figures> {
    let sh = &ctx.sh;
    let mut figures = Vec::new();

    let alone = MemoryReplica::start(sh)?;
    let filled = fill_until_refused(&alone.addr, 200)?;
    let usage = memory_usage(sh, &alone.id)?;
    filled.recover(&alone.addr)?;
    let (oom_killed, restarts, running) = container_state(sh, &alone.id)?;
    ensure!(
        !oom_killed && running && restarts == 0,
        "the memory store's container: OOMKilled {oom_killed}, running {running}, restarts {restarts}"
    );
    figures.push(fig(
        "memory store, 64 MiB container (no swap), default budget",
        format!(
            "{} PUTs of 1 MiB accepted, the next answered 507 {{\"error\":\"store full\"}}; memory then {usage}; not OOM-killed, not restarted",
            filled.stored
        ),
    ));
    figures.push(fig(
        "memory store after the refusal",
        "reads answered 200; 4 DELETEs (204) made room: the next PUT answered 201",
    ));
    drop(alone);

    let primary = stack::redis_primary(sh)?;
    let mut redis_before = Vec::new();
    for service in REDIS_SERVERS {
        let (id, _) = stack::task_containers(sh, service)?
            .into_iter()
            .next()
            .with_context(|| format!("no running {service}"))?;
        redis_before.push((service, id));
    }
    let filled = fill_until_refused(LB_ADDR, 400)?;
    let mut usage = Vec::new();
    for (service, id) in &redis_before {
        usage.push(format!(
            "{} {}",
            service.trim_start_matches("hello-world_"),
            memory_usage(sh, id)?
        ));
    }
    let usage = usage.join(", ");
    filled.recover(LB_ADDR)?;
    for (service, id) in &redis_before {
        let (oom_killed, restarts, running) = container_state(sh, id)?;
        let after: Vec<String> = stack::task_containers(sh, service)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ensure!(
            !oom_killed && running && restarts == 0 && after == [id.clone()],
            "{service}: OOMKilled {oom_killed}, running {running}, restarts {restarts}, task containers now {after:?}"
        );
    }
    ensure!(
        stack::redis_primary(sh)? == primary,
        "the primary changed while Redis was full"
    );
    figures.push(fig(
        "the stack's Redis (maxmemory 192mb, noeviction, limit 256 MiB; a primary and 2 replicas), through the balancer",
        format!(
            "{} PUTs of 1 MiB accepted, the next answered 507 (the primary refused it: OOM); then {usage}; none OOM-killed, the same containers",
            filled.stored
        ),
    ));
    figures.push(fig(
        "the stack's Redis after the refusal",
        "reads answered 200; 4 DELETEs (204) made room: the next PUT answered 201; every value written was deleted again",
    ));
    Ok(figures)
}

/// What [`fill_until_refused`] left: how many values it stored.
struct Filled {
    stored: usize,
}

fn fill_key(index: usize) -> String {
    format!("/api/kv/e2e-fill-{index}")
}

/// PUTs 1 MiB values under fresh keys until one is refused with 507, at most `most` of them.
fn fill_until_refused(addr: &str, most: usize) -> Result<Filled> {
    let value = vec![b'm'; FILL_VALUE];
    let mut stored = 0;
    loop {
        ensure!(
            stored < most,
            "{most} PUTs of 1 MiB were all accepted: nothing bounds the store"
        );
        // A retried PUT whose first try landed on the primary but was not confirmed by a
        // replica in time finds its key there: 200, not 201.
        let answer = write_retrying(addr, "PUT", &fill_key(stored), &value)?;
        match answer.status {
            200 | 201 => stored += 1,
            507 => {
                let body = answer.json()?;
                ensure!(
                    body["error"] == "store full" && body["status"] == 507,
                    "the 507 is not the store's JSON error: {body}"
                );
                ensure!(stored > 0, "the very first PUT was refused: {body}");
                return Ok(Filled { stored });
            }
            other => bail!("PUT {} answered {other}: {}", fill_key(stored), answer.body),
        }
    }
}

impl Filled {
    /// Reads still work, deleting makes room for a write, and everything written goes again.
    fn recover(&self, addr: &str) -> Result<()> {
        for index in [0, self.stored - 1] {
            let read = http::get(addr, &fill_key(index))?;
            ensure!(
                read.status == 200 && read.body.len() == FILL_VALUE,
                "GET {} answered {} ({} bytes) on a full store",
                fill_key(index),
                read.status,
                read.body.len()
            );
        }
        let freed = 4.min(self.stored);
        for index in 0..freed {
            let deleted = write_retrying(addr, "DELETE", &fill_key(index), &[])?;
            ensure!(
                deleted.status == 204,
                "DELETE {} answered {} on a full store: {}",
                fill_key(index),
                deleted.status,
                deleted.body
            );
        }
        let value = vec![b'm'; FILL_VALUE];
        let again = write_retrying(addr, "PUT", &fill_key(0), &value)?;
        ensure!(
            again.status == 201,
            "after deleting {freed} values, PUT answered {}: {}",
            again.status,
            again.body
        );
        for index in 0..self.stored {
            let deleted = write_retrying(addr, "DELETE", &fill_key(index), &[])?;
            ensure!(
                matches!(deleted.status, 204 | 404),
                "cleaning up: DELETE {} answered {}",
                fill_key(index),
                deleted.status
            );
        }
        Ok(())
    }
}

/// A write through `addr`, sent again after a pause while it answers 503, within 30 s. On the
/// stack's Redis every write waits for a replica, and replicas still copying 1 MiB values
/// either confirm a write too late ("not confirmed by a replica") or leave the primary refusing
/// writes for a few seconds (`NOREPLICAS`, past `min-replicas-max-lag`): 503 with
/// `Retry-After`, which a client retries. Any other answer (a 507 among them) is returned at
/// once.
fn write_retrying(addr: &str, method: &str, path: &str, body: &[u8]) -> Result<http::Response> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http::request_with_body(addr, method, path, &[], body)?;
        if answer.status != 503 || Instant::now() >= deadline {
            return Ok(answer);
        }
        sleep(Duration::from_millis(250));
    }
}

/// A replica of the image with the in-memory store, as the manifests limit it (64 MiB, no swap,
/// read-only, no capabilities), published on a loopback port; removed when dropped.
struct MemoryReplica<'a> {
    sh: &'a Shell,
    id: String,
    addr: String,
}

impl<'a> MemoryReplica<'a> {
    const NAME: &'static str = "hello-world-e2e-memory";

    fn start(sh: &'a Shell) -> Result<Self> {
        let name = Self::NAME;
        let _ = cmd!(sh, "docker rm --force {name}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let publish = format!("127.0.0.1:{port}:5000");
        let image = crate::image::DEV_TAG;
        let id = cmd!(
            sh,
            "docker run --detach --name {name} --memory 64m --memory-swap 64m --read-only
                --cap-drop ALL --publish {publish} {image}"
        )
        .quiet()
        .read()?
        .trim()
        .to_string();
        let replica = Self {
            sh,
            id,
            addr: format!("127.0.0.1:{port}"),
        };
        wait_until(
            Duration::from_secs(30),
            "the memory-store replica to serve",
            || Ok(http::get(&replica.addr, "/healthz").is_ok_and(|r| r.status == 200)),
        )?;
        Ok(replica)
    }
}

impl Drop for MemoryReplica<'_> {
    fn drop(&mut self) {
        let name = Self::NAME;
        let _ = cmd!(self.sh, "docker rm --force {name}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
    }
}

/// `OOMKilled`, restart count and whether the container runs, as the engine reports them.
fn container_state(sh: &Shell, id: &str) -> Result<(bool, u32, bool)> {
    let format = "{{.State.OOMKilled}} {{.RestartCount}} {{.State.Running}}";
    let out = cmd!(sh, "docker inspect --format {format} {id}")
        .quiet()
        .read()?;
    let fields: Vec<&str> = out.split_whitespace().collect();
    let [oom_killed, restarts, running] = fields.as_slice() else {
        bail!("unexpected docker inspect output {out:?}");
    };
    Ok((*oom_killed == "true", restarts.parse()?, *running == "true"))
}

/// The container's memory use against its limit, as `docker stats` shows it ("40MiB / 64MiB").
fn memory_usage(sh: &Shell, id: &str) -> Result<String> {
    let format = "{{.MemUsage}}";
    Ok(cmd!(sh, "docker stats --no-stream --format {format} {id}")
        .quiet()
        .read()?
        .trim()
        .to_string())
}
