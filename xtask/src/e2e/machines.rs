//! `cargo xtask e2e --cluster`: machine failures, proved on the three-machine cluster of
//! `cargo xtask cluster`. Each proof starts from the same baseline (three Ready managers, one
//! `web` replica per machine, a balancer on each, all in the external balancer), drives load
//! through the external balancer with the real `hello-world check` (or writers and readers of
//! its own, whose answers it records), breaks a machine — SIGKILL, frozen, cut off the network,
//! drain, two at once, all at once — and asserts on the check's JSON report, on what the Swarm,
//! the Sentinels and the balancers say, and on what reads back.
//!
//! The machine a fault hits is drawn from a seeded generator (the seed is printed, and
//! `--seed N` replays a run), among all three: each holds a Redis server and a Sentinel, and
//! the replicated Redis survives the loss of any one machine. The proofs about the store break
//! the machine (or the server) the Sentinels name as the primary, wherever earlier proofs
//! left it; the linearizability checker is [`history`]. Nothing depends on
//! which machine leads the Swarm: commands go to whichever manager answers
//! ([`cluster::live_manager`]), and each proof records the role of the machine it broke, since
//! losing the leader adds a Raft election to the recovery.
//!
//! Timings are figures, not tight assertions (the machine is shared): each is written beside
//! its target (out of the external balancer within 2 s, replaced within 15 s), and a proof
//! fails only past a generous bound or on a failed request.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

use super::{Ctx, Figures, NEXT_TAG, Options, Outcome, Proof, Section};
use super::{history, http};
use crate::cluster::{self, EXTERNAL_LB, NETWORK, NODES, Task};
use crate::stack::{self, Engine, LB, STACK, WEB, wait_until};

pub(super) const PROOFS: &[Proof<Cluster>] = &[
    Proof {
        name: "machines-spread",
        claim: "the load spreads over machines: each machine's replica serves ≥ 25 % of requests",
        run: spread,
    },
    Proof {
        name: "protocols",
        claim: "HTTP/2 cleartext, gRPC health and the WebSocket echo work through the external balancer and each machine's, with real clients (curl, grpcio, websockets)",
        run: protocols,
    },
    Proof {
        name: "machine-killed",
        claim: "a machine dies (SIGKILL of its engine and all on it) under load: no failed request, quorum kept, 3 replicas on the 2 survivors",
        run: machine_killed,
    },
    Proof {
        name: "machine-returns",
        claim: "a killed machine started again rejoins as a manager, with its images: 3 Ready",
        run: machine_returns,
    },
    Proof {
        name: "machine-hangs",
        claim: "a machine hangs (frozen for 15 s) under load: no failed request, worst latency within the balancers' timeouts",
        run: machine_hangs,
    },
    Proof {
        name: "machine-cut-off",
        claim: "a machine is cut off the network under load: no failed request, its replica replaced; reconnected, exactly 3 replicas answer",
        run: machine_cut_off,
    },
    Proof {
        name: "machine-drained",
        claim: "planned maintenance: a machine drained under load, no failed request, its replica moves; then active again",
        run: machine_drained,
    },
    Proof {
        name: "rollout",
        claim: "a rollout across machines: a new version pushed and rolled under load, no failed request, every machine runs it, pulled from the registry",
        run: rollout,
    },
    Proof {
        name: "store-outage",
        claim: "a store outage is not a service outage: every Redis server on the three machines stopped at once under load, no failed `GET /`, state routes answer 503 within the store timeout, all recover by themselves",
        run: store_outage,
    },
    Proof {
        name: "primary-machine-killed",
        claim: "the Redis primary's machine dies during idempotent increments with retries: the counter moves by exactly the number acknowledged, all acknowledged; writes resume (target ≤ 5 s)",
        run: primary_machine_killed,
    },
    Proof {
        name: "primary-cut-off",
        claim: "the Redis primary's machine is cut off under write load: alone it acknowledges nothing, the others promote a new primary; reconnected, the old primary is a replica and every acknowledged write reads back",
        run: primary_cut_off,
    },
    Proof {
        name: "kv-linearizable",
        claim: "the kv store stays linearizable: concurrent reads, blind writes and `If-Match` writes on one key through every replica while the Redis primary fails over; the history checker finds no stale read, no lost acknowledged write, no version given to two values",
        run: kv_linearizable,
    },
    Proof {
        name: "two-machines-lost",
        claim: "two of three machines lost: the survivor's replica keeps serving, the Swarm has no quorum (no rescheduling, no updates) until one returns",
        run: two_machines_lost,
    },
    Proof {
        name: "full-restart",
        claim: "durability across a full restart: `cluster down` (every machine removed at once, its volume kept), then `cluster up`: the counter and the kv data are as they were, on the same Swarm",
        run: full_restart,
    },
];

/// The targets README states, written beside each measured figure.
const OUT_OF_BALANCER_TARGET: Duration = Duration::from_secs(2);
const REPLACED_TARGET: Duration = Duration::from_secs(15);
/// The bound past which a proof fails: a Raft election (the leader lost) and a loaded machine
/// included.
const RECOVERY: Duration = Duration::from_secs(90);
/// How long the baseline waits for a machine to rejoin by itself before it reboots it.
const REJOIN: Duration = Duration::from_secs(45);
/// How long the load runs before the fault.
const WARM_UP: Duration = Duration::from_secs(3);
/// How long a load stopped early runs on after the recovery it watched.
const AFTER_RECOVERY: Duration = Duration::from_secs(5);

/// What the cluster proofs share: the suite's context, the fault's generator, the images.
pub(super) struct Cluster {
    base: Ctx,
    seed: u64,
    rng: RefCell<fastrand::Rng>,
    /// The `web` image the stack runs, by digest in the registry.
    web_image: String,
}

pub(super) fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    let sh = crate::image::project_shell()?;
    let base = super::prepare(sh, options.build)?;
    let seed = options.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    println!("e2e --cluster: seed {seed} (replay with --seed {seed})");
    let teardown = ClusterTeardown {
        sh: crate::image::project_shell()?,
        keep: options.keep,
    };
    // The single-engine stack holds the same port; a run starts from nothing, as on a fresh
    // machine: the machines pull every image from the registry.
    if crate::stack::down(&base.sh, true).is_err() {
        eprintln!("e2e --cluster: no single-engine stack to remove");
    }
    cluster::down(&base.sh, true)?;
    let up_started = Instant::now();
    let images = cluster::up(&base.sh)?;
    let up_took = up_started.elapsed();
    let memory = cluster::memory(&base.sh)?;
    let ctx = Cluster {
        base,
        seed,
        rng: RefCell::new(fastrand::Rng::with_seed(seed)),
        web_image: images.web,
    };
    let total_memory: u64 = memory.iter().map(|(_, b)| b).sum();
    println!(
        "cluster: up in {:.0?}, memory {} ({})",
        up_took,
        cluster::mib(total_memory),
        memory
            .iter()
            .map(|(part, b)| format!("{part} {}", cluster::mib(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let outcomes: Vec<Outcome> = super::run_proofs(PROOFS, options.only.as_deref(), &ctx, baseline);
    drop(teardown);
    let setup = format!(
        "three engines in containers, one Swarm of three managers; `cluster up` {:.0?} with \
         the images built; memory after up {} (target ≤ 4 GiB); seed {}",
        up_took,
        cluster::mib(total_memory),
        ctx.seed
    );
    super::finish(
        &ctx.base,
        options,
        &outcomes,
        started.elapsed(),
        (Section::Cluster, &setup),
    )
}

/// Removes the cluster when the suite ends, whatever way it ends.
struct ClusterTeardown {
    sh: Shell,
    keep: bool,
}

impl Drop for ClusterTeardown {
    fn drop(&mut self) {
        if self.keep {
            println!(
                "\ne2e: --keep: the cluster stays up at {}",
                crate::stack::LB_URL
            );
            return;
        }
        if let Err(err) = cluster::down(&self.sh, true) {
            eprintln!("e2e: tearing the cluster down failed: {err:#}");
        }
    }
}

fn fig(what: &str, value: impl ToString) -> (String, String) {
    (what.to_string(), value.to_string())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// "4.0 s (target ≤ 15 s: met)".
fn against(d: Duration, target: Duration) -> String {
    let verdict = if d <= target { "met" } else { "missed" };
    format!("{} (target ≤ {}: {verdict})", secs(d), secs(target))
}

impl Cluster {
    fn sh(&self) -> &Shell {
        &self.base.sh
    }

    fn manager(&self) -> Result<Engine> {
        cluster::live_manager(self.sh())
    }

    /// Draws the machine a fault hits, among those not in `besides`. Any machine may be hit:
    /// each holds a Redis server and a Sentinel, and Redis survives the loss of any one.
    fn choose(&self, besides: &[&str]) -> Result<(&'static str, Figures)> {
        let candidates: Vec<&'static str> =
            NODES.into_iter().filter(|n| !besides.contains(n)).collect();
        ensure!(!candidates.is_empty(), "no machine to break");
        let victim = candidates[self.rng.borrow_mut().usize(..candidates.len())];
        let role = self.role(victim)?;
        println!("    fault hits {victim} ({role})");
        Ok((
            victim,
            vec![fig(
                "machine",
                format!(
                    "{victim}, the Swarm's {role} (drawn from seed {} among {})",
                    self.seed,
                    candidates.join(", ")
                ),
            )],
        ))
    }

    /// "leader" or "follower", as the Swarm saw the machine before the fault.
    fn role(&self, node: &str) -> Result<&'static str> {
        let members = cluster::members(self.sh(), self.manager()?)?;
        let leads = members
            .iter()
            .any(|m| m.hostname == node && m.manager.as_deref() == Some("Leader"));
        Ok(if leads { "leader" } else { "follower manager" })
    }

    /// The running `web` tasks, as a manager that is not `avoid` sees them.
    fn web_tasks(&self, avoid: &[&str]) -> Result<Vec<Task>> {
        let manager = manager_besides(self.sh(), avoid)?;
        Ok(cluster::tasks(self.sh(), manager, WEB)?
            .into_iter()
            .filter(Task::running)
            .collect())
    }

    /// Waits until three `web` replicas run, none on `gone`; returns how long it took.
    fn wait_replaced(&self, gone: &str, since: Instant) -> Result<Duration> {
        wait_until(
            RECOVERY,
            &format!("3 web replicas running on machines other than {gone}"),
            || {
                let tasks = self.web_tasks(&[gone])?;
                Ok(tasks.len() == 3 && tasks.iter().all(|t| t.node != gone))
            },
        )?;
        Ok(since.elapsed())
    }

    /// Waits until `node` is a Ready manager again, as another manager sees it.
    fn wait_ready_manager(&self, node: &str) -> Result<Duration> {
        wait_until(RECOVERY, &format!("{node} to be a Ready manager"), || {
            let members = cluster::members(self.sh(), manager_besides(self.sh(), &[node])?)?;
            Ok(members.iter().any(|m| {
                m.hostname == node
                    && m.status == "Ready"
                    && matches!(m.manager.as_deref(), Some("Leader" | "Reachable"))
            }))
        })
        .map_err(|err| {
            let report = cluster::swarm_report(self.sh());
            err.context(format!("the Swarm as each machine sees it:{report}"))
        })
    }

    fn start_load(&self, duration: &str) -> Result<super::Load> {
        self.base.spawn_check(&[
            "/",
            "--duration",
            duration,
            "--concurrency",
            "8",
            "--timeout",
            "30s",
        ])
    }
}

/// A manager that answers, other than the machines in `avoid` (broken ones, whose view is
/// stale or which cannot answer).
fn manager_besides(sh: &Shell, avoid: &[&str]) -> Result<Engine> {
    for node in NODES {
        if avoid.contains(&node) || cluster::container_state(sh, node).as_deref() != Some("running")
        {
            continue;
        }
        if cluster::members(sh, Engine::Node(node)).is_ok_and(|m| !m.is_empty()) {
            return Ok(Engine::Node(node));
        }
    }
    bail!("no manager answers besides {}", avoid.join(", "))
}

/// Every proof starts here: every machine running, connected, an active Ready manager; one
/// `web` replica per machine; a balancer on each; the external balancer reaching all three.
fn baseline(ctx: &Cluster) -> Result<()> {
    let sh = ctx.sh();
    for node in NODES {
        cluster::freeze(sh, node, false)?;
        if cluster::container_state(sh, node).as_deref() != Some("running") {
            cmd!(sh, "docker start {node}")
                .quiet()
                .ignore_stdout()
                .run()?;
        }
        let format = "{{json .NetworkSettings.Networks}}";
        let networks = cmd!(sh, "docker inspect --format {format} {node}")
            .quiet()
            .read()?;
        if !networks.contains(NETWORK) {
            reconnect(sh, node)?;
        }
        cluster::wait_for_engine(sh, node)?;
    }
    let manager = ctx.manager()?;
    for member in cluster::members(sh, manager)? {
        if member.availability != "Active" {
            let host = member.hostname.as_str();
            manager
                .docker(
                    sh,
                    &["node", "update", "--availability", "active", host],
                    &[],
                )
                .quiet()
                .ignore_stdout()
                .run()?;
        }
    }
    let all_ready = || -> Result<bool> {
        let members = cluster::members(sh, ctx.manager()?)?;
        Ok(members.len() == 3
            && members
                .iter()
                .all(|m| m.status == "Ready" && m.availability == "Active" && m.reachable()))
    };
    // A proof's machine that does not rejoin is that proof's failure (machine-returns checks
    // it); here, setting up the next proof, a machine still not Ready is rebooted once, as an
    // operator would, and the run says so with what each machine saw.
    if let Err(err) = wait_until(REJOIN, "three active Ready managers", all_ready) {
        let report = cluster::swarm_report(sh);
        let not_ready = match cluster::members(sh, ctx.manager()?) {
            Ok(members) => cluster::not_ready(&members, |m| m.status == "Ready" && m.reachable()),
            Err(_) => NODES.to_vec(),
        };
        println!(
            "    baseline: {err:#}; restarting {} (the Swarm as each machine saw it:{report})",
            not_ready.join(", ")
        );
        cluster::restart_machines(sh, &not_ready)?;
        wait_until(RECOVERY, "three active Ready managers", all_ready).map_err(|err| {
            err.context(format!(
                "the Swarm as each machine sees it:{}",
                cluster::swarm_report(sh)
            ))
        })?;
    }
    wait_until(RECOVERY, "no update in progress", || {
        let state = ctx.manager()?.read(
            sh,
            &[
                "service",
                "inspect",
                "--format",
                "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                WEB,
            ],
        )?;
        Ok(!matches!(state.trim(), "updating" | "rollback_started"))
    })?;
    cluster::spread_web(ctx.sh(), RECOVERY)?;
    wait_until(RECOVERY, "a balancer on every machine, and Redis", || {
        let manager = ctx.manager()?;
        Ok(manager.replicas(sh, LB)? == (3, 3) && manager.store_running(sh)?)
    })?;
    // Running is not writable: a server that returned may still be catching up, and until one
    // replica is in sync the primary refuses writes (min-replicas-to-write).
    super::wait_for_acknowledged_write(stack::LB_ADDR, RECOVERY)?;
    wait_until(
        RECOVERY,
        "the external balancer to reach 3 replicas on 3 machines",
        || {
            let probe = ctx.base.check(&[
                "/",
                "--requests",
                "90",
                "--concurrency",
                "3",
                "--new-connection",
            ])?;
            Ok(probe.errors() == 0
                && probe.replicas().len() == 3
                && probe.replica_machines().len() == 3
                && probe.machines().len() == 3)
        },
    )?;
    Ok(())
}

fn wait_three_web(ctx: &Cluster) -> Result<Vec<Task>> {
    let mut tasks = Vec::new();
    wait_until(RECOVERY, "3 running web replicas", || {
        tasks = ctx.web_tasks(&[])?;
        Ok(tasks.len() == 3)
    })?;
    Ok(tasks)
}

fn reconnect(sh: &Shell, node: &str) -> Result<()> {
    let ip = cluster::node_ip(node);
    cmd!(sh, "docker network connect --ip {ip} {NETWORK} {node}")
        .quiet()
        .run()
        .with_context(|| format!("reconnecting {node}"))
}

/// When the external balancer took `node` out, after `since`, from its own log (each line
/// stamped by the engine): "Server machines/<node> is DOWN" or "is going DOWN".
fn out_of_balancer(sh: &Shell, node: &str, since: SystemTime) -> Result<Duration> {
    let since_secs = since.duration_since(UNIX_EPOCH)?.as_secs_f64();
    let since_arg = format!("{since_secs:.3}");
    let needle = format!("machines/{node} is");
    let mut found = None;
    wait_until(
        Duration::from_secs(30),
        &format!("the external balancer to take {node} out"),
        || {
            let out = cmd!(
                sh,
                "docker logs --timestamps --since {since_arg} {EXTERNAL_LB}"
            )
            .quiet()
            .ignore_stdout()
            .output()?;
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            found = text
                .lines()
                .filter(|l| l.contains(&needle) && l.contains("DOWN"))
                .find_map(|l| seconds_of_day(l.split_whitespace().next()?));
            Ok(found.is_some())
        },
    )?;
    let at = found.context("a DOWN line")?;
    let since_of_day = since_secs.rem_euclid(86_400.0);
    Ok(Duration::from_secs_f64(
        (at - since_of_day).rem_euclid(86_400.0),
    ))
}

/// `2026-12-01T09:43:02.209722658Z` → seconds since midnight (UTC).
fn seconds_of_day(stamp: &str) -> Option<f64> {
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// Each machine's replica serves at least a quarter of the requests.
fn spread(ctx: &Cluster) -> Result<Figures> {
    let check = ctx.base.check(&[
        "/",
        "--requests",
        "3000",
        "--concurrency",
        "8",
        "--new-connection",
    ])?;
    check.assert_no_failures()?;
    ensure!(
        check.replicas().len() == 3,
        "expected one replica per machine, {} answered: {}",
        check.replicas().len(),
        check.spread()
    );
    super::ensure_each_serves_a_quarter("machines", &check.machines(), 3)?;
    let placement = check
        .replica_machines()
        .iter()
        .map(|(replica, machine)| format!("{} on {machine}", super::short_name(replica)))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(vec![
        fig("load", check.summary()),
        fig("requests per machine", check.machine_spread()),
        fig("replicas", placement),
    ])
}

/// h2c, gRPC health and the WebSocket echo through the external balancer, which passes each
/// to a machine's balancer, which passes it to a replica.
fn protocols(ctx: &Cluster) -> Result<Figures> {
    super::protocols_through(ctx.sh(), stack::LB_ADDR)
}

/// SIGKILL a machine's container: its engine and everything on it die at once.
fn machine_killed(ctx: &Cluster) -> Result<Figures> {
    let sh = ctx.sh();
    let (victim, mut figures) = ctx.choose(&[])?;
    // Long enough for a slow rescheduling; stopped once the survivors served a while after it.
    let mut load = ctx.start_load("120s")?;
    sleep(WARM_UP);
    let killed_at = SystemTime::now();
    let killed = Instant::now();
    cmd!(sh, "docker kill {victim}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let out = out_of_balancer(sh, victim, killed_at)?;
    let replaced = ctx.wait_replaced(victim, killed)?;
    let members = cluster::members(sh, manager_besides(sh, &[victim])?)?;
    let leader = members
        .iter()
        .find(|m| m.manager.as_deref() == Some("Leader"))
        .map(|m| m.hostname.clone())
        .context("no leader among the survivors: quorum lost")?;
    ensure!(leader != victim, "the dead machine still leads");
    let victim_seen = members
        .iter()
        .find(|m| m.hostname == victim)
        .map(|m| format!("{} / {}", m.status, m.manager.as_deref().unwrap_or("-")))
        .unwrap_or_default();
    sleep(AFTER_RECOVERY);
    load.assert_running("the recovery")?;
    let check = load.stop()?;
    check.assert_no_failures()?;
    let placement: Vec<String> = ctx
        .web_tasks(&[victim])?
        .iter()
        .map(|t| format!("{} on {}", t.name, t.node))
        .collect();
    figures.extend([
        fig("load", check.summary()),
        fig(
            "out of the external balancer after",
            against(out, OUT_OF_BALANCER_TARGET),
        ),
        fig(
            "3 replicas on the survivors after",
            against(replaced, REPLACED_TARGET),
        ),
        fig(
            "quorum",
            format!("kept: {leader} leads; {victim} is {victim_seen}"),
        ),
        fig("replicas", placement.join(", ")),
        fig("requests per machine", check.machine_spread()),
    ]);
    Ok(figures)
}

/// A machine killed at rest, then started: its engine keeps its data volume, so it rejoins the
/// Swarm as the manager it was and has its images without pulling.
fn machine_returns(ctx: &Cluster) -> Result<Figures> {
    let sh = ctx.sh();
    let (victim, mut figures) = ctx.choose(&[])?;
    cmd!(sh, "docker kill {victim}")
        .quiet()
        .ignore_stdout()
        .run()?;
    wait_until(RECOVERY, &format!("{victim} to be Down"), || {
        let members = cluster::members(sh, manager_besides(sh, &[victim])?)?;
        Ok(members
            .iter()
            .any(|m| m.hostname == victim && m.status == "Down"))
    })?;
    cmd!(sh, "docker start {victim}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let engine_back = cluster::wait_for_engine(sh, victim)?;
    // Read before the Swarm could schedule anything there: what the machine kept.
    let web_image = &ctx.web_image;
    let kept = Engine::Node(victim)
        .read(sh, &["image", "inspect", "--format", "{{.Id}}", web_image])
        .is_ok();
    let images = Engine::Node(victim).read(sh, &["images", "--format", "{{.Repository}}"])?;
    let ready = ctx.wait_ready_manager(victim)?;
    ensure!(kept, "{victim} came back without the web image {web_image}");
    let members = cluster::members(sh, Engine::Node(victim))?;
    ensure!(
        members.len() == 3 && members.iter().all(|m| m.status == "Ready"),
        "after the return: {members:?}"
    );
    let role = members
        .iter()
        .find(|m| m.hostname == victim)
        .and_then(|m| m.manager.clone())
        .unwrap_or_default();
    figures.extend([
        fig("engine answering after start", secs(engine_back)),
        fig("a Ready manager again after", secs(ready)),
        fig("its role now", role),
        fig(
            "images it kept (its /var/lib/docker volume)",
            format!(
                "{} images, the web image among them",
                images.lines().count()
            ),
        ),
        fig("machines Ready", members.len()),
    ]);
    Ok(figures)
}

/// Hang a machine for 15 s ([`cluster::freeze`]: its engine and everything on it): its
/// processes stop, its network stack still accepts connections, and nothing answers. The
/// balancers' timeouts bound the wait.
fn machine_hangs(ctx: &Cluster) -> Result<Figures> {
    const HUNG: Duration = Duration::from_secs(15);
    // The external balancer's `timeout server` (6 s) plus the in-cluster one (5 s): the most a
    // request can wait on a hung machine and then on a hung replica, before its retry answers.
    const BOUND_MS: f64 = 11_000.0;
    let sh = ctx.sh();
    let (victim, mut figures) = ctx.choose(&[])?;
    let mut load = ctx.start_load("30s")?;
    sleep(WARM_UP);
    let paused_at = SystemTime::now();
    cluster::freeze(sh, victim, true)?;
    let out = out_of_balancer(sh, victim, paused_at);
    let elapsed = paused_at.elapsed().unwrap_or_default();
    sleep(HUNG.saturating_sub(elapsed));
    load.assert_running("the pause")?;
    cluster::freeze(sh, victim, false)?;
    let check = load.finish()?;
    let out = out?;
    check.assert_no_failures()?;
    let max_ms = check.latency_ms("max");
    ensure!(
        max_ms < BOUND_MS,
        "the slowest request took {max_ms:.0} ms: more than the balancers' timeouts allow"
    );
    ctx.wait_ready_manager(victim)?;
    figures.extend([
        fig("paused", secs(HUNG)),
        fig("load", check.summary()),
        fig(
            "out of the external balancer after",
            against(out, OUT_OF_BALANCER_TARGET),
        ),
        fig(
            "slowest request (bound: 6 s external + 5 s in-cluster timeout)",
            format!("{max_ms:.0} ms"),
        ),
        fig("p99.9", format!("{:.0} ms", check.latency_ms("p999"))),
        fig("requests per machine", check.machine_spread()),
    ]);
    Ok(figures)
}

/// Disconnect a machine from the cluster network: the others lose it, its replica is replaced;
/// it keeps running its old replica alone. Reconnected, it rejoins and its stale replica stops.
fn machine_cut_off(ctx: &Cluster) -> Result<Figures> {
    let sh = ctx.sh();
    let (victim, mut figures) = ctx.choose(&[])?;
    let stale: Vec<Task> = ctx
        .web_tasks(&[])?
        .into_iter()
        .filter(|t| t.node == victim)
        .collect();
    // Long enough for a reconnection that waits on a Redis failover too; stopped when it is over.
    let mut load = ctx.start_load("150s")?;
    sleep(WARM_UP);
    let cut_at = SystemTime::now();
    let cut = Instant::now();
    cmd!(sh, "docker network disconnect {NETWORK} {victim}")
        .quiet()
        .run()?;
    let out = out_of_balancer(sh, victim, cut_at)?;
    let replaced = ctx.wait_replaced(victim, cut)?;
    // Alone, the machine still runs its old replica: nothing tells it to stop.
    let alone = Engine::Node(victim)
        .read(
            sh,
            &[
                "ps",
                "-q",
                "--filter",
                "label=com.docker.swarm.service.name=hello-world_web",
            ],
        )?
        .lines()
        .count();
    let reconnected = Instant::now();
    reconnect(sh, victim)?;
    let ready = ctx.wait_ready_manager(victim)?;
    wait_until(RECOVERY, "the stale replica to stop", || {
        let running = Engine::Node(victim).read(
            sh,
            &[
                "ps",
                "-q",
                "--filter",
                "label=com.docker.swarm.service.name=hello-world_web",
            ],
        )?;
        let tasks = ctx.web_tasks(&[])?;
        let expected = tasks.iter().filter(|t| t.node == victim).count();
        Ok(running.lines().count() == expected)
    })?;
    let stale_gone = reconnected.elapsed();
    load.assert_running("the reconnection")?;
    let check = load.stop()?;
    check.assert_no_failures()?;
    // Exactly the three replicas the Swarm runs answer; the stale one is not among them.
    let after = ctx.base.check(&[
        "/",
        "--requests",
        "300",
        "--concurrency",
        "4",
        "--new-connection",
    ])?;
    after.assert_no_failures()?;
    let expected: Vec<String> = ctx
        .web_tasks(&[])?
        .iter()
        .map(|t| format!("{}.{}", t.name, t.id))
        .collect();
    let answered: Vec<String> = after.replicas().into_keys().collect();
    ensure!(
        answered.len() == 3 && answered.iter().all(|r| expected.contains(r)),
        "after reconnecting, {answered:?} answered; the Swarm runs {expected:?}"
    );
    for task in &stale {
        let name = format!("{}.{}", task.name, task.id);
        ensure!(
            !answered.contains(&name),
            "the stale replica {name} still answers"
        );
    }
    figures.extend([
        fig("load", check.summary()),
        fig(
            "out of the external balancer after",
            against(out, OUT_OF_BALANCER_TARGET),
        ),
        fig(
            "3 replicas on the others after",
            against(replaced, REPLACED_TARGET),
        ),
        fig("replicas it ran alone meanwhile", alone),
        fig("reconnected: a Ready manager again after", secs(ready)),
        fig("its stale replica stopped after", secs(stale_gone)),
        fig(
            "replicas answering after",
            format!(
                "{} = the Swarm's 3 tasks, the stale one not among them",
                answered.len()
            ),
        ),
    ]);
    Ok(figures)
}

/// `docker node update --availability drain`: Swarm moves the machine's tasks (its replica
/// drains on SIGTERM first), then the machine is made active again.
fn machine_drained(ctx: &Cluster) -> Result<Figures> {
    let sh = ctx.sh();
    let (victim, mut figures) = ctx.choose(&[])?;
    let manager = manager_besides(sh, &[victim])?;
    let mut load = ctx.start_load("40s")?;
    sleep(WARM_UP);
    let drained = Instant::now();
    manager
        .docker(
            sh,
            &["node", "update", "--availability", "drain", victim],
            &[],
        )
        .quiet()
        .ignore_stdout()
        .run()?;
    let moved = ctx.wait_replaced(victim, drained)?;
    wait_until(RECOVERY, "the drained machine's balancer to stop", || {
        Ok(manager.replicas(sh, LB)? == (2, 2))
    })?;
    let emptied = drained.elapsed();
    manager
        .docker(
            sh,
            &["node", "update", "--availability", "active", victim],
            &[],
        )
        .quiet()
        .ignore_stdout()
        .run()?;
    let activated = Instant::now();
    wait_until(RECOVERY, "a balancer on every machine again", || {
        Ok(manager.replicas(sh, LB)? == (3, 3))
    })?;
    let back = activated.elapsed();
    load.assert_running("the drain")?;
    let check = load.finish()?;
    check.assert_no_failures()?;
    figures.extend([
        fig("load", check.summary()),
        fig("its replica running elsewhere after", secs(moved)),
        fig(
            "machine empty (its balancer stopped too) after",
            secs(emptied),
        ),
        fig("active again: its balancer back after", secs(back)),
        fig("requests per machine", check.machine_spread()),
    ]);
    Ok(figures)
}

/// The next version is pushed to the registry and rolled out; every machine pulls it.
fn rollout(ctx: &Cluster) -> Result<Figures> {
    let sh = ctx.sh();
    let next = cluster::publish(sh, NEXT_TAG, "hello-world")?;
    let manager = ctx.manager()?;
    let mut load = ctx.start_load("75s")?;
    sleep(WARM_UP);
    let started = Instant::now();
    manager
        .docker(
            sh,
            &["service", "update", "--detach", "--image", &next, WEB],
            &[],
        )
        .quiet()
        .ignore_stdout()
        .run()?;
    let updated = wait_until(Duration::from_secs(150), "the rollout to complete", || {
        let state = manager.read(
            sh,
            &[
                "service",
                "inspect",
                "--format",
                "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                WEB,
            ],
        )?;
        match state.trim() {
            "completed" => Ok(true),
            s if s.starts_with("rollback") || s == "paused" => {
                bail!("the rollout did not complete: {s}")
            }
            _ => Ok(false),
        }
    })?;
    load.assert_running("the rollout")?;
    let during = load.finish()?;
    during.assert_no_failures()?;
    let versions = during.versions();
    ensure!(
        versions.contains_key(&ctx.base.version) && versions.contains_key(&ctx.base.next_version),
        "the load did not see both versions during the rollout: {versions:?}"
    );
    cluster::spread_web(ctx.sh(), RECOVERY)?;
    let after = ctx.base.check(&[
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
        after_versions.len() == 1 && after_versions.contains_key(&ctx.base.next_version),
        "after the rollout, versions answering: {after_versions:?}"
    );
    ensure!(
        after.machines().len() == 3,
        "after the rollout, machines answering: {}",
        after.machine_spread()
    );
    // Each machine pulled the new image from the registry: it holds it under its registry
    // digest, and its replica runs it.
    let digest = next.split('@').nth(1).context("a digest reference")?;
    let mut pulled = Vec::new();
    for node in NODES {
        let digests = Engine::Node(node)
            .read(
                sh,
                &[
                    "image",
                    "inspect",
                    "--format",
                    "{{json .RepoDigests}}",
                    &next,
                ],
            )
            .with_context(|| format!("{node} does not hold {next}"))?;
        ensure!(
            digests.contains(digest),
            "{node} holds the new image, not under the registry's digest: {digests}"
        );
        pulled.push(node);
    }
    Ok(vec![
        fig("pushed", next.clone()),
        fig("load during the rollout", during.summary()),
        fig("rollout completed after", secs(updated)),
        fig("versions answering during", format!("{versions:?}")),
        fig(
            "versions answering after",
            format!("{after_versions:?} from {}", after.machine_spread()),
        ),
        fig(
            "pulled from the registry by digest on",
            format!("{} ({digest})", pulled.join(", ")),
        ),
        fig("from the push to this check", secs(started.elapsed())),
    ])
}

/// Every Redis server stopped at once (`docker service scale` to 0 on a manager) under load:
/// `GET /` never fails, the state routes answer 503 with the cause within the store timeout,
/// and when the servers are back every replica serves state again without a restart.
fn store_outage(ctx: &Cluster) -> Result<Figures> {
    const STATE_ROUTE_BOUND: Duration = Duration::from_secs(2);
    let sh = ctx.sh();
    let scale = |replicas: u32| -> Result<()> {
        let args: Vec<String> = crate::stack::REDIS_SERVERS
            .iter()
            .map(|service| format!("{service}={replicas}"))
            .collect();
        let mut words = vec!["service", "scale", "--detach"];
        words.extend(args.iter().map(String::as_str));
        ctx.manager()?
            .docker(sh, &words, &[])
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()?;
        Ok(())
    };
    // Stopped once everything served a while after the recovery.
    let mut load = ctx.start_load("150s")?;
    sleep(WARM_UP);
    scale(0)?;
    let stopped = wait_until(RECOVERY, "every Redis server to stop", || {
        let manager = ctx.manager()?;
        for service in crate::stack::REDIS_SERVERS {
            if manager.replicas(sh, service)?.0 != 0 {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    // Each state route answer, while the store is away: 503 with the cause, within the bound.
    let mut slowest = Duration::ZERO;
    let mut reasons = std::collections::BTreeSet::new();
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused < 10 {
        ensure!(
            Instant::now() < deadline,
            "the state routes never answered 503"
        );
        let asked = Instant::now();
        let answer = http::get(stack::LB_ADDR, "/api/counter")?;
        let took = asked.elapsed();
        if answer.status == 503 && answer.header("retry-after") == Some("1") {
            let body = answer.json()?;
            ensure!(body["error"] == "store unavailable", "{body}");
            reasons.insert(body["reason"].as_str().unwrap_or_default().to_owned());
            slowest = slowest.max(took);
            refused += 1;
        }
        sleep(Duration::from_millis(200));
    }
    ensure!(
        slowest <= STATE_ROUTE_BOUND,
        "a state route took {} to refuse",
        secs(slowest)
    );
    load.assert_running("the outage")?;
    scale(1)?;
    let restarted = Instant::now();
    let mut serving = std::collections::BTreeSet::new();
    wait_until(
        RECOVERY,
        "every replica to serve GET /api/counter again",
        || {
            let answer = http::get(stack::LB_ADDR, "/api/counter")?;
            if answer.status == 200
                && let Some(name) = answer.header("x-served-by")
            {
                serving.insert(name.to_string());
            }
            Ok(serving.len() >= 3)
        },
    )?;
    let reads_back = restarted.elapsed();
    super::wait_for_acknowledged_write(stack::LB_ADDR, RECOVERY)?;
    let recovered = restarted.elapsed();
    sleep(AFTER_RECOVERY);
    load.assert_running("the recovery")?;
    let check = load.stop()?;
    check.assert_no_failures()?;
    wait_until(RECOVERY, "every Redis server and Sentinel to run", || {
        ctx.manager()?.store_running(sh)
    })?;
    Ok(vec![
        fig(
            "outage",
            format!(
                "the 3 Redis servers scaled to 0 after {}; stopped after {}",
                secs(WARM_UP),
                secs(stopped)
            ),
        ),
        fig("GET / meanwhile", check.summary()),
        fig(
            "state routes meanwhile",
            format!(
                "{refused} GET /api/counter answered 503 + Retry-After, the slowest in {} (bound {}); reasons: {}",
                secs(slowest),
                secs(STATE_ROUTE_BOUND),
                reasons.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ),
        fig(
            "every replica serving state again after",
            format!(
                "{} (reads), {} (writes acknowledged by a replica)",
                secs(reads_back),
                secs(recovered)
            ),
        ),
    ])
}

/// How long writes may stop when the primary's machine dies: the Sentinels' 2 s to judge it
/// down, their election, and the replicas asking them again.
const WRITE_GAP_TARGET: Duration = Duration::from_secs(5);
/// Past this the proof fails: a figure on a shared machine, the target is not an assertion.
const WRITE_GAP_BOUND: Duration = Duration::from_secs(30);

/// The primary the Sentinels name now (`redis-N`), asked inside each machine not in `avoid`
/// (a machine cut off has a Sentinel that still names the old primary) of the Sentinel
/// container it runs: the name a majority of the three give, if any.
fn named_primary(ctx: &Cluster, avoid: &[&str]) -> Result<String> {
    let sh = ctx.sh();
    let mut named: BTreeMap<String, usize> = BTreeMap::new();
    for node in NODES.into_iter().filter(|n| !avoid.contains(n)) {
        let engine = Engine::Node(node);
        for sentinel in crate::stack::SENTINELS {
            let filter = format!("label=com.docker.swarm.service.name={sentinel}");
            let Ok(ids) = engine.read(sh, &["ps", "-q", "--filter", &filter]) else {
                continue;
            };
            let Some(id) = ids
                .lines()
                .next()
                .map(str::trim)
                .filter(|id| !id.is_empty())
            else {
                continue;
            };
            let master = crate::stack::MASTER_NAME;
            let Ok(answer) = engine.read(
                sh,
                &[
                    "exec",
                    id,
                    "redis-cli",
                    "-p",
                    "26379",
                    "--raw",
                    "sentinel",
                    "get-master-addr-by-name",
                    master,
                ],
            ) else {
                continue;
            };
            if let Some(primary) = answer
                .lines()
                .next()
                .map(str::trim)
                .filter(|n| n.starts_with("redis-"))
            {
                *named.entry(primary.to_string()).or_default() += 1;
            }
        }
    }
    let majority = crate::stack::SENTINELS.len() / 2 + 1;
    named
        .iter()
        .find(|(_, count)| **count >= majority)
        .map(|(primary, _)| primary.clone())
        .with_context(|| format!("no majority of the Sentinels names one primary: {named:?}"))
}

/// The first figure of a proof that broke the primary's machine.
fn primary_figure(victim: &str, role: &str, primary: &str) -> (String, String) {
    fig(
        "machine",
        format!("{victim}, the Swarm's {role}, which ran the primary {primary} (and a Sentinel)"),
    )
}

/// The machine that runs the Redis primary the Sentinels name, and its name, once they agree
/// and its task runs (bounded: after a store outage the servers take a moment to start).
fn primary_machine(ctx: &Cluster, avoid: &[&str]) -> Result<(&'static str, String)> {
    let sh = ctx.sh();
    let mut found = None;
    wait_until(RECOVERY, "the Sentinels to name a running primary", || {
        let primary = named_primary(ctx, avoid)?;
        let service = format!("{STACK}_{primary}");
        let machine = cluster::tasks(sh, manager_besides(sh, avoid)?, &service)?
            .into_iter()
            .find(|t| t.running())
            .map(|t| t.node)
            .with_context(|| format!("{service} runs nowhere"))?;
        let machine = NODES
            .into_iter()
            .find(|n| *n == machine)
            .with_context(|| format!("{service} runs on {machine}, not a machine of ours"))?;
        found = Some((machine, primary));
        Ok(true)
    })?;
    found.context("a primary")
}

/// The counter through the external balancer, once it answers (bounded).
fn cluster_counter() -> Result<i64> {
    let mut value = None;
    wait_until(RECOVERY, "GET /api/counter to answer 200", || {
        let Ok(response) = http::get(stack::LB_ADDR, "/api/counter") else {
            return Ok(false);
        };
        if response.status != 200 {
            return Ok(false);
        }
        value = response.json()?["value"].as_i64();
        Ok(value.is_some())
    })?;
    value.context("counter value")
}

/// Kill the machine of the Redis primary (its engine, its Redis, its Sentinel, its replica of
/// the service) while clients increment with idempotency keys and retry: every increment is
/// acknowledged in the end, and the counter moves by exactly that many, so no acknowledged
/// increment was lost and none counted twice. A writer beside the load measures how long writes
/// stopped. The machine then comes back, and its server rejoins as a replica.
fn primary_machine_killed(ctx: &Cluster) -> Result<Figures> {
    let sh = ctx.sh();
    let (victim, primary) = primary_machine(ctx, &[])?;
    let role = ctx.role(victim)?;
    let before = cluster_counter()?;
    let mut load = ctx.base.spawn_check(&[
        "/api/counter/increment",
        "--method",
        "POST",
        "--idempotency-keys",
        "--retries",
        "60",
        "--duration",
        "20s",
        "--concurrency",
        "4",
        "--timeout",
        "30s",
    ])?;
    sleep(WARM_UP);
    load.assert_running("the kill")?;
    // A write every 50 ms beside the load: the gap is the longest time between two that succeed.
    let killed = Instant::now();
    cmd!(sh, "docker kill {victim}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let mut last_ok = killed;
    let mut gap = Duration::ZERO;
    let mut resumed = false;
    while killed.elapsed() < Duration::from_secs(40) {
        let answer =
            http::request_with_body(stack::LB_ADDR, "PUT", "/api/kv/e2e-write-gap", &[], b"x");
        if answer.is_ok_and(|a| a.status == 200 || a.status == 201) {
            gap = gap.max(last_ok.elapsed());
            last_ok = Instant::now();
            if killed.elapsed() > Duration::from_secs(10) {
                resumed = true;
                break;
            }
        }
        sleep(Duration::from_millis(50));
    }
    ensure!(resumed, "writes did not resume within 40 s of the kill");
    let check = load.finish()?;
    let n = check.requests();
    ensure!(
        check.ok() == n,
        "{} of {n} increments were never acknowledged: {}",
        n - check.ok(),
        check.summary()
    );
    let after = cluster_counter()?;
    let moved = after - before;
    ensure!(
        moved == check.ok() as i64,
        "the counter moved by {moved} for {} acknowledged increments",
        check.ok()
    );
    let (_, promoted) = primary_machine(ctx, &[victim])?;
    ensure!(promoted != primary, "the Sentinels still name {primary}");
    ensure!(
        gap <= WRITE_GAP_BOUND,
        "writes stopped for {}, more than {}",
        secs(gap),
        secs(WRITE_GAP_BOUND)
    );

    cmd!(sh, "docker start {victim}")
        .quiet()
        .ignore_stdout()
        .run()?;
    cluster::wait_for_engine(sh, victim)?;
    ctx.wait_ready_manager(victim)?;
    let rejoined = wait_until(
        RECOVERY,
        "every Redis server and Sentinel to run again",
        || ctx.manager()?.store_running(sh),
    )?;
    let (_, still) = primary_machine(ctx, &[])?;
    ensure!(
        still == promoted,
        "the returning {primary} took the primary back from {promoted}"
    );
    let after_return = cluster_counter()?;
    ensure!(
        after_return == after,
        "after {victim} returned the counter reads {after_return}, not {after}"
    );
    Ok(vec![
        primary_figure(victim, role, &primary),
        fig(
            "increments",
            format!(
                "{n} POSTs in 20 s with Idempotency-Keys, 4 at a time, retried with the same key; {victim} SIGKILLed after {}",
                secs(WARM_UP)
            ),
        ),
        fig("load", check.summary()),
        fig("client retries (same key)", check.retries()),
        fig("acknowledged", check.ok()),
        fig("counter", format!("{before} → {after} (moved by {moved})")),
        fig("writes stopped for", against(gap, WRITE_GAP_TARGET)),
        fig("the Sentinels promoted", promoted.clone()),
        fig(
            "after the machine returned",
            format!(
                "its server back as a replica of {promoted} after {}; counter still {after_return}",
                secs(rejoined)
            ),
        ),
    ])
}

/// Writers beside a fault: each PUTs fresh keys (`e2e-cut-<writer>-<n>`, the value names the
/// key) through the external balancer until told to stop, and keeps the ones acknowledged.
struct Writers {
    started: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Written>>,
}

#[derive(Default)]
struct Written {
    /// Keys whose PUT was answered 201, each with the time since the writers started.
    acknowledged: Vec<(String, Duration)>,
    refused: u64,
}

impl Writers {
    fn start(count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..count)
            .map(|writer| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut written = Written::default();
                    // Bounded whatever happens to the flag: the proof's own bound.
                    for n in 0..100_000u32 {
                        if stop.load(Ordering::Relaxed) || started.elapsed() > RECOVERY * 2 {
                            break;
                        }
                        let key = format!("e2e-cut-{writer}-{n}");
                        let path = format!("/api/kv/{key}");
                        match http::request_with_body(
                            stack::LB_ADDR,
                            "PUT",
                            &path,
                            &[],
                            key.as_bytes(),
                        ) {
                            Ok(answer) if answer.status == 201 => {
                                written.acknowledged.push((key, started.elapsed()));
                            }
                            _ => {
                                written.refused += 1;
                                sleep(Duration::from_millis(20));
                            }
                        }
                    }
                    written
                })
            })
            .collect();
        Self {
            started,
            stop,
            threads,
        }
    }

    fn finish(self) -> Result<Written> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Written::default();
        for thread in self.threads {
            let written = thread
                .join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))?;
            all.acknowledged.extend(written.acknowledged);
            all.refused += written.refused;
        }
        Ok(all)
    }
}

/// The container of a stack service on `node` (the first, if several).
fn container_on(sh: &Shell, node: &'static str, service: &str) -> Result<String> {
    let filter = format!("label=com.docker.swarm.service.name={STACK}_{service}");
    let ids = Engine::Node(node).read(sh, &["ps", "-q", "--filter", &filter])?;
    ids.lines()
        .next()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
        .with_context(|| format!("no {service} container on {node}"))
}

/// What `redis-cli ARGS` prints inside a Redis container on `node`, error replies included.
fn redis_cli(sh: &Shell, node: &'static str, container: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["exec", container, "redis-cli", "--raw"];
    all.extend_from_slice(args);
    let out = Engine::Node(node)
        .docker(sh, &all, &[])
        .quiet()
        .ignore_status()
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Cut the Redis primary's machine off the network while writers PUT fresh keys through the
/// external balancer. Alone, the primary hears from no replica, so after `min-replicas-max-lag`
/// it refuses writes outright (and before that, no `WAIT` it is sent can be confirmed): it
/// acknowledges nothing a failover would discard. The Sentinels on the other two machines
/// promote one of theirs and writes resume. Reconnected, the old primary follows the new one,
/// and every write acknowledged before, during and after the cut reads back with its value.
fn primary_cut_off(ctx: &Cluster) -> Result<Figures> {
    const REFUSAL_BOUND: Duration = Duration::from_secs(30);
    let sh = ctx.sh();
    let (victim, primary) = primary_machine(ctx, &[])?;
    let role = ctx.role(victim)?;
    let server = container_on(sh, victim, &primary)?;
    let writers = Writers::start(3);
    sleep(WARM_UP);
    let cut = writers.started.elapsed();
    let cut_at = Instant::now();
    cmd!(sh, "docker network disconnect {NETWORK} {victim}")
        .quiet()
        .run()?;
    // Asked directly, inside its machine: the primary alone takes no write.
    let mut refusal = String::new();
    wait_until(
        REFUSAL_BOUND,
        "the cut-off primary to refuse writes",
        || {
            refusal = redis_cli(sh, victim, &server, &["SET", "e2e-cut-isolated", "x"])?;
            Ok(refusal.contains("NOREPLICAS"))
        },
    )
    .with_context(|| format!("the cut-off {primary} still answers {:?}", refusal.trim()))?;
    let refused_after = cut_at.elapsed();
    let mut promoted = String::new();
    wait_until(RECOVERY, "the others to promote a new primary", || {
        promoted = named_primary(ctx, &[victim])?;
        Ok(promoted != primary)
    })?;
    let promoted_after = cut_at.elapsed();
    // Writes resumed: some acknowledged after the promotion, before the writers stop.
    sleep(Duration::from_secs(5));
    let written = writers.finish()?;
    let since_cut = |at: Duration| at.saturating_sub(cut);
    let during = written
        .acknowledged
        .iter()
        .filter(|(_, at)| since_cut(*at) > Duration::ZERO)
        .count();
    let after_promotion = written
        .acknowledged
        .iter()
        .filter(|(_, at)| since_cut(*at) > promoted_after)
        .count();
    ensure!(
        after_promotion > 0,
        "no write was acknowledged in the 5 s after {promoted} was promoted"
    );

    let reconnected = Instant::now();
    reconnect(sh, victim)?;
    ctx.wait_ready_manager(victim)?;
    let follows = wait_until(RECOVERY, &format!("{primary} to follow {promoted}"), || {
        let server = container_on(sh, victim, &primary)?;
        let role = redis_cli(sh, victim, &server, &["ROLE"])?;
        Ok(role.lines().next().map(str::trim) == Some("slave"))
    })
    .map(|_| reconnected.elapsed())?;
    let (_, now) = primary_machine(ctx, &[])?;
    ensure!(
        now == promoted,
        "the Sentinels now name {now}, not {promoted}"
    );
    let mut lost = Vec::new();
    for (key, _) in &written.acknowledged {
        let answer = http::get(stack::LB_ADDR, &format!("/api/kv/{key}"))?;
        if answer.status != 200 || answer.body != *key {
            lost.push(format!("{key}: {} {:?}", answer.status, answer.body));
        }
    }
    ensure!(
        lost.is_empty(),
        "{} of {} acknowledged writes did not read back: {}",
        lost.len(),
        written.acknowledged.len(),
        lost.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    );
    Ok(vec![
        primary_figure(victim, role, &primary),
        fig(
            "writes",
            format!(
                "3 writers PUT fresh keys through the external balancer: {} acknowledged ({during} after the cut, {after_promotion} after the promotion), {} not",
                written.acknowledged.len(),
                written.refused
            ),
        ),
        fig(
            "the cut-off primary refused writes after",
            format!(
                "{} (`min-replicas-max-lag` 5 s): {}",
                secs(refused_after),
                refusal.trim()
            ),
        ),
        fig(
            "the others promoted",
            format!("{promoted} after {}", secs(promoted_after)),
        ),
        fig(
            "reconnected",
            format!("{primary} a replica of {promoted} after {}", secs(follows)),
        ),
        fig(
            "acknowledged writes read back",
            format!(
                "{} of {}",
                written.acknowledged.len(),
                written.acknowledged.len()
            ),
        ),
    ])
}

/// The version in a kv answer's `ETag: "<version>"`.
fn version(answer: &http::Response) -> Option<u64> {
    answer.header("etag")?.trim_matches('"').parse().ok()
}

/// One client of [`kv_linearizable`]: reads, blind writes and read-then-`If-Match` writes on
/// `path`, each recorded with when it was sent and answered, until `until`.
fn kv_client(
    client: usize,
    path: &str,
    epoch: Instant,
    until: Duration,
    seed: u64,
) -> Vec<history::Event> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut events = Vec::new();
    let record = |events: &mut Vec<history::Event>, invoked: Duration, op: history::Op| {
        events.push(history::Event {
            invoked,
            completed: epoch.elapsed(),
            op,
        });
    };
    for n in 0..100_000u32 {
        if epoch.elapsed() >= until {
            break;
        }
        let value = format!("c{client}-{n}");
        let invoked = epoch.elapsed();
        match rng.u8(..10) {
            0..4 => {
                if let Ok(answer) = http::get(stack::LB_ADDR, path)
                    && answer.status == 200
                    && let Some(version) = version(&answer)
                {
                    let value = answer.body;
                    record(&mut events, invoked, history::Op::Read { version, value });
                }
            }
            4..7 => {
                let answer =
                    http::request_with_body(stack::LB_ADDR, "PUT", path, &[], value.as_bytes());
                let op = match answer
                    .as_ref()
                    .ok()
                    .filter(|a| matches!(a.status, 200 | 201))
                {
                    Some(answer) => match version(answer) {
                        Some(version) => history::Op::Write { value, version },
                        None => history::Op::Unknown { value },
                    },
                    None => history::Op::Unknown { value },
                };
                record(&mut events, invoked, op);
            }
            _ => {
                // Read, then write only if nothing else wrote since.
                let Ok(current) = http::get(stack::LB_ADDR, path) else {
                    continue;
                };
                let (200, Some(from)) = (current.status, version(&current)) else {
                    continue;
                };
                record(
                    &mut events,
                    invoked,
                    history::Op::Read {
                        version: from,
                        value: current.body.clone(),
                    },
                );
                let invoked = epoch.elapsed();
                let condition = format!("\"{from}\"");
                let answer = http::request_with_body(
                    stack::LB_ADDR,
                    "PUT",
                    path,
                    &[("if-match", condition.as_str())],
                    value.as_bytes(),
                );
                match answer {
                    // Someone wrote first: the write did nothing, certainly.
                    Ok(answer) if answer.status == 412 => {}
                    Ok(answer) if matches!(answer.status, 200 | 201) => {
                        let op = match version(&answer) {
                            Some(version) => history::Op::Swap {
                                from,
                                value,
                                version,
                            },
                            None => history::Op::Unknown { value },
                        };
                        record(&mut events, invoked, op);
                    }
                    _ => record(&mut events, invoked, history::Op::Unknown { value }),
                }
            }
        }
    }
    events
}

/// Six clients read, write and conditionally write one key through the external balancer (so
/// through every machine's replicas) while the Redis primary is killed and the Sentinels fail
/// over; then the history is checked ([`history::check`]).
fn kv_linearizable(ctx: &Cluster) -> Result<Figures> {
    const CLIENTS: usize = 6;
    const RUN: Duration = Duration::from_secs(25);
    const PATH: &str = "/api/kv/e2e-linearizable";
    let sh = ctx.sh();
    let (machine, primary) = primary_machine(ctx, &[])?;
    let epoch = Instant::now();
    // The key's first value, acknowledged before the clients start.
    let first = http::request_with_body(stack::LB_ADDR, "PUT", PATH, &[], b"first")?;
    let first_version =
        version(&first).with_context(|| format!("PUT {PATH}: {} {}", first.status, first.body))?;
    let mut history = vec![history::Event {
        invoked: Duration::ZERO,
        completed: epoch.elapsed(),
        op: history::Op::Write {
            value: "first".into(),
            version: first_version,
        },
    }];
    let seed = ctx.rng.borrow_mut().u64(..);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let seed = seed.wrapping_add(client as u64);
            std::thread::spawn(move || kv_client(client, PATH, epoch, RUN, seed))
        })
        .collect();
    sleep(Duration::from_secs(5));
    let server = container_on(sh, machine, &primary)?;
    // Its service scaled to 0 first, so the Swarm does not restart it within the Sentinels'
    // 2 s to judge it down (it came back as the primary before they could, in one run); then
    // killed, before the stop's grace period would let it shut down cleanly.
    let service = format!("{STACK}_{primary}");
    let scale = |replicas: u32| -> Result<()> {
        let to = format!("{service}={replicas}");
        manager_besides(sh, &[])?
            .docker(sh, &["service", "scale", "--detach", &to], &[])
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()?;
        Ok(())
    };
    let killed_at = epoch.elapsed();
    scale(0)?;
    Engine::Node(machine)
        .docker(sh, &["kill", &server], &[])
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .ignore_status()
        .run()?;
    let mut promoted = String::new();
    wait_until(RECOVERY, "the Sentinels to promote a new primary", || {
        promoted = named_primary(ctx, &[])?;
        Ok(promoted != primary)
    })?;
    let promoted_at = epoch.elapsed();
    scale(1)?;
    for client in clients {
        history.extend(
            client
                .join()
                .map_err(|_| anyhow::anyhow!("a kv client panicked"))?,
        );
    }
    // The final read, once writes are acknowledged again, after every operation completed.
    let mut last = None;
    wait_until(RECOVERY, "a final read", || {
        let invoked = epoch.elapsed();
        let answer = http::get(stack::LB_ADDR, PATH)?;
        if let (200, Some(version)) = (answer.status, version(&answer)) {
            last = Some(history::Event {
                invoked,
                completed: epoch.elapsed(),
                op: history::Op::Read {
                    version,
                    value: answer.body,
                },
            });
        }
        Ok(last.is_some())
    })?;
    let last = last.context("a final read")?;
    let verdict = history::check(&history, &last);
    ensure!(
        verdict.violations.is_empty(),
        "{} violation(s) in a history of {} operations: {}",
        verdict.violations.len(),
        history.len() + 1,
        verdict
            .violations
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
    ensure!(
        verdict.writes + verdict.swaps > 10 && verdict.reads > 10,
        "too few operations were acknowledged to say anything: {verdict:?}"
    );
    Ok(vec![
        fig(
            "history",
            format!(
                "{CLIENTS} clients for {}: {} reads, {} blind writes, {} `If-Match` writes acknowledged, {} writes unacknowledged (may or may not have taken effect)",
                secs(RUN),
                verdict.reads,
                verdict.writes,
                verdict.swaps,
                verdict.unknown
            ),
        ),
        fig(
            "fault",
            format!(
                "{primary} (on {machine}) SIGKILLed at {}, its service held at 0 until the Sentinels named {promoted} by {}",
                secs(killed_at),
                secs(promoted_at)
            ),
        ),
        fig(
            "checker",
            "no stale read, no lost acknowledged write, no lost update, no version with two values",
        ),
    ])
}

/// Kill two machines drawn at random: the survivor keeps serving what it runs, the
/// Swarm can change nothing without a majority of managers, until one machine returns.
fn two_machines_lost(ctx: &Cluster) -> Result<Figures> {
    let sh = ctx.sh();
    let (first, _) = ctx.choose(&[])?;
    let (second, _) = ctx.choose(&[first])?;
    let survivor: &'static str = NODES
        .into_iter()
        .find(|n| *n != first && *n != second)
        .context("three machines")?;
    let survivor_replica = ctx
        .web_tasks(&[])?
        .into_iter()
        .find(|t| t.node == survivor)
        .map(|t| format!("{}.{}", t.name, t.id))
        .context("no replica on the survivor")?;
    let mut load = ctx.start_load("30s")?;
    sleep(WARM_UP);
    cmd!(sh, "docker kill {first} {second}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let lost = Instant::now();
    // Long enough for a Swarm with quorum to have rescheduled (machine-killed's figure).
    sleep(Duration::from_secs(20));
    load.assert_running("the loss")?;
    let during = load.finish()?;
    during.assert_no_failures()?;
    let after = ctx.base.check(&[
        "/",
        "--requests",
        "300",
        "--concurrency",
        "4",
        "--new-connection",
    ])?;
    after.assert_no_failures()?;
    let served_after = lost.elapsed();
    let answered: Vec<String> = after.replicas().into_keys().collect();
    ensure!(
        answered == [survivor_replica.clone()],
        "with two machines lost, {answered:?} answered; expected the survivor's {survivor_replica}"
    );
    // What does not work: the Swarm cannot decide anything with one manager of three.
    let refused = Engine::Node(survivor)
        .docker(sh, &["node", "ls"], &[])
        .quiet()
        .ignore_stdout()
        .ignore_status()
        .output()?;
    ensure!(
        !refused.status.success(),
        "a lone manager listed the nodes: the Swarm still had quorum"
    );
    let reason = String::from_utf8_lossy(&refused.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let scale = Engine::Node(survivor)
        .docker(
            sh,
            &["service", "scale", "--detach", &format!("{WEB}=4")],
            &[],
        )
        .quiet()
        .ignore_stdout()
        .ignore_status()
        .output()?;
    ensure!(!scale.status.success(), "a lone manager accepted an update");
    let local = Engine::Node(survivor)
        .read(
            sh,
            &[
                "ps",
                "-q",
                "--filter",
                "label=com.docker.swarm.service.name=hello-world_web",
            ],
        )?
        .lines()
        .count();
    ensure!(
        local == 1,
        "the survivor runs {local} web replicas: something was rescheduled"
    );

    // One machine back: a majority again.
    cmd!(sh, "docker start {first}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let restoring = Instant::now();
    cluster::wait_for_engine(sh, first)?;
    let quorum = wait_until(RECOVERY, "quorum to return", || {
        Ok(Engine::Node(survivor)
            .docker(sh, &["node", "ls"], &[])
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok())
    })?;
    let quorum_after = restoring.elapsed().max(quorum);
    cmd!(sh, "docker start {second}")
        .quiet()
        .ignore_stdout()
        .run()?;
    ctx.wait_ready_manager(second)?;
    ctx.wait_ready_manager(first)?;
    let replicas = wait_three_web(ctx)?;
    Ok(vec![
        fig(
            "machines lost",
            format!(
                "{first} and {second} (SIGKILL, drawn from seed {}); survivor {survivor}",
                ctx.seed
            ),
        ),
        fig("load across the loss", during.summary()),
        fig(
            "still works",
            format!(
                "GET / through the external balancer: {} ({} answered, {:.0?} after the loss)",
                after.summary(),
                super::short_name(&survivor_replica),
                served_after
            ),
        ),
        fig("does not work: docker node ls", reason),
        fig(
            "does not work: rescheduling",
            format!(
                "after 20 s the survivor still runs {local} web replica; `service scale` refused"
            ),
        ),
        fig("one machine started: quorum back after", secs(quorum_after)),
        fig(
            "both back",
            format!("3 Ready managers, {} web replicas running", replicas.len()),
        ),
    ])
}

/// Remove every machine at once (`cluster down` without `--volumes`: SIGKILL, as a power
/// cut of the whole cluster), then `cluster up`: each machine comes back from its volume, the
/// Swarm keeps its identity, every Redis server reads its append-only file and follows the
/// primary the Sentinels name, and what was acknowledged before reads back as it was: the
/// counter, and a kv value with its ETag.
fn full_restart(ctx: &Cluster) -> Result<Figures> {
    const KEY: &str = "/api/kv/e2e-full-restart";
    const VALUE: &[u8] = b"kept across a full restart";
    let sh = ctx.sh();
    let put = http::request_with_body(stack::LB_ADDR, "PUT", KEY, &[], VALUE)?;
    ensure!(
        matches!(put.status, 200 | 201),
        "PUT {KEY}: {} {}",
        put.status,
        put.body
    );
    let etag = put.header("etag").context("the PUT's ETag")?.to_string();
    let increment = http::request(stack::LB_ADDR, "POST", "/api/counter/increment", &[])?;
    ensure!(
        increment.status == 200,
        "POST /api/counter/increment: {} {}",
        increment.status,
        increment.body
    );
    let before = cluster_counter()?;
    let swarm_id = |engine: Engine| -> Result<String> {
        Ok(engine
            .read(sh, &["info", "--format", "{{.Swarm.Cluster.ID}}"])?
            .trim()
            .to_string())
    };
    let id_before = swarm_id(ctx.manager()?)?;

    let down = Instant::now();
    cluster::down(sh, false)?;
    let down_took = down.elapsed();
    let up = Instant::now();
    cluster::up(sh)?;
    let up_took = up.elapsed();
    let after = cluster_counter()?;
    let state_back = up.elapsed();
    let id_after = swarm_id(ctx.manager()?)?;
    ensure!(
        id_after == id_before,
        "the Swarm came back as {id_after}, not {id_before}"
    );
    ensure!(
        after == before,
        "the counter reads {after} after the restart, {before} before"
    );
    let got = http::get(stack::LB_ADDR, KEY)?;
    ensure!(
        got.status == 200 && got.body.as_bytes() == VALUE,
        "GET {KEY} after the restart: {} {:?}",
        got.status,
        got.body
    );
    let etag_after = got.header("etag").unwrap_or_default();
    ensure!(
        etag_after == etag,
        "{KEY} has ETag {etag_after} after the restart, {etag} before"
    );
    Ok(vec![
        fig(
            "before",
            format!(
                "counter {before}; {KEY} = {:?}, ETag {etag}",
                String::from_utf8_lossy(VALUE)
            ),
        ),
        fig(
            "down",
            format!(
                "every machine removed at once (SIGKILL), volumes kept, in {}",
                secs(down_took)
            ),
        ),
        fig(
            "up",
            format!("three Ready managers and the stack after {}", secs(up_took)),
        ),
        fig("state routes answering after", secs(state_back)),
        fig(
            "after",
            format!(
                "counter {after}; {KEY} same value, ETag {etag_after}; Swarm {id_after} as before"
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_timestamps_read_as_seconds_of_the_day() {
        let at = seconds_of_day("2026-12-01T09:43:02.209722658Z").expect("a stamp");
        assert!((at - (9.0 * 3600.0 + 43.0 * 60.0 + 2.209_722_658)).abs() < 1e-6);
        assert_eq!(seconds_of_day("not a stamp"), None);
    }

    #[test]
    fn a_figure_says_whether_it_met_its_target() {
        assert_eq!(
            against(Duration::from_millis(1500), OUT_OF_BALANCER_TARGET),
            "1.5 s (target ≤ 2.0 s: met)"
        );
        assert_eq!(
            against(Duration::from_secs(20), REPLACED_TARGET),
            "20.0 s (target ≤ 15.0 s: missed)"
        );
    }

    #[test]
    fn the_same_seed_breaks_the_same_machines() {
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..8).map(|_| rng.usize(..2)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
    }
}
